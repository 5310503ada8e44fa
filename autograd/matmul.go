package autograd

// Matrix products of activations with weights that may be stored as bf16 (uint16), float32
// or float64. A bf16 weight is never widened as a whole: it is converted a tile of rows at a
// time into a small buffer, so a 7B model keeps 2 bytes per weight in memory.

import (
	"fmt"
	"math"
	"sync"

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
		matmul.Float32(threads(), transA, m, n, k, float32(alpha), a, lda, matmul.Matrix{F32: any(b).([]float32), Stride: ldb, Trans: transB}, float32(beta), any(c).([]float32), ldc)
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

// widenBF16 writes the float32 value of each bf16 in src to dst (same length): the bits
// shifted into the high half, four at a time (twice the speed of the plain loop).
func widenBF16(dst []float32, src []uint16) {
	n := len(src) &^ 3
	for i := 0; i < n; i += 4 {
		s, o := src[i:i+4:i+4], dst[i:i+4:i+4]
		o[0] = math.Float32frombits(uint32(s[0]) << 16)
		o[1] = math.Float32frombits(uint32(s[1]) << 16)
		o[2] = math.Float32frombits(uint32(s[2]) << 16)
		o[3] = math.Float32frombits(uint32(s[3]) << 16)
	}
	for i := n; i < len(src); i++ {
		dst[i] = bf16(src[i])
	}
}

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
			widenBF16(f[:len(src)], src)
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

// tilePool recycles the widened weight tiles (one per worker, about 1 MiB each).
var tilePool sync.Pool

func getTile[T Float](n int) []T {
	if b, ok := tilePool.Get().([]T); ok && cap(b) >= n {
		return b[:n]
	}
	return make([]T, n)
}

func putTile[T Float](b []T) { tilePool.Put(b) }

// tileRows is how many weight rows are widened at once: about 1 MiB of float32.
func tileRows(cols int) int { return max(1, (1<<18)/max(cols, 1)) }

// matmulNT is out[n, m] = x[n, k] W[m, k]^T (PyTorch's Linear layout).
func matmulNT[T Float](x []T, n, k int, w *tensor.Dense, m int, out []T) error {
	if wd, ok := weightData[T](w); ok {
		gemm(false, true, n, m, k, 1, x, k, wd, k, 0, out, m)
		return nil
	}
	rows := tileRows(k)
	tiles := (m + rows - 1) / rows
	errs := make([]error, tiles)
	parallel(tiles, func(t int) {
		r0 := t * rows
		r1 := min(m, r0+rows)
		buf := getTile[T](rows * k)
		defer putTile(buf)
		if errs[t] = weightRows(w, k, r0, r1, buf); errs[t] == nil {
			gemm(false, true, n, r1-r0, k, 1, x, k, buf, k, 0, out[r0:], m)
		}
	})
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// matmulNN is out[n, k] = g[n, m] W[m, k]: the input gradient of matmulNT.
func matmulNN[T Float](g []T, n, m int, w *tensor.Dense, k int, out []T) error {
	if wd, ok := weightData[T](w); ok {
		gemm(false, false, n, k, m, 1, g, m, wd, k, 0, out, k)
		return nil
	}
	rows := tileRows(k)
	buf := getTile[T](rows * k)
	defer putTile(buf)
	for r0 := 0; r0 < m; r0 += rows {
		r1 := min(m, r0+rows)
		if err := weightRows(w, k, r0, r1, buf); err != nil {
			return err
		}
		beta := T(1)
		if r0 == 0 {
			beta = 0
		}
		gemm(false, false, n, k, r1-r0, 1, g[r0:], m, buf, k, beta, out, k)
	}
	return nil
}
