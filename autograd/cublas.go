//go:build qtcuda

package autograd

// cuBLAS loaded at run time with dlopen (libcublas.so.13, .12, .11): the binary does not
// depend on one CUDA release's cuBLAS, and gorgonia.org/cu/blas (classic BLAS, no bf16) is
// not used. bf16 inputs, float32 outputs and fp32 accumulation (CUBLAS_COMPUTE_32F) on the
// device's own stream (Device.stream, set with cublasSetStream), where the kernels run, so a
// CUDA graph captures the products with the kernels around them.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>

typedef int (*qt_create_t)(void**);
typedef int (*qt_destroy_t)(void*);
typedef int (*qt_set_stream_t)(void*, void*);
typedef int (*qt_gemm_t)(void*, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                         const void*, void*, int, int, int, int);
typedef int (*qt_gemm_batched_t)(void*, int, int, int, int, int, const void*, const void*, int, int, long long,
                                 const void*, int, int, long long, const void*, void*, int, int, long long, int, int, int);

static void* qt_lib;
static qt_create_t qt_create;
static qt_destroy_t qt_destroy;
static qt_set_stream_t qt_set_stream;
static qt_gemm_t qt_gemm_fn;
static qt_gemm_batched_t qt_gemm_batched_fn;

static int qt_cublas_open(const char* name) {
	qt_lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!qt_lib) return 1;
	qt_create = (qt_create_t)dlsym(qt_lib, "cublasCreate_v2");
	qt_destroy = (qt_destroy_t)dlsym(qt_lib, "cublasDestroy_v2");
	qt_set_stream = (qt_set_stream_t)dlsym(qt_lib, "cublasSetStream_v2");
	qt_gemm_fn = (qt_gemm_t)dlsym(qt_lib, "cublasGemmEx");
	qt_gemm_batched_fn = (qt_gemm_batched_t)dlsym(qt_lib, "cublasGemmStridedBatchedEx");
	if (!qt_create || !qt_destroy || !qt_set_stream || !qt_gemm_fn || !qt_gemm_batched_fn) return 2;
	return 0;
}

static const char* qt_dlerror(void) { const char* e = dlerror(); return e ? e : ""; }
static int qt_cublas_create(uintptr_t* h) { void* p = 0; int s = qt_create(&p); *h = (uintptr_t)p; return s; }
static int qt_cublas_set_stream(uintptr_t h, uintptr_t s) { return qt_set_stream((void*)h, (void*)s); }
static int qt_cublas_destroy(uintptr_t h) { return qt_destroy((void*)h); }

static int qt_gemm(uintptr_t h, int ta, int tb, int m, int n, int k, uintptr_t a, int at, int lda, uintptr_t b, int bt,
                   int ldb, float beta, uintptr_t c, int ct, int ldc) {
	float alpha = 1.f;
	return qt_gemm_fn((void*)h, ta, tb, m, n, k, &alpha, (const void*)a, at, lda, (const void*)b, bt, ldb, &beta,
	                  (void*)c, ct, ldc, 68, -1);
}

static int qt_gemm_batched(uintptr_t h, int ta, int tb, int m, int n, int k, uintptr_t a, int at, int lda, long long sa,
                           uintptr_t b, int bt, int ldb, long long sb, uintptr_t c, int ct, int ldc, long long sc, int count) {
	float alpha = 1.f, beta = 0.f;
	return qt_gemm_batched_fn((void*)h, ta, tb, m, n, k, &alpha, (const void*)a, at, lda, sa, (const void*)b, bt, ldb, sb,
	                          &beta, (void*)c, ct, ldc, sc, count, 68, -1);
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// cuBLAS enum values (cublas_api.h, library_types.h).
const (
	blasOpN   = 0
	blasOpT   = 1
	dtypeF32  = 0  // CUDA_R_32F
	dtypeBF16 = 14 // CUDA_R_16BF
)

var blasStatus = map[C.int]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

type cublas struct {
	lib    string
	handle C.uintptr_t
}

func blasErr(call string, s C.int) error {
	if s == 0 {
		return nil
	}
	name := blasStatus[s]
	if name == "" {
		name = fmt.Sprintf("status %d", int(s))
	}
	return fmt.Errorf("autograd: %s: %s", call, name)
}

// Blas loads cuBLAS on first use.
func (d *Device) Blas() (string, error) {
	if d.blas != nil {
		return d.blas.lib, nil
	}
	var tried []string
	for _, name := range []string{"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"} {
		cs := C.CString(name)
		rc := C.qt_cublas_open(cs)
		C.free(unsafe.Pointer(cs))
		if rc == 1 {
			tried = append(tried, C.GoString(C.qt_dlerror()))
			continue
		}
		if rc == 2 {
			return "", fmt.Errorf("autograd: %s lacks cublasGemmEx or cublasStridedBatchedEx", name)
		}
		b := &cublas{lib: name}
		if err := blasErr("cublasCreate", C.qt_cublas_create(&b.handle)); err != nil {
			return "", err
		}
		if err := blasErr("cublasSetStream", C.qt_cublas_set_stream(b.handle, C.uintptr_t(d.rawStream()))); err != nil {
			return "", err
		}
		d.blas = b
		return name, nil
	}
	return "", fmt.Errorf("autograd: cuBLAS not found (%v); put the CUDA libraries' directory (e.g. /usr/local/cuda/lib64) in LD_LIBRARY_PATH", tried)
}

func (b *cublas) close() {
	if b != nil {
		C.qt_cublas_destroy(b.handle)
	}
}

func ptr(b *Buffer) C.uintptr_t { return C.uintptr_t(b.Ptr) }

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
	beta := C.float(0)
	if accumulate {
		beta = 1
	}
	// Column-major: y^T [n, m] = W [n, k] (W^T stored as k x n) . x^T [k, m].
	return blasErr(fmt.Sprintf("cublasGemmEx [%d, %d, %d]", m, n, k),
		C.qt_gemm(d.blas.handle, blasOpT, blasOpN, C.int(n), C.int(m), C.int(k), ptr(w), dtypeBF16, C.int(k), ptr(x), dtypeBF16, C.int(k), beta, ptr(y), C.int(yt), C.int(ldy)))
}

// gemmBatched is cublasGemmStridedBatchedEx in cuBLAS's column-major terms.
func (d *Device) gemmBatched(ta, tb, m, n, k int, a *Buffer, at, lda int, sa int64, b *Buffer, bt, ldb int, sb int64, c *Buffer, ct, ldc int, sc int64, count int) error {
	if _, err := d.Blas(); err != nil {
		return err
	}
	return blasErr(fmt.Sprintf("cublasGemmStridedBatchedEx [%d, %d, %d] x %d", m, n, k, count),
		C.qt_gemm_batched(d.blas.handle, C.int(ta), C.int(tb), C.int(m), C.int(n), C.int(k), ptr(a), C.int(at), C.int(lda), C.longlong(sa),
			ptr(b), C.int(bt), C.int(ldb), C.longlong(sb), ptr(c), C.int(ct), C.int(ldc), C.longlong(sc), C.int(count)))
}
