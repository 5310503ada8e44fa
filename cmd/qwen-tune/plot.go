package main

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/lora"
)

// plotLosses draws training loss per step (and validation loss where measured) to a PNG,
// written atomically. The axes start at zero, end a round value past the data and are
// labelled at round values, so the whole curve sits inside the frame.
func plotLosses(path string, hist []lora.StepResult) error {
	if len(hist) == 0 {
		return fmt.Errorf("no steps to plot")
	}
	p := plot.New()
	p.Title.Text = "qwen-tune lora"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss"
	x, y := plotRanges(hist)
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = x.min, x.max, y.min, y.max
	p.X.Tick.Marker, p.Y.Tick.Marker = niceTicks{}, niceTicks{}
	grid := plotter.NewGrid()
	grid.Vertical.Color, grid.Horizontal.Color = color.Gray{Y: 215}, color.Gray{Y: 215}
	p.Add(grid)
	var train, eval plotter.XYs
	for _, h := range hist {
		train = append(train, plotter.XY{X: float64(h.Step + 1), Y: h.Loss})
		if h.EvalLoss != 0 {
			eval = append(eval, plotter.XY{X: float64(h.Step + 1), Y: h.EvalLoss})
		}
	}
	line, err := plotter.NewLine(train)
	if err != nil {
		return err
	}
	line.Color = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	p.Add(line)
	p.Legend.Add("training", line)
	p.Legend.Top = true
	p.Legend.XOffs, p.Legend.YOffs = -vg.Points(8), -vg.Points(8)
	if len(eval) > 0 {
		l, pts, err := plotter.NewLinePoints(eval)
		if err != nil {
			return err
		}
		l.Color, pts.Color = color.RGBA{R: 214, G: 39, B: 40, A: 255}, color.RGBA{R: 214, G: 39, B: 40, A: 255}
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		p.Add(l, pts)
		p.Legend.Add("validation", l, pts)
	}
	w, err := p.WriterTo(8*vg.Inch, 5*vg.Inch, "png")
	if err != nil {
		return err
	}
	return checkpoints.WriteAtomic(path, func(out io.Writer) error {
		_, err := w.WriteTo(out)
		return err
	})
}

// axisRange is one axis's extent.
type axisRange struct{ min, max float64 }

// plotRanges are the axes of a loss plot: steps and losses from 0, each up to the first
// minor tick past the largest value plus a little room, so no point lies on the frame.
func plotRanges(hist []lora.StepResult) (x, y axisRange) {
	top := 0.0
	for _, h := range hist {
		top = max(top, h.Loss, h.EvalLoss)
	}
	last := float64(hist[len(hist)-1].Step + 1)
	roundUp := func(v float64) float64 {
		if !(v > 0) || math.IsInf(v, 0) {
			return 1
		}
		minor := minorStep(niceStep(v / 5))
		return math.Ceil(v/minor-1e-9) * minor
	}
	return axisRange{0, roundUp(last * 1.02)}, axisRange{0, roundUp(top * 1.05)}
}

// minorStep divides a round step into four or five unlabelled ticks.
func minorStep(step float64) float64 {
	if m := step / math.Pow(10, math.Floor(math.Log10(step))); math.Abs(m-2) < 1e-9 {
		return step / 4
	}
	return step / 5
}

// niceStep is the round value (1, 2 or 5 times a power of ten) nearest above v.
func niceStep(v float64) float64 {
	if !(v > 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// niceTicks labels about five round values between min and max, with unlabelled ticks
// between them.
type niceTicks struct{}

func (niceTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(hi > lo) {
		return []plot.Tick{{Value: lo, Label: strconv.FormatFloat(lo, 'g', 4, 64)}}
	}
	step := niceStep((hi - lo) / 5)
	decimals := max(0, -int(math.Floor(math.Log10(step))))
	var ticks []plot.Tick
	minor := minorStep(step)
	first := math.Ceil(lo/minor - 1e-9)
	for i := first; i*minor <= hi*(1+1e-12)+1e-12; i++ {
		v := i*minor + 0 // + 0 turns -0 into 0
		t := plot.Tick{Value: v}
		if q := v / step; math.Abs(q-math.Round(q)) < 1e-6 {
			t.Label = strconv.FormatFloat(math.Round(q)*step, 'f', decimals, 64)
		}
		ticks = append(ticks, t)
	}
	return ticks
}
