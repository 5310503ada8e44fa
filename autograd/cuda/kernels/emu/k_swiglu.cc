//go:build cudaemu

// swiglu.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_swiglu {
#include "../swiglu.cu"
}

EMU_KERNEL(k_swiglu, swiglu)
EMU_KERNEL(k_swiglu, swiglu_bf16_out)
EMU_KERNEL(k_swiglu, swiglu_bf16)
