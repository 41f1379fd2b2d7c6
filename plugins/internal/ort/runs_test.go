package ort

import (
	"context"
	"errors"
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

func TestSpreadRuns(t *testing.T) {
	cost := func(r runPlan) int { return len(r.pairs) * r.seq }
	f := func(name string, lengths []int, n, wantRuns int) {
		t.Helper()
		runs, _ := planRuns(lengths, 32)
		before := 0
		for _, r := range runs {
			before += cost(r)
		}
		runs = spreadRuns(runs, lengths, n)
		padded, after := 0, 0
		for i, r := range runs {
			for _, p := range r.pairs {
				padded += r.seq - lengths[p]
			}
			after += cost(r)
			if i > 0 && cost(r) > cost(runs[i-1]) {
				t.Fatalf("%s: run %d costs %d, more than the one before (%d): want costliest first", name, i, cost(r), cost(runs[i-1]))
			}
		}
		checkPlan(t, lengths, 32, runs, padded)
		if after > before {
			t.Fatalf("%s: spreading raised the cost from %d to %d", name, before, after)
		}
		if len(runs) != wantRuns {
			t.Fatalf("%s: %d runs %+v, want %d", name, len(runs), runs, wantRuns)
		}
	}
	f("one pair stays one run", []int{40}, 2, 1)
	f("one run of equal pairs splits in two", []int{64, 64, 64, 64}, 2, 2)
	f("as many runs as workers, one far costlier: it splits", []int{10, 10, 200, 200}, 2, 3)
	f("as many runs as workers, balanced", []int{100, 100, 200}, 2, 2)
	f("a run over an even share splits", []int{10, 200, 200, 200, 200}, 2, 3)
	f("four workers", []int{50, 50, 50, 50, 50, 50, 50, 50}, 4, 4)
	f("one worker changes nothing", []int{64, 64, 64, 64}, 1, 1)
	f("more workers than pairs", []int{30, 31}, 8, 2)
}

// TestThreadSettings checks the threads per run and runs at once each
// provider chooses.
func TestThreadSettings(t *testing.T) {
	f := func(p Provider, threads, cpus, wantIntra, wantParallel int) {
		t.Helper()
		if intra, par := p.threadSettings(threads, cpus); intra != wantIntra || par != wantParallel {
			t.Fatalf("%s, %d threads, %d CPUs: %d threads × %d runs; want %d × %d", p, threads, cpus, intra, par, wantIntra, wantParallel)
		}
	}
	f(CPU, 0, 2, 1, 2)
	f(CPU, 0, 16, 1, 16)
	f(CPU, 2, 2, 2, 1)
	f(CPU, 4, 16, 4, 4)
	f(CPU, 8, 2, 8, 1)
	f(CPU, 0, 0, 1, 1)
	f(CUDA, 0, 16, 0, 1)
	f(CoreML, 2, 8, 2, 1)
}

// TestParallelRunsScoreAsOne scores a mixed-length call with one run at a
// time and with four at once (split further to keep four workers busy,
// Score calls running concurrently) and checks that every pair gets the
// same score and the call reports the same real tokens.
func TestParallelRunsScoreAsOne(t *testing.T) {
	requireRuntime(t)
	s := sumGraph{mask: true, types: true, labels: 1}
	dir := writeSumModelDir(t, s, "onnx/model.onnx", nil, "Identity")
	load := func(parallel string) *Engine {
		e := newSumEngine()
		info, err := e.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, MaxLength: 128, IntraOpThreads: 1,
			Options: map[string]string{ParallelRunsOption: parallel}})
		if err != nil {
			t.Fatal(err)
		}
		if info.Details["parallel_runs"] != parallel {
			t.Fatalf("parallel_runs %q, want %q", info.Details["parallel_runs"], parallel)
		}
		return e
	}
	one, four := load("1"), load("4")
	var pairs []sdk.Pair
	for i := 0; i < 37; i++ {
		pairs = append(pairs, sdk.Pair{Query: "q", Document: strings.TrimSpace(strings.Repeat(fmt.Sprintf("w%d ", i), 1+(i*53)%70))})
	}
	var u1 sdk.Usage
	want, err := one.Score(sdk.WithUsage(context.Background(), &u1), pairs)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			var u sdk.Usage
			got, err := four.Score(sdk.WithUsage(context.Background(), &u), pairs)
			if err == nil && u.Tokens != u1.Tokens {
				err = fmt.Errorf("usage %+v, one run at a time %+v", u, u1)
			}
			for i := range got {
				if err == nil && math.Abs(float64(got[i]-want[i])) > 1e-6*math.Max(1, math.Abs(float64(want[i]))) {
					err = fmt.Errorf("pair %d: %v with four runs at once, %v with one", i, got[i], want[i])
				}
			}
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := one.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, Options: map[string]string{ParallelRunsOption: "0"}}); err == nil {
		t.Fatal("a second Load succeeded")
	}
	bad := newSumEngine()
	if _, err := bad.Load(context.Background(), sdk.LoadConfig{ModelDir: dir, Options: map[string]string{ParallelRunsOption: "0"}}); !errors.Is(err, sdk.ErrInvalidInput) {
		t.Fatalf("parallel_runs=0: %v, want ErrInvalidInput", err)
	}
}
