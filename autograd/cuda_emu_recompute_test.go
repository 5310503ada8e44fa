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

// planGrad is the memory plan of c's training program.
func planGrad(t *testing.T, d *autograd.Device, c *lossCase, ckpt bool) autograd.MemoryPlan {
	t.Helper()
	g, loss, grads := c.build(t, true)
	plan, err := d.PlanGrad(g.ExprGraph, loss, grads, g.Step, autograd.GradOptions{Checkpoint: ckpt})
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

// TestEmulatedCheckpointingArena: the activation arena of a 4-layer training program with
// checkpointing stays within what a 1-layer program without it needs plus, for every further
// block, its mark and its kept LoRA gradients. With checkpointing, at any instruction the
// live buffers are the marks, the gradients kept so far, and the values of at most one block
// (its forward, or its recomputation and backward) or of the head, never of a block and the
// head at once, so the one-layer program's peak bounds everything else.
func TestEmulatedCheckpointingArena(t *testing.T) {
	d := openDevice(t)
	const layers = 4
	one, four := newLossCaseOf(t, 1), newLossCaseOf(t, layers)
	full1, full4, ckpt4 := planGrad(t, d, one, false), planGrad(t, d, four, false), planGrad(t, d, four, true)
	align := func(n int64) int64 { return (n + autograd.ArenaAlign - 1) / autograd.ArenaAlign * autograd.ArenaAlign }
	mark := align(int64(lossBatch * lossSeq * four.m.Config.HiddenSize * 4)) // [N, H] float32
	var grads int64
	for _, p := range four.params {
		grads += align(int64(p.Value.Size()) * 4)
	}
	bound := full1.Activations + (layers-1)*(mark+grads/layers)
	t.Logf("arena of %d layers: %d bytes with checkpointing, %d without (1 layer without: %d); bound %d (mark %d, LoRA gradients %d a block)",
		layers, ckpt4.Activations, full4.Activations, full1.Activations, bound, mark, grads/layers)
	if ckpt4.Activations > bound {
		t.Errorf("the checkpointed arena of %d bytes exceeds the bound of %d", ckpt4.Activations, bound)
	}
	if ckpt4.Activations >= full4.Activations {
		t.Errorf("checkpointing does not shrink the arena: %d bytes against %d", ckpt4.Activations, full4.Activations)
	}
}
