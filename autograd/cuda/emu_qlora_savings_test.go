//go:build cudaemu && !qtcuda

package cuda_test

import (
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// TestEmulatedQLoRAArenaSavingsAreExact: on a GPTQ model (Q-LoRA: the up and gate
// projections are Int4 layers, SwiGLU's gradients written over their float32 outputs) lora's
// trainer follows the same losses, bit for bit, with the arena's savings and without, with
// checkpointing and without (four steps of two micro-batches, the optimizer on the device).
func TestEmulatedQLoRAArenaSavingsAreExact(t *testing.T) {
	d := openDevice(t)
	seqs := randomSeqs(4096)
	o := quantize.DefaultOptions()
	o.GroupSize = 16 // divides the tiny model's widths (64, 176)
	gptq, err := quantize.WriteTiny(t.TempDir(), model.DefaultTiny(), o, quantize.MethodRTN)
	if err != nil {
		t.Fatal(err)
	}
	for _, noCkpt := range []bool{false, true} {
		run := func(savings bool) ([]float64, int64) {
			cuda.SetArenaSavings(t, savings)
			defer d.ReleaseWeights()
			m, err := model.Load(gptq, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if m.GPTQ == nil {
				t.Fatal("the model is not a GPTQ model")
			}
			exec := &model.CUDA{Device: d, NoCheckpoint: noCkpt}
			losses := trainSteps(t, m, exec, seqs)
			return losses, exec.TrainingMemory().Activations
		}
		off, without := run(false)
		on, with := run(true)
		t.Logf("checkpointing %v: losses %v; arena %d bytes with the savings, %d without", !noCkpt, on, with, without)
		if with > without {
			t.Errorf("checkpointing %v: arena %d bytes with the savings, %d without", !noCkpt, with, without)
		}
		for i := range off {
			if on[i] != off[i] {
				t.Errorf("checkpointing %v, step %d: loss %v with the savings, %v without", !noCkpt, i, on[i], off[i])
			}
		}
	}
}
