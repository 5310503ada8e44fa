package model

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// benchModel is the model the benchmarks run: $QWEN_TUNE_BENCH_MODEL (for example a random
// model of Qwen-7B's shapes from `qwen-tune init --tiny --shape qwen-7b`), else the embedded
// default tiny model written to a temporary directory.
func benchModel(b *testing.B) *Model {
	b.Helper()
	dir := os.Getenv("QWEN_TUNE_BENCH_MODEL")
	if dir == "" {
		dir = filepath.Join(b.TempDir(), "tiny")
		if _, err := WriteTiny(dir, DefaultTiny()); err != nil {
			b.Fatal(err)
		}
	}
	m, err := Load(dir, LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

// BenchmarkPrefill128 prefills a 128-token prompt; tokens/s is the figure to compare.
func BenchmarkPrefill128(b *testing.B) {
	m := benchModel(b)
	prompt := make([]int, 128)
	for i := range prompt {
		prompt[i] = (i * 7919) % m.Config.VocabSize
	}
	s := m.NewSession(len(prompt))
	defer s.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Reset()
		if _, err := s.Feed(prompt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(prompt))/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkDecode measures one-token steps with the KV cache after a 16-token prompt.
func BenchmarkDecode(b *testing.B) {
	m := benchModel(b)
	prompt := make([]int, 16)
	for i := range prompt {
		prompt[i] = (i * 7919) % m.Config.VocabSize
	}
	s := m.NewSession(len(prompt) + b.N)
	defer s.Close()
	sampler := &Sampler{Greedy: true, RepetitionPenalty: 1}
	b.ResetTimer()
	out, _, err := s.Generate(context.Background(), prompt, GenerateOptions{MaxNewTokens: b.N, Sampler: sampler}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(out))/b.Elapsed().Seconds(), "tokens/s")
}
