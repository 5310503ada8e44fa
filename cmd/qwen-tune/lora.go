package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/lora"
)

func newLoraCmd() *cobra.Command {
	o := lora.DefaultOptions()
	var targets, onBad string
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

The resolved settings are printed and saved as training_config.json; --metrics writes one JSON
line per step; loss.png plots the losses. Checkpoints (--save-every, and on Ctrl-C) resume
bit-exactly with --resume. An output directory that already holds a run is never overwritten.`,
		Example: `  qwen-tune lora --model ./Qwen-7B-Chat --data chats.jsonl --out my-adapter --epochs 3
  qwen-tune lora --model tiny-qwen --data examples/chat.jsonl --out run --steps 40 --lora-r 8 --lr 3e-3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("targets") {
				o.Train.LoRA.Targets = splitList(targets)
			}
			o.OnBad = data.OnBad(onBad)
			return trainLora(cmd, o)
		},
	}
	f := cmd.Flags()
	c := &o.Train
	f.StringVar(&o.ModelDir, "model", "", "base model directory (required)")
	f.StringVar(&o.Data, "data", "", "training data: conversations JSON/JSONL, messages JSONL or input_ids JSONL (required)")
	f.StringVar(&o.Out, "out", "", "output directory for the adapter, checkpoints and metrics (required)")
	f.StringVar(&o.InitAdapter, "init-adapter", "", "start from this PEFT adapter (its r, alpha and targets) instead of a fresh one")
	f.StringVar(&o.Metrics, "metrics", "", "write one JSON line per step here (default: OUT/metrics.jsonl)")
	f.StringVar(&onBad, "on-bad-example", string(o.OnBad), "malformed example: error (stop) or skip (leave out and report)")
	f.BoolVar(&o.Resume, "resume", false, "continue the run in --out from its latest checkpoint")
	f.IntVar(&c.LoRA.R, "lora-r", c.LoRA.R, "LoRA rank")
	f.Float64Var(&c.LoRA.Alpha, "lora-alpha", c.LoRA.Alpha, "LoRA alpha (the update is scaled by alpha/r)")
	f.Float64Var(&c.LoRA.Dropout, "lora-dropout", c.LoRA.Dropout, "dropout on the adapters' input")
	f.StringVar(&targets, "targets", strings.Join(c.LoRA.Targets, ","), "comma-separated modules: c_attn, c_proj, w1, w2")
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
	f.IntVar(&c.SaveEvery, "save-every", c.SaveEvery, "save a resumable checkpoint every N steps (0 = only at the end and on Ctrl-C)")
	f.StringVar(&c.Mask, "mask", c.Mask, "trained tokens: qwen (Qwen's recipe) or assistant (assistant replies only)")
	f.Float64Var(&c.ValRatio, "val-ratio", c.ValRatio, "fraction of the examples held out for validation")
	f.BoolVar(&c.Pack, "pack", c.Pack, "pack several short examples into each --max-len row (attention and positions stay separate)")
	f.StringSliceVar(&c.ModulesToSave, "modules-to-save", nil, "train these in full and save them with the adapter: wte, lm_head (Qwen's choice for base models; large)")
	f.BoolVar(&c.TrainSpecialTokens, "train-special-tokens", c.TrainSpecialTokens, "also train the special-token rows of wte and lm_head (for base models, so they learn <|im_end|>)")
	registerCPUDevice(cmd, "lora training")
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

// trainLora runs lora.Run with progress on stderr; Ctrl-C stops the run with a checkpoint.
func trainLora(cmd *cobra.Command, o lora.Options) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
	defer stop()
	rep := newTrainReport(cmd.ErrOrStderr(), o.ModelDir)
	res, err := lora.Run(ctx, o, rep.hooks())
	return rep.done(cmd.OutOrStdout(), o, res, err)
}

// trainReport prints a run on stderr: the settings at start, then a progress bar on a
// terminal, or elsewhere a line every 5% of the steps.
type trainReport struct {
	w        io.Writer
	terminal bool
	load     loadProgress
	bar      *progressbar.ProgressBar
	total    int
	every    int
	start    time.Time
	tokens   int
}

func newTrainReport(stderr io.Writer, modelDir string) *trainReport {
	return &trainReport{w: stderr, terminal: isTerminal(stderr), load: loadProgress{w: stderr, what: modelDir}}
}

func (p *trainReport) hooks() lora.Hooks {
	return lora.Hooks{
		OnLoad:  p.load.update,
		OnSkip:  func(err error) { fmt.Fprintf(p.w, "skipped: %v\n", err) },
		OnStart: p.started,
		OnStep:  p.step,
	}
}

func (p *trainReport) started(s lora.Start) {
	c := s.Config
	if c.Pack {
		fmt.Fprintf(p.w, "packed %d training sequences into %d rows of at most %d tokens\n", s.Sequences, s.Rows, c.MaxLen)
	}
	if s.ResumedFrom != "" {
		fmt.Fprintf(p.w, "resuming from %s at step %d of %d\n", s.ResumedFrom, s.Step, s.Total)
	}
	resolved, err := json.MarshalIndent(c, "", "  ")
	if err != nil { // a setting JSON cannot hold (NaN): print it as Go does
		resolved = fmt.Appendf(nil, "%+v", c)
	}
	fmt.Fprintf(p.w, "data (%d held out for validation): %s\n", s.Val, s.Stats.Summary(c.MaxLen))
	fmt.Fprintf(p.w, "training %d parameters (%d LoRA layers) for %d steps with\n%s\n", s.Params, s.Layers, s.Total, resolved)
	p.total, p.every, p.start = s.Total, max(1, s.Total/20), time.Now()
	p.bar = newBar(p.w, s.Total, "training")
	p.bar.Set(s.Step)
}

func (p *trainReport) step(res lora.StepResult) error {
	step := res.Step + 1
	p.tokens += res.Seen
	rate := float64(p.tokens) / time.Since(p.start).Seconds()
	p.bar.Describe(fmt.Sprintf("loss %.4f lr %.2e %.0f tok/s", res.Loss, res.LR, rate))
	p.bar.Set(step)
	if !p.terminal && (step%p.every == 0 || step >= p.total) {
		line := fmt.Sprintf("step %d/%d loss %.4f lr %.3e grad-norm %.3f %.0f tokens/s", step, p.total, res.Loss, res.LR, res.GradNorm, rate)
		if res.EvalLoss != 0 {
			line += fmt.Sprintf(" eval-loss %.4f", res.EvalLoss)
		}
		fmt.Fprintln(p.w, line)
	}
	return nil
}

// done clears the bars and says where the run's output is, or how to continue it.
func (p *trainReport) done(stdout io.Writer, o lora.Options, res *lora.Result, err error) error {
	p.load.finish()
	if p.bar != nil {
		p.bar.Finish()
	}
	if err != nil {
		return err
	}
	if res.Stopped {
		fmt.Fprintf(p.w, "interrupted at step %d of %d; saved %s. Continue with the same command and --resume.\n", res.Step, res.Total, res.Checkpoint)
		return nil
	}
	plot := filepath.Join(o.Out, "loss.png")
	if err := plotLosses(plot, res.History); err != nil {
		fmt.Fprintf(p.w, "warning: loss plot not written: %v\n", err)
	}
	fmt.Fprintf(stdout, "saved the adapter to %s (%s, %s); metrics in %s, plot in %s\n", o.Out, lora.ConfigFile, lora.WeightsFile, res.Metrics, plot)
	return nil
}
