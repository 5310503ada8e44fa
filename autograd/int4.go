package autograd

// Int4Linear: y = x W + b with W stored in AutoGPTQ's packed layout (K inputs, N outputs):
//
//	x [M, K] -> y [M, N]
//	W[k, n] = scale[g_idx[k], n] * (code[k, n] - zero[g_idx[k], n]), codes of `Bits` bits,
//	32/Bits per int32 along k (qweight [K/p, N]), zeros stored minus one along n
//	(qzeros [G, N/p]), scales fp16 [G, N]
//
// The CPU version dequantizes a tile of output columns at a time (float32, about 1 MiB) and
// multiplies; nothing larger than the packed weight is kept. Backward gives dx = dy W^T (the
// weight itself is frozen).

import (
	"fmt"
	"math"
	"sync"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Int4 is a packed GPTQ weight (the name is for its common width; 2 and 8 bits pack alike).
// It is the one representation of a quantized layer: GPTQ packs into it, the loader reads it
// from AutoGPTQ's tensors, the quantized model runs it.
type Int4 struct {
	Name          string
	Bits, K, N, G int
	QWeight       []int32   // [K/p, N]
	QZeros        []int32   // [G, N/p]
	Scales        []float32 // [G, N], fp16 values (exact in float32)
	GIdx          []int32   // [K]
	Bias          []float32 // [N] or nil
}

// Check validates the sizes, g_idx and scales (of a layer read from disk).
func (w *Int4) Check() error {
	if w.Bits != 2 && w.Bits != 4 && w.Bits != 8 {
		return fmt.Errorf("autograd: %s: %d-bit codes (2, 4 or 8)", w.Name, w.Bits)
	}
	per := 32 / w.Bits
	switch {
	case w.K%per != 0 || w.N%per != 0:
		return fmt.Errorf("autograd: %s: %d x %d does not pack %d codes per int32", w.Name, w.N, w.K, per)
	case len(w.QWeight) != w.K/per*w.N || len(w.QZeros) != w.G*w.N/per || len(w.Scales) != w.G*w.N || len(w.GIdx) != w.K:
		return fmt.Errorf("autograd: %s: tensor sizes do not fit K %d, N %d, %d groups", w.Name, w.K, w.N, w.G)
	case w.Bias != nil && len(w.Bias) != w.N:
		return fmt.Errorf("autograd: %s: bias has %d entries for %d outputs", w.Name, len(w.Bias), w.N)
	}
	for k, g := range w.GIdx {
		if g < 0 || int(g) >= w.G {
			return fmt.Errorf("autograd: %s: g_idx[%d] = %d is not a group in [0, %d)", w.Name, k, g, w.G)
		}
	}
	for i, s := range w.Scales {
		if math.IsNaN(float64(s)) || math.IsInf(float64(s), 0) {
			return fmt.Errorf("autograd: %s: scale %d is %v", w.Name, i, s)
		}
	}
	return nil
}

// Dequantize is W [N, K] in float32 (PyTorch's Linear layout).
func (w *Int4) Dequantize() []float32 {
	kn := make([]float32, w.K*w.N)
	w.dequantCols(0, w.N, kn)
	nk := make([]float32, w.N*w.K)
	for k := 0; k < w.K; k++ {
		for n := 0; n < w.N; n++ {
			nk[n*w.K+k] = kn[k*w.N+n]
		}
	}
	return nk
}

// dequantCols writes W[:, n0:n1] as a [K, n1-n0] float32 tile.
func (w *Int4) dequantCols(n0, n1 int, dst []float32) {
	per := 32 / w.Bits
	mask := uint32(1)<<w.Bits - 1
	width := n1 - n0
	for k := 0; k < w.K; k++ {
		g := int(w.GIdx[k])
		words := w.QWeight[(k/per)*w.N:]
		shift := uint(w.Bits * (k % per))
		zeros := w.QZeros[g*w.N/per:]
		scales := w.Scales[g*w.N:]
		row := dst[k*width : (k+1)*width]
		for n := n0; n < n1; n++ {
			code := (uint32(words[n]) >> shift) & mask
			zero := (uint32(zeros[n/per])>>uint(w.Bits*(n%per)))&mask + 1
			row[n-n0] = scales[n] * float32(int32(code)-int32(zero))
		}
	}
}

// Int4Op is the op of Int4Linear and of its input gradient (Backward).
type Int4Op struct {
	base
	w        *Int4
	backward bool // dy [M, N] -> dx [M, K]
}

// tilePool recycles Int4's dequantized weight tiles (one per worker, about 1 MiB each).
var tilePool sync.Pool

func getTile[T Float](n int) []T {
	if b, ok := tilePool.Get().([]T); ok && cap(b) >= n {
		return b[:n]
	}
	return make([]T, n)
}

func putTile[T Float](b []T) { tilePool.Put(b) }

// Int4Linear applies a packed GPTQ weight to x [M, K].
func Int4Linear(x *G.Node, w *Int4) (*G.Node, error) {
	return G.ApplyOp(&Int4Op{base: newBase("Int4Linear"), w: w}, x)
}

func (o *Int4Op) Arity() int    { return 1 }
func (o *Int4Op) Type() hm.Type { return hm.NewFnType(tt(2, tvA), tt(2, tvA)) }
func (o *Int4Op) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	x, err := shapeOf(in[0])
	if err != nil {
		return nil, err
	}
	want, out := o.w.K, o.w.N
	if o.backward {
		want, out = o.w.N, o.w.K
	}
	if len(x) != 2 || x[1] != want {
		return nil, fmt.Errorf("autograd: %s %s: input %v, expected [*, %d]", o.name, o.w.Name, x, want)
	}
	return tensor.Shape{x[0], out}, nil
}

func (o *Int4Op) Do(v ...G.Value) (G.Value, error) {
	x, err := dense(v[0], o.name)
	if err != nil {
		return nil, err
	}
	if x.Dtype() != tensor.Float32 {
		return nil, fmt.Errorf("autograd: %s: activations of type %v (float32 only)", o.name, x.Dtype())
	}
	w := o.w
	m := x.Shape()[0]
	xd := x.Data().([]float32)
	cols := max(1, (1<<18)/max(w.K, 1))
	tiles := (w.N + cols - 1) / cols
	if o.backward {
		out := o.result(tensor.Float32, m, w.K)
		dx := out.Data().([]float32)
		buf := make([]float32, w.K*cols)
		for t := 0; t < tiles; t++ { // dx += dy[:, tile] W[:, tile]^T
			n0, n1 := t*cols, min(w.N, (t+1)*cols)
			w.dequantCols(n0, n1, buf)
			beta := float32(1)
			if t == 0 {
				beta = 0
			}
			gemm(false, true, m, w.K, n1-n0, 1, xd[n0:], w.N, buf, n1-n0, beta, dx, w.K)
		}
		return out, nil
	}
	out := o.result(tensor.Float32, m, w.N)
	y := out.Data().([]float32)
	parallel(tiles, func(t int) {
		n0, n1 := t*cols, min(w.N, (t+1)*cols)
		buf := getTile[float32](w.K * (n1 - n0))
		defer putTile(buf)
		w.dequantCols(n0, n1, buf)
		gemm(false, false, m, n1-n0, w.K, 1, xd, w.K, buf, n1-n0, 0, y[n0:], w.N)
	})
	if w.Bias != nil {
		for i := 0; i < m; i++ {
			row := y[i*w.N : (i+1)*w.N]
			for j := range row {
				row[j] += w.Bias[j]
			}
		}
	}
	return out, nil
}

func (o *Int4Op) DiffWRT(int) []bool { return []bool{true} }

func (o *Int4Op) SymDiff(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
	if o.backward {
		return nil, fmt.Errorf("autograd: second derivatives of %s are not supported", o.name)
	}
	d, err := G.ApplyOp(&Int4Op{base: newBase("Int4LinearGrad"), w: o.w, backward: true}, grad)
	return G.Nodes{d}, err
}

// PlainGroup is the group size of a layer whose g_idx is k / size for every input k (no
// act-order; size K when there is one group), or 0 for act-order.
func (w *Int4) PlainGroup() int {
	if w.G < 1 || w.K%w.G != 0 {
		return 0
	}
	size := w.K / w.G
	for k, g := range w.GIdx {
		if int(g) != k/size {
			return 0
		}
	}
	return size
}

// HasBias reports whether the layer adds a bias other than zero (GPTQ checkpoints store a
// zero bias for layers that have none).
func (w *Int4) HasBias() bool {
	for _, b := range w.Bias {
		if b != 0 {
			return true
		}
	}
	return false
}
