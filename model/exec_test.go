package model

import (
	"context"
	"slices"
	"testing"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
)

// fakeExec is a test double of a GPU executor: it compiles the graph for gorgonia's
// TapeMachine and samples on the "device" with NextWith, so the Session's executor path (no
// logits download while decoding, the uniform draws handed over, cache ownership) runs
// without a GPU.
type fakeExec struct {
	compiled, released, sampled int
}

type fakeProg struct {
	e   *fakeExec
	vm  G.VM
	out *G.Node
	ran bool
	// logitsCalls counts downloads
	logitsCalls int
	act         int64 // reported activation bytes: 1000 per row of the step
}

func (e *fakeExec) Name() string { return "fake" }
func (e *fakeExec) Compile(g *Graph, out *G.Node) (Program, error) {
	e.compiled++
	return &fakeProg{e: e, vm: G.NewTapeMachine(g.ExprGraph), out: out, act: int64(1000 * g.Step.Batch * g.Step.Seq)}, nil
}
func (e *fakeExec) NewCache(layers, capacity, heads, headDim int) *autograd.KVCache {
	return autograd.NewKVCache(layers, 1, capacity, heads, headDim)
}
func (e *fakeExec) ReleaseCache(*autograd.KVCache)  { e.released++ }
func (e *fakeExec) Memory() (int64, int64)          { return 0, 0 }
func (e *fakeExec) CopyBandwidth() (float64, error) { return 1, nil }
func (e *fakeExec) Close() error                    { return nil }

func (p *fakeProg) Run() error {
	if p.ran {
		p.vm.Reset()
	}
	p.ran = true
	return p.vm.RunAll()
}
func (p *fakeProg) Logits() ([]float32, error) {
	p.logitsCalls++
	return p.out.Value().Data().([]float32), nil
}
func (p *fakeProg) Sample(sp autograd.SampleParams, u float64, seen []int, limit int) (int, error) {
	p.e.sampled++
	s := &Sampler{Greedy: sp.Greedy, Temperature: sp.Temperature, TopK: sp.TopK, TopP: sp.TopP, RepetitionPenalty: sp.RepetitionPenalty, Limit: limit}
	logits := p.out.Value().Data().([]float32)
	return s.NextWith(logits, seen, u), nil
}
func (p *fakeProg) Stats() (int, int, error) { return 0, 0, nil }
func (p *fakeProg) ActivationBytes() int64   { return p.act }
func (p *fakeProg) Close() error             { return p.vm.Close() }

// TestExecutorSessionMatchesCPU: generation through an executor (sampling on its device with
// the host sampler's draws) gives the same tokens as the CPU path, greedy and sampled, and
// the decode steps never download logits.
func TestExecutorSessionMatchesCPU(t *testing.T) {
	o := TinyOptions{Seed: 3, VocabRanks: 512, Hidden: 64, Layers: 2, Heads: 4, MLPWidth: 48, SeqLength: 64}
	m, err := RandomModel(o)
	if err != nil {
		t.Fatal(err)
	}
	prompt := []int{5, 99, 300, 7, 42, 42, 8}
	for _, mk := range []func() *Sampler{
		func() *Sampler { return &Sampler{Greedy: true, RepetitionPenalty: 1.1} },
		func() *Sampler {
			s := NewSampler(checkpoints.ChatGenerationConfig(), 11)
			return s
		},
	} {
		m.Exec = nil
		cpu := m.NewSession(8)
		want, _, err := cpu.Generate(context.Background(), prompt, GenerateOptions{MaxNewTokens: 20, Sampler: mk()}, nil)
		cpu.Close()
		if err != nil {
			t.Fatal(err)
		}
		e := &fakeExec{}
		m.Exec = e
		s := m.NewSession(8)
		got, _, err := s.Generate(context.Background(), prompt, GenerateOptions{MaxNewTokens: 20, Sampler: mk()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("executor path %v, CPU %v", got, want)
		}
		if e.sampled != len(got)-1 {
			t.Errorf("%d tokens sampled on the device, want %d (all but the first)", e.sampled, len(got)-1)
		}
		if lc := s.decode.prog.(*fakeProg).logitsCalls; lc != 0 {
			t.Errorf("decode steps downloaded logits %d times", lc)
		}
		s.Close()
		if e.released != 1 {
			t.Errorf("the session's cache was released %d times", e.released)
		}
		// a session started on one executor refuses to continue on another
		s2 := m.NewSession(8)
		m.Exec = nil
		if _, err := s2.Feed(prompt); err == nil {
			t.Error("a session kept running after the model's executor changed")
		}
		m.Exec = e
		s2.Close()
	}
	m.Exec = nil
}

// TestSessionActivationBytes: a session reports its largest program's activations (the
// prompt's rather than the one-token step's), and nothing on the CPU.
func TestSessionActivationBytes(t *testing.T) {
	m, err := RandomModel(TinyOptions{Seed: 4, VocabRanks: 512, Hidden: 64, Layers: 2, Heads: 4, MLPWidth: 48, SeqLength: 64})
	if err != nil {
		t.Fatal(err)
	}
	prompt := []int{5, 99, 300, 7, 42, 42, 8}
	cpu := m.NewSession(16)
	if _, _, err := cpu.Generate(context.Background(), prompt, GenerateOptions{MaxNewTokens: 3, Sampler: &Sampler{Greedy: true}}, nil); err != nil {
		t.Fatal(err)
	}
	if a := cpu.ActivationBytes(); a != 0 {
		t.Errorf("CPU session reports %d activation bytes", a)
	}
	cpu.Close()
	m.Exec = &fakeExec{}
	defer func() { m.Exec = nil }()
	s := m.NewSession(16)
	defer s.Close()
	if _, _, err := s.Generate(context.Background(), prompt, GenerateOptions{MaxNewTokens: 3, Sampler: &Sampler{Greedy: true}}, nil); err != nil {
		t.Fatal(err)
	}
	// the prompt is one program of 7 rows, every new token one of a single row
	if a := s.ActivationBytes(); a != int64(1000*len(prompt)) {
		t.Errorf("session reports %d activation bytes, want the prompt program's %d", a, 1000*len(prompt))
	}
}
