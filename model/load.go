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
	var m *Model
	switch {
	case gptq != nil && (opts.Float32 || len(opts.Train) > 0):
		err = fmt.Errorf("model: %s is GPTQ-quantized; training needs the floating-point weights", dir)
	case gptq != nil:
		m, err = loadGPTQ(cfg, gptq, ck, opts)
	default:
		if err = checkpoints.CheckModelTensors(cfg, ck); err == nil {
			m, err = build(cfg, ck.Tensor, opts)
		}
	}
	if err != nil {
		ck.Close()
		return nil, err
	}
	m.close = ck.Close
	return m, nil
}

// build assembles the model from the tensors tensorOf returns by checkpoint name.
func build(cfg *checkpoints.Config, tensorOf func(name string) (checkpoints.Tensor, error), opts LoadOptions) (*Model, error) {
	specs := checkpoints.ModelTensors(cfg)
	done := 0
	param := func(name string) (*Param, error) {
		t, err := tensorOf(name)
		if err != nil {
			return nil, err
		}
		p, err := newParam(t, opts.Float32 || slices.Contains(opts.Train, name))
		done++
		if opts.Progress != nil {
			opts.Progress(done, len(specs))
		}
		return p, err
	}
	dense := func(weight, bias string) (*Dense, error) {
		w, err := param(weight)
		if err != nil || bias == "" {
			return &Dense{Weight: w}, err
		}
		b, err := param(bias)
		return &Dense{Weight: w, Bias: b}, err
	}
	m := &Model{Config: cfg}
	var err error
	if m.Embed, err = param(checkpoints.Embedding); err != nil {
		return nil, err
	}
	for l := 0; l < cfg.NumHiddenLayers; l++ {
		name := func(s string) string { return checkpoints.LayerName(l, s) }
		b := &Block{Layer: l}
		var qkv, out, up, gate, down *Dense
		if b.LN1, err = param(name(checkpoints.LN1)); err != nil {
			return nil, err
		}
		if qkv, err = dense(name(checkpoints.AttnQKV), name(checkpoints.AttnQKVBias)); err != nil {
			return nil, err
		}
		if out, err = dense(name(checkpoints.AttnOut), ""); err != nil {
			return nil, err
		}
		if b.LN2, err = param(name(checkpoints.LN2)); err != nil {
			return nil, err
		}
		if up, err = dense(name(checkpoints.MLPUp), ""); err != nil {
			return nil, err
		}
		if gate, err = dense(name(checkpoints.MLPGate), ""); err != nil {
			return nil, err
		}
		if down, err = dense(name(checkpoints.MLPDown), ""); err != nil {
			return nil, err
		}
		b.QKV, b.Out, b.Up, b.Gate, b.Down = qkv, out, up, gate, down
		m.Blocks = append(m.Blocks, b)
	}
	if m.Norm, err = param(checkpoints.FinalNorm); err != nil {
		return nil, err
	}
	head, err := dense(checkpoints.LMHead, "")
	if err != nil {
		return nil, err
	}
	m.Head = head
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

// WeightBytes is the memory the weights take once loaded without widening.
func WeightBytes(cfg *checkpoints.Config) int64 {
	return 2 * cfg.ParamCount()
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
