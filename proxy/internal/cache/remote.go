package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// errBreakerOpen is returned without calling Redis while the breaker is open.
var errBreakerOpen = errors.New("cache: redis circuit breaker open")

// infoMaxAge is how long a Redis INFO/DBSIZE answer serves /health: health
// checks may come several times a second, the figures need not be fresher.
const infoMaxAge = time.Second

// releaseScript deletes a lock only while it still holds the caller's token,
// so a waiter that gave up, or an owner whose lock expired and was taken by
// another instance, can never delete someone else's lock.
var releaseScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// lockScript takes a dedup lock for the token ARGV[1] with a time to live of
// ARGV[3] milliseconds when the lock is free or held by a token starting
// with ARGV[2], the taker's own cache: within one process a pair being
// computed is joined in memory and never met through its Redis lock, so an
// own lock its taker meets is a leftover nobody will release (a lock call
// that timed out but that a slow Redis carried out late, or a release that
// failed), not a computation to wait for. It returns 1 when taken.
var lockScript = redis.NewScript(`local v = redis.call("GET", KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[2])) ~= ARGV[2] then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[3])
return 1`)

// DistributedStats is the "distributed_cache" section of /health.
type DistributedStats struct {
	// Enabled says whether the Redis cache is configured.
	Enabled bool `json:"enabled"`
	// Connected says whether the last call to Redis succeeded and the circuit
	// breaker is closed.
	Connected bool `json:"connected"`
	// CachedEntries is the number of keys in the Redis database (DBSIZE).
	CachedEntries int64 `json:"cached_entries"`
	// KeyspaceHits is Redis's own keyspace_hits counter (INFO stats).
	KeyspaceHits int64 `json:"keyspace_hits"`
	// KeyspaceMisses is Redis's own keyspace_misses counter (INFO stats).
	KeyspaceMisses int64 `json:"keyspace_misses"`
	// Hits counts pairs this process found in Redis.
	Hits uint64 `json:"hits"`
	// Misses counts pairs this process looked up in Redis and did not find.
	Misses uint64 `json:"misses"`
	// Errors counts failed Redis calls (each one answered without Redis).
	Errors uint64 `json:"errors"`
	// Skipped counts calls not made because the circuit breaker was open.
	Skipped uint64 `json:"skipped"`
	// BreakerOpened counts how often the circuit breaker opened (a failed
	// probe's reopening included).
	BreakerOpened uint64 `json:"breaker_opened"`
	// BreakerClosed counts how often a successful probe closed the circuit
	// breaker again: Redis came back.
	BreakerClosed uint64 `json:"breaker_closed"`
	// BreakerOpen says the circuit breaker is open now (for /metrics; /health
	// says it through connected).
	BreakerOpen bool `json:"-"`
	// LockWaits counts pairs this process waited for because another
	// instance held their lock.
	LockWaits uint64 `json:"lock_waits"`
}

// remote is the L2: Redis shared by all proxies, with cross-process dedup
// locks and a pub/sub channel announcing finished keys.
type remote struct {
	client  redis.UniversalClient
	cluster bool
	ttl     time.Duration
	lockTTL time.Duration
	timeout time.Duration
	poll    time.Duration
	channel string
	token   string
	seq     atomic.Uint64
	br      *breaker
	log     hclog.Logger

	pubsub  *redis.PubSub
	waiters waiters
	stopped chan struct{}

	hits, misses, errs, skipped, lockWaits atomic.Uint64

	infoMu   sync.Mutex
	infoAt   time.Time
	infoSnap DistributedStats
}

// newClient builds the Redis client the URL describes: Sentinel when it names
// master_name, Cluster when it lists more nodes with addr=, else one node;
// cfg.Mode forces one of them. Timeouts the URL does not set come from cfg.
func newClient(cfg RedisConfig) (redis.UniversalClient, bool, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, false, fmt.Errorf("cache: bad redis url: %w", err)
	}
	q := u.Query()
	mode := cfg.Mode
	if mode == "" || mode == "auto" {
		switch {
		case q.Has("master_name"):
			mode = "sentinel"
		case q.Has("addr"):
			mode = "cluster"
		default:
			mode = "single"
		}
	}
	// knobs points at the fields shared by the three option structs.
	type knobs struct {
		dial, read, write, pool *time.Duration
		retries, dialerRetries  *int
		ctxTimeout, noIdentity  *bool
	}
	apply := func(k knobs) {
		set := func(name string, dst *time.Duration, v time.Duration) {
			if !q.Has(name) {
				*dst = v
			}
		}
		// Dialing takes a handshake more than a command: twice the timeout.
		set("dial_timeout", k.dial, 2*cfg.Timeout)
		set("read_timeout", k.read, cfg.Timeout)
		set("write_timeout", k.write, cfg.Timeout)
		set("pool_timeout", k.pool, cfg.Timeout)
		// No command retries (-1 in go-redis) and one dial attempt: a failed
		// call is answered without Redis at once and the breaker decides
		// when to try again; the pool dials afresh then, which is the
		// reconnection.
		if !q.Has("max_retries") {
			*k.retries = -1
		}
		*k.dialerRetries = 1
		*k.ctxTimeout = true
		*k.noIdentity = true
	}
	off := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	switch mode {
	case "single":
		o, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, false, fmt.Errorf("cache: bad redis url: %w", err)
		}
		apply(knobs{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled, &o.DisableIdentity})
		o.MaintNotificationsConfig = off
		return redis.NewClient(o), false, nil
	case "sentinel":
		o, err := redis.ParseFailoverURL(cfg.URL)
		if err != nil {
			return nil, false, fmt.Errorf("cache: bad redis sentinel url: %w", err)
		}
		apply(knobs{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled, &o.DisableIdentity})
		return redis.NewFailoverClient(o), false, nil
	case "cluster":
		o, err := redis.ParseClusterURL(cfg.URL)
		if err != nil {
			return nil, false, fmt.Errorf("cache: bad redis cluster url: %w", err)
		}
		apply(knobs{&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.PoolTimeout, &o.MaxRetries, &o.DialerRetries, &o.ContextTimeoutEnabled, &o.DisableIdentity})
		o.MaintNotificationsConfig = off
		return redis.NewClusterClient(o), true, nil
	}
	return nil, false, fmt.Errorf("cache: unknown redis mode %q (want auto, single, sentinel or cluster)", cfg.Mode)
}

// redisLogOnce guards the process-wide go-redis logger.
var redisLogOnce sync.Once

// redisLogger routes go-redis's own messages (a failed dial on every probe
// and pub/sub retry while Redis is down) to hclog at debug level: the cache
// already logs Redis going away once, at warning level.
type redisLogger struct{ log hclog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}

func newRemote(cfg RedisConfig, idDigest []byte, log hclog.Logger) (*remote, error) {
	// go-redis has one logger per process; the first cache sets it.
	redisLogOnce.Do(func() { redis.SetLogger(redisLogger{log.Named("redis")}) })
	client, cluster, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	var tok [16]byte // 128 random bits: no two processes ever share a token
	if _, err := rand.Read(tok[:]); err != nil {
		client.Close()
		return nil, fmt.Errorf("cache: cannot make lock token: %w", err)
	}
	r := &remote{
		client:  client,
		cluster: cluster,
		ttl:     cfg.TTL,
		lockTTL: cfg.LockTTL,
		timeout: cfg.Timeout,
		poll:    cfg.PollInterval,
		// One channel per model identity, so instances serving other models
		// are not woken.
		channel: "rerank:done:" + hex.EncodeToString(idDigest[:8]),
		token:   hex.EncodeToString(tok[:]),
		br:      newBreaker(cfg.BreakerThreshold, cfg.BreakerCooldown, cfg.BreakerMaxCooldown),
		log:     log,
		stopped: make(chan struct{}),
	}
	r.waiters.m = make(map[string][]chan struct{})
	// Subscribing fails only when Redis is not there yet; go-redis keeps
	// the channel and subscribes again on every reconnection, and waiters
	// poll meanwhile.
	ctx, cancel := context.WithTimeout(context.Background(), 2*cfg.Timeout)
	r.pubsub = client.Subscribe(ctx, r.channel)
	cancel()
	go r.listen()
	return r, nil
}

// listen wakes the waiters of finished keys until close.
func (r *remote) listen() {
	defer close(r.stopped)
	for m := range r.pubsub.Channel() {
		r.waiters.wake(m.Payload)
	}
}

func (r *remote) close() error {
	err := r.pubsub.Close()
	<-r.stopped
	if cerr := r.client.Close(); err == nil {
		err = cerr
	}
	return err
}

// call runs fn against Redis under the breaker and the short timeout. A
// failure caused by the caller's own cancellation does not count against
// Redis.
func (r *remote) call(ctx context.Context, fn func(ctx context.Context) error) error {
	if !r.br.allow() {
		r.skipped.Add(1)
		return errBreakerOpen
	}
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	err := fn(cctx)
	cancel()
	if err == nil || errors.Is(err, redis.Nil) {
		if r.br.success() {
			r.log.Info("redis available again")
		}
		return nil
	}
	if ctx.Err() != nil {
		// The request went away; that says nothing about Redis.
		r.br.abandon()
		return fmt.Errorf("cache: redis call abandoned: %w", ctx.Err())
	}
	r.errs.Add(1)
	before := r.br.state().opened
	r.br.failure()
	if after := r.br.state(); !after.closed && after.opened != before {
		r.log.Warn("redis unavailable, answering from the local cache and the backend", "error", err)
	}
	return fmt.Errorf("cache: redis: %w", err)
}

// get looks keys up: one MGET, or in Cluster mode one pipeline of GETs, as
// keys there live on different nodes. vals[i] is "" for a miss.
func (r *remote) get(ctx context.Context, keys []string) ([]string, error) {
	vals := make([]string, len(keys))
	err := r.call(ctx, func(ctx context.Context) error {
		return r.pipeGet(ctx, keys, vals)
	})
	if err != nil {
		return nil, err
	}
	r.count(vals)
	return vals, nil
}

// pipeGet reads keys into vals.
func (r *remote) pipeGet(ctx context.Context, keys, vals []string) error {
	if !r.cluster {
		res, err := r.client.MGet(ctx, rkeys(keys)...).Result()
		if err != nil {
			return err
		}
		fill(res, vals)
		return nil
	}
	cmds, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Get(ctx, redisKey(k))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for i, c := range cmds {
		if s, err := c.(*redis.StringCmd).Result(); err == nil {
			vals[i] = s
		}
	}
	return nil
}

// lockAndGet tries to take the lock of each key for token (see lockScript:
// a lock this cache left behind is taken over) and then reads the keys, in
// one pipeline: a key whose lock we got but which has a value was finished
// by another instance just before, so it must not be computed again.
func (r *remote) lockAndGet(ctx context.Context, keys []string, token string) (acquired []bool, vals []string, err error) {
	acquired = make([]bool, len(keys))
	vals = make([]string, len(keys))
	own := r.token + ":"
	ttl := r.lockTTL.Milliseconds()
	err = r.call(ctx, func(ctx context.Context) error {
		cmds, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range keys {
				// Eval, not EvalSha: a restarted Redis has forgotten
				// the script, and a pipeline cannot retry with its body.
				lockScript.Eval(ctx, p, []string{lockKeyPrefix + redisKey(k)}, token, own, ttl)
			}
			if r.cluster {
				for _, k := range keys {
					p.Get(ctx, redisKey(k))
				}
			} else {
				p.MGet(ctx, rkeys(keys)...)
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for i := range keys {
			n, err := cmds[i].(*redis.Cmd).Int64()
			acquired[i] = err == nil && n == 1
		}
		if r.cluster {
			for i := range keys {
				if s, err := cmds[len(keys)+i].(*redis.StringCmd).Result(); err == nil {
					vals[i] = s
				}
			}
		} else {
			fill(cmds[len(keys)].(*redis.SliceCmd).Val(), vals)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return acquired, vals, nil
}

// store writes finite scores with the L2 TTL in one pipeline.
func (r *remote) store(ctx context.Context, keys []string, scores []float32) error {
	if len(keys) == 0 {
		return nil
	}
	return r.call(ctx, func(ctx context.Context) error {
		_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range keys {
				p.Set(ctx, redisKey(k), encodeValue(scores[i]), r.ttl)
			}
			return nil
		})
		return err
	})
}

// release drops the locks token holds on keys and announces done on the
// channel, in one pipeline; it runs after store has returned, so a waiter
// woken by it, or one taking the lock after it, finds the values.
func (r *remote) release(ctx context.Context, token string, locked, done []string) error {
	if len(locked) == 0 && len(done) == 0 {
		return nil
	}
	return r.call(ctx, func(ctx context.Context) error {
		_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range locked {
				releaseScript.Eval(ctx, p, []string{lockKeyPrefix + redisKey(k)}, token)
			}
			if len(done) > 0 {
				p.Publish(ctx, r.channel, strings.Join(done, ""))
			}
			return nil
		})
		return err
	})
}

// newToken returns a lock token unique to this process and call.
func (r *remote) newToken() string {
	return r.token + ":" + strconv.FormatUint(r.seq.Add(1), 10)
}

// count adds lookups to the hit and miss counters.
func (r *remote) count(vals []string) {
	var h uint64
	for _, v := range vals {
		if v != "" {
			h++
		}
	}
	r.hits.Add(h)
	r.misses.Add(uint64(len(vals)) - h)
}

// stats returns the counters, with Redis's own figures refreshed at most
// once per infoMaxAge; a caller finding a refresh under way gets the last
// figures rather than waiting.
func (r *remote) stats() DistributedStats {
	br := r.br.state()
	s := DistributedStats{
		Enabled:       true,
		Hits:          r.hits.Load(),
		Misses:        r.misses.Load(),
		Errors:        r.errs.Load(),
		Skipped:       r.skipped.Load(),
		BreakerOpened: br.opened,
		BreakerClosed: br.reclosed,
		BreakerOpen:   !br.closed,
		LockWaits:     r.lockWaits.Load(),
	}
	if r.infoMu.TryLock() {
		if time.Since(r.infoAt) >= infoMaxAge {
			r.refreshInfo()
		}
		r.infoMu.Unlock()
	}
	r.infoMu.Lock()
	snap := r.infoSnap
	r.infoMu.Unlock()
	s.Connected = br.closed && snap.Connected
	s.CachedEntries, s.KeyspaceHits, s.KeyspaceMisses = snap.CachedEntries, snap.KeyspaceHits, snap.KeyspaceMisses
	return s
}

// refreshInfo reads DBSIZE and INFO stats; infoMu must be held.
func (r *remote) refreshInfo() {
	var size *redis.IntCmd
	var info *redis.StringCmd
	err := r.call(context.Background(), func(ctx context.Context) error {
		_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			size = p.DBSize(ctx)
			info = p.Info(ctx, "stats")
			return nil
		})
		return err
	})
	r.infoAt = time.Now()
	if err != nil {
		r.infoSnap.Connected = false
		return
	}
	r.infoSnap.Connected = true
	r.infoSnap.CachedEntries = size.Val()
	r.infoSnap.KeyspaceHits = infoField(info.Val(), "keyspace_hits")
	r.infoSnap.KeyspaceMisses = infoField(info.Val(), "keyspace_misses")
}

// infoField returns the integer field name of an INFO answer, 0 if absent.
func infoField(info, name string) int64 {
	for line := range strings.Lines(info) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0
		}
		return n
	}
	return 0
}

// rkeys returns the Redis keys of cache keys.
func rkeys(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = redisKey(k)
	}
	return out
}

// fill copies an MGET answer into vals, "" where a key is missing.
func fill(res []any, vals []string) {
	for i, v := range res {
		if i >= len(vals) {
			return
		}
		if s, ok := v.(string); ok {
			vals[i] = s
		}
	}
}

// waiters maps keys to the channels of requests waiting for another
// instance to finish them.
type waiters struct {
	mu sync.Mutex
	m  map[string][]chan struct{}
}

// add registers ch for keys.
func (w *waiters) add(keys []string, ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range keys {
		w.m[k] = append(w.m[k], ch)
	}
}

// remove unregisters ch from keys.
func (w *waiters) remove(keys []string, ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range keys {
		list := w.m[k]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(w.m, k)
		} else {
			w.m[k] = list
		}
	}
}

// wake signals the waiters of every key in payload, a concatenation of keys.
func (w *waiters) wake(payload string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := 0; i+keySize <= len(payload); i += keySize {
		for _, ch := range w.m[payload[i:i+keySize]] {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}
