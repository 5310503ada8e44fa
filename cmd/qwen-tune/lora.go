package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/lora"
)

func newLoraCmd() *cobra.Command {
	o := lora.DefaultOptions()
	var targets, onBad string
	var logEvery int
	cmd := &cobra.Command{
		Use:   "lora --model DIR --data FILE --out DIR",
		Short: "Fine-tune a model with LoRA on chat data and save a PEFT adapter",
		Long: `lora trains low-rank adapters on the model's projections (Qwen's recipe by default:
r 64, alpha 16, dropout 0.05 on c_attn, c_proj, w1, w2; AdamW lr 3e-4, betas 0.9/0.95, weight
decay 0.1, cosine schedule with 1% warmup, gradient clipping at 1.0) and writes
adapter_config.json and adapter_model.safetensors in PEFT's format to --out.

--data takes Qwen's conversations JSON (a list or JSONL of {"conversations": [{"from",
"value"}]}), OpenAI-style {"messages": [{"role", "content"}]} JSONL (a system message replaces
the default system prompt) or pre-tokenized {"input_ids", "labels"} JSONL. Conversations are
rendered in ChatML with Qwen's label mask (--mask qwen: <|im_start|>, <|im_end|> and "\n" of
every turn plus assistant contents are trained; --mask assistant trains only assistant
contents, their <|im_end|> and "\n"). Special-token text inside a message stays ordinary text.

--model may be a GPTQ directory (Q-LoRA, as for Qwen-7B-Chat-Int4): the adapters train on
top of the packed 2-, 4- or 8-bit layers, which stay packed and frozen, on the CPU.
adapter_config.json records the base it was trained on.

The resolved settings are printed and saved as training_config.json (with the data's sha256);
--metrics writes one JSON line per step; loss.png plots the losses. Progress is a bar with the
step, smoothed loss, tokens/s, the device memory held and its peak (--device cuda) and time
left on a terminal, else a line every --log-every steps.

--out must be absent or empty. Ctrl-C or SIGTERM saves a checkpoint after the current step
and exits with status 130 or 143, printing the command line that continues the run; so do
checkpoints every --save-every steps. --resume continues from the latest checkpoint bit for
bit, or starts the run again from step 0 when it has none; it takes the run's settings, so
flags may be left out, and refuses flags that change the run (all but --steps, --epochs,
--save-every and --eval-every), another --model, or --data with other content. Temporary
files of a killed run are removed; a checkpoint it finished but had not yet renamed is kept.`,
		Example: `  qwen-tune lora --model ./Qwen-7B-Chat --data chats.jsonl --out my-adapter --epochs 3
  qwen-tune lora --model tiny-qwen --data examples/chat.jsonl --out run --steps 40 --lora-r 8 --lr 3e-3
  qwen-tune lora --model ./Qwen-7B-Chat-Int4 --data chats.jsonl --out my-qlora --epochs 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("targets") {
				o.Train.LoRA.Targets = splitList(targets)
			}
			o.OnBad = data.OnBad(onBad)
			if o.Resume && o.Out != "" {
				saved, ok, err := lora.RunSettings(o.Out)
				if err != nil {
					return err
				}
				if ok { // the run's settings, with the flags given here on top (lora.Run checks them)
					if o.Train, err = withGivenFlags(cmd.Flags(), saved); err != nil {
						return err
					}
				}
			}
			return trainLora(cmd, o, resumeCommand(cmd), logEvery)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ModelDir, "model", "", "base model directory (required)")
	f.StringVar(&o.Data, "data", "", "training data: conversations JSON/JSONL, messages JSONL or input_ids JSONL (required)")
	f.StringVar(&o.Out, "out", "", "output directory for the adapter, checkpoints and metrics (required)")
	f.StringVar(&o.InitAdapter, "init-adapter", "", "start from this PEFT adapter (its r, alpha and targets) instead of a fresh one")
	f.StringVar(&o.Metrics, "metrics", "", "write one JSON line per step here (default: OUT/metrics.jsonl)")
	f.StringVar(&onBad, "on-bad-example", string(o.OnBad), "malformed example: error (stop) or skip (leave out and report)")
	f.BoolVar(&o.Resume, "resume", false, "continue the run in --out from its latest checkpoint (from step 0 when it has none), with its settings")
	f.IntVar(&logEvery, "log-every", 0, "without a terminal, print a progress line every N steps (0 = every 5% of the run)")
	registerTrainFlags(f, &o.Train, &targets)
	var device string
	f.StringVar(&device, "device", "cpu", "where the loss and the gradients are computed: cpu, or cuda (the GPU of a build with -tags qtcuda; the optimizer runs there too)")
	checkpoint := registerCheckpointFlag(f)
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		cuda, err := wantsCUDA(device)
		if err != nil {
			return err
		}
		if !cuda {
			return run(c, args)
		}
		exec, err := openExecutor(device)
		if err != nil {
			return err
		}
		defer exec.Close()
		setCheckpointing(exec, *checkpoint)
		fmt.Fprintf(c.ErrOrStderr(), "device: %s\n", exec.Name())
		o.Exec = exec
		return run(c, args)
	}
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// registerTrainFlags defines the flags of every TrainConfig setting on f, bound to c
// (--targets to targets, a comma-separated list).
func registerTrainFlags(f *pflag.FlagSet, c *lora.TrainConfig, targets *string) {
	f.IntVar(&c.LoRA.R, "lora-r", c.LoRA.R, "LoRA rank")
	f.Float64Var(&c.LoRA.Alpha, "lora-alpha", c.LoRA.Alpha, "LoRA alpha (the update is scaled by alpha/r)")
	f.Float64Var(&c.LoRA.Dropout, "lora-dropout", c.LoRA.Dropout, "dropout on the adapters' input")
	f.StringVar(targets, "targets", strings.Join(c.LoRA.Targets, ","), "comma-separated modules: c_attn, c_proj, w1, w2")
	f.Float64Var(&c.LR, "lr", c.LR, "peak learning rate")
	f.StringVar(&c.Schedule, "schedule", c.Schedule, "learning-rate schedule after warmup: cosine or constant")
	f.IntVar(&c.WarmupSteps, "warmup-steps", c.WarmupSteps, "linear warmup steps (overrides --warmup-ratio)")
	f.Float64Var(&c.WarmupRatio, "warmup-ratio", c.WarmupRatio, "warmup as a fraction of all steps")
	f.Float64Var(&c.WeightDecay, "weight-decay", c.WeightDecay, "AdamW decoupled weight decay")
	f.Float64Var(&c.Beta1, "adam-beta1", c.Beta1, "AdamW beta1")
	f.Float64Var(&c.Beta2, "adam-beta2", c.Beta2, "AdamW beta2")
	f.Float64Var(&c.Eps, "adam-eps", c.Eps, "AdamW epsilon")
	f.Float64Var(&c.MaxGradNorm, "max-grad-norm", c.MaxGradNorm, "clip the global gradient norm to this (0 = off)")
	f.IntVar(&c.BatchSize, "batch-size", c.BatchSize, "sequences per micro-batch")
	f.IntVar(&c.GradAccum, "grad-accum", c.GradAccum, "micro-batches per optimizer step")
	f.IntVar(&c.Steps, "steps", c.Steps, "optimizer steps (overrides --epochs)")
	f.Float64Var(&c.Epochs, "epochs", c.Epochs, "passes over the training data")
	f.IntVar(&c.MaxLen, "max-len", c.MaxLen, "longest sequence in tokens; longer examples are cut and counted")
	f.Uint64Var(&c.Seed, "seed", c.Seed, "seed for initialisation, shuffling, the split and dropout")
	f.IntVar(&c.EvalEvery, "eval-every", c.EvalEvery, "validate every N steps (0 = only at the end, when there is a validation set)")
	f.IntVar(&c.SaveEvery, "save-every", c.SaveEvery, "save a resumable checkpoint every N steps (0 = only at the end and on Ctrl-C or SIGTERM)")
	f.StringVar(&c.Mask, "mask", c.Mask, "trained tokens: qwen (Qwen's recipe) or assistant (assistant replies only)")
	f.Float64Var(&c.ValRatio, "val-ratio", c.ValRatio, "fraction of the examples held out for validation")
	f.BoolVar(&c.Pack, "pack", c.Pack, "pack several short examples into each --max-len row (attention and positions stay separate)")
	f.StringSliceVar(&c.ModulesToSave, "modules-to-save", c.ModulesToSave, "train these in full and save them with the adapter: wte, lm_head (Qwen's choice for base models; large)")
	f.BoolVar(&c.TrainSpecialTokens, "train-special-tokens", c.TrainSpecialTokens, "also train the special-token rows of wte and lm_head (for base models, so they learn <|im_end|>)")
}

// withGivenFlags is saved with the TrainConfig flags given on the command line applied.
func withGivenFlags(given *pflag.FlagSet, saved lora.TrainConfig) (lora.TrainConfig, error) {
	c := saved
	c.LoRA.Targets, c.ModulesToSave = slices.Clone(saved.LoRA.Targets), slices.Clone(saved.ModulesToSave)
	targets := strings.Join(c.LoRA.Targets, ",")
	fs := pflag.NewFlagSet("saved", pflag.ContinueOnError)
	registerTrainFlags(fs, &c, &targets)
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		g := given.Lookup(f.Name)
		if err != nil || g == nil || !g.Changed {
			return
		}
		if sv, ok := g.Value.(pflag.SliceValue); ok {
			err = f.Value.(pflag.SliceValue).Replace(sv.GetSlice())
		} else {
			err = fs.Set(f.Name, g.Value.String())
		}
	})
	if given.Changed("targets") {
		c.LoRA.Targets = splitList(targets)
	}
	return c, err
}
