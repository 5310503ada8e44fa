package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/examples"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// demoSettings fit LoRA on the tiny model to the 40 example conversations in about half a
// minute on two cores.
func demoSettings() lora.TrainConfig {
	c := lora.DefaultTrainConfig()
	c.LoRA.R, c.LoRA.Alpha, c.LoRA.Dropout = 16, 32, 0
	c.LR, c.Steps, c.BatchSize, c.WarmupSteps, c.MaxGradNorm = 5e-3, 400, 4, 10, 5
	c.Mask, c.TrainSpecialTokens, c.MaxLen = string(data.MaskAssistant), true, 128
	return c
}

func newDemoCmd() *cobra.Command {
	var out string
	var steps int
	cmd := &cobra.Command{
		Use:   "demo [--out DIR]",
		Short: "Fine-tune a tiny model on the example chats and talk to it (about 30 s on a CPU)",
		Long: `demo runs the whole LoRA workflow on the embedded default: it writes a tiny random
Qwen model, fine-tunes it with LoRA (and its special-token rows, since a random model never
saw ChatML) on the 40 conversations of examples/chat.jsonl, saves the PEFT adapter, the metrics
and a loss plot, and then asks the model questions from the data: it answers with the trained
reply and stops at <|im_end|>. Nothing existing is overwritten: a taken --out gets a suffix.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := freeDir(out)
			stderr, stdout := cmd.ErrOrStderr(), cmd.OutOrStdout()
			modelDir, dataPath, runDir := filepath.Join(dir, "tiny-qwen"), filepath.Join(dir, "chat.jsonl"), filepath.Join(dir, "adapter")
			fmt.Fprintf(stdout, "1/3 writing a tiny random Qwen model to %s\n", modelDir)
			if _, err := model.WriteTiny(modelDir, model.DefaultTiny()); err != nil {
				return err
			}
			if err := checkpoints.WriteAtomic(dataPath, func(w io.Writer) error { _, err := w.Write(examples.Chat); return err }); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "2/3 fine-tuning it with LoRA on %s\n", dataPath)
			o := lora.DefaultOptions()
			o.ModelDir, o.Data, o.Out, o.Train = modelDir, dataPath, runDir, demoSettings()
			if steps > 0 {
				o.Train.Steps = steps
			}
			resume := fmt.Sprintf("qwen-tune lora --model %s --data %s --out %s --resume", shellQuote(modelDir), shellQuote(dataPath), shellQuote(runDir))
			if err := trainLora(cmd, o, resume, 0); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "3/3 asking the fine-tuned model questions from the data\n")
			in, err := openModel(cmd, modelDir, openOptions{Adapter: runDir, NeedTokenizer: true})
			if err != nil {
				return err
			}
			defer in.close()
			exs, _, err := data.Parse(examples.Chat, "chat.jsonl", data.BadError, 0)
			if err != nil {
				return err
			}
			stopped := 0
			for _, i := range []int{12, 9, 38} {
				c := exs[i].Conv
				reply, ended, err := answer(in, c.Messages[0].Content)
				if err != nil {
					return err
				}
				mark := "<|im_end|>"
				if !ended {
					mark = "(no <|im_end|>)"
				} else {
					stopped++
				}
				fmt.Fprintf(stdout, "  user:      %s\n  assistant: %s %s\n  trained:   %s\n", c.Messages[0].Content, reply, mark, c.Messages[1].Content)
			}
			fmt.Fprintf(stdout, "%d of 3 replies ended with <|im_end|>. Chat with it: qwen-tune chat --model %s --adapter %s\n", stopped, modelDir, runDir)
			fmt.Fprintf(stderr, "loss plot: %s\n", filepath.Join(runDir, "loss.png"))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "qwen-tune-demo", "directory for the model, data and adapter (a suffix is added if it exists)")
	cmd.Flags().IntVar(&steps, "steps", 0, "training steps (default 400)")
	return cmd
}

// freeDir returns dir, or dir-2, dir-3, ... whichever is absent or empty
// (checkpoints.CheckOutDir).
func freeDir(dir string) string {
	for i := 2; ; i++ {
		if _, err := checkpoints.CheckOutDir(dir, "--out"); err == nil {
			return dir
		}
		dir = strings.TrimSuffix(dir, "-"+strconv.Itoa(i-1)) + "-" + strconv.Itoa(i)
	}
}

// answer generates a greedy chat reply and reports whether it ended with <|im_end|>.
func answer(in *inference, query string) (string, bool, error) {
	ids, _ := in.tok.ChatPrompt(tokenizer.DefaultSystem, nil, query, in.gen.MaxWindowSize)
	s := in.m.NewSession(len(ids) + 64)
	defer s.Close()
	sampler := &model.Sampler{Greedy: true, RepetitionPenalty: 1, Limit: in.tok.Size()}
	out, reason, err := s.Generate(context.Background(), ids, model.GenerateOptions{MaxNewTokens: 64, Stop: in.tok.StopIDs(), Sampler: sampler}, nil)
	if err != nil {
		return "", false, err
	}
	text, err := in.tok.Decode(out)
	return text, reason == model.StopToken && s.LastStop() == in.tok.IMEndID(), err
}
