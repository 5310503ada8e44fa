//go:build cudaemu && !qtcuda

package cuda

// The emulated driver behind Device: memory and copies, the cuBLAS products against the
// definition in float64, stream capture and graph replay, events.

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd"
)

func openEmulated(t *testing.T) *Device {
	t.Helper()
	d, err := OpenDevice(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

func TestEmulatedDriverMemory(t *testing.T) {
	if _, err := OpenDevice(1); err == nil || !strings.Contains(err.Error(), "cuDeviceGet") {
		t.Errorf("device 1: %v", err)
	}
	d := openEmulated(t)
	if d.Name != "emulated CUDA (CPU)" || d.Memory != 16<<30 {
		t.Errorf("device %q of %d bytes", d.Name, d.Memory)
	}
	src := []float32{1, 2, 3, 4, 5, 6, 7}
	b, err := Upload(d, src, "x")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(src))
	if err := Download(d, got, b); err != nil || !slices.Equal(got, src) {
		t.Fatalf("round trip: %v %v", got, err)
	}
	// a device copy between views, then the poisoning
	if err := d.copyDtoD(b.Ptr, b.Slice(16, 12).Ptr, 12); err != nil {
		t.Fatal(err)
	}
	if err := Download(d, got, b); err != nil || !slices.Equal(got, []float32{5, 6, 7, 4, 5, 6, 7}) {
		t.Fatalf("after the copy: %v %v", got, err)
	}
	if err := d.Poison(b); err != nil {
		t.Fatal(err)
	}
	bits := make([]uint32, len(src))
	if err := Download(d, bits, b); err != nil {
		t.Fatal(err)
	}
	for i, u := range bits {
		if u != 0x7fc07fc0 {
			t.Fatalf("poisoned word %d is %#x", i, u)
		}
	}
	// copies must stay inside one allocation
	if err := d.copyDtoD(b.Ptr, b.Ptr+16, 16); err == nil || !strings.Contains(err.Error(), "not in one allocation") {
		t.Errorf("a copy past the end: %v", err)
	}
	if _, err := d.Alloc(17<<30, "too much"); err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_OUT_OF_MEMORY") || !strings.Contains(err.Error(), "GiB free") {
		t.Errorf("17 GiB: %v", err)
	}
	if d.Allocated != 28 {
		t.Errorf("%d bytes allocated", d.Allocated)
	}
	free, total, err := d.drv.memInfo()
	if err != nil || total != 16<<30 || free != total-28 {
		t.Errorf("memory info %d of %d: %v", free, total, err)
	}
	d.Free(b)
	if err := d.Trim(); err != nil || d.Allocated != 0 {
		t.Errorf("trimmed to %d: %v", d.Allocated, err)
	}
}

// colMajor is a column-major matrix of bf16 or float32 values kept in float64 too.
type colMajor struct {
	v     []float64 // element i of the storage
	bf16  bool
	bytes int64
}

func randColMajor(r *rand.Rand, n int, bf bool) colMajor {
	m := colMajor{v: make([]float64, n), bf16: bf, bytes: int64(n) * 4}
	if bf {
		m.bytes = int64(n) * 2
	}
	for i := range m.v {
		f := float32(r.NormFloat64())
		if bf {
			f = autograd.Ref.BF16(bf16Round(f))
		}
		m.v[i] = float64(f)
	}
	return m
}

func (m colMajor) upload(t *testing.T, d *Device) *Buffer {
	t.Helper()
	var b *Buffer
	var err error
	if m.bf16 {
		h := make([]uint16, len(m.v))
		for i, f := range m.v {
			h[i] = bf16Round(float32(f))
		}
		b, err = Upload(d, h, "matrix")
	} else {
		h := make([]float32, len(m.v))
		for i, f := range m.v {
			h[i] = float32(f)
		}
		b, err = Upload(d, h, "matrix")
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func download(t *testing.T, d *Device, b *Buffer, n int, bf bool) []float64 {
	t.Helper()
	out := make([]float64, n)
	if bf {
		h := make([]uint16, n)
		if err := Download(d, h, b); err != nil {
			t.Fatal(err)
		}
		for i, u := range h {
			out[i] = float64(autograd.Ref.BF16(u))
		}
		return out
	}
	h := make([]float32, n)
	if err := Download(d, h, b); err != nil {
		t.Fatal(err)
	}
	for i, f := range h {
		out[i] = float64(f)
	}
	return out
}

// TestEmulatedDriverGemm: the driver's cublasGemmEx and cublasGemmStridedBatchedEx on
// emulated device memory against their definition in float64, for every pair of operations,
// leading dimensions beyond the sizes, float32 and bf16 results, beta 0 over NaN and beta 1;
// then GemmBF16 and GemmBF16Out.
func TestEmulatedDriverGemm(t *testing.T) {
	d := openEmulated(t)
	if _, err := d.Blas(); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	worst := map[bool]float64{}
	for _, s := range [][3]int{{5, 7, 3}, {33, 20, 70}, {64, 3, 129}} {
		m, n, k := s[0], s[1], s[2]
		for _, ta := range []int{blasOpN, blasOpT} {
			for _, tb := range []int{blasOpN, blasOpT} {
				for _, outBF := range []bool{false, true} {
					for _, beta := range []float32{0, 1} {
						for _, count := range []int{1, 2} {
							ar, ac := m, k
							if ta == blasOpT {
								ar, ac = k, m
							}
							br, bc := k, n
							if tb == blasOpT {
								br, bc = n, k
							}
							lda, ldb, ldc := ar+2, br+3, m+1
							sa, sb, sc := lda*ac+5, ldb*bc+1, ldc*n+2
							a := randColMajor(r, sa*count, true)
							b := randColMajor(r, sb*count, true)
							c := randColMajor(r, sc*count, outBF)
							if beta == 0 {
								for i := range c.v {
									c.v[i] = math.NaN()
								}
							}
							ab, bb, cb := a.upload(t, d), b.upload(t, d), c.upload(t, d)
							ct := dtypeF32
							if outBF {
								ct = dtypeBF16
							}
							var err error
							if count == 1 {
								err = blasErr("cublasGemmEx", d.drv.gemmEx(ta, tb, m, n, k, ab.Ptr, dtypeBF16, lda, bb.Ptr, dtypeBF16, ldb, beta, cb.Ptr, ct, ldc))
							} else {
								err = blasErr("cublasGemmStridedBatchedEx", d.drv.gemmStridedBatchedEx(ta, tb, m, n, k, 1, ab.Ptr, dtypeBF16, lda, int64(sa), bb.Ptr, dtypeBF16, ldb, int64(sb), beta, cb.Ptr, ct, ldc, int64(sc), count))
							}
							if err != nil {
								t.Fatal(err)
							}
							got := download(t, d, cb, len(c.v), outBF)
							for q := 0; q < count; q++ {
								for j := 0; j < n; j++ {
									for i := 0; i < m; i++ {
										var want, scale float64
										for l := 0; l < k; l++ {
											ai, bi := q*sa+i+l*lda, q*sb+l+j*ldb
											if ta == blasOpT {
												ai = q*sa + l + i*lda
											}
											if tb == blasOpT {
												bi = q*sb + j + l*ldb
											}
											x, y := a.v[ai], b.v[bi]
											want += x * y
											scale += math.Abs(x * y)
										}
										ci := q*sc + i + j*ldc
										if beta != 0 {
											want += c.v[ci]
											scale += math.Abs(c.v[ci])
										}
										tol := 4 * float64(k+2) * 0x1p-24 * scale
										if outBF {
											tol += 0x1p-8 * math.Abs(want)
										}
										e := math.Abs(got[ci] - want)
										if !(e <= tol) {
											t.Fatalf("op %d %d, [%d, %d, %d], bf16 out %v, beta %g, batch %d of %d: C(%d, %d) = %g, want %g", ta, tb, m, n, k, outBF, beta, q, count, i, j, got[ci], want)
										}
										worst[outBF] = max(worst[outBF], e/scale)
										got[ci] = c.v[ci] // compared; the rest must be untouched
									}
								}
							}
							for i := range got {
								if got[i] != c.v[i] && !(math.IsNaN(got[i]) && math.IsNaN(c.v[i])) {
									t.Fatalf("op %d %d, [%d, %d, %d]: element %d outside the product changed", ta, tb, m, n, k, i)
								}
							}
							d.Free(ab)
							d.Free(bb)
							d.Free(cb)
						}
					}
				}
			}
		}
	}
	t.Logf("largest |C - reference| / sum |terms|: float32 C %.2e, bf16 C %.2e", worst[false], worst[true])

	// GemmBF16 (accumulating) and GemmBF16Out: y [m, n] = x [m, k] W^T, rows ldy apart
	m, n, k, ldy := 6, 10, 24, 13
	x, w := randColMajor(r, m*k, true), randColMajor(r, n*k, true)
	y0 := randColMajor(r, m*ldy, false)
	xb, wb, yb, ob := x.upload(t, d), w.upload(t, d), y0.upload(t, d), y0.upload(t, d)
	if err := d.GemmBF16(yb, xb, wb, m, n, k, ldy, true); err != nil {
		t.Fatal(err)
	}
	if err := d.GemmBF16Out(ob, xb, wb, m, n, k, ldy); err != nil {
		t.Fatal(err)
	}
	acc, out := download(t, d, yb, m*ldy, false), download(t, d, ob, m*ldy, true)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var want float64
			for l := 0; l < k; l++ {
				want += x.v[i*k+l] * w.v[j*k+l]
			}
			if e := math.Abs(acc[i*ldy+j] - (want + y0.v[i*ldy+j])); e > 1e-4 {
				t.Errorf("GemmBF16 y[%d, %d] off by %g", i, j, e)
			}
			if e := math.Abs(out[i*ldy+j] - want); e > 0x1p-8*math.Abs(want)+1e-5 {
				t.Errorf("GemmBF16Out y[%d, %d] off by %g", i, j, e)
			}
		}
	}
	// an argument cuBLAS refuses, with its status
	if err := d.GemmBF16(yb, xb, wb, m, n, k, n-1, false); err == nil || !strings.Contains(err.Error(), "CUBLAS_STATUS_INVALID_VALUE") {
		t.Errorf("ldy below n: %v", err)
	}
}

// TestEmulatedDriverGraph: a capture records the stream's work without running it, a graph
// launch runs it again each time (reading the memory as it is then), and a synchronous call
// during a capture fails and invalidates it.
func TestEmulatedDriverGraph(t *testing.T) {
	d := openEmulated(t)
	if _, err := d.Blas(); err != nil {
		t.Fatal(err)
	}
	src, err := Upload(d, []float32{1, 2, 3, 4}, "source")
	if err != nil {
		t.Fatal(err)
	}
	dst, err := Upload(d, []float32{0, 0, 0, 0}, "destination")
	if err != nil {
		t.Fatal(err)
	}
	// a [2, 2] product too: x [2, 2] bf16 times the identity
	x, err := Upload(d, []uint16{bf16Round(1), bf16Round(2), bf16Round(3), bf16Round(4)}, "x")
	if err != nil {
		t.Fatal(err)
	}
	id, err := Upload(d, []uint16{bf16Round(1), 0, 0, bf16Round(1)}, "identity")
	if err != nil {
		t.Fatal(err)
	}
	y, err := Upload(d, []float32{0, 0, 0, 0}, "y")
	if err != nil {
		t.Fatal(err)
	}
	g, err := d.capture(func() error {
		if err := d.copyDtoD(dst.Ptr, src.Ptr, 16); err != nil {
			return err
		}
		return d.GemmBF16(y, x, id, 2, 2, 2, 2, false)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.destroy()
	got := make([]float32, 4)
	if err := Download(d, got, dst); err != nil || !slices.Equal(got, []float32{0, 0, 0, 0}) {
		t.Fatalf("the capture ran the copy: %v %v", got, err)
	}
	if err := Download(d, got, y); err != nil || !slices.Equal(got, []float32{0, 0, 0, 0}) {
		t.Fatalf("the capture ran the product: %v %v", got, err)
	}
	for run, v := range []float32{1, 10} {
		if err := d.drv.memcpyHtoD(src.Ptr, unsafe.Pointer(&[]float32{v, v, v, v}[0]), 16); err != nil {
			t.Fatal(err)
		}
		if err := d.launchGraph(g); err != nil {
			t.Fatal(err)
		}
		if err := Download(d, got, dst); err != nil || !slices.Equal(got, []float32{v, v, v, v}) {
			t.Fatalf("replay %d copied %v %v", run, got, err)
		}
		if err := Download(d, got, y); err != nil || !slices.Equal(got, []float32{1, 2, 3, 4}) {
			t.Fatalf("replay %d: product %v %v", run, got, err)
		}
	}
	// a synchronous call inside a capture
	_, err = d.capture(func() error { return d.Sync() })
	if err == nil || !strings.Contains(err.Error(), "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED") {
		t.Errorf("Sync during a capture: %v", err)
	}
	_, err = d.capture(func() error { _ = d.Sync(); return nil })
	if err == nil || !strings.Contains(err.Error(), "cuStreamEndCapture") || !strings.Contains(err.Error(), "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED") {
		t.Errorf("ending an invalidated capture: %v", err)
	}
	// the stream works again after a failed capture
	if err := d.copyDtoD(dst.Ptr, x.Ptr, 8); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, b := range []*Buffer{src, dst, x, id, y} {
		d.Free(b)
	}
}

// TestEmulatedDriverKernelGraph: kernel launches captured and replayed (add_f32 through the
// kernel emulator), timed by events as Program.Profile times them.
func TestEmulatedDriverKernelGraph(t *testing.T) {
	d := openEmulated(t)
	a, err := Upload(d, []float32{1, 2, 3}, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Upload(d, []float32{10, 20, 30}, "b")
	if err != nil {
		t.Fatal(err)
	}
	y, err := d.Alloc(12, "y")
	if err != nil {
		t.Fatal(err)
	}
	g, err := d.capture(func() error { return d.Add(y, a, b, 3) })
	if err != nil {
		t.Fatal(err)
	}
	defer g.destroy()
	if err := d.Poison(y); err != nil {
		t.Fatal(err)
	}
	start, err := d.drv.eventCreate()
	if err != nil {
		t.Fatal(err)
	}
	end, err := d.drv.eventCreate()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.drv.eventRecord(start); err != nil {
		t.Fatal(err)
	}
	if err := d.launchGraph(g); err != nil {
		t.Fatal(err)
	}
	if err := d.drv.eventRecord(end); err != nil {
		t.Fatal(err)
	}
	if err := d.drv.eventSynchronize(end); err != nil {
		t.Fatal(err)
	}
	ms, err := d.drv.eventElapsed(start, end)
	if err != nil || ms < 0 {
		t.Errorf("elapsed %g ms: %v", ms, err)
	}
	for _, e := range []*devEvent{&start, &end} {
		if err := d.drv.eventDestroy(e); err != nil {
			t.Error(err)
		}
	}
	got := make([]float32, 3)
	if err := Download(d, got, y); err != nil || !slices.Equal(got, []float32{11, 22, 33}) {
		t.Fatalf("replayed add: %v %v", got, err)
	}
}
