package lora

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// stopRate fine-tunes a fresh copy of a base model on chat data and returns the fraction of
// held-out prompts whose greedy reply ends with <|im_end|>.
func stopRate(t *testing.T, dir string, train []data.Sequence, heldOut []string, special bool) float64 {
	t.Helper()
	op, err := Open(dir, OpenOptions{NeedTokenizer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	m, tok := op.Model, op.Tok
	cfg := DefaultTrainConfig()
	cfg.LoRA.R, cfg.LoRA.Alpha, cfg.LoRA.Dropout = 16, 32, 0
	cfg.LR, cfg.Steps, cfg.BatchSize, cfg.WarmupSteps, cfg.MaxGradNorm = 5e-3, 150, 4, 10, 5
	cfg.Mask, cfg.TrainSpecialTokens = string(data.MaskAssistant), special
	a, err := Apply(m, cfg.LoRA, cfg.Seed)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := AddSpecialTokens(m, tok, special)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(m, a, append(a.Params(), sp.Params()...), cfg, train, nil, tok.EndOfTextID())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for !tr.Done() {
		if _, err := tr.TrainStep(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ended := 0
	for _, q := range heldOut {
		ids, _ := tok.ChatPrompt(tokenizer.DefaultSystem, nil, q, 6144)
		s := m.NewSession(len(ids) + 32)
		_, reason, err := s.Generate(context.Background(), ids, model.GenerateOptions{MaxNewTokens: 32, Stop: tok.StopIDs(), Sampler: &model.Sampler{Greedy: true, RepetitionPenalty: 1}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if reason == model.StopToken && s.LastStop() == tok.IMEndID() {
			ended++
		}
		s.Close()
	}
	return float64(ended) / float64(len(heldOut))
}

// TestBaseModelLearnsToStop: a base model whose special-token rows were never trained does
// not learn to end replies with <|im_end|> from LoRA alone; with --train-special-tokens it
// does on prompts it never saw.
func TestBaseModelLearnsToStop(t *testing.T) {
	if testing.Short() {
		t.Skip("trains two models (about 30 s)")
	}
	dir := filepath.Join(t.TempDir(), "base")
	o := model.DefaultTiny()
	o.VocabRanks, o.UntrainedSpecials = 4096, true
	if _, err := model.WriteTiny(dir, o); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	words := []string{"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"}
	var exs []data.Example
	var heldOut []string
	for a := 0; a < 10; a++ {
		for b := 0; b < 10; b++ {
			q := fmt.Sprintf("What is %s plus %s?", words[a], words[b])
			if (a*10+b)%5 == 3 {
				heldOut = append(heldOut, q)
				continue
			}
			c := &data.Conversation{System: tokenizer.DefaultSystem, Messages: []data.Message{{Role: "user", Content: q}, {Role: "assistant", Content: fmt.Sprintf("%s plus %s is %s.", words[a], words[b], words[a+b])}}}
			exs = append(exs, data.Example{Conv: c})
		}
	}
	train, _, err := data.Prepare(tok, exs, data.MaskAssistant, 128)
	if err != nil {
		t.Fatal(err)
	}
	without := stopRate(t, dir, train, heldOut, false)
	with := stopRate(t, dir, train, heldOut, true)
	t.Logf("held-out replies ending with <|im_end|>: %.0f%% without --train-special-tokens, %.0f%% with (%d prompts)", 100*without, 100*with, len(heldOut))
	// What the README states: 100% with --train-special-tokens, 0% without.
	if with != 1 {
		t.Errorf("with special-token training %.0f%% of held-out replies end with <|im_end|>; want 100%%", 100*with)
	}
	if without != 0 {
		t.Errorf("without special-token training %.0f%% of held-out replies end with <|im_end|>; want 0%%", 100*without)
	}
}
