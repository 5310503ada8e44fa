//go:build cudaemu

// int4.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_int4 {
#include "../int4.cu"
}

EMU_KERNEL(k_int4, gemv_int4)
EMU_KERNEL(k_int4, dequant_int4_bf16)
EMU_KERNEL(k_int4, bias_f32)
