//go:build cudaemu && !qtcuda

package autograd

import (
	"math/rand/v2"
	"testing"
)

// TestEmulatedGPTQChecks runs the self-test's GPTQ group alone (SelfTest runs it with the rest).
func TestEmulatedGPTQChecks(t *testing.T) {
	d := openEmulated(t)
	checks := gptqChecks(d, rand.New(rand.NewPCG(1, 99)))
	if len(checks) != 9 {
		t.Errorf("%d checks", len(checks))
	}
	for _, c := range checks {
		t.Logf("%s %s: %.2e (tolerance %.0e), %d unwritten", c.Op, c.Shape, c.RelErr, c.Tol, c.Unwritten)
		if !c.OK() {
			t.Errorf("%s %s: relative error %.2e (tolerance %.0e), %d unwritten, %v", c.Op, c.Shape, c.RelErr, c.Tol, c.Unwritten, c.Err)
		}
	}
}
