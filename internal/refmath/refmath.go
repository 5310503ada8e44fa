// Package refmath is the float64 arithmetic that the plain references and numeric checks of
// several packages share (the GPU selftest, the attention references, the golden tests): the
// relative difference of two vectors and a numerically stable softmax. The code under test
// never calls it.
package refmath

import "math"

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
