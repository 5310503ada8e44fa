//go:build qtcuda || cudaemu

package cuda

// cuBLAS loaded at run time with dlopen (libcublas.so.13, .12, .11; driver.go): the
// binary does not depend on one CUDA release's cuBLAS, and gorgonia.org/cu/blas (classic
// BLAS, no bf16) is not used. bf16 inputs, float32 outputs and fp32 accumulation
// (CUBLAS_COMPUTE_32F) on the device's own stream (the driver's, set with cublasSetStream),
// where the kernels run, so a CUDA graph captures the products with the kernels around them.

import "fmt"

// cuBLAS enum values (cublas_api.h, library_types.h).
const (
	blasOpN   = 0
	blasOpT   = 1
	dtypeF32  = 0  // CUDA_R_32F
	dtypeBF16 = 14 // CUDA_R_16BF
)

var blasStatusNames = map[blasStatus]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

// blasStatus is a cublasStatus_t other than CUBLAS_STATUS_SUCCESS.
type blasStatus int

func (s blasStatus) Error() string {
	name := blasStatusNames[s]
	if name == "" {
		name = fmt.Sprintf("status %d", int(s))
	}
	return name
}

func blasErr(call string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("cuda: %s: %v", call, err)
}

// Blas loads cuBLAS on first use.
func (d *Device) Blas() (string, error) {
	if d.blasLib != "" {
		return d.blasLib, nil
	}
	lib, err := d.drv.blasOpen()
	if err != nil {
		return "", err
	}
	d.blasLib = lib
	return lib, nil
}

// GemmBF16 is y [m, n] (+)= x [m, k] W^T with W [n, k] (PyTorch's layout) and x bf16, y
// float32 (row-major, rows of ldy floats); accumulate adds to y.
func (d *Device) GemmBF16(y, x, w *Buffer, m, n, k, ldy int, accumulate bool) error {
	return d.gemm(y, dtypeF32, x, w, m, n, k, ldy, accumulate)
}

// GemmBF16Out is GemmBF16 writing y in bf16 (fp32 accumulation, rounded once).
func (d *Device) GemmBF16Out(y, x, w *Buffer, m, n, k, ldy int) error {
	return d.gemm(y, dtypeBF16, x, w, m, n, k, ldy, false)
}

func (d *Device) gemm(y *Buffer, yt int, x, w *Buffer, m, n, k, ldy int, accumulate bool) error {
	elem := int64(4)
	if yt == dtypeBF16 {
		elem = 2
	}
	if _, err := d.Blas(); err != nil {
		return err
	}
	if err := need(x.Bytes >= int64(m*k*2) && w.Bytes >= int64(n*k*2) && y.Bytes >= (int64(m-1)*int64(ldy)+int64(n))*elem, "GEMM: [%d, %d] x [%d, %d]^T: buffers too small", m, k, n, k); err != nil {
		return err
	}
	beta := float32(0)
	if accumulate {
		beta = 1
	}
	// Column-major: y^T [n, m] = W [n, k] (W^T stored as k x n) . x^T [k, m].
	return blasErr(fmt.Sprintf("cublasGemmEx [%d, %d, %d]", m, n, k),
		d.drv.gemmEx(blasOpT, blasOpN, n, m, k, w.Ptr, dtypeBF16, k, x.Ptr, dtypeBF16, k, beta, y.Ptr, yt, ldy))
}

// gemmBatched is cublasGemmStridedBatchedEx in cuBLAS's column-major terms: C = op(A) op(B)
// + beta C for each of count matrices (beta 0: C is only written).
func (d *Device) gemmBatched(ta, tb, m, n, k int, a *Buffer, at, lda int, sa int64, b *Buffer, bt, ldb int, sb int64, beta float32, c *Buffer, ct, ldc int, sc int64, count int) error {
	return d.gemmScaled(ta, tb, m, n, k, 1, a, at, lda, sa, b, bt, ldb, sb, beta, c, ct, ldc, sc, count)
}

// gemmScaled is gemmBatched with cuBLAS's alpha: C = alpha op(A) op(B) + beta C, the fp32
// accumulator scaled and added to beta C before C is written (one rounding into a float32 C).
func (d *Device) gemmScaled(ta, tb, m, n, k int, alpha float32, a *Buffer, at, lda int, sa int64, b *Buffer, bt, ldb int, sb int64, beta float32, c *Buffer, ct, ldc int, sc int64, count int) error {
	if _, err := d.Blas(); err != nil {
		return err
	}
	return blasErr(fmt.Sprintf("cublasGemmStridedBatchedEx [%d, %d, %d] x %d", m, n, k, count),
		d.drv.gemmStridedBatchedEx(ta, tb, m, n, k, alpha, a.Ptr, at, lda, sa, b.Ptr, bt, ldb, sb, beta, c.Ptr, ct, ldc, sc, count))
}
