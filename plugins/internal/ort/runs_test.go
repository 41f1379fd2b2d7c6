package ort

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/rerank-sidecar/rerank/sdk"
	"github.com/rerank-sidecar/rerank/sdk/tokenizer"
)

// checkPlan verifies that runs cover every pair exactly once, hold at most
// maxBatch pairs each, pad to their longest pair, and that padded is what
// they compute beyond the real lengths.
func checkPlan(t *testing.T, lengths []int, maxBatch int, runs []runPlan, padded int) {
	t.Helper()
	seen := make([]bool, len(lengths))
	sum := 0
	for _, r := range runs {
		if len(r.pairs) == 0 || len(r.pairs) > maxBatch {
			t.Fatalf("run of %d pairs (max %d)", len(r.pairs), maxBatch)
		}
		longest := 0
		for _, p := range r.pairs {
			if seen[p] {
				t.Fatalf("pair %d in two runs", p)
			}
			seen[p] = true
			longest = max(longest, lengths[p])
			sum += r.seq - lengths[p]
		}
		if r.seq != longest {
			t.Fatalf("run padded to %d, its longest pair has %d", r.seq, longest)
		}
	}
	for p, ok := range seen {
		if !ok {
			t.Fatalf("pair %d in no run", p)
		}
	}
	if sum != padded {
		t.Fatalf("padded %d, runs compute %d", padded, sum)
	}
}

func TestPlanRuns(t *testing.T) {
	f := func(name string, lengths []int, maxBatch, wantRuns int) {
		t.Helper()
		runs, padded := planRuns(lengths, maxBatch)
		checkPlan(t, lengths, maxBatch, runs, padded)
		if wantRuns > 0 && len(runs) != wantRuns {
			t.Fatalf("%s: %d runs, want %d", name, len(runs), wantRuns)
		}
	}
	f("one pair", []int{7}, 32, 1)
	f("equal lengths fit one run", []int{64, 64, 64, 64}, 32, 1)
	f("equal lengths over the batch size", []int{64, 64, 64, 64, 64}, 2, 3)
	f("two length classes far apart", []int{10, 200, 10, 200, 10, 200}, 32, 2)
	f("close lengths share a run", []int{100, 101, 102, 99}, 32, 1)
	f("batch of one", []int{5, 9, 3}, 1, 3)

	runs, padded := chunkRuns([]int{5, 9, 3, 4, 4}, 2)
	checkPlan(t, []int{5, 9, 3, 4, 4}, 2, runs, padded)
	if len(runs) != 3 || padded != 4+1 || runs[0].pairs[0] != 0 || runs[2].pairs[0] != 4 {
		t.Fatalf("chunkRuns: %+v, %d padded", runs, padded)
	}
}

// TestPlanRunsPaddingBound draws mixed-length calls like the issue's
// workload (20–60 word documents, several requests per batch) and checks
// the padding bound on every one.
func TestPlanRunsPaddingBound(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var realTotal, paddedTotal, runsTotal int
	for call := 0; call < 500; call++ {
		n := 1 + r.IntN(80)
		lengths := make([]int, n)
		real := 0
		for i := range lengths {
			lengths[i] = 10 + r.IntN(120)
			if r.IntN(10) == 0 {
				lengths[i] = 512 // a truncated long document
			}
			real += lengths[i]
		}
		maxBatch := []int{1, 8, 32, 64}[r.IntN(4)]
		runs, padded := planRuns(lengths, maxBatch)
		checkPlan(t, lengths, maxBatch, runs, padded)
		if float64(padded) > maxPaddingShare*float64(real) {
			t.Fatalf("call %d: %d padded tokens for %d real (%.1f%%)", call, padded, real, 100*float64(padded)/float64(real))
		}
		realTotal += real
		paddedTotal += padded
		runsTotal += len(runs)
	}
	t.Logf("500 calls: %d real tokens, %d padded (%.2f%% of computed), %d runs",
		realTotal, paddedTotal, 100*float64(paddedTotal)/float64(realTotal+paddedTotal), runsTotal)
}

// TestScoreUsageMixedLengths scores pairs of very different lengths in one
// call and checks each score against the pair scored alone, and the usage
// the call reports.
func TestScoreUsageMixedLengths(t *testing.T) {
	requireRuntime(t)
	s := sumGraph{mask: true, types: true, labels: 1}
	dir := writeSumModelDir(t, s, "onnx/model.onnx", nil, "Identity")
	e := newSumEngine()
	if _, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, MaxLength: 128, IntraOpThreads: 1}); err != nil {
		t.Fatal(err)
	}
	var pairs []sdk.Pair
	wantTokens := int64(0)
	for i := 0; i < 40; i++ {
		p := sdk.Pair{Query: "q", Document: strings.TrimSpace(strings.Repeat(fmt.Sprintf("w%d ", i), 1+(i*37)%90))}
		pairs = append(pairs, p)
		enc, _ := wordEncoder{}.EncodePair(p.Query, p.Document, tokenizer.Options{MaxLength: 128})
		wantTokens += int64(len(enc.IDs))
	}
	var usage sdk.Usage
	got, err := e.Score(sdk.WithUsage(context.Background(), &usage), pairs)
	if err != nil {
		t.Fatal(err)
	}
	// PaddedTokens counts every position computed, real ones included.
	if pad := usage.PaddedTokens - usage.Tokens; usage.Tokens != wantTokens || pad <= 0 || float64(pad) > maxPaddingShare*float64(usage.Tokens) {
		t.Fatalf("usage %+v, want %d real tokens and padding in (0, %.0f%%]", usage, wantTokens, 100*maxPaddingShare)
	}
	for i, p := range pairs {
		alone, err := e.Score(context.Background(), []sdk.Pair{p})
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(float64(got[i]-alone[0])) > 1e-6*math.Max(1, math.Abs(float64(alone[0]))) {
			t.Fatalf("pair %d: %v in the mixed call, %v alone", i, got[i], alone[0])
		}
	}
}
