//go:build qtcuda || cudaemu

package cuda

// Attention's working memory in loss programs, in the arena: each attention node (its
// forward, its forward computed again, its backward) gets the scratch its instruction uses
// as scratch of its own, which the arena places with the other buffers from their lifetimes,
// instead of one scratch per shape that the program holds for its whole life. The kernels and
// GEMMs, their order and their operands are the same; only the addresses differ. A forward
// needs the bf16 q, k and v and one chunk's scores and probabilities; a backward also the
// output gradient in bf16, the chunk's dO V^T and score gradients and dO . O. At Qwen-7B's
// widths and 2048 tokens the program held 160 MiB of it; in the arena it lives where the
// attention runs, and the arena peaks elsewhere (in the MLP's backward).

import (
	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

// attnScratchInArena switches the scratch into the arena (tests compare the gradients with
// and without it, bit for bit).
var attnScratchInArena = true

// attnScratchAlign keeps every part of the scratch on 256 bytes, as cuMemAlloc does.
const attnScratchAlign = 256

// The parts of a scratch, in AttnTrainScratch's order.
const (
	partQ = iota
	partK
	partV
	partG
	partS
	partDP
	partP
	partDS
	partDSum
	attnParts
)

// attnScratchParts are the parts of an attention's scratch: its forward's (the bf16 q, k
// and v, a chunk's scores and probabilities) or its backward's (also the bf16 output
// gradient, dO V^T, the score gradients and dO . O); without q, k and v when the forward
// keeps them for the backward (attnKeepsOperands).
func attnScratchParts(backward, operands bool) (need [attnParts]bool) {
	for i := range need {
		need[i] = backward || i == partQ || i == partK || i == partV || i == partS || i == partP
	}
	if !operands {
		need[partQ], need[partK], need[partV] = false, false, false
	}
	return need
}

// attnScratchBytes are the bytes of each part of a scratch of t positions of heads x dim,
// chunks of chunk queries.
func attnScratchBytes(t, heads, dim, chunk int) [attnParts]int64 {
	operand := int64(t) * int64(heads*dim) * 2
	block := int64(heads) * int64(min(chunk, t)) * int64(t)
	return [attnParts]int64{operand, operand, operand, operand, block * 4, block * 4, block * 2, block * 2, int64(heads) * int64(t) * 4}
}

// attnScratchLayout is where each needed part starts in one buffer (-1: not there) and the
// buffer's bytes.
func attnScratchLayout(t, heads, dim, chunk int, need [attnParts]bool) (offs [attnParts]int64, size int64) {
	for i, b := range attnScratchBytes(t, heads, dim, chunk) {
		offs[i] = -1
		if need[i] {
			offs[i] = size
			size += (b + attnScratchAlign - 1) / attnScratchAlign * attnScratchAlign
		}
	}
	return offs, size
}

// attnScratchAt is the scratch laid out by attnScratchLayout in buf (a part not there is an
// empty buffer: the launches that get it never touch it).
func attnScratchAt(buf *Buffer, t, heads, dim, chunk int, need [attnParts]bool) *AttnTrainScratch {
	offs, _ := attnScratchLayout(t, heads, dim, chunk, need)
	bytes := attnScratchBytes(t, heads, dim, chunk)
	var parts [attnParts]*Buffer
	for i, o := range offs {
		if o < 0 {
			parts[i] = buf.Slice(0, 0)
			continue
		}
		parts[i] = buf.Slice(o, bytes[i])
	}
	return &AttnTrainScratch{T: t, Heads: heads, Dim: dim, Chunk: min(chunk, t),
		q: parts[partQ], k: parts[partK], v: parts[partV], g: parts[partG], s: parts[partS], dp: parts[partDP], p: parts[partP], ds: parts[partDS], dsum: parts[partDSum]}
}

// attnScratchFor is the attention scratch of the current node for t positions of heads x
// dim: scratch of this node in the arena (the function builds it once the arena has its
// address), or the program's scratch of that shape when attnScratchInArena is off. ops,
// when not nil, holds the rows' bf16 q, k and v (opsFor): row r's scratch has them there,
// and ready when the forward wrote them (the backward's).
func (c *compiler) attnScratchFor(t, heads, dim int, backward bool, ops *Buffer) (func(r int) *AttnTrainScratch, error) {
	chunk := min(t, autograd.PrefillChunk)
	var shared *AttnTrainScratch
	var buf *Buffer
	if attnScratchInArena {
		_, size := attnScratchLayout(t, heads, dim, chunk, attnScratchParts(backward, ops == nil))
		buf = c.pl.get(size)
		c.pl.put(buf) // used only inside this node's instruction
	} else {
		var err error
		if shared, err = c.attnScratch(t, heads, dim); err != nil {
			return nil, err
		}
	}
	var base *AttnTrainScratch
	var rows []*AttnTrainScratch // per batch row, when ops holds the operands
	return func(r int) *AttnTrainScratch {
		if base == nil {
			if base = shared; base == nil {
				base = attnScratchAt(buf, t, heads, dim, chunk, attnScratchParts(backward, ops == nil))
			}
		}
		if ops == nil {
			return base
		}
		for len(rows) <= r {
			sc := *base
			operand := int64(t) * int64(heads*dim) * 2
			row := 3 * operand * int64(len(rows))
			sc.q, sc.k, sc.v = ops.Slice(row, operand), ops.Slice(row+operand, operand), ops.Slice(row+2*operand, operand)
			sc.ready = backward
			rows = append(rows, &sc)
		}
		return rows[r]
	}, nil
}

// attnKeepsOperands: an attention whose backward runs in the same program keeps the bf16 q,
// k and v its forward rounds (for all rows, 3 t heads dim bf16 each) for the backward, which
// then reads neither the float32 q, k and v (the fused qkv projection, twice the bytes, dies
// at the forward) nor rounds them again (the same values: nothing writes q, k and v between
// the two). Tests compare the gradients with and without it, bit for bit.
var attnKeepsOperands = true

// keepsOperands reports whether the attention n (forward or backward) keeps its bf16
// operands for its backward: on, and the forward has a backward in this program.
func (c *compiler) keepsOperands(n *G.Node) bool {
	if !attnKeepsOperands || !attnScratchInArena {
		return false
	}
	switch o := n.Op().(type) {
	case *autograd.AttentionGradOp:
		return true
	case *autograd.AttentionOp:
		return c.hasUser(c.kids[n][0], func(op G.Op) bool { g, ok := op.(*autograd.AttentionGradOp); return ok && g.Forward() == o })
	}
	return false
}

// readsOperandsOnly: node n reads its input i only through the bf16 copies an attention's
// forward kept (q, k and v of an attention's backward): the input's buffer need not live
// until n.
func (c *compiler) readsOperandsOnly(n *G.Node, i int) bool {
	_, ok := n.Op().(*autograd.AttentionGradOp)
	return ok && i < 3 && attnKeepsOperands && attnScratchInArena
}
