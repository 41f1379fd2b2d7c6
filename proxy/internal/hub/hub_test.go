package hub

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeHub serves files in the Hugging Face URL layout: the tree API and
// /{repo}/resolve/{revision}/{path}, with Range support (http.ServeContent).
type fakeHub struct {
	mu      sync.Mutex
	repo    string
	files   map[string][]byte
	lfs     map[string]bool   // paths listed as LFS objects (sha256)
	corrupt map[string][]byte // served instead of files[path], listing unchanged
	// cutAfter, when > 0, makes the first download of a path stop after
	// that many bytes, as a dropped connection would.
	cutAfter  int
	cut       map[string]bool
	ranges    atomic.Int32
	downloads atomic.Int32
	// revisions are the files of revisions other than main.
	revisions map[string]map[string][]byte
	// stallAfter, when > 0, makes the first stalls downloads of each path
	// send that many bytes and then nothing, keeping the connection open,
	// as a stuck transfer does.
	stallAfter int
	stalls     int
	stalled    map[string]int
}

func (h *fakeHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	treePrefix := "/api/models/" + h.repo + "/tree/"
	resolvePrefix := "/" + h.repo + "/resolve/"
	files := h.files
	switch {
	case strings.HasPrefix(r.URL.Path, treePrefix):
		if rev := strings.TrimPrefix(r.URL.Path, treePrefix); rev != "main" {
			if files = h.revisions[rev]; files == nil {
				http.NotFound(w, r)
				return
			}
		}
		var entries []map[string]any
		for p, b := range files {
			e := map[string]any{"type": "file", "path": p, "size": len(b)}
			if h.lfs[p] {
				sum := sha256.Sum256(b)
				e["oid"] = "0000"
				e["lfs"] = map[string]any{"oid": hex.EncodeToString(sum[:]), "size": len(b)}
			} else {
				s := sha1.New()
				fmt.Fprintf(s, "blob %d\x00", len(b))
				s.Write(b)
				e["oid"] = hex.EncodeToString(s.Sum(nil))
			}
			entries = append(entries, e)
		}
		entries = append(entries, map[string]any{"type": "directory", "path": "onnx"})
		json.NewEncoder(w).Encode(entries)
	case strings.HasPrefix(r.URL.EscapedPath(), resolvePrefix):
		// The revision is path-escaped (refs/pr/1 is refs%2Fpr%2F1).
		rev, p, _ := strings.Cut(strings.TrimPrefix(r.URL.EscapedPath(), resolvePrefix), "/")
		rev, _ = url.PathUnescape(rev)
		p, _ = url.PathUnescape(p)
		if rev != "main" {
			files = h.revisions[rev]
		}
		b, ok := files[p]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if c, ok := h.corrupt[p]; ok {
			b = c
		}
		h.downloads.Add(1)
		if r.Header.Get("Range") != "" {
			h.ranges.Add(1)
		}
		h.mu.Lock()
		stall := h.stallAfter > 0 && h.stalled[p] < h.stalls && len(b) > h.stallAfter
		if stall {
			h.stalled[p]++
		}
		h.mu.Unlock()
		if stall {
			start := 0
			if rng := r.Header.Get("Range"); rng != "" {
				fmt.Sscanf(rng, "bytes=%d-", &start)
			}
			end := min(start+h.stallAfter, len(b))
			w.Header().Set("Content-Length", fmt.Sprint(len(b)-start))
			if start > 0 {
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(b)-1, len(b)))
				w.WriteHeader(http.StatusPartialContent)
			} else {
				w.WriteHeader(http.StatusOK)
			}
			w.Write(b[start:end])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // nothing more until the client gives up
			return
		}
		if h.cutAfter > 0 && !h.cut[p] && len(b) > h.cutAfter {
			h.cut[p] = true
			// Promise the whole file, send part of it, then drop the connection.
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.WriteHeader(http.StatusOK)
			w.Write(b[:h.cutAfter])
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		http.ServeContent(w, r, p, time.Time{}, bytes.NewReader(b))
	default:
		http.NotFound(w, r)
	}
}

func newFakeHub(t *testing.T) (*fakeHub, *httptest.Server) {
	t.Helper()
	weights := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB: big enough to cut mid-way
	h := &fakeHub{
		repo: "acme/tiny-reranker",
		files: map[string][]byte{
			"config.json":           []byte(`{"model_type":"bert"}`),
			"tokenizer.json":        []byte(`{"model":{"type":"WordPiece"}}`),
			"tokenizer_config.json": []byte(`{}`),
			"onnx/model.onnx":       weights,
			"README.md":             []byte("# not needed"),
			"pytorch_model.bin":     []byte("not needed either"),
		},
		lfs:     map[string]bool{"onnx/model.onnx": true},
		corrupt: map[string][]byte{},
		cut:     map[string]bool{},
		stalled: map[string]int{},
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv
}

func newTestClient(srv *httptest.Server, dir string) *Client {
	c := NewClient(dir)
	c.Endpoint = srv.URL
	return c
}

func TestPullDownloadsVerifiesAndSkipsUnneededFiles(t *testing.T) {
	h, srv := newFakeHub(t)
	cache := t.TempDir()
	var bar bytes.Buffer
	c := newTestClient(srv, cache)
	c.Progress = &bar
	dir, err := c.Pull(context.Background(), h.repo, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "models", "acme", "tiny-reranker"); dir != want {
		t.Fatalf("dir = %s, want %s", dir, want)
	}
	for p, want := range map[string][]byte{"config.json": h.files["config.json"], "onnx/model.onnx": h.files["onnx/model.onnx"]} {
		got, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: err %v, %d bytes, want %d", p, err, len(got), len(want))
		}
	}
	for _, p := range []string{"README.md", "pytorch_model.bin"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s was downloaded but is not needed", p)
		}
	}
	if !Complete(dir) {
		t.Fatal("pulled dir is not marked complete")
	}
	if !strings.Contains(bar.String(), "onnx/model.onnx") || !strings.Contains(bar.String(), "100%") {
		t.Errorf("progress output lacks the file or 100%%: %q", bar.String())
	}
	// A second pull finds verified files and downloads nothing.
	before := h.downloads.Load()
	if _, err := c.Resolve(context.Background(), h.repo, "main"); err != nil {
		t.Fatal(err)
	}
	if h.downloads.Load() != before {
		t.Errorf("Resolve of a complete model downloaded %d files", h.downloads.Load()-before)
	}
}

func TestPullResumesAnInterruptedDownload(t *testing.T) {
	h, srv := newFakeHub(t)
	h.cutAfter = 300 << 10
	c := newTestClient(srv, t.TempDir())
	c.Attempts = 1 // this test resumes in a second pull
	if _, err := c.Pull(context.Background(), h.repo, "main"); err == nil {
		t.Fatal("pull over a dropped connection succeeded")
	}
	part := filepath.Join(c.Dir(h.repo, "main"), "onnx", "model.onnx.part")
	st, err := os.Stat(part)
	if err != nil || st.Size() == 0 {
		t.Fatalf("no partial file kept: %v", err)
	}
	dir, err := c.Pull(context.Background(), h.repo, "main")
	if err != nil {
		t.Fatal(err)
	}
	if h.ranges.Load() == 0 {
		t.Error("the second pull did not send a Range request")
	}
	got, _ := os.ReadFile(filepath.Join(dir, "onnx", "model.onnx"))
	if !bytes.Equal(got, h.files["onnx/model.onnx"]) {
		t.Fatal("resumed file differs from the original")
	}
}

func TestPullRejectsChecksumMismatch(t *testing.T) {
	f := func(path string) {
		t.Helper()
		h, srv := newFakeHub(t)
		bad := append([]byte(nil), h.files[path]...)
		bad[len(bad)-1] ^= 1
		h.corrupt[path] = bad
		c := newTestClient(srv, t.TempDir())
		_, err := c.Pull(context.Background(), h.repo, "main")
		if !errors.Is(err, ErrChecksum) {
			t.Fatalf("%s: err = %v, want ErrChecksum", path, err)
		}
		if _, err := os.Stat(filepath.Join(c.Dir(h.repo, "main"), filepath.FromSlash(path))); err == nil {
			t.Fatalf("%s: a corrupt file was kept", path)
		}
		if Complete(c.Dir(h.repo, "main")) {
			t.Fatalf("%s: a failed pull is marked complete", path)
		}
	}
	f("onnx/model.onnx") // LFS: sha256
	f("config.json")     // small file: git blob sha1
}

func TestOfflineNamesFilesAndPlace(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens: the hub is unreachable
	c := newTestClient(srv, t.TempDir())
	_, err := c.Resolve(context.Background(), "BAAI/bge-reranker-v2-m3", "main")
	if !errors.Is(err, ErrOffline) {
		t.Fatalf("err = %v, want ErrOffline", err)
	}
	for _, want := range []string{"config.json", "tokenizer.json", "onnx/model.onnx", c.Dir("BAAI/bge-reranker-v2-m3", "main")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("offline message lacks %q: %v", want, err)
		}
	}
}

func TestSelect(t *testing.T) {
	f := func(paths []string, want string, wantErr string) {
		t.Helper()
		var files []File
		for _, p := range paths {
			files = append(files, File{Path: p})
		}
		got, err := Select(files)
		if wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("Select(%v) err = %v, want %q", paths, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("Select(%v): %v", paths, err)
		}
		var names []string
		for _, f := range got {
			names = append(names, f.Path)
		}
		if s := strings.Join(names, ","); s != want {
			t.Fatalf("Select(%v) = %s, want %s", paths, s, want)
		}
	}
	f([]string{"config.json", "tokenizer.json", "onnx/model.onnx", "onnx/model_fp16.onnx", "model.safetensors", "README.md"},
		"config.json,onnx/model.onnx,onnx/model_fp16.onnx,tokenizer.json", "")
	f([]string{"config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json"},
		"config.json,model.safetensors,tokenizer.json,tokenizer_config.json", "")
	f([]string{"config.json", "tokenizer.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"},
		"config.json,model-00001-of-00002.safetensors,model-00002-of-00002.safetensors,model.safetensors.index.json,tokenizer.json", "")
	f([]string{"config.json", "onnx/model.onnx", "onnx/model.onnx_data"}, "", "tokenizer.json")
	f([]string{"config.json", "tokenizer.json", "onnx/model.onnx", "onnx/model.onnx_data"}, "config.json,onnx/model.onnx,onnx/model.onnx_data,tokenizer.json", "")
	f([]string{"config.json", "tokenizer.json", "onnx/model.onnx", "onnx/model.onnx.data"}, "config.json,onnx/model.onnx,onnx/model.onnx.data,tokenizer.json", "")
	f([]string{"config.json", "tokenizer.json", "pytorch_model.bin"}, "", "onnx/model.onnx or model.safetensors")
}

func TestValidRepoID(t *testing.T) {
	f := func(id string, want bool) {
		t.Helper()
		if got := ValidRepoID(id); got != want {
			t.Fatalf("ValidRepoID(%q) = %v, want %v", id, got, want)
		}
	}
	f("BAAI/bge-reranker-v2-m3", true)
	f("cross-encoder/ms-marco-MiniLM-L6-v2", true)
	f("gpt2", true)
	f("", false)
	f("../etc", false)
	f("a/b/c", false)
	f("/abs/path", false)
	f("org/..", false)
	f("org/na me", false)
}

func TestResolveUsesFilesPutInPlaceByHand(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // offline
	c := newTestClient(srv, t.TempDir())
	dir := c.Dir("BAAI/bge-reranker-v2-m3", "main")
	for _, p := range []string{"config.json", "tokenizer.json", "onnx/model.onnx"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Resolve(context.Background(), "BAAI/bge-reranker-v2-m3", "main")
	if err != nil || got != dir {
		t.Fatalf("Resolve = %q, %v; want %q", got, err, dir)
	}
}

// The revision is part of the cache path: a repo cached at main does not
// answer a request for another revision (issue 13, failure 6: --revision was
// ignored once any revision of the repo was cached).
func TestRevisionHasItsOwnCacheDir(t *testing.T) {
	h, srv := newFakeHub(t)
	v2 := map[string][]byte{}
	for p, b := range h.files {
		v2[p] = b
	}
	v2["onnx/model.onnx"] = bytes.Repeat([]byte("fedcba9876543210"), 1<<10)
	h.revisions = map[string]map[string][]byte{"v2": v2, "refs/pr/1": v2}
	c := newTestClient(srv, t.TempDir())
	mainDir, err := c.Resolve(context.Background(), h.repo, "main")
	if err != nil {
		t.Fatal(err)
	}
	for _, rev := range []string{"v2", "refs/pr/1"} {
		dir, err := c.Resolve(context.Background(), h.repo, rev)
		if err != nil {
			t.Fatal(err)
		}
		if dir == mainDir || filepath.Dir(dir) != filepath.Dir(mainDir) {
			t.Fatalf("revision %s resolved to %s (main is %s)", rev, dir, mainDir)
		}
		got, _ := os.ReadFile(filepath.Join(dir, "onnx", "model.onnx"))
		if !bytes.Equal(got, v2["onnx/model.onnx"]) {
			t.Fatalf("revision %s: served main's weights", rev)
		}
	}
	got, _ := os.ReadFile(filepath.Join(mainDir, "onnx", "model.onnx"))
	if !bytes.Equal(got, h.files["onnx/model.onnx"]) {
		t.Fatal("main's weights were overwritten")
	}
}

// A download that stops sending mid-body is aborted after IdleTimeout and
// resumed with a Range request, and the pull succeeds (issue 13, failure 5:
// a stalled body kept the server loading forever).
func TestPullResumesAStalledDownload(t *testing.T) {
	h, srv := newFakeHub(t)
	h.stallAfter, h.stalls = 300<<10, 2
	c := newTestClient(srv, t.TempDir())
	c.IdleTimeout, c.RetryDelay = 200*time.Millisecond, 10*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, err := c.Pull(ctx, h.repo, "main")
	if err != nil {
		t.Fatal(err)
	}
	if h.ranges.Load() == 0 {
		t.Error("the stalled download was not resumed with a Range request")
	}
	got, _ := os.ReadFile(filepath.Join(dir, "onnx", "model.onnx"))
	if !bytes.Equal(got, h.files["onnx/model.onnx"]) {
		t.Fatal("resumed file differs from the original")
	}
}

// A download that stalls on every attempt fails with ErrStalled, saying why,
// and keeps its partial file for the next pull.
func TestPullFailsAfterRepeatedStalls(t *testing.T) {
	h, srv := newFakeHub(t)
	h.stallAfter, h.stalls = 100<<10, 1000
	c := newTestClient(srv, t.TempDir())
	c.IdleTimeout, c.RetryDelay, c.Attempts = 100*time.Millisecond, 10*time.Millisecond, 3
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.Pull(ctx, h.repo, "main")
	if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "3 attempts") {
		t.Fatalf("err = %v, want ErrStalled after 3 attempts", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the pull hung until the test's deadline")
	}
	st, err := os.Stat(filepath.Join(c.Dir(h.repo, "main"), "onnx", "model.onnx.part"))
	if err != nil || st.Size() < 300<<10 {
		t.Fatalf("partial file not kept across attempts: %v", err)
	}
}

// A checksum mismatch of a resumed download is tried once more from
// scratch (the kept partial bytes may be the bad ones); a mismatch after a
// fresh download is final (TestPullRejectsChecksumMismatch).
func TestResumedChecksumMismatchDownloadsAfresh(t *testing.T) {
	h, srv := newFakeHub(t)
	c := newTestClient(srv, t.TempDir())
	c.RetryDelay = time.Millisecond
	dir := c.Dir(h.repo, "main")
	if err := os.MkdirAll(filepath.Join(dir, "onnx"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "onnx", "model.onnx.part"), []byte("garbage left by an earlier attempt"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pull(context.Background(), h.repo, "main"); err != nil {
		t.Fatalf("pull over a bad partial file: %v", err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "onnx", "model.onnx"))
	if !bytes.Equal(got, h.files["onnx/model.onnx"]) {
		t.Fatal("the file differs from the hub's")
	}
}

// The hub's HTTP answers say whether trying again later may help.
func TestStatusErrorTransient(t *testing.T) {
	f := func(code int, want bool) {
		t.Helper()
		if got := (&StatusError{Code: code}).Transient(); got != want {
			t.Fatalf("%d: Transient() = %v, want %v", code, got, want)
		}
	}
	f(http.StatusServiceUnavailable, true)
	f(http.StatusBadGateway, true)
	f(http.StatusInternalServerError, true)
	f(http.StatusGatewayTimeout, true)
	f(http.StatusTooManyRequests, true)
	f(http.StatusRequestTimeout, true)
	f(http.StatusNotImplemented, false)
	f(http.StatusNotFound, false)
	f(http.StatusUnauthorized, false)
	f(http.StatusForbidden, false)
	f(http.StatusBadRequest, false)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	_, err := newTestClient(srv, t.TempDir()).Pull(context.Background(), "org/model", "main")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !errors.Is(err, ErrOffline) {
		t.Fatalf("listing answered 503: %v", err)
	}
}
