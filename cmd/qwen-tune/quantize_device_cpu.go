//go:build !qtcuda && !cudaemu

package main

import (
	"context"
	"fmt"
	"io"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// quantizeOnGPU: this binary calibrates on the CPU only.
const quantizeOnGPU = false

// quantizeDeviceError: this binary has no GPU code.
func quantizeDeviceError(cuda bool) error {
	if cuda {
		return fmt.Errorf("--device cuda: this binary was built without CUDA; build it with 'go build -tags qtcuda ./cmd/qwen-tune' (README, GPU) or use --device cpu")
	}
	return nil
}

// calibrateOnDevice: this binary calibrates on the CPU only (quantizeDeviceError refuses
// cuda before it is reached).
func calibrateOnDevice(ctx context.Context, _ io.Writer, m *model.Model, samples [][]int, o quantize.Options, method quantize.Method, progress func(quantize.LayerReport, int, int)) ([]*autograd.Int4, []quantize.LayerReport, int64, error) {
	return nil, nil, 0, quantizeDeviceError(true)
}
