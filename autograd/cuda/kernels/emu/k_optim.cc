//go:build cudaemu

// optim.cu compiled for the emulator in a namespace of its own, its kernels registered by
// name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_optim {
#include "../optim.cu"
}

EMU_KERNEL(k_optim, grad_accumulate)
EMU_KERNEL(k_optim, div_f32)
