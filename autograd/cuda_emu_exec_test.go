//go:build cudaemu && !qtcuda

package autograd_test

// The GPU executor on the emulated driver: a random model's prefill and decode logits
// against the CPU graph (as qwen-tune selftest checks them on a GPU), with the decode steps
// replayed from a CUDA graph and profiled with events; and the kernel self-test.

import (
	"fmt"
	"math/rand/v2"
	"testing"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/model"
)

// emulatedExec is model.CUDA's executor over the emulated device.
type emulatedExec struct{ d *autograd.Device }

func (e *emulatedExec) Name() string { return "cuda (" + e.d.Name + ")" }

func (e *emulatedExec) Compile(g *model.Graph, out *G.Node) (model.Program, error) {
	if g.Batch != 1 {
		return nil, fmt.Errorf("the GPU executor runs batch 1 (graph of %d rows)", g.Batch)
	}
	return e.d.Compile(g.ExprGraph, out, g.Step)
}

func (e *emulatedExec) NewCache(layers, capacity, heads, headDim int) *autograd.KVCache {
	return autograd.NewDeviceKVCache(layers, 1, capacity, heads, headDim)
}

func (e *emulatedExec) ReleaseCache(kv *autograd.KVCache) { e.d.ReleaseCache(kv) }

func (e *emulatedExec) Memory() (int64, int64) { return e.d.Allocated, e.d.Peak }

func (e *emulatedExec) CopyBandwidth() (float64, error) { return e.d.CopyBandwidth() }

func (e *emulatedExec) Close() error { return e.d.Close() }

func TestEmulatedExecutor(t *testing.T) {
	d, err := autograd.OpenDevice(0)
	if err != nil {
		t.Fatal(err)
	}
	exec := &emulatedExec{d}
	defer exec.Close()
	o := model.TinyOptions{Seed: 5, VocabRanks: 4096, Hidden: 256, Layers: 2, Heads: 2, MLPWidth: 344, SeqLength: 2048}
	m, err := model.RandomModel(o)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := rand.New(rand.NewPCG(9, 9))
	prompt := make([]int, 20)
	for i := range prompt {
		prompt[i] = r.IntN(m.Config.VocabSize)
	}
	defer d.ReleaseWeights()
	worst, dev, err := model.CompareExecutor(m, exec, prompt, 5)
	if dev != nil {
		defer dev.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("largest relative difference of the logits: %.2e; decode: %s", worst, dev.DecodeStats())
	if !(worst <= 2e-2) {
		t.Errorf("logits differ from the CPU graph's by %.2e", worst)
	}
	if _, err := dev.Profile(false, 2); err != nil {
		t.Errorf("profiling the decode step: %v", err)
	}
}

func TestEmulatedSelfTest(t *testing.T) {
	if testing.Short() {
		t.Skip("the kernel self-test at Qwen-7B's widths is slow on the emulator")
	}
	d, err := autograd.OpenDevice(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, c := range autograd.SelfTest(d, 1) {
		if !c.OK() {
			t.Errorf("%s %s: relative error %.2e (tolerance %.0e), %d unwritten, %v", c.Op, c.Shape, c.RelErr, c.Tol, c.Unwritten, c.Err)
		}
	}
}
