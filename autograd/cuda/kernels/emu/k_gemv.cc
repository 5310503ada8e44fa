//go:build cudaemu

// gemv.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_gemv {
#include "../gemv.cu"
}

EMU_KERNEL(k_gemv, gemv_bf16)
EMU_KERNEL(k_gemv, gemv_swiglu_bf16)
