package autograd

// SplitHeads takes one of q, k, v out of the fused c_attn output:
//
//	qkv [B*T, 3P] -> part [B, T, H, D], P = H*D, part 0 = q, 1 = k, 2 = v
//	(columns part*P .. part*P+P-1; head h is columns h*D .. h*D+D-1 of that block)
//
// Backward writes the gradient back into those columns of a zero [B*T, 3P].

import (
	"fmt"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// SplitHeadsOp is the op of SplitHeads (its gradient is MergePartOp).
type SplitHeadsOp struct {
	base
	part, batch, seq, heads, dim int
}

// SplitHeads returns part (0 q, 1 k, 2 v) of qkv [batch*seq, 3*heads*dim] as [batch, seq, heads, dim].
func SplitHeads(qkv *G.Node, part, batch, seq, heads, dim int) (*G.Node, error) {
	return G.ApplyOp(&SplitHeadsOp{base: newBase("SplitHeads"), part: part, batch: batch, seq: seq, heads: heads, dim: dim}, qkv)
}

func (o *SplitHeadsOp) Arity() int    { return 1 }
func (o *SplitHeadsOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(4, tvA)) }
func (o *SplitHeadsOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	x, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	if len(x) != 2 || x[0] != o.batch*o.seq || x[1] != 3*o.heads*o.dim {
		return nil, fmt.Errorf("autograd: SplitHeads: input %v is not [%d, %d]", x, o.batch*o.seq, 3*o.heads*o.dim)
	}
	return tensor.Shape{o.batch, o.seq, o.heads, o.dim}, nil
}

func (o *SplitHeadsOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	out := o.result(x.Dtype(), o.batch, o.seq, o.heads, o.dim)
	p := o.heads * o.dim
	n := o.batch * o.seq
	switch x.Dtype() {
	case tensor.Float32:
		copyCols(x.Data().([]float32), 3*p, o.part*p, out.Data().([]float32), p, 0, p, n)
	case tensor.Float64:
		copyCols(x.Data().([]float64), 3*p, o.part*p, out.Data().([]float64), p, 0, p, n)
	default:
		return nil, fmt.Errorf("autograd: SplitHeads of type %v", x.Dtype())
	}
	return out, nil
}

// copyCols copies width columns of n rows from src (row stride ss, column offset so) to dst.
func copyCols[T Float](src []T, ss, so int, dst []T, ds, do, width, n int) {
	for i := 0; i < n; i++ {
		copy(dst[i*ds+do:i*ds+do+width], src[i*ss+so:i*ss+so+width])
	}
}

func (o *SplitHeadsOp) DiffWRT(int) []bool { return []bool{true} }

func (o *SplitHeadsOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(&MergePartOp{base: newBase("SplitHeadsGrad"), split: *o}, grad)
	return G.Nodes{dx}, err
}

// MergePartOp is SplitHeads' backward: [B, T, H, D] -> zeros [B*T, 3P] with the part filled in.
type MergePartOp struct {
	base
	split SplitHeadsOp
}

func (o *MergePartOp) Arity() int    { return 1 }
func (o *MergePartOp) Type() hm.Type { return hm.NewFnType(tt(4, tvA), tt(2, tvA)) }
func (o *MergePartOp) InferShape(...G.DimSizer) (tensor.Shape, error) {
	s := o.split
	return tensor.Shape{s.batch * s.seq, 3 * s.heads * s.dim}, nil
}
func (o *MergePartOp) Do(v ...G.Value) (G.Value, error) {
	g, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	s := o.split
	p, n := s.heads*s.dim, s.batch*s.seq
	out := o.result(g.Dtype(), n, 3*p)
	switch g.Dtype() {
	case tensor.Float32:
		copyCols(g.Data().([]float32), p, 0, out.Data().([]float32), 3*p, s.part*p, p, n)
	case tensor.Float64:
		copyCols(g.Data().([]float64), p, 0, out.Data().([]float64), 3*p, s.part*p, p, n)
	default:
		return nil, fmt.Errorf("autograd: SplitHeadsGrad of type %v", g.Dtype())
	}
	return out, nil
}
