//go:build cudaemu && !qtcuda

package cuda

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestEmulatedInt4Weights: a GPTQ layer is uploaded once per device (g_idx only in
// act-order, a zero bias not at all), ReleaseWeights gives its buffers back, and what the
// kernels cannot do is refused in words.
func TestEmulatedInt4Weights(t *testing.T) {
	d := openEmulated(t)
	r := rand.New(rand.NewPCG(1, 2))
	plain, act := randInt4(r, 4, 256, 64, 64, false, false), randInt4(r, 4, 256, 64, 64, true, true)
	plain.Bias = make([]float32, plain.N) // stored zeros: no bias
	held := d.Allocated
	pw, err := d.int4Weights(plain)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := d.int4Weights(plain); err != nil || again != pw {
		t.Fatalf("a second upload of the same layer: %v %v", again == pw, err)
	}
	aw, err := d.int4Weights(act)
	if err != nil {
		t.Fatal(err)
	}
	if pw.Group != 64 || pw.GIdx != nil || pw.Bias != nil || aw.Group != 0 || aw.GIdx == nil || aw.Bias == nil {
		t.Errorf("plain: group %d, g_idx %v, bias %v; act-order: group %d, g_idx %v, bias %v", pw.Group, pw.GIdx, pw.Bias, aw.Group, aw.GIdx, aw.Bias)
	}
	if got, want := d.Allocated-held, pw.Bytes()+aw.Bytes(); got != want || want != (256/8*64*4+4*64/8*4+4*64*4)*2+256*4+64*4 {
		t.Errorf("device memory of the two layers: %d, their buffers %d", got, want)
	}
	d.ReleaseWeights()
	if len(d.int4) != 0 || pw.QWeight != nil || aw.GIdx != nil {
		t.Errorf("after ReleaseWeights: %d layers held", len(d.int4))
	}
	pooled := 0
	for _, ptrs := range d.pool {
		pooled += len(ptrs)
	}
	if pooled != 3+5 {
		t.Errorf("%d buffers back in the pool, want 8", pooled)
	}

	x, y := d.mustAlloc(t, 4*256+4), d.mustAlloc(t, 4*64)
	aw, _ = d.int4Weights(act)
	for _, c := range []struct {
		err  error
		want string
	}{
		{d.GemvInt4(y, x.Slice(4, 4*256), aw), "16-byte aligned"},
		{d.GemvInt4(y.Slice(0, 4*63), x, aw), "must fit"},
		{d.DequantInt4BF16(y, aw), "output [64, 256] bf16"},
		{func() error { w := *aw; w.Bits = 3; return d.GemvInt4(y, x, &w) }(), "2, 4 or 8"},
		{func() error { w := *aw; w.GIdx = nil; return d.GemvInt4(y, x, &w) }(), "act-order with g_idx"},
		{func() error { w := *act; w.Bits = 3; _, err := d.UploadInt4(&w); return err }(), "2, 4 or 8"},
		{func() error { w := *act; w.K, w.N = 1<<16, 1<<15; _, err := d.UploadInt4(&w); return err }(), "tensor sizes"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("got %v, want an error with %q", c.err, c.want)
		}
	}
}

func (d *Device) mustAlloc(t *testing.T, bytes int64) *Buffer {
	t.Helper()
	b, err := d.Alloc(bytes, "test buffer")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
