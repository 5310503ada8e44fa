//go:build qtcuda || cudaemu

package model

import (
	"fmt"

	"github.com/qwen-tune/qwen-tune/autograd/cuda"

	"gorgonia.org/tensor"
)

// NewDeviceParams keeps params on the GPU in a cuda.ParamSet (model.OptimExecutor).
func (c *CUDA) NewDeviceParams(params []*Param) (DeviceParams, error) {
	names := make([]string, len(params))
	values := make([]*tensor.Dense, len(params))
	for i, p := range params {
		names[i], values[i] = p.Name, p.Value
	}
	s, err := c.Device.NewParamSet(names, values)
	if err != nil {
		return nil, err
	}
	c.optimBytes = max(c.optimBytes, s.Bytes())
	return deviceParams{s}, nil
}

// deviceParams is DeviceParams on a ParamSet.
type deviceParams struct{ *cuda.ParamSet }

func (p deviceParams) Accumulate(prog GradProgram, tokens int, first bool) error {
	g, ok := prog.(*deviceGrad)
	if !ok {
		return fmt.Errorf("model: gradients of a %T, not of a program on the GPU", prog)
	}
	return p.ParamSet.Accumulate(g.Program, tokens, first)
}

func (p deviceParams) Close() error { return p.ParamSet.Close() }

func (p deviceParams) Memory() []MemoryPart {
	var parts []MemoryPart
	for _, m := range p.ParamSet.Memory() {
		parts = append(parts, MemoryPart{What: m.What, Bytes: m.Bytes, Host: m.Host})
	}
	return parts
}
