package serve

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

const (
	// sessionStart is the KV cache's first capacity in positions; it grows as a conversation
	// does.
	sessionStart = 256
	// minSampledTemperature: a request's temperature below it means greedy decoding, as in
	// Qwen's OpenAI-style API.
	minSampledTemperature = 0.01
)

// Sampling are a request's generation settings; nil fields keep the model's
// generation_config.json values.
type Sampling struct {
	MaxTokens        int
	Temperature      *float64
	TopP             *float64
	Seed             *uint64
	Stop             []int // ids that end the reply (not part of it)
	PresencePenalty  float64
	FrequencyPenalty float64
	// Constraint, when set, limits each next token (response_format, a required tool call).
	Constraint model.Constraint
	// Logprobs asks the engine for each token's log-probability and TopLogprobs alternatives.
	Logprobs    bool
	TopLogprobs int
}

// Engine generates tokens; the server builds prompts and decodes text around it. The real
// one is ModelEngine; tests use a scripted double.
type Engine interface {
	ModelID() string
	Tokenizer() *tokenizer.Tokenizer
	// ContextLength is the most positions a prompt plus its reply may take; MaxWindow is
	// Qwen's max_window_size, within which older chat turns are kept.
	ContextLength() int
	MaxWindow() int
	// Generate continues prompt, calling emit with each new id (and, when s.Logprobs, its
	// log-probabilities); it stops at a stop id, after s.MaxTokens ids, or when ctx ends. It
	// returns the new ids (without the stop id).
	Generate(ctx context.Context, prompt []int, s Sampling, emit func(model.TokenLogprob) error) ([]int, model.StopReason, error)
}

// ModelEngine runs a loaded model: one Session kept across requests, so a conversation's
// earlier turns already in the KV cache are not computed again.
type ModelEngine struct {
	ID      string
	Model   *model.Model
	Gen     checkpoints.GenerationConfig
	Tok     *tokenizer.Tokenizer
	Context int
	session *model.Session
}

func (e *ModelEngine) ModelID() string                 { return e.ID }
func (e *ModelEngine) Tokenizer() *tokenizer.Tokenizer { return e.Tok }
func (e *ModelEngine) ContextLength() int              { return e.Context }
func (e *ModelEngine) MaxWindow() int                  { return e.Gen.MaxWindowSize }

// Generate samples with the model's generation settings overridden by s (temperature 0 or
// below 0.01 is greedy, as Qwen's API does). A constraint, penalties or log-probabilities
// make the session sample on the host (model.Sampler.NeedsHost).
func (e *ModelEngine) Generate(ctx context.Context, prompt []int, s Sampling, emit func(model.TokenLogprob) error) ([]int, model.StopReason, error) {
	if e.session == nil {
		e.session = e.Model.NewSession(sessionStart)
	}
	g := e.Gen
	if s.Temperature != nil {
		g.Temperature, g.DoSample = *s.Temperature, *s.Temperature >= minSampledTemperature
	}
	if s.TopP != nil {
		g.TopP = *s.TopP
	}
	if !g.DoSample {
		g.Temperature = 0
	}
	if err := g.Validate(); err != nil {
		return nil, "", err
	}
	seed := uint64(time.Now().UnixNano()) ^ rand.Uint64()
	if s.Seed != nil {
		seed = *s.Seed
	}
	sampler := model.NewSampler(g, seed)
	sampler.Limit = e.Tok.Size()
	sampler.PresencePenalty, sampler.FrequencyPenalty = s.PresencePenalty, s.FrequencyPenalty
	sampler.Constraint, sampler.Logprobs, sampler.TopLogprobs = s.Constraint, s.Logprobs, s.TopLogprobs
	if len(prompt)+s.MaxTokens > model.MaxPositions {
		return nil, "", fmt.Errorf("%d positions exceed the %d the model supports", len(prompt)+s.MaxTokens, model.MaxPositions)
	}
	return e.session.Generate(ctx, prompt, model.GenerateOptions{MaxNewTokens: s.MaxTokens, Stop: s.Stop, Sampler: sampler}, func(id int) error {
		t := model.TokenLogprob{ID: id}
		if sampler.Logprobs {
			t = sampler.Last
		}
		return emit(t)
	})
}

// Close releases the session.
func (e *ModelEngine) Close() error {
	if e.session == nil {
		return nil
	}
	return e.session.Close()
}
