package model

import (
	"math"
	"sort"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
)

func TestRepetitionPenalty(t *testing.T) {
	s := &Sampler{RepetitionPenalty: 1.1}
	scores := []float64{2, -2, 1, -1}
	s.Penalize(scores, []int{0, 1, 1, 0})
	want := []float64{2 / 1.1, -2 * 1.1, 1, -1}
	for i := range want {
		if math.Abs(scores[i]-want[i]) > 1e-12 { // measured 0
			t.Errorf("score %d = %g, want %g (each id penalised once)", i, scores[i], want[i])
		}
	}
}

func TestFilter(t *testing.T) {
	probs := []float64{0.5, 0.3, 0.15, 0.05}
	logits := func() []float64 {
		out := make([]float64, len(probs))
		for i, p := range probs {
			out[i] = math.Log(p)
		}
		return out
	}
	cases := []struct {
		name string
		s    Sampler
		keep []bool
	}{
		// ascending cumulative sums 0.05, 0.20, 0.50, 1.0; drop those <= 1 - top_p
		{"top-p 0.75", Sampler{TopP: 0.75, Temperature: 1}, []bool{true, true, false, false}},
		{"top-p 0.9", Sampler{TopP: 0.9, Temperature: 1}, []bool{true, true, true, false}},
		{"top-p tiny keeps the best", Sampler{TopP: 1e-9, Temperature: 1}, []bool{true, false, false, false}},
		{"top-k 2", Sampler{TopK: 2, TopP: 1, Temperature: 1}, []bool{true, true, false, false}},
		{"top-k 0 is off", Sampler{TopK: 0, TopP: 1, Temperature: 1}, []bool{true, true, true, true}},
	}
	for _, c := range cases {
		sc := logits()
		c.s.Filter(sc)
		for i, k := range c.keep {
			if k == math.IsInf(sc[i], -1) {
				t.Errorf("%s: token %d kept=%v, want %v", c.name, i, !math.IsInf(sc[i], -1), k)
			}
		}
	}
	// Temperature divides the logits before top-p: at T=2 the distribution flattens.
	sc := logits()
	(&Sampler{Temperature: 2, TopP: 1}).Filter(sc)
	if math.Abs(sc[0]-math.Log(0.5)/2) > 1e-12 { // measured 0
		t.Errorf("temperature 2: logit %g, want %g", sc[0], math.Log(0.5)/2)
	}
}

// nucleus is the distribution transformers samples from with temperature T and top-p
// (top-k off), worked out directly: p = softmax(logits / T); tokens by decreasing p; keep
// the shortest head whose mass reaches top_p (at least one token); renormalise.
func nucleus(logits []float32, temperature, topP float64) []float64 {
	p := make([]float64, len(logits))
	var sum float64
	for i, v := range logits {
		p[i] = math.Exp(float64(v) / temperature)
		sum += p[i]
	}
	order := make([]int, len(p))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return p[order[a]] > p[order[b]] })
	keep := make([]bool, len(p))
	var head float64
	for _, i := range order {
		keep[i] = true
		head += p[i] / sum
		if head >= topP {
			break
		}
	}
	out := make([]float64, len(p))
	for i := range p {
		if keep[i] {
			out[i] = p[i] / sum / head
		}
	}
	return out
}

// TestSamplingDistribution draws many tokens with Qwen's chat settings and compares the
// frequencies with the nucleus distribution worked out independently; the same seed gives
// the same draws.
func TestSamplingDistribution(t *testing.T) {
	logits := []float32{2, 1.5, 1, 0, -1, -3}
	g := checkpoints.ChatGenerationConfig()
	if g.TopK != 0 || g.Temperature != 1 {
		t.Fatalf("chat settings top_k %d, temperature %g: nucleus below assumes 0 and 1", g.TopK, g.Temperature)
	}
	s := NewSampler(g, 42)
	want := nucleus(logits, g.Temperature, g.TopP)
	const n = 200000
	counts := make([]float64, len(logits))
	for i := 0; i < n; i++ {
		counts[s.Next(logits, nil)]++
	}
	for i := range counts {
		got := counts[i] / n
		if math.Abs(got-want[i]) > 4*math.Sqrt(want[i]*(1-want[i])/n)+1e-9 {
			t.Errorf("token %d drawn %.4f of the time, expected %.4f", i, got, want[i])
		}
	}
	a, b := NewSampler(g, 7), NewSampler(g, 7)
	for i := 0; i < 100; i++ {
		if x, y := a.Next(logits, nil), b.Next(logits, nil); x != y {
			t.Fatalf("draw %d: %d vs %d with the same seed", i, x, y)
		}
	}
	greedy := NewSampler(checkpoints.GenerationConfig{Temperature: 1, TopP: 1, RepetitionPenalty: 1.1}, 1)
	if id := greedy.Next([]float32{1.05, 1.0}, []int{0}); id != 1 {
		t.Errorf("greedy with repetition penalty chose %d, want 1 (1.05/1.1 < 1.0)", id)
	}
}

func TestCheckMemory(t *testing.T) {
	if _, _, ok := memInfo(); !ok {
		t.Skip("no /proc/meminfo on this system")
	}
	err := CheckMemory(1<<50, "a 1 PiB model")
	if err == nil || !strings.Contains(err.Error(), "needs 1048576.0 GiB") || !strings.Contains(err.Error(), "quantized") {
		t.Fatalf("error %v", err)
	}
	if err := CheckMemory(1<<20, "a small model"); err != nil {
		t.Fatal(err)
	}
}

// TestSamplerLimit: ids beyond the vocabulary (padding rows of the embedding) are never chosen.
func TestSamplerLimit(t *testing.T) {
	logits := []float32{0, 1, 9, 9}
	s := NewSampler(checkpoints.GenerationConfig{DoSample: true, Temperature: 1, TopP: 1, RepetitionPenalty: 1}, 3)
	s.Limit = 2
	for i := 0; i < 200; i++ {
		if id := s.Next(logits, nil); id >= 2 {
			t.Fatalf("chose padding id %d", id)
		}
	}
	s.Greedy = true
	if id := s.Next(logits, nil); id != 1 {
		t.Fatalf("greedy chose %d, want 1", id)
	}
}
