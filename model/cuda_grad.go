//go:build qtcuda || cudaemu

package model

import (
	"github.com/qwen-tune/qwen-tune/autograd/cuda"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// CompileGradOn compiles the training graph g (its loss and the gradients grads of params)
// on the device d; when a ParamSet keeps params (NewDeviceParams), into its sums: the
// program then has no buffers of its own for the gradients its GEMMs compute.
func CompileGradOn(d *cuda.Device, g *Graph, loss *G.Node, grads, params G.Nodes) (GradProgram, error) {
	return CompileGradWith(d, g, loss, grads, params, cuda.GradOptions{})
}

// CompileGradWith is CompileGradOn with the compiler's options (activation checkpointing).
func CompileGradWith(d *cuda.Device, g *Graph, loss *G.Node, grads, params G.Nodes, o cuda.GradOptions) (GradProgram, error) {
	values := make([]*tensor.Dense, len(params))
	for i, n := range params {
		values[i], _ = n.Value().(*tensor.Dense)
		if values[i] == nil {
			values = nil
			break
		}
	}
	var p *cuda.Program
	var err error
	if s := d.ParamSetOf(values); s != nil {
		p, err = d.CompileGradInto(g.ExprGraph, loss, grads, s, g.Step, o)
	} else {
		o.Of = values
		p, err = d.CompileGradWith(g.ExprGraph, loss, grads, g.Step, o)
	}
	if err != nil {
		return nil, err
	}
	return &deviceGrad{d: d, Program: p, params: params}, nil
}

// deviceGrad is a GradProgram on a Device: the trained parameters' host values are uploaded
// before every run (the optimizer updates them on the host), except those a ParamSet keeps
// on the device (NewDeviceParams), whose updates write them there.
type deviceGrad struct {
	d *cuda.Device
	*cuda.Program
	params G.Nodes
}

func (g *deviceGrad) Run() error {
	if err := g.d.RefreshWeights(g.params); err != nil {
		return err
	}
	return g.Program.Run()
}
