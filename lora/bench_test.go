package lora

import (
	"context"
	"math"
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

// TestMeasureTraining: a short benchmark on the tiny model trains every LoRA matrix of the
// four targets (r 8: 8 (in + out) per projection and layer), counts their state as values,
// gradients and two moments in float32, and reports a finite loss and a positive speed.
func TestMeasureTraining(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tiny")
	if _, err := model.WriteTiny(dir, model.DefaultTiny()); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cfg := DefaultConfig()
	cfg.R = 8
	res, err := MeasureTraining(context.Background(), m, TrainBenchOptions{Batch: 2, Seq: 16, Steps: 2, LoRA: cfg, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	c := m.Config
	h, p, mlp := c.HiddenSize, c.ProjectionSize(), c.MLPWidth()
	want := c.NumHiddenLayers * 8 * ((h + 3*p) + (p + h) + 2*(h+mlp) + (mlp + h))
	if res.LoRAParams != want || res.StateBytes != int64(16*want) {
		t.Errorf("%d LoRA parameters and %d state bytes, want %d and %d", res.LoRAParams, res.StateBytes, want, 16*want)
	}
	if math.IsNaN(res.Loss) || res.Loss <= 0 || res.TokensPerSec <= 0 || res.StepSec <= 0 || res.GFLOPs <= 0 {
		t.Errorf("implausible result %+v", res)
	}
	if _, err := MeasureTraining(context.Background(), m, TrainBenchOptions{Batch: 1, Seq: 1, Steps: 1, LoRA: cfg}); err == nil {
		t.Error("a one-token sequence was accepted")
	}
}
