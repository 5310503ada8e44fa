package model

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/qwen-tune/qwen-tune/internal/vecmath"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// Sampler picks the next token as transformers' generate does with Qwen's settings:
// repetition penalty over every id already in prompt and output (logit / p when positive,
// logit * p when negative), then temperature, top-k (0 = off) and top-p, then a draw from the
// softmax with a seeded generator. Greedy takes the arg-max after the penalty.
//
// OpenAI's presence and frequency penalties, a Constraint and log-probabilities are
// optional; a sampler that uses any of them needs the logits on the host (NeedsHost), so an
// executor's on-device sampler is used only without them.
type Sampler struct {
	Greedy            bool
	Temperature       float64
	TopK              int
	TopP              float64
	RepetitionPenalty float64
	// PresencePenalty and FrequencyPenalty are OpenAI's: the score of id j drops by
	// c[j]*FrequencyPenalty + (c[j] > 0)*PresencePenalty, c[j] counting j among the generated
	// ids (not the prompt's).
	PresencePenalty  float64
	FrequencyPenalty float64
	// Limit, when positive, is the number of ids that may be chosen: the embedding has
	// padding rows beyond the vocabulary (151,936 rows for 151,851 tokens) that no tokenizer
	// can decode.
	Limit int
	// Constraint, when set, limits the ids that may come next (grammar-constrained decoding).
	Constraint Constraint
	// Logprobs asks for Last: the chosen id's log-probability and the TopLogprobs most likely
	// ids, under the model's distribution (the log-softmax of the logits, before penalties,
	// temperature and constraint).
	Logprobs    bool
	TopLogprobs int
	Last        TokenLogprob
	start       int // ids of seen before it are the prompt's (Session.Generate sets it)
	rng         *rand.Rand
	scores      []float64
	order       []int
}

// Constraint limits which ids a generation may choose. Mask sets the score of every id that
// may not come next to -Inf and leaves at least one; Accept moves past the id chosen.
type Constraint interface {
	Mask(scores []float64)
	Accept(id int)
}

// TokenLogprob is a chosen id's log-probability and the most likely alternatives, best first.
type TokenLogprob struct {
	ID      int
	Logprob float64
	Top     []IDLogprob
}

// IDLogprob is one id's log-probability.
type IDLogprob struct {
	ID      int
	Logprob float64
}

// NeedsHost reports whether choosing needs the logits on the host: a constraint, penalties
// an on-device sampler does not apply, or log-probabilities.
func (s *Sampler) NeedsHost() bool {
	return s.Constraint != nil || s.Logprobs || s.PresencePenalty != 0 || s.FrequencyPenalty != 0
}

// NewSampler takes the settings of a generation_config.json; greedy also follows do_sample.
func NewSampler(g checkpoints.GenerationConfig, seed uint64) *Sampler {
	return &Sampler{
		Greedy: !g.DoSample || g.Temperature == 0, Temperature: g.Temperature, TopK: g.TopK, TopP: g.TopP,
		RepetitionPenalty: g.RepetitionPenalty, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

// Uniform is the sampler's next uniform draw in [0, 1), as Next takes one per sampled token.
func (s *Sampler) Uniform() float64 { return s.rng.Float64() }

// DeviceParams are the settings for an executor's on-device sampler.
func (s *Sampler) DeviceParams() autograd.SampleParams {
	return autograd.SampleParams{Greedy: s.Greedy, Temperature: s.Temperature, TopK: s.TopK, TopP: s.TopP, RepetitionPenalty: s.RepetitionPenalty}
}

// Penalize applies the repetition penalty, then the presence and frequency penalties, to
// scores in place.
func (s *Sampler) Penalize(scores []float64, seen []int) {
	s.repetition(scores, seen)
	if s.PresencePenalty == 0 && s.FrequencyPenalty == 0 {
		return
	}
	count := map[int]int{}
	for _, id := range seen[min(s.start, len(seen)):] {
		if id >= 0 && id < len(scores) {
			count[id]++
		}
	}
	for id, c := range count {
		scores[id] -= float64(c)*s.FrequencyPenalty + s.PresencePenalty
	}
}

func (s *Sampler) repetition(scores []float64, seen []int) {
	if s.RepetitionPenalty == 1 || s.RepetitionPenalty == 0 {
		return
	}
	done := map[int]bool{}
	for _, id := range seen {
		if id < 0 || id >= len(scores) || done[id] {
			continue
		}
		done[id] = true
		if scores[id] < 0 {
			scores[id] *= s.RepetitionPenalty
		} else {
			scores[id] /= s.RepetitionPenalty
		}
	}
}

// Filter applies temperature, top-k and top-p to scores in place (removed entries become -Inf).
func (s *Sampler) Filter(scores []float64) {
	if s.Temperature > 0 && s.Temperature != 1 {
		for i := range scores {
			scores[i] /= s.Temperature
		}
	}
	if s.TopK > 0 && s.TopK < len(scores) {
		top := slices.Clone(scores)
		slices.SortFunc(top, func(a, b float64) int { return cmp.Compare(b, a) })
		kth := top[s.TopK-1]
		for i, v := range scores {
			if v < kth {
				scores[i] = math.Inf(-1)
			}
		}
	}
	if s.TopP > 0 && s.TopP < 1 {
		// Ascending order; drop the low tail whose cumulative probability is <= 1 - top_p,
		// always keeping the most likely token.
		s.order = s.order[:0]
		for i := range scores {
			s.order = append(s.order, i)
		}
		slices.SortStableFunc(s.order, func(a, b int) int { return cmp.Compare(scores[a], scores[b]) })
		probs := softmax(scores)
		var cum float64
		for k, i := range s.order {
			cum += probs[i]
			if cum <= 1-s.TopP && k < len(s.order)-1 {
				scores[i] = math.Inf(-1)
			}
		}
	}
}

// Next chooses the token after logits, given every id already in the sequence.
func (s *Sampler) Next(logits []float32, seen []int) int {
	u := 0.0
	if !s.Greedy {
		u = s.rng.Float64()
	}
	return s.NextWith(logits, seen, u)
}

// NextWith is Next with the uniform draw u given (greedy ignores it): what an executor's
// on-device sampler computes.
func (s *Sampler) NextWith(logits []float32, seen []int, u float64) int {
	s.scores = s.scores[:0]
	for _, v := range logits {
		s.scores = append(s.scores, float64(v))
	}
	if s.Limit > 0 && s.Limit < len(s.scores) {
		s.scores = s.scores[:s.Limit]
	}
	if s.Logprobs {
		s.Last = logprobs(s.scores, s.TopLogprobs)
	}
	s.Penalize(s.scores, seen)
	if s.Constraint != nil {
		s.Constraint.Mask(s.scores)
	}
	var id int
	if s.Greedy {
		for i, v := range s.scores {
			if v > s.scores[id] {
				id = i
			}
		}
	} else {
		id = s.draw(u)
	}
	if s.Logprobs {
		s.Last.ID, s.Last.Logprob = id, s.Last.Logprob+float64(logits[id])
	}
	if s.Constraint != nil {
		s.Constraint.Accept(id)
	}
	return id
}

// logprobs returns the n best ids of the log-softmax of scores, and in Logprob minus the
// log of the partition function (the chosen id's logit is added once it is known).
func logprobs(scores []float64, n int) TokenLogprob {
	logZ := vecmath.LogSumExp64(scores)
	var top []IDLogprob
	for i, v := range scores {
		if len(top) == n && (n == 0 || v <= top[n-1].Logprob) {
			continue
		}
		at := len(top)
		for at > 0 && top[at-1].Logprob < v {
			at--
		}
		if len(top) < n {
			top = append(top, IDLogprob{})
		}
		copy(top[at+1:], top[at:len(top)-1])
		top[at] = IDLogprob{ID: i, Logprob: v}
	}
	for i := range top {
		top[i].Logprob -= logZ
	}
	return TokenLogprob{Logprob: -logZ, Top: top}
}

// draw filters s.scores and picks by u in index order.
func (s *Sampler) draw(u float64) int {
	s.Filter(s.scores)
	probs := softmax(s.scores)
	var cum float64
	last := 0
	for i, p := range probs {
		if p == 0 {
			continue
		}
		cum += p
		last = i
		if u < cum {
			return i
		}
	}
	return last
}

// softmax of scores in float64; -Inf entries get probability 0.
func softmax(scores []float64) []float64 {
	m := math.Inf(-1)
	for _, v := range scores {
		m = max(m, v)
	}
	out := make([]float64, len(scores))
	var sum float64
	for i, v := range scores {
		out[i] = math.Exp(v - m)
		sum += out[i]
	}
	for i := range out {
		out[i] /= sum
	}
	return out
}
