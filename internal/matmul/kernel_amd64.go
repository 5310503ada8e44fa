//go:build amd64

package matmul

import "golang.org/x/sys/cpu"

func kernel12x32AVX512(k int, a, b, c *float32, ldc int)
func kernel12x32SetAVX512(k int, a, b, c *float32, ldc int)
func kernel6x16AVX2(k int, a, b, c *float32, ldc int)
func kernel6x16SetAVX2(k int, a, b, c *float32, ldc int)
func dot4F32AVX512(k int, x, w *float32, ldw int, out *float32)
func dot4BF16AVX512(k int, x *float32, w *uint16, ldw int, out *float32)
func dot4F32AVX2(k int, x, w *float32, ldw int, out *float32)
func dot4BF16AVX2(k int, x *float32, w *uint16, ldw int, out *float32)
func trans8F32AVX2(kb int, src *float32, ld int, dst *float32, dstride int)
func trans8BF16AVX2(kb int, src *uint16, ld int, dst *float32, dstride int)
func widenBF16AVX2(n int, dst *float32, src *uint16)
func fmaLoopAVX512(n int)
func fmaLoopAVX2(n int)

// The AVX-512 tile is 12 rows x 32 columns: 24 accumulators, two B vectors and two
// broadcasts in the 32 registers (14 x 32, with 28 accumulators, measured no faster on a
// Zen 4 core, which issues one 512-bit multiply-add a cycle); AVX2's is 6 x 16 in 16.
var (
	avx512Kernel = &microKernel{name: "avx512", mr: 12, nr: 32, mc: 120, kc: 1024, nc: 1024,
		run: tile(12, 32, kernel12x32AVX512), set: tile(12, 32, kernel12x32SetAVX512),
		dots: func(k int, x []float32, w Matrix, out *[4]float32) {
			dots4(k, 16, x, w, out, dot4F32AVX512, dot4BF16AVX512)
		},
		trans8: trans8AVX2}
	avx2Kernel = &microKernel{name: "avx2", mr: 6, nr: 16, mc: 120, kc: 1024, nc: 1024,
		run: tile(6, 16, kernel6x16AVX2), set: tile(6, 16, kernel6x16SetAVX2),
		dots: func(k int, x []float32, w Matrix, out *[4]float32) {
			dots4(k, 8, x, w, out, dot4F32AVX2, dot4BF16AVX2)
		},
		trans8: trans8AVX2}
)

// tile wraps an assembly micro-kernel of an mr x nr tile, checking the bounds of what it
// reads and writes first.
func tile(mr, nr int, f func(k int, a, b, c *float32, ldc int)) func(k int, a, b, c []float32, ldc int) {
	return func(k int, a, b, c []float32, ldc int) {
		_, _, _ = a[mr*k-1], b[nr*k-1], c[(mr-1)*ldc+nr-1]
		f(k, &a[0], &b[0], &c[0], ldc)
	}
}

// bestKernel is the widest micro-kernel this CPU runs.
func bestKernel() *microKernel { return gemmKernels()[0] }

// hasAVX512 reports the AVX-512 subsets the kernels use: F, and BW for widening bf16 words
// into a ZMM register (VPMOVZXWD), which AVX512F alone lacks.
func hasAVX512() bool { return cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW }

// fmaLoop runs n rounds of independent multiply-adds on the widest vectors the CPU has and
// returns the float32 operations done (0 without AVX2 and FMA).
func fmaLoop(n int) float64 {
	switch {
	case hasAVX512():
		fmaLoopAVX512(n)
		return float64(n) * 16 * 32
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		fmaLoopAVX2(n)
		return float64(n) * 12 * 16
	}
	return 0
}

// gemmKernels are the micro-kernels this CPU runs, fastest first.
func gemmKernels() []*microKernel {
	var ks []*microKernel
	if hasAVX512() {
		ks = append(ks, avx512Kernel)
	}
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ks = append(ks, avx2Kernel)
	}
	return append(ks, goKernel)
}

// dots4 runs a dot-product kernel on the first k - k%lanes columns of four rows of w and
// adds the rest in Go.
func dots4(k, lanes int, x []float32, w Matrix, out *[4]float32,
	f32 func(int, *float32, *float32, int, *float32), bf func(int, *float32, *uint16, int, *float32)) {
	kv := k - k%lanes
	if kv > 0 {
		_ = x[kv-1]
		if w.F32 != nil {
			_ = w.F32[3*w.Stride+kv-1] // the assembly reads these
			f32(kv, &x[0], &w.F32[0], w.Stride, &out[0])
		} else {
			_ = w.BF16[3*w.Stride+kv-1]
			bf(kv, &x[0], &w.BF16[0], w.Stride, &out[0])
		}
	} else {
		*out = [4]float32{}
	}
	if kv < k {
		var tail [4]float32
		dotsGo(k-kv, x[kv:], w.offset(0, kv), tail[:])
		for r := range out {
			out[r] += tail[r]
		}
	}
}

// trans8AVX2 is microKernel.trans8 by 8 x 8 transposes in registers.
func trans8AVX2(kb int, b Matrix, dst []float32, dstride int) {
	_ = dst[(kb-1)*dstride+7] // the assembly reads and writes these
	if b.F32 != nil {
		_ = b.F32[7*b.Stride+kb-1]
		trans8F32AVX2(kb, &b.F32[0], b.Stride, &dst[0], dstride)
	} else {
		_ = b.BF16[7*b.Stride+kb-1]
		trans8BF16AVX2(kb, &b.BF16[0], b.Stride, &dst[0], dstride)
	}
}

// widenVec widens the first multiple of 8 elements of src into dst by AVX2 and returns how
// many (0 without AVX2).
func widenVec(dst []float32, src []uint16) int {
	n := len(src) &^ 7
	if n == 0 || !cpu.X86.HasAVX2 {
		return 0
	}
	widenBF16AVX2(n, &dst[0], &src[0])
	return n
}
