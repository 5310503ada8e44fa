package autograd

// Capture passes its input through and hands its value to a function as the graph runs
// (GPTQ calibration records the inputs of each projection while the model's own forward runs):
//
//	x [N, K] -> y [N, K], y = x; sink(x) at every execution
//	dx = dy

import (
	"fmt"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Sink receives a captured float32 matrix of rows x cols; an error stops the execution.
type Sink func(x []float32, rows, cols int) error

// CaptureOp is the op of Capture and CaptureFor.
type CaptureOp struct {
	base
	sink   Sink
	device any // the sink of a capture for an executor on a device (CaptureFor), else nil
}

// Capture returns x unchanged and calls sink with its value each time the graph runs.
func Capture(x *G.Node, sink Sink) (*G.Node, error) {
	if x.Dims() != 2 {
		return nil, fmt.Errorf("autograd: Capture of a %d-dimensional input (a matrix only)", x.Dims())
	}
	return G.ApplyOp(&CaptureOp{base: newBase("Capture"), sink: sink}, x)
}

// CaptureFor is Capture for graphs that run on an executor on a device: the executor hands
// the input to device, a sink of its own type (autograd/cuda's DeviceSink). On the CPU such a
// graph fails.
func CaptureFor(x *G.Node, device any) (*G.Node, error) {
	host := func([]float32, int, int) error {
		return fmt.Errorf("autograd: a capture for a device's executor ran on the CPU")
	}
	y, err := Capture(x, host)
	if err == nil {
		y.Op().(*CaptureOp).device = device
	}
	return y, err
}

func (o *CaptureOp) Arity() int    { return 1 }
func (o *CaptureOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA)) }
func (o *CaptureOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	s, err := shapeOf(in[0])
	return s.Clone(), err
}

func (o *CaptureOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	d, ok := x.Data().([]float32)
	if !ok {
		return nil, fmt.Errorf("autograd: Capture of type %v (float32 only)", x.Dtype())
	}
	if err := o.sink(d, x.Shape()[0], x.Shape()[1]); err != nil {
		return nil, err
	}
	out := o.result(x.Dtype(), x.Shape()...)
	copy(out.Data().([]float32), d)
	return out, nil
}

func (o *CaptureOp) DiffWRT(int) []bool { return []bool{true} }

func (o *CaptureOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) { return G.Nodes{grad}, nil }
