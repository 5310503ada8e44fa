package autograd

// RMSNorm over the last axis, as Qwen computes it:
//
//	x [N, H], w [H] -> y [N, H]
//	r[n]    = 1 / sqrt(mean_j x[n,j]^2 + eps)
//	y[n,j]  = x[n,j] r[n] w[j]
//
// Backward, with u = x r and gw = dy * w:
//
//	dx[n,j] = r[n] (gw[n,j] - u[n,j] mean_i(gw[n,i] u[n,i]))
//	dw[j]   = sum_n dy[n,j] u[n,j]
//
// This is its own op because gorgonia's InverseSqrt has a wrong gradient.

import (
	"fmt"
	"math"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// RMSNormOp is the op of RMSNorm (input gradient RMSNormGradXOp).
type RMSNormOp struct {
	base
	eps    float64
	trainW bool
}

// RMSNorm normalises each row of x [N, H] and scales it by w [H].
func RMSNorm(x, w *G.Node, eps float64, trainW bool) (*G.Node, error) {
	if trainW && w.Dtype() == tensor.Uint16 {
		return nil, fmt.Errorf("autograd: RMSNorm %s: a bf16 weight cannot be trained", w.Name())
	}
	return G.ApplyOp(&RMSNormOp{base: newBase("RMSNorm"), eps: eps, trainW: trainW}, x, w)
}

func (o *RMSNormOp) Arity() int    { return 2 }
func (o *RMSNormOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(1, tvW), tt(2, tvA)) }
func (o *RMSNormOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	x, w, err := twoShapes(in)
	if err != nil {
		return nil, err
	}
	if err := wantDims("RMSNorm", x, 2, "x"); err != nil {
		return nil, err
	}
	if len(w) != 1 || w[0] != x[1] {
		return nil, fmt.Errorf("autograd: RMSNorm: weight %v does not match x %v", w, x)
	}
	return x.Clone(), nil
}

func (o *RMSNormOp) Do(v ...G.Value) (G.Value, error) {
	x, w, err := twoDense(v, "RMSNorm")
	if err != nil {
		return nil, err
	}
	switch x.Dtype() {
	case tensor.Float32:
		return rmsNormForward[float32](x, w, o.eps, o.pool)
	case tensor.Float64:
		return rmsNormForward[float64](x, w, o.eps, o.pool)
	}
	return nil, fmt.Errorf("autograd: RMSNorm of type %v", x.Dtype())
}

// rmsScale is 1/sqrt(mean(row^2) + eps), accumulated in float64.
func rmsScale[T Float](row []T, eps float64) T {
	var ss float64
	for _, v := range row {
		ss += float64(v) * float64(v)
	}
	return T(1 / math.Sqrt(ss/float64(len(row))+eps))
}

func rmsNormForward[T Float](x, w *tensor.Dense, eps float64, p *pool) (*tensor.Dense, error) {
	n, h := x.Shape()[0], x.Shape()[1]
	wv, err := weightVector[T](w)
	if err != nil {
		return nil, err
	}
	out := p.get(x.Dtype(), n, h)
	xd, yd := x.Data().([]T), out.Data().([]T)
	parallel(n, func(i int) {
		row, y := xd[i*h:(i+1)*h], yd[i*h:(i+1)*h]
		r := rmsScale(row, eps)
		for j, v := range row {
			y[j] = v * r * wv[j]
		}
	})
	return out, nil
}

func (o *RMSNormOp) DiffWRT(int) []bool { return []bool{true, o.trainW} }

func (o *RMSNormOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(&RMSNormGradXOp{base: newBase("RMSNormGradX"), eps: o.eps}, in[0], in[1], grad)
	if err != nil || !o.trainW {
		return G.Nodes{dx, nil}, err
	}
	dw, err := G.ApplyOp(&rmsNormGradWOp{base: newBase("RMSNormGradW"), eps: o.eps}, in[0], grad)
	return G.Nodes{dx, dw}, err
}

// RMSNormGradXOp is RMSNorm's input gradient.
type RMSNormGradXOp struct {
	base
	eps float64
}

func (o *RMSNormGradXOp) Arity() int { return 3 }
func (o *RMSNormGradXOp) Type() hm.Type {
	return hm.NewFnType(tt(2, tvA), tt(1, tvW), tt(2, tvA), tt(2, tvA))
}
func (o *RMSNormGradXOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	x, err := shapeOf(in[0])
	return x.Clone(), err
}
func (o *RMSNormGradXOp) Do(v ...G.Value) (G.Value, error) {
	x, w, err := twoDense(v, "RMSNormGradX")
	if err != nil {
		return nil, err
	}
	g, err := dense(v[2], "RMSNormGradX dy")
	if err != nil {
		return nil, err
	}
	switch x.Dtype() {
	case tensor.Float32:
		return rmsNormGradX[float32](x, w, g, o.eps, o.pool)
	case tensor.Float64:
		return rmsNormGradX[float64](x, w, g, o.eps, o.pool)
	}
	return nil, fmt.Errorf("autograd: RMSNormGradX of type %v", x.Dtype())
}

func rmsNormGradX[T Float](x, w, g *tensor.Dense, eps float64, p *pool) (*tensor.Dense, error) {
	n, h := x.Shape()[0], x.Shape()[1]
	wv, err := weightVector[T](w)
	if err != nil {
		return nil, err
	}
	out := p.get(x.Dtype(), n, h)
	xd, gd, dd := x.Data().([]T), g.Data().([]T), out.Data().([]T)
	parallel(n, func(i int) {
		row, gr, dx := xd[i*h:(i+1)*h], gd[i*h:(i+1)*h], dd[i*h:(i+1)*h]
		r := rmsScale(row, eps)
		var dot float64
		for j, v := range row {
			dot += float64(gr[j]*wv[j]) * float64(v*r)
		}
		mean := T(dot / float64(h))
		for j, v := range row {
			dx[j] = r * (gr[j]*wv[j] - v*r*mean)
		}
	})
	return out, nil
}

type rmsNormGradWOp struct {
	base
	eps float64
}

func (o *rmsNormGradWOp) Arity() int    { return 2 }
func (o *rmsNormGradWOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA), tt(1, tvA)) }
func (o *rmsNormGradWOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	x, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	return tensor.Shape{x[1]}, nil
}
func (o *rmsNormGradWOp) Do(v ...G.Value) (G.Value, error) {
	x, g, err := twoDense(v, "RMSNormGradW")
	if err != nil {
		return nil, err
	}
	switch x.Dtype() {
	case tensor.Float32:
		return rmsNormGradW[float32](x, g, o.eps), nil
	case tensor.Float64:
		return rmsNormGradW[float64](x, g, o.eps), nil
	}
	return nil, fmt.Errorf("autograd: RMSNormGradW of type %v", x.Dtype())
}

func rmsNormGradW[T Float](x, g *tensor.Dense, eps float64) *tensor.Dense {
	n, h := x.Shape()[0], x.Shape()[1]
	out := newLike(x, h)
	xd, gd, dw := x.Data().([]T), g.Data().([]T), out.Data().([]T)
	for i := 0; i < n; i++ {
		row, gr := xd[i*h:(i+1)*h], gd[i*h:(i+1)*h]
		r := rmsScale(row, eps)
		for j, v := range row {
			dw[j] += gr[j] * v * r
		}
	}
	return out
}

// twoDense unpacks the first two inputs of an op.
func twoDense(v []G.Value, op string) (*tensor.Dense, *tensor.Dense, error) {
	a, err := dense(v[0], op+" input 0")
	if err != nil {
		return nil, nil, err
	}
	b, err := dense(v[1], op+" input 1")
	return a, b, err
}
