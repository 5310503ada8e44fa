//go:build cudaemu && !qtcuda

package cuda

import (
	"testing"
	"unsafe"
)

// failingCopies is the emulated driver with its host-to-device copies refused.
type failingCopies struct {
	*emuDriver
}

func (f *failingCopies) memcpyHtoD(devPtr, unsafe.Pointer, int64) error {
	return &emuError{"CUDA_ERROR_INVALID_VALUE", "refused by the test"}
}

// TestEmulatedFailedUploadFreesItsBuffer: an Upload whose copy fails returns no buffer and
// leaves nothing allocated (GPTQ's UploadHessian and the calibration's hidden states drop
// what it returns with the error).
func TestEmulatedFailedUploadFreesItsBuffer(t *testing.T) {
	d := openEmulated(t)
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	before := d.Allocated
	e := d.drv.(*emuDriver)
	d.drv = &failingCopies{e}
	b, err := Upload(d, make([]float32, 1000), "refused upload")
	d.drv = e
	if err == nil {
		t.Fatal("an upload whose copy failed succeeded")
	}
	if b != nil {
		t.Error("a failed upload returned its buffer")
	}
	if err := d.Trim(); err != nil {
		t.Fatal(err)
	}
	if d.Allocated != before {
		t.Errorf("the failed upload left %d bytes allocated", d.Allocated-before)
	}
}
