// Package refmath is the float64 arithmetic that the plain references and numeric checks of
// several packages share (the GPU selftest, the attention references, the golden tests, the op
// table): the relative difference of two vectors, a numerically stable softmax, dropout's
// masks. The code under test
// never calls it.
package refmath

import (
	"math"

	"github.com/qwen-tune/qwen-tune/internal/philox"
)

// Float is an element type of the vectors compared.
type Float interface{ ~float32 | ~float64 }

// RelDiff is ||a - b|| / ||b|| in float64, b being the reference; a and b have one length.
func RelDiff[A, B Float](a []A, b []B) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

// RelDiffOrNorm is RelDiff, or ||a|| where b is all zeros (a gradient that is exactly zero,
// such as attention's dq over a single key, against values of 1e-16).
func RelDiffOrNorm[A, B Float](a []A, b []B) float64 {
	for _, x := range b {
		if x != 0 {
			return RelDiff(a, b)
		}
	}
	var num float64
	for _, x := range a {
		num += float64(x) * float64(x)
	}
	return math.Sqrt(num)
}

// Dropout is autograd/dropout.go's header written out: element i of x is kept when word
// i mod 4 of Philox4x32-10 of the counter (i/4, key) under seed, over 2^32, is at least p,
// and scaled by 1/(1-p).
func Dropout(x []float64, p float64, seed, key uint64) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		g := uint64(i / 4)
		b := philox.Block([4]uint32{uint32(g), uint32(g >> 32), uint32(key), uint32(key >> 32)}, [2]uint32{uint32(seed), uint32(seed >> 32)})
		if float64(b[i%4])/(1<<32) >= p {
			out[i] = v / (1 - p)
		}
	}
	return out
}

// Softmax replaces s by exp(s - max s) / sum(exp(s - max s)).
func Softmax(s []float64) {
	m := math.Inf(-1)
	for _, v := range s {
		m = math.Max(m, v)
	}
	var sum float64
	for j := range s {
		s[j] = math.Exp(s[j] - m)
		sum += s[j]
	}
	for j := range s {
		s[j] /= sum
	}
}
