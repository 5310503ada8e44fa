package autograd

import (
	"math"
	"math/rand/v2"
	"testing"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// TestReferencesMatchAttentionOp: the float64 references the GPU selftest compares the
// attention kernels with equal the CPU Attention op over a KV cache (a chunk of queries after
// cached positions, LogN on; one decode query), also where the cached positions and the
// chunk end inside a block of the blocked attention.
func TestReferencesMatchAttentionOp(t *testing.T) {
	for i, c := range []struct{ heads, dim, past, t, lognSeq int }{{2, 8, 5, 4, 6}, {3, 16, 9, 1, 0}, {2, 8, 70, 65, 100}, {1, 8, 63, 129, 0}, {2, 8, 130, 1, 0}} {
		r := rand.New(rand.NewPCG(1, uint64(i)))
		maxLen := c.past + c.t + 2
		width := c.heads * c.dim
		cache := NewKVCache(1, 1, maxLen, c.heads, c.dim)
		copy(cache.K[0], randF32(r, c.past*width))
		copy(cache.V[0], randF32(r, c.past*width))
		q, k, v := randF32(r, c.t*width), randF32(r, c.t*width), randF32(r, c.t*width)
		st := &Step{Batch: 1, Seq: c.t, Past: c.past, Cache: cache, LogNSeq: c.lognSeq, RotaryBase: 10000}
		dense := func(x []float32) *tensor.Dense {
			return tensor.New(tensor.WithShape(1, c.t, c.heads, c.dim), tensor.WithBacking(x))
		}
		got, _, err := attnForward[float32](dense(q), dense(k), dense(v), 0, st, nil)
		if err != nil {
			t.Fatal(err)
		}
		op := got.Data().([]float32)
		scale := 1 / math.Sqrt(float64(c.dim))
		want := refPrefill(q, cache.K[0], cache.V[0], c.heads, c.dim, c.past, c.t, scale, st)
		if d := refmath.RelDiff[float32, float32](want, op); d > 9e-7 { // measured 8.6e-8
			t.Errorf("%+v: refPrefill differs from the Attention op by %.3g", c, d)
		}
		if c.t == 1 && c.lognSeq == 0 {
			dec := refDecode(q, cache.K[0], cache.V[0], 1, c.heads, c.dim, maxLen, c.past+1, scale)
			if d := refmath.RelDiff[float32, float32](dec, op); d > 8e-7 { // measured 7.2e-8
				t.Errorf("%+v: refDecode differs from the Attention op by %.3g", c, d)
			}
		}
	}
}
