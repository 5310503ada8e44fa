//go:build cudaemu || qtcuda

package cuda_test

import (
	"os"
	"runtime/debug"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// optimizerBytesPerParam is what the optimizer keeps on the device for each trained
// parameter: float32 values, AdamW's two moments and the step's gradient sums, which a
// program compiled into the optimizer's set writes (PlanGradInto plans that program). The
// LoRA matrices have no bf16 copies: the GEMMs round them where they read them (a copy the
// set would keep is counted with the weights).
const optimizerBytesPerParam = 16

// planLoRA7B plans m's training program with LoRA r 64 on the four targets (lora's default)
// for 1 x seq tokens under each of opts, on a device of its own, compiled into a ParamSet of
// the LoRA matrices as the trainer compiles it, and returns the plans, the device's weight
// bytes and the trained parameters; m is closed and its memory given back.
func planLoRA7B(t *testing.T, m *model.Model, seq int, opts ...cuda.GradOptions) (plans []cuda.MemoryPlan, weights, trained int64) {
	t.Helper()
	defer debug.FreeOSMemory() // the next model's weights in the same host memory
	defer m.Close()
	d := openDevice(t)
	defer d.ReleaseWeights()
	a, err := lora.Apply(m, lora.DefaultConfig(), 1)
	if err != nil {
		t.Fatal(err)
	}
	g, loss, err := m.LossGraph(1, seq, model.Training)
	if err != nil {
		t.Fatal(err)
	}
	var wrt G.Nodes
	var names []string
	var values []*tensor.Dense
	for _, p := range a.Params() {
		wrt = append(wrt, g.Param(p))
		names, values = append(names, p.Name), append(values, p.Value)
		trained += int64(p.Value.Shape().TotalSize())
	}
	grads, err := G.Grad(loss, wrt...)
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.NewParamSet(names, values)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, o := range opts {
		plan, err := d.PlanGradInto(g.ExprGraph, loss, grads, s, g.Step, o)
		if err != nil {
			t.Fatal(err)
		}
		plans = append(plans, plan)
	}
	return plans, d.WeightBytes(), trained
}

// TestDeviceMemoryQLoRA7B works out the device memory of Q-LoRA training of Qwen-7B's shape
// quantized to Int4 (group 128), r 64 on c_attn, c_proj, w1, w2, batch 1 x 2048 tokens, with
// activation checkpointing, as TestDeviceMemoryQwen7B does for bf16 weights: from the plans
// of 1-, 2- and 3-block models of Qwen-7B's widths and vocabulary, extrapolated by block to
// 32, plus the optimizer's state. Set QWEN_TUNE_PLAN_7B=1 to run it (7B-wide checkpoints of
// 1 to 3 blocks written and quantized in a temporary directory, about 12 GB of host memory).
func TestDeviceMemoryQLoRA7B(t *testing.T) {
	if os.Getenv("QWEN_TUNE_PLAN_7B") == "" {
		t.Skip("QWEN_TUNE_PLAN_7B=1 plans Qwen-7B-wide Q-LoRA programs (7B-wide checkpoints quantized on the host)")
	}
	const seq, target = 2048, 10 << 30
	type parts struct{ weights, arena, other, trained int64 }
	var at [4]parts
	for _, layers := range []int{1, 2, 3} {
		o := model.Qwen7BShape()
		o.Layers = layers
		q := quantize.DefaultOptions() // 4 bits, group 128, symmetric, as Qwen-7B-Chat-Int4
		dir, err := quantize.WriteTiny(t.TempDir(), o, q, quantize.MethodRTN)
		if err != nil {
			t.Fatal(err)
		}
		m, err := model.Load(dir, model.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var plans []cuda.MemoryPlan
		plans, at[layers].weights, at[layers].trained = planLoRA7B(t, m, seq, cuda.GradOptions{Checkpoint: true})
		at[layers].arena, at[layers].other = plans[0].Activations, plans[0].Other
		t.Logf("%d blocks: weights %d (packed and floating point), arena %d, other %d bytes; %d trained parameters", layers, at[layers].weights, at[layers].arena, at[layers].other, at[layers].trained)
		debug.FreeOSMemory() // the next model's weights in the same host memory
	}
	// from the second block on a block adds the same (block 0's mark dies early: the
	// embedding is frozen), so the step from 2 to 3 blocks is the one to repeat
	grow := func(f func(parts) int64) int64 { return f(at[3]) + 29*(f(at[3])-f(at[2])) }
	w, arena, other := grow(func(p parts) int64 { return p.weights }), grow(func(p parts) int64 { return p.arena }), grow(func(p parts) int64 { return p.other })
	opt := optimizerBytesPerParam * grow(func(p parts) int64 { return p.trained })
	total := w + arena + other + opt
	gib := func(b int64) float64 { return float64(b) / (1 << 30) }
	t.Logf("Qwen-7B Int4, Q-LoRA r 64, 1 x %d tokens: weights %.2f GiB, activations %.2f GiB, optimizer state %.2f GiB, other %.2f GiB: %.2f GiB in all (target %.0f GiB)",
		seq, gib(w), gib(arena), gib(opt), gib(other), gib(total), gib(target))
	if total > target {
		t.Errorf("the plan needs %.2f GiB, above the %.0f GiB target", gib(total), gib(target))
	}
}
