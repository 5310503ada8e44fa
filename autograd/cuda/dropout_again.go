//go:build qtcuda || cudaemu

package cuda

// A LoRA branch's dropout drawn again for A's weight gradient. The dropout of a LoRA
// branch's input, kept in bf16 (multipliedInBF16), is read by the branch's A projection
// where it is computed and by A's weight gradient at the end of the block's backward;
// between the two it would live across the block's backward, where the arena peaks. When
// what it is drawn from is still live at A's weight gradient (attention's output, read
// again by attention's backward; or the residual stream a norm reads, whose own backward
// comes later), its buffer dies at the A projection and A's weight gradient draws it again
// into scratch of its own: the norm (rmsnorm.cu on the stored sum, as the fused add +
// RMSNorm computes it), the dropout (the same Philox key and seed) and the rounding to bf16,
// the launches that made it, so A's gradient reads the same bits. At Qwen-7B's widths and
// 2048 tokens the dropouts of c_attn's (but in the first block, whose input dies in its
// recomputation), attn.c_proj's, w1's and w2's inputs (16 MiB each) leave the MLP's
// backward.

import (
	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

// dropoutAgainOn switches the saving on (tests compare the gradients with and without it,
// bit for bit).
var dropoutAgainOn = true

// dropAgain is how to draw a dropout again: from x, or from the norm of y by w.
type dropAgain struct {
	op      *autograd.DropoutOp
	x, y, w *value
	eps     float32
}

// dropoutAgain decides whether the bf16-kept dropout n of input x (the current node) is
// drawn again by its weight-gradient reader: that reader is its last, and x, or the input of
// the norm that computed x, lives until it. It then ends n's buffer at its other readers.
func (c *compiler) dropoutAgain(n *G.Node, x *value) (*dropAgain, bool) {
	if !dropoutAgainOn || c.kept(n) || n == c.out {
		return nil, false
	}
	if rc := c.rc; rc != nil {
		if _, twice := rc.need[n]; twice && rc.block[c.i] < 0 {
			return nil, false // a first run: its weight gradient reads the second
		}
	}
	var grad *G.Node
	before := -1 // the last reader but the weight gradient
	for _, u := range c.users[n] {
		if _, ok := u.Op().(*autograd.LinearGradWOp); ok {
			if grad != nil {
				return nil, false
			}
			grad = u
			continue
		}
		before = max(before, c.pos[u])
	}
	if grad == nil || before < c.i || c.pos[grad] <= before {
		return nil, false
	}
	at := c.pos[grad]
	o := n.Op().(*autograd.DropoutOp)
	live := func(v *value, k *G.Node) bool {
		return v != nil && !v.param && v.lazy == 0 && !v.bf16 && v.parts == 0 && v.stride == v.cols && c.lastUse[c.root(k)] >= at && !c.released[c.root(k)]
	}
	xn := c.kids[n][0]
	if live(x, xn) {
		c.lastUse[n] = before
		return &dropAgain{op: o, x: x}, true
	}
	no, ok := xn.Op().(*autograd.RMSNormOp)
	if !ok {
		return nil, false
	}
	yn, wn := c.kids[xn][0], c.kids[xn][1]
	y, w := c.vals[yn], c.vals[wn]
	if !live(y, yn) || w == nil || !w.param || !w.bf16 || w.set != nil || y.rows != x.rows || y.cols != x.cols {
		return nil, false
	}
	c.lastUse[n] = before
	return &dropAgain{op: o, y: y, w: w, eps: float32(no.Eps())}, true
}

// gradWInput is the bf16 input x of the weight gradient n and the launches that make it:
// x's own bf16 copy (bf16Copy), or, for a dropout drawn again, the norm, the dropout and the
// rounding into scratch of n.
func (c *compiler) gradWInput(n *G.Node, x *value) (*Buffer, func() error) {
	ag := c.again[c.kids[n][1]]
	if ag == nil {
		return c.bf16Copy(x)
	}
	d, st := c.d, c.step
	rows, cols := x.rows, x.cols
	cnt := int64(rows * cols)
	x16 := c.pl.get(cnt * 2)
	f := c.pl.get(cnt * 4)
	c.pl.put(x16)
	c.pl.put(f)
	return x16, func() error {
		src := f
		if ag.x != nil {
			src = ag.x.ptr()
		} else if err := d.RMSNormBF16(f, ag.y.ptr(), ag.w.buf, rows, cols, ag.eps); err != nil {
			return err
		}
		if err := d.Dropout(f, src, cnt, ag.op.Prob(), st.Seed, ag.op.Key()); err != nil {
			return err
		}
		return d.ToBF16Rows(x16, f, rows, cols, cols)
	}
}

// drawnAgain reports whether input j of n is a dropout its weight gradient n draws again
// (its buffer is dead there).
func (c *compiler) drawnAgain(n *G.Node, j int) bool {
	_, ok := n.Op().(*autograd.LinearGradWOp)
	return ok && j == 1 && c.again[c.kids[n][1]] != nil
}
