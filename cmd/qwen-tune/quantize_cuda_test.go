//go:build cudaemu && !qtcuda

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuantizeDeviceCommand: quantize --device cuda on the emulated GPU writes a model that
// loads and runs, reports its peak device memory and says where it ran.
func TestQuantizeDeviceCommand(t *testing.T) {
	dir, tmp, text := tinyWith(t, "calib.txt", strings.Repeat("The quick brown fox jumps over the lazy dog; 0123456789. ", 40))
	out := filepath.Join(tmp, "int4")
	o, errs, st := qt(t, "", "quantize", "--model", dir, "--text", text, "--out", out, "--nsamples", "4", "--seq-len", "128", "--device", "cuda", "--desc-act")
	if st != 0 || !strings.Contains(o, "worst layers") || !strings.Contains(o, "device mem peak") || !strings.Contains(errs, "device: emulated CUDA") {
		t.Fatalf("quantize --device cuda: %d %s %s", st, o, errs)
	}
	raw, err := os.ReadFile(filepath.Join(out, "quantize_report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Device          string
		PeakDeviceBytes int64
		Layers          []struct{ Error, RTNError float64 }
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Device != "cuda" || rep.PeakDeviceBytes <= 0 || len(rep.Layers) != 10 {
		t.Fatalf("report: %s", raw)
	}
	if o, errs, st := qt(t, "", "generate", "--model", out, "--prompt", "hi", "--max-new-tokens", "4", "--greedy"); st != 0 {
		t.Fatalf("generate on the Int4 model: %s %s", o, errs)
	}
}
