// Batch-1 linear with a bf16 weight, the memory-bound core of decoding:
//   y[n] = sum_k x[k] W[n, k] (+ bias[n]),  W bf16 [N, K] (PyTorch layout), x, y float32.
// Blocks of 8 warps; `split` warps (1, 2, 4 or 8) share a row, each lane loading 8 bf16
// (16 bytes) at a time, so that short matrices still give every SM many loads in flight;
// fp32 accumulation, partial sums combined in shared memory. K must be a multiple of 8.
// gemv_swiglu_bf16 reads two weights with the same x and writes Qwen's MLP activation
// y[n] = (x . W1[n]) * silu(x . W2[n]) (up and gate projections and SwiGLU in one launch).
#include "common.cuh"

__device__ __forceinline__ float dot8(uint4 q, float4 x0, float4 x1) {
    return x0.x * __uint_as_float(q.x << 16) + x0.y * __uint_as_float(q.x & 0xffff0000u) +
           x0.z * __uint_as_float(q.y << 16) + x0.w * __uint_as_float(q.y & 0xffff0000u) +
           x1.x * __uint_as_float(q.z << 16) + x1.y * __uint_as_float(q.z & 0xffff0000u) +
           x1.z * __uint_as_float(q.w << 16) + x1.w * __uint_as_float(q.w & 0xffff0000u);
}

extern "C" __global__ void gemv_bf16(float* y, const float* x, const unsigned short* w, const unsigned short* bias, int n,
                                     int k, int split) {
    __shared__ float part[8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rpb = 8 / split;
    int row = blockIdx.x * rpb + warp / split;
    int piece = warp % split;
    float acc = 0.f;
    if (row < n) {
        const uint4* wr = reinterpret_cast<const uint4*>(w + (size_t)row * k);
        const float4* xv = reinterpret_cast<const float4*>(x);
        int c8 = k / 8;
#pragma unroll 4
        for (int c = piece * 32 + lane; c < c8; c += 32 * split) acc += dot8(wr[c], xv[2 * c], xv[2 * c + 1]);
    }
    acc = warp_sum(acc);
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (threadIdx.x < rpb) {
        int r = blockIdx.x * rpb + threadIdx.x;
        if (r < n) {
            float s = 0.f;
            for (int p = 0; p < split; p++) s += part[threadIdx.x * split + p];
            y[r] = s + (bias ? bf16f(bias[r]) : 0.f);
        }
    }
}

extern "C" __global__ void gemv_swiglu_bf16(float* y, const float* x, const unsigned short* w1, const unsigned short* w2,
                                            int n, int k, int split) {
    __shared__ float pa[8], pg[8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rpb = 8 / split;
    int row = blockIdx.x * rpb + warp / split;
    int piece = warp % split;
    float a = 0.f, g = 0.f;
    if (row < n) {
        const uint4* r1 = reinterpret_cast<const uint4*>(w1 + (size_t)row * k);
        const uint4* r2 = reinterpret_cast<const uint4*>(w2 + (size_t)row * k);
        const float4* xv = reinterpret_cast<const float4*>(x);
        int c8 = k / 8;
#pragma unroll 2
        for (int c = piece * 32 + lane; c < c8; c += 32 * split) {
            float4 x0 = xv[2 * c], x1 = xv[2 * c + 1];
            a += dot8(r1[c], x0, x1);
            g += dot8(r2[c], x0, x1);
        }
    }
    a = warp_sum(a);
    g = warp_sum(g);
    if (lane == 0) { pa[warp] = a; pg[warp] = g; }
    __syncthreads();
    if (threadIdx.x < rpb) {
        int r = blockIdx.x * rpb + threadIdx.x;
        if (r < n) {
            float sa = 0.f, sg = 0.f;
            for (int p = 0; p < split; p++) { sa += pa[threadIdx.x * split + p]; sg += pg[threadIdx.x * split + p]; }
            y[r] = sa * sg / (1.f + __expf(-sg));
        }
    }
}
