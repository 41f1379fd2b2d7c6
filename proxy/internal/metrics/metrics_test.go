package metrics

import (
	"context"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNilDiscards(t *testing.T) {
	var r *Registry
	r.Request("/v1/rerank", "native", "m", 200, time.Millisecond)
	r.Reject("", ReasonTooLarge)
	r.Pairs("m", 3, &Tally{L1: 1})
	m := r.Model("m")
	if m != nil {
		t.Fatalf("a nil registry's model is %v", m)
	}
	m.QueueWait(time.Millisecond)
	m.Batch(3, time.Millisecond, 10, 12)
	m.Reject(ReasonQueueFull)
	m.Pairs(3, nil)
	m.SetState(func() ModelState { return ModelState{} })
	if m.Name() != "" {
		t.Fatal("a nil model has a name")
	}
}

func TestTally(t *testing.T) {
	ctx := context.Background()
	if TallyFrom(ctx) != nil {
		t.Fatal("tally from a bare context")
	}
	var tally Tally
	TallyFrom(WithTally(ctx, &tally)).Redis += 2
	if tally.Redis != 2 || tally.Cached() != 2 {
		t.Fatalf("tally %+v", tally)
	}
	var none *Tally
	if none.Cached() != 0 {
		t.Fatal("a nil tally counts pairs")
	}
}

func TestSeries(t *testing.T) {
	r := New("v1.2.3")
	m := r.Model("org/m")
	if r.Model("org/m") != m {
		t.Fatal("a model's series resolved twice")
	}
	m.Pairs(10, &Tally{L1: 4, Redis: 1, Peer: 2, Duplicate: 1})
	r.Pairs("org/m", 3, nil)
	m.Batch(8, 20*time.Millisecond, 100, 128)
	m.Batch(2, 5*time.Millisecond, 0, 0) // a plugin that reports no usage
	m.QueueWait(3 * time.Millisecond)
	m.Reject(ReasonQueueFull)
	m.Reject(ReasonQueueFull)
	m.Reject(ReasonDeadline)
	m.SetState(func() ModelState {
		return ModelState{
			Backend: "cpu", Precision: "fp32", Device: "cpu", Loaded: true, LoadDuration: 1500 * time.Millisecond,
			Restarts: 2, PluginPID: os.Getpid(), QueuePairs: 7, QueueRequests: 2, InFlightBatches: 1,
			Redis: &RedisState{Errors: 5, Skipped: 3, BreakerOpen: true, BreakerOpened: 2, BreakerClosed: 1},
		}
	})
	want := `
# HELP rerank_pairs_total Pairs of answered rerank requests by where their score came from: l1, redis, peer (another request's computation), duplicate (an earlier copy in the same request) or plugin.
# TYPE rerank_pairs_total counter
rerank_pairs_total{model="org/m",source="duplicate"} 1
rerank_pairs_total{model="org/m",source="l1"} 4
rerank_pairs_total{model="org/m",source="peer"} 2
rerank_pairs_total{model="org/m",source="plugin"} 5
rerank_pairs_total{model="org/m",source="redis"} 1
# HELP rerank_tokens_total Tokens the plugin scored, without padding.
# TYPE rerank_tokens_total counter
rerank_tokens_total{model="org/m"} 100
# HELP rerank_rejections_total Requests refused before scoring, by reason: queue_full, deadline, too_large, and the reasons other stages add.
# TYPE rerank_rejections_total counter
rerank_rejections_total{model="org/m",reason="deadline"} 1
rerank_rejections_total{model="org/m",reason="queue_full"} 2
# HELP rerank_queue_pairs Pairs admitted to the micro-batcher and not answered yet (queued and in flight).
# TYPE rerank_queue_pairs gauge
rerank_queue_pairs{model="org/m"} 7
# HELP rerank_queue_requests Requests admitted to the micro-batcher and not answered yet.
# TYPE rerank_queue_requests gauge
rerank_queue_requests{model="org/m"} 2
# HELP rerank_batches_in_flight Plugin calls running now.
# TYPE rerank_batches_in_flight gauge
rerank_batches_in_flight{model="org/m"} 1
# HELP rerank_plugin_restarts_total Restarts of the model's plugin after it crashed or was killed.
# TYPE rerank_plugin_restarts_total counter
rerank_plugin_restarts_total{backend="cpu",model="org/m"} 2
# HELP rerank_model_loaded 1 while the model is loaded and serving, else 0.
# TYPE rerank_model_loaded gauge
rerank_model_loaded{backend="cpu",device="cpu",model="org/m",precision="fp32"} 1
# HELP rerank_model_load_duration_seconds How long the model's last successful load took, plugin start included.
# TYPE rerank_model_load_duration_seconds gauge
rerank_model_load_duration_seconds{backend="cpu",device="cpu",model="org/m",precision="fp32"} 1.5
# HELP rerank_redis_errors_total Failed Redis calls; each was answered without Redis.
# TYPE rerank_redis_errors_total counter
rerank_redis_errors_total{model="org/m"} 5
# HELP rerank_redis_skipped_total Redis calls not made because the circuit breaker was open.
# TYPE rerank_redis_skipped_total counter
rerank_redis_skipped_total{model="org/m"} 3
# HELP rerank_redis_breaker_open 1 while the Redis circuit breaker is open (Redis treated as down), else 0.
# TYPE rerank_redis_breaker_open gauge
rerank_redis_breaker_open{model="org/m"} 1
# HELP rerank_redis_breaker_opened_total Times the Redis circuit breaker opened: after consecutive failed calls, or when a probe failed.
# TYPE rerank_redis_breaker_opened_total counter
rerank_redis_breaker_opened_total{model="org/m"} 2
# HELP rerank_redis_breaker_closed_total Times the Redis circuit breaker closed again because a probe call succeeded.
# TYPE rerank_redis_breaker_closed_total counter
rerank_redis_breaker_closed_total{model="org/m"} 1
# HELP rerank_build_info Always 1; the version label is the server's version.
# TYPE rerank_build_info gauge
rerank_build_info{version="v1.2.3"} 1
`
	names := []string{"rerank_pairs_total", "rerank_tokens_total", "rerank_rejections_total", "rerank_queue_pairs",
		"rerank_queue_requests", "rerank_batches_in_flight", "rerank_plugin_restarts_total", "rerank_model_loaded",
		"rerank_model_load_duration_seconds", "rerank_redis_errors_total", "rerank_redis_skipped_total",
		"rerank_redis_breaker_open", "rerank_redis_breaker_opened_total", "rerank_redis_breaker_closed_total", "rerank_build_info"}
	if err := testutil.GatherAndCompare(r.Gatherer(), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(r.batchPairs); n != 1 {
		t.Fatalf("%d batch size series, want 1", n)
	}
	if runtime.GOOS == "linux" {
		rss, err := residentBytes(os.Getpid())
		if err != nil || rss <= 0 {
			t.Fatalf("resident memory of this process: %d, %v", rss, err)
		}
		if n, err := testutil.GatherAndCount(r.Gatherer(), "rerank_plugin_resident_memory_bytes"); err != nil || n != 1 {
			t.Fatalf("%d plugin memory series (%v), want 1", n, err)
		}
	}
	problems, err := testutil.GatherAndLint(r.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	// An unloaded model's state is no longer reported; its counters stay.
	m.SetState(nil)
	if n, _ := testutil.GatherAndCount(r.Gatherer(), "rerank_model_loaded", "rerank_queue_pairs"); n != 0 {
		t.Fatalf("%d state series after SetState(nil)", n)
	}
	if n, _ := testutil.GatherAndCount(r.Gatherer(), "rerank_pairs_total"); n != 5 {
		t.Fatalf("%d pair series after SetState(nil), want 5", n)
	}
}
