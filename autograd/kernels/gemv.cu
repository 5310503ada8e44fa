// Batch-1 linear with a bf16 weight, the memory-bound core of decoding:
//   y[n] = sum_k x[k] W[n, k] (+ bias[n]),  W bf16 [N, K] (PyTorch layout), x, y float32.
// One warp per output row, each lane loading 8 bf16 (16 bytes) at a time; fp32 accumulation;
// K must be a multiple of 8 (every Qwen width is). Several warps per block.
#include "common.cuh"

extern "C" __global__ void gemv_bf16(float* y, const float* x, const unsigned short* w, const unsigned short* bias, int n, int k) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= n) return;
    const uint4* row = reinterpret_cast<const uint4*>(w + (size_t)warp * k);
    const float4* xv = reinterpret_cast<const float4*>(x);
    float acc = 0.f;
    for (int c = lane; c < k / 8; c += 32) {
        uint4 q = row[c];
        float4 x0 = xv[2 * c], x1 = xv[2 * c + 1];
        acc += x0.x * __uint_as_float(q.x << 16) + x0.y * __uint_as_float(q.x & 0xffff0000u);
        acc += x0.z * __uint_as_float(q.y << 16) + x0.w * __uint_as_float(q.y & 0xffff0000u);
        acc += x1.x * __uint_as_float(q.z << 16) + x1.y * __uint_as_float(q.z & 0xffff0000u);
        acc += x1.z * __uint_as_float(q.w << 16) + x1.w * __uint_as_float(q.w & 0xffff0000u);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[warp] = acc + (bias ? bf16f(bias[warp]) : 0.f);
}
