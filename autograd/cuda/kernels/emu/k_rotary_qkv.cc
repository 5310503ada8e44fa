//go:build cudaemu

// rotary_qkv.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_rotary_qkv {
#include "../rotary_qkv.cu"
}

EMU_KERNEL(k_rotary_qkv, rotary_qkv)
