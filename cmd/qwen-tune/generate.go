package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

func newGenerateCmd() *cobra.Command {
	var (
		prompt, promptIDs string
		asJSON            bool
		flags             genFlags
	)
	cmd := &cobra.Command{
		Use:   "generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3)",
		Short: "Continue a prompt with a base model (raw text, no chat format)",
		Long: `generate continues a prompt token by token with a KV cache and stops at
<|endoftext|> (the model's eos) or after --max-new-tokens.

--prompt is encoded with the model's qwen.tiktoken (special-token text such as
<|endoftext|> becomes the special token); --prompt-ids gives token ids directly and works on a
directory without a vocabulary. Output streams as text, or with --json as one object
{"ids": [...new tokens...], "text": "...", "finish_reason": "stop"|"length"|"cancelled"}
("text" only when the directory has a vocabulary).`,
		Example: `  qwen-tune generate --model tiny-qwen --prompt 'Once upon a time' --max-new-tokens 32
  qwen-tune generate --model DIR --prompt-ids 434,166,165 --greedy --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (prompt == "") == (promptIDs == "") {
				return fmt.Errorf("give exactly one of --prompt TEXT and --prompt-ids 1,2,3")
			}
			in, g, seed, err := flags.open(cmd, prompt != "")
			if err != nil {
				return err
			}
			defer in.close()
			var ids []int
			if prompt != "" {
				ids = in.tok.Encode(prompt, tokenizer.AllSpecials)
			} else if ids, err = parseIDs(promptIDs, in.m.Config.VocabSize); err != nil {
				return err
			}
			if len(ids) == 0 {
				return fmt.Errorf("the prompt is empty")
			}
			if n := len(ids) + g.MaxNewTokens; n > model.MaxPositions {
				return fmt.Errorf("the prompt (%d tokens) plus --max-new-tokens %d is %d positions; Qwen-7B supports at most %d", len(ids), g.MaxNewTokens, n, model.MaxPositions)
			}
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			sampler := model.NewSampler(g, seed)
			if in.tok != nil {
				sampler.Limit = in.tok.Size()
			}
			return runGenerate(ctx, cmd, in, ids, g.MaxNewTokens, sampler, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&flags.model, "model", "", "model directory (config.json + safetensors)")
	f.StringVar(&prompt, "prompt", "", "prompt text")
	f.StringVar(&promptIDs, "prompt-ids", "", "prompt as comma-separated token ids")
	f.BoolVar(&asJSON, "json", false, "print one JSON object instead of streaming text")
	flags.register(f)
	return cmd
}

func runGenerate(ctx context.Context, cmd *cobra.Command, in *inference, ids []int, maxNew int, sampler *model.Sampler, asJSON bool) error {
	out := cmd.OutOrStdout()
	stops := []int{in.gen.EOSTokenID}
	if in.tok != nil {
		stops = append(stops, in.tok.EndOfTextID())
	}
	s := in.m.NewSession(len(ids) + maxNew)
	defer s.Close()
	var dec *tokenizer.StreamDecoder
	if in.tok != nil && !asJSON {
		dec = in.tok.NewStreamDecoder()
	}
	emit := func(id int) error {
		switch {
		case asJSON:
			return nil
		case dec != nil:
			text, err := dec.Add(id)
			if err == nil {
				_, err = fmt.Fprint(out, text)
			}
			return err
		default:
			_, err := fmt.Fprintf(out, "%d ", id)
			return err
		}
	}
	newIDs, reason, err := s.Generate(ctx, ids, model.GenerateOptions{MaxNewTokens: maxNew, Stop: stops, Sampler: sampler}, emit)
	if err != nil {
		return err
	}
	if !asJSON {
		if dec != nil {
			fmt.Fprint(out, dec.Flush())
		}
		fmt.Fprintln(out)
		if reason == model.StopCancelled {
			fmt.Fprintln(cmd.ErrOrStderr(), "(interrupted)")
		}
		return nil
	}
	res := struct {
		IDs    []int   `json:"ids"`
		Text   *string `json:"text,omitempty"`
		Finish string  `json:"finish_reason"`
	}{IDs: append([]int{}, newIDs...), Finish: string(reason)}
	if in.tok != nil {
		text, err := in.tok.Decode(newIDs)
		if err != nil {
			return err
		}
		res.Text = &text
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, string(b))
	return err
}

// parseIDs reads "1,2,3" and checks every id against the vocabulary size.
func parseIDs(s string, vocab int) ([]int, error) {
	var ids []int
	for i, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		id, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("--prompt-ids: item %d (%q) is not an integer", i+1, f)
		}
		if id < 0 || id >= vocab {
			return nil, fmt.Errorf("--prompt-ids: id %d (item %d) is outside the model's vocabulary [0, %d)", id, i+1, vocab)
		}
		ids = append(ids, id)
	}
	return ids, nil
}
