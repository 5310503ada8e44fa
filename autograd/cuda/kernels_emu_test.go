//go:build cudaemu && !qtcuda

package cuda

// The CUDA kernels of kernels/*.cu run on the CPU by the emulator (kernels/emu), each with the
// grid, block and arguments its Device wrapper in cuda.go launches it with, on random inputs,
// against the CPU op it stands for: the cases of selftest.go. Outputs other than those
// computed in place are poisoned with NaN first and must all be written. Each tolerance is
// about ten times the error measured (noted beside it).

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"unsafe"

	"github.com/qwen-tune/qwen-tune/autograd"
	"github.com/qwen-tune/qwen-tune/autograd/cuda/kernels/emu"
	"github.com/qwen-tune/qwen-tune/internal/refmath"
	"gorgonia.org/tensor"
)

// emuPtr is an address of emulated device memory.
type emuPtr uintptr

// at is p as an unsafe.Pointer (it is C memory, which the garbage collector never moves or
// frees). Not inlined: Go 1.26's compiler crashes (disjointTypes: one of arguments is not a
// pointer) inlining a copy of constant size from the result.
//
//go:noinline
func (p emuPtr) at() unsafe.Pointer { return unsafe.Add(nil, p) }

// emuMem allocates a test's emulated buffers and frees them when it ends.
type emuMem struct{ ptrs []uintptr }

func newEmuMem(t *testing.T) *emuMem {
	m := &emuMem{}
	t.Cleanup(func() {
		for _, p := range m.ptrs {
			emu.Free(p)
		}
	})
	return m
}

func (m *emuMem) alloc(bytes int64) emuPtr {
	p := emu.Alloc(bytes)
	m.ptrs = append(m.ptrs, p)
	return emuPtr(p)
}

// emuUp copies a host slice into new emulated memory.
func emuUp[T any](m *emuMem, v []T) emuPtr {
	var zero T
	size := int64(len(v)) * int64(unsafe.Sizeof(zero))
	p := m.alloc(size)
	if len(v) > 0 {
		copy(unsafe.Slice((*byte)(p.at()), size), unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), size))
	}
	return p
}

// poisoned is bytes of emulated memory filled with 0x7fc07fc0, NaN as one float32 and as two
// bf16 (Device.Poison).
func (m *emuMem) poisoned(bytes int64) emuPtr {
	p := m.alloc(bytes)
	words := unsafe.Slice((*uint32)(p.at()), bytes/4)
	for i := range words {
		words[i] = 0x7fc07fc0
	}
	return p
}

// emuDown is a copy of n elements at p.
func emuDown[T any](p emuPtr, n int) []T {
	return slices.Clone(unsafe.Slice((*T)(p.at()), n))
}

// emuLaunch packs args as Device.launch does (an emuPtr is an address, an int an int32, an
// int64, float32 or float64 itself) and runs the kernel on a 1-D grid and block.
func emuLaunch(t *testing.T, name string, grid, block, shared int, args ...any) {
	t.Helper()
	params := make([]uint64, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case emuPtr:
			params[i] = uint64(v)
		case int:
			params[i] = uint64(uint32(int32(v)))
		case int64:
			params[i] = uint64(v)
		case float32:
			params[i] = uint64(math.Float32bits(v))
		case float64:
			params[i] = math.Float64bits(v)
		default:
			t.Fatalf("%s: argument %d of type %T", name, i, a)
		}
	}
	if err := emu.Launch(name, [3]int{grid, 1, 1}, [3]int{block, 1, 1}, shared, params); err != nil {
		t.Fatal(err)
	}
}

// emuCheck compares got with want: ||got - want|| / ||want|| over the written outputs must be
// at most tol, and no output may be left NaN from the poisoning.
func emuCheck(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	rel, unwritten := compare(got, want)
	t.Logf("%s: relative error %.3g (tolerance %g)", what, rel, tol)
	if unwritten > 0 {
		t.Errorf("%s: %d of %d outputs unwritten", what, unwritten, len(want))
	}
	if rel > tol {
		t.Errorf("%s: relative error %.3g, tolerance %g", what, rel, tol)
	}
}

// emuRound is float32 rounded to the nearest bf16 (ties to even) and widened back, as the
// kernels' to_bf16.
func emuRound(f float32) float32 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return autograd.Ref.BF16(uint16(u>>16) | 0x40)
	}
	return autograd.Ref.BF16(uint16((u + 0x7fff + (u>>16)&1) >> 16))
}

func emuRoundAll(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, f := range v {
		out[i] = emuRound(f)
	}
	return out
}

// emuRMSNorm is the CPU op's RMSNorm of x [n, h] with a bf16 weight.
func emuRMSNorm(t *testing.T, x []float32, w []uint16, n, h int) []float32 {
	y, err := autograd.Ref.RMSNorm(tensor.New(tensor.WithShape(n, h), tensor.WithBacking(slices.Clone(x))), tensor.New(tensor.WithShape(h), tensor.WithBacking(w)), 1e-6)
	if err != nil {
		t.Fatal(err)
	}
	return y.Data().([]float32)
}

// emuSwiGLU is the CPU op's a * silu(g).
func emuSwiGLU(a, g []float32) []float32 {
	n := len(a)
	return autograd.Ref.SwiGLU([]*tensor.Dense{tensor.New(tensor.WithShape(n), tensor.WithBacking(a)), tensor.New(tensor.WithShape(n), tensor.WithBacking(g))}, 0).Data().([]float32)
}

// emuMatVec is the CPU op's W [n, k] x for a bf16 W.
func emuMatVec(t *testing.T, x []float32, w []uint16, n, k int) []float32 {
	y := make([]float32, n)
	if err := autograd.Ref.Linear(x, 1, k, tensor.New(tensor.WithShape(n, k), tensor.WithBacking(w)), n, y, 1); err != nil {
		t.Fatal(err)
	}
	return y
}

// emuGrid is grid of cuda.go: blocks of 256 threads for n elements, at most 65535.
func emuGrid(n int64) int { return int(min((n+255)/256, 65535)) }

// emuGemvSplit is gemvSplit of cuda.go: warps per row.
func emuGemvSplit(n, k int) int {
	if n <= 4096 && k >= 8192 {
		return 4
	}
	return 1
}

func TestEmuRMSNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 99))
	for _, s := range [][2]int{{3, 4096}, {5, 100}} {
		n, h := s[0], s[1]
		x, w := autograd.Ref.Normal(r, n*h), randBF16(r, h, 1)
		m := newEmuMem(t)
		xb, wb, yb := emuUp(m, x), emuUp(m, w), m.poisoned(int64(n*h*4))
		emuLaunch(t, "rmsnorm_bf16", n, 256, 0, yb, xb, wb, h, float32(1e-6))
		// measured 4.7e-8, 0
		emuCheck(t, fmt.Sprintf("rmsnorm_bf16 [%d, %d]", n, h), emuDown[float32](yb, n*h), emuRMSNorm(t, x, w, n, h), 5e-7)
	}
}

func TestEmuSwiGLU(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 99))
	for _, n := range []int{11008 * 3, 1000} {
		a, g := autograd.Ref.Normal(r, n), autograd.Ref.Normal(r, n)
		m := newEmuMem(t)
		ab, gb, yb := emuUp(m, a), emuUp(m, g), m.poisoned(int64(n*4))
		emuLaunch(t, "swiglu", int(min((int64(n)+255)/256, 65535)), 256, 0, yb, ab, gb, int64(n))
		// measured 4.7e-8, 4.7e-8
		emuCheck(t, fmt.Sprintf("swiglu [%d]", n), emuDown[float32](yb, n), emuSwiGLU(a, g), 5e-7)
	}
}

// TestEmuRotary: per-row NTK bases and a position offset, from a strided view (q or k in a
// fused qkv), as the selftest's case.
func TestEmuRotary(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 99))
	b, tl, h, dim, past := 2, 5, 32, 128, 3000
	width, stride := h*dim, 3*h*dim
	x := autograd.Ref.Normal(r, b*tl*h*dim)
	view := make([]float32, b*tl*stride)
	for i := 0; i < b*tl; i++ {
		copy(view[i*stride+width:], x[i*width:(i+1)*width])
	}
	bases := []float64{10000, 10000 * math.Pow(3, 128.0/126)}
	want := autograd.Ref.Rotary(tensor.New(tensor.WithShape(b, tl, h, dim), tensor.WithBacking(slices.Clone(x))), &autograd.Step{Batch: b, Seq: tl, Past: past, Base: bases}, false).Data().([]float32)
	m := newEmuMem(t)
	xb, bb, yb := emuUp(m, view), emuUp(m, bases), m.poisoned(int64(b*tl*width*4))
	emuLaunch(t, "rotary", b*tl, 256, 0, yb, xb+emuPtr(width*4), bb, tl, h, dim, past, stride, width)
	// measured 0: the CPU's float32 angles and double cos/sin (a bound for another libm)
	emuCheck(t, "rotary", emuDown[float32](yb, b*tl*width), want, 1e-7)
}

func TestEmuGather(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 99))
	vocab, h := 1000, 4096
	w := randBF16(r, vocab*h, 0.02)
	ids := []int32{0, 999, 17, 17, 512}
	want := make([]float32, len(ids)*h)
	if err := autograd.Ref.Gather(tensor.New(tensor.WithShape(vocab, h), tensor.WithBacking(w)), ids, h, want); err != nil {
		t.Fatal(err)
	}
	m := newEmuMem(t)
	wb, ib, yb := emuUp(m, w), emuUp(m, ids), m.poisoned(int64(len(ids)*h*4))
	emuLaunch(t, "gather_bf16", len(ids), 256, 0, yb, wb, ib, h, vocab)
	emuCheck(t, "gather_bf16", emuDown[float32](yb, len(ids)*h), want, 0) // exact
	// an id outside the table writes NaN
	bad := emuUp(m, []int32{3, -1, int32(vocab)})
	yb = m.alloc(int64(3 * h * 4))
	emuLaunch(t, "gather_bf16", 3, 256, 0, yb, wb, bad, h, vocab)
	got := emuDown[float32](yb, 3*h)
	for i, v := range got {
		if math.IsNaN(float64(v)) != (i >= h) {
			t.Fatalf("gather_bf16 with ids 3, -1, %d: y[%d] = %g", vocab, i, v)
		}
	}
}

func TestEmuGemv(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 99))
	for _, s := range []struct{ n, k, split int }{{12288, 4096, 0}, {4096, 11008, 0}, {37, 64, 0}, {37, 64, 2}, {37, 64, 4}, {37, 64, 8}} {
		n, k, split := s.n, s.k, s.split
		if split == 0 {
			split = emuGemvSplit(n, k)
		}
		x, w, bias := autograd.Ref.Normal(r, k), randBF16(r, n*k, 0.02), randBF16(r, n, 0.1)
		want := emuMatVec(t, x, w, n, k)
		for i := range want {
			want[i] += autograd.Ref.BF16(bias[i])
		}
		m := newEmuMem(t)
		xb, wb, bb, yb := emuUp(m, x), emuUp(m, w), emuUp(m, bias), m.poisoned(int64(n*4))
		rpb := 8 / split
		emuLaunch(t, "gemv_bf16", (n+rpb-1)/rpb, 256, 0, yb, xb, wb, bb, n, k, split)
		// measured 3.2e-7, 4.9e-7, and 8e-8 to 1e-7 for [37, 64] with every split
		emuCheck(t, fmt.Sprintf("gemv_bf16 [%d, %d] split %d", n, k, split), emuDown[float32](yb, n), want, 5e-6)
	}
	// without a bias
	n, k := 100, 256
	x, w := autograd.Ref.Normal(r, k), randBF16(r, n*k, 0.02)
	m := newEmuMem(t)
	xb, wb, yb := emuUp(m, x), emuUp(m, w), m.poisoned(int64(n*4))
	emuLaunch(t, "gemv_bf16", (n+7)/8, 256, 0, yb, xb, wb, emuPtr(0), n, k, 1)
	emuCheck(t, "gemv_bf16 without bias", emuDown[float32](yb, n), emuMatVec(t, x, w, n, k), 2e-6) // measured 1.3e-7
}

func TestEmuGemvSwiGLU(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 99))
	for _, s := range [][2]int{{11008, 4096}, {176, 64}} {
		n, k := s[0], s[1]
		x, w1, w2 := autograd.Ref.Normal(r, k), randBF16(r, n*k, 0.05), randBF16(r, n*k, 0.05)
		want := emuSwiGLU(emuMatVec(t, x, w1, n, k), emuMatVec(t, x, w2, n, k))
		m := newEmuMem(t)
		xb, ab, bb, yb := emuUp(m, x), emuUp(m, w1), emuUp(m, w2), m.poisoned(int64(n*4))
		split := emuGemvSplit(n, k)
		rpb := 8 / split
		emuLaunch(t, "gemv_swiglu_bf16", (n+rpb-1)/rpb, 256, 0, yb, xb, ab, bb, n, k, split)
		// measured 4.5e-7, 1.8e-7
		emuCheck(t, fmt.Sprintf("gemv_swiglu_bf16 2 x [%d, %d]", n, k), emuDown[float32](yb, n), want, 5e-6)
	}
}

// TestEmuAttentionDecode: one query per (b, head) over a bf16 cache in chunks of 128 keys,
// then the merge, against float64 attention; one case with LogN scaling.
func TestEmuAttentionDecode(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 99))
	for _, c := range []struct{ L, lognSeq int }{{1, 0}, {300, 0}, {4000, 0}, {256, 0}, {700, 256}} {
		b, h, dim, maxLen := 2, 4, 128, 4096
		q, kc, vc := autograd.Ref.Normal(r, b*h*dim), randBF16(r, b*maxLen*h*dim, 1), randBF16(r, b*maxLen*h*dim, 1)
		scale := float32(1.3 / math.Sqrt(float64(dim)))
		ref := float64(scale)
		if c.lognSeq > 0 && c.L > c.lognSeq {
			ref *= float64(float32(math.Log(float64(c.L)) / math.Log(float64(c.lognSeq))))
		}
		want := autograd.Ref.Decode(q, autograd.Ref.Widen(kc), autograd.Ref.Widen(vc), b, h, dim, maxLen, c.L, ref)
		m := newEmuMem(t)
		qb, kb, vb, ob, pb := emuUp(m, q), emuUp(m, kc), emuUp(m, vc), m.poisoned(int64(b*h*dim*4)), emuUp(m, []int32{int32(c.L - 1)})
		maxChunks := (maxLen + 127) / 128
		partOut, partML := m.alloc(int64(b*h*maxChunks*dim*4)), m.alloc(int64(b*h*maxChunks*2*4))
		emuLaunch(t, "attention_decode_part", b*h*maxChunks, 256, 0, partOut, partML, qb, kb, vb, h, dim, maxLen, pb, scale, c.lognSeq, maxChunks)
		emuLaunch(t, "attention_decode_merge", b*h, 128, 0, ob, partOut, partML, dim, pb, maxChunks)
		// measured 0, 2.1e-7, 2.5e-7, 2.0e-7, 1.9e-7
		emuCheck(t, fmt.Sprintf("attention_decode %d keys, LogN %d", c.L, c.lognSeq), emuDown[float32](ob, b*h*dim), want, 3e-6)
	}
}

func TestEmuAddRMSNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 99))
	n, h := 2, 4096
	x, res, w := autograd.Ref.Normal(r, n*h), autograd.Ref.Normal(r, n*h), randBF16(r, h, 1)
	sum := make([]float32, n*h)
	for i := range sum {
		sum[i] = x[i] + res[i]
	}
	want := emuRMSNorm(t, sum, w, n, h)
	m := newEmuMem(t)
	xb, rb, wb, yb := emuUp(m, x), emuUp(m, res), emuUp(m, w), m.poisoned(int64(n*h*4))
	emuLaunch(t, "add_rmsnorm_bf16", n, 256, 0, yb, xb, rb, wb, h, float32(1e-6))
	emuCheck(t, "add_rmsnorm_bf16", emuDown[float32](yb, n*h), want, 5e-7) // measured 0 (rmsnorm_bf16's bound)
	emuCheck(t, "add_rmsnorm_bf16 x += r", emuDown[float32](xb, n*h), sum, 0)
}

// TestEmuBF16Out: the bf16-output variants of RMSNorm, add + RMSNorm and SwiGLU, and SwiGLU
// of bf16 inputs, against the CPU ops rounded to bf16.
func TestEmuBF16Out(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 99))
	n, h := 3, 4096
	x, res, w := autograd.Ref.Normal(r, n*h), autograd.Ref.Normal(r, n*h), randBF16(r, h, 1)
	m := newEmuMem(t)
	xb, wb, yb := emuUp(m, x), emuUp(m, w), m.poisoned(int64(n*h*2))
	emuLaunch(t, "rmsnorm_bf16_out", n, 256, 0, yb, xb, wb, h, float32(1e-6))
	// bf16 outputs: a float32 difference of an ulp can move a rounding (about 3.5e-5 each here);
	// measured 0, 0, 1.1e-5 and 0
	emuCheck(t, "rmsnorm_bf16_out", autograd.Ref.Widen(emuDown[uint16](yb, n*h)), emuRoundAll(emuRMSNorm(t, x, w, n, h)), 1e-4)
	sum := make([]float32, n*h)
	for i := range sum {
		sum[i] = x[i] + res[i]
	}
	rb, yb := emuUp(m, res), m.poisoned(int64(n*h*2))
	emuLaunch(t, "add_rmsnorm_bf16_out", n, 256, 0, yb, xb, rb, wb, h, float32(1e-6))
	emuCheck(t, "add_rmsnorm_bf16_out", autograd.Ref.Widen(emuDown[uint16](yb, n*h)), emuRoundAll(emuRMSNorm(t, sum, w, n, h)), 1e-4)

	cnt := 11008 * 2
	a, g := autograd.Ref.Normal(r, cnt), autograd.Ref.Normal(r, cnt)
	ab, gb, sb := emuUp(m, a), emuUp(m, g), m.poisoned(int64(cnt*2))
	emuLaunch(t, "swiglu_bf16_out", emuGrid(int64(cnt)), 256, 0, sb, ab, gb, int64(cnt))
	emuCheck(t, "swiglu_bf16_out", autograd.Ref.Widen(emuDown[uint16](sb, cnt)), emuRoundAll(emuSwiGLU(a, g)), 1e-4)

	cnt = 11008
	a16, g16 := randBF16(r, cnt, 1), randBF16(r, cnt, 1)
	ab, gb, sb = emuUp(m, a16), emuUp(m, g16), m.poisoned(int64(cnt*2))
	emuLaunch(t, "swiglu_bf16", emuGrid(int64(cnt)), 256, 0, sb, ab, gb, int64(cnt))
	emuCheck(t, "swiglu_bf16", autograd.Ref.Widen(emuDown[uint16](sb, cnt)), emuRoundAll(emuSwiGLU(autograd.Ref.Widen(a16), autograd.Ref.Widen(g16))), 1e-4)
}

// TestEmuKVAppend: a fused qkv row's k and v into the bf16 caches at a position; the rest of
// the caches unchanged.
func TestEmuKVAppend(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 99))
	b, width, maxLen, pos := 2, 256, 16, 5
	qkv := autograd.Ref.Normal(r, b*3*width)
	cache := randBF16(r, b*maxLen*width, 1)
	wantK, wantV := autograd.Ref.Widen(cache), autograd.Ref.Widen(cache)
	for bi := 0; bi < b; bi++ {
		for i := 0; i < width; i++ {
			wantK[(bi*maxLen+pos)*width+i] = emuRound(qkv[bi*3*width+width+i])
			wantV[(bi*maxLen+pos)*width+i] = emuRound(qkv[bi*3*width+2*width+i])
		}
	}
	m := newEmuMem(t)
	qb, kb, vb := emuUp(m, qkv), emuUp(m, cache), emuUp(m, cache)
	emuLaunch(t, "kv_append", b*1, 256, 0, kb, vb, qb+emuPtr(width*4), qb+emuPtr(2*width*4), 1, width, 3*width, 3*width, maxLen, pos)
	emuCheck(t, "kv_append k", autograd.Ref.Widen(emuDown[uint16](kb, b*maxLen*width)), wantK, 0)
	emuCheck(t, "kv_append v", autograd.Ref.Widen(emuDown[uint16](vb, b*maxLen*width)), wantV, 0)
}

// TestEmuElementwise: the residual add, bf16 rounding of strided rows and the bias add.
func TestEmuElementwise(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 99))
	n := 4096*3 + 5
	a, c := autograd.Ref.Normal(r, n), autograd.Ref.Normal(r, n)
	want := make([]float32, n)
	for i := range want {
		want[i] = a[i] + c[i]
	}
	m := newEmuMem(t)
	ab, cb, yb := emuUp(m, a), emuUp(m, c), m.poisoned(int64(n*4))
	emuLaunch(t, "add_f32", emuGrid(int64(n)), 256, 0, yb, ab, cb, int64(n))
	emuCheck(t, "add_f32", emuDown[float32](yb, n), want, 0)
	// a grid smaller than the data: the grid-stride loops
	yb = m.poisoned(int64(n * 4))
	emuLaunch(t, "add_f32", 3, 256, 0, yb, ab, cb, int64(n))
	emuCheck(t, "add_f32 on 3 blocks", emuDown[float32](yb, n), want, 0)

	rows, cols, stride := 3, 4096, 3*4096
	x := autograd.Ref.Normal(r, rows*stride)
	wantB := make([]float32, rows*cols)
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			wantB[i*cols+j] = emuRound(x[i*stride+j])
		}
	}
	xb, ob := emuUp(m, x), m.poisoned(int64(rows*cols*2))
	emuLaunch(t, "to_bf16_rows", emuGrid(int64(rows*cols)), 256, 0, ob, xb, rows, cols, stride)
	emuCheck(t, "to_bf16_rows", autograd.Ref.Widen(emuDown[uint16](ob, rows*cols)), wantB, 0)

	y0, bias := autograd.Ref.Normal(r, rows*cols), randBF16(r, cols, 1)
	wantBias := make([]float32, rows*cols)
	for i := range wantBias {
		wantBias[i] = y0[i] + autograd.Ref.BF16(bias[i%cols])
	}
	yb, bb := emuUp(m, y0), emuUp(m, bias)
	emuLaunch(t, "bias_bf16", emuGrid(int64(rows*cols)), 256, 0, yb, bb, rows, cols)
	emuCheck(t, "bias_bf16", emuDown[float32](yb, rows*cols), wantBias, 0)
}

// TestEmuCausalSoftmax: the softmax of prefill attention on the selftest's cases (one chunk of
// t queries after past keys), from the scores of random bf16 queries and keys, against float64
// softmax of the LogN-scaled scores over the visible keys rounded to bf16; the bf16
// probabilities overwrite the first half of each score row.
func TestEmuCausalSoftmax(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 99))
	for _, c := range []struct{ heads, t, past, lognSeq int }{{4, 37, 0, 0}, {2, 600, 100, 0}, {2, 9, 40, 16}} {
		h, dim, l := c.heads, 128, c.past+c.t
		q, k := autograd.Ref.Widen(randBF16(r, c.t*h*dim, 1)), autograd.Ref.Widen(randBF16(r, l*h*dim, 1))
		scale := float32(1 / math.Sqrt(float64(dim)))
		s := make([]float32, h*c.t*l) // [h, t, l] as the scores GEMM writes them
		want := make([]float32, h*c.t*l)
		for hi := 0; hi < h; hi++ {
			for ti := 0; ti < c.t; ti++ {
				row := s[(hi*c.t+ti)*l:][:l]
				for j := range row {
					var dot float64
					for d := 0; d < dim; d++ {
						dot += float64(q[(ti*h+hi)*dim+d]) * float64(k[(j*h+hi)*dim+d])
					}
					row[j] = float32(dot)
				}
				pos := c.past + ti
				cs := float64(scale) * autograd.Ref.LogN(c.lognSeq, l, pos)
				p := make([]float64, pos+1)
				for j := range p {
					p[j] = cs * float64(row[j])
				}
				refmath.Softmax(p)
				for j, v := range p {
					want[(hi*c.t+ti)*l+j] = emuRound(float32(v))
				}
			}
		}
		m := newEmuMem(t)
		sb := emuUp(m, s)
		emuLaunch(t, "causal_softmax", h*c.t, 256, 0, sb, c.t, l, c.past, scale, c.lognSeq, l)
		p := emuDown[uint16](sb, 2*h*c.t*l)
		got := make([]float32, h*c.t*l)
		for i := 0; i < h*c.t; i++ {
			copy(got[i*l:(i+1)*l], autograd.Ref.Widen(p[2*i*l:][:l]))
		}
		// measured 0, 1.1e-5, 0 (a float32 difference moving a bf16 rounding)
		emuCheck(t, fmt.Sprintf("causal_softmax %d queries after %d, %d heads, LogN %d", c.t, c.past, h, c.lognSeq), got, want, 1e-4)
		for i, v := range got {
			if i%l > c.past+i/l%c.t && v != 0 {
				t.Fatalf("causal_softmax: probability %g of a future key (row %d, key %d)", v, i/l, i%l)
			}
		}
	}
}

// TestEmuRotaryQKV: q rotated in place in the fused qkv buffer, k rotated and v rounded into
// the bf16 caches at the position read from device memory.
func TestEmuRotaryQKV(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 99))
	c := newRotaryQKVCase(r)
	tl, h, dim, past, maxLen, width, stride := c.t, c.heads, c.dim, c.past, c.maxLen, c.width, c.stride
	qkv, kc, vc, base, wantQ, wantK, wantV := c.qkv, c.kc, c.vc, c.base, c.wantQ, c.wantK, c.wantV
	m := newEmuMem(t)
	qkvb, kb, vb := emuUp(m, qkv), emuUp(m, kc), emuUp(m, vc)
	fb, pb := emuUp(m, autograd.InvFreq(base[0], dim)), emuUp(m, []int32{int32(past)})
	emuLaunch(t, "rotary_qkv", tl*h, min(dim/2, 128), 0, qkvb, kb, vb, fb, h, dim, pb, stride, 0, width, 2*width, maxLen)
	// measured 0 and 0: the CPU's float32 angles and double cos/sin (bounds for another libm)
	emuCheck(t, "rotary_qkv q in place", emuDown[float32](qkvb, tl*stride), wantQ, 1e-7)
	emuCheck(t, "rotary_qkv k to the cache", autograd.Ref.Widen(emuDown[uint16](kb, maxLen*width)), wantK, 1e-4)
	emuCheck(t, "rotary_qkv v to the cache", autograd.Ref.Widen(emuDown[uint16](vb, maxLen*width)), wantV, 0)
}

// emuSample is sample.cu's choice written from its definition, in float64 past the float32
// scaled logits: the penalized logits x, greedy's first arg-max, else z = x * invT, top-k
// keeping z >= the k-th largest, top-p dropping the ascending tail of probability mass <=
// 1 - p (among the top-k), and the first kept id in index order whose cumulative weight
// exceeds u times the total.
func emuSample(logits []float32, seen []byte, pen float32, greedy bool, invT float32, topK int, topP float32, u float64) int {
	n := len(logits)
	x := make([]float32, n)
	for i, v := range logits {
		if seen != nil && seen[i] != 0 {
			if v < 0 {
				v *= pen
			} else {
				v /= pen
			}
		}
		x[i] = v
	}
	arg := 0
	for i, v := range x {
		if v > x[arg] {
			arg = i
		}
	}
	if greedy {
		return arg
	}
	z := make([]float32, n)
	for i, v := range x {
		z[i] = v * invT
	}
	kept := make([]bool, n)
	for i := range kept {
		kept[i] = true
	}
	if topK > 0 && topK < n {
		sorted := slices.Clone(z)
		slices.Sort(sorted)
		kth := sorted[n-topK]
		for i, v := range z {
			kept[i] = v >= kth
		}
	}
	w := make([]float64, n)
	var total float64
	for i := range w {
		if kept[i] {
			w[i] = math.Exp(float64(z[i]) - float64(z[arg]))
			total += w[i]
		}
	}
	if topP > 0 && topP < 1 {
		order := make([]int, 0, n)
		for i := range kept {
			if kept[i] {
				order = append(order, i)
			}
		}
		sort.SliceStable(order, func(a, b int) bool { return z[order[a]] < z[order[b]] })
		var cum float64
		for j, i := range order {
			cum += w[i]
			if cum > float64(1-topP)*total || j == len(order)-1 {
				break
			}
			kept[i], w[i] = false, 0
		}
		total = 0
		for i := range w {
			total += w[i]
		}
	}
	target, last := u*total, -1
	var c float64
	for i := range w {
		if kept[i] {
			c += w[i]
			last = i
			if target < c {
				return i
			}
		}
	}
	return last
}

// TestEmuSample: the on-device sampler (one block of 1024 threads) against emuSample with the
// same draws, on logits of 3 N(0, 1) with 50 ids seen, for the settings of the CUDA selftest's
// sampler check (and one without a seen mask) on Qwen's vocabulary, fewer trials than there.
func TestEmuSample(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 99))
	const vocab, trials = 151936, 6
	for _, s := range []struct {
		greedy      bool
		temperature float64
		topK        int
		topP        float64
		pen         float64
		limit       int
		noSeen      bool
	}{
		{greedy: true, pen: 1.1},
		{temperature: 1, pen: 1},
		{temperature: 0.7, topK: 20, topP: 0.8, pen: 1.1},
		{temperature: 1, topP: 0.5, pen: 1},
		{temperature: 1.3, topK: 3, pen: 1.05, limit: vocab - 85},
		{temperature: 0.9, topK: 50, topP: 0.9, pen: 1.2, noSeen: true},
	} {
		what := fmt.Sprintf("sample_token greedy %v T %g k %d p %g pen %g", s.greedy, s.temperature, s.topK, s.topP, s.pen)
		differ := 0
		for range trials {
			logits := make([]float32, vocab)
			for i := range logits {
				logits[i] = float32(3 * r.NormFloat64())
			}
			seen := make([]byte, vocab)
			for range 50 {
				seen[r.IntN(vocab)] = 1
			}
			u := r.Float64()
			n := vocab
			if s.limit > 0 {
				n = s.limit
			}
			invT, greedy := float32(1/s.temperature), 0
			if s.greedy {
				invT, greedy = 1, 1
			}
			m := newEmuMem(t)
			out, work, lb := m.poisoned(4), m.poisoned(int64(vocab*4)), emuUp(m, logits)
			sb, hostSeen := emuUp(m, seen), seen[:n]
			if s.noSeen {
				sb, hostSeen = 0, nil
			}
			emuLaunch(t, "sample_token", 1, 1024, 0, out, work, lb, sb, n, float32(s.pen), greedy, invT, s.topK, float32(s.topP), u)
			got := int(emuDown[int32](out, 1)[0])
			want := emuSample(logits[:n], hostSeen, float32(s.pen), s.greedy, invT, s.topK, float32(s.topP), u)
			if got != want {
				differ++
				t.Logf("%s: id %d, the reference draws %d", what, got, want)
			}
		}
		t.Logf("%s: %d of %d ids differ", what, differ, trials)
		if differ > 0 { // measured 0 in every setting
			t.Errorf("%s: %d of %d ids differ from the reference", what, differ, trials)
		}
	}
}
