package data

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

const (
	goodLine = `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}`
)

// TestInvalidUTF8: a byte that is not UTF-8 stops the load with the file, line and byte
// offset, or with skip is left out and listed; it is never replaced silently.
func TestInvalidUTF8(t *testing.T) {
	bad := `{"messages": [{"role": "user", "content": "caf` + "\xe9" + `"}, {"role": "assistant", "content": "x"}]}`
	in := goodLine + "\n" + bad + "\n" + goodLine + "\n"
	off := len(goodLine) + 1 + strings.Index(bad, "\xe9")
	_, _, err := Parse([]byte(in), "m.jsonl", BadError, 0)
	var le *LineError
	if err == nil || !errors.As(err, &le) || le.Line != 2 {
		t.Fatalf("error %v, want a LineError on line 2", err)
	}
	for _, want := range []string{"m.jsonl:2", "invalid UTF-8", "byte offset " + strconv.Itoa(off), "UTF-8"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	exs, skipped, err := Parse([]byte(in), "m.jsonl", BadSkip, 0)
	if err != nil || len(exs) != 2 || len(skipped) != 1 || !strings.Contains(skipped[0].Error(), "m.jsonl:2") {
		t.Fatalf("skip: %v, %d examples, skipped %v", err, len(exs), skipped)
	}

	// In a JSON list, the item holding the byte is named by its line.
	list := "[\n " + goodLine + ",\n " + bad + "\n]\n"
	_, _, err = Parse([]byte(list), "q.json", BadError, 0)
	if err == nil || !strings.Contains(err.Error(), "q.json:3") || !strings.Contains(err.Error(), "invalid UTF-8") || !strings.Contains(err.Error(), "item 1") {
		t.Fatalf("list: %v", err)
	}
	exs, skipped, err = Parse([]byte(list), "q.json", BadSkip, 0)
	if err != nil || len(exs) != 1 || len(skipped) != 1 {
		t.Fatalf("list skip: %v, %d examples, skipped %v", err, len(exs), skipped)
	}
	// Outside strings the bad byte breaks the JSON; the message still names the encoding.
	_, _, err = Parse([]byte("[\n\xff]"), "q.json", BadError, 0)
	if err == nil || !strings.Contains(err.Error(), "q.json:2") || !strings.Contains(err.Error(), "invalid UTF-8") {
		t.Fatalf("list syntax: %v", err)
	}
	// UTF-16 says so.
	_, _, err = Parse([]byte("\xff\xfe{\x00"), "w.jsonl", BadError, 0)
	if err == nil || !strings.Contains(err.Error(), "UTF-16") {
		t.Fatalf("utf-16: %v", err)
	}
	// A lone UTF-16 surrogate escape would become U+FFFD on decoding: refused as well.
	lone := goodLine + "\n" + `{"messages": [{"role": "user", "content": "a \\ud800 \ud800 b"}, {"role": "assistant", "content": "x"}]}` + "\n"
	_, _, err = Parse([]byte(lone), "m.jsonl", BadError, 0)
	if err == nil || !strings.Contains(err.Error(), "m.jsonl:2") || !strings.Contains(err.Error(), `\ud800`) || !strings.Contains(err.Error(), "byte offset "+strconv.Itoa(len(goodLine)+1+strings.Index(lone[len(goodLine)+1:], ` \ud800`)+1)) {
		t.Fatalf("lone surrogate: %v", err)
	}
	pair := `{"messages": [{"role": "user", "content": "\ud83d\ude00 \\ud800"}, {"role": "assistant", "content": "x"}]}`
	if exs, _, err := Parse([]byte(pair), "m.jsonl", BadError, 0); err != nil || exs[0].Conv.Messages[0].Content != "\U0001F600 \\ud800" {
		t.Fatalf("surrogate pair: %v %v", err, exs)
	}
	// Pre-tokenized records too.
	_, _, err = Parse([]byte("{\"input_ids\": [1]}\n{\"input_ids\": [1], \"x\xff\": 1}\n"), "t.jsonl", BadError, 10)
	if err == nil || !strings.Contains(err.Error(), "t.jsonl:2") || !strings.Contains(err.Error(), "invalid UTF-8") {
		t.Fatalf("tokenized: %v", err)
	}
}

// TestByteOrderMark: a UTF-8 byte-order mark at the start of a file is accepted.
func TestByteOrderMark(t *testing.T) {
	for name, in := range map[string]string{
		"m.jsonl": "\xef\xbb\xbf" + goodLine + "\n" + goodLine + "\n",
		"q.json":  "\xef\xbb\xbf" + "[" + goodLine + "]",
	} {
		exs, _, err := Parse([]byte(in), name, BadError, 0)
		if err != nil || len(exs) != 2-strings.Count(name, "q") {
			t.Errorf("%s: %v, %d examples", name, err, len(exs))
		}
	}
	exs, _, err := Parse([]byte("\xef\xbb\xbf"+"{\"input_ids\": [1, 2]}\n"), "t.jsonl", BadError, 10)
	if err != nil || len(exs) != 1 || exs[0].Tokens == nil {
		t.Errorf("tokenized: %v %v", err, exs)
	}
}

// TestAssistantFirstRefused: a conversation that opens with the assistant is refused with
// that reason, not shortened silently.
func TestAssistantFirstRefused(t *testing.T) {
	for _, in := range []string{
		`{"conversations": [{"from": "assistant", "value": "hi"}, {"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]}`,
		`{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "hi"}]}`,
		`{"messages": [{"role": "assistant", "content": "hi"}]}`,
	} {
		_, _, err := Parse([]byte(in), "m.jsonl", BadError, 0)
		if err == nil || !strings.Contains(err.Error(), "m.jsonl:1") || !strings.Contains(err.Error(), "starts with an assistant turn") {
			t.Errorf("%s: error %v", in, err)
		}
	}
}

// TestPrepareReports: empty replies are counted; examples cut at the maximum length are
// counted with the largest cut; those that lose every trained token are dropped and listed.
func TestPrepareReports(t *testing.T) {
	tok := demoTokenizer(t)
	conv := func(src, user, reply string) Example {
		return Example{Source: src, Conv: &Conversation{System: "s", Source: src, Messages: []Message{{"user", user}, {"assistant", reply}}}}
	}
	exs := []Example{
		conv("d:1", "short", ""),
		conv("d:2", "short", "ok"),
		conv("d:3", "word word word", strings.Repeat("yes ", 20)), // cut inside the reply
		conv("d:4", strings.Repeat("word ", 40), "ok"),            // cut before the reply: nothing left to train
		{Source: "d:5", Tokens: &Record{InputIDs: []int{1, 2, 3}, Labels: []int{1, 2, 3}}},
	}
	const maxLen = 24
	seqs, st, err := Prepare(tok, exs, MaskAssistant, maxLen)
	if err != nil {
		t.Fatal(err)
	}
	if st.EmptyReplies != 1 {
		t.Errorf("%d empty replies, want 1", st.EmptyReplies)
	}
	if st.Examples != 4 || len(seqs) != 4 || len(st.Dropped) != 1 || !strings.HasPrefix(st.Dropped[0], "d:4") {
		t.Fatalf("examples %d, sequences %d, dropped %q; want 4, 4 and d:4", st.Examples, len(seqs), st.Dropped)
	}
	for _, s := range seqs {
		if s.Source == "d:4" || Targets(s.Labels) == 0 {
			t.Errorf("kept %s with %d trained tokens", s.Source, Targets(s.Labels))
		}
	}
	long3, _ := Render(tok, exs[2].Conv, MaskAssistant)
	long4, _ := Render(tok, exs[3].Conv, MaskAssistant)
	if cut := max(len(long3), len(long4)) - maxLen; st.Truncated != 2 || st.MaxCut != cut {
		t.Errorf("truncated %d, most cut %d; want 2 and %d", st.Truncated, st.MaxCut, cut)
	}
	sum := st.Summary(maxLen)
	for _, want := range []string{"4 examples", "2 cut at --max-len 24 (by up to " + strconv.Itoa(st.MaxCut) + " tokens)", "1 dropped", "1 empty assistant reply", "d:4"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary %q does not contain %q", sum, want)
		}
	}
	// Everything dropped is an error that says what to do.
	if _, _, err := Prepare(tok, exs[3:4], MaskAssistant, maxLen); err == nil || !strings.Contains(err.Error(), "--max-len") {
		t.Errorf("all dropped: %v", err)
	}
}
