package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// evalJSON runs eval --json and returns its result.
func evalJSON(t *testing.T, args ...string) (loss float64, tokens int) {
	t.Helper()
	out, errs, st := qt(t, "", append([]string{"eval", "--json"}, args...)...)
	if st != 0 {
		t.Fatalf("eval %v: %d %s", args, st, errs)
	}
	var res struct {
		Loss   float64
		Tokens int
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("eval output %q: %v", out, err)
	}
	return res.Loss, res.Tokens
}

// TestEvalFormats: eval --data reads every format lora reads and scores the tokens lora
// trains (the same label mask), so an adapter can be measured on held-out chats.
func TestEvalFormats(t *testing.T) {
	dir, tmp, msgs := tinyChats(t)
	convs := writeFile(t, filepath.Join(tmp, "chats.json"), `[
 {"id": "a", "conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello there"}]},
 {"id": "b", "conversations": [{"from": "user", "value": "bye"}, {"from": "assistant", "value": "see you"}]}
]`)
	o, errs, st := qt(t, "", "data", "inspect", "--model", dir, "--data", msgs, "--mask", "assistant")
	m := regexp.MustCompile(`(\d+) trained`).FindAllStringSubmatch(o, -1)
	if st != 0 || len(m) == 0 {
		t.Fatalf("data inspect: %s %s", o, errs)
	}
	trained, _ := strconv.Atoi(m[len(m)-1][1])
	l1, n1 := evalJSON(t, "--model", dir, "--data", msgs, "--mask", "assistant")
	l2, n2 := evalJSON(t, "--model", dir, "--data", convs, "--mask", "assistant")
	if n1 != trained || n2 != trained || l1 != l2 {
		t.Fatalf("messages: loss %g over %d tokens, conversations: %g over %d; lora trains %d tokens", l1, n1, l2, n2, trained)
	}
	if _, nq := evalJSON(t, "--model", dir, "--data", msgs); nq <= n1 {
		t.Errorf("the qwen mask scores %d tokens, not more than the assistant mask's %d", nq, n1)
	}
	ids := writeFile(t, filepath.Join(tmp, "ids.jsonl"), "{\"input_ids\": [10, 20, 30, 40], \"labels\": [-100, -100, 30, 40]}\n")
	if _, n := evalJSON(t, "--model", dir, "--data", ids); n != 2 {
		t.Errorf("pre-tokenized: %d tokens scored, want 2", n)
	}
	run := filepath.Join(tmp, "run")
	if _, errs, st := qt(t, "", "lora", "--model", dir, "--data", msgs, "--out", run, "--steps", "8", "--lora-r", "4", "--lr", "1e-2", "--train-special-tokens"); st != 0 {
		t.Fatal(errs)
	}
	if la, _ := evalJSON(t, "--model", dir, "--adapter", run, "--data", msgs); la >= l1 {
		t.Errorf("with the adapter trained on them the chats score %g, without %g", la, l1)
	}
	bad := writeFile(t, filepath.Join(tmp, "bad.jsonl"), `{"messages": [{"role": "user", "content": "a"}]}`+"\n")
	if _, errs, st := qt(t, "", "eval", "--model", dir, "--data", bad); st != 1 || !strings.Contains(errs, bad+":1: messages: no assistant turn") {
		t.Errorf("bad data: %d %s", st, errs)
	}
}

// TestEvalProgress: a long input reports progress on a non-terminal too.
func TestEvalProgress(t *testing.T) {
	dir, _, text := tinyWith(t, "t.txt", strings.Repeat("The quick brown fox jumps over the lazy dog. ", 60))
	_, errs, st := qt(t, "", "eval", "--model", dir, "--text", text, "--seq-len", "32", "--stride", "16")
	if st != 0 || !strings.Contains(errs, "scored 10%") || !strings.Contains(errs, "scored 100%") {
		t.Fatalf("eval progress: %d %s", st, errs)
	}
}

// TestInterrupt: Ctrl-C (a cancelled context) stops eval and quantize with a message and
// exit status 130, and quantize leaves no model behind.
func TestInterrupt(t *testing.T) {
	dir, tmp, text := tinyWith(t, "t.txt", strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var errb strings.Builder
	st := runContext(ctx, []string{"eval", "--model", dir, "--text", text, "--seq-len", "32"}, strings.NewReader(""), io.Discard, &errb)
	if st != 130 || !strings.Contains(errb.String(), "eval interrupted") {
		t.Errorf("eval: status %d, %q", st, errb.String())
	}
	errb.Reset()
	out := filepath.Join(tmp, "int4")
	st = runContext(ctx, []string{"quantize", "--model", dir, "--text", text, "--out", out, "--nsamples", "2", "--seq-len", "64"}, strings.NewReader(""), io.Discard, &errb)
	if st != 130 || !strings.Contains(errb.String(), "quantize interrupted after 0 of 10 layers") {
		t.Errorf("quantize: status %d, %q", st, errb.String())
	}
	if _, err := os.Stat(filepath.Join(out, "config.json")); err == nil {
		t.Error("an interrupted quantize wrote a model")
	}
}
