package optim

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
)

// TestAdamWParallelBits: an update split over goroutines gives the bits of one goroutine's,
// for parameters of several ranges; a size mismatch anywhere changes nothing.
func TestAdamWParallelBits(t *testing.T) {
	sizes := []int{3, 70000, 1 << 15}
	r := rand.New(rand.NewPCG(1, 2))
	fill := func() [][]float32 {
		var out [][]float32
		for _, n := range sizes {
			v := make([]float32, n)
			for i := range v {
				v[i] = float32(r.NormFloat64())
			}
			out = append(out, v)
		}
		return out
	}
	params, grads := fill(), fill()
	run := func(procs int) [][]float32 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
		p := make([][]float32, len(params))
		for i := range params {
			p[i] = slices.Clone(params[i])
		}
		o := NewAdamW(sizes, 0.9, 0.95, 1e-8, 0.1)
		for step := 0; step < 3; step++ {
			if err := o.Update(p, grads, 1e-3); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	one, three := run(1), run(3)
	for i := range one {
		if !slices.Equal(one[i], three[i]) {
			t.Fatalf("parameter %d differs between one goroutine and three", i)
		}
	}
	o := NewAdamW(sizes, 0.9, 0.95, 1e-8, 0.1)
	before := slices.Clone(params[0])
	if err := o.Update(params, [][]float32{grads[0], grads[1], grads[2][:5]}, 1e-3); err == nil {
		t.Fatal("a short gradient was accepted")
	}
	if !slices.Equal(params[0], before) || o.Step != 0 {
		t.Error("a refused update changed parameter 0 or the step count")
	}
}
