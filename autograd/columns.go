package autograd

// PlaceColumns widens a block of columns into a zero matrix (logits of trainable
// special-token rows of lm_head added to the full logits):
//
//	x [N, S] -> y [N, M], y[:, off:off+S] = x, zero elsewhere
//	dx = dy[:, off:off+S]

import (
	"fmt"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// ColumnsOp is the op of PlaceColumns and of its backward (Take).
type ColumnsOp struct {
	base
	off, width int
	take       bool // the backward: [N, M] -> [N, S]
	s          int
}

// PlaceColumns puts x [N, S] at columns off.. of a zero [N, width] matrix.
func PlaceColumns(x *G.Node, off, width int) (*G.Node, error) {
	s := x.Shape()[1]
	if off < 0 || off+s > width {
		return nil, fmt.Errorf("autograd: PlaceColumns: %d columns at %d do not fit in %d", s, off, width)
	}
	return G.ApplyOp(&ColumnsOp{base: newBase("PlaceColumns"), off: off, width: width, s: s}, x)
}

func (o *ColumnsOp) Arity() int    { return 1 }
func (o *ColumnsOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA)) }
func (o *ColumnsOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	x, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	if o.take {
		return tensor.Shape{x[0], o.s}, nil
	}
	return tensor.Shape{x[0], o.width}, nil
}

func (o *ColumnsOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	n := x.Shape()[0]
	if o.take {
		out := o.result(x.Dtype(), n, o.s)
		switch x.Dtype() {
		case tensor.Float32:
			copyCols(x.Data().([]float32), o.width, o.off, out.Data().([]float32), o.s, 0, o.s, n)
		case tensor.Float64:
			copyCols(x.Data().([]float64), o.width, o.off, out.Data().([]float64), o.s, 0, o.s, n)
		}
		return out, nil
	}
	out := o.result(x.Dtype(), n, o.width)
	switch x.Dtype() {
	case tensor.Float32:
		copyCols(x.Data().([]float32), o.s, 0, out.Data().([]float32), o.width, o.off, o.s, n)
	case tensor.Float64:
		copyCols(x.Data().([]float64), o.s, 0, out.Data().([]float64), o.width, o.off, o.s, n)
	default:
		return nil, fmt.Errorf("autograd: %s of type %v", o.name, x.Dtype())
	}
	return out, nil
}

func (o *ColumnsOp) DiffWRT(int) []bool { return []bool{true} }

func (o *ColumnsOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	d, err := G.ApplyOp(&ColumnsOp{base: newBase("PlaceColumnsGrad"), off: o.off, width: o.width, s: o.s, take: !o.take}, grad)
	return G.Nodes{d}, err
}
