package lora_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
)

// fourSteps is a 4-step run with dropout of the tiny model on two chats, output in out.
func fourSteps(t *testing.T, out string) lora.Options {
	t.Helper()
	tmp := t.TempDir()
	o := lora.DefaultOptions()
	o.ModelDir, o.Data, o.Out = filepath.Join(tmp, "tiny"), filepath.Join(tmp, "chats.jsonl"), out
	tiny := model.DefaultTiny()
	tiny.VocabRanks = 4096
	if _, err := model.WriteTiny(o.ModelDir, tiny); err != nil {
		t.Fatal(err)
	}
	chats := `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
{"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]}
`
	if err := os.WriteFile(o.Data, []byte(chats), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &o.Train
	c.Steps, c.LoRA.R, c.LoRA.Dropout, c.LR, c.BatchSize = 4, 4, 0.1, 1e-2, 2
	return o
}

// TestRunStopsAndResumes: a run whose context is cancelled after 2 of 4 steps saves a
// checkpoint and no adapter; resuming it ends with the adapter and metrics of an
// uninterrupted run, byte for byte.
func TestRunStopsAndResumes(t *testing.T) {
	tmp := t.TempDir()
	o := fourSteps(t, filepath.Join(tmp, "straight"))
	full, err := lora.Run(context.Background(), o, lora.Hooks{})
	if err != nil || full.Stopped || full.Step != 4 || len(full.History) != 4 {
		t.Fatalf("uninterrupted run: %+v %v", full, err)
	}

	o.Out = filepath.Join(tmp, "stopped")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var saved []string
	res, err := lora.Run(ctx, o, lora.Hooks{
		OnStep: func(r lora.StepResult) error {
			if r.Step == 1 {
				cancel() // as Ctrl-C after the second step
			}
			return nil
		},
		OnSave: func(dir string) { saved = append(saved, dir) },
	})
	ck := filepath.Join(o.Out, "checkpoint-2")
	if err != nil || !res.Stopped || res.Step != 2 || res.Checkpoint != ck || len(saved) != 1 || saved[0] != ck {
		t.Fatalf("stopped run: %+v %v, saved %v", res, err, saved)
	}
	if _, err := os.Stat(filepath.Join(o.Out, lora.WeightsFile)); err == nil {
		t.Fatal("a stopped run wrote the final adapter")
	}
	if _, err := lora.Run(context.Background(), o, lora.Hooks{}); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Fatalf("a second run into the same output: %v", err)
	}

	o.Resume = true
	o.Train = lora.TrainConfig{} // a resumed run takes the checkpoint's settings
	var start lora.Start
	res, err = lora.Run(context.Background(), o, lora.Hooks{OnStart: func(s lora.Start) { start = s }})
	if err != nil || res.Stopped || res.Step != 4 || len(res.History) != 4 || start.Step != 2 || start.ResumedFrom != ck {
		t.Fatalf("resumed run: %+v %v, start %+v", res, err, start)
	}
	for _, name := range []string{lora.WeightsFile, "metrics.jsonl"} {
		a, errA := os.ReadFile(filepath.Join(tmp, "straight", name))
		b, errB := os.ReadFile(filepath.Join(o.Out, name))
		if errA != nil || errB != nil || len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s of the resumed run differs from the uninterrupted one (%v, %v)", name, errA, errB)
		}
	}
}

// TestRunStopsAtNonFiniteLoss: a run whose weights blow up (a learning rate of 1e38) stops at
// the first step whose loss or gradient norm is not finite, without taking it, and goes back
// to before the update that made those weights: it saves that state as a checkpoint, writes
// no adapter, says what to do, and a new run from that checkpoint at a sane learning rate
// trains with finite losses.
func TestRunStopsAtNonFiniteLoss(t *testing.T) {
	o := fourSteps(t, filepath.Join(t.TempDir(), "out"))
	o.Train.LR = 1e38
	var steps []lora.StepResult
	res, err := lora.Run(context.Background(), o, lora.Hooks{OnStep: func(r lora.StepResult) error {
		steps = append(steps, r)
		return nil
	}})
	var nf *lora.NonFiniteError
	if !errors.As(err, &nf) {
		t.Fatalf("run with a learning rate of 1e38: result %+v, error %v; want a NonFiniteError", res, err)
	}
	if nf.Step != len(steps) || nf.Step == 0 || !nf.WentBack {
		t.Fatalf("stopped at step %d after %d good steps (went back: %v)", nf.Step, len(steps), nf.WentBack)
	}
	// the weights of step nf.Step came from step nf.Step-1's update: the state saved is the
	// one before it
	if want := filepath.Join(o.Out, lora.CheckpointPrefix+strconv.Itoa(nf.Step-1)); nf.Checkpoint != want {
		t.Errorf("checkpoint %q, want %q (before the last update)", nf.Checkpoint, want)
	}
	for _, s := range []string{"--lr", "--init-adapter " + nf.Checkpoint, fmt.Sprintf("step %d", nf.Step+1)} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("the error does not say %q: %v", s, err)
		}
	}
	if _, err := os.Stat(filepath.Join(o.Out, "adapter_model.safetensors")); !os.IsNotExist(err) {
		t.Errorf("an adapter was written after the run failed (stat: %v)", err)
	}
	again := o
	again.Out, again.InitAdapter, again.Train.LR = filepath.Join(t.TempDir(), "again"), nf.Checkpoint, 1e-4
	res, err = lora.Run(context.Background(), again, lora.Hooks{})
	if err != nil {
		t.Fatalf("a run from the saved checkpoint at lr 1e-4: %v", err)
	}
	for _, r := range res.History {
		if math.IsNaN(r.Loss) || math.IsInf(r.Loss, 0) {
			t.Fatalf("step %d of the run from the checkpoint: loss %v", r.Step, r.Loss)
		}
	}
}
