package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestParseLengths(t *testing.T) {
	f := func(s string, wantErr bool, wantMin, wantMax int) {
		t.Helper()
		l, err := ParseLengths(s)
		if (err != nil) != wantErr {
			t.Fatalf("ParseLengths(%q) error %v, want error %v", s, err, wantErr)
		}
		if err != nil {
			return
		}
		if l.String() != s {
			t.Fatalf("String() = %q, want %q", l.String(), s)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		lo, hi := 1<<30, 0
		for range 20000 {
			n := l.draw(rng)
			lo, hi = min(lo, n), max(hi, n)
		}
		if lo != wantMin || hi != wantMax {
			t.Fatalf("%q drew lengths %d..%d, want %d..%d", s, lo, hi, wantMin, wantMax)
		}
	}
	f("fixed:7", false, 7, 7)
	f("uniform:3-5", false, 3, 5)
	f("mixed", false, 8, 320)
	f("fixed:0", true, 0, 0)
	f("fixed:x", true, 0, 0)
	f("uniform:5-3", true, 0, 0)
	f("uniform:5", true, 0, 0)
	f("mixed:3", true, 0, 0)
	f("zipf:1", true, 0, 0)
	f("", true, 0, 0)
}

func TestGeneratorIsSeededAndDistinct(t *testing.T) {
	l, _ := ParseLengths("uniform:4-9")
	cfg := &Config{Lengths: l, Seed: 42}
	a, b := newGenerator(cfg, 0), newGenerator(cfg, 0)
	other := newGenerator(cfg, 1)
	seen := map[string]bool{}
	for range 100 {
		da, db, do := a.document(), b.document(), other.document()
		if da != db {
			t.Fatalf("same seed and worker gave %q and %q", da, db)
		}
		if n := len(strings.Fields(da)); n < 4 || n > 9 {
			t.Fatalf("document of %d words outside 4..9: %q", n, da)
		}
		if seen[da] || seen[do] || da == do {
			t.Fatalf("fresh documents repeat: %q %q", da, do)
		}
		seen[da], seen[do] = true, true
	}
	cfg.Pool = 3
	p := newGenerator(cfg, 5)
	pooled := map[string]bool{}
	for range 100 {
		pooled[p.document()] = true
	}
	if len(pooled) != 3 {
		t.Fatalf("pool of 3 gave %d distinct documents", len(pooled))
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := summarize(d)
	want := Latency{P50: 50 * time.Millisecond, P95: 95 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}
	if got != want {
		t.Fatalf("summarize = %+v, want %+v", got, want)
	}
	if summarize(nil) != (Latency{}) {
		t.Fatalf("empty summary not zero")
	}
}

// server is an in-process fasthttp server speaking the rerank API: every
// fifth request gets 429, one chosen request hangs until the test ends,
// and the others get a result list (a wrong-length one for query "short").
type server struct {
	t       *testing.T
	n       atomic.Int64
	hangOn  int64
	release chan struct{}
	mu      sync.Mutex
	queries map[string]int
	cands   []int
	docs    map[string]bool
}

func (s *server) handle(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) != "/v1/rerank" || !ctx.IsPost() {
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		return
	}
	var req struct {
		Query      string   `json:"query"`
		Candidates []string `json:"candidates"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		ctx.SetStatusCode(fasthttp.StatusUnprocessableEntity)
		return
	}
	n := s.n.Add(1)
	s.mu.Lock()
	s.queries[req.Query]++
	s.cands = append(s.cands, len(req.Candidates))
	for _, c := range req.Candidates {
		s.docs[c] = true
	}
	s.mu.Unlock()
	if n == s.hangOn {
		<-s.release
	}
	if n%5 == 0 {
		ctx.Response.Header.Set("Retry-After", "1")
		ctx.SetStatusCode(fasthttp.StatusTooManyRequests)
		ctx.SetBodyString(`{"detail":"Server overloaded, retry later"}`)
		return
	}
	results := len(req.Candidates)
	if req.Query == "short" {
		results--
	}
	var b bytes.Buffer
	b.WriteString(`{"results":[`)
	for i := range results {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"index":%d,"score":0.5}`, i)
	}
	b.WriteString(`],"model":"m","processing_time_ms":1.0}`)
	ctx.SetContentType("application/json")
	ctx.SetBody(b.Bytes())
}

func startServer(t *testing.T, hangOn int64) (*server, string) {
	s := &server{t: t, hangOn: hangOn, release: make(chan struct{}), queries: map[string]int{}, docs: map[string]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: s.handle}
	go srv.Serve(ln) //nolint:errcheck // ends with the listener
	t.Cleanup(func() {
		close(s.release)
		_ = srv.Shutdown()
	})
	return s, "http://" + ln.Addr().String() + "/v1/rerank"
}

func TestRunAgainstAServer(t *testing.T) {
	f := func(name string, cfg Config, hangOn int64, want map[string]int, wantPairs, wantBad int) {
		t.Run(name, func(t *testing.T) {
			s, url := startServer(t, hangOn)
			cfg.URL = url
			rep, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(rep.Outcomes) != fmt.Sprint(want) {
				t.Fatalf("outcomes %v, want %v (first error %q)", rep.Outcomes, want, rep.FirstError)
			}
			if rep.Requests != cfg.Requests || rep.Pairs != wantPairs || rep.BadResponses != wantBad {
				t.Fatalf("requests %d pairs %d bad %d, want %d %d %d", rep.Requests, rep.Pairs, rep.BadResponses, cfg.Requests, wantPairs, wantBad)
			}
			if rep.All.P50 <= 0 || rep.All.P50 > rep.All.P95 || rep.All.P95 > rep.All.P99 || rep.All.P99 > rep.All.Max {
				t.Fatalf("latency percentiles out of order: %+v", rep.All)
			}
			if rep.RequestsPerSec <= 0 || (rep.PairsPerSec > 0) != (wantPairs > 0) {
				t.Fatalf("throughput not reported: %+v", rep)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.queries[cfg.Query] != cfg.Requests {
				t.Fatalf("server saw queries %v", s.queries)
			}
			for _, c := range s.cands {
				if c != cfg.Candidates {
					t.Fatalf("server saw a request of %d candidates, want %d", c, cfg.Candidates)
				}
			}
			var out bytes.Buffer
			rep.Print(&out)
			for _, w := range []string{"req/s", "pairs/s", "p50", "p95", "p99", "200="} {
				if !strings.Contains(out.String(), w) {
					t.Fatalf("printed report lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
	lengths, _ := ParseLengths("mixed")
	f("statuses counted", Config{Concurrency: 4, Candidates: 10, Requests: 40, Query: "what is rust", Lengths: lengths, Seed: 1},
		0, map[string]int{"200": 32, "429": 8}, 320, 0)
	f("a bad answer and a client timeout", Config{Concurrency: 3, Candidates: 2, Requests: 10, Query: "short", Timeout: 100 * time.Millisecond, Seed: 2},
		3, map[string]int{"200": 7, "429": 2, OutcomeTimeout: 1}, 0, 7)
}

func TestRunRejectsBadConfig(t *testing.T) {
	f := func(cfg Config) {
		t.Helper()
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Fatalf("Run(%+v) accepted", cfg)
		}
	}
	f(Config{Concurrency: 1, Requests: 1})
	f(Config{URL: "http://127.0.0.1:1/v1/rerank", Requests: 1})
	f(Config{URL: "http://127.0.0.1:1/v1/rerank", Concurrency: 1})
}

func TestRunWithAPool(t *testing.T) {
	s, url := startServer(t, 0)
	lengths, _ := ParseLengths("fixed:5")
	// More requests than a worker prepares, so the prepared ones repeat.
	cfg := Config{URL: url, Concurrency: 2, Candidates: 7, Requests: 3 * pooledRequests, Query: "q", Lengths: lengths, Seed: 3, Pool: 4}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Requests != cfg.Requests || rep.Outcomes["200"]+rep.Outcomes["429"] != cfg.Requests {
		t.Fatalf("report %+v", rep)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.docs) != cfg.Pool {
		t.Fatalf("the server saw %d distinct documents, want the pool's %d", len(s.docs), cfg.Pool)
	}
	for d := range s.docs {
		if n := len(strings.Fields(d)); n != 5 {
			t.Fatalf("document %q has %d words, want 5", d, n)
		}
	}
}

// TestHonorRetryAfter: the test server answers its fifth request 429 with
// Retry-After: 1; a polite client waits that second, an eager one does not.
func TestHonorRetryAfter(t *testing.T) {
	f := func(honor bool) time.Duration {
		_, url := startServer(t, 0)
		cfg := Config{URL: url, Concurrency: 1, Candidates: 1, Requests: 6, Query: "q", Seed: 1, HonorRetryAfter: honor}
		rep, err := Run(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Outcomes["429"] != 1 || rep.Outcomes["200"] != 5 {
			t.Fatalf("outcomes %v", rep.Outcomes)
		}
		return rep.Elapsed
	}
	if d := f(true); d < time.Second {
		t.Errorf("honouring Retry-After, the run took %v, want at least 1s", d)
	}
	if d := f(false); d >= time.Second {
		t.Errorf("not honouring Retry-After, the run took %v, want well under 1s", d)
	}
}
