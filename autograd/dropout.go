package autograd

// Dropout (inverted), as PEFT applies it to the input of a LoRA branch in training:
//
//	x [N, K] -> y [N, K], y = x * keep / (1 - p), keep ~ Bernoulli(1 - p)
//	dx = dy * keep / (1 - p)
//
// The mask comes from PCG streams seeded by (Step.Seed, key): the same step and key give
// the same mask, so backward regenerates it instead of storing it, and a resumed run draws
// the same masks as an uninterrupted one. Element i belongs to block c = i / chunk (16,384
// elements) and is kept when the (i mod chunk)-th Float64 of the stream seeded
// (Step.Seed, key XOR c * 0x9E3779B97F4A7C15) is at least p; blocks are drawn in parallel,
// and the mask does not depend on how many goroutines draw it.

import (
	"fmt"
	"math/rand/v2"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

type dropoutOp struct {
	base
	p    float64
	key  uint64
	step *Step
}

// Dropout drops elements of x with probability p; key tells apart the dropouts of one graph.
func Dropout(x *G.Node, p float64, key uint64, step *Step) (*G.Node, error) {
	if p < 0 || p >= 1 {
		return nil, fmt.Errorf("autograd: dropout probability %g is not in [0, 1)", p)
	}
	return G.ApplyOp(&dropoutOp{base: newBase("Dropout"), p: p, key: key, step: step}, x)
}

func (o *dropoutOp) Arity() int    { return 1 }
func (o *dropoutOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA)) }
func (o *dropoutOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	s, err := shapeOf(in[0])
	return s.Clone(), err
}

func (o *dropoutOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	out := o.pool.overwrite(x.Dtype(), x.Shape()...)
	switch x.Dtype() {
	case tensor.Float32:
		dropout(x.Data().([]float32), out.Data().([]float32), o.p, o.step.Seed, o.key)
	case tensor.Float64:
		dropout(x.Data().([]float64), out.Data().([]float64), o.p, o.step.Seed, o.key)
	default:
		return nil, fmt.Errorf("autograd: Dropout of type %v", x.Dtype())
	}
	return out, nil
}

func dropout[T Float](x, y []T, p float64, seed, key uint64) {
	scale := T(1 / (1 - p))
	// r.Float64() >= p, with Float64 = (Uint64 mod 2^53) / 2^53 (math/rand/v2), exactly.
	threshold := p * (1 << 53)
	parallelRange(len(x), func(lo, hi int) {
		r := rand.NewPCG(seed, key^uint64(lo/chunk)*blockStream)
		for i := lo; i < hi; i++ {
			if float64(r.Uint64()&(1<<53-1)) >= threshold {
				y[i] = x[i] * scale
			} else {
				y[i] = 0
			}
		}
	})
}

// blockStream spreads the blocks' PCG streams apart (the 64-bit golden ratio).
const blockStream = 0x9E3779B97F4A7C15

func (o *dropoutOp) DiffWRT(int) []bool { return []bool{true} }

// The gradient of dropout is dropout of the gradient with the same mask.
func (o *dropoutOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	d, err := G.ApplyOp(&dropoutOp{base: newBase("DropoutGrad"), p: o.p, key: o.key, step: o.step}, grad)
	return G.Nodes{d}, err
}
