// Package cache is the score cache stage of the proxy's pipeline: per
// (query, document) pair, an in-process L1 (ristretto, bounded in bytes, with
// a TTL), a Redis L2 shared by all proxies, and deduplication of concurrent
// identical pairs within a process (an in-flight table) and across processes
// (a Redis lock per pair, released only by its owner). Only the pairs found
// nowhere go to the next stage, and the scores are merged back in input
// order. Redis failing never fails a request: a short timeout and a circuit
// breaker keep a dead Redis from adding latency.
//
// A Redis key is the first 128 bits of a SHA-256 over the model identity
// (name, revision, precision, backend, max length, activation) and the pair,
// each part length-prefixed, so scores never cross models or precisions; the
// in-process keys are 128-bit seeded hashes of the pair in a cache made for
// one identity (see keyer). Errors, NaN and Inf scores and partial batches
// are never cached. A Cache serves one model identity: the models package
// keeps it across the loads of the same weights and gives a plugin that
// comes back with other weights a fresh one.
package cache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/rerank-sidecar/rerank/proxy/internal/metrics"
	"github.com/rerank-sidecar/rerank/sdk"
)

// Scorer is the next stage: it scores pairs, one score per pair in order.
type Scorer interface {
	Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error)
}

// LocalConfig configures the in-process L1.
type LocalConfig struct {
	// Enabled turns the L1 on (ENABLE_PREDICTION_CACHE).
	Enabled bool
	// TTL is how long a score stays in the L1 (CACHE_TTL_SECONDS).
	TTL time.Duration
	// MaxBytes bounds the L1's memory (CACHE_MAX_BYTES).
	MaxBytes int64
}

// RedisConfig configures the Redis L2 and cross-process dedup.
type RedisConfig struct {
	// Enabled turns the L2 on (REDIS_ENABLED).
	Enabled bool
	// URL locates Redis (REDIS_URL): redis://[user:pass@]host:port/db for
	// one node, with ?master_name=NAME for Sentinel (the host is then a
	// sentinel), or with &addr=host:port for each further Cluster node.
	URL string
	// Mode forces "single", "sentinel" or "cluster"; "" or "auto" reads it
	// from the URL.
	Mode string
	// TTL is how long a score stays in Redis (REDIS_TTL_SECONDS).
	TTL time.Duration
	// Timeout bounds every Redis call; a slower Redis is treated as down.
	Timeout time.Duration
	// LockTTL is how long a dedup lock lives if its owner dies; it should
	// exceed the time the backend takes for a batch.
	LockTTL time.Duration
	// PollInterval is how often a request waiting for another instance's
	// pairs looks in Redis when no notification came.
	PollInterval time.Duration
	// BreakerThreshold is the number of consecutive failed calls that open
	// the circuit breaker.
	BreakerThreshold int
	// BreakerCooldown is how long the breaker stays open before one probe
	// call; it doubles after each failed probe up to BreakerMaxCooldown.
	BreakerCooldown time.Duration
	// BreakerMaxCooldown caps BreakerCooldown's doubling.
	BreakerMaxCooldown time.Duration
}

// Config configures the cache stage.
type Config struct {
	// Local is the L1.
	Local LocalConfig
	// Redis is the L2.
	Redis RedisConfig
	// Logger receives warnings such as Redis going away; nil discards them.
	Logger hclog.Logger
}

// DefaultConfig returns the defaults of the Python server this replaces
// where it had the setting, and of this package elsewhere.
func DefaultConfig() Config {
	return Config{
		Local: LocalConfig{
			Enabled: true,
			TTL:     300 * time.Second,
			// 64 MiB holds 262,144 scores at localEntryCost.
			MaxBytes: 64 << 20,
		},
		Redis: RedisConfig{
			Enabled: false,
			URL:     "redis://localhost:6379/0",
			TTL:     600 * time.Second,
			// A Redis on the LAN answers in well under a millisecond; 50ms
			// bounds what a stalled one adds to a request before the breaker
			// opens.
			Timeout: 50 * time.Millisecond,
			// A 20-pair batch takes tens of milliseconds on a CPU and a
			// large batch on a busy one a few seconds; a dead owner's pairs
			// are recomputed after at most this long.
			LockTTL: 10 * time.Second,
			// Notifications normally wake waiters; polling only covers a
			// lost notification, so it can be much slower than a batch.
			PollInterval: 50 * time.Millisecond,
			// One lost connection or a reconnect does not open the breaker;
			// a dead Redis opens it within three calls.
			BreakerThreshold: 3,
			// A restarted Redis is used again within a second; one that
			// stays dead costs a probe per 30 seconds at most.
			BreakerCooldown:    time.Second,
			BreakerMaxCooldown: 30 * time.Second,
		},
	}
}

// Stats is the cache's section of /health: two top-level objects.
type Stats struct {
	// Local is the L1.
	Local LocalStats `json:"local_cache"`
	// Distributed is the Redis L2.
	Distributed DistributedStats `json:"distributed_cache"`
}

// Cache is the cache stage; it is safe for concurrent use.
type Cache struct {
	next    Scorer
	keyer   keyer
	local   *local
	remote  *remote
	flights *flights
}

// maxJoins bounds how often a request waits for other requests' flights of
// the same pairs that then fail, before it computes them itself.
const maxJoins = 3

// New returns a cache stage for the model id in front of next.
func New(cfg Config, id Identity, next Scorer) (*Cache, error) {
	if next == nil {
		return nil, errors.New("cache: no next stage")
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &Cache{next: next, keyer: newKeyer(id.digest()), flights: newFlights()}
	if cfg.Local.Enabled {
		l, err := newLocal(cfg.Local)
		if err != nil {
			return nil, err
		}
		c.local = l
	}
	if cfg.Redis.Enabled {
		if err := checkRedisConfig(cfg.Redis); err != nil {
			c.Close()
			return nil, err
		}
		r, err := newRemote(cfg.Redis, c.keyer.id[:], log)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.remote = r
	}
	return c, nil
}

// Validate checks cfg without connecting anywhere: bounds, durations, and
// the Redis URL and mode.
func (cfg Config) Validate() error {
	if cfg.Local.Enabled {
		if cfg.Local.MaxBytes < localEntryCost {
			return fmt.Errorf("cache: local cache bound %d bytes is below one entry (%d bytes)", cfg.Local.MaxBytes, localEntryCost)
		}
		if cfg.Local.TTL <= 0 {
			return fmt.Errorf("cache: local cache TTL must be positive, got %s", cfg.Local.TTL)
		}
	}
	if !cfg.Redis.Enabled {
		return nil
	}
	if err := checkRedisConfig(cfg.Redis); err != nil {
		return err
	}
	client, _, err := newClient(cfg.Redis)
	if err != nil {
		return err
	}
	return client.Close()
}

func checkRedisConfig(cfg RedisConfig) error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ttl", cfg.TTL}, {"timeout", cfg.Timeout}, {"lock ttl", cfg.LockTTL}, {"poll interval", cfg.PollInterval}, {"breaker cooldown", cfg.BreakerCooldown}} {
		if d.v <= 0 {
			return fmt.Errorf("cache: redis %s must be positive, got %s", d.name, d.v)
		}
	}
	// Redis expiries are in whole milliseconds.
	if cfg.TTL < time.Millisecond || cfg.LockTTL < time.Millisecond {
		return fmt.Errorf("cache: redis ttl and lock ttl must be at least 1ms")
	}
	return nil
}

// Close stops the cache's background work and closes its Redis connections;
// the caller makes sure no request is still in it (ristretto must not be
// closed under a concurrent Set).
func (c *Cache) Close() error {
	var err error
	if c.remote != nil {
		err = c.remote.close()
	}
	if c.local != nil {
		c.local.close()
	}
	return err
}

// Stats returns the counters for /health.
func (c *Cache) Stats() Stats {
	var s Stats
	if c.local != nil {
		s.Local = c.local.stats()
	}
	if c.remote != nil {
		s.Distributed = c.remote.stats()
	}
	return s
}

// tracer records the cache's spans when the request is traced.
var tracer = otel.Tracer("github.com/rerank-sidecar/rerank/proxy/internal/cache")

// Score returns one score per pair in order, from the caches where it can
// and from the next stage for the rest.
func (c *Cache) Score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	if len(pairs) == 0 {
		return c.next.Score(ctx, pairs)
	}
	if trace.SpanFromContext(ctx).IsRecording() {
		return c.tracedScore(ctx, pairs)
	}
	return c.score(ctx, pairs)
}

// tracedScore is Score under a span that says how many pairs the caches
// and peers answered.
func (c *Cache) tracedScore(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	ctx, span := tracer.Start(ctx, "rerank.cache", trace.WithAttributes(attribute.Int("rerank.pairs", len(pairs))))
	defer span.End()
	t := metrics.TallyFrom(ctx)
	if t == nil {
		t = &metrics.Tally{}
		ctx = metrics.WithTally(ctx, t)
	}
	before := t.Cached()
	scores, err := c.score(ctx, pairs)
	span.SetAttributes(attribute.Int("rerank.cached_pairs", t.Cached()-before))
	if err != nil {
		span.RecordError(err)
	}
	return scores, err
}

func (c *Cache) score(ctx context.Context, pairs []sdk.Pair) ([]float32, error) {
	keys := c.keyer.local(pairs)
	scores := make([]float32, len(pairs))
	var (
		miss []int          // first occurrence of each key found in no cache yet
		dups [][2]int       // later occurrences: {index, index of the first}
		seen map[string]int // key → first occurrence, among the misses
	)
	hits := 0
	for i := range pairs {
		k := keyAt(keys, i)
		if c.local != nil {
			if v, ok := c.local.get(k); ok {
				scores[i] = v
				hits++
				continue
			}
		}
		if len(pairs) > 1 {
			if seen == nil {
				seen = make(map[string]int, len(pairs)-i)
			}
			if j, ok := seen[k]; ok {
				dups = append(dups, [2]int{i, j})
				continue
			}
			seen[k] = i
		}
		miss = append(miss, i)
	}
	if c.local != nil {
		c.local.count(hits, len(pairs)-hits)
	}
	tally := metrics.TallyFrom(ctx)
	if tally != nil {
		tally.L1 += hits
		tally.Duplicate += len(dups)
	}
	if len(miss) > 0 {
		if err := c.resolve(ctx, pairs, keys, miss, scores); err != nil {
			return nil, err
		}
	}
	for _, d := range dups {
		scores[d[0]] = scores[d[1]]
	}
	return scores, nil
}

// item is one pair a request leads: its index, its flight, and its Redis
// key once one was needed.
type item struct {
	i  int
	f  *flight
	sk string
}

// resolve fills scores[idx] from Redis, other requests' flights or the
// next stage.
func (c *Cache) resolve(ctx context.Context, pairs []sdk.Pair, keys string, idx []int, scores []float32) error {
	for joins := 0; len(idx) > 0; joins++ {
		if joins == maxJoins {
			// Others keep failing on these pairs: compute them here,
			// without dedup, and report our own outcome.
			return c.compute(ctx, pairs, keys, scores, toItems(idx), "", nil)
		}
		fl := make([]*flight, len(idx))
		lead := make([]bool, len(idx))
		c.flights.join(keys, idx, fl, lead)
		var mine []item
		var theirs []int
		for j, i := range idx {
			if lead[j] {
				mine = append(mine, item{i: i, f: fl[j]})
			} else {
				theirs = append(theirs, j)
			}
		}
		if len(mine) > 0 {
			if err := c.lead(ctx, pairs, keys, scores, mine); err != nil {
				return err
			}
		}
		var again []int
		for _, j := range theirs {
			select {
			case <-fl[j].done:
			case <-ctx.Done():
				return fmt.Errorf("cache: waiting for a pair in flight: %w", ctx.Err())
			}
			if fl[j].ok {
				scores[idx[j]] = fl[j].score
				if t := metrics.TallyFrom(ctx); t != nil {
					t.Peer++
				}
			} else {
				again = append(again, idx[j])
			}
		}
		idx = again
	}
	return nil
}

func toItems(idx []int) []item {
	items := make([]item, len(idx))
	for j, i := range idx {
		items[j] = item{i: i}
	}
	return items
}

// lead resolves the pairs this request holds the flights of: Redis lookup,
// then Redis locks, then the next stage for the pairs it locked, then a wait
// for the pairs other instances locked. Every flight is finished on return,
// whatever happens.
func (c *Cache) lead(ctx context.Context, pairs []sdk.Pair, keys string, scores []float32, items []item) error {
	all := items
	defer func() {
		// Flights still open failed: their waiters compute them themselves.
		for _, it := range all {
			c.flights.finish(keyAt(keys, it.i), it.f, 0, false)
		}
	}()
	if c.local != nil {
		if items = c.takeLocal(ctx, keys, scores, items); len(items) == 0 {
			return nil
		}
	}
	if c.remote == nil {
		return c.compute(ctx, pairs, keys, scores, items, "", nil)
	}
	ks := c.sharedKeys(pairs, items)
	var span trace.Span
	if trace.SpanFromContext(ctx).IsRecording() {
		_, span = tracer.Start(ctx, "rerank.cache.redis", trace.WithAttributes(attribute.Int("rerank.pairs", len(ks))))
	}
	vals, err := c.remote.get(ctx, ks)
	if span != nil {
		if err != nil {
			span.RecordError(err)
		}
		span.End()
	}
	if err != nil {
		return c.compute(ctx, pairs, keys, scores, items, "", nil)
	}
	before := len(items)
	items = c.takeHits(keys, scores, items, vals)
	if t := metrics.TallyFrom(ctx); t != nil {
		t.Redis += before - len(items)
	}
	if len(items) == 0 {
		return nil
	}
	return c.lockAndCompute(ctx, pairs, keys, scores, items)
}

// takeLocal answers the items the L1 holds now, and returns the others: a
// flight of the same pair may have finished between the request's L1
// lookup and its join, leaving no flight to join and the score in the L1
// (a flight finishes after its scores are set there). Without this second
// look such a pair was computed twice in one process.
func (c *Cache) takeLocal(ctx context.Context, keys string, scores []float32, items []item) []item {
	var rest []item
	for _, it := range items {
		k := keyAt(keys, it.i)
		if v, ok := c.local.get(k); ok {
			scores[it.i] = v
			c.flights.finish(k, it.f, v, true)
			continue
		}
		rest = append(rest, it)
	}
	if t := metrics.TallyFrom(ctx); t != nil {
		t.L1 += len(items) - len(rest)
	}
	return rest
}

// takeHits answers the items whose Redis value vals[j] is valid, and
// returns the others.
func (c *Cache) takeHits(keys string, scores []float32, items []item, vals []string) []item {
	var rest []item
	for j, it := range items {
		if v, ok := decodeValue(vals[j]); ok {
			c.answer(keys, scores, it, v)
		} else {
			rest = append(rest, it)
		}
	}
	return rest
}

// answer fills in a score found in Redis: into the L1, the response and the
// item's flight.
func (c *Cache) answer(keys string, scores []float32, it item, v float32) {
	k := keyAt(keys, it.i)
	scores[it.i] = v
	if c.local != nil {
		c.local.set(k, v)
	}
	c.flights.finish(k, it.f, v, true)
}

// lockAndCompute takes the Redis locks of items, computes the pairs it got
// the locks of and waits for the others to appear in Redis, trying their
// locks again on every notification or poll: an owner that failed or died
// leaves the lock free or expiring. After the wait budget it computes what
// is left itself.
func (c *Cache) lockAndCompute(ctx context.Context, pairs []sdk.Pair, keys string, scores []float32, items []item) error {
	token := c.remote.newToken()
	var (
		wake       chan struct{}
		registered []string
		timer      *time.Timer
		tick       *time.Ticker
	)
	defer func() {
		if wake != nil {
			c.remote.waiters.remove(registered, wake)
			timer.Stop()
			tick.Stop()
		}
	}()
	for len(items) > 0 {
		if wake != nil {
			select {
			case <-ctx.Done():
				return fmt.Errorf("cache: waiting for another instance: %w", ctx.Err())
			case <-timer.C:
				return c.compute(ctx, pairs, keys, scores, items, "", nil)
			case <-wake:
			case <-tick.C:
			}
		}
		ks := c.sharedKeys(pairs, items)
		acquired, vals, err := c.remote.lockAndGet(ctx, ks, token)
		if err != nil {
			return c.compute(ctx, pairs, keys, scores, items, "", nil)
		}
		var mine, rest []item
		var locked, stale []string
		tally := metrics.TallyFrom(ctx)
		for j, it := range items {
			if v, ok := decodeValue(vals[j]); ok {
				c.answer(keys, scores, it, v)
				if tally != nil {
					// Found on the first look, the pair was in Redis
					// already; after a wait, a peer computed it.
					if wake == nil {
						tally.Redis++
					} else {
						tally.Peer++
					}
				}
				if acquired[j] {
					stale = append(stale, ks[j])
				}
				continue
			}
			if acquired[j] {
				mine = append(mine, it)
				locked = append(locked, ks[j])
			} else {
				rest = append(rest, it)
			}
		}
		if len(stale) > 0 {
			_ = c.remote.release(context.WithoutCancel(ctx), token, stale, nil)
		}
		if len(mine) > 0 {
			if err := c.compute(ctx, pairs, keys, scores, mine, token, locked); err != nil {
				return err
			}
		}
		items = rest
		if len(items) > 0 && wake == nil {
			c.remote.lockWaits.Add(uint64(len(items)))
			wake = make(chan struct{}, 1)
			registered = c.sharedKeys(pairs, items)
			c.remote.waiters.add(registered, wake)
			timer = time.NewTimer(c.waitBudget(ctx))
			tick = time.NewTicker(c.remote.poll)
		}
	}
	return nil
}

// waitBudget is how long a request waits for pairs another instance holds
// the locks of: the lock's lifetime, but no more than half the time left
// before the request's deadline, so that after giving up it still has the
// other half to compute them itself.
func (c *Cache) waitBudget(ctx context.Context) time.Duration {
	b := c.remote.lockTTL
	if dl, ok := ctx.Deadline(); ok {
		b = min(b, time.Until(dl)/2)
	}
	return max(b, 0)
}

// compute scores items with the next stage in one call and, on success,
// stores the finite scores in L1 and Redis before releasing the locks held
// under token and finishing the flights, so that a request arriving after
// finds them. On failure nothing is stored; the locks are released so that
// waiting instances compute the pairs themselves.
func (c *Cache) compute(ctx context.Context, pairs []sdk.Pair, keys string, scores []float32, items []item, token string, locked []string) error {
	sub := make([]sdk.Pair, len(items))
	for j, it := range items {
		sub[j] = pairs[it.i]
	}
	got, err := c.next.Score(ctx, sub)
	if err == nil && len(got) != len(sub) {
		err = fmt.Errorf("cache: next stage returned %d scores for %d pairs", len(got), len(sub))
	}
	// Writes and releases outlive the request: a client going away must
	// not leave other instances waiting on our locks. Each Redis call is
	// still bounded by the Redis timeout.
	bg := context.WithoutCancel(ctx)
	if err != nil {
		if c.remote != nil && len(locked) > 0 {
			_ = c.remote.release(bg, token, locked, locked)
		}
		return err
	}
	if c.remote != nil {
		c.sharedKeys(pairs, items) // for the items that never went to Redis
	}
	var (
		done      []string
		doneScore []float32
	)
	for j, it := range items {
		scores[it.i] = got[j]
		if !finite(got[j]) {
			continue
		}
		if c.local != nil {
			c.local.set(keyAt(keys, it.i), got[j])
		}
		done = append(done, it.sk)
		doneScore = append(doneScore, got[j])
	}
	if c.local != nil && len(done) > 0 {
		c.local.wait()
	}
	if c.remote != nil {
		if len(done) > 0 {
			_ = c.remote.store(bg, done, doneScore)
		}
		_ = c.remote.release(bg, token, locked, locked)
	}
	for j, it := range items {
		c.flights.finish(keyAt(keys, it.i), it.f, got[j], true)
	}
	return nil
}

// sharedKeys returns the Redis keys of items, computing those not yet known
// and keeping them in the items.
func (c *Cache) sharedKeys(pairs []sdk.Pair, items []item) []string {
	ks := make([]string, len(items))
	for j := range items {
		if items[j].sk == "" {
			items[j].sk = c.keyer.shared(pairs[items[j].i])
		}
		ks[j] = items[j].sk
	}
	return ks
}

// finite reports whether s may be cached: not NaN, not ±Inf.
func finite(s float32) bool {
	return !math.IsNaN(float64(s)) && !math.IsInf(float64(s), 0)
}
