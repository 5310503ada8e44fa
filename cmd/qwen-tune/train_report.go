package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/qwen-tune/qwen-tune/lora"
)

// trainLora runs lora.Run with progress on stderr. Ctrl-C or SIGTERM stops the run after
// the current step with a checkpoint (a second one quits at once); the run then returns an
// *interrupted error carrying resume, the command line that continues it.
func trainLora(cmd *cobra.Command, o lora.Options, resume string, logEvery int) error {
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	rep := newTrainReport(cmd.ErrOrStderr(), o.ModelDir, logEvery)
	if o.Exec != nil {
		rep.mem = o.Exec.Memory
	}
	var sig os.Signal
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case sig = <-sigs:
			signal.Stop(sigs) // a second signal ends the process at once
			fmt.Fprintf(rep.w, "\n%s: stopping after this step and saving a checkpoint (send it again to quit at once)\n", sigName(sig))
			cancel()
		case <-ctx.Done():
		}
	}()
	res, err := lora.Run(ctx, o, rep.hooks())
	cancel()
	<-watched
	return rep.done(cmd.OutOrStdout(), o, res, err, sig, resume)
}

// interrupted is a run stopped by a signal (or a step hook) after saving a checkpoint. The
// process exits with 128 + the signal's number: 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
type interrupted struct {
	sig        os.Signal // nil when no signal stopped it
	step, of   int
	checkpoint string
	resume     string // the command line that continues the run
}

func (e *interrupted) Error() string {
	by := ""
	if e.sig != nil {
		by = " by " + sigName(e.sig)
	}
	return fmt.Sprintf("interrupted%s at step %d of %d; saved %s. Continue the run with:\n  %s", by, e.step, e.of, e.checkpoint, e.resume)
}

// sigName is SIGINT (Ctrl-C) or SIGTERM.
func sigName(s os.Signal) string {
	switch s {
	case os.Interrupt:
		return "SIGINT (Ctrl-C)"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// status is the exit status: 128 + the signal number, or 130 as for Ctrl-C.
func (e *interrupted) status() int {
	if s, ok := e.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 128 + int(syscall.SIGINT)
}

// resumeCommand is the command line that ran cmd, quoted for a POSIX shell, with --resume.
// Without it (cmd run from Go) the flags set are listed in the order cobra keeps them.
func resumeCommand(cmd *cobra.Command) string {
	args, ok := cmd.Context().Value(argsKey{}).([]string)
	if !ok {
		cmd.Flags().Visit(func(f *pflag.Flag) {
			if f.Name == "resume" {
				return
			}
			v := f.Value.String()
			if sv, ok := f.Value.(pflag.SliceValue); ok {
				v = strings.Join(sv.GetSlice(), ",")
			}
			args = append(args, "--"+f.Name+"="+v)
		})
		args = append(strings.Fields(cmd.CommandPath())[1:], args...)
	}
	parts := []string{"qwen-tune"}
	resume := false
	for _, a := range args {
		parts = append(parts, shellQuote(a))
		resume = resume || a == "--resume"
	}
	if !resume {
		parts = append(parts, "--resume")
	}
	return strings.Join(parts, " ")
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./:,=+@%-]+$`)

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// trainReport prints a run on stderr: the settings at start, then on a terminal a progress
// bar with the step, the smoothed loss, tokens/s and the time left; elsewhere a line every
// `every` steps (default: every 5% of the run).
type trainReport struct {
	w        io.Writer
	terminal bool
	load     loadProgress
	bar      *progressbar.ProgressBar
	every    int // 0: every 5% of the run
	first    int // the step this process started at
	total    int
	start    time.Time
	tokens   int
	smooth   float64 // the loss's exponential moving average, not yet debiased
	steps    int     // steps this process ran
	// mem is the device memory held now and at most so far (nil on the CPU)
	mem func() (held, peak int64)
}

// smoothing is the weight of the previous average in the smoothed loss.
const smoothing = 0.9

func newTrainReport(stderr io.Writer, modelDir string, every int) *trainReport {
	return &trainReport{w: stderr, terminal: isTerminal(stderr), load: loadProgress{w: stderr, what: modelDir}, every: every}
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
	p.load.finish()
	c := s.Config
	for _, n := range s.Notes {
		fmt.Fprintf(p.w, "resume: %s\n", n)
	}
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
	if s.Base.QuantMethod != "" {
		fmt.Fprintf(p.w, "base: %s, frozen and kept packed (Q-LoRA: only the adapters train)\n", s.Base)
	}
	fmt.Fprintf(p.w, "training %d parameters (%d LoRA layers) for %d steps with\n%s\n", s.Params, s.Layers, s.Total, resolved)
	p.first, p.total, p.start = s.Step, s.Total, time.Now()
	if p.every <= 0 {
		p.every = max(1, s.Total/20)
	}
	p.bar = newBar(p.w, s.Total, "training")
	p.bar.Set(s.Step)
}

func (p *trainReport) step(res lora.StepResult) error {
	p.steps++
	p.tokens += res.Seen
	p.smooth = smoothing*p.smooth + (1-smoothing)*res.Loss
	step := res.Step + 1
	p.bar.Describe(p.status(step))
	p.bar.Set(step)
	if !p.terminal && (step%p.every == 0 || step >= p.total) {
		line := fmt.Sprintf("step %d/%d loss %.4f (smoothed %.4f) lr %.3e grad-norm %.3f", step, p.total, res.Loss, p.smoothed(), res.LR, res.GradNorm)
		if res.EvalLoss != 0 {
			line += fmt.Sprintf(" eval-loss %.4f", res.EvalLoss)
		}
		fmt.Fprintf(p.w, "%s %.0f tokens/s%s ETA %s\n", line, p.rate(), p.memory(" "), p.eta(step))
	}
	return nil
}

// status is the bar's description: the smoothed loss, tokens/s, the device's memory and the
// time left.
func (p *trainReport) status(step int) string {
	return fmt.Sprintf("loss %.4f | %.0f tok/s%s | ETA %s", p.smoothed(), p.rate(), p.memory(" | "), p.eta(step))
}

// memory is sep and the device memory held and its peak, or "" on the CPU.
func (p *trainReport) memory(sep string) string {
	if p.mem == nil {
		return ""
	}
	held, peak := p.mem()
	return fmt.Sprintf("%sdevice %.2f GiB (peak %.2f GiB)", sep, float64(held)/(1<<30), float64(peak)/(1<<30))
}

// smoothed is the debiased moving average of the losses this process saw.
func (p *trainReport) smoothed() float64 {
	return p.smooth / (1 - math.Pow(smoothing, float64(p.steps)))
}

func (p *trainReport) rate() float64 {
	return float64(p.tokens) / max(time.Since(p.start).Seconds(), 1e-9)
}

// eta is the time the remaining steps take at this process's pace so far.
func (p *trainReport) eta(step int) time.Duration {
	done := step - p.first
	if done <= 0 {
		return 0
	}
	left := time.Duration(float64(time.Since(p.start)) / float64(done) * float64(p.total-step))
	return left.Round(time.Second)
}

// done clears the bars and says where the run's output is, or how to continue it.
func (p *trainReport) done(stdout io.Writer, o lora.Options, res *lora.Result, err error, sig os.Signal, resume string) error {
	p.load.finish()
	if p.bar != nil {
		p.bar.Finish()
	}
	if err != nil {
		return err
	}
	if res.Stopped {
		return &interrupted{sig: sig, step: res.Step, of: res.Total, checkpoint: res.Checkpoint, resume: resume}
	}
	plot := filepath.Join(o.Out, "loss.png")
	if err := plotLosses(plot, res.History); err != nil {
		fmt.Fprintf(p.w, "warning: loss plot not written: %v\n", err)
	}
	fmt.Fprintf(stdout, "saved the adapter to %s (%s, %s); metrics in %s, plot in %s\n", o.Out, lora.ConfigFile, lora.WeightsFile, res.Metrics, plot)
	return nil
}
