package lora

import (
	"errors"
	"fmt"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/model"
)

// Batch is a padded batch of token sequences: ids, labels (autograd.IgnoreIndex skips) and the
// attention mask, each [Batch x Seq] row-major.
type Batch struct {
	Batch, Seq int
	IDs        []int32
	Labels     []int32
	Mask       []bool
	// Segments and Positions describe packed rows (nil when nothing is packed).
	Segments, Positions []int32
}

// Targets is how many labels take part in the shifted loss.
func (b *Batch) Targets() int {
	n := 0
	for r := 0; r < b.Batch; r++ {
		for t := 1; t < b.Seq; t++ {
			if b.Labels[r*b.Seq+t] != autograd.IgnoreIndex {
				n++
			}
		}
	}
	return n
}

// GradGraph is the training graph of one batch shape: forward, loss and gradients of the
// trainable parameters, compiled once and run for every batch of that shape.
type GradGraph struct {
	runner *model.Runner
	params []*model.Param
	grads  G.Nodes // d loss / d params, in order
	// on an executor that runs training graphs (model.GradExecutor) the graph runs there
	device model.GradProgram
	step   *autograd.Step
}

// NewGradGraph builds the graph of m for batch x seq with gradients for params.
func NewGradGraph(m *model.Model, params []*model.Param, batch, seq int) (*GradGraph, error) {
	g, loss, err := m.LossGraph(batch, seq, model.Training)
	if err != nil {
		return nil, err
	}
	wrt := make(G.Nodes, len(params))
	for i, p := range params {
		n, ok := g.Nodes()[p]
		if !ok {
			return nil, fmt.Errorf("lora: parameter %s is not used by the model", p.Name)
		}
		wrt[i] = n
	}
	grads, err := G.Grad(loss, wrt...)
	if err != nil {
		return nil, fmt.Errorf("lora: differentiating the loss: %w", err)
	}
	if ge, ok := m.Exec.(model.GradExecutor); ok {
		p, err := ge.CompileGrad(g, loss, grads, wrt)
		if ae := (*autograd.AllocError)(nil); errors.As(err, &ae) {
			return nil, fmt.Errorf("lora: %s: %w: a batch of %d x %d tokens needs more device memory; lower --max-len or --batch-size", m.Exec.Name(), err, batch, seq)
		}
		if err != nil {
			return nil, fmt.Errorf("lora: %s: %w", m.Exec.Name(), err)
		}
		return &GradGraph{device: p, step: g.Step, params: params, grads: grads}, nil
	}
	r, err := model.NewRunnerFromGraph(g, loss, grads...)
	if err != nil {
		return nil, err
	}
	return &GradGraph{runner: r, step: g.Step, params: params, grads: grads}, nil
}

// Run computes the mean loss of b and the gradients (one slice per parameter, owned by the
// graph until the next Run). seed draws the dropout masks.
func (gg *GradGraph) Run(b *Batch, seed uint64) (float64, [][]float32, error) {
	gg.set(b, seed)
	if gg.device != nil {
		if err := gg.device.Run(); err != nil {
			return 0, nil, err
		}
		loss, err := gg.device.Loss()
		if err != nil {
			return 0, nil, err
		}
		grads, err := gg.device.Grads()
		return loss, grads, err
	}
	r := gg.runner
	if err := r.Run(); err != nil {
		return 0, nil, err
	}
	loss, err := r.Loss()
	if err != nil {
		return 0, nil, err
	}
	grads := make([][]float32, len(gg.grads))
	for i, n := range gg.grads {
		v, err := r.Value(n)
		if err != nil {
			return 0, nil, fmt.Errorf("lora: gradient of %s: %w", gg.params[i].Name, err)
		}
		grads[i] = v.Data().([]float32)
	}
	return loss, grads, nil
}

// set puts b and the dropout seed in the graph's Step.
func (gg *GradGraph) set(b *Batch, seed uint64) {
	st := gg.step
	st.IDs, st.Labels, st.KeyMask = b.IDs, b.Labels, b.Mask
	st.Seed = seed
	st.Segments, st.Positions = b.Segments, b.Positions
}

// Close releases the graph.
func (gg *GradGraph) Close() error {
	if gg.device != nil {
		return gg.device.Close()
	}
	return gg.runner.Close()
}
