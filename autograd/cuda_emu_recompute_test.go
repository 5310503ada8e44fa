//go:build cudaemu && !qtcuda

package autograd_test

import (
	"math"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// runGrad compiles c's training graph (with checkpointing when ckpt), runs it and returns
// the loss, the gradients and the program.
func runGrad(t *testing.T, d *autograd.Device, c *lossCase, ckpt bool) (float64, [][]float32, *autograd.Program) {
	t.Helper()
	g, loss, grads := c.build(t, true)
	prog, err := d.CompileGradWith(g.ExprGraph, loss, grads, g.Step, autograd.GradOptions{Checkpoint: ckpt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	if err := prog.Run(); err != nil {
		t.Fatal(err)
	}
	l, err := prog.Loss()
	if err != nil {
		t.Fatal(err)
	}
	gr, err := prog.Grads()
	if err != nil {
		t.Fatal(err)
	}
	return l, gr, prog
}

// TestEmulatedCheckpointingIsExact: with activation checkpointing the device computes the
// same loss and the same gradients, bit for bit (the same kernels on the same values), for
// one to three blocks, a batch with left padding and packed sequences, dropout 0.3; it runs
// every block's forward twice but the last block's down projection, and needs less memory.
func TestEmulatedCheckpointingIsExact(t *testing.T) {
	d := openDevice(t)
	for _, layers := range []int{1, 2, 3} {
		c := newLossCaseOf(t, layers)
		wantLoss, want, plain := runGrad(t, d, c, false)
		gotLoss, got, ckpt := runGrad(t, d, c, true)
		if gotLoss != wantLoss {
			t.Errorf("%d layers: loss %v with checkpointing, %v without", layers, gotLoss, wantLoss)
		}
		for i := range want {
			for j := range want[i] {
				if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
					t.Errorf("%d layers: %s[%d] is %v with checkpointing, %v without", layers, c.params[i].Name, j, got[i][j], want[i][j])
					break
				}
			}
		}
		t.Logf("%d layers: %d launches (%d recomputed) against %d; arena %d against %d bytes",
			layers, ckpt.Launches, ckpt.Recomputed, plain.Launches, ckpt.ActivationBytes(), plain.ActivationBytes())
		if ckpt.Recomputed == 0 || ckpt.Launches != plain.Launches+ckpt.Recomputed {
			t.Errorf("%d layers: %d launches, %d of them recomputed, for %d without checkpointing", layers, ckpt.Launches, ckpt.Recomputed, plain.Launches)
		}
	}
}
