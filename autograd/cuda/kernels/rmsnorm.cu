// RMSNorm, one block per row: y[n,j] = x[n,j] * rsqrt(mean_j x[n,j]^2 + eps) * w[j]
// x float32 [N, H]; w bf16 [H]; y float32 (rmsnorm_bf16) or bf16 when it only feeds GEMMs
// (rmsnorm_bf16_out). Sum of squares in float32 by a block reduction.
#include "common.cuh"

extern "C" __global__ void rmsnorm_bf16(float* y, const float* x, const unsigned short* w, int h, float eps) {
    __shared__ float red[32];
    const float* row = x + (size_t)blockIdx.x * h;
    float* out = y + (size_t)blockIdx.x * h;
    float ss = 0.f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) ss += row[j] * row[j];
    ss = block_sum(ss, red);
    float r = rsqrtf(ss / h + eps);
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[j] = row[j] * r * bf16f(w[j]);
}

extern "C" __global__ void rmsnorm_bf16_out(unsigned short* y, const float* x, const unsigned short* w, int h, float eps) {
    __shared__ float red[32];
    const float* row = x + (size_t)blockIdx.x * h;
    unsigned short* out = y + (size_t)blockIdx.x * h;
    float ss = 0.f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) ss += row[j] * row[j];
    ss = block_sum(ss, red);
    float r = rsqrtf(ss / h + eps);
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[j] = to_bf16(row[j] * r * bf16f(w[j]));
}
