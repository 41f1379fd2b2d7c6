package cache

import (
	"context"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk"
)

// benchCandidates is the number of candidates per request, as the issue's
// benchmark asks.
const benchCandidates = 20

// benchPairs returns the pairs of request i: a query and 20 passages of
// about 60 words, a typical RAG chunk.
func benchPairs(i int) []sdk.Pair {
	pairs := make([]sdk.Pair, benchCandidates)
	for j := range pairs {
		pairs[j] = sdk.Pair{
			Query:    "how do rerankers order search results",
			Document: "request " + strconv.Itoa(i) + " passage " + strconv.Itoa(j) + ": " + benchPassage,
		}
	}
	return pairs
}

const benchPassage = "A cross-encoder reads the query and the passage together and outputs one relevance score; " +
	"rerankers apply it to the top candidates a first-stage retriever returned, then sort them by score. " +
	"Caching the score of each pair lets repeated questions skip the model entirely."

// BenchmarkScore measures the cache stage alone (no HTTP), per request of
// 20 candidates, with a next stage that answers at once: L1 hits, L2 hits
// (L1 off, a real Redis on loopback) and misses (every pair new: hashing,
// L2 lookup, lock, write and release around the next stage).
func BenchmarkScore(b *testing.B) {
	ctx := context.Background()
	b.Run("L1 hit", func(b *testing.B) {
		c, err := New(testConfig(""), testIdentity, newCounting("m"))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		pairs := benchPairs(0)
		if _, err := c.Score(ctx, pairs); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		defer reportCPU(b)()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Score(ctx, pairs); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	redisCase := func(name string, local bool, fresh bool) {
		b.Run(name, func(b *testing.B) {
			srv := startRedisB(b)
			cfg := testConfig(srv)
			cfg.Local.Enabled = local
			next := newCounting("m")
			c, err := New(cfg, testIdentity, next)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			reqs := make([][]sdk.Pair, 64)
			for i := range reqs {
				reqs[i] = benchPairs(i)
				if !fresh {
					if _, err := c.Score(ctx, reqs[i]); err != nil {
						b.Fatal(err)
					}
				}
			}
			if fresh {
				reqs = make([][]sdk.Pair, b.N)
				for i := range reqs {
					reqs[i] = benchPairs(i)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			stop := reportCPU(b)
			for i := 0; i < b.N; i++ {
				if _, err := c.Score(ctx, reqs[i%len(reqs)]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			stop()
			if !fresh && next.total() != 64*benchCandidates {
				b.Fatalf("the next stage scored %d pairs during L2 hits", next.total()-64*benchCandidates)
			}
		})
	}
	redisCase("L2 hit", false, false)
	redisCase("miss", true, true)
}

// reportCPU starts measuring the CPU time the process spends (user and
// system, all threads: the benchmark, ristretto's goroutines, go-redis) and
// returns the function that reports it per op. On a shared machine the CPU
// time per request is steadier than the wall time.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLocalEntryBytes fills an L1 to its bound and reports the heap it
// takes per entry, the figure localEntryCost is rounded up from.
func BenchmarkLocalEntryBytes(b *testing.B) {
	const maxBytes = 32 << 20 // large enough that fixed overheads vanish
	var perEntry float64
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		l, err := newLocal(LocalConfig{Enabled: true, TTL: 300 * time.Second, MaxBytes: maxBytes})
		if err != nil {
			b.Fatal(err)
		}
		kr := newKeyer(testIdentity.digest())
		n := maxBytes / localEntryCost
		for i := range n {
			l.set(kr.local(benchPairs(i)[:1]), 0.5)
			if i%1000 == 0 {
				l.wait() // keep ristretto's set buffer from dropping writes
			}
		}
		l.wait()
		entries := l.stats().Entries
		runtime.GC()
		runtime.ReadMemStats(&after)
		perEntry = float64(after.HeapAlloc-before.HeapAlloc) / float64(entries)
		l.close()
		if entries < int64(n)*9/10 {
			b.Fatalf("only %d of %d entries stored", entries, n)
		}
	}
	b.ReportMetric(perEntry, "heap-bytes/entry")
}
