package autograd

// SwiGLU, Qwen's MLP gate (SiLU on the w2 branch):
//
//	a = w1(x), g = w2(x), both [N, M] -> y [N, M]
//	y = a * silu(g), silu(g) = g sigmoid(g)
//	da = dy silu(g);  dg = dy a s (1 + g (1 - s)), s = sigmoid(g)

import (
	"fmt"
	"math"

	"github.com/qwen-tune/qwen-tune/internal/vecmath"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// SwiGLUOp is the op of SwiGLU and of its two input gradients (Grad).
type SwiGLUOp struct {
	base
	grad int // 0 forward; 1 da; 2 dg (inputs a, g, dy)
}

// SwiGLU is a * silu(g) for the up branch a = w1(x) and the gate branch g = w2(x).
func SwiGLU(a, g *G.Node) (*G.Node, error) {
	return G.ApplyOp(&SwiGLUOp{base: newBase("SwiGLU")}, a, g)
}

func (o *SwiGLUOp) Arity() int {
	if o.grad == 0 {
		return 2
	}
	return 3
}
func (o *SwiGLUOp) Type() hm.Type {
	if o.grad == 0 {
		return hm.NewFnType(tt(2, tvA), tt(2, tvA), tt(2, tvA))
	}
	return hm.NewFnType(tt(2, tvA), tt(2, tvA), tt(2, tvA), tt(2, tvA))
}
func (o *SwiGLUOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	a, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	for _, d := range in[1:] {
		s, err := shapeOf(d)
		if err != nil {
			return nil, err
		}
		if !s.Eq(a) {
			return nil, fmt.Errorf("autograd: SwiGLU: shapes %v and %v differ", a, s)
		}
	}
	return a.Clone(), nil
}

func (o *SwiGLUOp) Do(v ...G.Value) (G.Value, error) {
	ins := make([]*tensor.Dense, len(v))
	for i := range v {
		var err error
		if ins[i], err = dense(v[i], o.name); err != nil {
			return nil, err
		}
	}
	switch ins[0].Dtype() {
	case tensor.Float32:
		return swiglu[float32](ins, o.grad, o.pool), nil
	case tensor.Float64:
		return swiglu[float64](ins, o.grad, o.pool), nil
	}
	return nil, fmt.Errorf("autograd: SwiGLU of type %v", ins[0].Dtype())
}

func swiglu[T Float](ins []*tensor.Dense, grad int, p *pool) *tensor.Dense {
	out := p.overwrite(ins[0].Dtype(), ins[0].Shape()...)
	y, a, g := out.Data().([]T), ins[0].Data().([]T), ins[1].Data().([]T)
	var dy []T
	if grad != 0 {
		dy = ins[2].Data().([]T)
	}
	parallelRange(len(y), func(lo, hi int) {
		var buf [1024]T
		for i0 := lo; i0 < hi; i0 += len(buf) {
			n := min(len(buf), hi-i0)
			s := buf[:n]
			sigmoids(s, g[i0:i0+n])
			for j, sv := range s {
				i := i0 + j
				gv := g[i]
				switch grad {
				case 0:
					y[i] = a[i] * gv * sv
				case 1:
					y[i] = dy[i] * gv * sv
				case 2:
					y[i] = dy[i] * a[i] * sv * (1 + gv*(1-sv))
				}
			}
		}
	})
	return out
}

// sigmoids sets s[i] = 1 / (1 + e^-x[i]) at the precision of T.
func sigmoids[T Float](s, x []T) {
	switch xs := any(x).(type) {
	case []float32:
		vecmath.Sigmoid(any(s).([]float32), xs)
	case []float64:
		for i, v := range xs {
			s[i] = T(1 / (1 + math.Exp(-v)))
		}
	}
}

func (o *SwiGLUOp) DiffWRT(int) []bool { return []bool{true, true} }

func (o *SwiGLUOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	da, err := G.ApplyOp(&SwiGLUOp{base: newBase("SwiGLUGradUp"), grad: 1}, in[0], in[1], grad)
	if err != nil {
		return nil, err
	}
	dg, err := G.ApplyOp(&SwiGLUOp{base: newBase("SwiGLUGradGate"), grad: 2}, in[0], in[1], grad)
	return G.Nodes{da, dg}, err
}
