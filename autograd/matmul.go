package autograd

// Matrix products of activations with weights that may be stored as bf16 (uint16), float32
// or float64. Float32 products run on internal/matmul, which widens a bf16 weight while it
// packs it, so a 7B model keeps 2 bytes per weight in memory (its assembly kernels live in
// their own package because a package using cgo, as this one does under qtcuda, cannot hold
// Go assembly); float64 ones (gradient checks) run on gonum.

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/internal/matmul"
)

var impl gonum.Implementation

// gemm is C = alpha op(A) op(B) + beta C in row-major storage, A m x k, B k x n.
func gemm[T Float](transA, transB bool, m, n, k int, alpha T, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	switch a := any(a).(type) {
	case []float32:
		bm := matmul.Matrix{F32: any(b).([]float32), Stride: ldb, Trans: transB}
		matmul.Float32(threads(), transA, m, n, k, float32(alpha), a, lda, bm, float32(beta), any(c).([]float32), ldc)
	case []float64:
		tA, tB := blas.NoTrans, blas.NoTrans
		if transA {
			tA = blas.Trans
		}
		if transB {
			tB = blas.Trans
		}
		impl.Dgemm(tA, tB, m, n, k, float64(alpha), a, lda, any(b).([]float64), ldb, float64(beta), any(c).([]float64), ldc)
	}
}

// bf16 widens a bfloat16 bit pattern.
func bf16(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// weightData returns w's elements as []T when it already has element type T.
func weightData[T Float](w *tensor.Dense) ([]T, bool) {
	d, ok := w.Data().([]T)
	return d, ok
}

// weightRows writes rows [r0, r1) of a row-major weight with cols columns into dst as T.
func weightRows[T Float](w *tensor.Dense, cols, r0, r1 int, dst []T) error {
	switch d := w.Data().(type) {
	case []uint16:
		src := d[r0*cols : r1*cols]
		if f, ok := any(dst).([]float32); ok {
			matmul.WidenBF16(f[:len(src)], src)
			return nil
		}
		for i, b := range src {
			dst[i] = T(bf16(b))
		}
	case []float32:
		src := d[r0*cols : r1*cols]
		for i, v := range src {
			dst[i] = T(v)
		}
	case []float64:
		src := d[r0*cols : r1*cols]
		for i, v := range src {
			dst[i] = T(v)
		}
	default:
		return fmt.Errorf("autograd: weight of type %v: expected uint16 (bf16), float32 or float64", w.Dtype())
	}
	return nil
}

// weightVector is a small weight (a norm scale, a bias) as []T.
func weightVector[T Float](w *tensor.Dense) ([]T, error) {
	if d, ok := weightData[T](w); ok {
		return d, nil
	}
	out := make([]T, w.Size())
	return out, weightRows(w, w.Size(), 0, 1, out)
}

// weightMatrix is w [rows, cols] as the float32 product's operand (bf16 or float32
// storage, used as it is); ok is false for other storage.
func weightMatrix(w *tensor.Dense, cols int, trans bool) (matmul.Matrix, bool) {
	switch d := w.Data().(type) {
	case []uint16:
		return matmul.Matrix{BF16: d, Stride: cols, Trans: trans}, true
	case []float32:
		return matmul.Matrix{F32: d, Stride: cols, Trans: trans}, true
	}
	return matmul.Matrix{}, false
}

// weightAs is w's rows x cols elements as []T: w's own storage when it already is T, else a
// widened copy (float64 gradient checks, float64 weights under float32 activations).
func weightAs[T Float](w *tensor.Dense, rows, cols int) ([]T, error) {
	if d, ok := weightData[T](w); ok {
		return d, nil
	}
	d := make([]T, rows*cols)
	return d, weightRows(w, cols, 0, rows, d)
}

// matmulNT is out[n, m] = x[n, k] W[m, k]^T (PyTorch's Linear layout). Float32 activations
// take a bf16 weight as it is: it is widened while the product packs it.
func matmulNT[T Float](x []T, n, k int, w *tensor.Dense, m int, out []T, alpha T) error {
	if xf, ok := any(x).([]float32); ok {
		if b, ok := weightMatrix(w, k, true); ok {
			matmul.Float32(threads(), false, n, m, k, float32(alpha), xf, k, b, 0, any(out).([]float32), m)
			return nil
		}
	}
	wd, err := weightAs[T](w, m, k)
	if err != nil {
		return err
	}
	gemm(false, true, n, m, k, alpha, x, k, wd, k, 0, out, m)
	return nil
}

// matmulNN is out[n, k] = g[n, m] W[m, k]: the input gradient of matmulNT.
func matmulNN[T Float](g []T, n, m int, w *tensor.Dense, k int, out []T, alpha T) error {
	if gf, ok := any(g).([]float32); ok {
		if b, ok := weightMatrix(w, k, false); ok {
			matmul.Float32(threads(), false, n, k, m, float32(alpha), gf, m, b, 0, any(out).([]float32), k)
			return nil
		}
	}
	wd, err := weightAs[T](w, m, k)
	if err != nil {
		return err
	}
	gemm(false, false, n, k, m, alpha, g, m, wd, k, 0, out, k)
	return nil
}
