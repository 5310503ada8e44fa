package model

import (
	"fmt"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// Runner is the model's graph for one batch x seq shape, compiled once and executed for each
// new Step (the next batch, the next decoded token).
type Runner struct {
	*Graph
	logits, loss *G.Node
	vm           *autograd.Machine
	prog         Program     // set when the model's executor runs the graph
	lossProg     GradProgram // set when the model's executor runs the graph with its loss
	host         []float32   // the program's logits, downloaded after a run
	skipLogits   bool        // the next run keeps its logits on the device (sampling there)
}

// NewRunner builds the forward graph; withLoss adds the cross-entropy against Step.Labels.
func (m *Model) NewRunner(batch, seq int, mode Mode, last, withLoss bool) (*Runner, error) {
	g := NewGraph(m, batch, seq, mode, last)
	logits, err := m.Forward(g)
	if err != nil {
		return nil, err
	}
	r := &Runner{Graph: g, logits: logits}
	if m.Exec != nil && mode == Inference && !withLoss {
		if r.prog, err = m.Exec.Compile(g, logits); err != nil {
			return nil, fmt.Errorf("model: %s: %w", m.Exec.Name(), err)
		}
		return r, nil
	}
	if withLoss {
		if r.loss, err = g.Loss(logits); err != nil {
			return nil, err
		}
		if ge, ok := m.Exec.(GradExecutor); ok {
			if r.lossProg, err = ge.CompileGrad(g, r.loss, nil, nil); err != nil {
				return nil, fmt.Errorf("model: %s: %w", m.Exec.Name(), err)
			}
			return r, nil
		}
	}
	if r.vm, err = autograd.NewMachine(g.ExprGraph, r.kept()...); err != nil {
		return nil, err
	}
	return r, nil
}

// NewRunnerFromGraph compiles a training graph built elsewhere: its loss, and keep, further
// nodes whose values the caller reads with Value (the gradients). The logits are not kept,
// so the loss's backward may write its gradient over them.
func NewRunnerFromGraph(g *Graph, loss *G.Node, keep ...*G.Node) (*Runner, error) {
	if g.Err() != nil {
		return nil, g.Err()
	}
	r := &Runner{Graph: g, loss: loss}
	var err error
	if r.vm, err = autograd.NewMachine(g.ExprGraph, append(r.kept(), keep...)...); err != nil {
		return nil, err
	}
	return r, nil
}

// kept are the nodes whose values outlive a run: the logits and the loss, where there are.
func (r *Runner) kept() []*G.Node {
	var k []*G.Node
	for _, n := range []*G.Node{r.logits, r.loss} {
		if n != nil {
			k = append(k, n)
		}
	}
	return k
}

// Value is the last run's value of a node kept by NewRunnerFromGraph, valid until the next run.
func (r *Runner) Value(n *G.Node) (G.Value, error) { return r.vm.Value(n) }

// Run executes the graph on the current Step.
func (r *Runner) Run() error {
	if err := r.Step.Check(); err != nil {
		return err
	}
	if st := r.Step; r.Mode != Inference && (st.LogNSeq > 0 || st.Base != nil || st.RotaryBase != r.Model.Config.RotaryEmbBase || st.Cache != nil) {
		return fmt.Errorf("model: a training graph runs without dynamic NTK, LogN or a KV cache (Qwen applies them at inference only)")
	}
	if r.lossProg != nil {
		if err := r.lossProg.Run(); err != nil {
			return fmt.Errorf("model: %w", err)
		}
		return nil
	}
	if r.prog != nil {
		r.host = nil
		if err := r.prog.Run(); err != nil {
			return fmt.Errorf("model: %w", err)
		}
		if !r.skipLogits {
			var err error
			if r.host, err = r.prog.Logits(); err != nil {
				return fmt.Errorf("model: %w", err)
			}
		}
		return nil
	}
	if err := r.vm.Run(); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	return nil
}

// Logits is the last run's logits, [rows, vocab] row-major (rows = batch*seq, or batch when
// the runner keeps only the selected positions). The slice is the runner's: copy it to keep it.
func (r *Runner) Logits() []float32 {
	if r.prog != nil {
		return r.host
	}
	if r.logits == nil {
		return nil
	}
	v, err := r.vm.Value(r.logits)
	if err != nil {
		return nil
	}
	return v.Data().([]float32)
}

// Loss is the last run's mean cross-entropy.
func (r *Runner) Loss() (float64, error) {
	if r.loss == nil {
		return 0, fmt.Errorf("model: the runner was built without a loss")
	}
	if r.lossProg != nil {
		return r.lossProg.Loss()
	}
	lv, err := r.vm.Value(r.loss)
	if err != nil {
		return 0, fmt.Errorf("model: %w", err)
	}
	switch v := lv.(type) {
	case *G.F32:
		return float64(*v), nil
	case *G.F64:
		return float64(*v), nil
	}
	return 0, fmt.Errorf("model: loss of type %T", lv)
}

// Close releases the compiled graph.
func (r *Runner) Close() error {
	if r.lossProg != nil {
		return r.lossProg.Close()
	}
	if r.prog != nil {
		return r.prog.Close()
	}
	return nil
}

// SetBatch fills the Step with ids, labels (nil for none) and a key mask (nil: all real).
func (r *Runner) SetBatch(ids, labels []int32, mask []bool) {
	st := r.Step
	st.IDs, st.Labels, st.KeyMask = ids, labels, mask
}
