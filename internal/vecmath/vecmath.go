// Package vecmath is the element-wise float32 math of the CPU build's hot loops: the
// exponential and the logistic sigmoid over slices, in Go assembly for AVX2+FMA on amd64
// (eight lanes at a time) and plain Go elsewhere. Both paths compute the same function to
// within 2 ulp of the exact one; Kernel names the one in use.
package vecmath

import "math"

// Exp sets dst[i] = e^(src[i] - shift) * scale for every i (dst and src the same length; they
// may be the same slice). Arguments below -87.3, where e^x is no longer a normal float32,
// give 0, arguments above 88 give e^88 (a softmax's shifted scores are never above 0), and
// NaN stays NaN.
func Exp(dst, src []float32, shift, scale float32) {
	expSum(dst, src, shift, scale)
}

// expSum is Exp returning the sum of what it wrote, added up in float64.
func expSum(dst, src []float32, shift, scale float32) float64 {
	_ = dst[:len(src)]
	sum, done := expVec(dst, src, shift, scale)
	for i := done; i < len(src); i++ {
		dst[i] = Exp32(src[i]-shift) * scale
		sum += float64(dst[i])
	}
	return sum
}

// ExpSum sets dst[i] = e^(src[i] - shift) as Exp does (dst and src the same length; they may
// be the same slice) and returns their sum, added up in float64.
func ExpSum(dst, src []float32, shift float32) float64 { return expSum(dst, src, shift, 1) }

// SumExp is sum_i e^(src[i] - shift), each exponential as Exp's, summed in float64 as
// ExpSum sums them.
func SumExp(src []float32, shift float32) float64 {
	var buf [256]float32
	var sum float64
	for len(src) > 0 {
		n := min(len(buf), len(src))
		sum += ExpSum(buf[:n], src[:n], shift)
		src = src[n:]
	}
	return sum
}

// LogSumExp64 is log sum_i e^x[i] in float64 (-Inf for an empty x or one of only -Inf, +Inf
// when an element is +Inf, NaN when one is NaN), shifted by the largest element so that no
// exponential overflows.
func LogSumExp64(x []float64) float64 {
	m := math.Inf(-1)
	for _, v := range x {
		m = max(m, v)
	}
	if math.IsInf(m, 0) {
		return m
	}
	var sum float64
	for _, v := range x {
		sum += math.Exp(v - m)
	}
	return m + math.Log(sum)
}

// Max is the largest element of x: NaN if there is one, -Inf for an empty x.
func Max(x []float32) float32 {
	m, done := maxVec(x)
	for _, v := range x[done:] {
		if v != v {
			return v
		}
		m = max(m, v)
	}
	return m
}

// Sigmoid sets dst[i] = 1 / (1 + e^-src[i]) for every i (dst and src the same length; they
// may be the same slice), through an exponential of -|src[i]|, which never overflows.
func Sigmoid(dst, src []float32) {
	_ = dst[:len(src)]
	done := sigmoidVec(dst, src)
	for i := done; i < len(src); i++ {
		dst[i] = Sigmoid32(src[i])
	}
}

// Sigmoid32 is 1 / (1 + e^-x) in float32, as Sigmoid computes it.
func Sigmoid32(x float32) float32 {
	e := Exp32(-abs32(x))
	if x >= 0 {
		return 1 / (1 + e)
	}
	return e / (1 + e)
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// Exp32 is e^x in float32 (within 2 ulp for x <= 88; 0 below -87.3 and e^88 above 88, NaN
// for NaN): x = n ln 2 + r with n = x log2 e rounded to the nearest integer (|r| <= ln2 / 2),
// e^r by Cephes' expf polynomial,
// 2^n placed in the exponent bits. The assembly computes the same steps eight at a time.
func Exp32(x float32) float32 {
	if !(x >= expMin) { // also -inf and NaN
		if x != x {
			return x
		}
		return 0
	}
	x = min(x, expMax)
	n := float32(math.RoundToEven(float64(x * log2e)))
	r := x - n*ln2hi - n*ln2lo
	p := ((((c0*r+c1)*r+c2)*r+c3)*r+c4)*r + c5
	p = p*r*r + r + 1
	return p * math.Float32frombits(uint32(int32(n)+127)<<23)
}

// The constants of Exp32 (ln 2 split so that n ln2hi is exact).
const (
	expMin, expMax         = -87.3, 88
	log2e                  = 1.44269504088896341
	ln2hi, ln2lo           = 0.693359375, -2.12194440e-4
	c0, c1, c2, c3, c4, c5 = 1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1
)
