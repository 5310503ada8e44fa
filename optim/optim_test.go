package optim

import (
	"math"
	"testing"
)

// TestAdamWOneStep compares two steps with the update written out from PyTorch's documented
// algorithm (decoupled decay, bias correction, eps outside the square root).
func TestAdamWOneStep(t *testing.T) {
	p := [][]float32{{1, -2}}
	g := [][]float32{{0.5, 0.25}}
	o := NewAdamW([]int{2}, 0.9, 0.95, 1e-8, 0.1)
	want := []float64{1, -2}
	var m, v [2]float64
	for step := 1; step <= 2; step++ {
		lr := 0.01 * float64(step)
		if err := o.Update(p, g, lr); err != nil {
			t.Fatal(err)
		}
		for j := range want {
			gj := float64(g[0][j])
			want[j] *= 1 - lr*0.1
			m[j] = 0.9*m[j] + 0.1*gj
			v[j] = 0.95*v[j] + 0.05*gj*gj
			mh := m[j] / (1 - math.Pow(0.9, float64(step)))
			vh := v[j] / (1 - math.Pow(0.95, float64(step)))
			want[j] -= lr * mh / (math.Sqrt(vh) + 1e-8)
			if d := math.Abs(float64(p[0][j]) - want[j]); d > 2e-6 { // measured 1.0e-7
				t.Errorf("step %d param %d = %.8f, want %.8f", step, j, p[0][j], want[j])
			}
		}
	}
	if err := o.Update(p, [][]float32{{1}}, 0.1); err == nil {
		t.Error("a gradient of the wrong size was accepted")
	}
}

func TestClipGradNorm(t *testing.T) {
	g := [][]float32{{3}, {4}}
	if n := ClipGradNorm(g, 1); n != 5 || math.Abs(float64(g[0][0])-0.6) > 2e-6 || math.Abs(float64(g[1][0])-0.8) > 2e-6 { // measured 1.7e-7
		t.Errorf("norm %g, clipped %v", n, g)
	}
	g = [][]float32{{0.3}, {0.4}}
	if n := ClipGradNorm(g, 1); math.Abs(n-0.5) > 2e-7 || g[0][0] != 0.3 { // measured 1.2e-8
		t.Errorf("small gradients changed: %v", g)
	}
}

func TestSchedules(t *testing.T) {
	cos := Schedule{Kind: "cosine", Peak: 1e-2, Warmup: 2, Total: 10}
	for step, want := range []float64{0, 0.005, 0.01, 0.009619397662556433, 0.008535533905932738, 0.00691341716182545, 0.005} {
		if got := cos.LR(step); math.Abs(got-want) > 1e-15 { // measured 0
			t.Errorf("cosine step %d: %g, want %g", step, got, want)
		}
	}
	c := Schedule{Kind: "constant", Peak: 3e-4, Warmup: 4, Total: 100}
	if c.LR(1) != 3e-4/4 || c.LR(4) != 3e-4 || c.LR(99) != 3e-4 {
		t.Errorf("constant: %g %g %g", c.LR(1), c.LR(4), c.LR(99))
	}
	if WarmupSteps(0.01, 1000) != 10 || WarmupSteps(0.01, 150) != 2 {
		t.Errorf("warmup ratio: %d %d", WarmupSteps(0.01, 1000), WarmupSteps(0.01, 150))
	}
	if (Schedule{Kind: "linear", Total: 1}).Validate() == nil {
		t.Error("unknown schedule accepted")
	}
}
