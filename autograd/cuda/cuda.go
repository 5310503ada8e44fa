//go:build qtcuda || cudaemu

package cuda

// The CUDA runtime: one GPU driven from one goroutine locked to its OS thread (a CUDA context
// is current per thread), the device's primary context (shared with cuBLAS), the kernels of
// kernels/*.cu compiled to PTX and embedded, a pool of device buffers reused across steps,
// and one launcher per kernel that checks its preconditions. Every call into CUDA goes
// through a driver: with -tags qtcuda the CUDA driver API and cuBLAS (driver.go;
// gorgonia.org/cu initialises the driver in its package init and exits the process when
// there is no GPU), with -tags cudaemu alone their emulation on the CPU (emu.go: the
// kernels run by autograd/cuda/kernels/emu, the products by internal/hostblas).

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"runtime"
	"sort"
	"strings"
	"time"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd"
	"gorgonia.org/tensor"
)

//go:embed kernels/*.ptx
var ptxFS embed.FS

// devPtr is a device address (CUdeviceptr).
type devPtr uintptr

// driver is what the backend asks of CUDA: the driver API and cuBLAS (cuDriver,
// driver.go) or their emulation on the CPU (emuDriver, emu.go). Each method is
// the one call named beside it; errors are the call's own, the callers name the call. A
// driver owns one context and one stream: launches, the asynchronous device copy, event
// records, graph launches and the cuBLAS products go on that stream in call order (so a
// stream capture records them all); the other copies, the memsets and synchronize are
// synchronous. A second stream, the copy stream, non-blocking (ordered with the stream and
// with the synchronous calls only through events), takes the copies into page-locked host
// memory that overlap the stream's work: copyWaitEvent orders it after an event of the
// stream, streamWaitEvent the stream after an event of the copy stream, and the host reads
// what it copied after eventSynchronize of an event recorded there after the copy.
// devModule, devFunction and devEvent are each driver's handles.
type driver interface {
	loadModule(ptx string) (devModule, error)                     // cuModuleLoadData
	moduleFunction(m devModule, name string) (devFunction, error) // cuModuleGetFunction
	memInfo() (free, total int64, err error)                      // cuMemGetInfo
	memAlloc(bytes int64) (devPtr, error)                         // cuMemAlloc
	memFree(p devPtr) error                                       // cuMemFree
	memcpyHtoD(dst devPtr, src unsafe.Pointer, bytes int64) error // cuMemcpyHtoD
	memcpyDtoH(dst unsafe.Pointer, src devPtr, bytes int64) error // cuMemcpyDtoH
	memcpyDtoD(dst, src devPtr, bytes int64) error                // cuMemcpyDtoD
	memcpyDtoDAsync(dst, src devPtr, bytes int64) error           // cuMemcpyDtoDAsync on the stream
	memsetD8(p devPtr, v byte, n int64) error                     // cuMemsetD8
	memsetD32(p devPtr, v uint32, n int64) error                  // cuMemsetD32
	synchronize() error                                           // cuCtxSynchronize
	// launch is cuLaunchKernel on the stream: grid x 1 x 1 blocks of block x 1 x 1 threads,
	// shared bytes of dynamic shared memory, params one 64-bit slot per kernel parameter.
	launch(fn devFunction, grid, block, shared int, params []uint64) error
	eventCreate() (devEvent, error)                           // cuEventCreate (CU_EVENT_DEFAULT)
	eventDestroy(e *devEvent) error                           // cuEventDestroy
	eventRecord(e devEvent) error                             // cuEventRecord on the stream
	eventSynchronize(e devEvent) error                        // cuEventSynchronize
	eventElapsed(start, end devEvent) (ms float64, err error) // cuEventElapsedTime
	beginCapture() error                                      // cuStreamBeginCapture (CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
	endCapture() (devGraph, error)                            // cuStreamEndCapture
	instantiate(g devGraph) (devGraphExec, error)             // cuGraphInstantiateWithFlags (flags 0)
	graphLaunch(e devGraphExec) error                         // cuGraphLaunch on the stream
	graphDestroy(g devGraph, e devGraphExec)                  // cuGraphExecDestroy, cuGraphDestroy (of those not 0)
	// the page-locked host memory and the copy stream (see above)
	memAllocHost(bytes int64) (unsafe.Pointer, error)                  // cuMemAllocHost
	memFreeHost(p unsafe.Pointer) error                                // cuMemFreeHost
	memcpyDtoHAsync(dst unsafe.Pointer, src devPtr, bytes int64) error // cuMemcpyDtoHAsync on the copy stream
	copyEventRecord(e devEvent) error                                  // cuEventRecord on the copy stream
	copyWaitEvent(e devEvent) error                                    // cuStreamWaitEvent(copy stream, e, 0)
	streamWaitEvent(e devEvent) error                                  // cuStreamWaitEvent(stream, e, 0)
	// blasOpen loads cuBLAS, creates its handle and sets its stream to the driver's (error
	// messages complete); it returns the library's name.
	blasOpen() (lib string, err error)
	blasClose() // cublasDestroy, if blasOpen succeeded
	// gemmEx is cublasGemmEx with alpha 1, CUBLAS_COMPUTE_32F and CUBLAS_GEMM_DEFAULT;
	// gemmStridedBatchedEx is cublasGemmStridedBatchedEx likewise, with its alpha. Their
	// errors are blasStatus values.
	gemmEx(transa, transb, m, n, k int, a devPtr, atype, lda int, b devPtr, btype, ldb int, beta float32, c devPtr, ctype, ldc int) error
	gemmStridedBatchedEx(transa, transb, m, n, k int, alpha float32, a devPtr, atype, lda int, sa int64, b devPtr, btype, ldb int, sb int64,
		beta float32, c devPtr, ctype, ldc int, sc int64, count int) error
	streamDestroy() error // cuStreamDestroy of both streams
	ctxRelease() error    // cuDevicePrimaryCtxRelease
}

// devGraph and devGraphExec are a CUgraph and a CUgraphExec (0: none).
type (
	devGraph     uintptr
	devGraphExec uintptr
)

// cudaStatus is a CUresult other than CUDA_SUCCESS.
type cudaStatus int

func (s cudaStatus) Error() string { return fmt.Sprintf("CUDA error %d", int(s)) }

// Device is an open GPU. Every method must be called from the goroutine that opened it.
type Device struct {
	Name    string
	Memory  int64
	drv     driver
	fns     map[string]devFunction
	lazy    map[string]string // kernels of modules not loaded yet, by name: their PTX file
	pool    map[int64][]devPtr
	params  []uint64 // argument slots of the launch in progress
	blasLib string   // the loaded cuBLAS ("" until Blas)
	// Allocated is the device memory held by this process's buffers (pooled ones included),
	// Peak its highest value since the device was opened.
	Allocated, Peak int64
	caches          map[*autograd.KVCache]*deviceCache
	// weights are the parameters uploaded by Compile, by tensor: the map holds the tensor,
	// so no other tensor (a new model's, over the same memory) can find its buffer
	weights map[*tensor.Dense]*Buffer
	int4    map[*autograd.Int4]*Int4Weights // GPTQ layers uploaded by Compile
	// trained are the weights a ParamSet keeps (by tensor, as weights): its updates write
	// their bf16 copies, which RefreshWeights leaves alone
	trained map[*tensor.Dense]*ParamSet
}

// CUDAError names the CUDA call that failed.
type CUDAError struct {
	Call string
	Err  error
}

func (e *CUDAError) Error() string { return fmt.Sprintf("cuda: CUDA %s: %v", e.Call, e.Err) }

func cudaErr(call string, err error) error {
	if err == nil {
		return nil
	}
	return &CUDAError{Call: call, Err: err}
}

// OpenDevice locks the calling goroutine to its OS thread, makes GPU ordinal's primary
// context current and loads the kernels.
func OpenDevice(ordinal int) (*Device, error) {
	runtime.LockOSThread()
	drv, name, err := openDriver(ordinal)
	if err != nil {
		return nil, err
	}
	d := &Device{Name: name, drv: drv, fns: map[string]devFunction{}, pool: map[int64][]devPtr{}, caches: map[*autograd.KVCache]*deviceCache{}, weights: map[*tensor.Dense]*Buffer{}, int4: map[*autograd.Int4]*Int4Weights{}}
	if _, d.Memory, err = d.drv.memInfo(); err != nil {
		return nil, cudaErr("cuMemGetInfo", err)
	}
	files, err := fs.Glob(ptxFS, "kernels/*.ptx")
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	d.lazy = map[string]string{}
	for _, f := range files {
		if !lazyModules[f] {
			if err := d.loadPTX(f); err != nil {
				return nil, err
			}
			continue
		}
		ptx, err := ptxFS.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, name := range ptxEntries(string(ptx)) {
			d.lazy[name] = f
		}
	}
	return d, nil
}

// lazyModules are the PTX files loaded when one of their kernels is first launched instead
// of when the device opens: the training, optimizer, Int4 and GPTQ kernels, which inference
// on dense weights never needs.
var lazyModules = map[string]bool{"kernels/train.ptx": true, "kernels/int4.ptx": true, "kernels/chunkloss.ptx": true, "kernels/optim.ptx": true, "kernels/embed_grad.ptx": true, "kernels/gptq.ptx": true}

// loadPTX loads the embedded module f and registers its kernels.
func (d *Device) loadPTX(f string) error {
	ptx, err := ptxFS.ReadFile(f)
	if err != nil {
		return err
	}
	mod, err := d.drv.loadModule(string(ptx))
	if err != nil {
		return cudaErr("cuModuleLoadData("+f+")", err)
	}
	fns := map[string]devFunction{}
	for _, name := range ptxEntries(string(ptx)) {
		fn, err := d.drv.moduleFunction(mod, name)
		if err != nil {
			return cudaErr("cuModuleGetFunction("+name+")", err)
		}
		fns[name] = fn
	}
	maps.Copy(d.fns, fns) // all of the module's kernels, or none
	return nil
}

// ptxEntries are the kernel names a PTX module defines.
func ptxEntries(ptx string) []string {
	var names []string
	for _, line := range strings.Split(ptx, "\n") {
		if name, ok := strings.CutPrefix(line, ".visible .entry "); ok {
			names = append(names, strings.TrimSuffix(name, "("))
		}
	}
	return names
}

// Close frees pooled buffers and releases the primary context.
func (d *Device) Close() error {
	d.drv.blasClose()
	for _, c := range d.caches {
		c.free(d)
	}
	d.ReleaseWeights()
	var errs []error
	for _, ptrs := range d.pool {
		for _, p := range ptrs {
			if err := d.drv.memFree(p); err != nil {
				errs = append(errs, cudaErr("cuMemFree", err))
			}
		}
	}
	d.pool = nil
	if err := d.drv.streamDestroy(); err != nil {
		errs = append(errs, cudaErr("cuStreamDestroy", err))
	}
	if err := d.drv.ctxRelease(); err != nil {
		errs = append(errs, cudaErr("cuDevicePrimaryCtxRelease", err))
	}
	runtime.UnlockOSThread()
	return errors.Join(errs...)
}

// Buffer is device memory.
type Buffer struct {
	Ptr   devPtr
	Bytes int64
}

// Alloc returns a buffer of at least bytes, reusing a freed one of the same size; running out
// of memory is an error naming what was being allocated and what was free.
func (d *Device) Alloc(bytes int64, what string) (*Buffer, error) {
	if ptrs := d.pool[bytes]; len(ptrs) > 0 {
		d.pool[bytes] = ptrs[:len(ptrs)-1]
		return &Buffer{ptrs[len(ptrs)-1], bytes}, nil
	}
	p, err := d.drv.memAlloc(max(bytes, 4))
	if err != nil && len(d.pool) > 0 { // give the pooled buffers back and try again
		if terr := d.Trim(); terr != nil {
			return nil, fmt.Errorf("cuda: allocating %s (%.1f MiB) on %s: %v; freeing the pooled buffers: %w", what, float64(bytes)/(1<<20), d.Name, err, terr)
		}
		p, err = d.drv.memAlloc(max(bytes, 4))
	}
	if err != nil {
		free, total, ierr := d.drv.memInfo()
		if ierr != nil {
			return nil, fmt.Errorf("cuda: allocating %s (%.1f MiB) on %s: %v (free memory unknown: %v)", what, float64(bytes)/(1<<20), d.Name, err, ierr)
		}
		return nil, &autograd.AllocError{What: what, Bytes: bytes, Device: d.Name, Err: err, Free: free, Total: total}
	}
	d.Allocated += bytes
	d.Peak = max(d.Peak, d.Allocated)
	return &Buffer{p, bytes}, nil
}

// Trim frees the pooled buffers nobody holds.
func (d *Device) Trim() error {
	for size, ptrs := range d.pool {
		for len(ptrs) > 0 {
			if err := d.drv.memFree(ptrs[len(ptrs)-1]); err != nil {
				d.pool[size] = ptrs
				return cudaErr("cuMemFree", err)
			}
			ptrs = ptrs[:len(ptrs)-1]
			d.Allocated -= size
		}
		delete(d.pool, size)
	}
	return nil
}

// Free returns a buffer to the pool.
func (d *Device) Free(b *Buffer) {
	if b != nil {
		d.pool[b.Bytes] = append(d.pool[b.Bytes], b.Ptr)
	}
}

// Upload copies a host slice into a new buffer. A failed copy frees the buffer and returns
// none.
func Upload[T any](d *Device, src []T, what string) (*Buffer, error) {
	var zero T
	bytes := int64(len(src)) * int64(unsafe.Sizeof(zero))
	b, err := d.Alloc(bytes, what)
	if err != nil || len(src) == 0 {
		return b, err
	}
	if err := cudaErr("cuMemcpyHtoD("+what+")", d.drv.memcpyHtoD(b.Ptr, unsafe.Pointer(&src[0]), bytes)); err != nil {
		d.Free(b)
		return nil, err
	}
	return b, nil
}

// Download copies a buffer into dst.
func Download[T any](d *Device, dst []T, b *Buffer) error {
	var zero T
	bytes := int64(len(dst)) * int64(unsafe.Sizeof(zero))
	if bytes > b.Bytes {
		return fmt.Errorf("cuda: downloading %d bytes from a buffer of %d", bytes, b.Bytes)
	}
	if len(dst) == 0 {
		return nil
	}
	return cudaErr("cuMemcpyDtoH", d.drv.memcpyDtoH(unsafe.Pointer(&dst[0]), b.Ptr, bytes))
}

// Poison fills a buffer with NaN (0x7fc07fc0 is NaN as one float32 and as two bf16), so
// elements a kernel fails to write show up.
func (d *Device) Poison(b *Buffer) error {
	return cudaErr("cuMemsetD32", d.drv.memsetD32(b.Ptr, 0x7fc07fc0, b.Bytes/4))
}

// Sync waits for the device.
func (d *Device) Sync() error { return cudaErr("cuCtxSynchronize", d.drv.synchronize()) }

// copyDtoD is an asynchronous device copy on the device's stream (capturable).
func (d *Device) copyDtoD(dst, src devPtr, bytes int64) error {
	return cudaErr("cuMemcpyDtoDAsync", d.drv.memcpyDtoDAsync(dst, src, bytes))
}

// function is kernel name, its module loaded first if it is a lazy one. A program that will
// be captured in a CUDA graph asks for its lazy kernels when it is compiled: no module is
// loaded during a capture.
func (d *Device) function(name string) (devFunction, error) {
	if f, ok := d.lazy[name]; ok {
		if err := d.loadPTX(f); err != nil {
			var none devFunction
			return none, err
		}
		for k, file := range d.lazy { // every kernel of that module is loaded now
			if file == f {
				delete(d.lazy, k)
			}
		}
	}
	fn, ok := d.fns[name]
	if !ok {
		return fn, fmt.Errorf("cuda: kernel %s is not in the embedded PTX", name)
	}
	return fn, nil
}

// launch runs kernel name; args are *Buffer, int, float32 or int64 (each in a 64-bit slot).
func (d *Device) launch(name string, grid, block, shared int, args ...any) error {
	fn, err := d.function(name)
	if err != nil {
		return err
	}
	d.params = d.params[:0]
	for _, a := range args {
		switch v := a.(type) {
		case *Buffer:
			if v == nil {
				d.params = append(d.params, 0)
			} else {
				d.params = append(d.params, uint64(v.Ptr))
			}
		case int:
			d.params = append(d.params, uint64(uint32(int32(v))))
		case int64:
			d.params = append(d.params, uint64(v))
		case float32:
			d.params = append(d.params, uint64(math.Float32bits(v)))
		case float64:
			d.params = append(d.params, math.Float64bits(v))
		default:
			return fmt.Errorf("cuda: kernel %s: argument of type %T", name, a)
		}
	}
	if err := d.drv.launch(fn, grid, block, shared, d.params); err != nil {
		return fmt.Errorf("cuda: launching %s (grid %d, block %d, shared %d): %v", name, grid, block, shared, err)
	}
	return nil
}

func need(ok bool, format string, args ...any) error {
	if ok {
		return nil
	}
	return fmt.Errorf("cuda: "+format, args...)
}

// RMSNormBF16 is rmsnorm.cu: y, x [n, h] float32, w [h] bf16.
func (d *Device) RMSNormBF16(y, x, w *Buffer, n, h int, eps float32) error {
	if err := need(x.Bytes >= int64(n*h*4) && y.Bytes >= int64(n*h*4) && w.Bytes >= int64(h*2), "RMSNorm: buffers too small for [%d, %d]", n, h); err != nil {
		return err
	}
	return d.launch("rmsnorm_bf16", n, 256, 0, y, x, w, h, eps)
}

// SwiGLU is swiglu.cu over n floats.
func (d *Device) SwiGLU(y, a, g *Buffer, n int64) error {
	if err := need(y.Bytes >= n*4 && a.Bytes >= n*4 && g.Bytes >= n*4, "SwiGLU: buffers too small for %d", n); err != nil {
		return err
	}
	return d.launch("swiglu", int(min((n+255)/256, 65535)), 256, 0, y, a, g, n)
}

// Rotary is rotary.cu: y = rotary(x), [b, t, heads, dim] with (b, t) rows xStride and
// yStride floats apart (y may be x), per-row bases [b] (float64).
func (d *Device) Rotary(y, x, base *Buffer, b, t, heads, dim, past, xStride, yStride int) error {
	rows := int64(b*t-1) + 1
	if err := need(dim%2 == 0 && xStride >= heads*dim && yStride >= heads*dim && x.Bytes >= ((rows-1)*int64(xStride)+int64(heads*dim))*4 &&
		y.Bytes >= ((rows-1)*int64(yStride)+int64(heads*dim))*4 && base.Bytes >= int64(b*8), "Rotary: shapes [%d, %d, %d, %d]", b, t, heads, dim); err != nil {
		return err
	}
	return d.launch("rotary", b*t, 256, 0, y, x, base, t, heads, dim, past, xStride, yStride)
}

// GatherBF16 is gather.cu: y [len(ids), h] from the bf16 table w [vocab, h].
func (d *Device) GatherBF16(y, w, ids *Buffer, n, h, vocab int) error {
	if err := need(ids.Bytes >= int64(n*4) && y.Bytes >= int64(n*h*4), "Gather: buffers too small for %d rows", n); err != nil {
		return err
	}
	return d.launch("gather_bf16", n, 256, 0, y, w, ids, h, vocab)
}

// gemvForceSplit overrides gemvSplit (GemvSplitBandwidth).
var gemvForceSplit int

// gemvSplit is how many warps share a row: one warp per row (eight rows per block) measured
// best on an H200 for Qwen-7B's shapes except the short, wide mlp.c_proj (4 warps per row).
func gemvSplit(n, k int) int {
	if gemvForceSplit > 0 {
		return gemvForceSplit
	}
	if n <= 4096 && k >= 8192 {
		return 4 // mlp.c_proj [4096, 11008]: 3225 GB/s against 3127 with one warp per row (H200)
	}
	return 1
}

// GemvBF16 is gemv.cu: y [n] = W [n, k] x [k] (+ bias [n]), k a multiple of 8.
func (d *Device) GemvBF16(y, x, w, bias *Buffer, n, k int) error {
	if err := need(k%8 == 0 && w.Bytes >= int64(n*k*2) && x.Bytes >= int64(k*4) && y.Bytes >= int64(n*4), "GEMV: [%d, %d] needs k a multiple of 8 and buffers that fit", n, k); err != nil {
		return err
	}
	split := gemvSplit(n, k)
	rpb := 8 / split
	return d.launch("gemv_bf16", (n+rpb-1)/rpb, 256, 0, y, x, w, bias, n, k, split)
}

// GemvSwiGLU is gemv_swiglu_bf16: y [n] = (W1 x) * silu(W2 x), W1, W2 [n, k].
func (d *Device) GemvSwiGLU(y, x, w1, w2 *Buffer, n, k int) error {
	if err := need(k%8 == 0 && w1.Bytes >= int64(n*k*2) && w2.Bytes >= int64(n*k*2) && x.Bytes >= int64(k*4) && y.Bytes >= int64(n*4), "GEMV SwiGLU: [%d, %d] needs k a multiple of 8 and buffers that fit", n, k); err != nil {
		return err
	}
	split := gemvSplit(n, k)
	rpb := 8 / split
	return d.launch("gemv_swiglu_bf16", (n+rpb-1)/rpb, 256, 0, y, x, w1, w2, n, k, split)
}

// RMSNormBF16Out is rmsnorm_bf16_out: y bf16 [n, h].
func (d *Device) RMSNormBF16Out(y, x, w *Buffer, n, h int, eps float32) error {
	if err := need(x.Bytes >= int64(n*h*4) && y.Bytes >= int64(n*h*2) && w.Bytes >= int64(h*2), "RMSNorm: buffers too small for [%d, %d]", n, h); err != nil {
		return err
	}
	return d.launch("rmsnorm_bf16_out", n, 256, 0, y, x, w, h, eps)
}

// AddRMSNormBF16Out is add_rmsnorm_bf16_out: x += r, y bf16 = RMSNorm(x) * w.
func (d *Device) AddRMSNormBF16Out(y, x, r, w *Buffer, n, h int, eps float32) error {
	if err := need(x.Bytes >= int64(n*h*4) && r.Bytes >= int64(n*h*4) && y.Bytes >= int64(n*h*2) && w.Bytes >= int64(h*2), "AddRMSNorm: buffers too small for [%d, %d]", n, h); err != nil {
		return err
	}
	return d.launch("add_rmsnorm_bf16_out", n, 256, 0, y, x, r, w, h, eps)
}

// SwiGLUBF16 is swiglu_bf16: y, a, g bf16 [n].
func (d *Device) SwiGLUBF16(y, a, g *Buffer, n int64) error {
	if err := need(y.Bytes >= n*2 && a.Bytes >= n*2 && g.Bytes >= n*2, "SwiGLU: buffers too small for %d", n); err != nil {
		return err
	}
	return d.launch("swiglu_bf16", grid(n), 256, 0, y, a, g, n)
}

// SwiGLUBF16Out is swiglu_bf16_out: y bf16 [n].
func (d *Device) SwiGLUBF16Out(y, a, g *Buffer, n int64) error {
	if err := need(y.Bytes >= n*2 && a.Bytes >= n*4 && g.Bytes >= n*4, "SwiGLU: buffers too small for %d", n); err != nil {
		return err
	}
	return d.launch("swiglu_bf16_out", grid(n), 256, 0, y, a, g, n)
}

// RotaryQKV is rotary_qkv.cu: q rotated in place in qkv [t, stride], k rotated and v
// appended (bf16) to the caches [maxLen, heads*dim] at past..past+t-1, with invFreq [dim/2]
// (InvFreq of the row's base) and pos holding past (int32 on the device; past is the same
// value, for the bounds check). Offsets in floats.
func (d *Device) RotaryQKV(qkv, kc, vc, invFreq, pos *Buffer, t, heads, dim, past, stride, qOff, kOff, vOff, maxLen int) error {
	width := heads * dim
	if err := need(dim%2 == 0 && past+t <= maxLen && qkv.Bytes >= int64((t-1)*stride+max(qOff, kOff, vOff)+width)*4 && invFreq.Bytes >= int64(dim/2*4) &&
		kc.Bytes >= int64(maxLen*width*2) && vc.Bytes >= int64(maxLen*width*2), "RotaryQKV: %d tokens at %d of a cache of %d", t, past, maxLen); err != nil {
		return err
	}
	return d.launch("rotary_qkv", t*heads, min(dim/2, 128), 0, qkv, kc, vc, invFreq, heads, dim, pos, stride, qOff, kOff, vOff, maxLen)
}

// attnChunk is CHUNK of attention_decode.cu.
const attnChunk = 128

// DecodeParts is the scratch of AttentionDecode for a cache of maxLen positions.
type DecodeParts struct {
	out, ml   *Buffer
	maxChunks int
}

// NewDecodeParts allocates the partial results of b x heads queries over maxLen keys.
func (d *Device) NewDecodeParts(b, heads, dim, maxLen int) (*DecodeParts, error) {
	p := &DecodeParts{maxChunks: (maxLen + attnChunk - 1) / attnChunk}
	var err error
	if p.out, err = d.Alloc(int64(b*heads*p.maxChunks*dim)*4, "attention partial outputs"); err != nil {
		return nil, err
	}
	if p.ml, err = d.Alloc(int64(b*heads*p.maxChunks*2)*4, "attention partial max and sum"); err != nil {
		d.Free(p.out)
		return nil, err
	}
	return p, nil
}

// Free releases the scratch.
func (p *DecodeParts) Free(d *Device) {
	d.Free(p.out)
	d.Free(p.ml)
}

// AttentionDecode is attention_decode.cu: one query per (b, head) at the position held in
// pos (int32 on the device) over the pos+1 cached bf16 keys, in chunks of 128 keys
// (flash-decoding) merged by a second launch; LogN past lognSeq when it is positive.
func (d *Device) AttentionDecode(out, q, k, v *Buffer, parts *DecodeParts, b, heads, dim, maxLen int, pos *Buffer, scale float32, lognSeq int) error {
	if err := need(dim <= 128 && dim%4 == 0 && parts.maxChunks*attnChunk >= maxLen && pos.Bytes >= 4, "AttentionDecode: cache of %d, head dim %d (at most 128, a multiple of 4)", maxLen, dim); err != nil {
		return err
	}
	if err := d.launch("attention_decode_part", b*heads*parts.maxChunks, 256, 0, parts.out, parts.ml, q, k, v, heads, dim, maxLen, pos, scale, lognSeq, parts.maxChunks); err != nil {
		return err
	}
	return d.launch("attention_decode_merge", b*heads, 128, 0, out, parts.out, parts.ml, dim, pos, parts.maxChunks)
}

// AddRMSNormBF16 is add_rmsnorm.cu: x += r, then y = RMSNorm(x) * w, rows of h.
func (d *Device) AddRMSNormBF16(y, x, r, w *Buffer, n, h int, eps float32) error {
	if err := need(x.Bytes >= int64(n*h*4) && r.Bytes >= int64(n*h*4) && y.Bytes >= int64(n*h*4) && w.Bytes >= int64(h*2), "AddRMSNorm: buffers too small for [%d, %d]", n, h); err != nil {
		return err
	}
	return d.launch("add_rmsnorm_bf16", n, 256, 0, y, x, r, w, h, eps)
}

// KVAppend is kv_append.cu: rows of width floats of k and v (row strides kStride, vStride),
// rounded to bf16, into the caches [b, maxLen, width] at positions pos..pos+t-1.
func (d *Device) KVAppend(kc, vc, k, v *Buffer, b, t, width, kStride, vStride, maxLen, pos int) error {
	if err := need(pos+t <= maxLen && kc.Bytes >= int64(b*maxLen*width*2) && vc.Bytes >= int64(b*maxLen*width*2), "KVAppend: positions %d..%d of a cache of %d", pos, pos+t-1, maxLen); err != nil {
		return err
	}
	return d.launch("kv_append", b*t, 256, 0, kc, vc, k, v, t, width, kStride, vStride, maxLen, pos)
}

// CausalSoftmax is causal_softmax.cu: the scores s [rows, length] of rows = heads * t
// queries at positions past.. become bf16 probabilities in place (row stride 2*length bf16
// elements); LogN with lognSeq > 0 over keys keys.
func (d *Device) CausalSoftmax(s *Buffer, heads, t, length, past int, scale float32, lognSeq, keys int) error {
	n := int64(heads * t * length)
	if err := need(s.Bytes >= n*4 && length >= 1, "CausalSoftmax: [%d, %d, %d]", heads, t, length); err != nil {
		return err
	}
	return d.launch("causal_softmax", heads*t, 256, 0, s, t, length, past, scale, lognSeq, keys)
}

func grid(n int64) int { return int(min((n+255)/256, 65535)) }

// Add is add_f32.cu: y = a + b over n floats.
func (d *Device) Add(y, a, b *Buffer, n int64) error {
	if err := need(y.Bytes >= n*4 && a.Bytes >= n*4 && b.Bytes >= n*4, "Add: buffers too small for %d", n); err != nil {
		return err
	}
	return d.launch("add_f32", grid(n), 256, 0, y, a, b, n)
}

// ToBF16Rows is to_bf16_rows: y [rows, cols] bf16 from float32 rows xStride apart.
func (d *Device) ToBF16Rows(y, x *Buffer, rows, cols, xStride int) error {
	if err := need(y.Bytes >= int64(rows*cols*2) && x.Bytes >= (int64(rows-1)*int64(xStride)+int64(cols))*4, "ToBF16: [%d, %d]", rows, cols); err != nil {
		return err
	}
	return d.launch("to_bf16_rows", grid(int64(rows*cols)), 256, 0, y, x, rows, cols, xStride)
}

// BiasBF16 is bias_bf16: y [rows, cols] += bias [cols].
func (d *Device) BiasBF16(y, bias *Buffer, rows, cols int) error {
	if err := need(y.Bytes >= int64(rows*cols*4) && bias.Bytes >= int64(cols*2), "Bias: [%d, %d]", rows, cols); err != nil {
		return err
	}
	return d.launch("bias_bf16", grid(int64(rows*cols)), 256, 0, y, bias, rows, cols)
}

// SampleToken is sample.cu: the next id from logits [n] (seen [n] bytes marks the ids the
// repetition penalty applies to; nil for none), u the uniform draw; out [1] int32, work [n] scratch.
func (d *Device) SampleToken(out, work, logits, seen *Buffer, n int, p autograd.SampleParams, u float64) error {
	if err := need(logits.Bytes >= int64(n*4) && work.Bytes >= int64(n*4) && out.Bytes >= 4 && (seen == nil || seen.Bytes >= int64(n)), "Sample: %d logits", n); err != nil {
		return err
	}
	pen := float32(p.RepetitionPenalty)
	if pen == 0 {
		pen = 1
	}
	invT := float32(1)
	if p.Temperature > 0 {
		invT = float32(1 / p.Temperature)
	}
	greedy := 0
	if p.Greedy {
		greedy = 1
	}
	return d.launch("sample_token", 1, 1024, 0, out, work, logits, seen, n, pen, greedy, invT, p.TopK, float32(p.TopP), u)
}

// CopyBandwidth times device-to-device copies of 1 GiB and returns GB/s with bytes read and
// written both counted (the best of five). On the emulated driver it times the host's memory
// copy, which says nothing of a GPU.
func (d *Device) CopyBandwidth() (float64, error) {
	const size = 1 << 30
	src, err := d.Alloc(size, "copy bandwidth source")
	if err != nil {
		return 0, err
	}
	defer d.Free(src)
	dst, err := d.Alloc(size, "copy bandwidth destination")
	if err != nil {
		return 0, err
	}
	defer d.Free(dst)
	best := 0.0
	for r := 0; r < 6; r++ {
		if err := d.Sync(); err != nil {
			return 0, err
		}
		start := time.Now()
		if err := cudaErr("cuMemcpyDtoD", d.drv.memcpyDtoD(dst.Ptr, src.Ptr, size)); err != nil {
			return 0, err
		}
		if err := d.Sync(); err != nil {
			return 0, err
		}
		if r > 0 {
			best = max(best, 2*size/time.Since(start).Seconds()/1e9)
		}
	}
	return best, nil
}

// Slice is a view of bytes [off, off+n) of b.
func (b *Buffer) Slice(off, n int64) *Buffer {
	return &Buffer{Ptr: b.Ptr + devPtr(off), Bytes: n}
}
