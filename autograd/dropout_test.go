package autograd_test

import (
	"math"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/autograd/internal/opcases"
)

// TestDropoutBlocks: a mask over several of the goroutines' ranges equals the header's, whatever
// the number of goroutines drawing it, and keeps about 1 - p of the elements.
func TestDropoutBlocks(t *testing.T) {
	const n, p = 3*16384 + 77, 0.3
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float64, n)
	x32 := make([]float32, n)
	for i := range x {
		x32[i] = float32(rng.NormFloat64() + 3) // never 0, so a zero output is a dropped element
		x[i] = float64(x32[i])
	}
	want := opcases.Dropout(x, p, 11, 5)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	worst := 0.0
	for _, procs := range []int{1, 2, 3} {
		runtime.GOMAXPROCS(procs)
		got := make([]float32, n)
		for i := range got {
			got[i] = -1 // poisoned: every element must be written
		}
		autograd.Ref.Dropout(x32, got, p, 11, 5)
		kept := 0
		for i := range got {
			e := math.Abs(float64(got[i])-want[i]) / math.Abs(want[i])
			if want[i] == 0 {
				e = math.Abs(float64(got[i]))
			}
			worst = max(worst, e)
			if (got[i] == 0) != (want[i] == 0) || e > 1e-6 { // float32 against float64: measured 6.0e-8
				t.Fatalf("GOMAXPROCS %d: element %d is %v, the header's mask gives %v", procs, i, got[i], want[i])
			}
			if got[i] != 0 {
				kept++
			}
		}
		if f := float64(kept) / n; f < 0.69 || f > 0.71 { // 1 - p within 4.6 standard deviations
			t.Errorf("GOMAXPROCS %d: kept %.4f of the elements, want about %.2f", procs, f, 1-p)
		}
	}
	t.Logf("largest relative difference from the float64 mask: %.2g", worst)
}
