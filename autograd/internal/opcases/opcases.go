// Package opcases is the table of op checks that autograd's tests and autograd/cuda's share:
// the ops of autograd on small inputs (padding, packing, LogN, the blocked attention's
// edges, bf16 weights), with a plain float64 reference of its forward pass. autograd checks
// each op against its reference and its gradients against finite differences; autograd/cuda
// runs each op and its gradient ops on the device against the CPU implementation.
package opcases

import (
	"fmt"
	"math"
	"math/rand/v2"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// Case is one row of the op table: inputs of given shapes, the op applied to them, and a
// plain float64 reference of its forward pass.
type Case struct {
	Name   string
	Shapes [][]int
	BF16   []bool // inputs stored as bf16 (uint16): frozen, never differentiated
	Wrt    []int  // inputs whose gradients are checked
	// Weights are the inputs that are parameters of a model (weights, biases, tables) rather
	// than activations: an executor on a device keeps them as weights.
	Weights []bool
	Step    *autograd.Step
	Apply   func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error)
	Ref     func(in [][]float64, st *autograd.Step) []float64
}

// IsBF16 reports whether input i is stored as bf16.
func (c Case) IsBF16(i int) bool { return i < len(c.BF16) && c.BF16[i] }

// IsWeight reports whether input i is a parameter of a model.
func (c Case) IsWeight(i int) bool { return i < len(c.Weights) && c.Weights[i] }

// StepOrDefault is the case's Step, or a batch of one position when it has none.
func (c Case) StepOrDefault() *autograd.Step {
	if c.Step == nil {
		return &autograd.Step{Batch: 1, Seq: 1}
	}
	return c.Step
}

// Inputs draws the case's inputs from rng (standard normal), rounding those stored as bf16;
// bits holds the bf16 words of those (nil for the others).
func (c Case) Inputs(rng *rand.Rand) (inputs [][]float64, bits [][]uint16) {
	inputs = make([][]float64, len(c.Shapes))
	bits = make([][]uint16, len(c.Shapes))
	for i, s := range c.Shapes {
		inputs[i] = Random(rng, Numel(s))
		if c.IsBF16(i) {
			bits[i] = RoundBF16(inputs[i])
		}
	}
	return inputs, bits
}

// Random is n standard normal float64s.
func Random(rng *rand.Rand, n int) []float64 {
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	return x
}

// Numel is the number of elements of shape s.
func Numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// RoundBF16 rounds x to what a bf16 word holds (to nearest, ties to even) in place, so
// references see the same numbers, and returns the words.
func RoundBF16(x []float64) []uint16 {
	out := make([]uint16, len(x))
	for i, v := range x {
		b := math.Float32bits(float32(v))
		out[i] = uint16((b + 0x7fff + (b>>16)&1) >> 16)
		x[i] = float64(autograd.Ref.BF16(out[i]))
	}
	return out
}

// Graph makes a graph of the case in dtype dt with the inputs' values; it returns the input
// nodes, the output and the scalar loss = sum(out * r) (the output itself when it is a
// scalar or r is nil: gorgonia may compute the loss in place over the output's memory).
func (c Case) Graph(inputs [][]float64, bits [][]uint16, r []float64, dt tensor.Dtype) (*G.ExprGraph, []*G.Node, *G.Node, *G.Node, error) {
	g := G.NewGraph()
	nodes := make([]*G.Node, len(c.Shapes))
	for i, s := range c.Shapes {
		val := Dense(inputs[i], bits[i], s, dt)
		nodes[i] = G.NewTensor(g, val.Dtype(), len(s), G.WithShape(s...), G.WithName(fmt.Sprintf("in%d", i)), G.WithValue(val))
	}
	out, err := c.Apply(nodes, c.StepOrDefault(), dt)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if out.IsScalar() || r == nil {
		return g, nodes, out, out, nil
	}
	rn := G.NewTensor(g, dt, out.Dims(), G.WithShape(out.Shape()...), G.WithName("r"), G.WithValue(Dense(r, nil, out.Shape(), dt)))
	prod, err := G.HadamardProd(out, rn)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	loss, err := G.Sum(prod)
	return g, nodes, out, loss, err
}

// Dense is x as a tensor of shape s: its bf16 words when bits is not nil, else x in dtype dt
// (float32 or float64).
func Dense(x []float64, bits []uint16, s []int, dt tensor.Dtype) *tensor.Dense {
	switch {
	case bits != nil:
		return tensor.New(tensor.WithShape(s...), tensor.WithBacking(append([]uint16(nil), bits...)))
	case dt == tensor.Float32:
		f := make([]float32, len(x))
		for j, v := range x {
			f[j] = float32(v)
		}
		return tensor.New(tensor.WithShape(s...), tensor.WithBacking(f))
	default:
		return tensor.New(tensor.WithShape(s...), tensor.WithBacking(append([]float64(nil), x...)))
	}
}

// Floats is a float32 or float64 value (a tensor or a scalar) as float64s.
func Floats(v G.Value) ([]float64, error) {
	switch d := v.Data().(type) {
	case []float32:
		out := make([]float64, len(d))
		for i, x := range d {
			out[i] = float64(x)
		}
		return out, nil
	case []float64:
		return d, nil
	case float32:
		return []float64{float64(d)}, nil
	case float64:
		return []float64{d}, nil
	}
	return nil, fmt.Errorf("opcases: a value of type %T", v.Data())
}

// All is the table: the ops of autograd (all but Int4Linear and Capture, which have tests of
// their own), with the blocked attention's edge cases.
func All() []Case {
	padded := &autograd.Step{Batch: 2, Seq: 5, RotaryBase: 10000, KeyMask: []bool{true, true, true, true, true, true, true, true, false, false}}
	rows := &autograd.Step{Batch: 2, Seq: 3, Past: 0, Base: []float64{10000, 30000}, RotaryBase: 10000}
	logn := &autograd.Step{Batch: 1, Seq: 6, LogNSeq: 3, RotaryBase: 10000}
	ids := &autograd.Step{Batch: 2, Seq: 3, IDs: []int32{3, 0, 3, 6, 1, 2}}
	labels := &autograd.Step{Batch: 2, Seq: 4, Labels: []int32{-100, 2, 4, -100, 1, -100, 0, 5}}
	sel := &autograd.Step{Batch: 2, Seq: 3, Rows: []int32{2, 0}}
	packed := &autograd.Step{Batch: 1, Seq: 6, RotaryBase: 10000, Segments: []int32{0, 0, 0, 1, 1, 2}, Positions: []int32{0, 1, 2, 0, 1, 0}}
	cases := []Case{
		{Name: "RMSNorm", Weights: []bool{false, true}, Shapes: [][]int{{3, 8}, {8}}, Wrt: []int{0, 1},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.RMSNorm(in[0], in[1], 1e-6, true)
			},
			Ref: rmsNorm},
		{Name: "RMSNorm/bf16", Weights: []bool{false, true}, Shapes: [][]int{{3, 8}, {8}}, BF16: []bool{false, true}, Wrt: []int{0},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.RMSNorm(in[0], in[1], 1e-6, false)
			},
			Ref: rmsNorm},
		{Name: "Rotary/offset+NTK", Shapes: [][]int{{2, 3, 2, 6}}, Wrt: []int{0}, Step: withPast(rows, 7),
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.Rotary(in[0], st)
			},
			Ref: rotary},
		{Name: "Rotary/NTK", Shapes: [][]int{{2, 3, 2, 6}}, Wrt: []int{0}, Step: rows,
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.Rotary(in[0], st)
			},
			Ref: rotary},
		{Name: "Attention/padded", Shapes: [][]int{{2, 5, 2, 4}, {2, 5, 2, 4}, {2, 5, 2, 4}}, Wrt: []int{0, 1, 2}, Step: padded,
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.Attention(in[0], in[1], in[2], 0, st)
			},
			Ref: attention},
		{Name: "Attention/LogN", Shapes: [][]int{{1, 6, 3, 4}, {1, 6, 3, 4}, {1, 6, 3, 4}}, Wrt: []int{0, 1, 2}, Step: logn,
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.Attention(in[0], in[1], in[2], 0, st)
			},
			Ref: attention},
		{Name: "Dropout", Shapes: [][]int{{4, 6}}, Wrt: []int{0}, Step: &autograd.Step{Batch: 1, Seq: 1, Seed: 9},
			Apply: func(in []*G.Node, st *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.Dropout(in[0], 0.25, 3, st)
			},
			Ref: func(in [][]float64, st *autograd.Step) []float64 { return refmath.Dropout(in[0], 0.25, st.Seed, 3) }},
		{Name: "Attention/packed", Shapes: [][]int{{1, 6, 2, 4}, {1, 6, 2, 4}, {1, 6, 2, 4}}, Wrt: []int{0, 1, 2}, Step: packed,
			Apply: func(in []*G.Node, st *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.Attention(in[0], in[1], in[2], 0, st)
			},
			Ref: attention},
		{Name: "Rotary/packed", Shapes: [][]int{{1, 6, 2, 6}}, Wrt: []int{0}, Step: packed,
			Apply: func(in []*G.Node, st *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.Rotary(in[0], st)
			},
			Ref: rotary},
		{Name: "SwiGLU", Shapes: [][]int{{4, 5}, {4, 5}}, Wrt: []int{0, 1},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.SwiGLU(in[0], in[1])
			},
			Ref: func(in [][]float64, _ *autograd.Step) []float64 {
				out := make([]float64, len(in[0]))
				for i := range out {
					g := in[1][i]
					out[i] = in[0][i] * g / (1 + math.Exp(-g))
				}
				return out
			}},
		{Name: "Embedding", Weights: []bool{true}, Shapes: [][]int{{7, 5}}, Wrt: []int{0}, Step: ids,
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.Embedding(in[0], st, 2, 3, dt, true)
			},
			Ref: embedding},
		{Name: "Embedding/bf16", Weights: []bool{true}, Shapes: [][]int{{7, 5}}, BF16: []bool{true}, Step: ids,
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.Embedding(in[0], st, 2, 3, dt, false)
			},
			Ref: embedding},
		{Name: "EmbeddingRows", Weights: []bool{true}, Shapes: [][]int{{3, 5}}, Wrt: []int{0}, Step: ids,
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.EmbeddingRows(in[0], st, 2, 3, 2, dt)
			},
			Ref: func(in [][]float64, st *autograd.Step) []float64 {
				out := make([]float64, 6*5)
				for i, id := range st.IDs {
					if r := int(id) - 2; r >= 0 && r < 3 {
						copy(out[i*5:], in[0][r*5:(r+1)*5])
					}
				}
				return out
			}},
		{Name: "PlaceColumns", Shapes: [][]int{{3, 2}}, Wrt: []int{0},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.PlaceColumns(in[0], 3, 6)
			},
			Ref: func(in [][]float64, _ *autograd.Step) []float64 {
				out := make([]float64, 18)
				for i := 0; i < 3; i++ {
					copy(out[i*6+3:], in[0][i*2:i*2+2])
				}
				return out
			}},
		{Name: "SelectRows", Shapes: [][]int{{6, 4}}, Wrt: []int{0}, Step: sel,
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.SelectRows(in[0], st, 2, 3)
			},
			Ref: func(in [][]float64, st *autograd.Step) []float64 {
				var out []float64
				for b, r := range st.Rows {
					i := b*3 + int(r)
					out = append(out, in[0][i*4:(i+1)*4]...)
				}
				return out
			}},
		{Name: "Linear", Weights: []bool{false, true}, Shapes: [][]int{{3, 6}, {5, 6}}, Wrt: []int{0, 1},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.Linear(in[0], in[1], nil, true, false)
			},
			Ref: linear},
		{Name: "Linear/bias", Weights: []bool{false, true, true}, Shapes: [][]int{{3, 6}, {5, 6}, {5}}, Wrt: []int{0, 1, 2},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.Linear(in[0], in[1], in[2], true, true)
			},
			Ref: linear},
		{Name: "Linear/scaled", Weights: []bool{false, true}, Shapes: [][]int{{3, 6}, {5, 6}}, Wrt: []int{0, 1},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.ScaledLinear(in[0], in[1], nil, 2.5, true, false)
			},
			Ref: func(in [][]float64, st *autograd.Step) []float64 {
				out := linear(in, st)
				for i := range out {
					out[i] *= 2.5
				}
				return out
			}},
		{Name: "Linear/bf16+bias", Weights: []bool{false, true, true}, Shapes: [][]int{{3, 6}, {5, 6}, {5}}, BF16: []bool{false, true, true}, Wrt: []int{0},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.Linear(in[0], in[1], in[2], false, false)
			},
			Ref: linear},
		{Name: "Checkpoint", Shapes: [][]int{{3, 8}}, Wrt: []int{0},
			Apply: func(in []*G.Node, _ *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
				return autograd.Checkpoint(in[0])
			},
			Ref: func(in [][]float64, _ *autograd.Step) []float64 { return append([]float64(nil), in[0]...) }},
		{Name: "CrossEntropy", Shapes: [][]int{{8, 6}}, Wrt: []int{0}, Step: labels,
			Apply: func(in []*G.Node, st *autograd.Step, dt tensor.Dtype) (*G.Node, error) {
				return autograd.CrossEntropy(in[0], st)
			},
			Ref: crossEntropy},
	}
	return append(cases, attentionEdgeCases()...)
}

// attentionEdgeCases put the block edges of the blocked attention (64 queries by 64 keys)
// under the op table: lengths around a block, padding that empties whole key blocks, packed
// segments and LogN's start across block boundaries.
func attentionEdgeCases() []Case {
	attn := func(in []*G.Node, st *autograd.Step, _ tensor.Dtype) (*G.Node, error) {
		return autograd.Attention(in[0], in[1], in[2], 0, st)
	}
	var cases []Case
	add := func(name string, heads int, st *autograd.Step) {
		s := []int{st.Batch, st.Seq, heads, 4}
		cases = append(cases, Case{Name: name, Shapes: [][]int{s, s, s}, Wrt: []int{0, 1, 2}, Step: st, Apply: attn, Ref: attention})
	}
	for _, t := range []int{1, 63, 64, 65, 129} {
		add(fmt.Sprintf("Attention/T=%d", t), 1+t%2, &autograd.Step{Batch: 1, Seq: t})
	}
	// Row 0 is padded on the left over 70 keys (its first key block is all padding, queries
	// 0..69 see nothing); row 1 on the right from key 100.
	const t = 129
	mask := make([]bool, 2*t)
	for j := range t {
		mask[j], mask[t+j] = j >= 70, j < 100
	}
	add("Attention/padded-blocks", 1, &autograd.Step{Batch: 2, Seq: t, KeyMask: mask})
	// Segments of 50, 40 and 40 tokens: the second crosses key 64, the third key 128.
	seg := make([]int32, 130)
	for i := range seg {
		seg[i] = int32(min(2, max(0, (i-10)/40)))
	}
	add("Attention/packed-blocks", 1, &autograd.Step{Batch: 1, Seq: 130, Segments: seg})
	add("Attention/LogN-blocks", 1, &autograd.Step{Batch: 1, Seq: t, LogNSeq: 70})
	return cases
}

func withPast(s *autograd.Step, past int) *autograd.Step {
	c := *s
	c.Past = past
	c.Cache = nil
	return &c
}
