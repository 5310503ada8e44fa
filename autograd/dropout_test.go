package autograd

import (
	"math"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// TestDropoutBlocks: a mask over several of the goroutines' ranges equals the header's, whatever
// the number of goroutines drawing it, and keeps about 1 - p of the elements.
func TestDropoutBlocks(t *testing.T) {
	const n, p = 3*16384 + 77, 0.3
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64() + 3 // never 0, so a zero output is a dropped element
	}
	want := refmath.Dropout(x, p, 11, 5)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, procs := range []int{1, 2, 3} {
		runtime.GOMAXPROCS(procs)
		got := make([]float64, n)
		for i := range got {
			got[i] = -1 // poisoned: every element must be written
		}
		dropout(x, got, p, 11, 5)
		kept := 0
		for i := range got {
			if (got[i] == 0) != (want[i] == 0) || math.Abs(got[i]-want[i]) > 1e-15*math.Abs(want[i]) { // x * (1/(1-p)) against x / (1-p): 1 ulp
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
}
