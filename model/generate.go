package model

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// MaxPositions is the longest sequence (prompt + generated tokens) Qwen-7B supports: its
// LogN table covers positions 1..32767.
const MaxPositions = 32767

// NTKAlpha is Qwen's dynamic-NTK factor for a prompt of n tokens:
// max(2^ceil(log2(n/seqLength) + 1) - 1, 1): 1 up to seqLength, 3 up to 2 seqLength, 7 up to 4.
func NTKAlpha(n, seqLength int) float64 {
	if n <= 0 {
		return 1
	}
	c := math.Log2(float64(n)/float64(seqLength)) + 1
	return max(math.Pow(2, math.Ceil(c))-1, 1)
}

// NTKBase is the rotary base for a given alpha: base * alpha^(dim/(dim-2)).
func NTKBase(base, alpha float64, dim int) float64 {
	return base * math.Pow(alpha, float64(dim)/float64(dim-2))
}

// Session is one sequence being generated: a KV cache and the tokens it holds. Feeding a
// multi-token chunk runs the prompt graph once (prefill); feeding one token runs the decode
// graph, built once and reused for every step.
type Session struct {
	m       *Model
	cache   *autograd.KVCache
	tokens  []int // the tokens whose keys and values are in the cache
	base    float64
	decode  *Runner
	prefill map[int]*Runner
	stopID  int
	exec    Executor // the model's executor when the session started (nil: CPU)
}

// LastStop is the stop id that ended the last Generate (-1 if none did).
func (s *Session) LastStop() int { return s.stopID }

// NewSession starts an empty sequence with room for capacity positions (it grows as needed).
func (m *Model) NewSession(capacity int) *Session {
	c := m.Config
	cache := func() *autograd.KVCache {
		if m.Exec != nil {
			return m.Exec.NewCache(c.NumHiddenLayers, max(capacity, 1), c.NumAttentionHeads, c.KVChannels)
		}
		return autograd.NewKVCache(c.NumHiddenLayers, 1, max(capacity, 1), c.NumAttentionHeads, c.KVChannels)
	}
	return &Session{
		m:       m,
		exec:    m.Exec,
		cache:   cache(),
		base:    c.RotaryEmbBase,
		prefill: map[int]*Runner{},
	}
}

// Tokens is the sequence so far.
func (s *Session) Tokens() []int { return s.tokens }

// Reset forgets the sequence (the cache memory is kept).
func (s *Session) Reset() { s.tokens = s.tokens[:0] }

// CacheBytes is the KV cache's current size.
func (s *Session) CacheBytes() int64 { return s.cache.Bytes() }

// Feed appends ids to the sequence and returns the logits [vocab] that predict the token
// after the last one. The first chunk fixes the rotary base (dynamic NTK from its length).
func (s *Session) Feed(ids []int) ([]float32, error) {
	r, err := s.feed(ids, true)
	if err != nil {
		return nil, err
	}
	return r.Logits(), nil
}

// feed runs ids through the model; without logits they stay on the device (an executor's
// program samples from them).
func (s *Session) feed(ids []int, logits bool) (*Runner, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("model: nothing to feed")
	}
	cfg := s.m.Config
	past := len(s.tokens)
	if past+len(ids) > MaxPositions {
		return nil, fmt.Errorf("model: %d positions exceed the %d Qwen-7B supports", past+len(ids), MaxPositions)
	}
	for i, id := range ids {
		if id < 0 || id >= cfg.VocabSize {
			return nil, fmt.Errorf("model: token id %d (position %d) is outside the vocabulary [0, %d)", id, past+i, cfg.VocabSize)
		}
	}
	if past == 0 {
		s.base = cfg.RotaryEmbBase
		if cfg.UseDynamicNTK {
			s.base = NTKBase(cfg.RotaryEmbBase, NTKAlpha(len(ids), cfg.SeqLength), cfg.KVChannels)
		}
	}
	r, err := s.runner(len(ids))
	if err != nil {
		return nil, err
	}
	s.cache.Ensure(past + len(ids))
	st := r.Step
	st.IDs = st.IDs[:0]
	for _, id := range ids {
		st.IDs = append(st.IDs, int32(id))
	}
	st.Past, st.Cache, st.Base = past, s.cache, []float64{s.base}
	st.Rows = []int32{int32(len(ids) - 1)}
	st.KeyMask = nil
	if cfg.UseLogNAttn {
		st.LogNSeq = cfg.SeqLength
	}
	r.skipLogits = !logits
	if err := r.Run(); err != nil {
		return nil, err
	}
	s.tokens = append(s.tokens, ids...)
	return r, nil
}

func (s *Session) runner(n int) (*Runner, error) {
	if n == 1 && s.decode != nil {
		return s.decode, nil
	}
	if r, ok := s.prefill[n]; ok {
		return r, nil
	}
	if s.m.Exec != s.exec {
		return nil, fmt.Errorf("model: the session started on %s; the model's executor has changed", execName(s.exec))
	}
	r, err := s.m.NewRunner(1, n, Inference, true, false)
	if err != nil {
		return nil, err
	}
	if n == 1 {
		s.decode = r
	} else {
		for k, old := range s.prefill { // keep one prompt graph: prompts rarely repeat a length
			delete(s.prefill, k)
			if err := old.Close(); err != nil {
				return nil, errors.Join(err, r.Close())
			}
		}
		s.prefill[n] = r
	}
	return r, nil
}

// DecodeStats describes the one-token program on an executor: launches per step, steps
// replayed from a CUDA graph, and why capture failed if it did ("" on the CPU).
func (s *Session) DecodeStats() string {
	if s.decode == nil || s.decode.prog == nil {
		return ""
	}
	l, g, err := s.decode.prog.Stats()
	if err != nil {
		return fmt.Sprintf("%d launches per token, no CUDA graph (%v)", l, err)
	}
	return fmt.Sprintf("%d launches per token captured in a CUDA graph, %d steps replayed", l, g)
}

// ActivationBytes is the device memory of the activations of the session's largest compiled
// program (0 on the CPU, or on an executor that does not report it).
func (s *Session) ActivationBytes() int64 {
	var most int64
	for _, r := range append([]*Runner{s.decode}, slices.Collect(maps.Values(s.prefill))...) {
		if r == nil || r.prog == nil {
			continue
		}
		if a, ok := r.prog.(interface{ ActivationBytes() int64 }); ok {
			most = max(most, a.ActivationBytes())
		}
	}
	return most
}

// Profile times the session's last prompt program (prefill) or its one-token program on the
// executor's device, instruction by instruction (reps runs at the current position).
func (s *Session) Profile(prefill bool, reps int) ([]autograd.OpTime, error) {
	r := s.decode
	if prefill {
		for _, pr := range s.prefill {
			r = pr
		}
	}
	if r == nil || r.prog == nil {
		return nil, fmt.Errorf("model: no program on a device to profile")
	}
	pp, ok := r.prog.(interface {
		Profile(int) ([]autograd.OpTime, error)
	})
	if !ok {
		return nil, fmt.Errorf("model: %s cannot profile", execName(s.exec))
	}
	return pp.Profile(reps)
}

// Close releases the session's graphs (and its cache on a device).
func (s *Session) Close() error {
	if s.exec != nil {
		s.exec.ReleaseCache(s.cache)
	}
	var errs []error
	if s.decode != nil {
		errs = append(errs, s.decode.Close())
	}
	for _, r := range s.prefill {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

// Continue makes the sequence equal prompt and returns the logits after it, reusing the
// cached prefix the two share (a chat's earlier turns) when the rotary base would be the same.
func (s *Session) Continue(prompt []int) ([]float32, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("model: empty prompt")
	}
	keep := 0
	for keep < len(s.tokens) && keep < len(prompt)-1 && s.tokens[keep] == prompt[keep] {
		keep++
	}
	cfg := s.m.Config
	sameBase := !cfg.UseDynamicNTK || NTKAlpha(len(prompt), cfg.SeqLength) == 1 && s.base == cfg.RotaryEmbBase
	if !sameBase {
		keep = 0
	}
	s.tokens = s.tokens[:keep]
	return s.Feed(prompt[keep:])
}

// GenerateOptions bound a generation.
type GenerateOptions struct {
	MaxNewTokens int
	Stop         []int // ids that end generation; they are not part of the output
	Sampler      *Sampler
}

// StopReason says why generation ended.
type StopReason string

const (
	StopToken     StopReason = "stop"   // a stop id was produced
	StopLength    StopReason = "length" // MaxNewTokens reached
	StopCancelled StopReason = "cancelled"
)

// Generate continues prompt, calling emit with each new token as soon as it is chosen. It
// returns the new tokens (without the stop id).
func (s *Session) Generate(ctx context.Context, prompt []int, opts GenerateOptions, emit func(id int) error) ([]int, StopReason, error) {
	logits, err := s.Continue(prompt)
	if err != nil {
		return nil, "", err
	}
	seen := slices.Clone(prompt)
	opts.Sampler.start = len(seen)
	var out []int
	s.stopID = -1
	if opts.MaxNewTokens <= 0 {
		return out, StopLength, nil
	}
	id := opts.Sampler.Next(logits, seen)
	for {
		if ctx.Err() != nil {
			return out, StopCancelled, nil
		}
		if slices.Contains(opts.Stop, id) {
			s.stopID = id
			return out, StopToken, nil
		}
		out = append(out, id)
		seen = append(seen, id)
		if emit != nil {
			if err := emit(id); err != nil {
				return out, "", err
			}
		}
		if len(out) == opts.MaxNewTokens {
			return out, StopLength, nil
		}
		if id, err = s.next(id, opts.Sampler, seen); err != nil {
			return out, "", err
		}
	}
}

// next feeds id and chooses the token after it: on the executor's device when there is one
// (only the id comes back), else, or when the sampler needs the logits (NeedsHost), from the
// logits on the host.
func (s *Session) next(id int, sampler *Sampler, seen []int) (int, error) {
	if s.exec == nil || sampler.NeedsHost() {
		logits, err := s.Feed([]int{id})
		if err != nil {
			return 0, err
		}
		return sampler.Next(logits, seen), nil
	}
	r, err := s.feed([]int{id}, false)
	if err != nil {
		return 0, err
	}
	u := 0.0
	if !sampler.Greedy {
		u = sampler.Uniform()
	}
	return r.prog.Sample(sampler.DeviceParams(), u, seen, sampler.Limit)
}

func execName(e Executor) string {
	if e == nil {
		return "the CPU"
	}
	return e.Name()
}
