//go:build cudaemu

// attention_decode.cu compiled for the emulator in a namespace of its own (helpers of different .cu files
// never meet), its kernels registered by name.

#include "cuda_emu.h"
#include "registry.h"

namespace k_attention_decode {
#include "../attention_decode.cu"
}

EMU_KERNEL(k_attention_decode, attention_decode_part)
EMU_KERNEL(k_attention_decode, attention_decode_merge)
