// Shared helpers of the qwen-tune kernels: bf16 widening and warp/block reductions.
#pragma once
#include <cuda_bf16.h>

__device__ __forceinline__ float bf16f(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

// SumOp and MaxOp are the reductions of warp_reduce and block_reduce, each with its identity.
struct SumOp {
    __device__ __forceinline__ static float op(float a, float b) { return a + b; }
    __device__ __forceinline__ static float identity() { return 0.f; }
};
struct MaxOp {
    __device__ __forceinline__ static float op(float a, float b) { return fmaxf(a, b); }
    __device__ __forceinline__ static float identity() { return -INFINITY; }
};

// warp_reduce: every lane gets the reduction over its warp.
template <class R>
__device__ __forceinline__ float warp_reduce(float v) {
    for (int o = 16; o > 0; o >>= 1) v = R::op(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// block_reduce: every thread gets the reduction over the block (blockDim.x a multiple of 32,
// <= 1024); shared32 holds one partial per warp.
template <class R>
__device__ __forceinline__ float block_reduce(float v, float* shared32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce<R>(v);
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? shared32[lane] : R::identity();
    v = warp_reduce<R>(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<SumOp>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<MaxOp>(v); }
__device__ __forceinline__ float block_sum(float v, float* shared32) { return block_reduce<SumOp>(v, shared32); }
__device__ __forceinline__ float block_max(float v, float* shared32) { return block_reduce<MaxOp>(v, shared32); }

// to_bf16 rounds to the nearest bf16, ties to even (NaN stays NaN), as the host does.
__device__ __forceinline__ unsigned short to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffff) > 0x7f800000) return (unsigned short)((u >> 16) | 0x40);
    return (unsigned short)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
