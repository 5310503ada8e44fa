package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

type selftestOpts struct {
	device, golden string
	bench          bool
}

func newSelftestCmd() *cobra.Command {
	var o selftestOpts
	cmd := &cobra.Command{
		Use:   "selftest [--device cuda] [--golden DIR] [--bench]",
		Short: "Check the GPU kernels and executor against the CPU implementation on this machine",
		Long: `selftest runs each CUDA kernel on random inputs (outputs poisoned with NaN first, so
elements a kernel fails to write show up) and compares it with the CPU implementation, checks
the on-device sampler against the host sampler with the same random draws, runs a random
model through the GPU executor and the CPU graph side by side (prefill, dynamic NTK and LogN
past seq_length, decoding step by step), and with --golden DIR (the tiny-qwen reference
directory) compares the GPU's logits and greedy decoding with the reference outputs. It prints
a table and exits non-zero on any failure. --bench also measures the bf16 GEMV's bandwidth at
Qwen-7B's shapes (qwen-tune bench measures decoding). It needs a binary built with -tags qtcuda
and an NVIDIA GPU.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.device != "" && o.device != "cuda" {
				return fmt.Errorf("--device %q: selftest checks the cuda device against the CPU", o.device)
			}
			return runSelftest(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.device, "device", "cuda", "the device to check (cuda)")
	f.StringVar(&o.golden, "golden", "", "tiny-qwen reference directory (config, weights, golden.safetensors, golden_greedy.json)")
	f.BoolVar(&o.bench, "bench", false, "also measure the bf16 GEMV's bandwidth at Qwen-7B's shapes (qwen-tune bench measures decoding)")
	return cmd
}
