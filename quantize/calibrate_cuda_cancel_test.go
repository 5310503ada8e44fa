//go:build cudaemu && !qtcuda

package quantize_test

import (
	"context"
	"errors"
	"testing"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"github.com/qwen-tune/qwen-tune/internal/golden"
	"github.com/qwen-tune/qwen-tune/internal/tinybatch"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// TestCalibrateDeviceCancelled: calibration on the device (forward included) cancelled after
// the first layer, in the middle of a block and after a whole block returns the context's
// error and leaves no device memory allocated (hidden states, KV caches, weights, Hessians).
func TestCalibrateDeviceCancelled(t *testing.T) {
	rows := tinybatch.Load(t).Rows()
	src := golden.Path(t, "tiny-qwen")
	for _, stop := range []int{1, 3, 5} {
		m, err := model.Load(src, model.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d, err := cuda.OpenDevice(0)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		o := quantize.DefaultOptions()
		o.GroupSize = 16
		_, _, err = quantize.CalibrateDevice(ctx, d, m, rows, o, quantize.MethodGPTQ, true, func(_ quantize.LayerReport, done, _ int) {
			if done == stop {
				cancel()
			}
		})
		cancel()
		terr := d.Trim()
		left := d.Allocated
		if cerr := d.Close(); cerr != nil {
			t.Fatal(cerr)
		}
		m.Close()
		if terr != nil {
			t.Fatal(terr)
		}
		if !errors.Is(err, context.Canceled) || left != 0 {
			t.Errorf("cancelled after %d layers: %v, %d bytes left allocated", stop, err, left)
		}
	}
}
