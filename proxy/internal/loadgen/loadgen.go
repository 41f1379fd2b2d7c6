// Package loadgen is the load generator behind `rerank bench`: a number of
// concurrent clients send POST /v1/rerank requests with generated candidates
// of a chosen length distribution to any server speaking that API, and the
// run is summarised as throughput, latency percentiles and counts per status
// code.
package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes a load run.
type Config struct {
	// URL is the rerank endpoint, for example http://127.0.0.1:8080/v1/rerank.
	URL string
	// Concurrency is the number of clients, each with one request in flight.
	Concurrency int
	// Candidates is the number of candidates per request.
	Candidates int
	// Lengths is the distribution of candidate lengths in words.
	Lengths Lengths
	// Duration bounds the run in time; 0 means Requests bounds it.
	Duration time.Duration
	// Requests bounds the run in requests; 0 means Duration bounds it.
	Requests int
	// Query is the query of every request.
	Query string
	// Model, when set, is sent as the request's "model" field.
	Model string
	// ListField names the request member holding the documents:
	// "candidates" (the seed's, and the default) or "documents" (the Jina
	// and Cohere dialects'); answers are counted under "results" either way.
	ListField string
	// Seed seeds the document generator, so runs are repeatable.
	Seed uint64
	// Timeout is the client-side limit of one request; a request that
	// passes it counts as "timeout".
	Timeout time.Duration
	// Pool, when positive, draws documents from a fixed pool of that many,
	// so repeated pairs can hit a cache; 0 makes every document new.
	Pool int
	// ServerPID, when positive, is the process id of the server on this
	// machine: the report then gives its CPU time per request (Linux).
	ServerPID int
	// HonorRetryAfter makes a worker that got a 429 with a Retry-After
	// of N seconds wait that long before its next request, as a polite
	// client does; otherwise it sends the next one at once, and the 429
	// count measures how often the server refuses an eager client.
	HonorRetryAfter bool
}

// Lengths is a distribution of document lengths in words.
type Lengths struct {
	name   string
	ranges []lengthRange
}

type lengthRange struct {
	weight   float64 // share of documents, all weights summing to 1
	min, max int     // words, inclusive
}

// ParseLengths parses "fixed:N", "uniform:A-B" or "mixed". Mixed is a RAG-like
// blend of 50% short passages (8–32 words), 35% medium (48–128) and 15% long
// (160–320, past 256 tokens, where a 512-token model starts to cost most).
func ParseLengths(s string) (Lengths, error) {
	kind, arg, _ := strings.Cut(s, ":")
	switch kind {
	case "mixed":
		if arg != "" {
			return Lengths{}, fmt.Errorf("loadgen: %q takes no argument", s)
		}
		return Lengths{name: s, ranges: []lengthRange{{0.5, 8, 32}, {0.35, 48, 128}, {0.15, 160, 320}}}, nil
	case "fixed":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 {
			return Lengths{}, fmt.Errorf("loadgen: %q: want fixed:N with N ≥ 1 words", s)
		}
		return Lengths{name: s, ranges: []lengthRange{{1, n, n}}}, nil
	case "uniform":
		a, b, ok := strings.Cut(arg, "-")
		lo, err1 := strconv.Atoi(a)
		hi, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || lo < 1 || hi < lo {
			return Lengths{}, fmt.Errorf("loadgen: %q: want uniform:A-B with 1 ≤ A ≤ B words", s)
		}
		return Lengths{name: s, ranges: []lengthRange{{1, lo, hi}}}, nil
	}
	return Lengths{}, fmt.Errorf("loadgen: unknown length distribution %q (want fixed:N, uniform:A-B or mixed)", s)
}

// String returns the distribution as it was parsed.
func (l Lengths) String() string { return l.name }

// draw returns a length in words.
func (l Lengths) draw(rng *rand.Rand) int {
	u := rng.Float64()
	r := l.ranges[len(l.ranges)-1]
	for _, c := range l.ranges {
		if u < c.weight {
			r = c
			break
		}
		u -= c.weight
	}
	return r.min + rng.IntN(r.max-r.min+1)
}

// vocabulary is common English words, each a single WordPiece token in BERT
// vocabularies, so a document's token count is close to its word count.
var vocabulary = strings.Fields(`the of and to in is was for on that with as by at from his
it an were are which this be has had or not but first one their its new after who they have
her she two been other when there all during into school time may years more most only over
city some world would where later up such used many can state about national out known
university united then made team film three since between high part well american world
music game year back through group area house water book number people just season
against both under second family several early name series public use however member
history until life found four while around now home film album early main work court
power system king long before place played could following best will based law did like
south north west east river million city company club local still being each light city
health data model search query document passage answer question result rank score`)

// generator makes candidate documents.
type generator struct {
	rng     *rand.Rand
	lengths Lengths
	pool    []string
	serial  uint64
	id      uint64
}

func newGenerator(cfg *Config, worker int) *generator {
	g := &generator{
		rng:     rand.New(rand.NewPCG(cfg.Seed, uint64(worker))),
		lengths: cfg.Lengths,
		id:      uint64(worker),
	}
	if cfg.Pool > 0 {
		// Every worker builds the same pool from the seed alone.
		pr := rand.New(rand.NewPCG(cfg.Seed, ^uint64(0)))
		pg := &generator{rng: pr, lengths: cfg.Lengths}
		g.pool = make([]string, cfg.Pool)
		for i := range g.pool {
			g.pool[i] = pg.fresh()
		}
	}
	return g
}

// fresh returns a new document; its leading serial word keeps documents of
// different workers and requests distinct, so a cache cannot answer them.
func (g *generator) fresh() string {
	n := g.lengths.draw(g.rng)
	var b strings.Builder
	g.serial++
	b.WriteString("doc")
	b.WriteString(strconv.FormatUint(g.id, 10))
	b.WriteByte('x')
	b.WriteString(strconv.FormatUint(g.serial, 10))
	for i := 1; i < n; i++ {
		b.WriteByte(' ')
		b.WriteString(vocabulary[g.rng.IntN(len(vocabulary))])
	}
	return b.String()
}

func (g *generator) document() string {
	if len(g.pool) > 0 {
		return g.pool[g.rng.IntN(len(g.pool))]
	}
	return g.fresh()
}

// Outcome labels for requests that got no HTTP status.
const (
	// OutcomeTimeout is a request that passed Config.Timeout.
	OutcomeTimeout = "timeout"
	// OutcomeError is a request that failed in transport.
	OutcomeError = "error"
)

// Report is the summary of a run.
type Report struct {
	// URL, Concurrency, Candidates and Lengths repeat the run's settings.
	URL         string `json:"url"`
	Concurrency int    `json:"concurrency"`
	Candidates  int    `json:"candidates"`
	Lengths     string `json:"doc_length"`
	// Elapsed is the run's wall time.
	Elapsed time.Duration `json:"elapsed_ns"`
	// Requests counts the requests that finished, whatever their outcome.
	Requests int `json:"requests"`
	// Pairs counts the candidates of requests answered 200.
	Pairs int `json:"pairs"`
	// RequestsPerSec is Requests over Elapsed.
	RequestsPerSec float64 `json:"requests_per_sec"`
	// OKPerSec is the 200 answers over Elapsed.
	OKPerSec float64 `json:"ok_per_sec"`
	// PairsPerSec is Pairs over Elapsed.
	PairsPerSec float64 `json:"pairs_per_sec"`
	// Outcomes counts requests by HTTP status code, or "timeout"/"error".
	Outcomes map[string]int `json:"outcomes"`
	// BadResponses counts 200 answers whose body was not a result list of
	// the expected length.
	BadResponses int `json:"bad_responses"`
	// All is the latency of every finished request; OK that of 200 answers.
	All Latency `json:"latency_all"`
	// OK is the latency of the requests answered 200.
	OK Latency `json:"latency_ok"`
	// ClientCPUPerRequest is the CPU time (user and system, all threads)
	// the load generator itself spent per finished request: on a machine
	// shared with the server, what the generator takes the server lacks.
	// Zero where the platform does not report it.
	ClientCPUPerRequest time.Duration `json:"client_cpu_per_request_ns"`
	// ServerCPUPerRequest is the CPU time of the process Config.ServerPID
	// per finished request, zero without one.
	ServerCPUPerRequest time.Duration `json:"server_cpu_per_request_ns,omitempty"`
	// MachineIdle and MachineSteal are the shares (0 to 1) of the
	// machine's CPU time that was idle and stolen by the hypervisor during
	// the run (Linux; -1 elsewhere). Steal is time a virtual CPU wanted to
	// run and did not: on a shared host it inflates latencies, and runs
	// with much of it are not comparable with runs without.
	MachineIdle  float64 `json:"machine_idle"`
	MachineSteal float64 `json:"machine_steal"`
	// FirstError is one transport error, for the log.
	FirstError string `json:"first_error,omitempty"`
}

// Latency is a latency distribution summary.
type Latency struct {
	// P50, P95, P99 and Max are percentiles of the latencies.
	P50 time.Duration `json:"p50_ns"`
	P95 time.Duration `json:"p95_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	at := func(p float64) time.Duration {
		// Nearest-rank percentile.
		i := int(float64(len(d))*p+0.999999) - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return Latency{P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: d[len(d)-1]}
}

// worker results, merged at the end.
type tally struct {
	all, ok  []time.Duration
	outcomes map[string]int
	pairs    int
	bad      int
	firstErr string
}

// Run runs the load until Requests are done, Duration passes or ctx ends.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if cfg.URL == "" {
		return Report{}, errors.New("loadgen: no URL")
	}
	if cfg.Concurrency < 1 || cfg.Candidates < 0 {
		return Report{}, fmt.Errorf("loadgen: concurrency %d and candidates %d: want ≥ 1 and ≥ 0", cfg.Concurrency, cfg.Candidates)
	}
	if cfg.Duration <= 0 && cfg.Requests <= 0 {
		return Report{}, errors.New("loadgen: set a duration or a request count")
	}
	if cfg.Lengths.ranges == nil {
		cfg.Lengths, _ = ParseLengths("mixed")
	}
	if cfg.Timeout <= 0 {
		// Longer than any server-side budget worth testing.
		cfg.Timeout = time.Minute
	}
	ep, err := parseEndpoint(cfg.URL)
	if err != nil {
		return Report{}, err
	}
	runCtx := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	var issued atomic.Int64
	tallies := make([]tally, cfg.Concurrency)
	if blockingAvailable && !ep.tls {
		// Workers sleep in blocking reads while holding their P; with one
		// P each, none waits for the runtime to hand a P over (see
		// blocking_sock.go).
		if n := cfg.Concurrency + 1; runtime.GOMAXPROCS(0) < n {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n))
		}
	}
	var wg sync.WaitGroup
	cpu0 := processCPU()
	var srv0 time.Duration
	if cfg.ServerPID > 0 {
		if srv0, err = pidCPU(cfg.ServerPID); err != nil {
			return Report{}, fmt.Errorf("loadgen: server process %d: %w", cfg.ServerPID, err)
		}
	}
	tot0, idle0, steal0, machineErr := machineTimes()
	start := time.Now()
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tallies[w] = work(runCtx, &ep, &cfg, w, &issued)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	var srv time.Duration
	if cfg.ServerPID > 0 {
		if srv1, err := pidCPU(cfg.ServerPID); err == nil {
			srv = srv1 - srv0
		}
	}
	tot1, idle1, steal1, err := machineTimes()
	machineErr = errors.Join(machineErr, err)

	rep := Report{
		URL: cfg.URL, Concurrency: cfg.Concurrency, Candidates: cfg.Candidates, Lengths: cfg.Lengths.String(),
		Elapsed: elapsed, Outcomes: map[string]int{},
	}
	var all, ok []time.Duration
	for _, t := range tallies {
		all = append(all, t.all...)
		ok = append(ok, t.ok...)
		for k, v := range t.outcomes {
			rep.Outcomes[k] += v
		}
		rep.Pairs += t.pairs
		rep.BadResponses += t.bad
		if rep.FirstError == "" {
			rep.FirstError = t.firstErr
		}
	}
	rep.Requests = len(all)
	secs := elapsed.Seconds()
	if secs > 0 {
		rep.RequestsPerSec = float64(rep.Requests) / secs
		rep.OKPerSec = float64(len(ok)) / secs
		rep.PairsPerSec = float64(rep.Pairs) / secs
	}
	if rep.Requests > 0 {
		rep.ClientCPUPerRequest = cpu / time.Duration(rep.Requests)
		rep.ServerCPUPerRequest = srv / time.Duration(rep.Requests)
	}
	rep.MachineIdle, rep.MachineSteal = -1, -1
	if machineErr == nil && tot1 > tot0 {
		rep.MachineIdle = float64(idle1-idle0) / float64(tot1-tot0)
		rep.MachineSteal = float64(steal1-steal0) / float64(tot1-tot0)
	}
	rep.All = summarize(all)
	rep.OK = summarize(ok)
	return rep, nil
}

// work is one client's loop.
func work(ctx context.Context, ep *endpoint, cfg *Config, w int, issued *atomic.Int64) tally {
	t := tally{outcomes: map[string]int{}}
	gen := newGenerator(cfg, w)
	c := &conn{ep: ep, blocking: blockingAvailable, timeout: cfg.Timeout}
	defer c.close()
	src := newRequestSource(ep, newBodyBuilder(cfg, gen), cfg.Pool > 0)
	for ctx.Err() == nil {
		if cfg.Requests > 0 && issued.Add(1) > int64(cfg.Requests) {
			break
		}
		req := src.next()
		began := time.Now()
		code, resp, err := c.do(req, cfg.Timeout)
		lat := time.Since(began)
		t.all = append(t.all, lat)
		switch {
		case errors.Is(err, errTimeout):
			t.outcomes[OutcomeTimeout]++
		case err != nil:
			t.outcomes[OutcomeError]++
			if t.firstErr == "" {
				t.firstErr = err.Error()
			}
		default:
			t.outcomes[strconv.Itoa(code)]++
			if code == 429 && cfg.HonorRetryAfter && c.retryAfter > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(c.retryAfter):
				}
			}
			if code == 200 {
				t.ok = append(t.ok, lat)
				if countResults(resp) != cfg.Candidates {
					t.bad++
				} else {
					t.pairs += cfg.Candidates
				}
			}
		}
	}
	return t
}

// pooledRequests is how many different requests a worker prepares when the
// documents come from a pool: each is a fresh random draw from the pool, and
// cycling through 64 of them keeps the server's cache and batcher from
// seeing a pattern while the worker spends no CPU on encoding during the
// run (about 0.5 MB per worker for requests of 20 passages of 60 words).
const pooledRequests = 64

// requestSource yields whole requests, head and body, ready to write.
type requestSource struct {
	ep   *endpoint
	b    *bodyBuilder
	ring [][]byte // prepared requests, when documents come from a pool
	i    int
	buf  []byte
}

func newRequestSource(ep *endpoint, b *bodyBuilder, prepare bool) *requestSource {
	s := &requestSource{ep: ep, b: b}
	if prepare {
		for range pooledRequests {
			s.ring = append(s.ring, bytes.Clone(s.build()))
		}
	}
	return s
}

// next returns the next request, valid until the next call.
func (s *requestSource) next() []byte {
	if s.ring != nil {
		r := s.ring[s.i]
		s.i = (s.i + 1) % len(s.ring)
		return r
	}
	return s.build()
}

func (s *requestSource) build() []byte {
	body := s.b.next()
	s.buf = s.ep.requestHead(s.buf[:0], len(body))
	s.buf = append(s.buf, body...)
	return s.buf
}

// countResults counts the result objects of a 200 answer by their "index"
// members: a check that the answer has one result per candidate, cheap
// enough not to take CPU from the server being measured (a full JSON decode
// cost the generator about as much as the server's cached path).
func countResults(body []byte) int {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	// The seed's answer starts with its results, the Cohere and Jina ones
	// with an id.
	if !bytes.HasPrefix(trimmed, []byte(`{"results"`)) && !bytes.HasPrefix(trimmed, []byte(`{"id"`)) {
		return -1
	}
	return bytes.Count(body, []byte(`"index"`))
}

// bodyBuilder encodes request bodies; the query and the model are
// JSON-encoded once. (With a document pool, requests are built ahead by
// requestSource, so encoding costs nothing during the run.)
type bodyBuilder struct {
	gen  *generator
	n    int
	head []byte // {"query":…,"candidates":[
	tail []byte // ],"model":…}
	buf  []byte
}

func newBodyBuilder(cfg *Config, gen *generator) *bodyBuilder {
	b := &bodyBuilder{gen: gen, n: cfg.Candidates}
	b.head = append([]byte(`{"query":`), jsonString(cfg.Query)...)
	field := cfg.ListField
	if field == "" {
		field = "candidates"
	}
	b.head = append(b.head, `,`...)
	b.head = append(b.head, jsonString(field)...)
	b.head = append(b.head, `:[`...)
	b.tail = []byte(`]`)
	if cfg.Model != "" {
		b.tail = append(b.tail, `,"model":`...)
		b.tail = append(b.tail, jsonString(cfg.Model)...)
	}
	b.tail = append(b.tail, '}')
	return b
}

// next returns the next request body, valid until the next call.
func (b *bodyBuilder) next() []byte {
	out := append(b.buf[:0], b.head...)
	for i := range b.n {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, jsonString(b.gen.document())...)
	}
	out = append(out, b.tail...)
	b.buf = out
	return out
}

// jsonString returns s as a JSON string literal.
func jsonString(s string) []byte {
	out, err := json.Marshal(s)
	if err != nil { // unreachable: encoding/json encodes every Go string
		return []byte(`""`)
	}
	return out
}

// Print writes the report in human-readable form.
func (r *Report) Print(w io.Writer) {
	ms := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
	}
	fmt.Fprintf(w, "target       %s\n", r.URL)
	fmt.Fprintf(w, "load         %d clients, %d candidates per request, doc length %s, %.2f s\n",
		r.Concurrency, r.Candidates, r.Lengths, r.Elapsed.Seconds())
	fmt.Fprintf(w, "throughput   %.1f req/s (%.1f answered 200), %.1f pairs/s\n", r.RequestsPerSec, r.OKPerSec, r.PairsPerSec)
	fmt.Fprintf(w, "latency all  p50 %s ms  p95 %s ms  p99 %s ms  max %s ms  (%d requests)\n",
		ms(r.All.P50), ms(r.All.P95), ms(r.All.P99), ms(r.All.Max), r.Requests)
	fmt.Fprintf(w, "latency 200  p50 %s ms  p95 %s ms  p99 %s ms  max %s ms\n",
		ms(r.OK.P50), ms(r.OK.P95), ms(r.OK.P99), ms(r.OK.Max))
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	if r.ClientCPUPerRequest > 0 {
		fmt.Fprintf(w, "client cpu   %.1f µs per request (this load generator's own share of the machine)\n", us(r.ClientCPUPerRequest))
	}
	if r.ServerCPUPerRequest > 0 {
		fmt.Fprintf(w, "server cpu   %.1f µs per request\n", us(r.ServerCPUPerRequest))
	}
	if r.MachineIdle >= 0 {
		fmt.Fprintf(w, "machine      %.0f%% idle, %.0f%% stolen by the hypervisor\n", 100*r.MachineIdle, 100*r.MachineSteal)
	}
	keys := make([]string, 0, len(r.Outcomes))
	for k := range r.Outcomes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Outcomes[k]))
	}
	fmt.Fprintf(w, "outcomes     %s\n", strings.Join(parts, " "))
	if r.BadResponses > 0 {
		fmt.Fprintf(w, "bad 200s     %d (body not a result list of %d)\n", r.BadResponses, r.Candidates)
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error  %s\n", r.FirstError)
	}
}
