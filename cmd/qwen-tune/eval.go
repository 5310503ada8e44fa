package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/data"
)

func newEvalCmd() *cobra.Command {
	var (
		modelDir, adapterDir string
		mask                 = data.MaskQwen
		src                  textInput
		seqLen, stride       int
		asJSON               bool
		device               string
	)
	cmd := &cobra.Command{
		Use:   "eval --model DIR (--data FILE | --text FILE --seq-len N --stride S)",
		Short: "Mean next-token loss and perplexity of a model over a dataset",
		Long: `eval scores every sequence with the inference graph (dynamic NTK and LogN apply to
sequences longer than the model's seq_length, as in Qwen's own evaluation) and reports the
token-weighted mean loss over all scored tokens and its perplexity exp(loss).

--data reads every format lora trains on: Qwen's conversations (JSON list or JSONL),
{"messages": [...]} JSONL and pre-tokenized {"input_ids": [...], "labels": [...]} JSONL.
Conversations are rendered and masked exactly as lora trains them (--mask qwen or
assistant), so the loss of held-out chats measures an adapter (--adapter) on what it was
trained to do; nothing is cut at a maximum length. Pre-tokenized labels align with
input_ids, -100 skips a position, and without labels every next token counts.
--text reads a plain UTF-8 file, encodes it with the model's vocabulary (special-token text
stays ordinary text) and scores it in sliding windows of --seq-len tokens that advance by
--stride: every token after the first is scored once, with up to seq-len-1 tokens of context.

Progress goes to stderr (a line every 10% on long inputs when stderr is not a terminal);
Ctrl-C stops with exit status 130.`,
		Example: `  qwen-tune eval --model tiny-qwen --adapter my-adapter --data held_out_chats.jsonl --json
  qwen-tune eval --model DIR --text book.txt --seq-len 8192 --stride 4096`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !src.one() {
				return fmt.Errorf("give exactly one of --data FILE and --text FILE")
			}
			in, err := openModel(cmd, modelDir, openOptions{Adapter: adapterDir, NeedTokenizer: src.text != ""})
			if err != nil {
				return err
			}
			defer in.close()
			if !cmd.Flags().Changed("device") {
				device = "cpu" // the GPU only when asked for, until a GPU has run it
			}
			release, err := useDevice(cmd, in.m, device)
			if err != nil {
				return err
			}
			defer release()
			var seqs []data.Sequence
			if src.data != "" {
				exs, _, err := data.Load(src.data, data.BadError, in.m.Config.VocabSize)
				if err != nil {
					return err
				}
				if seqs, _, err = data.Prepare(in.tok, exs, mask, math.MaxInt); err != nil {
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
				recs, err := data.Windows(ids, seqLen, stride)
				if err != nil {
					return fmt.Errorf("%s: %w", src.text, err)
				}
				for i, r := range recs {
					seqs = append(seqs, data.Sequence{IDs: r.InputIDs, Labels: r.Labels, Source: fmt.Sprintf("%s: window %d", src.text, i+1)})
				}
			}
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			res, err := score(ctx, in, seqs, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if asJSON {
				b, err := json.Marshal(res)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "loss %.6f  perplexity %.4f  over %d tokens in %d sequences\n", res.Loss, res.PPL, res.Tokens, len(seqs))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&adapterDir, "adapter", "", "PEFT LoRA adapter directory applied on top of the model (not merged)")
	f.StringVar(&modelDir, "model", "", "model directory")
	src.register(f, "dataset: conversations JSON/JSONL, messages JSONL or input_ids JSONL", "plain text file scored in sliding windows")
	f.Var(&mask, "mask", "scored tokens of conversations, as lora trains them: qwen or assistant")
	f.IntVar(&seqLen, "seq-len", 0, "window length in tokens for --text (default: the model's seq_length)")
	f.IntVar(&stride, "stride", 0, "window advance in tokens for --text (default: seq-len/2)")
	f.BoolVar(&asJSON, "json", false, "print {\"loss\", \"ppl\", \"tokens\"} as JSON")
	f.StringVar(&device, "device", "cpu", "where the loss is computed: cpu, or cuda (the GPU of a build with -tags qtcuda; sequences up to seq_length)")
	return cmd
}

// evalResult is eval's answer.
type evalResult struct {
	Loss   float64 `json:"loss"`
	PPL    float64 `json:"ppl"`
	Tokens int     `json:"tokens"`
}

// score is the token-weighted mean loss of seqs, with progress on stderr: a bar on a
// terminal, otherwise a line every 10% of the tokens when the input is long.
func score(ctx context.Context, in *inference, seqs []data.Sequence, stderr io.Writer) (evalResult, error) {
	total := 0
	for _, s := range seqs {
		total += len(s.IDs)
	}
	bar := newBar(stderr, total, "scoring")
	lines := !isTerminal(stderr) && (len(seqs) >= 16 || total >= 4096)
	ev := in.m.NewEvaluator()
	defer ev.Close()
	start := time.Now()
	var sum float64
	var n, done, shown int
	for i, s := range seqs {
		if ctx.Err() != nil {
			bar.Finish()
			return evalResult{}, stopped(fmt.Sprintf("eval interrupted after %d of %d sequences (%d of %d tokens); no result", i, len(seqs), done, total))
		}
		l, k, err := ev.Score(s.IDs, s.Labels)
		if err != nil {
			return evalResult{}, fmt.Errorf("%s: %w", s.Source, err)
		}
		sum += l
		n += k
		done += len(s.IDs)
		bar.Add(len(s.IDs))
		if pct := 100 * done / max(total, 1); lines && pct/10 > shown/10 {
			shown = pct
			fmt.Fprintf(stderr, "scored %d%%: %d of %d tokens, %d of %d sequences, %.0f s\n", pct/10*10, done, total, i+1, len(seqs), time.Since(start).Seconds())
		}
	}
	bar.Finish()
	if n == 0 {
		return evalResult{}, fmt.Errorf("no token was scored: every label is -100 or every sequence has one token")
	}
	loss := sum / float64(n)
	return evalResult{loss, math.Exp(loss), n}, nil
}
