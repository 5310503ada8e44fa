package model

import (
	"fmt"
	"os"
	"path/filepath"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// Int4 is a GPTQ-quantized projection (AutoGPTQ layout), used by the blocks like any other.
type Int4 struct{ W *autograd.Int4 }

func (q *Int4) Forward(_ *Graph, x *G.Node) (*G.Node, error) { return autograd.Int4Linear(x, q.W) }

// GPTQConfigOf returns a directory's GPTQ settings (quantize_config.json, else config.json's
// quantization_config), or nil for a floating-point model.
func GPTQConfigOf(dir string, cfg *checkpoints.Config) (*checkpoints.GPTQConfig, error) {
	path := filepath.Join(dir, "quantize_config.json")
	if _, err := os.Stat(path); err == nil {
		return checkpoints.ReadGPTQConfig(path)
	}
	return cfg.QuantizationConfig, nil
}

// loadGPTQ builds a model from a GPTQ checkpoint: packed Linears, floating-point rest.
func loadGPTQ(cfg *checkpoints.Config, g *checkpoints.GPTQConfig, ck *checkpoints.Checkpoint, opts LoadOptions) (*Model, error) {
	if err := checkpoints.CheckGPTQTensors(cfg, g, ck); err != nil {
		return nil, err
	}
	total := len(checkpoints.GPTQModelTensors(cfg, g))
	done := 0
	tick := func(n int) {
		done += n
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	param := func(name string) (*Param, error) {
		t, err := ck.Tensor(name)
		if err != nil {
			return nil, err
		}
		tick(1)
		return newParam(t, false)
	}
	ints := func(name string) ([]int32, error) {
		t, err := ck.Tensor(name)
		if err != nil {
			return nil, err
		}
		return t.Int32()
	}
	floats := func(name string) ([]float32, error) {
		t, err := ck.Tensor(name)
		if err != nil {
			return nil, err
		}
		return t.Float32()
	}
	linear := func(prefix string, in, out int) (*Int4, error) {
		w := &autograd.Int4{Name: prefix, Bits: g.Bits, K: in, N: out, G: 1}
		if g.GroupSize > 0 {
			w.G = in / g.GroupSize
		}
		var err error
		if w.QWeight, err = ints(prefix + ".qweight"); err != nil {
			return nil, err
		}
		if w.QZeros, err = ints(prefix + ".qzeros"); err != nil {
			return nil, err
		}
		if w.GIdx, err = ints(prefix + ".g_idx"); err != nil {
			return nil, err
		}
		if w.Scales, err = floats(prefix + ".scales"); err != nil {
			return nil, err
		}
		if w.Bias, err = floats(prefix + ".bias"); err != nil {
			return nil, err
		}
		for k, gi := range w.GIdx {
			if gi < 0 || int(gi) >= w.G {
				return nil, fmt.Errorf("model: %s: %s.g_idx[%d] = %d is not a group in [0, %d)", ck.Dir, prefix, k, gi, w.G)
			}
		}
		tick(5)
		return &Int4{W: w}, nil
	}
	m := &Model{Config: cfg}
	var err error
	if m.Embed, err = param(checkpoints.Embedding); err != nil {
		return nil, err
	}
	h, p, mw := cfg.HiddenSize, cfg.ProjectionSize(), cfg.MLPWidth()
	for l := 0; l < cfg.NumHiddenLayers; l++ {
		name := func(s string) string { return checkpoints.LayerName(l, s) }
		b := &Block{Layer: l}
		if b.LN1, err = param(name(checkpoints.LN1)); err != nil {
			return nil, err
		}
		if b.LN2, err = param(name(checkpoints.LN2)); err != nil {
			return nil, err
		}
		var qkv, out, up, gate, down *Int4
		if qkv, err = linear(name("attn.c_attn"), h, 3*p); err != nil {
			return nil, err
		}
		if out, err = linear(name("attn.c_proj"), p, h); err != nil {
			return nil, err
		}
		if up, err = linear(name("mlp.w1"), h, mw); err != nil {
			return nil, err
		}
		if gate, err = linear(name("mlp.w2"), h, mw); err != nil {
			return nil, err
		}
		if down, err = linear(name("mlp.c_proj"), mw, h); err != nil {
			return nil, err
		}
		b.QKV, b.Out, b.Up, b.Gate, b.Down = qkv, out, up, gate, down
		m.Blocks = append(m.Blocks, b)
	}
	if m.Norm, err = param(checkpoints.FinalNorm); err != nil {
		return nil, err
	}
	head, err := param(checkpoints.LMHead)
	if err != nil {
		return nil, err
	}
	m.Head = &Dense{Weight: head}
	return m, nil
}

// Quantized reports whether any projection of m is GPTQ Int4.
func (m *Model) Quantized() bool {
	for _, b := range m.Blocks {
		for _, p := range []Projection{b.QKV, b.Out, b.Up, b.Gate, b.Down} {
			if _, ok := p.(*Int4); ok {
				return true
			}
		}
	}
	_, ok := m.Head.(*Int4)
	return ok
}
