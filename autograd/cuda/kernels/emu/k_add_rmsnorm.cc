//go:build cudaemu

// add_rmsnorm.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_add_rmsnorm {
#include "../add_rmsnorm.cu"
}

EMU_KERNEL(k_add_rmsnorm, add_rmsnorm_bf16)
EMU_KERNEL(k_add_rmsnorm, add_rmsnorm_bf16_out)
