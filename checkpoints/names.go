package checkpoints

import (
	"fmt"
	"slices"
	"strings"
)

// TensorSpec is a tensor a checkpoint must hold: its name, shape and, where the format fixes
// it, its dtype (empty: any of F32, BF16 and F16). Linear weights use PyTorch's [out, in]
// layout.
type TensorSpec struct {
	Name  string
	Shape []int64
	DType DType
}

// NumElements is the product of the shape.
func (s TensorSpec) NumElements() int64 { return TensorInfo{Shape: s.Shape}.NumElements() }

// Layer tensor names, relative to "transformer.h.N.".
const (
	LN1 = "ln_1.weight"
	LN2 = "ln_2.weight"
)

// Model-level tensor names.
const (
	Embedding = "transformer.wte.weight"
	FinalNorm = "transformer.ln_f.weight"
	LMHead    = "lm_head.weight"
)

// Dim is one of the model's widths, as a linear layer's input or output.
type Dim int

const (
	Hidden     Dim = iota // hidden_size
	Projection            // heads x head dim (attention output)
	QKV                   // 3 x heads x head dim (fused q, k, v)
	MLP                   // intermediate_size / 2 (each MLP branch)
)

// Of is the width under config c.
func (d Dim) Of(c *Config) int {
	switch d {
	case Projection:
		return c.ProjectionSize()
	case QKV:
		return 3 * c.ProjectionSize()
	case MLP:
		return c.MLPWidth()
	}
	return c.HiddenSize
}

// Linear is one linear layer of a block: y = x W^T (+ b), W [Out, In].
type Linear struct {
	Module  string // relative to "transformer.h.N.", without ".weight"
	Target  string // its name in PEFT's target_modules
	Out, In Dim
	Bias    bool
	// Norm is the RMSNorm weight listed just before this layer in a checkpoint ("" for none).
	Norm string
	// Stage is the layer's group in GPTQ's true-sequential order: the layers of one stage read
	// the same input and are calibrated together, stage after stage.
	Stage int
}

// Shape is the weight's [out, in] under config c.
func (l Linear) Shape(c *Config) (out, in int) { return l.Out.Of(c), l.In.Of(c) }

// BlockLinears is the table of a block's linear layers, in forward order: every package that
// walks a block's projections (loading, LoRA, merging, GPTQ) goes through it.
var BlockLinears = []Linear{
	{Module: "attn.c_attn", Target: "c_attn", Out: QKV, In: Hidden, Bias: true, Norm: LN1, Stage: 0},
	{Module: "attn.c_proj", Target: "c_proj", Out: Hidden, In: Projection, Stage: 1},
	{Module: "mlp.w1", Target: "w1", Out: MLP, In: Hidden, Norm: LN2, Stage: 2}, // linear branch
	{Module: "mlp.w2", Target: "w2", Out: MLP, In: Hidden, Stage: 2},            // SiLU branch
	{Module: "mlp.c_proj", Target: "c_proj", Out: Hidden, In: MLP, Stage: 3},    // back to hidden
}

// LinearTargets are the distinct target_modules names of BlockLinears.
func LinearTargets() []string {
	var ts []string
	for _, l := range BlockLinears {
		if !slices.Contains(ts, l.Target) {
			ts = append(ts, l.Target)
		}
	}
	return ts
}

// LayerName is the full name of a per-layer tensor or module.
func LayerName(layer int, name string) string { return fmt.Sprintf("transformer.h.%d.%s", layer, name) }

// ModelTensors is the tensor table of a Qwen-7B checkpoint with config c, in forward order:
// with g nil a floating-point model (259 tensors for Qwen-7B), otherwise a GPTQ model whose
// block linears are packed as AutoGPTQ stores them (g's bits and group size) while the
// embedding, norms and lm_head stay floating point.
func ModelTensors(c *Config, g *GPTQConfig) []TensorSpec {
	v, h := int64(c.VocabSize), int64(c.HiddenSize)
	specs := []TensorSpec{{Name: Embedding, Shape: []int64{v, h}}}
	for layer := 0; layer < c.NumHiddenLayers; layer++ {
		for _, l := range BlockLinears {
			if l.Norm != "" {
				specs = append(specs, TensorSpec{Name: LayerName(layer, l.Norm), Shape: []int64{h}})
			}
			specs = append(specs, linearTensors(LayerName(layer, l.Module), l, c, g)...)
		}
	}
	return append(specs, TensorSpec{Name: FinalNorm, Shape: []int64{h}}, TensorSpec{Name: LMHead, Shape: []int64{v, h}})
}

// linearTensors are one linear layer's tensors: weight [out, in] (and bias [out]) in floating
// point, or with g AutoGPTQ's five: qweight I32 [in*bits/32, out], qzeros I32
// [groups, out*bits/32], scales F16 [groups, out], g_idx I32 [in], bias F16 [out] (every packed
// layer has a bias, zero where the float layer had none).
func linearTensors(prefix string, l Linear, c *Config, g *GPTQConfig) []TensorSpec {
	o, i := l.Shape(c)
	out, in := int64(o), int64(i)
	if g == nil {
		specs := []TensorSpec{{Name: prefix + ".weight", Shape: []int64{out, in}}}
		if l.Bias {
			specs = append(specs, TensorSpec{Name: prefix + ".bias", Shape: []int64{out}})
		}
		return specs
	}
	per, groups := int64(32/g.Bits), int64(1)
	if g.GroupSize > 0 {
		groups = in / int64(g.GroupSize)
	}
	return []TensorSpec{
		{prefix + ".qweight", []int64{in / per, out}, I32},
		{prefix + ".qzeros", []int64{groups, out / per}, I32},
		{prefix + ".scales", []int64{groups, out}, F16},
		{prefix + ".g_idx", []int64{in}, I32},
		{prefix + ".bias", []int64{out}, F16},
	}
}

// CheckTensors compares a checkpoint with its table (ModelTensors(c, g)): a missing,
// unexpected, mis-shaped or mistyped tensor is an error naming it.
func CheckTensors(c *Config, g *GPTQConfig, ck *Checkpoint) error {
	kind := fmt.Sprintf("a %d-layer Qwen model", c.NumHiddenLayers)
	if g != nil {
		kind = fmt.Sprintf("a %d-bit GPTQ model with group size %d", g.Bits, g.GroupSize)
	}
	want := map[string]bool{}
	for _, s := range ModelTensors(c, g) {
		want[s.Name] = true
		info, f, ok := ck.Info(s.Name)
		if !ok {
			return fmt.Errorf("checkpoints: %s: tensor %q is missing (%s has it, shape %s)", ck.Dir, s.Name, kind, shapeString(s.Shape))
		}
		if !slices.Equal(info.Shape, s.Shape) {
			return fmt.Errorf("checkpoints: %s: tensor %q has shape %s but the config implies %s", f.Path, s.Name, shapeString(info.Shape), shapeString(s.Shape))
		}
		if s.DType != "" && info.DType != s.DType {
			return fmt.Errorf("checkpoints: %s: tensor %q is %s; AutoGPTQ stores it as %s", f.Path, s.Name, info.DType, s.DType)
		}
		if s.DType == "" && info.DType != F32 && info.DType != BF16 && info.DType != F16 {
			return fmt.Errorf("checkpoints: %s: tensor %q is %s; expected F32, BF16 or F16", f.Path, s.Name, info.DType)
		}
	}
	for _, name := range ck.Names() {
		if !want[name] {
			hint := ""
			if g == nil && strings.HasSuffix(name, ".qweight") {
				hint = "; a GPTQ model needs quantize_config.json or config.json's quantization_config"
			}
			return fmt.Errorf("checkpoints: %s: unexpected tensor %q (not part of %s)%s", ck.Dir, name, kind, hint)
		}
	}
	return nil
}
