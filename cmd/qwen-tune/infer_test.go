package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

// TestGenerateGolden: the documented command prints the reference greedy continuation.
func TestGenerateGolden(t *testing.T) {
	want := golden.ReadGreedy(t)
	out, errs, st := qt(t, "", "generate", "--model", golden.Path(t, "tiny-qwen"), "--prompt-ids", "434,166,165,146,177,337,439,407", "--max-new-tokens", "16", "--greedy", "--json")
	if st != 0 {
		t.Fatalf("generate: status %d: %s", st, errs)
	}
	var got struct {
		IDs    []int   `json:"ids"`
		Text   *string `json:"text"`
		Finish string  `json:"finish_reason"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not JSON: %q", out)
	}
	if !slices.Equal(got.IDs, want.Continuation) || got.Text != nil || got.Finish != "length" {
		t.Fatalf("got %+v, want ids %v without text", got, want.Continuation)
	}
}

func TestGenerateWithVocabulary(t *testing.T) {
	dir := tinyModel(t)
	args := []string{"generate", "--model", dir, "--prompt", "Once upon a time", "--max-new-tokens", "12", "--seed", "5"}
	text, errs, st := qt(t, "", args...)
	if st != 0 {
		t.Fatalf("generate: %s", errs)
	}
	out, errs, st := qt(t, "", append(args, "--json")...)
	if st != 0 {
		t.Fatalf("generate --json: %s", errs)
	}
	var got struct {
		IDs  []int  `json:"ids"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if got.Text+"\n" != text || len(got.IDs) == 0 || len(got.IDs) > 12 {
		t.Fatalf("streamed %q, JSON %+v: the same seed must give the same text", text, got)
	}
}

func TestInferenceBadInput(t *testing.T) {
	dir := tinyModel(t)
	mismatched := filepath.Join(t.TempDir(), "mismatch")
	if err := os.CopyFS(mismatched, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(mismatched, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg = []byte(strings.Replace(string(cfg), `"num_hidden_layers": 2`, `"num_hidden_layers": 3`, 1))
	if err := os.WriteFile(filepath.Join(mismatched, "config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	jsonl := filepath.Join(t.TempDir(), "d.jsonl")
	cases := []struct {
		name  string
		stdin string
		args  []string
		want  string
		setup func()
	}{
		{"ids out of range", "", []string{"generate", "--model", dir, "--prompt-ids", "1,999999"}, "outside the model's vocabulary", nil},
		{"ids not numbers", "", []string{"generate", "--model", dir, "--prompt-ids", "1,two"}, "is not an integer", nil},
		{"both prompts", "", []string{"generate", "--model", dir, "--prompt", "a", "--prompt-ids", "1"}, "exactly one of", nil},
		{"too long", "", []string{"generate", "--model", dir, "--prompt-ids", "1,2,3", "--max-new-tokens", "32765"}, "supports at most 32767", nil},
		{"no model", "", []string{"generate", "--prompt-ids", "1"}, "--model DIR is required", nil},
		{"tensors do not match config", "", []string{"generate", "--model", mismatched, "--prompt-ids", "1"}, "transformer.h.2.ln_1.weight", nil},
		{"bad sampling flag", "", []string{"generate", "--model", dir, "--prompt-ids", "1", "--top-p", "1.5"}, "--top-p 1.5: must be in (0, 1]", nil},
		{"chat needs a vocabulary", "", []string{"chat", "--model", golden.Path(t, "tiny-qwen"), "--prompt", "hi"}, "has no qwen.tiktoken", nil},
		{"malformed dataset line", "", []string{"eval", "--model", dir, "--data", jsonl}, "d.jsonl:3: not a JSON object", func() {
			tfile.Write(t, jsonl, []byte("{\"input_ids\": [1, 2]}\n\n{\"input_ids\": [1,\n"))
		}},
		{"labels of the wrong length", "", []string{"eval", "--model", dir, "--data", jsonl}, "d.jsonl:1: labels has 1 entries but input_ids has 2", func() {
			tfile.Write(t, jsonl, []byte("{\"input_ids\": [1, 2], \"labels\": [2]}\n"))
		}},
		{"nothing scored", "", []string{"eval", "--model", dir, "--data", jsonl}, "no token was scored", func() {
			tfile.Write(t, jsonl, []byte("{\"input_ids\": [1, 2], \"labels\": [-100, -100]}\n"))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.setup != nil {
				c.setup()
			}
			_, errs, st := qt(t, c.stdin, c.args...)
			if st != 1 || !strings.Contains(errs, c.want) || strings.Contains(errs, "goroutine") {
				t.Fatalf("status %d, stderr %q; want status 1 and %q", st, errs, c.want)
			}
		})
	}
}

func TestChatScript(t *testing.T) {
	dir := tinyModel(t)
	out, errs, st := qt(t, "hello\n:history\n:clear\n:history\nsay <|im_end|> please\n:exit\nnot read\n", "chat", "--model", dir, "--max-new-tokens", "6", "--seed", "2")
	if st != 0 {
		t.Fatalf("chat: status %d: %s", st, errs)
	}
	if !strings.Contains(out, "user: hello\nassistant: ") || !strings.Contains(out, "(no conversation yet)") || strings.Contains(out, "not read") {
		t.Fatalf("chat transcript:\n%s\nstderr:\n%s", out, errs)
	}
	out, errs, st = qt(t, "", "chat", "--model", dir, "--prompt", "hi", "--max-new-tokens", "4", "--greedy")
	if st != 0 || strings.Count(out, "\n") < 1 {
		t.Fatalf("chat --prompt: status %d, out %q, err %q", st, out, errs)
	}
}

func TestEvalJSON(t *testing.T) {
	dir := golden.Path(t, "tiny-qwen")
	jsonl := filepath.Join(t.TempDir(), "d.jsonl")
	tfile.Write(t, jsonl, []byte("{\"input_ids\": [434, 166, 165, 146]}\n{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, 3]}\n"))
	out, errs, st := qt(t, "", "eval", "--model", dir, "--data", jsonl, "--json")
	if st != 0 {
		t.Fatalf("eval: %s", errs)
	}
	var res struct {
		Loss, PPL float64
		Tokens    int
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.Tokens != 4 || res.Loss <= 0 || res.PPL <= 1 {
		t.Fatalf("eval result %+v, want 4 tokens and a positive loss", res)
	}
}

// TestEvalText scores a text file in sliding windows; with the stride equal to the window
// minus one, every token after the first is scored once, so the count is the token count - 1.
func TestEvalText(t *testing.T) {
	dir := tinyModel(t)
	text := filepath.Join(t.TempDir(), "t.txt")
	if err := os.WriteFile(text, []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20)), 0o644); err != nil {
		t.Fatal(err)
	}
	ids, errs, st := qt(t, strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20), "tokenize", "--model", dir, "--json", "--special", "none")
	if st != 0 {
		t.Fatal(errs)
	}
	var toks []int
	if err := json.Unmarshal([]byte(ids), &toks); err != nil {
		t.Fatal(err)
	}
	for _, stride := range []string{"31", "16"} {
		out, errs, st := qt(t, "", "eval", "--model", dir, "--text", text, "--seq-len", "32", "--stride", stride, "--json")
		if st != 0 {
			t.Fatalf("eval --text: %s", errs)
		}
		var res struct{ Tokens int }
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatal(err)
		}
		if res.Tokens != len(toks)-1 {
			t.Errorf("stride %s: %d tokens scored, want %d", stride, res.Tokens, len(toks)-1)
		}
	}
}

// TestSelftestWithoutCUDA: the default (pure Go) build says how to get a CUDA build.
func TestSelftestWithoutCUDA(t *testing.T) {
	_, errs, st := qt(t, "", "selftest")
	if st != 1 || !strings.Contains(errs, "-tags qtcuda") {
		t.Fatalf("selftest in a CPU build: status %d, %q", st, errs)
	}
}

// TestInitShapePreset: --shape qwen-7b starts from Qwen-7B's config and explicit flags refine it.
func TestInitShapePreset(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "preset")
	if _, errs, st := qt(t, "", "init", "--tiny", "--shape", "qwen-7b", "--layers", "1", "--hidden", "64", "--heads", "4", "--mlp", "176", "--vocab-ranks", "4096", "--vocab-size", "4352", "--out", dir); st != 0 {
		t.Fatal(errs)
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"seq_length": 8192`, `"num_hidden_layers": 1`, `"hidden_size": 64`, `"vocab_size": 4352`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config.json lacks %s:\n%s", want, b)
		}
	}
}

// TestDeviceFlag: the CPU build runs --device cpu, refuses --device cuda with how to get a
// CUDA build, and rejects other names.
func TestDeviceFlag(t *testing.T) {
	dir := tinyModel(t)
	out, errOut, code := qt(t, "", "generate", "--model", dir, "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--greedy", "--json", "--device", "cpu")
	if code != 0 || !strings.Contains(errOut, "device: cpu") || !strings.Contains(out, `"finish_reason"`) {
		t.Fatalf("--device cpu: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	_, errOut, code = qt(t, "", "generate", "--model", dir, "--prompt-ids", "1,2,3", "--device", "cuda")
	if code == 0 || !strings.Contains(errOut, "-tags qtcuda") {
		t.Fatalf("--device cuda in the CPU build: code %d, stderr %q", code, errOut)
	}
	_, errOut, code = qt(t, "", "chat", "--model", dir, "--prompt", "hi", "--device", "tpu")
	if code == 0 || !strings.Contains(errOut, "use cpu or cuda") {
		t.Fatalf("--device tpu: code %d, stderr %q", code, errOut)
	}
	// lora: TestLoraDeviceCUDAInCPUBuild
	_, errOut, code = qt(t, "", "quantize", "--model", dir, "--device", "cuda")
	if !quantizeOnGPU && (code == 0 || !strings.Contains(errOut, "-tags qtcuda")) {
		t.Fatalf("quantize --device cuda: code %d, stderr %q", code, errOut)
	}
	text := filepath.Join(t.TempDir(), "t.txt")
	tfile.Write(t, text, []byte("some text to score"))
	_, errOut, code = qt(t, "", "eval", "--model", dir, "--text", text, "--seq-len", "8", "--device", "cuda")
	if !cudaBuild && (code == 0 || !strings.Contains(errOut, "-tags qtcuda")) {
		t.Fatalf("eval --device cuda in the CPU build: code %d, stderr %q", code, errOut)
	}
}

// TestServeBadInput: serve refuses a missing model and an address it cannot listen on.
func TestServeBadInput(t *testing.T) {
	if _, errOut, code := qt(t, "", "serve"); code == 0 || !strings.Contains(errOut, "--model DIR is required") {
		t.Fatalf("serve without --model: %d %q", code, errOut)
	}
	dir := tinyModel(t)
	if _, errOut, code := qt(t, "", "serve", "--model", dir, "--addr", "256.1.1.1:80"); code == 0 || !strings.Contains(errOut, "--addr 256.1.1.1:80") {
		t.Fatalf("serve on a bad address: %d %q", code, errOut)
	}
}
