package autograd

// Causal self-attention with a padding mask, LogN query scaling and an optional KV cache:
//
//	q, k, v [B, T, H, D] (q and k after rotary) -> out [B*T, H*D] (heads merged, ready for c_proj)
//	query t of row b sits at absolute position p = Step.Past + t and attends key j when
//	j <= p and Step.KeyMask[b, j] (and, when packing, j is in the query's segment); keys
//	0..Past-1 come from the cache, Past..Past+T-1 from k
//	s_j   = c_p (q . k_j) / sqrt(D), c_p = LogN factor (1 unless Step.LogNSeq is exceeded)
//	out   = sum_j softmax(s)_j v_j   (a query with no visible key gets zeros)
//	lse   = log sum_j exp(s_j)       [B, H, T], kept by the op for its backward
//
// With a cache, k and v are first written at positions Past..Past+T-1 of the layer's cache.
// Backward (no cache), with P = exp(s - lse) recomputed, G = d out and D_t = G_t . out_t:
//
//	dV += P^T G;  dP = G V^T;  dS = P (dP - D);  dQ = c dS K / sqrt(D);  dK += dS^T (c Q) / sqrt(D)
//
// Both run blocked as flash attention does (flash.go): queries in blocks of flashRows, keys
// in blocks of flashKeys, every product a small GEMM, the softmax online over key blocks, so
// no [T, T] scores exist at once and the work grows as the FLOPs do.

import (
	"fmt"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// AttentionOp is the op of Attention (its gradient is AttentionGradOp).
type AttentionOp struct {
	base
	layer int
	step  *Step
	// lse is the last Do's log-sum-exp of every query's scores ([]float32 or []float64,
	// [B, H, T]); the backward, which gorgonia runs after the forward in the same pass, reads
	// it instead of a second pass over the keys.
	lse any
}

// Attention is causal attention of q over k, v [B, T, H, D]; layer picks the cache slot.
func Attention(q, k, v *G.Node, layer int, step *Step) (*G.Node, error) {
	return G.ApplyOp(&AttentionOp{base: newBase("Attention"), layer: layer, step: step}, q, k, v)
}

func (o *AttentionOp) Arity() int { return 3 }
func (o *AttentionOp) Type() hm.Type {
	return hm.NewFnType(tt(4, tvA), tt(4, tvA), tt(4, tvA), tt(2, tvA))
}
func (o *AttentionOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	var s [3]tensor.Shape
	for i := range s {
		var err error
		if s[i], err = shapeOf(in[i]); err != nil {
			return nil, err
		}
		if err := wantDims("Attention", s[i], 4, "q, k and v"); err != nil {
			return nil, err
		}
	}
	if !s[0].Eq(s[1]) || !s[0].Eq(s[2]) {
		return nil, fmt.Errorf("autograd: Attention: q %v, k %v and v %v differ", s[0], s[1], s[2])
	}
	return tensor.Shape{s[0][0] * s[0][1], s[0][2] * s[0][3]}, nil
}

// attnInputs unpacks q, k, v and checks them against the step.
func attnInputs(v []G.Value, st *Step) (q, k, val *tensor.Dense, err error) {
	if q, err = dense(v[0], "Attention q"); err != nil {
		return
	}
	if k, err = dense(v[1], "Attention k"); err != nil {
		return
	}
	if val, err = dense(v[2], "Attention v"); err != nil {
		return
	}
	if s := q.Shape(); s[0] != st.Batch || s[1] != st.Seq {
		err = fmt.Errorf("autograd: Attention: input %v but the step is %d x %d", s, st.Batch, st.Seq)
	}
	return
}

func (o *AttentionOp) Do(v ...G.Value) (G.Value, error) {
	q, k, val, err := attnInputs(v, o.step)
	if err != nil {
		return nil, err
	}
	var out *tensor.Dense
	switch q.Dtype() {
	case tensor.Float32:
		out, o.lse, err = attnForward[float32](q, k, val, o.layer, o.step, o.pool)
	case tensor.Float64:
		out, o.lse, err = attnForward[float64](q, k, val, o.layer, o.step, o.pool)
	default:
		err = fmt.Errorf("autograd: Attention of type %v", q.Dtype())
	}
	return out, err
}

// kvSource is where row b's keys and values live: the cache or the k, v inputs, both laid
// out [B, stride, H, D].
func kvSource[T Float](k, v *tensor.Dense, layer int, st *Step) (kd, vd []T, stride int, err error) {
	kd, vd, stride = k.Data().([]T), v.Data().([]T), st.Seq
	c := st.Cache
	if c == nil {
		return kd, vd, stride, nil
	}
	if c.OnDevice {
		return nil, nil, 0, fmt.Errorf("autograd: the KV cache lives on a GPU; run this graph with the executor that holds it")
	}
	kc, ok1 := any(c.K[layer]).([]T)
	vc, ok2 := any(c.V[layer]).([]T)
	if !ok1 || !ok2 {
		return nil, nil, 0, fmt.Errorf("autograd: the KV cache is float32; activations are %v", k.Dtype())
	}
	hd := c.Heads * c.HeadDim
	s := k.Shape()
	if s[2]*s[3] != hd {
		return nil, nil, 0, fmt.Errorf("autograd: KV cache has %d x %d heads; attention has %d x %d", c.Heads, c.HeadDim, s[2], s[3])
	}
	for b := 0; b < st.Batch; b++ {
		dst := (b*c.Max + st.Past) * hd
		copy(kc[dst:dst+st.Seq*hd], kd[b*st.Seq*hd:(b+1)*st.Seq*hd])
		copy(vc[dst:dst+st.Seq*hd], vd[b*st.Seq*hd:(b+1)*st.Seq*hd])
	}
	return kc, vc, c.Max, nil
}

func (o *AttentionOp) DiffWRT(int) []bool { return []bool{true, true, true} }

func (o *AttentionOp) SymDiff(in G.Nodes, out, grad *G.Node) (G.Nodes, error) {
	packed, err := G.ApplyOp(&AttentionGradOp{base: newBase("AttentionGrad"), fwd: o}, in[0], in[1], in[2], out, grad)
	if err != nil {
		return nil, err
	}
	grads := make(G.Nodes, 3)
	for i := range grads {
		if grads[i], err = G.ApplyOp(&PickOp{base: newBase("AttentionGradPick"), part: i, of: 3}, packed); err != nil {
			return nil, err
		}
	}
	return grads, nil
}

// AttentionGradOp computes dq, dk, dv together from q, k, v, out and d out, packed as
// [3, B, T, H, D].
type AttentionGradOp struct {
	base
	fwd *AttentionOp
}

func (o *AttentionGradOp) Arity() int { return 5 }
func (o *AttentionGradOp) Type() hm.Type {
	return hm.NewFnType(tt(4, tvA), tt(4, tvA), tt(4, tvA), tt(2, tvA), tt(2, tvA), tt(5, tvA))
}
func (o *AttentionGradOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	q, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	return append(tensor.Shape{3}, q...), nil
}

func (o *AttentionGradOp) Do(v ...G.Value) (G.Value, error) {
	st := o.fwd.step
	q, k, val, err := attnInputs(v, st)
	if err != nil {
		return nil, err
	}
	out, err := dense(v[3], "AttentionGrad y")
	if err != nil {
		return nil, err
	}
	g, err := dense(v[4], "AttentionGrad dy")
	if err != nil {
		return nil, err
	}
	if st.Cache != nil {
		return nil, fmt.Errorf("autograd: attention gradients with a KV cache are not supported; train without a cache")
	}
	switch q.Dtype() {
	case tensor.Float32:
		return attnBackward[float32](q, k, val, out, g, o.fwd.lse, st, o.pool)
	case tensor.Float64:
		return attnBackward[float64](q, k, val, out, g, o.fwd.lse, st, o.pool)
	}
	return nil, fmt.Errorf("autograd: AttentionGrad of type %v", q.Dtype())
}

// PickOp takes part `part` of `of` equal parts along the first axis: [of, ...] -> [...].
type PickOp struct {
	base
	part, of int
}

func (o *PickOp) Arity() int    { return 1 }
func (o *PickOp) Type() hm.Type { return hm.NewFnType(tt(5, tvA), tt(4, tvA)) }
func (o *PickOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	s, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	return s[1:].Clone(), nil
}
func (o *PickOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	s := x.Shape()
	out := o.result(x.Dtype(), s[1:]...)
	n := out.Size()
	switch x.Dtype() {
	case tensor.Float32:
		copy(out.Data().([]float32), x.Data().([]float32)[o.part*n:(o.part+1)*n])
	case tensor.Float64:
		copy(out.Data().([]float64), x.Data().([]float64)[o.part*n:(o.part+1)*n])
	default:
		return nil, fmt.Errorf("autograd: pick of type %v", x.Dtype())
	}
	return out, nil
}
