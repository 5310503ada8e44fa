//go:build cudaemu && !qtcuda

package cuda_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
)

// TestEmulatedSwiGLUGradInPlaceWithAnotherReader: SwiGLU's input gradients take over the
// up or gate projection's buffer only when nothing reads it after: here the projection is
// also the input of a trained projection (whose weight gradient reads it in the backward,
// scheduled before SwiGLU's gradients here), and the gradients are those computed without
// the saving, bit for bit.
func TestEmulatedSwiGLUGradInPlaceWithAnotherReader(t *testing.T) {
	d := openDevice(t)
	const batch, seq, vocab, width, mlp = 2, 8, 32, 16, 48
	for _, reads := range []string{"up", "gate"} {
		run := func(savings bool) (float64, [][]float32) {
			cuda.SetArenaSavings(t, savings)
			r := rand.New(rand.NewPCG(3, 4))
			g := G.NewGraph()
			param := func(name string, s ...int) *G.Node {
				v := make([]float32, tensor.Shape(s).TotalSize())
				for i := range v {
					v[i] = float32(r.NormFloat64() * 0.3)
				}
				return G.NewTensor(g, tensor.Float32, len(s), G.WithShape(s...), G.WithName(name), G.WithValue(tensor.New(tensor.WithShape(s...), tensor.WithBacking(v))))
			}
			st := &autograd.Step{Batch: batch, Seq: seq, IDs: make([]int32, batch*seq), Labels: make([]int32, batch*seq)}
			for i := range st.IDs {
				st.IDs[i], st.Labels[i] = int32(r.IntN(vocab)), int32(r.IntN(vocab))
			}
			must := func(n *G.Node, err error) *G.Node {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			wte, wu, wg, w2, head := param("wte", vocab, width), param("up", mlp, width), param("gate", mlp, width), param("w2", mlp, mlp), param("head", vocab, mlp)
			h := must(autograd.Embedding(wte, st, batch, seq, tensor.Float32, false))
			up := must(autograd.Linear(h, wu, nil, true, false))
			gate := must(autograd.Linear(h, wg, nil, true, false))
			other := up
			if reads == "gate" {
				other = gate
			}
			y := must(autograd.SwiGLU(up, gate))
			z := must(autograd.Linear(other, w2, nil, true, false))
			logits := must(autograd.Linear(must(G.Add(y, z)), head, nil, false, false))
			loss := must(autograd.CrossEntropy(logits, st))
			grads, err := G.Grad(loss, wu, wg, w2)
			if err != nil {
				t.Fatal(err)
			}
			l, gs, _ := runGraph(t, d, g, loss, grads, st, cuda.GradOptions{})
			return l, gs
		}
		wantLoss, want := run(false)
		gotLoss, got := run(true)
		if gotLoss != wantLoss {
			t.Errorf("%s read again: loss %v with the savings, %v without", reads, gotLoss, wantLoss)
		}
		for i, name := range []string{"up", "gate", "w2"} {
			for j := range want[i] {
				if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
					t.Errorf("%s read again: %s's gradient [%d] is %v with the savings, %v without", reads, name, j, got[i][j], want[i][j])
					break
				}
			}
		}
	}
}
