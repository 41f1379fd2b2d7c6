package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/rerank-sidecar/rerank/proxy/internal/models"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// fakeScorer is the service's collaborator: a document's score is the
// value in scores under its text (0 when absent), or err.
type fakeScorer struct {
	scores map[string]float32
	err    error
	// block, when set, makes Score wait for ctx to end.
	block bool
	calls atomic.Int64
}

func (f *fakeScorer) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	f.calls.Add(1)
	if f.block {
		<-ctx.Done()
		return nil, fmt.Errorf("fake: %w", ctx.Err())
	}
	if f.err != nil {
		return nil, f.err
	}
	out := make([]float32, len(pairs))
	for i, p := range pairs {
		out[i] = f.scores[p.Document]
	}
	return out, nil
}

// testServer serves cfg over an in-memory listener and returns an HTTP
// client for it.
func testServer(t *testing.T, cfg Config) *http.Client {
	t.Helper()
	if cfg.Service == nil {
		cfg.Service = rerank.New(rerank.Single("org/test-model", &fakeScorer{}), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "org/test-model")
	}
	if cfg.Version == "" {
		cfg.Version = "v-test"
	}
	s := New(cfg)
	ln := fasthttputil.NewInmemoryListener()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-done
	})
	return &http.Client{Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return ln.Dial() },
	}}
}

type response struct {
	code   int
	header http.Header
	body   string
}

func do(t *testing.T, c *http.Client, method, path, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, "http://rerank.test"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

func TestRerankSuccess(t *testing.T) {
	scorer := &fakeScorer{scores: map[string]float32{"a": 0.25, "b": 0.75, "c": 0.5, "<&>": 0.1}}
	svc := rerank.New(rerank.Single("org/test-model", scorer), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "org/test-model")
	c := testServer(t, Config{Service: svc})
	f := func(body, wantResults string) {
		t.Helper()
		r := do(t, c, "POST", "/v1/rerank", body)
		if r.code != 200 {
			t.Fatalf("POST %s: %d %s", body, r.code, r.body)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		prefix := `{"results":` + wantResults + `,"model":"org/test-model","processing_time_ms":`
		if !strings.HasPrefix(r.body, prefix) || !strings.HasSuffix(r.body, "}") {
			t.Fatalf("POST %s:\n got %s\nwant %s…}", body, r.body, prefix)
		}
		var v struct {
			ProcessingTimeMS *float64 `json:"processing_time_ms"`
		}
		if err := json.Unmarshal([]byte(r.body), &v); err != nil || v.ProcessingTimeMS == nil || *v.ProcessingTimeMS < 0 {
			t.Fatalf("bad processing_time_ms in %s (%v)", r.body, err)
		}
	}
	f(`{"query":"q","candidates":["a","b","c"]}`, `[{"index":1,"score":0.75},{"index":2,"score":0.5},{"index":0,"score":0.25}]`)
	f(`{"query":"q","candidates":["a","b","c"],"top_k":2}`, `[{"index":1,"score":0.75},{"index":2,"score":0.5}]`)
	// Unknown fields are ignored; null optional fields are allowed.
	f(`{"query":"q","candidates":["a"],"extra":{"x":[1]},"top_k":null,"model":null}`, `[{"index":0,"score":0.25}]`)
	f(`{"query":"q","candidates":["a"],"model":"org/test-model"}`, `[{"index":0,"score":0.25}]`)
	f(`{"query":"q","candidates":["a"],"model":"test-model"}`, `[{"index":0,"score":0.25}]`)
	// Ties keep input order; float32 scores are written as Python writes them.
	f(`{"query":"q","candidates":["x","<&>","y"]}`, `[{"index":1,"score":0.10000000149011612},{"index":0,"score":0.0},{"index":2,"score":0.0}]`)

	// Empty candidates: no inference, processing_time_ms exactly 0.0.
	before := scorer.calls.Load()
	r := do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":[]}`)
	if want := `{"results":[],"model":"org/test-model","processing_time_ms":0.0}`; r.code != 200 || r.body != want {
		t.Fatalf("empty candidates: %d %s, want 200 %s", r.code, r.body, want)
	}
	if scorer.calls.Load() != before {
		t.Fatalf("empty candidates ran inference")
	}
}

func TestRerankValidationErrors(t *testing.T) {
	c := testServer(t, Config{})
	f := func(body, want string) {
		t.Helper()
		r := do(t, c, "POST", "/v1/rerank", body)
		if r.code != 422 || r.body != want {
			t.Fatalf("POST %s:\n got %d %s\nwant 422 %s", body, r.code, r.body, want)
		}
	}
	f(`{"query":"q","candidates":["a"],"top_k":"3"}`,
		`{"detail":[{"type":"int_type","loc":["body","top_k"],"msg":"Input should be a valid integer","input":"3"}]}`)
	f(`{"query":"q","candidates":["a"],"top_k":2.0}`,
		`{"detail":[{"type":"int_type","loc":["body","top_k"],"msg":"Input should be a valid integer","input":2.0}]}`)
	f(`{"query":"q","candidates":["a"],"top_k":true}`,
		`{"detail":[{"type":"int_type","loc":["body","top_k"],"msg":"Input should be a valid integer","input":true}]}`)
	f(`{"query":"q","candidates":["a",1]}`,
		`{"detail":[{"type":"string_type","loc":["body","candidates",1],"msg":"Input should be a valid string","input":1}]}`)
	f(`{"query":"q","candidates":"a"}`,
		`{"detail":[{"type":"list_type","loc":["body","candidates"],"msg":"Input should be a valid list","input":"a"}]}`)
	f(`{"query":"q","candidates":{"0":"a"}}`,
		`{"detail":[{"type":"list_type","loc":["body","candidates"],"msg":"Input should be a valid list","input":{"0":"a"}}]}`)
	f(`{"candidates":["a"]}`,
		`{"detail":[{"type":"missing","loc":["body","query"],"msg":"Field required","input":{"candidates":["a"]}}]}`)
	// Every error is reported, in field order.
	f(`{"query":3,"top_k":"x"}`,
		`{"detail":[{"type":"string_type","loc":["body","query"],"msg":"Input should be a valid string","input":3},`+
			`{"type":"missing","loc":["body","candidates"],"msg":"Field required","input":{"query":3,"top_k":"x"}},`+
			`{"type":"int_type","loc":["body","top_k"],"msg":"Input should be a valid integer","input":"x"}]}`)
	f(`{"query":"q","candidates":["a"],"model":7}`,
		`{"detail":[{"type":"string_type","loc":["body","model"],"msg":"Input should be a valid string","input":7}]}`)
	f(``, `{"detail":[{"type":"missing","loc":["body"],"msg":"Field required","input":null}]}`)
	f(`[1,2]`, `{"detail":[{"type":"model_attributes_type","loc":["body"],"msg":"Input should be a valid dictionary or object to extract fields from","input":[1,2]}]}`)
	f(`{"query":"q","candidates":["a"],"top_k":0}`,
		`{"detail":[{"type":"greater_than_equal","loc":["body","top_k"],"msg":"Input should be greater than or equal to 1","input":0,"ctx":{"ge":1}}]}`)
	f(`{"query":"q","candidates":["a"],"top_k":5}`,
		`{"detail":[{"type":"less_than_equal","loc":["body","top_k"],"msg":"Input should be less than or equal to 4","input":5,"ctx":{"le":4}}]}`)
	f(`{"query":"q","candidates":["a"],"top_k":123456789012345678901234567890}`,
		`{"detail":[{"type":"less_than_equal","loc":["body","top_k"],"msg":"Input should be less than or equal to 4","input":9223372036854775807,"ctx":{"le":4}}]}`)

	g := func(body, wantType, wantMsg string) {
		t.Helper()
		r := do(t, c, "POST", "/v1/rerank", body)
		var v struct {
			Detail []rerank.FieldError `json:"detail"`
		}
		if r.code != 422 || json.Unmarshal([]byte(r.body), &v) != nil || len(v.Detail) != 1 ||
			v.Detail[0].Type != wantType || !strings.Contains(v.Detail[0].Msg, wantMsg) {
			t.Fatalf("POST %s: %d %s, want 422 %s containing %q", body, r.code, r.body, wantType, wantMsg)
		}
	}
	g(`{"query":"q","candidates":["a","b","c","d","e"]}`, "too_long", "max_candidates=4")
	g(`{"query":"q","candidates":["a","ééééééééééé"]}`, "string_too_long", "max_candidate_chars=10")
	g(`{"query":"q","candidates":["a"],"model":"other/model"}`, "value_error", "unsupported model")
	g(`{"query":"q","candidates":["a"`, "json_invalid", "JSON decode error")
}

// notLoaded routes every name to a model that is loading.
type notLoaded struct{}

func (notLoaded) Route(context.Context, string) (rerank.Scorer, string, error) {
	return nil, "", fmt.Errorf("models: m is loading: %w", sdk.ErrNotLoaded)
}

// twoModels routes "a" and "b" to their own scorers.
type twoModels struct{ a, b rerank.Scorer }

func (m twoModels) Route(_ context.Context, name string) (rerank.Scorer, string, error) {
	switch name {
	case "", "a":
		return m.a, "org/a", nil
	case "b":
		return m.b, "org/b", nil
	}
	return nil, "", &rerank.UnknownModelError{Name: name, Served: []string{"org/a", "org/b"}}
}

func TestRerankRouting(t *testing.T) {
	a := &fakeScorer{scores: map[string]float32{"x": 0.5}}
	b := &fakeScorer{scores: map[string]float32{"x": 0.25}}
	svc := rerank.New(twoModels{a: a, b: b}, rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "org/a")
	c := testServer(t, Config{Service: svc})
	f := func(body string, wantCode int, want string) {
		t.Helper()
		r := do(t, c, "POST", "/v1/rerank", body)
		if r.code != wantCode || !strings.HasPrefix(r.body, want) {
			t.Fatalf("POST %s:\n got %d %s\nwant %d %s…", body, r.code, r.body, wantCode, want)
		}
	}
	f(`{"query":"q","candidates":["x"]}`, 200, `{"results":[{"index":0,"score":0.5}],"model":"org/a",`)
	f(`{"query":"q","candidates":["x"],"model":"b"}`, 200, `{"results":[{"index":0,"score":0.25}],"model":"org/b",`)
	f(`{"query":"q","candidates":[],"model":"b"}`, 200, `{"results":[],"model":"org/b","processing_time_ms":0.0}`)
	// An unknown model is a validation error of "model", as the seed
	// server's, naming the served models.
	f(`{"query":"q","candidates":["x"],"model":"c"}`, 422,
		`{"detail":[{"type":"value_error","loc":["body","model"],"msg":"unsupported model \"c\": this server serves \"org/a\", \"org/b\"","input":"c"}]}`)

	// A model that cannot serve yet is 503, before the limits are checked.
	c = testServer(t, Config{Service: rerank.New(notLoaded{}, rerank.Limits{MaxCandidates: 1, MaxCandidateChars: 10}, "m")})
	r := do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["a","b"]}`)
	if r.code != 503 || r.body != `{"detail":"Model not loaded"}` {
		t.Fatalf("rerank while loading: %d %s", r.code, r.body)
	}
}

func TestRoutesAndMethods(t *testing.T) {
	c := testServer(t, Config{})
	f := func(method, path string, wantCode int, wantBody, wantAllow string) {
		t.Helper()
		r := do(t, c, method, path, "")
		if r.code != wantCode || (method != "HEAD" && r.body != wantBody) || r.header.Get("Allow") != wantAllow {
			t.Fatalf("%s %s: %d %q Allow=%q, want %d %q Allow=%q", method, path, r.code, r.body, r.header.Get("Allow"), wantCode, wantBody, wantAllow)
		}
	}
	f("GET", "/v1/rerank", 405, `{"detail":"Method Not Allowed"}`, "POST")
	f("PUT", "/v1/rerank", 405, `{"detail":"Method Not Allowed"}`, "POST")
	f("POST", "/health", 405, `{"detail":"Method Not Allowed"}`, "GET, HEAD")
	f("DELETE", "/", 405, `{"detail":"Method Not Allowed"}`, "GET, HEAD")
	f("GET", "/nope", 404, `{"detail":"Not Found"}`, "")
	f("POST", "/v1/rerank/", 404, `{"detail":"Not Found"}`, "")
	f("GET", "/", 200, `{"service":"rerank-server","version":"v-test","device":"","model":"org/test-model"}`, "")
	f("HEAD", "/health", 200, ``, "")
}

func TestBodyLimit(t *testing.T) {
	c := testServer(t, Config{MaxBodyBytes: 64})
	r := do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["`+strings.Repeat("a", 100)+`"]}`)
	if r.code != 413 || r.body != `{"detail":"Request body too large: the limit is 64 bytes"}` {
		t.Fatalf("over the limit: %d %s", r.code, r.body)
	}
	r = do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["a"]}`)
	if r.code != 200 {
		t.Fatalf("under the limit: %d %s", r.code, r.body)
	}
}

func TestErrorMapping(t *testing.T) {
	f := func(err error, wantCode int, wantBody, wantRetryAfter string) {
		t.Helper()
		svc := rerank.New(rerank.Single("m", &fakeScorer{err: err}), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "m")
		c := testServer(t, Config{Service: svc})
		r := do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["a"]}`)
		if r.code != wantCode || r.body != wantBody || r.header.Get("Retry-After") != wantRetryAfter {
			t.Fatalf("error %v: %d %s Retry-After=%q, want %d %s %q", err, r.code, r.body, r.header.Get("Retry-After"), wantCode, wantBody, wantRetryAfter)
		}
	}
	f(fmt.Errorf("batch: queue full: %w", sdk.ErrOverloaded), 429, `{"detail":"Server overloaded, retry later"}`, "1")
	f(fmt.Errorf("backend: %w", sdk.ErrNotLoaded), 503, `{"detail":"Model not loaded"}`, "1")
	f(fmt.Errorf("backend: plugin exited: %w", sdk.ErrUnavailable), 503, `{"detail":"Model not loaded"}`, "1")
	f(fmt.Errorf("plugin: %w", context.DeadlineExceeded), 504, `{"detail":"Rerank inference timed out"}`, "")
	f(fmt.Errorf("plugin: cannot encode: %w", sdk.ErrInvalidInput), 422, `{"detail":"rerank: scoring 1 pairs on m: plugin: cannot encode: invalid input"}`, "")
	f(errors.New("plugin: boom"), 500, `{"detail":"Internal Server Error"}`, "")
}

func TestTimeout(t *testing.T) {
	scorer := &fakeScorer{block: true}
	svc := rerank.New(rerank.Single("m", scorer), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "m")
	// The fake waits for the deadline, so the test's duration is the
	// timeout, not a guess about scheduling.
	c := testServer(t, Config{Service: svc, Timeout: 20 * time.Millisecond})
	r := do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["a"]}`)
	if r.code != 504 || r.body != `{"detail":"Rerank inference timed out"}` {
		t.Fatalf("timeout: %d %s", r.code, r.body)
	}
}

func TestHealth(t *testing.T) {
	var st atomic.Pointer[Status]
	st.Store(&Status{Device: "cpu", Message: "loading model"})
	var hits atomic.Int64
	c := testServer(t, Config{
		Status:  func() Status { return *st.Load() },
		Warning: "test model with random weights: scores are meaningless",
		HealthSections: map[string]func() any{
			"local_cache": func() any { return map[string]int64{"hits": hits.Load()} },
			"backend": func() any {
				return struct {
					PairsScored int `json:"pairs_scored"`
				}{7}
			},
		},
	})
	f := func(wantCode int, want string) {
		t.Helper()
		r := do(t, c, "GET", "/health", "")
		if r.code != wantCode || r.body != want {
			t.Fatalf("GET /health:\n got %d %s\nwant %d %s", r.code, r.body, wantCode, want)
		}
	}
	warn := `"warning":"test model with random weights: scores are meaningless"`
	httpStats := `"http":{"client_disconnects":0,"body_too_large":0,"lingering_connections":0,"read_timeouts":0,"open_connections":1,"rejected_connections":0,"accept_errors":0}`
	f(503, `{"status":"loading","device":"cpu","model":"org/test-model","message":"loading model",`+warn+`,"backend":{"pairs_scored":7},`+httpStats+`,"local_cache":{"hits":0}}`)
	st.Store(&Status{Ready: true, Device: "cpu"})
	hits.Store(3)
	f(200, `{"status":"ok","device":"cpu","model":"org/test-model",`+warn+`,"backend":{"pairs_scored":7},`+httpStats+`,"local_cache":{"hits":3}}`)
	st.Store(&Status{Failed: true, Device: "cuda", Message: "onnx-cuda: libcudart.so.13 not found", LoadAttempts: 1, LastError: "onnx-cuda: libcudart.so.13 not found"})
	f(503, `{"status":"failed","device":"cuda","model":"org/test-model","message":"onnx-cuda: libcudart.so.13 not found",`+
		`"final":true,"load_attempts":1,"last_error":"onnx-cuda: libcudart.so.13 not found",`+warn+`,"backend":{"pairs_scored":7},`+httpStats+`,"local_cache":{"hits":3}}`)
	// A load failure being retried: loading, not final, when it is next tried.
	st.Store(&Status{Device: "cpu", Message: "load attempt 2 failed…", LoadAttempts: 2, LastError: "hub: 503", NextRetry: time.Date(2026, 12, 2, 7, 0, 1, 500e6, time.UTC)})
	f(503, `{"status":"loading","device":"cpu","model":"org/test-model","message":"load attempt 2 failed…",`+
		`"final":false,"load_attempts":2,"last_error":"hub: 503","next_retry":"2026-12-02T07:00:01.5Z",`+warn+`,"backend":{"pairs_scored":7},`+httpStats+`,"local_cache":{"hits":3}}`)
}

func TestModels(t *testing.T) {
	created := time.Unix(1700000000, 0)
	list := []models.Status{
		{Name: "org/a", Aliases: []string{"a"}, Default: true, State: models.Loaded, Ready: true, Backend: "onnx-cpu",
			Precision: "int8", Device: "cpu", MaxLength: 512, ResidentBytes: 123456, KeepAlive: 5 * time.Minute, Created: created, Loads: 2},
		{Name: "b", State: models.Failed, Message: "no such model", Backend: "onnx-cuda", Precision: "fp16", Device: "cuda",
			MaxLength: 256, KeepAlive: models.Never, Created: created, LoadAttempts: 1, LastError: "no such model", Final: true},
	}
	c := testServer(t, Config{Models: func() []models.Status { return list }})
	r := do(t, c, "GET", "/v1/models", "")
	want := `{"object":"list","data":[` +
		`{"id":"org/a","object":"model","created":1700000000,"owned_by":"rerank-server","aliases":["a"],"default":true,"state":"loaded",` +
		`"backend":"onnx-cpu","precision":"int8","device":"cpu","max_length":512,"resident_memory_bytes":123456,"keep_alive":"5m0s","loads":2,"restarts":0},` +
		`{"id":"b","object":"model","created":1700000000,"owned_by":"rerank-server","aliases":[],"default":false,"state":"failed","message":"no such model",` +
		`"backend":"onnx-cuda","precision":"fp16","device":"cuda","max_length":256,"resident_memory_bytes":0,"keep_alive":"never","loads":0,"restarts":0,` +
		`"load_attempts":1,"last_error":"no such model","final":true}]}`
	if r.code != 200 || r.body != want || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /v1/models:\n got %d %s\nwant 200 %s", r.code, r.body, want)
	}
	// /health lists them too, after the default model's fields.
	r = do(t, c, "GET", "/health", "")
	if r.code != 200 || !strings.HasSuffix(r.body, `,"models":`+strings.TrimSuffix(strings.TrimPrefix(want, `{"object":"list","data":`), "}")+`}`) {
		t.Fatalf("GET /health: %d %s", r.code, r.body)
	}
	if r := do(t, c, "POST", "/v1/models", ""); r.code != 405 || r.header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST /v1/models: %d", r.code)
	}
	// No models configured: an empty list.
	c = testServer(t, Config{})
	if r := do(t, c, "GET", "/v1/models", ""); r.code != 200 || r.body != `{"object":"list","data":[]}` {
		t.Fatalf("GET /v1/models with none: %d %s", r.code, r.body)
	}
}

func TestAppendPythonFloat(t *testing.T) {
	f := func(v float64, want string) {
		t.Helper()
		if got := string(appendPythonFloat(nil, v)); got != want {
			t.Fatalf("appendPythonFloat(%v) = %s, want %s", v, got, want)
		}
	}
	// Expected strings are Python's repr of the same doubles.
	f(0, "0.0")
	f(1, "1.0")
	f(-2, "-2.0")
	f(0.5, "0.5")
	f(float64(float32(0.1)), "0.10000000149011612")
	f(0.0001, "0.0001")
	f(0.00001, "1e-05")
	f(1.5e-7, "1.5e-07")
	f(123456789, "123456789.0")
	f(1e16, "1e+16")
	f(12.34, "12.34")
}

func TestDecodeKeepsNoReferenceToBody(t *testing.T) {
	body := []byte(`{"query":"qq","candidates":["aa","bb"],"model":"mm"}`)
	req, err := decodeRequest(body)
	if err != nil {
		t.Fatal(err)
	}
	for i := range body {
		body[i] = 'X'
	}
	if req.Query != "qq" || req.Candidates[0] != "aa" || req.Candidates[1] != "bb" || req.Model != "mm" {
		t.Fatalf("decoded request changed with the body: %+v", req)
	}
	if !bytes.Contains(body, []byte("X")) {
		t.Fatal("unreachable")
	}
}
