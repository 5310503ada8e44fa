//go:build qtcuda

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
	"github.com/qwen-tune/qwen-tune/model"
	"github.com/qwen-tune/qwen-tune/quantize"
)

func runSelftest(cmd *cobra.Command, o selftestOpts) error {
	out := cmd.OutOrStdout()
	exec, err := model.OpenCUDA(0)
	if err != nil {
		return err
	}
	defer exec.Close()
	d := exec.Device
	lib, err := d.Blas()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "device: %s, %.1f GiB; cuBLAS: %s\n", d.Name, float64(d.Memory)/(1<<30), lib)
	checks := cuda.SelfTest(d, 1)
	checks = append(checks, samplerChecks(d)...)
	checks = append(checks, executorChecks(exec)...)
	if o.golden != "" {
		checks = append(checks, goldenChecks(exec, o.golden)...)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "check\tshape\trel. error\ttolerance\tunwritten\tresult")
	failed := 0
	for _, c := range checks {
		res := "ok"
		if !c.OK() {
			res = "FAIL"
			failed++
		}
		if c.Err != nil {
			res = "FAIL: " + c.Err.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2e\t%.0e\t%d\t%s\n", c.Op, c.Shape, c.RelErr, c.Tol, c.Unwritten, res)
	}
	tw.Flush()
	if o.bench {
		for _, s := range []struct {
			name string
			n, k int
		}{{"attn.c_attn", 12288, 4096}, {"mlp.w1", 11008, 4096}, {"mlp.c_proj", 4096, 11008}, {"lm_head", 151936, 4096}} {
			gbs, err := cuda.GemvBandwidth(d, s.n, s.k, 200)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "gemv_bf16 %-12s [%6d, %5d]: %7.0f GB/s of bf16 weight read;", s.name, s.n, s.k, gbs)
			for _, split := range []int{1, 2, 4, 8} {
				gbs, err := cuda.GemvSplitBandwidth(d, s.n, s.k, split, 200)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, " split %d: %.0f", split, gbs)
			}
			fmt.Fprintln(out)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d checks failed", failed, len(checks))
	}
	fmt.Fprintf(out, "all %d checks passed\n", len(checks))
	return nil
}

// samplerChecks: the on-device sampler against model.Sampler with the same draws, on random
// logits of Qwen's vocabulary size; the fraction of differing ids must stay at rounding level.
func samplerChecks(d *cuda.Device) []cuda.Check {
	const vocab, trials = 151936, 60
	r := rand.New(rand.NewPCG(3, 3))
	var checks []cuda.Check
	for _, s := range []model.Sampler{
		{Greedy: true, RepetitionPenalty: 1.1},
		{Temperature: 1, RepetitionPenalty: 1},
		{Temperature: 0.7, TopK: 20, TopP: 0.8, RepetitionPenalty: 1.1},
		{Temperature: 1, TopP: 0.5, RepetitionPenalty: 1},
		{Temperature: 1.3, TopK: 3, RepetitionPenalty: 1.05, Limit: 151851},
	} {
		c := cuda.Check{Op: "sample_token", Shape: fmt.Sprintf("greedy %v T %g k %d p %g pen %g", s.Greedy, s.Temperature, s.TopK, s.TopP, s.RepetitionPenalty), Tol: 0.05}
		differ := 0
		c.Err = func() error {
			logits := make([]float32, vocab)
			seenMask := make([]byte, vocab)
			bufs := map[string]*cuda.Buffer{}
			defer func() {
				for _, b := range bufs {
					d.Free(b)
				}
			}()
			var err error
			if bufs["out"], err = d.Alloc(4, "id"); err != nil {
				return err
			}
			if bufs["work"], err = d.Alloc(vocab*4, "work"); err != nil {
				return err
			}
			for t := 0; t < trials; t++ {
				for i := range logits {
					logits[i] = float32(3 * r.NormFloat64())
				}
				var seen []int
				clear(seenMask)
				for range 50 {
					id := r.IntN(vocab)
					seen = append(seen, id)
					seenMask[id] = 1
				}
				seed := r.Uint64()
				host, dev := s, s
				host = *model.NewSampler(checkpoints.GenerationConfig{DoSample: !s.Greedy, Temperature: max(s.Temperature, 1e-9), TopK: s.TopK, TopP: s.TopP, RepetitionPenalty: s.RepetitionPenalty}, seed)
				host.Greedy, host.Temperature, host.Limit = s.Greedy, s.Temperature, s.Limit
				dev = *model.NewSampler(checkpoints.GenerationConfig{}, seed)
				want := host.Next(logits, seen)
				u := 0.0
				if !s.Greedy {
					u = dev.Uniform()
				}
				lb, err := cuda.Upload(d, logits, "logits")
				if err != nil {
					return err
				}
				sb, err := cuda.Upload(d, seenMask, "seen")
				if err != nil {
					d.Free(lb)
					return err
				}
				n := vocab
				if s.Limit > 0 {
					n = s.Limit
				}
				err = d.SampleToken(bufs["out"], bufs["work"], lb, sb, n, s.DeviceParams(), u)
				got := []int32{0}
				if err == nil {
					err = cuda.Download(d, got, bufs["out"])
				}
				d.Free(lb)
				d.Free(sb)
				if err != nil {
					return err
				}
				if int(got[0]) != want {
					differ++
				}
			}
			return nil
		}()
		c.RelErr = float64(differ) / trials
		checks = append(checks, c)
	}
	return checks
}

// executorChecks runs a random model (head size 128 as Qwen-7B) on the CPU graph and through
// the GPU executor with the same token sequence: prefill logits, then each decode step's
// logits (teacher-forced with the CPU's greedy choices), within bf16 rounding of the
// activations the GPU keeps (KV cache, GEMM inputs, attention probabilities). The GPTQ cases
// quantize such a model, write it and read it back as model.Load reads Qwen-7B-Chat-Int4:
// gemv_int4 decodes, the prefill dequantizes to bf16 for the GEMMs.
func executorChecks(exec *model.CUDA) []cuda.Check {
	var checks []cuda.Check
	tiny := func(seqLength int) model.TinyOptions {
		return model.TinyOptions{Seed: 5, VocabRanks: 4096, Hidden: 256, Layers: 2, Heads: 2, MLPWidth: 344, SeqLength: seqLength}
	}
	random := func(seqLength int) func() (*model.Model, error) {
		return func() (*model.Model, error) { return model.RandomModel(tiny(seqLength)) }
	}
	gptq := func(o quantize.Options, method quantize.Method) func() (*model.Model, error) {
		return func() (*model.Model, error) {
			dir, err := os.MkdirTemp("", "qwen-tune-selftest-")
			if err != nil {
				return nil, err
			}
			defer os.RemoveAll(dir) // the loaded model keeps its files open: removing them is safe
			t := tiny(2048)
			t.MLPWidth = 384 // group sizes 32 and 64 divide every layer's inputs
			src, err := quantize.WriteTiny(dir, t, o, method)
			if err != nil {
				return nil, err
			}
			return model.Load(src, model.LoadOptions{})
		}
	}
	q := func(group int, actOrder bool) quantize.Options {
		return quantize.Options{Bits: 4, GroupSize: group, Sym: true, DescAct: actOrder, Damp: 0.01, BlockSize: 128}
	}
	for _, c := range []struct {
		name   string
		prompt int
		load   func() (*model.Model, error)
	}{
		{"prefill 40 + decode", 40, random(2048)},
		{"dynamic NTK + LogN: prefill 80 past seq_length 32 + decode", 80, random(32)},
		{"GPTQ 4-bit, group 64 (round-to-nearest): prefill 40 + decode", 40, gptq(q(64, false), quantize.MethodRTN)},
		{"GPTQ 4-bit, act-order, group 32: prefill 40 + decode", 40, gptq(q(32, true), quantize.MethodGPTQ)},
	} {
		chk := cuda.Check{Op: "executor vs CPU graph", Shape: c.name, Tol: 2e-2}
		chk.Err = func() error {
			m, err := c.load()
			if err != nil {
				return err
			}
			defer m.Close()
			r := rand.New(rand.NewPCG(9, 9))
			prompt := make([]int, c.prompt)
			for i := range prompt {
				prompt[i] = r.IntN(m.Config.VocabSize)
			}
			defer exec.Device.ReleaseWeights()
			worst, gpu, err := model.CompareExecutor(m, exec, prompt, 12)
			if gpu != nil {
				defer gpu.Close()
			}
			chk.RelErr = worst
			if err != nil {
				return err
			}
			return nil
		}()
		checks = append(checks, chk)
	}
	return checks
}

// goldenChecks compares the GPU executor on tiny-qwen with the reference outputs.
func goldenChecks(exec *model.CUDA, dir string) []cuda.Check {
	logits := cuda.Check{Op: "golden logits (tiny-qwen, row 0)", Shape: "", Tol: 2e-2}
	greedy := cuda.Check{Op: "golden greedy decoding (tiny-qwen)", Shape: "", Tol: 0}
	fail := func(err error) []cuda.Check {
		logits.Err, greedy.Err = err, err
		return []cuda.Check{logits, greedy}
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		return fail(err)
	}
	defer m.Close()
	m.Exec = exec
	defer func() { m.Exec = nil; exec.Device.ReleaseWeights() }()
	logits.Err = func() error {
		ck, err := checkpoints.OpenFiles(dir, filepath.Join(dir, "golden.safetensors"))
		if err != nil {
			return err
		}
		defer ck.Close()
		idsT, err := ck.Tensor("input_ids")
		if err != nil {
			return err
		}
		ids, err := idsT.Int64()
		if err != nil {
			return err
		}
		mask, err := ck.Tensor("attention_mask")
		if err != nil {
			return err
		}
		mk, err := mask.Int64()
		if err != nil {
			return err
		}
		seq := int(idsT.Shape[1])
		var row []int
		for i := 0; i < seq && mk[i] != 0; i++ {
			row = append(row, int(ids[i]))
		}
		want, err := ck.Float32("logits")
		if err != nil {
			return err
		}
		vocab := m.Config.VocabSize
		s := m.NewSession(len(row))
		defer s.Close()
		for i, id := range row { // prefill the first half, then one token at a time
			if i > 0 && i < len(row)/2 {
				continue
			}
			chunk := []int{id}
			if i == 0 {
				chunk = row[:max(len(row)/2, 1)]
			}
			got, err := s.Feed(chunk)
			if err != nil {
				return err
			}
			pos := i + len(chunk) - 1
			logits.RelErr = max(logits.RelErr, refmath.RelDiff(got, want[pos*vocab:(pos+1)*vocab]))
		}
		logits.Shape = fmt.Sprintf("%d positions (prefill %d, then decode)", len(row), max(len(row)/2, 1))
		return nil
	}()
	greedy.Err = func() error {
		b, err := os.ReadFile(filepath.Join(dir, "golden_greedy.json"))
		if err != nil {
			return err
		}
		var want struct {
			Prompt       []int `json:"prompt"`
			Continuation []int `json:"greedy_continuation"`
		}
		if err := json.Unmarshal(b, &want); err != nil {
			return fmt.Errorf("golden_greedy.json: %w", err)
		}
		s := m.NewSession(len(want.Prompt) + len(want.Continuation))
		defer s.Close()
		got, _, err := s.Generate(context.Background(), want.Prompt, model.GenerateOptions{MaxNewTokens: len(want.Continuation), Sampler: &model.Sampler{Greedy: true, RepetitionPenalty: 1}}, nil)
		if err != nil {
			return err
		}
		greedy.Shape = fmt.Sprintf("%d new tokens", len(want.Continuation))
		if !slices.Equal(got, want.Continuation) {
			return fmt.Errorf("got %v, reference %v", got, want.Continuation)
		}
		return nil
	}()
	return []cuda.Check{logits, greedy}
}
