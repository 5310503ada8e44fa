package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/tfile"
	"github.com/qwen-tune/qwen-tune/lora"
)

func TestLoraTrainsResumesAndRefuses(t *testing.T) {
	dir, tmp, chats := tinyChats(t)
	out := filepath.Join(tmp, "run")
	args := []string{"lora", "--model", dir, "--data", chats, "--out", out, "--steps", "4", "--lora-r", "4", "--lr", "1e-2", "--save-every", "2"}
	if o, errs, st := qt(t, "", args...); st != 0 {
		t.Fatalf("lora: %s %s", o, errs)
	}
	for _, f := range []string{"adapter_config.json", "adapter_model.safetensors", "training_config.json", "metrics.jsonl", "loss.png", "checkpoint-4/trainer_state.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
	b := tfile.Read(t, filepath.Join(out, "metrics.jsonl"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var first map[string]float64
	if len(lines) != 4 || json.Unmarshal([]byte(lines[0]), &first) != nil || first["step"] != 0 || first["loss"] <= 0 || first["grad_norm"] <= 0 {
		t.Fatalf("metrics:\n%s", b)
	}
	var cfg map[string]any
	b = tfile.Read(t, filepath.Join(out, "adapter_config.json"))
	if json.Unmarshal(b, &cfg) != nil || cfg["peft_type"] != "LORA" || cfg["r"] != 4.0 || cfg["task_type"] != "CAUSAL_LM" {
		t.Fatalf("adapter_config.json: %s", b)
	}
	// The same output again is refused; nothing changes.
	if _, errs, st := qt(t, "", args...); st != 1 || !strings.Contains(errs, "already holds") {
		t.Fatalf("second run into the same --out: status %d %s", st, errs)
	}
	// The adapter is used by chat without merging.
	if o, errs, st := qt(t, "", "chat", "--model", dir, "--adapter", out, "--prompt", "hi", "--max-new-tokens", "4", "--greedy"); st != 0 || o == "" {
		t.Fatalf("chat --adapter: %d %s %s", st, o, errs)
	}
	// An adapter for another shape is refused with both shapes named.
	other := filepath.Join(t.TempDir(), "other")
	if _, errs, st := qt(t, "", "init", "--tiny", "--out", other, "--hidden", "32", "--heads", "2", "--vocab-ranks", "4096"); st != 0 {
		t.Fatal(errs)
	}
	if _, errs, st := qt(t, "", "chat", "--model", other, "--adapter", out, "--prompt", "hi"); st != 1 || !strings.Contains(errs, "has shape [4 64] but this model needs [4 32]") {
		t.Fatalf("mismatched adapter: %d %s", st, errs)
	}
}

func TestLoraBadInput(t *testing.T) {
	dir := tinyModel(t)
	tmp := t.TempDir()
	chats := writeFile(t, filepath.Join(tmp, "ok.jsonl"), twoChats)
	cases := []struct {
		name, data string
		extra      []string
		want       string
	}{
		{"malformed JSON", "{\"messages\": [\n", nil, "bad.jsonl:1: not a JSON object"},
		{"no assistant turn", `{"messages": [{"role": "user", "content": "a"}]}`, nil, "no assistant turn"},
		{"roles out of order", `{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}`, nil, "roles out of order"},
		{"empty dataset", "", nil, "no examples"},
		{"all skipped", `{"messages": [{"role": "user", "content": "a"}]}`, []string{"--on-bad-example", "skip"}, "all 1 examples are malformed"},
		{"unknown target", "", []string{"--targets", "q_proj"}, `target module "q_proj" matches no layer`},
		{"bad mask", "", []string{"--mask", "everything"}, `mask "everything"`},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := chats
			if c.data != "" || c.name == "empty dataset" {
				data = writeFile(t, filepath.Join(tmp, "bad.jsonl"), c.data)
			}
			args := append([]string{"lora", "--model", dir, "--data", data, "--out", filepath.Join(tmp, "out", string(rune('a'+i))), "--steps", "1"}, c.extra...)
			_, errs, st := qt(t, "", args...)
			if st != 1 || !strings.Contains(errs, c.want) || strings.Contains(errs, "goroutine") {
				t.Fatalf("status %d, stderr %q; want %q", st, errs, c.want)
			}
		})
	}
	// Skipping keeps the good examples and reports the bad one.
	mixed := writeFile(t, filepath.Join(tmp, "mixed.jsonl"), twoChats+`{"messages": [{"role": "user", "content": "a"}]}`+"\n")
	_, errs, st := qt(t, "", "lora", "--model", dir, "--data", mixed, "--out", filepath.Join(tmp, "skip"), "--steps", "1", "--on-bad-example", "skip")
	if st != 0 || !strings.Contains(errs, "skipped: data: "+mixed+":3") {
		t.Fatalf("skip: %d %s", st, errs)
	}
}

func TestDataInspectAndMerge(t *testing.T) {
	dir, tmp, chats := tinyChats(t)
	o, errs, st := qt(t, "", "data", "inspect", "--model", dir, "--data", chats, "--example", "1", "--mask", "assistant")
	if st != 0 || !strings.Contains(o, "assistant\n[[see you<|im_end|>\n]]") || !strings.Contains(o, "2 examples") {
		t.Fatalf("data inspect: %d %s %s", st, o, errs)
	}
	if _, errs, st := qt(t, "", "data", "inspect", "--model", dir, "--data", chats, "--example", "5"); st != 1 || !strings.Contains(errs, "examples 0..1") {
		t.Fatalf("out-of-range example: %d %s", st, errs)
	}
	run := filepath.Join(tmp, "run")
	if _, errs, st := qt(t, "", "lora", "--model", dir, "--data", chats, "--out", run, "--steps", "2", "--lora-r", "4", "--train-special-tokens"); st != 0 {
		t.Fatal(errs)
	}
	merged := filepath.Join(tmp, "merged")
	if _, errs, st := qt(t, "", "merge", "--model", dir, "--adapter", run, "--out", merged); st != 0 {
		t.Fatal(errs)
	}
	a, _, st1 := qt(t, "", "generate", "--model", dir, "--adapter", run, "--prompt-ids", "1,2,3", "--greedy", "--max-new-tokens", "8", "--json")
	b, _, st2 := qt(t, "", "generate", "--model", merged, "--prompt-ids", "1,2,3", "--greedy", "--max-new-tokens", "8", "--json")
	if st1 != 0 || st2 != 0 || a != b {
		t.Errorf("adapter and merged model disagree:\n%s%s", a, b)
	}
	if _, errs, st := qt(t, "", "merge", "--model", dir, "--adapter", run, "--out", merged); st != 1 || !strings.Contains(errs, "already holds a model") {
		t.Fatalf("merge over a model: %d %s", st, errs)
	}
}

// TestModulesToSave trains wte and lm_head in full, saves them as PEFT modules_to_save, and
// the adapter gives the same continuation applied or merged.
func TestModulesToSave(t *testing.T) {
	dir, tmp, chats, run := tinyRun(t, "--steps", "3", "--lora-r", "4", "--lr", "1e-2", "--modules-to-save", "wte,lm_head")
	b := tfile.Read(t, filepath.Join(run, "adapter_config.json"))
	if !strings.Contains(string(b), `"modules_to_save": [`) {
		t.Fatalf("adapter_config.json lacks modules_to_save: %s", b)
	}
	merged := filepath.Join(tmp, "merged")
	if _, errs, st := qt(t, "", "merge", "--model", dir, "--adapter", run, "--out", merged); st != 0 {
		t.Fatal(errs)
	}
	base, _, _ := qt(t, "", "generate", "--model", dir, "--prompt-ids", "1,2,3", "--greedy", "--max-new-tokens", "8", "--json")
	a, _, st1 := qt(t, "", "generate", "--model", dir, "--adapter", run, "--prompt-ids", "1,2,3", "--greedy", "--max-new-tokens", "8", "--json")
	m, _, st2 := qt(t, "", "generate", "--model", merged, "--prompt-ids", "1,2,3", "--greedy", "--max-new-tokens", "8", "--json")
	if st1 != 0 || st2 != 0 || a != m || a == base {
		t.Errorf("base, adapter, merged:\n%s%s%s", base, a, m)
	}
	if _, errs, st := qt(t, "", "lora", "--model", dir, "--data", chats, "--out", filepath.Join(tmp, "x"), "--steps", "1", "--modules-to-save", "w1"); st != 1 || !strings.Contains(errs, "only wte and lm_head") {
		t.Fatalf("bad module: %d %s", st, errs)
	}
}

// TestLoraInterruptAndResume: a run interrupted after 2 of 4 steps saves a checkpoint, and
// --resume finishes with the same adapter, byte for byte, as an uninterrupted run.
func TestLoraInterruptAndResume(t *testing.T) {
	dir, tmp, chats := tinyChats(t)
	common := []string{"lora", "--model", dir, "--data", chats, "--steps", "4", "--lora-r", "4", "--lr", "1e-2", "--batch-size", "2", "--lora-dropout", "0.1"}
	straight, resumed := filepath.Join(tmp, "straight"), filepath.Join(tmp, "resumed")
	if _, errs, st := qt(t, "", append(common, "--out", straight)...); st != 0 {
		t.Fatal(errs)
	}
	// The same settings through lora.Run with the command's report, stopped after step 2
	// by the step hook as Ctrl-C would stop it.
	o := lora.DefaultOptions()
	o.ModelDir, o.Data, o.Out = dir, chats, resumed
	o.Train.Steps, o.Train.LoRA.R, o.Train.LR, o.Train.BatchSize, o.Train.LoRA.Dropout = 4, 4, 1e-2, 2, 0.1
	var errb bytes.Buffer
	rep := newTrainReport(&errb, dir, 0)
	h := rep.hooks()
	report := h.OnStep
	h.OnStep = func(r lora.StepResult) error {
		if err := report(r); err != nil || r.Step+1 < 2 {
			return err
		}
		return lora.ErrStop
	}
	res, err := lora.Run(context.Background(), o, h)
	err = rep.done(io.Discard, o, res, err, nil, "qwen-tune lora --resume")
	if ie := (*interrupted)(nil); !errors.As(err, &ie) || ie.status() != 130 || !strings.Contains(err.Error(), "interrupted at step 2 of 4") {
		t.Fatalf("interrupted run: %v %s", err, errb.String())
	}
	if _, err := os.Stat(filepath.Join(resumed, "adapter_model.safetensors")); err == nil {
		t.Fatal("an interrupted run wrote the final adapter")
	}
	if _, errs, st := qt(t, "", append(common, "--out", resumed, "--resume")...); st != 0 || !strings.Contains(errs, "resuming from") {
		t.Fatalf("resume: %d %s", st, errs)
	}
	a := tfile.Read(t, filepath.Join(straight, "adapter_model.safetensors"))
	b := tfile.Read(t, filepath.Join(resumed, "adapter_model.safetensors"))
	if len(a) == 0 || string(a) != string(b) {
		t.Fatal("the resumed adapter differs from the uninterrupted one")
	}
	ma := tfile.Read(t, filepath.Join(straight, "metrics.jsonl"))
	mb := tfile.Read(t, filepath.Join(resumed, "metrics.jsonl"))
	if string(ma) != string(mb) {
		t.Errorf("metrics differ:\n%s\n%s", ma, mb)
	}
	// --init-adapter starts a new run from the finished adapter.
	if _, errs, st := qt(t, "", "lora", "--model", dir, "--data", chats, "--steps", "1", "--out", filepath.Join(tmp, "more"), "--init-adapter", straight); st != 0 {
		t.Fatal(errs)
	}
}

// TestLoraResumeChecksFlags: --resume takes the run's settings, so the flags may be left
// out; a flag that changes the run is refused with its value and the run's; a longer run is
// allowed and said; a directory with no checkpoint starts again from step 0.
func TestLoraResumeChecksFlags(t *testing.T) {
	dir, tmp, chats := tinyChats(t)
	out := filepath.Join(tmp, "run")
	base := []string{"lora", "--model", dir, "--data", chats, "--out", out}
	if _, errs, st := qt(t, "", append(base, "--steps", "3", "--lora-r", "4", "--lr", "1e-2", "--save-every", "0")...); st != 0 {
		t.Fatal(errs)
	}
	_, errs, st := qt(t, "", append(base, "--resume", "--lr", "0.5", "--lora-r", "8", "--targets", "c_attn")...)
	for _, want := range []string{"--lr 0.5 (the run has 0.01)", "--lora-r 8 (the run has 4)", "--targets c_attn (the run has c_attn,c_proj,w1,w2)"} {
		if st != 1 || !strings.Contains(errs, want) {
			t.Errorf("changed flags on --resume: %d %s; want %q", st, errs, want)
		}
	}
	if _, errs, st := qt(t, "", append(base, "--resume", "--steps", "5")...); st != 0 || !strings.Contains(errs, "resume: --steps changed from 3 to 5") || !strings.Contains(errs, "at step 3 of 5") {
		t.Fatalf("a longer run: %d %s", st, errs)
	}
	tfile.Remove(t, filepath.Join(out, "checkpoint-5"))
	if _, errs, st := qt(t, "", append(base, "--resume")...); st != 0 || !strings.Contains(errs, "holds no checkpoint (the run stopped before its first one): starting again from step 0") {
		t.Fatalf("no checkpoint: %d %s", st, errs)
	}
	if _, errs, st := qt(t, "", "lora", "--model", dir, "--data", chats, "--out", filepath.Join(tmp, "new"), "--resume", "--steps", "1"); st != 0 || !strings.Contains(errs, "holds no run to resume: starting a new one") {
		t.Fatalf("--resume of nothing: %d %s", st, errs)
	}
}

// TestAdapterOnGPTQ: a CUDA build runs a GPTQ model whose packed layers carry an adapter on
// the CPU by default, saying why, and refuses --device cuda (the GPU executor folds adapters
// into the weights, which packed weights cannot take); the same model without its adapter,
// or --device cpu, is left alone.
func TestAdapterOnGPTQ(t *testing.T) {
	dir, tmp, chats := tinyChats(t)
	int4 := int4Model(t, dir)
	run := filepath.Join(tmp, "run")
	if _, errs, st := qt(t, "", "lora", "--model", int4, "--data", chats, "--out", run, "--steps", "1", "--lora-r", "4"); st != 0 {
		t.Fatal(errs)
	}
	for _, adapter := range []string{run, ""} {
		op, err := lora.Open(int4, lora.OpenOptions{Adapter: adapter})
		if err != nil {
			t.Fatal(err)
		}
		defer op.Model.Close()
		cpu, err := adapterOnGPTQ(op.Model, "")
		if adapter == "" {
			if cpu != "" || err != nil {
				t.Errorf("without the adapter: %q %v", cpu, err)
			}
			continue
		}
		if err != nil || !strings.Contains(cpu, "a GPTQ layer, and the GPU executor cannot fold an adapter into packed weights") {
			t.Errorf("default device: %q %v", cpu, err)
		}
		if _, err := adapterOnGPTQ(op.Model, "cuda"); err == nil || !strings.Contains(err.Error(), "--device cuda: the adapter applies to transformer.h.0.attn.c_attn") || !strings.Contains(err.Error(), "run it with --device cpu") {
			t.Errorf("--device cuda: %v", err)
		}
		if cpu, err := adapterOnGPTQ(op.Model, "cpu"); cpu != "" || err != nil {
			t.Errorf("--device cpu: %q %v", cpu, err)
		}
	}
}

// TestLoraDeviceCUDAInCPUBuild: lora --device cuda in a binary without CUDA says how to get a
// CUDA build, with special-token rows too (the GPU trains them); an unknown device is refused.
func TestLoraDeviceCUDAInCPUBuild(t *testing.T) {
	if cudaBuild {
		t.Skip("a CUDA build")
	}
	dir := tinyModel(t)
	_, errOut, code := qt(t, "", "lora", "--model", dir, "--data", "x.jsonl", "--out", filepath.Join(t.TempDir(), "o"), "--device", "cuda", "--train-special-tokens")
	if code == 0 || !strings.Contains(errOut, "-tags qtcuda") {
		t.Errorf("--device cuda --train-special-tokens: code %d, stderr %q", code, errOut)
	}
	for dev, want := range map[string]string{"cuda": "-tags qtcuda", "tpu": `--device "tpu"`} {
		_, errOut, code := qt(t, "", "lora", "--model", dir, "--data", "x.jsonl", "--out", filepath.Join(t.TempDir(), "o"), "--device", dev)
		if code == 0 || !strings.Contains(errOut, want) {
			t.Errorf("--device %s: code %d, stderr %q", dev, code, errOut)
		}
	}
}
