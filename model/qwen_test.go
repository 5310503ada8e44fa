package model

import (
	"math"
	"path/filepath"
	"testing"

	G "gorgonia.org/gorgonia"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/golden"
)

// goldenBatch is the reference batch of tiny-qwen/golden.safetensors.
type goldenBatch struct {
	ids, labels []int32
	mask        []bool
	batch, seq  int
	ck          *checkpoints.Checkpoint
}

func loadGolden(t *testing.T) (*Model, *goldenBatch) {
	t.Helper()
	dir := golden.Path(t, "tiny-qwen")
	m, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ck, err := checkpoints.OpenFiles(dir, filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	gb := &goldenBatch{ck: ck}
	ints := func(name string) []int32 {
		tn, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		gb.batch, gb.seq = int(tn.Shape[0]), int(tn.Shape[1])
		v, err := tn.Int64()
		if err != nil {
			t.Fatal(err)
		}
		out := make([]int32, len(v))
		for i, x := range v {
			out[i] = int32(x)
		}
		return out
	}
	gb.ids, gb.labels = ints("input_ids"), ints("labels")
	for _, x := range ints("attention_mask") {
		gb.mask = append(gb.mask, x != 0)
	}
	return m, gb
}

func (gb *goldenBatch) floats(t *testing.T, name string) []float32 {
	t.Helper()
	v, err := gb.ck.Float32(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func relDiff(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

// TestGoldenLogits runs the padded golden batch through the bf16 model and compares logits
// (each row separately) and the loss with transformers' outputs.
func TestGoldenLogits(t *testing.T) {
	m, gb := loadGolden(t)
	r, err := m.NewRunner(gb.batch, gb.seq, Training, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetBatch(gb.ids, gb.labels, gb.mask)
	if err := r.Run(); err != nil {
		t.Fatal(err)
	}
	want := gb.floats(t, "logits")
	got := r.Logits()
	if len(got) != len(want) {
		t.Fatalf("%d logits, golden has %d", len(got), len(want))
	}
	per := len(want) / gb.batch
	for b := 0; b < gb.batch; b++ {
		if e := relDiff(got[b*per:(b+1)*per], want[b*per:(b+1)*per]); e > 1e-4 || math.IsNaN(e) {
			t.Errorf("row %d: logits differ from golden by %.3g relative (limit 1e-4)", b, e)
		} else {
			t.Logf("row %d: logits relative difference %.3g", b, e)
		}
	}
	loss, err := r.Loss()
	if err != nil {
		t.Fatal(err)
	}
	wantLoss := float64(gb.floats(t, "loss")[0])
	if d := math.Abs(loss - wantLoss); d > 1e-5 {
		t.Errorf("loss %.8f, golden %.8f (difference %.3g, limit 1e-5)", loss, wantLoss, d)
	}
	t.Logf("loss %.8f golden %.8f", loss, wantLoss)
}

// TestGoldenGradients differentiates the loss with gorgonia's Grad through the custom ops and
// compares d loss / d every weight with the full fine-tuning gradients of the reference.
func TestGoldenGradients(t *testing.T) {
	dir := golden.Path(t, "tiny-qwen")
	m, err := Load(dir, LoadOptions{Float32: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_, gb := loadGolden(t)
	g := NewGraph(m, gb.batch, gb.seq, Training, false)
	logits, err := m.Forward(g)
	if err != nil {
		t.Fatal(err)
	}
	loss, err := g.Loss(logits)
	if err != nil {
		t.Fatal(err)
	}
	params := m.Params()
	wrt := make(G.Nodes, len(params))
	for i, p := range params {
		wrt[i] = g.Param(p)
	}
	if _, err := G.Grad(loss, wrt...); err != nil {
		t.Fatal(err)
	}
	g.Step.IDs, g.Step.Labels, g.Step.KeyMask = gb.ids, gb.labels, gb.mask
	vm := G.NewTapeMachine(g.ExprGraph)
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for i, p := range params {
		gv, err := wrt[i].Grad()
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		e := relDiff(gv.Data().([]float32), gb.floats(t, "grad."+p.Name))
		if e > 1e-4 || math.IsNaN(e) {
			t.Errorf("d loss / d %s differs from golden by %.3g relative", p.Name, e)
		}
		worst = max(worst, e)
	}
	t.Logf("%d gradients, worst relative difference %.3g", len(params), worst)
}
