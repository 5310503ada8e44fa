package lora

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
	"github.com/qwen-tune/qwen-tune/internal/tinybatch"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/optim"
)

type goldenData struct {
	m     *model.Model
	a     *Adapter
	batch *Batch
	ref   *tinybatch.Batch
}

// loadGolden loads tiny-qwen with the golden adapter (r 4, alpha 8, no dropout) and batch.
func loadGolden(t *testing.T) *goldenData {
	t.Helper()
	dir := golden.Path(t, "tiny-qwen")
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ref := tinybatch.Load(t)
	pc, err := checkpoints.ReadAdapterConfig(filepath.Join(dir, "golden_lora_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := Apply(m, Config{R: pc.R, Alpha: pc.LoraAlpha, Dropout: pc.LoraDropout, Targets: pc.Targets()}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range a.Layers {
		for key, p := range map[string]*model.Param{l.KeyA(): l.A, l.KeyB(): l.B} {
			copy(p.Value.Data().([]float32), ref.Floats(t, "lora.param."+key))
		}
	}
	b := &Batch{Batch: ref.Batch, Seq: ref.Seq, IDs: ref.IDs, Labels: ref.Labels, Mask: ref.Mask}
	return &goldenData{m: m, a: a, batch: b, ref: ref}
}

var relDiff = refmath.RelDiff[float32, float32]

// TestGoldenLoRAGradients: logits, loss and d loss / d every A and B match the reference.
func TestGoldenLoRAGradients(t *testing.T) {
	gd := loadGolden(t)
	gg, err := NewGradGraph(gd.m, gd.a.Params(), gd.batch.Batch, gd.batch.Seq)
	if err != nil {
		t.Fatal(err)
	}
	defer gg.Close()
	loss, grads, err := gg.Run(gd.batch, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The training graph writes the loss gradient over its logits; the reference adapter has
	// no dropout, so an evaluation runner computes the same ones.
	ev, err := gd.m.NewRunner(gd.batch.Batch, gd.batch.Seq, model.Evaluation, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	ev.SetBatch(gd.batch.IDs, nil, gd.batch.Mask)
	if err := ev.Run(); err != nil {
		t.Fatal(err)
	}
	want := gd.ref.Floats(t, "lora.logits")
	if e := relDiff(ev.Logits(), want); e > 3e-6 { // measured 2.1e-7
		t.Errorf("logits with the adapter differ by %.3g", e)
	}
	wl := gd.ref.Floats(t, "lora.loss")
	// measured 0 (the same float32 value); 1e-6 is a few float32 steps at the loss
	if d := math.Abs(loss - float64(wl[0])); d > 1e-6 {
		t.Errorf("loss %.8f, golden %.8f", loss, wl[0])
	}
	worst := 0.0
	for i, l := range gd.a.Layers {
		for j, key := range []string{l.KeyA(), l.KeyB()} {
			e := relDiff(grads[2*i+j], gd.ref.Floats(t, "lora.grad."+key))
			if e > 7e-6 || math.IsNaN(e) { // measured 6.9e-7 (the worst of the 20)
				t.Errorf("d loss / d %s differs by %.3g relative", key, e)
			}
			worst = max(worst, e)
		}
	}
	t.Logf("%d adapter gradients, worst relative difference %.3g", len(grads), worst)
}

// TestGoldenTrajectory: ten AdamW steps with clipping and the warmup-cosine schedule follow
// torch's per-step lr, loss and grad norm, and end at its adapter.
func TestGoldenTrajectory(t *testing.T) {
	// measured 1.0e-7, 6.7e-8, 6.7e-8 and 8.4e-7 (the worst of the 20 adapter matrices)
	goldenTrajectory(t, nil, trajectoryTol{loss: 1e-6, norm: 6e-7, final: 7e-7, adapter: 7e-6})
}

// trajectoryTol are goldenTrajectory's relative tolerances: each step's loss and gradient
// norm, the final loss, and the adapter after ten steps.
type trajectoryTol struct{ loss, norm, final, adapter float64 }

// goldenTrajectory runs the ten golden steps on exec (nil: the CPU) and checks them against
// torch's within tol.
func goldenTrajectory(t *testing.T, exec model.Executor, tol trajectoryTol) {
	gd := loadGolden(t)
	gd.m.Exec = exec
	defer func() { gd.m.Exec = nil }()
	dir := golden.Path(t, "tiny-qwen")
	b, err := os.ReadFile(filepath.Join(dir, "golden_train.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want struct {
		Steps []struct {
			Step     int     `json:"step"`
			LR       float64 `json:"lr"`
			Loss     float64 `json:"loss"`
			GradNorm float64 `json:"grad_norm_before_clip"`
		} `json:"steps"`
		FinalLoss float64 `json:"final_loss"`
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	params := gd.a.Params()
	gg, err := NewGradGraph(gd.m, params, gd.batch.Batch, gd.batch.Seq)
	if err != nil {
		t.Fatal(err)
	}
	defer gg.Close()
	sizes := make([]int, len(params))
	values := make([][]float32, len(params))
	for i, p := range params {
		sizes[i], values[i] = p.Value.Size(), p.Value.Data().([]float32)
	}
	opt := optim.NewAdamW(sizes, 0.9, 0.999, 1e-8, 0.1)
	sched := optim.Schedule{Kind: "cosine", Peak: 1e-2, Warmup: 2, Total: 10}
	dev := goldenDeviceParams(t, exec, params, values, opt)
	var worstLoss, worstNorm float64
	for _, w := range want.Steps {
		lr := sched.LR(w.Step)
		var loss, norm float64
		var grads [][]float32
		if dev != nil { // the trainer's step on the device: clipping and AdamW there
			loss, norm = goldenDeviceStep(t, gg, dev, gd.batch, opt, lr)
		} else {
			if loss, grads, err = gg.Run(gd.batch, 0); err != nil {
				t.Fatal(err)
			}
			norm = optim.ClipGradNorm(grads, 1.0)
		}
		if math.Abs(lr-w.LR) > 1e-12 { // measured 0
			t.Errorf("step %d: lr %g, golden %g", w.Step, lr, w.LR)
		}
		worstLoss, worstNorm = max(worstLoss, math.Abs(loss-w.Loss)/w.Loss), max(worstNorm, math.Abs(norm-w.GradNorm)/w.GradNorm)
		if math.Abs(loss-w.Loss) > tol.loss*w.Loss {
			t.Errorf("step %d: loss %.7f, golden %.7f", w.Step, loss, w.Loss)
		}
		if math.Abs(norm-w.GradNorm) > tol.norm*w.GradNorm {
			t.Errorf("step %d: grad norm %.7f, golden %.7f", w.Step, norm, w.GradNorm)
		}
		if dev != nil {
			continue
		}
		if err := opt.Update(values, grads, lr); err != nil {
			t.Fatal(err)
		}
	}
	loss, _, err := gg.Run(gd.batch, 0)
	if err != nil {
		t.Fatal(err)
	}
	if dev != nil {
		if err := dev.Download(values, opt.M, opt.V); err != nil {
			t.Fatal(err)
		}
	}
	if math.Abs(loss-want.FinalLoss) > tol.final*want.FinalLoss {
		t.Errorf("final loss %.7f, golden %.7f", loss, want.FinalLoss)
	}
	ck, err := checkpoints.OpenFiles(dir, filepath.Join(dir, "golden_train.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	worst := 0.0
	for i, l := range gd.a.Layers {
		for j, key := range []string{l.KeyA(), l.KeyB()} {
			w, err := ck.Float32("after10." + key)
			if err != nil {
				t.Fatal(err)
			}
			e := relDiff(values[2*i+j], w)
			if e > tol.adapter {
				t.Errorf("%s after 10 steps differs by %.3g relative", key, e)
			}
			worst = max(worst, e)
		}
	}
	t.Logf("worst relative differences: loss %.3g, gradient norm %.3g, final loss %.3g, adapter after 10 steps %.3g",
		worstLoss, worstNorm, math.Abs(loss-want.FinalLoss)/want.FinalLoss, worst)
}

// goldenDeviceParams keeps params on exec's device with their optimizer when it can
// (model.OptimExecutor), as the trainer does; nil otherwise.
func goldenDeviceParams(t *testing.T, exec model.Executor, params []*model.Param, values [][]float32, opt *optim.AdamW) model.DeviceParams {
	ox, ok := exec.(model.OptimExecutor)
	if !ok {
		return nil
	}
	dev, err := ox.NewDeviceParams(params)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if err := dev.Upload(values, opt.M, opt.V); err != nil {
		t.Fatal(err)
	}
	return dev
}

// goldenDeviceStep is one golden step as the trainer takes it on the device: the batch's
// gradients pooled with its trained tokens as weight, clipped at 1 and AdamW at lr there. It
// returns the loss and the norm before clipping.
func goldenDeviceStep(t *testing.T, gg *GradGraph, dev model.DeviceParams, b *Batch, opt *optim.AdamW, lr float64) (float64, float64) {
	t.Helper()
	gg.set(b, 0)
	n := b.Targets()
	if err := dev.Accumulate(gg.device, n, true); err != nil {
		t.Fatal(err)
	}
	if err := gg.device.Run(); err != nil {
		t.Fatal(err)
	}
	loss, err := gg.device.Loss()
	if err != nil {
		t.Fatal(err)
	}
	norm, err := dev.Clip(n, 1.0)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Update(opt, lr); err != nil {
		t.Fatal(err)
	}
	return loss, norm
}

// TestLoadPEFTVariants: adapters written by PEFT may name targets by regular expression or by
// full module name and may use rank-stabilised scaling; unsupported features are refused.
func TestLoadPEFTVariants(t *testing.T) {
	gd := loadGolden(t)
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := gd.a.Save(dir, "tiny-qwen", nil); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, ConfigFile)
	orig, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(from, to string) {
		t.Helper()
		if err := os.WriteFile(cfgPath, []byte(strings.Replace(string(orig), from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	load := func() (*Adapter, error) {
		m, err := model.Load(golden.Path(t, "tiny-qwen"), model.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		a, _, err := Load(dir, m)
		return a, err
	}
	edit(`"target_modules": [
    "c_attn",
    "c_proj",
    "w1",
    "w2"
  ]`, `"target_modules": "transformer\\.h\\.\\d+\\.(attn|mlp)\\.(c_attn|c_proj|w1|w2)"`)
	a, err := load()
	if err != nil || len(a.Layers) != 10 {
		t.Fatalf("regex targets: %v, %d layers (want 10)", err, layers(a))
	}
	edit(`"target_modules": [
    "c_attn",
    "c_proj",
    "w1",
    "w2"
  ]`, `"target_modules": "transformer\\.h\\.\\d+\\.attn\\.c_attn"`)
	if _, err := load(); err == nil || !strings.Contains(err.Error(), "belongs to no targeted layer") {
		t.Fatalf("tensors outside the regex targets accepted: %v", err)
	}
	edit(`"bias": "none",`, `"bias": "none", "use_rslora": true,`)
	a, err = load()
	if err != nil || math.Abs(a.Layers[0].Scale-8/math.Sqrt(4)) > 1e-12 { // measured 0
		t.Fatalf("rslora: %v", err)
	}
	edit(`"bias": "none",`, `"bias": "none", "use_dora": true,`)
	if _, err := load(); err == nil || !strings.Contains(err.Error(), "use_dora") {
		t.Fatalf("DoRA accepted: %v", err)
	}
}

func layers(a *Adapter) int {
	if a == nil {
		return 0
	}
	return len(a.Layers)
}
