package cache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk"
)

// concurrently runs n requests for pairs, alternating between the caches,
// all at once, and fails t on any error or wrong score.
func concurrently(t *testing.T, n int, next *countingScorer, pairs []sdk.Pair, caches ...*Cache) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		c := caches[i%len(caches)]
		wg.Go(func() {
			<-start
			got, err := c.Score(context.Background(), pairs)
			if err != nil {
				errs <- err
				return
			}
			for j, p := range pairs {
				if got[j] != next.want(p) {
					errs <- fmt.Errorf("request %d: score %d = %v, want %v", i, j, got[j], next.want(p))
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func checkScoredOnce(t *testing.T, next *countingScorer, pairs []sdk.Pair) {
	t.Helper()
	for _, p := range pairs {
		if n := next.count(p); n != 1 {
			t.Fatalf("pair %q scored %d times, want exactly once", p.Document, n)
		}
	}
}

func TestTwoInstancesScoreEachPairOnce(t *testing.T) {
	srv := startRedis(t)
	f := func(name string, localOn bool) {
		t.Run(name, func(t *testing.T) {
			srv.client().FlushAll(context.Background())
			next := newCounting("m")
			// Long enough for the 50 requests to overlap the first backend
			// call, so both in-process and cross-instance dedup are used.
			next.delay = 30 * time.Millisecond
			cfg := testConfig(srv.url())
			cfg.Local.Enabled = localOn
			a := newTestCache(t, cfg, testIdentity, next)
			b := newTestCache(t, cfg, testIdentity, next)
			pairs := pairsOf(name, 0, 20)
			concurrently(t, 50, next, pairs, a, b)
			checkScoredOnce(t, next, pairs)
			if got := len(srv.keys(lockKeyPrefix + "*")); got != 0 {
				t.Errorf("%d locks left in Redis", got)
			}
			if got := len(srv.keys(redisKeyPrefix + "*")); got != 20 {
				t.Errorf("%d scores in Redis, want 20", got)
			}
		})
	}
	f("L1 and Redis", true)
	f("Redis only", false)
}

func TestPartiallyOverlappingRequestsScoreOnlyNewPairs(t *testing.T) {
	srv := startRedis(t)
	next := newCounting("m")
	a := newTestCache(t, testConfig(srv.url()), testIdentity, next)
	b := newTestCache(t, testConfig(srv.url()), testIdentity, next)
	all := pairsOf("q", 0, 40)
	f := func(c *Cache, from, to, wantTotal int) {
		t.Helper()
		checkScores(t, next, all[from:to], score(t, c, all[from:to]))
		if got := next.total(); got != wantTotal {
			t.Fatalf("after pairs %d..%d the backend scored %d pairs, want %d", from, to-1, got, wantTotal)
		}
	}
	f(a, 0, 20, 20)
	f(b, 10, 30, 30) // b has an empty L1: 10 from Redis, 10 new
	f(a, 5, 35, 35)  // 15 from L1, 10 from Redis, 5 new
	f(b, 0, 40, 40)
	checkScoredOnce(t, next, all)
	if st := b.Stats().Distributed; st.Hits < 20 {
		t.Errorf("b found %d pairs in Redis, want at least 20", st.Hits)
	}
}

func TestNoCrossTalkBetweenModels(t *testing.T) {
	srv := startRedis(t)
	pairs := pairsOf("q", 0, 10)
	f := func(name string, other Identity) {
		t.Run(name, func(t *testing.T) {
			srv.client().FlushAll(context.Background())
			n1, n2 := newCounting("model one"), newCounting("model two")
			c1 := newTestCache(t, testConfig(srv.url()), testIdentity, n1)
			c2 := newTestCache(t, testConfig(srv.url()), other, n2)
			checkScores(t, n1, pairs, score(t, c1, pairs))
			checkScores(t, n2, pairs, score(t, c2, pairs))
			checkScores(t, n1, pairs, score(t, c1, pairs))
			checkScores(t, n2, pairs, score(t, c2, pairs))
			checkScoredOnce(t, n1, pairs)
			checkScoredOnce(t, n2, pairs)
			if got := len(srv.keys(redisKeyPrefix + "*")); got != 2*len(pairs) {
				t.Errorf("%d scores in Redis, want %d", got, 2*len(pairs))
			}
		})
	}
	with := func(mod func(*Identity)) Identity {
		id := testIdentity
		mod(&id)
		return id
	}
	f("precision", with(func(i *Identity) { i.Precision = sdk.INT8 }))
	f("model", with(func(i *Identity) { i.Name, i.Revision = "tiny-xlmr", "sha256:4567" }))
	f("revision", with(func(i *Identity) { i.Revision = "sha256:89ab" }))
	f("activation", with(func(i *Identity) { i.Activation = "identity" }))
}

func TestRedisTTLExpiry(t *testing.T) {
	srv := startRedis(t)
	cfg := testConfig(srv.url())
	cfg.Local.Enabled = false
	cfg.Redis.TTL = 200 * time.Millisecond
	next := newCounting("m")
	c := newTestCache(t, cfg, testIdentity, next)
	pairs := pairsOf("q", 0, 3)
	score(t, c, pairs)
	score(t, c, pairs)
	if got := next.total(); got != 3 {
		t.Fatalf("backend scored %d pairs before expiry, want 3", got)
	}
	rc := srv.client()
	keys := srv.keys(redisKeyPrefix + "*")
	if len(keys) != 3 {
		t.Fatalf("%d keys in Redis, want 3", len(keys))
	}
	for _, k := range keys {
		ttl := rc.PTTL(context.Background(), k).Val()
		if ttl <= 0 || ttl > cfg.Redis.TTL {
			t.Fatalf("key %s has TTL %s, want one in (0, %s]", k, ttl, cfg.Redis.TTL)
		}
	}
	// Let Redis expire them itself; the loop only waits for that.
	for len(srv.keys(redisKeyPrefix+"*")) > 0 {
		time.Sleep(20 * time.Millisecond)
	}
	checkScores(t, next, pairs, score(t, c, pairs))
	if got := next.total(); got != 6 {
		t.Errorf("backend scored %d pairs after expiry, want 6", got)
	}
}

func TestStolenLockIsNotReleasedByNonOwner(t *testing.T) {
	srv := startRedis(t)
	c := newTestCache(t, testConfig(srv.url()), testIdentity, newCounting("m"))
	r := c.remote
	k := c.keyer.shared(pairsOf("q", 0, 1)[0])
	lock := lockKeyPrefix + redisKey(k)
	ctx := context.Background()
	rc := srv.client()

	owner := r.newToken()
	got, _, err := r.lockAndGet(ctx, []string{k}, owner)
	if err != nil || !got[0] {
		t.Fatalf("first lockAndGet = %v, %v; want the lock", got, err)
	}
	// Another instance (a cache with its own token) does not get it.
	r2 := newTestCache(t, testConfig(srv.url()), testIdentity, newCounting("m")).remote
	other := r2.newToken()
	if got, _, err := r2.lockAndGet(ctx, []string{k}, other); err != nil || got[0] {
		t.Fatalf("second lockAndGet = %v, %v; want no lock while it is held", got, err)
	}
	// The owner's lock expires and another instance takes it.
	rc.Del(ctx, lock)
	thief := "another-process:1"
	rc.Set(ctx, lock, thief, time.Minute)
	if err := r.release(ctx, owner, []string{k}, nil); err != nil {
		t.Fatal(err)
	}
	if v := rc.Get(ctx, lock).Val(); v != thief {
		t.Fatalf("after the former owner's release the lock holds %q, want %q", v, thief)
	}
	if err := r.release(ctx, other, []string{k}, nil); err != nil {
		t.Fatal(err)
	}
	if v := rc.Get(ctx, lock).Val(); v != thief {
		t.Fatalf("after a waiter's release the lock holds %q, want %q", v, thief)
	}
	if err := r.release(ctx, thief, []string{k}, nil); err != nil {
		t.Fatal(err)
	}
	if n := rc.Exists(ctx, lock).Val(); n != 0 {
		t.Fatalf("the owner's release left the lock")
	}
}

// TestLeftoverLocks: a request meets the locks of pairs 0 and 1 held for a
// minute with nobody computing them. Another instance's locks (a dead
// process's) are waited for half the request's remaining time, then the
// pairs are computed and the locks left to their owner. A lock of this
// cache's own token is a leftover of its own: a lock call that timed out
// here but that a slow Redis carried out late, or a failed release (within
// one process a pair in flight is joined in memory, never through its Redis
// lock). It is taken over at once, not waited for as another instance's
// (which cost requests up to half their deadline in TestChaosRedisSlow),
// and released with the scores stored.
func TestLeftoverLocks(t *testing.T) {
	srv := startRedis(t)
	f := func(name string, owner func(c *Cache) string, timeout time.Duration, wantWaits uint64, wantLocks int) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			srv.client().FlushAll(ctx)
			next := newCounting("m")
			cfg := testConfig(srv.url())
			cfg.Local.Enabled = false
			c := newTestCache(t, cfg, testIdentity, next)
			pairs := pairsOf("q", 0, 4)
			for i := range 2 {
				srv.client().Set(ctx, lockKeyPrefix+redisKey(c.keyer.shared(pairs[i])), owner(c), time.Minute)
			}
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			got, err := c.Score(rctx, pairs)
			if err != nil {
				t.Fatalf("Score: %v", err)
			}
			checkScores(t, next, pairs, got)
			checkScoredOnce(t, next, pairs)
			if st := c.Stats().Distributed; st.LockWaits != wantWaits {
				t.Errorf("lock waits = %d, want %d", st.LockWaits, wantWaits)
			}
			if n := len(srv.keys(lockKeyPrefix + "*")); n != wantLocks {
				t.Errorf("%d locks in Redis, want %d", n, wantLocks)
			}
			if n := len(srv.keys(redisKeyPrefix + "*")); n != 4 {
				t.Errorf("%d scores in Redis, want 4", n)
			}
		})
	}
	// 200 ms: the wait for the dead instance's locks is half of it.
	f("another instance's are waited for", func(*Cache) string { return "dead-process:1" }, 200*time.Millisecond, 2, 2)
	// 4 s: waiting for them would take 2 s, and then compute the pairs
	// without their locks.
	f("own are taken over", func(c *Cache) string { return c.remote.newToken() }, 4*time.Second, 0, 0)
}

func TestWaiterWakesWhenOwnerFinishes(t *testing.T) {
	srv := startRedis(t)
	next := newCounting("m")
	a := newTestCache(t, testConfig(srv.url()), testIdentity, next)
	cfg := testConfig(srv.url())
	// Polling is off in practice: only the notification can wake b.
	cfg.Redis.PollInterval = time.Hour
	b := newTestCache(t, cfg, testIdentity, next)
	pairs := pairsOf("q", 0, 5)
	ctx := context.Background()
	// a holds the locks, as if it had started computing.
	owner := a.remote.newToken()
	ks := make([]string, len(pairs))
	for i := range pairs {
		ks[i] = a.keyer.shared(pairs[i])
	}
	if got, _, err := a.remote.lockAndGet(ctx, ks, owner); err != nil || !got[0] {
		t.Fatalf("lockAndGet = %v, %v", got, err)
	}
	done := make(chan []float32)
	go func() {
		got, err := b.Score(ctx, pairs)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	// Wait until b is waiting, then finish a's work.
	for i := 0; b.Stats().Distributed.LockWaits == 0; i++ {
		if i == 10000 {
			t.Fatal("b never waits for a's locks")
		}
		time.Sleep(time.Millisecond)
	}
	scores := make([]float32, len(pairs))
	items := toItems([]int{0, 1, 2, 3, 4})
	if err := a.compute(ctx, pairs, a.keyer.local(pairs), scores, items, owner, ks); err != nil {
		t.Fatal(err)
	}
	checkScores(t, next, pairs, <-done)
	checkScoredOnce(t, next, pairs)
}

func TestRedisKilledDuringLoad(t *testing.T) {
	srv := startRedis(t)
	next := newCounting("m")
	cfg := testConfig(srv.url())
	// A short timeout, as in production: a killed Redis must not slow the
	// run down. Scores computed twice are fine here; failures are not.
	cfg.Redis.Timeout = 100 * time.Millisecond
	a := newTestCache(t, cfg, testIdentity, next)
	b := newTestCache(t, cfg, testIdentity, next)
	underLoad(t, next, []*Cache{a, b}, func(waitN func(int64)) {
		srv.kill()
		waitN(300)
	})
	if st := a.Stats().Distributed; st.Errors == 0 || st.BreakerOpened == 0 || st.Connected {
		t.Errorf("a's stats after the kill = %+v; want errors, an opened breaker, not connected", st)
	}

	// Restarted (empty), Redis is used again once the breaker lets a probe
	// through: a pair a scored is then found by b without the backend.
	srv.start()
	sharedThroughRedis(t, next, a, b, "after restart")
	// /health's figures are refreshed at most once per infoMaxAge.
	waitFor(t, "b's stats to say connected after the restart", func() bool { return b.Stats().Distributed.Connected })
	// a's breaker opened during the kill and, as a wrote the shared pair,
	// a probe has closed it again.
	if st := a.Stats().Distributed; st.BreakerClosed == 0 || st.BreakerClosed > st.BreakerOpened {
		t.Errorf("a's stats after the restart = %+v; want the breaker closed again (breaker_closed ≥ 1, ≤ breaker_opened)", st)
	}
}

func TestDeadRedisFailsOpen(t *testing.T) {
	// A listener that accepts and never answers: a stalled Redis.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns sync.WaitGroup
	var held []net.Conn
	var heldMu sync.Mutex
	conns.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			heldMu.Lock()
			held = append(held, c)
			heldMu.Unlock()
		}
	})
	defer func() {
		l.Close()
		conns.Wait()
		for _, c := range held {
			c.Close()
		}
	}()
	cfg := testConfig("redis://" + l.Addr().String() + "/0")
	cfg.Redis.Timeout = 20 * time.Millisecond
	cfg.Redis.BreakerCooldown = time.Hour
	cfg.Redis.BreakerMaxCooldown = time.Hour
	cfg.Local.Enabled = false
	next := newCounting("m")
	c := newTestCache(t, cfg, testIdentity, next)
	pairs := pairsOf("q", 0, 5)
	for range 10 {
		checkScores(t, next, pairs, score(t, c, pairs))
	}
	st := c.Stats().Distributed
	if st.BreakerOpened != 1 || st.Errors != uint64(cfg.Redis.BreakerThreshold) || st.Skipped < 7 || st.Connected {
		t.Errorf("stats = %+v; want the breaker opened once after %d errors, later calls skipped", st, cfg.Redis.BreakerThreshold)
	}
}

func TestRedisStats(t *testing.T) {
	srv := startRedis(t)
	c := newTestCache(t, testConfig(srv.url()), testIdentity, newCounting("m"))
	pairs := pairsOf("q", 0, 6)
	score(t, c, pairs)
	st := c.Stats().Distributed
	if !st.Enabled || !st.Connected || st.CachedEntries != 6 || st.KeyspaceMisses == 0 || st.Misses != 6 {
		t.Errorf("stats = %+v; want enabled, connected, 6 entries, keyspace misses, 6 misses", st)
	}
}

func TestErrorsReleaseLocks(t *testing.T) {
	srv := startRedis(t)
	next := newCounting("m")
	next.fail = errBackend
	c := newTestCache(t, testConfig(srv.url()), testIdentity, next)
	pairs := pairsOf("q", 0, 3)
	if _, err := c.Score(context.Background(), pairs); !errors.Is(err, errBackend) {
		t.Fatalf("Score error = %v, want %v", err, errBackend)
	}
	if n := len(srv.keys("*")); n != 0 {
		t.Errorf("%d keys left in Redis after a failed batch, want none", n)
	}
	next.setFail(nil)
	checkScores(t, next, pairs, score(t, c, pairs))
}

func TestCanceledRequestReleasesLocks(t *testing.T) {
	srv := startRedis(t)
	next := newCounting("m")
	next.delay = time.Second
	c := newTestCache(t, testConfig(srv.url()), testIdentity, next)
	pairs := pairsOf("q", 0, 3)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// Cancel once the request holds its locks.
		for ctx.Err() == nil && len(srv.keys(lockKeyPrefix+"*")) < len(pairs) {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := c.Score(ctx, pairs); !errors.Is(err, context.Canceled) {
		t.Fatalf("Score error = %v, want context.Canceled", err)
	}
	if n := len(srv.keys("*")); n != 0 {
		t.Errorf("%d keys left in Redis after a canceled request, want none", n)
	}
	if st := c.Stats().Distributed; st.Errors != 0 || st.BreakerOpened != 0 {
		t.Errorf("a canceled request counted against Redis: %+v", st)
	}
}

func TestNaNNeverReachesRedis(t *testing.T) {
	srv := startRedis(t)
	next := newCounting("m")
	pairs := pairsOf("q", 0, 3)
	next.nan = pairs[1].Document
	a := newTestCache(t, testConfig(srv.url()), testIdentity, next)
	b := newTestCache(t, testConfig(srv.url()), testIdentity, next)
	checkScores(t, next, pairs, score(t, a, pairs))
	checkScores(t, next, pairs, score(t, b, pairs))
	if n := len(srv.keys(redisKeyPrefix + "*")); n != 2 {
		t.Errorf("%d scores in Redis, want the 2 finite ones", n)
	}
	if n := next.count(pairs[1]); n != 2 {
		t.Errorf("the NaN pair was scored %d times, want 2 (never cached)", n)
	}
	if n := next.count(pairs[0]) + next.count(pairs[2]); n != 2 {
		t.Errorf("the finite pairs were scored %d times, want once each", n)
	}
}

func TestRedisModeFromURL(t *testing.T) {
	f := func(url, mode string, wantCluster bool, wantType string) {
		t.Helper()
		c, cluster, err := newClient(RedisConfig{URL: url, Mode: mode, Timeout: time.Second})
		if err != nil {
			t.Fatalf("newClient(%q, %q): %v", url, mode, err)
		}
		defer c.Close()
		if got := fmt.Sprintf("%T", c); cluster != wantCluster || got != wantType {
			t.Errorf("newClient(%q, %q) = %s, cluster %v; want %s, %v", url, mode, got, cluster, wantType, wantCluster)
		}
	}
	f("redis://localhost:6379/0", "", false, "*redis.Client")
	f("rediss://user:pw@localhost:6380/2", "auto", false, "*redis.Client")
	f("redis://sentinel:26379/0?master_name=mymaster", "", false, "*redis.Client")
	f("redis://node1:7000?addr=node2:7000&addr=node3:7000", "", true, "*redis.ClusterClient")
	f("redis://node1:7000", "cluster", true, "*redis.ClusterClient")
}
