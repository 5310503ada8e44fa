package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/model"
)

func newBenchCmd() *cobra.Command {
	var (
		modelDir             string
		promptLen, newTokens int
		rounds               int
		asJSON               bool
	)
	cmd := &cobra.Command{
		Use:   "bench --model DIR",
		Short: "Measure load time, prefill and decode speed, and peak memory",
		Long: `bench loads a model, prefills a random prompt of --prompt-len tokens (the fastest of
--rounds runs), then decodes --new-tokens tokens greedily one at a time with the KV cache, and
reports tokens per second, the KV cache size and the process's peak resident memory. bf16
weights stay bf16 in memory, read from the memory-mapped checkpoint.`,
		Example: `  qwen-tune init --tiny --shape qwen-7b --layers 2 --out qwen7b-2layers
  qwen-tune bench --model qwen7b-2layers --prompt-len 128 --new-tokens 16`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			in, err := openInference(cmd, modelDir, false)
			if err != nil {
				return err
			}
			defer in.m.Close()
			load, loadRSS := time.Since(start).Seconds(), model.PeakRSS()
			res, err := model.MeasureThroughput(in.m, promptLen, newTokens, rounds, 1)
			if err != nil {
				return err
			}
			res.LoadSec, res.LoadRSSBytes = load, loadRSS
			out := cmd.OutOrStdout()
			if asJSON {
				b, err := json.Marshal(struct {
					model.Throughput
					Model   string `json:"model"`
					Threads int    `json:"threads"`
				}{res, modelDir, runtime.GOMAXPROCS(0)})
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(out, string(b))
				return err
			}
			c := in.m.Config
			fmt.Fprintf(out, "model      %s: %d layers, hidden %d, vocab %d, %.2f GB of weights\n", modelDir, c.NumHiddenLayers, c.HiddenSize, c.VocabSize, float64(res.WeightsBytes)/1e9)
			fmt.Fprintf(out, "load       %.2f s (memory-mapped), peak RSS after loading %.2f GiB\n", res.LoadSec, float64(res.LoadRSSBytes)/(1<<30))
			fmt.Fprintf(out, "prefill    %d tokens in %.3f s: %.1f tokens/s\n", res.PromptTokens, res.PrefillSec, res.PrefillTokS)
			fmt.Fprintf(out, "decode     %d tokens in %.3f s: %.2f tokens/s\n", res.NewTokens, res.DecodeSec, res.DecodeTokS)
			fmt.Fprintf(out, "kv cache   %.1f MiB\n", float64(res.KVCacheBytes)/(1<<20))
			fmt.Fprintf(out, "peak RSS   %.2f GiB (%d threads)\n", float64(res.PeakRSSBytes)/(1<<30), runtime.GOMAXPROCS(0))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "model directory")
	f.IntVar(&promptLen, "prompt-len", 128, "prompt tokens to prefill")
	f.IntVar(&newTokens, "new-tokens", 32, "tokens to decode")
	f.IntVar(&rounds, "rounds", 1, "prefill repetitions (the fastest is reported)")
	f.BoolVar(&asJSON, "json", false, "print the results as one JSON object")
	return cmd
}
