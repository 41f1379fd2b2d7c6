package convert

import (
	"math"
	"testing"
)

func TestFloat16Known(t *testing.T) {
	f := func(in float32, want uint16) {
		t.Helper()
		if got := Float32ToFloat16(in); got != want {
			t.Fatalf("Float32ToFloat16(%g) = %#04x, want %#04x", in, got, want)
		}
	}
	f(0, 0x0000)
	f(float32(math.Copysign(0, -1)), 0x8000)
	f(1, 0x3c00)
	f(-2, 0xc000)
	f(65504, 0x7bff)
	f(65520, 0x7c00) // halfway past the largest half rounds to Inf
	f(1e6, 0x7c00)
	f(float32(math.Inf(-1)), 0xfc00)
	f(0.1, 0x2e66)
	f(float32(math.Ldexp(1, -24)), 0x0001)      // smallest subnormal
	f(float32(math.Ldexp(1, -25)), 0x0000)      // half of it: ties to even, 0
	f(float32(math.Ldexp(1.5, -25)), 0x0001)    // above the tie
	f(float32(math.Ldexp(1, -14)), 0x0400)      // smallest normal
	f(float32(math.Ldexp(1023, -24)), 0x03ff)   // largest subnormal
	f(float32(math.Ldexp(1023.5, -24)), 0x0400) // rounds up into normals
	f(1+float32(math.Ldexp(1, -11)), 0x3c00)    // tie, even stays
	f(1+float32(math.Ldexp(3, -11)), 0x3c02)    // tie, odd rounds up
	if got := Float32ToFloat16(float32(math.NaN())); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Fatalf("NaN → %#04x, not a NaN", got)
	}
}

func TestFloat16RoundTripAllHalves(t *testing.T) {
	// Every half value widens exactly and narrows back to itself.
	for h := 0; h < 1<<16; h++ {
		f := Float16ToFloat32(uint16(h))
		if math.IsNaN(float64(f)) {
			if Float32ToFloat16(f)&0x7fff <= 0x7c00 {
				t.Fatalf("NaN %#04x lost", h)
			}
			continue
		}
		if got := Float32ToFloat16(f); got != uint16(h) {
			t.Fatalf("%#04x → %g → %#04x", h, f, got)
		}
	}
}

func TestFloat16NearestAgainstFloat64(t *testing.T) {
	// For values across the half range, the chosen half is at least as
	// close as its neighbours.
	for i := 0; i < 200000; i++ {
		v := float32(math.Sin(float64(i)*0.37) * math.Pow(2, float64(i%40-24)))
		h := Float32ToFloat16(v)
		if h&0x7c00 == 0x7c00 {
			continue
		}
		got := math.Abs(float64(Float16ToFloat32(h)) - float64(v))
		for _, n := range []uint16{h - 1, h + 1} {
			if n&0x7c00 == 0x7c00 || (n^h)&0x8000 != 0 {
				continue
			}
			if d := math.Abs(float64(Float16ToFloat32(n)) - float64(v)); d < got {
				t.Fatalf("%g → %#04x (err %g) but %#04x is closer (err %g)", v, h, got, n, d)
			}
		}
	}
}

func TestBFloat16(t *testing.T) {
	f := func(in float32, want uint16) {
		t.Helper()
		if got := Float32ToBFloat16(in); got != want {
			t.Fatalf("Float32ToBFloat16(%g) = %#04x, want %#04x", in, got, want)
		}
	}
	f(1, 0x3f80)
	f(-2, 0xc000)
	f(math.Float32frombits(0x3f808000), 0x3f80) // tie, even stays
	f(math.Float32frombits(0x3f818000), 0x3f82) // tie, odd rounds up
	f(math.Float32frombits(0x3f808001), 0x3f81)
	f(math.MaxFloat32, 0x7f80) // rounds to Inf, as torch does
	if got := Float32ToBFloat16(float32(math.NaN())); got&0x7f80 != 0x7f80 || got&0x7f == 0 {
		t.Fatalf("NaN → %#04x, not a NaN", got)
	}
	for h := 0; h < 1<<16; h++ {
		v := BFloat16ToFloat32(uint16(h))
		if math.IsNaN(float64(v)) {
			continue
		}
		if got := Float32ToBFloat16(v); got != uint16(h) {
			t.Fatalf("%#04x → %g → %#04x", h, v, got)
		}
	}
}
