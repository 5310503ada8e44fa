package lora_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/tfile"
	"github.com/qwen-tune/qwen-tune/lora"
)

var errKilled = errors.New("killed")

// straightRun is the 4-step run (checkpoints every 2 steps) done without interruption in
// tmp/straight; the faulted runs must end with its adapter and metrics.
func straightRun(t *testing.T, tmp string) lora.Options {
	t.Helper()
	o := fourSteps(t, filepath.Join(tmp, "straight"))
	o.Train.SaveEvery = 2
	if _, err := lora.Run(context.Background(), o, lora.Hooks{}); err != nil {
		t.Fatal(err)
	}
	return o
}

// resumeAndCompare resumes the run in out and checks that it ends as the straight run,
// byte for byte, with no temporary file left anywhere in out. It returns the resumed
// run's start.
func resumeAndCompare(t *testing.T, o lora.Options, out, straight string) lora.Start {
	t.Helper()
	o.Out, o.Resume = out, true
	fresh := o
	fresh.Resume = false
	if _, err := lora.Run(context.Background(), fresh, lora.Hooks{}); err == nil || !strings.Contains(err.Error(), "add --resume") {
		t.Fatalf("a new run into the killed run's directory: %v", err)
	}
	var start lora.Start
	res, err := lora.Run(context.Background(), o, lora.Hooks{OnStart: func(s lora.Start) { start = s }})
	if err != nil || res.Stopped || res.Step != 4 {
		t.Fatalf("resumed run: %+v %v", res, err)
	}
	for _, name := range []string{lora.WeightsFile, "metrics.jsonl"} {
		a, errA := os.ReadFile(filepath.Join(straight, name))
		b, errB := os.ReadFile(filepath.Join(out, name))
		if errA != nil || errB != nil || len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s of the resumed run differs from the uninterrupted one (%v, %v)\n%s\n%s", name, errA, errB, a, b)
		}
	}
	tfile.NoneLeft(t, out, checkpoints.IsTemp)
	return start
}

// TestRunSurvivesFaults fails a 4-step run at several points (before any checkpoint, with
// --save-every 0, after a checkpoint) and checks that the directory then refuses a new run,
// holds no temporary file, and resumes (or starts again) to the uninterrupted run's adapter
// and metrics. The command's tests kill it with signals and fill the disk.
func TestRunSurvivesFaults(t *testing.T) {
	tmp := t.TempDir()
	o := straightRun(t, tmp)
	straight := o.Out
	cases := []struct {
		name     string
		saveZero bool                                                    // --save-every 0
		hook     func(t *testing.T, out string, r lora.StepResult) error // OnStep
		from     string                                                  // the checkpoint the resumed run starts from
	}{
		{name: "failure before the first checkpoint", saveZero: true, hook: func(t *testing.T, out string, r lora.StepResult) error {
			if r.Step == 2 {
				return errKilled
			}
			return nil
		}},
		{name: "failure before the first checkpoint is due", hook: func(t *testing.T, out string, r lora.StepResult) error {
			if r.Step == 0 {
				return errKilled
			}
			return nil
		}},
		{name: "failure after the first checkpoint", from: "checkpoint-2", hook: func(t *testing.T, out string, r lora.StepResult) error {
			if r.Step == 2 {
				return errKilled
			}
			return nil
		}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k := o
			k.Out = filepath.Join(tmp, string(rune('a'+i)))
			if c.saveZero {
				k.Train.SaveEvery = 0
			}
			_, err := lora.Run(context.Background(), k, lora.Hooks{OnStep: func(r lora.StepResult) error {
				if c.hook == nil {
					return nil
				}
				return c.hook(t, k.Out, r)
			}})
			if err == nil {
				t.Fatal("the faulted run succeeded")
			}
			tfile.NoneLeft(t, k.Out, checkpoints.IsTemp)
			if b, err := os.ReadFile(filepath.Join(k.Out, "metrics.jsonl")); err != nil || len(b) > 0 && b[len(b)-1] != '\n' {
				t.Fatalf("metrics after the fault (%v): %q", err, b)
			}
			start := resumeAndCompare(t, k, k.Out, straight)
			notes := strings.Join(start.Notes, "\n")
			if c.from == "" && (start.Step != 0 || !strings.Contains(notes, "starting again from step 0")) {
				t.Errorf("restart: step %d, notes %q", start.Step, notes)
			}
			if c.from != "" && start.ResumedFrom != filepath.Join(k.Out, c.from) {
				t.Errorf("resumed from %q, want %s", start.ResumedFrom, c.from)
			}
		})
	}
}

// stoppedAt3 is the straight run's settings stopped after 3 steps in out: checkpoint-3 and
// three metrics lines.
func stoppedAt3(t *testing.T, o lora.Options, out string) lora.Options {
	t.Helper()
	o.Out = out
	o.Train.SaveEvery = 2
	_, err := lora.Run(context.Background(), o, lora.Hooks{OnStep: func(r lora.StepResult) error {
		if r.Step == 2 {
			return lora.ErrStop
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// TestResumeAfterKillDuringSave: a run killed while saving checkpoint-3 leaves
// checkpoint-3.tmp and temporary files. A complete one (every file verifies) is kept and
// resumed from; an incomplete one is removed, with the reason, and the run continues from
// the checkpoint before it (here none: from step 0). Metrics lines past the checkpoint and
// a torn last line are cut.
func TestResumeAfterKillDuringSave(t *testing.T) {
	tmp := t.TempDir()
	o := straightRun(t, tmp)
	straight := o.Out

	complete := stoppedAt3(t, o, filepath.Join(tmp, "complete")).Out
	if err := os.Rename(filepath.Join(complete, "checkpoint-3"), filepath.Join(complete, "checkpoint-3.tmp")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(complete, ".adapter_model.safetensors.tmp-77"), []byte("half"), 0o644)
	f, _ := os.OpenFile(filepath.Join(complete, "metrics.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"step":3,"lr":0.001,"loss":9,"grad_norm":1,"tokens":5,"seq_tokens":9}` + "\n" + `{"step":4,"lr":0.0`)
	f.Close()
	start := resumeAndCompare(t, o, complete, straight)
	if start.Step != 3 || !strings.Contains(strings.Join(start.Notes, "\n"), "kept as "+filepath.Join(complete, "checkpoint-3")) {
		t.Errorf("complete checkpoint-3.tmp: start at %d, notes %q", start.Step, start.Notes)
	}

	incomplete := stoppedAt3(t, o, filepath.Join(tmp, "incomplete")).Out
	if err := os.Rename(filepath.Join(incomplete, "checkpoint-3"), filepath.Join(incomplete, "checkpoint-3.tmp")); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(incomplete, "checkpoint-3.tmp", "trainer_state.json"))
	os.WriteFile(filepath.Join(incomplete, "checkpoint-3.tmp", ".trainer_state.json.tmp-5"), []byte("{"), 0o644)
	start = resumeAndCompare(t, o, incomplete, straight)
	notes := strings.Join(start.Notes, "\n")
	if start.Step != 0 || !strings.Contains(notes, "removed "+filepath.Join(incomplete, "checkpoint-3.tmp")) || !strings.Contains(notes, "starting again from step 0") {
		t.Errorf("incomplete checkpoint-3.tmp: start at %d, notes %q", start.Step, notes)
	}
}

// TestMetricsTornAndBadLines: a torn last line is dropped; a bad line elsewhere is an error
// naming the file and line.
func TestMetricsTornAndBadLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	good := `{"step":0,"loss":2}` + "\n" + `{"step":1,"loss":1.5}` + "\n"
	os.WriteFile(path, []byte(good+`{"step":2,"lo`), 0o644)
	if hist, err := lora.ReadMetrics(path); err != nil || len(hist) != 2 || hist[1].Loss != 1.5 {
		t.Fatalf("torn last line: %v %v", hist, err)
	}
	os.WriteFile(path, []byte(`{"step":0,"loss":2}`+"\n"+`{"step":1,"lo`+"\n"+`{"step":2,"loss":1}`+"\n"), 0o644)
	if _, err := lora.ReadMetrics(path); err == nil || !strings.Contains(err.Error(), path+":2: not a metrics line") {
		t.Fatalf("bad middle line: %v", err)
	}
}

// TestResumeChecksWhatItContinues: a resumed run refuses other settings (listing them), a
// different model or data content, and accepts a longer run (saying so).
func TestResumeChecksWhatItContinues(t *testing.T) {
	tmp := t.TempDir()
	o := fourSteps(t, filepath.Join(tmp, "run"))
	o.Train.SaveEvery = 2
	if _, err := lora.Run(context.Background(), o, lora.Hooks{OnStep: func(r lora.StepResult) error {
		if r.Step == 1 {
			return lora.ErrStop
		}
		return nil
	}}); err != nil {
		t.Fatal(err)
	}
	o.Resume = true
	changed := o
	changed.Train.LR, changed.Train.LoRA.R, changed.Train.Seed = 5e-3, 8, 7
	changed.ModelDir = filepath.Join(tmp, "other-model")
	_, err := lora.Run(context.Background(), changed, lora.Hooks{})
	for _, want := range []string{"--model " + changed.ModelDir, "--lr 0.005 (the run has 0.01)", "--lora-r 8 (the run has 4)", "--seed 7 (the run has 42)", "training_config.json"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("changed settings: %v; want %q", err, want)
		}
	}

	b, _ := os.ReadFile(o.Data)
	os.WriteFile(o.Data, append(b, b...), 0o644)
	if _, err := lora.Run(context.Background(), o, lora.Hooks{}); err == nil || !strings.Contains(err.Error(), "is not the data the run") {
		t.Errorf("changed data: %v", err)
	}
	os.WriteFile(o.Data, b, 0o644)

	longer := o
	longer.Train.Steps = 6
	var start lora.Start
	res, err := lora.Run(context.Background(), longer, lora.Hooks{OnStart: func(s lora.Start) { start = s }})
	if err != nil || res.Step != 6 || start.Step != 2 || !strings.Contains(strings.Join(start.Notes, "\n"), "--steps changed from 4 to 6") {
		t.Fatalf("longer run: %+v %v, notes %q", res, err, start.Notes)
	}
	shorter := o
	shorter.Train.Steps = 3
	if _, err := lora.Run(context.Background(), shorter, lora.Hooks{}); err == nil || !strings.Contains(err.Error(), "past the 3 steps") {
		t.Errorf("shorter than the checkpoint: %v", err)
	}
}

// TestSettingsListEveryField: every TrainConfig field is checked on resume.
func TestSettingsListEveryField(t *testing.T) {
	if n, want := lora.SettingsCount(), reflect.TypeOf(lora.TrainConfig{}).NumField()-1+reflect.TypeOf(lora.Config{}).NumField(); n != want {
		t.Fatalf("%d settings are compared on resume; TrainConfig has %d", n, want)
	}
}
