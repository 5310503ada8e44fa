package model

import (
	"context"
	"math/rand/v2"
	"time"
)

// Throughput is one generation benchmark: a random prompt prefilled at once, then greedy
// decoding of new tokens one at a time with the KV cache.
type Throughput struct {
	PromptTokens  int     `json:"prompt_tokens"`
	NewTokens     int     `json:"new_tokens"`
	PrefillSec    float64 `json:"prefill_s"`
	PrefillTokS   float64 `json:"prefill_tokens_per_s"`
	DecodeSec     float64 `json:"decode_s"`
	DecodeTokS    float64 `json:"decode_tokens_per_s"`
	KVCacheBytes  int64   `json:"kv_cache_bytes"`
	PeakRSSBytes  int64   `json:"peak_rss_bytes"`
	WeightsBytes  int64   `json:"weights_bytes"`
	LoadSec       float64 `json:"load_s,omitempty"`
	LoadRSSBytes  int64   `json:"load_peak_rss_bytes,omitempty"`
	PrefillRounds int     `json:"prefill_rounds"`
}

// MeasureThroughput prefills promptLen random ids (rounds times, keeping the fastest) and
// decodes newTokens greedily.
func MeasureThroughput(m *Model, promptLen, newTokens, rounds int, seed uint64) (Throughput, error) {
	rng := rand.New(rand.NewPCG(seed, 1))
	prompt := make([]int, promptLen)
	for i := range prompt {
		prompt[i] = rng.IntN(m.Config.VocabSize)
	}
	res := Throughput{PromptTokens: promptLen, NewTokens: newTokens, WeightsBytes: WeightBytes(m.Config), PrefillRounds: max(rounds, 1)}
	s := m.NewSession(promptLen + newTokens)
	defer s.Close()
	for r := 0; r < res.PrefillRounds; r++ {
		s.Reset()
		start := time.Now()
		if _, err := s.Feed(prompt); err != nil {
			return res, err
		}
		if d := time.Since(start).Seconds(); r == 0 || d < res.PrefillSec {
			res.PrefillSec = d
		}
	}
	res.PrefillTokS = float64(promptLen) / res.PrefillSec
	if newTokens > 0 {
		sampler := &Sampler{Greedy: true, RepetitionPenalty: 1}
		start := time.Now()
		// The prompt is in the cache: Generate reuses all but its last token, which it feeds
		// again as a one-token step, so newTokens tokens cost newTokens one-token steps.
		out, _, err := s.Generate(context.Background(), prompt, GenerateOptions{MaxNewTokens: newTokens, Sampler: sampler}, nil)
		if err != nil {
			return res, err
		}
		res.DecodeSec = time.Since(start).Seconds()
		res.NewTokens = len(out)
		res.DecodeTokS = float64(res.NewTokens) / res.DecodeSec
	}
	res.KVCacheBytes = s.CacheBytes()
	res.PeakRSSBytes = PeakRSS()
	return res, nil
}
