//go:build qtcuda

package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/autograd"
)

func runSelftest(cmd *cobra.Command, bench bool) error {
	out := cmd.OutOrStdout()
	d, err := autograd.OpenDevice(0)
	if err != nil {
		return err
	}
	defer d.Close()
	fmt.Fprintf(out, "device: %s, %.1f GiB\n", d.Name, float64(d.Memory)/(1<<30))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "kernel\tshape\trel. error\ttolerance\tunwritten\tresult")
	failed := 0
	for _, c := range autograd.SelfTest(d, 1) {
		res := "ok"
		if !c.OK() {
			res = "FAIL"
			failed++
		}
		if c.Err != nil {
			res = "FAIL: " + c.Err.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2e\t%.0e\t%d\t%s\n", c.Op, c.Shape, c.RelErr, c.Tol, c.Unwritten, res)
	}
	tw.Flush()
	if bench {
		for _, s := range []struct {
			name string
			n, k int
		}{{"attn.c_attn", 12288, 4096}, {"mlp.w1", 11008, 4096}, {"mlp.c_proj", 4096, 11008}, {"lm_head", 151936, 4096}} {
			gbs, err := autograd.GemvBandwidth(d, s.n, s.k, 200)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "gemv_bf16 %-12s [%6d, %5d]: %7.0f GB/s of bf16 weight read\n", s.name, s.n, s.k, gbs)
		}
		shape := autograd.DecodeShape{Vocab: 151936, Hidden: 4096, Layers: 32, Heads: 32, HeadDim: 128, MLP: 11008}
		for _, ctx := range []int{1, 2048} {
			r, err := autograd.DecodeBench(d, shape, ctx, 256)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "decode, Qwen-7B shapes, batch 1, %d tokens after %d: %.1f tokens/s (%.2f GB of bf16 weights, %d launches per token)\n",
				r.Tokens, ctx, r.TokensPerSec, float64(r.WeightBytes)/1e9, r.LaunchesPerTk)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d kernel checks failed", failed)
	}
	return nil
}
