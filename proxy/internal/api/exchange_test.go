package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/proxy/internal/rerank"
	"github.com/rerank-sidecar/rerank/sdk"
)

// lockedBuffer is a log sink the server writes from its goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(l.b.String()), "\n")
}

func newRequest(method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequest(method, "http://rerank.test"+path, body)
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, err
}

func TestRequestID(t *testing.T) {
	c := testServer(t, Config{})
	f := func(sent string, keep bool) {
		t.Helper()
		req := strings.NewReader(`{"query":"q","candidates":["a"]}`)
		hreq, err := newRequest("POST", "/v1/rerank", req)
		if err != nil {
			t.Fatal(err)
		}
		if sent != "" {
			hreq.Header.Set(RequestIDHeader, sent)
		}
		resp, err := c.Do(hreq)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := resp.Header.Get(RequestIDHeader)
		switch {
		case keep && got != sent:
			t.Fatalf("sent request id %q, got %q back", sent, got)
		case !keep && (got == "" || got == sent || !validRequestID([]byte(got))):
			t.Fatalf("sent request id %q, got %q back: want a fresh valid one", sent, got)
		}
	}
	f("", false)
	f("3f2b9c1e-7a44-4d0e-9a51-0c1d2e3f4a5b", true)
	f("a", true)
	f(strings.Repeat("x", maxRequestIDLen), true)
	f(strings.Repeat("x", maxRequestIDLen+1), false)
	f("has space", false)
	f("tab\tinside", false)

	// Generated ids differ from one request to the next.
	seen := map[string]bool{}
	for range 20 {
		r := do(t, c, "GET", "/health", "")
		id := r.header.Get(RequestIDHeader)
		if seen[id] {
			t.Fatalf("request id %q generated twice", id)
		}
		seen[id] = true
	}
}

func TestAccessLog(t *testing.T) {
	var buf lockedBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, JSONFormat: true, Level: hclog.Info})
	scorer := &fakeScorer{scores: map[string]float32{"a": 0.5}}
	svc := rerank.New(rerank.Single("org/test-model", scorer), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "org/test-model")
	c := testServer(t, Config{Service: svc, AccessLog: log})
	hreq, err := newRequest("POST", "/v1/rerank", strings.NewReader(`{"query":"q","candidates":["a","b","a"]}`))
	if err != nil {
		t.Fatal(err)
	}
	hreq.Header.Set(RequestIDHeader, "req-1")
	resp, err := c.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	do(t, c, "GET", "/nowhere", "")
	lines := buf.lines()
	if len(lines) != 2 {
		t.Fatalf("access log has %d lines, want 2:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	var rec struct {
		Message     string  `json:"@message"`
		RequestID   string  `json:"request_id"`
		Method      string  `json:"method"`
		Route       string  `json:"route"`
		Dialect     string  `json:"dialect"`
		Model       string  `json:"model"`
		Status      int     `json:"status"`
		DurationMS  float64 `json:"duration_ms"`
		Pairs       int     `json:"pairs"`
		CachedPairs int     `json:"cached_pairs"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("%s: %v", lines[0], err)
	}
	if rec.Message != "request" || rec.RequestID != "req-1" || rec.Method != "POST" || rec.Route != "/v1/rerank" ||
		rec.Dialect != DialectNative || rec.Model != "org/test-model" || rec.Status != 200 || rec.Pairs != 3 || rec.CachedPairs != 0 || rec.DurationMS < 0 {
		t.Fatalf("access log line %s", lines[0])
	}
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil {
		t.Fatalf("%s: %v", lines[1], err)
	}
	if rec.Route != otherRoute || rec.Status != 404 || rec.Model != "" {
		t.Fatalf("access log line of an unknown path: %s", lines[1])
	}
}

// tallyScorer plays the cache stage: it says the first pair came from L1.
type tallyScorer struct{ fakeScorer }

func (s *tallyScorer) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	if t := metrics.TallyFrom(ctx); t != nil {
		t.L1++
	}
	return s.fakeScorer.Score(ctx, pairs)
}

func TestMetricsCounts(t *testing.T) {
	reg := metrics.New("v-test")
	svc := rerank.New(rerank.Single("org/test-model", &tallyScorer{}), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "org/test-model")
	c := testServer(t, Config{Service: svc, Metrics: reg, ServeMetrics: true, MaxBodyBytes: 200})
	for range 3 {
		do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["a","b"]}`)
	}
	do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["a","b","c","d","e"]}`) // 422
	do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["`+strings.Repeat("x", 300)+`"]}`)
	do(t, c, "GET", "/v1/rerank", "")
	do(t, c, "GET", "/secret/path", "")
	do(t, c, "GET", "/health", "")

	r := do(t, c, "GET", "/metrics", "")
	if r.code != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %s", r.code, r.header.Get("Content-Type"))
	}
	want := `
# HELP rerank_requests_total HTTP requests answered, by route, API dialect, model and status code.
# TYPE rerank_requests_total counter
rerank_requests_total{code="200",dialect="",model="",route="/health"} 1
rerank_requests_total{code="200",dialect="",model="",route="/metrics"} 1
rerank_requests_total{code="200",dialect="native",model="org/test-model",route="/v1/rerank"} 3
rerank_requests_total{code="404",dialect="",model="",route="other"} 1
rerank_requests_total{code="405",dialect="native",model="",route="/v1/rerank"} 1
rerank_requests_total{code="413",dialect="native",model="",route="/v1/rerank"} 1
rerank_requests_total{code="422",dialect="native",model="",route="/v1/rerank"} 1
# HELP rerank_pairs_total Pairs of answered rerank requests by where their score came from: l1, redis, peer (another request's computation), duplicate (an earlier copy in the same request) or plugin.
# TYPE rerank_pairs_total counter
rerank_pairs_total{model="org/test-model",source="duplicate"} 0
rerank_pairs_total{model="org/test-model",source="l1"} 3
rerank_pairs_total{model="org/test-model",source="peer"} 0
rerank_pairs_total{model="org/test-model",source="plugin"} 3
rerank_pairs_total{model="org/test-model",source="redis"} 0
# HELP rerank_rejections_total Requests refused before scoring, by reason: queue_full, deadline, too_large, and the reasons other stages add.
# TYPE rerank_rejections_total counter
rerank_rejections_total{model="",reason="too_large"} 1
`
	if err := testutil.GatherAndCompare(reg.Gatherer(), strings.NewReader(want),
		"rerank_requests_total", "rerank_pairs_total", "rerank_rejections_total"); err != nil {
		t.Fatal(err)
	}
	for _, series := range []string{"rerank_build_info", "go_goroutines", "process_resident_memory_bytes", "rerank_request_duration_seconds_bucket"} {
		if !strings.Contains(r.body, "\n"+series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}

	// Without ServeMetrics, /metrics is not on the main port.
	c = testServer(t, Config{Service: svc, Metrics: reg})
	if r := do(t, c, "GET", "/metrics", ""); r.code != 404 {
		t.Fatalf("GET /metrics without ServeMetrics: %d", r.code)
	}
}

// spanScorer records whether the pipeline saw the request's span.
type spanScorer struct {
	fakeScorer
	traced atomic.Bool
}

func (s *spanScorer) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	s.traced.Store(trace.SpanFromContext(ctx).IsRecording())
	return s.fakeScorer.Score(ctx, pairs)
}

func TestTracing(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	scorer := &spanScorer{}
	svc := rerank.New(rerank.Single("org/test-model", scorer), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "org/test-model")
	c := testServer(t, Config{Service: svc, Tracing: tp})

	hreq, err := newRequest("POST", "/v1/rerank", strings.NewReader(`{"query":"q","candidates":["a","b"]}`))
	if err != nil {
		t.Fatal(err)
	}
	hreq.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	hreq.Header.Set(RequestIDHeader, "rid-7")
	resp, err := c.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	do(t, c, "GET", "/health", "") // not a scoring route: no span
	do(t, c, "POST", "/v1/rerank", `{"query":"q","candidates":["a"],"top_k":0}`)

	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2 (the two rerank requests)", len(spans))
	}
	sp := spans[0]
	if sp.Name() != "POST /v1/rerank" || sp.SpanKind() != trace.SpanKindServer {
		t.Fatalf("span %q kind %v", sp.Name(), sp.SpanKind())
	}
	if got := sp.Parent().TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" || sp.Parent().SpanID().String() != "00f067aa0ba902b7" || !sp.Parent().IsRemote() {
		t.Fatalf("span's parent %v, want the traceparent's", sp.Parent())
	}
	attrs := map[string]string{}
	for _, a := range sp.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	for k, v := range map[string]string{"rerank.request_id": "rid-7", "rerank.model": "org/test-model", "rerank.pairs": "2",
		"rerank.cached_pairs": "0", "http.response.status_code": "200", "http.route": "/v1/rerank", "rerank.dialect": DialectNative} {
		if attrs[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, attrs[k], v)
		}
	}
	if !scorer.traced.Load() {
		t.Error("the pipeline did not get the request's span in its context")
	}
	// A request without traceparent starts a trace of its own.
	if spans[1].Parent().IsValid() {
		t.Errorf("a request without traceparent has parent %v", spans[1].Parent())
	}
}

// TestMetricsCountDialects checks that every dialect's route is counted
// under its own route and dialect labels (the route table carries them).
func TestMetricsCountDialects(t *testing.T) {
	reg := metrics.New("v-test")
	svc := rerank.New(rerank.Single("org/test-model", &fakeScorer{}), rerank.Limits{MaxCandidates: 4, MaxCandidateChars: 10}, "org/test-model")
	c := testServer(t, Config{Service: svc, Metrics: reg})
	f := func(path, body string) {
		t.Helper()
		if r := do(t, c, "POST", path, body); r.code != 200 {
			t.Fatalf("POST %s %s: %d %s", path, body, r.code, r.body)
		}
	}
	f("/v1/rerank", `{"query":"q","candidates":["a"]}`)
	f("/v1/rerank", `{"model":"org/test-model","query":"q","documents":["a"]}`)
	f("/v2/rerank", `{"model":"org/test-model","query":"q","documents":["a"]}`)
	f("/rerank", `{"model":"org/test-model","query":"q","documents":["a"]}`)
	f("/rerank", `{"query":"q","texts":["a"]}`)
	want := `
# HELP rerank_requests_total HTTP requests answered, by route, API dialect, model and status code.
# TYPE rerank_requests_total counter
rerank_requests_total{code="200",dialect="cohere-v1",model="org/test-model",route="/v1/rerank"} 1
rerank_requests_total{code="200",dialect="cohere-v2",model="org/test-model",route="/v2/rerank"} 1
rerank_requests_total{code="200",dialect="jina",model="org/test-model",route="/rerank"} 1
rerank_requests_total{code="200",dialect="native",model="org/test-model",route="/v1/rerank"} 1
rerank_requests_total{code="200",dialect="tei",model="org/test-model",route="/rerank"} 1
`
	if err := testutil.GatherAndCompare(reg.Gatherer(), strings.NewReader(want), "rerank_requests_total"); err != nil {
		t.Fatal(err)
	}
}
