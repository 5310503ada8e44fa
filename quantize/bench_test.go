package quantize

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkGPTQLayer quantizes one 4096 x 4096 Linear (Qwen-7B's attn.c_proj shape) from
// 2048 calibration rows: the Hessian, the inverse Cholesky and the column sweep.
func BenchmarkGPTQLayer(b *testing.B) {
	const n, k, rows = 4096, 4096, 2048
	rng := rand.New(rand.NewPCG(1, 1))
	w := make([]float32, n*k)
	for i := range w {
		w[i] = float32(0.02 * rng.NormFloat64())
	}
	x := make([]float32, rows*k)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h := NewHessian(k)
		for s := 0; s < rows/512; s++ {
			if err := h.Add(x[s*512*k:(s+1)*512*k], 512); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := GPTQ(w, n, k, h, DefaultOptions()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHessianAdd512 accumulates one 512-token calibration sample into the Hessians of a
// Qwen-7B block's four distinct inputs (hidden 4096 three times, MLP width 11008 once).
func BenchmarkHessianAdd512(b *testing.B) {
	rng := rand.New(rand.NewPCG(2, 2))
	hs := []*Hessian{NewHessian(4096), NewHessian(4096), NewHessian(4096), NewHessian(11008)}
	xs := make([][]float32, len(hs))
	for i, h := range hs {
		xs[i] = make([]float32, 512*h.K)
		for j := range xs[i] {
			xs[i][j] = float32(rng.NormFloat64())
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, h := range hs {
			if err := h.Add(xs[j], 512); err != nil {
				b.Fatal(err)
			}
		}
	}
}
