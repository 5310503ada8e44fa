package quantize_test

import (
	"math"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
	"github.com/qwen-tune/qwen-tune/internal/tinybatch"
	"github.com/qwen-tune/qwen-tune/internal/tquant"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// quantizedLoss quantizes tiny-qwen with method, saves it in the AutoGPTQ layout, loads it
// back through the Int4 kernels and returns the pooled loss on the golden rows.
func quantizedLoss(t *testing.T, rows [][]int, method quantize.Method, o quantize.Options) (float64, []float32, []quantize.LayerReport) {
	t.Helper()
	out, reports := tquant.Save(t, golden.Path(t, "tiny-qwen"), rows, method, o)
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

// meanKL is the mean over positions of KL(softmax(p) || softmax(q)) for logits rows of width v.
func meanKL(p, q []float32, v int) float64 {
	logSoftmax := func(x []float32) []float64 {
		m := math.Inf(-1)
		for _, a := range x {
			m = math.Max(m, float64(a))
		}
		var s float64
		for _, a := range x {
			s += math.Exp(float64(a) - m)
		}
		out := make([]float64, len(x))
		for i, a := range x {
			out[i] = float64(a) - m - math.Log(s)
		}
		return out
	}
	var total float64
	rows := len(p) / v
	for r := 0; r < rows; r++ {
		lp, lq := logSoftmax(p[r*v:(r+1)*v]), logSoftmax(q[r*v:(r+1)*v])
		for i := range lp {
			total += math.Exp(lp[i]) * (lp[i] - lq[i])
		}
	}
	return total / float64(rows)
}

var relDiff32 = refmath.RelDiff[float32, float32]

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
	rows := tinybatch.Load(t).Rows()
	src := golden.Path(t, "tiny-qwen")
	base, err := model.Load(src, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, ref := loss(t, base, rows), logits(t, base, rows)
	base.Close()
	o := quantize.DefaultOptions()
	o.GroupSize = 16
	gptq, gl, reports := quantizedLoss(t, rows, quantize.MethodGPTQ, o)
	rtn, rl, _ := quantizedLoss(t, rows, quantize.MethodRTN, o)
	eg, er := relDiff32(gl, ref), relDiff32(rl, ref)
	kg, kr := meanKL(ref, gl, 512), meanKL(ref, rl, 512)
	t.Logf("loss on the golden rows: float %.5f, GPTQ %.5f (%+.5f), RTN %.5f (%+.5f)", before, gptq, gptq-before, rtn, rtn-before)
	t.Logf("KL(float || quantized) per token: GPTQ %.6f, RTN %.6f; logits off by %.4f and %.4f relative", kg, kr, eg, er)
	// The tiny model is random: its loss on the golden tokens sits near log(vocab) and moves by
	// noise either way when weights change. What quantization costs is the extra loss against
	// the float model's own predictions, the KL divergence, which GPTQ must keep below RTN's.
	if !(kg < kr) || !(eg < er) {
		t.Errorf("GPTQ: KL %.6f, logits %.4f; round-to-nearest: KL %.6f, logits %.4f", kg, eg, kr, er)
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
