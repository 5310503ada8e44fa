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
