package lora

import (
	"context"
	"errors"
	"math"
	"testing"
)

// TestNonFiniteAfterLoadDoesNotGoBack: a trainer that trained, then loaded a checkpoint, has
// no update to go back from: a first step with a non-finite loss (here a NaN in the loaded
// values) stops without going back to the state before its own earlier update, as the
// device's trainer does (its Upload drops what it kept).
func TestNonFiniteAfterLoadDoesNotGoBack(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	tr := newTestTrainer(t, dir, seqs, pad)
	if _, err := tr.TrainStep(context.Background()); err != nil {
		t.Fatal(err)
	}
	ckpt, err := tr.SaveCheckpoint(t.TempDir(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.TrainStep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tr.LoadCheckpoint(ckpt); err != nil {
		t.Fatal(err)
	}
	tr.Params[0].Value.Data().([]float32)[0] = float32(math.NaN())
	_, err = tr.TrainStep(context.Background())
	var nf *NonFiniteError
	if !errors.As(err, &nf) {
		t.Fatalf("a step on a NaN value: %v, want a NonFiniteError", err)
	}
	if nf.WentBack || tr.Step != 1 || tr.Opt.Step != 1 {
		t.Errorf("after a load, a non-finite step went back %v: trainer step %d, optimizer step %d (want 1, 1)", nf.WentBack, tr.Step, tr.Opt.Step)
	}
	if v := tr.Params[0].Value.Data().([]float32)[0]; !math.IsNaN(float64(v)) {
		t.Errorf("the loaded values were replaced by %v, the state before an update made before the load", v)
	}
}
