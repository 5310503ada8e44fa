package matmul

// The float32 matrix product C = alpha op(A) op(B) + beta C (row-major), blocked the way
// Goto's and BLIS's are:
//
//	for jc over n in nc columns:            C[:, jc:jc+nc]
//	  for pc over k in kc:                   pack op(B)[pc:pc+kc, jc:jc+nc] as kc x nr panels
//	    for ic over m in mc rows:             pack alpha op(A)[ic:ic+mc, pc:pc+kc] as mr x kc panels
//	      for jr over nc in nr, ir over mc in mr:
//	        micro-kernel: C[mr x nr tile] += A panel (kc x mr) B panel (kc x nr)
//
// A B micro-panel (kc x nr) is reused by every A panel of the mc block; both it and the A
// block stay in L2, the B block in L3. (On a Zen 4 core kc 1024 ran 5-15% faster than an
// L1-sized 384: fewer passes over C, and longer runs along each weight row while packing.)
// The micro-kernel keeps its whole C tile in registers; it is Go assembly for AVX-512 and
// AVX2+FMA on amd64 and plain Go elsewhere (gemmKernel picks it at start-up). B may be bf16:
// it is widened while it is packed, so weights stay bf16 in memory. Tiles at the right and
// bottom edges are padded with zeros in the panels and computed into a scratch tile.

import (
	"math"
	"sync"
)

// Matrix is a row-major matrix of float32 or bf16 (uint16) elements, rows Stride apart, used
// transposed when Trans.
type Matrix struct {
	F32    []float32
	BF16   []uint16
	Stride int
	Trans  bool
}

// microKernel computes C[:mr, :nr] += A B for packed panels A (k x mr) and B (k x nr).
type microKernel struct {
	name       string
	mr, nr     int
	mc, kc, nc int // cache blocking: A blocks mc x kc (L2), B blocks kc x nc
	run        func(k int, a, b, c []float32, ldc int)
	// dots sets out[r] to the dot product of x[:k] with row r of w (not transposed), r < 4
	dots func(k int, x []float32, w Matrix, out *[4]float32)
	// trans8, if not nil, sets dst[p*dstride+r] = b[r, p] for r < 8, p < kb (kb a multiple
	// of 8), widening bf16: packing a transposed B
	trans8 func(kb int, b Matrix, dst []float32, dstride int)
}

// gemmKernel is the micro-kernel in use: the fastest this CPU runs (tests swap it).
var gemmKernel = bestKernel()

// goKernel is the portable micro-kernel, 4 x 4 in plain Go.
var goKernel = &microKernel{name: "pure Go", mr: 4, nr: 4, mc: 64, kc: 256, nc: 1024, run: kernel4x4,
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
		a0 := ap[0]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		a1 := ap[1]
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		a2 := ap[2]
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		a3 := ap[3]
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
	}
	r := c[0:4:4]
	r[0], r[1], r[2], r[3] = r[0]+c00, r[1]+c01, r[2]+c02, r[3]+c03
	r = c[ldc : ldc+4 : ldc+4]
	r[0], r[1], r[2], r[3] = r[0]+c10, r[1]+c11, r[2]+c12, r[3]+c13
	r = c[2*ldc : 2*ldc+4 : 2*ldc+4]
	r[0], r[1], r[2], r[3] = r[0]+c20, r[1]+c21, r[2]+c22, r[3]+c23
	r = c[3*ldc : 3*ldc+4 : 3*ldc+4]
	r[0], r[1], r[2], r[3] = r[0]+c30, r[1]+c31, r[2]+c32, r[3]+c33
}

// Kernel names the micro-kernel the products run on: "avx512", "avx2" or "pure Go".
func Kernel() string { return gemmKernel.name }

// gemmBuffers are one worker's packed panels and scratch tile.
type gemmBuffers struct{ a, b, tile []float32 }

var gemmPool sync.Pool

// Float32 is C = alpha op(A) op(B) + beta C for float32 A and C and a float32 or bf16 B, op(A)
// m x k, op(B) k x n, on up to threads goroutines. beta 0 overwrites C (NaN in C is
// ignored, as in BLAS).
func Float32(threads int, transA bool, m, n, k int, alpha float32, a []float32, lda int, b Matrix, beta float32, c []float32, ldc int) {
	if m <= 0 || n <= 0 {
		return
	}
	kn := gemmKernel
	// A few rows of A against a transposed B (a decoding step through a Linear): dot
	// products of A's rows with B's stored rows, where packing B would cost more than it saves.
	dots := !transA && b.Trans && m <= dotRows
	parts, splitN := split(kn, threads, m, n, k)
	dim, unit := m, kn.mr
	if splitN {
		dim, unit = n, kn.nr
	}
	if dots {
		parts, splitN = min(threads, (n+63)/64), true
		dim, unit = n, 4
	}
	step := ((dim+parts-1)/parts + unit - 1) / unit * unit
	run := func(i int) {
		lo := i * step
		m0, m1, n0, n1 := 0, m, lo, min(n, lo+step)
		if !splitN {
			m0, m1, n0, n1 = lo, min(m, lo+step), 0, n
		}
		if m0 >= m1 || n0 >= n1 {
			return
		}
		cs := c[m0*ldc+n0:]
		if k == 0 || alpha == 0 {
			scaleC(m1-m0, n1-n0, beta, cs, ldc)
			return
		}
		if dots {
			kn.dotProduct(m, n1-n0, k, alpha, a, lda, b.offset(n0, 0), beta, cs, ldc)
			return
		}
		scaleC(m1-m0, n1-n0, beta, cs, ldc)
		bs := b
		if b.Trans {
			bs = b.offset(n0, 0)
		} else {
			bs = b.offset(0, n0)
		}
		ai := m0 * lda
		if transA {
			ai = m0
		}
		kn.product(transA, m1-m0, n1-n0, k, alpha, a[ai:], lda, bs, cs, ldc)
	}
	var wg sync.WaitGroup
	for i := 1; i < parts; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(i)
		}()
	}
	run(0)
	wg.Wait()
}

// dotRows is the most rows of A taken by dot products (Float32).
const dotRows = 4

// dotProduct is C[:m, :n] = alpha A B^T + beta C for B stored n x k, by dot products.
func (kn *microKernel) dotProduct(m, n, k int, alpha float32, a []float32, lda int, b Matrix, beta float32, c []float32, ldc int) {
	var out [4]float32
	for j := 0; j < n; j += 4 {
		w := b.offset(j, 0)
		h := min(4, n-j)
		for i := 0; i < m; i++ {
			x := a[i*lda : i*lda+k]
			if h == 4 {
				kn.dots(k, x, w, &out)
			} else {
				dotsGo(k, x, w, out[:h])
			}
			row := c[i*ldc+j : i*ldc+j+h]
			for r := range row {
				v := alpha * out[r]
				if beta != 0 {
					v += beta * row[r]
				}
				row[r] = v
			}
		}
	}
}

// split says into how many parts a product is cut for the threads, along n or along m.
// Cutting n packs A once per part, cutting m packs B once per part: the smaller is repeated.
func split(kn *microKernel, workers, m, n, k int) (parts int, splitN bool) {
	if workers < 2 || m*n*k < 1<<18 {
		return 1, false
	}
	splitN = m <= 2*n
	if splitN {
		return max(1, min(workers, n/kn.nr)), true
	}
	return max(1, min(workers, m/kn.mr)), false
}

// offset is the matrix starting at element (r, c) of its storage.
func (o Matrix) offset(r, c int) Matrix {
	i := r*o.Stride + c
	if o.F32 != nil {
		o.F32 = o.F32[i:]
	} else {
		o.BF16 = o.BF16[i:]
	}
	return o
}

// scaleC multiplies C[:m, :n] by beta; beta 0 clears it.
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	if beta == 1 {
		return
	}
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// product is C[:m, :n] += alpha op(A) op(B) on one goroutine.
func (kn *microKernel) product(transA bool, m, n, k int, alpha float32, a []float32, lda int, b Matrix, c []float32, ldc int) {
	mr, nr := kn.mr, kn.nr
	mcb, kcb, ncb := balance(m, kn.mc, mr), balance(k, kn.kc, 1), balance(n, kn.nc, nr)
	buf, _ := gemmPool.Get().(*gemmBuffers)
	if buf == nil {
		buf = &gemmBuffers{}
	}
	defer gemmPool.Put(buf)
	buf.a = grow(buf.a, mcb*kcb)
	buf.b = grow(buf.b, ncb*kcb)
	buf.tile = grow(buf.tile, mr*nr)
	for jc := 0; jc < n; jc += ncb {
		nb := min(ncb, n-jc)
		for pc := 0; pc < k; pc += kcb {
			kb := min(kcb, k-pc)
			kn.packB(buf.b, b, pc, kb, jc, nb)
			for ic := 0; ic < m; ic += mcb {
				mb := min(mcb, m-ic)
				kn.packA(buf.a, transA, a, lda, ic, mb, pc, kb, alpha)
				for jr := 0; jr < nb; jr += nr {
					bp := buf.b[jr*kb:]
					w := min(nr, nb-jr)
					for ir := 0; ir < mb; ir += mr {
						ap := buf.a[ir*kb:]
						h := min(mr, mb-ir)
						ct := c[(ic+ir)*ldc+jc+jr:]
						if h == mr && w == nr {
							kn.run(kb, ap, bp, ct, ldc)
							continue
						}
						t := buf.tile
						clear(t)
						kn.run(kb, ap, bp, t, nr)
						for i := 0; i < h; i++ {
							row := ct[i*ldc : i*ldc+w]
							for j, v := range t[i*nr : i*nr+w] {
								row[j] += v
							}
						}
					}
				}
			}
		}
	}
}

// balance is the block size that cuts n into as few blocks of at most size as it can, all
// about equal (the last one no smaller than the others by more than unit), a multiple of unit.
func balance(n, size, unit int) int {
	parts := (n + size - 1) / size
	b := (n + parts - 1) / parts
	return (b + unit - 1) / unit * unit
}

func grow(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	return s[:n]
}

// packA writes alpha op(A)[i0:i0+mb, p0:p0+kb] as panels of mr rows, each kb x mr (row p
// holds the panel's mr values of column p), the last panel padded with zeros.
func (kn *microKernel) packA(dst []float32, transA bool, a []float32, lda, i0, mb, p0, kb int, alpha float32) {
	mr := kn.mr
	for ir := 0; ir < mb; ir += mr {
		panel := dst[ir*kb : (ir+mr)*kb]
		h := min(mr, mb-ir)
		if h < mr {
			clear(panel)
		}
		if transA { // op(A)[i][p] = a[p*lda+i]: rows of a are contiguous along i
			for p := 0; p < kb; p++ {
				copy(panel[p*mr:p*mr+h], a[(p0+p)*lda+i0+ir:][:h])
			}
		} else {
			kn.transpose(kb, h, Matrix{F32: a[(i0+ir)*lda+p0:], Stride: lda}, panel, mr)
		}
		if alpha != 1 {
			for i := range panel {
				panel[i] *= alpha
			}
		}
	}
}

// transpose sets dst[p*dstride+r] = src[r, p] for r < h, p < kb, widening bf16: blocks of 8
// rows x 8 columns in registers where the kernel can (the last block of rows overlapping the
// one before it), the rest here.
func (kn *microKernel) transpose(kb, h int, src Matrix, dst []float32, dstride int) {
	done, cols := 0, kb&^7
	if kn.trans8 != nil && cols > 0 && h >= 8 {
		for r := 0; r < h; r += 8 {
			r = min(r, h-8)
			kn.trans8(cols, src.offset(r, 0), dst[r:], dstride)
		}
		done = h
	}
	for r := 0; r < h; r++ {
		start := 0
		if r < done {
			start = cols
		}
		i := r * src.Stride
		d := dst[r:]
		if src.F32 != nil {
			for p, v := range src.F32[i+start : i+kb] {
				d[(start+p)*dstride] = v
			}
		} else {
			for p, v := range src.BF16[i+start : i+kb] {
				d[(start+p)*dstride] = bf16(v)
			}
		}
	}
}

// packB writes op(B)[p0:p0+kb, j0:j0+nb] as panels of nr columns, each kb x nr, the last
// panel padded with zeros; bf16 elements are widened here.
func (kn *microKernel) packB(dst []float32, b Matrix, p0, kb, j0, nb int) {
	nr := kn.nr
	for jr := 0; jr < nb; jr += nr {
		panel := dst[jr*kb : (jr+nr)*kb]
		w := min(nr, nb-jr)
		if w < nr {
			clear(panel)
		}
		if b.Trans { // op(B)[p][j] = b[j*ld+p]: a row of b is a column of the panel
			kn.transpose(kb, w, b.offset(j0+jr, p0), panel, nr)
			continue
		}
		for p := 0; p < kb; p++ {
			i := (p0+p)*b.Stride + j0 + jr
			d := panel[p*nr : p*nr+w]
			if b.F32 != nil {
				copy(d, b.F32[i:i+w])
			} else {
				WidenBF16(d, b.BF16[i:i+w])
			}
		}
	}
}

func bf16(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// WidenBF16 writes the float32 value of each bf16 in src to dst (same length): the bits
// shifted into the high half, four at a time (twice the speed of the plain loop).
func WidenBF16(dst []float32, src []uint16) {
	n := len(src) &^ 3
	for i := 0; i < n; i += 4 {
		s, o := src[i:i+4:i+4], dst[i:i+4:i+4]
		o[0] = math.Float32frombits(uint32(s[0]) << 16)
		o[1] = math.Float32frombits(uint32(s[1]) << 16)
		o[2] = math.Float32frombits(uint32(s[2]) << 16)
		o[3] = math.Float32frombits(uint32(s[3]) << 16)
	}
	for i := n; i < len(src); i++ {
		dst[i] = bf16(src[i])
	}
}
