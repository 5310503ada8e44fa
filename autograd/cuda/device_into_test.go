//go:build cudaemu || qtcuda

package cuda_test

import (
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// TestDeviceGradProgramIntoParamSet: a LoRA training program compiled into a ParamSet has
// its weight-gradient GEMMs write the set's sums (alpha the micro-batch's tokens times the
// branch's scale, beta 0 then 1): no gradient buffers of its own, a smaller arena than the
// same graph compiled with them, and the sums of two micro-batches those the host pools from
// that program's own gradients (sum += g * tokens), within the GEMM's single rounding.
func TestDeviceGradProgramIntoParamSet(t *testing.T) {
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

	// the graph with its own gradient buffers, before the set exists: the host's pooling
	g, loss, grads := c.build(t, true)
	plain, err := d.CompileGrad(g.ExprGraph, loss, grads, g.Step)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.Run(); err != nil {
		t.Fatal(err)
	}
	own, err := plain.Grads()
	if err != nil {
		t.Fatal(err)
	}
	tokens := []int{7, 5}
	want := make([][]float32, len(own))
	for i, gi := range own {
		want[i] = make([]float32, len(gi))
		for _, w := range tokens {
			for j, x := range gi {
				want[i][j] += x * float32(w)
			}
		}
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
	if d.ParamSetOf(values) != s || d.ParamSetOf(values[1:]) != nil {
		t.Fatal("ParamSetOf does not find the set of exactly its values")
	}
	g2, loss2, grads2 := c.build(t, true)
	into, err := d.CompileGradInto(g2.ExprGraph, loss2, grads2, s, g2.Step, cuda.GradOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer into.Close()
	// every LoRA gradient of this graph is a GEMM's: none has a buffer in the arena any more
	// (which is no smaller here: its peak is the logits', before the gradients)
	if plain.GradientBytes() != 4*n || into.GradientBytes() != 0 || into.ActivationBytes() > plain.ActivationBytes() {
		t.Errorf("gradient buffers of %d bytes compiled into the set (arena %d), %d with their own (arena %d); want 0 and %d",
			into.GradientBytes(), into.ActivationBytes(), plain.GradientBytes(), plain.ActivationBytes(), 4*n)
	}
	if _, err := into.Grads(); err == nil {
		t.Error("Grads read a program that writes its parameter set's sums")
	}
	for k, w := range tokens {
		if err := s.Accumulate(into, w, k == 0); err != nil {
			t.Fatal(err)
		}
		if err := into.Run(); err != nil {
			t.Fatal(err)
		}
	}
	got := make([][]float32, len(want))
	for i := range got {
		got[i] = make([]float32, len(want[i]))
	}
	if err := s.Gradients(got); err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for i := range want {
		e := refmath.RelDiff(got[i], want[i])
		worst = max(worst, e)
		// measured 7.6e-8: alpha acc + beta C rounds once where the host rounds the product
		// g * tokens and then the sum (one float32 ulp; the scale alpha/r = 2 is exact)
		if e > 1e-6 || e != e {
			t.Errorf("%s: the sums differ from the host's pooling by %.2e", names[i], e)
		}
	}
	t.Logf("worst relative difference of the sums %.2e over %d parameters", worst, len(want))
}
