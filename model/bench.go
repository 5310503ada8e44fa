package model

import (
	"context"

	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/internal/matmul"
	"github.com/qwen-tune/qwen-tune/internal/vecmath"
)

// BenchOptions say what MeasureThroughput runs.
type BenchOptions struct {
	PromptLen   int    // tokens prefilled at once
	NewTokens   int    // tokens decoded one at a time, greedily
	DecodeAfter int    // positions already in the cache when decoding starts (at least 1)
	Rounds      int    // prefill repetitions; the fastest counts
	Cache       int    // KV cache capacity in positions (0: what the runs need)
	Seed        uint64 // of the random prompt
	Profile     bool   // time every instruction of the device programs
}

// Throughput is one generation benchmark: a random prompt prefilled at once, then greedy
// decoding of new tokens one at a time with the KV cache.
type Throughput struct {
	Device       string  `json:"device"`
	PromptTokens int     `json:"prompt_tokens"`
	NewTokens    int     `json:"new_tokens"`
	DecodeAfter  int     `json:"decode_after"`
	PrefillSec   float64 `json:"prefill_s"`
	PrefillTokS  float64 `json:"prefill_tokens_per_s"`
	DecodeSec    float64 `json:"decode_s"`
	DecodeTokS   float64 `json:"decode_tokens_per_s"`
	KVCacheBytes int64   `json:"kv_cache_bytes"`
	CachePos     int     `json:"kv_cache_positions"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
	PeakDevBytes int64   `json:"peak_device_bytes,omitempty"`
	// device memory of the activations of the largest program (the prefill's, if any)
	ActivationBytes int64   `json:"activation_bytes,omitempty"`
	WeightsBytes    int64   `json:"weights_bytes"`
	CopyGBs         float64 `json:"copy_gb_per_s"`             // memory copy bandwidth, read + write counted
	FloorTokS       float64 `json:"decode_floor_tokens_per_s"` // copy bandwidth / weight bytes
	FloorFraction   float64 `json:"decode_fraction_of_floor"`
	LoadSec         float64 `json:"load_s,omitempty"`
	LoadRSSBytes    int64   `json:"load_peak_rss_bytes,omitempty"`
	PrefillRounds   int     `json:"prefill_rounds"`
	// on the CPU: the matrix product's micro-kernel (avx512, avx2 or pure Go) and the
	// multiply-add peak of all threads it is measured against
	CPUKernel  string  `json:"cpu_kernel,omitempty"`
	FMAPeakGFs float64 `json:"cpu_fma_peak_gflops,omitempty"`
	// on the CPU: the code of the vector exponential and sigmoid (avx2 or pure Go)
	CPUVectorMath string `json:"cpu_vector_math,omitempty"`
	DecodeStats   string `json:"decode_program,omitempty"`
	// GPU time per kind of instruction (Profile): of the prefill and of one decode step
	PrefillProfile []autograd.OpTime `json:"prefill_profile,omitempty"`
	DecodeProfile  []autograd.OpTime `json:"decode_profile,omitempty"`
}

// MeasureThroughput prefills o.PromptLen random ids (o.Rounds times, keeping the fastest),
// decodes o.NewTokens greedily after o.DecodeAfter positions, and measures the memory copy
// bandwidth of where the model runs: every weight read once per token bounds decoding at
// bandwidth / weight bytes.
func MeasureThroughput(m *Model, o BenchOptions) (_ Throughput, err error) {
	rng := rand.New(rand.NewPCG(o.Seed, 1))
	o.DecodeAfter = max(o.DecodeAfter, 1)
	prompt := make([]int, max(o.PromptLen, o.DecodeAfter))
	for i := range prompt {
		prompt[i] = rng.IntN(m.Config.VocabSize)
	}
	res := Throughput{Device: "cpu", PromptTokens: o.PromptLen, NewTokens: o.NewTokens, DecodeAfter: o.DecodeAfter, WeightsBytes: WeightBytes(m.Config), PrefillRounds: max(o.Rounds, 1)}
	if m.Exec != nil {
		res.Device = m.Exec.Name()
	}
	capacity := max(o.Cache, o.PromptLen, o.DecodeAfter+o.NewTokens)
	res.CachePos = capacity
	s := m.NewSession(capacity)
	defer func() {
		if cerr := s.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if o.PromptLen > 0 {
		if m.Exec != nil { // compile and upload the weights before timing
			if _, err := s.Feed(prompt[:o.PromptLen]); err != nil {
				return res, err
			}
		}
		for r := 0; r < res.PrefillRounds; r++ {
			s.Reset()
			start := time.Now()
			if _, err := s.Feed(prompt[:o.PromptLen]); err != nil {
				return res, err
			}
			if d := time.Since(start).Seconds(); r == 0 || d < res.PrefillSec {
				res.PrefillSec = d
			}
		}
		res.PrefillTokS = float64(o.PromptLen) / res.PrefillSec
	}
	if o.NewTokens > 0 {
		sampler := &Sampler{Greedy: true, RepetitionPenalty: 1}
		decode := func(n int) (int, float64, error) {
			s.Reset()
			if o.DecodeAfter > 1 {
				if _, err := s.Feed(prompt[:o.DecodeAfter-1]); err != nil {
					return 0, 0, err
				}
			}
			// Generate reuses the cached prefix and feeds the last prompt token as a one-token
			// step, so n new tokens cost n one-token steps.
			start := time.Now()
			out, _, err := s.Generate(context.Background(), prompt[:o.DecodeAfter], GenerateOptions{MaxNewTokens: n, Sampler: sampler}, nil)
			return len(out), time.Since(start).Seconds(), err
		}
		if m.Exec != nil {
			if _, _, err := decode(2); err != nil { // compile the one-token graph
				return res, err
			}
		}
		n, sec, err := decode(o.NewTokens)
		if err != nil {
			return res, err
		}
		res.NewTokens, res.DecodeSec = n, sec
		res.DecodeTokS = float64(n) / sec
	}
	res.DecodeStats = s.DecodeStats()
	if o.Profile && m.Exec != nil {
		var err error
		if o.NewTokens > 0 {
			if res.DecodeProfile, err = s.Profile(false, 20); err != nil {
				return res, err
			}
		}
		if o.PromptLen > 1 {
			s.Reset()
			if _, err := s.Feed(prompt[:o.PromptLen]); err != nil {
				return res, err
			}
			s.Reset()
			if res.PrefillProfile, err = s.Profile(true, 3); err != nil {
				return res, err
			}
		}
	}
	res.KVCacheBytes = s.CacheBytes()
	res.ActivationBytes = s.ActivationBytes()
	res.PeakRSSBytes = PeakRSS()
	if m.Exec != nil {
		_, res.PeakDevBytes = m.Exec.Memory()
		bw, err := m.Exec.CopyBandwidth()
		if err != nil {
			return res, err
		}
		res.CopyGBs = bw
	} else {
		res.CopyGBs = HostCopyBandwidth()
		res.CPUKernel, res.FMAPeakGFs = matmul.Kernel(), matmul.FMAPeak(runtime.GOMAXPROCS(0))
		res.CPUVectorMath = vecmath.Kernel()
	}
	res.FloorTokS = res.CopyGBs * 1e9 / float64(res.WeightsBytes)
	if res.FloorTokS > 0 && res.DecodeTokS > 0 {
		res.FloorFraction = res.DecodeTokS / res.FloorTokS
	}
	return res, nil
}

// HostCopyBandwidth is the host's memory copy bandwidth in GB/s (bytes read plus bytes
// written), copying 256 MiB with one goroutine per thread, the best of three.
func HostCopyBandwidth() float64 {
	const size = 256 << 20
	src, dst := make([]byte, size), make([]byte, size)
	for i := range src {
		src[i] = byte(i)
	}
	workers := runtime.GOMAXPROCS(0)
	best := 0.0
	for r := 0; r < 3; r++ {
		start := time.Now()
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				lo, hi := size*w/workers, size*(w+1)/workers
				copy(dst[lo:hi], src[lo:hi])
			}(w)
		}
		wg.Wait()
		best = max(best, 2*size/time.Since(start).Seconds()/1e9)
	}
	return best
}
