//go:build cudaemu && !qtcuda

package lora

import (
	"context"
	"testing"
)

// TestFailedUpdateKeepsStepsTogetherOnDevice: an update whose AdamW ran on the device but
// whose new state could not be copied to the host after it (a failed copy; the LoRA matrices
// have no bf16 copies to write, the GEMMs round the values) returns the error and leaves the
// trainer at that update: its step, the optimizer's and the values and moments a checkpoint
// saves are those after it, and the next steps (on the state uploaded again from the values)
// follow a trainer whose update did not fail, bit for bit.
func TestFailedUpdateKeepsStepsTogetherOnDevice(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	exec := openTestCUDA(t)
	straight := newDeviceTrainer(t, dir, exec, seqs, pad)
	losses := trainAll(t, straight)

	tr := newDeviceTrainer(t, dir, exec, seqs, pad)
	if _, err := tr.TrainStep(context.Background()); err != nil {
		t.Fatal(err)
	}
	restore := exec.Device.FailCopiesToHostAsync()
	_, err := tr.TrainStep(context.Background())
	restore()
	if err == nil {
		t.Fatal("a step succeeded with the copy of its state to the host refused")
	}
	t.Log(err)
	if tr.Step != 2 || tr.Opt.Step != 2 {
		t.Errorf("after the failed update: trainer step %d, optimizer step %d; want 2 and 2", tr.Step, tr.Opt.Step)
	}
	ckpt, err := tr.SaveCheckpoint(t.TempDir(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := ReadTrainerState(ckpt); err != nil || st.Step != 2 || st.AdamStep != 2 {
		t.Errorf("the checkpoint after the failed update: %+v, %v; want step 2", st, err)
	}
	sameRun(t, "after the failed update", dir, straight, tr, losses[2:], trainAll(t, tr))
}
