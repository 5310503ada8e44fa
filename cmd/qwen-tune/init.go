package main

import (
	"errors"
	"fmt"

	"github.com/qwen-tune/qwen-tune/model"
	"github.com/spf13/cobra"
)

func newInitCmd() *cobra.Command {
	var (
		tiny  bool
		shape string
		out   string
		o     = model.DefaultTiny()
	)
	cmd := &cobra.Command{
		Use:   "init --tiny --out DIR",
		Short: "Write a tiny random Qwen model directory that runs anywhere",
		Long: `init --tiny writes a model directory with Qwen-7B's architecture and file layout at a
tiny size: config.json, generation_config.json (Qwen-7B-Chat's settings), bf16
model.safetensors with random weights, and a vocabulary that may be redistributed (the first
--vocab-ranks ranks of OpenAI's cl100k_base, followed by Qwen's 208 special tokens) saved
as qwen.tiktoken. Every command accepts it in place of the real model. The same seed gives
the same files. An existing model in DIR is never overwritten.`,
		Example: `  qwen-tune init --tiny --out tiny-qwen
  qwen-tune init --tiny --out tiny-qwen-big --hidden 256 --layers 4 --heads 8 --vocab-ranks 0
  qwen-tune init --tiny --shape qwen-7b --layers 2 --out qwen7b-2layers`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !tiny {
				return errors.New("init only writes random models for now: add --tiny")
			}
			switch shape {
			case "":
			case "qwen-7b":
				preset := model.Qwen7BShape()
				preset.Seed = o.Seed
				for name, f := range map[string][2]*int{ // explicit flags refine the preset (e.g. --layers 2)
					"vocab-ranks": {&preset.VocabRanks, &o.VocabRanks}, "hidden": {&preset.Hidden, &o.Hidden},
					"layers": {&preset.Layers, &o.Layers}, "heads": {&preset.Heads, &o.Heads}, "mlp": {&preset.MLPWidth, &o.MLPWidth},
					"seq-length": {&preset.SeqLength, &o.SeqLength}, "vocab-size": {&preset.VocabSize, &o.VocabSize},
				} {
					if cmd.Flags().Changed(name) {
						*f[0] = *f[1]
					}
				}
				o = preset
			default:
				return fmt.Errorf("--shape %q: the only preset is qwen-7b", shape)
			}
			cfg, err := model.WriteTiny(out, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote a random Qwen model to %s: %d layers, hidden %d, %d heads, vocab %d, %d parameters (seed %d)\n",
				out, cfg.NumHiddenLayers, cfg.HiddenSize, cfg.NumAttentionHeads, cfg.VocabSize, cfg.ParamCount(), o.Seed)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&tiny, "tiny", false, "write a tiny random model (required)")
	f.StringVar(&out, "out", "", "directory to create (required)")
	f.Uint64Var(&o.Seed, "seed", o.Seed, "random seed for the weights")
	f.IntVar(&o.VocabRanks, "vocab-ranks", o.VocabRanks, "cl100k_base ranks kept in the vocabulary (0 = all 100256)")
	f.IntVar(&o.Hidden, "hidden", o.Hidden, "hidden size")
	f.IntVar(&o.Layers, "layers", o.Layers, "number of blocks")
	f.IntVar(&o.Heads, "heads", o.Heads, "attention heads (hidden/heads must be even)")
	f.IntVar(&o.MLPWidth, "mlp", o.MLPWidth, "width of each MLP branch (intermediate_size is twice this)")
	f.IntVar(&o.SeqLength, "seq-length", o.SeqLength, "seq_length (the context beyond which NTK and LogN scaling start)")
	f.IntVar(&o.VocabSize, "vocab-size", 0, "embedding rows (config vocab_size; default: the vocabulary padded to a multiple of 128)")
	f.StringVar(&shape, "shape", "", "start from a preset shape: qwen-7b (15.4 GB of random bf16 weights, written in a streaming way)")
	cmd.MarkFlagRequired("out")
	return cmd
}
