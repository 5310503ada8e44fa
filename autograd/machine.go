package autograd

// Machine runs a graph on the CPU as gorgonia's TapeMachine does, every op's Do in
// topological order, but holds a value only while a node still to run reads it or the
// caller asked to keep it. A TapeMachine binds every node's value until the same node runs
// again in the next pass, so a training step held its whole forward and backward at once,
// and the previous step's values besides until their nodes ran again; here a step holds the
// activations its backward still needs and little else. Buffers of this package's ops come
// from the machine's pool (pool.go) and go back to it when their value dies, so the next
// op, and the next run, reuses them instead of leaving garbage to the collector.

import (
	"fmt"
	"strings"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Machine is a graph compiled for repeated runs on the CPU.
type Machine struct {
	order []*G.Node
	ins   [][]int // each node's inputs, as positions in order
	drop  [][]int // the values that die once each node has run
	// over is, for an op that may overwrite an input with its result, that input's position
	// in order when it dies at the op; else -1
	over []int
	// sums marks gorgonia's element-wise sums, which the Machine runs itself (IsAdd)
	sums []bool
	keep map[*G.Node]int
	vals []G.Value
	pool *pool
}

// NewMachine prepares g for runs; keep are the nodes whose values the caller reads after a
// run (outputs, losses, gradients).
func NewMachine(g *G.ExprGraph, keep ...*G.Node) (*Machine, error) {
	order, err := G.Sort(g)
	if err != nil {
		return nil, fmt.Errorf("autograd: ordering the graph: %w", err)
	}
	for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
		order[i], order[j] = order[j], order[i]
	}
	m := &Machine{order: order, ins: make([][]int, len(order)), drop: make([][]int, len(order)),
		keep: map[*G.Node]int{}, vals: make([]G.Value, len(order)), pool: newPool(), over: make([]int, len(order)),
		sums: make([]bool, len(order))}
	pos := make(map[*G.Node]int, len(order))
	last := make([]int, len(order)) // the last node reading each value
	for i, n := range order {
		pos[n], last[i] = i, i
		for it := g.From(n.ID()); it.Next(); {
			c := pos[it.Node().(*G.Node)]
			m.ins[i] = append(m.ins[i], c)
			last[c] = i
		}
		if u, ok := n.Op().(pooled); ok {
			u.usePool(m.pool)
		}
		m.sums[i] = n.Op() != nil && IsAdd(n.Op())
	}
	for _, n := range keep {
		i, ok := pos[n]
		if !ok {
			return nil, fmt.Errorf("autograd: machine: node %v to keep is not in the graph", n)
		}
		m.keep[n], last[i] = i, len(order)
	}
	for i, n := range order {
		if n.Op() != nil && last[i] < len(order) { // inputs and kept values never die
			m.drop[last[i]] = append(m.drop[last[i]], i)
		}
		m.over[i] = -1
		if o, ok := n.Op().(overwriter); ok {
			if k := o.overwrites(); k >= 0 && k < len(m.ins[i]) {
				if c := m.ins[i][k]; last[c] == i && order[c].Op() != nil && countOf(m.ins[i], c) == 1 {
					m.over[i] = c
				}
			}
		}
	}
	return m, nil
}

// Run executes the graph once with the inputs' current values.
func (m *Machine) Run() error {
	for _, i := range m.keep { // the previous run's outputs
		m.release(i)
	}
	var in []G.Value
	for i, n := range m.order {
		if n.Op() == nil {
			if m.vals[i] = n.Value(); m.vals[i] == nil {
				return fmt.Errorf("autograd: machine: input %s has no value", n.Name())
			}
			continue
		}
		in = in[:0]
		for _, c := range m.ins[i] {
			in = append(in, m.vals[c])
		}
		inPlace := false
		if c := m.over[i]; c >= 0 {
			inPlace = m.pool.owns(m.vals[c])
			n.Op().(overwriter).allowInPlace(inPlace)
		}
		v, err := m.do(i, n, in)
		if inPlace {
			n.Op().(overwriter).allowInPlace(false)
		}
		if err != nil {
			for j := range m.vals {
				m.release(j)
			}
			return fmt.Errorf("autograd: %v: %w", n.Op(), err)
		}
		m.vals[i] = v
		if inPlace { // the result holds the input's buffer now
			m.vals[m.over[i]] = nil
		}
		for _, j := range m.drop[i] {
			m.release(j)
		}
	}
	return nil
}

// release forgets value i, handing its buffer back to the pool when it came from there.
func (m *Machine) release(i int) {
	if d, ok := m.vals[i].(*tensor.Dense); ok && m.order[i].Op() != nil {
		m.pool.put(d)
	}
	m.vals[i] = nil
}

// do runs n's op. This package's ops take their results from the pool themselves; gorgonia's
// own (the residual adds, the sums of gradients) write into a pooled buffer where they can.
func (m *Machine) do(i int, n *G.Node, in []G.Value) (G.Value, error) {
	op := n.Op()
	if _, ours := op.(pooled); ours {
		return op.Do(in...)
	}
	if m.sums[i] && len(in) == 2 {
		if v := m.add(in[0], in[1]); v != nil {
			return v, nil
		}
	}
	pd, ok := op.(G.UsePreallocDoer)
	if !ok || n.IsScalar() || n.Shape().TotalSize() == 0 {
		v, err := op.Do(in...)
		m.unpoolViews(v, in)
		return v, err
	}
	pre := m.pool.get(n.Dtype(), n.Shape()...)
	v, err := pd.UsePreallocDo(pre, in...)
	if d, ok := v.(*tensor.Dense); !ok || first(d.Data()) != first(pre.Data()) {
		m.pool.put(pre) // the op made its own result
	}
	m.unpoolViews(v, in)
	return v, err
}

// IsAdd reports gorgonia's element-wise sum (the gradients of a node with several consumers
// are added up by it), the one op of gorgonia's own that the executors run.
func IsAdd(op G.Op) bool {
	return fmt.Sprintf("%T", op) == "gorgonia.elemBinOp" && strings.HasPrefix(op.String(), "+ ")
}

// add is a + b for two float32 tensors of one shape, summed in parallel into a pooled buffer;
// nil for anything else (gorgonia's op then runs).
func (m *Machine) add(a, b G.Value) G.Value {
	x, ok1 := a.(*tensor.Dense)
	y, ok2 := b.(*tensor.Dense)
	if !ok1 || !ok2 || x.Dtype() != tensor.Float32 || y.Dtype() != tensor.Float32 || !x.Shape().Eq(y.Shape()) ||
		x.Shape().IsScalar() || !x.IsNativelyAccessible() || x.DataOrder().IsColMajor() || y.DataOrder().IsColMajor() {
		return nil
	}
	out := m.pool.overwrite(tensor.Float32, x.Shape()...)
	o, xs, ys := out.Data().([]float32), x.Data().([]float32), y.Data().([]float32)
	if len(xs) != len(o) || len(ys) != len(o) { // views
		m.pool.put(out)
		return nil
	}
	parallelRange(len(o), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			o[i] = xs[i] + ys[i]
		}
	})
	return out
}

// unpoolViews gives up the pooled backing of every input that the output v of an op from
// outside this package shares memory with (a view, an in-place result): the input's death no
// longer frees it.
func (m *Machine) unpoolViews(v G.Value, in []G.Value) {
	out, ok := v.(*tensor.Dense)
	if !ok {
		return
	}
	lo, hi := out.Uintptr(), out.Uintptr()+out.MemSize()
	for _, x := range in {
		if d, ok := x.(*tensor.Dense); ok && d.Uintptr() < hi && lo < d.Uintptr()+d.MemSize() {
			m.pool.forget(d)
		}
	}
}

// Value is the last run's value of a kept node; it stays valid until the next Run.
func (m *Machine) Value(n *G.Node) (G.Value, error) {
	i, ok := m.keep[n]
	if !ok {
		return nil, fmt.Errorf("autograd: machine: node %v was not kept", n)
	}
	if m.vals[i] == nil {
		return nil, fmt.Errorf("autograd: machine: %v has no value (the graph has not run)", n)
	}
	return m.vals[i], nil
}

func countOf(s []int, x int) (n int) {
	for _, v := range s {
		if v == x {
			n++
		}
	}
	return n
}
