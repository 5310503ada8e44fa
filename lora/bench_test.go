package lora

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/examples"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// BenchmarkTrainStep times LoRA optimizer steps with Qwen's recipe (r 64 on every target,
// batch 4) of $QWEN_TUNE_BENCH_MODEL (or the tiny default model) on $QWEN_TUNE_BENCH_DATA
// (any file lora reads; the example chats when unset), cut to $QWEN_TUNE_BENCH_MAX_LEN tokens
// (512 when unset). tokens/s counts the real tokens processed.
func BenchmarkTrainStep(b *testing.B) {
	dir := os.Getenv("QWEN_TUNE_BENCH_MODEL")
	if dir == "" {
		dir = filepath.Join(b.TempDir(), "tiny")
		if _, err := model.WriteTiny(dir, model.DefaultTiny()); err != nil {
			b.Fatal(err)
		}
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	tok, err := tokenizer.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	raw, name := examples.Chat, "chat.jsonl"
	if f := os.Getenv("QWEN_TUNE_BENCH_DATA"); f != "" {
		name = f
		if raw, err = os.ReadFile(name); err != nil {
			b.Fatal(err)
		}
	}
	maxLen := 512
	if s := os.Getenv("QWEN_TUNE_BENCH_MAX_LEN"); s != "" {
		if maxLen, err = strconv.Atoi(s); err != nil {
			b.Fatalf("QWEN_TUNE_BENCH_MAX_LEN: %v", err)
		}
	}
	exs, _, err := data.Parse(raw, name, data.BadError, m.Config.VocabSize)
	if err != nil {
		b.Fatal(err)
	}
	seqs, _, err := data.Prepare(tok, exs, data.MaskQwen, maxLen)
	if err != nil {
		b.Fatal(err)
	}
	cfg := DefaultTrainConfig()
	cfg.BatchSize, cfg.Steps = 4, b.N
	a, err := Apply(m, cfg.LoRA, 1)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := NewTrainer(m, a, a.Params(), cfg, seqs, nil, tok.EndOfTextID())
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	seen := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := tr.TrainStep(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		seen += r.Seen
	}
	b.ReportMetric(float64(seen)/b.Elapsed().Seconds(), "tokens/s")
}
