//go:build cudaemu

// chunkloss.cu compiled for the emulator in a namespace of its own, its kernel registered by
// name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_chunkloss {
#include "../chunkloss.cu"
}

EMU_KERNEL(k_chunkloss, cross_entropy_chunk)
