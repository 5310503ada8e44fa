//go:build cudaemu && !qtcuda

package cuda_test

import (
	"math"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"gorgonia.org/tensor"
)

// TestEmulatedClosedParamSetIsNotWritten: a program armed by Accumulate whose set is closed
// before it runs writes nothing there (its GEMMs wrote the set's freed sums, memory the
// device hands out again).
func TestEmulatedClosedParamSetIsNotWritten(t *testing.T) {
	d := openDevice(t)
	c := newLossCase(t)
	names := make([]string, len(c.params))
	values := make([]*tensor.Dense, len(c.params))
	host, zeros := make([][]float32, len(c.params)), make([][]float32, len(c.params))
	var n int64
	for i, p := range c.params {
		names[i], values[i] = p.Name, p.Value
		host[i] = p.Value.Data().([]float32)
		zeros[i] = make([]float32, len(host[i]))
		n += int64(len(host[i]))
	}
	s, err := d.NewParamSet(names, values)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Upload(host, zeros, zeros); err != nil {
		t.Fatal(err)
	}
	g, loss, grads := c.build(t, true)
	p, err := d.CompileGradInto(g.ExprGraph, loss, grads, s, g.Step, cuda.GradOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := s.Accumulate(p, 7, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// the set's four float32 buffers of n values go back to the pool: take them again
	var bufs []*cuda.Buffer
	for range 4 {
		b, err := d.Alloc(4*n, "after the set")
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Poison(b); err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, b)
	}
	if err := p.Run(); err != nil {
		t.Logf("the run after the set was closed: %v", err)
	}
	for k, b := range bufs {
		got := make([]float32, n)
		if err := cuda.Download(d, got, b); err != nil {
			t.Fatal(err)
		}
		for j, x := range got {
			if !math.IsNaN(float64(x)) {
				t.Errorf("buffer %d, element %d: %v written by a program armed for a closed set", k, j, x)
				break
			}
		}
		d.Free(b)
	}
}
