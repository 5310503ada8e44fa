//go:build cudaemu

// embed_grad.cu compiled for the emulator in a namespace of its own (helpers of different .cu
// files never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_embed_grad {
#include "../embed_grad.cu"
}

EMU_KERNEL(k_embed_grad, gather_rows_bf16)
EMU_KERNEL(k_embed_grad, segment_sum_rows)
EMU_KERNEL(k_embed_grad, add_columns)
