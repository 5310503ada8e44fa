package lora

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/model"
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
	r, err := merged.NewRunner(gd.batch.Batch, gd.batch.Seq, model.Training, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.SetBatch(gd.batch.IDs, gd.batch.Labels, gd.batch.Mask)
	if err := r.Run(); err != nil {
		t.Fatal(err)
	}
	want := gd.ref.Floats(t, "lora.logits")
	e := relDiff(r.Logits(), want)
	t.Logf("merged bf16 model vs the reference adapter logits: %.3g relative", e)
	base := gd.ref.Floats(t, "logits")
	effect := relDiff(base, want)
	if e > 1e-2 || e > effect/10 {
		t.Errorf("merged logits differ by %.3g relative; the adapter itself changes them by %.3g", e, effect)
	}
	if err := Merge(src, adapterDir, out); err == nil {
		t.Error("merging into a directory that holds a model was allowed")
	}
}
