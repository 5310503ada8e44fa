package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

// qt runs the command line in-process and returns stdout, stderr and the exit status.
func qt(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	status := run(args, strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), status
}

func tinyModel(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tiny")
	if out, errs, st := qt(t, "", "init", "--tiny", "--out", dir, "--vocab-ranks", "4096"); st != 0 {
		t.Fatalf("init: %s %s", out, errs)
	}
	return dir
}

// writeFile writes content to path and returns path.
func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	tfile.Write(t, path, []byte(content))
	return path
}

// twoChats is a dataset of two conversations, one in each chat format lora reads.
const twoChats = `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
{"conversations": [{"from": "user", "value": "bye"}, {"from": "assistant", "value": "see you"}]}
`

// tinyWith makes the tiny model and a scratch directory holding content as the file name.
func tinyWith(t *testing.T, name, content string) (dir, tmp, path string) {
	t.Helper()
	dir, tmp = tinyModel(t), t.TempDir()
	return dir, tmp, writeFile(t, filepath.Join(tmp, name), content)
}

// tinyChats is tinyWith twoChats as chats.jsonl.
func tinyChats(t *testing.T) (dir, tmp, chats string) {
	t.Helper()
	return tinyWith(t, "chats.jsonl", twoChats)
}

// tinyRun trains the tiny model on tinyChats' data into tmp/run with lora's flags.
func tinyRun(t *testing.T, flags ...string) (dir, tmp, chats, run string) {
	t.Helper()
	dir, tmp, chats = tinyChats(t)
	run = filepath.Join(tmp, "run")
	if _, errs, st := qt(t, "", append([]string{"lora", "--model", dir, "--data", chats, "--out", run}, flags...)...); st != 0 {
		t.Fatal(errs)
	}
	return dir, tmp, chats, run
}

func TestInitInspectTokenize(t *testing.T) {
	dir := tinyModel(t)
	out, errs, st := qt(t, "", "inspect", "--json", dir)
	if st != 0 {
		t.Fatalf("inspect: %s", errs)
	}
	var r checkpoints.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("inspect --json is not one JSON object: %v\n%s", err, out)
	}
	if r.Kind != "model" || r.Config.Vocab != 4352 || !r.Tokenizer || r.Parameters == 0 || r.DTypes["BF16"] != r.TotalBytes {
		t.Fatalf("report %+v", r)
	}
	if out, _, st := qt(t, "", "inspect", dir); st != 0 || !strings.Contains(out, "QWenLMHeadModel") || !strings.Contains(out, "qwen.tiktoken present") {
		t.Fatalf("inspect text:\n%s", out)
	}

	text := "Hello <|im_end|> 世界"
	out, errs, st = qt(t, text, "tokenize", "--model", dir, "--json")
	if st != 0 {
		t.Fatalf("tokenize: %s", errs)
	}
	var ids []int
	if err := json.Unmarshal([]byte(out), &ids); err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("--json output is not one JSON array: %q", out)
	}
	if !contains(ids, 4096+2) {
		t.Errorf("<|im_end|> (id 4098) not parsed: %v", ids)
	}
	out, _, _ = qt(t, text, "tokenize", "--model", dir, "--json", "--special", "none")
	var plain []int
	if err := json.Unmarshal([]byte(out), &plain); err != nil {
		t.Fatalf("--special none: output %q: %v", out, err)
	}
	if contains(plain, 4098) {
		t.Errorf("--special none parsed <|im_end|>: %v", plain)
	}
	// Decoding gives the text back.
	js, err := json.Marshal(ids)
	if err != nil {
		t.Fatal(err)
	}
	if out, errs, st := qt(t, string(js), "tokenize", "--model", dir, "--decode"); st != 0 || out != text {
		t.Fatalf("decode: %q %s", out, errs)
	}
}

func contains(ids []int, id int) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func TestBadInputGivesClearErrors(t *testing.T) {
	dir := tinyModel(t)
	broken := t.TempDir()
	tfile.Write(t, filepath.Join(broken, "qwen.tiktoken"), []byte("IQ== 0\nnot-a-line\n"))
	cases := []struct {
		name, stdin string
		args        []string
		want        string
	}{
		{"invalid utf-8", "ok \xff\xfe", []string{"tokenize", "--model", dir}, "not valid UTF-8 (first bad byte at offset 3)"},
		{"bad vocabulary line", "x", []string{"tokenize", "--model", broken}, "qwen.tiktoken line 2"},
		{"missing vocabulary", "x", []string{"tokenize", "--model", t.TempDir()}, "must hold qwen.tiktoken"},
		{"unknown special", "x", []string{"tokenize", "--model", dir, "--special", "<|nope|>"}, "is not a special token"},
		{"decode garbage", "[1, \"a\"]", []string{"tokenize", "--model", dir, "--decode"}, "JSON array of integers"},
		{"decode out of range", "[999999]", []string{"tokenize", "--model", dir, "--decode"}, "outside the vocabulary"},
		{"inspect nothing", "", []string{"inspect", t.TempDir()}, "config.json"},
		{"init existing", "", []string{"init", "--tiny", "--out", dir}, "already holds"},
		{"init without tiny", "", []string{"init", "--out", t.TempDir()}, "--tiny"},
	}
	for _, c := range cases {
		_, errs, st := qt(t, c.stdin, c.args...)
		if st != 1 || !strings.Contains(errs, c.want) || strings.Contains(errs, "goroutine") {
			t.Errorf("%s: status %d, stderr %q; want status 1 and %q", c.name, st, errs, c.want)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"inspect", "--help"}, {"tokenize", "--help"}, {"init", "--help"}} {
		out, _, st := qt(t, "", args...)
		if st != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%v: status %d\n%s", args, st, out)
		}
	}
	if out, _, st := qt(t, "", "--version"); st != 0 || !strings.Contains(out, "qwen-tune version") {
		t.Errorf("--version: %q", out)
	}
}
