package refmath

import (
	"math"
	"testing"
)

func TestRelDiff(t *testing.T) {
	if d := RelDiff([]float32{3, 4}, []float64{0, 0.5}); math.Abs(d-math.Sqrt(9+3.5*3.5)/0.5) > 1e-12 {
		t.Fatalf("RelDiff = %v", d)
	}
	if d := RelDiff([]float64{1, -2}, []float64{1, -2}); d != 0 {
		t.Fatalf("RelDiff of equal vectors = %v", d)
	}
}

func TestRelDiffOrNorm(t *testing.T) {
	if d := RelDiffOrNorm([]float64{3e-16, -4e-16}, []float64{0, 0}); math.Abs(d-5e-16) > 1e-28 {
		t.Fatalf("RelDiffOrNorm against zeros = %v, want 5e-16", d)
	}
	if d, want := RelDiffOrNorm([]float32{3, 4}, []float64{0, 0.5}), RelDiff([]float32{3, 4}, []float64{0, 0.5}); d != want {
		t.Fatalf("RelDiffOrNorm = %v, RelDiff %v", d, want)
	}
}

func TestSoftmax(t *testing.T) {
	// Shifted by a large constant, the result must not overflow and must stay the same.
	s := []float64{1001, 1002, 1003}
	Softmax(s)
	e := []float64{1, math.E, math.E * math.E}
	sum := e[0] + e[1] + e[2]
	for i := range s {
		if math.Abs(s[i]-e[i]/sum) > 1e-15 {
			t.Fatalf("Softmax = %v, want %v", s, []float64{e[0] / sum, e[1] / sum, e[2] / sum})
		}
	}
}
