package model

import (
	"slices"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// Executor runs the model's inference graphs somewhere other than autograd's Machine on
// the CPU: the cuda build's GPU executor compiles the same graph Forward builds into kernel
// launches. A Model with a nil Exec runs on the CPU.
type Executor interface {
	Name() string
	// Compile prepares the graph g computing out for repeated runs on g.Step.
	Compile(g *Graph, out *G.Node) (Program, error)
	// NewCache describes a KV cache kept by the executor, and ReleaseCache frees it.
	NewCache(layers, capacity, heads, headDim int) *autograd.KVCache
	ReleaseCache(c *autograd.KVCache)
	// Memory is the device memory held now and the most held since the executor opened.
	Memory() (held, peak int64)
	// CopyBandwidth is the device's memory copy bandwidth in GB/s (read + write counted).
	CopyBandwidth() (float64, error)
	Close() error
}

// GradExecutor is an Executor that also runs training graphs: the loss and the gradients of
// params (nodes of g's graph, whose host values the program uploads before every run).
type GradExecutor interface {
	CompileGrad(g *Graph, loss *G.Node, grads, params G.Nodes) (GradProgram, error)
}

// GradProgram is a compiled training graph, run on its Graph's Step.
type GradProgram interface {
	Run() error
	Loss() (float64, error)
	Grads() ([][]float32, error)
	Close() error
}

// Program is a compiled graph.
type Program interface {
	Run() error
	Logits() ([]float32, error)
	// Sample chooses the next id from the last row of the output on the device, with u the
	// uniform draw, the repetition penalty over seen and ids below limit (0: all).
	Sample(p autograd.SampleParams, u float64, seen []int, limit int) (int, error)
	// Stats are the launches per run, the runs replayed from a CUDA graph and why graph
	// capture failed (nil if it did not).
	Stats() (launches, graphed int, graphErr error)
	Close() error
}

// CompareExecutor runs prompt and then steps greedy decoding steps through m on the CPU and
// through exec, teacher-forced with the CPU's choices, and returns the largest relative
// difference of the logits (||exec - cpu|| / ||cpu|| of a position) and the executor's
// session, still open for the caller to inspect and close. m.Exec is nil again on return.
func CompareExecutor(m *Model, exec Executor, prompt []int, steps int) (worst float64, dev *Session, err error) {
	m.Exec = nil
	cpu := m.NewSession(len(prompt) + steps)
	defer func() {
		m.Exec = nil
		if cerr := cpu.Close(); err == nil {
			err = cerr
		}
	}()
	on := func(e Executor, s *Session, ids []int) ([]float32, error) {
		m.Exec = e
		out, err := s.Feed(ids)
		return slices.Clone(out), err
	}
	m.Exec = exec
	dev = m.NewSession(len(prompt) + steps)
	ids := prompt
	for step := 0; step <= steps; step++ {
		want, err := on(nil, cpu, ids)
		if err != nil {
			return worst, dev, err
		}
		got, err := on(exec, dev, ids)
		if err != nil {
			return worst, dev, err
		}
		worst = max(worst, refmath.RelDiff(got, want))
		ids = []int{argmax(want)}
	}
	return worst, dev, nil
}

func argmax(v []float32) int {
	id := 0
	for i, x := range v {
		if x > v[id] {
			id = i
		}
	}
	return id
}
