//go:build cudaemu || qtcuda

package cuda_test

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
	"gorgonia.org/tensor"
)

// savingIsExact runs the training programs of a 2-block model and of mlpCase's, with and
// without checkpointing, with a saving switched off (set(false)) and on, and requires the
// same loss and gradients bit for bit, and an arena no larger with it (smaller for the wide
// MLP when shrinks).
func savingIsExact(t *testing.T, set func(on bool), shrinks bool) {
	d := openDevice(t)
	mlp, _, _ := mlpCase(t)
	for _, k := range []struct {
		name   string
		c      *lossCase
		shrink bool
	}{{"2 blocks", newLossCaseOf(t, 2), false}, {"wide MLP", mlp, shrinks}} {
		for _, ckpt := range []bool{false, true} {
			set(false)
			wantLoss, want, before := runGrad(t, d, k.c, ckpt)
			set(true)
			gotLoss, got, after := runGrad(t, d, k.c, ckpt)
			if gotLoss != wantLoss {
				t.Errorf("%s, checkpointing %v: loss %v with the saving, %v without", k.name, ckpt, gotLoss, wantLoss)
			}
			for i := range want {
				for j := range want[i] {
					if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
						t.Errorf("%s, checkpointing %v: %s[%d] is %v with the saving, %v without", k.name, ckpt, k.c.params[i].Name, j, got[i][j], want[i][j])
						break
					}
				}
			}
			a, b := after.ActivationBytes(), before.ActivationBytes()
			t.Logf("%s, checkpointing %v: arena %d bytes with the saving, %d without", k.name, ckpt, a, b)
			if a > b || k.shrink && a >= b {
				t.Errorf("%s, checkpointing %v: arena %d bytes with the saving, %d without", k.name, ckpt, a, b)
			}
		}
	}
}

// TestDeviceInputGradIntoAddIsExact: with the fusion "input gradient + add" (a projection's
// input gradient added by its GEMM, beta 1, to the other gradient of the same value) the
// device computes the loss and the gradients bit for bit as with a GEMM and an add, with
// and without checkpointing, in a smaller arena where the MLP's backward is the peak.
func TestDeviceInputGradIntoAddIsExact(t *testing.T) {
	savingIsExact(t, func(on bool) { cuda.SetInputGradIntoAdd(t, on) }, true)
}

// TestDeviceInputGradIntoAdd: no projection's input gradient that an add reads has a buffer
// of its own: in mlpCase's program no [N, MLP] float32 buffer holds the gradient of the down
// projection's input from its frozen weight alone (the add writes it into the LoRA branch's
// gradient), with and without checkpointing.
func TestDeviceInputGradIntoAdd(t *testing.T) {
	d := openDevice(t)
	c, n, mlp := mlpCase(t)
	for _, ckpt := range []bool{false, true} {
		plan := planGrad(t, d, c, ckpt)
		sums := 0
		for _, b := range plan.Buffers {
			if b.Bytes != n*mlp*4 || !strings.HasPrefix(b.What, "LinearGradX (") {
				continue
			}
			if !strings.Contains(b.What, ", then ") {
				t.Errorf("checkpointing %v: a buffer of an input gradient alone: %v", ckpt, b)
			}
			sums++
		}
		if sums == 0 {
			t.Errorf("checkpointing %v: no [%d, %d] input gradient at all", ckpt, n, mlp)
		}
	}
}

// TestDeviceAttnScratchInArenaIsExact: with attention's scratch in the arena the device
// computes the loss and the gradients bit for bit as with the program's own scratch.
func TestDeviceAttnScratchInArenaIsExact(t *testing.T) {
	savingIsExact(t, func(on bool) { cuda.SetAttnScratchInArena(t, on) }, false)
}

// TestDeviceAttnScratchInArena: a training program holds no attention scratch besides its
// arena: what it allocates besides (MemoryPlan.Other) is less by the whole scratch
// (NewAttnTrainScratch's 8 t heads dim + 12 heads chunk t + 4 heads t bytes), and the
// arena grows by less than that, with and without checkpointing.
func TestDeviceAttnScratchInArena(t *testing.T) {
	d := openDevice(t)
	for _, layers := range []int{1, 2} {
		c := newLossCaseOf(t, layers)
		heads, dim := c.m.Config.NumAttentionHeads, c.m.Config.KVChannels
		seq := int64(lossSeq)
		scratch := 8*seq*int64(heads*dim) + 12*int64(heads)*seq*seq + 4*int64(heads)*seq
		for _, ckpt := range []bool{false, true} {
			cuda.SetAttnScratchInArena(t, false)
			off := planGrad(t, d, c, ckpt)
			cuda.SetAttnScratchInArena(t, true)
			on := planGrad(t, d, c, ckpt)
			t.Logf("%d blocks, checkpointing %v: arena %d and other %d bytes with the scratch in the arena, %d and %d without", layers, ckpt, on.Activations, on.Other, off.Activations, off.Other)
			if off.Other-on.Other != scratch {
				t.Errorf("%d blocks, checkpointing %v: other %d bytes with the scratch in the arena, %d without: not less by the scratch's %d", layers, ckpt, on.Other, off.Other, scratch)
			}
			if on.Activations-off.Activations >= scratch {
				t.Errorf("%d blocks, checkpointing %v: the arena grows from %d to %d bytes, by the scratch's %d or more", layers, ckpt, off.Activations, on.Activations, scratch)
			}
		}
	}
}

// TestDeviceRoundTrainedAtUseIsExact: lora's trainer on the device (the optimizer there,
// padding, dropout, gradient accumulation) follows the same losses and ends at the same
// trained values, bit for bit, whether the GEMMs round the LoRA matrices' float32 values to
// bf16 where they read them or read bf16 copies that every update rewrites: with
// special-token rows (wte's gathered from a copy, lm_head's rounded at use) and with wte and
// lm_head trained in full (wte gathered from a copy, lm_head rounded at use). With it the
// device holds fewer weight bytes.
func TestDeviceRoundTrainedAtUseIsExact(t *testing.T) {
	dir, tok := tinyDir(t)
	seqs := embedSeqs(tok)
	d := openDevice(t)
	for _, mode := range []embedMode{specialRows, wholeTables} {
		run := func(on bool) ([]float64, [][]float32, model.TrainingMemory) {
			cuda.SetRoundTrainedAtUse(t, on)
			defer d.ReleaseWeights()
			m, a, params := trainedModel(t, dir, tok, mode, 0.1)
			defer m.Close()
			exec := &model.CUDA{Device: d}
			m.Exec = exec
			cfg := lora.DefaultTrainConfig()
			cfg.LoRA = a.Config
			cfg.LR, cfg.BatchSize, cfg.GradAccum, cfg.Steps, cfg.MaxLen = 2e-3, 2, 2, 4, 32
			cfg.TrainSpecialTokens = mode == specialRows
			if mode == wholeTables {
				cfg.ModulesToSave = []string{"wte", "lm_head"}
			}
			tr, err := lora.NewTrainer(m, a, params, cfg, seqs, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			var losses []float64
			for !tr.Done() {
				res, err := tr.TrainStep(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				losses = append(losses, res.Loss)
			}
			mem := exec.TrainingMemory()
			if err := tr.Close(); err != nil { // the device's values to the host
				t.Fatal(err)
			}
			var values [][]float32
			for _, p := range params {
				values = append(values, slices.Clone(p.Value.Data().([]float32)))
			}
			return losses, values, mem
		}
		wantLoss, want, memOff := run(false)
		gotLoss, got, memOn := run(true)
		t.Logf("%v: losses %v; weights %d bytes rounding at use, %d with bf16 copies", mode, gotLoss, memOn.Weights, memOff.Weights)
		if !slices.Equal(gotLoss, wantLoss) {
			t.Errorf("%v: losses %v rounding at use, %v with bf16 copies", mode, gotLoss, wantLoss)
		}
		for i := range want {
			if !slices.EqualFunc(got[i], want[i], func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }) {
				t.Errorf("%v: trained parameter %d differs rounding at use", mode, i)
			}
		}
		if memOn.Weights >= memOff.Weights {
			t.Errorf("%v: weights %d bytes rounding at use, %d with bf16 copies", mode, memOn.Weights, memOff.Weights)
		}
	}
}

// TestDeviceAttnKeepsOperandsIsExact: with attention's forward keeping its bf16 q, k and v
// for its backward the device computes the loss and the gradients bit for bit as with the
// backward rounding the float32 q, k and v again, in an arena no larger.
func TestDeviceAttnKeepsOperandsIsExact(t *testing.T) {
	savingIsExact(t, func(on bool) { cuda.SetAttnKeepsOperands(t, on) }, false)
}

// TestDeviceAttnKeepsOperands: the float32 fused qkv projection dies at attention's forward
// (its first run and, with checkpointing, its second): no buffer of c_attn's output [N,
// 3 hidden] lives across an attention's backward, with and without checkpointing.
func TestDeviceAttnKeepsOperands(t *testing.T) {
	d := openDevice(t)
	c := newLossCaseOf(t, 2)
	qkv := int64(lossBatch*lossSeq) * 3 * int64(c.m.Config.HiddenSize) * 4
	for _, ckpt := range []bool{false, true} {
		plan := planGrad(t, d, c, ckpt)
		found := 0
		for _, b := range plan.Buffers {
			if b.Bytes != qkv || !strings.HasPrefix(b.What, "Linear (") {
				continue
			}
			found++
			for at := b.First; at <= b.Last; at++ {
				if strings.HasPrefix(plan.Entries[at], "AttentionGrad (") {
					t.Errorf("checkpointing %v: %v lives across %s", ckpt, b, plan.Entries[at])
					break
				}
			}
		}
		if found == 0 {
			t.Errorf("checkpointing %v: no fused qkv projection in the plan", ckpt)
		}
	}
}

// TestDeviceDropoutAgainIsExact: with LoRA dropouts drawn again by A's weight gradients the
// device computes the loss and the gradients bit for bit as with the dropouts kept, in an
// arena no larger.
func TestDeviceDropoutAgainIsExact(t *testing.T) {
	savingIsExact(t, func(on bool) { cuda.SetDropoutAgain(t, on) }, false)
}

// TestDeviceDropoutAgain: the LoRA dropouts of c_attn's, attn.c_proj's, w1's and w2's inputs
// are drawn again by their A's weight gradients from values still live there (attention's
// output; the block's input and the mid-block residual stream, which the norms read): with
// checkpointing, where a block's MLP backward runs (a SwiGLUGrad entry) at most one
// dropout is live, the first block's c_attn's (that block's input, the embedding's output,
// dies in its recomputation: the embedding is frozen), where there were four.
func TestDeviceDropoutAgain(t *testing.T) {
	d := openDevice(t)
	mlp, _, _ := mlpCase(t)
	for _, c := range []*lossCase{newLossCaseOf(t, 2), mlp} {
		plan := planGrad(t, d, c, true)
		entries := 0
		for at, e := range plan.Entries {
			if !strings.HasPrefix(e, "SwiGLUGradUp") {
				continue
			}
			entries++
			var live []cuda.LiveBuffer
			for _, b := range liveAt(plan, at) {
				what := strings.TrimSuffix(b.What, " [recomputed]")
				if i := strings.LastIndex(what, ", then "); i >= 0 {
					what = what[i+len(", then "):]
				}
				if strings.HasPrefix(what, "Dropout (") {
					live = append(live, b)
				}
			}
			if len(live) > 1 {
				t.Errorf("%d dropouts live at %s: %v", len(live), e, live)
			}
		}
		if entries == 0 {
			t.Error("no SwiGLU backward in the plan")
		}
	}
}

// TestDeviceClosedSetRefusesRun: a program compiled into a ParamSet reads the set's float32
// LoRA matrices (rounded where its GEMMs read them); run after the set's Close, whose
// values are gone, it refuses with an error that says to compile it again, and a program
// compiled after the Close runs on the host's values uploaded in bf16.
func TestDeviceClosedSetRefusesRun(t *testing.T) {
	d := openDevice(t)
	defer d.ReleaseWeights()
	c := newLossCaseOf(t, 1)
	g, loss, grads := c.build(t, true)
	var names []string
	var values []*tensor.Dense
	for _, p := range c.params {
		names, values = append(names, p.Name), append(values, p.Value)
	}
	s, err := d.NewParamSet(names, values)
	if err != nil {
		t.Fatal(err)
	}
	prog, err := d.CompileGradInto(g.ExprGraph, loss, grads, s, g.Step, cuda.GradOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := prog.Run(); err == nil || !strings.Contains(err.Error(), "compile the program again") {
		t.Errorf("a program reading a closed set's values ran: error %v", err)
	}
	g, loss, _ = c.build(t, false)
	again, err := d.CompileGrad(g.ExprGraph, loss, nil, g.Step)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := again.Run(); err != nil {
		t.Errorf("a program compiled after the set's Close: %v", err)
	}
}

// TestDeviceSetAdoptsEarlierCopies: a ParamSet made after a program uploaded its parameters
// keeps those bf16 copies (the program reads them) and Upload rewrites them; a program
// compiled after the set rounds the set's values where its GEMMs read them. Both compute the
// same loss, bit for bit, on the values uploaded into the set (not those of the first upload).
func TestDeviceSetAdoptsEarlierCopies(t *testing.T) {
	d := openDevice(t)
	defer d.ReleaseWeights()
	c := newLossCaseOf(t, 1)
	g, loss, _ := c.build(t, false)
	before, err := d.CompileGrad(g.ExprGraph, loss, nil, g.Step)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if err := before.Run(); err != nil {
		t.Fatal(err)
	}
	first, err := before.Loss()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var values []*tensor.Dense
	var next, zeros [][]float32
	var n int64
	for _, p := range c.params {
		names, values = append(names, p.Name), append(values, p.Value)
		v := slices.Clone(p.Value.Data().([]float32))
		for i := range v {
			v[i] *= 3
		}
		next, zeros = append(next, v), append(zeros, make([]float32, len(v)))
		n += int64(len(v))
	}
	s, err := d.NewParamSet(names, values)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if copies := s.Memory()[3]; copies.Bytes != 2*n {
		t.Errorf("%s: %d bytes, want the %d of the copies the earlier program uploaded", copies.What, copies.Bytes, 2*n)
	}
	if err := s.Upload(next, zeros, zeros); err != nil {
		t.Fatal(err)
	}
	g2, loss2, _ := c.build(t, false)
	after, err := d.CompileGrad(g2.ExprGraph, loss2, nil, g2.Step)
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	var losses [2]float64
	for i, p := range []*cuda.Program{before, after} {
		if err := p.Run(); err != nil {
			t.Fatal(err)
		}
		if losses[i], err = p.Loss(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("loss %v on the first values; on the set's, %v from the earlier program's copies and %v rounded at use", first, losses[0], losses[1])
	if losses[0] != losses[1] || losses[0] == first {
		t.Errorf("loss %v from the copies, %v rounded at use, %v before the upload", losses[0], losses[1], first)
	}
}
