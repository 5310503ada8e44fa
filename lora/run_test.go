package lora_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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
