package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
)

// loraRun is the lora command's inputs besides the training settings.
type loraRun struct {
	modelDir, dataPath, out, initAdapter, metrics, onBad string
	resume                                               bool
	cfg                                                  lora.TrainConfig
	stopAfter                                            int            // testing: act as if Ctrl-C came after this step
	cancelAt                                             func(step int) // set when stopAfter is
}

func newLoraCmd() *cobra.Command {
	r := &loraRun{cfg: lora.DefaultTrainConfig()}
	var targets string
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
				r.cfg.LoRA.Targets = splitList(targets)
			}
			return r.run(cmd)
		},
	}
	f := cmd.Flags()
	c := &r.cfg
	f.StringVar(&r.modelDir, "model", "", "base model directory (required)")
	f.StringVar(&r.dataPath, "data", "", "training data: conversations JSON/JSONL, messages JSONL or input_ids JSONL (required)")
	f.StringVar(&r.out, "out", "", "output directory for the adapter, checkpoints and metrics (required)")
	f.StringVar(&r.initAdapter, "init-adapter", "", "start from this PEFT adapter (its r, alpha and targets) instead of a fresh one")
	f.StringVar(&r.metrics, "metrics", "", "write one JSON line per step here (default: OUT/metrics.jsonl)")
	f.StringVar(&r.onBad, "on-bad-example", "error", "malformed example: error (stop) or skip (leave out and report)")
	f.BoolVar(&r.resume, "resume", false, "continue the run in --out from its latest checkpoint")
	f.IntVar(&r.stopAfter, "stop-after", 0, "stop as if interrupted after this many steps (for testing resumption)")
	f.MarkHidden("stop-after")
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

func (r *loraRun) run(cmd *cobra.Command) error {
	stderr, stdout := cmd.ErrOrStderr(), cmd.OutOrStdout()
	if r.modelDir == "" || r.dataPath == "" || r.out == "" {
		return fmt.Errorf("--model, --data and --out are required")
	}
	if r.onBad != string(data.BadError) && r.onBad != string(data.BadSkip) {
		return fmt.Errorf("--on-bad-example %q: expected error or skip", r.onBad)
	}
	var resumeFrom string
	if r.resume {
		cks, err := lora.Checkpoints(r.out)
		if err != nil || len(cks) == 0 {
			return fmt.Errorf("--resume: %s holds no checkpoint to resume from", r.out)
		}
		resumeFrom = cks[len(cks)-1]
		st, err := lora.ReadTrainerState(resumeFrom)
		if err != nil {
			return err
		}
		r.cfg = st.Config // the run continues with the settings it started with
	} else if err := checkFreshOut(r.out); err != nil {
		return err
	}
	if err := r.cfg.Validate(); err != nil {
		return err
	}
	trainNames, err := lora.ModuleTensorNames(r.cfg.ModulesToSave)
	if err != nil {
		return err
	}
	in, err := openModel(cmd, r.modelDir, "", true, trainNames)
	if err != nil {
		return err
	}
	defer in.m.Close()
	m, tok := in.m, in.tok

	exs, skipped, err := data.Load(r.dataPath, data.OnBad(r.onBad), m.Config.VocabSize)
	for _, s := range skipped {
		fmt.Fprintf(stderr, "skipped: %v\n", s)
	}
	if err != nil {
		return err
	}
	seqs, stats, err := data.Prepare(tok, exs, data.Mask(r.cfg.Mask), r.cfg.MaxLen)
	if err != nil {
		return err
	}
	stats.Skipped = len(skipped)
	train, val := data.Split(seqs, r.cfg.ValRatio, r.cfg.Seed)
	if r.cfg.Pack {
		n := len(train)
		train = data.Pack(train, r.cfg.MaxLen)
		fmt.Fprintf(stderr, "packed %d training sequences into %d rows of at most %d tokens\n", n, len(train), r.cfg.MaxLen)
	}

	var a *lora.Adapter
	if r.initAdapter != "" && !r.resume {
		var extra map[string]checkpoints.Tensor
		if a, extra, err = lora.Load(r.initAdapter, m); err != nil {
			return err
		}
		if len(extra) > 0 {
			return fmt.Errorf("--init-adapter %s saves whole modules; only LoRA tensors can start a run", r.initAdapter)
		}
		r.cfg.LoRA = a.Config
		r.cfg.LoRA.Dropout = a.Config.Dropout
	} else if a, err = lora.Apply(m, r.cfg.LoRA, r.cfg.Seed); err != nil {
		return err
	}
	params := a.Params()
	special, err := lora.AddSpecialTokens(m, tok, r.cfg.TrainSpecialTokens)
	if err != nil {
		return err
	}
	params = append(params, special.Params()...)
	modules, err := lora.ModuleParams(m, r.cfg.ModulesToSave)
	if err != nil {
		return err
	}
	params = append(params, modules...)
	extra := append(special.Tensors(), lora.ModuleTensors(modules)...)
	tr, err := lora.NewTrainer(m, a, params, r.cfg, train, val, tok.EndOfTextID())
	if err != nil {
		return err
	}
	defer tr.Close()
	if resumeFrom != "" {
		if err := tr.LoadCheckpoint(resumeFrom); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "resuming from %s at step %d of %d\n", resumeFrom, tr.Step, tr.Sched.Total)
	}
	if err := os.MkdirAll(r.out, 0o755); err != nil {
		return err
	}
	metricsPath := r.metrics
	if metricsPath == "" {
		metricsPath = filepath.Join(r.out, "metrics.jsonl")
	}
	if resumeFrom != "" {
		if err := truncateMetrics(metricsPath, tr.Step); err != nil {
			return err
		}
	}
	resolved, _ := json.MarshalIndent(r.cfg, "", "  ")
	fmt.Fprintf(stderr, "data: %d examples (%d for validation), %d tokens, %d trained, %d cut at --max-len %d, %d skipped\n",
		stats.Examples, len(val), stats.Tokens, stats.Trained, stats.Truncated, r.cfg.MaxLen, stats.Skipped)
	fmt.Fprintf(stderr, "training %d parameters (%d LoRA layers) for %d steps with\n%s\n", countParams(params), len(a.Layers), tr.Sched.Total, resolved)
	if err := checkpoints.WriteJSON(filepath.Join(r.out, "training_config.json"), struct {
		Model string           `json:"model"`
		Data  string           `json:"data"`
		Cfg   lora.TrainConfig `json:"config"`
		Stats data.Stats       `json:"data_stats"`
	}{r.modelDir, r.dataPath, r.cfg, stats}); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
	defer stop()
	if r.stopAfter > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		r.cancelAt = func(step int) {
			if step >= r.stopAfter {
				cancel()
			}
		}
	}
	hist, err := trainLoop(ctx, tr, r, metricsPath, func() []checkpoints.Tensor { return append(special.Tensors(), lora.ModuleTensors(modules)...) }, stderr)
	interrupted := errors.Is(err, context.Canceled)
	if err != nil && !interrupted {
		return err
	}
	extra = append(special.Tensors(), lora.ModuleTensors(modules)...)
	ckpt, serr := tr.SaveCheckpoint(r.out, r.modelDir, extra)
	if serr != nil {
		return serr
	}
	if interrupted {
		fmt.Fprintf(stderr, "interrupted at step %d of %d; saved %s. Continue with the same command and --resume.\n", tr.Step, tr.Sched.Total, ckpt)
		return nil
	}
	if err := a.Save(r.out, r.modelDir, r.cfg.ModulesToSave, extra...); err != nil {
		return err
	}
	if err := special.SaveConfig(r.out); err != nil {
		return err
	}
	if err := plotLosses(filepath.Join(r.out, "loss.png"), hist); err != nil {
		fmt.Fprintf(stderr, "warning: loss plot not written: %v\n", err)
	}
	fmt.Fprintf(stdout, "saved the adapter to %s (%s, %s); metrics in %s, plot in %s\n", r.out, lora.ConfigFile, lora.WeightsFile, metricsPath, filepath.Join(r.out, "loss.png"))
	return nil
}

func countParams(ps []*model.Param) int {
	n := 0
	for _, p := range ps {
		n += p.Value.Size()
	}
	return n
}

// checkFreshOut refuses an output directory that already holds a run or an adapter.
func checkFreshOut(out string) error {
	for _, name := range []string{lora.ConfigFile, lora.WeightsFile, "training_config.json", "metrics.jsonl"} {
		if _, err := os.Stat(filepath.Join(out, name)); err == nil {
			return fmt.Errorf("%s already holds %s: choose a new --out, or add --resume to continue that run (nothing was written)", out, name)
		}
	}
	if cks, _ := lora.Checkpoints(out); len(cks) > 0 {
		return fmt.Errorf("%s already holds checkpoints: add --resume to continue, or choose a new --out", out)
	}
	return nil
}

// trainLoop runs the remaining steps with progress, metrics and validation.
func trainLoop(ctx context.Context, tr *lora.Trainer, r *loraRun, metricsPath string, extra func() []checkpoints.Tensor, stderr io.Writer) ([]lora.StepResult, error) {
	mf, err := os.OpenFile(metricsPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer mf.Close()
	enc := json.NewEncoder(mf)
	hist := readHistory(metricsPath)
	bar := newBar(stderr, tr.Sched.Total, "training")
	bar.Set(tr.Step)
	terminal := isTerminal(stderr)
	every := max(1, tr.Sched.Total/20)
	start, tokens := time.Now(), 0
	for !tr.Done() {
		res, err := tr.TrainStep(ctx)
		if err != nil {
			return hist, err
		}
		tokens += res.Seen
		if r.cfg.EvalEvery > 0 && len(tr.Val) > 0 && tr.Step%r.cfg.EvalEvery == 0 || tr.Done() && len(tr.Val) > 0 {
			if res.EvalLoss, err = tr.Evaluate(); err != nil {
				return hist, err
			}
		}
		if err := enc.Encode(metricLine(res)); err != nil {
			return hist, err
		}
		hist = append(hist, res)
		rate := float64(tokens) / time.Since(start).Seconds()
		bar.Describe(fmt.Sprintf("loss %.4f lr %.2e %.0f tok/s", res.Loss, res.LR, rate))
		bar.Set(tr.Step)
		if !terminal && (tr.Step%every == 0 || tr.Done()) {
			line := fmt.Sprintf("step %d/%d loss %.4f lr %.3e grad-norm %.3f %.0f tokens/s", tr.Step, tr.Sched.Total, res.Loss, res.LR, res.GradNorm, rate)
			if res.EvalLoss != 0 {
				line += fmt.Sprintf(" eval-loss %.4f", res.EvalLoss)
			}
			fmt.Fprintln(stderr, line)
		}
		if r.cancelAt != nil {
			r.cancelAt(tr.Step)
		}
		if r.cfg.SaveEvery > 0 && tr.Step%r.cfg.SaveEvery == 0 && !tr.Done() {
			if _, err := tr.SaveCheckpoint(r.out, r.modelDir, extra()); err != nil {
				return hist, err
			}
		}
	}
	bar.Finish()
	return hist, nil
}

// metricLine is one line of metrics.jsonl.
func metricLine(r lora.StepResult) map[string]any {
	m := map[string]any{"step": r.Step, "lr": r.LR, "loss": r.Loss, "grad_norm": r.GradNorm, "tokens": r.Tokens, "seq_tokens": r.Seen}
	if r.EvalLoss != 0 {
		m["eval_loss"] = r.EvalLoss
	}
	return m
}

// truncateMetrics drops the lines of steps at or after step (logged after the checkpoint a
// run resumes from), so a resumed run's metrics have each step once.
func truncateMetrics(path string, step int) error {
	hist := readHistory(path)
	var keep strings.Builder
	for _, h := range hist {
		if h.Step < step {
			b, err := json.Marshal(metricLine(h))
			if err != nil {
				return err
			}
			keep.Write(append(b, '\n'))
		}
	}
	return checkpoints.WriteAtomic(path, func(w io.Writer) error {
		_, err := io.WriteString(w, keep.String())
		return err
	})
}

// readHistory reads the steps already in a metrics file (a resumed run plots them too).
func readHistory(path string) []lora.StepResult {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var hist []lora.StepResult
	for _, line := range strings.Split(string(b), "\n") {
		var r lora.StepResult
		if json.Unmarshal([]byte(line), &r) == nil && line != "" {
			hist = append(hist, r)
		}
	}
	return hist
}
