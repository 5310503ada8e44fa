// SwiGLU: y = a * silu(g), elementwise over n floats (Qwen's MLP: a = w1(x), g = w2(x));
// y float32 (may be a), or bf16 (swiglu_bf16_out) when it only feeds the down projection's GEMM;
// swiglu_bf16 reads a and g in bf16 too (prefill, where the up and gate GEMMs write bf16).
#include "common.cuh"

extern "C" __global__ void swiglu(float* y, const float* a, const float* g, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float gv = g[i];
        y[i] = a[i] * gv / (1.f + __expf(-gv));
    }
}

extern "C" __global__ void swiglu_bf16_out(unsigned short* y, const float* a, const float* g, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float gv = g[i];
        y[i] = to_bf16(a[i] * gv / (1.f + __expf(-gv)));
    }
}

extern "C" __global__ void swiglu_bf16(unsigned short* y, const unsigned short* a, const unsigned short* g, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float gv = bf16f(g[i]);
        y[i] = to_bf16(bf16f(a[i]) * gv / (1.f + __expf(-gv)));
    }
}
