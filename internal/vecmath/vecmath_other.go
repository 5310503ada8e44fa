//go:build !amd64

package vecmath

// Kernel names the code Exp and Sigmoid run: "pure Go" on this architecture.
func Kernel() string { return "pure Go" }

func expVec(dst, src []float32, shift, scale float32) int { return 0 }

func sigmoidVec(dst, src []float32) int { return 0 }
