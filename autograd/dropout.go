package autograd

// Dropout (inverted), as PEFT applies it to the input of a LoRA branch in training:
//
//	x [N, K] -> y [N, K], y = x * keep / (1 - p), keep ~ Bernoulli(1 - p)
//	dx = dy * keep / (1 - p)
//
// The mask comes from the counter-based Philox4x32-10 generator (internal/philox) keyed by
// Step.Seed, with the op's key as the stream: element i (row-major) is kept when the i-th
// 32-bit word u of that stream has u / 2^32 >= p. The same step and key give the same mask,
// so backward regenerates it instead of storing it, a resumed run draws the same masks as an
// uninterrupted one, and any thread (or device) draws any element on its own: the mask does
// not depend on how many goroutines draw it.

import (
	"fmt"
	"math"

	"github.com/qwen-tune/qwen-tune/internal/philox"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// DropoutOp is the op of Dropout (its own gradient, with the same masks).
type DropoutOp struct {
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
	return G.ApplyOp(&DropoutOp{base: newBase("Dropout"), p: p, key: key, step: step}, x)
}

func (o *DropoutOp) Arity() int    { return 1 }
func (o *DropoutOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA)) }
func (o *DropoutOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	s, err := shapeOf(in[0])
	return s.Clone(), err
}

func (o *DropoutOp) Do(v ...G.Value) (G.Value, error) {
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
	threshold := keepThreshold(p)
	parallelRange(len(x), func(lo, hi int) {
		var words [256]uint32
		for i0 := lo; i0 < hi; i0 += len(words) {
			w := words[:min(len(words), hi-i0)]
			philox.Words(w, uint64(i0), seed, key)
			for j, u := range w {
				if uint64(u) >= threshold {
					y[i0+j] = x[i0+j] * scale
				} else {
					y[i0+j] = 0
				}
			}
		}
	})
}

// keepThreshold is the least 32-bit word u with u / 2^32 >= p (2^32, beyond every word, when
// none is).
func keepThreshold(p float64) uint64 { return uint64(math.Ceil(p * (1 << 32))) }

func (o *DropoutOp) DiffWRT(int) []bool { return []bool{true} }

// The gradient of dropout is dropout of the gradient with the same mask.
func (o *DropoutOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	d, err := G.ApplyOp(&DropoutOp{base: newBase("DropoutGrad"), p: o.p, key: o.key, step: o.step}, grad)
	return G.Nodes{d}, err
}
