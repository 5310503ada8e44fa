package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/data"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

// fitShapes checks o against the model, naming the flags at fault. Without --group-size, a
// model whose layers the default group size does not divide (a small one) gets the largest
// power of two below it that divides them all, and a message.
func fitShapes(cmd *cobra.Command, c *checkpoints.Config, o *quantize.Options) error {
	err := quantize.CheckShapes(c, *o)
	var ge *quantize.GroupSizeError
	if errors.As(err, &ge) && !cmd.Flags().Changed("group-size") {
		for _, g := range ge.Valid {
			if g&(g-1) == 0 && g < o.GroupSize {
				fmt.Fprintf(cmd.ErrOrStderr(), "group size %d (the default %d does not divide %s)\n", g, o.GroupSize, ge.Layers)
				o.GroupSize = g
				return quantize.CheckShapes(c, *o)
			}
		}
	}
	var be *quantize.BitsError
	switch {
	case errors.As(err, &ge):
		return fmt.Errorf("--group-size %d: %s", ge.GroupSize, ge.Detail())
	case errors.As(err, &be):
		return fmt.Errorf("--bits %s", be.Detail())
	}
	return err
}

func newQuantizeCmd() *cobra.Command {
	var (
		modelDir, out, method string
		device                string
		src                   textInput
		nsamples, seqLen      int
		seed                  uint64
		o                     = quantize.DefaultOptions()
	)
	cmd := &cobra.Command{
		Use:   "quantize --model DIR (--data FILE | --text FILE) --out DIR",
		Short: "Quantize a model to Int4 with GPTQ (AutoGPTQ layout, as Qwen-7B-Chat-Int4)",
		Long: `quantize calibrates GPTQ on your data and writes a model directory in AutoGPTQ's
"gptq" layout: for the five Linears of every block qweight, qzeros, scales, g_idx and bias; the
embedding, norms and lm_head in fp16; quantize_config.json and config.json's
quantization_config. Qwen-7B-Chat-Int4's settings are the default: 4 bits, group size 128,
symmetric, no act-order, damping 0.01, true-sequential.

Calibration: --data (any format lora reads, rendered as in training) or --text (plain text),
joined and cut into --nsamples windows of --seq-len tokens. Blocks are processed one at a
time: the inputs of c_attn, then attn.c_proj, then w1 and w2, then mlp.c_proj are captured
with the already-quantized layers in place. Each layer's relative output error is shown next
to round-to-nearest's on the same grid; the worst layers are listed at the end and all of
them saved to quantize_report.json. chat, generate and eval run the result directly.

--device cuda calibrates on the GPU of a build with -tags qtcuda: the hidden states stay on
the device, the Hessians are summed and GPTQ runs there, and the peak device memory is
printed. Its forward computes in bf16 as GPU inference does (the CPU's in float32), so its
codes differ from the CPU's where that rounding moves them.`,
		Example: `  qwen-tune quantize --model ./Qwen-7B-Chat-mine --data chats.jsonl --out Qwen-7B-Chat-mine-Int4
  qwen-tune quantize --model tiny-qwen --text notes.txt --out tiny-int4 --group-size 32 --nsamples 16 --seq-len 256`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cuda, err := wantsCUDA(device)
			if err != nil {
				return err
			}
			if err := quantizeDeviceError(cuda); err != nil {
				return err
			}
			if modelDir == "" || out == "" || !src.one() {
				return fmt.Errorf("--model, --out and exactly one of --data and --text are required")
			}
			if method != string(quantize.MethodGPTQ) && method != string(quantize.MethodRTN) {
				return fmt.Errorf("--method %q: expected gptq or rtn", method)
			}
			if _, err := checkpoints.CheckOutDir(out, "--out"); err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			in, err := openModel(cmd, modelDir, openOptions{NeedTokenizer: true})
			if err != nil {
				return err
			}
			defer in.close()
			if _, ok := in.m.Blocks[0].QKV.(*model.Int4); ok {
				return fmt.Errorf("%s is already GPTQ-quantized; quantize the floating-point model", modelDir)
			}
			if err := fitShapes(cmd, in.m.Config, &o); err != nil {
				return err
			}
			var seqs []data.Sequence
			if src.data != "" {
				exs, _, err := data.Load(src.data, data.BadError, in.m.Config.VocabSize)
				if err != nil {
					return err
				}
				if seqs, _, err = data.Prepare(in.tok, exs, data.MaskQwen, 1<<30); err != nil {
					return err
				}
			} else {
				ids, err := src.encodeText(in.tok)
				if err != nil {
					return err
				}
				seqs = []data.Sequence{{IDs: ids}}
			}
			samples := data.Calibration(seqs, nsamples, seqLen, seed)
			tokens := 0
			for _, s := range samples {
				tokens += len(s)
			}
			if len(samples) < nsamples {
				what := fmt.Sprintf("the data gives %d windows of --seq-len %d tokens (%d tokens in all)", len(samples), seqLen, tokens)
				if cmd.Flags().Changed("nsamples") {
					return fmt.Errorf("--nsamples %d: %s; lower --nsamples or --seq-len, or give more data", nsamples, what)
				}
				fmt.Fprintf(stderr, "%s, fewer than --nsamples %d: calibrating on all of them\n", what, nsamples)
			}
			if tokens < 16 {
				return fmt.Errorf("only %d calibration tokens: GPTQ needs data to measure the layers' inputs; give more --data", tokens)
			}
			if tokens < in.m.Config.HiddenSize {
				fmt.Fprintf(stderr, "warning: %d calibration tokens for hidden size %d: the Hessians are rank-deficient and held up by damping; more data quantizes better\n", tokens, in.m.Config.HiddenSize)
			}
			fmt.Fprintf(stderr, "calibrating on %d samples, %d tokens: %d bits, group size %d, sym %v, act-order %v, damp %g, method %s\n",
				len(samples), tokens, o.Bits, o.GroupSize, o.Sym, o.DescAct, o.Damp, method)
			bar := newBar(stderr, 5*len(in.m.Blocks), "quantizing")
			terminal := isTerminal(stderr)
			start := time.Now()
			ctx, stop := interruptible(cmd.Context())
			defer stop()
			finished := 0
			progress := func(r quantize.LayerReport, done, total int) {
				bar.Describe(fmt.Sprintf("%s err %.4f (rtn %.4f)", r.Name, r.Error, r.RTNError))
				bar.Set(done)
				finished = done
				if !terminal {
					fmt.Fprintf(stderr, "[%d/%d] %-28s error %.4f  round-to-nearest %.4f\n", done, total, r.Name, r.Error, r.RTNError)
				}
				if r.Damp > o.Damp {
					fmt.Fprintf(stderr, "%s: the Hessian was not positive definite; damping raised to %g\n", r.Name, r.Damp)
				}
			}
			var (
				layers  []*autograd.Int4
				reports []quantize.LayerReport
				peak    int64
			)
			if cuda {
				layers, reports, peak, err = calibrateOnDevice(ctx, stderr, in.m, samples, o, quantize.Method(method), progress)
			} else {
				layers, reports, err = quantize.Calibrate(ctx, in.m, samples, o, quantize.Method(method), progress)
			}
			bar.Finish()
			if err != nil && ctx.Err() != nil {
				return stopped(fmt.Sprintf("quantize interrupted after %d of %d layers; nothing was written to %s", finished, 5*len(in.m.Blocks), out))
			}
			if err != nil {
				return err
			}
			took := time.Since(start)
			if err := quantize.Save(out, modelDir, layers, o); err != nil {
				return err
			}
			where := "cpu"
			if cuda {
				where = "cuda"
			}
			if err := checkpoints.WriteJSON(filepath.Join(out, "quantize_report.json"), struct {
				Samples, Tokens int
				Seconds         float64
				Device          string
				PeakDeviceBytes int64 `json:",omitempty"`
				Layers          []quantize.LayerReport
			}{len(samples), tokens, took.Seconds(), where, peak, reports}); err != nil {
				return err
			}
			worst := append([]quantize.LayerReport(nil), reports...)
			sort.Slice(worst, func(i, j int) bool { return worst[i].Error > worst[j].Error })
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "quantized %d layers in %.1f s; worst layers (relative output error on calibration inputs):\n", len(reports), took.Seconds())
			for _, r := range worst[:min(5, len(worst))] {
				fmt.Fprintf(w, "  %-28s %s %.4f   round-to-nearest %.4f\n", r.Name, method, r.Error, r.RTNError)
			}
			if cuda {
				fmt.Fprintf(w, "device mem peak %.2f GiB held by the Hessians and GPTQ's buffers\n", float64(peak)/(1<<30))
			}
			fmt.Fprintf(w, "wrote %s\n", out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "floating-point model directory")
	f.StringVar(&out, "out", "", "new directory for the quantized model")
	src.register(f, "calibration data (conversations, messages or input_ids)", "calibration text file")
	f.IntVar(&o.Bits, "bits", o.Bits, "bits per weight: 2, 4 or 8")
	f.IntVar(&o.GroupSize, "group-size", o.GroupSize, "input columns per scale; must divide every layer's input width (-1 = one scale per output row; default 128, or the largest power of two below it that fits a small model)")
	f.BoolVar(&o.DescAct, "desc-act", o.DescAct, "act-order: quantize columns by decreasing Hessian diagonal")
	f.BoolVar(&o.Sym, "sym", o.Sym, "symmetric grid (zero point in the middle)")
	f.BoolVar(&o.StaticGroups, "static-groups", o.StaticGroups, "group grids from the original weights")
	f.Float64Var(&o.Damp, "damp", o.Damp, "damping as a fraction of the mean Hessian diagonal")
	f.IntVar(&nsamples, "nsamples", 128, "calibration samples")
	f.IntVar(&seqLen, "seq-len", 2048, "tokens per calibration sample")
	f.Uint64Var(&seed, "seed", 0, "seed for picking calibration samples")
	f.StringVar(&method, "method", "gptq", "gptq, or rtn (round-to-nearest on the same grid, for comparison)")
	f.StringVar(&device, "device", "cpu", "where the calibration runs: cpu, or cuda (the GPU of a build with -tags qtcuda: forward, Hessians and GPTQ; the forward in bf16)")
	return cmd
}
