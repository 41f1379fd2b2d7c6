package cache

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk"
)

// testIdentity is the model identity the tests use unless they vary it.
var testIdentity = Identity{Name: "tiny-bert", Revision: "sha256:0123", Precision: sdk.FP32, Backend: "onnx-cpu", MaxLength: 128, Activation: "sigmoid"}

// testConfig returns a configuration with the L1 on and, when url is not
// empty, Redis at url. The Redis timeout is generous: the test machine is
// shared and a timeout would turn into a (correct, but uncounted) backend
// call; the tests about a slow Redis set their own.
func testConfig(url string) Config {
	cfg := DefaultConfig()
	cfg.Local.MaxBytes = 1 << 20
	if url != "" {
		cfg.Redis.Enabled = true
		cfg.Redis.URL = url
		cfg.Redis.Timeout = 2 * time.Second
		cfg.Redis.PollInterval = 20 * time.Millisecond
		cfg.Redis.BreakerCooldown = 20 * time.Millisecond
		cfg.Redis.BreakerMaxCooldown = 20 * time.Millisecond
	}
	return cfg
}

func newTestCache(t *testing.T, cfg Config, id Identity, next Scorer) *Cache {
	t.Helper()
	c, err := New(cfg, id, next)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkScores fails t unless got holds next's scores of pairs in order.
func checkScores(t *testing.T, next *countingScorer, pairs []sdk.Pair, got []float32) {
	t.Helper()
	if len(got) != len(pairs) {
		t.Fatalf("got %d scores for %d pairs", len(got), len(pairs))
	}
	for i, p := range pairs {
		want := next.want(p)
		if got[i] != want && !(math.IsNaN(float64(want)) && math.IsNaN(float64(got[i]))) {
			t.Fatalf("score %d = %v, want %v", i, got[i], want)
		}
	}
}

func score(t *testing.T, c Scorer, pairs []sdk.Pair) []float32 {
	t.Helper()
	got, err := c.Score(context.Background(), pairs)
	if err != nil {
		t.Fatalf("Score: %v", err)
	}
	return got
}

func TestLocalCacheAnswersRepeats(t *testing.T) {
	next := newCounting("m")
	c := newTestCache(t, testConfig(""), testIdentity, next)
	a := pairsOf("q", 0, 20)
	checkScores(t, next, a, score(t, c, a))
	// A repeat, and a request overlapping it in another order with a pair
	// twice: only the 5 new pairs reach the backend, each once.
	b := append(pairsOf("q", 15, 10), a[3], a[3])
	checkScores(t, next, b, score(t, c, b))
	if got := next.total(); got != 25 {
		t.Errorf("backend scored %d pairs, want 25", got)
	}
	for _, p := range append(a, b...) {
		if n := next.count(p); n != 1 {
			t.Fatalf("pair %q scored %d times, want 1", p.Document, n)
		}
	}
	st := c.Stats().Local
	// 20 misses, then 5 hits, 5 misses and the repeated pair's 2 hits.
	if st.Hits != 7 || st.Misses != 25 || st.Entries != 25 || st.Bytes != 25*localEntryCost {
		t.Errorf("local stats = %+v, want 7 hits, 25 misses, 25 entries of %d bytes", st, localEntryCost)
	}
}

func TestInProcessDedup(t *testing.T) {
	f := func(name string, cfg Config) {
		t.Run(name, func(t *testing.T) {
			next := newCounting("m")
			next.delay = 20 * time.Millisecond
			c := newTestCache(t, cfg, testIdentity, next)
			pairs := pairsOf("q", 0, 20)
			var wg sync.WaitGroup
			errs := make(chan error, 50)
			for range 50 {
				wg.Go(func() {
					got, err := c.Score(context.Background(), pairs)
					if err != nil {
						errs <- err
						return
					}
					for i, p := range pairs {
						if got[i] != next.want(p) {
							errs <- errors.New("wrong score")
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			for _, p := range pairs {
				if n := next.count(p); n != 1 {
					t.Fatalf("pair %q scored %d times, want 1", p.Document, n)
				}
			}
		})
	}
	f("with L1", testConfig(""))
	noL1 := testConfig("")
	noL1.Local.Enabled = false
	// Without any cache only concurrent requests share work, so all 50
	// must overlap the first one's backend call: the delay above is far
	// longer than starting 50 goroutines, but that is not guaranteed, so
	// this case checks only that nothing breaks and scores are right.
	t.Run("without caches", func(t *testing.T) {
		next := newCounting("m")
		c := newTestCache(t, noL1, testIdentity, next)
		pairs := pairsOf("q", 0, 20)
		checkScores(t, next, pairs, score(t, c, pairs))
		checkScores(t, next, pairs, score(t, c, pairs))
		if got := next.total(); got != 40 {
			t.Errorf("backend scored %d pairs, want 40: nothing is cached", got)
		}
	})
}

func TestLocalTTL(t *testing.T) {
	cfg := testConfig("")
	cfg.Local.TTL = 30 * time.Millisecond
	next := newCounting("m")
	c := newTestCache(t, cfg, testIdentity, next)
	pairs := pairsOf("q", 0, 3)
	score(t, c, pairs)
	score(t, c, pairs)
	if got := next.total(); got != 3 {
		t.Fatalf("backend scored %d pairs before the TTL, want 3", got)
	}
	time.Sleep(cfg.Local.TTL + 5*time.Millisecond)
	checkScores(t, next, pairs, score(t, c, pairs))
	if got := next.total(); got != 6 {
		t.Errorf("backend scored %d pairs after the TTL, want 6", got)
	}
}

func TestNeverCachesFailures(t *testing.T) {
	pairs := pairsOf("q", 0, 4)
	f := func(name string, breakIt func(*countingScorer), wantErr bool) {
		t.Run(name, func(t *testing.T) {
			next := newCounting("m")
			breakIt(next)
			c := newTestCache(t, testConfig(""), testIdentity, next)
			got, err := c.Score(context.Background(), pairs)
			if wantErr != (err != nil) {
				t.Fatalf("Score error = %v, want an error: %v", err, wantErr)
			}
			if !wantErr {
				checkScores(t, next, pairs, got)
			}
			next.mu.Lock()
			next.fail, next.short = nil, false
			next.mu.Unlock()
			checkScores(t, next, pairs, score(t, c, pairs))
			checkScores(t, next, pairs, score(t, c, pairs))
			for i, p := range pairs {
				// A failed first call is not cached: 2 calls per pair.
				// A NaN is never cached: the NaN pair goes to the backend
				// on every call, the others once.
				want := 2
				switch {
				case p.Document == next.nan:
					want = 3
				case !wantErr:
					want = 1
				}
				if n := next.count(p); n != want {
					t.Errorf("pair %d scored %d times, want %d", i, n, want)
				}
			}
		})
	}
	f("error", func(s *countingScorer) { s.fail = errBackend }, true)
	f("partial batch", func(s *countingScorer) { s.short = true }, true)
	f("NaN", func(s *countingScorer) { s.nan = pairs[2].Document }, false)
}

func TestErrorsKeepTheirCause(t *testing.T) {
	next := newCounting("m")
	next.fail = sdk.ErrOverloaded
	c := newTestCache(t, testConfig(""), testIdentity, next)
	if _, err := c.Score(context.Background(), pairsOf("q", 0, 2)); !errors.Is(err, sdk.ErrOverloaded) {
		t.Errorf("Score error = %v, want one wrapping sdk.ErrOverloaded", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	next.setFail(nil)
	next.delay = time.Second
	if _, err := c.Score(ctx, pairsOf("q", 0, 2)); !errors.Is(err, context.Canceled) {
		t.Errorf("Score error = %v, want one wrapping context.Canceled", err)
	}
}

func TestEmptyRequestGoesToNextStage(t *testing.T) {
	next := newCounting("m")
	c := newTestCache(t, testConfig(""), testIdentity, next)
	got, err := c.Score(context.Background(), nil)
	if err != nil || len(got) != 0 || next.calls != 1 {
		t.Errorf("Score(nil) = %v, %v after %d backend calls; want [], nil after 1", got, err, next.calls)
	}
}

func TestConfigErrors(t *testing.T) {
	f := func(name string, mod func(*Config)) {
		t.Helper()
		cfg := testConfig("redis://127.0.0.1:1/0")
		mod(&cfg)
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: Validate succeeded", name)
		}
		if c, err := New(cfg, testIdentity, newCounting("m")); err == nil {
			c.Close()
			t.Errorf("%s: New succeeded", name)
		}
	}
	f("tiny byte bound", func(c *Config) { c.Local.MaxBytes = 10 })
	f("no L1 TTL", func(c *Config) { c.Local.TTL = 0 })
	f("no Redis TTL", func(c *Config) { c.Redis.TTL = 0 })
	f("no Redis timeout", func(c *Config) { c.Redis.Timeout = 0 })
	f("bad mode", func(c *Config) { c.Redis.Mode = "ring" })
	f("bad URL", func(c *Config) { c.Redis.URL = "http://x" })
	if err := testConfig("redis://127.0.0.1:1/0?master_name=mymaster").Validate(); err != nil {
		t.Errorf("a Sentinel URL: %v", err)
	}
	if err := testConfig("redis://127.0.0.1:1/0?addr=127.0.0.1:2&addr=127.0.0.1:3").Validate(); err != nil {
		t.Errorf("a Cluster URL: %v", err)
	}
	if _, err := New(testConfig(""), testIdentity, nil); err == nil {
		t.Errorf("New without a next stage succeeded")
	}
}

func TestStatsJSON(t *testing.T) {
	c := newTestCache(t, testConfig(""), testIdentity, newCounting("m"))
	b, err := json.Marshal(c.Stats())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for section, fields := range map[string][]string{
		"local_cache":       {"hits", "misses", "entries", "bytes"},
		"distributed_cache": {"enabled", "connected", "cached_entries", "keyspace_hits", "keyspace_misses"},
	} {
		for _, f := range fields {
			if _, ok := m[section][f]; !ok {
				t.Errorf("/health section %q lacks %q: %s", section, f, b)
			}
		}
	}
}
