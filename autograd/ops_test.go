package autograd

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/philox"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// opCase is one row of the op table: inputs of given shapes, the op applied to them, and a
// plain float64 reference of its forward pass.
type opCase struct {
	name   string
	shapes [][]int
	bf16   []bool // inputs stored as bf16 (uint16): frozen, never differentiated
	wrt    []int  // inputs whose gradients are checked
	step   *Step
	apply  func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error)
	ref    func(in [][]float64, st *Step) []float64
}

func randomInput(rng *rand.Rand, n int) []float64 {
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	return x
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// roundBF16 keeps what a bf16 weight can hold, so references see the same numbers.
func roundBF16(x []float64) []uint16 {
	out := make([]uint16, len(x))
	for i, v := range x {
		b := math.Float32bits(float32(v))
		out[i] = uint16((b + 0x7fff + (b>>16)&1) >> 16)
		x[i] = float64(bf16(out[i]))
	}
	return out
}

// buildGraph makes a graph of the case in dtype dt; it returns the input nodes, the output
// and the scalar loss = sum(out * r) (the output itself when it is a scalar or r is nil:
// gorgonia may compute the loss in place over the output's memory).
func buildGraph(c opCase, inputs [][]float64, bits [][]uint16, r []float64, dt tensor.Dtype) (*G.ExprGraph, []*G.Node, *G.Node, *G.Node, error) {
	g := G.NewGraph()
	nodes := make([]*G.Node, len(c.shapes))
	for i, s := range c.shapes {
		var val *tensor.Dense
		switch {
		case bits[i] != nil:
			val = tensor.New(tensor.WithShape(s...), tensor.WithBacking(append([]uint16(nil), bits[i]...)))
		case dt == tensor.Float32:
			f := make([]float32, len(inputs[i]))
			for j, v := range inputs[i] {
				f[j] = float32(v)
			}
			val = tensor.New(tensor.WithShape(s...), tensor.WithBacking(f))
		default:
			val = tensor.New(tensor.WithShape(s...), tensor.WithBacking(append([]float64(nil), inputs[i]...)))
		}
		nodes[i] = G.NewTensor(g, val.Dtype(), len(s), G.WithShape(s...), G.WithName(fmt.Sprintf("in%d", i)), G.WithValue(val))
	}
	out, err := c.apply(nodes, c.step, dt)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if out.IsScalar() || r == nil {
		return g, nodes, out, out, nil
	}
	var rv *tensor.Dense
	if dt == tensor.Float32 {
		f := make([]float32, len(r))
		for i, v := range r {
			f[i] = float32(v)
		}
		rv = tensor.New(tensor.WithShape(out.Shape()...), tensor.WithBacking(f))
	} else {
		rv = tensor.New(tensor.WithShape(out.Shape()...), tensor.WithBacking(append([]float64(nil), r...)))
	}
	rn := G.NewTensor(g, dt, out.Dims(), G.WithShape(out.Shape()...), G.WithName("r"), G.WithValue(rv))
	prod, err := G.HadamardProd(out, rn)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	loss, err := G.Sum(prod)
	return g, nodes, out, loss, err
}

func opCases() []opCase {
	padded := &Step{Batch: 2, Seq: 5, RotaryBase: 10000, KeyMask: []bool{true, true, true, true, true, true, true, true, false, false}}
	rows := &Step{Batch: 2, Seq: 3, Past: 0, Base: []float64{10000, 30000}, RotaryBase: 10000}
	logn := &Step{Batch: 1, Seq: 6, LogNSeq: 3, RotaryBase: 10000}
	ids := &Step{Batch: 2, Seq: 3, IDs: []int32{3, 0, 3, 6, 1, 2}}
	labels := &Step{Batch: 2, Seq: 4, Labels: []int32{-100, 2, 4, -100, 1, -100, 0, 5}}
	sel := &Step{Batch: 2, Seq: 3, Rows: []int32{2, 0}}
	packed := &Step{Batch: 1, Seq: 6, RotaryBase: 10000, Segments: []int32{0, 0, 0, 1, 1, 2}, Positions: []int32{0, 1, 2, 0, 1, 0}}
	cases := []opCase{
		{name: "RMSNorm", shapes: [][]int{{3, 8}, {8}}, wrt: []int{0, 1},
			apply: func(in []*G.Node, _ *Step, _ tensor.Dtype) (*G.Node, error) { return RMSNorm(in[0], in[1], 1e-6, true) },
			ref:   refRMSNorm},
		{name: "RMSNorm/bf16", shapes: [][]int{{3, 8}, {8}}, bf16: []bool{false, true}, wrt: []int{0},
			apply: func(in []*G.Node, _ *Step, _ tensor.Dtype) (*G.Node, error) {
				return RMSNorm(in[0], in[1], 1e-6, false)
			},
			ref: refRMSNorm},
		{name: "Rotary/offset+NTK", shapes: [][]int{{2, 3, 2, 6}}, wrt: []int{0}, step: withPast(rows, 7),
			apply: func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error) { return Rotary(in[0], st) },
			ref:   refRotary},
		{name: "Attention/padded", shapes: [][]int{{2, 5, 2, 4}, {2, 5, 2, 4}, {2, 5, 2, 4}}, wrt: []int{0, 1, 2}, step: padded,
			apply: func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error) {
				return Attention(in[0], in[1], in[2], 0, st)
			},
			ref: refAttention},
		{name: "Attention/LogN", shapes: [][]int{{1, 6, 3, 4}, {1, 6, 3, 4}, {1, 6, 3, 4}}, wrt: []int{0, 1, 2}, step: logn,
			apply: func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error) {
				return Attention(in[0], in[1], in[2], 0, st)
			},
			ref: refAttention},
		{name: "Dropout", shapes: [][]int{{4, 6}}, wrt: []int{0}, step: &Step{Batch: 1, Seq: 1, Seed: 9},
			apply: func(in []*G.Node, st *Step, _ tensor.Dtype) (*G.Node, error) { return Dropout(in[0], 0.25, 3, st) },
			ref:   func(in [][]float64, st *Step) []float64 { return refDropout(in[0], 0.25, st.Seed, 3) }},
		{name: "Attention/packed", shapes: [][]int{{1, 6, 2, 4}, {1, 6, 2, 4}, {1, 6, 2, 4}}, wrt: []int{0, 1, 2}, step: packed,
			apply: func(in []*G.Node, st *Step, _ tensor.Dtype) (*G.Node, error) {
				return Attention(in[0], in[1], in[2], 0, st)
			},
			ref: refAttention},
		{name: "Rotary/packed", shapes: [][]int{{1, 6, 2, 6}}, wrt: []int{0}, step: packed,
			apply: func(in []*G.Node, st *Step, _ tensor.Dtype) (*G.Node, error) { return Rotary(in[0], st) },
			ref:   refRotary},
		{name: "SwiGLU", shapes: [][]int{{4, 5}, {4, 5}}, wrt: []int{0, 1},
			apply: func(in []*G.Node, _ *Step, _ tensor.Dtype) (*G.Node, error) { return SwiGLU(in[0], in[1]) },
			ref: func(in [][]float64, _ *Step) []float64 {
				out := make([]float64, len(in[0]))
				for i := range out {
					g := in[1][i]
					out[i] = in[0][i] * g / (1 + math.Exp(-g))
				}
				return out
			}},
		{name: "Embedding", shapes: [][]int{{7, 5}}, wrt: []int{0}, step: ids,
			apply: func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error) {
				return Embedding(in[0], st, 2, 3, dt, true)
			},
			ref: refEmbedding},
		{name: "Embedding/bf16", shapes: [][]int{{7, 5}}, bf16: []bool{true}, step: ids,
			apply: func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error) {
				return Embedding(in[0], st, 2, 3, dt, false)
			},
			ref: refEmbedding},
		{name: "EmbeddingRows", shapes: [][]int{{3, 5}}, wrt: []int{0}, step: ids,
			apply: func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error) {
				return EmbeddingRows(in[0], st, 2, 3, 2, dt)
			},
			ref: func(in [][]float64, st *Step) []float64 {
				out := make([]float64, 6*5)
				for i, id := range st.IDs {
					if r := int(id) - 2; r >= 0 && r < 3 {
						copy(out[i*5:], in[0][r*5:(r+1)*5])
					}
				}
				return out
			}},
		{name: "PlaceColumns", shapes: [][]int{{3, 2}}, wrt: []int{0},
			apply: func(in []*G.Node, _ *Step, _ tensor.Dtype) (*G.Node, error) { return PlaceColumns(in[0], 3, 6) },
			ref: func(in [][]float64, _ *Step) []float64 {
				out := make([]float64, 18)
				for i := 0; i < 3; i++ {
					copy(out[i*6+3:], in[0][i*2:i*2+2])
				}
				return out
			}},
		{name: "SelectRows", shapes: [][]int{{6, 4}}, wrt: []int{0}, step: sel,
			apply: func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error) { return SelectRows(in[0], st, 2, 3) },
			ref: func(in [][]float64, st *Step) []float64 {
				var out []float64
				for b, r := range st.Rows {
					i := b*3 + int(r)
					out = append(out, in[0][i*4:(i+1)*4]...)
				}
				return out
			}},
		{name: "Linear", shapes: [][]int{{3, 6}, {5, 6}}, wrt: []int{0, 1},
			apply: func(in []*G.Node, _ *Step, _ tensor.Dtype) (*G.Node, error) {
				return Linear(in[0], in[1], nil, true, false)
			},
			ref: refLinear},
		{name: "Linear/bias", shapes: [][]int{{3, 6}, {5, 6}, {5}}, wrt: []int{0, 1, 2},
			apply: func(in []*G.Node, _ *Step, _ tensor.Dtype) (*G.Node, error) {
				return Linear(in[0], in[1], in[2], true, true)
			},
			ref: refLinear},
		{name: "Linear/scaled", shapes: [][]int{{3, 6}, {5, 6}}, wrt: []int{0, 1},
			apply: func(in []*G.Node, _ *Step, _ tensor.Dtype) (*G.Node, error) {
				return ScaledLinear(in[0], in[1], nil, 2.5, true, false)
			},
			ref: func(in [][]float64, st *Step) []float64 {
				out := refLinear(in, st)
				for i := range out {
					out[i] *= 2.5
				}
				return out
			}},
		{name: "Linear/bf16+bias", shapes: [][]int{{3, 6}, {5, 6}, {5}}, bf16: []bool{false, true, true}, wrt: []int{0},
			apply: func(in []*G.Node, _ *Step, _ tensor.Dtype) (*G.Node, error) {
				return Linear(in[0], in[1], in[2], false, false)
			},
			ref: refLinear},
		{name: "CrossEntropy", shapes: [][]int{{8, 6}}, wrt: []int{0}, step: labels,
			apply: func(in []*G.Node, st *Step, dt tensor.Dtype) (*G.Node, error) { return CrossEntropy(in[0], st) },
			ref:   refCrossEntropy},
	}
	return append(cases, attentionEdgeCases()...)
}

// attentionEdgeCases put the block edges of the blocked attention (64 queries by 64 keys)
// under the op table: lengths around a block, padding that empties whole key blocks, packed
// segments and LogN's start across block boundaries.
func attentionEdgeCases() []opCase {
	attn := func(in []*G.Node, st *Step, _ tensor.Dtype) (*G.Node, error) {
		return Attention(in[0], in[1], in[2], 0, st)
	}
	var cases []opCase
	add := func(name string, heads int, st *Step) {
		s := []int{st.Batch, st.Seq, heads, 4}
		cases = append(cases, opCase{name: name, shapes: [][]int{s, s, s}, wrt: []int{0, 1, 2}, step: st, apply: attn, ref: refAttention})
	}
	for _, t := range []int{1, 63, 64, 65, 129} {
		add(fmt.Sprintf("Attention/T=%d", t), 1+t%2, &Step{Batch: 1, Seq: t})
	}
	// Row 0 is padded on the left over 70 keys (its first key block is all padding, queries
	// 0..69 see nothing); row 1 on the right from key 100.
	const t = 129
	mask := make([]bool, 2*t)
	for j := range t {
		mask[j], mask[t+j] = j >= 70, j < 100
	}
	add("Attention/padded-blocks", 1, &Step{Batch: 2, Seq: t, KeyMask: mask})
	// Segments of 50, 40 and 40 tokens: the second crosses key 64, the third key 128.
	seg := make([]int32, 130)
	for i := range seg {
		seg[i] = int32(min(2, max(0, (i-10)/40)))
	}
	add("Attention/packed-blocks", 1, &Step{Batch: 1, Seq: 130, Segments: seg})
	add("Attention/LogN-blocks", 1, &Step{Batch: 1, Seq: t, LogNSeq: 70})
	return cases
}

func withPast(s *Step, past int) *Step {
	c := *s
	c.Past = past
	c.Cache = nil
	return &c
}

// TestOps checks every op: forward in float32 against a plain float64 reference, and
// gradients from gorgonia's Grad in float64 against central finite differences.
func TestOps(t *testing.T) {
	for _, c := range opCases() {
		t.Run(c.name, func(t *testing.T) {
			if c.step == nil {
				c.step = &Step{Batch: 1, Seq: 1}
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(c.name))))
			inputs := make([][]float64, len(c.shapes))
			bits := make([][]uint16, len(c.shapes))
			for i, s := range c.shapes {
				inputs[i] = randomInput(rng, numel(s))
				if i < len(c.bf16) && c.bf16[i] {
					bits[i] = roundBF16(inputs[i])
				}
			}
			want := c.ref(inputs, c.step)
			r := randomInput(rng, len(want))

			// Forward, float32.
			_, _, out32, _, err := buildGraph(c, inputs, bits, nil, tensor.Float32)
			if err != nil {
				t.Fatal(err)
			}
			vm := G.NewTapeMachine(out32.Graph())
			if err := vm.RunAll(); err != nil {
				t.Fatal(err)
			}
			got := valueFloats(t, out32.Value())
			if len(got) != len(want) {
				t.Fatalf("forward has %d values, reference %d", len(got), len(want))
			}
			if e := relErr(got, want); e > 8e-7 { // measured 7.4e-8 (the worst op)
				t.Errorf("float32 forward differs from the reference: relative error %.3g", e)
			}

			// Gradients, float64.
			g, nodes, _, loss, err := buildGraph(c, inputs, bits, r, tensor.Float64)
			if err != nil {
				t.Fatal(err)
			}
			wrt := make(G.Nodes, len(c.wrt))
			for i, j := range c.wrt {
				wrt[i] = nodes[j]
			}
			if len(wrt) > 0 {
				if _, err := G.Grad(loss, wrt...); err != nil {
					t.Fatal(err)
				}
			}
			vm = G.NewTapeMachine(g)
			if err := vm.RunAll(); err != nil {
				t.Fatal(err)
			}
			for _, j := range c.wrt {
				gv, err := nodes[j].Grad()
				if err != nil {
					t.Fatal(err)
				}
				analytic := valueFloats(t, gv)
				numeric := finiteDiff(t, c, inputs, bits, r, j)
				if e := relErr(analytic, numeric); e > 4e-9 { // measured 3.2e-10 (the worst op)
					t.Errorf("d loss / d input %d: relative error %.3g against finite differences\nanalytic %.6g\nnumeric  %.6g", j, e, analytic, numeric)
				}
			}
		})
	}
}

// finiteDiff is d loss / d inputs[j] by central differences in float64.
func finiteDiff(t *testing.T, c opCase, inputs [][]float64, bits [][]uint16, r []float64, j int) []float64 {
	t.Helper()
	_, nodes, _, loss, err := buildGraph(c, inputs, bits, r, tensor.Float64)
	if err != nil {
		t.Fatal(err)
	}
	vm := G.NewTapeMachine(loss.Graph())
	data := nodes[j].Value().Data().([]float64)
	eval := func() float64 {
		vm.Reset()
		if err := vm.RunAll(); err != nil {
			t.Fatal(err)
		}
		v, err := Scalar(loss.Value())
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const h = 1e-5
	out := make([]float64, len(data))
	for i := range data {
		x := data[i]
		data[i] = x + h
		up := eval()
		data[i] = x - h
		down := eval()
		data[i] = x
		out[i] = (up - down) / (2 * h)
	}
	return out
}

func valueFloats(t *testing.T, v G.Value) []float64 {
	t.Helper()
	switch d := v.Data().(type) {
	case []float32:
		out := make([]float64, len(d))
		for i, x := range d {
			out[i] = float64(x)
		}
		return out
	case []float64:
		return d
	case float32:
		return []float64{float64(d)}
	case float64:
		return []float64{d}
	}
	t.Fatalf("value of type %T", v.Data())
	return nil
}

// relErr is ||a - b|| / ||b||.
func relErr(a, b []float64) float64 {
	var num, den float64
	for i := range a {
		num += (a[i] - b[i]) * (a[i] - b[i])
		den += b[i] * b[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func refRMSNorm(in [][]float64, _ *Step) []float64 {
	x, w := in[0], in[1]
	h := len(w)
	out := make([]float64, len(x))
	for n := 0; n < len(x)/h; n++ {
		var ss float64
		for j := 0; j < h; j++ {
			ss += x[n*h+j] * x[n*h+j]
		}
		r := 1 / math.Sqrt(ss/float64(h)+1e-6)
		for j := 0; j < h; j++ {
			out[n*h+j] = x[n*h+j] * r * w[j]
		}
	}
	return out
}

// refRotary is the rotation of rotary.go's header: position Past+t (Positions[b, t] when
// packed), row b's base (Base[b], else RotaryBase), float32 inverse frequencies and angles.
func refRotary(in [][]float64, st *Step) []float64 {
	x := in[0]
	const nh, d = 2, 6
	out := make([]float64, len(x))
	for b := 0; b < st.Batch; b++ {
		base := st.RotaryBase
		if st.Base != nil {
			base = st.Base[b]
		}
		for t := 0; t < st.Seq; t++ {
			p := st.Past + t
			if st.Positions != nil {
				p = int(st.Positions[b*st.Seq+t])
			}
			for h := 0; h < nh; h++ {
				off := ((b*st.Seq+t)*nh + h) * d
				for i := 0; i < d/2; i++ {
					invFreq := float32(math.Pow(base, -2*float64(i)/d))
					a := float64(float32(p) * invFreq)
					x1, x2 := x[off+i], x[off+i+d/2]
					out[off+i] = x1*math.Cos(a) - x2*math.Sin(a)
					out[off+i+d/2] = x2*math.Cos(a) + x1*math.Sin(a)
				}
			}
		}
	}
	return out
}

// refAttention needs the head count: it is the third dimension of the case's shape, which
// this reference recovers from the step and the input length with D = 4.
func refAttention(in [][]float64, st *Step) []float64 {
	q, k, v := in[0], in[1], in[2]
	const d = 4
	nh := len(q) / (st.Batch * st.Seq * d)
	out := make([]float64, len(q))
	at := func(x []float64, b, t, h int) []float64 { return x[((b*st.Seq+t)*nh+h)*d:][:d] }
	for b := 0; b < st.Batch; b++ {
		for h := 0; h < nh; h++ {
			for t := 0; t < st.Seq; t++ {
				c := 1 / math.Sqrt(d)
				if st.LogNSeq > 0 && st.Seq > st.LogNSeq && t+1 > st.LogNSeq {
					c *= math.Log(float64(t+1)) / math.Log(float64(st.LogNSeq))
				}
				var w []float64
				var sum float64
				m := math.Inf(-1)
				s := make([]float64, t+1)
				// key j (no cache here: keys are this row's Seq positions) is seen when it is a
				// real token and, packed, of the query's segment
				seen := func(j int) bool {
					token := st.KeyMask == nil || st.KeyMask[b*st.Seq+j]
					return token && (st.Segments == nil || st.Segments[b*st.Seq+j] == st.Segments[b*st.Seq+t])
				}
				for j := 0; j <= t; j++ {
					for i := 0; i < d; i++ {
						s[j] += at(q, b, t, h)[i] * at(k, b, j, h)[i]
					}
					s[j] *= c
					if seen(j) {
						m = math.Max(m, s[j])
					}
				}
				for j := 0; j <= t; j++ {
					e := 0.0
					if seen(j) {
						e = math.Exp(s[j] - m)
					}
					w = append(w, e)
					sum += e
				}
				o := at(out, b, t, h)
				for j := 0; j <= t; j++ {
					for i := 0; i < d; i++ {
						o[i] += w[j] / sum * at(v, b, j, h)[i]
					}
				}
			}
		}
	}
	return out
}

// refDropout is dropout.go's header: element i of x is kept when the i-th 32-bit word u of
// the Philox stream (seed, key) has u / 2^32 >= p, and scaled by 1/(1-p); word i is word i
// mod 4 of Philox4x32-10 of the counter (i/4, key) under seed, built here from philox.Block.
func refDropout(x []float64, p float64, seed, key uint64) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		g := uint64(i / 4)
		b := philox.Block([4]uint32{uint32(g), uint32(g >> 32), uint32(key), uint32(key >> 32)}, [2]uint32{uint32(seed), uint32(seed >> 32)})
		if float64(b[i%4])/(1<<32) >= p {
			out[i] = v / (1 - p)
		}
	}
	return out
}

func refEmbedding(in [][]float64, st *Step) []float64 {
	h := len(in[0]) / 7
	var out []float64
	for _, id := range st.IDs {
		out = append(out, in[0][int(id)*h:int(id+1)*h]...)
	}
	return out
}

func refLinear(in [][]float64, _ *Step) []float64 {
	x, w := in[0], in[1]
	const k = 6
	n, m := len(x)/k, len(w)/k
	out := make([]float64, n*m)
	for i := 0; i < n; i++ {
		for j := 0; j < m; j++ {
			for l := 0; l < k; l++ {
				out[i*m+j] += x[i*k+l] * w[j*k+l]
			}
			if len(in) > 2 {
				out[i*m+j] += in[2][j]
			}
		}
	}
	return out
}

func refCrossEntropy(in [][]float64, st *Step) []float64 {
	x := in[0]
	const vocab = 6
	var total float64
	n := 0
	for b := 0; b < st.Batch; b++ {
		for t := 0; t+1 < st.Seq; t++ {
			l := st.Labels[b*st.Seq+t+1]
			if l == IgnoreIndex {
				continue
			}
			row := x[(b*st.Seq+t)*vocab:][:vocab]
			var sum float64
			for _, v := range row {
				sum += math.Exp(v)
			}
			total += math.Log(sum) - row[l]
			n++
		}
	}
	return []float64{total / float64(n)}
}
