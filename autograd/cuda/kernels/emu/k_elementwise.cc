//go:build cudaemu

// elementwise.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_elementwise {
#include "../elementwise.cu"
}

EMU_KERNEL(k_elementwise, add_f32)
EMU_KERNEL(k_elementwise, to_bf16_rows)
EMU_KERNEL(k_elementwise, bias_bf16)
