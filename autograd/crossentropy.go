package autograd

// Cross-entropy of next-token prediction, token-weighted mean over the labels that count:
//
//	logits [B*T, V], labels [B, T] from the Step -> loss (scalar)
//	loss = (1/n) sum_{b, t < T-1, labels[b,t+1] != -100} -log softmax(logits[b,t])[labels[b,t+1]]
//	dlogits[b,t] = dloss (softmax(logits[b,t]) - onehot(labels[b,t+1])) / n, zero elsewhere
//
// n = 0 (nothing to predict) gives loss 0 and zero gradients.

import (
	"fmt"
	"math"
	"slices"

	"github.com/qwen-tune/qwen-tune/internal/vecmath"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// CrossEntropyOp is the op of CrossEntropy and of its gradient (Backward).
type CrossEntropyOp struct {
	base
	step     *Step
	backward bool // inputs logits, dloss -> dlogits
	// fwd is the backward's forward op. The forward keeps every row's log-sum-exp in lse
	// (lseOf: the address of the logits it was taken of; fresh until a backward reads it);
	// the backward, which runs after the forward in the same pass, reads it when it is given
	// the same logits instead of a second pass over the vocabulary, and recomputes otherwise
	// (a backward run without its forward finds the lse already read).
	fwd      *CrossEntropyOp
	lse      []float64
	lseOf    uintptr
	lseFresh bool
}

// CrossEntropy is the shifted next-token loss of logits [batch*seq, V] against step.Labels.
func CrossEntropy(logits *G.Node, step *Step) (*G.Node, error) {
	return G.ApplyOp(&CrossEntropyOp{base: newBase("CrossEntropy"), step: step}, logits)
}

func (o *CrossEntropyOp) Arity() int {
	if o.backward {
		return 2
	}
	return 1
}
func (o *CrossEntropyOp) Type() hm.Type {
	if o.backward {
		return hm.NewFnType(tt(2, tvA), tvA, tt(2, tvA))
	}
	return hm.NewFnType(tt(2, tvA), tvA)
}
func (o *CrossEntropyOp) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	s, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	if err := wantDims("CrossEntropy", s, 2, "logits"); err != nil {
		return nil, err
	}
	if o.backward {
		return s.Clone(), nil
	}
	return tensor.ScalarShape(), nil
}

// Targets counts the labels that take part in the loss of a [batch, seq] label matrix.
func Targets(labels []int32, batch, seq int) int {
	n := 0
	for b := 0; b < batch; b++ {
		for t := 1; t < seq; t++ {
			if labels[b*seq+t] != IgnoreIndex {
				n++
			}
		}
	}
	return n
}

func (o *CrossEntropyOp) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	st := o.step
	if st.Labels == nil {
		return nil, fmt.Errorf("autograd: CrossEntropy: the step has no labels")
	}
	if x.Shape()[0] != st.Batch*st.Seq {
		return nil, fmt.Errorf("autograd: CrossEntropy: %d logit rows for %d x %d labels", x.Shape()[0], st.Batch, st.Seq)
	}
	vocab := x.Shape()[1]
	for i, l := range st.Labels {
		if l != IgnoreIndex && (l < 0 || int(l) >= vocab) {
			return nil, fmt.Errorf("autograd: CrossEntropy: label %d at position %d is outside [0, %d) and is not %d", l, i, vocab, IgnoreIndex)
		}
	}
	dloss := 1.0
	if o.backward {
		if dloss, err = Scalar(v[1]); err != nil {
			return nil, err
		}
	}
	switch x.Dtype() {
	case tensor.Float32:
		loss, grad := crossEntropy[float32](x, st, o.backward, dloss, o.gradOut(x, o.backward), o.rowLSE(x))
		if o.backward {
			return grad, nil
		}
		return G.NewF32(float32(loss)), nil
	case tensor.Float64:
		loss, grad := crossEntropy[float64](x, st, o.backward, dloss, o.gradOut(x, o.backward), o.rowLSE(x))
		if o.backward {
			return grad, nil
		}
		return G.NewF64(loss), nil
	}
	return nil, fmt.Errorf("autograd: CrossEntropy of type %v", x.Dtype())
}

// gradOut is the backward's output: a zeroed tensor, or x itself when the Machine lets this
// op overwrite its logits (nothing reads them afterwards); nil for the forward.
func (o *CrossEntropyOp) gradOut(x *tensor.Dense, backward bool) *tensor.Dense {
	switch {
	case !backward:
		return nil
	case o.inPlace:
		return x
	}
	return o.result(x.Dtype(), x.Shape()...)
}

// overwrites: the backward may write its gradient over the logits, row by row (each row is
// read whole before it is written).
func (o *CrossEntropyOp) overwrites() int {
	if o.backward {
		return 0
	}
	return -1
}

// rowLSE is where the op's rows' log-sum-exps go (the forward) or come from (the
// backward): nil when the backward is given other logits than its forward saw.
func (o *CrossEntropyOp) rowLSE(x *tensor.Dense) *rowLSE {
	rows, data := x.Shape()[0], uintptr(first(x.Data()))
	if !o.backward {
		o.lse, o.lseOf, o.lseFresh = slices.Grow(o.lse[:0], rows)[:rows], data, true
		return &rowLSE{lse: o.lse}
	}
	if f := o.fwd; f != nil && f.lseFresh && f.lseOf == data && len(f.lse) == rows {
		f.lseFresh = false
		return &rowLSE{lse: f.lse, known: true}
	}
	return nil
}

// rowLSE is the log-sum-exp of every row of logits: known ones are read, others written.
type rowLSE struct {
	lse   []float64
	known bool
}

// crossEntropy returns the mean loss and, when out is not nil, writes its gradient there
// (out may be x itself). Rows' log-sum-exps are read from rl when it knows them and written
// to it otherwise (rl may be nil).
func crossEntropy[T Float](x *tensor.Dense, st *Step, backward bool, dloss float64, out *tensor.Dense, rl *rowLSE) (float64, *tensor.Dense) {
	vocab := x.Shape()[1]
	xd := x.Data().([]T)
	n := Targets(st.Labels, st.Batch, st.Seq)
	var grad []T
	if backward {
		grad = out.Data().([]T)
	}
	losses := make([]float64, st.Batch*st.Seq)
	parallel(st.Batch*st.Seq, func(i int) {
		b, t := i/st.Seq, i%st.Seq
		if n == 0 || t+1 >= st.Seq || st.Labels[b*st.Seq+t+1] == IgnoreIndex {
			if backward {
				clear(grad[i*vocab : (i+1)*vocab])
			}
			return
		}
		target := int(st.Labels[b*st.Seq+t+1])
		row := xd[i*vocab : (i+1)*vocab]
		var lse float64
		if rl != nil && rl.known {
			lse = rl.lse[i]
		} else {
			lse = logSumExp(row)
			if rl != nil {
				rl.lse[i] = lse
			}
		}
		losses[i] = lse - float64(row[target])
		if backward {
			g := grad[i*vocab : (i+1)*vocab]
			scale := dloss / float64(n)
			expScaled(g, row, lse, scale)
			g[target] -= T(scale)
		}
	})
	if n == 0 {
		return 0, out
	}
	var total float64
	for _, l := range losses {
		total += l
	}
	return total / float64(n), out
}

func (o *CrossEntropyOp) DiffWRT(int) []bool { return []bool{true} }

func (o *CrossEntropyOp) SymDiff(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	d, err := G.ApplyOp(&CrossEntropyOp{base: newBase("CrossEntropyGrad"), step: o.step, backward: true, fwd: o}, in[0], grad)
	return G.Nodes{d}, err
}

// logSumExp is log sum_j exp(row[j]), the sum in float64 of exponentials taken at the
// precision of T (vecmath's for float32: within 2 ulp, as the float32 softmax of PyTorch is).
func logSumExp[T Float](row []T) float64 {
	switch r := any(row).(type) {
	case []float32:
		m := vecmath.Max(r)
		return float64(m) + math.Log(vecmath.SumExp(r, m))
	case []float64:
		return vecmath.LogSumExp64(r)
	}
	panic("unreachable")
}

// expScaled sets g[j] = exp(row[j] - lse) * scale. For float32, lse is split into its
// float32 part hi and the rest, which goes into the scale: exp(row[j] - hi) * (scale e^(hi -
// lse)), so that rounding lse to float32 costs no precision.
func expScaled[T Float](g, row []T, lse, scale float64) {
	switch r := any(row).(type) {
	case []float32:
		hi := float32(lse)
		vecmath.Exp(any(g).([]float32), r, hi, float32(scale*math.Exp(float64(hi)-lse)))
	case []float64:
		gs := any(g).([]float64)
		for j, v := range r {
			gs[j] = math.Exp(v-lse) * scale
		}
	}
}
