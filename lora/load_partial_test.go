package lora

import (
	"context"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// TestLoadCheckpointRefusedLeavesTrainer: a checkpoint whose last tensor does not fit (here
// the last parameter's second moment is missing) is refused as a whole: the values, moments
// and steps the trainer had are all still there, not the first parameters of the checkpoint
// beside the last ones of the trainer.
func TestLoadCheckpointRefusedLeavesTrainer(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	tr := newTestTrainer(t, dir, seqs, pad)
	if _, err := tr.TrainStep(context.Background()); err != nil {
		t.Fatal(err)
	}
	ckpt, err := tr.SaveCheckpoint(t.TempDir(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Drop the last tensor of the optimizer file.
	path := filepath.Join(ckpt, optimizerFile)
	ck, err := checkpoints.OpenFiles(ckpt, path)
	if err != nil {
		t.Fatal(err)
	}
	last := "v." + tr.Params[len(tr.Params)-1].Name
	var kept []checkpoints.Tensor
	for _, name := range ck.Names() {
		if name == last {
			continue
		}
		x, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		x.Data = slices.Clone(x.Data)
		kept = append(kept, x)
	}
	ck.Close()
	if len(kept) != 2*len(tr.Params)-1 {
		t.Fatalf("optimizer file has %d tensors besides %s, want %d", len(kept), last, 2*len(tr.Params)-1)
	}
	if err := checkpoints.WriteFile(path, kept, nil); err != nil {
		t.Fatal(err)
	}

	// A second step moves the trainer away from the checkpoint.
	if _, err := tr.TrainStep(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := snapshot(tr)
	step, adam := tr.Step, tr.Opt.Step
	if err := tr.LoadCheckpoint(ckpt); err == nil {
		t.Fatal("a checkpoint without " + last + " was loaded")
	}
	if tr.Step != step || tr.Opt.Step != adam {
		t.Errorf("steps %d, %d after a refused load, want %d, %d", tr.Step, tr.Opt.Step, step, adam)
	}
	after := snapshot(tr)
	for i := range before {
		if !slices.EqualFunc(before[i], after[i], func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) }) {
			t.Errorf("tensor %d changed by a refused load", i)
		}
	}
}

// snapshot copies every value and moment of the trainer.
func snapshot(tr *Trainer) [][]float32 {
	var out [][]float32
	for i, p := range tr.Params {
		out = append(out, slices.Clone(p.Value.Data().([]float32)), slices.Clone(tr.Opt.M[i]), slices.Clone(tr.Opt.V[i]))
	}
	return out
}
