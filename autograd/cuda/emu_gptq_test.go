//go:build cudaemu && !qtcuda

package cuda

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

// TestGPTQLaunchersCheckArguments: the GPTQ launchers refuse, before launching, what their
// kernels cannot take: a code width other than 2 to 8 bits (codes are bytes, and 1 << bits
// must not overflow), an act-order buffer or grids too small for the weight.
func TestGPTQLaunchersCheckArguments(t *testing.T) {
	d := openEmulated(t)
	const n, k, count = 4, 8, 8
	buf := func(bytes int64) *Buffer {
		b, err := d.Alloc(bytes, "test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Free(b) })
		return b
	}
	w, wf, u, q := buf(n*k*4), buf(n*k*4), buf(k*k*4), buf(n*k*4)
	errs, codes, gcol := buf(n*count*4), buf(n*k), buf(k*4)
	sc, zr := buf(n*8), buf(n*8)
	for _, bits := range []int{0, 1, 9, 16, 40} {
		if err := d.GPTQGrids(sc, zr, w, n, k, 0, k, bits, true); err == nil {
			t.Errorf("GPTQGrids took %d bits", bits)
		}
		if err := d.GPTQBlock(wf, errs, codes, q, u, sc, zr, gcol, nil, n, k, 0, count, bits); err == nil {
			t.Errorf("GPTQBlock took %d bits", bits)
		}
		if err := d.GPTQRTNDiff(q, w, sc, zr, n, k, k, bits); err == nil {
			t.Errorf("GPTQRTNDiff took %d bits", bits)
		}
	}
	if err := d.GPTQBlock(wf, errs, codes, q, u, sc, zr, gcol, buf(4), n, k, 0, count, 4); err == nil {
		t.Error("GPTQBlock took an act-order of 1 column for 8")
	}
	if err := d.GPTQBlock(wf, errs, codes, q, u, buf(4), zr, gcol, nil, n, k, 0, count, 4); err == nil {
		t.Error("GPTQBlock took grids of 4 bytes for 4 rows")
	}
	if err := d.GPTQGrids(sc, zr, w, n, k, 0, k, 4, true); err != nil {
		t.Errorf("4 bits: %v", err)
	}
	if err := d.GPTQBlock(wf, errs, codes, q, u, sc, zr, gcol, nil, n, k, 0, count, 4); err != nil {
		t.Errorf("4 bits: %v", err)
	}
}
