package autograd

// Checkpoint marks a transformer block's input in a training graph (and the last block's
// output, the input of the final norm):
//
//	x [N, H] -> y [N, H], y = x;  dx = dy
//
// It computes nothing. The marks tell the GPU executor where blocks begin: with activation
// checkpointing (GradOptions.Checkpoint, cuda/recompute.go) the marked values are all a
// block's backward keeps of its forward, and the rest of the block is computed again just
// before its backward. On the CPU the Machine hands x's buffer on when x dies here (as it
// does in a training graph: the mark is the residual stream's only reader) and copies it
// otherwise.

import (
	"fmt"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// CheckpointOp is the op of Checkpoint, an identity marking a block boundary.
type CheckpointOp struct{ base }

// Checkpoint marks x [N, H] as a block boundary of a training graph.
func Checkpoint(x *G.Node) (*G.Node, error) {
	if x.Dims() != 2 {
		return nil, fmt.Errorf("autograd: Checkpoint of %v: a block's input is [N, H]", x.Shape())
	}
	return G.ApplyOp(&CheckpointOp{base: newBase("Checkpoint")}, x)
}

func (o *CheckpointOp) Arity() int    { return 1 }
func (o *CheckpointOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA)) }
func (o *CheckpointOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	s, err := shapeOf(in[0])
	return s.Clone(), err
}

// overwrites: the mark is x itself when x dies here.
func (o *CheckpointOp) overwrites() int { return 0 }

func (o *CheckpointOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	if o.inPlace {
		return x, nil
	}
	out := o.pool.overwrite(x.Dtype(), x.Shape()...)
	switch x.Dtype() {
	case tensor.Float32:
		copy(out.Data().([]float32), x.Data().([]float32))
	case tensor.Float64:
		copy(out.Data().([]float64), x.Data().([]float64))
	default:
		return nil, fmt.Errorf("autograd: Checkpoint of type %v", x.Dtype())
	}
	return out, nil
}

func (o *CheckpointOp) DiffWRT(int) []bool { return []bool{true} }

// The gradient passes through: the mark's gradient is its input's.
func (o *CheckpointOp) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	return G.Nodes{grad}, nil
}

// isCheckpoint reports a Checkpoint mark.
func isCheckpoint(op G.Op) bool {
	_, ok := op.(*CheckpointOp)
	return ok
}
