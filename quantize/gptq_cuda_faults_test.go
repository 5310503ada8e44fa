//go:build cudaemu && !qtcuda

package quantize

import (
	"math/rand/v2"
	"testing"
)

// TestEmulatedFailedHessianUploadFreesItsBuffer: UploadHessian whose copy fails leaves
// nothing allocated on the device.
func TestEmulatedFailedHessianUploadFreesItsBuffer(t *testing.T) {
	d := openDevice(t)
	const k = 64
	h := NewHessian(k)
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, 3*k)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	if err := h.Add(x, 3); err != nil {
		t.Fatal(err)
	}
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	before := d.Allocated
	restore := d.FailCopiesToDevice()
	dh, err := UploadHessian(d, h)
	restore()
	if err == nil {
		dh.Free()
		t.Fatal("a Hessian whose copy failed was uploaded")
	}
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	if d.Allocated != before {
		t.Errorf("the failed upload left %d bytes allocated", d.Allocated-before)
	}
}
