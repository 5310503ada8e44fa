//go:build cudaemu && !qtcuda

package cuda

import (
	"math/rand/v2"
	"testing"
)

// TestEmulatedParamSetChecks runs the self-test's ParamSet group alone (SelfTest runs it with
// the rest): the device's step bitwise the host's, going back bitwise. The host's float64
// and float32 arithmetic must round each product by itself as the device's _rn intrinsics
// do, in any build: GOAMD64=v3 (and arm64) let Go fuse a multiply and an add unless a
// conversion rounds the product (GOAMD64=v3 go test -tags cudaemu -run ParamSetChecks).
func TestEmulatedParamSetChecks(t *testing.T) {
	d := openEmulated(t)
	for _, c := range paramSetChecks(d, rand.New(rand.NewPCG(1, 2))) {
		t.Logf("%s %s: %.2e (tolerance %.0e)", c.Op, c.Shape, c.RelErr, c.Tol)
		if !c.OK() {
			t.Errorf("%s %s: relative error %.2e (tolerance %.0e), %d unwritten, %v", c.Op, c.Shape, c.RelErr, c.Tol, c.Unwritten, c.Err)
		}
	}
}
