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

// loadInt4 reads a packed linear (module.qweight, .qzeros, .scales, .g_idx, .bias) with in
// inputs and out outputs.
func loadInt4(tensorOf func(name string) (checkpoints.Tensor, error), module string, in, out int, g *checkpoints.GPTQConfig) (*Int4, error) {
	w := &autograd.Int4{Name: module, Bits: g.Bits, K: in, N: out, G: 1}
	if g.GroupSize > 0 {
		w.G = in / g.GroupSize
	}
	for _, ints := range []struct {
		suffix string
		dst    *[]int32
	}{{".qweight", &w.QWeight}, {".qzeros", &w.QZeros}, {".g_idx", &w.GIdx}} {
		t, err := tensorOf(module + ints.suffix)
		if err != nil {
			return nil, err
		}
		if *ints.dst, err = t.Int32(); err != nil {
			return nil, err
		}
	}
	for _, floats := range []struct {
		suffix string
		dst    *[]float32
	}{{".scales", &w.Scales}, {".bias", &w.Bias}} {
		t, err := tensorOf(module + floats.suffix)
		if err != nil {
			return nil, err
		}
		if *floats.dst, err = t.Float32(); err != nil {
			return nil, err
		}
	}
	if err := w.Check(); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	return &Int4{W: w}, nil
}

// Quantized reports whether any projection of m is GPTQ Int4 (under any wrapper).
func (m *Model) Quantized() bool {
	for _, s := range m.Projections() {
		if _, ok := Unwrap(*s.P).(*Int4); ok {
			return true
		}
	}
	return false
}
