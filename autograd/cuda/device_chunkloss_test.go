//go:build cudaemu || qtcuda

package cuda_test

// The fusion "lm_head + cross-entropy by chunks" on the emulated device: the same training
// and evaluation graphs compiled with and without it, and run on the CPU.

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
	"github.com/qwen-tune/qwen-tune/model"
)

// deviceResult is a loss program's loss and gradients, its arena and its instructions.
type deviceResult struct {
	loss   float64
	grads  [][]float32
	arena  int64
	kinds  []string
	rounds int
}

// device compiles c's graph (with the gradients when grads) on d, runs it twice and requires
// the two runs to agree bit for bit.
func (c *lossCase) device(t *testing.T, d *cuda.Device, grads bool) deviceResult {
	t.Helper()
	g, loss, gr := c.build(t, grads)
	prog, err := d.CompileGrad(g.ExprGraph, loss, gr, g.Step)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var res deviceResult
	for run := 0; run < 2; run++ {
		if err := prog.Run(); err != nil {
			t.Fatal(err)
		}
		l, err := prog.Loss()
		if err != nil {
			t.Fatal(err)
		}
		gs, err := prog.Grads()
		if err != nil {
			t.Fatal(err)
		}
		if run == 1 && (l != res.loss || !slices.EqualFunc(gs, res.grads, slices.Equal)) {
			t.Errorf("a second run gave loss %v and other gradients, the first %v", l, res.loss)
		}
		res.loss, res.grads = l, gs
	}
	times, err := prog.Profile(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range times {
		res.kinds = append(res.kinds, o.Kind)
	}
	res.arena = prog.ActivationBytes()
	return res
}

// TestDeviceChunkedLoss: the LoRA training graph (padding, packing, ignored labels,
// dropout) and its evaluation graph with the loss by chunks of 7 rows (40 rows: five whole
// chunks and a ragged one) give the unfused program's loss and gradients and the CPU's,
// deterministically, in an arena smaller by about the logits.
func TestDeviceChunkedLoss(t *testing.T) {
	d := openDevice(t)
	c := newLossCase(t)
	const chunk = 7
	rows, vocab := lossBatch*lossSeq, c.m.Config.VocabSize
	if rows%chunk == 0 || vocab <= chunk {
		t.Fatalf("%d rows in chunks of %d leave no ragged chunk", rows, chunk)
	}
	for _, grads := range []bool{false, true} {
		wantLoss, want := c.cpu(t, grads)
		cuda.SetChunkedLoss(t, false, 0)
		plain := c.device(t, d, grads)
		cuda.SetChunkedLoss(t, true, chunk)
		fused := c.device(t, d, grads)
		if !slices.ContainsFunc(fused.kinds, func(k string) bool { return strings.Contains(k, "by chunks of 7 rows") }) {
			t.Fatalf("grads %v: no instruction computes the loss by chunks: %q", grads, fused.kinds)
		}
		if slices.ContainsFunc(plain.kinds, func(k string) bool { return strings.Contains(k, "by chunks") }) {
			t.Fatalf("grads %v: the fusion ran while switched off: %q", grads, plain.kinds)
		}
		// the same row arithmetic and the emulated cuBLAS sums every product element in one
		// order whatever the rows: measured 0. A GPU's cuBLAS may choose another order for
		// chunk-sized products, moving logits by float32 rounding and flipping some bf16
		// roundings of their gradient: bounds not yet measured there (the loss's a float32
		// sum's, the gradients' a tenth of their bf16 difference from the CPU)
		lossTol, gradTol := 0.0, 0.0
		if !cuda.Emulated {
			lossTol, gradTol = 1e-5, 2e-2
		}
		if e := math.Abs(fused.loss-plain.loss) / math.Abs(plain.loss); e > lossTol {
			t.Errorf("grads %v: loss %v by chunks, %v unfused", grads, fused.loss, plain.loss)
		}
		for i := range plain.grads {
			if e := refmath.RelDiff(fused.grads[i], plain.grads[i]); e > gradTol {
				t.Errorf("%s: the gradient by chunks differs from the unfused one by %.2e", c.params[i].Name, e)
			}
		}
		e := math.Abs(fused.loss-wantLoss) / wantLoss
		if e > 6e-3 { // as TestDeviceLossProgram: measured 6.2e-4 (bf16 GEMM inputs)
			t.Errorf("grads %v: loss %.6f by chunks, %.6f on the CPU (%.2e)", grads, fused.loss, wantLoss, e)
		}
		worst := 0.0
		for i := range want {
			e := refmath.RelDiff(fused.grads[i], want[i])
			worst = max(worst, e)
			if e > 0.22 || e != e { // as TestDeviceGradProgram: measured 2.25e-2 at worst
				t.Errorf("%s: the gradient by chunks differs from the CPU's by %.2e", c.params[i].Name, e)
			}
		}
		// unfused: the logits [rows, vocab] (fp32, their gradient written over them) and, with
		// gradients, that gradient's bf16 copy for lm_head's input gradient; by chunks: one
		// chunk's fp32 logits and, with gradients, its bf16 dlogits
		unfused := int64(rows * vocab * 4)
		scratch := int64(chunk * vocab * 4)
		if grads {
			unfused += int64(rows * vocab * 2)
			scratch += int64(chunk * vocab * 2)
		}
		saved, expect := plain.arena-fused.arena, unfused-scratch
		t.Logf("grads %v: loss %.6f (CPU %.6f, %.2e), worst gradient %.2e; arena %d bytes by chunks, %d unfused: %d saved of %d (%.3f)",
			grads, fused.loss, wantLoss, e, worst, fused.arena, plain.arena, saved, expect, float64(saved)/float64(expect))
		// measured 0.903 and 0.976 of it (other buffers live beside the loss's at the peak)
		if saved < expect*8/10 || saved > expect+4*autograd.ArenaAlign {
			t.Errorf("grads %v: the fusion saves %d bytes of the arena, not about the %d of the logits less a chunk's", grads, saved, expect)
		}
	}
}

// TestDeviceChunkedLossTrainedHead: a trained lm_head (modules_to_save: a float32 weight
// with its gradient) keeps the unfused path, with or without the fusion switched on.
func TestDeviceChunkedLossTrainedHead(t *testing.T) {
	d := openDevice(t)
	c := newLossCase(t)
	head := c.m.Head.(*model.Dense)
	bits := head.Weight.Value.Data().([]uint16)
	w := make([]float32, len(bits))
	for i, b := range bits {
		w[i] = math.Float32frombits(uint32(b) << 16)
	}
	trained := &model.Param{Name: head.Weight.Name, Value: tensor.New(tensor.WithShape(head.Weight.Value.Shape()...), tensor.WithBacking(w)), Train: true}
	c.m.Head = &model.Dense{Weight: trained}
	c.params = append(c.params, trained)
	cuda.SetChunkedLoss(t, true, 7)
	on := c.device(t, d, true)
	cuda.SetChunkedLoss(t, false, 0)
	off := c.device(t, d, true)
	if slices.ContainsFunc(on.kinds, func(k string) bool { return strings.Contains(k, "by chunks") }) {
		t.Errorf("a trained lm_head was fused: %q", on.kinds)
	}
	if on.arena != off.arena || on.loss != off.loss {
		t.Errorf("arena %d, loss %v with the fusion on; %d, %v off", on.arena, on.loss, off.arena, off.loss)
	}
	if g := on.grads[len(on.grads)-1]; !slices.ContainsFunc(g, func(v float32) bool { return v != 0 }) {
		t.Error("lm_head's gradient is zero")
	}
}

// TestLossChunkRows: Qwen's vocabulary at 2048 positions runs in ten chunks of 208 rows (121
// MiB of fp32 logits each), at 8 x 2048 in 75 chunks of 219; a small vocabulary in one chunk.
func TestLossChunkRows(t *testing.T) {
	for _, c := range []struct{ rows, vocab, want int }{{2048, 151936, 208}, {1, 151936, 1}, {40, 4224, 40}, {2048 * 8, 151936, 219}} {
		if got := cuda.LossChunk(c.rows, c.vocab); got != c.want {
			t.Errorf("%d rows of %d: chunks of %d, want %d", c.rows, c.vocab, got, c.want)
		}
	}
}
