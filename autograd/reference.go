package autograd

// Float64 references of the GPU kernels that have no single CPU op as their twin (attention
// over a cache for one chunk of queries, bf16 widening), and the random inputs they are run
// on; the selftest compares the kernels with them and reference_test.go checks them against
// the CPU ops.

import (
	"math"
	"math/rand/v2"

	"github.com/qwen-tune/qwen-tune/internal/refmath"
)

// widen is bf16 bits as float32.
func widen(v []uint16) []float32 {
	out := make([]float32, len(v))
	for i, b := range v {
		out[i] = bf16(b)
	}
	return out
}

// refPrefill is causal attention of t queries at positions past.. over a cache, in float64,
// with LogN scaling when st.LogNSeq is set.
func refPrefill(q, k, v []float32, h, dim, past, t int, scale float64, st *Step) []float32 {
	width := h * dim
	out := make([]float32, t*width)
	for ti := 0; ti < t; ti++ {
		pos := past + ti
		for hi := 0; hi < h; hi++ {
			refAttend(q[ti*width+hi*dim:][:dim], pos+1, scale*refLogN(st.LogNSeq, past+t, pos), k[hi*dim:], v[hi*dim:], width, out[ti*width+hi*dim:][:dim])
		}
	}
	return out
}

// refLogN is Qwen's logn_tensor entry for the query at absolute position pos, used when
// use_logn_attn is on and the key length exceeds seq_length: log_seq(pos+1) for pos+1 >
// seq_length, 1 otherwise (seq <= 0 turns it off).
func refLogN(seq, keys, pos int) float64 {
	if seq <= 0 || keys <= seq || pos+1 <= seq {
		return 1
	}
	return math.Log(float64(pos+1)) / math.Log(float64(seq))
}

// refAttend is one query's softmax attention over n keys in float64: key and value j are
// the dim floats at j*stride of k and v; the result goes to out.
func refAttend(qv []float32, n int, scale float64, k, v []float32, stride int, out []float32) {
	s := make([]float64, n)
	for j := range s {
		kv := k[j*stride:][:len(qv)]
		for i := range qv {
			s[j] += float64(qv[i]) * float64(kv[i])
		}
		s[j] *= scale
	}
	refmath.Softmax(s)
	for i := range out {
		var acc float64
		for j := range s {
			acc += s[j] * float64(v[j*stride+i])
		}
		out[i] = float32(acc)
	}
}

// refDecode is single-query attention over a cache, in float64.
func refDecode(q, k, v []float32, b, h, dim, maxLen, length int, scale float64) []float32 {
	out := make([]float32, b*h*dim)
	stride := h * dim
	for bi := 0; bi < b; bi++ {
		for hi := 0; hi < h; hi++ {
			off := bi*maxLen*stride + hi*dim
			refAttend(q[(bi*h+hi)*dim:][:dim], length, scale, k[off:], v[off:], stride, out[(bi*h+hi)*dim:][:dim])
		}
	}
	return out
}

// randF32 is n standard normal float32s.
func randF32(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}
