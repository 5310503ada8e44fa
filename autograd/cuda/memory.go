//go:build qtcuda || cudaemu

package cuda

// Device memory of training programs: what the weights hold, and the plan of a training
// program's activation arena without allocating it (PlanGrad), so that the memory of a
// model too large for the machine at hand can be worked out from a model of a few blocks.

import (
	"fmt"

	"github.com/qwen-tune/qwen-tune/autograd"
	G "gorgonia.org/gorgonia"
)

// WeightBytes is the device memory of the uploaded parameters (GPTQ layers' packed words,
// scales and zeros included).
func (d *Device) WeightBytes() int64 {
	var n int64
	for _, b := range d.weights {
		n += b.Bytes
	}
	for _, w := range d.int4 {
		n += w.Bytes()
	}
	return n
}

// MemoryPlan is a training program's device memory, by part.
type MemoryPlan struct {
	// Activations is the arena: every activation, the kept gradients and the scratch of
	// one step, placed from their lifetimes.
	Activations int64
	// Other is what the program allocates besides: the step's inputs (and attention's
	// per-shape scratch when that is not in the arena).
	Other int64
	// Launches and Recomputed are the program's launches per run and, of them, those of
	// blocks computed again.
	Launches, Recomputed int
	// Peak is the schedule entry where the most arena bytes are live, and what is live there.
	Peak ArenaPeak
	// Buffers are every buffer of the arena (their lifetimes in schedule entries), Entries
	// names the entries.
	Buffers []LiveBuffer
	Entries []string
}

// LiveAt is the bytes of the arena's buffers live at schedule entry at, each aligned to
// ArenaAlign.
func (m MemoryPlan) LiveAt(at int) int64 {
	var n int64
	for _, b := range m.Buffers {
		if b.First <= at && at <= b.Last {
			n += autograd.ArenaBytes(b.Bytes, autograd.ArenaAlign)
		}
	}
	return n
}

// PlanGrad compiles a training program as CompileGradWith does (uploading the weights it
// reads), plans its arena without allocating it, and frees the rest again.
func (d *Device) PlanGrad(g *G.ExprGraph, loss *G.Node, grads []*G.Node, step *autograd.Step, o GradOptions) (MemoryPlan, error) {
	o.dry = true
	return d.plan(g, loss, grads, step, o)
}

// PlanGradInto is PlanGrad of the program CompileGradInto compiles into s: the gradients
// its GEMMs write into s's sums have no buffers in its arena, and it reads the parameters
// as programs compiled into s read them (trained_weights.go).
func (d *Device) PlanGradInto(g *G.ExprGraph, loss *G.Node, grads []*G.Node, s *ParamSet, step *autograd.Step, o GradOptions) (MemoryPlan, error) {
	if s == nil || s.d != d || len(grads) != len(s.sizes) {
		return MemoryPlan{}, fmt.Errorf("cuda: planning a program into a parameter set of another device or of other parameters")
	}
	o.dry, o.sums = true, s
	return d.plan(g, loss, grads, step, o)
}

// plan compiles a dry program with o and reads its plan.
func (d *Device) plan(g *G.ExprGraph, loss *G.Node, grads []*G.Node, step *autograd.Step, o GradOptions) (MemoryPlan, error) {
	p, err := d.compile(g, loss, grads, step, o)
	if err != nil {
		return MemoryPlan{}, err
	}
	plan := MemoryPlan{Activations: p.activations, Launches: p.Launches, Recomputed: p.Recomputed, Peak: p.peak, Buffers: p.buffers, Entries: p.entries}
	for _, b := range p.owned { // no arena: it was only planned
		plan.Other += b.Bytes
	}
	if p.loss != nil {
		for _, sc := range p.loss.scratch {
			for _, b := range []*Buffer{sc.q, sc.k, sc.v, sc.g, sc.s, sc.dp, sc.p, sc.ds, sc.dsum} {
				plan.Other += b.Bytes
			}
		}
	}
	return plan, p.Close()
}
