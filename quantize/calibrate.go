package quantize

// The calibration pipeline, block by block as AutoGPTQ does with true_sequential: the inputs
// of each Linear are captured from the calibration samples, the Linear is quantized, and its
// quantized weights produce the inputs of the next group:
//
//	[attn.c_attn] -> [attn.c_proj] -> [mlp.w1, mlp.w2] -> [mlp.c_proj]
//
// then the block's quantized output feeds the next block. Memory holds one block's
// activations for every sample (h, the attention output, h after attention, the MLP
// product) plus one Hessian, never the whole model's activations.

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
)

// LayerReport is how one Linear fared.
type LayerReport struct {
	Name     string  `json:"name"`
	Error    float64 `json:"error"`     // relative output error on calibration rows
	RTNError float64 `json:"rtn_error"` // round-to-nearest on the same grid, same rows
	Damp     float64 `json:"damp"`      // damping used (raised when H was not positive definite)
}

// Layer is a quantized Linear, packed.
type Layer struct {
	Name   string // module name, e.g. transformer.h.0.attn.c_attn
	Packed *Packed
	Bias   []float32 // the float layer's bias, or nil
}

// errorRows is how many calibration rows each layer's error is measured on.
const errorRows = 256

// Method picks the algorithm.
type Method string

const (
	MethodGPTQ Method = "gptq"
	MethodRTN  Method = "rtn" // round-to-nearest, the baseline (ignores calibration data)
)

// Calibrate quantizes every block Linear of m (bf16 or float32 weights) with the calibration
// samples (token ids; equal lengths are fastest). m's projections are replaced by the
// dequantized weights as it goes (as AutoGPTQ writes them back), so after the call m computes
// what the quantized model computes. progress is called after each Linear.
func Calibrate(m *model.Model, samples [][]int, o Options, method Method, progress func(LayerReport, int, int)) ([]Layer, []LayerReport, error) {
	if err := CheckShapes(m.Config, o); err != nil {
		return nil, nil, err
	}
	if len(samples) == 0 {
		return nil, nil, fmt.Errorf("quantize: no calibration samples")
	}
	c := m.Config
	for i, s := range samples {
		for j, id := range s {
			if id < 0 || id >= c.VocabSize {
				return nil, nil, fmt.Errorf("quantize: calibration sample %d, token %d: id %d is outside the vocabulary", i, j, id)
			}
		}
	}
	total := 5 * len(m.Blocks)
	var layers []Layer
	var reports []LayerReport
	// h: each sample's hidden states entering the current block, [T, H].
	hs := make([][]float32, len(samples))
	for i, s := range samples {
		var err error
		if hs[i], err = embed(m, s); err != nil {
			return nil, nil, err
		}
	}
	for _, b := range m.Blocks {
		name := func(s string) string { return fmt.Sprintf("transformer.h.%d.%s", b.Layer, s) }
		quant := func(slot *model.Projection, module string, inputs [][]float32, k int) error {
			hess := NewHessian(k)
			var sampleRows []float32
			for _, x := range inputs {
				if method == MethodGPTQ { // round-to-nearest needs only the rows measuring its error
					if err := hess.Add(x, len(x)/k); err != nil {
						return fmt.Errorf("quantize: %s: %w", module, err)
					}
				}
				if len(sampleRows) < errorRows*k {
					sampleRows = append(sampleRows, x[:min(len(x), errorRows*k-len(sampleRows))]...)
				}
			}
			return quantizeSlot(slot, module, hess, sampleRows, o, method, &layers, &reports, progress, total)
		}
		h := hs
		x1, err := runStage(m, h, nil, func(g *model.Graph, in []*G.Node) *G.Node { return g.RMSNorm(in[0], b.LN1) })
		if err != nil {
			return nil, nil, err
		}
		if err := quant(&b.QKV, name("attn.c_attn"), x1, c.HiddenSize); err != nil {
			return nil, nil, err
		}
		attn, err := runStage(m, h, nil, func(g *model.Graph, in []*G.Node) *G.Node {
			qkv := g.Project(b.QKV, g.RMSNorm(in[0], b.LN1))
			return g.Attention(g.Rotary(g.SplitHeads(qkv, 0)), g.Rotary(g.SplitHeads(qkv, 1)), g.SplitHeads(qkv, 2), b.Layer)
		})
		if err != nil {
			return nil, nil, err
		}
		if err := quant(&b.Out, name("attn.c_proj"), attn, c.ProjectionSize()); err != nil {
			return nil, nil, err
		}
		h2, err := runStage(m, h, attn, func(g *model.Graph, in []*G.Node) *G.Node { return g.Add(in[0], g.Project(b.Out, in[1])) })
		if err != nil {
			return nil, nil, err
		}
		x2, err := runStage(m, h2, nil, func(g *model.Graph, in []*G.Node) *G.Node { return g.RMSNorm(in[0], b.LN2) })
		if err != nil {
			return nil, nil, err
		}
		if err := quant(&b.Up, name("mlp.w1"), x2, c.HiddenSize); err != nil {
			return nil, nil, err
		}
		if err := quant(&b.Gate, name("mlp.w2"), x2, c.HiddenSize); err != nil {
			return nil, nil, err
		}
		mlp, err := runStage(m, h2, nil, func(g *model.Graph, in []*G.Node) *G.Node {
			x := g.RMSNorm(in[0], b.LN2)
			return g.SwiGLU(g.Project(b.Up, x), g.Project(b.Gate, x))
		})
		if err != nil {
			return nil, nil, err
		}
		if err := quant(&b.Down, name("mlp.c_proj"), mlp, c.MLPWidth()); err != nil {
			return nil, nil, err
		}
		if hs, err = runStage(m, h2, mlp, func(g *model.Graph, in []*G.Node) *G.Node { return g.Add(in[0], g.Project(b.Down, in[1])) }); err != nil {
			return nil, nil, err
		}
	}
	return layers, reports, nil
}

// CheckShapes checks that every Linear of a model with config c can be quantized and packed
// with o: input widths divisible by the group size, widths divisible by the codes per int32.
func CheckShapes(c *checkpoints.Config, o Options) error {
	if err := o.Validate(c.HiddenSize); err != nil {
		return err
	}
	per := 32 / o.Bits
	if o.Bits == 3 {
		return fmt.Errorf("quantize: 3-bit codes cannot be written in the AutoGPTQ layout this program packs (use 2, 4 or 8)")
	}
	for _, d := range []struct {
		what string
		n    int
	}{{"hidden_size", c.HiddenSize}, {"heads x head dim", c.ProjectionSize()}, {"MLP width (intermediate_size/2)", c.MLPWidth()}} {
		if o.GroupSize > 0 && d.n%o.GroupSize != 0 {
			return fmt.Errorf("quantize: %s %d is not a multiple of the group size %d; choose a group size that divides it, or -1", d.what, d.n, o.GroupSize)
		}
		if d.n%per != 0 {
			return fmt.Errorf("quantize: %s %d is not a multiple of %d, as %d-bit packing needs", d.what, d.n, per, o.Bits)
		}
	}
	return nil
}

// quantizeSlot quantizes one dense projection and puts its dequantized weights in its place.
func quantizeSlot(slot *model.Projection, module string, hess *Hessian, rows []float32, o Options, method Method, layers *[]Layer, reports *[]LayerReport, progress func(LayerReport, int, int), total int) error {
	d, ok := (*slot).(*model.Dense)
	if !ok {
		return fmt.Errorf("quantize: %s is a %T; only dense layers can be quantized (is the model already quantized?)", module, *slot)
	}
	n, k := d.Weight.Value.Shape()[0], d.Weight.Value.Shape()[1]
	w, err := float32Weights(d.Weight.Value)
	if err != nil {
		return fmt.Errorf("quantize: %s: %w", module, err)
	}
	var res *Result
	if method == MethodRTN {
		res, err = RTNResult(w, n, k, o)
	} else {
		res, err = GPTQ(w, n, k, hess, o)
	}
	if err != nil {
		return fmt.Errorf("quantize: %s: %w", module, err)
	}
	p, err := Pack(res, o.Bits)
	if err != nil {
		return fmt.Errorf("quantize: %s: %w", module, err)
	}
	rep := LayerReport{Name: module, Damp: res.Damp}
	nrows := len(rows) / k
	rep.Error = RelativeError(rows, nrows, w, res.Q, n, k)
	rtn, err := RTNResult(w, n, k, o)
	if err != nil {
		return err
	}
	rep.RTNError = RelativeError(rows, nrows, w, rtn.Q, n, k)
	var bias []float32
	if d.Bias != nil {
		if bias, err = float32Weights(d.Bias.Value); err != nil {
			return err
		}
	}
	*layers = append(*layers, Layer{Name: module, Packed: p, Bias: bias})
	*reports = append(*reports, rep)
	q := make([]float32, len(res.Q))
	for i, v := range res.Q {
		q[i] = float32(v)
	}
	*slot = &model.Dense{Weight: &model.Param{Name: d.Weight.Name, Value: tensor.New(tensor.WithShape(n, k), tensor.WithBacking(q))}, Bias: d.Bias}
	if progress != nil {
		progress(rep, len(*reports), total)
	}
	return nil
}

// float32Weights widens a bf16 (uint16) or float32 tensor.
func float32Weights(t *tensor.Dense) ([]float32, error) {
	switch d := t.Data().(type) {
	case []float32:
		return append([]float32(nil), d...), nil
	case []uint16:
		out := make([]float32, len(d))
		for i, b := range d {
			out[i] = checkpoints.BF16ToF32(b)
		}
		return out, nil
	}
	return nil, fmt.Errorf("weights of type %v", t.Dtype())
}

// embed gathers a sample's embedding rows.
func embed(m *model.Model, ids []int) ([]float32, error) {
	w, err := float32Rows(m.Embed.Value, ids)
	if err != nil {
		return nil, fmt.Errorf("quantize: %s: %w", m.Embed.Name, err)
	}
	return w, nil
}

func float32Rows(t *tensor.Dense, ids []int) ([]float32, error) {
	h := t.Shape()[1]
	out := make([]float32, len(ids)*h)
	for i, id := range ids {
		switch d := t.Data().(type) {
		case []float32:
			copy(out[i*h:], d[id*h:(id+1)*h])
		case []uint16:
			for j, b := range d[id*h : (id+1)*h] {
				out[i*h+j] = checkpoints.BF16ToF32(b)
			}
		default:
			return nil, fmt.Errorf("weights of type %v", t.Dtype())
		}
	}
	return out, nil
}

// runStage evaluates f on every sample: in[0] is a [T, width] input from a (and in[1] from
// b when given). Graphs are built once per sequence length.
func runStage(m *model.Model, a, b [][]float32, f func(g *model.Graph, in []*G.Node) *G.Node) ([][]float32, error) {
	type compiled struct {
		g   *model.Graph
		in  []*G.Node
		out *G.Node
		vm  G.VM
	}
	graphs := map[int]*compiled{}
	defer func() {
		for _, c := range graphs {
			c.vm.Close()
		}
	}()
	h := m.Config.HiddenSize
	out := make([][]float32, len(a))
	for i := range a {
		seq := len(a[i]) / h
		c, ok := graphs[seq]
		if !ok {
			g := model.NewGraph(m, 1, seq, model.Evaluation, false)
			ins := []*G.Node{G.NewMatrix(g.ExprGraph, tensor.Float32, G.WithShape(seq, h), G.WithName("a"))}
			if b != nil {
				width := len(b[i]) / seq
				ins = append(ins, G.NewMatrix(g.ExprGraph, tensor.Float32, G.WithShape(seq, width), G.WithName("b")))
			}
			o := f(g, ins)
			if err := g.Err(); err != nil {
				return nil, err
			}
			c = &compiled{g: g, in: ins, out: o, vm: G.NewTapeMachine(g.ExprGraph)}
			graphs[seq] = c
		}
		vals := [][]float32{a[i]}
		if b != nil {
			vals = append(vals, b[i])
		}
		for j, n := range c.in {
			if err := G.Let(n, tensor.New(tensor.WithShape(n.Shape()...), tensor.WithBacking(vals[j]))); err != nil {
				return nil, err
			}
		}
		c.vm.Reset()
		if err := c.vm.RunAll(); err != nil {
			return nil, fmt.Errorf("quantize: calibration forward: %w", err)
		}
		out[i] = append([]float32(nil), c.out.Value().Data().([]float32)...)
	}
	return out, nil
}
