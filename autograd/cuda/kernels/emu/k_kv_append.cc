//go:build cudaemu

// kv_append.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_kv_append {
#include "../kv_append.cu"
}

EMU_KERNEL(k_kv_append, kv_append)
