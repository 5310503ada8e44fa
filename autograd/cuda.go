//go:build qtcuda

package autograd

// The CUDA runtime: one GPU driven from one goroutine locked to its OS thread (a CUDA context
// is current per thread), the device's primary context (shared with cuBLAS), the kernels of
// kernels/*.cu compiled to PTX and embedded, a pool of device buffers reused across steps,
// and one launcher per kernel that checks its preconditions. Built only with -tags cuda:
// gorgonia.org/cu initialises the driver in its package init and exits the process when
// there is no GPU.

import (
	"embed"
	"fmt"
	"io/fs"
	"math"
	"runtime"
	"sort"
	"strings"
	"unsafe"

	"gorgonia.org/cu"
)

//go:embed kernels/*.ptx
var ptxFS embed.FS

// Device is an open GPU. Every method must be called from the goroutine that opened it.
type Device struct {
	Name   string
	Memory int64
	dev    cu.Device
	ctx    cu.CUContext
	fns    map[string]cu.Function
	pool   map[int64][]cu.DevicePtr
	params []uint64 // argument slots of the launch in progress
}

// CUDAError names the CUDA call that failed.
type CUDAError struct {
	Call string
	Err  error
}

func (e *CUDAError) Error() string { return fmt.Sprintf("autograd: CUDA %s: %v", e.Call, e.Err) }

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
	dev, err := cu.GetDevice(ordinal)
	if err != nil {
		return nil, cudaErr("cuDeviceGet", err)
	}
	d := &Device{dev: dev, fns: map[string]cu.Function{}, pool: map[int64][]cu.DevicePtr{}}
	if d.Name, err = dev.Name(); err != nil {
		return nil, cudaErr("cuDeviceGetName", err)
	}
	if d.ctx, err = dev.RetainPrimaryCtx(); err != nil {
		return nil, cudaErr("cuDevicePrimaryCtxRetain", err)
	}
	if err := cu.SetCurrentContext(d.ctx); err != nil {
		return nil, cudaErr("cuCtxSetCurrent", err)
	}
	if _, d.Memory, err = cu.MemInfo(); err != nil {
		return nil, cudaErr("cuMemGetInfo", err)
	}
	files, err := fs.Glob(ptxFS, "kernels/*.ptx")
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	for _, f := range files {
		ptx, err := ptxFS.ReadFile(f)
		if err != nil {
			return nil, err
		}
		mod, err := cu.LoadData(string(ptx))
		if err != nil {
			return nil, cudaErr("cuModuleLoadData("+f+")", err)
		}
		for _, line := range strings.Split(string(ptx), "\n") {
			if name, ok := strings.CutPrefix(line, ".visible .entry "); ok {
				name = strings.TrimSuffix(name, "(")
				fn, err := mod.Function(name)
				if err != nil {
					return nil, cudaErr("cuModuleGetFunction("+name+")", err)
				}
				d.fns[name] = fn
			}
		}
	}
	return d, nil
}

// Close frees pooled buffers and releases the primary context.
func (d *Device) Close() error {
	for _, ptrs := range d.pool {
		for _, p := range ptrs {
			cu.MemFree(p)
		}
	}
	d.pool = nil
	err := cudaErr("cuDevicePrimaryCtxRelease", d.dev.ReleasePrimaryCtx())
	runtime.UnlockOSThread()
	return err
}

// Buffer is device memory.
type Buffer struct {
	Ptr   cu.DevicePtr
	Bytes int64
}

// Alloc returns a buffer of at least bytes, reusing a freed one of the same size; running out
// of memory is an error naming what was being allocated and what was free.
func (d *Device) Alloc(bytes int64, what string) (*Buffer, error) {
	if ptrs := d.pool[bytes]; len(ptrs) > 0 {
		d.pool[bytes] = ptrs[:len(ptrs)-1]
		return &Buffer{ptrs[len(ptrs)-1], bytes}, nil
	}
	p, err := cu.MemAlloc(max(bytes, 4))
	if err != nil {
		free, total, _ := cu.MemInfo()
		return nil, fmt.Errorf("autograd: allocating %s (%.1f MiB) on %s: %v; %.1f of %.1f GiB free", what, float64(bytes)/(1<<20), d.Name, err, float64(free)/(1<<30), float64(total)/(1<<30))
	}
	return &Buffer{p, bytes}, nil
}

// Free returns a buffer to the pool.
func (d *Device) Free(b *Buffer) {
	if b != nil {
		d.pool[b.Bytes] = append(d.pool[b.Bytes], b.Ptr)
	}
}

// Upload copies a host slice into a new buffer.
func Upload[T any](d *Device, src []T, what string) (*Buffer, error) {
	var zero T
	bytes := int64(len(src)) * int64(unsafe.Sizeof(zero))
	b, err := d.Alloc(bytes, what)
	if err != nil || len(src) == 0 {
		return b, err
	}
	return b, cudaErr("cuMemcpyHtoD("+what+")", cu.MemcpyHtoD(b.Ptr, unsafe.Pointer(&src[0]), bytes))
}

// Download copies a buffer into dst.
func Download[T any](d *Device, dst []T, b *Buffer) error {
	var zero T
	bytes := int64(len(dst)) * int64(unsafe.Sizeof(zero))
	if bytes > b.Bytes {
		return fmt.Errorf("autograd: downloading %d bytes from a buffer of %d", bytes, b.Bytes)
	}
	if len(dst) == 0 {
		return nil
	}
	return cudaErr("cuMemcpyDtoH", cu.MemcpyDtoH(unsafe.Pointer(&dst[0]), b.Ptr, bytes))
}

// Poison fills a float32 buffer with NaN, so elements a kernel fails to write show up.
func (d *Device) Poison(b *Buffer) error {
	return cudaErr("cuMemsetD32", cu.MemsetD32(b.Ptr, 0x7fc00000, b.Bytes/4))
}

// Sync waits for the device.
func (d *Device) Sync() error { return cudaErr("cuCtxSynchronize", cu.Synchronize()) }

// launch runs kernel name; args are *Buffer, int, float32 or int64 (each in a 64-bit slot).
func (d *Device) launch(name string, grid, block, shared int, args ...any) error {
	fn, ok := d.fns[name]
	if !ok {
		return fmt.Errorf("autograd: kernel %s is not in the embedded PTX", name)
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
		default:
			return fmt.Errorf("autograd: kernel %s: argument of type %T", name, a)
		}
	}
	ptrs := make([]unsafe.Pointer, len(d.params))
	for i := range d.params {
		ptrs[i] = unsafe.Pointer(&d.params[i])
	}
	if err := fn.Launch(grid, 1, 1, block, 1, 1, shared, cu.NoStream, ptrs); err != nil {
		return fmt.Errorf("autograd: launching %s (grid %d, block %d, shared %d): %v", name, grid, block, shared, err)
	}
	return nil
}

func need(ok bool, format string, args ...any) error {
	if ok {
		return nil
	}
	return fmt.Errorf("autograd: "+format, args...)
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

// Rotary is rotary.cu in place on x [b, t, heads, dim] with per-row bases [b] (float64).
func (d *Device) Rotary(x, base *Buffer, b, t, heads, dim, past int) error {
	if err := need(dim%2 == 0 && x.Bytes >= int64(b*t*heads*dim*4) && base.Bytes >= int64(b*8), "Rotary: shapes [%d, %d, %d, %d]", b, t, heads, dim); err != nil {
		return err
	}
	return d.launch("rotary", b*t, 256, 0, x, base, t, heads, dim, past)
}

// GatherBF16 is gather.cu: y [len(ids), h] from the bf16 table w [vocab, h].
func (d *Device) GatherBF16(y, w, ids *Buffer, n, h, vocab int) error {
	if err := need(ids.Bytes >= int64(n*4) && y.Bytes >= int64(n*h*4), "Gather: buffers too small for %d rows", n); err != nil {
		return err
	}
	return d.launch("gather_bf16", n, 256, 0, y, w, ids, h, vocab)
}

// GemvBF16 is gemv.cu: y [n] = W [n, k] x [k] (+ bias [n]), k a multiple of 8.
func (d *Device) GemvBF16(y, x, w, bias *Buffer, n, k int) error {
	if err := need(k%8 == 0 && w.Bytes >= int64(n*k*2) && x.Bytes >= int64(k*4) && y.Bytes >= int64(n*4), "GEMV: [%d, %d] needs k a multiple of 8 and buffers that fit", n, k); err != nil {
		return err
	}
	const warps = 8
	return d.launch("gemv_bf16", (n+warps-1)/warps, 32*warps, 0, y, x, w, bias, n, k)
}

// attnChunk is CHUNK of attention_decode.cu.
const attnChunk = 256

// AttentionDecode is attention_decode.cu: one query per (b, head) over length cached keys,
// split into chunks of 256 keys (flash-decoding) and merged.
func (d *Device) AttentionDecode(out, q, k, v *Buffer, b, heads, dim, maxLen, length int, scale float32) error {
	if err := need(length >= 1 && length <= maxLen && dim <= 128, "AttentionDecode: %d keys of a cache of %d, head dim %d (at most 128)", length, maxLen, dim); err != nil {
		return err
	}
	chunks := (length + attnChunk - 1) / attnChunk
	partOut, err := d.Alloc(int64(b*heads*chunks*dim)*4, "attention partial outputs")
	if err != nil {
		return err
	}
	defer d.Free(partOut)
	partML, err := d.Alloc(int64(b*heads*chunks*2)*4, "attention partial max and sum")
	if err != nil {
		return err
	}
	defer d.Free(partML)
	if err := d.launch("attention_decode_part", b*heads*chunks, 256, 0, partOut, partML, q, k, v, heads, dim, maxLen, length, scale); err != nil {
		return err
	}
	return d.launch("attention_decode_merge", b*heads, 128, 0, out, partOut, partML, dim, length)
}

// AddRMSNormBF16 is add_rmsnorm.cu: x += r, then y = RMSNorm(x) * w, rows of h.
func (d *Device) AddRMSNormBF16(y, x, r, w *Buffer, n, h int, eps float32) error {
	if err := need(x.Bytes >= int64(n*h*4) && r.Bytes >= int64(n*h*4) && y.Bytes >= int64(n*h*4) && w.Bytes >= int64(h*2), "AddRMSNorm: buffers too small for [%d, %d]", n, h); err != nil {
		return err
	}
	return d.launch("add_rmsnorm_bf16", n, 256, 0, y, x, r, w, h, eps)
}

// KVAppend is kv_append.cu: rows of width floats of k and v (row stride srcStride) into the
// caches [b, maxLen, width] at positions pos..pos+t-1.
func (d *Device) KVAppend(kc, vc, k, v *Buffer, b, t, width, srcStride, maxLen, pos int) error {
	if err := need(pos+t <= maxLen && kc.Bytes >= int64(b*maxLen*width*4) && vc.Bytes >= int64(b*maxLen*width*4), "KVAppend: positions %d..%d of a cache of %d", pos, pos+t-1, maxLen); err != nil {
		return err
	}
	return d.launch("kv_append", b*t, 256, 0, kc, vc, k, v, t, width, srcStride, maxLen, pos)
}

// Slice is a view of bytes [off, off+n) of b.
func (b *Buffer) Slice(off, n int64) *Buffer {
	return &Buffer{Ptr: b.Ptr + cu.DevicePtr(off), Bytes: n}
}
