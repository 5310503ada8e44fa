//go:build qtcuda || cudaemu

package main

import (
	"context"
	"fmt"
	"io"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// quantizeOnGPU: this binary calibrates on the GPU too (the CUDA build, and the emulator's).
const quantizeOnGPU = true

// quantizeDeviceError: this binary calibrates on the GPU too.
func quantizeDeviceError(bool) error { return nil }

// calibrateOnDevice calibrates on GPU 0 (forward, Hessians and GPTQ) and returns its peak
// device memory.
func calibrateOnDevice(ctx context.Context, stderr io.Writer, m *model.Model, samples [][]int, o quantize.Options, method quantize.Method, progress func(quantize.LayerReport, int, int)) ([]*autograd.Int4, []quantize.LayerReport, int64, error) {
	d, err := cuda.OpenDevice(0)
	if err != nil {
		return nil, nil, 0, err
	}
	fmt.Fprintf(stderr, "device: %s\n", d.Name)
	layers, reports, err := quantize.CalibrateDevice(ctx, d, m, samples, o, method, true, progress)
	peak := d.Peak
	if cerr := d.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return layers, reports, peak, err
}
