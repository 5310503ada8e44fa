// Package hostblas computes cuBLAS's cublasGemmEx and cublasGemmStridedBatchedEx on host
// memory, as the emulated CUDA driver of package autograd needs them: column-major matrices,
// op(A) and op(B) chosen by transa and transb, leading dimensions lda, ldb and ldc, bf16
// (CUDA_R_16BF) or float32 (CUDA_R_32F) inputs widened to float32, float32 accumulation
// (CUBLAS_COMPUTE_32F) and a float32 or bf16 result (rounded to nearest even).
//
// A column-major matrix stored with leading dimension ld is, read row-major with stride ld,
// its transpose; so C = alpha op(A) op(B) + beta C is, row-major, C^T = alpha op(B)^T
// op(A)^T + beta C^T, which internal/matmul computes (row-major C = alpha op(A) op(B) + beta C).
package hostblas

import (
	"math"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/internal/matmul"
)

// cuBLAS's enum values (cublas_api.h, library_types.h).
const (
	OpN = 0 // CUBLAS_OP_N
	OpT = 1 // CUBLAS_OP_T
	OpC = 2 // CUBLAS_OP_C: the transpose, for real types

	R32F  = 0  // CUDA_R_32F
	R16BF = 14 // CUDA_R_16BF

	StatusSuccess      = 0  // CUBLAS_STATUS_SUCCESS
	StatusInvalidValue = 7  // CUBLAS_STATUS_INVALID_VALUE
	StatusNotSupported = 15 // CUBLAS_STATUS_NOT_SUPPORTED
)

// Check is the status cuBLAS returns for these arguments before it computes anything:
// INVALID_VALUE for a negative size or count, an unknown operation or a leading dimension
// below the rows of its matrix as stored; NOT_SUPPORTED for a type combination that
// CUBLAS_COMPUTE_32F does not take (A and B of one type, bf16 or float32; C float32, or bf16
// when A and B are). Negative batch strides are outside this emulation: INVALID_VALUE.
func Check(transa, transb, m, n, k, atype, lda, btype, ldb, ctype, ldc int, sa, sb, sc int64, count int) int {
	if m < 0 || n < 0 || k < 0 || count < 0 || sa < 0 || sb < 0 || sc < 0 || !validOp(transa) || !validOp(transb) {
		return StatusInvalidValue
	}
	ar, _ := stored(transa, m, k)
	br, _ := stored(transb, k, n)
	if lda < max(1, ar) || ldb < max(1, br) || ldc < max(1, m) {
		return StatusInvalidValue
	}
	switch {
	case atype != btype:
		return StatusNotSupported
	case atype == R16BF && (ctype == R16BF || ctype == R32F):
	case atype == R32F && ctype == R32F:
	default:
		return StatusNotSupported
	}
	return StatusSuccess
}

func validOp(op int) bool { return op == OpN || op == OpT || op == OpC }

// stored is the shape (rows, columns) of the stored matrix whose op is rows x cols.
func stored(op, rows, cols int) (int, int) {
	if op == OpN {
		return rows, cols
	}
	return cols, rows
}

// ElemSize is the bytes of one element of a CUDA data type (R16BF or R32F).
func ElemSize(t int) int64 {
	if t == R16BF {
		return 2
	}
	return 4
}

// span is the elements from the first to the last of a rows x cols matrix with leading
// dimension ld.
func span(rows, cols, ld int) int64 {
	if rows == 0 || cols == 0 {
		return 0
	}
	return int64(ld)*int64(cols-1) + int64(rows)
}

// batchSpan is the elements count matrices of span elements, stride apart, reach.
func batchSpan(s, stride int64, count int) int64 {
	if s == 0 || count == 0 {
		return 0
	}
	return stride*int64(count-1) + s
}

// Sizes is the bytes of A, B and C, from their first elements, that a strided batched
// product reads or writes (count 1 and strides 0 for cublasGemmEx); arguments must pass Check.
func Sizes(transa, transb, m, n, k, atype, lda, btype, ldb, ctype, ldc int, sa, sb, sc int64, count int) (a, b, c int64) {
	if m == 0 || n == 0 {
		return 0, 0, 0
	}
	ar, ac := stored(transa, m, k)
	br, bc := stored(transb, k, n)
	a = batchSpan(span(ar, ac, lda), sa, count) * ElemSize(atype)
	b = batchSpan(span(br, bc, ldb), sb, count) * ElemSize(btype)
	c = batchSpan(span(m, n, ldc), sc, count) * ElemSize(ctype)
	return a, b, c
}

// GemmEx is cublasGemmEx with CUBLAS_COMPUTE_32F: C = alpha op(A) op(B) + beta C, op(A)
// m x k, op(B) k x n, C m x n, all column-major; a, b and c hold at least the bytes Sizes
// gives (it panics otherwise). beta 0 overwrites C without reading it (NaN in C is ignored);
// otherwise beta C is added to the whole product in one rounding, as cuBLAS adds it to the
// float32 accumulator.
// It returns a cuBLAS status and computes nothing unless that is StatusSuccess.
func GemmEx(threads, transa, transb, m, n, k int, alpha float32, a []byte, atype, lda int, b []byte, btype, ldb int, beta float32, c []byte, ctype, ldc int) int {
	return GemmStridedBatchedEx(threads, transa, transb, m, n, k, alpha, a, atype, lda, 0, b, btype, ldb, 0, beta, c, ctype, ldc, 0, 1)
}

// GemmStridedBatchedEx is cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F: count products
// GemmEx, the i-th on A + i*sa, B + i*sb and C + i*sc (strides in elements), one after the other.
func GemmStridedBatchedEx(threads, transa, transb, m, n, k int, alpha float32, a []byte, atype, lda int, sa int64, b []byte, btype, ldb int, sb int64,
	beta float32, c []byte, ctype, ldc int, sc int64, count int) int {
	if s := Check(transa, transb, m, n, k, atype, lda, btype, ldb, ctype, ldc, sa, sb, sc, count); s != StatusSuccess {
		return s
	}
	na, nb, nc := Sizes(transa, transb, m, n, k, atype, lda, btype, ldb, ctype, ldc, sa, sb, sc, count)
	if int64(len(a)) < na || int64(len(b)) < nb || int64(len(c)) < nc {
		panic("hostblas: operands shorter than the product reaches")
	}
	if m == 0 || n == 0 {
		return StatusSuccess
	}
	ar, ac := stored(transa, m, k)
	br, bc := stored(transb, k, n)
	ea, eb, ec := span(ar, ac, lda), span(br, bc, ldb), span(m, n, ldc)
	var wideB, wideC, prod []float32 // scratch: B widened (internal/matmul's first operand is float32), C in float32, the product
	if btype == R16BF {
		wideB = make([]float32, eb)
	}
	if ctype == R16BF {
		wideC = make([]float32, ec)
	}
	if beta != 0 {
		prod = make([]float32, ec)
	}
	for i := 0; i < count; i++ {
		ai, bi, ci := int64(i)*sa, int64(i)*sb, int64(i)*sc
		// Row-major, C^T [n, m] = alpha op(B)^T [n, k] op(A)^T [k, m] + beta C^T: B's storage read
		// row-major is B^T, so op(B)^T is it as stored when transb is N and transposed when T
		// (likewise A).
		var x []float32
		if btype == R16BF {
			matmul.WidenBF16(wideB, u16(b, bi, eb))
			x = wideB
		} else {
			x = f32(b, bi, eb)
		}
		y := matmul.Matrix{Stride: lda, Trans: transa != OpN}
		if atype == R16BF {
			y.BF16 = u16(a, ai, ea)
		} else {
			y.F32 = f32(a, ai, ea)
		}
		out := wideC
		if ctype != R16BF {
			out = f32(c, ci, ec)
		} else if beta != 0 { // with beta 0 matmul overwrites C without reading it
			matmul.WidenBF16(out, u16(c, ci, ec))
		}
		if beta == 0 {
			matmul.Float32(threads, transb != OpN, n, m, k, alpha, x, ldb, y, 0, out, ldc)
		} else {
			// the whole product first, then beta C added to it in one rounding, as cuBLAS's
			// epilogue does (matmul would add C before the products of k's blocks)
			matmul.Float32(threads, transb != OpN, n, m, k, alpha, x, ldb, y, 0, prod, ldc)
			addScaled(out, prod, beta, m, n, ldc)
		}
		if ctype == R16BF {
			dst := u16(c, ci, ec)
			for j := 0; j < n; j++ { // columns of C, m elements each
				col := int64(j) * int64(ldc)
				for r := int64(0); r < int64(m); r++ {
					dst[col+r] = RoundBF16(out[col+r])
				}
			}
		}
	}
	return StatusSuccess
}

// u16 is the n bf16 elements of b from element off.
func u16(b []byte, off, n int64) []uint16 {
	if n == 0 {
		return nil
	}
	b = b[off*2 : (off+n)*2]
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n)
}

// f32 is the n float32 elements of b from element off.
func f32(b []byte, off, n int64) []float32 {
	if n == 0 {
		return nil
	}
	b = b[off*4 : (off+n)*4]
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
}

// RoundBF16 is f rounded to the nearest bf16, ties to even (NaN stays NaN).
func RoundBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

// addScaled is out = prod + beta out over the m x n column-major matrix of leading
// dimension ldc, each element rounded once after beta out (exact for beta 1).
func addScaled(out, prod []float32, beta float32, m, n, ldc int) {
	for j := 0; j < n; j++ {
		col := j * ldc
		for i := col; i < col+m; i++ {
			out[i] = prod[i] + float32(beta*out[i])
		}
	}
}
