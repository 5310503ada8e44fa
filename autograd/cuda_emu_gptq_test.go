//go:build cudaemu && !qtcuda

package autograd

import (
	"math/rand/v2"
	"regexp"
	"strings"
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

// TestGPTQKernelsRounded: the kernels whose results must equal the CPU's bit for bit give every
// floating-point add, subtract, multiply and divide an explicit rounding mode in their PTX:
// without one the driver's compiler may fuse a multiply and an add (and nvcc may form fma
// itself), which the emulator, never fusing, would not show.
func TestGPTQKernelsRounded(t *testing.T) {
	ptx, err := ptxFS.ReadFile("kernels/gptq.ptx")
	if err != nil {
		t.Fatal(err)
	}
	free := regexp.MustCompile(`\b(add|sub|mul|div|fma)(\.(ftz|sat|full|approx))*\.f(32|64)\b`)
	for _, name := range []string{"gptq_diag", "gptq_damped", "gptq_weights", "gptq_grids", "gptq_block", "gptq_update", "gptq_rtn_diff", "gptq_upper_f32"} {
		start := strings.Index(string(ptx), ".entry "+name+"(")
		if start < 0 {
			t.Fatalf("%s is not in gptq.ptx", name)
		}
		body := string(ptx[start:])
		if end := strings.Index(body, "\n}\n"); end >= 0 {
			body = body[:end]
		}
		if m := free.FindString(body); m != "" || strings.Contains(body, "fma.") {
			t.Errorf("%s: %q without a rounding mode, or a fused multiply-add", name, m)
		}
	}
}
