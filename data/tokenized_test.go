package data

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// records parses a JSONL dataset of pre-tokenized records.
func records(t *testing.T, in string) ([]*Record, error) {
	t.Helper()
	exs, _, err := Parse([]byte(in), "d.jsonl", BadError, 10)
	var recs []*Record
	for _, ex := range exs {
		if ex.Tokens == nil {
			t.Fatalf("%q: example %+v is not a record", in, ex)
		}
		recs = append(recs, ex.Tokens)
	}
	return recs, err
}

func TestParseRecords(t *testing.T) {
	recs, err := records(t, "{\"input_ids\": [1, 2, 3]}\n\n{\"input_ids\": [4, 5], \"labels\": [-100, 5]}\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || len(recs[0].Labels) != 3 || recs[0].Labels[2] != 3 || recs[1].Labels[0] != autograd.IgnoreIndex {
		t.Fatalf("records %+v", recs)
	}
	if Targets(recs[0].Labels) != 2 || Targets(recs[1].Labels) != 1 {
		t.Errorf("targets %d %d, want 2 1", Targets(recs[0].Labels), Targets(recs[1].Labels))
	}
	bad := []struct{ in, want string }{
		{"{\"input_ids\": [1, 2], \"labels\": [1]}\n", "d.jsonl:1: labels has 1 entries but input_ids has 2"},
		{"{\"input_ids\": [1]}\n{\"input_ids\": [1, 99]}\n", "d.jsonl:2: input_ids[1] = 99 is outside the vocabulary [0, 10)"},
		{"{\"input_ids\": [1, 2], \"labels\": [-1, 2]}\n", "labels[0] = -1 is neither -100"},
		{"{\"input_ids\": []}\n", "input_ids is empty"},
		{"{\"input_ids\": [1], \"ids\": [1]}\n", "unknown key \"ids\""},
		{"[1, 2]\n", "not a JSON object"},
		{"{\"input_ids\": [1.5]}\n", "input_ids must be an array of integers"},
		{"", "no examples"},
	}
	for _, b := range bad {
		_, err := records(t, b.in)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%q: error %v, want it to contain %q", b.in, err, b.want)
		}
		var le *LineError
		if strings.Contains(b.want, "d.jsonl:") && !errors.As(err, &le) {
			t.Errorf("%q: %T is not a *LineError", b.in, err)
		}
	}
}

// TestWindows: every token after the first is scored exactly once, whatever the stride.
func TestWindows(t *testing.T) {
	ids := make([]int, 23)
	for i := range ids {
		ids[i] = i
	}
	for _, c := range []struct{ seq, stride int }{{8, 8}, {8, 3}, {8, 1}, {30, 5}, {2, 2}} {
		ws, err := Windows(ids, c.seq, c.stride)
		if err != nil {
			t.Fatal(err)
		}
		scored := map[int]int{}
		for k, w := range ws {
			if len(w.InputIDs) > c.seq {
				t.Fatalf("window of %d > %d", len(w.InputIDs), c.seq)
			}
			if k > 0 && w.Labels[0] != autograd.IgnoreIndex {
				t.Fatalf("a window scores its first position, which has no context")
			}
			for i := 1; i < len(w.Labels); i++ {
				if w.Labels[i] != autograd.IgnoreIndex {
					if w.Labels[i] != w.InputIDs[i] {
						t.Fatalf("label %d at a position holding %d", w.Labels[i], w.InputIDs[i])
					}
					scored[w.Labels[i]]++
				}
			}
		}
		for tok := 1; tok < len(ids); tok++ {
			if scored[tok] != 1 {
				t.Errorf("seq %d stride %d: token %d scored %d times", c.seq, c.stride, tok, scored[tok])
			}
		}
	}
	if _, err := Windows(ids, 8, 9); err == nil {
		t.Error("stride > seq-len accepted")
	}
}

// FuzzParseRecords: pre-tokenized records that Parse accepts hold ids and labels inside
// the vocabulary, aligned, from UTF-8 input; a byte-order mark in front changes nothing.
func FuzzParseRecords(f *testing.F) {
	f.Add("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5], \"labels\": [-100, 5]}\n")
	f.Add("{\"input_ids\": [1], \"labels\": null}")
	f.Add("\n")
	f.Add("\xef\xbb\xbf{\"input_ids\": [1, 2]}\n{\"input_ids\": [3], \"x\xff\": 1}")
	f.Fuzz(func(t *testing.T, in string) {
		exs, skipped, err := Parse([]byte(in), "fuzz.jsonl", BadSkip, 50)
		if !strings.HasPrefix(in, "\xef\xbb\xbf") {
			again, skippedAgain, errAgain := Parse([]byte("\xef\xbb\xbf"+in), "fuzz.jsonl", BadSkip, 50)
			if (err == nil) != (errAgain == nil) || err == nil && (len(again) != len(exs) || len(skippedAgain) != len(skipped)) {
				t.Fatalf("a byte-order mark changed the result: %v / %v, %d / %d examples", err, errAgain, len(exs), len(again))
			}
		}
		if err != nil {
			return
		}
		if len(skipped) == 0 && !utf8.ValidString(in) {
			t.Fatalf("accepted every line of input that is not UTF-8")
		}
		for _, ex := range exs {
			r := ex.Tokens
			if r == nil {
				continue
			}
			if len(r.InputIDs) == 0 || len(r.Labels) != len(r.InputIDs) {
				t.Fatalf("accepted record %+v", r)
			}
			for i, id := range r.InputIDs {
				if id < 0 || id >= 50 || r.Labels[i] != autograd.IgnoreIndex && (r.Labels[i] < 0 || r.Labels[i] >= 50) {
					t.Fatalf("accepted out-of-range record %+v", r)
				}
			}
		}
	})
}
