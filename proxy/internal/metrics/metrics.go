// Package metrics is the proxy's Prometheus instrumentation: the rerank_*
// series of GET /metrics (named after text-embeddings-inference's te_*
// series, in base units, with bounded labels: never query text, never a
// request id), the Go runtime and process collectors, and the Tally through
// which the cache stage tells the API layer where a request's scores came
// from.
//
// The hot path only touches pre-resolved series: a request's counter and
// histogram are looked up once per (route, model, status code) and then
// cost an atomic add each; the per-model series are bound when the model's
// pipeline is built. State that the stages already keep for /health (queue
// depth, batches in flight, restarts, the Redis breaker) is read at scrape
// time from the same counters, so /health and /metrics never disagree and
// the hot path pays nothing for them.
//
// The library is prometheus/client_golang rather than VictoriaMetrics'
// metrics: both cost tens to a couple of hundred nanoseconds per counter
// add or histogram observation on the shared 2-core machine, neither
// measurably faster (docs/BENCHMARKS.md, "Observability (issue 11)"), which
// is noise beside the tens of µs of an L1-cached request; client_golang writes
// classic `le` histograms that histogram_quantile reads, HELP and TYPE lines
// that promtool's linter wants, and the standard go_* and process_* series.
package metrics

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// namespace prefixes every series of this server.
const namespace = "rerank"

// Where a pair's score came from: the values of rerank_pairs_total's source
// label.
const (
	// SourceL1 is the in-process score cache.
	SourceL1 = "l1"
	// SourceRedis is the Redis score cache shared by proxies.
	SourceRedis = "redis"
	// SourcePeer is another request's computation of the same pair: a
	// concurrent request in this process, or another proxy that held the
	// pair's Redis lock.
	SourcePeer = "peer"
	// SourceDuplicate is an earlier copy of the same pair in the same
	// request.
	SourceDuplicate = "duplicate"
	// SourcePlugin is the model: the pair was scored by the plugin.
	SourcePlugin = "plugin"
)

// Reasons a request is rejected: the values of rerank_rejections_total's
// reason label. Other packages may add their own with Model.Reject or
// Registry.Reject; a reason must be a constant, never request data.
const (
	// ReasonQueueFull is a 429 because the batcher's queue bound was reached.
	ReasonQueueFull = "queue_full"
	// ReasonDeadline is a 429 because the queue ahead would make the
	// request miss its deadline (deadline-aware shedding).
	ReasonDeadline = "deadline"
	// ReasonTooLarge is a 413: the body is over --max-body-bytes.
	ReasonTooLarge = "too_large"
)

// durationBuckets are the request, queue-wait and inference histograms'
// bounds in seconds: from half a millisecond (an L1-cached request) to 30 s
// (three default request budgets), about 2.5× apart.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// pairBuckets bound the batch-size histogram: powers of two up to 1,024
// pairs, five times the default candidate limit.
var pairBuckets = prometheus.ExponentialBuckets(1, 2, 11)

// tokenBuckets bound the padded-token histogram: powers of four from 64
// tokens (a couple of short pairs) to 262,144 (512 pairs of 512 tokens).
var tokenBuckets = prometheus.ExponentialBuckets(64, 4, 7)

// Registry holds every series of the server. Its methods are safe for
// concurrent use; a nil *Registry discards everything, so stages built
// without metrics need no checks.
type Registry struct {
	reg *prometheus.Registry

	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	pairs        *prometheus.CounterVec
	queueWait    *prometheus.HistogramVec
	inference    *prometheus.HistogramVec
	batchPairs   *prometheus.HistogramVec
	paddedTokens *prometheus.HistogramVec
	tokens       *prometheus.CounterVec
	rejections   *prometheus.CounterVec

	series sync.Map // seriesKey → *requestSeries
	byName sync.Map // model name → *Model

	mu     sync.Mutex
	models map[string]func() ModelState
}

// New returns a Registry with the rerank_* series, the Go runtime and
// process collectors, and rerank_build_info for version.
func New(version string) *Registry {
	r := &Registry{reg: prometheus.NewRegistry(), models: map[string]func() ModelState{}}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
		r.reg.MustRegister(v)
		return v
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
		r.reg.MustRegister(v)
		return v
	}
	r.requests = counter("requests_total",
		"HTTP requests answered, by route, API dialect, model and status code.", "route", "dialect", "model", "code")
	r.duration = histogram("request_duration_seconds",
		"Time from reading an HTTP request to writing its answer, by route, API dialect and model.", durationBuckets, "route", "dialect", "model")
	r.pairs = counter("pairs_total",
		"Pairs of answered rerank requests by where their score came from: l1, redis, peer (another request's computation), duplicate (an earlier copy in the same request) or plugin.", "model", "source")
	r.queueWait = histogram("queue_wait_seconds",
		"Time a request's pairs waited in the micro-batcher before their first batch left for the plugin.", durationBuckets, "model")
	r.inference = histogram("inference_duration_seconds",
		"Time of one plugin call (one batch), gRPC included.", durationBuckets, "model")
	r.batchPairs = histogram("batch_pairs",
		"Pairs per plugin call.", pairBuckets, "model")
	r.paddedTokens = histogram("batch_padded_tokens",
		"Tokens per plugin call with padding: the sum over the plugin's runs of pairs times the longest pair.", tokenBuckets, "model")
	r.tokens = counter("tokens_total",
		"Tokens the plugin scored, without padding.", "model")
	r.rejections = counter("rejections_total",
		"Requests refused before scoring, by reason: queue_full, deadline, too_large, and the reasons other stages add.", "model", "reason")
	r.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "build_info",
			Help:        "Always 1; the version label is the server's version.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }),
		&stateCollector{r: r},
	)
	return r
}

// Gatherer returns the registry for an exposition handler.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// seriesKey identifies one request series.
type seriesKey struct {
	route, dialect, model string
	code                  int
}

// requestSeries is a request counter and duration histogram, resolved once.
type requestSeries struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

// Request counts one answered HTTP request. route must be a route of the
// server's table (or "other"), dialect a constant, model a served model's
// name or "": never request data, so that the labels stay bounded.
func (r *Registry) Request(route, dialect, model string, code int, d time.Duration) {
	if r == nil {
		return
	}
	k := seriesKey{route, dialect, model, code}
	v, ok := r.series.Load(k)
	if !ok {
		v, _ = r.series.LoadOrStore(k, &requestSeries{
			count:    r.requests.WithLabelValues(route, dialect, model, strconv.Itoa(code)),
			duration: r.duration.WithLabelValues(route, dialect, model),
		})
	}
	s := v.(*requestSeries)
	s.count.Inc()
	s.duration.Observe(d.Seconds())
}

// Reject counts a refusal that no model's pipeline saw, such as a body over
// the size limit; model is "" when the request was not read that far.
func (r *Registry) Reject(model, reason string) {
	if r == nil {
		return
	}
	r.rejections.WithLabelValues(model, reason).Inc()
}

// ModelState is a model's state at scrape time, read from the counters its
// stages keep for /health.
type ModelState struct {
	// Backend names the plugin kind (cpu, cuda, coreml).
	Backend string
	// Precision is the precision the model runs at, once loaded.
	Precision string
	// Device is where inference runs, once loaded.
	Device string
	// Loaded says the model is loaded and serving.
	Loaded bool
	// LoadDuration is how long the last successful load took; 0 before one.
	LoadDuration time.Duration
	// Restarts counts restarts of the model's plugin after a crash.
	Restarts uint64
	// PluginPID is the plugin process's id, 0 when none runs.
	PluginPID int
	// QueuePairs counts pairs admitted and not answered (queued and in
	// flight) in the model's batcher.
	QueuePairs int
	// QueueRequests counts requests admitted and not answered.
	QueueRequests int
	// InFlightBatches counts plugin calls running now.
	InFlightBatches int
	// Redis is the model's Redis cache; nil when Redis is off.
	Redis *RedisState
}

// RedisState is a model's Redis cache state.
type RedisState struct {
	// Errors counts failed Redis calls.
	Errors uint64
	// Skipped counts calls not made because the circuit breaker was open.
	Skipped uint64
	// BreakerOpen says the circuit breaker is open (Redis treated as down).
	BreakerOpen bool
	// BreakerOpened counts how often the circuit breaker opened.
	BreakerOpened uint64
	// BreakerClosed counts how often it closed again once Redis answered.
	BreakerClosed uint64
}

// Model returns the series of the model name; its state is reported once
// SetState gives a function to read it.
func (r *Registry) Model(name string) *Model {
	if r == nil {
		return nil
	}
	v, ok := r.byName.Load(name)
	if !ok {
		v, _ = r.byName.LoadOrStore(name, r.newModel(name))
	}
	return v.(*Model)
}

// SetState has every scrape read the model's state from f (the stages are
// built after the series they feed, hence the separate call); nil stops
// reporting it, as after the model was unloaded. Its counters stay, as
// counters must not go back.
func (m *Model) SetState(f func() ModelState) {
	if m == nil {
		return
	}
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	if f == nil {
		delete(m.r.models, m.name)
		return
	}
	m.r.models[m.name] = f
}

// newModel resolves the series of the model name.
func (r *Registry) newModel(name string) *Model {
	m := &Model{
		r:            r,
		name:         name,
		queueWait:    r.queueWait.WithLabelValues(name),
		inference:    r.inference.WithLabelValues(name),
		batchPairs:   r.batchPairs.WithLabelValues(name),
		paddedTokens: r.paddedTokens.WithLabelValues(name),
		tokens:       r.tokens.WithLabelValues(name),
	}
	for i, src := range sources {
		m.pairs[i] = r.pairs.WithLabelValues(name, src)
	}
	return m
}

// Pairs counts the pairs of one answered request of the model name: those t
// says came from a cache or a peer, and the rest of n from the plugin.
func (r *Registry) Pairs(model string, n int, t *Tally) {
	if r == nil {
		return
	}
	r.Model(model).Pairs(n, t)
}

// sources are the pair sources in Tally order.
var sources = [...]string{SourceL1, SourceRedis, SourcePeer, SourceDuplicate, SourcePlugin}

// Model is the series of one model's pipeline. A nil *Model discards
// everything.
type Model struct {
	r            *Registry
	name         string
	queueWait    prometheus.Observer
	inference    prometheus.Observer
	batchPairs   prometheus.Observer
	paddedTokens prometheus.Observer
	tokens       prometheus.Counter
	pairs        [len(sources)]prometheus.Counter
}

// Name is the model's name as its series carry it.
func (m *Model) Name() string {
	if m == nil {
		return ""
	}
	return m.name
}

// QueueWait records how long a request's pairs waited for their first batch.
func (m *Model) QueueWait(d time.Duration) {
	if m != nil {
		m.queueWait.Observe(d.Seconds())
	}
}

// Batch records one plugin call: its pairs, its duration, and the tokens
// the plugin reported (0 when it reports none).
func (m *Model) Batch(pairs int, d time.Duration, tokens, padded int64) {
	if m == nil {
		return
	}
	m.batchPairs.Observe(float64(pairs))
	m.inference.Observe(d.Seconds())
	if tokens > 0 {
		m.tokens.Add(float64(tokens))
	}
	if padded > 0 {
		m.paddedTokens.Observe(float64(padded))
	}
}

// Reject counts a request of this model refused for reason.
func (m *Model) Reject(reason string) {
	if m != nil {
		m.r.Reject(m.name, reason)
	}
}

// Pairs counts the pairs of one answered request: those t says came from a
// cache or a peer, and the rest of n from the plugin.
func (m *Model) Pairs(n int, t *Tally) {
	if m == nil {
		return
	}
	counts := [len(sources)]int{}
	if t != nil {
		counts = [len(sources)]int{t.L1, t.Redis, t.Peer, t.Duplicate, 0}
	}
	counts[len(sources)-1] = n - t.Cached()
	for i, c := range counts {
		if c > 0 {
			m.pairs[i].Add(float64(c))
		}
	}
}

// Tally counts where one request's pairs were answered. The API layer puts
// one in the request's context (WithTally) and the cache stage fills it in
// (TallyFrom); both run on the request's goroutine, one after the other, so
// the fields need no synchronisation.
type Tally struct {
	// L1 counts pairs answered by the in-process cache.
	L1 int
	// Redis counts pairs answered by Redis.
	Redis int
	// Peer counts pairs answered by another request's computation.
	Peer int
	// Duplicate counts repeats of an earlier pair in the same request.
	Duplicate int
}

// Cached counts the pairs the plugin did not score for this request.
func (t *Tally) Cached() int {
	if t == nil {
		return 0
	}
	return t.L1 + t.Redis + t.Peer + t.Duplicate
}

type tallyKey struct{}

// WithTally returns ctx carrying t.
func WithTally(ctx context.Context, t *Tally) context.Context {
	return context.WithValue(ctx, tallyKey{}, t)
}

// TallyFrom returns ctx's tally, or nil; a nil *Tally's counts are to be
// skipped by the caller.
func TallyFrom(ctx context.Context) *Tally {
	t, _ := ctx.Value(tallyKey{}).(*Tally)
	return t
}

// stateCollector reports the models' state functions at scrape time.
type stateCollector struct{ r *Registry }

var (
	descQueuePairs = prometheus.NewDesc(namespace+"_queue_pairs",
		"Pairs admitted to the micro-batcher and not answered yet (queued and in flight).", []string{"model"}, nil)
	descQueueRequests = prometheus.NewDesc(namespace+"_queue_requests",
		"Requests admitted to the micro-batcher and not answered yet.", []string{"model"}, nil)
	descInFlight = prometheus.NewDesc(namespace+"_batches_in_flight",
		"Plugin calls running now.", []string{"model"}, nil)
	descRestarts = prometheus.NewDesc(namespace+"_plugin_restarts_total",
		"Restarts of the model's plugin after it crashed or was killed.", []string{"model", "backend"}, nil)
	descLoaded = prometheus.NewDesc(namespace+"_model_loaded",
		"1 while the model is loaded and serving, else 0.", []string{"model", "backend", "precision", "device"}, nil)
	descLoadTime = prometheus.NewDesc(namespace+"_model_load_duration_seconds",
		"How long the model's last successful load took, plugin start included.", []string{"model", "backend", "precision", "device"}, nil)
	descRSS = prometheus.NewDesc(namespace+"_plugin_resident_memory_bytes",
		"Resident memory of the model's plugin process (Linux only).", []string{"model", "backend"}, nil)
	descRedisErrors = prometheus.NewDesc(namespace+"_redis_errors_total",
		"Failed Redis calls; each was answered without Redis.", []string{"model"}, nil)
	descRedisSkipped = prometheus.NewDesc(namespace+"_redis_skipped_total",
		"Redis calls not made because the circuit breaker was open.", []string{"model"}, nil)
	descRedisBreaker = prometheus.NewDesc(namespace+"_redis_breaker_open",
		"1 while the Redis circuit breaker is open (Redis treated as down), else 0.", []string{"model"}, nil)
	descRedisOpened = prometheus.NewDesc(namespace+"_redis_breaker_opened_total",
		"Times the Redis circuit breaker opened: after consecutive failed calls, or when a probe failed.", []string{"model"}, nil)
	descRedisClosed = prometheus.NewDesc(namespace+"_redis_breaker_closed_total",
		"Times the Redis circuit breaker closed again because a probe call succeeded.", []string{"model"}, nil)
)

// Describe sends nothing: the collector is unchecked, as its series come
// and go with the models.
func (c *stateCollector) Describe(chan<- *prometheus.Desc) {}

// Collect reads every model's state.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.r.mu.Lock()
	states := make(map[string]func() ModelState, len(c.r.models))
	for name, f := range c.r.models {
		states[name] = f
	}
	c.r.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for name, f := range states {
		s := f()
		gauge(descQueuePairs, float64(s.QueuePairs), name)
		gauge(descQueueRequests, float64(s.QueueRequests), name)
		gauge(descInFlight, float64(s.InFlightBatches), name)
		counter(descRestarts, float64(s.Restarts), name, s.Backend)
		gauge(descLoaded, boolFloat(s.Loaded), name, s.Backend, s.Precision, s.Device)
		if s.LoadDuration > 0 {
			gauge(descLoadTime, s.LoadDuration.Seconds(), name, s.Backend, s.Precision, s.Device)
		}
		if s.PluginPID > 0 {
			if rss, err := residentBytes(s.PluginPID); err == nil {
				gauge(descRSS, float64(rss), name, s.Backend)
			}
		}
		if s.Redis != nil {
			counter(descRedisErrors, float64(s.Redis.Errors), name)
			counter(descRedisSkipped, float64(s.Redis.Skipped), name)
			gauge(descRedisBreaker, boolFloat(s.Redis.BreakerOpen), name)
			counter(descRedisOpened, float64(s.Redis.BreakerOpened), name)
			counter(descRedisClosed, float64(s.Redis.BreakerClosed), name)
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// pageSize is the unit of /proc/PID/statm.
var pageSize = int64(os.Getpagesize())

// residentBytes reads a process's resident set size from /proc (Linux);
// elsewhere it fails and the series is left out.
func residentBytes(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0, fmt.Errorf("metrics: resident memory of %d: %w", pid, err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("metrics: /proc/%d/statm has %d fields", pid, len(f))
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("metrics: /proc/%d/statm: %w", pid, err)
	}
	return pages * pageSize, nil
}
