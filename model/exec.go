package model

import (
	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
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
