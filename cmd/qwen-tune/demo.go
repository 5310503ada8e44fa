package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/examples"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// demoPlan is the demo's size: the tiny model, the multi-turn training data made from the
// example chats, and the LoRA recipe.
type demoPlan struct {
	Model model.TinyOptions
	// Rounds is how many times each example question appears in the training
	// conversations, each time after other questions (see demoConversations).
	Rounds int
	Train  lora.TrainConfig
}

// defaultDemoPlan fits the tiny model so well that `chat` with the model's own sampling
// settings (top-p 0.8, temperature 1, repetition penalty 1.1) holds a conversation over
// questions from the data: TestDemo asks for 9 turns in 10 answered with the trained reply,
// and in ten three-turn conversations all 30 were. As Qwen's recipe does for a base model,
// which never saw ChatML, the embedding and lm_head are trained in full besides the LoRA
// layers; a smaller vocabulary than the default tiny model's keeps them, and the lm_head
// products that are most of the work, small.
func defaultDemoPlan() demoPlan {
	m := model.DefaultTiny()
	m.VocabRanks = 4096
	c := lora.DefaultTrainConfig()
	c.LoRA.R, c.LoRA.Alpha, c.LoRA.Dropout = 16, 32, 0
	c.LR, c.Steps, c.BatchSize, c.WarmupSteps, c.MaxGradNorm = 5e-3, 300, 4, 10, 5
	c.Mask, c.MaxLen, c.ModulesToSave = string(data.MaskAssistant), 256, []string{"wte", "lm_head"}
	return demoPlan{Model: m, Rounds: 10, Train: c}
}

// demoConversations turns single-question chats into multi-turn ones: in each of rounds
// passes the chats are shuffled (by seed) and joined three at a time, so every question is
// trained after different earlier turns, and the model learns to answer the latest one.
func demoConversations(src []byte, rounds int, seed uint64) ([]byte, error) {
	exs, _, err := data.Parse(src, "chat.jsonl", data.BadError, 0)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x64656d6f))
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	var b bytes.Buffer
	for range rounds {
		order := rng.Perm(len(exs))
		for start := 0; start < len(order); start += 3 {
			var msgs []msg
			for _, i := range order[start:min(start+3, len(order))] {
				for _, m := range exs[i].Conv.Messages {
					msgs = append(msgs, msg{m.Role, m.Content})
				}
			}
			line, err := json.Marshal(struct {
				Messages []msg `json:"messages"`
			}{msgs})
			if err != nil {
				return nil, err
			}
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes(), nil
}

// trainDemo writes the tiny model and the training conversations into dir and fine-tunes
// the model; it returns the model and adapter directories.
func trainDemo(cmd *cobra.Command, dir string, plan demoPlan) (modelDir, runDir string, err error) {
	stdout := cmd.OutOrStdout()
	modelDir, dataPath, runDir := filepath.Join(dir, "tiny-qwen"), filepath.Join(dir, "conversations.jsonl"), filepath.Join(dir, "adapter")
	fmt.Fprintf(stdout, "1/3 writing a tiny random Qwen model to %s\n", modelDir)
	if _, err := model.WriteTiny(modelDir, plan.Model); err != nil {
		return "", "", err
	}
	convs, err := demoConversations(examples.Chat, plan.Rounds, plan.Train.Seed)
	if err != nil {
		return "", "", err
	}
	if err := checkpoints.WriteBytes(dataPath, convs); err != nil {
		return "", "", err
	}
	fmt.Fprintf(stdout, "2/3 fine-tuning it with LoRA on %s: %d conversations of up to three turns made from the 40 chats of examples/chat.jsonl\n", dataPath, bytes.Count(convs, []byte("\n")))
	o := lora.DefaultOptions()
	o.ModelDir, o.Data, o.Out, o.Train = modelDir, dataPath, runDir, plan.Train
	resume := fmt.Sprintf("qwen-tune lora --model %s --data %s --out %s --resume", shellQuote(modelDir), shellQuote(dataPath), shellQuote(runDir))
	return modelDir, runDir, trainLora(cmd, o, resume, 0)
}

func newDemoCmd() *cobra.Command {
	var out string
	var steps int
	var seed uint64
	cmd := &cobra.Command{
		Use:   "demo [--out DIR]",
		Short: "Fine-tune a tiny model on the example chats and talk to it (about a minute on a CPU)",
		Long: `demo runs the whole LoRA workflow on the embedded default: it writes a tiny random
Qwen model, fine-tunes it with LoRA (and its embedding and lm_head in full, as Qwen's recipe
does for a base model, which never saw ChatML) on conversations of up to three turns made
from the 40 chats of examples/chat.jsonl, saves the PEFT adapter, the metrics and a loss
plot, and then holds a three-turn conversation with it as chat does, with the model's own
sampling settings: each reply is the trained one and stops at <|im_end|>. Nothing existing
is overwritten: a taken --out gets a suffix.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := freeDir(out)
			plan := defaultDemoPlan()
			if steps > 0 {
				plan.Train.Steps = steps
			}
			modelDir, runDir, err := trainDemo(cmd, dir, plan)
			if err != nil {
				return err
			}
			stdout := cmd.OutOrStdout()
			fmt.Fprintf(stdout, "3/3 a conversation with the fine-tuned model, as qwen-tune chat holds it\n")
			if !cmd.Flags().Changed("seed") {
				seed = uint64(time.Now().UnixNano())
			}
			qs, err := demoQuestions(examples.Chat)
			if err != nil {
				return err
			}
			right, err := demoConversation(cmd, modelDir, runDir, qs[:3], seed, stdout)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%d of 3 replies were the trained ones. Chat with it yourself (questions from %s):\n  qwen-tune chat --model %s --adapter %s\n",
				right, filepath.Join(dir, "conversations.jsonl"), modelDir, runDir)
			fmt.Fprintf(cmd.ErrOrStderr(), "loss plot: %s\n", filepath.Join(runDir, "loss.png"))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "qwen-tune-demo", "directory for the model, data and adapter (a suffix is added if it exists)")
	cmd.Flags().IntVar(&steps, "steps", 0, "training steps (default 300)")
	cmd.Flags().Uint64Var(&seed, "seed", 0, "seed for sampling the replies (default: from the clock)")
	return cmd
}

// demoQA is a question from the data and its trained answer.
type demoQA struct{ Q, A string }

// demoQuestions are the example chats' questions and answers, in a fixed shuffled order.
func demoQuestions(src []byte) ([]demoQA, error) {
	exs, _, err := data.Parse(src, "chat.jsonl", data.BadError, 0)
	if err != nil {
		return nil, err
	}
	var qs []demoQA
	for _, i := range rand.New(rand.NewPCG(7, 7)).Perm(len(exs)) {
		m := exs[i].Conv.Messages
		qs = append(qs, demoQA{m[0].Content, m[1].Content})
	}
	return qs, nil
}

// demoConversation asks the questions in one conversation, as `chat --model modelDir
// --adapter runDir --seed seed` would with the model's generation settings, prints each
// turn to w and returns how many replies contain the trained answer.
func demoConversation(cmd *cobra.Command, modelDir, runDir string, qs []demoQA, seed uint64, w io.Writer) (int, error) {
	in, err := openModel(cmd, modelDir, openOptions{Adapter: runDir, NeedTokenizer: true, OnDevice: true})
	if err != nil {
		return 0, err
	}
	defer in.close()
	var reply bytes.Buffer
	c := newChat(in, *in.gen, seed, tokenizer.DefaultSystem, &reply, io.Discard)
	defer c.session.Close()
	right := 0
	for _, q := range qs {
		reply.Reset()
		if err := c.turn(q.Q); err != nil {
			return right, err
		}
		got := strings.TrimSpace(reply.String())
		mark := "right"
		if strings.Contains(got, q.A) {
			right++
		} else {
			mark = "trained: " + q.A
		}
		fmt.Fprintf(w, "  user:      %s\n  assistant: %s   (%s)\n", q.Q, got, mark)
	}
	return right, nil
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
