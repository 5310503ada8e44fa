//go:build cudaemu

// sample.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_sample {
#include "../sample.cu"
}

EMU_KERNEL(k_sample, sample_token)
