package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/proxy/internal/cache"
)

func TestCacheFlags(t *testing.T) {
	f := func(args []string, env map[string]string, check func(cache.Config) bool) {
		t.Helper()
		c, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			t.Fatalf("parseServe(%q, %v): %v", args, env, err)
		}
		if cfg := c.cache.config(nil); !check(cfg) {
			t.Fatalf("parseServe(%q, %v): %+v", args, env, cfg)
		}
	}
	// The Python server's defaults.
	f(nil, nil, func(c cache.Config) bool {
		return c.Local.Enabled && c.Local.TTL == 300*time.Second && c.Local.MaxBytes == 64<<20 &&
			!c.Redis.Enabled && c.Redis.URL == "redis://localhost:6379/0" && c.Redis.TTL == 600*time.Second &&
			c.Redis.Timeout == 50*time.Millisecond && c.Redis.LockTTL == 10*time.Second
	})
	// The environment variables.
	env := map[string]string{
		"ENABLE_PREDICTION_CACHE": "false", "CACHE_TTL_SECONDS": "60", "CACHE_MAX_BYTES": "1048576",
		"REDIS_ENABLED": "true", "REDIS_URL": "redis://cache:6380/2", "REDIS_TTL_SECONDS": "30",
		"REDIS_MODE": "single", "REDIS_TIMEOUT_MS": "20", "REDIS_LOCK_TTL_SECONDS": "5",
	}
	f(nil, env, func(c cache.Config) bool {
		return !c.Local.Enabled && c.Local.TTL == time.Minute && c.Local.MaxBytes == 1<<20 &&
			c.Redis.Enabled && c.Redis.URL == "redis://cache:6380/2" && c.Redis.TTL == 30*time.Second &&
			c.Redis.Mode == "single" && c.Redis.Timeout == 20*time.Millisecond && c.Redis.LockTTL == 5*time.Second
	})
	// Flags win over the environment.
	f([]string{"--cache", "--redis=false"}, env, func(c cache.Config) bool { return c.Local.Enabled && !c.Redis.Enabled })
}

func TestCacheFlagErrors(t *testing.T) {
	f := func(args []string, env map[string]string, want string) {
		t.Helper()
		_, err := parseServe(args, func(k string) string { return env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("parseServe(%q, %v) error = %v, want one containing %q", args, env, err, want)
		}
	}
	f(nil, map[string]string{"REDIS_ENABLED": "yes please"}, "REDIS_ENABLED")
	f([]string{"--redis", "--redis-url", "http://localhost"}, nil, "redis url")
	f([]string{"--redis", "--redis-mode", "ring"}, nil, "redis mode")
	f([]string{"--redis", "--redis-ttl-seconds", "0"}, nil, "ttl")
	f([]string{"--redis", "--redis-timeout-ms", "0"}, nil, "timeout")
	f([]string{"--cache-ttl-seconds", "0"}, nil, "TTL")
	f([]string{"--cache-max-bytes", "1"}, nil, "bound")
	// A bad Redis setting does not matter while Redis is off.
	if _, err := parseServe([]string{"--redis-url", "http://localhost"}, func(string) string { return "" }, io.Discard); err != nil {
		t.Errorf("a bad --redis-url with Redis off: %v", err)
	}
}
