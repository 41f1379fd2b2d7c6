package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// failoverDeadline bounds each wait of the Redis tests: a failover takes a
// few seconds (down-after 1 s, an election, a promotion), the breaker's
// longest pause is 30 s, and the machine is shared.
const failoverDeadline = time.Minute

// confProc is a redis-server or redis-sentinel the test started from a
// config file in its own directory, killed when the test ends.
type confProc struct {
	cmd  *exec.Cmd
	port int
	dir  string
}

// startConfProc finds bin (failing under CI when it is missing, as .ci/run
// installs it), writes conf with a free port, and waits for PING.
func startConfProc(t *testing.T, bin, pkg, conf string) *confProc {
	t.Helper()
	path, err := exec.LookPath(bin)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (apt-get install %s); CI must have it", bin, pkg)
		}
		t.Skipf("%s not installed (apt-get install %s)", bin, pkg)
	}
	p := &confProc{port: freePort(t), dir: t.TempDir()}
	file := filepath.Join(p.dir, "redis.conf")
	full := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\ndaemonize no\nloglevel warning\nlogfile %s\n%s",
		p.port, p.dir, filepath.Join(p.dir, "log"), conf)
	if err := os.WriteFile(file, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(path, file)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("cannot start %s: %v", bin, err)
	}
	t.Cleanup(p.kill)
	c := redis.NewClient(&redis.Options{Addr: p.addr(), MaxRetries: -1})
	defer c.Close()
	pollUntil(t, bin+" answering PING", func() bool { return c.Ping(context.Background()).Err() == nil })
	return p
}

func (p *confProc) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// kill SIGKILLs the process, as a crash would.
func (p *confProc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

// pollUntil polls cond every 50ms, failing t after failoverDeadline.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(failoverDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", failoverDeadline, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// underProxyLoad sends requests to a and b from 4 clients, each with 5 new
// candidates and 5 from a shared pool; after 20 requests it calls fault,
// which may wait for more with more; then the load stops, and t fails
// unless every request was answered. It returns the number of requests.
func underProxyLoad(t *testing.T, a, b *server, fault func(more func(int64))) int64 {
	t.Helper()
	var requests, failures atomic.Int64
	var next atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s := a
				if (w+i)%2 == 1 {
					s = b
				}
				n := int(next.Add(5))
				cands := append(candidates("load", n, 5), candidates("first", n%20, 5)...)
				if _, err := rerankScores(s, "capital of france", cands); err != nil {
					failures.Add(1)
					t.Errorf("request under load: %v", err)
				}
				requests.Add(1)
			}
		})
	}
	// The clients stop even when fault or more fails t.
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}()
	more := func(n int64) {
		t.Helper()
		target := requests.Load() + n
		pollUntil(t, fmt.Sprintf("%d more requests", n), func() bool { return requests.Load() >= target })
	}
	more(20)
	fault(more)
	close(stop)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed", f, requests.Load())
	}
	return requests.Load()
}

// sharedByProxies waits until candidates a scored are found by b without
// its plugin: both proxies use Redis (the current master).
func sharedByProxies(t *testing.T, a, b *server, tag string) {
	t.Helper()
	i := 0
	pollUntil(t, "the proxies sharing scores through Redis "+tag, func() bool {
		i++
		cands := candidates(fmt.Sprintf("%s %d", tag, i), 0, 3)
		if _, err := rerankScores(a, "capital of france", cands); err != nil {
			t.Fatal(err)
		}
		before := scored(t, b)
		if _, err := rerankScores(b, "capital of france", cands); err != nil {
			t.Fatal(err)
		}
		return scored(t, b) == before
	})
}

// TestCacheSentinelFailover runs two real proxies over a Sentinel-managed
// Redis (a master, a replica, a sentinel, all real processes), SIGKILLs the
// master under load, and checks that no request fails and that the proxies
// then share scores through the promoted replica.
func TestCacheSentinelFailover(t *testing.T) {
	requireRuntime(t)
	const noPersistence = "save \"\"\nappendonly no\n"
	master := startConfProc(t, "redis-server", "redis-server", noPersistence)
	replica := startConfProc(t, "redis-server", "redis-server", noPersistence+"replicaof 127.0.0.1 "+strconv.Itoa(master.port)+"\n")
	// down-after 1 s and a quorum of 1: the one sentinel fails over alone,
	// quickly; failover-timeout bounds a stuck failover to a few seconds.
	sentinel := startConfProc(t, "redis-sentinel", "redis-sentinel", fmt.Sprintf(
		"sentinel monitor mymaster 127.0.0.1 %d 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n", master.port))
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel.addr()})
	defer sc.Close()
	pollUntil(t, "the sentinel to know the replica in sync", func() bool {
		rs, err := sc.Replicas(context.Background(), "mymaster").Result()
		for _, r := range rs {
			if err == nil && r["port"] == strconv.Itoa(replica.port) && r["flags"] == "slave" && r["master-link-status"] == "ok" {
				return true
			}
		}
		return false
	})

	dir := goldenModelDir(t, "tiny-bert")
	env := []string{"REDIS_ENABLED=true", "REDIS_URL=redis://" + sentinel.addr() + "/0?master_name=mymaster", "REDIS_TIMEOUT_MS=2000"}
	a := startServer(t, env, "--model", dir)
	b := startServer(t, env, "--model", dir)
	a.waitHealth(t, "ok")
	b.waitHealth(t, "ok")
	sharedByProxies(t, a, b, "before the failover")

	n := underProxyLoad(t, a, b, func(more func(int64)) {
		master.kill()
		pollUntil(t, "the sentinel to promote the replica", func() bool {
			m, err := sc.GetMasterAddrByName(context.Background(), "mymaster").Result()
			return err == nil && len(m) == 2 && m[1] == strconv.Itoa(replica.port)
		})
		more(60)
	})
	t.Logf("%d requests across the failover, 0 failed", n)
	// The old master is dead: what b finds now went through the replica.
	sharedByProxies(t, a, b, "after the failover")
	rc := redis.NewClient(&redis.Options{Addr: replica.addr()})
	defer rc.Close()
	if info, err := rc.Info(context.Background(), "replication").Result(); err != nil || !strings.Contains(info, "role:master") {
		t.Fatalf("the replica is not a master after the failover (%v): %s", err, info)
	}
}
