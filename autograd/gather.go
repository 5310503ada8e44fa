package autograd

// Gather picks rows of a matrix by index: the embedding lookup (rows of wte by token id) and
// the selection of the positions whose logits are wanted.
//
//	w [V, H] (bf16 as uint16, float32 or float64), idx [n] from the Step -> y [n, H] activations
//	dw = zeros [V, H] with dw[idx[i]] += dy[i]   (only when w is trained)

import (
	"fmt"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// GatherOp is the op of Embedding, EmbeddingRows and SelectRows (Kind); its table gradient
// is ScatterOp.
type GatherOp struct {
	base
	n      int
	index  func() []int32
	what   string
	out    tensor.Dtype
	trainW bool
	sparse bool // index -1 gives a zero row (rows of a partial table)
}

// Embedding gathers the rows of w [V, H] for the step's token ids (batch*seq of them) into
// activations of type act.
func Embedding(w *G.Node, step *Step, batch, seq int, act tensor.Dtype, trainW bool) (*G.Node, error) {
	if trainW && w.Dtype() == tensor.Uint16 {
		return nil, fmt.Errorf("autograd: embedding %s: a bf16 weight cannot be trained", w.Name())
	}
	return G.ApplyOp(&GatherOp{base: newBase("Embedding"), n: batch * seq, index: func() []int32 { return step.IDs }, what: "token id", out: act, trainW: trainW}, w)
}

// EmbeddingRows gathers from a partial table w [S, H] holding the rows of ids
// offset..offset+S-1 (trainable special-token rows); other ids get zeros.
func EmbeddingRows(w *G.Node, step *Step, batch, seq, offset int, act tensor.Dtype) (*G.Node, error) {
	idx := make([]int32, batch*seq)
	rows := w.Shape()[0]
	index := func() []int32 {
		for i, id := range step.IDs {
			idx[i] = -1
			if r := int(id) - offset; r >= 0 && r < rows {
				idx[i] = int32(r)
			}
		}
		return idx
	}
	return G.ApplyOp(&GatherOp{base: newBase("EmbeddingRows"), n: batch * seq, index: index, what: "row", out: act, trainW: true, sparse: true}, w)
}

// SelectRows keeps one position per row of x [batch*seq, H]: row b's position step.Rows[b].
func SelectRows(x *G.Node, step *Step, batch, seq int) (*G.Node, error) {
	idx := make([]int32, batch)
	index := func() []int32 {
		for b, r := range step.Rows {
			idx[b] = int32(b*seq) + r
			if r < 0 || int(r) >= seq {
				idx[b] = -1
			}
		}
		return idx
	}
	return G.ApplyOp(&GatherOp{base: newBase("SelectRows"), n: batch, index: index, what: "selected position", out: x.Dtype(), trainW: true}, x)
}

func (o *GatherOp) Arity() int    { return 1 }
func (o *GatherOp) Type() hm.Type { return hm.NewFnType(tt(2, tvW), tt(2, o.out)) }
func (o *GatherOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	w, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	if err := wantDims(o.name, w, 2, "the table"); err != nil {
		return nil, err
	}
	return tensor.Shape{o.n, w[1]}, nil
}

func (o *GatherOp) Do(v ...G.Value) (G.Value, error) {
	w, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	rows, h := w.Shape()[0], w.Shape()[1]
	idx, err := o.indices(rows)
	if err != nil {
		return nil, err
	}
	out := o.result(o.out, o.n, h)
	switch o.out {
	case tensor.Float32:
		err = gatherRows(w, idx, h, out.Data().([]float32))
	case tensor.Float64:
		err = gatherRows(w, idx, h, out.Data().([]float64))
	default:
		err = fmt.Errorf("autograd: %s into %v", o.name, o.out)
	}
	return out, err
}

// indices are the step's indices into a table of rows, checked: -1 (no row) only for a
// partial table.
func (o *GatherOp) indices(rows int) ([]int32, error) {
	idx := o.index()
	if len(idx) != o.n {
		return nil, fmt.Errorf("autograd: %s: %d indices for a graph built for %d", o.name, len(idx), o.n)
	}
	for i, id := range idx {
		if o.sparse && id == -1 {
			continue
		}
		if id < 0 || int(id) >= rows {
			return nil, fmt.Errorf("autograd: %s: %s %d at position %d is outside [0, %d)", o.name, o.what, id, i, rows)
		}
	}
	return idx, nil
}

func gatherRows[T Float](w *tensor.Dense, idx []int32, h int, out []T) error {
	for i, id := range idx {
		if id < 0 {
			continue
		}
		if err := weightRows(w, h, int(id), int(id)+1, out[i*h:(i+1)*h]); err != nil {
			return err
		}
	}
	return nil
}

func (o *GatherOp) DiffWRT(int) []bool { return []bool{o.trainW} }

func (o *GatherOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	dw, err := G.ApplyOp(&ScatterOp{base: newBase(o.name + "Grad"), gather: o}, in[0], grad)
	return G.Nodes{dw}, err
}

// ScatterOp is Gather's backward: zeros shaped like w, dy rows added at the gathered indices.
type ScatterOp struct {
	base
	gather *GatherOp
}

func (o *ScatterOp) Arity() int    { return 2 }
func (o *ScatterOp) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA), tt(2, tvA)) }
func (o *ScatterOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	w, err := shapeOf(in[0])
	return w.Clone(), err
}
func (o *ScatterOp) Do(v ...G.Value) (G.Value, error) {
	w, g, err := twoDense(v, o.name)
	if err != nil {
		return nil, err
	}
	idx := o.gather.index()
	out := o.result(g.Dtype(), w.Shape()...)
	h := w.Shape()[1]
	switch g.Dtype() {
	case tensor.Float32:
		scatterRows(g.Data().([]float32), idx, h, out.Data().([]float32))
	case tensor.Float64:
		scatterRows(g.Data().([]float64), idx, h, out.Data().([]float64))
	default:
		return nil, fmt.Errorf("autograd: %s of type %v", o.name, g.Dtype())
	}
	return out, nil
}

func scatterRows[T Float](g []T, idx []int32, h int, out []T) {
	for i, id := range idx {
		if id < 0 {
			continue
		}
		dst, src := out[int(id)*h:int(id+1)*h], g[i*h:(i+1)*h]
		for j, x := range src {
			dst[j] += x
		}
	}
}
