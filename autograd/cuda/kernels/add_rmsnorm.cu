// Residual add fused with the next RMSNorm, one block per row:
//   x[n,:] += r[n,:];  y[n,j] = x[n,j] * rsqrt(mean_j x[n,j]^2 + eps) * w[j]
// x (updated in place), r float32 [N, H]; w bf16 [H]; y float32, or bf16 (_out) when the
// norm only feeds GEMMs. Saves a launch and a pass over x.
#include "common.cuh"

template <typename Out, bool BF16>
__device__ __forceinline__ void add_rmsnorm(Out* y, float* x, const float* r, const unsigned short* w, int h, float eps) {
    __shared__ float red[32];
    float* row = x + (size_t)blockIdx.x * h;
    const float* add = r + (size_t)blockIdx.x * h;
    Out* out = y + (size_t)blockIdx.x * h;
    float ss = 0.f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float v = row[j] + add[j];
        row[j] = v;
        ss += v * v;
    }
    ss = block_sum(ss, red);
    float s = rsqrtf(ss / h + eps);
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float v = row[j] * s * bf16f(w[j]);
        if (BF16) out[j] = to_bf16(v); else out[j] = v;
    }
}

extern "C" __global__ void add_rmsnorm_bf16(float* y, float* x, const float* r, const unsigned short* w, int h, float eps) {
    add_rmsnorm<float, false>(y, x, r, w, h, eps);
}

extern "C" __global__ void add_rmsnorm_bf16_out(unsigned short* y, float* x, const float* r, const unsigned short* w, int h,
                                                float eps) {
    add_rmsnorm<unsigned short, true>(y, x, r, w, h, eps);
}
