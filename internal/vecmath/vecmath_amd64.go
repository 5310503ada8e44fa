//go:build amd64

package vecmath

import (
	"math"

	"golang.org/x/sys/cpu"
)

func expAVX2(n int, dst, src *float32, shift, scale float32, k *[kLen][8]float32) float64
func sigmoidAVX2(n int, dst, src *float32, k *[kLen][8]float32)
func maxAVX2(n int, src *float32) (m float32, nan bool)

var hasAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// Kernel names the code Exp and Sigmoid run: "avx2" or "pure Go".
func Kernel() string {
	if hasAVX2 {
		return "avx2"
	}
	return "pure Go"
}

// The assembly's constants, each broadcast to eight lanes, in this order.
const (
	kMin = iota
	kMax
	kLog2e
	kLn2hi
	kLn2lo
	kC0
	kC1
	kC2
	kC3
	kC4
	kC5
	kOne
	kBias // int32 127
	kLen
)

var consts = func() (k [kLen][8]float32) {
	vals := [kLen]float32{kMin: expMin, kMax: expMax, kLog2e: log2e, kLn2hi: ln2hi, kLn2lo: ln2lo,
		kC0: c0, kC1: c1, kC2: c2, kC3: c3, kC4: c4, kC5: c5, kOne: 1}
	for i, v := range vals {
		for j := range k[i] {
			k[i][j] = v
		}
	}
	for j := range k[kBias] {
		k[kBias][j] = bitsOf(127)
	}
	return k
}()

// expVec runs the assembly over the first multiple of 8 elements and returns the sum of
// what it wrote and how many.
func expVec(dst, src []float32, shift, scale float32) (float64, int) {
	n := len(src) &^ 7
	if !hasAVX2 || n == 0 {
		return 0, 0
	}
	return expAVX2(n, &dst[0], &src[0], shift, scale, &consts), n
}

func sigmoidVec(dst, src []float32) int {
	n := len(src) &^ 7
	if !hasAVX2 || n == 0 {
		return 0
	}
	sigmoidAVX2(n, &dst[0], &src[0], &consts)
	return n
}

// bitsOf is the float32 whose bits are i (an integer constant in the table).
func bitsOf(i int32) float32 { return math.Float32frombits(uint32(i)) }

// maxVec is the largest of the first multiple of 8 elements and how many it saw (-Inf, 0
// when none); NaN if one of them is.
func maxVec(x []float32) (float32, int) {
	n := len(x) &^ 7
	if !hasAVX2 || n == 0 {
		return float32(math.Inf(-1)), 0
	}
	m, nan := maxAVX2(n, &x[0])
	if nan {
		return float32(math.NaN()), len(x)
	}
	return m, n
}
