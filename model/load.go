package model

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// LoadOptions says how weights are held in memory.
type LoadOptions struct {
	// Float32 widens every weight to float32 and marks it trainable (full fine-tuning and
	// gradient checks). Otherwise bf16 weights stay bf16, aliasing the memory-mapped file,
	// and nothing is trainable.
	Float32 bool
	// Train widens the named tensors to float32 and marks them trainable (Qwen trains wte and
	// lm_head in full when tuning a base model).
	Train []string
	// Progress, if set, is called after each tensor with the count done and the total.
	Progress func(done, total int)
}

// Load reads a Qwen-7B checkpoint directory: config.json and safetensors weights (one file
// or shards with an index). Every tensor the config implies must be present with its shape,
// and no other tensor may be: the error names the tensor.
func Load(dir string, opts LoadOptions) (*Model, error) {
	cfg, err := checkpoints.ReadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	if cfg.RotaryPct != 1 {
		return nil, fmt.Errorf("model: %s: rotary_pct %g is not supported (Qwen-7B uses 1.0)", dir, cfg.RotaryPct)
	}
	ck, err := checkpoints.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	gptq, err := GPTQConfigOf(dir, cfg)
	if err != nil {
		ck.Close()
		return nil, err
	}
	if err := checkGPTQ(dir, gptq, opts); err != nil {
		ck.Close()
		return nil, err
	}
	if err := checkpoints.CheckTensors(cfg, gptq, ck); err != nil {
		ck.Close()
		return nil, err
	}
	m, err := build(cfg, gptq, ck.Tensor, opts)
	if err != nil {
		ck.Close()
		return nil, err
	}
	m.close, m.GPTQ = ck.Close, gptq
	return m, nil
}

// checkGPTQ refuses what a GPTQ directory cannot do: codes of a width the Int4 op does not
// unpack, and training every weight. Its floating-point tables (wte, lm_head) may still be
// trained (opts.Train), and LoRA trains on top of the packed layers.
func checkGPTQ(dir string, gptq *checkpoints.GPTQConfig, opts LoadOptions) error {
	switch {
	case gptq == nil:
		return nil
	case gptq.Bits != 2 && gptq.Bits != 4 && gptq.Bits != 8:
		return fmt.Errorf("model: %s is a %d-bit GPTQ model; this program runs 2-, 4- and 8-bit GPTQ layers only (%d-bit codes straddle the int32 words they are packed in)", dir, gptq.Bits, gptq.Bits)
	case opts.Float32:
		return fmt.Errorf("model: %s is GPTQ-quantized; training every weight needs the floating-point model (LoRA trains on top of the packed layers)", dir)
	}
	return nil
}

// build assembles the model from the tensors tensorOf returns by checkpoint name (checked
// against the table of cfg, and gptq for a GPTQ model): each block's linears from
// checkpoints.BlockLinears, dense or packed.
func build(cfg *checkpoints.Config, gptq *checkpoints.GPTQConfig, tensorOf func(name string) (checkpoints.Tensor, error), opts LoadOptions) (*Model, error) {
	total := len(checkpoints.ModelTensors(cfg, gptq))
	done := 0
	tick := func(n int) {
		done += n
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	param := func(name string) (*Param, error) {
		t, err := tensorOf(name)
		if err != nil {
			return nil, err
		}
		tick(1)
		return newParam(t, opts.Float32 || slices.Contains(opts.Train, name))
	}
	dense := func(module string, bias bool) (*Dense, error) {
		w, err := param(module + ".weight")
		if err != nil || !bias {
			return &Dense{Weight: w}, err
		}
		b, err := param(module + ".bias")
		return &Dense{Weight: w, Bias: b}, err
	}
	linear := func(module string, l checkpoints.Linear) (Projection, error) {
		if gptq == nil {
			return dense(module, l.Bias)
		}
		out, in := l.Shape(cfg)
		q, err := loadInt4(tensorOf, module, in, out, gptq)
		tick(5)
		return q, err
	}
	emb, err := param(checkpoints.Embedding)
	if err != nil {
		return nil, err
	}
	m := &Model{Config: cfg, Embed: &Table{Weight: emb}}
	for l := 0; l < cfg.NumHiddenLayers; l++ {
		b := &Block{Layer: l}
		for _, s := range b.Projections() {
			if n := b.norm(s.Norm); n != nil {
				if *n, err = param(checkpoints.LayerName(l, s.Norm)); err != nil {
					return nil, err
				}
			}
			if *s.P, err = linear(s.Name, s.Linear); err != nil {
				return nil, err
			}
		}
		m.Blocks = append(m.Blocks, b)
	}
	if m.Norm, err = param(checkpoints.FinalNorm); err != nil {
		return nil, err
	}
	if m.Head, err = dense("lm_head", false); err != nil {
		return nil, err
	}
	return m, nil
}

// newParam holds a checkpoint tensor: BF16 as uint16 aliasing the file (unless widened), F16
// and F32 as float32.
func newParam(t checkpoints.Tensor, widen bool) (*Param, error) {
	shape := make([]int, len(t.Shape))
	for i, d := range t.Shape {
		shape[i] = int(d)
	}
	if t.DType == checkpoints.BF16 && !widen {
		bits, err := t.Uint16View()
		if err != nil {
			return nil, err
		}
		return &Param{Name: t.Name, Value: tensor.New(tensor.WithShape(shape...), tensor.WithBacking(bits))}, nil
	}
	f, err := t.Float32()
	if err != nil {
		return nil, err
	}
	return &Param{Name: t.Name, Value: tensor.New(tensor.WithShape(shape...), tensor.WithBacking(f)), Train: widen}, nil
}

// WeightBytes is the memory the weights take once loaded for inference or LoRA: two bytes a
// parameter (bf16 kept as it is), or for a GPTQ model (config.json's quantization_config) four bytes an element of
// its checkpoint tensors (int32 codes, zeros and g_idx as stored; fp16 scales, biases, tables
// and norms widened to float32).
func WeightBytes(cfg *checkpoints.Config) int64 {
	if cfg.QuantizationConfig == nil {
		return 2 * cfg.ParamCount()
	}
	var n int64
	for _, s := range checkpoints.ModelTensors(cfg, cfg.QuantizationConfig) {
		n += 4 * s.NumElements()
	}
	return n
}

// CheckMemory returns an error when the machine cannot hold need bytes: more than its total
// memory. Where /proc/meminfo is missing it cannot tell and returns nil.
func CheckMemory(need int64, what string) error {
	total, avail, ok := memInfo()
	if !ok {
		return nil
	}
	if need > total {
		return fmt.Errorf("model: %s needs %.1f GiB but this machine has %.1f GiB of memory in all (%.1f GiB available); use a smaller or quantized model", what, gib(need), gib(total), gib(avail))
	}
	return nil
}

func gib(b int64) float64 { return float64(b) / (1 << 30) }

// memInfo reads MemTotal and MemAvailable from /proc/meminfo.
func memInfo() (total, avail int64, ok bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0, false
	}
	var t, a int64
	for _, line := range strings.Split(string(b), "\n") {
		var key string
		var kb int64
		if n, _ := fmt.Sscanf(line, "%s %d", &key, &kb); n != 2 {
			continue
		}
		switch key {
		case "MemTotal:":
			t = kb << 10
		case "MemAvailable:":
			a = kb << 10
		}
	}
	return t, a, t > 0
}
