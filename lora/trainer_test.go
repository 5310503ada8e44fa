package lora

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// tinySetup writes a tiny model, loads it and renders a few conversations.
func tinySetup(t *testing.T) (string, []data.Sequence, int) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tiny")
	o := model.DefaultTiny()
	o.VocabRanks = 2048
	if _, err := model.WriteTiny(dir, o); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var exs []data.Example
	for i := 0; i < 6; i++ {
		c := &data.Conversation{System: tokenizer.DefaultSystem, Messages: []data.Message{
			{Role: "user", Content: fmt.Sprintf("What is %d plus %d?", i, i)}, {Role: "assistant", Content: fmt.Sprintf("It is %d.", 2*i)}}}
		exs = append(exs, data.Example{Conv: c, Source: fmt.Sprint(i)})
	}
	seqs, _, err := data.Prepare(tok, exs, data.MaskQwen, 64)
	if err != nil {
		t.Fatal(err)
	}
	return dir, seqs, tok.EndOfTextID()
}

func newTestTrainer(t *testing.T, dir string, seqs []data.Sequence, pad int) *Trainer {
	t.Helper()
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	cfg := DefaultTrainConfig()
	cfg.LoRA.R, cfg.LoRA.Alpha, cfg.LoRA.Dropout = 4, 8, 0.1
	cfg.LR, cfg.Steps, cfg.BatchSize, cfg.GradAccum, cfg.WarmupSteps = 1e-2, 4, 2, 2, 1
	a, err := Apply(m, cfg.LoRA, cfg.Seed)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(m, a, a.Params(), cfg, seqs, nil, pad)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
	})
	return tr
}

// TestResumeIsBitExact: 4 straight steps equal 2 steps, a checkpoint, a new process-like
// trainer restored from it, and 2 more steps, bit for bit (dropout on, accumulation on).
func TestResumeIsBitExact(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	straight := newTestTrainer(t, dir, seqs, pad)
	var losses []float64
	for !straight.Done() {
		r, err := straight.TrainStep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		losses = append(losses, r.Loss)
	}
	if !(losses[3] < losses[0]) {
		t.Errorf("loss did not fall over 4 steps: %v", losses)
	}

	first := newTestTrainer(t, dir, seqs, pad)
	for i := 0; i < 2; i++ {
		if _, err := first.TrainStep(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	ckpt, err := first.SaveCheckpoint(out, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	second := newTestTrainer(t, dir, seqs, pad)
	if err := second.LoadCheckpoint(ckpt); err != nil {
		t.Fatal(err)
	}
	for i := 2; i < 4; i++ {
		r, err := second.TrainStep(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if r.Loss != losses[i] {
			t.Errorf("step %d: resumed loss %v, straight %v", i, r.Loss, losses[i])
		}
	}
	for i, p := range straight.Params {
		a, b := p.Value.Data().([]float32), second.Params[i].Value.Data().([]float32)
		if !slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) }) {
			t.Fatalf("%s differs after resuming", p.Name)
		}
	}
}

// TestPackingEqualsSeparateSequences: a packed row gives the same token-weighted loss and
// gradients as its sequences trained as a padded batch.
func TestPackingEqualsSeparateSequences(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	seqs = seqs[:3]
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, err := Apply(m, Config{R: 4, Alpha: 8, Targets: Targets}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range a.Layers { // a nonzero B, so every gradient is nonzero
		for i, v := range l.A.Value.Data().([]float32) {
			l.B.Value.Data().([]float32)[i%l.B.Value.Size()] += v
		}
	}
	run := func(b *Batch) (float64, [][]float32) {
		g, err := NewGradGraph(m, a.Params(), b.Batch, b.Seq)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		loss, grads, err := g.Run(b, 0)
		if err != nil {
			t.Fatal(err)
		}
		out := make([][]float32, len(grads))
		for i, gr := range grads {
			out[i] = slices.Clone(gr)
		}
		return loss, out
	}
	sepLoss, sepGrads := run(MakeBatch(seqs, pad, 64))
	packed := data.Pack(seqs, 1000)
	if len(packed) != 1 {
		t.Fatalf("%d packed rows, want 1", len(packed))
	}
	packLoss, packGrads := run(MakeBatch(packed, pad, 1000))
	// measured 0 (the same float32 sums); 1e-6 leaves room for a reordered sum only
	if math.Abs(sepLoss-packLoss) > 1e-6*math.Abs(sepLoss) {
		t.Errorf("packed loss %.7f, separate %.7f", packLoss, sepLoss)
	}
	for i := range sepGrads {
		var num, den float64
		for j := range sepGrads[i] {
			d := float64(sepGrads[i][j] - packGrads[i][j])
			num += d * d
			den += float64(sepGrads[i][j]) * float64(sepGrads[i][j])
		}
		if math.Sqrt(num/den) > 1e-6 { // measured 0
			t.Errorf("gradient %d differs by %.3g relative", i, math.Sqrt(num/den))
		}
	}
}

// TestValidationHasNoDropout: the validation loss of an adapter with dropout is deterministic
// and equals the loss of the same adapter without dropout.
func TestValidationHasNoDropout(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	tr := newTestTrainer(t, dir, seqs, pad) // dropout 0.1
	tr.Val = seqs[:2]
	for _, l := range tr.Adapter.Layers { // a nonzero B, so dropout would change the output
		for i, v := range l.A.Value.Data().([]float32) {
			l.B.Value.Data().([]float32)[i%l.B.Value.Size()] += v
		}
	}
	a, err := tr.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range tr.Adapter.Layers {
		l.Dropout = 0
	}
	b, err := tr.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Errorf("validation loss %v with dropout configured, %v without: validation must not drop", a, b)
	}
}
