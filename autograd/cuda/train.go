//go:build qtcuda || cudaemu

package cuda

// The launchers of the training kernels (kernels/train.cu, loaded when one of them is first
// launched) and the chunked attention of training graphs: batched cuBLAS GEMMs on bf16
// copies of q, k, v and the output gradient, fp32 accumulation, around the kernels that take
// the softmax and its gradient of one chunk of queries at a time.

import (
	"fmt"
	"math"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/optim"
)

// trainBlock is the block size of the training kernels: a multiple of 32 (block reductions,
// one warp per row of attn_row_dot) and a power of two (sum_squares).
const trainBlock = 256

// hold reports whether every buffer holds at least bytes.
func hold(bytes int64, bufs ...*Buffer) bool {
	for _, b := range bufs {
		if b == nil || b.Bytes < bytes {
			return false
		}
	}
	return true
}

// RMSNormGradX is rmsnorm_grad_x: dx [n, h] = the gradient of RMSNorm's input x [n, h] with
// the bf16 weight w [h] from dy [n, h] (dx may be dy), as rmsNormGradX.
func (d *Device) RMSNormGradX(dx, x, w, dy *Buffer, n, h int, eps float32) error {
	if err := need(n > 0 && h > 0 && hold(int64(n)*int64(h)*4, dx, x, dy) && hold(int64(h)*2, w), "RMSNormGradX: buffers too small for [%d, %d]", n, h); err != nil {
		return err
	}
	return d.launch("rmsnorm_grad_x", n, trainBlock, 0, dx, x, w, dy, h, eps)
}

// SwiGLUGrad is swiglu_grad: da = dy silu(g) and dg = dy a s (1 + g (1 - s)) over n floats,
// the gradients of SwiGLU's up and gate inputs (da may be a, dg may be g).
func (d *Device) SwiGLUGrad(da, dg, a, g, dy *Buffer, n int64) error {
	if err := need(n > 0 && hold(n*4, da, dg, a, g, dy), "SwiGLUGrad: buffers too small for %d", n); err != nil {
		return err
	}
	return d.launch("swiglu_grad", grid(n), trainBlock, 0, da, dg, a, g, dy, n)
}

// RotaryPositions is rotary_pos: y = x rotated at the positions pos (int32 [b*t], restarting
// in each packed sequence as Step.Positions; nil: 0..t-1 in every row) with the per-row bases
// base [b] (float64); inverse rotates back (the gradient). x, y [b, t, heads, dim] with
// (b, t) rows xStride and yStride floats apart (y may be x).
func (d *Device) RotaryPositions(y, x, pos, base *Buffer, b, t, heads, dim, xStride, yStride int, inverse bool) error {
	rows := int64(b) * int64(t)
	width := int64(heads * dim)
	if err := need(rows > 0 && dim%2 == 0 && int64(xStride) >= width && int64(yStride) >= width && hold(((rows-1)*int64(xStride)+width)*4, x) &&
		hold(((rows-1)*int64(yStride)+width)*4, y) && hold(int64(b)*8, base) && (pos == nil || pos.Bytes >= rows*4), "RotaryPositions: shapes [%d, %d, %d, %d]", b, t, heads, dim); err != nil {
		return err
	}
	sign := float32(1)
	if inverse {
		sign = -1
	}
	return d.launch("rotary_pos", int(rows), trainBlock, 0, y, x, pos, base, t, heads, dim, xStride, yStride, sign)
}

// Dropout is the kernel dropout: y = x / (1 - p) where element i's word of the Philox stream (seed,
// key) keeps it, else 0, over n floats; the same mask as the CPU's Dropout with Step.Seed seed
// and the op's key, and the same bits (y may be x). The backward is the same call on the
// output gradient.
func (d *Device) Dropout(y, x *Buffer, n int64, p float64, seed, key uint64) error {
	if err := need(n > 0 && p >= 0 && p < 1 && hold(n*4, y, x), "Dropout: %d floats at probability %g", n, p); err != nil {
		return err
	}
	groups := (n + 3) / 4
	return d.launch("dropout", grid(groups), trainBlock, 0, y, x, n, int64(seed), int64(key), int64(autograd.Ref.DropThreshold(p)), float32(1/(1-p)))
}

// CrossEntropyRows is cross_entropy_rows: for the logits [rows, vocab] of rows/seq sequences
// of seq positions with labels [rows] (int32, Step.Labels), each row's loss and log-sum-exp
// (float32 [rows] each) against the next position's label (0 for a row whose target is
// IgnoreIndex or that is its sequence's last). CrossEntropy's loss is the sum of the losses
// over Targets(labels). Labels are IgnoreIndex or in [0, vocab), as CrossEntropy checks on
// the host (a negative one counts as ignored; one of vocab or more gives a NaN loss).
func (d *Device) CrossEntropyRows(loss, lse, logits, labels *Buffer, rows, seq, vocab int) error {
	if err := need(rows > 0 && seq > 0 && rows%seq == 0 && vocab > 0 && hold(int64(rows)*int64(vocab)*4, logits) && hold(int64(rows)*4, loss, lse, labels), "CrossEntropyRows: [%d, %d] logits in rows of %d", rows, vocab, seq); err != nil {
		return err
	}
	return d.launch("cross_entropy_rows", rows, trainBlock, 0, loss, lse, logits, labels, seq, vocab)
}

// CrossEntropyGrad is cross_entropy_grad: dx [rows, vocab] = (softmax - onehot(target)) scale
// with the lse of CrossEntropyRows, zero on rows without a target (dx may be logits); scale =
// dloss / Targets(labels), 0 when there are none.
func (d *Device) CrossEntropyGrad(dx, logits, lse, labels *Buffer, rows, seq, vocab int, scale float32) error {
	if err := need(rows > 0 && seq > 0 && rows%seq == 0 && vocab > 0 && hold(int64(rows)*int64(vocab)*4, dx, logits) && hold(int64(rows)*4, lse, labels), "CrossEntropyGrad: [%d, %d] logits in rows of %d", rows, vocab, seq); err != nil {
		return err
	}
	return d.launch("cross_entropy_grad", rows, trainBlock, 0, dx, logits, lse, labels, seq, vocab, scale)
}

// EmbeddingRowsGrad is embedding_rows_grad: the gradient drows [rows, h] of EmbeddingRows's
// partial table (the rows of ids offset..offset+rows-1) from dy [n, h] at the token ids
// [n] (int32), summed in position order: bitwise the CPU's.
func (d *Device) EmbeddingRowsGrad(drows, dy, ids *Buffer, n, h, rows, offset int) error {
	if err := need(n > 0 && h > 0 && rows > 0 && hold(int64(rows)*int64(h)*4, drows) && hold(int64(n)*int64(h)*4, dy) && hold(int64(n)*4, ids), "EmbeddingRowsGrad: %d rows of %d from %d positions", rows, h, n); err != nil {
		return err
	}
	return d.launch("embedding_rows_grad", rows*((h+trainBlock-1)/trainBlock), trainBlock, 0, drows, dy, ids, n, h, offset)
}

// AdamW is the kernel adamw: update number step (1 for the first) at learning rate lr of n
// parameters p with their float32 moments m, v and gradient g, with o's hyperparameters (its
// host moments are not used): bitwise what o.Update computes.
func (d *Device) AdamW(p, m, v, g *Buffer, n int64, o *optim.AdamW, step int, lr float64) error {
	if err := need(n > 0 && step > 0 && hold(n*4, p, m, v, g), "AdamW: %d parameters at step %d", n, step); err != nil {
		return err
	}
	stepSize, decay, bc2 := o.Scalars(step, lr)
	return d.launch("adamw", grid(n), trainBlock, 0, p, m, v, g, n, o.Beta1, o.Beta2, o.Eps, stepSize, decay, bc2)
}

// SumSquaresBlocks is sum_squares's fixed grid: how many float64 partial sums it writes.
const SumSquaresBlocks = 256

// SumSquares is sum_squares: partial [SumSquaresBlocks] (float64) gets the sums of g[i]^2
// over n floats, each block's elements in a fixed order.
func (d *Device) SumSquares(partial, g *Buffer, n int64) error {
	if err := need(n > 0 && hold(n*4, g) && hold(SumSquaresBlocks*8, partial), "SumSquares: %d floats", n); err != nil {
		return err
	}
	return d.launch("sum_squares", SumSquaresBlocks, trainBlock, 0, partial, g, n)
}

// ScaleF32 is scale_f32: x = float32(float64(x) s) over n floats.
func (d *Device) ScaleF32(x *Buffer, n int64, s float64) error {
	if err := need(n > 0 && hold(n*4, x), "ScaleF32: %d floats", n); err != nil {
		return err
	}
	return d.launch("scale_f32", grid(n), trainBlock, 0, x, n, s)
}

// ClipGradNorm is optim.ClipGradNorm of the float32 gradients grads (sizes[i] floats each):
// the global norm from SumSquares's partials, summed on the host in a fixed order (the same
// bits every run), and ScaleF32 by optim.ClipCoef when it is below 1. It returns the norm
// before clipping; maxNorm <= 0 only measures.
func (d *Device) ClipGradNorm(grads []*Buffer, sizes []int64, maxNorm float64) (float64, error) {
	if len(grads) != len(sizes) || len(grads) == 0 {
		return 0, fmt.Errorf("cuda: ClipGradNorm of %d gradients with %d sizes", len(grads), len(sizes))
	}
	partial, err := d.Alloc(int64(len(grads))*SumSquaresBlocks*8, "gradient norm partial sums")
	if err != nil {
		return 0, err
	}
	defer d.Free(partial)
	for i, g := range grads {
		if err := d.SumSquares(partial.Slice(int64(i)*SumSquaresBlocks*8, SumSquaresBlocks*8), g, sizes[i]); err != nil {
			return 0, err
		}
	}
	sums := make([]float64, len(grads)*SumSquaresBlocks)
	if err := Download(d, sums, partial); err != nil {
		return 0, err
	}
	var ss float64
	for _, s := range sums {
		ss += s
	}
	norm := math.Sqrt(ss)
	if maxNorm <= 0 {
		return norm, nil
	}
	if coef := optim.ClipCoef(norm, maxNorm); coef < 1 {
		for i, g := range grads {
			if err := d.ScaleF32(g, sizes[i], coef); err != nil {
				return 0, err
			}
		}
	}
	return norm, nil
}

// AttnTrainRow locates one batch row's operands of AttentionTrainForward and
// AttentionTrainBackward. q, k and v are float32 [T, heads*dim] inside QKV, rows Stride floats
// apart, at QOff, KOff and VOff floats: c_attn's fused output as the executor keeps it
// (Stride 3*heads*dim, offsets 0, heads*dim and 2*heads*dim); the backward writes dq, dk and
// dv at the same places of a buffer of the same layout. KeyMask [T] bytes (nonzero: a real
// key, as Step.KeyMask) and Segments [T] int32 (packed sequences, as Step.Segments) are the
// row's; nil for none.
type AttnTrainRow struct {
	QKV                      *Buffer
	Stride, QOff, KOff, VOff int
	KeyMask, Segments        *Buffer
}

// AttnTrainScratch is the working memory of the training attention of T positions of heads
// x dim, scored Chunk queries at a time.
type AttnTrainScratch struct {
	T, Heads, Dim, Chunk int
	q, k, v, g           *Buffer // bf16 [T, heads*dim]: the GEMMs' q, k, v and output gradient
	s, dp                *Buffer // float32 [heads, Chunk, T]: a chunk's raw scores and dO V^T
	p, ds                *Buffer // bf16 [heads, Chunk, T]: its probabilities and score gradients
	dsum                 *Buffer // float32 [heads, T]: dO . O per query
	// ready: q, k and v hold the row's operands already (its forward's, kept for the
	// backward), which AttentionTrainBackward then does not round again
	ready bool
}

// NewAttnTrainScratch allocates the scratch of t positions of heads x dim for chunks of chunk
// queries (at most t; PrefillChunk is the executor's): 8 t heads dim bytes for the bf16
// operands and 12 heads chunk t for one chunk.
func (d *Device) NewAttnTrainScratch(t, heads, dim, chunk int) (*AttnTrainScratch, error) {
	if t <= 0 || heads <= 0 || dim <= 0 || chunk <= 0 {
		return nil, fmt.Errorf("cuda: attention scratch of %d positions, %d heads of %d, chunks of %d", t, heads, dim, chunk)
	}
	sc := &AttnTrainScratch{T: t, Heads: heads, Dim: dim, Chunk: min(chunk, t)}
	operand := int64(t) * int64(heads*dim) * 2
	block := int64(heads) * int64(sc.Chunk) * int64(t)
	for _, b := range []struct {
		buf   **Buffer
		bytes int64
		what  string
	}{{&sc.q, operand, "bf16 q"}, {&sc.k, operand, "bf16 k"}, {&sc.v, operand, "bf16 v"}, {&sc.g, operand, "bf16 output gradient"},
		{&sc.s, block * 4, "chunk scores"}, {&sc.dp, block * 4, "chunk dO V^T"}, {&sc.p, block * 2, "chunk probabilities"},
		{&sc.ds, block * 2, "chunk score gradients"}, {&sc.dsum, int64(heads) * int64(t) * 4, "dO . O"}} {
		var err error
		if *b.buf, err = d.Alloc(b.bytes, "attention "+b.what); err != nil {
			sc.Free(d)
			return nil, err
		}
	}
	return sc, nil
}

// Free releases the scratch.
func (sc *AttnTrainScratch) Free(d *Device) {
	for _, b := range []*Buffer{sc.q, sc.k, sc.v, sc.g, sc.s, sc.dp, sc.p, sc.ds, sc.dsum} {
		d.Free(b)
	}
}

// view is the part of the row's fused buffer b from float off on.
func (a *AttnTrainRow) view(b *Buffer, off int) *Buffer {
	return b.Slice(int64(off)*4, b.Bytes-int64(off)*4)
}

// check validates the row's operands, a fused buffer b of its layout (QKV, or the gradients')
// and the float32 buffers of [T, heads*dim] elements against the scratch's shape.
func (a *AttnTrainRow) check(sc *AttnTrainScratch, b *Buffer, rows ...*Buffer) error {
	t, width := int64(sc.T), sc.Heads*sc.Dim
	offs := []int{a.QOff, a.KOff, a.VOff}
	ok := a.Stride >= width && hold(((t-1)*int64(a.Stride)+int64(max(a.QOff, a.KOff, a.VOff)+width))*4, a.QKV, b) &&
		hold(t*int64(width)*4, rows...) && (a.KeyMask == nil || a.KeyMask.Bytes >= t) && (a.Segments == nil || a.Segments.Bytes >= t*4)
	for _, off := range offs {
		ok = ok && off >= 0 && off+width <= a.Stride
	}
	return need(ok, "training attention: %d positions of %d x %d with rows of %d floats (q, k, v at %v): buffers too small or overlapping rows", sc.T, sc.Heads, sc.Dim, a.Stride, offs)
}

// operands rounds q, k and v of the row to the scratch's bf16 copies.
func (d *Device) operands(a *AttnTrainRow, sc *AttnTrainScratch) error {
	width := sc.Heads * sc.Dim
	for _, o := range []struct {
		dst *Buffer
		off int
	}{{sc.q, a.QOff}, {sc.k, a.KOff}, {sc.v, a.VOff}} {
		if err := d.ToBF16Rows(o.dst, a.view(a.QKV, o.off), sc.T, width, a.Stride); err != nil {
			return err
		}
	}
	return nil
}

// attnNT is c [heads, tc, l] (float32) = x_h[t0:t0+tc] y_h[0:l]^T for every head h, x and y
// bf16 [T, heads*dim]: the scores (x = q, y = k) and dP (x = dO, y = v) of a chunk.
func (d *Device) attnNT(c, x, y *Buffer, t0, tc, l int, sc *AttnTrainScratch) error {
	width, dim := sc.Heads*sc.Dim, sc.Dim
	// per head, column-major: c^T [l, tc] = y_h [l, dim] . x_h^T [dim, tc]
	return d.gemmBatched(blasOpT, blasOpN, l, tc, dim, y, dtypeBF16, width, int64(dim),
		x.Slice(int64(t0*width*2), int64((sc.T-t0)*width*2)), dtypeBF16, width, int64(dim),
		0, c, dtypeF32, l, int64(tc*l), sc.Heads)
}

// attnNN is out_h [tc, dim] = x_h [tc, l] y_h[0:l] for every head h, x bf16 [heads, tc, l],
// y bf16 [T, heads*dim], out float32 rows ldo floats apart (from the chunk's first query): O
// (x = P, y = v) and dQ (x = dS, y = k) of a chunk.
func (d *Device) attnNN(out *Buffer, ldo int, x, y *Buffer, tc, l int, sc *AttnTrainScratch) error {
	width, dim := sc.Heads*sc.Dim, sc.Dim
	// per head, column-major: out^T [dim, tc] = y_h^T [dim, l] . x_h^T [l, tc]
	return d.gemmBatched(blasOpN, blasOpN, dim, tc, l, y, dtypeBF16, width, int64(dim),
		x, dtypeBF16, l, int64(tc*l), 0, out, dtypeF32, ldo, int64(dim), sc.Heads)
}

// attnTN is out_h[0:l] [l, dim] (beta 1: +)= x_h^T [l, tc] y_h[t0:t0+tc] for every head h, x
// bf16 [heads, tc, l], y bf16 [T, heads*dim], out float32 rows ldo floats apart: dV (x = P,
// y = dO) and dK (x = dS, y = q) of a chunk.
func (d *Device) attnTN(out *Buffer, ldo int, x, y *Buffer, t0, tc, l int, beta float32, sc *AttnTrainScratch) error {
	width, dim := sc.Heads*sc.Dim, sc.Dim
	// per head, column-major: out^T [dim, l] = y_h^T [dim, tc] . x_h [tc, l]
	return d.gemmBatched(blasOpN, blasOpT, dim, l, tc, y.Slice(int64(t0*width*2), int64((sc.T-t0)*width*2)), dtypeBF16, width, int64(dim),
		x, dtypeBF16, l, int64(tc*l), beta, out, dtypeF32, ldo, int64(dim), sc.Heads)
}

// AttentionTrainForward is the causal attention of one batch row of a training graph, as
// attnForward: out float32 [T, heads*dim] (merged heads) and lse float32 [heads, T] (the
// scaled scores' log-sum-exps, -inf for a query that sees no key, whose output is 0). Scale
// 1/sqrt(dim), no LogN. Chunk by chunk of queries [t0, t0+tc) over the keys [0, t0+tc): S = Q
// K^T (batched GEMM, bf16 inputs, fp32 out), attn_train_softmax (masks, lse, bf16 P), O = P V.
func (d *Device) AttentionTrainForward(out, lse *Buffer, a AttnTrainRow, sc *AttnTrainScratch) error {
	t, width := sc.T, sc.Heads*sc.Dim
	if err := a.check(sc, a.QKV, out); err != nil {
		return err
	}
	if err := need(hold(int64(sc.Heads*t)*4, lse), "AttentionTrainForward: lse of %d x %d", sc.Heads, t); err != nil {
		return err
	}
	if err := d.operands(&a, sc); err != nil {
		return err
	}
	scale := float32(1 / math.Sqrt(float64(sc.Dim)))
	for t0 := 0; t0 < t; t0 += sc.Chunk {
		tc := min(sc.Chunk, t-t0)
		l := t0 + tc
		if err := d.attnNT(sc.s, sc.q, sc.k, t0, tc, l, sc); err != nil {
			return err
		}
		if err := d.launch("attn_train_softmax", sc.Heads*tc, trainBlock, 0, sc.p, lse, sc.s, a.KeyMask, a.Segments, t0, tc, t, l, scale); err != nil {
			return err
		}
		if err := d.attnNN(out.Slice(int64(t0*width*4), int64((t-t0)*width*4)), width, sc.p, sc.v, tc, l, sc); err != nil {
			return err
		}
	}
	return nil
}

// AttentionTrainBackward is attnBackward of one batch row: from the output gradient dout, the
// forward's out and lse (float32 [T, heads*dim], [T, heads*dim], [heads, T]), dq, dk and dv
// (float32) go to dqkv at the row's offsets of q, k and v (its other columns are not
// written). dsum = dO . O (attn_row_dot); then per chunk of queries, the last first: S = Q
// K^T and dP = dO V^T (batched GEMMs), attn_train_dscores (P and dS = scale P (dP - dsum) in
// bf16), dV += P^T dO, dQ = dS K, dK += dS^T Q. The last chunk sees every key, so its dK and
// dV products write them (beta 0) and the earlier chunks' add to them.
func (d *Device) AttentionTrainBackward(dqkv, dout, out, lse *Buffer, a AttnTrainRow, sc *AttnTrainScratch) error {
	t, width := sc.T, sc.Heads*sc.Dim
	if err := a.check(sc, dqkv, dout, out); err != nil {
		return err
	}
	if err := need(hold(int64(sc.Heads*t)*4, lse), "AttentionTrainBackward: lse of %d x %d", sc.Heads, t); err != nil {
		return err
	}
	if !sc.ready {
		if err := d.operands(&a, sc); err != nil {
			return err
		}
	}
	if err := d.ToBF16Rows(sc.g, dout, t, width, width); err != nil {
		return err
	}
	if err := d.launch("attn_row_dot", (sc.Heads*t*32+trainBlock-1)/trainBlock, trainBlock, 0, sc.dsum, dout, out, t, sc.Heads, sc.Dim); err != nil {
		return err
	}
	scale := float32(1 / math.Sqrt(float64(sc.Dim)))
	dq, dk, dv := a.view(dqkv, a.QOff), a.view(dqkv, a.KOff), a.view(dqkv, a.VOff)
	last := (t - 1) / sc.Chunk * sc.Chunk
	for t0 := last; t0 >= 0; t0 -= sc.Chunk {
		tc := min(sc.Chunk, t-t0)
		l := t0 + tc
		beta := float32(1)
		if t0 == last {
			beta = 0
		}
		if err := d.attnNT(sc.s, sc.q, sc.k, t0, tc, l, sc); err != nil {
			return err
		}
		if err := d.attnNT(sc.dp, sc.g, sc.v, t0, tc, l, sc); err != nil {
			return err
		}
		if err := d.launch("attn_train_dscores", sc.Heads*tc, trainBlock, 0, sc.p, sc.ds, sc.s, sc.dp, lse, sc.dsum, a.KeyMask, a.Segments, t0, tc, t, l, scale); err != nil {
			return err
		}
		if err := d.attnTN(dv, a.Stride, sc.p, sc.g, t0, tc, l, beta, sc); err != nil {
			return err
		}
		if err := d.attnNN(dq.Slice(int64(t0*a.Stride*4), dq.Bytes-int64(t0*a.Stride*4)), a.Stride, sc.ds, sc.k, tc, l, sc); err != nil {
			return err
		}
		if err := d.attnTN(dk, a.Stride, sc.ds, sc.q, t0, tc, l, beta, sc); err != nil {
			return err
		}
	}
	return nil
}
