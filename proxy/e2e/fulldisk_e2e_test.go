//go:build linux

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The full-disk chaos run: the conversion cache on a tmpfs too small for
// the converted model, in a mount namespace of the test's own (unshare),
// so that nothing outside the test sees the mount.

// smallDisk is a tmpfs mounted on dir in a mount namespace of its own, held
// by a sleeping process; servers run in it through nsenter.
type smallDisk struct {
	holder *exec.Cmd
	dir    string
	// nsFlags are unshare's namespace flags: -r -m, or -m alone.
	nsFlags []string
}

// mountSmallDisk mounts a tmpfs of size on dir in a new mount namespace
// (and user namespace, so that it works unprivileged too). A machine that
// cannot skips the test, except in CI, where it fails.
func mountSmallDisk(t *testing.T, dir, size string) *smallDisk {
	t.Helper()
	unavailable := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf(format+" (CI: the full-disk test must run; util-linux's unshare and nsenter and a kernel with user namespaces are needed)", args...)
		}
		t.Skipf(format, args...)
	}
	for _, tool := range []string{"unshare", "nsenter", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable("%s not found: %v", tool, err)
		}
	}
	script := `mount -t tmpfs -o size="$2" tmpfs "$1" && echo mounted && exec sleep 86400`
	var tried []string
	// A user namespace first (any user); a plain mount namespace where
	// user namespaces are off but the test runs as root.
	for _, flags := range [][]string{{"-r", "-m"}, {"-m"}} {
		args := append(append(append([]string(nil), flags...), "--propagation", "private", "sh", "-c", script, "sh"), dir, size)
		cmd := exec.Command("unshare", args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			tried = append(tried, err.Error())
			continue
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if strings.TrimSpace(line) == "mounted" {
			d := &smallDisk{holder: cmd, dir: dir}
			d.nsFlags = flags
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			})
			return d
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		tried = append(tried, fmt.Sprintf("unshare %s: %s", strings.Join(flags, " "), strings.TrimSpace(stderr.String())))
	}
	unavailable("cannot mount a tmpfs in a namespace of the test's own: %s", strings.Join(tried, "; "))
	return nil
}

// prefix is the command that runs a program in the disk's namespace.
func (d *smallDisk) prefix() []string {
	p := []string{"nsenter", "-t", strconv.Itoa(d.holder.Process.Pid), "-m"}
	if len(d.nsFlags) > 1 {
		p = append(p, "-U", "--preserve-credentials")
	}
	return append(p, "--")
}

// resize changes the tmpfs's size.
func (d *smallDisk) resize(t *testing.T, size string) {
	t.Helper()
	args := append(d.prefix(), "mount", "-o", "remount,size="+size, d.dir)
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v: %s", err, out)
	}
}

// files lists the regular files under the tmpfs, as seen inside its
// namespace, with their sizes.
func (d *smallDisk) files(t *testing.T) map[string]int64 {
	t.Helper()
	root := fmt.Sprintf("/proc/%d/root%s", d.holder.Process.Pid, d.dir)
	out := map[string]int64{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() {
			info, err := e.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			out[rel] = info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listing the tmpfs: %v", err)
	}
	return out
}

// healthRaw is /health's answer as a map.
func healthRaw(t *testing.T, s *server) map[string]any {
	t.Helper()
	r := s.do(t, "GET", "/health", nil)
	var h map[string]any
	if err := json.Unmarshal(r.body, &h); err != nil {
		t.Fatalf("/health: %s: %v", r.body, err)
	}
	return h
}

// TestChaosFullDisk serves an int8 conversion of the tiny model with the
// conversion cache on a 256 KiB tmpfs, too small for it: the load must fail
// cleanly (the model's state names the full disk, and the failure is
// retried, a full disk being able to pass), leaving no file behind; with
// space again the retry converts and serves; an entry damaged afterwards is
// rebuilt by the next start, not loaded.
func TestChaosFullDisk(t *testing.T) {
	requireRuntime(t)
	cache := filepath.Join(t.TempDir(), "cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := mountSmallDisk(t, cache, "256k")
	args := []string{"--model", modelDir(t, "tiny-bert"), "--precision", "int8", "--cache-dir", cache, "--timeout", "10"}
	s := startServerUnder(t, disk.prefix(), []string{"ENABLE_PREDICTION_CACHE=false"}, args...)

	// The load fails on the full disk, and is retried.
	var h map[string]any
	limit := time.Now().Add(3 * time.Minute)
	for {
		h = healthRaw(t, s)
		lastErr, _ := h["last_error"].(string)
		next, _ := h["next_retry"].(string)
		at, _ := time.Parse(time.RFC3339Nano, next)
		// Look in a wait between attempts, so that none is writing.
		if strings.Contains(lastErr, "no space left on device") && time.Until(at) > 300*time.Millisecond {
			break
		}
		if h["status"] == "ok" || h["final"] == true {
			t.Fatalf("the load did not fail on the full disk with a retry planned: %v", h)
		}
		if time.Now().After(limit) {
			t.Fatalf("/health never said the disk was full: %v", h)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("full disk: /health status %q, message %q, load_attempts %v, next_retry %v", h["status"], h["message"], h["load_attempts"], h["next_retry"])
	if left := disk.files(t); len(left) != 0 {
		t.Fatalf("the failed conversion left files behind: %v", left)
	}
	r := s.post(t, `{"query":"q","candidates":["a","b"]}`)
	if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("a request while the disk is full: %d %s, want 503 with Retry-After", r.code, r.body)
	}

	// Space again: the next attempt converts and serves, no restart.
	disk.resize(t, "64m")
	s.waitHealth(t, "ok")
	body := rerankBody(t, map[string]any{"query": "where is the full disk", "candidates": []string{"a tmpfs of 256 KiB", "the cache", "a converted model"}})
	want := decodeRerank(t, s.post(t, body))
	entries := disk.files(t)
	var model string
	for name, size := range entries {
		if filepath.Base(name) == "model.onnx" && size > 0 {
			model = name
		}
		if strings.Contains(name, ".tmp") {
			t.Fatalf("temporary file %s left in the cache: %v", name, entries)
		}
	}
	if model == "" {
		t.Fatalf("no converted model in the cache: %v", entries)
	}
	t.Logf("space again: loaded; cache holds %v", entries)
	stopServer(t, s)

	// The entry damaged (cut short, as a crash without the fsync could
	// leave it): the next start rebuilds it instead of failing to load it.
	path := filepath.Join(fmt.Sprintf("/proc/%d/root%s", disk.holder.Process.Pid, cache), model)
	if err := os.Truncate(path, entries[model]/2); err != nil {
		t.Fatal(err)
	}
	s2 := startServerUnder(t, disk.prefix(), []string{"ENABLE_PREDICTION_CACHE=false"}, args...)
	s2.waitHealth(t, "ok")
	got := decodeRerank(t, s2.post(t, body))
	if fmt.Sprint(got.Results) != fmt.Sprint(want.Results) {
		t.Fatalf("scores after the rebuild %v, before %v", got.Results, want.Results)
	}
	if !strings.Contains(s2.logs.String(), "rebuilt") {
		t.Fatalf("the log does not say the damaged entry was rebuilt:\n%s", s2.logs.String())
	}
	if size := disk.files(t)[model]; size != entries[model] {
		t.Fatalf("rebuilt entry is %d bytes, the original %d", size, entries[model])
	}
}

// stopServer stops s with SIGINT and waits until it has exited.
func stopServer(t *testing.T, s *server) {
	t.Helper()
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	// startServer's goroutine reaps it; then the pid is gone.
	limit := time.Now().Add(time.Minute)
	for syscall.Kill(s.cmd.Process.Pid, 0) == nil {
		if time.Now().After(limit) {
			t.Fatal("the server did not stop within a minute of SIGINT")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
