package data

import (
	"encoding/json"
	"fmt"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// Record is one pre-tokenized sequence. Labels align with InputIDs (the loss shifts them:
// logits at t predict labels[t+1]); autograd.IgnoreIndex skips a position.
type Record struct {
	InputIDs []int `json:"input_ids"`
	Labels   []int `json:"labels,omitempty"`
}

// parseRecord reads one {"input_ids": [...], "labels": [...]} record. Labels are optional:
// without them every next token counts (labels = input_ids). vocab > 0 checks that every
// id and label is below it.
func parseRecord(text []byte, vocab int) (Record, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(text, &raw); err != nil {
		return Record{}, fmt.Errorf("not a JSON object: %v", err)
	}
	for k := range raw {
		if k != "input_ids" && k != "labels" && k != "attention_mask" {
			return Record{}, fmt.Errorf("unknown key %q (a record has input_ids and optionally labels)", k)
		}
	}
	var rec Record
	ids, ok := raw["input_ids"]
	if !ok {
		return rec, fmt.Errorf("missing \"input_ids\"")
	}
	if err := json.Unmarshal(ids, &rec.InputIDs); err != nil {
		return rec, fmt.Errorf("input_ids must be an array of integers: %v", err)
	}
	if len(rec.InputIDs) == 0 {
		return rec, fmt.Errorf("input_ids is empty")
	}
	for i, id := range rec.InputIDs {
		if id < 0 || vocab > 0 && id >= vocab {
			return rec, fmt.Errorf("input_ids[%d] = %d is outside the vocabulary [0, %d)", i, id, vocab)
		}
	}
	if lb, ok := raw["labels"]; ok && string(lb) != "null" {
		if err := json.Unmarshal(lb, &rec.Labels); err != nil {
			return rec, fmt.Errorf("labels must be an array of integers: %v", err)
		}
		if len(rec.Labels) != len(rec.InputIDs) {
			return rec, fmt.Errorf("labels has %d entries but input_ids has %d; they must align (use -100 for positions without a target)", len(rec.Labels), len(rec.InputIDs))
		}
		for i, l := range rec.Labels {
			if l != autograd.IgnoreIndex && (l < 0 || vocab > 0 && l >= vocab) {
				return rec, fmt.Errorf("labels[%d] = %d is neither -100 nor a token id in [0, %d)", i, l, vocab)
			}
		}
	} else {
		rec.Labels = append([]int(nil), rec.InputIDs...)
	}
	return rec, nil
}

// Targets is how many positions of labels take part in the shifted loss.
func Targets(labels []int) int {
	n := 0
	for _, l := range labels[min(1, len(labels)):] {
		if l != autograd.IgnoreIndex {
			n++
		}
	}
	return n
}

// Windows cuts a long token sequence into windows of at most seqLen tokens for
// sliding-window perplexity. The first window is the first seqLen tokens; each next one ends
// stride tokens later (at most seqLen-1, so its first scored token still has context) and
// scores only the tokens no earlier window scored. Every token after the first is scored
// exactly once, each with up to seqLen-1 tokens of context.
func Windows(ids []int, seqLen, stride int) ([]Record, error) {
	if seqLen < 2 || stride < 1 || stride > seqLen {
		return nil, fmt.Errorf("data: windows need seq-len >= 2 and 1 <= stride <= seq-len (got seq-len %d, stride %d)", seqLen, stride)
	}
	if len(ids) < 2 {
		return nil, fmt.Errorf("data: the text has %d tokens; at least 2 are needed to score one", len(ids))
	}
	step := min(stride, seqLen-1)
	var out []Record
	for prevEnd, end := 0, min(seqLen, len(ids)); ; end = min(prevEnd+step, len(ids)) {
		begin := max(0, end-seqLen)
		labels := make([]int, end-begin)
		for i := range labels {
			labels[i] = autograd.IgnoreIndex
			if begin+i >= prevEnd {
				labels[i] = ids[begin+i]
			}
		}
		out = append(out, Record{InputIDs: ids[begin:end], Labels: labels})
		if end == len(ids) {
			return out, nil
		}
		prevEnd = end
	}
}
