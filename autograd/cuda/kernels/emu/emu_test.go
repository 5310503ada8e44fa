//go:build cudaemu

package emu

import (
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"
	"unsafe"
)

// TestKernelsRegistered: every extern "C" __global__ kernel of the .cu files is known to
// Launch, and Launch knows no other.
func TestKernelsRegistered(t *testing.T) {
	files, err := filepath.Glob("../*.cu")
	if err != nil || len(files) == 0 {
		t.Fatalf("no .cu files (%v)", err)
	}
	decl := regexp.MustCompile(`extern "C" __global__ void (?:__launch_bounds__\([^)]*\)\s+)?(\w+)\(`)
	var want []string
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range decl.FindAllSubmatch(src, -1) {
			want = append(want, string(m[1]))
		}
	}
	got := Kernels()
	for _, name := range want {
		if !slices.Contains(got, name) {
			t.Errorf("kernel %s of the .cu files is not registered (EMU_KERNEL in k_*.cc)", name)
		}
	}
	for _, name := range got {
		if !slices.Contains(want, name) {
			t.Errorf("registered kernel %s is in no .cu file", name)
		}
	}
}

func TestLaunchErrors(t *testing.T) {
	p := Alloc(64)
	defer Free(p)
	args := []uint64{uint64(p), uint64(p), uint64(p), 16}
	for _, c := range []struct {
		name        string
		grid, block [3]int
		params      []uint64
	}{
		{"no_such_kernel", [3]int{1, 1, 1}, [3]int{32, 1, 1}, args},
		{"add_f32", [3]int{1, 1, 1}, [3]int{32, 1, 1}, args[:3]},
		{"add_f32", [3]int{1, 1, 1}, [3]int{1025, 1, 1}, args},
		{"add_f32", [3]int{1, 1, 1}, [3]int{512, 2, 2}, args},
		{"add_f32", [3]int{1, 1, 1}, [3]int{0, 1, 1}, args},
		{"add_f32", [3]int{0, 1, 1}, [3]int{32, 1, 1}, args},
	} {
		if err := Launch(c.name, c.grid, c.block, 0, c.params); err == nil {
			t.Errorf("%s grid %v block %v with %d parameters: no error", c.name, c.grid, c.block, len(c.params))
		}
	}
	if err := Launch("add_f32", [3]int{1, 1, 1}, [3]int{32, 1, 1}, 0, args); err != nil {
		t.Error(err)
	}
}

// TestPartialWarp runs add_f32's grid-stride loop with blocks of 50 threads (a warp and a
// partial one) on a grid smaller than the data.
func TestPartialWarp(t *testing.T) {
	const n = 1000
	a, b, y := Alloc(4*n), Alloc(4*n), Alloc(4*n)
	defer Free(a)
	defer Free(b)
	defer Free(y)
	for i := range n {
		f32s(a, n)[i], f32s(b, n)[i] = float32(i), float32(2*i)
	}
	if err := Launch("add_f32", [3]int{3, 1, 1}, [3]int{50, 1, 1}, 0, []uint64{uint64(y), uint64(a), uint64(b), n}); err != nil {
		t.Fatal(err)
	}
	for i, v := range f32s(y, n) {
		if v != float32(3*i) {
			t.Fatalf("y[%d] = %g, want %d", i, v, 3*i)
		}
	}
}

func TestAlloc(t *testing.T) {
	for _, n := range []int64{0, 1, 1000, 1 << 20} {
		p := Alloc(n)
		if p == 0 || p%256 != 0 {
			t.Errorf("Alloc(%d) = %#x", n, p)
		}
		for i, b := range unsafe.Slice((*byte)(at(p)), n) {
			if b != 0 {
				t.Fatalf("Alloc(%d): byte %d is %d", n, i, b)
			}
		}
		Free(p)
	}
	Free(0)
}

// at is an address from Alloc as an unsafe.Pointer (C memory, which the garbage collector
// never moves or frees). Not inlined: Go 1.26's compiler crashes (disjointTypes: one of
// arguments is not a pointer) inlining a copy of constant size from the result.
//
//go:noinline
func at(p uintptr) unsafe.Pointer { return unsafe.Add(nil, p) }

func f32s(p uintptr, n int) []float32 { return unsafe.Slice((*float32)(at(p)), n) }

// rmsNorm launches rmsnorm_bf16 over rows of h with a unit weight and returns the result.
func rmsNorm(t *testing.T, x []float32, h, threads int) []float32 {
	n := len(x) / h
	xp, wp, yp := Alloc(int64(4*len(x))), Alloc(int64(2*h)), Alloc(int64(4*len(x)))
	defer Free(xp)
	defer Free(wp)
	defer Free(yp)
	copy(f32s(xp, len(x)), x)
	for i := range h {
		*(*uint16)(at(wp + uintptr(2*i))) = 0x3f80 // 1 in bf16
	}
	eps := float32(1e-6)
	params := []uint64{uint64(yp), uint64(xp), uint64(wp), uint64(uint32(h)), uint64(math.Float32bits(eps))}
	if err := Launch("rmsnorm_bf16", [3]int{n, 1, 1}, [3]int{threads, 1, 1}, 0, params); err != nil {
		t.Fatal(err)
	}
	return slices.Clone(f32s(yp, len(x)))
}

// TestBlockReduction checks the emulated barriers and shuffles through rmsnorm_bf16, whose
// sum of squares is a block reduction (warp shuffles, __syncthreads, __shared__), for block
// sizes from one warp to 1024 threads, from several goroutines at once.
func TestBlockReduction(t *testing.T) {
	const n, h = 3, 1000
	x := make([]float32, n*h)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.37) * float64(1+i%7))
	}
	want := make([]float64, n*h)
	for r := range n {
		var ss float64
		for _, v := range x[r*h : (r+1)*h] {
			ss += float64(v) * float64(v)
		}
		s := 1 / math.Sqrt(ss/h+1e-6)
		for j := range h {
			want[r*h+j] = float64(x[r*h+j]) * s
		}
	}
	var wg sync.WaitGroup
	for _, threads := range []int{32, 96, 256, 1024} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := rmsNorm(t, x, h, threads)
			for i := range got {
				// float32 sums in another order than float64's: measured 1.2e-7 at most
				if d := math.Abs(float64(got[i]) - want[i]); d > 1.2e-6*math.Max(1, math.Abs(want[i])) {
					t.Errorf("%d threads: y[%d] = %g, want %g", threads, i, got[i], want[i])
					return
				}
			}
		}()
	}
	wg.Wait()
}
