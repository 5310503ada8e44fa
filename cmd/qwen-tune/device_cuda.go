//go:build qtcuda

package main

import (
	"github.com/qwen-tune/qwen-tune/model"

	_ "github.com/qwen-tune/qwen-tune/internal/cudaprobe" // a clear message when there is no GPU
)

// cudaBuild: this binary has the GPU executor.
const cudaBuild = true

// openExecutor opens GPU 0 unless the CPU is asked for.
func openExecutor(name string) (model.Executor, error) {
	if name == "cpu" {
		return nil, nil
	}
	c, err := model.OpenCUDA(0)
	if err != nil {
		return nil, err
	}
	return c, nil
}
