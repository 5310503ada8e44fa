//go:build qtcuda || cudaemu

package lora

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
	"github.com/qwen-tune/qwen-tune/model"
)

// Trainers whose optimizer stays on the device (model.OptimExecutor). Under -tags cudaemu they
// run on the CPU emulation of the GPU; a test binary built with -tags qtcuda runs them on the
// GPU.

// openTestCUDA opens the device for one test, closed after every trainer of the test.
func openTestCUDA(t *testing.T) *model.CUDA {
	t.Helper()
	exec, err := model.OpenCUDA(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := exec.Close(); err != nil {
			t.Error(err)
		}
	})
	return exec
}

// newDeviceTrainer is newTestTrainer on exec.
func newDeviceTrainer(t *testing.T, dir string, exec model.Executor, seqs []data.Sequence, pad int) *Trainer {
	t.Helper()
	tr := newTestTrainer(t, dir, seqs, pad)
	tr.Model.Exec = exec
	return tr
}

// trainAll runs tr's remaining steps.
func trainAll(t *testing.T, tr *Trainer) []StepResult {
	t.Helper()
	var out []StepResult
	for !tr.Done() {
		r, err := tr.TrainStep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// TestTrainerFollowsCPUOnDevice: four steps (dropout, two micro-batches each, clipping) with
// the optimizer on the device follow the CPU trainer's losses, gradient norms and trained
// values; the host sees the device's values after Sync, and validation on the device the
// updated weights.
func TestTrainerFollowsCPUOnDevice(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	exec := openTestCUDA(t)
	cpu := newTestTrainer(t, dir, seqs, pad)
	dev := newDeviceTrainer(t, dir, exec, seqs, pad)
	want, got := trainAll(t, cpu), trainAll(t, dev)
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	var worstLoss, worstNorm, worstValue float64
	for i := range want {
		worstLoss = max(worstLoss, math.Abs(got[i].Loss-want[i].Loss)/want[i].Loss)
		worstNorm = max(worstNorm, math.Abs(got[i].GradNorm-want[i].GradNorm)/want[i].GradNorm)
		if got[i].Tokens != want[i].Tokens || got[i].Seen != want[i].Seen || got[i].LR != want[i].LR {
			t.Errorf("step %d: %d tokens of %d at lr %g on the device, %d of %d at lr %g on the CPU", i, got[i].Tokens, got[i].Seen, got[i].LR, want[i].Tokens, want[i].Seen, want[i].LR)
		}
	}
	for i, p := range cpu.Params {
		worstValue = max(worstValue, refmath.RelDiff(dev.Params[i].Value.Data().([]float32), p.Value.Data().([]float32)))
	}
	if dev.Opt.Step != cpu.Opt.Step || dev.Step != cpu.Step {
		t.Errorf("after %d steps: optimizer step %d, trainer step %d (CPU: %d, %d)", len(want), dev.Opt.Step, dev.Step, cpu.Opt.Step, cpu.Step)
	}
	// validation on the device reads the weights the device's updates wrote
	cpu.Val, dev.Val = seqs[:3], seqs[:3]
	wantEval, err := cpu.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	gotEval, err := dev.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	evalDiff := math.Abs(gotEval-wantEval) / wantEval
	t.Logf("worst relative differences from the CPU: loss %.2e, gradient norm %.2e, trained values %.2e, validation loss %.2e (%.5f, the first step's training loss %.5f)",
		worstLoss, worstNorm, worstValue, evalDiff, gotEval, got[0].Loss)
	// measured 7.6e-5 (3.89 after the four steps, 8.01 before them)
	if evalDiff > 8e-4 {
		t.Errorf("validation loss %.6f on the device, %.6f on the CPU", gotEval, wantEval)
	}
	// measured on the emulator 2.3e-4, 5.6e-4 and 1.2e-2: the programs' bf16 weights and GEMM
	// inputs against the CPU's float32 (the optimizer's arithmetic is the CPU's)
	if worstLoss > 3e-3 || worstNorm > 6e-3 || worstValue > 0.12 {
		t.Errorf("the device's steps differ from the CPU's: loss %.2e, gradient norm %.2e, values %.2e", worstLoss, worstNorm, worstValue)
	}
}

// TestResumeIsBitExactOnDevice: on the device, 4 straight steps equal 2 steps, a checkpoint
// (the device's values and moments brought back), a new trainer restored from it (uploaded)
// and 2 more, bit for bit: the losses, and the adapter, trained values and moments saved.
func TestResumeIsBitExactOnDevice(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	exec := openTestCUDA(t)
	straight := newDeviceTrainer(t, dir, exec, seqs, pad)
	losses := trainAll(t, straight)

	first := newDeviceTrainer(t, dir, exec, seqs, pad)
	for i := 0; i < 2; i++ {
		if _, err := first.TrainStep(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ckpt, err := first.SaveCheckpoint(t.TempDir(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	second := newDeviceTrainer(t, dir, exec, seqs, pad)
	if err := second.LoadCheckpoint(ckpt); err != nil {
		t.Fatal(err)
	}
	sameRun(t, "resumed", dir, straight, second, losses[2:], trainAll(t, second))
	if straight.Opt.Step != 4 || second.Opt.Step != 4 {
		t.Errorf("optimizer steps %d straight and %d resumed, want 4", straight.Opt.Step, second.Opt.Step)
	}
}

// TestNonFiniteGoesBackOnDevice: with a learning rate of 1e38 on the device, an update makes
// weights whose loss is not finite; the next step is not taken and the trainer goes back to
// before that update, as on the CPU: the host then reads the state after the update before
// it, bit for bit, a checkpoint saves it, and training can go on from there.
func TestNonFiniteGoesBackOnDevice(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	exec := openTestCUDA(t)
	// run trains at lr 1e38 until a step fails; states[k] is the host's state after k updates
	run := func(tr *Trainer) (nf *NonFiniteError, states []trainState) {
		tr.Cfg.LR, tr.Sched.Peak = 1e38, 1e38
		for {
			if err := tr.Sync(); err != nil {
				t.Fatal(err)
			}
			var st trainState
			st.keep(tr.values(), tr.Opt)
			states = append(states, st)
			if tr.Done() {
				t.Fatal("every step at a learning rate of 1e38 had a finite loss")
			}
			_, err := tr.TrainStep(context.Background())
			if errors.As(err, &nf) {
				return nf, states
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	want, _ := run(newTestTrainer(t, dir, seqs, pad))
	dev := newDeviceTrainer(t, dir, exec, seqs, pad)
	got, states := run(dev)
	if got.Step != want.Step || got.WentBack != want.WentBack || !got.WentBack {
		t.Fatalf("on the device: stopped at step %d (went back: %v); on the CPU at %d (%v)", got.Step, got.WentBack, want.Step, want.WentBack)
	}
	if dev.Step != got.Step-1 || dev.Opt.Step != got.Step-1 {
		t.Errorf("after going back from step %d: trainer step %d, optimizer step %d", got.Step, dev.Step, dev.Opt.Step)
	}
	ckpt, err := dev.SaveCheckpoint(t.TempDir(), dir, nil) // brings the device's state back
	if err != nil {
		t.Fatal(err)
	}
	before := states[got.Step-1] // after the update before the one that gave non-finite weights
	bits := func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) }
	for i, p := range dev.Params {
		for _, c := range []struct {
			what      string
			got, want []float32
		}{{"values", p.Value.Data().([]float32), before.values[i]}, {"first moments", dev.Opt.M[i], before.m[i]}, {"second moments", dev.Opt.V[i], before.v[i]}} {
			if !slices.EqualFunc(c.got, c.want, bits) {
				t.Errorf("%s: the %s are not those after update %d", p.Name, c.what, got.Step-1)
			}
		}
	}
	if st, err := ReadTrainerState(ckpt); err != nil || st.Step != got.Step-1 || st.AdamStep != got.Step-1 {
		t.Errorf("the checkpoint after going back: %+v, %v; want step %d", st, err, got.Step-1)
	}
	// the device goes on from there: the step again, now at a sane learning rate
	dev.Cfg.LR, dev.Sched.Peak = 1e-3, 1e-3
	r, err := dev.TrainStep(context.Background())
	if err != nil || !finite(r.Loss) {
		t.Fatalf("a step at lr 1e-3 after going back: loss %v, %v", r.Loss, err)
	}
}

// TestEvaluateAfterLoadOnDevice: validation on the device after a checkpoint is loaded reads
// the checkpoint's values, not those the device's last update wrote: on the trainer that
// trained, and on one closed and loaded again (its device copies are the uploaded weights
// the next programs read).
func TestEvaluateAfterLoadOnDevice(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	exec := openTestCUDA(t)
	tr := newDeviceTrainer(t, dir, exec, seqs, pad)
	tr.Val = seqs[:3]
	at0, err := tr.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	ckpt, err := tr.SaveCheckpoint(t.TempDir(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, reopen := range []bool{false, true} {
		for i := 0; i < 2; i++ {
			if _, err := tr.TrainStep(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		trained, err := tr.Evaluate()
		if err != nil {
			t.Fatal(err)
		}
		if reopen {
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := tr.LoadCheckpoint(ckpt); err != nil {
			t.Fatal(err)
		}
		got, err := tr.Evaluate()
		if err != nil {
			t.Fatal(err)
		}
		// the same bf16 weights give the same bits
		if got != at0 {
			t.Errorf("closed first: %v: validation loss %v after loading the checkpoint of step 0, %v at step 0 (%v after the steps)", reopen, got, at0, trained)
		}
	}
}

// TestTrainingMemoryOnDevice: the training benchmark on the device reports the optimizer's
// state it keeps there (16 bytes a trained parameter: values, both moments and the gradient
// sums; the values and moments before the last update are in host memory) apart from the
// weights and the arena, all of them within the device's peak.
func TestTrainingMemoryOnDevice(t *testing.T) {
	dir, _, _ := tinySetup(t)
	exec := openTestCUDA(t)
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.Exec = exec
	o := TrainBenchOptions{Batch: 1, Seq: 16, Steps: 1, LoRA: DefaultConfig(), Seed: 1}
	o.LoRA.R = 4
	res, err := MeasureTraining(context.Background(), m, o)
	if err != nil {
		t.Fatal(err)
	}
	mem := exec.TrainingMemory()
	_, peak := exec.Memory()
	t.Logf("%d trained parameters: %+v, peak %d bytes", res.LoRAParams, mem, peak)
	if want := int64(16 * res.LoRAParams); mem.Optimizer != want || peak < mem.Weights+mem.Activations+mem.Optimizer {
		t.Errorf("%d trained parameters: %+v within a peak of %d bytes; want %d bytes of optimizer state", res.LoRAParams, mem, peak, want)
	}
}

// sameRun fails unless steps (of trainer tr, from step 2 on) have the losses and norms of
// want (of trainer straight's run) and the two trainers' checkpoints the same adapter,
// trainer and optimizer files, byte for byte; what names tr's run in the messages.
func sameRun(t *testing.T, what, dir string, straight, tr *Trainer, want, steps []StepResult) {
	t.Helper()
	if len(steps) != len(want) {
		t.Fatalf("%s: %d steps, want %d", what, len(steps), len(want))
	}
	for i, r := range steps {
		if r.Loss != want[i].Loss || r.GradNorm != want[i].GradNorm {
			t.Errorf("step %d: %s loss %v and norm %v, straight %v and %v", i+2, what, r.Loss, r.GradNorm, want[i].Loss, want[i].GradNorm)
		}
	}
	a, err := straight.SaveCheckpoint(t.TempDir(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tr.SaveCheckpoint(t.TempDir(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"adapter_model.safetensors", checkpoints.TrainerParamsFile, checkpoints.OptimizerFile} {
		x, errA := os.ReadFile(filepath.Join(a, f))
		y, errB := os.ReadFile(filepath.Join(b, f))
		if err := errors.Join(errA, errB); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s: %s differs from the straight run's", what, f)
		}
	}
}
