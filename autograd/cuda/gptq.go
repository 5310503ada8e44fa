//go:build qtcuda || cudaemu

package cuda

// Launchers of kernels/gptq.cu, GPTQ's solve on the device (the algorithm and its order of
// operations are quantize/gptq.go's; quantize/gptq_cuda.go drives these): the Hessian's
// float32 sums accumulated by cuBLAS, the damped and reversed float64 matrix, its blocked
// Cholesky factorization and inverse (U, the upper Cholesky factor of H^-1, in float32), the
// group grids, the per-block column sweep and the lazy update.

import (
	"fmt"
	"unsafe"
)

// gptqNB is gptq.cu's GPTQ_NB (Cholesky panel width), gptqMaxBlock its GPTQ_MAXB.
const (
	gptqNB       = 64
	gptqMaxBlock = 128
)

// GPTQMaxBlock is the most columns per lazy block the device sweep takes.
const GPTQMaxBlock = gptqMaxBlock

// HessianAdd is sum [k, k] += x^T x for x [rows, k] float32 (row-major), a cuBLAS product
// in float32 (CUBLAS_COMPUTE_32F); sum is symmetric up to rounding and gptq.cu reads its
// upper triangle (row-major sum[a*k+b], a <= b), as the CPU reads its Hessian.
func (d *Device) HessianAdd(sum, x *Buffer, rows, k int) error {
	if err := need(rows > 0 && x.Bytes >= int64(rows)*int64(k)*4 && sum.Bytes >= int64(k)*int64(k)*4, "HessianAdd: x [%d, %d], sum [%d, %d]", rows, k, k, k); err != nil {
		return err
	}
	if _, err := d.Blas(); err != nil {
		return err
	}
	// column-major: sum = (x viewed as [k, rows]) (the same)^T
	return blasErr("cublasGemmEx (Hessian)", d.drv.gemmEx(blasOpN, blasOpT, k, k, rows, x.Ptr, dtypeF32, k, x.Ptr, dtypeF32, k, 1, sum.Ptr, dtypeF32, k))
}

// GPTQDiag is gptq_diag: diag [k] float64 = scale * the diagonal of sum.
func (d *Device) GPTQDiag(diag, sum *Buffer, k int, scale float64) error {
	if err := need(diag.Bytes >= int64(k)*8 && sum.Bytes >= int64(k)*int64(k)*4, "GPTQDiag: k %d", k); err != nil {
		return err
	}
	return d.launch("gptq_diag", grid(int64(k)), 256, 0, diag, sum, k, scale)
}

// GPTQDamped is gptq_damped: a [k, k] float64 = J P^T H P J + add I, H = scale * sum with
// dead diagonal entries set to 1, perm [k] int32 the act-order (nil: none).
func (d *Device) GPTQDamped(a, sum, perm *Buffer, k int, scale, add float64) error {
	if err := need(a.Bytes >= int64(k)*int64(k)*8 && sum.Bytes >= int64(k)*int64(k)*4 && (perm == nil || perm.Bytes >= int64(k)*4), "GPTQDamped: k %d", k); err != nil {
		return err
	}
	return d.launch("gptq_damped", grid(int64(k)*int64(k)), 256, 0, a, sum, perm, k, scale, add)
}

// GPTQInverseCholesky factors a [k, k] float64 (destroyed) as L L^T and writes u [k, k]
// float32, the upper Cholesky factor of the inverse of J a J: u = J L^-1 J. ok is false when
// a is not positive definite (a pivot not positive). x [k, k] float64 is scratch.
func (d *Device) GPTQInverseCholesky(u, a, x *Buffer, k int) (ok bool, err error) {
	kk := int64(k) * int64(k)
	if err := need(a.Bytes >= kk*8 && x.Bytes >= kk*8 && u.Bytes >= kk*4, "GPTQInverseCholesky: k %d", k); err != nil {
		return false, err
	}
	fail, err := d.Alloc(4, "GPTQ pivot flag")
	if err != nil {
		return false, err
	}
	defer d.Free(fail)
	if err := cudaErr("cuMemsetD32", d.drv.memsetD32(fail.Ptr, 0, 1)); err != nil {
		return false, err
	}
	if err := cudaErr("cuMemsetD8", d.drv.memsetD8(x.Ptr, 0, kk*8)); err != nil {
		return false, err
	}
	for p := 0; p < k; p += gptqNB {
		m := min(gptqNB, k-p)
		if err := d.launch("gptq_chol_diag", 1, gptqNB, 0, a, x, k, p, fail); err != nil {
			return false, err
		}
		rest := k - p - m
		if rest == 0 {
			break
		}
		if err := d.launch("gptq_chol_panel", (rest+127)/128, 128, 0, a, k, p); err != nil {
			return false, err
		}
		t := (rest + 63) / 64
		if err := d.launch("gptq_chol_update", t*(t+1)/2, 256, 0, a, k, p); err != nil {
			return false, err
		}
	}
	var flag [1]int32
	if err := Download(d, flag[:], fail); err != nil {
		return false, err
	}
	if flag[0] != 0 {
		return false, nil
	}
	// X = L^-1 by block rows: X[i, :i] = -X[i,i] (L[i, :i] X[:i, :i]); the diagonal blocks
	// came from gptq_chol_diag. t holds one block row of the product.
	t, err := d.Alloc(int64(gptqNB)*int64(k)*8, "GPTQ inverse block row")
	if err != nil {
		return false, err
	}
	defer d.Free(t)
	for p := gptqNB; p < k; p += gptqNB {
		m := min(gptqNB, k-p)
		tiles := (m + 63) / 64 * ((p + 63) / 64)
		// t [m, p] = L[p:p+m, :p] X[:p, :p]
		if err := d.launch("gptq_dgemm", tiles, 256, 0, t, a.Slice(int64(p)*int64(k)*8, int64(m)*int64(k)*8), x, m, p, p, k, k, p, 1.0); err != nil {
			return false, err
		}
		// X[p:p+m, :p] = -X[p:p+m, p:p+m] t
		if err := d.launch("gptq_dgemm", tiles, 256, 0, x.Slice(int64(p)*int64(k)*8, int64(m)*int64(k)*8), x.Slice((int64(p)*int64(k)+int64(p))*8, x.Bytes-(int64(p)*int64(k)+int64(p))*8), t, m, p, m, k, p, k, -1.0); err != nil {
			return false, err
		}
	}
	return true, d.launch("gptq_upper_f32", grid(kk), 256, 0, u, x, k)
}

// GPTQWeights is gptq_weights: wf [n, k] = w's columns in act-order (perm nil: none), the
// dead inputs (diag [k] zero, original order) zeroed.
func (d *Device) GPTQWeights(wf, w, perm, diag *Buffer, n, k int) error {
	nk := int64(n) * int64(k)
	if err := need(wf.Bytes >= nk*4 && w.Bytes >= nk*4 && diag.Bytes >= int64(k)*8 && (perm == nil || perm.Bytes >= int64(k)*4), "GPTQWeights: [%d, %d]", n, k); err != nil {
		return err
	}
	return d.launch("gptq_weights", grid(nk), 256, 0, wf, w, perm, diag, n, k)
}

// okBits: the kernels' codes are bytes of 2 to 8 bits.
func okBits(bits int) bool { return bits >= 2 && bits <= 8 }

// GPTQGrids is gptq_grids: the grid of columns j0..j0+gs of each row of w [n, k] into scale
// and zero [n] float64.
func (d *Device) GPTQGrids(scale, zero, w *Buffer, n, k, j0, gs, bits int, sym bool) error {
	if err := need(okBits(bits) && j0 >= 0 && gs > 0 && j0+gs <= k && scale.Bytes >= int64(n)*8 && zero.Bytes >= int64(n)*8 && w.Bytes >= int64(n)*int64(k)*4, "GPTQGrids: columns %d..%d of [%d, %d], %d bits", j0, j0+gs, n, k, bits); err != nil {
		return err
	}
	s := 0
	if sym {
		s = 1
	}
	return d.launch("gptq_grids", (n+127)/128, 128, 0, scale, zero, w, n, k, j0, gs, bits, s)
}

// GPTQBlock is gptq_block: columns i1..i1+count of wf quantized on the grids gscale/gzero
// [G, n] (gcol [k] int32: each column's grid), codes [n, k] uint8 and q [n, k] float32 written
// at the original columns (perm [k] int32, nil: none), err [n, count] the scaled errors.
func (d *Device) GPTQBlock(wf, errs, codes, q, u, gscale, gzero, gcol, perm *Buffer, n, k, i1, count, bits int) error {
	nk := int64(n) * int64(k)
	if err := need(okBits(bits) && count > 0 && count <= gptqMaxBlock && i1 >= 0 && i1+count <= k && wf.Bytes >= nk*4 && errs.Bytes >= int64(n)*int64(count)*4 &&
		codes.Bytes >= nk && q.Bytes >= nk*4 && u.Bytes >= int64(k)*int64(k)*4 && gcol.Bytes >= int64(k)*4 && (perm == nil || perm.Bytes >= int64(k)*4) &&
		gscale.Bytes >= int64(n)*8 && gzero.Bytes >= int64(n)*8, "GPTQBlock: columns %d..%d of [%d, %d] (at most %d per block), %d bits", i1, i1+count, n, k, gptqMaxBlock, bits); err != nil {
		return err
	}
	return d.launch("gptq_block", (n+127)/128, 128, 0, wf, errs, codes, q, u, gscale, gzero, gcol, perm, n, k, i1, count, bits)
}

// GPTQUpdate is gptq_update: wf[:, i1+count:] -= errs [n, count] U[i1:i1+count, i1+count:].
func (d *Device) GPTQUpdate(wf, errs, u *Buffer, n, k, i1, count int) error {
	cols := k - i1 - count
	if cols <= 0 {
		return nil
	}
	if err := need(wf.Bytes >= int64(n)*int64(k)*4 && errs.Bytes >= int64(n)*int64(count)*4 && u.Bytes >= int64(k)*int64(k)*4, "GPTQUpdate: [%d, %d]", n, k); err != nil {
		return err
	}
	tiles := (n + 63) / 64 * ((cols + 63) / 64)
	if tiles > 1<<31-1 {
		return fmt.Errorf("cuda: GPTQUpdate: %d tiles", tiles)
	}
	return d.launch("gptq_update", tiles, 256, 0, wf, errs, u, n, k, i1, count)
}

// Zero fills a buffer with zero bytes.
func (d *Device) Zero(b *Buffer) error {
	return cudaErr("cuMemsetD8", d.drv.memsetD8(b.Ptr, 0, b.Bytes))
}

// CopyToDevice copies a host slice into the start of an existing buffer.
func CopyToDevice[T any](d *Device, dst *Buffer, src []T) error {
	var zero T
	bytes := int64(len(src)) * int64(unsafe.Sizeof(zero))
	if bytes > dst.Bytes {
		return fmt.Errorf("cuda: copying %d bytes into a buffer of %d", bytes, dst.Bytes)
	}
	if len(src) == 0 {
		return nil
	}
	return cudaErr("cuMemcpyHtoD", d.drv.memcpyHtoD(dst.Ptr, unsafe.Pointer(&src[0]), bytes))
}

// GPTQRTNDiff is gptq_rtn_diff: d [n, k] = w - RTN(w) on the grids scale/zero [k/gs, n].
func (d *Device) GPTQRTNDiff(diff, w, scale, zero *Buffer, n, k, gs, bits int) error {
	nk := int64(n) * int64(k)
	if err := need(okBits(bits) && gs > 0 && k%gs == 0 && diff.Bytes >= nk*4 && w.Bytes >= nk*4 && scale.Bytes >= int64(k/gs)*int64(n)*8 && zero.Bytes >= int64(k/gs)*int64(n)*8, "GPTQRTNDiff: [%d, %d], groups of %d, %d bits", n, k, gs, bits); err != nil {
		return err
	}
	return d.launch("gptq_rtn_diff", grid(nk), 256, 0, diff, w, scale, zero, n, k, gs, bits)
}

// GemmF32 is y [m, n] = x [m, k] w^T with w [n, k], all float32 row-major (cuBLAS,
// CUBLAS_COMPUTE_32F).
func (d *Device) GemmF32(y, x, w *Buffer, m, n, k int) error {
	if err := need(x.Bytes >= int64(m)*int64(k)*4 && w.Bytes >= int64(n)*int64(k)*4 && y.Bytes >= int64(m)*int64(n)*4, "GemmF32: [%d, %d] x [%d, %d]^T", m, k, n, k); err != nil {
		return err
	}
	if _, err := d.Blas(); err != nil {
		return err
	}
	// column-major: y^T [n, m] = W [n, k] . x^T [k, m]
	return blasErr(fmt.Sprintf("cublasGemmEx [%d, %d, %d] (float32)", m, n, k), d.drv.gemmEx(blasOpT, blasOpN, n, m, k, w.Ptr, dtypeF32, k, x.Ptr, dtypeF32, k, 0, y.Ptr, dtypeF32, n))
}
