package autograd

// Linear: y = s x W^T + b, PyTorch's Linear layout (s = 1 except for LoRA branches).
//
//	x [N, K] activations (float32; float64 in gradient checks)
//	W [M, K] weight: bf16 (stored as uint16), float32 or float64
//	b [M]    optional bias, same storage choices
//	y [N, M]
//
// Backward: dx = s dy W [N, K]; dW = s dy^T x [M, K]; db = sum over N of dy. A frozen weight
// (bf16 always is) gets no gradient node, so backward costs one product, not two.

import (
	"fmt"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// LinearOp is the op of Linear and ScaledLinear (gradients LinearGradXOp, LinearGradWOp).
type LinearOp struct {
	base
	bias           bool
	trainW, trainB bool
	scale          float64 // y = scale x W^T (+ b); 0 means 1
}

// Linear applies y = x W^T (+ b). trainW and trainB say whether W and b get gradients; a
// bf16 weight cannot.
func Linear(x, w, b *G.Node, trainW, trainB bool) (*G.Node, error) {
	return ScaledLinear(x, w, b, 1, trainW, trainB)
}

// ScaledLinear applies y = scale x W^T (+ b): a LoRA branch with its alpha/r folded in.
func ScaledLinear(x, w, b *G.Node, scale float64, trainW, trainB bool) (*G.Node, error) {
	if trainW && w.Dtype() == tensor.Uint16 || trainB && b != nil && b.Dtype() == tensor.Uint16 {
		return nil, fmt.Errorf("autograd: linear %s: a bf16 weight cannot be trained; load it as float32", w.Name())
	}
	op := &LinearOp{base: newBase("Linear"), bias: b != nil, trainW: trainW, trainB: trainB && b != nil, scale: scale}
	if b == nil {
		return G.ApplyOp(op, x, w)
	}
	return G.ApplyOp(op, x, w, b)
}

func (o *LinearOp) Arity() int {
	if o.bias {
		return 3
	}
	return 2
}

func (o *LinearOp) Type() hm.Type {
	if o.bias {
		return hm.NewFnType(tt(2, tvA), tt(2, tvW), tt(1, tvV), tt(2, tvA))
	}
	return hm.NewFnType(tt(2, tvA), tt(2, tvW), tt(2, tvA))
}

func (o *LinearOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	x, w, err := twoShapes(in)
	if err != nil {
		return nil, err
	}
	if err := wantDims("Linear", x, 2, "x"); err != nil {
		return nil, err
	}
	if err := wantDims("Linear", w, 2, "W"); err != nil {
		return nil, err
	}
	if x[1] != w[1] {
		return nil, fmt.Errorf("autograd: Linear: x %v has %d features but W %v expects %d", x, x[1], w, w[1])
	}
	if o.bias {
		b, err := shapeOf(in[2])
		if err != nil {
			return nil, err
		}
		if len(b) != 1 || b[0] != w[0] {
			return nil, fmt.Errorf("autograd: Linear: bias %v does not match W %v", b, w)
		}
	}
	return tensor.Shape{x[0], w[0]}, nil
}

func (o *LinearOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], "Linear x")
	if err != nil {
		return nil, err
	}
	w, err := dense(v[1], "Linear W")
	if err != nil {
		return nil, err
	}
	var b *tensor.Dense
	if o.bias {
		if b, err = dense(v[2], "Linear bias"); err != nil {
			return nil, err
		}
	}
	switch x.Dtype() {
	case tensor.Float32:
		return linearForward[float32](x, w, b, o.scale, o.pool)
	case tensor.Float64:
		return linearForward[float64](x, w, b, o.scale, o.pool)
	}
	return nil, fmt.Errorf("autograd: Linear: activations of type %v", x.Dtype())
}

func linearForward[T Float](x, w, b *tensor.Dense, scale float64, p *pool) (*tensor.Dense, error) {
	n, k, m := x.Shape()[0], x.Shape()[1], w.Shape()[0]
	out := p.overwrite(x.Dtype(), n, m) // the product's beta 0 sets every element
	y := out.Data().([]T)
	if err := matmulNT(x.Data().([]T), n, k, w, m, y, T(gain(scale))); err != nil {
		return nil, err
	}
	if b != nil {
		bias, err := weightVector[T](b)
		if err != nil {
			return nil, err
		}
		for i := 0; i < n; i++ {
			row := y[i*m : (i+1)*m]
			for j := range row {
				row[j] += bias[j]
			}
		}
	}
	return out, nil
}

func (o *LinearOp) DiffWRT(int) []bool {
	if o.bias {
		return []bool{true, o.trainW, o.trainB}
	}
	return []bool{true, o.trainW}
}

func (o *LinearOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	out := make(G.Nodes, len(in))
	var err error
	if out[0], err = G.ApplyOp(&LinearGradXOp{base: newBase("LinearGradX"), scale: o.scale}, grad, in[1]); err != nil {
		return nil, err
	}
	if o.trainW {
		if out[1], err = G.ApplyOp(&LinearGradWOp{base: newBase("LinearGradW"), scale: o.scale}, grad, in[0]); err != nil {
			return nil, err
		}
	}
	if o.trainB {
		if out[2], err = G.ApplyOp(&colSumOp{base: newBase("LinearGradB")}, grad); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// LinearGradXOp: dx [N, K] = scale dy [N, M] W [M, K].
type LinearGradXOp struct {
	base
	scale float64
}

func (o *LinearGradXOp) Arity() int    { return 2 }
func (o *LinearGradXOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvW), tt(2, tvA)) }
func (o *LinearGradXOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	g, w, err := twoShapes(in)
	if err != nil {
		return nil, err
	}
	return tensor.Shape{g[0], w[1]}, nil
}
func (o *LinearGradXOp) Do(v ...G.Value) (G.Value, error) {
	g, err := dense(v[0], "LinearGradX dy")
	if err != nil {
		return nil, err
	}
	w, err := dense(v[1], "LinearGradX W")
	if err != nil {
		return nil, err
	}
	n, m, k := g.Shape()[0], g.Shape()[1], w.Shape()[1]
	out := o.pool.overwrite(g.Dtype(), n, k) // the product's beta 0 sets every element
	switch g.Dtype() {
	case tensor.Float32:
		err = matmulNN(g.Data().([]float32), n, m, w, k, out.Data().([]float32), float32(gain(o.scale)))
	case tensor.Float64:
		err = matmulNN(g.Data().([]float64), n, m, w, k, out.Data().([]float64), gain(o.scale))
	default:
		err = fmt.Errorf("autograd: LinearGradX: gradient of type %v", g.Dtype())
	}
	return out, err
}

// gain is a linear op's scale as a factor (its 0 means 1).
func gain(scale float64) float64 {
	if scale == 0 {
		return 1
	}
	return scale
}

// LinearGradWOp: dW [M, K] = scale dy^T [M, N] x [N, K].
type LinearGradWOp struct {
	base
	scale float64
}

func (o *LinearGradWOp) Arity() int    { return 2 }
func (o *LinearGradWOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA), tt(2, tvA)) }
func (o *LinearGradWOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	g, x, err := twoShapes(in)
	if err != nil {
		return nil, err
	}
	return tensor.Shape{g[1], x[1]}, nil
}
func (o *LinearGradWOp) Do(v ...G.Value) (G.Value, error) {
	g, err := dense(v[0], "LinearGradW dy")
	if err != nil {
		return nil, err
	}
	x, err := dense(v[1], "LinearGradW x")
	if err != nil {
		return nil, err
	}
	n, m, k := g.Shape()[0], g.Shape()[1], x.Shape()[1]
	out := o.pool.overwrite(g.Dtype(), m, k) // the product's beta 0 sets every element
	switch g.Dtype() {
	case tensor.Float32:
		gemm(true, false, m, k, n, float32(gain(o.scale)), g.Data().([]float32), m, x.Data().([]float32), k, 0, out.Data().([]float32), k)
	case tensor.Float64:
		gemm(true, false, m, k, n, gain(o.scale), g.Data().([]float64), m, x.Data().([]float64), k, 0, out.Data().([]float64), k)
	default:
		return nil, fmt.Errorf("autograd: LinearGradW: gradient of type %v", g.Dtype())
	}
	return out, nil
}

// colSumOp: db [M] = sum over rows of dy [N, M].
type colSumOp struct{ base }

func (o *colSumOp) Arity() int    { return 1 }
func (o *colSumOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(1, tvA)) }
func (o *colSumOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	g, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	return tensor.Shape{g[1]}, nil
}
func (o *colSumOp) Do(v ...G.Value) (G.Value, error) {
	g, err := dense(v[0], "column sum")
	if err != nil {
		return nil, err
	}
	switch g.Dtype() {
	case tensor.Float32:
		return colSum[float32](g), nil
	case tensor.Float64:
		return colSum[float64](g), nil
	}
	return nil, fmt.Errorf("autograd: column sum of type %v", g.Dtype())
}

func colSum[T Float](g *tensor.Dense) *tensor.Dense {
	n, m := g.Shape()[0], g.Shape()[1]
	out := newLike(g, m)
	s, d := out.Data().([]T), g.Data().([]T)
	for i := 0; i < n; i++ {
		for j, v := range d[i*m : (i+1)*m] {
			s[j] += v
		}
	}
	return out
}
