package main

import (
	"fmt"
	"io"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/qwen-tune/qwen-tune/checkpoints"
	"github.com/qwen-tune/qwen-tune/lora"
)

// plotLosses draws training loss per step (and validation loss where measured) to a PNG,
// written atomically.
func plotLosses(path string, hist []lora.StepResult) error {
	if len(hist) == 0 {
		return fmt.Errorf("no steps to plot")
	}
	p := plot.New()
	p.Title.Text = "qwen-tune lora"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss"
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
	p.Add(line)
	p.Legend.Add("training", line)
	p.Legend.Top = true
	if len(eval) > 0 {
		l, pts, err := plotter.NewLinePoints(eval)
		if err != nil {
			return err
		}
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
