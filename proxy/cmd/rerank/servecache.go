package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/rerank-sidecar/rerank/proxy/internal/cache"
)

// cacheFlags are the serve flags of the score cache stage.
type cacheFlags struct {
	local         bool
	localTTL      int
	localMaxBytes int64
	redis         bool
	redisURL      string
	redisMode     string
	redisTTL      int
	redisTimeout  int
	redisLockTTL  int
}

// cacheFlagsOn defines the score cache flags on fs and records their
// environment variables in env.
func cacheFlagsOn(fs *flag.FlagSet, c *cacheFlags, env map[string]string) {
	def := cache.DefaultConfig()
	num := func(p *int, name, envName string, d int, help string) {
		fs.IntVar(p, name, d, help+" Environment: "+envName+".")
		env[name] = envName
	}
	fs.BoolVar(&c.local, "cache", def.Local.Enabled,
		"Cache scores per (query, candidate) pair in process memory (true or false). Default true. Environment: ENABLE_PREDICTION_CACHE.")
	env["cache"] = "ENABLE_PREDICTION_CACHE"
	num(&c.localTTL, "cache-ttl-seconds", "CACHE_TTL_SECONDS", int(def.Local.TTL/time.Second),
		"How long, in seconds, a score stays in the in-process cache. Default 300.")
	fs.Int64Var(&c.localMaxBytes, "cache-max-bytes", def.Local.MaxBytes,
		"The memory bound of the in-process cache in bytes; the least useful scores are evicted beyond it. Default 67108864 (64 MiB, 262,144 scores). Environment: CACHE_MAX_BYTES.")
	env["cache-max-bytes"] = "CACHE_MAX_BYTES"
	fs.BoolVar(&c.redis, "redis", def.Redis.Enabled,
		"Share scores between proxies through Redis, and compute a pair another proxy is computing only once (true or false). A Redis that is down or slow never fails a request. Default false. Environment: REDIS_ENABLED.")
	env["redis"] = "REDIS_ENABLED"
	fs.StringVar(&c.redisURL, "redis-url", def.Redis.URL,
		"The Redis to use: redis://[user:password@]host:port/db (rediss:// for TLS); add ?master_name=NAME to reach a master through the Sentinel at host:port, or &addr=host:port once per further node for a Cluster. Default redis://localhost:6379/0. Environment: REDIS_URL.")
	env["redis-url"] = "REDIS_URL"
	fs.StringVar(&c.redisMode, "redis-mode", "auto",
		"How to read --redis-url: auto (Sentinel with master_name, Cluster with addr, else one node), single, sentinel or cluster. Default auto. Environment: REDIS_MODE.")
	env["redis-mode"] = "REDIS_MODE"
	num(&c.redisTTL, "redis-ttl-seconds", "REDIS_TTL_SECONDS", int(def.Redis.TTL/time.Second),
		"How long, in seconds, a score stays in Redis. Default 600.")
	num(&c.redisTimeout, "redis-timeout-ms", "REDIS_TIMEOUT_MS", int(def.Redis.Timeout/time.Millisecond),
		"The time budget of one Redis call in milliseconds; a slower Redis is treated as down, and after 3 failures in a row it is left alone for a second (doubling up to 30 seconds) before it is tried again. Default 50.")
	num(&c.redisLockTTL, "redis-lock-ttl-seconds", "REDIS_LOCK_TTL_SECONDS", int(def.Redis.LockTTL/time.Second),
		"How long, in seconds, another proxy waits at most for a pair this one is computing, should this one die (it waits no more than half its own request's time left either way). Default 10.")
}

// config turns the flags into the cache's configuration.
func (c *cacheFlags) config(logger hclog.Logger) cache.Config {
	cfg := cache.DefaultConfig()
	cfg.Local.Enabled = c.local
	cfg.Local.TTL = time.Duration(c.localTTL) * time.Second
	cfg.Local.MaxBytes = c.localMaxBytes
	cfg.Redis.Enabled = c.redis
	cfg.Redis.URL = c.redisURL
	cfg.Redis.Mode = c.redisMode
	cfg.Redis.TTL = time.Duration(c.redisTTL) * time.Second
	cfg.Redis.Timeout = time.Duration(c.redisTimeout) * time.Millisecond
	cfg.Redis.LockTTL = time.Duration(c.redisLockTTL) * time.Second
	cfg.Logger = logger
	return cfg
}

// validate checks the cache flags, the Redis URL included, without
// connecting.
func (c *cacheFlags) validate() error {
	if err := c.config(nil).Validate(); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// enabled reports whether the cache stage belongs in the pipeline.
func (c *cacheFlags) enabled() bool { return c.local || c.redis }
