package autograd

import (
	"errors"
	"slices"
	"strings"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// TestCapture: the output equals the input, the sink sees the input's value and shape at each
// run, the gradient passes through unchanged, and a sink's error stops the run.
func TestCapture(t *testing.T) {
	x := []float32{1, -2, 3, 0.5, 7, -1}
	var seen [][]float32
	var sinkErr error
	sink := func(v []float32, rows, cols int) error {
		if rows != 2 || cols != 3 {
			t.Errorf("sink got [%d, %d], want [2, 3]", rows, cols)
		}
		seen = append(seen, slices.Clone(v))
		return sinkErr
	}
	g := G.NewGraph()
	in := G.NewMatrix(g, tensor.Float32, G.WithShape(2, 3), G.WithName("x"), G.WithValue(tensor.New(tensor.WithShape(2, 3), tensor.WithBacking(slices.Clone(x)))))
	y, err := Capture(in, sink)
	if err != nil {
		t.Fatal(err)
	}
	r := G.NewMatrix(g, tensor.Float32, G.WithShape(2, 3), G.WithName("r"), G.WithValue(tensor.New(tensor.WithShape(2, 3), tensor.WithBacking([]float32{0.5, 1, -1, 2, 0, 3}))))
	prod, err := G.HadamardProd(y, r)
	if err != nil {
		t.Fatal(err)
	}
	loss, err := G.Sum(prod)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := G.Grad(loss, in); err != nil {
		t.Fatal(err)
	}
	vm := G.NewTapeMachine(g)
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		t.Fatal(err)
	}
	if got := y.Value().Data().([]float32); !slices.Equal(got, x) {
		t.Errorf("output %v, want the input %v", got, x)
	}
	if len(seen) != 1 || !slices.Equal(seen[0], x) {
		t.Errorf("sink saw %v, want one call with %v", seen, x)
	}
	grad, err := in.Grad()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := grad.Data().([]float32), []float32{0.5, 1, -1, 2, 0, 3}; !slices.Equal(got, want) {
		t.Errorf("gradient %v, want %v", got, want)
	}
	sinkErr = errors.New("sink is full")
	vm.Reset()
	// gorgonia's VM flattens op errors into its own message, so the text is what is left.
	if err := vm.RunAll(); err == nil || !strings.Contains(err.Error(), sinkErr.Error()) {
		t.Errorf("a failing sink gave %v, want its error", err)
	}
}
