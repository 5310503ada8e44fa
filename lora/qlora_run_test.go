package lora_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
	"github.com/qwen-tune/qwen-tune/internal/tfile"
	"github.com/qwen-tune/qwen-tune/internal/tquant"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// lastLogits feeds ids to a fresh session of m and returns the last position's logits.
func lastLogits(t *testing.T, m *model.Model, ids []int) []float32 {
	t.Helper()
	s := m.NewSession(len(ids))
	defer s.Close()
	l, err := s.Feed(ids)
	if err != nil {
		t.Fatal(err)
	}
	return append([]float32(nil), l...)
}

// TestQLoRARun: lora.Run trains an adapter (with special-token rows) on the GPTQ Int4 model
// whose packed layers stay as they are; the loss falls, a run stopped and resumed ends with
// the same adapter byte for byte, adapter_config.json records the GPTQ base, and lora.Open applies the adapter to the Int4 model without merging (on the CPU:
// folding it for the GPU is refused in words, as is merging). Applied to the floating-point
// model, the adapter works and Open says which base it was trained on.
func TestQLoRARun(t *testing.T) {
	tmp := t.TempDir()
	o := fourSteps(t, filepath.Join(tmp, "run"))
	float := o.ModelDir
	q := quantize.DefaultOptions()
	q.GroupSize = 16
	o.ModelDir, _ = tquant.Save(t, float, [][]int{{1, 2, 3, 4, 5, 6, 7, 8}}, quantize.MethodRTN, q)
	o.Train.Steps, o.Train.TrainSpecialTokens = 8, true
	res, err := lora.Run(context.Background(), o, lora.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	first, last := res.History[0].Loss, res.History[len(res.History)-1].Loss
	t.Logf("Q-LoRA on the Int4 model: loss %.4f -> %.4f in %d steps", first, last, len(res.History))
	if !(last < first-0.1) {
		t.Errorf("the loss went from %.4f to %.4f", first, last)
	}
	straight := o.Out
	o.Out = filepath.Join(tmp, "stopped")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopAt3 := func(r lora.StepResult) error {
		if r.Step == 3 {
			return lora.ErrStop
		}
		return nil
	}
	if res, err := lora.Run(ctx, o, lora.Hooks{OnStep: stopAt3}); err != nil || !res.Stopped {
		t.Fatalf("stopped run: %+v %v", res, err)
	}
	o.Resume = true
	if _, err := lora.Run(ctx, o, lora.Hooks{}); err != nil {
		t.Fatal(err)
	}
	a, b := tfile.Read(t, filepath.Join(straight, lora.WeightsFile)), tfile.Read(t, filepath.Join(o.Out, lora.WeightsFile))
	if !bytes.Equal(a, b) {
		t.Errorf("the resumed Q-LoRA run ends with another adapter than the uninterrupted one")
	}
	o.Out = straight

	pc, err := checkpoints.ReadAdapterConfig(filepath.Join(o.Out, lora.ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	want := checkpoints.AdapterBase{QuantMethod: "gptq", Bits: 4, GroupSize: 16}
	if pc.TrainedOn == nil || *pc.TrainedOn != want || pc.BaseModelNameOrPath == nil || *pc.BaseModelNameOrPath != o.ModelDir {
		t.Errorf("adapter_config.json records base %v (%v), want %+v (%s)", pc.TrainedOn, pc.BaseModelNameOrPath, want, o.ModelDir)
	}

	prompt := []int{1, 2, 3, 4098, 5}
	plain, err := lora.Open(o.ModelDir, lora.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := lastLogits(t, plain.Model, prompt)
	plain.Close()
	op, err := lora.Open(o.ModelDir, lora.OpenOptions{Adapter: o.Out, NeedTokenizer: true})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	if op.AdapterNote != "" || !op.Model.Quantized() {
		t.Errorf("the Int4 model with its own adapter: note %q, quantized %v", op.AdapterNote, op.Model.Quantized())
	}
	if _, ok := model.Unwrap(op.Model.Blocks[0].QKV).(*model.Int4); !ok {
		t.Fatalf("c_attn under the adapter is %T", model.Unwrap(op.Model.Blocks[0].QKV))
	}
	after := lastLogits(t, op.Model, prompt)
	if refmath.RelDiff[float32, float32](after, before) < 1e-3 {
		t.Errorf("the adapter changes the Int4 model's logits by only %.3g", refmath.RelDiff[float32, float32](after, before))
	}
	if _, err := lora.Fold(op.Model); err == nil || !strings.Contains(err.Error(), "cannot be folded into packed weights") {
		t.Errorf("folding onto GPTQ layers: %v", err)
	}
	err = lora.Merge(o.ModelDir, o.Out, filepath.Join(tmp, "merged"))
	if err == nil || !strings.Contains(err.Error(), "Merge it into the floating-point (bf16) model instead, then quantize the result again") {
		t.Errorf("merging into the Int4 model: %v", err)
	}

	onFloat, err := lora.Open(float, lora.OpenOptions{Adapter: o.Out})
	if err != nil {
		t.Fatal(err)
	}
	defer onFloat.Close()
	if n := onFloat.AdapterNote; !strings.Contains(n, "trained on a GPTQ 4-bit model (group size 16) and this model is a floating-point model (bfloat16)") {
		t.Errorf("the Int4 adapter on the bf16 model: note %q", n)
	}
}
