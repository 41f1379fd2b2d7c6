// Package hub resolves model names to local model directories in Hugging
// Face layout and downloads them from a hub that speaks the Hugging Face URL
// layout: the tree API (GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true)
// lists files with sizes and checksums, and GET
// {endpoint}/{repo}/resolve/{revision}/{path} serves each file.
//
// Downloads resume from a .part file with an HTTP Range request, are checked
// against the hub's sha256 (LFS files) or git blob sha1 (small files), and
// are renamed into place only when complete and verified.
package hub

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultEndpoint is the public Hugging Face hub; HF_ENDPOINT overrides it.
const DefaultEndpoint = "https://huggingface.co"

// ErrOffline means the model is not in the local cache and the hub cannot
// be reached; its message names the files needed and where to put them.
var ErrOffline = errors.New("hub: model not available offline")

// ErrChecksum means a downloaded file does not match the hub's checksum.
var ErrChecksum = errors.New("hub: checksum mismatch")

// ErrStalled means a download received no bytes for Client.IdleTimeout, on
// every one of its attempts; the partial file is kept for the next pull to
// resume.
var ErrStalled = errors.New("hub: download stalled")

// StatusError is an HTTP answer from the hub other than success: its code
// says whether trying again later may succeed (Transient).
type StatusError struct {
	// What names the request: "list acme/model@main", "download onnx/model.onnx".
	What string
	// Code is the HTTP status code; Status the status line.
	Code   int
	Status string
}

func (e *StatusError) Error() string { return fmt.Sprintf("hub: cannot %s: %s", e.What, e.Status) }

// Transient reports whether the same request may succeed later: a timeout
// (408), a rate limit (429) or a server-side failure (5xx, except 501 and
// 505, which say the server will never serve it). 401, 403 and 404 (a
// gated, private, misspelled or missing repo) stay as they are until a
// person changes something.
func (e *StatusError) Transient() bool {
	switch e.Code {
	case http.StatusRequestTimeout, http.StatusTooManyRequests:
		return true
	case http.StatusNotImplemented, http.StatusHTTPVersionNotSupported:
		return false
	}
	return e.Code >= 500 && e.Code <= 599
}

// Defaults of the download's stall handling (see Client).
const (
	// DefaultIdleTimeout is how long a download may receive nothing before
	// it is aborted and resumed: far beyond any pause of a healthy
	// connection, short enough that a dead one is noticed within a minute.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultAttempts is how many times one file is tried, resuming from
	// its partial file each time, before the pull fails.
	DefaultAttempts = 5
	// DefaultRetryDelay is the wait before the second attempt; it doubles
	// with each further one (1, 2, 4, 8 s: 15 s in all).
	DefaultRetryDelay = time.Second
)

// Client downloads models into a cache directory.
type Client struct {
	// Endpoint is the hub's base URL.
	Endpoint string
	// CacheDir is the root of the local model cache.
	CacheDir string
	// Token, when set, is sent as a bearer token (gated or private repos).
	Token string
	// HTTP is the client used for requests.
	HTTP *http.Client
	// Progress, when set, receives progress lines (a terminal progress bar).
	Progress io.Writer
	// IdleTimeout aborts a download that receives no bytes for this long;
	// 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Attempts is how many times a file is tried, each attempt resuming
	// where the last one stopped, when its download breaks or stalls; 0
	// means DefaultAttempts.
	Attempts int
	// RetryDelay is the wait before the second attempt, doubled for each
	// further one; 0 means DefaultRetryDelay.
	RetryDelay time.Duration
}

// DefaultCacheDir is RERANK_CACHE_DIR, else $XDG_CACHE_HOME/rerank, else
// ~/.cache/rerank.
func DefaultCacheDir() string {
	if d := os.Getenv("RERANK_CACHE_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "rerank")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "rerank")
	}
	return filepath.Join(os.TempDir(), "rerank-cache")
}

// NewClient returns a client for the endpoint in HF_ENDPOINT (or the public
// hub) with the token in HF_TOKEN, caching under cacheDir.
func NewClient(cacheDir string) *Client {
	ep := os.Getenv("HF_ENDPOINT")
	if ep == "" {
		ep = DefaultEndpoint
	}
	return &Client{
		Endpoint: strings.TrimRight(ep, "/"),
		CacheDir: cacheDir,
		Token:    os.Getenv("HF_TOKEN"),
		// No overall timeout: model files are gigabytes; stalls are caught by
		// the transport's response-header timeout and, mid-body, by
		// IdleTimeout.
		HTTP: &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			ResponseHeaderTimeout: 30 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
		}},
	}
}

// ValidRepoID reports whether id looks like "org/name" (or "name").
func ValidRepoID(id string) bool {
	if id == "" || strings.HasPrefix(id, "/") || strings.HasSuffix(id, "/") || strings.Count(id, "/") > 1 {
		return false
	}
	for _, part := range strings.Split(id, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
		for _, r := range part {
			if !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}

// Dir is where revision of repo id lives in the cache: models/ORG/NAME for
// main (the default revision, and the place files put in by hand are looked
// for), models/ORG/NAME@REVISION for any other, the revision path-escaped,
// so that two revisions never share or shadow each other's files.
func (c *Client) Dir(id, revision string) string {
	d := filepath.Join(c.CacheDir, "models", filepath.FromSlash(id))
	if revision == "" || revision == DefaultRevision {
		return d
	}
	return d + "@" + url.PathEscape(revision)
}

// DefaultRevision is the revision used when none is given.
const DefaultRevision = "main"

// File is one file of a repo as the tree API lists it.
type File struct {
	// Path is the file's path inside the repo, slash-separated.
	Path string
	// Size is the file's size in bytes.
	Size int64
	// SHA256 is the LFS object id, set for files stored in LFS.
	SHA256 string
	// GitSHA1 is the git blob id, used to check small non-LFS files.
	GitSHA1 string
}

type treeEntry struct {
	Type string `json:"type"`
	Path string `json:"path"`
	Size int64  `json:"size"`
	OID  string `json:"oid"`
	LFS  *struct {
		OID  string `json:"oid"`
		Size int64  `json:"size"`
	} `json:"lfs"`
}

// List returns the files of repo id at revision.
func (c *Client) List(ctx context.Context, id, revision string) ([]File, error) {
	u := fmt.Sprintf("%s/api/models/%s/tree/%s?recursive=true", c.Endpoint, id, url.PathEscape(revision))
	req, err := c.request(ctx, u)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("hub: cannot list %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &StatusError{What: "list " + id + "@" + revision, Code: resp.StatusCode, Status: resp.Status}
	}
	var entries []treeEntry
	// The listing of a model repo is small; 16 MiB bounds a hostile answer.
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&entries); err != nil {
		return nil, fmt.Errorf("hub: cannot read the file list of %s: %w", id, err)
	}
	var files []File
	for _, e := range entries {
		if e.Type != "file" {
			continue
		}
		f := File{Path: e.Path, Size: e.Size, GitSHA1: e.OID}
		if e.LFS != nil {
			f.SHA256, f.Size, f.GitSHA1 = e.LFS.OID, e.LFS.Size, ""
		}
		files = append(files, f)
	}
	return files, nil
}

// Select picks the files a cross-encoder needs from a repo listing: the
// configs and tokenizer, then the ONNX export (with its external data and
// variants) when there is one, else the safetensors weights (single or
// sharded). It returns an error naming what is missing.
func Select(files []File) ([]File, error) {
	byPath := map[string]File{}
	for _, f := range files {
		byPath[f.Path] = f
	}
	var out []File
	add := func(p string) bool {
		f, ok := byPath[p]
		if ok {
			out = append(out, f)
		}
		return ok
	}
	var missing []string
	for _, p := range []string{"config.json", "tokenizer.json"} {
		if !add(p) {
			missing = append(missing, p)
		}
	}
	for _, p := range []string{"tokenizer_config.json", "special_tokens_map.json", "config_sentence_transformers.json"} {
		add(p)
	}
	weights := false
	for _, p := range []string{"onnx/model.onnx", "model.onnx"} {
		if add(p) {
			weights = true
			// The external weights, under either name exporters use.
			add(p + "_data")
			add(p + ".data")
			break
		}
	}
	if weights {
		for _, p := range []string{"onnx/model_fp16.onnx", "onnx/model_int8.onnx", "onnx/model_quantized.onnx"} {
			add(p)
		}
	} else if add("model.safetensors") {
		weights = true
	} else if add("model.safetensors.index.json") {
		weights = true
		for _, f := range files {
			if strings.HasPrefix(f.Path, "model-") && strings.HasSuffix(f.Path, ".safetensors") {
				out = append(out, f)
			}
		}
	}
	if !weights {
		missing = append(missing, "onnx/model.onnx or model.safetensors")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("hub: the repo lacks %s", strings.Join(missing, ", "))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// Pull downloads repo id at revision into the cache and returns its dir.
// Files already present and verified are kept; partial files are resumed.
func (c *Client) Pull(ctx context.Context, id, revision string) (string, error) {
	if !ValidRepoID(id) {
		return "", fmt.Errorf("hub: %q is not a repo id (want org/name)", id)
	}
	if revision == "" {
		revision = DefaultRevision
	}
	listing, err := c.List(ctx, id, revision)
	if err != nil {
		return "", c.offline(id, revision, err)
	}
	files, err := Select(listing)
	if err != nil {
		return "", err
	}
	dir := c.Dir(id, revision)
	for _, f := range files {
		if err := c.fetchRetrying(ctx, id, revision, dir, f); err != nil {
			return "", err
		}
	}
	if err := writeMarker(dir, id, revision, files); err != nil {
		return "", err
	}
	return dir, nil
}

// Resolve returns a local model dir for id at revision: a complete cached
// copy of that revision, or one a person put in place by hand (see
// ErrOffline), when there is one, else a fresh download.
func (c *Client) Resolve(ctx context.Context, id, revision string) (string, error) {
	dir := c.Dir(id, revision)
	if Complete(dir) || HasModelFiles(dir) {
		return dir, nil
	}
	return c.Pull(ctx, id, revision)
}

// HasModelFiles reports whether dir holds config.json, tokenizer.json and
// weights (an ONNX export or safetensors), the files a backend needs.
func HasModelFiles(dir string) bool {
	exists := func(p string) bool {
		_, err := os.Stat(filepath.Join(dir, p))
		return err == nil
	}
	if !exists("config.json") || !exists("tokenizer.json") {
		return false
	}
	for _, p := range []string{"onnx/model.onnx", "model.onnx", "model.safetensors", "model.safetensors.index.json"} {
		if exists(p) {
			return true
		}
	}
	return false
}

// Complete reports whether dir holds a model that Pull finished.
func Complete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, markerName))
	return err == nil
}

// markerName is written last by Pull; its presence means every file was
// downloaded and verified.
const markerName = ".rerank-complete.json"

func writeMarker(dir, id, revision string, files []File) error {
	b, _ := json.MarshalIndent(map[string]any{"repo": id, "revision": revision, "files": files, "pulled_at": time.Now().UTC()}, "", "  ")
	tmp := filepath.Join(dir, markerName+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, markerName))
}

// offline wraps a failed listing into ErrOffline with the manual steps.
func (c *Client) offline(id, revision string, cause error) error {
	return fmt.Errorf("%w: %s is not in %s and the hub at %s cannot be reached (%w); "+
		"put config.json, tokenizer.json and onnx/model.onnx (or model.safetensors) of %s into %s, "+
		"or pass --model with a local model dir",
		ErrOffline, id, c.CacheDir, c.Endpoint, cause, id, c.Dir(id, revision))
}

func (c *Client) request(ctx context.Context, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

// fetchRetrying fetches f, trying again (resuming from the partial file)
// after a broken or stalled download, up to c.Attempts times with a
// doubling delay. A checksum mismatch or an HTTP error answer is not tried
// again: the next attempt would get the same bytes.
func (c *Client) fetchRetrying(ctx context.Context, id, revision, dir string, f File) error {
	attempts, delay := c.Attempts, c.RetryDelay
	if attempts <= 0 {
		attempts = DefaultAttempts
	}
	if delay <= 0 {
		delay = DefaultRetryDelay
	}
	for i := 1; ; i++ {
		err := c.fetch(ctx, id, revision, dir, f)
		var ie *interruptedError
		if err == nil || !errors.As(err, &ie) || ctx.Err() != nil {
			return err
		}
		if i >= attempts {
			return fmt.Errorf("%w (gave up after %d attempts; run pull again to resume)", err, attempts)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hub: download of %s: %w", f.Path, ctx.Err())
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// interruptedError is a download that broke off or stalled mid-body: its
// partial file is kept, and trying again resumes it.
type interruptedError struct {
	path string
	err  error
}

func (e *interruptedError) Error() string {
	return fmt.Sprintf("hub: download of %s interrupted: %v", e.path, e.err)
}

func (e *interruptedError) Unwrap() error { return e.err }

// Transient says trying again may succeed: the connection, not the file,
// failed, and the next attempt resumes.
func (e *interruptedError) Transient() bool { return true }

// idleReader cancels its request when a Read returns nothing for timeout:
// the transport's timeouts cover the connection and the response header,
// not a body that stops arriving.
type idleReader struct {
	r       io.Reader
	timer   *time.Timer
	timeout time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.timer.Reset(r.timeout)
	}
	return n, err
}

// fetch downloads one file into dir, resuming a .part file, and verifies it.
func (c *Client) fetch(ctx context.Context, id, revision, dir string, f File) error {
	dst := filepath.Join(dir, filepath.FromSlash(path.Clean(f.Path)))
	if !strings.HasPrefix(dst, dir+string(filepath.Separator)) {
		return fmt.Errorf("hub: refusing file path %q outside the model dir", f.Path)
	}
	if st, err := os.Stat(dst); err == nil && st.Size() == f.Size {
		if verify(dst, f) == nil {
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	part := dst + ".part"
	var have int64
	if st, err := os.Stat(part); err == nil && st.Size() <= f.Size {
		have = st.Size()
	}
	resumed := have > 0
	if have < f.Size || f.Size == 0 {
		u := fmt.Sprintf("%s/%s/resolve/%s/%s", c.Endpoint, id, url.PathEscape(revision), f.Path)
		idle := c.IdleTimeout
		if idle <= 0 {
			idle = DefaultIdleTimeout
		}
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var stalled atomic.Bool
		timer := time.AfterFunc(idle, func() { stalled.Store(true); cancel() })
		defer timer.Stop()
		req, err := c.request(rctx, u)
		if err != nil {
			return err
		}
		if have > 0 {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
		}
		resp, err := c.HTTP.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				return &interruptedError{path: f.Path, err: err}
			}
			return fmt.Errorf("hub: cannot download %s: %w", f.Path, err)
		}
		defer resp.Body.Close()
		flags := os.O_CREATE | os.O_WRONLY
		switch resp.StatusCode {
		case http.StatusPartialContent:
			flags |= os.O_APPEND
		case http.StatusOK:
			flags |= os.O_TRUNC
			have, resumed = 0, false
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			// The hub or a proxy in front of it is busy: worth another try.
			return &interruptedError{path: f.Path, err: errors.New(resp.Status)}
		default:
			return &StatusError{What: "download " + f.Path, Code: resp.StatusCode, Status: resp.Status}
		}
		out, err := os.OpenFile(part, flags, 0o644)
		if err != nil {
			return fmt.Errorf("hub: %w", err)
		}
		bar := &progress{w: c.Progress, name: f.Path, total: f.Size, done: have}
		timer.Reset(idle)
		_, err = io.Copy(out, io.TeeReader(&idleReader{r: resp.Body, timer: timer, timeout: idle}, bar))
		bar.finish()
		if cerr := out.Close(); err == nil && cerr != nil {
			// The disk, not the connection: retrying will not help.
			return fmt.Errorf("hub: cannot write %s: %w", part, cerr)
		}
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				return fmt.Errorf("hub: cannot write %s: %w", part, err)
			}
			if stalled.Load() {
				err = fmt.Errorf("%w: no data for %v", ErrStalled, idle)
			}
			if ctx.Err() != nil {
				return fmt.Errorf("hub: download of %s: %w", f.Path, ctx.Err())
			}
			return &interruptedError{path: f.Path, err: err}
		}
	}
	if err := verify(part, f); err != nil {
		os.Remove(part)
		if resumed {
			// The bytes kept from an earlier attempt may be the bad ones:
			// one fresh download decides. A mismatch after a fresh one is
			// final: the hub serves bytes that are not its listed file.
			return &interruptedError{path: f.Path, err: err}
		}
		return err
	}
	if err := os.Rename(part, dst); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	return nil
}

// verify checks path against f's sha256, or its git blob sha1 for small
// files the hub does not keep in LFS.
func verify(p string, f File) error {
	var h hash.Hash
	want := ""
	switch {
	case f.SHA256 != "":
		h, want = sha256.New(), f.SHA256
	case f.GitSHA1 != "":
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("hub: %w", err)
		}
		h, want = sha1.New(), f.GitSHA1
		fmt.Fprintf(h, "blob %d\x00", st.Size())
	default:
		return fmt.Errorf("hub: the hub gave no checksum for %s", f.Path)
	}
	in, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	defer in.Close()
	if _, err := io.Copy(h, in); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%w: %s: got %s, want %s", ErrChecksum, f.Path, got, want)
	}
	return nil
}

// progress draws a one-line progress bar on a terminal-like writer.
type progress struct {
	w           io.Writer
	name        string
	total, done int64
	last        time.Time
}

func (p *progress) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	// Redraw at most ten times a second: enough to look alive, cheap on a
	// multi-gigabyte download.
	if p.w != nil && time.Since(p.last) > 100*time.Millisecond {
		p.last = time.Now()
		p.draw()
	}
	return len(b), nil
}

func (p *progress) draw() {
	const width = 30 // characters of bar; fits an 80-column terminal with the name
	frac := 1.0
	if p.total > 0 {
		frac = float64(p.done) / float64(p.total)
	}
	n := int(frac * width)
	fmt.Fprintf(p.w, "\r%-32.32s [%s%s] %6.1f/%.1f MB %3.0f%%", p.name,
		strings.Repeat("#", n), strings.Repeat(".", width-n),
		float64(p.done)/1e6, float64(p.total)/1e6, frac*100)
}

func (p *progress) finish() {
	if p.w != nil {
		p.draw()
		fmt.Fprintln(p.w)
	}
}
