package autograd_test

import (
	"math/rand/v2"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/autograd/internal/opcases"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// TestOps checks every op: forward in float32 against a plain float64 reference, and
// gradients from gorgonia's Grad in float64 against central finite differences.
func TestOps(t *testing.T) {
	for _, c := range opcases.All() {
		t.Run(c.Name, func(t *testing.T) {
			st := c.StepOrDefault()
			rng := rand.New(rand.NewPCG(1, uint64(len(c.Name))))
			inputs, bits := c.Inputs(rng)
			want := c.Ref(inputs, st)
			r := opcases.Random(rng, len(want))

			// Forward, float32.
			_, _, out32, _, err := c.Graph(inputs, bits, nil, tensor.Float32)
			if err != nil {
				t.Fatal(err)
			}
			vm := G.NewTapeMachine(out32.Graph())
			if err := vm.RunAll(); err != nil {
				t.Fatal(err)
			}
			got := floats(t, out32.Value())
			if len(got) != len(want) {
				t.Fatalf("forward has %d values, reference %d", len(got), len(want))
			}
			if e := refmath.RelDiffOrNorm(got, want); e > 8e-7 { // measured 7.4e-8 (the worst op)
				t.Errorf("float32 forward differs from the reference: relative error %.3g", e)
			}

			// Gradients, float64.
			g, nodes, _, loss, err := c.Graph(inputs, bits, r, tensor.Float64)
			if err != nil {
				t.Fatal(err)
			}
			wrt := make(G.Nodes, len(c.Wrt))
			for i, j := range c.Wrt {
				wrt[i] = nodes[j]
			}
			if len(wrt) > 0 {
				if _, err := G.Grad(loss, wrt...); err != nil {
					t.Fatal(err)
				}
			}
			vm = G.NewTapeMachine(g)
			if err := vm.RunAll(); err != nil {
				t.Fatal(err)
			}
			for _, j := range c.Wrt {
				gv, err := nodes[j].Grad()
				if err != nil {
					t.Fatal(err)
				}
				analytic := floats(t, gv)
				numeric := finiteDiff(t, c, inputs, bits, r, j)
				if e := refmath.RelDiffOrNorm(analytic, numeric); e > 4e-9 { // measured 3.2e-10 (the worst op)
					t.Errorf("d loss / d input %d: relative error %.3g against finite differences\nanalytic %.6g\nnumeric  %.6g", j, e, analytic, numeric)
				}
			}
		})
	}
}

// finiteDiff is d loss / d inputs[j] by central differences in float64.
func finiteDiff(t *testing.T, c opcases.Case, inputs [][]float64, bits [][]uint16, r []float64, j int) []float64 {
	t.Helper()
	_, nodes, _, loss, err := c.Graph(inputs, bits, r, tensor.Float64)
	if err != nil {
		t.Fatal(err)
	}
	vm := G.NewTapeMachine(loss.Graph())
	data := nodes[j].Value().Data().([]float64)
	eval := func() float64 {
		vm.Reset()
		if err := vm.RunAll(); err != nil {
			t.Fatal(err)
		}
		v, err := autograd.Scalar(loss.Value())
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const h = 1e-5
	out := make([]float64, len(data))
	for i := range data {
		x := data[i]
		data[i] = x + h
		up := eval()
		data[i] = x - h
		down := eval()
		data[i] = x
		out[i] = (up - down) / (2 * h)
	}
	return out
}

// floats is a value as float64s.
func floats(t *testing.T, v G.Value) []float64 {
	t.Helper()
	f, err := opcases.Floats(v)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
