package cache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
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

	"github.com/rerank-sidecar/rerank/sdk"
)

// haDeadline bounds every wait of the Sentinel and Cluster tests: a
// failover takes a few seconds (down-after 1 s, an election, a promotion),
// and the test machine is shared, so waits get ten times that.
const haDeadline = 60 * time.Second

// needBinary returns the path of a binary the test runs, skipping t when
// it is not installed, unless CI is set: .ci/run installs it there, so a
// missing one is a broken CI machine and fails the test.
func needBinary(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed (apt-get install %s); CI must have it", name, pkg)
	}
	t.Skipf("%s not installed (apt-get install %s); skipping", name, pkg)
	return ""
}

// freePort returns a loopback port nobody listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("cannot find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// redisProc is a redis-server or redis-sentinel process the test started
// from a config file in its own directory; it is killed when the test ends.
type redisProc struct {
	t    *testing.T
	bin  string
	dir  string
	conf string
	port int
	cmd  *exec.Cmd
}

// startProc writes conf (plus port, bind and dir lines) to a config file in
// a fresh directory and starts bin on it.
func startProc(t *testing.T, bin, conf string) *redisProc {
	t.Helper()
	p := &redisProc{t: t, bin: bin, dir: t.TempDir(), port: freePort(t)}
	p.conf = filepath.Join(p.dir, "redis.conf")
	full := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\ndaemonize no\nloglevel warning\nlogfile %s\n%s",
		p.port, p.dir, filepath.Join(p.dir, "log"), conf)
	if err := os.WriteFile(p.conf, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	p.start()
	t.Cleanup(p.kill)
	return p
}

// start runs the process on its config file and returns once it answers PING.
func (p *redisProc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, p.conf)
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("cannot start %s: %v", p.bin, err)
	}
	c := redis.NewClient(&redis.Options{Addr: p.addr(), MaxRetries: -1, DialerRetries: 1})
	defer c.Close()
	waitFor(p.t, p.bin+" answering PING on "+p.addr(), func() bool {
		return c.Ping(context.Background()).Err() == nil
	})
}

// kill stops the process at once, as a crash would (SIGKILL).
func (p *redisProc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

func (p *redisProc) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// client returns a client for inspecting the process, closed at the end.
func (p *redisProc) client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: p.addr()})
	p.t.Cleanup(func() { c.Close() })
	return c
}

// log returns the process's log file, for failure messages.
func (p *redisProc) log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "log"))
	return string(b)
}

// waitFor polls cond every 20ms until it holds, failing t after haDeadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(haDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", haDeadline, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// underLoad scores requests from 8 workers, alternating between caches,
// each with 10 new pairs (Redis lookups and writes on every request) and 10
// from a shared pool (L1 and Redis hits, and waits on the other cache's
// locks), checking every score. After 100 requests it calls fault, which
// may wait for more with waitN; then the load stops, and t fails unless
// every request succeeded with the right scores. It returns the number of
// requests.
func underLoad(t *testing.T, next *countingScorer, caches []*Cache, fault func(waitN func(int64))) int64 {
	t.Helper()
	var requests, failures atomic.Int64
	var mu sync.Mutex
	var first error
	shared := pairsOf("shared", 0, 100)
	var fresh atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := caches[i%len(caches)]
				from := rng.IntN(len(shared) - 10)
				n := fresh.Add(10)
				pairs := append(pairsOf("load", int(n), 10), shared[from:from+10]...)
				got, err := c.Score(context.Background(), pairs)
				requests.Add(1)
				if err == nil {
					for j, p := range pairs {
						if got[j] != next.want(p) {
							err = fmt.Errorf("score %d = %v, want %v", j, got[j], next.want(p))
							break
						}
					}
				}
				if err != nil {
					failures.Add(1)
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	// The workers stop even when fault or waitN fails t.
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}()
	waitN := func(n int64) {
		t.Helper()
		target := requests.Load() + n
		waitFor(t, fmt.Sprintf("%d more requests", n), func() bool { return requests.Load() >= target })
	}
	waitN(100)
	fault(waitN)
	close(stop)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed; first: %v", n, requests.Load(), first)
	}
	return requests.Load()
}

// sharedThroughRedis waits until a pair a scores is found by b without the
// backend: both caches use Redis again.
func sharedThroughRedis(t *testing.T, next *countingScorer, a, b *Cache, tag string) {
	t.Helper()
	i := 0
	waitFor(t, "the caches sharing scores through Redis "+tag, func() bool {
		i++
		p := []sdk.Pair{{Query: tag, Document: strconv.Itoa(i)}}
		checkScores(t, next, p, score(t, a, p))
		before := next.total()
		checkScores(t, next, p, score(t, b, p))
		return next.total() == before
	})
}

// TestSentinelFailoverUnderLoad runs a master, a replica and a sentinel as
// real processes, SIGKILLs the master under load, and checks that no
// request fails and that the caches then use the promoted replica.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	server := needBinary(t, "redis-server", "redis-server")
	sentinelBin := needBinary(t, "redis-sentinel", "redis-sentinel")
	const persistenceOff = "save \"\"\nappendonly no\n"
	master := startProc(t, server, persistenceOff)
	replica := startProc(t, server, persistenceOff+"replicaof 127.0.0.1 "+strconv.Itoa(master.port)+"\n")
	rc := replica.client()
	waitFor(t, "the replica in sync with the master", func() bool {
		info, err := rc.Info(context.Background(), "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	// down-after 1 s: the master is declared down quickly; a quorum of 1
	// lets the one sentinel fail over alone; failover-timeout bounds a
	// stuck failover to a few seconds.
	sentinel := startProc(t, sentinelBin, fmt.Sprintf(
		"sentinel monitor mymaster 127.0.0.1 %d 1\n"+
			"sentinel down-after-milliseconds mymaster 1000\n"+
			"sentinel failover-timeout mymaster 5000\n"+
			"sentinel parallel-syncs mymaster 1\n", master.port))
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel.addr()})
	t.Cleanup(func() { sc.Close() })
	masterAddr := func() string {
		a, err := sc.GetMasterAddrByName(context.Background(), "mymaster").Result()
		if err != nil || len(a) != 2 {
			return ""
		}
		return a[0] + ":" + a[1]
	}
	waitFor(t, "the sentinel to know the replica", func() bool {
		rs, err := sc.Replicas(context.Background(), "mymaster").Result()
		if err != nil {
			return false
		}
		for _, r := range rs {
			if r["port"] == strconv.Itoa(replica.port) && r["flags"] == "slave" && r["master-link-status"] == "ok" {
				return true
			}
		}
		return false
	})
	if got := masterAddr(); got != master.addr() {
		t.Fatalf("sentinel names master %q, want %q", got, master.addr())
	}

	url := fmt.Sprintf("redis://%s/0?master_name=mymaster", sentinel.addr())
	next := newCounting("m")
	a := newTestCache(t, testConfig(url), testIdentity, next)
	b := newTestCache(t, testConfig(url), testIdentity, next)
	sharedThroughRedis(t, next, a, b, "before the failover")

	n := underLoad(t, next, []*Cache{a, b}, func(waitN func(int64)) {
		master.kill()
		waitFor(t, "the sentinel to promote the replica", func() bool {
			return masterAddr() == replica.addr()
		})
		promoted := time.Now()
		// Load goes on after the switch until both caches answer from the
		// new master while busy, then for 300 requests more.
		lookups := func(c *Cache) uint64 {
			st := c.Stats().Distributed
			return st.Hits + st.Misses
		}
		la, lb := lookups(a), lookups(b)
		waitFor(t, "both caches to read from the promoted replica under load", func() bool {
			return lookups(a) > la && lookups(b) > lb
		})
		t.Logf("under load, both caches read from the new master %v after the sentinel named it", time.Since(promoted).Round(time.Millisecond))
		waitN(300)
	})
	t.Logf("%d requests across the failover, 0 failed; a's Redis stats: %+v", n, a.Stats().Distributed)

	// The old master is dead: a pair scored by a and found by b went
	// through the promoted replica, and is stored there.
	if info, err := rc.Info(context.Background(), "replication").Result(); err != nil || !strings.Contains(info, "role:master") {
		t.Fatalf("the replica is not a master after the failover (%v): %s\nsentinel log:\n%s", err, info, sentinel.log())
	}
	sharedThroughRedis(t, next, a, b, "after the failover")
	// A pair a scores now is stored on the promoted replica, under its key.
	i := 0
	waitFor(t, "a pair scored after the failover stored on the promoted replica", func() bool {
		i++
		p := sdk.Pair{Query: "stored after the failover", Document: strconv.Itoa(i)}
		score(t, a, []sdk.Pair{p})
		n, err := rc.Exists(context.Background(), redisKey(a.keyer.shared(p))).Result()
		return err == nil && n == 1
	})
	// /health's figures are refreshed at most once per infoMaxAge.
	waitFor(t, "a's stats to say connected", func() bool { return a.Stats().Distributed.Connected })
}

// TestClusterDedupAndNodeKill runs a real 3-node Redis Cluster: two caches
// sharing it score a pair computed concurrently once, and a node SIGKILLed
// under load fails no request; restarted, it serves its slots again.
func TestClusterDedupAndNodeKill(t *testing.T) {
	server := needBinary(t, "redis-server", "redis-server")
	cli := needBinary(t, "redis-cli", "redis-tools")
	// cluster-node-timeout 1 s: a dead node is noticed quickly.
	const conf = "save \"\"\nappendonly no\ncluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\n"
	nodes := []*redisProc{startProc(t, server, conf), startProc(t, server, conf), startProc(t, server, conf)}
	args := []string{"--cluster", "create"}
	for _, n := range nodes {
		args = append(args, n.addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), haDeadline)
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	cancel()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	clusterOK := func(ns ...*redisProc) func() bool {
		return func() bool {
			for _, n := range ns {
				c := redis.NewClient(&redis.Options{Addr: n.addr(), MaxRetries: -1})
				info, err := c.ClusterInfo(context.Background()).Result()
				c.Close()
				if err != nil || !strings.Contains(info, "cluster_state:ok") {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, "cluster_state:ok on every node", clusterOK(nodes...))

	url := fmt.Sprintf("redis://%s?addr=%s&addr=%s", nodes[0].addr(), nodes[1].addr(), nodes[2].addr())
	next := newCounting("m")
	// Long enough for the 50 requests to overlap the first backend call.
	next.delay = 30 * time.Millisecond
	cfg := testConfig(url)
	cfg.Local.Enabled = false // every dedup goes through the cluster
	a := newTestCache(t, cfg, testIdentity, next)
	b := newTestCache(t, cfg, testIdentity, next)
	pairs := pairsOf("cluster dedup", 0, 20)
	concurrently(t, 50, next, pairs, a, b)
	checkScoredOnce(t, next, pairs)
	// The 20 scores spread over the nodes' slots.
	total := 0
	for _, n := range nodes {
		ks, err := n.client().Keys(context.Background(), redisKeyPrefix+"*").Result()
		if err != nil {
			t.Fatal(err)
		}
		total += len(ks)
	}
	if total != 20 {
		t.Errorf("%d scores in the cluster, want 20", total)
	}

	next.delay = 0
	n := underLoad(t, next, []*Cache{a, b}, func(waitN func(int64)) {
		nodes[2].kill()
		waitN(300)
	})
	if st := a.Stats().Distributed; st.Errors == 0 {
		t.Errorf("a's stats = %+v; want errors from the killed node", st)
	}
	t.Logf("%d requests with a node killed, 0 failed; a's Redis stats: %+v", n, a.Stats().Distributed)

	// Restarted with its nodes.conf, the node takes its slots back and the
	// caches share scores through the cluster again.
	nodes[2].start()
	waitFor(t, "cluster_state:ok after the restart", clusterOK(nodes...))
	sharedThroughRedis(t, next, a, b, "after the node restart")
}
