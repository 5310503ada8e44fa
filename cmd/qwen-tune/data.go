package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

func newDataCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data",
		Short: "Look at a training dataset the way lora will see it",
	}
	cmd.AddCommand(newDataInspectCmd())
	return cmd
}

func newDataInspectCmd() *cobra.Command {
	var (
		modelDir, dataPath, onBad string
		mask                      = data.MaskQwen
		maxLen, example           int
	)
	cmd := &cobra.Command{
		Use:   "inspect --model DIR --data FILE",
		Short: "Show a rendered example with its trained tokens, and dataset statistics",
		Long: `inspect renders one example exactly as lora trains on it (ChatML, Qwen's label mask or
--mask assistant, truncation at --max-len) and marks the trained tokens: green on a terminal,
[[between double brackets]] otherwise. Then it prints the number of examples, tokens,
trained tokens and examples cut at --max-len.`,
		Example: `  qwen-tune data inspect --model tiny-qwen --data examples/chat.jsonl --example 3`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, err := tokenizer.Load(modelDir)
			if err != nil {
				return err
			}
			exs, skipped, err := data.Load(dataPath, data.OnBad(onBad), 0)
			for _, s := range skipped {
				fmt.Fprintf(cmd.ErrOrStderr(), "skipped: %v\n", s)
			}
			if err != nil {
				return err
			}
			seqs, st, err := data.Prepare(tok, exs, mask, maxLen)
			if err != nil {
				return err
			}
			if example < 0 || example >= len(seqs) {
				return fmt.Errorf("--example %d: the dataset has examples 0..%d", example, len(seqs)-1)
			}
			out := cmd.OutOrStdout()
			s := seqs[example]
			fmt.Fprintf(out, "example %d (%s): %d tokens, %d trained", example, s.Source, len(s.IDs), data.Targets(s.Labels))
			if s.Truncated {
				fmt.Fprintf(out, ", cut from %d at --max-len %d", s.FullLen, maxLen)
			}
			fmt.Fprintln(out)
			if err := data.Highlight(out, tok, s.IDs, s.Labels, isTerminal(out)); err != nil {
				return err
			}
			st.Skipped = len(skipped)
			fmt.Fprintf(out, "\n%s\n", st.Summary(maxLen))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "model directory (for its qwen.tiktoken)")
	f.StringVar(&dataPath, "data", "", "dataset file")
	f.Var(&mask, "mask", "trained tokens: qwen or assistant")
	f.StringVar(&onBad, "on-bad-example", "error", "malformed example: error or skip")
	f.IntVar(&maxLen, "max-len", 512, "longest sequence in tokens")
	f.IntVar(&example, "example", 0, "which example to show (0-based)")
	return cmd
}
