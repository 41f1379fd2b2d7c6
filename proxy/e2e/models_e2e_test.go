package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/backend"
)

// modelsList is GET /v1/models's body.
type modelsList struct {
	Object string       `json:"object"`
	Data   []modelEntry `json:"data"`
}

// modelEntry is one model in it.
type modelEntry struct {
	ID                  string   `json:"id"`
	Object              string   `json:"object"`
	Aliases             []string `json:"aliases"`
	Default             bool     `json:"default"`
	State               string   `json:"state"`
	Message             string   `json:"message"`
	Backend             string   `json:"backend"`
	Precision           string   `json:"precision"`
	Device              string   `json:"device"`
	MaxLength           int      `json:"max_length"`
	ResidentMemoryBytes int64    `json:"resident_memory_bytes"`
	KeepAlive           string   `json:"keep_alive"`
	Loads               int      `json:"loads"`
}

func (s *server) models(t *testing.T) map[string]modelEntry {
	t.Helper()
	r := s.do(t, "GET", "/v1/models", nil)
	var l modelsList
	if err := json.Unmarshal(r.body, &l); err != nil || r.code != http.StatusOK || l.Object != "list" {
		t.Fatalf("GET /v1/models: %d %s (%v)", r.code, r.body, err)
	}
	out := map[string]modelEntry{}
	for _, m := range l.Data {
		if m.Object != "model" {
			t.Fatalf("GET /v1/models: entry %+v is not a model object", m)
		}
		out[m.ID] = m
	}
	return out
}

// waitModel polls /v1/models until cond holds for the model; the limit
// only stops a broken build from hanging.
func (s *server) waitModel(t *testing.T, name string, what string, cond func(modelEntry) bool) modelEntry {
	t.Helper()
	limit := time.Now().Add(3 * time.Minute)
	for {
		m := s.models(t)[name]
		if cond(m) {
			return m
		}
		if time.Now().After(limit) {
			t.Fatalf("model %s never %s: %+v", name, what, m)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func inState(state string) func(modelEntry) bool {
	return func(m modelEntry) bool { return m.State == state }
}

// writeModelsFile writes a models file into a temp dir and returns its path.
func writeModelsFile(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "models.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// seededModel writes tiny-bert with the weights of seed into a temp dir.
func seededModel(t *testing.T, seed uint64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), fmt.Sprintf("tiny-bert-seed%d", seed))
	writeTestModel(t, "tiny-bert", dir, seed)
	return dir
}

// pluginPIDs lists the server's plugin processes.
func pluginPIDs(t testing.TB, parent int) []int {
	t.Helper()
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", parent))
	if err != nil || len(files) == 0 {
		t.Skipf("cannot list child processes here (no /proc): %v", err)
	}
	var pids []int
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.HasSuffix(exe, backend.Binary(backend.CPU)) {
				pids = append(pids, pid)
			}
		}
	}
	slices.Sort(pids)
	return slices.Compact(pids)
}

// scoresOf posts a request for model and returns its scores by candidate
// index and the model the answer names.
func scoresOf(t *testing.T, s *server, model string, cands []string) (map[int]float64, string) {
	t.Helper()
	body := map[string]any{"query": "capital of france", "candidates": cands}
	if model != "" {
		body["model"] = model
	}
	v := decodeRerank(t, s.post(t, rerankBody(t, body)))
	out := map[int]float64{}
	for _, r := range v.Results {
		out[r.Index] = r.Score
	}
	return out, v.Model
}

// TestModelsRouting serves two models with different weights behind one
// server: requests reach each by its name or alias, the default takes
// requests naming none, and an unknown model is refused with 422 naming
// the served ones.
func TestModelsRouting(t *testing.T) {
	requireRuntime(t)
	file := writeModelsFile(t, fmt.Sprintf(`
models:
  - name: org/english
    model: %s
    aliases: [en]
  - name: other
    model: %s
    aliases: [second, "2"]
    max_length: 128
`, seededModel(t, testModelSeed), seededModel(t, testModelSeed+1)))
	s := startServer(t, nil, "--models-file", file, "--timeout", "600")
	h, _ := s.waitHealth(t, "ok")
	if h.Model != "org/english" || h.Device != "cpu" {
		t.Fatalf("/health names the default model: %+v", h)
	}
	s.waitModel(t, "other", "loaded", inState("loaded"))
	list := s.models(t)
	for name, want := range map[string]struct {
		def       bool
		maxLength int
		aliases   []string
	}{"org/english": {true, 512, []string{"en"}}, "other": {false, 128, []string{"second", "2"}}} {
		m := list[name]
		if m.State != "loaded" || m.Default != want.def || m.Backend != "onnx-cpu" || m.Device != "cpu" || m.Precision != "fp32" ||
			m.MaxLength != want.maxLength || m.ResidentMemoryBytes <= 0 || !slices.Equal(m.Aliases, want.aliases) || m.KeepAlive != "never" {
			t.Errorf("/v1/models %s = %+v", name, m)
		}
	}

	cands := candidates("routing", 0, 4)
	def, model := scoresOf(t, s, "", cands)
	if model != "org/english" {
		t.Fatalf("a request naming no model was answered by %q", model)
	}
	for asked, want := range map[string]string{"org/english": "org/english", "en": "org/english", "english": "org/english",
		"other": "other", "second": "other", "2": "other"} {
		got, model := scoresOf(t, s, asked, cands)
		if model != want {
			t.Fatalf("model %q answered by %q, want %q", asked, model, want)
		}
		same := 0
		for i := range got {
			if got[i] == def[i] {
				same++
			}
		}
		if (want == "org/english") != (same == len(cands)) {
			t.Fatalf("model %q scored %v, the default %v: the two models must score differently", asked, got, def)
		}
	}

	r := s.post(t, `{"query":"q","candidates":["a"],"model":"french"}`)
	want := `{"detail":[{"type":"value_error","loc":["body","model"],"msg":"unsupported model \"french\": this server serves \"org/english\", \"en\", \"other\", \"second\", \"2\"","input":"french"}]}`
	if r.code != http.StatusUnprocessableEntity || string(r.body) != want {
		t.Fatalf("unknown model: %d %s, want 422 %s", r.code, r.body, want)
	}
}

// processTreeRSS is the resident memory of the server and its plugins.
func processTreeRSS(t testing.TB, pid int) int64 {
	t.Helper()
	total, err := backend.ResidentBytes(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pluginPIDs(t, pid) {
		if rss, err := backend.ResidentBytes(p); err == nil {
			total += rss
		}
	}
	return total
}

// TestKeepAlive: a model idle for its keep_alive has its plugin process
// stopped, so its memory returns, and says unloaded; /health stays ok. The
// next requests (several at once) load it again once, and score as before.
func TestKeepAlive(t *testing.T) {
	requireRuntime(t)
	s := startServer(t, []string{"ENABLE_PREDICTION_CACHE=false"}, "--model", modelDir(t, "tiny-bert"), "--keep-alive", "2s", "--timeout", "600")
	s.waitHealth(t, "ok")
	cands := candidates("keep-alive", 0, 5)
	before, _ := scoresOf(t, s, "", cands)
	pids := pluginPIDs(t, s.cmd.Process.Pid)
	if len(pids) != 1 {
		t.Fatalf("plugin processes %v, want one", pids)
	}
	pluginRSS, err := backend.ResidentBytes(pids[0])
	if err != nil {
		t.Fatal(err)
	}
	loaded := s.models(t)["tiny-bert"]
	treeBefore := processTreeRSS(t, s.cmd.Process.Pid)

	m := s.waitModel(t, "tiny-bert", "unloaded", inState("unloaded"))
	if m.ResidentMemoryBytes != 0 || m.Loads != 1 || m.KeepAlive != "2s" {
		t.Fatalf("unloaded model %+v", m)
	}
	// The plugin is stopped as the state turns unloaded; its pid goes once
	// the server has reaped it. The limit only stops a broken build from
	// hanging.
	for limit := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pids[0])); err != nil && len(pluginPIDs(t, s.cmd.Process.Pid)) == 0 {
			break
		}
		if time.Now().After(limit) {
			t.Fatalf("plugin process %d still exists after unload (plugins %v)", pids[0], pluginPIDs(t, s.cmd.Process.Pid))
		}
	}
	treeAfter := processTreeRSS(t, s.cmd.Process.Pid)
	t.Logf("resident memory: plugin %d MiB (/v1/models said %d MiB), server and plugins %d MiB loaded, %d MiB unloaded",
		pluginRSS>>20, loaded.ResidentMemoryBytes>>20, treeBefore>>20, treeAfter>>20)
	// The proxy's own memory moves a little with garbage collection: the
	// tree must shed most of the plugin's.
	if drop := treeBefore - treeAfter; drop < pluginRSS*3/4 {
		t.Fatalf("the process tree shed %d bytes on unload, the plugin held %d", drop, pluginRSS)
	}
	if code, h := s.health(t); code != http.StatusOK || h.Status != "ok" {
		t.Fatalf("/health with the default model unloaded: %d %+v, want 200 ok", code, h)
	}

	// Several requests at once reload it once, and score as before.
	const n = 8
	var wg sync.WaitGroup
	results := make([]map[int]float64, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = rerankScores(s, "capital of france", cands) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d during the reload: %v", i, errs[i])
		}
		for j, v := range results[i] {
			if v != before[j] {
				t.Fatalf("request %d after the reload scored %v, before %v", i, results[i], before)
			}
		}
	}
	m = s.models(t)["tiny-bert"]
	if m.Loads != 2 {
		t.Fatalf("%d concurrent requests caused %d loads in all, want 2 (startup and one reload): %+v", n, m.Loads, m)
	}
	if !strings.Contains(s.logs.String(), "unloading the model") {
		t.Fatalf("the log does not say the model was unloaded")
	}
}

// TestMaxLoadedModels: with --max-loaded-models 2 of three models, loading
// the third unloads the least recently used idle one.
func TestMaxLoadedModels(t *testing.T) {
	requireRuntime(t)
	file := writeModelsFile(t, fmt.Sprintf(`
models:
  - {name: a, model: %s}
  - {name: b, model: %s}
  - {name: c, model: %s}
`, seededModel(t, 1), seededModel(t, 2), seededModel(t, 3)))
	s := startServer(t, nil, "--models-file", file, "--max-loaded-models", "2", "--timeout", "600")
	s.waitHealth(t, "ok")
	s.waitModel(t, "b", "loaded", inState("loaded"))
	if m := s.models(t)["c"]; m.State != "unloaded" || m.Loads != 0 {
		t.Fatalf("c beyond --max-loaded-models at startup: %+v", m)
	}
	cands := candidates("lru", 0, 2)
	scoresOf(t, s, "b", cands)
	scoresOf(t, s, "a", cands) // b is now the least recently used
	scoresOf(t, s, "c", cands)
	ms := s.models(t)
	if ms["a"].State != "loaded" || ms["b"].State != "unloaded" || ms["c"].State != "loaded" {
		t.Fatalf("after loading c: a %s, b %s, c %s; want b unloaded", ms["a"].State, ms["b"].State, ms["c"].State)
	}
	for limit := time.Now().Add(time.Minute); len(pluginPIDs(t, s.cmd.Process.Pid)) != 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(limit) {
			t.Fatalf("plugin processes %v, want 2", pluginPIDs(t, s.cmd.Process.Pid))
		}
	}
	scoresOf(t, s, "b", cands) // a is the least recently used now
	if ms := s.models(t); ms["a"].State != "unloaded" || ms["b"].State != "loaded" || ms["b"].Loads != 2 {
		t.Fatalf("after b again: %+v", ms)
	}
}

// TestOneModelFailsToLoad: a model whose files are broken fails alone; the
// default keeps answering, and /health stays ok.
func TestOneModelFailsToLoad(t *testing.T) {
	requireRuntime(t)
	broken := t.TempDir()
	writeBrokenModel(t, broken)
	file := writeModelsFile(t, fmt.Sprintf(`
models:
  - {name: good, model: %s}
  - {name: broken, model: %s}
`, modelDir(t, "tiny-bert"), broken))
	s := startServer(t, nil, "--models-file", file, "--timeout", "600")
	s.waitHealth(t, "ok")
	m := s.waitModel(t, "broken", "failed", inState("failed"))
	if !strings.Contains(m.Message, "rerank-onnx-cpu cannot load") {
		t.Fatalf("failed model %+v does not say why", m)
	}
	r := s.post(t, `{"query":"q","candidates":["a"],"model":"broken"}`)
	if r.code != http.StatusServiceUnavailable || string(r.body) != `{"detail":"Model not loaded"}` {
		t.Fatalf("request for the failed model: %d %s", r.code, r.body)
	}
	if _, model := scoresOf(t, s, "good", candidates("good", 0, 2)); model != "good" {
		t.Fatalf("answered by %q", model)
	}
	if code, h := s.health(t); code != http.StatusOK || h.Status != "ok" {
		t.Fatalf("/health with a non-default model failed: %d %+v", code, h)
	}
}
