package main

import (
	"bytes"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/qwen-tune/qwen-tune/lora"
)

// TestTrainProgress: without a terminal a line every --log-every steps (and at the last)
// with the smoothed loss, tokens/s and the time left; the bar's description on a terminal
// carries the same. A resumed run counts its pace from where it started.
func TestTrainProgress(t *testing.T) {
	var b bytes.Buffer
	rep := newTrainReport(&b, "model", 2)
	rep.started(lora.Start{Step: 1, Total: 6, Config: lora.DefaultTrainConfig(), Notes: []string{"removed x"}})
	losses := []float64{9, 8, 7, 6, 5}
	for i, l := range losses {
		rep.step(lora.StepResult{Step: 1 + i, Loss: l, Seen: 100})
	}
	var lines []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "step ") {
			lines = append(lines, l)
		}
	}
	if !strings.HasPrefix(b.String(), "resume: removed x\n") || len(lines) != 3 || !strings.HasPrefix(lines[0], "step 2/6 loss 9.0000 (smoothed 9.0000)") ||
		!strings.HasPrefix(lines[1], "step 4/6 ") || !strings.HasPrefix(lines[2], "step 6/6 ") {
		t.Fatalf("progress lines:\n%s", b.String())
	}
	for _, l := range lines {
		if !strings.Contains(l, " tokens/s ETA ") {
			t.Errorf("no rate or ETA: %s", l)
		}
	}
	ema := 0.0
	for _, l := range losses {
		ema = smoothing*ema + (1-smoothing)*l
	}
	want := ema / (1 - math.Pow(smoothing, float64(len(losses))))
	if !strings.Contains(lines[2], fmt.Sprintf("(smoothed %.4f)", want)) {
		t.Errorf("smoothed loss: %s, want %.4f", lines[2], want)
	}
	if s := rep.status(6); !strings.HasPrefix(s, fmt.Sprintf("loss %.4f | ", want)) || !strings.Contains(s, " tok/s | ETA 0s") {
		t.Errorf("bar description %q", s)
	}
}

// TestTrainProgressDeviceMemory: a run on a device shows the memory it holds and its peak
// in the bar and in the lines; a run on the CPU shows none.
func TestTrainProgressDeviceMemory(t *testing.T) {
	for _, dev := range []bool{false, true} {
		var b bytes.Buffer
		rep := newTrainReport(&b, "model", 1)
		if dev {
			rep.mem = func() (int64, int64) { return 17 << 30, 35 << 29 }
		}
		rep.started(lora.Start{Total: 2, Config: lora.DefaultTrainConfig()})
		rep.step(lora.StepResult{Step: 0, Loss: 3, Seen: 10})
		const want = " | device 17.00 GiB (peak 17.50 GiB) | "
		line, bar := b.String(), rep.status(1)
		if got := strings.Contains(line, "device 17.00 GiB (peak 17.50 GiB)") && strings.Contains(bar, want); got != dev {
			t.Errorf("device %v: line %q, bar %q", dev, line, bar)
		}
		if !dev && strings.Contains(line+bar, "device") {
			t.Errorf("a CPU run names device memory: %q %q", line, bar)
		}
	}
}
