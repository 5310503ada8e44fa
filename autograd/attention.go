package autograd

// Causal self-attention with a padding mask, LogN query scaling and an optional KV cache:
//
//	q, k, v [B, T, H, D] (q and k after rotary) -> out [B*T, H*D] (heads merged, ready for c_proj)
//	query t of row b sits at absolute position p = Step.Past + t and attends key j when
//	j <= p and Step.KeyMask[b, j] (and, when packing, j is in the query's segment); keys
//	0..Past-1 come from the cache, Past..Past+T-1 from k
//	s_j   = c_p (q . k_j) / sqrt(D), c_p = LogN factor (1 unless Step.LogNSeq is exceeded)
//	out   = sum_j softmax(s)_j v_j   (a query with no visible key gets zeros)
//
// With a cache, k and v are first written at positions Past..Past+T-1 of the layer's cache.
// Backward (no cache), per query row with P = softmax(s), G = d out:
//
//	dV += P^T G;  dP = G V^T;  dS = P (dP - rowsum(P dP));  dQ = c dS K / sqrt(D);  dK += dS^T (c Q) / sqrt(D)
//
// Scores are computed for blocks of queryBlock rows at a time, so memory is
// O(queryBlock x keys) per worker, never O(T^2) for the whole batch.

import (
	"fmt"
	"math"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

const queryBlock = 64

type attentionOp struct {
	base
	layer int
	step  *Step
}

// Attention is causal attention of q over k, v [B, T, H, D]; layer picks the cache slot.
func Attention(q, k, v *G.Node, layer int, step *Step) (*G.Node, error) {
	return G.ApplyOp(&attentionOp{base: newBase("Attention"), layer: layer, step: step}, q, k, v)
}

func (o *attentionOp) Arity() int { return 3 }
func (o *attentionOp) Type() hm.Type {
	return hm.NewFnType(tt(4, tvA), tt(4, tvA), tt(4, tvA), tt(2, tvA))
}
func (o *attentionOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
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

func (o *attentionOp) Do(v ...G.Value) (G.Value, error) {
	q, k, val, err := attnInputs(v, o.step)
	if err != nil {
		return nil, err
	}
	switch q.Dtype() {
	case tensor.Float32:
		return attnForward[float32](q, k, val, o.layer, o.step)
	case tensor.Float64:
		return attnForward[float64](q, k, val, o.layer, o.step)
	}
	return nil, fmt.Errorf("autograd: Attention of type %v", q.Dtype())
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

// attnBlock holds the scaled queries and probabilities of one block of queries.
type attnBlock[T Float] struct {
	qs   []T // [rows, D] scaled queries c_p q / sqrt(D)
	c    []T // [rows] per-row query scale
	p    []T // [rows, keys] probabilities (masked entries 0)
	keys int
}

// scores fills blk for queries t0..t1-1 of (b, h).
func (blk *attnBlock[T]) scores(q, kd []T, b, h, t0, t1, stride int, st *Step, nh, d int) {
	hd := nh * d
	rows := t1 - t0
	blk.keys = st.Past + t1
	scale := 1 / math.Sqrt(float64(d))
	for r := 0; r < rows; r++ {
		c := T(scale * st.logn(st.Past+t0+r))
		blk.c[r] = c
		src := q[((b*st.Seq+t0+r)*nh+h)*d:][:d]
		for i, x := range src {
			blk.qs[r*d+i] = c * x
		}
	}
	// S = Qs K^T over the visible keys, K rows strided by H*D.
	gemm(false, true, rows, blk.keys, d, 1, blk.qs, d, kd[(b*stride*nh+h)*d:], hd, 0, blk.p, blk.keys)
	for r := 0; r < rows; r++ {
		row := blk.p[r*blk.keys : (r+1)*blk.keys]
		last := st.Past + t0 + r
		m := math.Inf(-1)
		tq := t0 + r
		for j := 0; j <= last; j++ {
			if st.keyOK(b, j) && st.sameSegment(b, tq, j) && float64(row[j]) > m {
				m = float64(row[j])
			}
		}
		if math.IsInf(m, -1) {
			clear(row)
			continue
		}
		var sum float64
		for j := range row {
			if j > last || !st.keyOK(b, j) || !st.sameSegment(b, tq, j) {
				row[j] = 0
				continue
			}
			e := math.Exp(float64(row[j]) - m)
			row[j] = T(e)
			sum += e
		}
		inv := T(1 / sum)
		for j := range row[:last+1] {
			row[j] *= inv
		}
	}
}

func newAttnBlock[T Float](d, keys int) *attnBlock[T] {
	return &attnBlock[T]{qs: make([]T, queryBlock*d), c: make([]T, queryBlock), p: make([]T, queryBlock*keys)}
}

func attnForward[T Float](q, k, v *tensor.Dense, layer int, st *Step) (*tensor.Dense, error) {
	s := q.Shape()
	nb, nt, nh, d := s[0], s[1], s[2], s[3]
	kd, vd, stride, err := kvSource[T](k, v, layer, st)
	if err != nil {
		return nil, err
	}
	out := newLike(q, nb*nt, nh*d)
	qd, od := q.Data().([]T), out.Data().([]T)
	hd := nh * d
	parallel(nb*nh, func(bh int) {
		b, h := bh/nh, bh%nh
		blk := newAttnBlock[T](d, st.Keys())
		for t0 := 0; t0 < nt; t0 += queryBlock {
			t1 := min(nt, t0+queryBlock)
			blk.scores(qd, kd, b, h, t0, t1, stride, st, nh, d)
			// O = P V, written into the merged-head output with row stride H*D.
			gemm(false, false, t1-t0, d, blk.keys, 1, blk.p, blk.keys, vd[(b*stride*nh+h)*d:], hd, 0, od[((b*nt+t0)*nh+h)*d:], hd)
		}
	})
	return out, nil
}

func (o *attentionOp) DiffWRT(int) []bool { return []bool{true, true, true} }

func (o *attentionOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	packed, err := G.ApplyOp(&attnGradOp{base: newBase("AttentionGrad"), layer: o.layer, step: o.step}, in[0], in[1], in[2], grad)
	if err != nil {
		return nil, err
	}
	out := make(G.Nodes, 3)
	for i := range out {
		if out[i], err = G.ApplyOp(&pickOp{base: newBase("AttentionGradPick"), part: i, of: 3}, packed); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// attnGradOp computes dq, dk, dv together, packed as [3, B, T, H, D].
type attnGradOp struct {
	base
	layer int
	step  *Step
}

func (o *attnGradOp) Arity() int { return 4 }
func (o *attnGradOp) Type() hm.Type {
	return hm.NewFnType(tt(4, tvA), tt(4, tvA), tt(4, tvA), tt(2, tvA), tt(5, tvA))
}
func (o *attnGradOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	q, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	return append(tensor.Shape{3}, q...), nil
}

func (o *attnGradOp) Do(v ...G.Value) (G.Value, error) {
	q, k, val, err := attnInputs(v, o.step)
	if err != nil {
		return nil, err
	}
	g, err := dense(v[3], "AttentionGrad dy")
	if err != nil {
		return nil, err
	}
	if o.step.Cache != nil {
		return nil, fmt.Errorf("autograd: attention gradients with a KV cache are not supported; train without a cache")
	}
	switch q.Dtype() {
	case tensor.Float32:
		return attnBackward[float32](q, k, val, g, o.step), nil
	case tensor.Float64:
		return attnBackward[float64](q, k, val, g, o.step), nil
	}
	return nil, fmt.Errorf("autograd: AttentionGrad of type %v", q.Dtype())
}

func attnBackward[T Float](q, k, v, g *tensor.Dense, st *Step) *tensor.Dense {
	s := q.Shape()
	nb, nt, nh, d := s[0], s[1], s[2], s[3]
	hd := nh * d
	n := nb * nt * hd
	out := newLike(q, 3, nb, nt, nh, d)
	all := out.Data().([]T)
	dq, dk, dv := all[:n], all[n:2*n], all[2*n:]
	qd, kd, vd, gd := q.Data().([]T), k.Data().([]T), v.Data().([]T), g.Data().([]T)
	parallel(nb*nh, func(bh int) {
		b, h := bh/nh, bh%nh
		blk := newAttnBlock[T](d, nt)
		dp := make([]T, queryBlock*nt)
		dqs := make([]T, queryBlock*d)
		off := (b*nt*nh + h) * d // (b, t=0, h) in [B, T, H, D]
		for t0 := 0; t0 < nt; t0 += queryBlock {
			t1 := min(nt, t0+queryBlock)
			rows, keys := t1-t0, t1
			blk.scores(qd, kd, b, h, t0, t1, nt, st, nh, d)
			gBlk := gd[off+t0*hd:]
			// dV += P^T G
			gemm(true, false, keys, d, rows, 1, blk.p, keys, gBlk, hd, 1, dv[off:], hd)
			// dP = G V^T
			gemm(false, true, rows, keys, d, 1, gBlk, hd, vd[off:], hd, 0, dp, keys)
			for r := 0; r < rows; r++ {
				p, dpr := blk.p[r*keys:(r+1)*keys], dp[r*keys:(r+1)*keys]
				var dot float64
				for j := range p {
					dot += float64(p[j]) * float64(dpr[j])
				}
				for j := range p {
					dpr[j] = p[j] * (dpr[j] - T(dot))
				}
			}
			// dQs = dS K; dQ = c dQs (rows of dq strided by H*D)
			gemm(false, false, rows, d, keys, 1, dp, keys, kd[off:], hd, 0, dqs, d)
			for r := 0; r < rows; r++ {
				dst := dq[off+(t0+r)*hd:][:d]
				for i := range dst {
					dst[i] = blk.c[r] * dqs[r*d+i]
				}
			}
			// dK += dS^T Qs
			gemm(true, false, keys, d, rows, 1, dp, keys, blk.qs, d, 1, dk[off:], hd)
		}
	})
	return out
}

// pickOp takes part `part` of `of` equal parts along the first axis: [of, ...] -> [...].
type pickOp struct {
	base
	part, of int
}

func (o *pickOp) Arity() int    { return 1 }
func (o *pickOp) Type() hm.Type { return hm.NewFnType(tt(5, tvA), tt(4, tvA)) }
func (o *pickOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	s, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	return s[1:].Clone(), nil
}
func (o *pickOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	s := x.Shape()
	out := newLike(x, s[1:]...)
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
