package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/internal/matmul"
	"github.com/qwen-tune/qwen-tune/lora"
	"github.com/qwen-tune/qwen-tune/model"
)

func newBenchCmd() *cobra.Command {
	var (
		modelDir, shape, device string
		opts                    = model.BenchOptions{Seed: 1}
		asJSON, train           bool
		topts                   = lora.TrainBenchOptions{Batch: 1, Seq: 512, Steps: 3, LoRA: lora.DefaultConfig(), Seed: 1}
		targets                 string
		checkpoint              *bool
	)
	cmd := &cobra.Command{
		Use:   "bench (--model DIR | --shape qwen-7b)",
		Short: "Measure prefill and decode speed, memory and the decode floor",
		Long: `bench prefills a random prompt of --prompt-len tokens (the fastest of --rounds runs),
then decodes --new-tokens tokens greedily, batch 1, one at a time with the KV cache, after
--decode-after positions, and reports tokens per second, the KV cache, peak host memory (RSS)
and, on a GPU, peak device memory. It also measures the memory copy bandwidth where the model
runs: reading every weight once per token bounds decoding at bandwidth / weight bytes (the
decode floor), and the decode speed is reported as a fraction of it.

--model DIR benchmarks a checkpoint (bf16 weights stay bf16, memory-mapped); --shape qwen-7b
benchmarks random bf16 weights of Qwen-7B's exact configuration generated in memory (15.4 GB).
--cache sets the KV cache capacity (e.g. 8192 to see the memory of a long context).

--train measures LoRA training instead (on --device: the loss, the gradients and the
optimizer there): --steps optimizer steps (after one warm-up step) of
--batch-size random sequences of --max-len tokens, every token trained, Qwen's recipe (r 64
on c_attn, c_proj, w1, w2, AdamW), and reports tokens per second, the step time, the
trained parameters and their optimizer state, the matrix FLOPs of a step and peak memory.`,
		Example: `  qwen-tune bench --shape qwen-7b --device cuda --cache 8192 --json
  qwen-tune init --tiny --shape qwen-7b --layers 2 --out qwen7b-2layers
  qwen-tune bench --model qwen7b-2layers --prompt-len 128 --new-tokens 16
  qwen-tune bench --train --model qwen7b-2layers --batch-size 1 --max-len 256`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (modelDir == "") == (shape == "") {
				return fmt.Errorf("give exactly one of --model DIR and --shape qwen-7b")
			}
			start := time.Now()
			var m *model.Model
			name := modelDir
			if shape != "" {
				if shape != "qwen-7b" {
					return fmt.Errorf("--shape %q: the only named shape is qwen-7b", shape)
				}
				fmt.Fprintln(cmd.ErrOrStderr(), "generating random bf16 weights of Qwen-7B's shape (15.4 GB)")
				var err error
				if m, err = model.RandomModel(model.Qwen7BShape()); err != nil {
					return err
				}
				name = "random weights, shape qwen-7b"
			} else {
				in, err := openModel(cmd, modelDir, openOptions{})
				if err != nil {
					return err
				}
				m = in.m
			}
			defer m.Close()
			if train {
				return benchTrain(cmd, m, name, device, topts, targets, asJSON, *checkpoint)
			}
			release, err := useDevice(cmd, m, device)
			if err != nil {
				return err
			}
			defer release()
			load, loadRSS := time.Since(start).Seconds(), model.PeakRSS()
			res, err := model.MeasureThroughput(m, opts)
			if err != nil {
				return err
			}
			res.LoadSec, res.LoadRSSBytes = load, loadRSS
			out := cmd.OutOrStdout()
			if asJSON {
				b, err := json.Marshal(struct {
					model.Throughput
					Model   string `json:"model"`
					Threads int    `json:"threads"`
				}{res, name, runtime.GOMAXPROCS(0)})
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(out, string(b))
				return err
			}
			c := m.Config
			gib := func(b int64) float64 { return float64(b) / (1 << 30) }
			fmt.Fprintf(out, "model      %s: %d layers, hidden %d, vocab %d, %.2f GB of weights\n", name, c.NumHiddenLayers, c.HiddenSize, c.VocabSize, float64(res.WeightsBytes)/1e9)
			fmt.Fprintf(out, "device     %s\n", res.Device)
			switch {
			case res.CPUKernel == "":
			case res.FMAPeakGFs == 0:
				fmt.Fprintf(out, "matmul     %s: no assembly kernel for this CPU (they need amd64 with AVX-512 or AVX2+FMA); the matrix products run portable Go loops, several times slower\n", res.CPUKernel)
			default:
				fmt.Fprintf(out, "matmul     %s micro-kernel; FMA peak %.0f GFLOP/s on %d threads\n", res.CPUKernel, res.FMAPeakGFs, runtime.GOMAXPROCS(0))
			}
			switch res.CPUVectorMath {
			case "":
			case "pure Go":
				fmt.Fprintf(out, "vector     pure Go: no AVX2+FMA on this CPU; exponentials and sigmoids run one at a time\n")
			default:
				fmt.Fprintf(out, "vector     %s exponential and sigmoid\n", res.CPUVectorMath)
			}
			fmt.Fprintf(out, "load       %.2f s, peak RSS after loading %.2f GiB\n", res.LoadSec, gib(res.LoadRSSBytes))
			if res.PromptTokens > 0 {
				fmt.Fprintf(out, "prefill    %d tokens in %.4f s: %.1f tokens/s\n", res.PromptTokens, res.PrefillSec, res.PrefillTokS)
			}
			if res.NewTokens > 0 {
				fmt.Fprintf(out, "decode     %d tokens after %d in %.3f s: %.2f tokens/s, %.0f%% of the floor\n", res.NewTokens, res.DecodeAfter, res.DecodeSec, res.DecodeTokS, 100*res.FloorFraction)
			}
			if res.DecodeStats != "" {
				fmt.Fprintf(out, "decode     %s\n", res.DecodeStats)
			}
			fmt.Fprintf(out, "floor      copy bandwidth %.0f GB/s (read + write) / %.2f GB of weights = %.2f tokens/s\n", res.CopyGBs, float64(res.WeightsBytes)/1e9, res.FloorTokS)
			fmt.Fprintf(out, "kv cache   %.1f MiB for %d positions\n", float64(res.KVCacheBytes)/(1<<20), res.CachePos)
			if res.PeakDevBytes > 0 {
				fmt.Fprintf(out, "device mem peak %.2f GiB held by the process's buffers: weights %.2f GiB, kv cache %.2f GiB, activations %.1f MiB\n",
					gib(res.PeakDevBytes), gib(res.WeightsBytes), gib(res.KVCacheBytes), float64(res.ActivationBytes)/(1<<20))
			}
			fmt.Fprintf(out, "peak RSS   %.2f GiB (%d threads)\n", gib(res.PeakRSSBytes), runtime.GOMAXPROCS(0))
			for _, pr := range []struct {
				what string
				ops  []autograd.OpTime
			}{{"prefill", res.PrefillProfile}, {"decode step", res.DecodeProfile}} {
				if len(pr.ops) == 0 {
					continue
				}
				total := 0.0
				for _, o := range pr.ops {
					total += o.Micros
				}
				fmt.Fprintf(out, "profile of the %s (GPU time, %.0f us in all):\n", pr.what, total)
				for _, o := range pr.ops {
					fmt.Fprintf(out, "  %9.1f us  %5.1f%%  %4d x  %s\n", o.Micros, 100*o.Micros/total, o.Count, o.Kind)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "model directory")
	f.StringVar(&shape, "shape", "", "benchmark random weights of a named shape instead: qwen-7b")
	f.IntVar(&opts.PromptLen, "prompt-len", 2048, "tokens to prefill (0: skip)")
	f.IntVar(&opts.NewTokens, "new-tokens", 512, "tokens to decode (0: skip)")
	f.IntVar(&opts.DecodeAfter, "decode-after", 1, "positions in the cache when decoding starts")
	f.IntVar(&opts.Rounds, "rounds", 1, "prefill repetitions (the fastest is reported)")
	f.IntVar(&opts.Cache, "cache", 0, "KV cache capacity in positions (default: what the runs need)")
	f.BoolVar(&asJSON, "json", false, "print the results as one JSON object")
	f.BoolVar(&opts.Profile, "profile", false, "on a GPU, also time every kind of instruction of the prefill and of a decode step")
	f.BoolVar(&train, "train", false, "measure LoRA training steps instead of prefill and decoding")
	f.IntVar(&topts.Batch, "batch-size", topts.Batch, "with --train: sequences per step")
	f.IntVar(&topts.Seq, "max-len", topts.Seq, "with --train: tokens per sequence")
	f.IntVar(&topts.Steps, "steps", topts.Steps, "with --train: steps timed after one warm-up step")
	f.IntVar(&topts.LoRA.R, "lora-r", topts.LoRA.R, "with --train: LoRA rank")
	f.StringVar(&targets, "targets", "", "with --train: comma-separated target modules (default: "+strings.Join(topts.LoRA.Targets, ",")+")")
	registerDevice(f, &device)
	checkpoint = registerCheckpointFlag(f)
	return cmd
}

// benchTrain runs and prints bench --train.
func benchTrain(cmd *cobra.Command, m *model.Model, name, device string, o lora.TrainBenchOptions, targets string, asJSON, checkpoint bool) error {
	if !cmd.Flags().Changed("device") {
		device = "cpu" // training on the GPU only when asked for, as lora does
	}
	release, err := useDevice(cmd, m, device)
	if err != nil {
		return err
	}
	defer release()
	where := "cpu"
	if m.Exec != nil {
		where = m.Exec.Name()
		setCheckpointing(m.Exec, checkpoint)
	}
	if targets != "" {
		o.LoRA.Targets = strings.Split(targets, ",")
	}
	res, err := lora.MeasureTraining(cmd.Context(), m, o)
	if err != nil {
		return err
	}
	peak, devicePeak := 0.0, int64(0)
	var mem model.TrainingMemory
	if m.Exec == nil {
		peak = matmul.FMAPeak(runtime.GOMAXPROCS(0))
	} else {
		peak = 1000 * bf16Peak(m.Exec.Name())
		_, devicePeak = m.Exec.Memory()
		if r, ok := m.Exec.(model.MemoryReporter); ok {
			mem = r.TrainingMemory()
		}
	}
	cpuPeak, gpuPeak, mfu := 0.0, 0.0, 0.0
	if m.Exec == nil {
		cpuPeak = peak
	} else {
		gpuPeak = peak
	}
	if peak > 0 {
		mfu = res.GFLOPs / peak
	}
	out := cmd.OutOrStdout()
	if asJSON {
		b, err := json.Marshal(struct {
			lora.TrainThroughput
			Model      string  `json:"model"`
			Device     string  `json:"device"`
			Threads    int     `json:"threads"`
			FMAPeakGFs float64 `json:"cpu_fma_peak_gflops,omitempty"`
			// the GPU's dense bf16 tensor-core peak, where the device is one bf16Peak knows
			DevicePeakGFs float64 `json:"gpu_bf16_peak_gflops,omitempty"`
			// MFU is model FLOPs utilisation: gflop_per_s (the model's matrix FLOPs, without
			// recomputation) over the peak, 0 where the peak is unknown
			MFU        float64 `json:"mfu"`
			DevicePeak int64   `json:"peak_device_bytes,omitempty"`
			// the device's share: weights (bf16, the trained matrices included) and the
			// activation arena of the training program (activations, kept gradients, scratch)
			DeviceWeights     int64 `json:"device_weight_bytes,omitempty"`
			DeviceActivations int64 `json:"device_activation_bytes,omitempty"`
			// the optimizer's state kept on the device: trained values, AdamW moments and
			// gradient sums (with the values and moments before the last update)
			DeviceOptimizer int64 `json:"device_optimizer_bytes,omitempty"`
			Checkpointing   bool  `json:"checkpoint_activations"`
		}{res, name, where, runtime.GOMAXPROCS(0), cpuPeak, gpuPeak, mfu, devicePeak, mem.Weights, mem.Activations, mem.Optimizer, mem.Checkpointing})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, string(b))
		return err
	}
	c := m.Config
	fmt.Fprintf(out, "model      %s: %d layers, hidden %d, vocab %d\n", name, c.NumHiddenLayers, c.HiddenSize, c.VocabSize)
	fmt.Fprintf(out, "device     %s, %d threads\n", where, runtime.GOMAXPROCS(0))
	fmt.Fprintf(out, "lora       r %d on %s: %d parameters, %.1f MiB with gradients and AdamW moments (float32)\n",
		o.LoRA.R, strings.Join(o.LoRA.Targets, ","), res.LoRAParams, float64(res.StateBytes)/(1<<20))
	fmt.Fprintf(out, "step       batch %d x %d tokens: %.3f s (mean of %d after a warm-up), %.1f tokens/s, last loss %.4f\n",
		res.Batch, res.Seq, res.StepSec, res.Steps, res.TokensPerSec, res.Loss)
	fmt.Fprintf(out, "flops      %.3g a token: %.1f GFLOP/s", res.FLOPsPerToken, res.GFLOPs)
	switch {
	case m.Exec == nil && peak > 0:
		fmt.Fprintf(out, ", %.0f%% of the %.0f GFLOP/s multiply-add peak", 100*mfu, peak)
	case peak > 0:
		fmt.Fprintf(out, ", MFU %.1f%% of the %.0f TFLOP/s dense bf16 peak", 100*mfu, peak/1000)
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "peak RSS   %.2f GiB\n", float64(res.PeakRSSBytes)/(1<<30))
	if devicePeak > 0 {
		gib := func(b int64) float64 { return float64(b) / (1 << 30) }
		ck := "off"
		if mem.Checkpointing {
			ck = "on"
		}
		fmt.Fprintf(out, "device mem peak %.2f GiB held by the process's buffers: weights %.2f GiB (bf16; the LoRA matrices are rounded from the optimizer's float32 values where the GEMMs read them), activations %.2f GiB (one arena: activations, kept gradients, scratch; checkpointing %s), optimizer state %.2f GiB (trained values, AdamW moments, gradient sums), the rest %.2f GiB (step inputs); the trained parameters' state by kind:\n",
			gib(devicePeak), gib(mem.Weights), gib(mem.Activations), ck, gib(mem.Optimizer), gib(devicePeak-mem.Weights-mem.Activations-mem.Optimizer))
		for _, p := range res.DeviceState {
			where := "device"
			if p.Host {
				where = "host, page-locked"
			}
			fmt.Fprintf(out, "state      %s: %.1f MiB (%s)\n", p.What, float64(p.Bytes)/(1<<20), where)
		}
	}
	return nil
}

// bf16Peaks are NVIDIA's dense bf16 tensor-core peaks (TFLOP/s, without sparsity, float32
// accumulation) of data-center GPUs, by a part of the name CUDA gives the device; the first
// match wins, so the more specific names come first.
var bf16Peaks = []struct {
	name   string
	tflops float64
}{
	{"H200 NVL", 835}, {"H200", 989}, {"GH200", 989},
	{"H100 PCIe", 756}, {"H100 NVL", 835}, {"H100", 989},
	{"A100", 312}, {"A800", 312}, {"L40S", 362}, {"L40", 181}, {"L4", 121},
}

// bf16Peak is the dense bf16 peak in TFLOP/s of the device an executor names ("cuda (NVIDIA
// H200)"), 0 when the device is not one of bf16Peaks.
func bf16Peak(device string) float64 {
	for _, p := range bf16Peaks {
		if strings.Contains(device, p.name) {
			return p.tflops
		}
	}
	return 0
}
