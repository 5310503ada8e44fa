//go:build qtcuda || cudaemu

package cuda

// The fusion "lm_head + cross-entropy by chunks": in a loss program whose logits come from a
// plain frozen projection (lm_head: no bias, no scale, no trained weight) and are read only
// by the cross-entropy and its backward, no [N, V] logits exist. One instruction, at the
// cross-entropy, runs chunk by chunk of rows (kernels/chunkloss.cu):
//
//	logits [rc, V] (fp32)    = x [rc, K] (bf16) W^T           cuBLAS, fp32 accumulation
//	loss, lse [rc]           = cross_entropy_chunk            cross_entropy_rows' arithmetic
//	dlogits [rc, V] (bf16)   = (softmax - onehot) dloss / n   gradient programs only
//	dx [rc, K] (fp32)        = dlogits W                      cuBLAS, into rows of dx
//
// so the scratch is one chunk's fp32 logits and bf16 dlogits (lossChunkBytes bounds the
// first: 2048 positions of Qwen's 151,936 words run in ten chunks of 208 rows, 181 MiB in
// all, where the unfused path holds 1.16 GiB of logits, their gradient written over them, and
// a bf16 copy of it). The cross-entropy's backward and lm_head's input gradient then only
// name dx (as the SplitHeads gradients name the fused qkv gradient): their nodes are
// precomputed. Every row's loss, log-sum-exp and bf16 dlogits are those of the unfused path
// (the same operations in the same order), so a loss or gradient differs from it only where
// cuBLAS sums a product of rc rows in another order than one of N rows. LoRA on lm_head,
// special-token rows or a trained lm_head (its logits are an Add, or its weight has a
// gradient) keep the unfused path.

import (
	"fmt"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

var (
	// lossChunkBytes bounds the fp32 logits of one chunk of rows.
	lossChunkBytes int64 = 128 << 20
	// lossChunkRows, when > 0, is the rows of a chunk instead (tests: several chunks of a
	// small vocabulary, a ragged last one).
	lossChunkRows = 0
	// chunkedLoss switches the fusion on (tests compare it with the unfused path).
	chunkedLoss = true
)

// lossChunk is the rows of a chunk for rows of vocab logits: the fewest chunks whose fp32
// logits fit lossChunkBytes, rows shared evenly and rounded up to a multiple of 16 (the
// GEMM's tiles) while that still fits.
func lossChunk(rows, vocab int) int {
	if lossChunkRows > 0 {
		return min(lossChunkRows, rows)
	}
	most := max(1, int(lossChunkBytes/(int64(vocab)*4)))
	chunks := (rows + most - 1) / most
	rc := (rows + chunks - 1) / chunks
	if up := (rc + 15) / 16 * 16; up <= most {
		rc = up
	}
	return min(rc, rows)
}

// chunkLossNodes are the nodes of one fused lm_head + cross-entropy: the projection, the
// loss, and in a gradient program the loss's backward and the projection's input gradient
// (nil in an evaluation program).
type chunkLossNodes struct {
	head, ce, grad, gradX *G.Node
}

// chunkLossOf finds the fusion at the projection head, if it has one.
func (c *compiler) chunkLossOf(head *G.Node) (chunkLossNodes, bool) {
	var f chunkLossNodes
	o, ok := isLinear(head)
	if !chunkedLoss || !ok || o.HasBias() || o.TrainsWeight() || !c.isLoss() || c.p.loss == nil || head == c.out || c.kept(head) {
		return f, false
	}
	f.head = head
	for _, u := range c.users[head] {
		ce, ok := u.Op().(*autograd.CrossEntropyOp)
		switch {
		case !ok || c.kids[u][0] != head:
			return f, false
		case !ce.Backward() && u == c.out && f.ce == nil:
			f.ce = u
		case ce.Backward() && f.grad == nil:
			f.grad = u
		default:
			return f, false
		}
	}
	if f.ce == nil {
		return f, false
	}
	if f.grad == nil {
		return f, true
	}
	// the backward: of this loss, after it, with a constant upstream gradient, read only by
	// lm_head's input gradient (of gain 1, through the same weight)
	if f.grad.Op().(*autograd.CrossEntropyOp).Forward() != f.ce.Op() || c.pos[f.grad] < c.pos[f.ce] || c.kept(f.grad) ||
		!isConstant(c.kids[f.grad][1].Op()) || len(c.users[f.grad]) != 1 {
		return f, false
	}
	gx := c.users[f.grad][0]
	gxo, ok := gx.Op().(*autograd.LinearGradXOp)
	if !ok || gxo.Scale() != 1 || c.kids[gx][0] != f.grad || c.kids[gx][1] != c.kids[head][1] || gx == c.out {
		return f, false
	}
	f.gradX = gx
	return f, true
}

// kept reports a node the program keeps for Grads.
func (c *compiler) kept(n *G.Node) bool {
	for _, k := range c.keep {
		if k == n {
			return true
		}
	}
	return false
}

// deferIntoChunkLoss (fusion "lm_head + cross-entropy by chunks"): the projection n is
// computed chunk by chunk inside its cross-entropy's instruction; n gets a lazy value that
// the cross-entropy reads, its input living until then.
func (c *compiler) deferIntoChunkLoss(n *G.Node, x, w, bias *value) bool {
	f, ok := c.chunkLossOf(n)
	if !ok || bias != nil || !w.param || w.set != nil || x.param || x.lazy != 0 || x.parts != 0 {
		return false
	}
	r := c.root(c.kids[n][0])
	c.vals[n] = &value{rows: x.rows, cols: w.rows, root: r, lazy: lazyLogits, x: x, w: w}
	c.rootOf[n] = r
	c.lastUse[r] = max(c.lastUse[r], c.pos[f.ce])
	return true
}

// chunkLoss is the cross-entropy n of the lazy logits in (deferIntoChunkLoss): the loss of
// every row, and in a gradient program lm_head's input gradient, by chunks of rows.
func (c *compiler) chunkLoss(n *G.Node, in []*value) (bool, error) {
	d, p, st := c.d, c.p, c.step
	f, ok := c.chunkLossOf(c.kids[n][0])
	lg := in[0]
	if !ok || f.ce != n {
		return false, fmt.Errorf("cuda: %s reads logits computed by chunks for another loss", c.what())
	}
	x, w := lg.x, lg.w
	rows, vocab, k := x.rows, w.rows, w.cols
	if x.cols != k {
		return false, fmt.Errorf("cuda: %s: lm_head's input has %d columns for a weight of %d", c.what(), x.cols, k)
	}
	chunk := lossChunk(rows, vocab)
	y := c.alloc(n, 1, rows, false)
	x16, conv := c.bf16Copy(x)
	lse := c.pl.get(int64(rows) * 4)
	logits := c.pl.get(int64(chunk) * int64(vocab) * 4)
	c.pl.put(lse)
	c.pl.put(logits)
	var dl16 *Buffer
	var dx *value
	dloss := 0.0
	if f.grad != nil {
		var err error
		if dloss, err = autograd.Scalar(c.kids[f.grad][1].Value()); err != nil {
			return false, fmt.Errorf("cuda: %s: upstream gradient: %w", c.what(), err)
		}
		dl16 = c.pl.get(int64(chunk) * int64(vocab) * 2)
		c.pl.put(dl16)
		dx = c.alloc(f.gradX, rows, k, false) // lives until lm_head's input gradient's last reader
		c.vals[f.grad] = &value{rows: rows, cols: vocab, root: f.grad, lazy: lazyLogits}
		c.precomputed[f.grad], c.precomputed[f.gradX] = true, true
	}
	name := fmt.Sprintf("%s with %s by chunks of %d rows", c.what(), f.head.Name(), chunk)
	if f.grad != nil {
		name += " and its input gradient"
	}
	c.emitNamed(name, func() error {
		if err := conv(); err != nil {
			return err
		}
		scale := float32(0)
		if t := autograd.Targets(st.Labels, st.Batch, st.Seq); t > 0 {
			scale = float32(dloss / float64(t))
		}
		for r0 := 0; r0 < rows; r0 += chunk {
			rc := min(chunk, rows-r0)
			if err := d.GemmBF16(logits, x16.Slice(int64(r0*k)*2, int64(rc*k)*2), w.buf, rc, vocab, k, vocab, false); err != nil {
				return err
			}
			if err := d.CrossEntropyChunk(y.buf, lse, dl16, logits, p.loss.labels, r0, rc, rows, st.Seq, vocab, scale); err != nil {
				return err
			}
			if dx != nil {
				if err := d.gemmInputGrad(dx.buf.Slice(int64(r0*k)*4, int64(rc*k)*4), w.buf, dl16, rc, vocab, k); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return false, nil
}

// CrossEntropyChunk is cross_entropy_chunk: for rows row0..row0+rc-1 of the n rows (n/seq
// sequences of seq positions, labels [n] int32) with logits [rc, vocab] (float32), loss and
// lse [n] at those rows as CrossEntropyRows, and when dx is not nil, dx [rc, vocab] (bf16) the
// rows' CrossEntropyGrad rounded to bf16 (scale = dloss / Targets(labels)).
func (d *Device) CrossEntropyChunk(loss, lse, dx, logits, labels *Buffer, row0, rc, n, seq, vocab int, scale float32) error {
	if err := need(rc > 0 && row0 >= 0 && row0+rc <= n && seq > 0 && n%seq == 0 && vocab > 0 && hold(int64(rc)*int64(vocab)*4, logits) &&
		hold(int64(n)*4, loss, lse, labels) && (dx == nil || hold(int64(rc)*int64(vocab)*2, dx)),
		"CrossEntropyChunk: rows %d..%d of %d, vocabulary %d, in rows of %d", row0, row0+rc, n, vocab, seq); err != nil {
		return err
	}
	return d.launch("cross_entropy_chunk", rc, trainBlock, 0, loss, lse, dx, logits, labels, row0, seq, vocab, scale)
}
