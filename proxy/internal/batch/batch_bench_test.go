package batch

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk"
)

// nopScorer answers at once: the benchmarks measure the batcher alone.
type nopScorer struct{}

func (nopScorer) Score(_ context.Context, pairs []sdk.Pair) ([]float32, error) {
	return make([]float32, len(pairs)), nil
}

// BenchmarkScore measures what the batcher adds to a request of 10 pairs
// over a backend that costs nothing: at one client, ns/op is the added
// latency (the window plus the batcher's own work); at 64 clients, the
// pairs/s it can feed a plugin. "off" is the pass-through baseline.
func BenchmarkScore(b *testing.B) {
	f := func(enabled bool, window time.Duration, clients int) {
		mode := "off"
		if enabled {
			mode = fmt.Sprintf("on-window-%v", window)
		}
		b.Run(fmt.Sprintf("%s/clients-%d", mode, clients), func(b *testing.B) {
			bt := New(nopScorer{}, Config{Enabled: enabled, Window: window, MaxBatchSize: 32, MaxInFlight: 2, MaxQueue: 1 << 20})
			pairs := make([]sdk.Pair, 10)
			for i := range pairs {
				pairs[i] = sdk.Pair{Query: "what is a reranker", Document: fmt.Sprintf("document %d about rerankers and how they order search results", i)}
			}
			b.ReportAllocs()
			b.ResetTimer()
			// Exactly `clients` goroutines, each with one request in flight.
			var wg sync.WaitGroup
			for w := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < b.N; i += clients {
						if _, err := bt.Score(context.Background(), pairs); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N*len(pairs))/b.Elapsed().Seconds(), "pairs/s")
		})
	}
	f(false, 0, 1)
	f(true, 0, 1)
	f(true, 10*time.Millisecond, 1)
	f(false, 0, 64)
	f(true, 0, 64)
	f(true, 10*time.Millisecond, 64)
}
