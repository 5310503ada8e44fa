package main

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/qwen-tune/qwen-tune/lora"
)

// TestPlotAxes: the loss plot's axes hold the whole curve with room to spare and are
// labelled at round values (1, 2 or 5 times a power of ten).
func TestPlotAxes(t *testing.T) {
	var hist []lora.StepResult
	for i := range 400 {
		hist = append(hist, lora.StepResult{Step: i, Loss: 0.13 + 12*math.Exp(-float64(i)/60)})
	}
	hist[399].EvalLoss = 0.5
	x, y := plotRanges(hist)
	if x.min > 1 || x.max < 400 || y.min > 0.13 || y.max <= 12.13 || y.min < 0 {
		t.Fatalf("axes x %+v, y %+v do not hold steps 1..400 and losses 0.13..12.13", x, y)
	}
	for _, r := range []axisRange{x, y} {
		ticks := niceTicks{}.Ticks(r.min, r.max)
		var labelled []float64
		for _, tk := range ticks {
			if tk.Value < r.min || tk.Value > r.max {
				t.Errorf("tick %v outside [%g, %g]", tk, r.min, r.max)
			}
			if tk.Label != "" {
				labelled = append(labelled, tk.Value)
			}
		}
		if len(labelled) < 3 || len(labelled) > 11 {
			t.Fatalf("%d labelled ticks on [%g, %g]: %v", len(labelled), r.min, r.max, ticks)
		}
		step := labelled[1] - labelled[0]
		m := step / math.Pow(10, math.Floor(math.Log10(step)))
		if math.Abs(m-1) > 1e-9 && math.Abs(m-2) > 1e-9 && math.Abs(m-5) > 1e-9 {
			t.Errorf("ticks %v are %g apart, not 1, 2 or 5 times a power of ten", labelled, step)
		}
		for _, v := range labelled {
			if q := v / step; math.Abs(q-math.Round(q)) > 1e-9 {
				t.Errorf("tick %g is not a multiple of %g", v, step)
			}
		}
	}
	if got := (niceTicks{}).Ticks(0, 0.7); got[len(got)-1].Label == "0.7000000000000001" {
		t.Errorf("tick labels carry float noise: %v", got)
	}
	png := filepath.Join(t.TempDir(), "loss.png")
	if err := plotLosses(png, hist); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(png); err != nil || st.Size() < 1000 {
		t.Fatalf("loss.png: %v", err)
	}
}
