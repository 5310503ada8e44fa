// Package matmul is the float32 matrix product of the CPU build: C = alpha op(A) op(B) +
// beta C on row-major slices with any strides, B float32 or bf16 (widened while packed).
// It runs an AVX-512 or AVX2+FMA micro-kernel in Go assembly when the CPU has one (Kernel
// names it) and plain Go otherwise; FMAPeak measures the multiply-add throughput it is held
// against.
package matmul
