//go:build qtcuda || cudaemu

package model

import (
	"fmt"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/autograd/cuda"
)

// CUDA is the GPU executor: the model's graphs compiled by cuda.Device.Compile. Every
// call must come from the goroutine that opened it (the device's context is current on that
// goroutine's locked OS thread).
type CUDA struct {
	Device *cuda.Device
	// NoCheckpoint keeps every activation of a training graph's forward for its backward;
	// by default a block's are computed again in its backward (cuda.GradOptions).
	NoCheckpoint bool
	// the largest activation arena of the training programs compiled so far
	trainArena int64
	// the largest optimizer state kept on the device so far (NewDeviceParams)
	optimBytes int64
}

// OpenCUDA opens GPU ordinal.
func OpenCUDA(ordinal int) (*CUDA, error) {
	d, err := cuda.OpenDevice(ordinal)
	if err != nil {
		return nil, err
	}
	return &CUDA{Device: d}, nil
}

func (c *CUDA) Name() string { return "cuda (" + c.Device.Name + ")" }

func (c *CUDA) Compile(g *Graph, out *G.Node) (Program, error) {
	if g.Batch != 1 {
		return nil, fmt.Errorf("the GPU executor runs batch 1 (graph of %d rows)", g.Batch)
	}
	p, err := c.Device.Compile(g.ExprGraph, out, g.Step)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// CompileGrad compiles a training graph on the GPU (model.GradExecutor).
func (c *CUDA) CompileGrad(g *Graph, loss *G.Node, grads, params G.Nodes) (GradProgram, error) {
	p, err := CompileGradWith(c.Device, g, loss, grads, params, cuda.GradOptions{Checkpoint: !c.NoCheckpoint})
	if a, ok := p.(interface{ ActivationBytes() int64 }); err == nil && ok {
		c.trainArena = max(c.trainArena, a.ActivationBytes())
	}
	return p, err
}

// SetCheckpointing turns activation checkpointing of training graphs on or off (Checkpointer).
func (c *CUDA) SetCheckpointing(on bool) { c.NoCheckpoint = !on }

// TrainingMemory is the device memory of the training programs compiled so far (MemoryReporter).
func (c *CUDA) TrainingMemory() TrainingMemory {
	return TrainingMemory{Weights: c.Device.WeightBytes(), Activations: c.trainArena, Optimizer: c.optimBytes, Checkpointing: !c.NoCheckpoint}
}

func (c *CUDA) NewCache(layers, capacity, heads, headDim int) *autograd.KVCache {
	return autograd.NewDeviceKVCache(layers, 1, capacity, heads, headDim)
}

func (c *CUDA) ReleaseCache(kv *autograd.KVCache) { c.Device.ReleaseCache(kv) }

func (c *CUDA) Memory() (int64, int64) { return c.Device.Allocated, c.Device.Peak }

func (c *CUDA) CopyBandwidth() (float64, error) { return c.Device.CopyBandwidth() }

func (c *CUDA) Close() error { return c.Device.Close() }
