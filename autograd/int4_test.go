package autograd

import (
	"math/rand/v2"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// randomInt4 packs random 4-bit codes for K inputs and N outputs with act-order-like g_idx.
func randomInt4(rng *rand.Rand, k, n, groups int) (*Int4, []float32) {
	w := &Int4{Name: "test", Bits: 4, K: k, N: n, G: groups, QWeight: make([]int32, k/8*n), QZeros: make([]int32, groups*n/8),
		Scales: make([]float32, groups*n), GIdx: make([]int32, k), Bias: make([]float32, n)}
	codes := make([]uint32, k*n)
	zeros := make([]uint32, groups*n)
	for i := range codes {
		codes[i] = uint32(rng.IntN(16))
		kk, nn := i/n, i%n
		w.QWeight[(kk/8)*n+nn] |= int32(codes[i] << (4 * (kk % 8)))
	}
	for i := range zeros {
		zeros[i] = uint32(1 + rng.IntN(15))
		g, nn := i/n, i%n
		w.QZeros[g*n/8+nn/8] |= int32((zeros[i] - 1) << (4 * (nn % 8)))
		w.Scales[i] = float32(0.01 + 0.05*rng.Float64())
	}
	for j := range w.GIdx {
		w.GIdx[j] = int32(rng.IntN(groups))
	}
	for j := range w.Bias {
		w.Bias[j] = float32(rng.NormFloat64())
	}
	dense := make([]float32, n*k) // [N, K], PyTorch layout
	for kk := 0; kk < k; kk++ {
		g := int(w.GIdx[kk])
		for nn := 0; nn < n; nn++ {
			dense[nn*k+kk] = w.Scales[g*n+nn] * float32(int(codes[kk*n+nn])-int(zeros[g*n+nn]))
		}
	}
	return w, dense
}

// TestInt4Linear: forward equals x W^T + b with the documented dequantization, and the input
// gradient equals the dense Linear's.
func TestInt4Linear(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	const m, k, n = 5, 32, 16
	w, dense := randomInt4(rng, k, n, 4)
	x := make([]float32, m*k)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	run := func(quant bool) ([]float32, []float32) {
		g := G.NewGraph()
		xn := G.NewMatrix(g, tensor.Float32, G.WithShape(m, k), G.WithName("x"), G.WithValue(tensor.New(tensor.WithShape(m, k), tensor.WithBacking(append([]float32(nil), x...)))))
		var y *G.Node
		var err error
		if quant {
			y, err = Int4Linear(xn, w)
		} else {
			wn := G.NewMatrix(g, tensor.Float32, G.WithShape(n, k), G.WithName("w"), G.WithValue(tensor.New(tensor.WithShape(n, k), tensor.WithBacking(dense))))
			bn := G.NewVector(g, tensor.Float32, G.WithShape(n), G.WithName("b"), G.WithValue(tensor.New(tensor.WithShape(n), tensor.WithBacking(w.Bias))))
			y, err = Linear(xn, wn, bn, false, false)
		}
		if err != nil {
			t.Fatal(err)
		}
		var yv G.Value
		G.Read(y, &yv)
		loss := G.Must(G.Sum(G.Must(G.HadamardProd(y, y))))
		if _, err := G.Grad(loss, xn); err != nil {
			t.Fatal(err)
		}
		vm := G.NewTapeMachine(g)
		defer vm.Close()
		if err := vm.RunAll(); err != nil {
			t.Fatal(err)
		}
		gx, err := xn.Grad()
		if err != nil {
			t.Fatal(err)
		}
		return append([]float32(nil), yv.Data().([]float32)...), append([]float32(nil), gx.Data().([]float32)...)
	}
	yq, gq := run(true)
	yd, gd := run(false)
	f64 := func(a []float32) []float64 {
		o := make([]float64, len(a))
		for i, v := range a {
			o[i] = float64(v)
		}
		return o
	}
	if e := refmath.RelDiff(f64(yq), f64(yd)); e > 1e-6 { // measured 9.2e-8
		t.Errorf("Int4Linear forward differs from the dense reference by %.3g", e)
	}
	if e := refmath.RelDiff(f64(gq), f64(gd)); e > 2e-6 { // measured 1.2e-7
		t.Errorf("Int4Linear input gradient differs by %.3g", e)
	}
}
