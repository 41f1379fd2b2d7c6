package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fidelityTolerance is the largest difference allowed between API scores and
// the transformers.js reference: both run the same FP32 graph, so only
// kernel summation order differs (the 1e-5).
const fidelityTolerance = 1e-5

// checkFidelity checks that dir is the model golden name was recorded on,
// then scores every golden set through the API and compares each
// candidate's score with the reference.
func checkFidelity(t *testing.T, s *server, name, dir string) {
	t.Helper()
	g := loadGolden(t, name)
	checkModelSHA(t, g, dir)
	// Sets are sent by a few concurrent clients, as the micro-batcher
	// coalesces them: it must not change any score.
	const clients = 4
	replies := make([]reply, len(g.Sets))
	errs := make([]error, len(g.Sets))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < len(g.Sets); i = int(next.Add(1)) - 1 {
				body, err := json.Marshal(map[string]any{"query": g.Sets[i].Query, "candidates": g.Sets[i].Candidates})
				if err == nil {
					replies[i], err = s.send("POST", "/v1/rerank", body)
				}
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	worst := 0.0
	for i, set := range g.Sets {
		if errs[i] != nil {
			t.Fatalf("set %d: %v", i, errs[i])
		}
		v := decodeRerank(t, replies[i])
		if len(v.Results) != len(set.Candidates) {
			t.Fatalf("set %d: %d results for %d candidates", i, len(v.Results), len(set.Candidates))
		}
		seen := make([]bool, len(set.Candidates))
		for j, r := range v.Results {
			if r.Index < 0 || r.Index >= len(seen) || seen[r.Index] {
				t.Fatalf("set %d: bad or repeated index %d", i, r.Index)
			}
			seen[r.Index] = true
			if j > 0 && (r.Score > v.Results[j-1].Score || (r.Score == v.Results[j-1].Score && r.Index < v.Results[j-1].Index)) {
				t.Fatalf("set %d: results not sorted by score, ties in input order: %+v", i, v.Results)
			}
			d := math.Abs(r.Score - set.Scores[r.Index])
			worst = max(worst, d)
			if d > fidelityTolerance {
				t.Errorf("set %d candidate %d: API score %.9f, reference %.9f (diff %.2e)", i, r.Index, r.Score, set.Scores[r.Index], d)
			}
		}
	}
	t.Logf("%d sets: largest difference from the reference %.2e", len(g.Sets), worst)
}

// TestTinyBERT covers the wire contract on a tiny BERT model served from a
// local dir, and its fidelity to the reference.
func TestTinyBERT(t *testing.T) {
	requireRuntime(t)
	dir := modelDir(t, "tiny-bert")
	s := startServer(t, nil, "--model", dir, "--model-name", "org/tiny-bert",
		"--max-candidates", "12", "--max-candidate-chars", "1000", "--max-body-bytes", "65536", "--timeout", "600")
	h, _ := s.waitHealth(t, "ok")
	if h.Device != "cpu" || h.Model != "org/tiny-bert" || h.Warning != "test model with random weights: scores are meaningless" {
		t.Fatalf("/health = %+v", h)
	}
	for k, v := range map[string]any{"name": "org/tiny-bert", "precision": "fp32", "quantization": "none", "source": "onnx",
		"backend": "onnx-cpu", "device": "cpu", "activation": "sigmoid"} {
		if h.ModelInfo[k] != v {
			t.Errorf("/health model_info[%s] = %v, want %v (%v)", k, h.ModelInfo[k], v, h.ModelInfo)
		}
	}
	var counters struct {
		PairsScored *uint64 `json:"pairs_scored"`
		Batches     *uint64 `json:"batches"`
	}
	if err := json.Unmarshal(h.Backend, &counters); err != nil || counters.PairsScored == nil || counters.Batches == nil {
		t.Fatalf("/health backend section %s: %v", h.Backend, err)
	}

	t.Run("fidelity", func(t *testing.T) { checkFidelity(t, s, "tiny-bert", dir) })

	t.Run("root", func(t *testing.T) {
		r := s.do(t, "GET", "/", nil)
		if want := `{"service":"rerank-server","version":"e2e","device":"cpu","model":"org/tiny-bert"}`; r.code != 200 || string(r.body) != want {
			t.Fatalf("GET / = %d %s, want %s", r.code, r.body, want)
		}
	})

	t.Run("order and top_k", func(t *testing.T) {
		cands := []string{"Paris is the capital of France.", "The Eiffel Tower is in Paris.", "Bananas are yellow.", "Paris is the capital of France."}
		all := decodeRerank(t, s.post(t, rerankBody(t, map[string]any{"query": "capital of france", "candidates": cands})))
		if all.Model != "org/tiny-bert" || len(all.Results) != 4 {
			t.Fatalf("answer %+v", all)
		}
		if !sort.SliceIsSorted(all.Results, func(i, j int) bool { return all.Results[i].Score > all.Results[j].Score }) {
			t.Fatalf("not sorted: %+v", all.Results)
		}
		// Candidates 0 and 3 are identical: equal scores, input order.
		pos := map[int]int{}
		for i, r := range all.Results {
			pos[r.Index] = i
		}
		if pos[0] > pos[3] || all.Results[pos[0]].Score != all.Results[pos[3]].Score {
			t.Fatalf("tie not in input order: %+v", all.Results)
		}
		top := decodeRerank(t, s.post(t, rerankBody(t, map[string]any{"query": "capital of france", "candidates": cands, "top_k": 2})))
		if len(top.Results) != 2 || top.Results[0] != all.Results[0] || top.Results[1] != all.Results[1] {
			t.Fatalf("top_k 2 = %+v, all = %+v", top.Results, all.Results)
		}
		// The model may be named by its full id or its last path segment;
		// unknown fields are ignored.
		for _, m := range []string{"org/tiny-bert", "tiny-bert"} {
			v := decodeRerank(t, s.post(t, rerankBody(t, map[string]any{"query": "capital of france", "candidates": cands, "model": m, "unknown": []int{1}})))
			if len(v.Results) != 4 || v.Results[0] != all.Results[0] {
				t.Fatalf("model %q: %+v", m, v.Results)
			}
		}
	})

	t.Run("long documents are truncated, not rejected", func(t *testing.T) {
		// Each single-letter word is a token: 999 characters are 500
		// tokens, and with a 120-token query the pair is far over 512.
		long := strings.Repeat("a ", 499) + "a"
		v := decodeRerank(t, s.post(t, rerankBody(t, map[string]any{"query": strings.Repeat("capital ", 120), "candidates": []string{long, "paris"}})))
		if len(v.Results) != 2 {
			t.Fatalf("answer %+v", v)
		}
	})

	t.Run("empty candidates", func(t *testing.T) {
		before := backendPairs(t, s)
		r := s.post(t, `{"query":"q","candidates":[]}`)
		if want := `{"results":[],"model":"org/tiny-bert","processing_time_ms":0.0}`; r.code != 200 || string(r.body) != want {
			t.Fatalf("empty candidates: %d %s, want %s", r.code, r.body, want)
		}
		if after := backendPairs(t, s); after != before {
			t.Fatalf("empty candidates ran inference: pairs_scored %d → %d", before, after)
		}
	})

	t.Run("422", func(t *testing.T) {
		f := func(body, wantType string, wantLoc []any, wantMsg string) {
			t.Helper()
			r := s.post(t, body)
			var v struct {
				Detail []struct {
					Type string `json:"type"`
					Loc  []any  `json:"loc"`
					Msg  string `json:"msg"`
				} `json:"detail"`
			}
			if r.code != 422 || json.Unmarshal(r.body, &v) != nil || len(v.Detail) == 0 {
				t.Fatalf("POST %.80s: %d %s, want 422 with a detail list", body, r.code, r.body)
			}
			d := v.Detail[0]
			locJSON, _ := json.Marshal(d.Loc)
			wantLocJSON, _ := json.Marshal(wantLoc)
			if d.Type != wantType || string(locJSON) != string(wantLocJSON) || !strings.Contains(d.Msg, wantMsg) {
				t.Fatalf("POST %.80s: %s, want type %s loc %s msg containing %q", body, r.body, wantType, wantLocJSON, wantMsg)
			}
		}
		f(`{"query":"q","candidates":["a"],"top_k":"3"}`, "int_type", []any{"body", "top_k"}, "Input should be a valid integer")
		f(`{"query":"q","candidates":["a",3]}`, "string_type", []any{"body", "candidates", 1}, "Input should be a valid string")
		f(`{"query":"q","candidates":"a"}`, "list_type", []any{"body", "candidates"}, "Input should be a valid list")
		f(`{"candidates":["a"]}`, "missing", []any{"body", "query"}, "Field required")
		f(`{"query":"q","candidates":["a"],"top_k":0}`, "greater_than_equal", []any{"body", "top_k"}, "greater than or equal to 1")
		f(`{"query":"q","candidates":["a"],"top_k":13}`, "less_than_equal", []any{"body", "top_k"}, "less than or equal to 12")
		thirteen, _ := json.Marshal(strings.Split("abcdefghijklm", ""))
		f(`{"query":"q","candidates":`+string(thirteen)+`}`, "too_long", []any{"body", "candidates"}, "max_candidates=12")
		f(`{"query":"q","candidates":["ok","`+strings.Repeat("é", 1001)+`"]}`, "string_too_long", []any{"body", "candidates", 1}, "max_candidate_chars=1000")
		f(`{"query":"q","candidates":["a"],"model":"BAAI/bge-reranker-v2-m3"}`, "value_error", []any{"body", "model"}, "unsupported model")
		f(`{"query":"q","candidates":["a"],"model":"org"}`, "value_error", []any{"body", "model"}, "unsupported model")
		f(`{"query":"q",`, "json_invalid", []any{"body", 13}, "JSON decode error")
	})

	t.Run("413 405 404", func(t *testing.T) {
		f := func(method, path string, body []byte, wantCode int, wantBody string) {
			t.Helper()
			r := s.do(t, method, path, body)
			if r.code != wantCode || string(r.body) != wantBody {
				t.Fatalf("%s %s: %d %s, want %d %s", method, path, r.code, r.body, wantCode, wantBody)
			}
		}
		// The server refuses a too-large body from its Content-Length, before
		// reading it, and closes the connection: a client still writing the
		// body may see a broken pipe instead of the answer, depending on
		// timing. So this request goes over a raw connection that sends the
		// headers, then reads the answer, then stops.
		conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// A server that waited for the body instead would never answer.
		conn.SetDeadline(time.Now().Add(time.Minute))
		fmt.Fprintf(conn, "POST /v1/rerank HTTP/1.1\r\nHost: e2e\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"query\":\"q\",", 70000)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("POST of a too-large body: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || string(body) != `{"detail":"Request body too large: the limit is 65536 bytes"}` {
			t.Fatalf("POST of a too-large body: %d %s, want 413", resp.StatusCode, body)
		}
		f("GET", "/v1/rerank", nil, http.StatusMethodNotAllowed, `{"detail":"Method Not Allowed"}`)
		f("POST", "/health", []byte(`{}`), http.StatusMethodNotAllowed, `{"detail":"Method Not Allowed"}`)
		// /v2/rerank is Cohere v2 now (issue 10); an unknown path is still 404.
		f("GET", "/v3/rerank", nil, http.StatusNotFound, `{"detail":"Not Found"}`)
		// The server still answers after refusing a large body.
		decodeRerank(t, s.post(t, `{"query":"q","candidates":["a"]}`))
	})
}

// backendPairs reads /health's backend pairs_scored counter.
func backendPairs(t *testing.T, s *server) uint64 {
	t.Helper()
	_, h := s.health(t)
	var c struct {
		PairsScored uint64 `json:"pairs_scored"`
	}
	if err := json.Unmarshal(h.Backend, &c); err != nil {
		t.Fatalf("backend section %s: %v", h.Backend, err)
	}
	return c.PairsScored
}

// TestTinyXLMR checks fidelity on an XLM-RoBERTa model, whose graph has no
// token_type_ids input and whose tokenizer is a Unigram one.
func TestTinyXLMR(t *testing.T) {
	requireRuntime(t)
	dir := modelDir(t, "tiny-xlmr")
	s := startServer(t, nil, "--model", dir, "--timeout", "600")
	s.waitHealth(t, "ok")
	checkFidelity(t, s, "tiny-xlmr", dir)
}

// TestDefaultTestModel starts the server with no model: it generates the
// MiniLM-shaped test model in the background, says so, answers 503 while
// loading and 200 once ready, and then scores like the reference on the
// same model (the minilm golden was recorded on that very model).
func TestDefaultTestModel(t *testing.T) {
	requireRuntime(t)
	cache := t.TempDir()
	// A generous budget: fidelity, not speed, is under test, and a loaded
	// machine must not turn it into 504s.
	s := startServer(t, []string{"RERANK_CACHE_DIR=" + cache, "RERANK_SERVER_TIMEOUT=600"})
	code, h := s.health(t)
	if code != http.StatusServiceUnavailable || h.Status != "loading" || h.Device != "cpu" || h.Model != "rerank-test-model-minilm-l6" {
		t.Fatalf("first /health = %d %+v, want 503 loading", code, h)
	}
	if !strings.Contains(h.Warning, "test model with random weights: scores are meaningless") {
		t.Fatalf("/health while loading does not warn about the test model: %+v", h)
	}
	r := s.post(t, `{"query":"q","candidates":["a"]}`)
	if r.code != http.StatusServiceUnavailable || string(r.body) != `{"detail":"Model not loaded"}` {
		t.Fatalf("rerank while loading: %d %s", r.code, r.body)
	}
	h, seen := s.waitHealth(t, "ok")
	if seen[0] != "loading" || h.Device != "cpu" || !strings.Contains(h.Warning, "scores are meaningless") {
		t.Fatalf("health went %v, ending %+v", seen, h)
	}
	if !strings.Contains(s.logs.String(), "test model with random weights: scores are meaningless") {
		t.Fatalf("the log does not say a test model is served:\n%s", s.logs.String())
	}
	checkFidelity(t, s, "minilm", filepath.Join(cache, "testmodels", "minilm-l6-seed1"))
}

// TestTimeout gives requests a budget far below what scoring 200 long
// candidates takes: the answer is 504, and the server keeps serving.
func TestTimeout(t *testing.T) {
	requireRuntime(t)
	s := startServer(t, nil, "--model", modelDir(t, "tiny-bert"), "--timeout", "1ms")
	s.waitHealth(t, "ok")
	cands := make([]string, 200)
	for i := range cands {
		cands[i] = fmt.Sprintf("candidate %d: %s", i, strings.Repeat("a long candidate passage ", 150))
	}
	r := s.post(t, rerankBody(t, map[string]any{"query": "q", "candidates": cands}))
	if r.code != http.StatusGatewayTimeout || string(r.body) != `{"detail":"Rerank inference timed out"}` {
		t.Fatalf("over budget: %d %s, want 504", r.code, r.body)
	}
	if code, _ := s.health(t); code != http.StatusOK {
		t.Fatalf("/health after a timeout: %d", code)
	}
}

// TestFailedLoad checks that a model the plugin cannot load, and a repo id
// the hub does not have, keep /health at 503 "failed" with the reason and
// final, after one attempt, and rerank requests at 503.
func TestFailedLoad(t *testing.T) {
	requireRuntime(t)
	f := func(env []string, model, wantMsg string) {
		t.Helper()
		s := startServer(t, env, "--model", model)
		h, _ := s.waitHealth(t, "failed")
		if !strings.Contains(h.Message, wantMsg) {
			t.Fatalf("failed /health %+v does not say %q", h, wantMsg)
		}
		if h.Final == nil || !*h.Final || h.LoadAttempts != 1 || h.NextRetry != "" || !strings.Contains(h.LastError, wantMsg) {
			t.Fatalf("failed /health %+v: want final after 1 attempt, no retry", h)
		}
		r := s.post(t, `{"query":"q","candidates":["a"]}`)
		if r.code != http.StatusServiceUnavailable || string(r.body) != `{"detail":"Model not loaded"}` {
			t.Fatalf("rerank after a failed load: %d %s", r.code, r.body)
		}
		if code, h2 := s.health(t); code != http.StatusServiceUnavailable || h2.Status != "failed" {
			t.Fatalf("/health later: %d %+v", code, h2)
		}
	}
	broken := t.TempDir()
	writeBrokenModel(t, broken)
	f(nil, broken, "rerank-onnx-cpu cannot load")
	// The hub has no such repo (404): final. (An unreachable hub is tried
	// again: TestHubLoadIsRetried.)
	hub := newModelHub(t, "org/tiny", modelDir(t, "tiny-bert"), 0)
	f([]string{"HF_ENDPOINT=" + hub.url}, "org/not-there", "404")
}

// writeBrokenModel copies a real model dir's config and tokenizer next to
// an onnx/model.onnx that is not a model.
func writeBrokenModel(t *testing.T, dir string) {
	t.Helper()
	src := modelDir(t, "tiny-bert")
	for _, name := range []string{"config.json", "tokenizer.json"} {
		b, err := osReadFile(src, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := osWriteFile(dir, name, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := osWriteFile(dir, "onnx/model.onnx", []byte("not an onnx model")); err != nil {
		t.Fatal(err)
	}
}

// TestPluginCrash kills the plugin process: requests get 503 until the
// server has restarted it and loaded the model again, then 200.
func TestPluginCrash(t *testing.T) {
	requireRuntime(t)
	// No score cache: it would answer the repeated request without the plugin.
	s := startServer(t, []string{"ENABLE_PREDICTION_CACHE=false"}, "--model", modelDir(t, "tiny-bert"))
	s.waitHealth(t, "ok")
	before := decodeRerank(t, s.post(t, `{"query":"q","candidates":["a","b"]}`))
	pid := pluginPID(t, s.cmd.Process.Pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The restart waits a second first, so this request almost always
	// lands while the plugin is down: it waits for the restarted plugin
	// (issue 13, failure 9: it was answered 503).
	r := s.post(t, `{"query":"q","candidates":["a","b"]}`)
	if r.code != http.StatusOK {
		t.Fatalf("rerank with the plugin dead: %d %s, want 200 once it is back", r.code, r.body)
	}
	if during := decodeRerank(t, r); during.Results[0] != before.Results[0] || during.Results[1] != before.Results[1] {
		t.Fatalf("scores changed across the crash: %+v then %+v", before.Results, during.Results)
	}
	limit := time.Now().Add(3 * time.Minute)
	for restarts(t, s) == 0 || !healthy(t, s) {
		if time.Now().After(limit) {
			t.Fatalf("plugin never restarted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := decodeRerank(t, s.post(t, `{"query":"q","candidates":["a","b"]}`))
	if after.Results[0] != before.Results[0] || after.Results[1] != before.Results[1] {
		t.Fatalf("scores changed across the restart: %+v then %+v", before.Results, after.Results)
	}
	if pluginPID(t, s.cmd.Process.Pid) == pid {
		t.Fatal("the plugin has the same pid after a restart")
	}
}

func healthy(t *testing.T, s *server) bool {
	code, _ := s.health(t)
	return code == http.StatusOK
}

func restarts(t *testing.T, s *server) int {
	t.Helper()
	_, h := s.health(t)
	var c struct {
		Restarts int `json:"restarts"`
	}
	if err := json.Unmarshal(h.Backend, &c); err != nil {
		t.Fatalf("backend section %s: %v", h.Backend, err)
	}
	return c.Restarts
}

// pluginPID finds the server's one plugin child process on Linux.
func pluginPID(t *testing.T, parent int) int {
	t.Helper()
	pids := pluginPIDs(t, parent)
	if len(pids) == 0 {
		t.Fatalf("no rerank-onnx-cpu child of %d", parent)
	}
	return pids[0]
}

// TestOverload bounds the queue to one pair: while a request waits in the
// micro-batcher (whose window is so long, and batches so large, that
// nothing flushes it), another one is refused with 429 and Retry-After.
func TestOverload(t *testing.T) {
	requireRuntime(t)
	s := startServer(t, []string{
		"RERANKER_MAX_QUEUE=1", "ENABLE_PREDICTION_CACHE=false",
		"MICRO_BATCH_ENABLED=true", "MICRO_BATCH_WINDOW_MS=600000", "MICRO_BATCH_MAX_SIZE=64", "MICRO_BATCH_MAX_TOKENS=1000000",
	}, "--model", modelDir(t, "tiny-bert"), "--timeout", "2")
	s.waitHealth(t, "ok")
	first := rerankBody(t, map[string]any{"query": "q", "candidates": []string{"a", "b", "c"}})
	done := postPending(t, s, first)
	r := s.post(t, `{"query":"q","candidates":["x","y"]}`)
	if r.code != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" || !strings.HasPrefix(string(r.body), `{"detail":"`) {
		t.Fatalf("second request while the queue is full: %d %s Retry-After=%q, want 429 with Retry-After", r.code, r.body, r.header.Get("Retry-After"))
	}
	// The first request's 2 s budget runs out in the queue: 504, unless
	// the batcher flushed it first.
	if r := <-done; r.code != http.StatusGatewayTimeout && r.code != http.StatusOK {
		t.Fatalf("first request: %d %s, want 504 (or 200)", r.code, r.body)
	}
}

// postPending sends body to /v1/rerank in the background and returns once
// the batcher holds it pending; the answer comes on the channel.
func postPending(t *testing.T, s *server, body string) <-chan reply {
	t.Helper()
	done := make(chan reply, 1)
	go func() {
		r, err := s.send("POST", "/v1/rerank", []byte(body))
		if err != nil {
			r = reply{code: -1, body: []byte(err.Error())}
		}
		done <- r
	}()
	for pendingRequests(t, s) == 0 {
		select {
		case r := <-done:
			t.Fatalf("the request finished before it was seen pending: %d %s", r.code, r.body)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return done
}

func pendingRequests(t *testing.T, s *server) int {
	t.Helper()
	r := s.do(t, "GET", "/health", nil)
	var h struct {
		Batcher *struct {
			PendingRequests int `json:"pending_requests"`
		} `json:"micro_batcher"`
	}
	if err := json.Unmarshal(r.body, &h); err != nil || h.Batcher == nil {
		t.Fatalf("/health has no micro_batcher section: %s", r.body)
	}
	return h.Batcher.PendingRequests
}

// TestAutoFallsBackToCPU runs --backend auto where the CUDA plugin cannot
// run (no GPU, or no CUDA libraries beside ONNX Runtime): the server falls
// back to the CPU plugin, says why in its log, and serves on cpu.
func TestAutoFallsBackToCPU(t *testing.T) {
	requireRuntime(t)
	if _, err := os.Stat("/dev/nvidia0"); err == nil {
		t.Skip("a GPU is present: auto would rightly pick cuda")
	}
	s := startServer(t, nil, "--model", modelDir(t, "tiny-bert"), "--backend", "auto")
	h, _ := s.waitHealth(t, "ok")
	if h.Device != "cpu" {
		t.Fatalf("/health %+v, want device cpu", h)
	}
	logs := s.logs.String()
	if !strings.Contains(logs, "falling back") || !strings.Contains(logs, "rerank-onnx-cuda") {
		t.Fatalf("the log does not say why it fell back from cuda:\n%s", logs)
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "falling back") {
			t.Log(line)
		}
	}
	decodeRerank(t, s.post(t, `{"query":"q","candidates":["a","b"]}`))
}
