package lora

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// TestMergeGolden: folding the golden adapter into tiny-qwen gives a model, in the original
// two-shard layout, whose logits match the adapter's (up to bf16 rounding of the merged weights).
func TestMergeGolden(t *testing.T) {
	gd := loadGolden(t)
	adapterDir := filepath.Join(t.TempDir(), "adapter")
	if err := gd.a.Save(adapterDir, "tiny-qwen", nil); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "merged")
	src := golden.Path(t, "tiny-qwen")
	if err := Merge(src, adapterDir, out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("merged model lacks %s", f)
		}
	}
	merged, err := model.Load(out, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer merged.Close()
	want := gd.ref.Floats(t, "lora.logits")
	e := relDiff(gd.logits(t, merged), want)
	t.Logf("merged bf16 model vs the reference adapter logits: %.3g relative", e)
	base := gd.ref.Floats(t, "logits")
	effect := relDiff(base, want)
	// measured 2.5e-3, the bf16 rounding of the merged weights; it must also stay under a
	// tenth of what the adapter itself changes
	if e > 1e-2 || e > effect/10 {
		t.Errorf("merged logits differ by %.3g relative; the adapter itself changes them by %.3g", e, effect)
	}
	if err := Merge(src, adapterDir, out); err == nil {
		t.Error("merging into a directory that holds a model was allowed")
	}
}

// TestFold: folding the golden adapter in memory gives the logits of the adapter (within bf16
// rounding of the folded weights) with plain projections only, and the same logits as the
// model Merge writes; trained special-token rows fold into wte and lm_head too.
func TestFold(t *testing.T) {
	gd := loadGolden(t)
	adapterDir := filepath.Join(t.TempDir(), "adapter")
	if err := gd.a.Save(adapterDir, "tiny-qwen", nil); err != nil {
		t.Fatal(err)
	}
	src := golden.Path(t, "tiny-qwen")
	logits := func(m *model.Model) []float32 { return gd.logits(t, m) }
	m, err := model.Load(src, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := Attach(adapterDir, m); err != nil {
		t.Fatal(err)
	}
	n, err := Fold(m)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(gd.a.Layers) {
		t.Fatalf("folded %d layers of %d", n, len(gd.a.Layers))
	}
	for _, s := range m.Projections() {
		if _, ok := (*s.P).(*model.Dense); !ok {
			t.Fatalf("%s is a %T after folding", s.Name, *s.P)
		}
	}
	folded := logits(m)
	want, base := gd.ref.Floats(t, "lora.logits"), gd.ref.Floats(t, "logits")
	// measured 2.5e-3 (bf16 rounding of the folded weights, as in TestMergeGolden)
	if e, effect := relDiff(folded, want), relDiff(base, want); e > 1e-2 || e > effect/10 {
		t.Errorf("folded logits differ from the adapter's by %.3g; the adapter changes them by %.3g", e, effect)
	}
	out := filepath.Join(t.TempDir(), "merged")
	if err := Merge(src, adapterDir, out); err != nil {
		t.Fatal(err)
	}
	merged, err := model.Load(out, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer merged.Close()
	if e := relDiff(folded, logits(merged)); e > 1e-6 { // measured 0
		t.Errorf("folded in memory and merged on disk differ by %.3g", e)
	}

	// special-token rows
	m2, err := model.Load(src, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	plain := logits(m2)
	var ranks [][]byte // 300 ordinary tokens: the special ones follow within the 512 rows
	for i := 0; i < 256; i++ {
		ranks = append(ranks, []byte{byte(i)})
	}
	for i := 0; i < 44; i++ {
		ranks = append(ranks, []byte{'a', byte('a' + i)})
	}
	tok, err := tokenizer.New(ranks)
	if err != nil {
		t.Fatal(err)
	}
	s, err := AddSpecialTokens(m2, tok, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range s.Params() {
		for i, v := 0, p.Value.Data().([]float32); i < len(v); i++ {
			v[i] = float32(i%7-3) * 0.05
		}
	}
	withRows := logits(m2)
	if _, err := Fold(m2); err != nil {
		t.Fatal(err)
	}
	if _, ok := m2.Embed.(*model.Table); !ok {
		t.Fatal("the embedding rows were not folded")
	}
	// measured 1.8e-3 (bf16 rounding of the folded rows)
	if e, effect := relDiff(logits(m2), withRows), relDiff(plain, withRows); e > 1e-2 || e > effect/10 {
		t.Errorf("folded special-token rows differ by %.3g; the rows change the logits by %.3g", e, effect)
	}
}

// logits runs the golden batch through m.
func (gd *goldenData) logits(t *testing.T, m *model.Model) []float32 {
	t.Helper()
	r, err := m.NewRunner(gd.batch.Batch, gd.batch.Seq, model.Training, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetBatch(gd.batch.IDs, gd.batch.Labels, gd.batch.Mask)
	if err := r.Run(); err != nil {
		t.Fatal(err)
	}
	return append([]float32(nil), r.Logits()...)
}
