//go:build qtcuda

package cuda

// The CUDA driver behind Device: gorgonia.org/cu for the driver API, cgo for stream capture
// and CUDA graphs, and cuBLAS loaded with dlopen. Every call the backend makes into CUDA is
// here, one method of cuDriver per call.

/*
#cgo LDFLAGS: -lcuda -ldl
#include <cuda.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>

static int qt_begin_capture(uintptr_t s) {
	return cuStreamBeginCapture((CUstream)s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
}
static int qt_end_capture(uintptr_t s, uintptr_t* graph) {
	CUgraph g = 0;
	int rc = cuStreamEndCapture((CUstream)s, &g);
	*graph = (uintptr_t)g;
	return rc;
}
static int qt_instantiate(uintptr_t graph, uintptr_t* exec) {
	CUgraphExec e = 0;
	int rc = cuGraphInstantiateWithFlags(&e, (CUgraph)graph, 0);
	*exec = (uintptr_t)e;
	return rc;
}
static int qt_graph_launch(uintptr_t exec, uintptr_t s) { return cuGraphLaunch((CUgraphExec)exec, (CUstream)s); }
static void qt_graph_destroy(uintptr_t graph, uintptr_t exec) {
	if (exec) cuGraphExecDestroy((CUgraphExec)exec);
	if (graph) cuGraphDestroy((CUgraph)graph);
}

static void* qt_mem_alloc_host(size_t bytes, int* rc) {
	void* p = 0;
	*rc = (int)cuMemAllocHost(&p, bytes);
	return p;
}

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

static int qt_gemm_batched(uintptr_t h, int ta, int tb, int m, int n, int k, float alpha, uintptr_t a, int at, int lda,
                           long long sa, uintptr_t b, int bt, int ldb, long long sb, float beta, uintptr_t c, int ct, int ldc,
                           long long sc, int count) {
	return qt_gemm_batched_fn((void*)h, ta, tb, m, n, k, &alpha, (const void*)a, at, lda, sa, (const void*)b, bt, ldb, sb,
	                          &beta, (void*)c, ct, ldc, sc, count, 68, -1);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"gorgonia.org/cu"
)

// Emulated reports the emulated driver (-tags cudaemu); this is the GPU's.
const Emulated = false

type (
	devModule   = cu.Module
	devFunction = cu.Function
	devEvent    = cu.Event
)

// cuDriver is GPU ordinal's primary context, current on the thread that opened it, and one
// stream on it.
type cuDriver struct {
	dev    cu.Device
	ctx    cu.CUContext
	stream cu.Stream        // every launch and cuBLAS call; capturable into CUDA graphs
	copies cu.Stream        // the copy stream: non-blocking, ordered by events alone
	ptrs   []unsafe.Pointer // the addresses of the launch's parameter slots
	blas   *cublas
}

type cublas struct {
	lib    string
	handle C.uintptr_t
}

// openDriver makes GPU ordinal's primary context current and creates the stream; it returns
// the GPU's name.
func openDriver(ordinal int) (driver, string, error) {
	dev, err := cu.GetDevice(ordinal)
	if err != nil {
		return nil, "", cudaErr("cuDeviceGet", err)
	}
	c := &cuDriver{dev: dev}
	name, err := dev.Name()
	if err != nil {
		return nil, "", cudaErr("cuDeviceGetName", err)
	}
	if c.ctx, err = dev.RetainPrimaryCtx(); err != nil {
		return nil, "", cudaErr("cuDevicePrimaryCtxRetain", err)
	}
	if err := cu.SetCurrentContext(c.ctx); err != nil {
		return nil, "", cudaErr("cuCtxSetCurrent", err)
	}
	if c.stream, err = cu.MakeStream(cu.DefaultStream); err != nil {
		return nil, "", cudaErr("cuStreamCreate", err)
	}
	if c.copies, err = cu.MakeStream(cu.NonBlocking); err != nil {
		return nil, "", cudaErr("cuStreamCreate(copy stream)", err)
	}
	return c, name, nil
}

// rawStream is the CUstream inside c.stream (gorgonia.org/cu's Stream holds only it).
func (c *cuDriver) rawStream() C.uintptr_t {
	return C.uintptr_t(*(*uintptr)(unsafe.Pointer(&c.stream)))
}

func (c *cuDriver) loadModule(ptx string) (cu.Module, error) { return cu.LoadData(ptx) }

func (c *cuDriver) moduleFunction(m cu.Module, name string) (cu.Function, error) {
	return m.Function(name)
}

func (c *cuDriver) memInfo() (free, total int64, err error) { return cu.MemInfo() }

func (c *cuDriver) memAlloc(bytes int64) (devPtr, error) {
	p, err := cu.MemAlloc(bytes)
	return devPtr(p), err
}

func (c *cuDriver) memFree(p devPtr) error { return cu.MemFree(cu.DevicePtr(p)) }

func (c *cuDriver) memcpyHtoD(dst devPtr, src unsafe.Pointer, bytes int64) error {
	return cu.MemcpyHtoD(cu.DevicePtr(dst), src, bytes)
}

func (c *cuDriver) memcpyDtoH(dst unsafe.Pointer, src devPtr, bytes int64) error {
	return cu.MemcpyDtoH(dst, cu.DevicePtr(src), bytes)
}

func (c *cuDriver) memcpyDtoD(dst, src devPtr, bytes int64) error {
	return cu.MemcpyDtoD(cu.DevicePtr(dst), cu.DevicePtr(src), bytes)
}

func (c *cuDriver) memcpyDtoDAsync(dst, src devPtr, bytes int64) error {
	return cu.MemcpyDtoDAsync(cu.DevicePtr(dst), cu.DevicePtr(src), bytes, c.stream)
}

func (c *cuDriver) memAllocHost(bytes int64) (unsafe.Pointer, error) {
	var rc C.int
	p := C.qt_mem_alloc_host(C.size_t(bytes), &rc)
	return p, cudaResult(rc)
}

func (c *cuDriver) memFreeHost(p unsafe.Pointer) error { return cu.MemFreeHost(p) }

func (c *cuDriver) memcpyDtoHAsync(dst unsafe.Pointer, src devPtr, bytes int64) error {
	return cu.MemcpyDtoHAsync(dst, cu.DevicePtr(src), bytes, c.copies)
}

func (c *cuDriver) copyEventRecord(e cu.Event) error { return e.Record(c.copies) }

func (c *cuDriver) copyWaitEvent(e cu.Event) error { return c.copies.Wait(e, 0) }

func (c *cuDriver) streamWaitEvent(e cu.Event) error { return c.stream.Wait(e, 0) }

func (c *cuDriver) memsetD8(p devPtr, v byte, n int64) error {
	return cu.MemsetD8(cu.DevicePtr(p), v, n)
}

func (c *cuDriver) memsetD32(p devPtr, v uint32, n int64) error {
	return cu.MemsetD32(cu.DevicePtr(p), v, n)
}

func (c *cuDriver) synchronize() error { return cu.Synchronize() }

func (c *cuDriver) launch(fn cu.Function, grid, block, shared int, params []uint64) error {
	c.ptrs = c.ptrs[:0]
	for i := range params {
		c.ptrs = append(c.ptrs, unsafe.Pointer(&params[i]))
	}
	return fn.Launch(grid, 1, 1, block, 1, 1, shared, c.stream, c.ptrs)
}

func (c *cuDriver) eventCreate() (cu.Event, error) { return cu.MakeEvent(cu.DefaultEvent) }

func (c *cuDriver) eventDestroy(e *cu.Event) error { return cu.DestroyEvent(e) }

func (c *cuDriver) eventRecord(e cu.Event) error { return e.Record(c.stream) }

func (c *cuDriver) eventSynchronize(e cu.Event) error { return e.Synchronize() }

func (c *cuDriver) eventElapsed(start, end cu.Event) (float64, error) { return start.Elapsed(end) }

// cudaResult is rc as an error (nil for CUDA_SUCCESS).
func cudaResult(rc C.int) error {
	if rc == 0 {
		return nil
	}
	return cudaStatus(rc)
}

func (c *cuDriver) beginCapture() error { return cudaResult(C.qt_begin_capture(c.rawStream())) }

func (c *cuDriver) endCapture() (devGraph, error) {
	var g C.uintptr_t
	rc := C.qt_end_capture(c.rawStream(), &g)
	return devGraph(g), cudaResult(rc)
}

func (c *cuDriver) instantiate(g devGraph) (devGraphExec, error) {
	var e C.uintptr_t
	rc := C.qt_instantiate(C.uintptr_t(g), &e)
	return devGraphExec(e), cudaResult(rc)
}

func (c *cuDriver) graphLaunch(e devGraphExec) error {
	return cudaResult(C.qt_graph_launch(C.uintptr_t(e), c.rawStream()))
}

func (c *cuDriver) graphDestroy(g devGraph, e devGraphExec) {
	C.qt_graph_destroy(C.uintptr_t(g), C.uintptr_t(e))
}

// blasResult is s as an error (nil for CUBLAS_STATUS_SUCCESS).
func blasResult(s C.int) error {
	if s == 0 {
		return nil
	}
	return blasStatus(s)
}

func (c *cuDriver) blasOpen() (string, error) {
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
			return "", fmt.Errorf("cuda: %s lacks cublasGemmEx or cublasStridedBatchedEx", name)
		}
		b := &cublas{lib: name}
		if err := blasErr("cublasCreate", blasResult(C.qt_cublas_create(&b.handle))); err != nil {
			return "", err
		}
		if err := blasErr("cublasSetStream", blasResult(C.qt_cublas_set_stream(b.handle, c.rawStream()))); err != nil {
			return "", err
		}
		c.blas = b
		return name, nil
	}
	return "", fmt.Errorf("cuda: cuBLAS not found (%v); put the CUDA libraries' directory (e.g. /usr/local/cuda/lib64) in LD_LIBRARY_PATH", tried)
}

func (c *cuDriver) blasClose() {
	if c.blas != nil {
		C.qt_cublas_destroy(c.blas.handle)
	}
}

func (c *cuDriver) gemmEx(ta, tb, m, n, k int, a devPtr, at, lda int, b devPtr, bt, ldb int, beta float32, y devPtr, yt, ldy int) error {
	return blasResult(C.qt_gemm(c.blas.handle, C.int(ta), C.int(tb), C.int(m), C.int(n), C.int(k), C.uintptr_t(a), C.int(at), C.int(lda),
		C.uintptr_t(b), C.int(bt), C.int(ldb), C.float(beta), C.uintptr_t(y), C.int(yt), C.int(ldy)))
}

func (c *cuDriver) gemmStridedBatchedEx(ta, tb, m, n, k int, alpha float32, a devPtr, at, lda int, sa int64, b devPtr, bt, ldb int, sb int64,
	beta float32, y devPtr, yt, ldy int, sy int64, count int) error {
	return blasResult(C.qt_gemm_batched(c.blas.handle, C.int(ta), C.int(tb), C.int(m), C.int(n), C.int(k), C.float(alpha), C.uintptr_t(a), C.int(at), C.int(lda), C.longlong(sa),
		C.uintptr_t(b), C.int(bt), C.int(ldb), C.longlong(sb), C.float(beta), C.uintptr_t(y), C.int(yt), C.int(ldy), C.longlong(sy), C.int(count)))
}

func (c *cuDriver) streamDestroy() error {
	return errors.Join(c.copies.Destroy(), c.stream.Destroy())
}

func (c *cuDriver) ctxRelease() error { return c.dev.ReleasePrimaryCtx() }
