//go:build qtcuda || cudaemu

package lora

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/model"
)

// TestDeviceMemoryOnDevice: after steps with the optimizer on the device the trainer reports
// the trained parameters' memory by kind: 16 bytes a parameter on the device in float32
// (values, two moments, the gradient sums), no bf16 copies (the programs' GEMMs round the
// LoRA matrices where they read them), 24 in page-locked host memory for going back, and no
// gradient buffers of the programs' own (their GEMMs write the sums); MeasureTraining passes
// it on for bench, and the CPU has none.
func TestDeviceMemoryOnDevice(t *testing.T) {
	dir, seqs, pad := tinySetup(t)
	exec := openTestCUDA(t)
	cpu := newTestTrainer(t, dir, seqs, pad)
	trainAll(t, cpu)
	if got := cpu.DeviceMemory(); got != nil {
		t.Errorf("the CPU trainer reports device memory %+v", got)
	}
	dev := newDeviceTrainer(t, dir, exec, seqs, pad)
	trainAll(t, dev)
	n := int64(0)
	for _, p := range dev.Params {
		n += int64(p.Value.Size())
	}
	want := []model.MemoryPart{{Bytes: 4 * n}, {Bytes: 8 * n}, {Bytes: 4 * n}, {Bytes: 0}, {Bytes: 24 * n, Host: true}, {Bytes: 0}}
	got := dev.DeviceMemory()
	if len(got) != len(want) {
		t.Fatalf("%d kinds of memory, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].Bytes != want[i].Bytes || got[i].Host != want[i].Host || got[i].What == "" {
			t.Errorf("%q: %d bytes (host %v), want %d (host %v) for %d parameters", got[i].What, got[i].Bytes, got[i].Host, want[i].Bytes, want[i].Host, n)
		}
	}

	bdir := filepath.Join(t.TempDir(), "tiny")
	if _, err := model.WriteTiny(bdir, model.DefaultTiny()); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(bdir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.Exec = exec
	cfg := DefaultConfig()
	cfg.R = 8
	res, err := MeasureTraining(context.Background(), m, TrainBenchOptions{Batch: 1, Seq: 16, Steps: 1, LoRA: cfg, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DeviceState) != len(want) || res.DeviceState[0].Bytes != 4*int64(res.LoRAParams) {
		t.Errorf("MeasureTraining on the device reports %+v for %d parameters", res.DeviceState, res.LoRAParams)
	}
}
