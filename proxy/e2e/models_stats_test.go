package e2e

import "testing"

// TestMedianInterval checks the paired benchmark's statistics: the
// median, and the order statistics bounding it at 95% (for 20 values the
// 6th and the 15th, P(Binomial(20, ½) ≤ 5) = 2.07%).
func TestMedianInterval(t *testing.T) {
	f := func(x []float64, median, lo, hi float64) {
		t.Helper()
		m, l, h := medianInterval(x)
		if m != median || l != lo || h != hi {
			t.Fatalf("medianInterval(%v) = %v [%v, %v], want %v [%v, %v]", x, m, l, h, median, lo, hi)
		}
	}
	f(nil, 0, 0, 0)
	f([]float64{3, 1, 2}, 2, 1, 3) // too few for a 95% interval: the range
	f([]float64{4, 1, 3, 2}, 2.5, 1, 4)
	twenty := make([]float64, 20)
	for i := range twenty {
		twenty[i] = float64(20 - i) // 20, 19, …, 1
	}
	f(twenty, 10.5, 6, 15)
	// Six values: P(Binomial(6, ½) = 0) = 1.6% gives the range; at five,
	// 3.1% gives none either.
	f([]float64{6, 5, 4, 3, 2, 1}, 3.5, 1, 6)
	// Ten: P(≤ 1) = 1.07%, P(≤ 2) = 5.5%: the 2nd and the 9th.
	f([]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 5.5, 2, 9)
}
