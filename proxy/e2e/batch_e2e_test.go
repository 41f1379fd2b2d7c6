package e2e

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rerank-sidecar/rerank/sdk/onnx/crossencoder"
)

// microBatcher is the "micro_batcher" section of /health.
type microBatcher struct {
	Enabled          bool    `json:"enabled"`
	TotalRequests    uint64  `json:"total_requests"`
	TotalBatches     uint64  `json:"total_batches"`
	AvgBatchSize     float64 `json:"avg_batch_size"`
	WindowMS         float64 `json:"window_ms"`
	MaxBatchSize     int     `json:"max_batch_size"`
	PendingRequests  int     `json:"pending_requests"`
	PendingPairs     int     `json:"pending_pairs"`
	RejectedRequests uint64  `json:"rejected_requests"`
	DroppedPairs     uint64  `json:"dropped_pairs"`
	DuplicatePairs   uint64  `json:"duplicate_pairs"`
	ResentPairs      uint64  `json:"resent_pairs"`
}

func (s *server) microBatcher(t *testing.T) microBatcher {
	t.Helper()
	r := s.do(t, "GET", "/health", nil)
	var h struct {
		MB *microBatcher `json:"micro_batcher"`
	}
	if err := json.Unmarshal(r.body, &h); err != nil || h.MB == nil {
		t.Fatalf("/health has no micro_batcher section: %s (%v)", r.body, err)
	}
	return *h.MB
}

// waitPending polls /health until the batcher holds n pending pairs. The
// limit only stops a broken server from hanging the test.
func (s *server) waitPending(t *testing.T, n int) {
	t.Helper()
	limit := time.Now().Add(time.Minute)
	for s.microBatcher(t).PendingPairs != n {
		if time.Now().After(limit) {
			t.Fatalf("pending pairs never reached %d: %+v", n, s.microBatcher(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// goldenRequests returns n requests of k candidates each, cut from the
// golden sets that have at least k, with the reference score of each.
func goldenRequests(t *testing.T, g *crossencoder.Golden, n, k int) (bodies []string, scores [][]float64) {
	t.Helper()
	for _, set := range g.Sets {
		if len(bodies) == n {
			break
		}
		if len(set.Candidates) < k {
			continue
		}
		bodies = append(bodies, rerankBody(t, map[string]any{"query": set.Query, "candidates": set.Candidates[:k]}))
		scores = append(scores, set.Scores[:k])
	}
	if len(bodies) < n {
		t.Fatalf("only %d golden sets have %d candidates", len(bodies), k)
	}
	return bodies, scores
}

func checkScores(t *testing.T, r reply, want []float64) {
	t.Helper()
	v := decodeRerank(t, r)
	if len(v.Results) != len(want) {
		t.Fatalf("%d results, want %d", len(v.Results), len(want))
	}
	for _, res := range v.Results {
		if d := math.Abs(res.Score - want[res.Index]); d > fidelityTolerance {
			t.Fatalf("candidate %d: score %.9f, reference %.9f", res.Index, res.Score, want[res.Index])
		}
	}
}

// oneClassRequests returns n requests of k golden pairs whose query and
// candidate together have 70 to 100 characters: all in one length class of
// the batcher (17 to 32 estimated tokens at 4 characters per token), so
// that length grouping keeps them in one batch.
func oneClassRequests(t *testing.T, g *crossencoder.Golden, n, k int) (bodies []string, scores [][]float64) {
	t.Helper()
	for _, set := range g.Sets {
		if len(bodies) == n {
			break
		}
		var cands []string
		var want []float64
		for i, c := range set.Candidates {
			if l := len([]rune(set.Query)) + len([]rune(c)); l >= 70 && l <= 100 && len(cands) < k {
				cands = append(cands, c)
				want = append(want, set.Scores[i])
			}
		}
		if len(cands) == k {
			bodies = append(bodies, rerankBody(t, map[string]any{"query": set.Query, "candidates": cands}))
			scores = append(scores, want)
		}
	}
	if len(bodies) < n {
		t.Fatalf("only %d golden sets have %d pairs of 70-100 characters", len(bodies), k)
	}
	return bodies, scores
}

// TestMicroBatchingCoalesces sends four concurrent requests whose pairs
// fill exactly one batch: the window is so long that only the size can
// flush it, so the plugin must see a single batch, and every request must
// still get the reference scores of its own pairs (padding among other
// requests' pairs changes nothing).
func TestMicroBatchingCoalesces(t *testing.T) {
	requireRuntime(t)
	g := loadGolden(t, "tiny-bert")
	dir := goldenModelDir(t, "tiny-bert")
	const requests, perRequest = 4, 2
	s := startServer(t, []string{
		"MICRO_BATCH_ENABLED=true", "MICRO_BATCH_MAX_SIZE=" + strconv.Itoa(requests*perRequest), "MICRO_BATCH_WINDOW_MS=600000",
		"MICRO_BATCH_IN_FLIGHT=1", "ENABLE_PREDICTION_CACHE=false", "RERANK_SERVER_TIMEOUT=300",
	}, "--model", dir)
	s.waitHealth(t, "ok")
	bodies, want := oneClassRequests(t, g, requests, perRequest)
	replies := make([]reply, len(bodies))
	var wg sync.WaitGroup
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i] = s.post(t, bodies[i])
		}()
	}
	wg.Wait()
	for i := range replies {
		checkScores(t, replies[i], want[i])
	}
	mb := s.microBatcher(t)
	if !mb.Enabled || mb.TotalRequests != requests || mb.TotalBatches != 1 ||
		mb.AvgBatchSize+float64(mb.DuplicatePairs) != requests*perRequest || mb.PendingPairs != 0 {
		t.Fatalf("micro_batcher after %d requests of %d pairs: %+v", requests, perRequest, mb)
	}
}

// TestMicroBatchingAdmission: a request over RERANKER_MAX_QUEUE is answered
// 429 with Retry-After; a queued request whose deadline passes is answered
// 504 and its pairs never reach the plugin; a request bigger than the bound
// is split across batches and served when nothing else waits.
func TestMicroBatchingAdmission(t *testing.T) {
	requireRuntime(t)
	g := loadGolden(t, "tiny-bert")
	dir := goldenModelDir(t, "tiny-bert")
	s := startServer(t, []string{
		"MICRO_BATCH_ENABLED=true", "MICRO_BATCH_MAX_SIZE=4", "MICRO_BATCH_WINDOW_MS=600000",
		"RERANKER_MAX_QUEUE=5", "ENABLE_PREDICTION_CACHE=false", "RERANK_SERVER_TIMEOUT=3",
	}, "--model", dir)
	s.waitHealth(t, "ok")
	small, _ := goldenRequests(t, g, 2, 3)
	big, bigWant := goldenRequests(t, g, 1, 8)

	// Three pairs wait for a window that never ends before their deadline.
	queued := make(chan reply, 1)
	go func() { queued <- s.post(t, small[0]) }()
	s.waitPending(t, 3)

	r := s.post(t, small[1])
	if r.code != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" {
		t.Fatalf("over the queue bound: %d %s (Retry-After %q), want 429 with Retry-After", r.code, r.body, r.header.Get("Retry-After"))
	}
	var detail struct {
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(r.body, &detail); err != nil || detail.Detail == "" {
		t.Fatalf("429 body %s is not {\"detail\": \"…\"}", r.body)
	}

	r = <-queued
	if r.code != http.StatusGatewayTimeout {
		t.Fatalf("request expired in the queue: %d %s, want 504", r.code, r.body)
	}
	mb := s.microBatcher(t)
	if mb.PendingPairs != 0 || mb.DroppedPairs != 3 || mb.TotalBatches != 0 || mb.RejectedRequests != 1 {
		t.Fatalf("after the expiry: %+v", mb)
	}

	// 8 pairs > the bound of 5, with nothing pending: admitted, and split
	// into batches of at most 4 (more than two when its pairs fall into
	// several length classes), none waiting for the window.
	checkScores(t, s.post(t, big[0]), bigWant[0])
	if mb := s.microBatcher(t); mb.TotalBatches < 2 || mb.AvgBatchSize > 4 || mb.PendingPairs != 0 {
		t.Fatalf("after the big request: %+v", mb)
	}
}
