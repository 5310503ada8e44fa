//go:build qtcuda || cudaemu

package cuda

// The op table on the device: every case of autograd/internal/opcases (the table autograd's
// tests check against float64 references and finite differences) run here against the CPU
// implementation. A case's graph and the gradient ops gorgonia's Backpropagate adds for an
// upstream gradient r are compiled as a training program (batch, padding and packing as in a
// loss program) and run with the arena poisoned (NaN), so a value a kernel fails to write
// shows up; the same graph runs on autograd's Machine in float32. Every input, and r, is
// drawn representable in bf16, as the device rounds weights and GEMM inputs to bf16; what
// remains is the rounding of values inside the op (a GEMM's operands, bf16 copies), which the
// tolerances of opTable cover. The self-test runs the same table (opTableChecks).

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/autograd/internal/opcases"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// opRow is how the device runs a case of the op table.
type opRow struct {
	// tol bounds ||device - CPU|| / ||CPU|| of the forward and of every gradient.
	tol float64
	// refused, when set, is (part of) the error the device gives instead: what training on
	// the GPU does not do.
	refused string
	// fused: the case's three inputs are q, k and v [B, T, H, D]; on the device they are the
	// SplitHeads views of one fused projection [B*T, 3*H*D], as in Qwen's block (training
	// attention reads them from there), and its gradient is split back into three.
	fused bool
}

// opTable has a row for every case of opcases.All, by name.
// Tolerances: the ops other than attention are within float32 rounding of the CPU (measured
// on the emulator at most 9.4e-8, most exactly equal: the inputs are bf16 values, so the
// GEMMs' bf16 operands are exact); attention rounds its probabilities and the gradients'
// operands to bf16 for the tensor-core products (measured 4.8e-4 to 3.5e-3).
const (
	opTol   = 1e-6
	attnTol = 4e-2
)

var opTable = map[string]opRow{
	"RMSNorm":                 {refused: "RMSNormGradW"}, // norms are frozen in training; RMSNorm/bf16 is the op training runs
	"RMSNorm/bf16":            {tol: opTol},
	"Rotary/offset+NTK":       {refused: "positions start at 0"},
	"Rotary/NTK":              {tol: opTol},
	"Rotary/packed":           {tol: opTol},
	"Attention/padded":        {tol: attnTol, fused: true},
	"Attention/LogN":          {refused: "no LogN attention", fused: true},
	"Attention/packed":        {tol: attnTol, fused: true},
	"Attention/T=1":           {tol: attnTol, fused: true},
	"Attention/T=63":          {tol: attnTol, fused: true},
	"Attention/T=64":          {tol: attnTol, fused: true},
	"Attention/T=65":          {tol: attnTol, fused: true},
	"Attention/T=129":         {tol: attnTol, fused: true},
	"Attention/padded-blocks": {tol: attnTol, fused: true},
	"Attention/packed-blocks": {tol: attnTol, fused: true},
	"Attention/LogN-blocks":   {refused: "no LogN attention", fused: true},
	"Dropout":                 {tol: opTol},
	"SwiGLU":                  {tol: opTol},
	"Embedding":               {tol: opTol},
	"Embedding/bf16":          {tol: opTol},
	"EmbeddingRows":           {tol: opTol},
	"PlaceColumns":            {refused: "added to the logits"}, // run where training has it: TestDeviceEmbed...
	"SelectRows":              {tol: opTol},
	"Linear":                  {tol: opTol},
	"Linear/bias":             {refused: "LinearGradB"}, // biases are frozen; Linear/bf16+bias is the op training runs
	"Linear/scaled":           {tol: opTol},
	"Linear/bf16+bias":        {tol: opTol},
	"CrossEntropy":            {tol: opTol},
	"Checkpoint":              {refused: "does not own"}, // marks are of values the program computes: TestDeviceCheckpointing...
}

// opTableChecks runs every case of the op table: one check per output (the forward, then
// each gradient), case i's inputs drawn from seed i (not from r, which the other groups'
// inputs come from).
func opTableChecks(d *Device, _ *rand.Rand) []Check {
	var checks []Check
	for i, c := range opcases.All() {
		checks = append(checks, opCase(d, c, uint64(i))...)
	}
	return checks
}

// opCase runs case c of the op table on the device and on the CPU, inputs drawn from seed:
// one check per output, named "op <case> forward" and "op <case> d in<j>".
func opCase(d *Device, c opcases.Case, seed uint64) []Check {
	name := c.Name
	fail := func(err error) []Check { return []Check{{Op: "op " + name, Err: err}} }
	row, ok := opTable[name]
	if !ok {
		return fail(fmt.Errorf("the device's op table has no row for it"))
	}
	wrt := c.Wrt
	st := trainingStep(c.StepOrDefault())
	rng := rand.New(rand.NewPCG(seed, 7))
	inputs, bits := c.Inputs(rng)
	for i := range inputs {
		if bits[i] == nil {
			opcases.RoundBF16(inputs[i])
		}
	}
	want, err := opCaseCPU(c, st, inputs, bits, wrt, rng)
	if err != nil {
		return fail(fmt.Errorf("on the CPU: %w", err))
	}
	got, unwritten, err := opCaseDevice(d, c, st, inputs, bits, wrt, want.r)
	if row.refused != "" {
		if err == nil || !strings.Contains(err.Error(), row.refused) {
			return fail(fmt.Errorf("the device ran it (error %v), its row says it refuses it with %q", err, row.refused))
		}
		return []Check{{Op: "op " + name + " refused", Shape: row.refused}}
	}
	if err != nil {
		return fail(err)
	}
	if len(got) != len(want.outs) {
		return fail(fmt.Errorf("the device gave %d outputs, the CPU %d", len(got), len(want.outs)))
	}
	var checks []Check
	for k := range want.outs {
		if len(got[k]) != len(want.outs[k]) {
			return fail(fmt.Errorf("output %d has %d values on the device, %d on the CPU", k, len(got[k]), len(want.outs[k])))
		}
		what := "forward"
		if k > 0 {
			what = fmt.Sprintf("d in%d", wrt[k-1])
		}
		checks = append(checks, Check{Op: "op " + name + " " + what, Shape: fmt.Sprint(want.shapes[k]), RelErr: refmath.RelDiffOrNorm(got[k], want.outs[k]), Tol: row.tol, Unwritten: unwritten[k]})
	}
	return checks
}

// trainingStep is st with what a training program reads from a Step: ids and labels of every
// position (zeros and no target where the case has none).
func trainingStep(st *autograd.Step) *autograd.Step {
	s := *st
	n := s.Batch * s.Seq
	if len(s.IDs) != n {
		s.IDs = make([]int32, n)
	}
	if len(s.Labels) != n {
		s.Labels = make([]int32, n)
		for i := range s.Labels {
			s.Labels[i] = autograd.IgnoreIndex
		}
	}
	return &s
}

// opResult is the CPU's float32 results of a case: the forward, then each gradient, with
// their shapes, and the upstream gradient r they were computed for.
type opResult struct {
	outs   [][]float32
	shapes []tensor.Shape
	r      []float64
}

// opGraph builds the case's float32 graph; device inputs (activations) get no value and are
// returned in dev with their data, weights and bf16 inputs carry theirs. It adds r, the
// upstream gradient (a value on the CPU, a device input on the device), and the gradients of
// wrt.
func opGraph(c opcases.Case, st *autograd.Step, inputs [][]float64, bits [][]uint16, wrt []int, onDevice bool, r func(tensor.Shape) []float64) (out, rn *G.Node, grads []*G.Node, dev map[*G.Node][]float64, err error) {
	g := G.NewGraph()
	nodes := make([]*G.Node, len(c.Shapes))
	if onDevice && opTable[c.Name].fused {
		return fusedGraph(c, st, inputs, wrt)
	}
	dev = map[*G.Node][]float64{}
	for i, s := range c.Shapes {
		name := fmt.Sprintf("in%d", i)
		if onDevice && !c.IsWeight(i) && !c.IsBF16(i) {
			nodes[i] = G.NewTensor(g, tensor.Float32, len(s), G.WithShape(s...), G.WithName(name))
			dev[nodes[i]] = inputs[i]
			continue
		}
		val := opcases.Dense(inputs[i], bits[i], s, tensor.Float32)
		nodes[i] = G.NewTensor(g, val.Dtype(), len(s), G.WithShape(s...), G.WithName(name), G.WithValue(val))
	}
	if out, err = c.Apply(nodes, st, tensor.Float32); err != nil || len(wrt) == 0 {
		return out, nil, nil, dev, err
	}
	wn := make(G.Nodes, len(wrt))
	for k, j := range wrt {
		wn[k] = nodes[j]
	}
	if out.IsScalar() { // a loss: its gradients for the seed 1, as in training
		grads, err = G.Grad(out, wn...)
		return out, nil, grads, dev, err
	}
	shape := out.Shape()
	opts := []G.NodeConsOpt{G.WithShape(shape...), G.WithName("r")}
	if !onDevice {
		opts = append(opts, G.WithValue(opcases.Dense(r(shape), nil, shape, tensor.Float32)))
	}
	rn = G.NewTensor(g, tensor.Float32, shape.Dims(), opts...)
	grads, err = G.Backpropagate(G.Nodes{out}, G.Nodes{rn}, wn)
	return out, rn, grads, dev, err
}

// fusedGraph is the device's graph of an attention case: q, k and v the SplitHeads views of
// one device input qkv [B*T, 3*H*D] (inputs laid out so), the gradient taken by qkv.
func fusedGraph(c opcases.Case, st *autograd.Step, inputs [][]float64, wrt []int) (out, rn *G.Node, grads []*G.Node, dev map[*G.Node][]float64, err error) {
	s := c.Shapes[0] // [B, T, H, D]
	if len(c.Shapes) != 3 || len(s) != 4 || !slices.Equal(c.Shapes[1], s) || !slices.Equal(c.Shapes[2], s) || len(wrt) != 0 && !slices.Equal(wrt, []int{0, 1, 2}) {
		return nil, nil, nil, nil, fmt.Errorf("cuda: case %s is not q, k, v of one shape with all three gradients (a fused row)", c.Name)
	}
	g := G.NewGraph()
	qkv := G.NewTensor(g, tensor.Float32, 2, G.WithShape(s[0]*s[1], 3*s[2]*s[3]), G.WithName("qkv"))
	dev = map[*G.Node][]float64{qkv: fuse(inputs[0], inputs[1], inputs[2], s[2]*s[3])}
	nodes := make([]*G.Node, 3)
	for part := range nodes {
		if nodes[part], err = autograd.SplitHeads(qkv, part, s[0], s[1], s[2], s[3]); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	if out, err = c.Apply(nodes, st, tensor.Float32); err != nil || len(wrt) == 0 {
		return out, nil, nil, dev, err
	}
	rn = G.NewTensor(g, tensor.Float32, out.Dims(), G.WithShape(out.Shape()...), G.WithName("r"))
	grads, err = G.Backpropagate(G.Nodes{out}, G.Nodes{rn}, G.Nodes{qkv})
	return out, rn, grads, dev, err
}

// fuse lays q, k and v [B*T rows of width] out as one [B*T, 3*width] matrix.
func fuse(q, k, v []float64, width int) []float64 {
	rows := len(q) / width
	out := make([]float64, 0, 3*len(q))
	for r := range rows {
		for _, x := range [][]float64{q, k, v} {
			out = append(out, x[r*width:(r+1)*width]...)
		}
	}
	return out
}

// unfuse splits a [B*T, 3*width] gradient into the three of q, k and v.
func unfuse(g []float32, width int) [][]float32 {
	rows := len(g) / (3 * width)
	out := make([][]float32, 3)
	for r := range rows {
		for part := range out {
			out[part] = append(out[part], g[(3*r+part)*width:(3*r+part+1)*width]...)
		}
	}
	return out
}

// opCaseCPU runs the case's graph on autograd's Machine in float32.
func opCaseCPU(c opcases.Case, st *autograd.Step, inputs [][]float64, bits [][]uint16, wrt []int, rng *rand.Rand) (*opResult, error) {
	res := &opResult{}
	r := func(s tensor.Shape) []float64 {
		res.r = opcases.Random(rng, max(s.TotalSize(), 1))
		opcases.RoundBF16(res.r)
		return res.r
	}
	out, _, grads, _, err := opGraph(c, st, inputs, bits, wrt, false, r)
	if err != nil {
		return nil, err
	}
	m, err := autograd.NewMachine(out.Graph(), append([]*G.Node{out}, grads...)...)
	if err != nil {
		return nil, err
	}
	if err := m.Run(); err != nil {
		return nil, err
	}
	for _, n := range append([]*G.Node{out}, grads...) {
		v, err := m.Value(n)
		if err != nil {
			return nil, err
		}
		f, err := opcases.Floats(v)
		if err != nil {
			return nil, err
		}
		o := make([]float32, len(f))
		for i, x := range f {
			o[i] = float32(x)
		}
		res.outs, res.shapes = append(res.outs, o), append(res.shapes, n.Shape())
	}
	return res, nil
}

// opCaseDevice compiles the case's graph as a training program, uploads its activations and
// r, poisons the arena, runs it and downloads the forward and the gradients, with the
// number of elements of each still NaN.
func opCaseDevice(d *Device, c opcases.Case, st *autograd.Step, inputs [][]float64, bits [][]uint16, wrt []int, r []float64) (outs [][]float32, unwritten []int, err error) {
	out, rn, grads, dev, err := opGraph(c, st, inputs, bits, wrt, true, nil)
	if err != nil {
		return nil, nil, err
	}
	in := map[*G.Node]*Buffer{}
	defer func() {
		for _, b := range in {
			d.Free(b)
		}
	}()
	upload := func(n *G.Node, x []float64) error {
		f := make([]float32, len(x))
		for i, v := range x {
			f[i] = float32(v)
		}
		b, err := Upload(d, f, n.Name())
		if err == nil {
			in[n] = b
		}
		return err
	}
	for n, x := range dev {
		if err := upload(n, x); err != nil {
			return nil, nil, err
		}
	}
	if rn != nil {
		if err := upload(rn, r); err != nil {
			return nil, nil, err
		}
	}
	p, err := d.compileWith(out.Graph(), out, grads, st, GradOptions{train: true}, in)
	if err != nil {
		return nil, nil, err
	}
	defer p.Close()
	if err := p.poison(); err != nil {
		return nil, nil, err
	}
	if err := p.Run(); err != nil {
		return nil, nil, err
	}
	var fwd []float32
	if out.IsScalar() { // the loss: the mean of the rows' losses
		l, err := p.Loss()
		if err != nil {
			return nil, nil, err
		}
		fwd = []float32{float32(l)}
	} else {
		if p.out.stride != p.out.cols || p.out.bf16 {
			return nil, nil, fmt.Errorf("cuda: the output of %s is not a whole float32 value", c.Name)
		}
		fwd = make([]float32, p.out.rows*p.out.cols)
		if err := Download(d, fwd, p.out.ptr()); err != nil {
			return nil, nil, err
		}
	}
	gs, err := p.Grads()
	if err != nil {
		return nil, nil, err
	}
	if opTable[c.Name].fused && len(gs) == 1 {
		s := c.Shapes[0]
		gs = unfuse(gs[0], s[2]*s[3])
	}
	outs = append([][]float32{fwd}, gs...)
	for _, o := range outs {
		nan := 0
		for _, v := range o {
			if math.IsNaN(float64(v)) {
				nan++
			}
		}
		unwritten = append(unwritten, nan)
	}
	return outs, unwritten, nil
}

// poison fills the program's arena and scratch with NaN (Device.Poison), so a value or a
// scratch element a kernel reads before it writes it shows up; the step's inputs are
// uploaded by every run.
func (p *Program) poison() error {
	bufs := slices.Clone(p.scratch)
	if p.arena != nil {
		bufs = append(bufs, p.arena)
	}
	if p.loss != nil {
		for _, sc := range p.loss.scratch {
			bufs = append(bufs, sc.q, sc.k, sc.v, sc.g, sc.s, sc.dp, sc.p, sc.ds, sc.dsum)
		}
	}
	for _, b := range bufs {
		if err := p.d.Poison(b); err != nil {
			return err
		}
	}
	return nil
}
