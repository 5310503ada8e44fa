package model

import (
	"context"
	"math"
	"slices"
	"testing"
)

// evenOnly allows even ids only and records what it accepted.
type evenOnly struct{ accepted []int }

func (c *evenOnly) Mask(scores []float64) {
	for i := range scores {
		if i%2 == 1 {
			scores[i] = math.Inf(-1)
		}
	}
}
func (c *evenOnly) Accept(id int) { c.accepted = append(c.accepted, id) }

func TestConstraintMasksGreedyAndSampled(t *testing.T) {
	logits := []float32{0, 5, 1, 9, 2}
	for _, greedy := range []bool{true, false} {
		c := &evenOnly{}
		s := &Sampler{Greedy: greedy, Temperature: 1, TopP: 1, RepetitionPenalty: 1, Constraint: c}
		for u := 0.0; u < 1; u += 0.05 {
			id := s.NextWith(logits, nil, u)
			if id%2 == 1 {
				t.Fatalf("greedy=%v u=%g chose %d, which the constraint forbids", greedy, u, id)
			}
			if greedy && id != 4 {
				t.Fatalf("greedy chose %d, want 4 (the best allowed)", id)
			}
		}
		if len(c.accepted) != 20 {
			t.Fatalf("the constraint was told of %d choices, want 20", len(c.accepted))
		}
	}
	if (&Sampler{}).NeedsHost() || !(&Sampler{Constraint: &evenOnly{}}).NeedsHost() || !(&Sampler{Logprobs: true}).NeedsHost() {
		t.Fatal("NeedsHost: only constrained, logprob or penalised samplers need the host")
	}
}

func TestPresenceAndFrequencyPenalties(t *testing.T) {
	// OpenAI's definition: mu[j] - c[j]*frequency - (c[j] > 0)*presence, c counting the
	// generated ids only (the prompt is ids before start).
	s := &Sampler{RepetitionPenalty: 1, PresencePenalty: 0.5, FrequencyPenalty: 0.25, start: 2}
	scores := []float64{1, 1, 1, 1}
	s.Penalize(scores, []int{3, 3, 0, 0, 0, 1})
	want := []float64{1 - 3*0.25 - 0.5, 1 - 0.25 - 0.5, 1, 1}
	for i := range want {
		if math.Abs(scores[i]-want[i]) > 1e-12 { // measured 0
			t.Errorf("score %d = %g, want %g", i, scores[i], want[i])
		}
	}
}

func TestLogprobs(t *testing.T) {
	logits := []float32{1, 3, 2, 0}
	s := &Sampler{Greedy: true, RepetitionPenalty: 1, Logprobs: true, TopLogprobs: 2}
	id := s.NextWith(logits, nil, 0)
	var z float64
	for _, v := range logits {
		z += math.Exp(float64(v))
	}
	lp := func(i int) float64 { return float64(logits[i]) - math.Log(z) }
	got := s.Last
	if id != 1 || got.ID != 1 || math.Abs(got.Logprob-lp(1)) > 1e-12 { // measured 0
		t.Fatalf("chose %d with %+v, want 1 with logprob %g", id, got, lp(1))
	}
	if len(got.Top) != 2 || got.Top[0].ID != 1 || got.Top[1].ID != 2 || math.Abs(got.Top[1].Logprob-lp(2)) > 1e-12 {
		t.Fatalf("top alternatives %+v, want ids 1 and 2", got.Top)
	}
}

// TestExecutorSessionSamplesConstrainedOnHost: on an executor, a constrained or
// log-probability sampler takes every token from host logits (the device sampler cannot
// mask), and gives the CPU path's tokens.
func TestExecutorSessionSamplesConstrainedOnHost(t *testing.T) {
	m, err := RandomModel(TinyOptions{Seed: 3, VocabRanks: 512, Hidden: 64, Layers: 2, Heads: 4, MLPWidth: 48, SeqLength: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { m.Exec = nil }()
	prompt := []int{5, 99, 300, 7, 42, 42, 8}
	for _, mk := range []func() *Sampler{
		func() *Sampler { return &Sampler{Greedy: true, RepetitionPenalty: 1.1, Constraint: &evenOnly{}} },
		func() *Sampler { return &Sampler{Greedy: true, RepetitionPenalty: 1, Logprobs: true, TopLogprobs: 2} },
		func() *Sampler { return &Sampler{Greedy: true, RepetitionPenalty: 1, PresencePenalty: 1} },
	} {
		m.Exec = nil
		cpu := m.NewSession(8)
		want, _, err := cpu.Generate(context.Background(), prompt, GenerateOptions{MaxNewTokens: 12, Sampler: mk()}, nil)
		if cerr := cpu.Close(); err != nil || cerr != nil {
			t.Fatal(err, cerr)
		}
		e := &fakeExec{}
		m.Exec = e
		s := m.NewSession(8)
		sampler := mk()
		got, _, err := s.Generate(context.Background(), prompt, GenerateOptions{MaxNewTokens: 12, Sampler: sampler}, nil)
		if cerr := s.Close(); err != nil || cerr != nil {
			t.Fatal(err, cerr)
		}
		if !slices.Equal(got, want) {
			t.Errorf("executor path %v, CPU %v", got, want)
		}
		if e.sampled != 0 {
			t.Errorf("%d tokens sampled on the device for a sampler that needs the host", e.sampled)
		}
		if c, ok := sampler.Constraint.(*evenOnly); ok && slices.ContainsFunc(got, func(id int) bool { return id%2 == 1 }) {
			t.Errorf("the constraint was not kept on the executor path: %v (accepted %v)", got, c.accepted)
		}
	}
}
