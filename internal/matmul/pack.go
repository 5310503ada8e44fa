package matmul

// Packing the operands into the micro-kernel's panels, widening bf16 on the way.

import "math"

// packA writes alpha op(A)[i0:i0+mb, p0:p0+kb] as panels of mr rows, each kb x mr (row p
// holds the panel's mr values of column p), the last panel padded with zeros.
func (kn *microKernel) packA(dst []float32, transA bool, a []float32, lda, i0, mb, p0, kb int, alpha float32) {
	mr := kn.mr
	panels(dst, mb, mr, kb, func(ir, h int, panel []float32) {
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
	})
}

// panels calls f(i, h, panel) for the panels of w rows (or columns) that n of them make, each
// kb x w in dst: panel is dst[i*kb : (i+w)*kb] and holds rows i to i+h; h < w only for the
// last, whose panel is cleared first so that its padding is zero.
func panels(dst []float32, n, w, kb int, f func(i, h int, panel []float32)) {
	for i := 0; i < n; i += w {
		panel := dst[i*kb : (i+w)*kb]
		h := min(w, n-i)
		if h < w {
			clear(panel)
		}
		f(i, h, panel)
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
	panels(dst, nb, nr, kb, func(jr, w int, panel []float32) {
		if b.Trans { // op(B)[p][j] = b[j*ld+p]: a row of b is a column of the panel
			kn.transpose(kb, w, b.offset(j0+jr, p0), panel, nr)
			return
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
	})
}

func bf16(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// WidenBF16 writes the float32 value of each bf16 in src to dst (same length): the bits
// shifted into the high half, eight at a time in assembly where the CPU has AVX2, the rest
// four at a time (twice the speed of the plain loop).
func WidenBF16(dst []float32, src []uint16) {
	_ = dst[:len(src)]
	done := widenVec(dst, src)
	n := done + (len(src)-done)&^3
	for i := done; i < n; i += 4 {
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
