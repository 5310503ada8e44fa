package quantize

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/model"
)

// goldenRows are the real tokens of the golden batch's two rows.
func goldenRows(t *testing.T) [][]int {
	t.Helper()
	dir := golden.Path(t, "tiny-qwen")
	ck, err := checkpoints.OpenFiles(dir, filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	ids, _ := ck.Tensor("input_ids")
	mask, _ := ck.Tensor("attention_mask")
	iv, _ := ids.Int64()
	mv, _ := mask.Int64()
	seq := int(ids.Shape[1])
	var rows [][]int
	for b := 0; b < int(ids.Shape[0]); b++ {
		var r []int
		for i := 0; i < seq; i++ {
			if mv[b*seq+i] != 0 {
				r = append(r, int(iv[b*seq+i]))
			}
		}
		rows = append(rows, r)
	}
	return rows
}

// quantizedLoss quantizes tiny-qwen with method, saves it in the AutoGPTQ layout, loads it
// back through the Int4 kernels and returns the pooled loss on the golden rows.
func quantizedLoss(t *testing.T, rows [][]int, method Method, o Options) (float64, []float32, []LayerReport) {
	t.Helper()
	src := golden.Path(t, "tiny-qwen")
	m, err := model.Load(src, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	layers, reports, err := Calibrate(m, rows, o, method, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), string(method))
	if err := Save(out, src, layers, o); err != nil {
		t.Fatal(err)
	}
	q, err := model.Load(out, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, ok := q.Blocks[0].QKV.(*model.Int4); !ok {
		t.Fatalf("the saved model loads with %T projections, not Int4", q.Blocks[0].QKV)
	}
	return loss(t, q, rows), logits(t, q, rows), reports
}

// logits are the model's logits at every position of the rows, concatenated.
func logits(t *testing.T, m *model.Model, rows [][]int) []float32 {
	t.Helper()
	var out []float32
	for _, r := range rows {
		run, err := m.NewRunner(1, len(r), model.Training, false, false)
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]int32, len(r))
		for i, id := range r {
			ids[i] = int32(id)
		}
		run.SetBatch(ids, nil, nil)
		if err := run.Run(); err != nil {
			t.Fatal(err)
		}
		out = append(out, run.Logits()...)
		run.Close()
	}
	return out
}

func relDiff32(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

func loss(t *testing.T, m *model.Model, rows [][]int) float64 {
	t.Helper()
	ev := m.NewEvaluator()
	defer ev.Close()
	var sum float64
	var n int
	for _, r := range rows {
		s, k, err := ev.Score(r, r)
		if err != nil {
			t.Fatal(err)
		}
		sum += s
		n += k
	}
	return sum / float64(n)
}

// TestQuantizeTinyGolden: the tiny model quantized with its own golden batch as calibration,
// saved in the AutoGPTQ layout and evaluated through the Int4 kernels, loses less than
// round-to-nearest on the same grid, and every layer's GPTQ error beats RTN's.
func TestQuantizeTinyGolden(t *testing.T) {
	rows := goldenRows(t)
	src := golden.Path(t, "tiny-qwen")
	base, err := model.Load(src, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, ref := loss(t, base, rows), logits(t, base, rows)
	base.Close()
	o := DefaultOptions()
	o.GroupSize = 16
	gptq, gl, reports := quantizedLoss(t, rows, MethodGPTQ, o)
	rtn, rl, _ := quantizedLoss(t, rows, MethodRTN, o)
	eg, er := relDiff32(gl, ref), relDiff32(rl, ref)
	t.Logf("loss: float %.5f, GPTQ %.5f (%+.5f), RTN %.5f (%+.5f); logits off by %.4f (GPTQ) and %.4f (RTN) relative", before, gptq, gptq-before, rtn, rtn-before, eg, er)
	// A random model's loss can move either way under quantization noise, so the size of the
	// change is what is compared, with the logits' distance from the float model.
	if !(math.Abs(gptq-before) < math.Abs(rtn-before)) || !(eg < er) {
		t.Errorf("GPTQ changes the loss by %+.5f and the logits by %.4f; round-to-nearest by %+.5f and %.4f", gptq-before, eg, rtn-before, er)
	}
	if len(reports) != 10 {
		t.Fatalf("%d layer reports, want 10", len(reports))
	}
	for _, r := range reports {
		t.Logf("%-28s GPTQ %.4f  RTN %.4f", r.Name, r.Error, r.RTNError)
		if !(r.Error <= r.RTNError) {
			t.Errorf("%s: GPTQ error %.4f above RTN's %.4f", r.Name, r.Error, r.RTNError)
		}
	}
}
