package checkpoints

import "fmt"

// TensorSpec is a tensor a checkpoint must hold: its name and shape. Linear weights use
// PyTorch's [out, in] layout.
type TensorSpec struct {
	Name  string
	Shape []int64
}

// NumElements is the product of the shape.
func (s TensorSpec) NumElements() int64 { return TensorInfo{Shape: s.Shape}.NumElements() }

// Layer tensor names, relative to "transformer.h.N.".
const (
	LN1         = "ln_1.weight"
	AttnQKV     = "attn.c_attn.weight"
	AttnQKVBias = "attn.c_attn.bias"
	AttnOut     = "attn.c_proj.weight"
	LN2         = "ln_2.weight"
	MLPUp       = "mlp.w1.weight"     // linear branch
	MLPGate     = "mlp.w2.weight"     // SiLU branch
	MLPDown     = "mlp.c_proj.weight" // back to hidden
)

// Model-level tensor names.
const (
	Embedding = "transformer.wte.weight"
	FinalNorm = "transformer.ln_f.weight"
	LMHead    = "lm_head.weight"
)

// LayerName is the full name of a per-layer tensor.
func LayerName(layer int, name string) string { return fmt.Sprintf("transformer.h.%d.%s", layer, name) }

// LayerTensors lists one block's tensors in forward order.
func LayerTensors(c *Config, layer int) []TensorSpec {
	h, p, m := int64(c.HiddenSize), int64(c.ProjectionSize()), int64(c.MLPWidth())
	return []TensorSpec{
		{LayerName(layer, LN1), []int64{h}},
		{LayerName(layer, AttnQKV), []int64{3 * p, h}},
		{LayerName(layer, AttnQKVBias), []int64{3 * p}},
		{LayerName(layer, AttnOut), []int64{h, p}},
		{LayerName(layer, LN2), []int64{h}},
		{LayerName(layer, MLPUp), []int64{m, h}},
		{LayerName(layer, MLPGate), []int64{m, h}},
		{LayerName(layer, MLPDown), []int64{h, m}},
	}
}

// ModelTensors is the weight-name table of a Qwen-7B checkpoint: every tensor with the
// shape the config implies, in forward order (259 tensors for Qwen-7B).
func ModelTensors(c *Config) []TensorSpec {
	v, h := int64(c.VocabSize), int64(c.HiddenSize)
	specs := []TensorSpec{{Embedding, []int64{v, h}}}
	for l := 0; l < c.NumHiddenLayers; l++ {
		specs = append(specs, LayerTensors(c, l)...)
	}
	return append(specs, TensorSpec{FinalNorm, []int64{h}}, TensorSpec{LMHead, []int64{v, h}})
}

// LinearNames are the five Linear layers of a block (relative names without ".weight"), in
// the order GPTQ quantizes them.
var LinearNames = []string{"attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj"}

// CheckModelTensors compares a checkpoint with the table: a missing, unexpected or
// mis-shaped tensor is an error naming it.
func CheckModelTensors(c *Config, ck *Checkpoint) error {
	want := map[string]TensorSpec{}
	for _, s := range ModelTensors(c) {
		want[s.Name] = s
		info, f, ok := ck.Info(s.Name)
		if !ok {
			return fmt.Errorf("checkpoints: %s: tensor %q is missing (the config implies it, shape %s)", ck.Dir, s.Name, shapeString(s.Shape))
		}
		if !equalShape(info.Shape, s.Shape) {
			return fmt.Errorf("checkpoints: %s: tensor %q has shape %s but the config implies %s", f.Path, s.Name, shapeString(info.Shape), shapeString(s.Shape))
		}
		if info.DType != F32 && info.DType != BF16 && info.DType != F16 {
			return fmt.Errorf("checkpoints: %s: tensor %q is %s; expected F32, BF16 or F16", f.Path, s.Name, info.DType)
		}
	}
	for _, name := range ck.Names() {
		if _, ok := want[name]; !ok {
			return fmt.Errorf("checkpoints: %s: unexpected tensor %q (not part of a %d-layer Qwen model)", ck.Dir, name, c.NumHiddenLayers)
		}
	}
	return nil
}

// GPTQ tensor suffixes of a quantized Linear, as AutoGPTQ names them.
var GPTQSuffixes = []string{"qweight", "qzeros", "scales", "g_idx", "bias"}

// GPTQSpec is a tensor of a GPTQ checkpoint with its dtype.
type GPTQSpec struct {
	TensorSpec
	DType DType
}

// GPTQLinearTensors lists the five tensors of one quantized Linear with in inputs and out
// outputs: qweight I32 [in*bits/32, out], qzeros I32 [groups, out*bits/32], scales F16
// [groups, out], g_idx I32 [in], bias F16 [out].
func GPTQLinearTensors(prefix string, in, out int, g *GPTQConfig) []GPTQSpec {
	per := int64(32 / g.Bits)
	groups := int64(1)
	if g.GroupSize > 0 {
		groups = int64(in / g.GroupSize)
	}
	i, o := int64(in), int64(out)
	return []GPTQSpec{
		{TensorSpec{prefix + ".qweight", []int64{i / per, o}}, I32},
		{TensorSpec{prefix + ".qzeros", []int64{groups, o / per}}, I32},
		{TensorSpec{prefix + ".scales", []int64{groups, o}}, F16},
		{TensorSpec{prefix + ".g_idx", []int64{i}}, I32},
		{TensorSpec{prefix + ".bias", []int64{o}}, F16},
	}
}

// GPTQModelTensors is the tensor table of a GPTQ checkpoint: the five Linears of every
// block quantized, the embedding, norms and lm_head kept in floating point.
func GPTQModelTensors(c *Config, g *GPTQConfig) []GPTQSpec {
	h, p, m := c.HiddenSize, c.ProjectionSize(), c.MLPWidth()
	v := int64(c.VocabSize)
	float := func(name string, shape ...int64) GPTQSpec { return GPTQSpec{TensorSpec{name, shape}, ""} }
	specs := []GPTQSpec{float(Embedding, v, int64(h))}
	for l := 0; l < c.NumHiddenLayers; l++ {
		name := func(s string) string { return LayerName(l, s) }
		specs = append(specs, float(name(LN1), int64(h)), float(name(LN2), int64(h)))
		for _, lin := range []struct {
			n       string
			in, out int
		}{{"attn.c_attn", h, 3 * p}, {"attn.c_proj", p, h}, {"mlp.w1", h, m}, {"mlp.w2", h, m}, {"mlp.c_proj", m, h}} {
			specs = append(specs, GPTQLinearTensors(name(lin.n), lin.in, lin.out, g)...)
		}
	}
	return append(specs, float(FinalNorm, int64(h)), float(LMHead, v, int64(h)))
}

// CheckGPTQTensors compares a GPTQ checkpoint with its table: missing, unexpected, mis-shaped
// or mistyped tensors are errors naming them.
func CheckGPTQTensors(c *Config, g *GPTQConfig, ck *Checkpoint) error {
	want := map[string]bool{}
	for _, s := range GPTQModelTensors(c, g) {
		want[s.Name] = true
		info, f, ok := ck.Info(s.Name)
		if !ok {
			return fmt.Errorf("checkpoints: %s: tensor %q is missing (a %d-bit GPTQ model with group size %d has it)", ck.Dir, s.Name, g.Bits, g.GroupSize)
		}
		if !equalShape(info.Shape, s.Shape) {
			return fmt.Errorf("checkpoints: %s: tensor %q has shape %s but the configs imply %s", f.Path, s.Name, shapeString(info.Shape), shapeString(s.Shape))
		}
		if s.DType != "" && info.DType != s.DType {
			return fmt.Errorf("checkpoints: %s: tensor %q is %s; AutoGPTQ stores it as %s", f.Path, s.Name, info.DType, s.DType)
		}
		if s.DType == "" && info.DType != F32 && info.DType != BF16 && info.DType != F16 {
			return fmt.Errorf("checkpoints: %s: tensor %q is %s; expected F16, BF16 or F32", f.Path, s.Name, info.DType)
		}
	}
	for _, name := range ck.Names() {
		if !want[name] {
			return fmt.Errorf("checkpoints: %s: unexpected tensor %q in a GPTQ model", ck.Dir, name)
		}
	}
	return nil
}
