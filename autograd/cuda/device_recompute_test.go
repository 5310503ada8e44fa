//go:build cudaemu || qtcuda

package cuda_test

import (
	"math"
	"os"
	"reflect"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// runGrad compiles c's training graph (with checkpointing when ckpt), runs it and returns
// the loss, the gradients and the program.
func runGrad(t *testing.T, d *cuda.Device, c *lossCase, ckpt bool) (float64, [][]float32, *cuda.Program) {
	t.Helper()
	g, loss, grads := c.build(t, true)
	return runGraph(t, d, g.ExprGraph, loss, grads, g.Step, cuda.GradOptions{Checkpoint: ckpt})
}

// runGraph compiles the training graph g for step with o, runs it once and returns the
// loss, the gradients and the program (closed when the test ends).
func runGraph(t *testing.T, d *cuda.Device, g *G.ExprGraph, loss *G.Node, grads G.Nodes, step *autograd.Step, o cuda.GradOptions) (float64, [][]float32, *cuda.Program) {
	t.Helper()
	prog, err := d.CompileGradWith(g, loss, grads, step, o)
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

// TestDeviceCheckpointingIsExact: with activation checkpointing the device computes the
// same loss and the same gradients, bit for bit (the same kernels on the same values), for
// one to three blocks, a batch with left padding and packed sequences, dropout 0.3; it runs
// every block's forward twice but the last block's down projection, and needs less memory.
func TestDeviceCheckpointingIsExact(t *testing.T) {
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
func planGrad(t *testing.T, d *cuda.Device, c *lossCase, ckpt bool) cuda.MemoryPlan {
	t.Helper()
	g, loss, grads := c.build(t, true)
	plan, err := d.PlanGrad(g.ExprGraph, loss, grads, g.Step, cuda.GradOptions{Checkpoint: ckpt})
	if err != nil {
		t.Fatal(err)
	}
	return plan
}

// TestDeviceCheckpointingArena: the activation arena of a 4-layer training program with
// checkpointing stays within what a 1-layer program without it needs plus, for every further
// block, its mark and its kept LoRA gradients. With checkpointing, at any instruction the
// live buffers are the marks, the gradients kept so far, and the values of at most one block
// (its forward, or its recomputation and backward) or of the head, never of a block and the
// head at once, so the one-layer program's peak bounds everything else.
func TestDeviceCheckpointingArena(t *testing.T) {
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
	// a loss program without gradients has nothing to recompute: it compiles as it did
	var loss [2]cuda.MemoryPlan
	for i, ckpt := range []bool{false, true} {
		g, l, _ := four.build(t, false)
		var err error
		if loss[i], err = d.PlanGrad(g.ExprGraph, l, nil, g.Step, cuda.GradOptions{Checkpoint: ckpt}); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(loss[0], loss[1]) || loss[1].Recomputed != 0 {
		t.Errorf("the loss program: %+v without checkpointing, %+v with", loss[0], loss[1])
	}
}

// TestDeviceMemoryQwen7B works out the device memory of LoRA training of Qwen-7B (r 64 on
// c_attn, c_proj, w1, w2, batch 1 x 2048 tokens) from the plans of 1-, 2- and 3-block models
// of its exact widths and vocabulary: from the second block on every part grows by the same
// amount per block (a block's weights; with checkpointing its mark, otherwise its
// activations), so the 32-block figure is the 3-block one plus 29 steps. The first block
// grows less: the embedding is frozen, so no gradient of its input is computed and its mark
// dies in its recomputation (a later block's input lives until the block's first norm's
// backward). With checkpointing the total must stay within 18 GiB (17.97 planned). Set
// QWEN_TUNE_PLAN_7B=1 to run it (random weights of 3.7 GB on the host and the emulated
// device, about a minute).
func TestDeviceMemoryQwen7B(t *testing.T) {
	if os.Getenv("QWEN_TUNE_PLAN_7B") == "" {
		t.Skip("QWEN_TUNE_PLAN_7B=1 plans Qwen-7B-wide training programs (3.3 GB of weights)")
	}
	// the target, and what PEFT with gradient checkpointing measured on the H200 (20.8 GiB)
	const seq, target, peft = 2048, 18 << 30, 20.8 * (1 << 30)
	type parts struct{ weights, full, ckpt, other, trained int64 }
	var at [4]parts
	for _, layers := range []int{1, 2, 3} {
		o := model.Qwen7BShape()
		o.Layers = layers
		m, err := model.RandomModel(o)
		if err != nil {
			t.Fatal(err)
		}
		plans, weights, trained := planLoRA7B(t, m, seq, cuda.GradOptions{}, cuda.GradOptions{Checkpoint: true})
		full, plan := plans[0], plans[1]
		at[layers] = parts{weights: weights, full: full.Activations, ckpt: plan.Activations, other: plan.Other, trained: trained}
		t.Logf("%d blocks with checkpointing: arena %d bytes, at most %d live (placement loses %d), %v", layers, plan.Activations, plan.Peak.Live, plan.Activations-plan.Peak.Live, plan.Peak)
		t.Logf("%d blocks: weights %d, arena %d without checkpointing and %d with, other %d bytes", layers, at[layers].weights, at[layers].full, at[layers].ckpt, at[layers].other)
	}
	grow := func(f func(parts) int64) int64 { return f(at[3]) + 29*(f(at[3])-f(at[2])) }
	w := grow(func(p parts) int64 { return p.weights })
	full, ckpt, other := grow(func(p parts) int64 { return p.full }), grow(func(p parts) int64 { return p.ckpt }), grow(func(p parts) int64 { return p.other })
	opt := optimizerBytesPerParam * grow(func(p parts) int64 { return p.trained })
	gib := func(b int64) float64 { return float64(b) / (1 << 30) }
	t.Logf("Qwen-7B, LoRA r 64, 1 x %d tokens: weights %.2f GiB, optimizer state %.2f GiB, other %.2f GiB; activations %.2f GiB without checkpointing (%.2f GiB in all), %.2f GiB with it (%.2f GiB in all; target %.0f GiB)",
		seq, gib(w), gib(opt), gib(other), gib(full), gib(w+opt+other+full), gib(ckpt), gib(w+opt+other+ckpt), gib(target))
	t.Logf("arena with checkpointing: %d bytes at 32 blocks, %d more per block", ckpt, at[3].ckpt-at[2].ckpt)
	if total := w + opt + other + ckpt; total > target {
		t.Errorf("with checkpointing the plan needs %.2f GiB, %.2f GiB above the target (PEFT measured %.1f GiB)", gib(total), gib(total-target), peft/(1<<30))
	}
	// at the peak (the last block's backward) a further block adds its mark: its kept LoRA
	// gradients are fewer bytes, and placement loses nothing
	if mark := int64(seq * model.Qwen7BShape().Hidden * 4); at[3].ckpt-at[2].ckpt > mark {
		t.Errorf("with checkpointing the arena grows by %d bytes a block, more than a mark of %d", at[3].ckpt-at[2].ckpt, mark)
	}
}

// TestDeviceCheckpointingTrainer: lora's trainer on the device (dropout, padding, gradient
// accumulation) follows the same losses, bit for bit, with checkpointing (the default) and
// without, on a dense model and on a GPTQ model (Q-LoRA: the packed layers dequantized
// again in the recomputation), and the executor reports the smaller arena.
func TestDeviceCheckpointingTrainer(t *testing.T) {
	d := openDevice(t)
	seqs := randomSeqs(4096)
	o := quantize.DefaultOptions()
	o.GroupSize = 16 // divides the tiny model's widths (64, 176)
	gptq, err := quantize.WriteTiny(t.TempDir(), model.DefaultTiny(), o, quantize.MethodRTN)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		open func() (*model.Model, error)
	}{
		{"dense", func() (*model.Model, error) {
			return model.RandomModel(model.TinyOptions{Seed: 3, VocabRanks: 4096, Hidden: 128, Layers: 3, Heads: 2, MLPWidth: 344, SeqLength: 2048})
		}},
		{"gptq", func() (*model.Model, error) { return model.Load(gptq, model.LoadOptions{}) }},
	} {
		run := func(exec *model.CUDA) ([]float64, model.TrainingMemory) {
			defer d.ReleaseWeights()
			m, err := c.open()
			if err != nil {
				t.Fatal(err)
			}
			losses := trainSteps(t, m, exec, seqs)
			return losses, exec.TrainingMemory()
		}
		on, memOn := run(&model.CUDA{Device: d})
		off, memOff := run(&model.CUDA{Device: d, NoCheckpoint: true})
		t.Logf("%s: losses %v; arena %d bytes with checkpointing, %d without; weights %d bytes", c.name, on, memOn.Activations, memOff.Activations, memOn.Weights)
		for i := range off {
			if on[i] != off[i] {
				t.Errorf("%s, step %d: loss %v with checkpointing, %v without", c.name, i, on[i], off[i])
			}
		}
		if !memOn.Checkpointing || memOff.Checkpointing || memOn.Activations >= memOff.Activations || memOn.Weights <= 0 || memOn.Weights != memOff.Weights {
			t.Errorf("%s: memory with checkpointing %+v, without %+v", c.name, memOn, memOff)
		}
	}
}
