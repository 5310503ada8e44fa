package serve

// Log-probabilities of a reply's tokens in OpenAI's two forms: chat's logprobs.content and
// the legacy completions' parallel lists.

import (
	"math"

	"github.com/qwen-tune/qwen-tune/model"
)

const (
	// minLogprob stands for a log-probability of -Inf, which JSON cannot hold (OpenAI's value).
	minLogprob = -9999
	// maxCompletionLogprobs is the most alternatives the legacy completions' logprobs list.
	maxCompletionLogprobs = 5
)

// logprobEntry is a token's text, log-probability (finite, as JSON needs) and bytes.
func (s *Server) logprobEntry(id int, lp float64) (string, float64, []int) {
	b, err := s.eng.Tokenizer().TokenBytes(id)
	if err != nil {
		b = nil // an id the tokenizer does not have: no bytes
	}
	ints := make([]int, len(b))
	for i, x := range b {
		ints[i] = int(x)
	}
	if math.IsInf(lp, -1) || math.IsNaN(lp) {
		lp = minLogprob
	}
	return string(b), lp, ints
}

// completionLogprobs are the legacy completions' logprobs for toks; offset is the reply's
// bytes before them, advanced past them.
func (s *Server) completionLogprobs(toks []model.TokenLogprob, offset *int) *CompletionLogprobs {
	out := &CompletionLogprobs{Tokens: []string{}, TokenLogprobs: []float64{}, TopLogprobs: []map[string]float64{}, TextOffset: []int{}}
	for _, t := range toks {
		text, lp, b := s.logprobEntry(t.ID, t.Logprob)
		top := map[string]float64{}
		for _, a := range t.Top {
			at, alp, _ := s.logprobEntry(a.ID, a.Logprob)
			top[at] = alp
		}
		out.Tokens, out.TokenLogprobs = append(out.Tokens, text), append(out.TokenLogprobs, lp)
		out.TopLogprobs, out.TextOffset = append(out.TopLogprobs, top), append(out.TextOffset, *offset)
		*offset += len(b)
	}
	return out
}

// chatLogprobs are OpenAI's logprobs.content for toks.
func (s *Server) chatLogprobs(toks []model.TokenLogprob) *ChatLogprobs {
	entry := s.logprobEntry
	out := &ChatLogprobs{Content: make([]TokenLogprob, 0, len(toks))}
	for _, t := range toks {
		e := TokenLogprob{TopLogprobs: make([]TopLogprob, 0, len(t.Top))}
		e.Token, e.Logprob, e.Bytes = entry(t.ID, t.Logprob)
		for _, a := range t.Top {
			var alt TopLogprob
			alt.Token, alt.Logprob, alt.Bytes = entry(a.ID, a.Logprob)
			e.TopLogprobs = append(e.TopLogprobs, alt)
		}
		out.Content = append(out.Content, e)
	}
	return out
}
