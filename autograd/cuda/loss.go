//go:build qtcuda || cudaemu

package cuda

// Loss programs: a graph whose output is CrossEntropy (the forward of a training graph, or an
// evaluation) compiled for the device. Its Step carries a batch of rows with labels, and
// may have a key mask (padding), packed segments and positions, and a dropout seed; there is
// no KV cache. Rotary runs at the rows' positions, in place inside the fused qkv projection
// (Rotary's input is a view nobody else reads), attention runs by chunks of queries
// (AttentionTrainForward), dropout draws the CPU's Philox masks (kept in bf16 when only GEMMs read it), a LoRA branch's scale follows
// its product, and the loss is one value per row, summed on the host in row order (Loss).
// Weights are uploaded once, in bf16, as for inference; Device.RefreshWeights uploads the
// trained ones again after an optimizer step (model.CompileGradOn does it before every run).
// No LogN (training graphs have none; an evaluation's
// sequence longer than seq_length, where it would apply, is refused).

import (
	"fmt"
	"slices"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

// lossProgram holds a loss program's per-run inputs on the device.
type lossProgram struct {
	labels, pos, keyMask, segments *Buffer // [N] int32, int32, bytes, int32
	maskBytes                      []byte
	scratch                        []*AttnTrainScratch
}

// isLoss reports a program whose output is the loss.
func (c *compiler) isLoss() bool {
	o, ok := c.out.Op().(*autograd.CrossEntropyOp)
	return c.train || ok && !o.Backward()
}

// hasUser reports whether some reader of in is an op that ok accepts.
func (c *compiler) hasUser(in *G.Node, ok func(G.Op) bool) bool {
	for _, u := range c.users[in] {
		if ok(u.Op()) {
			return true
		}
	}
	return false
}

// lossBuffers allocates the Step's per-run data of a loss program (and a rotary base per row).
func (c *compiler) lossBuffers() error {
	d, p, st := c.d, c.p, c.step
	n := int64(max(st.Batch*st.Seq, 1))
	lp := &lossProgram{}
	p.loss = lp
	for _, b := range []struct {
		dst   **Buffer
		bytes int64
		what  string
	}{{&lp.labels, n * 4, "labels"}, {&lp.pos, n * 4, "positions"}, {&lp.keyMask, n, "key mask"}, {&lp.segments, n * 4, "segments"}, {&p.base, int64(max(st.Batch, 1)) * 8, "rotary bases"}} {
		buf, err := d.Alloc(b.bytes, b.what)
		if err != nil {
			return err
		}
		*b.dst = buf
		p.owned = append(p.owned, buf)
	}
	return nil
}

// attnScratch is the program's attention scratch for t positions of heads x dim, one for all
// the layers of that shape: a layer's backward recomputes everything it reads from there.
func (c *compiler) attnScratch(t, heads, dim int) (*AttnTrainScratch, error) {
	for _, sc := range c.p.loss.scratch {
		if sc.T == t && sc.Heads == heads && sc.Dim == dim {
			return sc, nil
		}
	}
	sc, err := c.d.NewAttnTrainScratch(t, heads, dim, min(t, autograd.PrefillChunk))
	if err == nil {
		c.p.loss.scratch = append(c.p.loss.scratch, sc)
	}
	return sc, err
}

// rotaryLoss rotates q or k at the rows' positions, in place when its input is a view (of
// the fused qkv projection) that only this node reads.
func (c *compiler) rotaryLoss(n *G.Node, in []*value) (bool, error) {
	d, p, st, x := c.d, c.p, c.step, in[0]
	inverse := n.Op().(*autograd.RotaryOp).Inverse() // the backward's rotation
	s := n.Shape()                                   // [B, T, H, D]
	if x.bf16 {
		return false, fmt.Errorf("cuda: rotary of a bf16 input")
	}
	b, t, heads, dim := s[0], s[1], s[2], s[3]
	var y *value
	view := false
	if k := c.kids[n][0]; x.root != k && len(c.users[k]) == 1 {
		v := *x
		c.vals[n], c.rootOf[n], y, view = &v, x.root, &v, true
		for _, u := range c.users[n] {
			if _, grad := u.Op().(*autograd.AttentionGradOp); grad && c.readsOperandsOnly(u, 0) {
				continue // it reads the bf16 copies attention's forward kept
			}
			c.lastUse[x.root] = max(c.lastUse[x.root], c.pos[u])
		}
	} else {
		y = c.alloc(n, b*t, heads*dim, false)
	}
	c.emit(func() error {
		var pos *Buffer
		if st.Positions != nil {
			pos = p.loss.pos
		}
		return d.RotaryPositions(y.ptr(), x.ptr(), pos, p.base, b, t, heads, dim, x.stride, y.stride, inverse)
	})
	return view, nil
}

// attentionLoss is attention over each row's own positions (no cache), by chunks of queries.
func (c *compiler) attentionLoss(n *G.Node, in []*value) (bool, error) {
	d, st := c.d, c.step
	q, k, v := in[0], in[1], in[2]
	s := c.kids[n][0].Shape() // [B, T, H, D]
	b, t, heads, dim := s[0], s[1], s[2], s[3]
	if q.buf != k.buf || k.buf != v.buf || q.stride != k.stride || k.stride != v.stride || q.bf16 || k.bf16 || v.bf16 {
		return false, fmt.Errorf("cuda: attention of a loss program reads q, k and v from one fused projection")
	}
	width := heads * dim
	y := c.alloc(n, b*t, width, false)
	var ops *Buffer
	if c.keepsOperands(n) { // the rows' bf16 q, k and v, until the backward reads them
		ops = c.pl.get(int64(b) * 3 * int64(t*width) * 2)
	}
	scratch, err := c.attnScratchFor(t, heads, dim, false, ops)
	if err != nil {
		return false, err
	}
	o := n.Op().(*autograd.AttentionOp)
	lse := c.pl.get(int64(b*heads*t) * 4) // lives until the backward, if any, reads it
	c.attn[o] = attnSaved{lse: lse, ops: ops, t: t, heads: heads, dim: dim}
	if !c.hasUser(c.kids[n][0], func(op G.Op) bool { g, ok := op.(*autograd.AttentionGradOp); return ok && g.Forward() == o }) {
		c.pl.put(lse)
	}
	stride, rowBytes := q.stride, int64(t*q.stride*4)
	c.emit(func() error {
		if st.LogNSeq > 0 && st.Keys() > st.LogNSeq {
			return fmt.Errorf("cuda: a loss program has no LogN attention: a sequence of more than %d tokens (seq_length) is scored on the CPU (--device cpu)", st.LogNSeq)
		}
		for r := 0; r < b; r++ {
			sc := scratch(r)
			row := AttnTrainRow{QKV: q.buf.Slice(int64(r)*rowBytes, rowBytes), Stride: stride,
				QOff: int(q.off / 4), KOff: int(k.off / 4), VOff: int(v.off / 4)}
			c.rowMasks(&row, r, t)
			out := y.buf.Slice(int64(r*t*width)*4, int64(t*width)*4)
			if err := d.AttentionTrainForward(out, lse.Slice(int64(r*heads*t)*4, int64(heads*t)*4), row, sc); err != nil {
				return err
			}
		}
		return nil
	})
	return false, nil
}

// dropout draws the CPU's masks (Step.Seed, the op's key), in place when its input dies here.
func (c *compiler) dropout(n *G.Node, in []*value) (bool, error) {
	o, d, st, x := n.Op().(*autograd.DropoutOp), c.d, c.step, in[0]
	if o.Step() != st {
		return false, fmt.Errorf("cuda: %s belongs to another Step", c.what())
	}
	if x.bf16 || x.stride != x.cols {
		return false, fmt.Errorf("cuda: dropout of a bf16 or strided input")
	}
	cnt := int64(x.rows * x.cols)
	if c.multipliedInBF16(n) {
		// the float32 result over the input when it dies here, else in scratch of this
		// node, rounded to bf16 as the readers would round it
		y := c.alloc(n, x.rows, x.cols, true)
		f := x.buf
		if !c.dies(c.kids[n][0]) {
			f = c.pl.get(cnt * 4)
			c.pl.put(f)
		}
		if ag, ok := c.dropoutAgain(n, x); ok { // its weight gradient draws it again
			c.again[n] = ag
		}
		rows, cols := x.rows, x.cols
		c.emit(func() error {
			if err := d.Dropout(f, x.ptr(), cnt, o.Prob(), st.Seed, o.Key()); err != nil {
				return err
			}
			return d.ToBF16Rows(y.buf, f, rows, cols, cols)
		})
		return false, nil
	}
	var y *value
	if c.dies(c.kids[n][0]) {
		y = c.inPlace(n, c.kids[n][0])
	} else {
		y = c.alloc(n, x.rows, x.cols, false)
	}
	c.emit(func() error { return d.Dropout(y.buf, x.ptr(), cnt, o.Prob(), st.Seed, o.Key()) })
	return false, nil
}

// multipliedInBF16: every reader of n rounds it to bf16 before a GEMM (a projection of
// several rows taking it as input, or a weight gradient taking it as x), so n can be kept
// in bf16 (half the bytes; each reader's conversion is then done once, where n is
// computed). A LoRA branch's dropout is such a value: its A projection and A's gradient
// read it.
func (c *compiler) multipliedInBF16(n *G.Node) bool {
	if !keepBF16 || n == c.out || rowsOf(n) < 2 || len(c.users[n]) == 0 || c.kept(n) {
		return false
	}
	for _, u := range c.users[n] {
		k := c.kids[u]
		switch o := u.Op().(type) {
		case *autograd.LinearOp:
			if k[0] != n || slices.Contains(k[1:], n) {
				return false
			}
		case *autograd.Int4Op:
			if o.Backward() || k[0] != n {
				return false
			}
		case *autograd.LinearGradWOp:
			if k[1] != n || k[0] == n {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// crossEntropy is the loss of every row (0 for rows without a target), the program's output.
func (c *compiler) crossEntropy(n *G.Node, in []*value) (bool, error) {
	o, d, p, st, x := n.Op().(*autograd.CrossEntropyOp), c.d, c.p, c.step, in[0]
	if o.Backward() {
		return c.crossEntropyGrad(n, in)
	}
	if x.lazy == lazyLogits {
		return c.chunkLoss(n, in)
	}
	if n != c.out || p.loss == nil {
		return false, fmt.Errorf("cuda: the cross-entropy of the GPU executor is a loss program's output")
	}
	if x.bf16 || x.stride != x.cols {
		return false, fmt.Errorf("cuda: cross-entropy of bf16 or strided logits")
	}
	rows, vocab := x.rows, x.cols
	y := c.alloc(n, 1, rows, false)
	lse := c.pl.get(int64(rows) * 4) // lives until the backward, if any, reads it
	c.ceLSE[o] = lse
	if !c.hasUser(c.kids[n][0], func(op G.Op) bool {
		g, ok := op.(*autograd.CrossEntropyOp)
		return ok && g.Backward() && g.Forward() == o
	}) {
		c.pl.put(lse)
	}
	c.emit(func() error { return d.CrossEntropyRows(y.buf, lse, x.ptr(), p.loss.labels, rows, st.Seq, vocab) })
	return false, nil
}

// runLoss uploads a loss program's Step (ids, labels, rotary bases, and positions, key mask
// and segments when the Step has them) and runs its launches.
func (p *Program) runLoss() error {
	st, d := p.step, p.d
	n := st.Batch * st.Seq
	if st.Cache != nil || len(st.IDs) != n || len(st.Labels) != n {
		return fmt.Errorf("cuda: a loss program runs a Step of %d ids and labels without a cache", n)
	}
	if st.Past != 0 {
		return fmt.Errorf("cuda: a training program's positions start at 0, not at Past %d (a cache's positions are for inference)", st.Past)
	}
	bases := make([]float64, st.Batch)
	for b := range bases {
		bases[b] = st.RotaryBaseOf(b)
	}
	up := func(dst *Buffer, src unsafe.Pointer, bytes int64, what string) error {
		return cudaErr("cuMemcpyHtoD("+what+")", d.drv.memcpyHtoD(dst.Ptr, src, bytes))
	}
	if err := up(p.ids, unsafe.Pointer(&st.IDs[0]), int64(n)*4, "ids"); err != nil {
		return err
	}
	if err := up(p.loss.labels, unsafe.Pointer(&st.Labels[0]), int64(n)*4, "labels"); err != nil {
		return err
	}
	if err := up(p.base, unsafe.Pointer(&bases[0]), int64(len(bases))*8, "rotary bases"); err != nil {
		return err
	}
	if st.Positions != nil && len(st.Positions) != n || st.Segments != nil && len(st.Segments) != n {
		return fmt.Errorf("cuda: %d positions and %d segments for %d positions", len(st.Positions), len(st.Segments), n)
	}
	if st.Positions != nil {
		if err := up(p.loss.pos, unsafe.Pointer(&st.Positions[0]), int64(n)*4, "positions"); err != nil {
			return err
		}
	}
	if st.Segments != nil {
		if err := up(p.loss.segments, unsafe.Pointer(&st.Segments[0]), int64(n)*4, "segments"); err != nil {
			return err
		}
	}
	if st.KeyMask != nil {
		if len(st.KeyMask) != n {
			return fmt.Errorf("cuda: a key mask of %d for %d positions", len(st.KeyMask), n)
		}
		p.loss.maskBytes = p.loss.maskBytes[:0]
		for _, k := range st.KeyMask {
			v := byte(0)
			if k {
				v = 1
			}
			p.loss.maskBytes = append(p.loss.maskBytes, v)
		}
		if err := up(p.loss.keyMask, unsafe.Pointer(&p.loss.maskBytes[0]), int64(n), "key mask"); err != nil {
			return err
		}
	}
	if err := p.launches(); err != nil {
		return err
	}
	return p.accumulate()
}

// Loss is a loss program's last run's mean loss over the labels that count (0 when none do),
// the rows' losses added in row order.
func (p *Program) Loss() (float64, error) {
	if p.loss == nil || !p.lossOut {
		return 0, fmt.Errorf("cuda: the program's output is not a loss")
	}
	rows := make([]float32, p.out.cols)
	if err := Download(p.d, rows, p.out.buf); err != nil {
		return 0, err
	}
	st := p.step
	targets := autograd.Targets(st.Labels, st.Batch, st.Seq)
	if targets == 0 {
		return 0, nil
	}
	var sum float64
	for _, l := range rows {
		sum += float64(l)
	}
	return sum / float64(targets), nil
}
