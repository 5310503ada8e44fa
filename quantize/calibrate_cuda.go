//go:build qtcuda || cudaemu

package quantize

// The calibration forward on the GPU: every sample's hidden states stay on the device between
// blocks and stages; each pass compiles the block's own Block.Forward graph (evaluation, as
// on the CPU) with the GPU executor, its input read from a device buffer, and the stage's
// first projection captured where the executor computed its input (cuda.CaptureDevice):
// the rows are summed into the stage's DeviceHessian there, and only the first errorRows rows,
// which measure each layer's error, come to the host. The executor computes as it does for
// inference: weights (the dequantized ones too) and GEMM inputs rounded to bf16, fp32
// accumulation, attention over a bf16 KV cache. So the captured inputs, and with them the
// codes, differ from the CPU's float32 forward by bf16 rounding (the solve itself follows the
// CPU's, gptq_cuda.go).

import (
	"context"
	"fmt"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/model"
)

// deviceForward keeps the hidden states [T, H] of every sample on d.
type deviceForward struct {
	d      *cuda.Device
	hs     []*cuda.Buffer
	caches map[int]*autograd.KVCache // by sequence length (attention runs over a KV cache)
}

func (f *deviceForward) free() {
	for _, b := range f.hs {
		f.d.Free(b)
	}
	for _, c := range f.caches {
		f.d.ReleaseCache(c)
	}
	f.d.ReleaseWeights()
	f.hs, f.caches = nil, nil
}

func (f *deviceForward) embed(ctx context.Context, m *model.Model, samples [][]int) error {
	hs, err := run(ctx, m, samples, nil, func(g *model.Graph, _ *G.Node) *G.Node { return g.Embed(m.Embed) })
	if err != nil {
		return err
	}
	f.caches = map[int]*autograd.KVCache{}
	for i, h := range hs {
		b, err := cuda.Upload(f.d, h, fmt.Sprintf("hidden states of calibration sample %d", i))
		if err != nil {
			return err
		}
		f.hs = append(f.hs, b)
		hs[i] = nil
	}
	return nil
}

func (f *deviceForward) record(ctx context.Context, m *model.Model, b *model.Block, first *model.Projection, in *inputs) error {
	base := *first
	rec := &deviceRecorder{Projection: base, sink: in.deviceSink(f.d)}
	*first = rec
	err := f.pass(ctx, m, b, rec)
	*first = base
	return err
}

func (f *deviceForward) advance(ctx context.Context, m *model.Model, b *model.Block) error {
	err := f.pass(ctx, m, b, nil)
	f.d.ReleaseWeights() // this block's weights, as uploaded for its passes
	return err
}

// pass runs block b over every sample's hidden states. With a recorder, only the part of the
// block that computes the captured input runs (the graph up to rec's capture); without one the
// whole block runs and its outputs replace the hidden states.
func (f *deviceForward) pass(ctx context.Context, m *model.Model, b *model.Block, rec *deviceRecorder) error {
	next := rec == nil
	c := m.Config
	h := c.HiddenSize
	type compiled struct {
		p  *cuda.Program
		in *cuda.Buffer
	}
	progs := map[int]*compiled{}
	defer func() {
		for _, p := range progs {
			p.p.Close()
			f.d.Free(p.in)
		}
	}()
	for i, x := range f.hs {
		if err := ctx.Err(); err != nil {
			return err
		}
		seq := int(x.Bytes / 4 / int64(h))
		p, ok := progs[seq]
		if !ok {
			g := model.NewGraph(m, 1, seq, model.Evaluation, false)
			in := G.NewMatrix(g.ExprGraph, tensor.Float32, G.WithShape(seq, h), G.WithName("hidden"))
			out := b.Forward(g, in)
			if err := g.Err(); err != nil {
				return err
			}
			graph := g.ExprGraph
			if rec != nil { // the capture's ancestors only
				out = rec.captured
				graph = g.ExprGraph.SubgraphRoots(out)
			}
			if f.caches[seq] == nil {
				f.caches[seq] = autograd.NewDeviceKVCache(len(m.Blocks), 1, seq, c.NumAttentionHeads, c.KVChannels)
			}
			g.Step.Cache = f.caches[seq]
			buf, err := f.d.Alloc(x.Bytes, "block input")
			if err != nil {
				return err
			}
			prog, err := f.d.CompileInput(graph, out, in, buf, g.Step)
			if err != nil {
				f.d.Free(buf)
				return fmt.Errorf("quantize: compiling block %d for the GPU: %w", b.Layer, err)
			}
			p = &compiled{p: prog, in: buf}
			progs[seq] = p
		}
		if err := f.d.CopyDevice(p.in, x, x.Bytes); err != nil {
			return err
		}
		if err := p.p.Run(); err != nil {
			return fmt.Errorf("quantize: calibration forward of block %d on the GPU, sample %d: %w", b.Layer, i, err)
		}
		if next {
			y, _, _, err := p.p.Output()
			if err != nil {
				return err
			}
			if err := f.d.CopyDevice(x, y, x.Bytes); err != nil {
				return err
			}
		}
	}
	return f.d.Sync()
}

// deviceRecorder is recorder for the GPU executor; captured is its capture node in the graph
// last built.
type deviceRecorder struct {
	model.Projection
	sink     cuda.DeviceSink
	captured *G.Node
}

func (r *deviceRecorder) Forward(g *model.Graph, x *G.Node) (*G.Node, error) {
	x, err := cuda.CaptureDevice(x, r.sink)
	if err != nil {
		return nil, err
	}
	r.captured = x
	return r.Projection.Forward(g, x)
}

// deviceSink sums captured rows on d into the stage's DeviceHessian and keeps the first
// errorRows of them on the host.
func (in *inputs) deviceSink(d *cuda.Device) cuda.DeviceSink {
	return func(x *cuda.Buffer, rows, cols int) error {
		if cols != in.k {
			return fmt.Errorf("captured %d columns, expected %d", cols, in.k)
		}
		if in.hess != nil {
			if err := in.hess.(*DeviceHessian).AddDevice(x, rows); err != nil {
				return err
			}
		}
		if need := errorRows*in.k - len(in.rows); need > 0 {
			part := make([]float32, min(rows*cols, need))
			if err := d.Sync(); err != nil {
				return err
			}
			if err := cuda.Download(d, part, x); err != nil {
				return err
			}
			in.rows = append(in.rows, part...)
		}
		return nil
	}
}
