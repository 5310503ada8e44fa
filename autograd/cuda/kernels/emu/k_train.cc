//go:build cudaemu

// train.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_train {
#include "../train.cu"
}

EMU_KERNEL(k_train, rmsnorm_grad_x)
EMU_KERNEL(k_train, swiglu_grad)
EMU_KERNEL(k_train, rotary_pos)
EMU_KERNEL(k_train, dropout)
EMU_KERNEL(k_train, cross_entropy_rows)
EMU_KERNEL(k_train, cross_entropy_grad)
EMU_KERNEL(k_train, embedding_rows_grad)
EMU_KERNEL(k_train, adamw)
EMU_KERNEL(k_train, sum_squares)
EMU_KERNEL(k_train, scale_f32)
EMU_KERNEL(k_train, attn_train_softmax)
EMU_KERNEL(k_train, attn_row_dot)
EMU_KERNEL(k_train, attn_train_dscores)
