package lora

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/examples"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// BenchmarkTrainStep times LoRA optimizer steps with Qwen's recipe (r 64 on every target,
// batch 4) on the example chats: $QWEN_TUNE_BENCH_MODEL, or the tiny default model.
// tokens/s counts the real tokens processed.
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
	exs, _, err := data.Parse(examples.Chat, "chat.jsonl", data.BadError, 0)
	if err != nil {
		b.Fatal(err)
	}
	seqs, _, err := data.Prepare(tok, exs, data.MaskQwen, 512)
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
