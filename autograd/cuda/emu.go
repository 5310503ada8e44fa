//go:build cudaemu && !qtcuda

package cuda

// The emulated driver: the backend on the CPU, for machines without a GPU. Device memory is
// C memory from autograd/cuda/kernels/emu, kernels run through emu.Launch, the cuBLAS products
// through internal/hostblas. There is one device, ordinal 0, of 16 GiB. Everything runs when
// it is called, in call order, so the stream, the events and synchronize have nothing to
// wait for; but a stream capture records the stream's work instead of running it, and a
// graph launch runs the recorded work again, as CUDA graphs do. A synchronous call during a
// capture fails and invalidates it, as in CU_STREAM_CAPTURE_MODE_THREAD_LOCAL. Copies check
// that their bytes lie in one allocation; kernels are not checked. Timings (events,
// CopyBandwidth, GemvBandwidth) measure the CPU and say nothing of a GPU.
//
// The copy stream's copies into page-locked memory run as late as CUDA may run them: when
// the stream or the host waits for an event recorded on the copy stream after them (or at
// synchronize), so a copy the stream's later kernels overwrite the source of, or host memory
// read before its event was waited for, shows up as wrong data. Cheap misuse is an error: a
// copy on the copy stream not ordered after all the stream's work issued before it (record
// an event on the stream and copyWaitEvent first), and a synchronous call that writes
// device memory a pending copy reads, reads or writes host memory a pending copy writes,
// or frees memory a pending copy uses.

import (
	"fmt"
	"runtime"
	"slices"
	"time"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd/cuda/kernels/emu"
	"github.com/qwen-tune/qwen-tune/autograd/internal/hostblas"
)

// emuMemory is the emulated device's memory.
const emuMemory = 16 << 30

// Emulated reports the emulated driver (-tags cudaemu): kernels run on the CPU, and cuBLAS's
// products sum in one order whatever their shapes.
const Emulated = true

type (
	devModule   struct{}
	devFunction = string // the kernel's name
	devEvent    = *emuEvent
)

// emuEvent is an event: when it was last recorded, and on which stream after what (the
// stream's work issued then, or the copy stream's copies).
type emuEvent struct {
	at       time.Time
	recorded bool
	onCopies bool
	seq      int
}

// emuCopy is a copy the copy stream has yet to run.
type emuCopy struct {
	seq   int
	dst   unsafe.Pointer
	src   devPtr
	bytes int64
}

// emuError is a CUresult of the emulated driver and what caused it.
type emuError struct {
	result string
	why    string
}

func (e *emuError) Error() string { return e.result + " (emulated CUDA: " + e.why + ")" }

type emuDriver struct {
	sizes     map[devPtr]int64 // the allocations
	allocated int64
	capturing bool
	invalid   error          // why the capture in progress is invalidated
	recorded  []func() error // the work the capture in progress recorded
	graphs    map[devGraph][]func() error
	execs     map[devGraphExec][]func() error
	handles   uintptr // the last graph handle given
	blas      bool
	hostSizes map[unsafe.Pointer]int64 // the page-locked host allocations
	// the stream's work issued so far, the part of it the copy stream waited for, the copy
	// stream's copies issued and those it has yet to run
	issued, copyWaited int
	copied             int
	pending            []emuCopy
}

// openDriver opens the emulated device.
func openDriver(ordinal int) (driver, string, error) {
	if ordinal != 0 {
		return nil, "", cudaErr("cuDeviceGet", &emuError{"CUDA_ERROR_INVALID_DEVICE", fmt.Sprintf("device %d of one", ordinal)})
	}
	e := &emuDriver{sizes: map[devPtr]int64{}, hostSizes: map[unsafe.Pointer]int64{}, graphs: map[devGraph][]func() error{}, execs: map[devGraphExec][]func() error{}}
	return e, "emulated CUDA (CPU)", nil
}

// stream runs f, the stream's next work, or records it during a capture.
func (e *emuDriver) stream(f func() error) error {
	e.issued++
	if e.capturing {
		e.recorded = append(e.recorded, f)
		return nil
	}
	return f()
}

// synchronous refuses call during a capture and invalidates the capture.
func (e *emuDriver) synchronous(call string) error {
	if !e.capturing {
		return nil
	}
	err := &emuError{"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", call + " during a stream capture"}
	if e.invalid == nil {
		e.invalid = err
	}
	return err
}

// pointer is p as a Go pointer (device memory is host memory here).
func (p devPtr) pointer() unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// bytes is device memory [p, p+n), which must lie in one allocation.
func (e *emuDriver) bytes(p devPtr, n int64) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	for base, size := range e.sizes {
		if p >= base && n > 0 && int64(p-base)+n <= size {
			return unsafe.Slice((*byte)(p.pointer()), n), nil
		}
	}
	return nil, &emuError{"CUDA_ERROR_INVALID_VALUE", fmt.Sprintf("%d bytes at %#x are not in one allocation", n, uintptr(p))}
}

// loadModule refuses during a stream capture, as a synchronous driver call would end it: a
// program that is captured must load its lazy modules when it is compiled.
func (e *emuDriver) loadModule(string) (devModule, error) {
	return devModule{}, e.synchronous("cuModuleLoadData")
}

func (e *emuDriver) moduleFunction(_ devModule, name string) (string, error) { return name, nil }

func (e *emuDriver) memInfo() (free, total int64, err error) {
	return emuMemory - e.allocated, emuMemory, nil
}

func (e *emuDriver) memAlloc(bytes int64) (devPtr, error) {
	if err := e.synchronous("cuMemAlloc"); err != nil {
		return 0, err
	}
	if bytes <= 0 {
		return 0, &emuError{"CUDA_ERROR_INVALID_VALUE", "allocating 0 bytes"}
	}
	if e.allocated+bytes > emuMemory {
		return 0, &emuError{"CUDA_ERROR_OUT_OF_MEMORY", fmt.Sprintf("%d bytes asked, %d of %d free", bytes, emuMemory-e.allocated, int64(emuMemory))}
	}
	p := devPtr(emu.Alloc(bytes))
	e.sizes[p] = bytes
	e.allocated += bytes
	return p, nil
}

func (e *emuDriver) memFree(p devPtr) error {
	if err := e.synchronous("cuMemFree"); err != nil {
		return err
	}
	size, ok := e.sizes[p]
	if !ok {
		return &emuError{"CUDA_ERROR_INVALID_VALUE", fmt.Sprintf("freeing %#x, not an allocation", uintptr(p))}
	}
	if err := e.race("cuMemFree", p, size, nil, 0); err != nil {
		return err
	}
	emu.Free(uintptr(p))
	delete(e.sizes, p)
	e.allocated -= size
	return nil
}

func (e *emuDriver) memcpyHtoD(dst devPtr, src unsafe.Pointer, bytes int64) error {
	if err := e.synchronous("cuMemcpyHtoD"); err != nil {
		return err
	}
	if err := e.race("cuMemcpyHtoD", dst, bytes, src, bytes); err != nil {
		return err
	}
	d, err := e.bytes(dst, bytes)
	if err != nil {
		return err
	}
	copy(d, unsafe.Slice((*byte)(src), bytes))
	return nil
}

func (e *emuDriver) memcpyDtoH(dst unsafe.Pointer, src devPtr, bytes int64) error {
	if err := e.synchronous("cuMemcpyDtoH"); err != nil {
		return err
	}
	if err := e.race("cuMemcpyDtoH", 0, 0, dst, bytes); err != nil {
		return err
	}
	s, err := e.bytes(src, bytes)
	if err != nil {
		return err
	}
	copy(unsafe.Slice((*byte)(dst), bytes), s)
	return nil
}

func (e *emuDriver) memcpyDtoD(dst, src devPtr, bytes int64) error {
	if err := e.synchronous("cuMemcpyDtoD"); err != nil {
		return err
	}
	if err := e.race("cuMemcpyDtoD", dst, bytes, nil, 0); err != nil {
		return err
	}
	return e.copyDtoD(dst, src, bytes)()
}

func (e *emuDriver) memcpyDtoDAsync(dst, src devPtr, bytes int64) error {
	return e.stream(e.copyDtoD(dst, src, bytes))
}

// copyDtoD is a device copy, its ranges checked when it runs.
func (e *emuDriver) copyDtoD(dst, src devPtr, bytes int64) func() error {
	return func() error {
		d, err := e.bytes(dst, bytes)
		if err != nil {
			return err
		}
		s, err := e.bytes(src, bytes)
		if err != nil {
			return err
		}
		copy(d, s)
		return nil
	}
}

func (e *emuDriver) memsetD8(p devPtr, v byte, n int64) error {
	if err := e.synchronous("cuMemsetD8"); err != nil {
		return err
	}
	if err := e.race("cuMemsetD8", p, n, nil, 0); err != nil {
		return err
	}
	b, err := e.bytes(p, n)
	if err != nil {
		return err
	}
	for i := range b {
		b[i] = v
	}
	return nil
}

func (e *emuDriver) memsetD32(p devPtr, v uint32, n int64) error {
	if err := e.synchronous("cuMemsetD32"); err != nil {
		return err
	}
	if p%4 != 0 {
		return &emuError{"CUDA_ERROR_INVALID_VALUE", fmt.Sprintf("cuMemsetD32 at %#x, not 4-byte aligned", uintptr(p))}
	}
	if err := e.race("cuMemsetD32", p, 4*n, nil, 0); err != nil {
		return err
	}
	b, err := e.bytes(p, 4*n)
	if err != nil || n == 0 {
		return err
	}
	w := unsafe.Slice((*uint32)(unsafe.Pointer(&b[0])), n)
	for i := range w {
		w[i] = v
	}
	return nil
}

func (e *emuDriver) synchronize() error {
	if err := e.synchronous("cuCtxSynchronize"); err != nil {
		return err
	}
	return e.runCopies(e.copied + len(e.pending))
}

func (e *emuDriver) launch(name string, grid, block, shared int, params []uint64) error {
	if grid < 1 || grid > 1<<31-1 || block < 1 || block > 1024 || shared < 0 {
		return &emuError{"CUDA_ERROR_INVALID_VALUE", fmt.Sprintf("grid %d, block %d, shared %d", grid, block, shared)}
	}
	if e.capturing {
		params = slices.Clone(params) // the caller reuses its slots
	}
	return e.stream(func() error {
		return emu.Launch(name, [3]int{grid, 1, 1}, [3]int{block, 1, 1}, shared, params)
	})
}

func (e *emuDriver) eventCreate() (*emuEvent, error) { return &emuEvent{}, nil }

func (e *emuDriver) eventDestroy(ev **emuEvent) error {
	if *ev == nil {
		return &emuError{"CUDA_ERROR_INVALID_HANDLE", "destroying a destroyed event"}
	}
	*ev = nil
	return nil
}

func (e *emuDriver) eventRecord(ev *emuEvent) error {
	err := e.stream(func() error {
		ev.at, ev.recorded = time.Now(), true
		return nil
	})
	ev.onCopies, ev.seq = false, e.issued
	return err
}

func (e *emuDriver) eventSynchronize(ev *emuEvent) error {
	if err := e.synchronous("cuEventSynchronize"); err != nil {
		return err
	}
	if ev.onCopies {
		return e.runCopies(ev.seq)
	}
	return nil
}

func (e *emuDriver) eventElapsed(start, end *emuEvent) (float64, error) {
	if !start.recorded || !end.recorded {
		return 0, &emuError{"CUDA_ERROR_INVALID_HANDLE", "elapsed time of an event never recorded"}
	}
	return float64(end.at.Sub(start.at).Nanoseconds()) / 1e6, nil
}

func (e *emuDriver) memAllocHost(bytes int64) (unsafe.Pointer, error) {
	if err := e.synchronous("cuMemAllocHost"); err != nil {
		return nil, err
	}
	if bytes <= 0 {
		return nil, &emuError{"CUDA_ERROR_INVALID_VALUE", "allocating 0 bytes of host memory"}
	}
	p := devPtr(emu.Alloc(bytes)).pointer()
	e.hostSizes[p] = bytes
	return p, nil
}

func (e *emuDriver) memFreeHost(p unsafe.Pointer) error {
	if err := e.synchronous("cuMemFreeHost"); err != nil {
		return err
	}
	size, ok := e.hostSizes[p]
	if !ok {
		return &emuError{"CUDA_ERROR_INVALID_VALUE", fmt.Sprintf("freeing host memory at %p, not an allocation", p)}
	}
	if err := e.race("cuMemFreeHost", 0, 0, p, size); err != nil {
		return err
	}
	emu.Free(uintptr(p))
	delete(e.hostSizes, p)
	return nil
}

// hostBytes is page-locked memory [p, p+n), which must lie in one allocation.
func (e *emuDriver) hostBytes(p unsafe.Pointer, n int64) ([]byte, error) {
	for base, size := range e.hostSizes {
		if off := uintptr(p) - uintptr(base); uintptr(p) >= uintptr(base) && int64(off)+n <= size {
			return unsafe.Slice((*byte)(p), n), nil
		}
	}
	return nil, &emuError{"CUDA_ERROR_INVALID_VALUE", fmt.Sprintf("%d bytes at %p are not in one page-locked allocation", n, p)}
}

func (e *emuDriver) memcpyDtoHAsync(dst unsafe.Pointer, src devPtr, bytes int64) error {
	if _, err := e.bytes(src, bytes); err != nil {
		return err
	}
	if _, err := e.hostBytes(dst, bytes); err != nil {
		return err
	}
	if e.copyWaited < e.issued {
		return &emuError{"race", "a copy on the copy stream not ordered after the stream's work before it (record an event there and wait for it on the copy stream)"}
	}
	e.pending = append(e.pending, emuCopy{seq: e.copied + len(e.pending) + 1, dst: dst, src: src, bytes: bytes})
	return nil
}

func (e *emuDriver) copyEventRecord(ev *emuEvent) error {
	ev.at, ev.recorded, ev.onCopies, ev.seq = time.Now(), true, true, e.copied+len(e.pending)
	return nil
}

func (e *emuDriver) copyWaitEvent(ev *emuEvent) error {
	if ev.recorded && !ev.onCopies {
		e.copyWaited = max(e.copyWaited, ev.seq)
	}
	return nil
}

// streamWaitEvent runs the copies the event follows: the stream's later work comes after
// them. It is refused during a capture (the executor captures no copy stream).
func (e *emuDriver) streamWaitEvent(ev *emuEvent) error {
	if e.capturing {
		return e.synchronous("cuStreamWaitEvent")
	}
	if ev.recorded && ev.onCopies {
		return e.runCopies(ev.seq)
	}
	return nil
}

// runCopies runs the copy stream's copies up to number seq.
func (e *emuDriver) runCopies(seq int) error {
	for len(e.pending) > 0 && e.pending[0].seq <= seq {
		c := e.pending[0]
		e.pending = e.pending[1:]
		e.copied = c.seq
		s, err := e.bytes(c.src, c.bytes)
		if err != nil {
			return err
		}
		d, err := e.hostBytes(c.dst, c.bytes)
		if err != nil {
			return err
		}
		copy(d, s)
	}
	return nil
}

// race refuses a synchronous call that writes (or frees) device bytes [dev, dev+devN) a
// pending copy reads, or uses host bytes [host, host+hostN) a pending copy writes.
func (e *emuDriver) race(call string, dev devPtr, devN int64, host unsafe.Pointer, hostN int64) error {
	for _, c := range e.pending {
		if devN > 0 && dev < c.src+devPtr(c.bytes) && c.src < dev+devPtr(devN) {
			return &emuError{"race", call + " of device memory a copy on the copy stream has yet to read (synchronize its event first)"}
		}
		if hostN > 0 && uintptr(host) < uintptr(c.dst)+uintptr(c.bytes) && uintptr(c.dst) < uintptr(host)+uintptr(hostN) {
			return &emuError{"race", call + " of host memory a copy on the copy stream has yet to write (synchronize its event first)"}
		}
	}
	return nil
}

func (e *emuDriver) beginCapture() error {
	if e.capturing {
		return &emuError{"CUDA_ERROR_ILLEGAL_STATE", "the stream is already being captured"}
	}
	e.capturing, e.invalid, e.recorded = true, nil, nil
	return nil
}

func (e *emuDriver) endCapture() (devGraph, error) {
	if !e.capturing {
		return 0, &emuError{"CUDA_ERROR_ILLEGAL_STATE", "the stream is not being captured"}
	}
	work, invalid := e.recorded, e.invalid
	e.capturing, e.invalid, e.recorded = false, nil, nil
	if invalid != nil {
		return 0, &emuError{"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", invalid.Error()}
	}
	e.handles++
	g := devGraph(e.handles)
	e.graphs[g] = work
	return g, nil
}

func (e *emuDriver) instantiate(g devGraph) (devGraphExec, error) {
	work, ok := e.graphs[g]
	if !ok {
		return 0, &emuError{"CUDA_ERROR_INVALID_VALUE", "instantiating a graph that does not exist"}
	}
	e.handles++
	x := devGraphExec(e.handles)
	e.execs[x] = work
	return x, nil
}

func (e *emuDriver) graphLaunch(x devGraphExec) error {
	work, ok := e.execs[x]
	if !ok {
		return &emuError{"CUDA_ERROR_INVALID_HANDLE", "launching a graph that does not exist"}
	}
	return e.stream(func() error {
		for i, f := range work {
			if err := f(); err != nil {
				return fmt.Errorf("graph node %d of %d: %w", i+1, len(work), err)
			}
		}
		return nil
	})
}

func (e *emuDriver) graphDestroy(g devGraph, x devGraphExec) {
	delete(e.execs, x)
	delete(e.graphs, g)
}

func (e *emuDriver) blasOpen() (string, error) {
	e.blas = true
	return "cuBLAS emulated on the CPU (internal/hostblas)", nil
}

func (e *emuDriver) blasClose() { e.blas = false }

func (e *emuDriver) gemmEx(ta, tb, m, n, k int, a devPtr, at, lda int, b devPtr, bt, ldb int, beta float32, c devPtr, ct, ldc int) error {
	return e.gemm(ta, tb, m, n, k, 1, a, at, lda, 0, b, bt, ldb, 0, beta, c, ct, ldc, 0, 1)
}

func (e *emuDriver) gemmStridedBatchedEx(ta, tb, m, n, k int, alpha float32, a devPtr, at, lda int, sa int64, b devPtr, bt, ldb int, sb int64,
	beta float32, c devPtr, ct, ldc int, sc int64, count int) error {
	return e.gemm(ta, tb, m, n, k, alpha, a, at, lda, sa, b, bt, ldb, sb, beta, c, ct, ldc, sc, count)
}

// gemm is cublasGemmStridedBatchedEx: the arguments are checked when it is called, the
// product computed on the stream.
func (e *emuDriver) gemm(ta, tb, m, n, k int, alpha float32, a devPtr, at, lda int, sa int64, b devPtr, bt, ldb int, sb int64, beta float32,
	c devPtr, ct, ldc int, sc int64, count int) error {
	if !e.blas {
		return blasStatus(1) // CUBLAS_STATUS_NOT_INITIALIZED
	}
	if s := hostblas.Check(ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc, sa, sb, sc, count); s != hostblas.StatusSuccess {
		return blasStatus(s)
	}
	na, nb, nc := hostblas.Sizes(ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc, sa, sb, sc, count)
	return e.stream(func() error {
		ab, err := e.bytes(a, na)
		if err != nil {
			return fmt.Errorf("%w: A: %v", blasStatus(13), err) // CUBLAS_STATUS_EXECUTION_FAILED
		}
		bb, err := e.bytes(b, nb)
		if err != nil {
			return fmt.Errorf("%w: B: %v", blasStatus(13), err)
		}
		cb, err := e.bytes(c, nc)
		if err != nil {
			return fmt.Errorf("%w: C: %v", blasStatus(13), err)
		}
		if s := hostblas.GemmStridedBatchedEx(runtime.GOMAXPROCS(0), ta, tb, m, n, k, alpha, ab, at, lda, sa, bb, bt, ldb, sb, beta, cb, ct, ldc, sc, count); s != hostblas.StatusSuccess {
			return blasStatus(s)
		}
		return nil
	})
}

func (e *emuDriver) streamDestroy() error { return nil }

// ctxRelease frees what is still allocated, as destroying a context does.
func (e *emuDriver) ctxRelease() error {
	for p := range e.sizes {
		emu.Free(uintptr(p))
	}
	clear(e.sizes)
	e.allocated = 0
	for p := range e.hostSizes {
		emu.Free(uintptr(p))
	}
	clear(e.hostSizes)
	e.pending = nil
	return nil
}
