// Package e2e drives the real server end to end over HTTP: TestMain builds
// bin/rerank and the onnx-cpu plugin, the tests write generated model dirs,
// start `rerank serve` processes on free ports, and check the wire contract
// against real plugin processes running ONNX Runtime.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

var (
	// repoRoot is the repository root (where go.mod is).
	repoRoot string
	// binDir holds the freshly built rerank and rerank-onnx-cpu.
	binDir string
	// ortLibDir holds libonnxruntime; empty when it is missing.
	ortLibDir string
	// skipReason, when set, says why the tests cannot run here.
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	repoRoot, err = findRepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	ortLibDir = os.Getenv("RERANK_ORT_LIB_DIR")
	if ortLibDir == "" {
		ortLibDir = filepath.Join(repoRoot, "lib", "onnxruntime")
	}
	if _, err := os.Stat(filepath.Join(ortLibDir, "libonnxruntime.so.1")); err != nil {
		if _, err2 := os.Stat(filepath.Join(ortLibDir, "libonnxruntime.1.dylib")); err2 != nil {
			skipReason = fmt.Sprintf("ONNX Runtime library not found in %s (run ./plugins/ortlib.sh or make test): %v", ortLibDir, err)
		}
	}
	dir, err := os.MkdirTemp("", "rerank-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	if skipReason == "" {
		if err := build(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
	}
	return m.Run()
}

func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// build compiles the proxy without cgo and the CPU and CUDA plugins with
// it, as make build does.
func build() error {
	for _, b := range []struct{ out, pkg, cgo string }{
		{"rerank", "./proxy/cmd/rerank", "0"},
		{"rerank-onnx-cpu", "./plugins/onnx-cpu", "1"},
		{"rerank-onnx-cuda", "./plugins/onnx-cuda", "1"},
	} {
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version=e2e", "-o", filepath.Join(binDir, b.out), b.pkg)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return nil
}

func requireRuntime(t testing.TB) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

func loadGolden(t testing.TB, name string) *crossencoder.Golden {
	t.Helper()
	g, err := crossencoder.ReadGolden(filepath.Join(repoRoot, "plugins", "internal", "ort", "testdata", "fidelity", name+".golden.json"))
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	if len(g.Sets) < 50 {
		t.Fatalf("golden %s has %d sets, want at least 50", name, len(g.Sets))
	}
	return g
}

var modelDirs sync.Map // model name → dir, built once per test binary

// testModels are the generated models the tests serve: the shapes, seed and
// tokenizer the fidelity goldens in plugins/internal/ort/testdata/fidelity
// were recorded on (checkModelSHA verifies it before comparing scores).
var testModels = map[string]struct {
	arch                                string
	layers, hidden, heads, intermediate int
	tokenizer                           string // relative to the repository root
}{
	"tiny-bert": {"bert", 2, 32, 2, 64, "proxy/cmd/rerank/testmodeldata/tokenizer.json"},
	"minilm":    {"bert", 6, 384, 12, 1536, "proxy/cmd/rerank/testmodeldata/tokenizer.json"},
	"tiny-xlmr": {"xlm-roberta", 2, 32, 2, 64, "sdk/onnx/crossencoder/testdata/xlmr-synthetic/tokenizer_classic.json"},
	// xlmr-large is bge-reranker-v2-m3's encoder shape (1.2 GB of fp32
	// weights with the synthetic tokenizer's small vocabulary), for
	// benchmarks only: no golden, and minutes to write.
	"xlmr-large": {"xlm-roberta", 24, 1024, 16, 4096, "sdk/onnx/crossencoder/testdata/xlmr-synthetic/tokenizer_classic.json"},
}

// testModelSeed is the seed of every generated test model, the goldens' too.
const testModelSeed = 1

// modelDir writes the named test model once and returns its dir.
func modelDir(t testing.TB, name string) string {
	t.Helper()
	if d, ok := modelDirs.Load(name); ok {
		return d.(string)
	}
	dir := filepath.Join(binDir, "models", name)
	writeTestModel(t, name, dir, testModelSeed)
	modelDirs.Store(name, dir)
	return dir
}

// writeTestModel writes the named test model with the weights of seed
// into dir.
func writeTestModel(t testing.TB, name, dir string, seed uint64) {
	t.Helper()
	m, ok := testModels[name]
	if !ok {
		t.Fatalf("no test model %q", name)
	}
	c, err := crossencoder.ArchDefaults(m.arch)
	if err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(repoRoot, filepath.FromSlash(m.tokenizer))
	b, err := os.ReadFile(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.VocabSize, err = crossencoder.TokenizerVocabSize(b); err != nil {
		t.Fatal(err)
	}
	c.Layers, c.Hidden, c.Heads, c.Intermediate = m.layers, m.hidden, m.heads, m.intermediate
	if err := crossencoder.WriteModelDir(dir, c, crossencoder.RandomWeights(c, seed), tok, crossencoder.DirOptions{}); err != nil {
		t.Fatalf("write model %s: %v", name, err)
	}
}

// checkModelSHA fails when dir's model is not the one the golden was
// recorded on, which means the goldens need regenerating.
func checkModelSHA(t testing.TB, g *crossencoder.Golden, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "onnx", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); g.Model.SHA256 != "" && got != g.Model.SHA256 {
		t.Fatalf("the model in %s has sha256 %s, but the golden was recorded on %s: the model builder changed; regenerate the goldens", dir, got, g.Model.SHA256)
	}
}

// server is a running `rerank serve`.
type server struct {
	url  string
	cmd  *exec.Cmd
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer starts `rerank serve` with args on a free loopback port and
// returns as soon as it accepts connections (the model may still load).
func startServer(t testing.TB, env []string, args ...string) *server {
	t.Helper()
	return startServerUnder(t, nil, env, args...)
}

// startServerUnder is startServer with `rerank serve` run by prefix, a
// command that execs it (for example nsenter into a mount namespace), when
// prefix is not empty: the server's pid is still the command's.
func startServerUnder(t testing.TB, prefix []string, env []string, args ...string) *server {
	t.Helper()
	requireRuntime(t)
	port := freePort(t)
	args = append([]string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(port)}, args...)
	argv := append(append(slices.Clone(prefix), filepath.Join(binDir, "rerank")), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(),
		"RERANK_ORT_LIB_DIR="+ortLibDir,
		"RERANK_PLUGIN_DIR="+binDir,
		"RERANK_CACHE_DIR="+t.TempDir(),
	)
	cmd.Env = append(cmd.Env, env...)
	s := &server{url: "http://127.0.0.1:" + strconv.Itoa(port), cmd: cmd, logs: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("server %s logs:\n%s", strings.Join(args, " "), s.logs.String())
		}
	})
	// The port binds before the model loads: wait only for the listener.
	// The limit stops a broken server from hanging the test; it asserts
	// nothing about speed.
	limit := time.Now().Add(time.Minute)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			c.Close()
			return s
		}
		select {
		case <-exited:
			t.Fatalf("server exited before listening:\n%s", s.logs.String())
		default:
		}
		if time.Now().After(limit) {
			t.Fatalf("server never listened:\n%s", s.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// reply is an HTTP answer.
type reply struct {
	code   int
	header http.Header
	body   []byte
}

var client = &http.Client{Timeout: 5 * time.Minute}

func (s *server) do(t testing.TB, method, path string, body []byte) reply {
	t.Helper()
	r, err := s.send(method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// send is do for goroutines other than the test's: it returns its error.
func (s *server) send(method, path string, body []byte) (reply, error) {
	req, err := http.NewRequestWithContext(context.Background(), method, s.url+path, bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return reply{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return reply{resp.StatusCode, resp.Header, b}, nil
}

func (s *server) post(t testing.TB, body string) reply {
	t.Helper()
	return s.do(t, "POST", "/v1/rerank", []byte(body))
}

// health is GET /health's body.
type health struct {
	Status  string `json:"status"`
	Device  string `json:"device"`
	Model   string `json:"model"`
	Message string `json:"message"`
	Warning string `json:"warning"`
	// Final, LoadAttempts, LastError and NextRetry say, while the model
	// is not ready after a failed load, whether it is tried again.
	Final        *bool           `json:"final"`
	LoadAttempts int             `json:"load_attempts"`
	LastError    string          `json:"last_error"`
	NextRetry    string          `json:"next_retry"`
	Backend      json.RawMessage `json:"backend"`
	// ModelInfo is what the plugin loaded: name, precision, quantization,
	// source, backend, device.
	ModelInfo map[string]any `json:"model_info"`
}

func (s *server) health(t testing.TB) (int, health) {
	t.Helper()
	r := s.do(t, "GET", "/health", nil)
	var h health
	if err := json.Unmarshal(r.body, &h); err != nil {
		t.Fatalf("GET /health: %d %s: %v", r.code, r.body, err)
	}
	return r.code, h
}

// waitHealth polls /health until its status is want, and returns every
// status seen on the way.
func (s *server) waitHealth(t testing.TB, want string) (health, []string) {
	t.Helper()
	var seen []string
	limit := time.Now().Add(3 * time.Minute)
	for {
		code, h := s.health(t)
		if len(seen) == 0 || seen[len(seen)-1] != h.Status {
			seen = append(seen, h.Status)
		}
		wantCode := http.StatusServiceUnavailable
		if h.Status == "ok" {
			wantCode = http.StatusOK
		}
		if code != wantCode {
			t.Fatalf("/health status %q answered %d, want %d", h.Status, code, wantCode)
		}
		if h.Status == want {
			return h, seen
		}
		if time.Now().After(limit) {
			t.Fatalf("/health never became %q; saw %v; last %+v", want, seen, h)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rerankBody encodes a request.
func rerankBody(t testing.TB, v map[string]any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// result is one entry of a 200 answer.
type result struct {
	Index int     `json:"index"`
	Score float64 `json:"score"`
}

// rerankReply is a 200 answer.
type rerankReply struct {
	Results          []result `json:"results"`
	Model            string   `json:"model"`
	ProcessingTimeMS *float64 `json:"processing_time_ms"`
}

func decodeRerank(t testing.TB, r reply) rerankReply {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("rerank answered %d %s", r.code, r.body)
	}
	var v rerankReply
	if err := json.Unmarshal(r.body, &v); err != nil || v.ProcessingTimeMS == nil {
		t.Fatalf("rerank answer %s: %v", r.body, err)
	}
	return v
}

func osReadFile(dir, name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
}

func osWriteFile(dir, name string, b []byte) error {
	p := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o644)
}

// goldenModelDir is modelDir: the test models are the goldens' models.
func goldenModelDir(t testing.TB, name string) string {
	t.Helper()
	return modelDir(t, name)
}
