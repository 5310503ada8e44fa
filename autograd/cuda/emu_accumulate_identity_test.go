//go:build cudaemu && !qtcuda

package cuda_test

import (
	"slices"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"gorgonia.org/tensor"
)

// TestEmulatedAccumulateRefusesOtherParameters: a ParamSet adds a program's kept gradients
// only when it knows they are those of its own parameters, in its order: a program compiled
// into it, or one compiled for the same tensors (GradOptions.Of). A program of the same
// gradient sizes in another order, or one that does not say whose gradients it keeps, is
// refused (its gradients went to the wrong parameters).
func TestEmulatedAccumulateRefusesOtherParameters(t *testing.T) {
	d := openDevice(t)
	c := newLossCase(t)
	names := make([]string, len(c.params))
	values := make([]*tensor.Dense, len(c.params))
	host, zeros := make([][]float32, len(c.params)), make([][]float32, len(c.params))
	for i, p := range c.params {
		names[i], values[i] = p.Name, p.Value
		host[i] = p.Value.Data().([]float32)
		zeros[i] = make([]float32, len(host[i]))
	}
	j := slices.IndexFunc(values[1:], func(v *tensor.Dense) bool { return v.Size() == values[0].Size() }) + 1
	if j == 0 {
		t.Fatal("no two trained parameters of the same size to swap")
	}
	s, err := d.NewParamSet(names, values)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := s.Upload(host, zeros, zeros); err != nil {
		t.Fatal(err)
	}
	g, loss, grads := c.build(t, true)
	swapped, swappedValues := slices.Clone(grads), slices.Clone(values)
	swapped[0], swapped[j] = swapped[j], swapped[0]
	swappedValues[0], swappedValues[j] = swappedValues[j], swappedValues[0]
	for _, x := range []struct {
		what string
		o    cuda.GradOptions
		swap bool
	}{
		{"without its parameters, in another order", cuda.GradOptions{}, true},
		{"for the set's tensors in another order", cuda.GradOptions{Of: swappedValues}, true},
		{"without its parameters, in the set's order", cuda.GradOptions{}, false},
	} {
		gr := grads
		if x.swap {
			gr = swapped
		}
		p, err := d.CompileGradWith(g.ExprGraph, loss, gr, g.Step, x.o)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Accumulate(p, 7, true)
		p.Close()
		if err == nil {
			t.Errorf("a program compiled %s was accepted", x.what)
		} else {
			t.Logf("%s: %v", x.what, err)
		}
	}
	p, err := d.CompileGradWith(g.ExprGraph, loss, grads, g.Step, cuda.GradOptions{Of: values})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := s.Accumulate(p, 7, true); err != nil {
		t.Errorf("a program compiled for the set's tensors in its order was refused: %v", err)
	}
	if err := p.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CompileGradWith(g.ExprGraph, loss, grads, g.Step, cuda.GradOptions{Of: values[1:]}); err == nil {
		t.Error("a program of more gradients than the tensors it says they are of was compiled")
	}
}
