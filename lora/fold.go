package lora

import (
	"fmt"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
)

// Fold merges an attached adapter into m's weights in memory, as Merge does on disk: every
// LoRA layer becomes a plain projection with W + (alpha/r) B A (bf16 weights stay bf16,
// rounded once), and trained special-token rows are added to copies of wte and lm_head.
// Executors without LoRA kernels (the GPU) then run the adapted model. The folded weights
// are new memory; the base model's mapped weights are left as they were.
func Fold(m *model.Model) (int, error) {
	folded := 0
	for _, s := range m.Projections() {
		l, ok := (*s.P).(*Layer)
		if !ok {
			continue
		}
		var base *model.Dense
		switch b := l.Base.(type) {
		case *model.Dense:
			base = b
		case *model.Int4:
			return folded, fmt.Errorf("lora: %s is a GPTQ layer: an adapter cannot be folded into packed weights, so a GPTQ model with an adapter runs on the CPU", l.Module)
		default:
			return folded, fmt.Errorf("lora: %s: only a LoRA layer over a dense weight can be folded", l.Module)
		}
		w, err := addRows(base.Weight, loraDelta(l))
		if err != nil {
			return folded, err
		}
		*s.P = &model.Dense{Weight: w, Bias: base.Bias}
		folded++
	}
	if e, ok := m.Embed.(*embedRows); ok {
		base, ok := e.Base.(*model.Table)
		if !ok {
			return folded, fmt.Errorf("lora: an embedding of type %T cannot take the special-token rows", e.Base)
		}
		w, err := addRows(base.Weight, rowDelta(e.Delta, e.Offset))
		if err != nil {
			return folded, err
		}
		m.Embed = &model.Table{Weight: w}
		folded++
	}
	if h, ok := m.Head.(*headRows); ok {
		base, ok := h.Base.(*model.Dense)
		if !ok {
			return folded, fmt.Errorf("lora: lm_head of type %T cannot take the special-token rows", h.Base)
		}
		w, err := addRows(base.Weight, rowDelta(h.Delta, h.Offset))
		if err != nil {
			return folded, err
		}
		m.Head = &model.Dense{Weight: w, Bias: base.Bias}
		folded++
	}
	return folded, nil
}

// addRows is a copy of p with delta added: rows computed a tile at a time in float32, stored
// in p's element type (bf16 rounded to nearest even).
func addRows(p *model.Param, delta func(r0, r1 int, dst []float32)) (*model.Param, error) {
	shape := p.Value.Shape()
	if len(shape) != 2 {
		return nil, fmt.Errorf("lora: %s has shape %v, not a matrix", p.Name, shape)
	}
	rows, cols := shape[0], shape[1]
	const tile = 256
	buf := make([]float32, tile*cols)
	switch src := p.Value.Data().(type) {
	case []uint16:
		out := make([]uint16, len(src))
		for r0 := 0; r0 < rows; r0 += tile {
			r1 := min(r0+tile, rows)
			delta(r0, r1, buf[:(r1-r0)*cols])
			for i := r0 * cols; i < r1*cols; i++ {
				out[i] = checkpoints.F32ToBF16(checkpoints.BF16ToF32(src[i]) + buf[i-r0*cols])
			}
		}
		return &model.Param{Name: p.Name, Value: tensor.New(tensor.WithShape(rows, cols), tensor.WithBacking(out))}, nil
	case []float32:
		out := make([]float32, len(src))
		for r0 := 0; r0 < rows; r0 += tile {
			r1 := min(r0+tile, rows)
			delta(r0, r1, buf[:(r1-r0)*cols])
			for i := r0 * cols; i < r1*cols; i++ {
				out[i] = src[i] + buf[i-r0*cols]
			}
		}
		return &model.Param{Name: p.Name, Value: tensor.New(tensor.WithShape(rows, cols), tensor.WithBacking(out))}, nil
	}
	return nil, fmt.Errorf("lora: %s holds %v, which cannot be folded", p.Name, p.Value.Dtype())
}
