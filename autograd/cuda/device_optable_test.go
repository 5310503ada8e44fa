//go:build cudaemu || qtcuda

package cuda_test

import (
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"
	"github.com/qwen-tune/qwen-tune/autograd/internal/opcases"
)

// TestDeviceOpTable runs every case of the op table autograd's tests check (opcases) on the
// device against the CPU implementation: the forward and every gradient op, the arena
// poisoned before the run; a case the device refuses must be refused with the error its row
// names.
func TestDeviceOpTable(t *testing.T) {
	d := openDevice(t)
	for i, c := range opcases.All() {
		t.Run(c.Name, func(t *testing.T) {
			if !cuda.OpTableRow(c.Name) {
				t.Fatalf("the device's op table has no row for %s: add one (autograd/cuda/optable.go)", c.Name)
			}
			for _, ck := range cuda.OpCase(d, c.Name, uint64(i)) {
				t.Logf("%-40s %-16s %.3g (tol %.3g) unwritten %d", ck.Op, ck.Shape, ck.RelErr, ck.Tol, ck.Unwritten)
				if !ck.OK() {
					t.Errorf("%s %s: relative error %.3g (tolerance %.3g), %d unwritten, error %v", ck.Op, ck.Shape, ck.RelErr, ck.Tol, ck.Unwritten, ck.Err)
				}
			}
		})
	}
}
