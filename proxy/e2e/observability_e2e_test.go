package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// scrape reads the server's /metrics and returns its families and text.
func scrape(t *testing.T, s *server) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	r := s.do(t, "GET", "/metrics", nil)
	if r.code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", r.code, r.body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(r.body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, r.body)
	}
	return fams, r.body
}

// value returns the value of the series of family name whose labels
// include want; it fails when there is not exactly one.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("no %s in /metrics", name)
	}
	var found []*dto.Metric
next:
	for _, m := range fam.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		found = append(found, m)
	}
	if len(found) != 1 {
		t.Fatalf("%d series of %s with labels %v, want 1", len(found), name, want)
	}
	m := found[0]
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	t.Fatalf("%s: unexpected type", name)
	return 0
}

// histogramSum returns the sum of the one histogram series of name with
// labels want.
func histogramSum(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	value(t, fams, name, want) // exactly one series
	for _, m := range fams[name].GetMetric() {
		ok := true
		for _, l := range m.GetLabel() {
			if v, in := want[l.GetName()]; in && v != l.GetValue() {
				ok = false
			}
		}
		if ok {
			return m.GetHistogram().GetSampleSum()
		}
	}
	return 0
}

// requirePrometheusTool finds prometheus or promtool (Debian's prometheus
// package); under CI a missing tool fails the test (.ci/run installs it),
// elsewhere it skips.
func requirePrometheusTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found (Debian package prometheus; .ci/run installs it): %v", name, err)
	}
	t.Skipf("%s not found (apt-get install prometheus): %v", name, err)
	return ""
}

// promtoolLint runs promtool check metrics on an exposition.
func promtoolLint(t *testing.T, exposition []byte) {
	t.Helper()
	promtool := requirePrometheusTool(t, "promtool")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestMetricsScriptedSequence drives the server through L1 hits, misses, a
// duplicate, a 422, a 429 (the queue bound reached while the plugin is
// stopped with SIGSTOP) and a plugin killed by its PID, then checks the
// exact counter values on /metrics, that /health's counters agree, and
// that promtool's linter accepts the exposition.
func TestMetricsScriptedSequence(t *testing.T) {
	requireRuntime(t)
	s := startServer(t, []string{"RERANKER_MAX_QUEUE=3"}, "--model", modelDir(t, "tiny-bert"), "--model-name", "tiny", "--timeout", "60")
	s.waitHealth(t, "ok")
	post := func(want int, body string) {
		t.Helper()
		if r := s.post(t, body); r.code != want {
			t.Fatalf("POST %s: %d %s, want %d", body, r.code, r.body, want)
		}
	}
	post(200, `{"query":"q","candidates":["a","b","c"]}`) // 3 misses
	post(200, `{"query":"q","candidates":["a","b","c"]}`) // 3 L1 hits
	post(200, `{"query":"q","candidates":["a","d","d"]}`) // 1 hit, 1 miss, 1 duplicate
	post(422, `{"query":"q","candidates":["a"],"top_k":0}`)

	// The plugin stopped, a request of 3 new pairs fills the queue bound
	// of 3; the next request is refused with 429.
	pid := pluginPID(t, s.cmd.Process.Pid)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	done := postPending(t, s, `{"query":"q","candidates":["e","f","g"]}`)
	post(429, `{"query":"q","candidates":["h"]}`)
	fams, _ := scrape(t, s)
	if v := value(t, fams, "rerank_queue_pairs", map[string]string{"model": "tiny"}); v != 3 {
		t.Fatalf("rerank_queue_pairs %v while a request of 3 pairs waits, want 3", v)
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	if r := <-done; r.code != 200 {
		t.Fatalf("the queued request: %d %s", r.code, r.body)
	}

	// The plugin killed: the supervisor restarts it.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for restarts(t, s) == 0 {
		time.Sleep(20 * time.Millisecond)
	}
	s.waitHealth(t, "ok")
	post(200, `{"query":"q","candidates":["i"]}`) // 1 miss, on the new plugin

	fams, text := scrape(t, s)
	m := map[string]string{"model": "tiny"}
	with := func(kv ...string) map[string]string {
		l := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			l[kv[i]] = kv[i+1]
		}
		return l
	}
	f := func(name string, labels map[string]string, want float64) {
		t.Helper()
		if got := value(t, fams, name, labels); got != want {
			t.Errorf("%s%v = %v, want %v", name, labels, got, want)
		}
	}
	route := func(code string) map[string]string {
		return with("route", "/v1/rerank", "dialect", "native", "code", code)
	}
	f("rerank_requests_total", with("route", "/v1/rerank", "dialect", "native", "model", "tiny", "code", "200"), 5)
	f("rerank_requests_total", route("422"), 1)
	f("rerank_requests_total", route("429"), 1)
	f("rerank_pairs_total", with("model", "tiny", "source", "l1"), 4)
	f("rerank_pairs_total", with("model", "tiny", "source", "plugin"), 8)
	f("rerank_pairs_total", with("model", "tiny", "source", "duplicate"), 1)
	f("rerank_pairs_total", with("model", "tiny", "source", "redis"), 0)
	f("rerank_pairs_total", with("model", "tiny", "source", "peer"), 0)
	f("rerank_rejections_total", with("model", "tiny", "reason", "queue_full"), 1)
	f("rerank_plugin_restarts_total", with("model", "tiny", "backend", "cpu"), 1)
	f("rerank_model_loaded", with("model", "tiny", "backend", "cpu", "precision", "fp32", "device", "cpu"), 1)
	f("rerank_queue_pairs", m, 0)
	f("rerank_queue_requests", m, 0)
	f("rerank_batches_in_flight", m, 0)
	// One plugin call per scored request: 3, 1, 3 and 1 pairs.
	f("rerank_batch_pairs", m, 4)
	f("rerank_inference_duration_seconds", m, 4)
	f("rerank_queue_wait_seconds", m, 4)
	if sum := histogramSum(t, fams, "rerank_batch_pairs", m); sum != 8 {
		t.Errorf("rerank_batch_pairs_sum %v, want 8", sum)
	}
	tokens := value(t, fams, "rerank_tokens_total", m)
	padded := histogramSum(t, fams, "rerank_batch_padded_tokens", m)
	if tokens < 8*4 || padded < tokens {
		// Every pair has at least [CLS] q [SEP] d [SEP].
		t.Errorf("rerank_tokens_total %v, padded %v: want at least 4 tokens a pair, padded at least as many", tokens, padded)
	}
	if v := value(t, fams, "rerank_model_load_duration_seconds", with("model", "tiny")); v <= 0 {
		t.Errorf("rerank_model_load_duration_seconds %v", v)
	}
	if v := value(t, fams, "rerank_plugin_resident_memory_bytes", with("model", "tiny")); v < 1<<20 {
		t.Errorf("rerank_plugin_resident_memory_bytes %v: a plugin with ONNX Runtime loaded holds megabytes", v)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "rerank_build_info"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s in /metrics", name)
		}
	}
	// /health reads the same counters.
	hr := s.do(t, "GET", "/health", nil)
	var h struct {
		Local struct {
			Hits uint64 `json:"hits"`
		} `json:"local_cache"`
	}
	if err := json.Unmarshal(hr.body, &h); err != nil || h.Local.Hits != 4 {
		t.Errorf("/health %s: want local_cache.hits 4, as /metrics says (%v)", hr.body, err)
	}
	promtoolLint(t, text)
}

// TestMetricsAddr moves /metrics to a listener of its own.
func TestMetricsAddr(t *testing.T) {
	requireRuntime(t)
	port := freePort(t)
	s := startServer(t, nil, "--model", modelDir(t, "tiny-bert"), "--metrics-addr", "127.0.0.1:"+strconv.Itoa(port))
	s.waitHealth(t, "ok")
	if r := s.do(t, "GET", "/metrics", nil); r.code != http.StatusNotFound {
		t.Fatalf("GET /metrics on the main port with --metrics-addr: %d", r.code)
	}
	resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.Contains(buf.String(), "\nrerank_requests_total{") {
		t.Fatalf("GET /metrics on --metrics-addr: %d\n%s", resp.StatusCode, buf.String())
	}
}

// TestPrometheusScrapes runs a real Prometheus server (Debian's prometheus
// package) on a free port with its own storage, scraping the server every
// second, and asks its HTTP API for up and a rerank_ series.
func TestPrometheusScrapes(t *testing.T) {
	requireRuntime(t)
	bin := requirePrometheusTool(t, "prometheus")
	s := startServer(t, nil, "--model", modelDir(t, "tiny-bert"), "--model-name", "tiny")
	s.waitHealth(t, "ok")
	if r := s.post(t, `{"query":"q","candidates":["a","b"]}`); r.code != 200 {
		t.Fatalf("POST: %d %s", r.code, r.body)
	}
	dir := t.TempDir()
	target := strings.TrimPrefix(s.url, "http://")
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: rerank\n    static_configs:\n      - targets: [%q]\n", target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promPort := freePort(t)
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address=127.0.0.1:"+strconv.Itoa(promPort))
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus logs:\n%s", logs.String())
		}
	}()
	// query answers a PromQL query's results, and whether Prometheus
	// accepted it.
	query := func(q string) ([]json.RawMessage, bool) {
		resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(promPort) + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return nil, false
		}
		defer resp.Body.Close()
		var v struct {
			Status string `json:"status"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&v) != nil || v.Status != "success" {
			return nil, false
		}
		return v.Data.Result, true
	}
	// The limit only stops a broken setup from hanging the test.
	limit := time.Now().Add(2 * time.Minute)
	for {
		up, _ := query(`up{job="rerank"} == 1`)
		series, _ := query(`rerank_requests_total{route="/v1/rerank",model="tiny",code="200"}`)
		if len(up) == 1 && len(series) == 1 {
			break
		}
		if time.Now().After(limit) {
			t.Fatalf("Prometheus never saw the target up with a rerank_ series (up %s, series %s)", up, series)
		}
		time.Sleep(250 * time.Millisecond)
	}

	// Every query of the Grafana dashboard is one this Prometheus accepts
	// against these series.
	b, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "grafana", "rerank-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("deploy/grafana/rerank-dashboard.json: %v", err)
	}
	vars := strings.NewReplacer("$__rate_interval", "1m", "$model", ".*")
	n := 0
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			n++
			if _, ok := query(vars.Replace(target.Expr)); !ok {
				t.Errorf("dashboard panel %q: Prometheus refuses %s", p.Title, target.Expr)
			}
		}
	}
	if n < 10 {
		t.Errorf("the dashboard has %d queries", n)
	}
	// The shipped scrape configuration is valid.
	promtool := requirePrometheusTool(t, "promtool")
	if out, err := exec.Command(promtool, "check", "config", filepath.Join(repoRoot, "deploy", "prometheus", "prometheus.yml")).CombinedOutput(); err != nil {
		t.Errorf("promtool check config deploy/prometheus/prometheus.yml: %v\n%s", err, out)
	}
}

// otlpReceiver is an OTLP/gRPC trace collector inside the test.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*receivedSpan
}

// receivedSpan is a span with its resource's process id.
type receivedSpan struct {
	*tracepb.Span
	pid int64
}

func (o *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		var pid int64
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "process.pid" {
				pid = a.GetValue().GetIntValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				o.spans = append(o.spans, &receivedSpan{Span: sp, pid: pid})
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (o *otlpReceiver) snapshot() []*receivedSpan {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*receivedSpan(nil), o.spans...)
}

// TestTracingIntoPlugin runs the server with OTLP export to a receiver in
// the test and sends a request with a W3C traceparent: the spans of the
// request, the cache, the batch, the plugin call and the plugin's own
// tokenize and run spans (exported by the plugin process) arrive in the
// client's trace, each plugin span under the proxy's.
func TestTracingIntoPlugin(t *testing.T) {
	requireRuntime(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recv := &otlpReceiver{}
	gs := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(gs, recv)
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()

	s := startServer(t, []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + ln.Addr().String(),
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		// Export within 100 ms rather than the default 5 s.
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}, "--model", modelDir(t, "tiny-bert"), "--model-name", "tiny")
	s.waitHealth(t, "ok")

	traceID, parentID := "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, err := http.NewRequest("POST", s.url+"/v1/rerank", strings.NewReader(`{"query":"q","candidates":["a","b","c"]}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	req.Header.Set("X-Request-ID", "trace-test-1")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Request-ID") != "trace-test-1" {
		t.Fatalf("POST: %d, X-Request-ID %q", resp.StatusCode, resp.Header.Get("X-Request-ID"))
	}

	byName := func(spans []*receivedSpan, name string) *receivedSpan {
		for _, sp := range spans {
			if sp.GetName() == name && hex.EncodeToString(sp.GetTraceId()) == traceID {
				return sp
			}
		}
		return nil
	}
	attr := func(sp *receivedSpan, key string) string {
		for _, a := range sp.GetAttributes() {
			if a.GetKey() == key {
				v := a.GetValue()
				if v.GetStringValue() != "" {
					return v.GetStringValue()
				}
				return strconv.FormatInt(v.GetIntValue(), 10)
			}
		}
		return ""
	}
	// runPairs sums the pairs of the trace's ort.run spans: the plugin may
	// split a call into several runs, one per CPU at once.
	runPairs := func(spans []*receivedSpan) int {
		n := 0
		for _, sp := range spans {
			if sp.GetName() == "ort.run" && hex.EncodeToString(sp.GetTraceId()) == traceID {
				k, _ := strconv.Atoi(attr(sp, "rerank.batch_size"))
				n += k
			}
		}
		return n
	}
	want := []string{"POST /v1/rerank", "rerank.cache", "rerank.batch.wait", "rerank.batch", "rerank.plugin.score", "ort.tokenize", "ort.run"}
	var spans []*receivedSpan
	limit := time.Now().Add(time.Minute) // stops a broken exporter from hanging the test
	for {
		spans = recv.snapshot()
		missing := ""
		for _, name := range want {
			if byName(spans, name) == nil {
				missing = name
				break
			}
		}
		if missing == "" && runPairs(spans) >= 3 {
			break
		}
		if missing == "" {
			missing = "ort.run (all 3 pairs)"
		}
		if time.Now().After(limit) {
			var got []string
			for _, sp := range spans {
				got = append(got, sp.GetName())
			}
			t.Fatalf("no span %q in the client's trace after a minute; got %q", missing, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	byID := map[string]*receivedSpan{}
	for _, sp := range spans {
		byID[hex.EncodeToString(sp.GetSpanId())] = sp
	}
	root := byName(spans, "POST /v1/rerank")
	if got := hex.EncodeToString(root.GetParentSpanId()); got != parentID {
		t.Errorf("the HTTP span's parent is %s, want the traceparent's %s", got, parentID)
	}
	for k, v := range map[string]string{"rerank.request_id": "trace-test-1", "rerank.model": "tiny", "rerank.pairs": "3", "http.response.status_code": "200"} {
		if got := attr(root, k); got != v {
			t.Errorf("HTTP span attribute %s = %q, want %q", k, got, v)
		}
	}
	// ancestors lists a span's ancestors up to the trace's root.
	ancestors := func(sp *receivedSpan) []*receivedSpan {
		var chain []*receivedSpan
		for {
			p, ok := byID[hex.EncodeToString(sp.GetParentSpanId())]
			if !ok {
				return chain
			}
			chain = append(chain, p)
			sp = p
		}
	}
	call := byName(spans, "rerank.plugin.score")
	if attr(call, "rerank.batch_size") != "3" || attr(call, "rerank.tokens") == "0" || attr(call, "rerank.tokens") == "" {
		t.Errorf("plugin call span attributes: batch size %q, tokens %q", attr(call, "rerank.batch_size"), attr(call, "rerank.tokens"))
	}
	for _, name := range []string{"ort.tokenize", "ort.run"} {
		sp := byName(spans, name)
		if sp.pid == 0 || sp.pid == int64(s.cmd.Process.Pid) {
			t.Errorf("span %s comes from process %d, want the plugin's (the proxy is %d)", name, sp.pid, s.cmd.Process.Pid)
		}
		chain := ancestors(sp)
		found := false
		for _, a := range chain {
			if a.GetSpanId() != nil && bytes.Equal(a.GetSpanId(), call.GetSpanId()) {
				found = true
			}
		}
		if !found || chain[len(chain)-1].GetName() != "POST /v1/rerank" {
			var names []string
			for _, a := range chain {
				names = append(names, a.GetName())
			}
			t.Errorf("span %s's ancestors %q: want the proxy's plugin call and, at the top, the HTTP span", name, names)
		}
	}
	if n := runPairs(spans); n != 3 {
		t.Errorf("the ort.run spans hold %d pairs, want 3", n)
	}
}
