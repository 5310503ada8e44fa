package autograd

import (
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// TestCheckpoint: a mark is its input, handed on when the input dies there and copied when
// a later node still reads it, and its gradient is its output's.
//
//	a = x + x, b = x + x
//	loss = sum(Checkpoint(a) * Checkpoint(a)) + sum(Checkpoint(b) * b)
//	d loss / dx = 2 * 2a + 2 * 2b = 16 x
func TestCheckpoint(t *testing.T) {
	g := G.NewGraph()
	xv := tensor.New(tensor.WithShape(2, 3), tensor.WithBacking([]float64{1, -2, 3, 0.5, -1.5, 4}))
	x := G.NodeFromAny(g, xv, G.WithName("x"))
	must := func(n *G.Node, err error) *G.Node {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	a, b := must(G.Add(x, x)), must(G.Add(x, x))
	ma, mb := must(Checkpoint(a)), must(Checkpoint(b))
	loss := must(G.Add(must(G.Sum(must(G.HadamardProd(ma, ma)))), must(G.Sum(must(G.HadamardProd(mb, b))))))
	grads, err := G.Grad(loss, x)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMachine(g, loss, grads[0], mb)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Run(); err != nil {
		t.Fatal(err)
	}
	want, gwant := 0.0, make([]float64, 6)
	for i, v := range xv.Data().([]float64) {
		want += 8 * v * v
		gwant[i] = 16 * v
	}
	lv, err := m.Value(loss)
	if err != nil {
		t.Fatal(err)
	}
	if got := lv.Data().(float64); got != want {
		t.Errorf("loss %v, want %v", got, want)
	}
	gv, err := m.Value(grads[0])
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range gv.Data().([]float64) {
		if v != gwant[i] {
			t.Errorf("gradient %d: %v, want %v", i, v, gwant[i])
		}
	}
	if _, err := Checkpoint(must(G.Sum(x))); err == nil {
		t.Error("a mark of a scalar was accepted")
	}
}
