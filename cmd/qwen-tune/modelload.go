package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	release func() // gives the device back (openOnDevice)
}

// openOnDevice is openWithAdapter with the model put on the named --device (an adapter is
// folded into the weights there: the GPU executor has no LoRA kernels).
func openOnDevice(cmd *cobra.Command, dir, adapter string, needTokenizer bool, device string) (*inference, error) {
	in, err := openWithAdapter(cmd, dir, adapter, needTokenizer)
	if err != nil {
		return nil, err
	}
	if in.release, err = useDevice(cmd, in.m, device); err != nil {
		in.m.Close()
		return nil, err
	}
	if adapter != "" && in.m.Exec != nil {
		// the GPU runs plain projections: fold the adapter into copies of the weights
		n, err := lora.Fold(in.m)
		if err != nil {
			in.close()
			return nil, err
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "adapter folded into %d weights for %s\n", n, in.m.Exec.Name())
	}
	return in, nil
}

// close gives the device back and unmaps the weights.
func (in *inference) close() {
	if in.release != nil {
		in.release()
	}
	in.m.Close()
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

// openInference loads a model directory for inference; needTokenizer makes a missing
// qwen.tiktoken an error.
func openInference(cmd *cobra.Command, dir string, needTokenizer bool) (*inference, error) {
	return openWithAdapter(cmd, dir, "", needTokenizer)
}

// openWithAdapter is openInference plus a PEFT LoRA adapter applied without merging.
func openWithAdapter(cmd *cobra.Command, dir, adapter string, needTokenizer bool) (*inference, error) {
	return openModel(cmd, dir, adapter, needTokenizer, nil)
}

// openModel loads a model directory; train names tensors widened to trainable float32.
func openModel(cmd *cobra.Command, dir, adapter string, needTokenizer bool, train []string) (*inference, error) {
	if dir == "" {
		return nil, fmt.Errorf("--model DIR is required (a directory with config.json and safetensors weights; 'qwen-tune init --tiny --out DIR' makes one)")
	}
	cfg, gen, err := checkpoints.ReadModelConfigs(dir)
	if err != nil {
		return nil, err
	}
	need := model.WeightBytes(cfg)
	for range train { // float32 copy, gradient and two Adam moments of a [vocab, hidden] table
		need += 16 * int64(cfg.VocabSize) * int64(cfg.HiddenSize)
	}
	if err := model.CheckMemory(need, fmt.Sprintf("%s (%d parameters in bf16)", dir, cfg.ParamCount())); err != nil {
		return nil, err
	}
	in := &inference{gen: gen}
	if _, err := os.Stat(filepath.Join(dir, tokenizer.VocabFile)); err == nil {
		if in.tok, err = tokenizer.Load(dir); err != nil {
			return nil, err
		}
		if in.tok.Size() > cfg.VocabSize {
			return nil, fmt.Errorf("%s: the vocabulary has %d tokens but the model's embedding has %d rows (config vocab_size); the vocabulary belongs to another model", dir, in.tok.Size(), cfg.VocabSize)
		}
	} else if needTokenizer {
		return nil, fmt.Errorf("%s has no %s: this command needs the model's vocabulary", dir, tokenizer.VocabFile)
	}
	bar := newBar(cmd.ErrOrStderr(), len(checkpoints.ModelTensors(cfg, nil)), "loading "+dir)
	in.m, err = model.Load(dir, model.LoadOptions{Train: train, Progress: func(done, total int) { bar.Set(done) }})
	bar.Finish()
	if err != nil {
		return nil, err
	}
	if adapter != "" {
		a, err := lora.Attach(adapter, in.m)
		if err != nil {
			in.m.Close()
			return nil, err
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "adapter %s: %d LoRA layers, r %d, alpha %g\n", adapter, len(a.Layers), a.Config.R, a.Config.Alpha)
	}
	return in, nil
}

// genFlags are the sampling flags of chat and generate; unset flags keep the model's
// generation_config.json values.
type genFlags struct {
	temperature, topP, repetitionPenalty float64
	topK, maxNewTokens                   int
	seed                                 uint64
	greedy                               bool
	device                               string
}

func (f *genFlags) register(fs *pflag.FlagSet) {
	fs.Float64Var(&f.temperature, "temperature", 0, "sampling temperature (default: generation_config.json)")
	fs.Float64Var(&f.topP, "top-p", 0, "nucleus sampling threshold in (0, 1] (default: generation_config.json)")
	fs.IntVar(&f.topK, "top-k", 0, "keep the k most likely tokens, 0 = off (default: generation_config.json)")
	fs.Float64Var(&f.repetitionPenalty, "repetition-penalty", 0, "penalty for ids already in prompt and output, 1 = off (default: generation_config.json)")
	fs.IntVar(&f.maxNewTokens, "max-new-tokens", 0, "most tokens to generate (default: generation_config.json)")
	fs.Uint64Var(&f.seed, "seed", 0, "random seed for sampling (default: from the clock)")
	fs.BoolVar(&f.greedy, "greedy", false, "always take the most likely token (no sampling)")
	registerDevice(fs, &f.device)
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
