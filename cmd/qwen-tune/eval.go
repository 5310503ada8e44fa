package main

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/data"
)

func newEvalCmd() *cobra.Command {
	var (
		modelDir, adapterDir string
		src                  textInput
		seqLen, stride       int
		asJSON               bool
	)
	cmd := &cobra.Command{
		Use:   "eval --model DIR (--data FILE.jsonl | --text FILE --seq-len N --stride S)",
		Short: "Mean next-token loss and perplexity of a model over a dataset",
		Long: `eval scores every sequence with the inference graph (dynamic NTK and LogN apply to
sequences longer than the model's seq_length, as in Qwen's own evaluation) and reports the
token-weighted mean loss over all scored tokens and its perplexity exp(loss).

--data reads JSONL records {"input_ids": [...], "labels": [...]}: labels align with
input_ids, -100 skips a position, and without labels every next token counts.
--text reads a plain UTF-8 file, encodes it with the model's vocabulary (special-token text
stays ordinary text) and scores it in sliding windows of --seq-len tokens that advance by
--stride: every token after the first is scored once, with up to seq-len-1 tokens of context.`,
		Example: `  qwen-tune eval --model tiny-qwen --data held_out.jsonl --json
  qwen-tune eval --model DIR --text book.txt --seq-len 8192 --stride 4096`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !src.one() {
				return fmt.Errorf("give exactly one of --data FILE.jsonl and --text FILE")
			}
			in, err := openModel(cmd, modelDir, openOptions{Adapter: adapterDir, NeedTokenizer: src.text != ""})
			if err != nil {
				return err
			}
			defer in.close()
			var recs []data.Record
			if src.data != "" {
				if recs, err = data.ReadTokenized(src.data, in.m.Config.VocabSize); err != nil {
					return err
				}
			} else {
				if !cmd.Flags().Changed("seq-len") {
					seqLen = in.m.Config.SeqLength
				}
				if !cmd.Flags().Changed("stride") {
					stride = seqLen / 2
				}
				ids, err := src.encodeText(in.tok)
				if err != nil {
					return err
				}
				if recs, err = data.Windows(ids, seqLen, stride); err != nil {
					return fmt.Errorf("%s: %w", src.text, err)
				}
			}
			ev := in.m.NewEvaluator()
			defer ev.Close()
			bar := newBar(cmd.ErrOrStderr(), len(recs), "scoring")
			var sum float64
			var n int
			for i, r := range recs {
				s, k, err := ev.Score(r.InputIDs, r.Labels)
				if err != nil {
					if r.Line > 0 {
						return fmt.Errorf("%s:%d: %w", src.data, r.Line, err)
					}
					return fmt.Errorf("window %d: %w", i+1, err)
				}
				sum += s
				n += k
				bar.Add(1)
			}
			bar.Finish()
			if n == 0 {
				return fmt.Errorf("no token was scored: every label is -100 or every sequence has one token")
			}
			loss := sum / float64(n)
			res := struct {
				Loss   float64 `json:"loss"`
				PPL    float64 `json:"ppl"`
				Tokens int     `json:"tokens"`
			}{loss, math.Exp(loss), n}
			if asJSON {
				b, err := json.Marshal(res)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "loss %.6f  perplexity %.4f  over %d tokens in %d sequences\n", res.Loss, res.PPL, n, len(recs))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&adapterDir, "adapter", "", "PEFT LoRA adapter directory applied on top of the model (not merged)")
	f.StringVar(&modelDir, "model", "", "model directory")
	src.register(f, "pre-tokenized JSONL dataset", "plain text file scored in sliding windows")
	f.IntVar(&seqLen, "seq-len", 0, "window length in tokens for --text (default: the model's seq_length)")
	f.IntVar(&stride, "stride", 0, "window advance in tokens for --text (default: seq-len/2)")
	f.BoolVar(&asJSON, "json", false, "print {\"loss\", \"ppl\", \"tokens\"} as JSON")
	registerCPUDevice(cmd, "eval")
	return cmd
}
