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
	for _, v := range swigluReaderVariants() {
		reads := v.reads
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
			sum := must(G.Add(y, z))
			if v.zFirst {
				sum = must(G.Add(z, y))
			}
			logits := must(autograd.Linear(sum, head, nil, false, false))
			loss := must(autograd.CrossEntropy(logits, st))
			wrt := G.Nodes{wu, wg, w2}
			if v.w2First {
				wrt = G.Nodes{w2, wg, wu}
			}
			grads, err := G.Grad(loss, wrt...)
			if err != nil {
				t.Fatal(err)
			}
			l, gs, _ := runGraph(t, d, g, loss, grads, st, cuda.GradOptions{})
			if v.w2First {
				gs[0], gs[2] = gs[2], gs[0]
			}
			return l, gs
		}
		wantLoss, want := run(false)
		gotLoss, got := run(true)
		if gotLoss != wantLoss {
			t.Errorf("%+v: loss %v with the savings, %v without", v, gotLoss, wantLoss)
		}
		for i, name := range []string{"up", "gate", "w2"} {
			for j := range want[i] {
				if math.Float32bits(got[i][j]) != math.Float32bits(want[i][j]) {
					t.Errorf("%+v: %s's gradient [%d] is %v with the savings, %v without", v, name, j, got[i][j], want[i][j])
					break
				}
			}
		}
	}
}

type swigluReaderVariant struct {
	reads           string // which projection a second projection reads too
	zFirst, w2First bool   // the order of the sum's operands and of the gradients asked for
}

// swigluReaderVariants are orders of the same graph, which move the other reader's gradient
// op around SwiGLU's two gradient ops in gorgonia's schedule.
func swigluReaderVariants() []swigluReaderVariant {
	var vs []swigluReaderVariant
	for _, reads := range []string{"up", "gate"} {
		for _, zFirst := range []bool{false, true} {
			for _, w2First := range []bool{false, true} {
				vs = append(vs, swigluReaderVariant{reads, zFirst, w2First})
			}
		}
	}
	return vs
}
