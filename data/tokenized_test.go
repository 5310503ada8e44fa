package data

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/qwen-tune/qwen-tune/autograd"
)

func TestParseTokenized(t *testing.T) {
	recs, err := ParseTokenized(strings.NewReader("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5], \"labels\": [-100, 5]}\n"), "d.jsonl", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || len(recs[0].Labels) != 3 || recs[0].Labels[2] != 3 || recs[1].Labels[0] != autograd.IgnoreIndex || recs[1].Line != 2 {
		t.Fatalf("records %+v", recs)
	}
	if Targets(recs[0].Labels) != 2 || Targets(recs[1].Labels) != 1 {
		t.Errorf("targets %d %d, want 2 1", Targets(recs[0].Labels), Targets(recs[1].Labels))
	}
	bad := []struct{ in, want string }{
		{"{\"input_ids\": [1]}\n\n{\"input_ids\": [2]}\n", "d.jsonl:2: empty line"},
		{"{\"input_ids\": [1, 2], \"labels\": [1]}\n", "d.jsonl:1: labels has 1 entries but input_ids has 2"},
		{"{\"input_ids\": [1, 99]}\n", "input_ids[1] = 99 is outside the vocabulary [0, 10)"},
		{"{\"input_ids\": [1, 2], \"labels\": [-1, 2]}\n", "labels[0] = -1 is neither -100"},
		{"{\"input_ids\": []}\n", "input_ids is empty"},
		{"{\"ids\": [1]}\n", "unknown key \"ids\""},
		{"[1, 2]\n", "not a JSON object"},
		{"{\"input_ids\": [1.5]}\n", "input_ids must be an array of integers"},
		{"", "no records"},
	}
	for _, b := range bad {
		_, err := ParseTokenized(strings.NewReader(b.in), "d.jsonl", 10)
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

func FuzzParseTokenized(f *testing.F) {
	f.Add("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5], \"labels\": [-100, 5]}\n")
	f.Add("{\"input_ids\": [1], \"labels\": null}")
	f.Add("\n")
	f.Add("\xef\xbb\xbf{\"input_ids\": [1, 2]}\n{\"input_ids\": [3], \"x\xff\": 1}")
	f.Fuzz(func(t *testing.T, in string) {
		recs, err := ParseTokenized(strings.NewReader(in), "fuzz.jsonl", 50)
		// A byte-order mark in front changes nothing.
		if !strings.HasPrefix(in, "\xef\xbb\xbf") {
			again, errAgain := ParseTokenized(strings.NewReader("\xef\xbb\xbf"+in), "fuzz.jsonl", 50)
			if (err == nil) != (errAgain == nil) || len(again) != len(recs) {
				t.Fatalf("a byte-order mark changed the result: %v / %v, %d / %d records", err, errAgain, len(recs), len(again))
			}
		}
		if err != nil {
			return
		}
		if !utf8.ValidString(in) {
			t.Fatalf("accepted input that is not UTF-8")
		}
		for _, r := range recs {
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
