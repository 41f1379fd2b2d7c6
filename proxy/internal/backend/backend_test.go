package backend

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/sdk"
)

// pluginModeEnv, when set, makes the test binary run as a plugin process
// with a fake backend in the named mode: the supervisor under test starts
// real plugin processes over real go-plugin gRPC, and only the model is fake.
const pluginModeEnv = "BACKEND_TEST_PLUGIN_MODE"

func TestMain(m *testing.M) {
	if mode := os.Getenv(pluginModeEnv); mode != "" {
		sdk.Serve(&fakeBackend{mode: mode, device: os.Getenv("BACKEND_TEST_DEVICE")},
			sdk.WithLogger(hclog.New(&hclog.LoggerOptions{Output: os.Stderr, JSONFormat: true})))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeBackend scores a pair as the length of its document. Modes: "ok";
// "unavailable" (Load fails with sdk.ErrUnavailable, as onnx-cuda without
// CUDA); "broken" (Load fails); "gate" (Load waits until the file named by
// BACKEND_TEST_GATE exists). A document "crash" makes the process exit.
type fakeBackend struct {
	mode   string
	device string
	loaded bool
}

func (f *fakeBackend) Load(ctx context.Context, cfg sdk.LoadConfig) (sdk.ModelInfo, error) {
	switch f.mode {
	case "unavailable":
		return sdk.ModelInfo{}, fmt.Errorf("fake: libcudart.so.13 not found: %w", sdk.ErrUnavailable)
	case "broken":
		return sdk.ModelInfo{}, errors.New("fake: onnx/model.onnx is not a model")
	case "gate":
		gate := os.Getenv("BACKEND_TEST_GATE")
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return sdk.ModelInfo{}, ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	f.loaded = true
	return sdk.ModelInfo{Name: cfg.ModelName, Device: f.device, Backend: "fake-" + f.device, Precision: sdk.FP32, MaxLength: cfg.MaxLength, Revision: "r1"}, nil
}

func (f *fakeBackend) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	if !f.loaded {
		return nil, sdk.ErrNotLoaded
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		if p.Document == "crash" {
			os.Exit(3)
		}
		out[i] = float32(len(p.Document))
	}
	return out, nil
}

func (f *fakeBackend) Health(context.Context) (sdk.Health, error) {
	return sdk.Health{State: sdk.StateLoading}, nil
}

// writePlugins writes plugin binaries rerank-onnx-<kind> that run this test
// binary in the given modes.
func writePlugins(t *testing.T, modes map[string]string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for kind, mode := range modes {
		script := fmt.Sprintf("#!/bin/sh\n%s=%s BACKEND_TEST_DEVICE=%s exec %q \"$@\"\n", pluginModeEnv, mode, kind, exe)
		if err := os.WriteFile(filepath.Join(dir, Binary(kind)), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func launchIn(t *testing.T, dir, kind, platform string) (*Plugin, error) {
	t.Helper()
	p, err := Launch(context.Background(), Config{
		Kind:      kind,
		PluginDir: dir,
		Load:      sdk.LoadConfig{ModelDir: "/models/m", ModelName: "m", MaxLength: 128},
		Logger:    hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn}),
		Platform:  platform,
	})
	if p != nil {
		t.Cleanup(func() { p.Close() })
	}
	return p, err
}

func TestKindSelection(t *testing.T) {
	f := func(kind, platform string, modes map[string]string, wantKind string) {
		t.Helper()
		p, err := launchIn(t, writePlugins(t, modes), kind, platform)
		if err != nil {
			t.Fatalf("%s on %s with %v: %v", kind, platform, modes, err)
		}
		info := p.Info()
		if p.Kind() != wantKind || info.Device != wantKind || info.Name != "m" || info.MaxLength != 128 || p.PID() <= 0 {
			t.Fatalf("%s on %s with %v: kind %s pid %d info %+v, want kind %s", kind, platform, modes, p.Kind(), p.PID(), info, wantKind)
		}
	}
	all := map[string]string{CPU: "ok", CUDA: "ok", CoreML: "ok"}
	f(CPU, "linux/amd64", all, CPU)
	f(CUDA, "linux/amd64", all, CUDA)
	f(Auto, "linux/amd64", all, CUDA)
	f(Auto, "darwin/arm64", all, CoreML)
	f(Auto, "darwin/amd64", all, CUDA)
	// Fallbacks: the CUDA plugin cannot run here, or is not built at all.
	f(Auto, "linux/amd64", map[string]string{CPU: "ok", CUDA: "unavailable"}, CPU)
	f(Auto, "linux/amd64", map[string]string{CPU: "ok"}, CPU)
	f(Auto, "darwin/arm64", map[string]string{CPU: "ok", CoreML: "unavailable"}, CPU)
	// Any rerank-<kind> binary is a kind.
	f("tpu-sim", "linux/amd64", map[string]string{"tpu-sim": "ok"}, "tpu-sim")
}

func TestKinds(t *testing.T) {
	dir := writePlugins(t, map[string]string{CPU: "ok", CUDA: "ok", "tpu-sim": "ok"})
	// Neither a file that is not executable nor a directory is a plugin.
	if err := os.WriteFile(filepath.Join(dir, "rerank-notes.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "rerank-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	kinds, err := Kinds(dir)
	if err != nil || !slices.Equal(kinds, []string{Auto, CPU, CUDA, "tpu-sim"}) {
		t.Fatalf("Kinds = %v, %v", kinds, err)
	}
	f := func(kind, wantErr string) {
		t.Helper()
		err := CheckKind(dir, kind)
		if (err == nil) != (wantErr == "") || (err != nil && !strings.Contains(err.Error(), wantErr)) {
			t.Fatalf("CheckKind(%q) = %v, want %q", kind, err, wantErr)
		}
	}
	f(CPU, "")
	f(CoreML, "") // shipped with the server, even when this build lacks it
	f(Auto, "")
	f("tpu-sim", "")
	f("tpu", `unknown backend "tpu": no plugin rerank-tpu in the plugin directory; use one of auto, cpu, cuda, tpu-sim`)
	f("notes.txt", "unknown backend")
	f("", "no backend kind")
}

func TestFailedLoad(t *testing.T) {
	f := func(kind string, modes map[string]string, wantMsg string) {
		t.Helper()
		p, err := launchIn(t, writePlugins(t, modes), kind, "linux/amd64")
		if err == nil || p != nil || !strings.Contains(err.Error(), wantMsg) {
			t.Fatalf("%s with %v: %v, want an error containing %q", kind, modes, err, wantMsg)
		}
	}
	f(CUDA, map[string]string{CUDA: "unavailable"}, "libcudart.so.13 not found")
	f(CPU, map[string]string{CPU: "broken"}, "not a model")
	f(CPU, map[string]string{}, "rerank-onnx-cpu not found")
	f(Auto, map[string]string{CUDA: "unavailable", CPU: "broken"}, "not a model")
}

func TestLaunchEndsWithItsContext(t *testing.T) {
	t.Setenv("BACKEND_TEST_GATE", filepath.Join(t.TempDir(), "never"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Launch(ctx, Config{Kind: CPU, PluginDir: writePlugins(t, map[string]string{CPU: "gate"}), Load: sdk.LoadConfig{ModelName: "m"}})
		done <- err
	}()
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a load whose context ended succeeded")
	}
}

func TestScoreCountsAndCrash(t *testing.T) {
	p, err := launchIn(t, writePlugins(t, map[string]string{CPU: "ok"}), CPU, "")
	if err != nil {
		t.Fatal(err)
	}
	scores, err := p.Score(context.Background(), []sdk.Pair{{Document: "a"}, {Document: "abc"}})
	if err != nil || len(scores) != 2 || scores[0] != 1 || scores[1] != 3 {
		t.Fatalf("Score = %v, %v", scores, err)
	}
	if _, err := p.Score(context.Background(), []sdk.Pair{{Document: "ab"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Score(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if got := p.Stats(); got.PairsScored != 3 || got.Batches != 2 || got.Kind != CPU {
		t.Fatalf("Stats = %+v, want 3 pairs in 2 batches", got)
	}
	if rss, err := ResidentBytes(p.PID()); err != nil || rss <= 0 {
		t.Fatalf("ResidentBytes(plugin) = %d, %v", rss, err)
	}

	// The plugin dies mid-request: the request fails, Exited closes, and
	// later requests fail as unavailable.
	if _, err := p.Score(context.Background(), []sdk.Pair{{Document: "crash"}}); err == nil {
		t.Fatal("Score on a crashing plugin succeeded")
	}
	<-p.Exited()
	if _, err := p.Score(context.Background(), []sdk.Pair{{Document: "a"}}); !errors.Is(err, sdk.ErrUnavailable) {
		t.Fatalf("Score after the crash: %v, want ErrUnavailable", err)
	}
}

func TestCloseKillsPlugin(t *testing.T) {
	p, err := launchIn(t, writePlugins(t, map[string]string{CPU: "ok"}), CPU, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if !p.client.Exited() {
		t.Fatal("plugin still running after Close")
	}
	if _, err := ResidentBytes(p.PID()); err == nil {
		t.Fatalf("process %d still has resident memory after Close", p.PID())
	}
	if _, err := p.Score(context.Background(), []sdk.Pair{{Document: "a"}}); !errors.Is(err, sdk.ErrUnavailable) {
		t.Fatalf("Score after Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestRawLines(t *testing.T) {
	var out strings.Builder
	w := &rawLines{w: &out}
	for _, chunk := range []string{`{"@level":"info"}`, "\n", "panic: boom", "\n", "", "\n", "goroutine 1", " [running]:\n", `{"x":1}` + "\n"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := out.String(), "panic: boom\ngoroutine 1 [running]:\n"; got != want {
		t.Fatalf("raw lines %q, want %q", got, want)
	}
}
