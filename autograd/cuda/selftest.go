//go:build qtcuda || cudaemu

package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/qwen-tune/qwen-tune/autograd"
	"gorgonia.org/tensor"
)

// Check is one kernel compared with its CPU twin on random inputs.
type Check struct {
	Op        string
	Shape     string
	RelErr    float64 // ||gpu - cpu|| / ||cpu||
	Tol       float64
	Unwritten int // outputs still NaN from the poisoning
	Err       error
}

// OK reports whether the check passed.
func (c Check) OK() bool { return c.Err == nil && c.Unwritten == 0 && c.RelErr <= c.Tol }

func randBF16(r *rand.Rand, n int, std float64) []uint16 {
	v := make([]uint16, n)
	for i := range v {
		b := math.Float32bits(float32(std * r.NormFloat64()))
		v[i] = uint16((b + 0x7fff + (b>>16)&1) >> 16)
	}
	return v
}

func compare(gpu, cpu []float32) (float64, int) {
	var num, den float64
	nan := 0
	for i := range cpu {
		if math.IsNaN(float64(gpu[i])) {
			nan++
			continue
		}
		if math.IsInf(float64(cpu[i]), 0) && gpu[i] == cpu[i] { // an infinite value both agree on (-inf lse)
			continue
		}
		d := float64(gpu[i]) - float64(cpu[i])
		num += d * d
		den += float64(cpu[i]) * float64(cpu[i])
	}
	if den == 0 {
		return math.Sqrt(num), nan
	}
	return math.Sqrt(num / den), nan
}

// run uploads inputs, poisons the output, launches, downloads and compares with want.
type gpuCase struct {
	d       *Device
	bufs    []*Buffer
	err     error
	bf16Out bool // the result buffer holds bf16
}

// outBF16 is a poisoned bf16 output buffer.
func (g *gpuCase) outBF16(n int, what string) *Buffer { return g.poisoned(int64(n+1)/2*4, what) }

func (g *gpuCase) up(v any, what string) *Buffer {
	if g.err != nil {
		return nil
	}
	var b *Buffer
	switch s := v.(type) {
	case []float32:
		b, g.err = Upload(g.d, s, what)
	case []uint16:
		b, g.err = Upload(g.d, s, what)
	case []int32:
		b, g.err = Upload(g.d, s, what)
	case []float64:
		b, g.err = Upload(g.d, s, what)
	case []byte:
		b, g.err = Upload(g.d, s, what)
	}
	g.bufs = append(g.bufs, b)
	return b
}

// out is a poisoned float32 output buffer.
func (g *gpuCase) out(n int, what string) *Buffer { return g.poisoned(int64(n)*4, what) }

func (g *gpuCase) poisoned(bytes int64, what string) *Buffer {
	if g.err != nil {
		return nil
	}
	var b *Buffer
	if b, g.err = g.d.Alloc(bytes, what); g.err == nil {
		g.err = g.d.Poison(b)
	}
	g.bufs = append(g.bufs, b)
	return b
}

func (g *gpuCase) result(op, shape string, tol float64, launch func() error, out *Buffer, want []float32) Check {
	return g.results(op, shape, launch, output{buf: out, want: want, tol: tol, bf16: g.bf16Out})[0]
}

// output is one output buffer of a launch and its CPU value.
type output struct {
	what string // appended to the check's op ("" for none)
	buf  *Buffer
	want []float32
	tol  float64
	bf16 bool // the buffer holds bf16
	// cols > 0: want is [rows, cols] read from rows stride elements apart, from element off
	cols, stride, off int
}

// results launches, then checks every output; it frees the case's buffers.
func (g *gpuCase) results(op, shape string, launch func() error, outs ...output) []Check {
	defer func() {
		for _, b := range g.bufs {
			g.d.Free(b)
		}
	}()
	checks := make([]Check, len(outs))
	for i, o := range outs {
		checks[i] = Check{Op: op, Shape: shape, Tol: o.tol}
		if o.what != "" {
			checks[i].Op += " (" + o.what + ")"
		}
	}
	err := g.err
	if err == nil {
		err = launch()
	}
	if err == nil {
		err = g.d.Sync()
	}
	for i, o := range outs {
		if err != nil {
			checks[i].Err = err
			continue
		}
		n := len(o.want)
		if o.cols > 0 {
			n = (n/o.cols-1)*o.stride + o.off + o.cols
		}
		got := make([]float32, n)
		if o.bf16 {
			bits := make([]uint16, n)
			checks[i].Err = Download(g.d, bits, o.buf)
			got = autograd.Ref.Widen(bits)
		} else {
			checks[i].Err = Download(g.d, got, o.buf)
		}
		if o.cols > 0 {
			view := make([]float32, 0, len(o.want))
			for r := 0; r < len(o.want)/o.cols; r++ {
				view = append(view, got[r*o.stride+o.off:][:o.cols]...)
			}
			got = view
		}
		checks[i].RelErr, checks[i].Unwritten = compare(got, o.want)
	}
	return checks
}

// cpuRMSNorm is the CPU op's RMSNorm of x [n, h] with a bf16 weight, the kernels' twin (shapes
// that do not match are a bug in the selftest itself).
func cpuRMSNorm(x []float32, w []uint16, n, h int) []float32 {
	y, err := autograd.Ref.RMSNorm(tensor.New(tensor.WithShape(n, h), tensor.WithBacking(x)), tensor.New(tensor.WithShape(h), tensor.WithBacking(w)), 1e-6)
	if err != nil {
		panic(err)
	}
	return y.Data().([]float32)
}

// SelfTest runs every kernel against the CPU implementation on random inputs of Qwen-7B's
// widths (and odd sizes that exercise the edges).
func SelfTest(d *Device, seed uint64) []Check {
	r := rand.New(rand.NewPCG(seed, 99))
	var checks []Check
	for _, group := range checkGroups {
		checks = append(checks, group(d, r)...)
	}
	return checks
}

// checkGroups are the self-test's groups of kernel checks, run in this order.
var checkGroups = []func(d *Device, r *rand.Rand) []Check{inferenceChecks, int4Checks, trainChecks, chunkLossChecks, paramSetChecks, gptqChecks, opTableChecks}

// inferenceChecks are the kernels and products of inference on dense weights.
func inferenceChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	for _, s := range [][2]int{{3, 4096}, {5, 100}} { // RMSNorm
		n, h := s[0], s[1]
		x, w := autograd.Ref.Normal(r, n*h), randBF16(r, h, 1)
		want := cpuRMSNorm(x, w, n, h)
		g := &gpuCase{d: d}
		xb, wb, yb := g.up(x, "x"), g.up(w, "w"), g.out(n*h, "y")
		checks = append(checks, g.result("rmsnorm_bf16", fmt.Sprintf("[%d, %d]", n, h), 1e-5, func() error { return d.RMSNormBF16(yb, xb, wb, n, h, 1e-6) }, yb, want))
	}
	for _, n := range []int{11008 * 3, 1000} { // SwiGLU
		a, gt := autograd.Ref.Normal(r, n), autograd.Ref.Normal(r, n)
		want := autograd.Ref.SwiGLU([]*tensor.Dense{tensor.New(tensor.WithShape(n), tensor.WithBacking(a)), tensor.New(tensor.WithShape(n), tensor.WithBacking(gt))}, 0)
		g := &gpuCase{d: d}
		ab, gb, yb := g.up(a, "a"), g.up(gt, "g"), g.out(n, "y")
		checks = append(checks, g.result("swiglu", fmt.Sprintf("[%d]", n), 1e-5, func() error { return d.SwiGLU(yb, ab, gb, int64(n)) }, yb, want.Data().([]float32)))
	}
	{ // Rotary with per-row NTK bases and a position offset, from a strided view
		b, t, h, dim, past := 2, 5, 32, 128, 3000
		width, stride := h*dim, 3*h*dim
		x := autograd.Ref.Normal(r, b*t*h*dim)
		view := make([]float32, b*t*stride) // x in the middle part of each row, as q or k in a fused qkv
		for i := 0; i < b*t; i++ {
			copy(view[i*stride+width:], x[i*width:(i+1)*width])
		}
		bases := []float64{10000, 10000 * math.Pow(3, 128.0/126)}
		want := autograd.Ref.Rotary(tensor.New(tensor.WithShape(b, t, h, dim), tensor.WithBacking(x)), &autograd.Step{Batch: b, Seq: t, Past: past, Base: bases}, false)
		g := &gpuCase{d: d}
		xb, bb, yb := g.up(view, "x"), g.up(bases, "base"), g.out(b*t*width, "y")
		checks = append(checks, g.result("rotary", fmt.Sprintf("[%d, %d, %d, %d] at %d, stride %d", b, t, h, dim, past, stride), 1e-5, func() error {
			return d.Rotary(yb, xb.Slice(int64(width*4), xb.Bytes-int64(width*4)), bb, b, t, h, dim, past, stride, width)
		}, yb, want.Data().([]float32)))
	}
	{ // Embedding gather
		vocab, h := 1000, 4096
		w := randBF16(r, vocab*h, 0.02)
		ids := []int32{0, 999, 17, 17, 512}
		want := make([]float32, len(ids)*h)
		autograd.Ref.Gather(tensor.New(tensor.WithShape(vocab, h), tensor.WithBacking(w)), ids, h, want)
		g := &gpuCase{d: d}
		wb, ib, yb := g.up(w, "w"), g.up(ids, "ids"), g.out(len(ids)*h, "y")
		checks = append(checks, g.result("gather_bf16", fmt.Sprintf("%d ids of [%d, %d]", len(ids), vocab, h), 0, func() error { return d.GatherBF16(yb, wb, ib, len(ids), h, vocab) }, yb, want))
	}
	for _, s := range [][2]int{{12288, 4096}, {4096, 11008}, {37, 64}} { // GEMV
		n, k := s[0], s[1]
		x, w, bias := autograd.Ref.Normal(r, k), randBF16(r, n*k, 0.02), randBF16(r, n, 0.1)
		want := make([]float32, n)
		autograd.Ref.Linear(x, 1, k, tensor.New(tensor.WithShape(n, k), tensor.WithBacking(w)), n, want, 1)
		for i := range want {
			want[i] += autograd.Ref.BF16(bias[i])
		}
		g := &gpuCase{d: d}
		xb, wb, bb, yb := g.up(x, "x"), g.up(w, "w"), g.up(bias, "bias"), g.out(n, "y")
		checks = append(checks, g.result("gemv_bf16", fmt.Sprintf("[%d, %d]", n, k), 1e-5, func() error { return d.GemvBF16(yb, xb, wb, bb, n, k) }, yb, want))
	}
	for _, L := range []int{1, 300, 4000, 256} { // decode attention over a bf16 cache
		b, h, dim, maxLen := 2, 4, 128, 4096
		q, kc, vc := autograd.Ref.Normal(r, b*h*dim), randBF16(r, b*maxLen*h*dim, 1), randBF16(r, b*maxLen*h*dim, 1)
		scale := float32(1.3 / math.Sqrt(float64(dim)))
		want := autograd.Ref.Decode(q, autograd.Ref.Widen(kc), autograd.Ref.Widen(vc), b, h, dim, maxLen, L, float64(scale))
		g := &gpuCase{d: d}
		qb, kb, vb, ob, pb := g.up(q, "q"), g.up(kc, "k cache"), g.up(vc, "v cache"), g.out(b*h*dim, "out"), g.up([]int32{int32(L - 1)}, "position")
		parts, err := d.NewDecodeParts(b, h, dim, maxLen)
		if err != nil {
			checks = append(checks, Check{Op: "attention_decode", Err: err})
			continue
		}
		checks = append(checks, g.result("attention_decode", fmt.Sprintf("%d keys, [%d, %d, %d]", L, b, h, dim), 1e-5, func() error {
			return d.AttentionDecode(ob, qb, kb, vb, parts, b, h, dim, maxLen, pb, scale, 0)
		}, ob, want))
		parts.Free(d)
	}
	{ // residual add fused with RMSNorm
		n, h := 2, 4096
		x, res, w := autograd.Ref.Normal(r, n*h), autograd.Ref.Normal(r, n*h), randBF16(r, h, 1)
		sum := make([]float32, n*h)
		for i := range sum {
			sum[i] = x[i] + res[i]
		}
		want := cpuRMSNorm(sum, w, n, h)
		g := &gpuCase{d: d}
		xb, rb, wb, yb := g.up(x, "x"), g.up(res, "r"), g.up(w, "w"), g.out(n*h, "y")
		checks = append(checks, g.result("add_rmsnorm_bf16", fmt.Sprintf("[%d, %d]", n, h), 1e-5, func() error { return d.AddRMSNormBF16(yb, xb, rb, wb, n, h, 1e-6) }, yb, want))
	}
	{ // KV append from a fused qkv row into the bf16 caches
		b, width, maxLen, pos := 2, 256, 16, 5
		qkv := autograd.Ref.Normal(r, b*3*width)
		cache := randBF16(r, b*maxLen*width, 1)
		want := autograd.Ref.Widen(cache)
		for bi := 0; bi < b; bi++ {
			for i := 0; i < width; i++ {
				want[(bi*maxLen+pos)*width+i] = autograd.Ref.BF16(bf16Round(qkv[bi*3*width+width+i]))
			}
		}
		g := &gpuCase{d: d, bf16Out: true}
		qb, kb, vb := g.up(qkv, "qkv"), g.up(slices.Clone(cache), "k cache"), g.up(slices.Clone(cache), "v cache")
		checks = append(checks, g.result("kv_append", fmt.Sprintf("%d rows of %d at %d", b, width, pos), 0, func() error {
			return d.KVAppend(kb, vb, qb.Slice(int64(width*4), qb.Bytes-int64(width*4)), qb.Slice(int64(2*width*4), qb.Bytes-int64(2*width*4)), b, 1, width, 3*width, 3*width, maxLen, pos)
		}, kb, want))
	}
	{ // residual add, bf16 rounding of strided rows, bias
		n := 4096*3 + 5
		a, c := autograd.Ref.Normal(r, n), autograd.Ref.Normal(r, n)
		want := make([]float32, n)
		for i := range want {
			want[i] = a[i] + c[i]
		}
		g := &gpuCase{d: d}
		ab, cb, yb := g.up(a, "a"), g.up(c, "b"), g.out(n, "y")
		checks = append(checks, g.result("add_f32", fmt.Sprintf("[%d]", n), 0, func() error { return d.Add(yb, ab, cb, int64(n)) }, yb, want))

		rows, cols, stride := 3, 4096, 3*4096
		x := autograd.Ref.Normal(r, rows*stride)
		wantB := make([]float32, rows*cols)
		for i := 0; i < rows; i++ {
			for j := 0; j < cols; j++ {
				wantB[i*cols+j] = autograd.Ref.BF16(bf16Round(x[i*stride+j]))
			}
		}
		g = &gpuCase{d: d, bf16Out: true}
		xb, ob := g.up(x, "x"), g.outBF16(rows*cols, "y")
		checks = append(checks, g.result("to_bf16_rows", fmt.Sprintf("[%d, %d] of stride %d", rows, cols, stride), 0, func() error { return d.ToBF16Rows(ob, xb, rows, cols, stride) }, ob, wantB))

		y0, bias := autograd.Ref.Normal(r, rows*cols), randBF16(r, cols, 1)
		wantBias := make([]float32, rows*cols)
		for i := range wantBias {
			wantBias[i] = y0[i] + autograd.Ref.BF16(bias[i%cols])
		}
		g = &gpuCase{d: d}
		yb2, bb := g.up(y0, "y"), g.up(bias, "bias")
		checks = append(checks, g.result("bias_bf16", fmt.Sprintf("[%d, %d]", rows, cols), 0, func() error { return d.BiasBF16(yb2, bb, rows, cols) }, yb2, wantBias))
	}
	for _, s := range [][3]int{{7, 12288, 4096}, {130, 4096, 11008}, {1, 64, 64}} { // cuBLAS GEMM, bf16 in, fp32 out
		m, n, k := s[0], s[1], s[2]
		x, w := randBF16(r, m*k, 1), randBF16(r, n*k, 0.02)
		want := make([]float32, m*n)
		autograd.Ref.Linear(autograd.Ref.Widen(x), m, k, tensor.New(tensor.WithShape(n, k), tensor.WithBacking(w)), n, want, 1)
		g := &gpuCase{d: d}
		xb, wb, yb := g.up(x, "x"), g.up(w, "w"), g.out(m*n, "y")
		checks = append(checks, g.result("cublasGemmEx bf16", fmt.Sprintf("[%d, %d] x [%d, %d]^T", m, k, n, k), 1e-5, func() error { return d.GemmBF16(yb, xb, wb, m, n, k, n, false) }, yb, want))
	}
	for _, c := range []struct{ heads, t, past, lognSeq int }{{4, 37, 0, 0}, {2, 600, 100, 0}, {2, 9, 40, 16}} { // prefill attention
		h, dim := c.heads, 128
		width, maxLen := h*dim, c.past+c.t+3
		q := randBF16(r, c.t*width, 1)
		kc, vc := randBF16(r, maxLen*width, 1), randBF16(r, maxLen*width, 1)
		scale := float32(1 / math.Sqrt(float64(dim)))
		st := &autograd.Step{Batch: 1, Seq: c.t, Past: c.past, LogNSeq: c.lognSeq}
		want := autograd.Ref.Prefill(autograd.Ref.Widen(q), autograd.Ref.Widen(kc), autograd.Ref.Widen(vc), h, dim, c.past, c.t, float64(scale), st)
		g := &gpuCase{d: d}
		qb, kb, vb, ob := g.up(q, "q"), g.up(kc, "k cache"), g.up(vc, "v cache"), g.out(c.t*width, "out")
		pre := &prefillScratch{q: qb, chunk: min(c.t, 128)}
		pre.elems = int64(h) * int64(max(pre.chunk*(c.past+c.t), 64))
		pre.s = g.out(int(pre.elems), "scores")
		// bf16 probabilities (as flash attention keeps them for the second product): 4e-3
		checks = append(checks, g.result("attention prefill (cuBLAS + causal_softmax)", fmt.Sprintf("%d queries after %d, %d heads, LogN %d", c.t, c.past, h, c.lognSeq), 4e-3, func() error {
			return d.attentionPrefill(ob, false, pre, kb, vb, h, dim, c.past, c.t, scale, c.lognSeq)
		}, ob, want))
	}
	for _, s := range [][2]int{{11008, 4096}, {176, 64}} { // up and gate GEMVs fused with SwiGLU
		n, k := s[0], s[1]
		x, w1, w2 := autograd.Ref.Normal(r, k), randBF16(r, n*k, 0.05), randBF16(r, n*k, 0.05)
		up, gate := make([]float32, n), make([]float32, n)
		autograd.Ref.Linear(x, 1, k, tensor.New(tensor.WithShape(n, k), tensor.WithBacking(w1)), n, up, 1)
		autograd.Ref.Linear(x, 1, k, tensor.New(tensor.WithShape(n, k), tensor.WithBacking(w2)), n, gate, 1)
		want := autograd.Ref.SwiGLU([]*tensor.Dense{tensor.New(tensor.WithShape(n), tensor.WithBacking(up)), tensor.New(tensor.WithShape(n), tensor.WithBacking(gate))}, 0).Data().([]float32)
		g := &gpuCase{d: d}
		xb, ab, bb, yb := g.up(x, "x"), g.up(w1, "w1"), g.up(w2, "w2"), g.out(n, "y")
		checks = append(checks, g.result("gemv_swiglu_bf16", fmt.Sprintf("2 x [%d, %d]", n, k), 1e-5, func() error { return d.GemvSwiGLU(yb, xb, ab, bb, n, k) }, yb, want))
	}
	{ // bf16-output variants of RMSNorm, add + RMSNorm and SwiGLU (inputs of prefill GEMMs)
		n, h := 3, 4096
		x, res, w := autograd.Ref.Normal(r, n*h), autograd.Ref.Normal(r, n*h), randBF16(r, h, 1)
		round := func(v []float32) []float32 {
			out := make([]float32, len(v))
			for i, f := range v {
				out[i] = autograd.Ref.BF16(bf16Round(f))
			}
			return out
		}
		want := cpuRMSNorm(x, w, n, h)
		g := &gpuCase{d: d, bf16Out: true}
		xb, wb, yb := g.up(x, "x"), g.up(w, "w"), g.outBF16(n*h, "y")
		checks = append(checks, g.result("rmsnorm_bf16_out", fmt.Sprintf("[%d, %d]", n, h), 4e-3, func() error { return d.RMSNormBF16Out(yb, xb, wb, n, h, 1e-6) }, yb, round(want)))
		sum := make([]float32, n*h)
		for i := range sum {
			sum[i] = x[i] + res[i]
		}
		want = cpuRMSNorm(sum, w, n, h)
		g = &gpuCase{d: d, bf16Out: true}
		xb, rb, wb, yb := g.up(x, "x"), g.up(res, "r"), g.up(w, "w"), g.outBF16(n*h, "y")
		checks = append(checks, g.result("add_rmsnorm_bf16_out", fmt.Sprintf("[%d, %d]", n, h), 4e-3, func() error { return d.AddRMSNormBF16Out(yb, xb, rb, wb, n, h, 1e-6) }, yb, round(want)))
		m := 11008 * 2
		a, gt := autograd.Ref.Normal(r, m), autograd.Ref.Normal(r, m)
		wantS := autograd.Ref.SwiGLU([]*tensor.Dense{tensor.New(tensor.WithShape(m), tensor.WithBacking(a)), tensor.New(tensor.WithShape(m), tensor.WithBacking(gt))}, 0).Data().([]float32)
		g = &gpuCase{d: d, bf16Out: true}
		ab, gb, sb := g.up(a, "a"), g.up(gt, "g"), g.outBF16(m, "y")
		checks = append(checks, g.result("swiglu_bf16_out", fmt.Sprintf("[%d]", m), 4e-3, func() error { return d.SwiGLUBF16Out(sb, ab, gb, int64(m)) }, sb, round(wantS)))
	}
	{ // rotary of q and k fused with the bf16 cache append, on a fused qkv buffer
		c := newRotaryQKVCase(r)
		t, h, dim, past, maxLen, width, stride := c.t, c.heads, c.dim, c.past, c.maxLen, c.width, c.stride
		qkv, kc, vc, base, wantQ, wantK, wantV := c.qkv, c.kc, c.vc, c.base, c.wantQ, c.wantK, c.wantV
		// One launch per output, on fresh buffers; row i checks buffer i: q rotated in place
		// in the float32 qkv buffer, then k rotated and v copied into the bf16 caches.
		for out, c := range []struct {
			what string
			tol  float64
			want []float32
		}{{"q in place", 1e-5, wantQ}, {"k to the bf16 cache", 1e-3, wantK}, {"v to the bf16 cache", 0, wantV}} {
			g := &gpuCase{d: d, bf16Out: out > 0}
			bufs := []*Buffer{g.up(slices.Clone(qkv), "qkv"), g.up(slices.Clone(kc), "k cache"), g.up(slices.Clone(vc), "v cache")}
			bb, pb := g.up(autograd.InvFreq(base[0], dim), "inverse frequencies"), g.up([]int32{int32(past)}, "position")
			launch := func() error {
				return d.RotaryQKV(bufs[0], bufs[1], bufs[2], bb, pb, t, h, dim, past, stride, 0, width, 2*width, maxLen)
			}
			checks = append(checks, g.result("rotary_qkv ("+c.what+")", fmt.Sprintf("%d tokens at %d, [%d, %d]", t, past, h, dim), c.tol, launch, bufs[out], c.want))
		}
	}
	{ // prefill MLP in bf16: up and gate GEMMs written in bf16, SwiGLU of bf16 inputs
		m, n, k := 5, 688, 256
		x, w := randBF16(r, m*k, 1), randBF16(r, n*k, 0.05)
		full := make([]float32, m*n)
		autograd.Ref.Linear(autograd.Ref.Widen(x), m, k, tensor.New(tensor.WithShape(n, k), tensor.WithBacking(w)), n, full, 1)
		want := make([]float32, m*n)
		for i, f := range full {
			want[i] = autograd.Ref.BF16(bf16Round(f))
		}
		g := &gpuCase{d: d, bf16Out: true}
		xb, wb, yb := g.up(x, "x"), g.up(w, "w"), g.outBF16(m*n, "y")
		checks = append(checks, g.result("cublasGemmEx bf16 out", fmt.Sprintf("[%d, %d] x [%d, %d]^T", m, k, n, k), 4e-3, func() error { return d.GemmBF16Out(yb, xb, wb, m, n, k, n) }, yb, want))
		cnt := 11008
		a, gt := randBF16(r, cnt, 1), randBF16(r, cnt, 1)
		wantS := autograd.Ref.SwiGLU([]*tensor.Dense{tensor.New(tensor.WithShape(cnt), tensor.WithBacking(autograd.Ref.Widen(a))), tensor.New(tensor.WithShape(cnt), tensor.WithBacking(autograd.Ref.Widen(gt)))}, 0).Data().([]float32)
		for i, f := range wantS {
			wantS[i] = autograd.Ref.BF16(bf16Round(f))
		}
		g = &gpuCase{d: d, bf16Out: true}
		ab, gb, sb := g.up(a, "a"), g.up(gt, "g"), g.outBF16(cnt, "y")
		checks = append(checks, g.result("swiglu_bf16", fmt.Sprintf("[%d]", cnt), 4e-3, func() error { return d.SwiGLUBF16(sb, ab, gb, int64(cnt)) }, sb, wantS))
	}
	return checks
}

// GemvSplitBandwidth is GemvBandwidth with split warps per row forced.
func GemvSplitBandwidth(d *Device, n, k, split, reps int) (float64, error) {
	gemvForceSplit = split
	defer func() { gemvForceSplit = 0 }()
	return GemvBandwidth(d, n, k, reps)
}

// GemvBandwidth times the batch-1 bf16 GEMV on a weight of n x k and returns GB/s of weight
// read (the decode floor of a model is its bf16 bytes over this).
func GemvBandwidth(d *Device, n, k, reps int) (float64, error) {
	r := rand.New(rand.NewPCG(5, 5))
	w, err := Upload(d, randBF16(r, n*k, 0.02), "gemv weight")
	if err != nil {
		return 0, err
	}
	defer d.Free(w)
	x, err := Upload(d, autograd.Ref.Normal(r, k), "gemv x")
	if err != nil {
		return 0, err
	}
	defer d.Free(x)
	y, err := d.Alloc(int64(n)*4, "gemv y")
	if err != nil {
		return 0, err
	}
	defer d.Free(y)
	if err := d.GemvBF16(y, x, w, nil, n, k); err != nil { // warm-up
		return 0, err
	}
	if err := d.Sync(); err != nil {
		return 0, err
	}
	start := time.Now()
	for i := 0; i < reps; i++ {
		if err := d.GemvBF16(y, x, w, nil, n, k); err != nil {
			return 0, err
		}
	}
	if err := d.Sync(); err != nil {
		return 0, err
	}
	sec := time.Since(start).Seconds() / float64(reps)
	return float64(n) * float64(k) * 2 / sec / 1e9, nil
}

// rotaryQKVCase is the rotary_qkv case of the self-test and the emulator's test: three tokens
// of 4 heads of 128 at position 70 of caches of 80, in c_attn's fused qkv [t, 3 width], and
// what the kernel must leave in qkv (q rotated in place) and the bf16 caches (k rotated, v).
type rotaryQKVCase struct {
	t, heads, dim, past, maxLen, width, stride int
	base                                       []float64
	qkv                                        []float32
	kc, vc                                     []uint16
	wantQ, wantK, wantV                        []float32
}

func newRotaryQKVCase(r *rand.Rand) rotaryQKVCase {
	c := rotaryQKVCase{t: 3, heads: 4, dim: 128, past: 70, maxLen: 80, base: []float64{10000 * math.Pow(7, 128.0/126)}}
	c.width, c.stride = c.heads*c.dim, 3*c.heads*c.dim
	t, width, stride := c.t, c.width, c.stride
	c.qkv = autograd.Ref.Normal(r, t*stride)
	q, k := make([]float32, t*width), make([]float32, t*width)
	for i := 0; i < t; i++ {
		copy(q[i*width:], c.qkv[i*stride:i*stride+width])
		copy(k[i*width:], c.qkv[i*stride+width:i*stride+2*width])
	}
	st := &autograd.Step{Batch: 1, Seq: t, Past: c.past, Base: c.base}
	rq := autograd.Ref.Rotary(tensor.New(tensor.WithShape(1, t, c.heads, c.dim), tensor.WithBacking(q)), st, false).Data().([]float32)
	rk := autograd.Ref.Rotary(tensor.New(tensor.WithShape(1, t, c.heads, c.dim), tensor.WithBacking(k)), st, false).Data().([]float32)
	c.kc, c.vc = randBF16(r, c.maxLen*width, 1), randBF16(r, c.maxLen*width, 1)
	c.wantQ = slices.Clone(c.qkv)
	c.wantK, c.wantV = autograd.Ref.Widen(c.kc), autograd.Ref.Widen(c.vc)
	for i := 0; i < t; i++ {
		copy(c.wantQ[i*stride:], rq[i*width:(i+1)*width])
		for j := 0; j < width; j++ {
			c.wantK[(c.past+i)*width+j] = autograd.Ref.BF16(bf16Round(rk[i*width+j]))
			c.wantV[(c.past+i)*width+j] = autograd.Ref.BF16(bf16Round(c.qkv[i*stride+2*width+j]))
		}
	}
	return c
}
