package lora

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/internal/tinybatch"
	"github.com/qwen-tune/qwen-tune/internal/tquant"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// dequantized replaces every GPTQ projection of m by a float32 Dense layer holding
// Int4.Dequantize() and the bias: the float model that computes what the packed one does.
func dequantized(t *testing.T, m *model.Model) {
	t.Helper()
	for _, s := range m.Projections() {
		q, ok := (*s.P).(*model.Int4)
		if !ok {
			t.Fatalf("%s loads as %T, not a GPTQ layer", s.Name, *s.P)
		}
		w := q.W
		*s.P = &model.Dense{
			Weight: &model.Param{Name: s.Name + ".weight", Value: tensor.New(tensor.WithShape(w.N, w.K), tensor.WithBacking(w.Dequantize()))},
			Bias:   &model.Param{Name: s.Name + ".bias", Value: tensor.New(tensor.WithShape(w.N), tensor.WithBacking(append([]float32(nil), w.Bias...)))},
		}
	}
}

// adapted applies the same adapter (r 4, alpha 8, no dropout) and special-token rows to m:
// A from the seed, B and the rows random instead of zero so that every gradient is non-zero.
func adapted(t *testing.T, m *model.Model) []*model.Param {
	t.Helper()
	a, err := Apply(m, Config{R: 4, Alpha: 8, Targets: Targets}, 7)
	if err != nil {
		t.Fatal(err)
	}
	h := m.Config.HiddenSize
	s := &SpecialTokens{Offset: 500, Count: 12}
	s.Embed = param("transformer.wte.token_adapter.trainable_tokens_delta", make([]float32, s.Count*h), s.Count, h)
	s.Head = param("lm_head.token_adapter.trainable_tokens_delta", make([]float32, s.Count*h), s.Count, h)
	s.install(m)
	params := append(a.Params(), s.Params()...)
	rng := rand.New(rand.NewPCG(3, 5))
	for _, p := range params[:len(params)-2] {
		if strings.HasSuffix(p.Name, "lora_B.weight") {
			for i, v := range p.Value.Data().([]float32) {
				p.Value.Data().([]float32)[i] = v + float32(0.05*rng.NormFloat64())
			}
		}
	}
	for _, p := range s.Params() {
		for i := range p.Value.Data().([]float32) {
			p.Value.Data().([]float32)[i] = float32(0.02 * rng.NormFloat64())
		}
	}
	return params
}

// TestQLoRAGradientsMatchDequantized: LoRA on the GPTQ layers of tiny-qwen (2, 4 and 8 bits)
// gives the loss, logits and gradients of every A, B and special-token row that the same
// adapter gives on a float model holding the dequantized weights, a graph built only from
// Dense projections. The GPTQ graph runs the packed Int4 op forward and its input gradient
// backward, so this checks the op's backward inside the whole model.
func TestQLoRAGradientsMatchDequantized(t *testing.T) {
	ref := tinybatch.Load(t)
	b := &Batch{Batch: ref.Batch, Seq: ref.Seq, IDs: ref.IDs, Labels: ref.Labels, Mask: ref.Mask}
	for _, bits := range []int{2, 4, 8} {
		t.Run(fmt.Sprintf("%d-bit", bits), func(t *testing.T) {
			o := quantize.DefaultOptions()
			o.Bits, o.GroupSize = bits, 16 // round-to-nearest on the first golden row
			dir, _ := tquant.Save(t, golden.Path(t, "tiny-qwen"), ref.Rows()[:1], quantize.MethodRTN, o)
			run := func(float bool) (float64, []float32, [][]float32, []*model.Param) {
				m, err := model.Load(dir, model.LoadOptions{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				if float {
					dequantized(t, m)
				}
				params := adapted(t, m)
				gg, err := NewGradGraph(m, params, b.Batch, b.Seq)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { gg.Close() })
				loss, grads, err := gg.Run(b, 0)
				if err != nil {
					t.Fatal(err)
				}
				// The training graph writes the loss gradient over its logits: an evaluation
				// runner computes them (without dropout, in both runs alike).
				ev, err := m.NewRunner(b.Batch, b.Seq, model.Evaluation, false, false)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ev.Close() })
				ev.SetBatch(b.IDs, nil, b.Mask)
				if err := ev.Run(); err != nil {
					t.Fatal(err)
				}
				return loss, slices.Clone(ev.Logits()), grads, params
			}
			ql, qlogits, qgrads, params := run(false)
			fl, flogits, fgrads, _ := run(true)
			if e := relDiff(qlogits, flogits); e > 3e-6 { // measured 0: both graphs run the same packed product on the same float32 weights; 3e-6 allows another summation order
				t.Errorf("logits differ by %.3g relative", e)
			}
			if d := math.Abs(ql-fl) / fl; d > 1e-6 { // measured 0 (the same float32 value); 1e-6 is a few float32 steps
				t.Errorf("loss %.8f through the GPTQ layers, %.8f through the dequantized weights", ql, fl)
			}
			worst := 0.0
			for i, p := range params {
				e := relDiff(qgrads[i], fgrads[i])
				if e > 7e-6 || math.IsNaN(e) { // measured 0, as the logits; 7e-6 allows another summation order
					t.Errorf("d loss / d %s differs by %.3g relative", p.Name, e)
				}
				worst = max(worst, e)
			}
			t.Logf("%d-bit: loss %.6f (%.3g relative), logits %.3g, %d gradients, worst relative difference %.3g", bits, ql, math.Abs(ql-fl)/fl, relDiff(qlogits, flogits), len(params), worst)
		})
	}
}
