//go:build cudaemu

// causal_softmax.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_causal_softmax {
#include "../causal_softmax.cu"
}

EMU_KERNEL(k_causal_softmax, causal_softmax)
