//go:build !qtcuda

package main

import (
	"fmt"

	"github.com/qwen-tune/qwen-tune/model"
)

// cudaBuild: this binary has no GPU code.
const cudaBuild = false

// openExecutor: this binary has no GPU code.
func openExecutor(name string) (model.Executor, error) {
	if name == "cuda" {
		return nil, fmt.Errorf("--device cuda: this binary was built without CUDA; build it with 'go build -tags qtcuda ./cmd/qwen-tune' (README, GPU) or use --device cpu")
	}
	return nil, nil
}
