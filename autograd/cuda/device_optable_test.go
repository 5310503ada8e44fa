//go:build cudaemu || qtcuda

package cuda_test

import (
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/autograd/cuda"
	"github.com/qwen-tune/qwen-tune/autograd/internal/opcases"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// TestDeviceOpTable runs every case of the op table autograd's tests check (opcases) on the
// device against the CPU implementation: the forward and every gradient op, the arena
// poisoned before the run; a case the device refuses must be refused with the error its row
// names.
func TestDeviceOpTable(t *testing.T) {
	d := openDevice(t)
	for i, c := range opcases.All() {
		t.Run(c.Name, func(t *testing.T) {
			if !cuda.OpTableRow(c.Name) {
				t.Fatalf("the device's op table has no row for %s: add one (autograd/cuda/optable.go)", c.Name)
			}
			for _, ck := range cuda.OpCase(d, c, uint64(i)) {
				t.Logf("%-40s %-16s %.3g (tol %.3g) unwritten %d", ck.Op, ck.Shape, ck.RelErr, ck.Tol, ck.Unwritten)
				if !ck.OK() {
					t.Errorf("%s %s: relative error %.3g (tolerance %.3g), %d unwritten, error %v", ck.Op, ck.Shape, ck.RelErr, ck.Tol, ck.Unwritten, ck.Err)
				}
			}
		})
	}
}

// TestDeviceTrainingProgramLoss: a training program whose output is not the loss (the op
// table's) refuses Loss, which would read its output as the rows' losses.
func TestDeviceTrainingProgramLoss(t *testing.T) {
	d := openDevice(t)
	g := G.NewGraph()
	a := G.NewTensor(g, tensor.Float32, 2, G.WithShape(2, 3), G.WithName("a"))
	b := G.NewTensor(g, tensor.Float32, 2, G.WithShape(2, 3), G.WithName("g"))
	y, err := autograd.SwiGLU(a, b)
	if err != nil {
		t.Fatal(err)
	}
	in := map[*G.Node]*cuda.Buffer{}
	for _, n := range []*G.Node{a, b} {
		buf, err := cuda.Upload(d, []float32{1, 2, 3, 4, 5, 6}, n.Name())
		if err != nil {
			t.Fatal(err)
		}
		defer d.Free(buf)
		in[n] = buf
	}
	st := &autograd.Step{Batch: 1, Seq: 2, IDs: []int32{0, 0}, Labels: []int32{autograd.IgnoreIndex, autograd.IgnoreIndex}}
	p, err := cuda.CompileTraining(d, y, nil, st, in)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Run(); err != nil {
		t.Fatal(err)
	}
	if l, err := p.Loss(); err == nil {
		t.Fatalf("Loss of a program whose output is SwiGLU's: %v, want an error", l)
	}
}
