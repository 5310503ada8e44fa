//go:build qtcuda || cudaemu

package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/optim"

	"gorgonia.org/tensor"
)

// trainChecks are the kernels of training graphs against their CPU twins, at Qwen-7B's widths
// (hidden 4096, 32 heads of 128, MLP 11008, vocabulary 151936) and odd small sizes. The
// tolerances are about ten times the error measured on the emulator, which forms no fused
// multiply-adds where nvcc does: the float32 kernels keep that room; the kernels whose
// results are bitwise the CPU's (dropout, AdamW, the embedding rows' gradient) have none.
func trainChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	for _, group := range []func(*Device, *rand.Rand) []Check{elementwiseTrainChecks, lossChecks, optimizerChecks, attentionTrainChecks, embedGradChecks} {
		checks = append(checks, group(d, r)...)
	}
	return checks
}

// denseOf is v as a tensor of the given shape.
func denseOf[T any](v []T, shape ...int) *tensor.Dense {
	return tensor.New(tensor.WithShape(shape...), tensor.WithBacking(v))
}

// elementwiseTrainChecks: the gradients of RMSNorm and SwiGLU, rotary at packed positions
// and its inverse, dropout.
func elementwiseTrainChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	for _, s := range [][2]int{{3, 4096}, {5, 100}} {
		n, h := s[0], s[1]
		x, w, dy := autograd.Ref.Normal(r, n*h), randBF16(r, h, 1), autograd.Ref.Normal(r, n*h)
		want, err := autograd.Ref.RMSNormGradX(denseOf(x, n, h), denseOf(w, h), denseOf(dy, n, h), 1e-6)
		if err != nil {
			panic(err)
		}
		g := &gpuCase{d: d}
		xb, wb, gb, db := g.up(x, "x"), g.up(w, "w"), g.up(dy, "dy"), g.out(n*h, "dx")
		// float32 sums in another order than the CPU's float64 ones: measured 5.6e-8 (the
		// device's rsqrt.approx adds up to 2 ulp, 1.2e-7)
		checks = append(checks, g.result("rmsnorm_grad_x", fmt.Sprintf("[%d, %d]", n, h), 5e-7, func() error { return d.RMSNormGradX(db, xb, wb, gb, n, h, 1e-6) }, db, want.Data().([]float32)))
	}
	for _, n := range []int{11008 * 3, 1001} {
		a, gt, dy := autograd.Ref.Normal(r, n), autograd.Ref.Normal(r, n), autograd.Ref.Normal(r, n)
		ins := []*tensor.Dense{denseOf(a, n), denseOf(gt, n), denseOf(dy, n)}
		wantA, wantG := autograd.Ref.SwiGLU(ins, 1).Data().([]float32), autograd.Ref.SwiGLU(ins, 2).Data().([]float32)
		g := &gpuCase{d: d}
		ab, gb, yb, dab, dgb := g.up(a, "a"), g.up(gt, "g"), g.up(dy, "dy"), g.out(n, "da"), g.out(n, "dg")
		// __expf against the CPU's sigmoid: measured 3.4e-8 (da and dg)
		checks = append(checks, g.results("swiglu_grad", fmt.Sprintf("[%d]", n), func() error { return d.SwiGLUGrad(dab, dgb, ab, gb, yb, int64(n)) },
			output{what: "da", buf: dab, want: wantA, tol: 4e-7}, output{what: "dg", buf: dgb, want: wantG, tol: 4e-7})...)
	}
	for _, c := range []struct {
		b, t, heads, dim int
		packed, strided  bool
	}{{2, 7, 32, 128, true, true}, {1, 3, 3, 10, false, false}} {
		width := c.heads * c.dim
		x := autograd.Ref.Normal(r, c.b*c.t*width)
		st := &autograd.Step{Batch: c.b, Seq: c.t, Base: []float64{10000, 10000 * math.Pow(3, 128.0/126)}[:c.b]}
		var pos []int32
		if c.packed { // row 0 one sequence, the others restart at 3
			for i := range c.b * c.t {
				p := i % c.t
				if i >= c.t && p >= 3 {
					p -= 3
				}
				pos = append(pos, int32(p))
			}
			st.Positions = pos
		}
		for _, inverse := range []bool{false, true} {
			want := autograd.Ref.Rotary(denseOf(x, c.b, c.t, c.heads, c.dim), st, inverse).Data().([]float32)
			g := &gpuCase{d: d}
			stride, off, src := width, 0, x
			if c.strided { // x as k inside a fused qkv
				stride, off, src = 3*width, width, make([]float32, c.b*c.t*3*width)
				for i := range c.b * c.t {
					copy(src[i*stride+off:], x[i*width:(i+1)*width])
				}
			}
			xb, bb := g.up(src, "x"), g.up(st.Base, "base")
			var pb *Buffer
			if pos != nil {
				pb = g.up(pos, "positions")
			}
			yb := xb // in place
			if c.strided {
				yb = g.out(len(x), "y")
			}
			// measured 0 (the same float32 angle, double cos and sin rounded to float32, float32
			// products); nvcc fuses x1 cos - x2 sin into a multiply-add, about 1 ulp (6e-8)
			checks = append(checks, g.result("rotary_pos", fmt.Sprintf("[%d, %d, %d, %d], packed %v, stride %d, inverse %v", c.b, c.t, c.heads, c.dim, c.packed, stride, inverse), 1e-6, func() error {
				return d.RotaryPositions(yb, xb.Slice(int64(off*4), xb.Bytes-int64(off*4)), pb, bb, c.b, c.t, c.heads, c.dim, stride, width, inverse)
			}, yb, want))
		}
	}
	for _, c := range []struct {
		n       int
		p       float64
		inPlace bool
	}{{4096*3 + 7, 0.1, false}, {11008 * 2, 0.3, true}} {
		x := autograd.Ref.Normal(r, c.n)
		seed, key := r.Uint64(), r.Uint64()
		want := make([]float32, c.n)
		autograd.Ref.Dropout(x, want, c.p, seed, key)
		g := &gpuCase{d: d}
		xb := g.up(x, "x")
		yb := xb
		if !c.inPlace {
			yb = g.out(c.n, "y")
		}
		// the same Philox words and one float32 product: bitwise the CPU's
		checks = append(checks, g.result("dropout", fmt.Sprintf("[%d] p %g, in place %v", c.n, c.p, c.inPlace), 0, func() error { return d.Dropout(yb, xb, int64(c.n), c.p, seed, key) }, yb, want))
	}
	return checks
}

// lossChecks: the shifted cross-entropy (rows with ignored labels, a sequence without any
// target) and the gradient of trainable embedding rows (repeated ids).
func lossChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	for _, c := range []struct {
		b, t, vocab int
		ignored     float64 // fraction of labels set to IgnoreIndex
		dloss       float64
	}{{2, 5, 151936, 0.3, 1}, {3, 7, 1000, 0.3, 0.7}, {1, 4, 100, 1, 1}} {
		rows := c.b * c.t
		ce := newCECase(r, c.b, c.t, c.vocab, c.ignored, c.dloss)
		logits, labels, wantLoss, wantLSE, scale, n := ce.logits, ce.labels, ce.loss, ce.lse, ce.scale, ce.targets
		g := &gpuCase{d: d}
		xb, lb := g.up(logits, "logits"), g.up(labels, "labels")
		lossb, lseb, dxb := g.out(rows, "loss"), g.out(rows, "lse"), g.out(rows*c.vocab, "dlogits")
		// float32 sums of expf against the CPU's float64 sums of its float32 exponentials:
		// measured 6.8e-8 (loss), 0 (lse rounded to float32) and 8.8e-8 (gradient); the
		// device's expf is within 2 ulp
		checks = append(checks, g.results("cross_entropy_rows + cross_entropy_grad", fmt.Sprintf("%d x %d positions, vocabulary %d, %d targets", c.b, c.t, c.vocab, n), func() error {
			if err := d.CrossEntropyRows(lossb, lseb, xb, lb, rows, c.t, c.vocab); err != nil {
				return err
			}
			return d.CrossEntropyGrad(dxb, xb, lseb, lb, rows, c.t, c.vocab, scale)
		}, output{what: "loss", buf: lossb, want: wantLoss, tol: 1e-6}, output{what: "lse", buf: lseb, want: wantLSE, tol: 1e-6},
			output{what: "dlogits", buf: dxb, want: ce.grad, tol: 1e-6})...)
	}
	for _, c := range []struct{ n, h, rows, offset int }{{40, 4096, 5, 151643}, {7, 100, 3, 10}} {
		ids := make([]int32, c.n)
		idx := make([]int32, c.n)
		for i := range ids {
			ids[i], idx[i] = int32(r.IntN(c.offset)), -1
			if i%3 != 0 { // trainable rows, repeated; the last row never occurs
				row := r.IntN(c.rows - 1)
				ids[i], idx[i] = int32(c.offset+row), int32(row)
			}
		}
		dy := autograd.Ref.Normal(r, c.n*c.h)
		want := make([]float32, c.rows*c.h)
		autograd.Ref.Scatter(dy, idx, c.h, want)
		g := &gpuCase{d: d}
		yb, ib, ob := g.up(dy, "dy"), g.up(ids, "ids"), g.out(c.rows*c.h, "drows")
		// sums in position order from 0, as scatterRows: bitwise the CPU's
		checks = append(checks, g.result("embedding_rows_grad", fmt.Sprintf("%d rows of %d at %d from %d positions", c.rows, c.h, c.offset, c.n), 0, func() error {
			return d.EmbeddingRowsGrad(ob, yb, ib, c.n, c.h, c.rows, c.offset)
		}, ob, want))
	}
	return checks
}

// optimizerChecks: AdamW against optim.AdamW.Update, the gradient norm and clipping against
// optim.ClipGradNorm.
func optimizerChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	for _, c := range []struct {
		n, step int
		lr      float64
	}{{4096*8 + 3, 1, 1e-4}, {100, 1000, 3e-3}} {
		p, m, v, gr := autograd.Ref.Normal(r, c.n), autograd.Ref.Normal(r, c.n), autograd.Ref.Normal(r, c.n), autograd.Ref.Normal(r, c.n)
		for i := range m {
			m[i] *= 0.01
			v[i] = 1e-4 * v[i] * v[i]
		}
		o := &optim.AdamW{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, Step: c.step - 1, M: [][]float32{slices.Clone(m)}, V: [][]float32{slices.Clone(v)}}
		want := slices.Clone(p)
		if err := o.Update([][]float32{want}, [][]float32{gr}, c.lr); err != nil {
			panic(err)
		}
		g := &gpuCase{d: d}
		pb, mb, vb, gb := g.up(p, "p"), g.up(m, "m"), g.up(v, "v"), g.up(gr, "g")
		// the same double operations, none fused: bitwise optim's
		checks = append(checks, g.results("adamw", fmt.Sprintf("[%d] at step %d", c.n, c.step), func() error { return d.AdamW(pb, mb, vb, gb, int64(c.n), o, c.step, c.lr) },
			output{what: "p", buf: pb, want: want, tol: 0}, output{what: "m", buf: mb, want: o.M[0], tol: 0}, output{what: "v", buf: vb, want: o.V[0], tol: 0})...)
	}
	sizes := []int{4096*11 + 1, 1000, 77}
	for _, clip := range []float64{0.5, 2, 0} { // maxNorm as a multiple of the norm (0: only measure)
		grads := make([][]float32, len(sizes))
		var ss float64
		for i, n := range sizes {
			grads[i] = autograd.Ref.Normal(r, n)
			for _, x := range grads[i] {
				ss += float64(x) * float64(x)
			}
		}
		maxNorm := clip * math.Sqrt(ss)
		want := make([][]float32, len(grads))
		for i := range grads {
			want[i] = slices.Clone(grads[i])
		}
		wantNorm := optim.ClipGradNorm(want, maxNorm)
		g := &gpuCase{d: d}
		bufs, n64, outs := make([]*Buffer, len(grads)), make([]int64, len(grads)), make([]output, len(grads))
		for i := range grads {
			bufs[i], n64[i] = g.up(grads[i], "gradient"), int64(sizes[i])
			// measured 0: the factor from a norm summed in another order may differ in its last
			// bits, and a product then by one float32 ulp (6e-8)
			outs[i] = output{what: fmt.Sprintf("gradient %d", i), buf: bufs[i], want: want[i], tol: 1e-7}
		}
		var norm, again float64
		shape := fmt.Sprintf("%v, max norm %.2f x the norm", sizes, clip)
		checks = append(checks, g.results("sum_squares + scale_f32 (ClipGradNorm)", shape, func() error {
			var err error
			if clip == 0 { // measuring only: twice, which must give the same bits
				if again, err = d.ClipGradNorm(bufs, n64, 0); err != nil {
					return err
				}
			}
			norm, err = d.ClipGradNorm(bufs, n64, maxNorm)
			return err
		}, outs...)...)
		// float64 sums in another order than the CPU's: measured 2.4e-14
		checks = append(checks, Check{Op: "sum_squares (gradient norm)", Shape: shape, RelErr: math.Abs(norm-wantNorm) / wantNorm, Tol: 3e-13})
		if clip == 0 {
			checks = append(checks, Check{Op: "sum_squares (gradient norm, run twice)", Shape: shape, RelErr: math.Abs(norm - again), Tol: 0})
		}
	}
	return checks
}

// attentionTrainChecks: the chunked attention's forward (out, lse) and backward (dq, dk, dv)
// against attnForward and attnBackward, with padding and packed segments, and sequences
// shorter and longer than the chunk.
func attentionTrainChecks(d *Device, r *rand.Rand) []Check {
	var checks []Check
	for _, c := range []struct {
		b, t, heads, dim, chunk int
		masked                  bool
	}{{2, 45, 32, 128, 16, true}, {1, 12, 3, 64, 16, false}, {1, 33, 2, 128, 16, true}} {
		width := c.heads * c.dim
		rows := c.b * c.t
		// bf16 values, so that the GEMMs' bf16 operands lose nothing and the differences are
		// the bf16 P and dS and the order of the sums
		q, k, v, dout := autograd.Ref.Widen(randBF16(r, rows*width, 1)), autograd.Ref.Widen(randBF16(r, rows*width, 1)), autograd.Ref.Widen(randBF16(r, rows*width, 1)), autograd.Ref.Widen(randBF16(r, rows*width, 1))
		st := &autograd.Step{Batch: c.b, Seq: c.t}
		var mask []byte
		if c.masked {
			// row 0: two padding tokens first (its first query sees no key) and three last;
			// row 1: three packed sequences, one padding token inside the second
			st.KeyMask = make([]bool, rows)
			st.Segments = make([]int32, rows)
			for i := range rows {
				b, t := i/c.t, i%c.t
				st.KeyMask[i] = b != 0 || (t >= 2 && t < c.t-3)
				if b == 1 {
					st.KeyMask[i] = t != 15
					st.Segments[i] = int32(min(t/10, 2))
				}
			}
			for _, m := range st.KeyMask {
				mask = append(mask, map[bool]byte{false: 0, true: 1}[m])
			}
		}
		qt, kt, vt := denseOf(q, c.b, c.t, c.heads, c.dim), denseOf(k, c.b, c.t, c.heads, c.dim), denseOf(v, c.b, c.t, c.heads, c.dim)
		out, lse, err := autograd.Ref.Attention(qt, kt, vt, st)
		if err != nil {
			panic(err)
		}
		grads, err := autograd.Ref.AttentionGrad(qt, kt, vt, out, denseOf(dout, rows, width), lse, st)
		if err != nil {
			panic(err)
		}
		wantOut, wantGrads := out.Data().([]float32), grads.Data().([]float32)
		qkv := make([]float32, rows*3*width) // c_attn's fused output
		for i := range rows {
			copy(qkv[i*3*width:], q[i*width:(i+1)*width])
			copy(qkv[i*3*width+width:], k[i*width:(i+1)*width])
			copy(qkv[i*3*width+2*width:], v[i*width:(i+1)*width])
		}
		shape := fmt.Sprintf("%d x %d positions, %d heads of %d, chunks of %d, masked %v", c.b, c.t, c.heads, c.dim, c.chunk, c.masked)
		sc, err := d.NewAttnTrainScratch(c.t, c.heads, c.dim, c.chunk)
		if err != nil {
			checks = append(checks, Check{Op: "attention training", Shape: shape, Err: err})
			continue
		}
		// rowArgs are row b's operands in the buffers of one case.
		rowArgs := func(b int, qkvb, maskb, segb *Buffer) AttnTrainRow {
			a := AttnTrainRow{QKV: qkvb.Slice(int64(b*c.t*3*width*4), int64(c.t*3*width*4)), Stride: 3 * width, KOff: width, VOff: 2 * width}
			if maskb != nil {
				a.KeyMask, a.Segments = maskb.Slice(int64(b*c.t), int64(c.t)), segb.Slice(int64(b*c.t*4), int64(c.t*4))
			}
			return a
		}
		rowOf := func(buf *Buffer, b, n int) *Buffer { return buf.Slice(int64(b*n*4), int64(n*4)) }
		upMasks := func(g *gpuCase) (maskb, segb *Buffer) {
			if c.masked {
				maskb, segb = g.up(mask, "key mask"), g.up(st.Segments, "segments")
			}
			return maskb, segb
		}

		g := &gpuCase{d: d}
		qkvb := g.up(qkv, "qkv")
		maskb, segb := upMasks(g)
		ob, lb := g.out(rows*width, "out"), g.out(c.b*c.heads*c.t, "lse")
		// bf16 probabilities in O = P V: measured 1.7e-3 (out); fp32 scores: 6.0e-8 (lse)
		checks = append(checks, g.results("attention training forward (cuBLAS + attn_train_softmax)", shape, func() error {
			for b := range c.b {
				if err := d.AttentionTrainForward(rowOf(ob, b, c.t*width), rowOf(lb, b, c.heads*c.t), rowArgs(b, qkvb, maskb, segb), sc); err != nil {
					return err
				}
			}
			return nil
		}, output{what: "out", buf: ob, want: wantOut, tol: 2e-2}, output{what: "lse", buf: lb, want: lse, tol: 1e-6})...)

		g = &gpuCase{d: d}
		qkvb = g.up(qkv, "qkv")
		maskb, segb = upMasks(g)
		gb, ob, lb := g.up(dout, "dout"), g.up(wantOut, "out"), g.up(lse, "lse")
		db := g.out(rows*3*width, "dqkv")
		n := rows * width
		part := func(what string, i int, tol float64) output {
			return output{what: what, buf: db, want: wantGrads[i*n : (i+1)*n], tol: tol, cols: width, stride: 3 * width, off: i * width}
		}
		// bf16 P and dS in the GEMMs: measured 1.7e-3 (dq, dk and dv)
		checks = append(checks, g.results("attention training backward (cuBLAS + attn_row_dot + attn_train_dscores)", shape, func() error {
			for b := range c.b {
				if err := d.AttentionTrainBackward(db.Slice(int64(b*c.t*3*width*4), int64(c.t*3*width*4)), rowOf(gb, b, c.t*width), rowOf(ob, b, c.t*width), rowOf(lb, b, c.heads*c.t),
					rowArgs(b, qkvb, maskb, segb), sc); err != nil {
					return err
				}
			}
			return nil
		}, part("dq", 0, 2e-2), part("dk", 1, 2e-2), part("dv", 2, 2e-2))...)
		sc.Free(d)
	}
	return checks
}

// ceCase is a cross-entropy check's inputs and their CPU results: logits [b*t, vocab]
// (normal, times 3), labels (a fraction ignored at random), every row's loss and log-sum-exp
// (0 for a row without a target), the logits' gradient for dloss, the targets and
// dloss / targets.
type ceCase struct {
	logits          []float32
	labels          []int32
	loss, lse, grad []float32
	targets         int
	scale           float32
}

func newCECase(r *rand.Rand, b, t, vocab int, ignored, dloss float64) ceCase {
	rows := b * t
	c := ceCase{logits: autograd.Ref.Normal(r, rows*vocab), labels: make([]int32, rows), loss: make([]float32, rows), lse: make([]float32, rows)}
	for i := range c.logits {
		c.logits[i] *= 3
	}
	for i := range c.labels {
		c.labels[i] = int32(r.IntN(vocab))
		if r.Float64() < ignored {
			c.labels[i] = autograd.IgnoreIndex
		}
	}
	st := &autograd.Step{Batch: b, Seq: t, Labels: c.labels}
	c.targets = autograd.Targets(c.labels, b, t)
	for i := range rows {
		if i%t+1 < t && c.labels[i+1] != autograd.IgnoreIndex {
			row := c.logits[i*vocab : (i+1)*vocab]
			lse := autograd.Ref.LogSumExp(row)
			c.lse[i], c.loss[i] = float32(lse), float32(lse-float64(row[c.labels[i+1]]))
		}
	}
	c.grad = autograd.Ref.CrossEntropyGrad(denseOf(c.logits, rows, vocab), st, dloss).Data().([]float32)
	if c.targets > 0 {
		c.scale = float32(dloss / float64(c.targets))
	}
	return c
}
