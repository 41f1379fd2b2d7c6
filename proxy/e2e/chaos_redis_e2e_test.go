package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis half of the chaos group (issue 13): a real server, its plugin
// and a real redis-server under load while Redis is SIGKILLed and
// restarted, or answers slowly through a delaying TCP proxy. Every request
// must be answered 200 with a clean run's scores, and the circuit breaker
// must be seen (from /health and /metrics) opening and closing again.

// chaosRedisTimeout is the servers' REDIS_TIMEOUT_MS in these tests: five
// times the 50 ms default, so that the shared 2-core machine's scheduling
// stalls are not what opens the breaker; the slow windows delay by far
// more.
const chaosRedisTimeout = 250 * time.Millisecond

// chaosRedisDeadline bounds the waits for the breaker: its longest pause
// between probes is 30 s, and the machine is shared.
const chaosRedisDeadline = 2 * time.Minute

// startChaosRedisServer starts a real server over the Redis at url with the
// L1 off, so that every pair is looked up in Redis (and the Redis faults
// reach every request), and a 10 s request deadline.
func startChaosRedisServer(t *testing.T, url string) *server {
	t.Helper()
	env := []string{"REDIS_ENABLED=true", "REDIS_URL=" + url,
		"REDIS_TIMEOUT_MS=" + strconv.Itoa(int(chaosRedisTimeout/time.Millisecond)), "ENABLE_PREDICTION_CACHE=false"}
	s := startServer(t, env, "--model", modelDir(t, "tiny-bert"), "--timeout", "10")
	s.waitHealth(t, "ok")
	return s
}

// breakerSeen is the Redis circuit breaker as /health shows it.
type breakerSeen struct {
	opened, closed uint64
	connected      bool
	// lockWaits counts pairs the server waited for because their Redis
	// lock was held.
	lockWaits uint64
}

func (s *server) breaker(t *testing.T) breakerSeen {
	t.Helper()
	d := s.cacheHealth(t).Distributed
	return breakerSeen{opened: d.BreakerOpened, closed: d.BreakerClosed, connected: d.Connected, lockWaits: d.LockWaits}
}

// waitBreaker polls /health until cond holds, failing t after
// chaosRedisDeadline, and returns what it saw last.
func (s *server) waitBreaker(t *testing.T, what string, cond func(breakerSeen) bool) breakerSeen {
	t.Helper()
	limit := time.Now().Add(chaosRedisDeadline)
	for {
		b := s.breaker(t)
		if cond(b) {
			return b
		}
		if time.Now().After(limit) {
			t.Fatalf("timed out after %v waiting for %s; breaker %+v", chaosRedisDeadline, what, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkBreakerMetrics checks that /metrics reports the breaker's opens and
// closes as /health does (read first, so the counters can only have grown)
// and that the breaker is closed now.
func checkBreakerMetrics(t *testing.T, s *server, seen breakerSeen) {
	t.Helper()
	fams, _ := scrape(t, s)
	opened := value(t, fams, "rerank_redis_breaker_opened_total", nil)
	closed := value(t, fams, "rerank_redis_breaker_closed_total", nil)
	if opened < float64(seen.opened) || closed < float64(seen.closed) || closed == 0 {
		t.Errorf("/metrics: breaker opened %v and closed %v times; /health said %d and %d", opened, closed, seen.opened, seen.closed)
	}
	if open := value(t, fams, "rerank_redis_breaker_open", nil); open != 0 {
		t.Errorf("/metrics: rerank_redis_breaker_open = %v after Redis came back, want 0", open)
	}
}

// flushRedis empties the Redis at addr, directly (not through a proxy), so
// that a run starts with every pair to compute, lock and store.
func flushRedis(t *testing.T, addr string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	if err := c.FlushDB(context.Background()).Err(); err != nil {
		t.Fatalf("FLUSHDB on %s: %v", addr, err)
	}
}

// dbSize returns the number of keys in the Redis at addr, read directly.
func dbSize(t *testing.T, addr string) int64 {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	n, err := c.DBSize(context.Background()).Result()
	if err != nil {
		t.Fatalf("DBSIZE on %s: %v", addr, err)
	}
	return n
}

// addr is host:port of r.
func (r *redisProc) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// durations lists d as "a, b, c".
func durations(d []time.Duration) string {
	s := ""
	for i, v := range d {
		if i > 0 {
			s += ", "
		}
		s += v.Round(time.Millisecond).String()
	}
	return s
}

// redisFault is one kind of Redis fault a chaos run injects over and over.
type redisFault struct {
	// what names one fault in the log ("kill", "slow window").
	what string
	// gap is how long Redis is left alone before each fault.
	gap time.Duration
	// hold is how long fault n (from 1) lasts.
	hold func(n int) time.Duration
	// inject starts a fault; heal ends it.
	inject, heal func()
}

// redisChaos is what a Redis chaos run saw.
type redisChaos struct {
	chaosOutcome
	// faults counts the faults; held and recovered say, per fault, how
	// long it lasted and how long the breaker took to close after it.
	faults          int
	held, recovered []time.Duration
	// opened and closed count the breaker's opens and closes during the
	// run, as /health reports them.
	opened, closed uint64
	// lockWaits counts the pairs the server waited for because their
	// Redis lock was held: with one server, locks it left behind itself.
	lockWaits uint64
	// end is the breaker once /health said Redis is connected again.
	end breakerSeen
}

// runRedisChaos sends set's requests to s from clients for duration while
// f is injected every f.gap (at least minFaults times): after each
// injection it waits for the breaker to open, then heals the fault and
// waits for the breaker to close. Redis (at addr, reached directly) is
// emptied first, so the run computes, locks and stores pairs too.
func runRedisChaos(t *testing.T, s *server, set chaosSet, addr string, clients int, duration, deadline time.Duration, minFaults int, f redisFault) redisChaos {
	t.Helper()
	var rc redisChaos
	flushRedis(t, addr)
	start := s.breaker(t)
	rc.chaosOutcome = chaosLoad(t, s, set, clients, duration, deadline, func(end time.Time, _ *chaosOutcome) {
		for rc.faults < minFaults || time.Now().Before(end) {
			time.Sleep(f.gap)
			if rc.faults >= minFaults && !time.Now().Before(end) {
				return
			}
			before := s.breaker(t)
			began := time.Now()
			f.inject()
			rc.faults++
			s.waitBreaker(t, fmt.Sprintf("the breaker to open in %s %d", f.what, rc.faults), func(b breakerSeen) bool { return b.opened > before.opened })
			time.Sleep(time.Until(began.Add(f.hold(rc.faults))))
			f.heal()
			healed := time.Now()
			rc.held = append(rc.held, healed.Sub(began))
			s.waitBreaker(t, fmt.Sprintf("the breaker to close after %s %d", f.what, rc.faults), func(b breakerSeen) bool { return b.closed > before.closed })
			rc.recovered = append(rc.recovered, time.Since(healed))
		}
	})
	rc.end = s.waitBreaker(t, "/health to say Redis is connected", func(b breakerSeen) bool { return b.connected })
	rc.opened, rc.closed = rc.end.opened-start.opened, rc.end.closed-start.closed
	rc.lockWaits = rc.end.lockWaits - start.lockWaits
	return rc
}

// check fails t unless every request was answered with the clean run's
// scores, minFaults faults happened, the server never waited for a lock,
// /metrics agrees with /health on the breaker, and Redis (at addr) holds
// scores again: the server uses it.
func (rc *redisChaos) check(t *testing.T, s *server, addr string, deadline time.Duration, minFaults int) {
	t.Helper()
	rc.chaosOutcome.check(t, deadline)
	if rc.faults < minFaults {
		t.Fatalf("%d faults, want at least %d", rc.faults, minFaults)
	}
	// One server: every lock it met was its own, left behind by a call
	// that timed out but that Redis carried out, or by a failed release;
	// it must take those over, never wait for them (it did, before
	// lockScript: up to half a request's deadline).
	if rc.lockWaits != 0 {
		t.Errorf("the server waited for %d pairs' locks that it had left behind itself", rc.lockWaits)
	}
	checkBreakerMetrics(t, s, rc.end)
	if n := dbSize(t, addr); n == 0 {
		t.Error("Redis holds no scores after the last fault: the server stopped using it")
	}
}

// compare logs the latencies of a faulted run beside a run without faults.
func (rc *redisChaos) compare(t *testing.T, base chaosOutcome) {
	t.Helper()
	t.Logf("latency with faults / without: p50 %v / %v, p99 %v / %v; requests answered %d / %d",
		percentile(rc.latencies, 0.5), percentile(base.latencies, 0.5),
		percentile(rc.latencies, 0.99), percentile(base.latencies, 0.99), rc.ok, base.ok)
}

// redisBaseline runs the load without faults on an emptied Redis (the long
// runs only, for the latency comparison).
func redisBaseline(t *testing.T, s *server, set chaosSet, addr string, clients int, duration, deadline time.Duration) chaosOutcome {
	t.Helper()
	if !chaosLong() {
		return chaosOutcome{}
	}
	flushRedis(t, addr)
	base := chaosLoad(t, s, set, clients, duration, deadline, nil)
	t.Logf("no faults: %d clients for %v: %s", clients, duration, base.summary())
	return base
}

// TestChaosRedisKill SIGKILLs redis-server under load and restarts it on
// the same port (empty: persistence is off), a few times: every request is
// answered 200 with the clean run's scores, the breaker opens at each kill
// and closes again after each restart (as /health and /metrics say), and
// the restarted Redis is used again. The long run (16 clients, 60 s) also
// runs the load without kills for the latency comparison.
func TestChaosRedisKill(t *testing.T) {
	requireRuntime(t)
	clients, duration, minKills := 4, 8*time.Second, 2
	downs := []time.Duration{time.Second}
	gap := time.Second
	if chaosLong() {
		clients, duration = 16, 60*time.Second
		// A short outage, one the first probe (1 s after opening) may
		// find still down, and one that makes the probes back off.
		downs = []time.Duration{500 * time.Millisecond, 2 * time.Second, 5 * time.Second}
		gap = 3 * time.Second
	}
	const deadline = 10 * time.Second
	rds := startRedisServer(t)
	s := startChaosRedisServer(t, rds.url())
	set := newChaosSet(t, s, 64)
	base := redisBaseline(t, s, set, rds.addr(), clients, duration, deadline)
	rc := runRedisChaos(t, s, set, rds.addr(), clients, duration, deadline, minKills, redisFault{
		what:   "kill",
		gap:    gap,
		hold:   func(n int) time.Duration { return downs[(n-1)%len(downs)] },
		inject: rds.kill,
		heal:   rds.start,
	})
	t.Logf("redis-server SIGKILLed %d times under %d clients for %v (down %s; L1 off, Redis timeout %v): %s; breaker opened %d and closed %d times; restart to breaker closed: %s; pairs that waited for a lock: %d",
		rc.faults, clients, duration, durations(rc.held), chaosRedisTimeout, rc.summary(), rc.opened, rc.closed, durations(rc.recovered), rc.lockWaits)
	if chaosLong() {
		rc.compare(t, base)
	}
	rc.check(t, s, rds.addr(), deadline, minKills)
}

// delayProxy is a TCP proxy in front of a real Redis that sleeps a
// configurable delay before forwarding each chunk it reads, in both
// directions: a Redis that answers slowly (and carries out commands late,
// as a stalled one does), switched slow and fast while connections stay
// open.
type delayProxy struct {
	ln      net.Listener
	target  string
	delay   atomic.Int64 // nanoseconds before each chunk is forwarded
	delayed atomic.Int64 // chunks forwarded late
	done    chan struct{}
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startDelayProxy listens on a free loopback port and forwards to target;
// the test's cleanup closes it and every connection.
func startDelayProxy(t *testing.T, target string) *delayProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &delayProxy{ln: ln, target: target, done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *delayProxy) addr() string { return p.ln.Addr().String() }

// setDelay sets the delay of every chunk read from now on, on open
// connections too.
func (p *delayProxy) setDelay(d time.Duration) { p.delay.Store(int64(d)) }

func (p *delayProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, u) {
			return
		}
		p.wg.Go(func() { p.pipe(u, c) })
		p.wg.Go(func() { p.pipe(c, u) })
	}
}

// track records conns for close; it closes them and reports false when the
// proxy is closing.
func (p *delayProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		for _, c := range conns {
			c.Close()
		}
		return false
	default:
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

// pipe copies src to dst, waiting the current delay before forwarding each
// chunk; when either side ends, it closes both, as the other direction's
// pipe then does.
func (p *delayProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	// 32 KiB holds a pipeline of a few hundred commands in one chunk.
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.delay.Load()); d > 0 {
				p.delayed.Add(1)
				select {
				case <-time.After(d):
				case <-p.done:
					return
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *delayProxy) close() {
	p.mu.Lock()
	select {
	case <-p.done:
	default:
		close(p.done)
	}
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestChaosRedisSlow puts a delaying TCP proxy between the server and a real
// redis-server and switches it fast → slow (each chunk delayed by far more
// than the Redis timeout) → fast a few times under load. Each slow window
// starts on an emptied Redis, so the locks and writes of the pairs being
// computed go to the slow Redis too, and are carried out late. Every request
// is answered 200 with the clean run's scores; the breaker opens in each
// slow window and closes again in the fast one after it. The long run (16
// clients, 60 s) also runs the load without slow windows for the latency
// comparison.
func TestChaosRedisSlow(t *testing.T) {
	requireRuntime(t)
	clients, duration, minWindows := 4, 8*time.Second, 2
	slowFor, fastFor := time.Second, time.Second
	if chaosLong() {
		clients, duration = 16, 60*time.Second
		slowFor, fastFor = 5*time.Second, 3*time.Second
	}
	// Four Redis timeouts per chunk: a call through the slow proxy (a
	// command one way, its answer the other) always times out.
	const slowDelay = 4 * chaosRedisTimeout
	const deadline = 10 * time.Second
	rds := startRedisServer(t)
	dp := startDelayProxy(t, rds.addr())
	s := startChaosRedisServer(t, "redis://"+dp.addr()+"/0")
	set := newChaosSet(t, s, 64)
	base := redisBaseline(t, s, set, rds.addr(), clients, duration, deadline)
	rc := runRedisChaos(t, s, set, rds.addr(), clients, duration, deadline, minWindows, redisFault{
		what: "slow window",
		gap:  fastFor,
		hold: func(int) time.Duration { return slowFor },
		inject: func() {
			// An empty Redis: the window's pairs are locked and
			// stored through the slow proxy.
			flushRedis(t, rds.addr())
			dp.setDelay(slowDelay)
		},
		heal: func() { dp.setDelay(0) },
	})
	t.Logf("Redis slowed (each chunk +%v, Redis timeout %v; L1 off) in %d windows (%s) under %d clients for %v, %d chunks delayed: %s; breaker opened %d and closed %d times; fast again to breaker closed: %s; pairs that waited for a lock: %d",
		slowDelay, chaosRedisTimeout, rc.faults, durations(rc.held), clients, duration, dp.delayed.Load(), rc.summary(),
		rc.opened, rc.closed, durations(rc.recovered), rc.lockWaits)
	if chaosLong() {
		rc.compare(t, base)
	}
	if dp.delayed.Load() == 0 {
		t.Fatal("no chunk was delayed: the server did not talk to Redis through the proxy")
	}
	rc.check(t, s, rds.addr(), deadline, minWindows)
}
