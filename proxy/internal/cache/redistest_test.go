package cache

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a real redis-server the test started on a free loopback
// port, with persistence off; it is stopped when the test ends.
type redisServer struct {
	t    testing.TB
	port int
	cmd  *exec.Cmd

	mu sync.Mutex
	c  *redis.Client
}

// startRedis starts a redis-server for t; without the binary it skips t,
// or fails it under CI (.ci/run installs it).
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	needBinary(t, "redis-server", "redis-server")
	s := &redisServer{t: t, port: freePort(t)}
	s.start()
	t.Cleanup(s.kill)
	return s
}

// startRedisB starts a redis-server for a benchmark and returns its URL.
func startRedisB(b *testing.B) string {
	return startRedis(b).url()
}

// url is the server's redis:// URL.
func (s *redisServer) url() string {
	return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port)
}

// start runs redis-server on s.port and returns once it answers PING.
func (s *redisServer) start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server",
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--loglevel", "warning")
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("cannot start redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1, DialerRetries: 1})
	defer c.Close()
	// redis-server is up within milliseconds; 500 tries of 10ms bound a
	// broken start to five seconds.
	for range 500 {
		if c.Ping(context.Background()).Err() == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.t.Fatalf("redis-server on port %d does not answer", s.port)
}

// kill stops the server at once, as a crash would.
func (s *redisServer) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

func (s *redisServer) addr() string {
	return "127.0.0.1:" + strconv.Itoa(s.port)
}

// client returns a plain client for inspecting the server.
func (s *redisServer) client() *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		s.c = redis.NewClient(&redis.Options{Addr: s.addr()})
		s.t.Cleanup(func() { s.c.Close() })
	}
	return s.c
}

// keys returns the keys matching pattern.
func (s *redisServer) keys(pattern string) []string {
	s.t.Helper()
	ks, err := s.client().Keys(context.Background(), pattern).Result()
	if err != nil {
		s.t.Fatalf("KEYS %s: %v", pattern, err)
	}
	return ks
}
