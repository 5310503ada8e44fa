package autograd

// Ref: the CPU computation of each op on plain values, for executors on other devices
// (autograd/cuda) to check their kernels against. Each method runs the op's own CPU code in
// float32, not a second implementation, except the float64 attentions over a cache for one
// chunk of queries (Prefill, Decode), which reference_test.go checks against the Attention op.

import (
	"math"
	"math/rand/v2"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// References are the CPU computations of the ops on plain values (Ref).
type References struct{}

// Ref holds the CPU references of the ops.
var Ref References

// Widen is bf16 bits as float32.
func (References) Widen(v []uint16) []float32 { return widen(v) }

// BF16 is one bf16 word as float32.
func (References) BF16(b uint16) float32 { return bf16(b) }

// Normal is n standard normal float32s.
func (References) Normal(r *rand.Rand, n int) []float32 { return randF32(r, n) }

// Prefill is causal attention of t queries at positions past.. over a cache, in float64,
// with LogN scaling when st.LogNSeq is set.
func (References) Prefill(q, k, v []float32, h, dim, past, t int, scale float64, st *Step) []float32 {
	return refPrefill(q, k, v, h, dim, past, t, scale, st)
}

// Decode is single-query attention over a cache, in float64.
func (References) Decode(q, k, v []float32, b, h, dim, maxLen, length int, scale float64) []float32 {
	return refDecode(q, k, v, b, h, dim, maxLen, length, scale)
}

// LogN is Qwen's logn_tensor factor for the query at absolute position pos among keys keys
// when use_logn_attn is on with seq_length seq (1 when off or within seq_length).
func (References) LogN(seq, keys, pos int) float64 { return refLogN(seq, keys, pos) }

// RMSNorm is RMSNorm's forward: x [N, H], w [H].
func (References) RMSNorm(x, w *tensor.Dense, eps float64) (*tensor.Dense, error) {
	return rmsNormForward[float32](x, w, eps, nil)
}

// RMSNormGradX is RMSNorm's input gradient from dy g.
func (References) RMSNormGradX(x, w, g *tensor.Dense, eps float64) (*tensor.Dense, error) {
	return rmsNormGradX[float32](x, w, g, eps, nil)
}

// SwiGLU is SwiGLU (grad 0) of ins a, g, or its gradient by a (grad 1) or g (grad 2) of
// ins a, g, dy.
func (References) SwiGLU(ins []*tensor.Dense, grad int) *tensor.Dense {
	return swiglu[float32](ins, grad, nil)
}

// Rotary is rotary embedding of x [B, T, heads, dim] at st's positions, or its gradient
// (inverse).
func (References) Rotary(x *tensor.Dense, st *Step, inverse bool) *tensor.Dense {
	return rotate[float32](x, st, inverse, nil)
}

// Gather writes rows idx of the table w [rows, h] (bf16 or float32; -1 gives zeros) to out.
func (References) Gather(w *tensor.Dense, idx []int32, h int, out []float32) error {
	return gatherRows(w, idx, h, out)
}

// Scatter adds row i of g [len(idx), h] to row idx[i] of out (-1 skipped): the table's
// gradient.
func (References) Scatter(g []float32, idx []int32, h int, out []float32) {
	scatterRows(g, idx, h, out)
}

// Linear is out[n, m] = alpha x[n, k] W^T for W [m, k] (bf16 or float32).
func (References) Linear(x []float32, n, k int, w *tensor.Dense, m int, out []float32, alpha float32) error {
	return matmulNT(x, n, k, w, m, out, alpha)
}

// Dropout writes x dropped with probability p by the masks of (seed, key) to y.
func (References) Dropout(x, y []float32, p float64, seed, key uint64) { dropout(x, y, p, seed, key) }

// DropThreshold is the 32-bit word below which dropout with probability p drops an element.
func (References) DropThreshold(p float64) uint64 { return keepThreshold(p) }

// LogSumExp is log sum exp of a row, in float64.
func (References) LogSumExp(row []float32) float64 { return logSumExp(row) }

// CrossEntropyGrad is the gradient of the shifted cross-entropy by the logits x [N, V] for
// dloss, with st's targets.
func (References) CrossEntropyGrad(x *tensor.Dense, st *Step, dloss float64) *tensor.Dense {
	n, v := x.Shape()[0], x.Shape()[1]
	_, g := crossEntropy[float32](x, st, true, dloss, tensor.New(tensor.WithShape(n, v), tensor.Of(tensor.Float32)), nil)
	return g
}

// Attention is causal attention of q, k, v [B, T, heads, dim] by st (padding, packing),
// with what its gradient reads (saved).
func (References) Attention(q, k, v *tensor.Dense, st *Step) (out *tensor.Dense, saved []float32, err error) {
	return attnForward[float32](q, k, v, 0, st, nil)
}

// AttentionGrad is attention's gradients [3, B, T, heads, dim] (dq, dk, dv) from dy g.
func (References) AttentionGrad(q, k, v, out, g *tensor.Dense, saved []float32, st *Step) (*tensor.Dense, error) {
	return attnBackward[float32](q, k, v, out, g, saved, st, nil)
}

// PlaceColumns is PlaceColumns' forward: x [N, s] into columns off.. of [N, width] zeros.
func (References) PlaceColumns(x *tensor.Dense, off, width int) (*tensor.Dense, error) {
	v, err := (&ColumnsOp{base: newBase("PlaceColumns"), off: off, width: width, s: x.Shape()[1]}).Do(x)
	if err != nil {
		return nil, err
	}
	return v.(*tensor.Dense), nil
}

// Int4Linear is the Int4 layer's forward of x [M, K].
func (References) Int4Linear(w *Int4, x *tensor.Dense) (*tensor.Dense, error) {
	v, err := (&Int4Op{base: newBase("Int4Linear"), w: w}).Do(x)
	if err != nil {
		return nil, err
	}
	return v.(*tensor.Dense), nil
}

// widen is bf16 bits as float32.
func widen(v []uint16) []float32 {
	out := make([]float32, len(v))
	for i, b := range v {
		out[i] = bf16(b)
	}
	return out
}

// refPrefill is causal attention of t queries at positions past.. over a cache, in float64,
// with LogN scaling when st.LogNSeq is set.
func refPrefill(q, k, v []float32, h, dim, past, t int, scale float64, st *Step) []float32 {
	width := h * dim
	out := make([]float32, t*width)
	for ti := 0; ti < t; ti++ {
		pos := past + ti
		for hi := 0; hi < h; hi++ {
			refAttend(q[ti*width+hi*dim:][:dim], pos+1, scale*refLogN(st.LogNSeq, past+t, pos), k[hi*dim:], v[hi*dim:], width, out[ti*width+hi*dim:][:dim])
		}
	}
	return out
}

// refLogN is Qwen's logn_tensor entry for the query at absolute position pos, used when
// use_logn_attn is on and the key length exceeds seq_length: log_seq(pos+1) for pos+1 >
// seq_length, 1 otherwise (seq <= 0 turns it off).
func refLogN(seq, keys, pos int) float64 {
	if seq <= 0 || keys <= seq || pos+1 <= seq {
		return 1
	}
	return math.Log(float64(pos+1)) / math.Log(float64(seq))
}

// refAttend is one query's softmax attention over n keys in float64: key and value j are
// the dim floats at j*stride of k and v; the result goes to out.
func refAttend(qv []float32, n int, scale float64, k, v []float32, stride int, out []float32) {
	s := make([]float64, n)
	for j := range s {
		kv := k[j*stride:][:len(qv)]
		for i := range qv {
			s[j] += float64(qv[i]) * float64(kv[i])
		}
		s[j] *= scale
	}
	refmath.Softmax(s)
	for i := range out {
		var acc float64
		for j := range s {
			acc += s[j] * float64(v[j*stride+i])
		}
		out[i] = float32(acc)
	}
}

// refDecode is single-query attention over a cache, in float64.
func refDecode(q, k, v []float32, b, h, dim, maxLen, length int, scale float64) []float32 {
	out := make([]float32, b*h*dim)
	stride := h * dim
	for bi := 0; bi < b; bi++ {
		for hi := 0; hi < h; hi++ {
			off := bi*maxLen*stride + hi*dim
			refAttend(q[(bi*h+hi)*dim:][:dim], length, scale, k[off:], v[off:], stride, out[(bi*h+hi)*dim:][:dim])
		}
	}
	return out
}

// randF32 is n standard normal float32s.
func randF32(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}
