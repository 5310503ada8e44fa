package autograd

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// TestCrossEntropyGrad32 checks the float32 gradient of the loss against softmax - onehot
// in float64, both as a training graph runs it (the backward reading the forward's
// log-sum-exps) and from the backward alone (computing them itself).
func TestCrossEntropyGrad32(t *testing.T) {
	const batch, seq, vocab = 2, 5, 300
	rng := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, batch*seq*vocab)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * 4)
	}
	labels := make([]int32, batch*seq)
	for i := range labels {
		labels[i] = int32(rng.IntN(vocab))
	}
	labels[3], labels[7] = IgnoreIndex, IgnoreIndex
	st := &Step{Batch: batch, Seq: seq, Labels: labels}

	// The reference, in float64 from the math.
	want := make([]float64, len(x))
	n := Targets(labels, batch, seq)
	for b := 0; b < batch; b++ {
		for s := 0; s+1 < seq; s++ {
			l := labels[b*seq+s+1]
			if l == IgnoreIndex {
				continue
			}
			row := x[(b*seq+s)*vocab:][:vocab]
			var sum float64
			for _, v := range row {
				sum += math.Exp(float64(v))
			}
			for j, v := range row {
				want[(b*seq+s)*vocab+j] = math.Exp(float64(v)) / sum / float64(n)
			}
			want[(b*seq+s)*vocab+int(l)] -= 1 / float64(n)
		}
	}
	check := func(name string, got []float32) {
		t.Helper()
		g := make([]float64, len(got))
		for i, v := range got {
			g[i] = float64(v)
		}
		if e := refmath.RelDiff(g, want); e > 5e-7 { // measured 4.5e-8, both ways
			t.Errorf("%s: float32 gradient's relative error %.3g", name, e)
		}
	}

	// In a graph: forward, then the gradient gorgonia adds.
	g := G.NewGraph()
	logits := G.NewMatrix(g, tensor.Float32, G.WithShape(batch*seq, vocab), G.WithName("logits"),
		G.WithValue(tensor.New(tensor.WithShape(batch*seq, vocab), tensor.WithBacking(append([]float32(nil), x...)))))
	loss, err := CrossEntropy(logits, st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := G.Grad(loss, logits); err != nil {
		t.Fatal(err)
	}
	vm := G.NewTapeMachine(g)
	if err := vm.RunAll(); err != nil {
		t.Fatal(err)
	}
	gv, err := logits.Grad()
	if err != nil {
		t.Fatal(err)
	}
	check("graph", gv.Data().([]float32))

	// The backward alone, never having seen a forward.
	op := &CrossEntropyOp{base: newBase("CrossEntropyGrad"), step: st, backward: true}
	out, err := op.Do(tensor.New(tensor.WithShape(batch*seq, vocab), tensor.WithBacking(append([]float32(nil), x...))), G.NewF32(1))
	if err != nil {
		t.Fatal(err)
	}
	check("alone", out.Data().([]float32))
}

// TestCrossEntropyGradNotStale: the backward reads its forward's log-sum-exps once; run again
// on the same buffer holding other logits without the forward, it computes them afresh.
func TestCrossEntropyGradNotStale(t *testing.T) {
	const rows, vocab = 4, 50
	st := &Step{Batch: 1, Seq: rows, Labels: []int32{0, 3, 7, 11}}
	x := make([]float32, rows*vocab)
	for i := range x {
		x[i] = float32(i%13) * 0.1
	}
	logits := tensor.New(tensor.WithShape(rows, vocab), tensor.WithBacking(x))
	fwd := &CrossEntropyOp{base: newBase("CrossEntropy"), step: st}
	bwd := &CrossEntropyOp{base: newBase("CrossEntropyGrad"), step: st, backward: true, fwd: fwd}
	if _, err := fwd.Do(logits); err != nil {
		t.Fatal(err)
	}
	if _, err := bwd.Do(logits, G.NewF32(1)); err != nil {
		t.Fatal(err)
	}
	for i := range x { // other logits in the same buffer, and no forward this time
		x[i] = float32(i%7) * 0.3
	}
	got, err := bwd.Do(logits, G.NewF32(1))
	if err != nil {
		t.Fatal(err)
	}
	fresh := &CrossEntropyOp{base: newBase("CrossEntropyGrad"), step: st, backward: true}
	want, err := fresh.Do(tensor.New(tensor.WithShape(rows, vocab), tensor.WithBacking(append([]float32(nil), x...))), G.NewF32(1))
	if err != nil {
		t.Fatal(err)
	}
	g, w := got.Data().([]float32), want.Data().([]float32)
	for i := range w {
		if g[i] != w[i] {
			t.Fatalf("element %d: %v from a stale log-sum-exp, %v computed afresh", i, g[i], w[i])
		}
	}
}
