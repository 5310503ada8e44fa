package matmul

// The micro-kernel interface and the portable kernel in plain Go; the assembly ones are in
// kernel_amd64.go and kernel_amd64.s.

// microKernel computes C[:mr, :nr] += A B for packed panels A (k x mr) and B (k x nr).
type microKernel struct {
	name       string
	mr, nr     int
	mc, kc, nc int // cache blocking: A blocks mc x kc (L2), B blocks kc x nc
	run        func(k int, a, b, c []float32, ldc int)
	// set is run storing A B over C instead of adding it (C is not read)
	set func(k int, a, b, c []float32, ldc int)
	// dots sets out[r] to the dot product of x[:k] with row r of w (not transposed), r < 4
	dots func(k int, x []float32, w Matrix, out *[4]float32)
	// trans8, if not nil, sets dst[p*dstride+r] = b[r, p] for r < 8, p < kb (kb a multiple
	// of 8), widening bf16: packing a transposed B
	trans8 func(kb int, b Matrix, dst []float32, dstride int)
}

// gemmKernel is the micro-kernel in use: the fastest this CPU runs (tests swap it).
var gemmKernel = bestKernel()

// goKernel is the portable micro-kernel, 4 x 4 in plain Go.
var goKernel = &microKernel{name: "pure Go", mr: 4, nr: 4, mc: 64, kc: 256, nc: 1024, run: kernel4x4, set: kernel4x4Set,
	dots: func(k int, x []float32, w Matrix, out *[4]float32) { dotsGo(k, x, w, out[:]) }}

// dotsGo sets out[r] to the dot product of x[:k] with row r of w, r < len(out).
func dotsGo(k int, x []float32, w Matrix, out []float32) {
	x = x[:k]
	for r := range out {
		var s float32
		i := r * w.Stride
		if w.F32 != nil {
			for p, v := range w.F32[i : i+k] {
				s += x[p] * v
			}
		} else {
			for p, v := range w.BF16[i : i+k] {
				s += x[p] * bf16(v)
			}
		}
		out[r] = s
	}
}

// kernel4x4 is C[:4, :4] += A B with sixteen scalar accumulators.
func kernel4x4(k int, a, b, c []float32, ldc int) {
	var c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33 float32
	a, b = a[:4*k], b[:4*k]
	for p := 0; p < k; p++ {
		ap, bp := a[4*p:4*p+4:4*p+4], b[4*p:4*p+4:4*p+4]
		b0, b1, b2, b3 := bp[0], bp[1], bp[2], bp[3]
		c00, c01, c02, c03 = mulAdd4(ap[0], b0, b1, b2, b3, c00, c01, c02, c03)
		c10, c11, c12, c13 = mulAdd4(ap[1], b0, b1, b2, b3, c10, c11, c12, c13)
		c20, c21, c22, c23 = mulAdd4(ap[2], b0, b1, b2, b3, c20, c21, c22, c23)
		c30, c31, c32, c33 = mulAdd4(ap[3], b0, b1, b2, b3, c30, c31, c32, c33)
	}
	add4(c, c00, c01, c02, c03)
	add4(c[ldc:], c10, c11, c12, c13)
	add4(c[2*ldc:], c20, c21, c22, c23)
	add4(c[3*ldc:], c30, c31, c32, c33)
}

// kernel4x4Set is C[:4, :4] = A B.
func kernel4x4Set(k int, a, b, c []float32, ldc int) {
	for i := 0; i < 4; i++ {
		clear(c[i*ldc : i*ldc+4])
	}
	kernel4x4(k, a, b, c, ldc)
}

// mulAdd4 returns one row of kernel4x4's accumulators, c0-c3, plus a times b0-b3 (inlined).
func mulAdd4(a, b0, b1, b2, b3, c0, c1, c2, c3 float32) (float32, float32, float32, float32) {
	return c0 + a*b0, c1 + a*b1, c2 + a*b2, c3 + a*b3
}

// add4 adds c0-c3 to r[:4].
func add4(r []float32, c0, c1, c2, c3 float32) {
	r = r[:4:4]
	r[0], r[1], r[2], r[3] = r[0]+c0, r[1]+c1, r[2]+c2, r[3]+c3
}

// Kernel names the micro-kernel the products run on: "avx512", "avx2" or "pure Go".
func Kernel() string { return gemmKernel.name }
