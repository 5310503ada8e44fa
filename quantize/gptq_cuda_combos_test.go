//go:build cudaemu && !qtcuda

package quantize

import (
	"math/rand/v2"
	"testing"
)

// TestGPTQDeviceChecksWeights: a weight slice of another size than [n, k] is an error on the
// device (its copy would otherwise start from whatever the device buffer held).
func TestGPTQDeviceChecksWeights(t *testing.T) {
	d := openDevice(t)
	const n, k = 8, 64
	rng := rand.New(rand.NewPCG(5, 6))
	h := NewHessian(k)
	if err := h.Add(calibrationRows(rng, 2*k, k), 2*k); err != nil {
		t.Fatal(err)
	}
	dh, err := UploadHessian(d, h)
	if err != nil {
		t.Fatal(err)
	}
	defer dh.Free()
	o := DefaultOptions()
	o.GroupSize = 32
	for _, size := range []int{n*k - 1, n*k + 1} {
		if _, err := GPTQDevice(make([]float32, size), n, k, dh, o); err == nil {
			t.Errorf("%d weights for [%d, %d] were quantized", size, n, k)
		}
	}
}
