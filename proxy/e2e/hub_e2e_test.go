package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// modelHub serves a local model dir as one repo in the Hugging Face hub's
// URL layout (the tree API and /{repo}/resolve/{revision}/{path}), every
// file listed with its sha256 as an LFS object. Its first fail requests,
// whatever they ask, are answered 503, as a hub in trouble answers; any
// other repo is 404.
type modelHub struct {
	url string

	mu       sync.Mutex
	requests int
	fail     int
}

func newModelHub(t *testing.T, repo, dir string, fail int) *modelHub {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &modelHub{fail: fail}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.requests++
		busy := h.requests <= h.fail
		h.mu.Unlock()
		if busy {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		switch {
		case r.URL.Path == "/api/models/"+repo+"/tree/main":
			var entries []map[string]any
			for p, b := range files {
				sum := sha256.Sum256(b)
				entries = append(entries, map[string]any{"type": "file", "path": p, "size": len(b), "oid": "0",
					"lfs": map[string]any{"oid": hex.EncodeToString(sum[:]), "size": len(b)}})
			}
			_ = json.NewEncoder(w).Encode(entries)
		case strings.HasPrefix(r.URL.Path, "/"+repo+"/resolve/main/"):
			b, ok := files[strings.TrimPrefix(r.URL.Path, "/"+repo+"/resolve/main/")]
			if !ok {
				http.NotFound(w, r)
				return
			}
			_, _ = w.Write(b)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	h.url = srv.URL
	return h
}

// A load that fails with an error that may pass is tried again with
// backoff until it loads, /health saying so meanwhile (503 "loading", not
// final, the failed attempts, the last error and the next retry); issue 13:
// a load failure was final. Here the hub answers 503 to its first three
// requests, and an unreachable hub keeps a server loading (and retrying).
func TestHubLoadIsRetried(t *testing.T) {
	requireRuntime(t)
	hub := newModelHub(t, "org/tiny", modelDir(t, "tiny-bert"), 3)
	s := startServer(t, []string{"HF_ENDPOINT=" + hub.url}, "--model", "org/tiny")
	var retrying health
	limit := time.Now().Add(3 * time.Minute)
	for {
		code, h := s.health(t)
		if h.Status == "ok" {
			break
		}
		if code != http.StatusServiceUnavailable || h.Status != "loading" {
			t.Fatalf("/health while the hub answers 503: %d %+v", code, h)
		}
		if h.LoadAttempts > 0 {
			retrying = h
		}
		if time.Now().After(limit) {
			t.Fatalf("never loaded: %+v", h)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if retrying.LoadAttempts == 0 || retrying.Final == nil || *retrying.Final ||
		!strings.Contains(retrying.LastError, "503") || !strings.Contains(retrying.Message, "trying again") {
		t.Fatalf("/health while retrying: %+v", retrying)
	}
	r := s.post(t, `{"query":"q","candidates":["a","b"]}`)
	if r.code != http.StatusOK {
		t.Fatalf("rerank after the retries: %d %s", r.code, r.body)
	}
	if _, h := s.health(t); h.LoadAttempts != 0 || h.LastError != "" || h.Final != nil {
		t.Fatalf("/health once loaded: %+v", h)
	}
	hub.mu.Lock()
	n := hub.requests
	hub.mu.Unlock()
	if n <= 3 {
		t.Fatalf("the hub saw %d requests, fewer than its three refusals and a listing", n)
	}

	// Nothing listens on port 1: the hub is unreachable, which may pass.
	s = startServer(t, []string{"HF_ENDPOINT=http://127.0.0.1:1"}, "--model", "org/not-cached")
	for {
		code, h := s.health(t)
		if h.LoadAttempts >= 2 {
			if code != http.StatusServiceUnavailable || h.Status != "loading" || h.Final == nil || *h.Final ||
				!strings.Contains(h.LastError, "org/not-cached") {
				t.Fatalf("/health with the hub unreachable: %d %+v", code, h)
			}
			break
		}
		if h.Status != "loading" || time.Now().After(limit) {
			t.Fatalf("/health with the hub unreachable: %d %+v", code, h)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r = s.post(t, `{"query":"q","candidates":["a"]}`)
	if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("rerank while the load is retried: %d %s", r.code, r.body)
	}
}
