package ort

import "slices"

// runPlan is one inference run of a Score call: the pairs it scores (as
// indexes into the call's pairs) and the length they are padded to.
type runPlan struct {
	pairs []int
	seq   int
}

// runOverheadTokens is the starting estimate of what one extra inference
// run costs, in tokens of compute: a run of one 64-token MiniLM pair took
// about 1.3–1.5× the per-pair time of runs of 4–24 pairs on the 2-core
// development box (plugins/internal/ort BenchmarkPaddingFree and
// docs/BENCHMARKS.md, "Speed (issue 14)"), i.e. roughly half a short pair.
const runOverheadTokens = 32

// maxPaddingShare bounds the padding a Score call computes, as a share of
// its real tokens. The target is 5% of the tokens computed; 4% of
// the real tokens stays under it with the rounding of small calls.
const maxPaddingShare = 0.04

// planRuns splits pairs of the given token lengths into runs of at most
// maxBatch pairs so that padding stays within maxPaddingShare of the real
// tokens, with as few runs as that allows. Pairs are sorted by length and
// each run takes a contiguous stretch, which is optimal for padding; the
// split points come from a dynamic programme minimising padded tokens plus
// an overhead per run, the overhead halved until the padding bound holds
// (at overhead 0 the plan has no padding at all). It returns the runs and
// the padding they compute.
func planRuns(lengths []int, maxBatch int) ([]runPlan, int) {
	n := len(lengths)
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return lengths[a] - lengths[b] })
	real := 0
	for _, l := range lengths {
		real += l
	}
	best := make([]int, n+1)
	from := make([]int, n+1)
	for overhead := runOverheadTokens; ; overhead /= 2 {
		best[0] = 0
		for i := 1; i <= n; i++ {
			best[i], from[i] = -1, 0
			seq := lengths[order[i-1]] // the longest of any run ending at i-1
			for j := i - 1; j >= 0 && i-j <= maxBatch; j-- {
				c := best[j] + overhead + (i-j)*seq
				if best[i] < 0 || c < best[i] {
					best[i], from[i] = c, j
				}
			}
		}
		var runs []runPlan
		padded := 0
		for i := n; i > 0; i = from[i] {
			j := from[i]
			r := runPlan{pairs: order[j:i], seq: lengths[order[i-1]]}
			for _, p := range r.pairs {
				padded += r.seq - lengths[p]
			}
			runs = append(runs, r)
		}
		if float64(padded) <= maxPaddingShare*float64(real) || overhead == 0 {
			slices.Reverse(runs)
			return runs, padded
		}
	}
}

// chunkRuns splits pairs in arrival order into runs of maxBatch pairs, each
// padded to its longest pair (PaddingOption "longest").
func chunkRuns(lengths []int, maxBatch int) ([]runPlan, int) {
	var runs []runPlan
	padded := 0
	for start := 0; start < len(lengths); start += maxBatch {
		r := runPlan{}
		for i := start; i < min(start+maxBatch, len(lengths)); i++ {
			r.pairs = append(r.pairs, i)
			r.seq = max(r.seq, lengths[i])
		}
		for _, p := range r.pairs {
			padded += r.seq - lengths[p]
		}
		runs = append(runs, r)
	}
	return runs, padded
}

// spreadRuns prepares runs for n runs at once: it splits the costliest run
// (pairs × padded length) in two halves while there are fewer runs than n
// or it alone exceeds an even share of the total, as long as it holds two
// pairs or more; each half is padded to its own longest pair, so splitting
// never adds padding. It returns the runs costliest first, the order in
// which the workers take them, so that the last to start are the short
// ones.
func spreadRuns(runs []runPlan, lengths []int, n int) []runPlan {
	cost := func(r runPlan) int { return len(r.pairs) * r.seq }
	total := 0
	for _, r := range runs {
		total += cost(r)
	}
	half := func(pairs []int) runPlan {
		r := runPlan{pairs: pairs}
		for _, p := range pairs {
			r.seq = max(r.seq, lengths[p])
		}
		return r
	}
	for len(runs) > 0 {
		big := 0
		for i, r := range runs {
			if cost(r) > cost(runs[big]) {
				big = i
			}
		}
		r := runs[big]
		if len(r.pairs) < 2 || (len(runs) >= n && cost(r)*n <= total) {
			break
		}
		k := len(r.pairs) / 2
		runs[big] = half(r.pairs[:k:k])
		runs = append(runs, half(r.pairs[k:]))
	}
	slices.SortStableFunc(runs, func(a, b runPlan) int { return cost(b) - cost(a) })
	return runs
}
