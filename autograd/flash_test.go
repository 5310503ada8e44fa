package autograd

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"gorgonia.org/tensor"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// TestAttentionCacheMatchesFull: a prompt attended in two chunks through the KV cache (the
// second starting at 70, inside a key block) gives the rows the whole prompt at once gives,
// with left padding in one row and right padding in the other.
func TestAttentionCacheMatchesFull(t *testing.T) {
	const batch, heads, dim, total, first = 2, 2, 8, 150, 70
	r := rand.New(rand.NewPCG(3, 4))
	width := heads * dim
	rnd := func() []float32 {
		v := make([]float32, batch*total*width)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	q, k, v := rnd(), rnd(), rnd()
	real := func(b, j int) bool { return (b == 0 && j >= 10) || (b == 1 && j < 140) }
	mask := func(keys int) []bool {
		m := make([]bool, batch*keys)
		for b := range batch {
			for j := range keys {
				m[b*keys+j] = real(b, j)
			}
		}
		return m
	}
	// chunk is positions [t0, t1) of every row as a [batch, t1-t0, heads, dim] tensor.
	chunk := func(x []float32, t0, t1 int) *tensor.Dense {
		var out []float32
		for b := range batch {
			out = append(out, x[(b*total+t0)*width:(b*total+t1)*width]...)
		}
		return tensor.New(tensor.WithShape(batch, t1-t0, heads, dim), tensor.WithBacking(out))
	}
	full, _, err := attnForward[float32](chunk(q, 0, total), chunk(k, 0, total), chunk(v, 0, total), 0,
		&Step{Batch: batch, Seq: total, KeyMask: mask(total)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cache := NewKVCache(1, batch, total, heads, dim)
	var got *tensor.Dense
	for _, c := range [][2]int{{0, first}, {first, total}} {
		st := &Step{Batch: batch, Seq: c[1] - c[0], Past: c[0], Cache: cache, KeyMask: mask(c[1])}
		if got, _, err = attnForward[float32](chunk(q, c[0], c[1]), chunk(k, c[0], c[1]), chunk(v, c[0], c[1]), 0, st, nil); err != nil {
			t.Fatal(err)
		}
	}
	fd, gd := full.Data().([]float32), got.Data().([]float32)
	n := (total - first) * width
	for b := range batch {
		want := fd[(b*total+first)*width:][:n]
		// measured 0: the chunk's queries see the same key blocks in the same order; 1e-6
		// leaves room for another blocking of the keys
		if d := refmath.RelDiff[float32, float32](want, gd[b*n:][:n]); d > 1e-6 {
			t.Errorf("row %d: the cached chunk differs from the whole prompt by %.3g", b, d)
		}
	}
}

// BenchmarkAttention is the attention op's forward (prefill) and forward + backward
// (training) at Qwen-7B's head size, 8 heads: its time per token should grow with T as the
// FLOPs do (2 T D H multiply-adds per query for the forward on average, causal), so
// ns/token divided by T stays roughly flat.
func BenchmarkAttention(b *testing.B) {
	const heads, dim = 8, 128
	for _, t := range []int{128, 512, 2048} {
		r := rand.New(rand.NewPCG(1, uint64(t)))
		rnd := func() *tensor.Dense {
			x := make([]float32, t*heads*dim)
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			return tensor.New(tensor.WithShape(1, t, heads, dim), tensor.WithBacking(x))
		}
		q, k, v := rnd(), rnd(), rnd()
		st := &Step{Batch: 1, Seq: t}
		flops := float64(2*t*t*heads*dim) * 2 / 2 // QK^T and PV, half under the causal mask
		b.Run(fmt.Sprintf("forward/T=%d", t), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := attnForward[float32](q, k, v, 0, st, nil); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(sec*1e9/float64(t), "ns/token")
			b.ReportMetric(flops/sec/1e9, "GFLOP/s")
		})
		b.Run(fmt.Sprintf("backward/T=%d", t), func(b *testing.B) {
			out, lse, err := attnForward[float32](q, k, v, 0, st, nil)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := attnBackward[float32](q, k, v, out, out, lse, st, nil); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(sec*1e9/float64(t), "ns/token")
			b.ReportMetric(2.5*flops/sec/1e9, "GFLOP/s") // five products to the forward's two
		})
	}
}
