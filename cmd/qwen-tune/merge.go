package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/lora"
)

func newMergeCmd() *cobra.Command {
	var modelDir, adapterDir, out string
	cmd := &cobra.Command{
		Use:   "merge --model DIR --adapter DIR --out DIR",
		Short: "Fold a LoRA adapter into the model's weights",
		Long: `merge computes W + (alpha/r) B A for every adapted layer in float32 (and adds trained
special-token rows to wte and lm_head), stores each tensor in its original dtype (bf16 for
Qwen-7B) in the original shards with the original index, and copies config.json,
generation_config.json and qwen.tiktoken. The result loads anywhere the base model does.
Tensors are merged a tile at a time, so memory stays small. A GPTQ model is refused: merge
into the bf16 model and quantize the result again, or apply the adapter with --adapter.`,
		Example: `  qwen-tune merge --model ./Qwen-7B-Chat --adapter my-adapter --out Qwen-7B-Chat-mine`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if modelDir == "" || adapterDir == "" || out == "" {
				return fmt.Errorf("--model, --adapter and --out are required")
			}
			if err := lora.Merge(modelDir, adapterDir, out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote the merged model to %s\n", out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "base model directory")
	f.StringVar(&adapterDir, "adapter", "", "PEFT LoRA adapter directory")
	f.StringVar(&out, "out", "", "new directory for the merged model")
	return cmd
}
