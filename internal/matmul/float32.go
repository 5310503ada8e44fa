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

import "sync"

// Matrix is a row-major matrix of float32 or bf16 (uint16) elements, rows Stride apart, used
// transposed when Trans.
type Matrix struct {
	F32    []float32
	BF16   []uint16
	Stride int
	Trans  bool
}

// gemmBuffers are one worker's packed panels and scratch tile.
type gemmBuffers struct{ a, b, tile []float32 }

var gemmPool sync.Pool

// Float32 is C = alpha op(A) op(B) + beta C for float32 A and C and a float32 or bf16 B, op(A)
// m x k, op(B) k x n, on up to threads goroutines. beta 0 overwrites C (NaN in C is
// ignored, as in BLAS).
func Float32(threads int, transA bool, m, n, k int, alpha float32, a []float32, lda int, b Matrix, beta float32, c []float32, ldc int) {
	threads = max(threads, 1)
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
		// beta 0: the first block of k stores its products over C instead of adding them
		set := beta == 0
		if !set {
			scaleC(m1-m0, n1-n0, beta, cs, ldc)
		}
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
		kn.product(transA, m1-m0, n1-n0, k, alpha, a[ai:], lda, bs, cs, ldc, set)
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

// product is C[:m, :n] += alpha op(A) op(B) on one goroutine, or C[:m, :n] = alpha op(A)
// op(B) when set (C is then not read: NaN there does not matter).
func (kn *microKernel) product(transA bool, m, n, k int, alpha float32, a []float32, lda int, b Matrix, c []float32, ldc int, set bool) {
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
			first := set && pc == 0
			run := kn.run
			if first {
				run = kn.set
			}
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
							run(kb, ap, bp, ct, ldc)
							continue
						}
						t := buf.tile
						kn.set(kb, ap, bp, t, nr)
						for i := 0; i < h; i++ {
							row := ct[i*ldc : i*ldc+w]
							if first {
								copy(row, t[i*nr:i*nr+w])
								continue
							}
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
