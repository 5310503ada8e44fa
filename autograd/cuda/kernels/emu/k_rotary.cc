//go:build cudaemu

// rotary.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_rotary {
#include "../rotary.cu"
}

EMU_KERNEL(k_rotary, rotary)
