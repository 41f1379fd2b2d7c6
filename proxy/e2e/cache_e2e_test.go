package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// redisProc is a real redis-server the test started on a free loopback
// port, with persistence off.
type redisProc struct {
	t    *testing.T
	port int
	cmd  *exec.Cmd
}

// startRedisServer starts redis-server for t, or skips t when it is not
// installed; under CI (which .ci/run makes install it) a missing
// redis-server fails t.
func startRedisServer(t *testing.T) *redisProc {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server not installed (apt-get install redis-server); CI must have it: %v", err)
		}
		t.Skip("redis-server not installed (apt-get install redis-server); skipping the cache end-to-end test")
	}
	r := &redisProc{t: t, port: freePort(t)}
	r.start()
	t.Cleanup(r.kill)
	return r
}

func (r *redisProc) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

// start runs redis-server and returns once it accepts connections.
func (r *redisProc) start() {
	r.t.Helper()
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--loglevel", "warning")
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("cannot start redis-server: %v", err)
	}
	// 500 tries of 10ms bound a broken start to five seconds; this
	// asserts nothing about speed.
	for range 500 {
		if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(r.port)); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.t.Fatalf("redis-server on port %d never listened", r.port)
}

// kill stops the server at once, as a crash would.
func (r *redisProc) kill() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// cacheHealth is the part of /health the cache adds.
type cacheHealth struct {
	Backend struct {
		PairsScored uint64 `json:"pairs_scored"`
	} `json:"backend"`
	Local struct {
		Hits    uint64 `json:"hits"`
		Misses  uint64 `json:"misses"`
		Entries int64  `json:"entries"`
		Bytes   int64  `json:"bytes"`
	} `json:"local_cache"`
	Distributed *struct {
		Enabled        bool   `json:"enabled"`
		Connected      bool   `json:"connected"`
		CachedEntries  int64  `json:"cached_entries"`
		KeyspaceHits   int64  `json:"keyspace_hits"`
		KeyspaceMisses int64  `json:"keyspace_misses"`
		Hits           uint64 `json:"hits"`
		Errors         uint64 `json:"errors"`
		Skipped        uint64 `json:"skipped"`
		BreakerOpened  uint64 `json:"breaker_opened"`
		BreakerClosed  uint64 `json:"breaker_closed"`
		LockWaits      uint64 `json:"lock_waits"`
	} `json:"distributed_cache"`
}

func (s *server) cacheHealth(t *testing.T) cacheHealth {
	t.Helper()
	r := s.do(t, "GET", "/health", nil)
	var h cacheHealth
	if err := json.Unmarshal(r.body, &h); err != nil || h.Distributed == nil {
		t.Fatalf("/health has no distributed_cache section: %s (%v)", r.body, err)
	}
	return h
}

// scored returns the pairs the plugins of servers computed since start.
func scored(t *testing.T, servers ...*server) uint64 {
	t.Helper()
	var n uint64
	for _, s := range servers {
		n += s.cacheHealth(t).Backend.PairsScored
	}
	return n
}

// candidates returns n distinct candidates numbered from first.
func candidates(tag string, first, n int) []string {
	c := make([]string, n)
	for i := range c {
		c[i] = fmt.Sprintf("%s passage %d: Paris is the capital of France.", tag, first+i)
	}
	return c
}

// rerankScores posts a request and returns its scores by candidate index.
func rerankScores(s *server, query string, cands []string) (map[int]float64, error) {
	body, err := json.Marshal(map[string]any{"query": query, "candidates": cands})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(context.Background(), "POST", s.url+"/v1/rerank", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var v rerankReply
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("rerank answered %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, err
	}
	if len(v.Results) != len(cands) {
		return nil, fmt.Errorf("%d results for %d candidates", len(v.Results), len(cands))
	}
	out := make(map[int]float64, len(v.Results))
	for _, r := range v.Results {
		out[r.Index] = r.Score
	}
	return out, nil
}

// TestCacheTwoProxiesShareRedis runs two real proxies, each with its own
// onnx-cpu plugin, over one real Redis.
func TestCacheTwoProxiesShareRedis(t *testing.T) {
	requireRuntime(t)
	rds := startRedisServer(t)
	dir := goldenModelDir(t, "tiny-bert")
	// A generous Redis timeout: the CI machine is shared, and a call that
	// timed out would (correctly) score its pairs without dedup, which the
	// counts below would misread. Killing Redis refuses connections at
	// once, so the kill does not wait for it.
	env := []string{"REDIS_ENABLED=true", "REDIS_URL=" + rds.url(), "REDIS_TIMEOUT_MS=2000"}
	a := startServer(t, env, "--model", dir)
	b := startServer(t, env, "--model", dir)
	a.waitHealth(t, "ok")
	b.waitHealth(t, "ok")
	base := scored(t, a, b)

	t.Run("50 concurrent identical requests score each pair once", func(t *testing.T) {
		cands := candidates("first", 0, 20)
		var wg sync.WaitGroup
		var failures atomic.Int64
		results := make([]map[int]float64, 50)
		for i := range 50 {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				r, err := rerankScores(s, "capital of france", cands)
				if err != nil {
					failures.Add(1)
					t.Error(err)
				}
				results[i] = r
			})
		}
		wg.Wait()
		if failures.Load() > 0 {
			t.FailNow()
		}
		if got := scored(t, a, b) - base; got != 20 {
			t.Fatalf("the two plugins scored %d pairs, want each of the 20 exactly once", got)
		}
		for i, r := range results {
			for j, v := range r {
				if v != results[0][j] {
					t.Fatalf("request %d candidate %d scored %v, request 0 %v", i, j, v, results[0][j])
				}
			}
		}
		base += 20
	})

	t.Run("partially overlapping requests score only new pairs", func(t *testing.T) {
		_, err := rerankScores(b, "capital of france", candidates("first", 10, 20))
		if err != nil {
			t.Fatal(err)
		}
		if got := scored(t, a, b) - base; got != 10 {
			t.Fatalf("scored %d pairs, want the 10 new ones", got)
		}
		base += 10
		// Redis's own figures are refreshed at most once a second.
		h := b.cacheHealth(t)
		for limit := time.Now().Add(10 * time.Second); h.Distributed.CachedEntries < 30 && time.Now().Before(limit); {
			time.Sleep(100 * time.Millisecond)
			h = b.cacheHealth(t)
		}
		if !h.Distributed.Enabled || !h.Distributed.Connected || h.Distributed.CachedEntries < 30 || h.Distributed.KeyspaceHits == 0 {
			t.Errorf("/health distributed_cache = %+v", *h.Distributed)
		}
		if h.Local.Entries < 20 || h.Local.Bytes == 0 || h.Local.Hits == 0 {
			t.Errorf("/health local_cache = %+v", h.Local)
		}
	})

	t.Run("Redis killed during load, then restarted", func(t *testing.T) {
		underProxyLoad(t, a, b, func(more func(int64)) {
			rds.kill()
			more(60)
		})
		if h := a.cacheHealth(t); h.Distributed.Connected {
			t.Errorf("/health says Redis is connected while it is down: %+v", *h.Distributed)
		}

		// Restarted (empty), Redis is used again once each proxy's breaker
		// lets a probe through: a pair a scored is then found by b
		// without its plugin. pollUntil's minute covers the breaker's
		// longest pause, 30 seconds.
		rds.start()
		sharedByProxies(t, a, b, "after restart")
	})
}

// silentRedis listens on a free loopback port, accepts connections and never
// answers: a Redis that hangs. It returns its URL.
func silentRedis(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "redis://" + ln.Addr().String() + "/0"
}

// TestReadyWaitsForTheCache: the cache keys on the identity of the model
// the plugin loaded, so it starts after the model; /health must not say ok
// (and requests must not be taken) before it has, or requests in between
// go uncached and undeduplicated. A hanging Redis makes the cache's start
// take REDIS_TIMEOUT_MS or more, which would widen such a window to half a
// second: the second of two identical requests sent as soon as /health says
// ok must come from the L1, not from the plugin.
func TestReadyWaitsForTheCache(t *testing.T) {
	requireRuntime(t)
	dir := goldenModelDir(t, "tiny-bert")
	env := []string{"REDIS_ENABLED=true", "REDIS_URL=" + silentRedis(t), "REDIS_TIMEOUT_MS=500"}

	s := startServer(t, env, "--model", dir)
	s.waitHealth(t, "ok")
	base := scored(t, s)
	cands := candidates("ready", 0, 3)
	for range 2 {
		if _, err := rerankScores(s, "capital of france", cands); err != nil {
			t.Fatal(err)
		}
	}
	if got := scored(t, s) - base; got != 3 {
		t.Fatalf("the plugin scored %d pairs for two identical requests of 3, want 3: the second was not cached", got)
	}
}

// TestCacheNewWeightsAfterRestart: the model's files are replaced by other
// weights and the plugin dies; the restarted plugin loads the new weights
// under a new revision, and no score of the old weights is served from
// either cache level: the repeated request is scored by the plugin again,
// and differently.
func TestCacheNewWeightsAfterRestart(t *testing.T) {
	requireRuntime(t)
	rds := startRedisServer(t)
	dir := filepath.Join(t.TempDir(), "tiny-bert")
	writeTestModel(t, "tiny-bert", dir, testModelSeed)
	s := startServer(t, []string{"REDIS_ENABLED=true", "REDIS_URL=" + rds.url()}, "--model", dir)
	s.waitHealth(t, "ok")
	revision := func() any {
		_, h := s.health(t)
		return h.ModelInfo["revision"]
	}
	oldRevision := revision()
	cands := candidates("weights", 0, 4)
	before, err := rerankScores(s, "capital of france", cands)
	if err != nil {
		t.Fatal(err)
	}
	base := scored(t, s)
	if _, err := rerankScores(s, "capital of france", cands); err != nil {
		t.Fatal(err)
	}
	if got := scored(t, s); got != base {
		t.Fatalf("the repeated request was scored by the plugin (%d pairs): the cache is off", got-base)
	}

	// New weights, written beside the model and renamed over it (the
	// running plugin keeps reading the old file), then the plugin dies.
	next := filepath.Join(t.TempDir(), "tiny-bert")
	writeTestModel(t, "tiny-bert", next, testModelSeed+1)
	if err := os.Rename(filepath.Join(next, "onnx", "model.onnx"), filepath.Join(dir, "onnx", "model.onnx")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pluginPID(t, s.cmd.Process.Pid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The limit only stops a broken build from hanging.
	for limit := time.Now().Add(3 * time.Minute); restarts(t, s) == 0 || !healthy(t, s); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(limit) {
			t.Fatal("plugin never restarted")
		}
	}
	if r := revision(); r == oldRevision {
		t.Fatalf("revision %v unchanged after new weights", r)
	}
	base = scored(t, s)
	after, err := rerankScores(s, "capital of france", cands)
	if err != nil {
		t.Fatal(err)
	}
	if got := scored(t, s) - base; got != uint64(len(cands)) {
		t.Fatalf("after new weights the plugin scored %d pairs, want %d: scores of the old weights were served from a cache", got, len(cands))
	}
	same := 0
	for i, v := range after {
		if v == before[i] {
			same++
		}
	}
	if same == len(cands) {
		t.Fatalf("new weights scored %v, the same as the old", after)
	}
}
