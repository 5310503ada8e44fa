package main

import (
	"github.com/spf13/cobra"
)

func newSelftestCmd() *cobra.Command {
	var bench bool
	cmd := &cobra.Command{
		Use:   "selftest [--bench]",
		Short: "Check every GPU kernel against the CPU implementation on this machine",
		Long: `selftest runs each CUDA kernel on random inputs (outputs poisoned with NaN first, so
elements a kernel fails to write show up) and compares it with the CPU implementation the
tests check against the reference outputs, then prints a table and exits non-zero on any
failure. --bench also measures the batch-1 bf16 GEMV's weight bandwidth at Qwen-7B's
shapes. It needs a binary built with -tags qtcuda and an NVIDIA GPU.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runSelftest(cmd, bench) },
	}
	cmd.Flags().BoolVar(&bench, "bench", false, "also measure GEMV bandwidth at Qwen-7B's shapes")
	return cmd
}
