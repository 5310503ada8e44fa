//go:build qtcuda || cudaemu

package cuda

// The fusion "input gradient + add": a projection's input gradient dx = dy W whose only
// reader is gorgonia's add (the sum of a value's gradients from its readers: the frozen
// weight's and the LoRA branch's, the up and gate projections') has no buffer of its own.
// The LinearGradX node gets a lazy value; the add runs its GEMM with beta 1 into the other
// addend's buffer when that addend dies there:
//
//	y = dy W + other     (one GEMM, the fp32 product plus other rounded once)
//
// which is, bit for bit, float32(dy W) + other, the unfused GEMM and add (cuBLAS adds beta C
// to its float32 accumulator). An addend that does not die there, or is not a whole float32
// value, gets the product in a buffer of its own first, as without the fusion. At Qwen-7B's
// widths this removes one [N, 11008] float32 buffer (86 MiB at 2048 tokens) from the MLP's
// backward, where the arena peaks.

import (
	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

// inputGradIntoAdd switches the fusion on (tests compare the gradients with and without it,
// bit for bit).
var inputGradIntoAdd = true

// deferIntoAdd makes the input gradient n = dy w (no scale) lazy when its only reader is an
// add of n and another value: the add computes it.
func (c *compiler) deferIntoAdd(n *G.Node, dy, w *value, scale float64) bool {
	if !inputGradIntoAdd || scale != 1 || n == c.out || c.kept(n) || len(c.users[n]) != 1 {
		return false
	}
	u := c.users[n][0]
	if !autograd.IsAdd(u.Op()) || len(c.kids[u]) != 2 || c.kids[u][0] == c.kids[u][1] {
		return false
	}
	r := c.root(c.kids[n][0])
	c.vals[n] = &value{rows: dy.rows, cols: w.cols, stride: w.cols, root: r, lazy: lazyGradX, x: dy, w: w}
	c.rootOf[n] = r // dy is read where the add runs
	c.lastUse[r] = max(c.lastUse[r], c.pos[u])
	return true
}

// addGradX is an add of a lazy input gradient (or two): its GEMM with beta 1 into the other
// addend when that dies here, otherwise into a buffer of its own before the add.
func (c *compiler) addGradX(n *G.Node, a, b *value) (bool, error) {
	kids := c.kids[n]
	g, gn, o, on := a, kids[0], b, kids[1]
	if g.lazy != lazyGradX {
		g, gn, o, on = b, kids[1], a, kids[0]
	}
	if err := c.whole(g.x); err != nil {
		return false, err
	}
	if o.lazy == lazyGradX { // both: the first into a new buffer, the second added to it
		y := c.alloc(n, g.rows, g.cols, false)
		c.gradXInto(y.buf, o, 0, "")
		c.gradXInto(y.buf, g, 1, " and its sum with the other")
		c.releaseRoot(g.root)
		c.releaseRoot(o.root)
		return false, nil
	}
	if o.lazy == 0 && !o.bf16 && o.parts == 0 && o.stride == o.cols && o.rows*o.cols == g.rows*g.cols && c.dies(on) {
		y := c.inPlace(n, on)
		c.gradXInto(y.buf, g, 1, " added to "+on.Name())
		c.releaseRoot(g.root)
		return false, nil
	}
	// as without the fusion: the product in its own buffer, then the add
	delete(c.rootOf, gn)
	t := c.alloc(gn, g.rows, g.cols, false)
	c.lastUse[gn] = c.i
	c.gradXInto(t.buf, g, 0, "")
	c.releaseRoot(g.root)
	if gn == kids[0] {
		return c.add(n, []*value{t, o})
	}
	return c.add(n, []*value{o, t})
}

// gradXInto emits the GEMM of the lazy input gradient g into dst (beta 1: added to it),
// named after the current node and what it adds.
func (c *compiler) gradXInto(dst *Buffer, g *value, beta float32, what string) {
	d, dy, w := c.d, g.x, g.w
	rows, m, k := dy.rows, dy.cols, w.cols
	dy16, conv := c.bf16Copy(dy)
	wb, round := c.weightBF16(w)
	c.emitNamed(c.what()+" with the input gradient"+what, func() error {
		if err := conv(); err != nil {
			return err
		}
		if err := round(); err != nil {
			return err
		}
		return d.gemmInputGradBeta(dst, wb, dy16, rows, m, k, beta)
	})
}

// releaseRoot ends the life of the buffer of r (a lazy value's input) when its last reader
// is the current node and release does not reach it through the node's inputs.
func (c *compiler) releaseRoot(r *G.Node) {
	if v := c.vals[r]; v != nil && !v.param && v.lazy == 0 && c.lastUse[r] == c.i && r != c.out && !c.released[r] {
		c.released[r] = true
		c.pl.put(v.buf)
	}
}
