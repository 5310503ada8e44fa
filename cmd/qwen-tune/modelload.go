package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/tokenizer"
)

// inference is a model directory opened to run: weights, generation settings and, when the
// directory has one, the vocabulary.
type inference struct {
	m       *model.Model
	gen     *checkpoints.GenerationConfig
	tok     *tokenizer.Tokenizer
	release func() // gives the device back
}

// openOptions say how a command opens its --model.
type openOptions struct {
	Adapter       string // --adapter: a PEFT adapter applied without merging
	NeedTokenizer bool   // a directory without qwen.tiktoken is an error
	// OnDevice puts the model on Device (--device: "", cpu or cuda; an adapter is folded into
	// the weights there, as the GPU executor has no LoRA kernels). Otherwise it stays on the
	// CPU.
	OnDevice bool
	Device   string
}

// openModel loads a model directory with a progress bar on stderr.
func openModel(cmd *cobra.Command, dir string, o openOptions) (*inference, error) {
	stderr := cmd.ErrOrStderr()
	load := loadProgress{w: stderr, what: dir}
	op, err := lora.Open(dir, lora.OpenOptions{Adapter: o.Adapter, NeedTokenizer: o.NeedTokenizer, Progress: load.update})
	load.finish()
	if err != nil {
		return nil, err
	}
	in := &inference{m: op.Model, gen: op.Gen, tok: op.Tok, release: func() {}}
	if a := op.Adapter; a != nil {
		fmt.Fprintf(stderr, "adapter %s: %d LoRA layers, r %d, alpha %g\n", o.Adapter, len(a.Layers), a.Config.R, a.Config.Alpha)
		if op.AdapterNote != "" {
			fmt.Fprintf(stderr, "note: %s\n", op.AdapterNote)
		}
	}
	if !o.OnDevice {
		return in, nil
	}
	if in.release, err = useDevice(cmd, in.m, o.Device); err != nil {
		in.m.Close()
		return nil, err
	}
	if a := op.Adapter; a != nil && in.m.Exec != nil {
		// the GPU runs plain projections: fold the adapter into copies of the weights
		n, err := lora.Fold(in.m)
		if err != nil {
			in.close()
			return nil, err
		}
		fmt.Fprintf(stderr, "adapter folded into %d weights for %s\n", n, in.m.Exec.Name())
	}
	return in, nil
}

// close gives the device back and unmaps the weights.
func (in *inference) close() {
	in.release()
	in.m.Close()
}

// loadProgress is a progress bar for loading what, made at the first tensor.
type loadProgress struct {
	w    io.Writer
	what string
	bar  *progressbar.ProgressBar
}

func (l *loadProgress) update(done, total int) {
	if l.bar == nil {
		l.bar = newBar(l.w, total, "loading "+l.what)
	}
	l.bar.Set(done)
}

func (l *loadProgress) finish() {
	if l.bar != nil {
		l.bar.Finish()
		l.bar = nil
	}
}

// isTerminal reports whether w is a character device (a terminal), where progress bars go.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// newBar is a progress bar on stderr when stderr is a terminal, and nothing otherwise.
func newBar(w io.Writer, total int, what string) *progressbar.ProgressBar {
	if !isTerminal(w) {
		return progressbar.NewOptions(total, progressbar.OptionSetVisibility(false))
	}
	return progressbar.NewOptions(total, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(), progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetPredictTime(true))
}

// genFlags are the model and sampling flags of chat and generate; unset sampling flags keep
// the model's generation_config.json values.
type genFlags struct {
	model, adapter                       string
	temperature, topP, repetitionPenalty float64
	topK, maxNewTokens                   int
	seed                                 uint64
	greedy                               bool
	device                               string
}

func (f *genFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.adapter, "adapter", "", "PEFT LoRA adapter directory applied on top of the model (not merged)")
	fs.Float64Var(&f.temperature, "temperature", 0, "sampling temperature (default: generation_config.json)")
	fs.Float64Var(&f.topP, "top-p", 0, "nucleus sampling threshold in (0, 1] (default: generation_config.json)")
	fs.IntVar(&f.topK, "top-k", 0, "keep the k most likely tokens, 0 = off (default: generation_config.json)")
	fs.Float64Var(&f.repetitionPenalty, "repetition-penalty", 0, "penalty for ids already in prompt and output, 1 = off (default: generation_config.json)")
	fs.IntVar(&f.maxNewTokens, "max-new-tokens", 0, "most tokens to generate (default: generation_config.json)")
	fs.Uint64Var(&f.seed, "seed", 0, "random seed for sampling (default: from the clock)")
	fs.BoolVar(&f.greedy, "greedy", false, "always take the most likely token (no sampling)")
	registerDevice(fs, &f.device)
}

// open loads --model (and --adapter) on --device and resolves the sampling settings.
func (f *genFlags) open(cmd *cobra.Command, needTokenizer bool) (*inference, checkpoints.GenerationConfig, uint64, error) {
	if err := f.check(cmd.Flags()); err != nil {
		return nil, checkpoints.GenerationConfig{}, 0, err
	}
	in, err := openModel(cmd, f.model, openOptions{Adapter: f.adapter, NeedTokenizer: needTokenizer, OnDevice: true, Device: f.device})
	if err != nil {
		return nil, checkpoints.GenerationConfig{}, 0, err
	}
	g, seed, err := f.settings(cmd.Flags(), *in.gen)
	if err != nil {
		in.close()
		return nil, g, 0, err
	}
	return in, g, seed, nil
}

// check refuses sampling flags out of range, naming the flag (the same ranges as
// generation_config.json's keys, which GenerationConfig.Validate checks).
func (f *genFlags) check(fs *pflag.FlagSet) error {
	for _, c := range []struct {
		flag string
		ok   bool
		want string
	}{
		{"temperature", f.temperature >= 0, "must be >= 0 (0 is greedy)"},
		{"top-p", f.topP > 0 && f.topP <= 1, "must be in (0, 1]"},
		{"top-k", f.topK >= 0, "must be >= 0 (0 turns it off)"},
		{"repetition-penalty", f.repetitionPenalty > 0, "must be > 0 (1 turns it off)"},
		{"max-new-tokens", f.maxNewTokens >= 0, "must be >= 0"},
	} {
		if fs.Changed(c.flag) && !c.ok {
			return fmt.Errorf("--%s %s: %s", c.flag, fs.Lookup(c.flag).Value, c.want)
		}
	}
	return nil
}

// settings merges the flags that were set into the model's generation config.
func (f *genFlags) settings(fs *pflag.FlagSet, base checkpoints.GenerationConfig) (checkpoints.GenerationConfig, uint64, error) {
	g := base
	if fs.Changed("temperature") {
		g.Temperature, g.DoSample = f.temperature, true
	}
	if fs.Changed("top-p") {
		g.TopP = f.topP
	}
	if fs.Changed("top-k") {
		g.TopK = f.topK
	}
	if fs.Changed("repetition-penalty") {
		g.RepetitionPenalty = f.repetitionPenalty
	}
	if fs.Changed("max-new-tokens") {
		g.MaxNewTokens = f.maxNewTokens
	}
	if f.greedy {
		g.DoSample = false
	}
	if err := g.Validate(); err != nil {
		return g, 0, fmt.Errorf("generation settings: %w", err)
	}
	seed := f.seed
	if !fs.Changed("seed") {
		seed = uint64(time.Now().UnixNano())
	}
	return g, seed, nil
}
