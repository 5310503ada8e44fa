package autograd

import (
	"math/rand/v2"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// TestMachineMatchesTapeMachine: a small training graph (linear, rmsnorm, gorgonia's own adds
// and reshape, attention, SwiGLU, dropout, the loss with its gradient written over the logits) gives on the
// Machine the loss and gradients the TapeMachine gives, run after run, while the Machine
// recycles its buffers between and within runs (those that ops overwrite whole handed out
// full of NaN).
func TestMachineMatchesTapeMachine(t *testing.T) {
	const batch, seq, heads, dim, vocab = 2, 5, 2, 4, 11
	width := heads * dim
	st := &Step{Batch: batch, Seq: seq, Labels: make([]int32, batch*seq), Seed: 7}
	poisonOverwritten = true
	t.Cleanup(func() { poisonOverwritten = false })
	build := func() (*G.ExprGraph, *G.Node, G.Nodes, []*G.Node) {
		g := G.NewGraph()
		r := rand.New(rand.NewPCG(5, 6))
		param := func(name string, s ...int) *G.Node {
			v := make([]float32, tensor.Shape(s).TotalSize())
			for i := range v {
				v[i] = float32(r.NormFloat64() * 0.5)
			}
			return G.NewTensor(g, tensor.Float32, len(s), G.WithShape(s...), G.WithName(name), G.WithValue(tensor.New(tensor.WithShape(s...), tensor.WithBacking(v))))
		}
		x, w, norm, head := param("x", batch*seq, width), param("w", 3*width, width), param("norm", width), param("head", vocab, width)
		must := func(n *G.Node, err error) *G.Node {
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		h := must(RMSNorm(x, norm, 1e-6, true))
		qkv := must(Linear(h, w, nil, true, false))
		q := must(SplitHeads(qkv, 0, batch, seq, heads, dim))
		k := must(SplitHeads(qkv, 1, batch, seq, heads, dim))
		v := must(SplitHeads(qkv, 2, batch, seq, heads, dim))
		a := must(Attention(q, k, v, 0, st))
		y := must(G.Add(x, must(G.Reshape(a, tensor.Shape{batch * seq, width}))))
		z := must(SwiGLU(y, must(Dropout(y, 0.25, 1, st))))
		loss := must(CrossEntropy(must(Linear(z, head, nil, true, false)), st))
		wrt := []*G.Node{x, w, norm, head}
		grads, err := G.Grad(loss, wrt...)
		if err != nil {
			t.Fatal(err)
		}
		return g, loss, grads, wrt
	}
	g1, loss1, grads1, _ := build()
	m, err := NewMachine(g1, append(G.Nodes{loss1}, grads1...)...)
	if err != nil {
		t.Fatal(err)
	}
	inPlace := 0
	for _, c := range m.over {
		if c >= 0 {
			inPlace++
		}
	}
	if inPlace != 1 {
		t.Errorf("%d ops run in place; want 1 (the loss gradient over the logits)", inPlace)
	}
	g2, loss2, grads2, _ := build()
	tape := G.NewTapeMachine(g2)
	defer tape.Close()
	for run := range 3 {
		for i := range st.Labels {
			st.Labels[i] = int32((i*7 + run*3) % vocab)
		}
		if err := m.Run(); err != nil {
			t.Fatal(err)
		}
		tape.Reset()
		if err := tape.RunAll(); err != nil {
			t.Fatal(err)
		}
		lv, err := m.Value(loss1)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := valueFloats(t, lv), valueFloats(t, loss2.Value()); got[0] != want[0] {
			t.Errorf("run %d: loss %g on the Machine, %g on the TapeMachine", run, got[0], want[0])
		}
		for i := range grads1 {
			gv, err := m.Value(grads1[i])
			if err != nil {
				t.Fatal(err)
			}
			// measured 0: the same ops in the same order on both machines; 1e-6 leaves room
			// for a pooled buffer summed in another order
			if e := refmath.RelDiff(valueFloats(t, gv), valueFloats(t, grads2[i].Value())); e > 1e-6 {
				t.Errorf("run %d: gradient %d differs by %.3g", run, i, e)
			}
		}
	}
}
