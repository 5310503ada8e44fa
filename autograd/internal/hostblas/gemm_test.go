package hostblas

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// operand is a column-major matrix's storage in bytes, of type typ.
type operand struct {
	bytes []byte
	typ   int
}

func (o operand) at(i int64) float64 {
	if o.typ == R16BF {
		return float64(math.Float32frombits(uint32(*(*uint16)(unsafe.Pointer(&o.bytes[2*i]))) << 16))
	}
	return float64(*(*float32)(unsafe.Pointer(&o.bytes[4*i])))
}

func (o operand) set(i int64, v float32) {
	if o.typ == R16BF {
		*(*uint16)(unsafe.Pointer(&o.bytes[2*i])) = RoundBF16(v)
		return
	}
	*(*float32)(unsafe.Pointer(&o.bytes[4*i])) = v
}

// random fills n elements with normal values; with a bf16 type they are bf16 values.
func random(r *rand.Rand, typ int, n int64) operand {
	o := operand{bytes: make([]byte, n*ElemSize(typ)), typ: typ}
	for i := int64(0); i < n; i++ {
		o.set(i, float32(r.NormFloat64()))
	}
	return o
}

// element (i, j) of op(X) for X stored column-major with leading dimension ld from off.
func opAt(x operand, off int64, op, ld, i, j int) float64 {
	if op == OpN {
		return x.at(off + int64(i) + int64(j)*int64(ld))
	}
	return x.at(off + int64(j) + int64(i)*int64(ld))
}

// TestGemmEx checks GemmEx and GemmStridedBatchedEx against the definition evaluated in
// float64, for every pair of operations, leading dimensions beyond the matrices, bf16 and
// float32 types, beta 0 over NaN, 1 and 0.5, and operands exactly as long as Sizes says; the
// elements of C between its columns and between its batches must stay as they were.
func TestGemmEx(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	types := [][3]int{{R16BF, R16BF, R32F}, {R16BF, R16BF, R16BF}, {R32F, R32F, R32F}}
	shapes := [][3]int{{1, 1, 1}, {5, 7, 3}, {3, 2, 40}, {37, 19, 70}, {100, 40, 200}, {64, 4, 129}, {2, 300, 64}, {9, 8, 0}}
	worst := map[int]float64{}
	results, offRounding := 0, 0 // bf16 results, and those not the reference rounded to bf16
	for _, tc := range types {
		at, bt, ct := tc[0], tc[1], tc[2]
		for _, sh := range shapes {
			m, n, k := sh[0], sh[1], sh[2]
			for _, ta := range []int{OpN, OpT} {
				for _, tb := range []int{OpN, OpT} {
					for _, beta := range []float32{0, 1, 0.5} {
						for _, count := range []int{1, 3} {
							ar, ac := stored(ta, m, k)
							br, bc := stored(tb, k, n)
							lda, ldb, ldc := max(1, ar)+3, max(1, br)+5, m+2
							// batches apart by more than one matrix
							sa, sb, sc := span(ar, ac, lda)+1, span(br, bc, ldb)+7, span(m, n, ldc)+3
							if count == 1 {
								sa, sb, sc = 0, 0, 0
							}
							na, nb, nc := Sizes(ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc, sa, sb, sc, count)
							a, b := random(r, at, na/ElemSize(at)), random(r, bt, nb/ElemSize(bt))
							c := random(r, ct, nc/ElemSize(ct))
							inC := make([]float64, nc/ElemSize(ct))
							written := make([]bool, len(inC))
							for i := range inC {
								if beta == 0 && i%3 == 0 {
									c.set(int64(i), float32(math.NaN()))
								}
								inC[i] = c.at(int64(i))
							}
							var s int
							if count == 1 {
								s = GemmEx(2, ta, tb, m, n, k, 1, a.bytes, at, lda, b.bytes, bt, ldb, beta, c.bytes, ct, ldc)
							} else {
								s = GemmStridedBatchedEx(2, ta, tb, m, n, k, 1, a.bytes, at, lda, sa, b.bytes, bt, ldb, sb, beta, c.bytes, ct, ldc, sc, count)
							}
							name := fmt.Sprintf("types %v, op %d %d, [%d, %d, %d], lds %d %d %d, beta %g, count %d", tc, ta, tb, m, n, k, lda, ldb, ldc, beta, count)
							if s != StatusSuccess {
								t.Fatalf("%s: status %d", name, s)
							}
							for q := 0; q < count; q++ {
								for j := 0; j < n; j++ {
									for i := 0; i < m; i++ {
										var want, scale float64
										for l := 0; l < k; l++ {
											p := opAt(a, int64(q)*sa, ta, lda, i, l) * opAt(b, int64(q)*sb, tb, ldb, l, j)
											want += p
											scale += math.Abs(p)
										}
										ci := int64(q)*sc + int64(i) + int64(j)*int64(ldc)
										written[ci] = true
										if beta != 0 {
											want += float64(beta) * inC[ci]
											scale += math.Abs(float64(beta) * inC[ci])
										}
										got := c.at(ci)
										// float32 accumulation: a few ulps of the sum of magnitudes;
										// a bf16 result: half a bf16 ulp of the result on top
										tol := 4 * float64(k+2) * 0x1p-24 * scale
										if ct == R16BF {
											tol += 0x1p-8 * math.Abs(want)
										}
										if err := math.Abs(got - want); !(err <= tol) {
											t.Fatalf("%s: C(%d, %d) of batch %d = %g, want %g (tolerance %g)", name, i, j, q, got, want, tol)
										} else if scale > 0 {
											worst[ct] = max(worst[ct], err/scale)
										}
										if ct == R16BF {
											results++
											if c.at(ci) != float64(math.Float32frombits(uint32(RoundBF16(float32(want)))<<16)) {
												offRounding++
											}
										}
									}
								}
							}
							for i, w := range written {
								if !w && !same(c.at(int64(i)), inC[i]) {
									t.Fatalf("%s: element %d of C outside the product changed: %g, was %g", name, i, c.at(int64(i)), inC[i])
								}
							}
						}
					}
				}
			}
		}
	}
	t.Logf("largest |C - reference| / sum |terms|: float32 C %.2e, bf16 C %.2e; bf16 results other than the reference rounded to bf16: %d of %d",
		worst[R32F], worst[R16BF], offRounding, results)
}

func same(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }

// TestCheck: the statuses cuBLAS gives arguments it refuses.
func TestCheck(t *testing.T) {
	for _, c := range []struct {
		ta, tb, m, n, k, at, lda, bt, ldb, ct, ldc int
		want                                       int
	}{
		{OpN, OpN, 4, 5, 6, R16BF, 4, R16BF, 6, R32F, 4, StatusSuccess},
		{OpT, OpT, 4, 5, 6, R16BF, 6, R16BF, 5, R16BF, 4, StatusSuccess},
		{OpN, OpN, 4, 5, 6, R16BF, 3, R16BF, 6, R32F, 4, StatusInvalidValue}, // lda < m
		{OpT, OpN, 4, 5, 6, R16BF, 4, R16BF, 6, R32F, 4, StatusInvalidValue}, // lda < k
		{OpN, OpT, 4, 5, 6, R16BF, 4, R16BF, 4, R32F, 4, StatusInvalidValue}, // ldb < n
		{OpN, OpN, 4, 5, 6, R16BF, 4, R16BF, 6, R32F, 3, StatusInvalidValue}, // ldc < m
		{OpN, OpN, -1, 5, 6, R16BF, 4, R16BF, 6, R32F, 4, StatusInvalidValue},
		{3, OpN, 4, 5, 6, R16BF, 4, R16BF, 6, R32F, 4, StatusInvalidValue},
		{OpN, OpN, 0, 0, 0, R16BF, 0, R16BF, 0, R32F, 0, StatusInvalidValue}, // leading dimensions at least 1
		{OpN, OpN, 4, 5, 6, R16BF, 4, R32F, 6, R32F, 4, StatusNotSupported},
		{OpN, OpN, 4, 5, 6, R32F, 4, R32F, 6, R16BF, 4, StatusNotSupported},
		{OpN, OpN, 4, 5, 6, 2, 4, 2, 6, 2, 4, StatusNotSupported}, // CUDA_R_16F
	} {
		if got := Check(c.ta, c.tb, c.m, c.n, c.k, c.at, c.lda, c.bt, c.ldb, c.ct, c.ldc, 0, 0, 0, 1); got != c.want {
			t.Errorf("%+v: status %d, want %d", c, got, c.want)
		}
	}
	if s := GemmEx(1, OpN, OpN, 2, 2, 2, 1, nil, R16BF, 1, nil, R16BF, 2, 0, nil, R32F, 2); s != StatusInvalidValue {
		t.Errorf("lda below m: status %d", s)
	}
}

// TestGemmBetaAddsOnce: with beta 1 the product over the whole of k is computed first and C
// added to it once, as cuBLAS's epilogue adds beta C to the float32 accumulator: the result
// is, bit for bit, the product with beta 0 plus C in float32, also when k spans several of
// internal/matmul's blocks of k (which would otherwise add C before the products).
func TestGemmBetaAddsOnce(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, sh := range [][3]int{{37, 19, 2500}, {3, 2, 3000}, {64, 48, 700}} {
		m, n, k := sh[0], sh[1], sh[2]
		for _, ta := range []int{OpN, OpT} {
			ar, _ := stored(ta, m, k)
			br, _ := stored(OpN, k, n)
			na, nb, nc := Sizes(ta, OpN, m, n, k, R16BF, ar, R16BF, br, R32F, m, 0, 0, 0, 1)
			a, b, c := random(r, R16BF, na/2), random(r, R16BF, nb/2), random(r, R32F, nc/4)
			prod := random(r, R32F, nc/4)
			if s := GemmEx(2, ta, OpN, m, n, k, 1, a.bytes, R16BF, ar, b.bytes, R16BF, br, 0, prod.bytes, R32F, m); s != StatusSuccess {
				t.Fatalf("status %d", s)
			}
			want := make([]float32, nc/4)
			for i := range want {
				want[i] = float32(prod.at(int64(i))) + float32(c.at(int64(i)))
			}
			if s := GemmEx(2, ta, OpN, m, n, k, 1, a.bytes, R16BF, ar, b.bytes, R16BF, br, 1, c.bytes, R32F, m); s != StatusSuccess {
				t.Fatalf("status %d", s)
			}
			for i, w := range want {
				if got := float32(c.at(int64(i))); math.Float32bits(got) != math.Float32bits(w) {
					t.Fatalf("[%d, %d, %d], op %d: C[%d] = %v with beta 1, %v from the product and an add", m, n, k, ta, i, got, w)
				}
			}
		}
	}
}
