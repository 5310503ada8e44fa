//go:build qtcuda || cudaemu

package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/qwen-tune/qwen-tune/autograd"
	"gorgonia.org/tensor"
)

// randInt4 is a random GPTQ layer of k inputs and n outputs: random codes and zeros, fp16
// scales about those of a quantized weight of std 0.02, groups of `group` inputs (-1: one
// group), in act-order (g_idx of a random permutation, as GPTQ's desc_act writes it) or in
// order, with a random bias or none.
func randInt4(r *rand.Rand, bits, k, n, group int, actOrder, bias bool) *autograd.Int4 {
	per := 32 / bits
	size := group
	if group == -1 {
		size = k
	}
	w := &autograd.Int4{Name: fmt.Sprintf("random %d-bit layer", bits), Bits: bits, K: k, N: n, G: k / size,
		QWeight: make([]int32, k/per*n), QZeros: make([]int32, k/size*n/per), Scales: make([]float32, k/size*n), GIdx: make([]int32, k)}
	for i := range w.QWeight {
		w.QWeight[i] = int32(r.Uint32())
	}
	for i := range w.QZeros {
		w.QZeros[i] = int32(r.Uint32())
	}
	for i := range w.Scales { // 10 mantissa bits: fp16 values
		w.Scales[i] = math.Float32frombits(math.Float32bits(float32(0.06/float64(uint(1)<<bits)*(0.5+r.Float64()))) &^ 0x1fff)
	}
	order := make([]int, k)
	for i := range order {
		order[i] = i
	}
	if actOrder {
		order = r.Perm(k)
	}
	for i, kk := range order {
		w.GIdx[kk] = int32(i / size)
	}
	if bias {
		w.Bias = autograd.Ref.Normal(r, n)
	}
	return w
}

// cpuInt4 is the CPU op Int4Linear of x [m, K].
func cpuInt4(w *autograd.Int4, x []float32, m int) []float32 {
	y, err := autograd.Ref.Int4Linear(w, tensor.New(tensor.WithShape(m, w.K), tensor.WithBacking(x)))
	if err != nil {
		panic(err) // shapes are the selftest's own
	}
	return y.Data().([]float32)
}

// int4Checks are the GPTQ kernels against the CPU op and Int4.Dequantize, at Qwen-7B's widths
// (c_proj [4096, 4096], w1 [4096 -> 11008], mlp.c_proj [11008 -> 4096]) with its group size
// 128, and 32, 64 and one group, in act-order and in order; 2 and 8 bits and the edges (N not
// a multiple of 32, groups smaller than a packed word or straddling words, K not a multiple
// of 16 or 8) on small shapes.
func int4Checks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	type shape struct {
		bits, k, n, group int
		actOrder, bias    bool
	}
	name := func(s shape) string {
		order := "in order"
		if s.actOrder {
			order = "act-order"
		}
		return fmt.Sprintf("%d-bit [%d -> %d], group %d, %s", s.bits, s.k, s.n, s.group, order)
	}
	run := func(op string, s shape, tol float64, bf16Out bool, want func(w *autograd.Int4, x []float32) []float32,
		launch func(w *Int4Weights, x, out *Buffer) error) {
		w := randInt4(r, s.bits, s.k, s.n, s.group, s.actOrder, s.bias)
		x := autograd.Ref.Normal(r, s.k)
		g := &gpuCase{d: d, bf16Out: bf16Out}
		dw, err := d.UploadInt4(w)
		if err != nil {
			checks = append(checks, Check{Op: op, Shape: name(s), Err: err})
			return
		}
		defer dw.Free(d)
		xb := g.up(x, "x")
		var out *Buffer
		if bf16Out {
			out = g.outBF16(s.n*s.k, "W^T")
		} else {
			out = g.out(s.n, "y")
		}
		checks = append(checks, g.result(op, name(s), tol, func() error { return launch(dw, xb, out) }, out, want(w, x)))
	}
	// Relative errors measured on the emulator: 5.1e-7 to 6.5e-7 at Qwen-7B's widths, 4.8e-8
	// to 2.5e-7 on the small shapes (fp32 sums of up to 11008 terms in another order than the
	// CPU's). The emulator fuses only the kernel's explicit fmaf; nvcc also contracts the
	// group's sum x q - zero sum x into an FMA, which moves the rounding, not its size.
	// Tolerance 7e-6, ten times the worst.
	gemv := func(w *autograd.Int4, x []float32) []float32 { return cpuInt4(w, x, 1) }
	for _, s := range []shape{
		{4, 4096, 4096, 128, false, true}, {4, 4096, 11008, 128, true, false}, {4, 11008, 4096, 128, false, false},
		{4, 4096, 4096, 32, true, true}, {4, 4096, 4096, 64, false, false}, {4, 4096, 4096, -1, false, true},
		{4, 112, 40, 16, false, true}, {2, 96, 48, 32, true, false}, {2, 64, 32, 8, false, true},
		{8, 100, 36, 10, false, true}, {8, 256, 64, 64, true, false},
	} {
		run("gemv_int4", s, 7e-6, false, gemv, func(w *Int4Weights, x, y *Buffer) error { return d.GemvInt4(y, x, w) })
	}
	// W^T in bf16: scale (code - zero) is exact in float32 (an fp16 scale times a small
	// integer), so both sides round the same value once: equal.
	dequant := func(w *autograd.Int4, _ []float32) []float32 {
		v := w.Dequantize()
		for i, f := range v {
			v[i] = autograd.Ref.BF16(bf16Round(f))
		}
		return v
	}
	for _, s := range []shape{
		{4, 4096, 11008, 128, false, false}, {4, 4096, 4096, 64, true, false}, {4, 104, 24, -1, false, false},
		{8, 100, 36, 10, false, false}, {2, 96, 48, 32, true, false},
	} {
		run("dequant_int4_bf16", s, 0, true, dequant, func(w *Int4Weights, _, out *Buffer) error { return d.DequantInt4BF16(out, w) })
	}
	{ // float32 bias over the rows of a prefill's GEMM output
		rows, cols := 5, 300
		y0, bias := autograd.Ref.Normal(r, rows*cols), autograd.Ref.Normal(r, cols)
		want := make([]float32, rows*cols)
		for i := range want {
			want[i] = y0[i] + bias[i%cols]
		}
		g := &gpuCase{d: d}
		yb, bb := g.up(y0, "y"), g.up(bias, "bias")
		checks = append(checks, g.result("bias_f32", fmt.Sprintf("[%d, %d]", rows, cols), 0, func() error { return d.BiasF32(yb, bb, rows, cols) }, yb, want))
	}
	return checks
}
