package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestDataReport: data inspect and lora say what happens to the data: invalid UTF-8 is an
// error with file, line and byte offset (or skipped and listed), examples that open with the
// assistant are refused with that reason, and the summary counts empty replies, examples
// cut at --max-len and those dropped because the cut left nothing to train.
func TestDataReport(t *testing.T) {
	long := `{"messages": [{"role": "user", "content": "` + strings.Repeat("word ", 60) + `"}, {"role": "assistant", "content": "ok"}]}` + "\n"
	empty := `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}` + "\n"
	dir, tmp, chats := tinyWith(t, "c.jsonl", "\xef\xbb\xbf"+twoChats+long+empty)
	o, errs, st := qt(t, "", "data", "inspect", "--model", dir, "--data", chats, "--max-len", "40", "--mask", "assistant")
	if st != 0 {
		t.Fatalf("data inspect: %d %s", st, errs)
	}
	for _, want := range []string{"3 examples", "1 cut at --max-len 40 (by up to", "1 dropped", "1 empty assistant reply (" + chats + ":4)", "dropped " + chats + ":3: "} {
		if !strings.Contains(o, want) {
			t.Errorf("summary lacks %q:\n%s", want, o)
		}
	}

	bad := writeFile(t, filepath.Join(tmp, "bad.jsonl"), twoChats+`{"messages": [{"role": "user", "content": "caf`+"\xe9"+`"}, {"role": "assistant", "content": "x"}]}`+"\n")
	_, errs, st = qt(t, "", "data", "inspect", "--model", dir, "--data", bad)
	if st != 1 || !strings.Contains(errs, bad+":3: invalid UTF-8 (byte 0xe9 at byte offset") {
		t.Fatalf("invalid UTF-8: %d %s", st, errs)
	}
	_, errs, st = qt(t, "", "data", "inspect", "--model", dir, "--data", bad, "--on-bad-example", "skip")
	if st != 0 || !strings.Contains(errs, "skipped: data: "+bad+":3: invalid UTF-8") {
		t.Fatalf("skipped invalid UTF-8: %d %s", st, errs)
	}
	first := writeFile(t, filepath.Join(tmp, "first.jsonl"), `{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}`+"\n")
	_, errs, st = qt(t, "", "lora", "--model", dir, "--data", first, "--out", filepath.Join(tmp, "run"), "--steps", "1")
	if st != 1 || !strings.Contains(errs, first+":1: messages: the conversation starts with an assistant turn") {
		t.Fatalf("assistant first: %d %s", st, errs)
	}
}
