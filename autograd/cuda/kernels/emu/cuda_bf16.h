//go:build cudaemu

// Stands in for CUDA's <cuda_bf16.h> when the kernels are compiled as C++ by the emulator: the
// kernels include it but handle bf16 as raw 16-bit patterns (unsigned short), so nothing of it
// is needed.
#pragma once
