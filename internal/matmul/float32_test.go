package matmul

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// gemmCase is one product checked against the float64 reference.
type gemmCase struct {
	m, n, k        int
	transA, transB bool
	bf16           bool
	alpha, beta    float32
}

// gemmInputs holds a case's matrices with padded leading dimensions.
type gemmInputs struct {
	a             []float32
	b             Matrix
	bw            []float32 // B's values as float32 (widened when bf16)
	c             []float32
	lda, ldb, ldc int
}

func newGemmInputs(r *rand.Rand, tc gemmCase) *gemmInputs {
	in := &gemmInputs{}
	ar, ac := tc.m, tc.k
	if tc.transA {
		ar, ac = tc.k, tc.m
	}
	br, bc := tc.k, tc.n
	if tc.transB {
		br, bc = tc.n, tc.k
	}
	in.lda, in.ldb, in.ldc = ac+r.IntN(3), bc+r.IntN(3), tc.n+r.IntN(3)
	in.a = randF32(r, ar*in.lda)
	in.bw = randF32(r, br*in.ldb)
	in.b = Matrix{Stride: in.ldb, Trans: tc.transB}
	if tc.bf16 {
		in.b.BF16 = make([]uint16, len(in.bw))
		for i, v := range in.bw {
			in.b.BF16[i] = uint16(math.Float32bits(v) >> 16)
			in.bw[i] = bf16(in.b.BF16[i])
		}
	} else {
		in.b.F32 = in.bw
	}
	in.c = randF32(r, tc.m*in.ldc)
	if tc.beta == 0 {
		for i := range in.c {
			in.c[i] = float32(math.NaN()) // beta 0 must not read C
		}
	}
	return in
}

func randF32(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// worstError runs the case with kn and returns the largest |got - want| over each element's
// scale sum_p |alpha a_ip b_pj| + |beta c_ij| (the float64 reference computes want), C as
// computed and the scales.
func (in *gemmInputs) worstError(tc gemmCase, kn *microKernel) (float64, []float32, []float64) {
	c := append([]float32(nil), in.c...)
	saved := gemmKernel
	gemmKernel = kn
	Float32(runtime.GOMAXPROCS(0), tc.transA, tc.m, tc.n, tc.k, tc.alpha, in.a, in.lda, in.b, tc.beta, c, in.ldc)
	gemmKernel = saved
	worst := 0.0
	scales := make([]float64, len(c))
	for i := 0; i < tc.m; i++ {
		for j := 0; j < tc.n; j++ {
			var sum, scale float64
			for p := 0; p < tc.k; p++ {
				ai, bi := i*in.lda+p, p*in.ldb+j
				if tc.transA {
					ai = p*in.lda + i
				}
				if tc.transB {
					bi = j*in.ldb + p
				}
				av, bv := in.a[ai], in.bw[bi]
				sum += float64(av) * float64(bv)
				scale += math.Abs(float64(av) * float64(bv))
			}
			want := float64(tc.alpha) * sum
			scale *= math.Abs(float64(tc.alpha))
			if tc.beta != 0 {
				c0 := float64(in.c[i*in.ldc+j])
				want += float64(tc.beta) * c0
				scale += math.Abs(float64(tc.beta) * c0)
			}
			scales[i*in.ldc+j] = scale
			got := float64(c[i*in.ldc+j])
			e := math.Abs(got-want) / max(scale, 1e-30)
			if math.IsNaN(got) {
				e = math.Inf(1)
			}
			worst = max(worst, e)
		}
	}
	return worst, c, scales
}

// gemmCases covers every edge of kn's blocking in each of m, n and k, paired with random
// sizes, cycling through the transposes, the B types and alpha/beta.
func gemmCases(r *rand.Rand, kn *microKernel) []gemmCase {
	edges := func(b ...int) []int {
		v := []int{1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65}
		for _, x := range b {
			v = append(v, x-1, x, x+1)
		}
		return v
	}
	ms, ns, ks := edges(kn.mr, 2*kn.mr, kn.mc), edges(kn.nr, 2*kn.nr), edges(kn.kc, 2*kn.kc)
	small := []int{1, 3, kn.mr + 1, kn.nr - 1, 33}
	pick := func(v []int) int { return v[r.IntN(len(v))] }
	ab := [][2]float32{{1, 0}, {1, 1}, {-0.5, 0}, {2, -1.5}, {1, 0.5}}
	var cases []gemmCase
	add := func(m, n, k int) {
		i := len(cases)
		cases = append(cases, gemmCase{m: m, n: n, k: k, transA: i&1 != 0, transB: i&2 != 0, bf16: i&4 != 0,
			alpha: ab[i%len(ab)][0], beta: ab[i%len(ab)][1]})
	}
	for _, v := range ms {
		add(v, pick(small), pick(small))
		add(v, pick(ns), pick(small))
	}
	for _, v := range ns {
		add(pick(small), v, pick(small))
		add(pick(small), v, pick(ks))
	}
	for _, v := range ks {
		add(pick(small), pick(small), v)
		add(pick(ms), pick(small), v)
	}
	for i, k := range []int{1, 7, 8, 9, 15, 16, 17, 33, 300} { // dot products: few rows of A, B transposed
		for _, bf := range []bool{false, true} {
			m, n := 1+i%dotRows, []int{1, 3, 4, 5, 7, 9, 130}[i%7]
			cases = append(cases, gemmCase{m: m, n: n, k: k, transB: true, bf16: bf, alpha: ab[i%len(ab)][0], beta: ab[i%len(ab)][1]})
		}
	}
	add(3, kn.nc+kn.nr+1, 5) // more than one nc block
	add(kn.mc+kn.mr+1, 2*kn.nr+3, kn.kc+2)
	add(200, 300, 70) // large enough to be split over the workers
	add(301, 150, 90)
	add(4, 5, 0) // k 0: C = beta C
	cases = append(cases, gemmCase{m: 2, n: 5, k: 0, transB: true, alpha: 1, beta: 0.5})
	return cases
}

// TestFloat32 checks each micro-kernel this CPU runs against the float64 reference on sizes
// around every edge of its blocking, and the assembly kernels against the pure-Go one.
func TestFloat32(t *testing.T) {
	// The worst error measured over these cases is 3.2e-7 of the element's scale (sum of
	// |alpha a b| + |beta c|); a float32 dot product of length k may reach about k/2 eps.
	const tol = 3e-6
	for _, kn := range gemmKernels() {
		t.Run(kn.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, uint64(kn.mr)))
			worst := 0.0
			for _, tc := range gemmCases(r, kn) {
				in := newGemmInputs(r, tc)
				e, got, scales := in.worstError(tc, kn)
				worst = max(worst, e)
				if e > tol {
					t.Errorf("%+v: error %.3g of the scale (tolerance %g)", tc, e, tol)
				}
				if kn == goKernel {
					continue
				}
				_, ref, _ := in.worstError(tc, goKernel)
				if d := maxScaledDiff(got, ref, scales); d > 2*tol {
					t.Errorf("%+v: %s differs from pure Go by %.3g", tc, kn.name, d)
				}
			}
			t.Logf("%s: worst error %.3g of the scale", kn.name, worst)
		})
	}
}

// maxScaledDiff is max |a-b| / scale over the elements with a scale (C's, not its padding).
func maxScaledDiff(a, b []float32, scale []float64) float64 {
	d := 0.0
	for i := range a {
		if scale[i] > 0 {
			d = max(d, math.Abs(float64(a[i])-float64(b[i]))/scale[i])
		}
	}
	return d
}

// BenchmarkGEMM reports GFLOP/s of C = A op(B) on square sizes and Qwen-7B shapes (a prefill
// of 128 or 512 tokens: x [tokens, 4096] W^T with W bf16 [4096, 4096] or [11008, 4096]),
// with 1 and 2 threads, and its fraction of the FMA peak (FMAPeak) of as many threads. On a
// shared machine the mean (ns/op) carries the other loads: GFLOP/s is the fastest run's and
// the peak the highest measured so far (before and after each size).
func BenchmarkGEMM(b *testing.B) {
	type shape struct {
		name       string
		m, n, k    int
		transB, bf bool
	}
	shapes := []shape{
		{"512", 512, 512, 512, false, false},
		{"1024", 1024, 1024, 1024, false, false},
		{"2048", 2048, 2048, 2048, false, false},
		{"qwen-128x4096x4096-bf16", 128, 4096, 4096, true, true},
		{"qwen-512x4096x4096-bf16", 512, 4096, 4096, true, true},
		{"qwen-512x11008x4096-bf16", 512, 11008, 4096, true, true},
	}
	for _, threads := range []int{1, 2} {
		peak := FMAPeak(threads)
		for _, s := range shapes {
			b.Run(fmt.Sprintf("%s/%s/threads=%d", Kernel(), s.name, threads), func(b *testing.B) {
				r := rand.New(rand.NewPCG(1, 1))
				tc := gemmCase{m: s.m, n: s.n, k: s.k, transB: s.transB, bf16: s.bf, alpha: 1}
				in := newGemmInputs(r, tc)
				fastest := math.Inf(1)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					start := time.Now()
					Float32(threads, false, s.m, s.n, s.k, 1, in.a, in.lda, in.b, 0, in.c, in.ldc)
					fastest = min(fastest, time.Since(start).Seconds())
				}
				b.StopTimer()
				gflops := 2 * float64(s.m) * float64(s.n) * float64(s.k) / fastest / 1e9
				b.ReportMetric(gflops, "GFLOP/s")
				if peak = max(peak, FMAPeak(threads)); peak > 0 {
					b.ReportMetric(gflops/peak, "of-peak")
					b.ReportMetric(peak, "peak-GFLOP/s")
				}
			})
		}
	}
}

// TestThreadsBelowOne: a thread count below one runs on one thread, on the dot-product path
// (a few rows against a transposed B) as on the packed one.
func TestThreadsBelowOne(t *testing.T) {
	a := []float32{1, 2, 3, 4}                                      // 2 x 2
	b := Matrix{F32: []float32{1, 0, 1, 1}, Stride: 2, Trans: true} // B^T = [[1 0] [1 1]]
	for _, threads := range []int{0, -1} {
		for _, trans := range []bool{true, false} {
			b.Trans = trans
			c := []float32{9, 9, 9, 9}
			Float32(threads, false, 2, 2, 2, 1, a, 2, b, 0, c, 2)
			want := []float32{1, 3, 3, 7} // A B with B = [[1 1] [0 1]]
			if !trans {
				want = []float32{3, 2, 7, 4} // A B with B = [[1 0] [1 1]]
			}
			for i := range c {
				if c[i] != want[i] {
					t.Fatalf("threads %d, B transposed %v: C = %v, want %v", threads, trans, c, want)
				}
			}
		}
	}
}

// TestWidenBF16: every length to 40 (the eight-wide blocks and the tails) and every bf16 bit
// pattern widen to the float32 with those bits in its high half; nothing past the end is
// written.
func TestWidenBF16(t *testing.T) {
	all := make([]uint16, 1<<16)
	for i := range all {
		all[i] = uint16(i)
	}
	check := func(src []uint16) {
		t.Helper()
		dst := make([]float32, len(src)+1)
		dst[len(src)] = 42
		WidenBF16(dst[:len(src)], src)
		for i, b := range src {
			if got := math.Float32bits(dst[i]); got != uint32(b)<<16 {
				t.Fatalf("length %d: element %d of bits %#04x widened to %#08x", len(src), i, b, got)
			}
		}
		if dst[len(src)] != 42 {
			t.Fatalf("length %d: wrote past the end", len(src))
		}
	}
	for n := 0; n <= 40; n++ {
		check(all[1000 : 1000+n])
	}
	check(all)
}
