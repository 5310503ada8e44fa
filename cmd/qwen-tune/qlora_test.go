package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

// int4Model quantizes the tiny model dir to 4 bits, group size 16 (round-to-nearest).
func int4Model(t *testing.T, dir string) string {
	t.Helper()
	tmp := t.TempDir()
	text := writeFile(t, filepath.Join(tmp, "calib.txt"), strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20))
	out := filepath.Join(tmp, "int4")
	if o, errs, st := qt(t, "", "quantize", "--model", dir, "--text", text, "--out", out, "--group-size", "16", "--nsamples", "2", "--seq-len", "64", "--method", "rtn"); st != 0 {
		t.Fatalf("quantize: %s %s", o, errs)
	}
	return out
}

// TestQLoRACommand: lora trains on a GPTQ Int4 model (with --train-special-tokens and with
// --modules-to-save), chat, generate and eval apply the adapter to it on the CPU, an adapter
// of the other base applies with a notice, and what cannot work is refused in words:
// --device cuda (in this build; TestAdapterOnGPTQ for a CUDA build), merging into packed
// weights, and 3-bit codes.
func TestQLoRACommand(t *testing.T) {
	dir, tmp, chats := tinyChats(t)
	int4 := int4Model(t, dir)
	run := filepath.Join(tmp, "run")
	if _, errs, st := qt(t, "", "lora", "--model", int4, "--data", chats, "--out", run, "--steps", "3", "--lora-r", "4", "--lr", "1e-2", "--train-special-tokens"); st != 0 || !strings.Contains(errs, "base: a GPTQ 4-bit model (group size 16), frozen and kept packed") {
		t.Fatalf("lora on the Int4 model: %d %s", st, errs)
	}
	if b := string(tfile.Read(t, filepath.Join(run, "adapter_config.json"))); !strings.Contains(b, `"qwen_tune_base": {`) || !strings.Contains(b, `"quant_method": "gptq"`) {
		t.Errorf("adapter_config.json does not record the GPTQ base:\n%s", b)
	}
	if o, errs, st := qt(t, "", "inspect", run); st != 0 || !strings.Contains(o, "base kind") || !strings.Contains(o, "a GPTQ 4-bit model (group size 16)") {
		t.Errorf("inspect of the adapter: %d %s %s", st, o, errs)
	}
	o, errs, st := qt(t, "", "chat", "--model", int4, "--adapter", run, "--prompt", "hi", "--max-new-tokens", "4", "--greedy")
	if st != 0 || !strings.Contains(errs, "device: cpu\n") || strings.Contains(errs, "note:") {
		t.Fatalf("chat with the adapter on the Int4 model: %d %s %s", st, o, errs)
	}
	jsonl := writeFile(t, filepath.Join(tmp, "d.jsonl"), "{\"input_ids\": [10, 20, 30, 40]}\n")
	if o, errs, st := qt(t, "", "eval", "--model", int4, "--adapter", run, "--data", jsonl, "--json"); st != 0 || !strings.Contains(o, "\"tokens\":3") {
		t.Fatalf("eval with the adapter on the Int4 model: %s %s", o, errs)
	}
	plain, _, _ := qt(t, "", "generate", "--model", int4, "--prompt-ids", "1,2,3", "--greedy", "--max-new-tokens", "8", "--json")
	adapted, errs, st := qt(t, "", "generate", "--model", int4, "--adapter", run, "--prompt-ids", "1,2,3", "--greedy", "--max-new-tokens", "8", "--json")
	if st != 0 || adapted == plain {
		t.Errorf("generate with and without the adapter: %d %q %q %s", st, plain, adapted, errs)
	}
	_, errs, st = qt(t, "", "generate", "--model", dir, "--adapter", run, "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--json")
	if st != 0 || !strings.Contains(errs, "note: the adapter was trained on a GPTQ 4-bit model (group size 16) and this model is a floating-point model (bfloat16)") {
		t.Errorf("the Int4 adapter on the bf16 model: %d %s", st, errs)
	}

	floatRun := filepath.Join(tmp, "float-run")
	if _, errs, st := qt(t, "", "lora", "--model", dir, "--data", chats, "--out", floatRun, "--steps", "1", "--lora-r", "4"); st != 0 {
		t.Fatal(errs)
	}
	_, errs, st = qt(t, "", "generate", "--model", int4, "--adapter", floatRun, "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--json")
	if st != 0 || !strings.Contains(errs, "note: the adapter was trained on a floating-point model (bfloat16) and this model is a GPTQ 4-bit model (group size 16)") {
		t.Errorf("the bf16 adapter on the Int4 model: %d %s", st, errs)
	}

	// the other data formats and options, starting from the bf16 adapter
	tokens := writeFile(t, filepath.Join(tmp, "ids.jsonl"), "{\"input_ids\": [1, 2, 3, 4, 5, 6], \"labels\": [-100, -100, 3, 4, 5, 6]}\n{\"input_ids\": [7, 8, 9, 10], \"labels\": [-100, 8, 9, 10]}\n{\"input_ids\": [11, 12, 13], \"labels\": [-100, 12, 13]}\n")
	initRun := filepath.Join(tmp, "init-run")
	if _, errs, st := qt(t, "", "lora", "--model", int4, "--data", tokens, "--out", initRun, "--steps", "2", "--init-adapter", floatRun,
		"--pack", "--max-len", "16", "--val-ratio", "0.3", "--batch-size", "1", "--grad-accum", "2", "--eval-every", "1"); st != 0 {
		t.Fatalf("lora on the Int4 model from the bf16 adapter: %s", errs)
	}
	if b := string(tfile.Read(t, filepath.Join(initRun, "adapter_config.json"))); !strings.Contains(b, `"quant_method": "gptq"`) {
		t.Errorf("an adapter trained further on the Int4 model does not record it:\n%s", b)
	}

	saved := filepath.Join(tmp, "saved")
	if _, errs, st := qt(t, "", "lora", "--model", int4, "--data", chats, "--out", saved, "--steps", "2", "--lora-r", "4", "--modules-to-save", "lm_head"); st != 0 {
		t.Fatalf("--modules-to-save on the Int4 model: %s", errs)
	}
	if _, errs, st := qt(t, "", "generate", "--model", int4, "--adapter", saved, "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--json"); st != 0 {
		t.Fatalf("an adapter with lm_head on the Int4 model: %s", errs)
	}

	three := filepath.Join(tmp, "int3")
	if err := os.CopyFS(three, os.DirFS(int4)); err != nil {
		t.Fatal(err)
	}
	q := strings.Replace(string(tfile.Read(t, filepath.Join(three, "quantize_config.json"))), `"bits": 4`, `"bits": 3`, 1)
	writeFile(t, filepath.Join(three, "quantize_config.json"), q)
	bad := []struct {
		args []string
		want string
	}{
		{[]string{"lora", "--model", int4, "--data", chats, "--out", filepath.Join(tmp, "gpu"), "--device", "cuda"}, "-tags qtcuda"},
		{[]string{"generate", "--model", int4, "--adapter", run, "--prompt-ids", "1,2,3", "--device", "cuda"}, "-tags qtcuda"},
		{[]string{"merge", "--model", int4, "--adapter", run, "--out", filepath.Join(tmp, "merged")}, "then quantize the result again"},
		{[]string{"lora", "--model", three, "--data", chats, "--out", filepath.Join(tmp, "three")}, "runs 2-, 4- and 8-bit GPTQ layers only"},
	}
	for _, b := range bad {
		if _, errs, st := qt(t, "", b.args...); st != 1 || !strings.Contains(errs, b.want) {
			t.Errorf("%v: status %d, %q; want %q", b.args, st, errs, b.want)
		}
	}
}
