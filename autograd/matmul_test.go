package autograd

import (
	"math"
	"math/rand/v2"
	"testing"

	"gorgonia.org/tensor"
)

// TestMatmulWeights: the float32 products of a Linear (forward x W^T and backward dy W) on
// bf16 and float32 weights agree with the float64 path (gonum) on the same values, for a
// prefill-sized batch of rows and a single decoding row.
func TestMatmulWeights(t *testing.T) {
	// Measured: at most 4.3e-7 relative to the largest |element|; float32 rounding over k
	// terms of this size.
	const tol = 4e-6
	r := rand.New(rand.NewPCG(5, 6))
	const m, k = 67, 45 // W [m, k]
	bits := make([]uint16, m*k)
	w64 := make([]float64, m*k)
	w32 := make([]float32, m*k)
	for i := range bits {
		bits[i] = uint16(math.Float32bits(float32(r.NormFloat64())) >> 16)
		w32[i] = bf16(bits[i])
		w64[i] = float64(w32[i])
	}
	weights := map[string]*tensor.Dense{
		"bf16":    tensor.New(tensor.WithShape(m, k), tensor.WithBacking(bits)),
		"float32": tensor.New(tensor.WithShape(m, k), tensor.WithBacking(w32)),
	}
	wd64 := tensor.New(tensor.WithShape(m, k), tensor.WithBacking(w64))
	for name, w := range weights {
		for _, n := range []int{1, 3, 70} {
			x := make([]float32, n*k)
			g := make([]float32, n*m)
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			for i := range g {
				g[i] = float32(r.NormFloat64())
			}
			y, dx := make([]float32, n*m), make([]float32, n*k)
			if err := matmulNT(x, n, k, w, m, y, 1); err != nil {
				t.Fatal(err)
			}
			if err := matmulNN(g, n, m, w, k, dx, 1); err != nil {
				t.Fatal(err)
			}
			y64, dx64 := make([]float64, n*m), make([]float64, n*k)
			if err := matmulNT(widen64(x), n, k, wd64, m, y64, 1); err != nil {
				t.Fatal(err)
			}
			if err := matmulNN(widen64(g), n, m, wd64, k, dx64, 1); err != nil {
				t.Fatal(err)
			}
			if d := relToMax(y, y64); d > tol {
				t.Errorf("%s weight, %d rows: x W^T differs from float64 by %.3g", name, n, d)
			}
			if d := relToMax(dx, dx64); d > tol {
				t.Errorf("%s weight, %d rows: dy W differs from float64 by %.3g", name, n, d)
			}
		}
	}
}

func widen64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// relToMax is max |a-b| / max |b|.
func relToMax(a []float32, b []float64) float64 {
	d, m := 0.0, 0.0
	for i := range a {
		d = max(d, math.Abs(float64(a[i])-b[i]))
		m = max(m, math.Abs(b[i]))
	}
	return d / m
}
