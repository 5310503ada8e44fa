//go:build qtcuda

package autograd

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

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

func randF32(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

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
	d    *Device
	bufs []*Buffer
	err  error
}

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
	}
	g.bufs = append(g.bufs, b)
	return b
}

func (g *gpuCase) out(n int, what string) *Buffer {
	if g.err != nil {
		return nil
	}
	var b *Buffer
	if b, g.err = g.d.Alloc(int64(n)*4, what); g.err == nil {
		g.err = g.d.Poison(b)
	}
	g.bufs = append(g.bufs, b)
	return b
}

func (g *gpuCase) result(op, shape string, tol float64, launch func() error, out *Buffer, want []float32) Check {
	c := Check{Op: op, Shape: shape, Tol: tol}
	defer func() {
		for _, b := range g.bufs {
			g.d.Free(b)
		}
	}()
	if g.err != nil {
		c.Err = g.err
		return c
	}
	if c.Err = launch(); c.Err != nil {
		return c
	}
	if c.Err = g.d.Sync(); c.Err != nil {
		return c
	}
	got := make([]float32, len(want))
	if c.Err = Download(g.d, got, out); c.Err != nil {
		return c
	}
	c.RelErr, c.Unwritten = compare(got, want)
	return c
}

// SelfTest runs every kernel against the CPU implementation on random inputs of Qwen-7B's
// widths (and odd sizes that exercise the edges).
func SelfTest(d *Device, seed uint64) []Check {
	r := rand.New(rand.NewPCG(seed, 99))
	var checks []Check
	for _, s := range [][2]int{{3, 4096}, {5, 100}} { // RMSNorm
		n, h := s[0], s[1]
		x, w := randF32(r, n*h), randBF16(r, h, 1)
		want, _ := rmsNormForward[float32](tensor.New(tensor.WithShape(n, h), tensor.WithBacking(x)), tensor.New(tensor.WithShape(h), tensor.WithBacking(w)), 1e-6)
		g := &gpuCase{d: d}
		xb, wb, yb := g.up(x, "x"), g.up(w, "w"), g.out(n*h, "y")
		checks = append(checks, g.result("rmsnorm_bf16", fmt.Sprintf("[%d, %d]", n, h), 1e-5, func() error { return d.RMSNormBF16(yb, xb, wb, n, h, 1e-6) }, yb, want.Data().([]float32)))
	}
	for _, n := range []int{11008 * 3, 1000} { // SwiGLU
		a, gt := randF32(r, n), randF32(r, n)
		want := swiglu[float32]([]*tensor.Dense{tensor.New(tensor.WithShape(n), tensor.WithBacking(a)), tensor.New(tensor.WithShape(n), tensor.WithBacking(gt))}, 0)
		g := &gpuCase{d: d}
		ab, gb, yb := g.up(a, "a"), g.up(gt, "g"), g.out(n, "y")
		checks = append(checks, g.result("swiglu", fmt.Sprintf("[%d]", n), 1e-5, func() error { return d.SwiGLU(yb, ab, gb, int64(n)) }, yb, want.Data().([]float32)))
	}
	{ // Rotary with per-row NTK bases and a position offset
		b, t, h, dim, past := 2, 5, 32, 128, 3000
		x := randF32(r, b*t*h*dim)
		bases := []float64{10000, 10000 * math.Pow(3, 128.0/126)}
		want := rotate[float32](tensor.New(tensor.WithShape(b, t, h, dim), tensor.WithBacking(x)), &Step{Batch: b, Seq: t, Past: past, Base: bases}, false)
		g := &gpuCase{d: d}
		xb, bb := g.up(append([]float32(nil), x...), "x"), g.up(bases, "base")
		checks = append(checks, g.result("rotary", fmt.Sprintf("[%d, %d, %d, %d] at %d", b, t, h, dim, past), 1e-5, func() error { return d.Rotary(xb, bb, b, t, h, dim, past) }, xb, want.Data().([]float32)))
	}
	{ // Embedding gather
		vocab, h := 1000, 4096
		w := randBF16(r, vocab*h, 0.02)
		ids := []int32{0, 999, 17, 17, 512}
		want := make([]float32, len(ids)*h)
		gatherRows(tensor.New(tensor.WithShape(vocab, h), tensor.WithBacking(w)), ids, h, want)
		g := &gpuCase{d: d}
		wb, ib, yb := g.up(w, "w"), g.up(ids, "ids"), g.out(len(ids)*h, "y")
		checks = append(checks, g.result("gather_bf16", fmt.Sprintf("%d ids of [%d, %d]", len(ids), vocab, h), 0, func() error { return d.GatherBF16(yb, wb, ib, len(ids), h, vocab) }, yb, want))
	}
	for _, s := range [][2]int{{12288, 4096}, {4096, 11008}, {37, 64}} { // GEMV
		n, k := s[0], s[1]
		x, w, bias := randF32(r, k), randBF16(r, n*k, 0.02), randBF16(r, n, 0.1)
		want := make([]float32, n)
		matmulNT(x, 1, k, tensor.New(tensor.WithShape(n, k), tensor.WithBacking(w)), n, want)
		for i := range want {
			want[i] += bf16(bias[i])
		}
		g := &gpuCase{d: d}
		xb, wb, bb, yb := g.up(x, "x"), g.up(w, "w"), g.up(bias, "bias"), g.out(n, "y")
		checks = append(checks, g.result("gemv_bf16", fmt.Sprintf("[%d, %d]", n, k), 1e-5, func() error { return d.GemvBF16(yb, xb, wb, bb, n, k) }, yb, want))
	}
	for _, L := range []int{1, 300, 4000, 256} { // decode attention over a cache
		b, h, dim, maxLen := 2, 4, 128, 4096
		q, kc, vc := randF32(r, b*h*dim), randF32(r, b*maxLen*h*dim), randF32(r, b*maxLen*h*dim)
		scale := float32(1.3 / math.Sqrt(float64(dim)))
		want := refDecode(q, kc, vc, b, h, dim, maxLen, L, float64(scale))
		g := &gpuCase{d: d}
		qb, kb, vb, ob := g.up(q, "q"), g.up(kc, "k cache"), g.up(vc, "v cache"), g.out(b*h*dim, "out")
		checks = append(checks, g.result("attention_decode", fmt.Sprintf("%d keys, [%d, %d, %d]", L, b, h, dim), 1e-4, func() error { return d.AttentionDecode(ob, qb, kb, vb, b, h, dim, maxLen, L, scale) }, ob, want))
	}
	{ // residual add fused with RMSNorm
		n, h := 2, 4096
		x, res, w := randF32(r, n*h), randF32(r, n*h), randBF16(r, h, 1)
		sum := make([]float32, n*h)
		for i := range sum {
			sum[i] = x[i] + res[i]
		}
		want, _ := rmsNormForward[float32](tensor.New(tensor.WithShape(n, h), tensor.WithBacking(sum)), tensor.New(tensor.WithShape(h), tensor.WithBacking(w)), 1e-6)
		g := &gpuCase{d: d}
		xb, rb, wb, yb := g.up(x, "x"), g.up(res, "r"), g.up(w, "w"), g.out(n*h, "y")
		checks = append(checks, g.result("add_rmsnorm_bf16", fmt.Sprintf("[%d, %d]", n, h), 1e-5, func() error { return d.AddRMSNormBF16(yb, xb, rb, wb, n, h, 1e-6) }, yb, want.Data().([]float32)))
	}
	{ // KV append from a fused qkv row into the caches
		b, width, maxLen, pos := 2, 256, 16, 5
		qkv := randF32(r, b*3*width)
		cache := randF32(r, b*maxLen*width)
		want := append([]float32(nil), cache...)
		for bi := 0; bi < b; bi++ {
			copy(want[(bi*maxLen+pos)*width:], qkv[bi*3*width+width:bi*3*width+2*width])
		}
		g := &gpuCase{d: d}
		qb, kb, vb := g.up(qkv, "qkv"), g.up(append([]float32(nil), cache...), "k cache"), g.up(append([]float32(nil), cache...), "v cache")
		checks = append(checks, g.result("kv_append", fmt.Sprintf("%d rows of %d at %d", b, width, pos), 0, func() error {
			return d.KVAppend(kb, vb, qb.Slice(int64(width*4), qb.Bytes-int64(width*4)), qb.Slice(int64(2*width*4), qb.Bytes-int64(2*width*4)), b, 1, width, 3*width, maxLen, pos)
		}, kb, want))
	}
	return checks
}

// refDecode is single-query attention over a cache, in float64.
func refDecode(q, k, v []float32, b, h, dim, maxLen, length int, scale float64) []float32 {
	out := make([]float32, b*h*dim)
	stride := h * dim
	for bi := 0; bi < b; bi++ {
		for hi := 0; hi < h; hi++ {
			qv := q[(bi*h+hi)*dim:][:dim]
			s := make([]float64, length)
			m := math.Inf(-1)
			for j := range s {
				kv := k[bi*maxLen*stride+j*stride+hi*dim:][:dim]
				for i := range qv {
					s[j] += float64(qv[i]) * float64(kv[i])
				}
				s[j] *= scale
				m = math.Max(m, s[j])
			}
			var sum float64
			for j := range s {
				s[j] = math.Exp(s[j] - m)
				sum += s[j]
			}
			for i := 0; i < dim; i++ {
				var acc float64
				for j := range s {
					acc += s[j] * float64(v[bi*maxLen*stride+j*stride+hi*dim+i])
				}
				out[(bi*h+hi)*dim+i] = float32(acc / sum)
			}
		}
	}
	return out
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
	x, err := Upload(d, randF32(r, k), "gemv x")
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
