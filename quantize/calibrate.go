package quantize

// The calibration pipeline, block by block as AutoGPTQ does with true_sequential: the model's
// own Block.Forward runs on the calibration samples with the projections of one stage of
// checkpoints.BlockLinears wrapped in a recorder that accumulates their common input; those
// projections are quantized and replaced by their dequantized weights, and the next stage
// sees their output:
//
//	[attn.c_attn] -> [attn.c_proj] -> [mlp.w1, mlp.w2] -> [mlp.c_proj]
//
// then the block's quantized output feeds the next block. Memory holds the hidden states
// entering the current block for every sample, one Hessian and the rows that measure each
// layer's error, never the whole model's activations.

import (
	"context"
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
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

// errorRows is how many calibration rows each layer's error is measured on.
const errorRows = 256

// Method picks the algorithm.
type Method string

const (
	MethodGPTQ Method = "gptq"
	MethodRTN  Method = "rtn" // round-to-nearest, the baseline (ignores calibration data)
)

// Calibrate quantizes every block Linear of m (bf16 or float32 weights) with the calibration
// samples (token ids; equal lengths are fastest) and returns the packed layers, named by
// module. m's projections are replaced by the dequantized weights as it goes (as AutoGPTQ
// writes them back), so after the call m computes what the quantized model computes.
// progress is called after each Linear. A cancelled ctx stops the work between layers or
// calibration samples and returns its error.
func Calibrate(ctx context.Context, m *model.Model, samples [][]int, o Options, method Method, progress func(LayerReport, int, int)) ([]*autograd.Int4, []LayerReport, error) {
	return calibrate(ctx, m, samples, o, method, cpuSolver{}, &cpuForward{}, progress)
}

// forwarder runs the calibration forward: the samples' hidden states entering the current
// block, kept where it computes them.
type forwarder interface {
	// embed starts the hidden states from the samples' token ids.
	embed(ctx context.Context, m *model.Model, samples [][]int) error
	// record runs block b over every sample with the stage's first projection (first) wrapped
	// in a capture that feeds in.
	record(ctx context.Context, m *model.Model, b *model.Block, first *model.Projection, in *inputs) error
	// advance moves the hidden states through block b as it now stands (quantized).
	advance(ctx context.Context, m *model.Model, b *model.Block) error
}

// cpuForward is the forward through the model's graph on the CPU (run).
type cpuForward struct{ hs [][]float32 }

func (f *cpuForward) embed(ctx context.Context, m *model.Model, samples [][]int) (err error) {
	f.hs, err = run(ctx, m, samples, nil, func(g *model.Graph, _ *G.Node) *G.Node { return g.Embed(m.Embed) })
	return err
}

func (f *cpuForward) record(ctx context.Context, m *model.Model, b *model.Block, first *model.Projection, in *inputs) error {
	base := *first
	*first = &recorder{Projection: base, sink: in.add}
	_, err := run(ctx, m, nil, f.hs, b.Forward)
	*first = base
	return err
}

func (f *cpuForward) advance(ctx context.Context, m *model.Model, b *model.Block) (err error) {
	f.hs, err = run(ctx, m, nil, f.hs, b.Forward)
	return err
}

// accumulator sums a stage's Hessian: Hessian on the CPU, DeviceHessian on a GPU.
type accumulator interface {
	Add(x []float32, rows int) error
}

// solver is where the Hessians are summed and GPTQ runs.
type solver interface {
	hessian(k int) (accumulator, error)
	gptq(w []float32, n, k int, h accumulator, o Options) (*Result, error)
	release(h accumulator) // the Hessian's memory, once its stage is quantized
	// errors are RelativeError of res and of round-to-nearest on the same grid (RTNResult)
	// on the calibration rows x [rows, k].
	errors(w []float32, n, k int, res *Result, x []float32, rows int, o Options) (gptq, rtn float64, err error)
}

// cpuSolver is the CPU: Hessian and GPTQ.
type cpuSolver struct{}

func (cpuSolver) hessian(k int) (accumulator, error) { return NewHessian(k), nil }
func (cpuSolver) gptq(w []float32, n, k int, h accumulator, o Options) (*Result, error) {
	return GPTQ(w, n, k, h.(*Hessian), o)
}
func (cpuSolver) release(accumulator) {}
func (cpuSolver) errors(w []float32, n, k int, res *Result, x []float32, rows int, o Options) (float64, float64, error) {
	rtn, err := RTNResult(w, n, k, o)
	if err != nil {
		return 0, 0, err
	}
	return RelativeError(x, rows, w, res.Q, n, k), RelativeError(x, rows, w, rtn.Q, n, k), nil
}

func calibrate(ctx context.Context, m *model.Model, samples [][]int, o Options, method Method, sv solver, fw forwarder, progress func(LayerReport, int, int)) ([]*autograd.Int4, []LayerReport, error) {
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
	q := &quantizer{o: o, method: method, solver: sv, progress: progress, total: len(m.Projections())}
	if err := fw.embed(ctx, m, samples); err != nil {
		return nil, nil, err
	}
	for _, b := range m.Blocks {
		slots := b.Projections()
		for stage := 0; ; stage++ {
			var group []model.Slot
			for _, s := range slots {
				if s.Stage == stage {
					group = append(group, s)
				}
			}
			if len(group) == 0 {
				break
			}
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
			in, err := newInputs(group[0].In.Of(c), method, sv)
			if err != nil {
				return nil, nil, fmt.Errorf("quantize: %s: %w", group[0].Name, err)
			}
			if err := q.stage(ctx, m, fw, b, group, in); err != nil {
				return nil, nil, err
			}
		}
		if err := fw.advance(ctx, m, b); err != nil {
			return nil, nil, err
		}
		q.replaced = q.replaced[:0]
	}
	return q.layers, q.reports, nil
}

// stage records the inputs of a stage's projections (group) over the samples' hidden
// states entering block b, and quantizes them.
func (q *quantizer) stage(ctx context.Context, m *model.Model, fw forwarder, b *model.Block, group []model.Slot, in *inputs) error {
	if in.hess != nil {
		defer q.solver.release(in.hess)
	}
	if err := fw.record(ctx, m, b, group[0].P, in); err != nil {
		return fmt.Errorf("quantize: %s: %w", group[0].Name, err)
	}
	for _, s := range group {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := q.quantize(s, in); err != nil {
			return err
		}
	}
	return nil
}

// recorder is a projection that hands its input to sink before computing base(x).
type recorder struct {
	model.Projection
	sink autograd.Sink
}

func (r *recorder) Forward(g *model.Graph, x *G.Node) (*G.Node, error) {
	x, err := autograd.Capture(x, r.sink)
	if err != nil {
		return nil, err
	}
	return r.Projection.Forward(g, x)
}

// inputs accumulates what a stage's projections read: the Hessian 2 X^T X (GPTQ only) and the
// first errorRows rows, on which each layer's error is measured.
type inputs struct {
	k    int
	hess accumulator
	rows []float32
}

func newInputs(k int, method Method, sv solver) (*inputs, error) {
	in := &inputs{k: k}
	if method == MethodGPTQ { // round-to-nearest needs only the rows measuring its error
		var err error
		if in.hess, err = sv.hessian(k); err != nil {
			return nil, err
		}
	}
	return in, nil
}

func (in *inputs) add(x []float32, rows, cols int) error {
	if cols != in.k {
		return fmt.Errorf("captured %d columns, expected %d", cols, in.k)
	}
	if in.hess != nil {
		if err := in.hess.Add(x, rows); err != nil {
			return err
		}
	}
	if need := errorRows*in.k - len(in.rows); need > 0 {
		in.rows = append(in.rows, x[:min(len(x), need)]...)
	}
	return nil
}

// quantizer packs layers one after the other and reports on each.
type quantizer struct {
	o        Options
	method   Method
	solver   solver
	progress func(LayerReport, int, int)
	total    int
	layers   []*autograd.Int4
	reports  []LayerReport
	// replaced holds the current block's float projections until the block is done, so that
	// no new weight takes their addresses while a GPU executor, which keys the weights it
	// uploaded by address, may still hold them.
	replaced []model.Projection
}

// quantize quantizes one dense projection from its inputs and puts its dequantized weights
// in its place.
func (q *quantizer) quantize(s model.Slot, in *inputs) error {
	d, ok := (*s.P).(*model.Dense)
	if !ok {
		return fmt.Errorf("quantize: %s is a %T; only dense layers can be quantized (is the model already quantized?)", s.Name, *s.P)
	}
	n, k := d.Weight.Value.Shape()[0], d.Weight.Value.Shape()[1]
	w, err := float32Weights(d.Weight.Value)
	if err != nil {
		return fmt.Errorf("quantize: %s: %w", s.Name, err)
	}
	var res *Result
	if q.method == MethodRTN {
		res, err = RTNResult(w, n, k, q.o)
	} else {
		res, err = q.solver.gptq(w, n, k, in.hess, q.o)
	}
	if err != nil {
		return fmt.Errorf("quantize: %s: %w", s.Name, err)
	}
	var bias []float32
	if d.Bias != nil {
		if bias, err = float32Weights(d.Bias.Value); err != nil {
			return fmt.Errorf("quantize: %s: %w", s.Name, err)
		}
	}
	p, err := Pack(res, q.o.Bits, s.Name, bias)
	if err != nil {
		return fmt.Errorf("quantize: %s: %w", s.Name, err)
	}
	rep := LayerReport{Name: s.Name, Damp: res.Damp}
	nrows := len(in.rows) / k
	if rep.Error, rep.RTNError, err = q.solver.errors(w, n, k, res, in.rows, nrows, q.o); err != nil {
		return fmt.Errorf("quantize: %s: %w", s.Name, err)
	}
	q.replaced = append(q.replaced, d)
	q.layers = append(q.layers, p)
	q.reports = append(q.reports, rep)
	deq := make([]float32, len(res.Q))
	for i, v := range res.Q {
		deq[i] = float32(v)
	}
	*s.P = &model.Dense{Weight: &model.Param{Name: d.Weight.Name, Value: tensor.New(tensor.WithShape(n, k), tensor.WithBacking(deq))}, Bias: d.Bias}
	if q.progress != nil {
		q.progress(rep, len(q.reports), q.total)
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

// run evaluates f for every sample through the model's graph in evaluation mode, one sample
// at a time, and returns each sample's output [T, H]. f's input is the sample's hidden states
// hs[i] [T, H]; with hs nil it is nil and the graph reads the sample's token ids (the
// embedding). Graphs are built once per sequence length.
func run(ctx context.Context, m *model.Model, ids [][]int, hs [][]float32, f func(g *model.Graph, x *G.Node) *G.Node) (_ [][]float32, err error) {
	type compiled struct {
		g   *model.Graph
		in  *G.Node
		out *G.Node
		vm  G.VM
	}
	graphs := map[int]*compiled{}
	defer func() {
		for _, c := range graphs {
			if cerr := c.vm.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("quantize: releasing a calibration graph: %w", cerr)
			}
		}
	}()
	h := m.Config.HiddenSize
	n := len(hs)
	if hs == nil {
		n = len(ids)
	}
	out := make([][]float32, n)
	for i := range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		seq := 0
		if hs == nil {
			seq = len(ids[i])
		} else {
			seq = len(hs[i]) / h
		}
		c, ok := graphs[seq]
		if !ok {
			g := model.NewGraph(m, 1, seq, model.Evaluation, false)
			c = &compiled{g: g}
			if hs != nil {
				c.in = G.NewMatrix(g.ExprGraph, tensor.Float32, G.WithShape(seq, h), G.WithName("hidden"))
			}
			c.out = f(g, c.in)
			if err := g.Err(); err != nil {
				return nil, err
			}
			c.vm = G.NewTapeMachine(g.ExprGraph)
			graphs[seq] = c
		}
		if hs == nil {
			c.g.Step.IDs = make([]int32, seq)
			for j, id := range ids[i] {
				c.g.Step.IDs[j] = int32(id)
			}
		} else if err := G.Let(c.in, tensor.New(tensor.WithShape(seq, h), tensor.WithBacking(hs[i]))); err != nil {
			return nil, err
		}
		c.vm.Reset()
		if err := c.vm.RunAll(); err != nil {
			return nil, fmt.Errorf("quantize: calibration forward: %w", err)
		}
		out[i] = append([]float32(nil), c.out.Value().Data().([]float32)...)
	}
	return out, nil
}
