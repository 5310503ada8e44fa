package opcases

// The float64 references of the table's ops: each is the math of the op's header comment,
// written out plainly.

import (
	"math"

	"github.com/qwen-tune/qwen-tune/autograd"
)

func rmsNorm(in [][]float64, _ *autograd.Step) []float64 {
	x, w := in[0], in[1]
	h := len(w)
	out := make([]float64, len(x))
	for n := 0; n < len(x)/h; n++ {
		var ss float64
		for j := 0; j < h; j++ {
			ss += x[n*h+j] * x[n*h+j]
		}
		r := 1 / math.Sqrt(ss/float64(h)+1e-6)
		for j := 0; j < h; j++ {
			out[n*h+j] = x[n*h+j] * r * w[j]
		}
	}
	return out
}

// rotary is the rotation of rotary.go's header: position Past+t (Positions[b, t] when
// packed), row b's base (Base[b], else RotaryBase), float32 inverse frequencies and angles.
func rotary(in [][]float64, st *autograd.Step) []float64 {
	x := in[0]
	const nh, d = 2, 6
	out := make([]float64, len(x))
	for b := 0; b < st.Batch; b++ {
		base := st.RotaryBase
		if st.Base != nil {
			base = st.Base[b]
		}
		for t := 0; t < st.Seq; t++ {
			p := st.Past + t
			if st.Positions != nil {
				p = int(st.Positions[b*st.Seq+t])
			}
			for h := 0; h < nh; h++ {
				off := ((b*st.Seq+t)*nh + h) * d
				for i := 0; i < d/2; i++ {
					invFreq := float32(math.Pow(base, -2*float64(i)/d))
					a := float64(float32(p) * invFreq)
					x1, x2 := x[off+i], x[off+i+d/2]
					out[off+i] = x1*math.Cos(a) - x2*math.Sin(a)
					out[off+i+d/2] = x2*math.Cos(a) + x1*math.Sin(a)
				}
			}
		}
	}
	return out
}

// attention needs the head count: it is the third dimension of the case's shape, which
// this reference recovers from the step and the input length with D = 4.
func attention(in [][]float64, st *autograd.Step) []float64 {
	q, k, v := in[0], in[1], in[2]
	const d = 4
	nh := len(q) / (st.Batch * st.Seq * d)
	out := make([]float64, len(q))
	at := func(x []float64, b, t, h int) []float64 { return x[((b*st.Seq+t)*nh+h)*d:][:d] }
	for b := 0; b < st.Batch; b++ {
		for h := 0; h < nh; h++ {
			for t := 0; t < st.Seq; t++ {
				c := 1 / math.Sqrt(d)
				if st.LogNSeq > 0 && st.Seq > st.LogNSeq && t+1 > st.LogNSeq {
					c *= math.Log(float64(t+1)) / math.Log(float64(st.LogNSeq))
				}
				var w []float64
				var sum float64
				m := math.Inf(-1)
				s := make([]float64, t+1)
				// key j (no cache here: keys are this row's Seq positions) is seen when it is a
				// real token and, packed, of the query's segment
				seen := func(j int) bool {
					token := st.KeyMask == nil || st.KeyMask[b*st.Seq+j]
					return token && (st.Segments == nil || st.Segments[b*st.Seq+j] == st.Segments[b*st.Seq+t])
				}
				for j := 0; j <= t; j++ {
					for i := 0; i < d; i++ {
						s[j] += at(q, b, t, h)[i] * at(k, b, j, h)[i]
					}
					s[j] *= c
					if seen(j) {
						m = math.Max(m, s[j])
					}
				}
				for j := 0; j <= t; j++ {
					e := 0.0
					if seen(j) {
						e = math.Exp(s[j] - m)
					}
					w = append(w, e)
					sum += e
				}
				o := at(out, b, t, h)
				for j := 0; j <= t; j++ {
					for i := 0; i < d; i++ {
						o[i] += w[j] / sum * at(v, b, j, h)[i]
					}
				}
			}
		}
	}
	return out
}

func embedding(in [][]float64, st *autograd.Step) []float64 {
	h := len(in[0]) / 7
	var out []float64
	for _, id := range st.IDs {
		out = append(out, in[0][int(id)*h:int(id+1)*h]...)
	}
	return out
}

func linear(in [][]float64, _ *autograd.Step) []float64 {
	x, w := in[0], in[1]
	const k = 6
	n, m := len(x)/k, len(w)/k
	out := make([]float64, n*m)
	for i := 0; i < n; i++ {
		for j := 0; j < m; j++ {
			for l := 0; l < k; l++ {
				out[i*m+j] += x[i*k+l] * w[j*k+l]
			}
			if len(in) > 2 {
				out[i*m+j] += in[2][j]
			}
		}
	}
	return out
}

func crossEntropy(in [][]float64, st *autograd.Step) []float64 {
	x := in[0]
	const vocab = 6
	var total float64
	n := 0
	for b := 0; b < st.Batch; b++ {
		for t := 0; t+1 < st.Seq; t++ {
			l := st.Labels[b*st.Seq+t+1]
			if l == autograd.IgnoreIndex {
				continue
			}
			row := x[(b*st.Seq+t)*vocab:][:vocab]
			var sum float64
			for _, v := range row {
				sum += math.Exp(v)
			}
			total += math.Log(sum) - row[l]
			n++
		}
	}
	return []float64{total / float64(n)}
}
