package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestQuantizeCommand(t *testing.T) {
	dir, tmp, text := tinyWith(t, "calib.txt", strings.Repeat("The quick brown fox jumps over the lazy dog; 0123456789. ", 40))
	out := filepath.Join(tmp, "int4")
	// The tiny model's MLP width (176) is no multiple of the default group size 128: without
	// --group-size the largest that works is used, and said.
	o, errs, st := qt(t, "", "quantize", "--model", dir, "--text", text, "--out", out, "--nsamples", "4", "--seq-len", "128")
	if st != 0 || !strings.Contains(o, "worst layers") || !strings.Contains(errs, "group size 16 (the default 128 does not divide") {
		t.Fatalf("quantize: %d %s %s", st, o, errs)
	}
	for _, f := range []string{"config.json", "quantize_config.json", "model.safetensors", "qwen.tiktoken", "generation_config.json", "quantize_report.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("missing %s", f)
		}
	}
	if o, _, st := qt(t, "", "inspect", out); st != 0 || !strings.Contains(o, "4 bits, group size 16") {
		t.Fatalf("inspect: %s", o)
	}
	if o, errs, st := qt(t, "", "chat", "--model", out, "--prompt", "hi", "--max-new-tokens", "6", "--greedy"); st != 0 || !strings.Contains(errs, "device: cpu\n") {
		t.Fatalf("chat on the Int4 model: %s %s", o, errs)
	}
	if _, errs, st := qt(t, "", "generate", "--model", out, "--prompt", "hi", "--device", "cuda"); st == 0 || !strings.Contains(errs, "-tags qtcuda") {
		t.Fatalf("--device cuda on the Int4 model: %d %s", st, errs)
	}
	jsonl := writeFile(t, filepath.Join(tmp, "d.jsonl"), "{\"input_ids\": [10, 20, 30, 40]}\n")
	if o, errs, st := qt(t, "", "eval", "--model", out, "--data", jsonl, "--json"); st != 0 || !strings.Contains(o, "\"tokens\":3") {
		t.Fatalf("eval on the Int4 model: %s %s", o, errs)
	}
	bad := []struct {
		args []string
		want string
	}{
		{[]string{"--model", dir, "--text", text, "--out", filepath.Join(tmp, "a"), "--group-size", "128"}, "--group-size 128: it must divide every quantized layer's input width; it does not divide attn.c_attn, attn.c_proj, mlp.w1, mlp.w2 (64 inputs), mlp.c_proj (176 inputs). Group sizes that work for this model: 16, 8, 4, 2 or -1"},
		{[]string{"--model", dir, "--text", text, "--out", filepath.Join(tmp, "a"), "--nsamples", "100", "--seq-len", "128"}, "--nsamples 100: the data gives 10 windows of --seq-len 128 tokens (1241 tokens in all)"},
		{[]string{"--model", dir, "--text", text, "--out", filepath.Join(tmp, "d"), "--bits", "3"}, "--bits 3: expected 2, 4 or 8"},
		{[]string{"--model", out, "--text", text, "--out", filepath.Join(tmp, "b"), "--group-size", "16"}, "already GPTQ-quantized"},
		{[]string{"--model", dir, "--text", writeFile(t, filepath.Join(tmp, "tiny.txt"), "hi"), "--out", filepath.Join(tmp, "c"), "--group-size", "16"}, "calibration tokens"},
		{[]string{"--model", dir, "--text", text, "--out", out, "--group-size", "16"}, "already holds a model"},
		{[]string{"--model", dir, "--text", text, "--out", filepath.Join(tmp, "d"), "--bits", "5"}, "--bits 5: expected 2, 4 or 8"},
	}
	// An adapter trained on the bf16 model applies to the Int4 one (Q-LoRA layers wrap packed
	// weights), with a note in words that it was trained on another base.
	run := filepath.Join(tmp, "run")
	chats := writeFile(t, filepath.Join(tmp, "chats.jsonl"), twoChats)
	if _, errs, st := qt(t, "", "lora", "--model", dir, "--data", chats, "--out", run, "--steps", "1", "--lora-r", "4"); st != 0 {
		t.Fatal(errs)
	}
	if _, errs, st := qt(t, "", "chat", "--model", out, "--adapter", run, "--prompt", "hi", "--max-new-tokens", "4"); st != 0 || !strings.Contains(errs, "trained on a floating-point model (bfloat16) and this model is a GPTQ 4-bit model") || strings.Contains(errs, "*model.") {
		t.Errorf("adapter on Int4: %d %s", st, errs)
	}
	if help, _, _ := qt(t, "", "quantize", "--help"); !strings.Contains(help, "bits per weight: 2, 4 or 8") || strings.Contains(help, "3 runs") {
		t.Errorf("--bits help:\n%s", help)
	}
	for _, b := range bad {
		_, errs, st := qt(t, "", append([]string{"quantize"}, b.args...)...)
		if st != 1 || !strings.Contains(errs, b.want) {
			t.Errorf("%v: status %d, %q; want %q", b.args, st, errs, b.want)
		}
	}
}
