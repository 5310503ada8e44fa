package main

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// TestBenchJSON: bench on the CPU reports prefill, decode after one position, the copy
// bandwidth and the decode floor it implies.
func TestBenchJSON(t *testing.T) {
	dir := tinyModel(t)
	var res struct {
		Device      string  `json:"device"`
		Prompt      int     `json:"prompt_tokens"`
		New         int     `json:"new_tokens"`
		After       int     `json:"decode_after"`
		Prefill     float64 `json:"prefill_tokens_per_s"`
		Decode      float64 `json:"decode_tokens_per_s"`
		Copy        float64 `json:"copy_gb_per_s"`
		Floor       float64 `json:"decode_floor_tokens_per_s"`
		Fraction    float64 `json:"decode_fraction_of_floor"`
		WeightBytes int64   `json:"weights_bytes"`
	}
	runJSON(t, &res, "bench", "--model", dir, "--prompt-len", "64", "--new-tokens", "8", "--json")
	if res.Device != "cpu" || res.Prompt != 64 || res.New != 8 || res.After != 1 || res.Prefill <= 0 || res.Decode <= 0 || res.Copy <= 0 {
		t.Fatalf("bench result %+v", res)
	}
	floor := res.Copy * 1e9 / float64(res.WeightBytes)
	// measured 0 for both (the same float64 formulas through JSON)
	if math.Abs(res.Floor-floor) > 1e-6*floor || math.Abs(res.Fraction-res.Decode/res.Floor) > 1e-9 {
		t.Fatalf("floor %g (want %g), fraction %g (want %g)", res.Floor, floor, res.Fraction, res.Decode/res.Floor)
	}
	if _, errOut, code := qt(t, "", "bench", "--shape", "qwen-3"); code == 0 || !strings.Contains(errOut, "qwen-7b") {
		t.Fatalf("bench --shape qwen-3: code %d, stderr %q", code, errOut)
	}
}

// TestBenchTrain: bench --train reports the shape asked for, a speed, the trained parameters
// and their state, the model FLOPs utilisation against the CPU's multiply-add peak, and no
// activation checkpointing on the CPU (--checkpoint-activations applies to a GPU), and refuses
// a sequence too short to train on.
func TestBenchTrain(t *testing.T) {
	dir := tinyModel(t)
	var res struct {
		Batch, Seq, Steps int
		Tokens            float64 `json:"tokens_per_s"`
		Params            int     `json:"lora_params"`
		State             int64   `json:"optimizer_state_bytes"`
		Device            string  `json:"device"`
		Checkpointing     *bool   `json:"checkpoint_activations"`
		GFLOPs            float64 `json:"gflop_per_s"`
		CPUPeak           float64 `json:"cpu_fma_peak_gflops"`
		MFU               float64 `json:"mfu"`
	}
	runJSON(t, &res, "bench", "--train", "--model", dir, "--batch-size", "2", "--max-len", "16", "--steps", "1", "--lora-r", "4", "--targets", "c_attn", "--checkpoint-activations", "--json")
	// c_attn only: r (hidden + 3 hidden) per layer, 2 layers of hidden 64
	if res.Batch != 2 || res.Seq != 16 || res.Steps != 1 || res.Tokens <= 0 || res.Params != 2*4*(64+3*64) || res.State != 16*int64(res.Params) || res.Device != "cpu" || res.Checkpointing == nil || *res.Checkpointing {
		t.Fatalf("bench --train result %+v", res)
	}
	if res.CPUPeak <= 0 || res.MFU <= 0 || math.Abs(res.MFU-res.GFLOPs/res.CPUPeak) > 1e-12*res.MFU {
		t.Fatalf("bench --train: mfu %v, want gflop_per_s %v / cpu_fma_peak_gflops %v", res.MFU, res.GFLOPs, res.CPUPeak)
	}
	if _, errOut, code := qt(t, "", "bench", "--train", "--model", dir, "--max-len", "1"); code == 0 || !strings.Contains(errOut, "sequence 1") {
		t.Fatalf("bench --train --max-len 1: code %d, stderr %q", code, errOut)
	}
}

// runJSON runs the command, which must succeed, and decodes the JSON it prints into v.
func runJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, errOut, code := qt(t, "", args...)
	if code != 0 {
		t.Fatalf("%v: code %d, stderr %q", args, code, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%v printed %q: %v", args, out, err)
	}
}

// TestBF16Peak: the dense bf16 peaks of the devices CUDA names, the specific names before the
// general ones, nothing for a device not in the table.
func TestBF16Peak(t *testing.T) {
	for name, want := range map[string]float64{
		"cuda (NVIDIA H200)": 989, "cuda (NVIDIA H100 80GB HBM3)": 989, "cuda (NVIDIA H100 PCIe)": 756, "cuda (NVIDIA H100 NVL)": 835,
		"cuda (NVIDIA A100-SXM4-80GB)": 312, "cuda (NVIDIA L40S)": 362, "cuda (NVIDIA L4)": 121, "cuda (emulated)": 0, "cpu": 0,
	} {
		if got := bf16Peak(name); got != want {
			t.Errorf("bf16Peak(%q) = %v, want %v", name, got, want)
		}
	}
}
