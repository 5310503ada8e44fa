//go:build qtcuda || cudaemu

package cuda

// Gradient programs: a loss program (loss.go) that also computes gradients, the ones
// gorgonia's Grad added to its graph (CompileGrad keeps them). The emitters of the gradient
// ops: the loss's backward (reading the forward's per-row log-sum-exps), the projections'
// input and weight gradients as bf16 GEMMs with fp32 accumulation, RMSNorm's and SwiGLU's
// (one launch for both of SwiGLU's, written over its inputs when they die there), rotary's inverse rotation, attention's backward by
// chunks of queries (reading the forward's log-sum-exps; the scratch is its own, in the arena: attn_scratch.go) into a buffer laid out as
// the fused qkv projection, which the picks, SplitHeads gradients and their sums then only
// name (no copy: the fusion "SplitHeads gradients -> the fused qkv gradient"), and a GPTQ
// layer's input gradient through its weight dequantized to bf16 (Q-LoRA).

import (
	"fmt"
	"slices"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// CompileGrad is Compile of a loss program that also keeps grads (nodes of g) for Grads.
func (d *Device) CompileGrad(g *G.ExprGraph, loss *G.Node, grads []*G.Node, step *autograd.Step) (*Program, error) {
	return d.compile(g, loss, grads, step, GradOptions{})
}

// CompileGradInto is CompileGrad of the gradients of the parameters s keeps, in its order:
// the program adds them to s's sums when it runs after s.Accumulate. A gradient that is a
// weight-gradient GEMM's output and read by nothing else (the LoRA matrices', a trained
// projection's) is written there by the GEMM itself and has no buffer of its own; the
// others (the tables' and special-token rows' row sums) keep theirs and are added after
// the run (grad_accumulate). Grads does not read such a program. o are the compiler's
// options (activation checkpointing).
func (d *Device) CompileGradInto(g *G.ExprGraph, loss *G.Node, grads []*G.Node, s *ParamSet, step *autograd.Step, o GradOptions) (*Program, error) {
	if s == nil || s.d != d {
		return nil, fmt.Errorf("cuda: compiling into a parameter set of another device")
	}
	if len(grads) != len(s.sizes) {
		return nil, fmt.Errorf("cuda: %d gradients for a parameter set of %d", len(grads), len(s.sizes))
	}
	for i, n := range grads {
		if int64(n.Shape().TotalSize()) != s.sizes[i] {
			return nil, fmt.Errorf("cuda: the gradient of %s has shape %v, not %d values", s.names[i], n.Shape(), s.sizes[i])
		}
	}
	o.sums = s
	p, err := d.compile(g, loss, grads, step, o)
	if err != nil {
		return nil, err
	}
	p.into = &gradInto{set: s, direct: make([]bool, len(grads))}
	for i, v := range p.keep {
		p.into.direct[i] = v.buf.Ptr >= s.grad.Ptr && v.buf.Ptr < s.grad.Ptr+devPtr(s.grad.Bytes)
	}
	return p, nil
}

// sumOf is the index in c.sums of the gradient n when a GEMM may write it there: a kept
// node of a program compiled into a set that no other node reads.
func (c *compiler) sumOf(n *G.Node) (int, bool) {
	if c.sums == nil || len(c.users[n]) > 0 || n == c.out {
		return 0, false
	}
	for i, k := range c.keep {
		if k == n {
			return i, true
		}
	}
	return 0, false
}

// RefreshWeights uploads the current host values of parameters already on the device (the
// trained ones, after an optimizer step on the host) into their device buffers, rounded to
// bf16 as the first upload was. Parameters a ParamSet keeps are left alone: its updates
// write them.
func (d *Device) RefreshWeights(params []*G.Node) error {
	for _, n := range params {
		v, ok := n.Value().(*tensor.Dense)
		if !ok {
			return fmt.Errorf("cuda: parameter %s has no dense value", n.Name())
		}
		b := d.weights[v]
		data, ok := v.Data().([]float32)
		if b == nil || !ok || d.trained[v] != nil {
			continue // not uploaded by a program yet, not trainable in float32, or kept by a ParamSet
		}
		bf := make([]uint16, len(data))
		for i, f := range data {
			bf[i] = bf16Round(f)
		}
		if err := cudaErr("cuMemcpyHtoD("+n.Name()+")", d.drv.memcpyHtoD(b.Ptr, unsafe.Pointer(&bf[0]), int64(len(bf))*2)); err != nil {
			return err
		}
	}
	return nil
}

// Grads downloads the kept gradients of the last run, in CompileGrad's order.
func (p *Program) Grads() ([][]float32, error) {
	if p.into != nil && slices.Contains(p.into.direct, true) {
		return nil, fmt.Errorf("cuda: the program adds its gradients to its parameter set's sums (CompileGradInto): compile it with CompileGrad to read them")
	}
	out := make([][]float32, len(p.keep))
	for i, v := range p.keep {
		if v.stride != v.cols || v.bf16 || v.parts != 0 {
			return nil, fmt.Errorf("cuda: gradient %d is not a whole float32 value", i)
		}
		out[i] = make([]float32, v.rows*v.cols)
		if err := Download(p.d, out[i], v.ptr()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// allParts marks a fused-qkv gradient whose three parts are all written.
const allParts = 7

// whole refuses a fused-qkv gradient with a part missing (its columns were never written).
func (c *compiler) whole(vs ...*value) error {
	for _, v := range vs {
		if v.parts != 0 {
			return fmt.Errorf("cuda: %s reads a fused qkv gradient with parts missing", c.what())
		}
	}
	return nil
}

// viewOf makes n's value v, a view of root's buffer: root lives as long as n's readers.
func (c *compiler) viewOf(n, root *G.Node, v *value) {
	v.root = root
	c.vals[n], c.rootOf[n] = v, root
	for _, u := range c.users[n] {
		c.lastUse[root] = max(c.lastUse[root], c.pos[u])
	}
}

// constant is a scalar constant of the graph (the loss's upstream gradient, 1).
func (c *compiler) constant(n *G.Node) error {
	v, err := autograd.Scalar(n.Value())
	if err != nil {
		return fmt.Errorf("cuda: constant %s: %w", n.Name(), err)
	}
	c.consts[n] = v
	c.vals[n] = &value{rows: 1, cols: 1, root: n, param: true} // known at compile: no buffer
	return nil
}

// crossEntropyGrad is the loss's backward, over the logits when they die here.
func (c *compiler) crossEntropyGrad(n *G.Node, in []*value) (bool, error) {
	o, d, p, st, x := n.Op().(*autograd.CrossEntropyOp), c.d, c.p, c.step, in[0]
	lse, ok := c.ceLSE[o.Forward()]
	dloss, known := c.consts[c.kids[n][1]]
	if !ok || !known || p.loss == nil {
		return false, fmt.Errorf("cuda: %s needs its forward and a constant upstream gradient", c.what())
	}
	var y *value
	if c.dies(c.kids[n][0]) {
		y = c.inPlace(n, c.kids[n][0])
	} else {
		y = c.alloc(n, x.rows, x.cols, false)
	}
	rows, vocab := x.rows, x.cols
	c.emit(func() error {
		scale := float32(0)
		if t := autograd.Targets(st.Labels, st.Batch, st.Seq); t > 0 {
			scale = float32(dloss / float64(t))
		}
		return d.CrossEntropyGrad(y.buf, x.ptr(), lse, p.loss.labels, rows, st.Seq, vocab, scale)
	})
	c.pl.put(lse)
	return false, nil
}

// bf16Copy is the launches converting a float32 value to bf16 scratch of the current node
// (an input already bf16 and contiguous is used where it is).
func (c *compiler) bf16Copy(x *value) (*Buffer, func() error) {
	if x.bf16 && x.stride == x.cols && x.off == 0 {
		return x.buf, func() error { return nil }
	}
	b := c.pl.get(int64(x.rows*x.cols) * 2)
	c.pl.put(b)
	d := c.d
	return b, func() error { return d.ToBF16Rows(b, x.ptr(), x.rows, x.cols, x.stride) }
}

// linearGradX is dx [N, K] = scale dy [N, M] W [M, K]: dy in bf16, the bf16 weight, fp32 out.
func (c *compiler) linearGradX(n *G.Node, in []*value) (bool, error) {
	o, d := n.Op().(*autograd.LinearGradXOp), c.d
	dy, w := in[0], in[1]
	if err := c.whole(dy); err != nil {
		return false, err
	}
	if !w.param || !w.bf16 && w.set == nil {
		return false, fmt.Errorf("cuda: %s: the weight must be a parameter", c.what())
	}
	if c.deferIntoAdd(n, dy, w, o.Scale()) {
		return true, nil
	}
	rows, m, k := dy.rows, dy.cols, w.cols
	y := c.alloc(n, rows, k, false)
	dy16, conv := c.bf16Copy(dy)
	wb, round := c.weightBF16(w)
	c.emit(func() error {
		if err := conv(); err != nil {
			return err
		}
		if err := round(); err != nil {
			return err
		}
		return d.gemmInputGrad(y.buf, wb, dy16, rows, m, k)
	})
	c.scaled(y, o.Scale())
	return false, nil
}

// gemmInputGrad is dx [rows, k] (float32) = dy [rows, m] W [m, k], both bf16: row-major
// dx = dy W is column-major dx^T [k, rows] = W^T [k, m] dy^T [m, rows].
func (d *Device) gemmInputGrad(dx, w, dy *Buffer, rows, m, k int) error {
	return d.gemmInputGradBeta(dx, w, dy, rows, m, k, 0)
}

// gemmInputGradBeta is gemmInputGrad adding beta dx (beta 1: the product added to dx).
func (d *Device) gemmInputGradBeta(dx, w, dy *Buffer, rows, m, k int, beta float32) error {
	return d.gemmBatched(blasOpN, blasOpN, k, rows, m, w, dtypeBF16, k, 0, dy, dtypeBF16, m, 0, beta, dx, dtypeF32, k, 0, 1)
}

// linearGradW is dW [M, K] = scale dy^T [M, N] x [N, K], both in bf16, fp32 out.
func (c *compiler) linearGradW(n *G.Node, in []*value) (bool, error) {
	o, d := n.Op().(*autograd.LinearGradWOp), c.d
	dy, x := in[0], in[1]
	if err := c.whole(dy, x); err != nil {
		return false, err
	}
	rows, m, k := dy.rows, dy.cols, x.cols
	if i, ok := c.sumOf(n); ok {
		return c.linearGradWInto(n, i, dy, x, o.Scale())
	}
	y := c.alloc(n, m, k, false)
	dy16, convDy := c.bf16Copy(dy)
	x16, convX := c.gradWInput(n, x)
	c.emit(func() error {
		if err := convDy(); err != nil {
			return err
		}
		if err := convX(); err != nil {
			return err
		}
		// row-major dW = dy^T x is column-major dW^T [K, M] = x^T [K, N] (dy^T)^T [N, M]
		return d.gemmBatched(blasOpN, blasOpT, k, m, rows, x16, dtypeBF16, k, 0, dy16, dtypeBF16, m, 0, 0, y.buf, dtypeF32, k, 0, 1)
	})
	c.scaled(y, o.Scale())
	return false, nil
}

// linearGradWInto is linearGradW writing parameter i's sum in c.sums: sum = alpha dy^T x +
// beta sum with alpha the branch's scale times the run's trained tokens and beta 0 on a
// step's first micro-batch, 1 after (Program.into, set by ParamSet.Accumulate before the
// run; a run without it computes no weight gradient). The GEMM scales its fp32 accumulator
// and adds it in one step where the host rounds the gradient, its scaled value and the sum.
func (c *compiler) linearGradWInto(n *G.Node, i int, dy, x *value, scale float64) (bool, error) {
	d, s, p := c.d, c.sums, c.p
	rows, m, k := dy.rows, dy.cols, x.cols
	if int64(m)*int64(k) != s.sizes[i] {
		return false, fmt.Errorf("cuda: %s: a gradient of [%d, %d] for %s of %d values", c.what(), m, k, s.names[i], s.sizes[i])
	}
	sum := s.slice(s.grad, i)
	c.vals[n] = &value{buf: sum, rows: m, cols: k, stride: k, root: n}
	dy16, convDy := c.bf16Copy(dy)
	x16, convX := c.gradWInput(n, x)
	c.emit(func() error {
		in := p.into
		if in == nil || !in.armed {
			return nil
		}
		if err := convDy(); err != nil {
			return err
		}
		if err := convX(); err != nil {
			return err
		}
		beta := float32(1)
		if in.first {
			beta = 0
		}
		return d.gemmScaled(blasOpN, blasOpT, k, m, rows, float32(scale*float64(in.tokens)), x16, dtypeBF16, k, 0, dy16, dtypeBF16, m, 0, beta, sum, dtypeF32, k, 0, 1)
	})
	return false, nil
}

// int4Grad is a GPTQ layer's input gradient (Q-LoRA): dx [rows, K] = dy [rows, N] W^T with
// W^T [N, K] dequantized to bf16 scratch of this node, then the GEMM of linearGradX.
func (c *compiler) int4Grad(n *G.Node, in []*value) (bool, error) {
	o, d, dy := n.Op().(*autograd.Int4Op), c.d, in[0]
	if err := c.whole(dy); err != nil {
		return false, err
	}
	if dy.cols != o.Weight().N {
		return false, fmt.Errorf("cuda: %s: gradient of %d columns for %d outputs", c.what(), dy.cols, o.Weight().N)
	}
	w, err := d.int4Weights(o.Weight())
	if err != nil {
		return false, err
	}
	rows, nOut, k := dy.rows, o.Weight().N, o.Weight().K
	y := c.alloc(n, rows, k, false)
	wt := c.pl.get(int64(nOut) * int64(k) * 2)
	c.pl.put(wt)
	dy16, conv := c.bf16Copy(dy)
	c.emit(func() error {
		if err := d.DequantInt4BF16(wt, w); err != nil {
			return err
		}
		if err := conv(); err != nil {
			return err
		}
		return d.gemmInputGrad(y.buf, wt, dy16, rows, nOut, k)
	})
	return false, nil
}

func (c *compiler) rmsNormGradX(n *G.Node, in []*value) (bool, error) {
	o, d := n.Op().(*autograd.RMSNormGradXOp), c.d
	x, w, dy := in[0], in[1], in[2]
	if x.bf16 || dy.bf16 || x.stride != x.cols || dy.stride != dy.cols || !w.param {
		return false, fmt.Errorf("cuda: %s of bf16 or strided inputs", c.what())
	}
	y := c.alloc(n, x.rows, x.cols, false)
	rows, h, eps := x.rows, x.cols, float32(o.Eps())
	c.emit(func() error { return d.RMSNormGradX(y.buf, x.ptr(), w.buf, dy.ptr(), rows, h, eps) })
	return false, nil
}

// swiGLUGrad computes both of SwiGLU's input gradients in one launch: the node's and its
// sibling's (the other gradient of the same SwiGLU), whose value is then ready.
func (c *compiler) swiGLUGrad(n *G.Node, in []*value) (bool, error) {
	o, d := n.Op().(*autograd.SwiGLUOp), c.d
	a, g, dy := in[0], in[1], in[2]
	for _, v := range in {
		if v.bf16 || v.stride != v.cols {
			return false, fmt.Errorf("cuda: %s of bf16 or strided inputs", c.what())
		}
	}
	var sib *G.Node
	for _, u := range c.users[c.kids[n][2]] {
		if so, ok := u.Op().(*autograd.SwiGLUOp); ok && u != n && so.Grad() == 3-o.Grad() && c.pos[u] > c.i && sameKids(c.kids[u], c.kids[n]) {
			sib = u
			break
		}
	}
	// da may be a and dg may be g (swiglu_grad reads an element's inputs before writing
	// it): a gradient takes its input's buffer over when nobody reads the input after the
	// launch (with the sibling, up to the sibling's place)
	last := c.i
	if sib != nil {
		last = c.pos[sib]
	}
	take := func(m, k *G.Node) *value {
		if swigluGradInPlace && c.kids[n][0] != c.kids[n][1] && c.diesBy(k, last) {
			return c.inPlace(m, k)
		}
		return c.alloc(m, a.rows, a.cols, false)
	}
	mine := take(n, c.kids[n][o.Grad()-1])
	var other *value
	if sib != nil {
		other = take(sib, c.kids[n][2-o.Grad()])
		c.precomputed[sib] = true
	} else {
		other = &value{buf: c.pl.get(int64(a.rows*a.cols) * 4)}
		c.pl.put(other.buf)
	}
	da, dg := mine, other
	if o.Grad() == 2 {
		da, dg = other, mine
	}
	cnt := int64(a.rows * a.cols)
	c.emit(func() error { return d.SwiGLUGrad(da.buf, dg.buf, a.ptr(), g.ptr(), dy.ptr(), cnt) })
	return false, nil
}

// diesBy reports whether k is a whole float32 activation of its own buffer that no node
// after place last reads (nor Grads, nor the program's output).
func (c *compiler) diesBy(k *G.Node, last int) bool {
	v := c.vals[k]
	return v != nil && !v.param && v.lazy == 0 && !v.bf16 && v.off == 0 && v.stride == v.cols && v.parts == 0 &&
		v.root == k && !c.released[k] && c.lastUse[k] <= last && k != c.out && !c.kept(k)
}

func sameKids(a, b []*G.Node) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// attentionGrad is attention's backward, row by row, into a buffer laid out as the fused qkv
// projection (q, k and v where the forward read them).
func (c *compiler) attentionGrad(n *G.Node, in []*value) (bool, error) {
	o, d, st := n.Op().(*autograd.AttentionGradOp), c.d, c.step
	q, k, v, out, dy := in[0], in[1], in[2], in[3], in[4]
	fw, ok := c.attn[o.Forward()]
	if !ok {
		return false, fmt.Errorf("cuda: %s needs its forward in the same program", c.what())
	}
	if out.stride != out.cols || dy.stride != dy.cols || out.bf16 || dy.bf16 {
		return false, fmt.Errorf("cuda: %s of bf16 or strided outputs", c.what())
	}
	b, t, heads := st.Batch, fw.t, fw.heads
	width := heads * fw.dim
	y := c.alloc(n, b*t, q.stride, false)
	if c.readsOperandsOnly(n, 0) && fw.ops == nil {
		return false, fmt.Errorf("cuda: %s: its forward kept no bf16 q, k and v", c.what())
	}
	scratch, err := c.attnScratchFor(t, heads, fw.dim, true, fw.ops)
	if err != nil {
		return false, err
	}
	rowBytes := int64(t * q.stride * 4)
	c.emit(func() error {
		for r := 0; r < b; r++ {
			sc := scratch(r)
			row := AttnTrainRow{QKV: q.buf.Slice(int64(r)*rowBytes, rowBytes), Stride: q.stride,
				QOff: int(q.off / 4), KOff: int(k.off / 4), VOff: int(v.off / 4)}
			c.rowMasks(&row, r, t)
			slice := func(x *value) *Buffer { return x.buf.Slice(int64(r*t*width)*4, int64(t*width)*4) }
			lse := fw.lse.Slice(int64(r*heads*t)*4, int64(heads*t)*4)
			if err := d.AttentionTrainBackward(y.buf.Slice(int64(r)*rowBytes, rowBytes), slice(dy), slice(out), lse, row, sc); err != nil {
				return err
			}
		}
		return nil
	})
	c.pl.put(fw.lse)
	if fw.ops != nil {
		c.pl.put(fw.ops)
	}
	return false, nil
}

// pick names q's, k's or v's part of attention's backward output.
func (c *compiler) pick(n *G.Node, in []*value) (bool, error) {
	o, x := n.Op().(*autograd.PickOp), in[0]
	if _, ok := c.kids[n][0].Op().(*autograd.AttentionGradOp); !ok || o.Of() != 3 {
		return false, fmt.Errorf("cuda: %s of something other than attention's backward", c.what())
	}
	part := x.stride / 3
	c.viewOf(n, x.root, &value{buf: x.buf, off: x.off + int64(o.Part()*part*4), rows: x.rows, cols: part, stride: x.stride})
	return true, nil
}

// mergePart names a part of the fused qkv gradient: its input must be that part, in place.
func (c *compiler) mergePart(n *G.Node, in []*value) (bool, error) {
	o, x := n.Op().(*autograd.MergePartOp), in[0]
	width := o.Split().Heads() * o.Split().HeadDim()
	if x.stride != 3*width || x.off != int64(o.Split().Part()*width*4) || x.cols != width {
		return false, fmt.Errorf("cuda: %s of a gradient not laid out as the fused qkv projection", c.what())
	}
	c.viewOf(n, x.root, &value{buf: x.buf, rows: x.rows, cols: 3 * width, stride: 3 * width, parts: 1 << o.Split().Part()})
	return true, nil
}

// addParts is the sum of two parts of one fused qkv gradient: the union, no launch.
func (c *compiler) addParts(n *G.Node, a, b *value) (bool, error) {
	if a.parts == 0 || b.parts == 0 || a.buf != b.buf || a.parts&b.parts != 0 {
		return false, fmt.Errorf("cuda: %s adds a part of a fused qkv gradient to something else", c.what())
	}
	u := a.parts | b.parts
	if u == allParts {
		u = 0
	}
	c.viewOf(n, a.root, &value{buf: a.buf, rows: a.rows, cols: a.cols, stride: a.stride, parts: u})
	return true, nil
}

// rowMasks points an attention row at the Step's key mask and segments, when it has them.
func (c *compiler) rowMasks(row *AttnTrainRow, r, t int) {
	st, p := c.step, c.p
	if st.KeyMask != nil {
		row.KeyMask = p.loss.keyMask.Slice(int64(r*t), int64(t))
	}
	if st.Segments != nil {
		row.Segments = p.loss.segments.Slice(int64(r*t)*4, int64(t)*4)
	}
}
