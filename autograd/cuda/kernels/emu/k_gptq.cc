//go:build cudaemu

// gptq.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_gptq {
#include "../gptq.cu"
}

EMU_KERNEL(k_gptq, gptq_diag)
EMU_KERNEL(k_gptq, gptq_damped)
EMU_KERNEL(k_gptq, gptq_chol_diag)
EMU_KERNEL(k_gptq, gptq_chol_panel)
EMU_KERNEL(k_gptq, gptq_chol_update)
EMU_KERNEL(k_gptq, gptq_dgemm)
EMU_KERNEL(k_gptq, gptq_upper_f32)
EMU_KERNEL(k_gptq, gptq_weights)
EMU_KERNEL(k_gptq, gptq_grids)
EMU_KERNEL(k_gptq, gptq_block)
EMU_KERNEL(k_gptq, gptq_update)
EMU_KERNEL(k_gptq, gptq_rtn_diff)
