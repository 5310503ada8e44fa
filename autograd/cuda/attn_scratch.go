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

import "github.com/qwen-tune/qwen-tune/autograd"

// attnScratchInArena switches the scratch into the arena (tests compare the gradients with
// and without it, bit for bit).
var attnScratchInArena = true

// attnScratchAlign keeps every part of the scratch on 256 bytes, as cuMemAlloc does.
const attnScratchAlign = 256

// attnScratchLayout is where each part of a scratch of t positions of heads x dim, chunks
// of chunk queries, starts in one buffer (q, k, v, g, s, dp, p, ds, dsum; -1 for a part a
// forward does not use) and the buffer's bytes.
func attnScratchLayout(t, heads, dim, chunk int, backward bool) (offs [9]int64, size int64) {
	operand := int64(t) * int64(heads*dim) * 2
	block := int64(heads) * int64(min(chunk, t)) * int64(t)
	bytes := [9]int64{operand, operand, operand, operand, block * 4, block * 4, block * 2, block * 2, int64(heads) * int64(t) * 4}
	forward := [9]bool{true, true, true, false, true, false, true, false, false}
	for i, b := range bytes {
		offs[i] = -1
		if backward || forward[i] {
			offs[i] = size
			size += (b + attnScratchAlign - 1) / attnScratchAlign * attnScratchAlign
		}
	}
	return offs, size
}

// attnScratchAt is the scratch laid out by attnScratchLayout in buf (parts not there are
// empty buffers at its start: a forward never touches them).
func attnScratchAt(buf *Buffer, t, heads, dim, chunk int, backward bool) *AttnTrainScratch {
	offs, _ := attnScratchLayout(t, heads, dim, chunk, backward)
	operand := int64(t) * int64(heads*dim) * 2
	block := int64(heads) * int64(min(chunk, t)) * int64(t)
	bytes := [9]int64{operand, operand, operand, operand, block * 4, block * 4, block * 2, block * 2, int64(heads) * int64(t) * 4}
	var parts [9]*Buffer
	for i, o := range offs {
		if o < 0 {
			parts[i] = buf.Slice(0, 0)
			continue
		}
		parts[i] = buf.Slice(o, bytes[i])
	}
	return &AttnTrainScratch{T: t, Heads: heads, Dim: dim, Chunk: min(chunk, t),
		q: parts[0], k: parts[1], v: parts[2], g: parts[3], s: parts[4], dp: parts[5], p: parts[6], ds: parts[7], dsum: parts[8]}
}

// attnScratchFor is the attention scratch of the current node for t positions of heads x
// dim: scratch of this node in the arena (the function builds it once the arena has its
// address), or the program's scratch of that shape when attnScratchInArena is off.
func (c *compiler) attnScratchFor(t, heads, dim int, backward bool) (func() *AttnTrainScratch, error) {
	chunk := min(t, autograd.PrefillChunk)
	if !attnScratchInArena {
		sc, err := c.attnScratch(t, heads, dim)
		return func() *AttnTrainScratch { return sc }, err
	}
	_, size := attnScratchLayout(t, heads, dim, chunk, backward)
	buf := c.pl.get(size)
	c.pl.put(buf) // used only inside this node's instruction
	var sc *AttnTrainScratch
	return func() *AttnTrainScratch {
		if sc == nil {
			sc = attnScratchAt(buf, t, heads, dim, chunk, backward)
		}
		return sc
	}, nil
}
