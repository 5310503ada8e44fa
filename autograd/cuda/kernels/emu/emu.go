//go:build cudaemu

// Package emu runs the CUDA kernels of autograd/cuda/kernels on the CPU, for tests on machines
// without a GPU. The .cu files are compiled as C++20 by the C++ compiler cgo uses, against
// cuda_emu.h, which supplies the part of CUDA C++ they use (thread and block indices,
// __shared__, __syncthreads, warp shuffles, atomicAdd, the fast math intrinsics).
//
// How it runs: the blocks of a grid are shared out among a few worker OS threads; each worker
// runs one block at a time, the block's threads as fibers of that OS thread, which take turns
// at every __syncthreads and shuffle (so __shared__ variables are thread-local statics).
// Launches run one at a time and return when every block has run.
//
// Limits: timings mean nothing; the threads of a block never run at the same time, so a
// missing __syncthreads goes unnoticed unless the order the fibers take turns in exposes it;
// __syncthreads and shuffles must be reached by every thread of the block or warp that has not
// returned (as CUDA requires of correct code; a barrier that cannot complete aborts the
// process, naming the kernel) and shuffle masks are not checked; dynamic shared memory
// (extern __shared__) is not supported; memory is plain C memory with no bounds checks (a bad
// address kills the process with SIGSEGV); a fiber's stack is 64 KiB; the fibers need
// ucontext (glibc). The arithmetic is the host's: float operations round as on the
// device but no fused multiply-adds are formed (cuda_emu.h turns contraction off, even for a
// host with FMA; nvcc forms them, except with the _rn intrinsics), double math functions come
// from the C library, and the fast intrinsics (__expf, __logf, __fdividef, rsqrtf) follow the
// device's approximations only in their main error.
//
// The package builds only with -tags cudaemu. Each k_<name>.cc includes ../<name>.cu, a file
// outside this package that Go's build cache does not watch: after editing a .cu, run
// `go clean -cache` (or touch its k_<name>.cc) before testing, or the old kernel runs.
package emu

/*
#cgo CXXFLAGS: -std=c++20 -O2 -fno-strict-aliasing -I${SRCDIR}
#cgo LDFLAGS: -lstdc++ -lm -lpthread
#include <stdint.h>
#include <stdlib.h>

uintptr_t emu_alloc(int64_t n);
void emu_free(uintptr_t p);
int emu_kernel_count(void);
const char* emu_kernel_name(int i);
int emu_kernel_params(const char* name);
void emu_launch(const char* name, const int* grid, const int* block, const uint64_t* params);
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// Alloc returns n bytes of zeroed C memory (emulated device memory; never 0, also for n == 0),
// aligned to 256 bytes as cudaMalloc's.
func Alloc(n int64) uintptr {
	p := uintptr(C.emu_alloc(C.int64_t(n)))
	if p == 0 {
		panic(fmt.Sprintf("emu: out of memory allocating %d bytes", n))
	}
	return p
}

// Free releases memory from Alloc (0 is ignored).
func Free(p uintptr) {
	if p != 0 {
		C.emu_free(C.uintptr_t(p))
	}
}

// Launch runs the kernel `name` (an extern "C" __global__ function of autograd/cuda/kernels/*.cu)
// over grid x block threads with `shared` bytes of dynamic shared memory (which no kernel
// uses: it is only checked not to be negative); params holds one 64-bit slot per kernel
// parameter as cuLaunchKernel reads them (each argument in the low bytes of its slot;
// pointers are addresses from Alloc). It returns an error for an unknown kernel, a wrong
// parameter count, or a block of more than 1024 threads (or an empty grid or block), and
// otherwise returns when every block has run.
func Launch(name string, grid, block [3]int, shared int, params []uint64) error {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	want := int(C.emu_kernel_params(cname))
	switch {
	case want < 0:
		return fmt.Errorf("emu: no kernel %q", name)
	case len(params) != want:
		return fmt.Errorf("emu: kernel %s takes %d parameters, got %d", name, want, len(params))
	case block[0] < 1 || block[1] < 1 || block[2] < 1 || block[0]*block[1]*block[2] > 1024 || block[2] > 64:
		return fmt.Errorf("emu: kernel %s: block %v (at most 1024 threads, z at most 64)", name, block)
	case grid[0] < 1 || grid[1] < 1 || grid[2] < 1 || grid[1] > 65535 || grid[2] > 65535 || grid[0] > 1<<31-1:
		return fmt.Errorf("emu: kernel %s: grid %v", name, grid)
	case shared < 0:
		return fmt.Errorf("emu: kernel %s: %d bytes of shared memory", name, shared)
	}
	g := [3]C.int{C.int(grid[0]), C.int(grid[1]), C.int(grid[2])}
	b := [3]C.int{C.int(block[0]), C.int(block[1]), C.int(block[2])}
	var p *C.uint64_t
	if len(params) > 0 {
		p = (*C.uint64_t)(unsafe.Pointer(&params[0]))
	}
	C.emu_launch(cname, &g[0], &b[0], p)
	return nil
}

// Kernels lists the names Launch knows, sorted.
func Kernels() []string {
	names := make([]string, int(C.emu_kernel_count()))
	for i := range names {
		names[i] = C.GoString(C.emu_kernel_name(C.int(i)))
	}
	return names
}
