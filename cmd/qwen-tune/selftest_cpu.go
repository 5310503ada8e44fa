//go:build !qtcuda

package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func runSelftest(*cobra.Command, selftestOpts) error {
	return fmt.Errorf("this binary was built without CUDA: build with 'go build -tags qtcuda ./cmd/qwen-tune' on a machine with the CUDA headers (see README, GPU) and run it where there is an NVIDIA GPU; the CPU implementation is checked by 'go test ./...'")
}
