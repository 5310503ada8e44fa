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

// TestEmulatedDropoutReaders: a dropout read only by projections (as their input, and by
// their weight gradients) is kept in bf16; one also read by an addition (which does not
// round it) stays float32 (the same arena with the saving as without). Either way the loss
// and gradients are those computed without the saving, bit for bit.
func TestEmulatedDropoutReaders(t *testing.T) {
	d := openDevice(t)
	const batch, seq, vocab, width = 2, 8, 32, 16
	for _, added := range []bool{false, true} {
		run := func(savings bool) (float64, [][]float32, int64) {
			cuda.SetArenaSavings(t, savings)
			r := rand.New(rand.NewPCG(5, 6))
			g := G.NewGraph()
			param := func(name string, s ...int) *G.Node {
				v := make([]float32, tensor.Shape(s).TotalSize())
				for i := range v {
					v[i] = float32(r.NormFloat64() * 0.3)
				}
				return G.NewTensor(g, tensor.Float32, len(s), G.WithShape(s...), G.WithName(name), G.WithValue(tensor.New(tensor.WithShape(s...), tensor.WithBacking(v))))
			}
			st := &autograd.Step{Batch: batch, Seq: seq, IDs: make([]int32, batch*seq), Labels: make([]int32, batch*seq), Seed: 9}
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
			wte, a, b, head := param("wte", vocab, width), param("a", 4, width), param("b", width, 4), param("head", vocab, width)
			h := must(autograd.Embedding(wte, st, batch, seq, tensor.Float32, false))
			dr := must(autograd.Dropout(h, 0.3, 1, st))
			x := must(G.Add(h, must(autograd.Linear(must(autograd.Linear(dr, a, nil, true, false)), b, nil, true, false))))
			if added {
				x = must(G.Add(x, dr))
			}
			loss := must(autograd.CrossEntropy(must(autograd.Linear(x, head, nil, false, false)), st))
			grads, err := G.Grad(loss, a, b)
			if err != nil {
				t.Fatal(err)
			}
			l, gs, p := runGraph(t, d, g, loss, grads, st, cuda.GradOptions{})
			return l, gs, p.ActivationBytes()
		}
		wantLoss, want, without := run(false)
		gotLoss, got, with := run(true)
		t.Logf("dropout also added %v: arena %d bytes with the savings, %d without", added, with, without)
		if added && with != without || !added && with >= without {
			t.Errorf("dropout also added %v: arena %d bytes with the savings, %d without", added, with, without)
		}
		if gotLoss != wantLoss {
			t.Errorf("dropout also added %v: loss %v with the savings, %v without", added, gotLoss, wantLoss)
		}
		for i, name := range []string{"a", "b"} {
			for j := range want[i] {
				if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
					t.Errorf("dropout also added %v: %s's gradient [%d] is %v with the savings, %v without", added, name, j, got[i][j], want[i][j])
					break
				}
			}
		}
	}
}
