//go:build cudaemu

// The part of CUDA C++ that the kernels of autograd/kernels use, for compiling them with a host
// C++20 compiler and running them on the CPU (see emu.go and runtime.cc). A block runs on one
// OS thread, its threads as fibers: __shared__ variables are thread_local statics, __syncthreads
// waits for the block's threads, and a warp shuffle exchanges values through per-warp slots and
// a per-warp barrier. Every thread of the block (warp) must reach each __syncthreads (shuffle),
// as CUDA requires; a thread that has returned no longer counts.
#pragma once

// No fused multiply-adds in the kernels, even where the host has FMA instructions: every
// product and sum rounds on its own.
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <bit>
#include <type_traits>

#include "cuda_bf16.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static thread_local
#define __launch_bounds__(...)

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};

extern thread_local uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

namespace cuda_emu {
void syncthreads();
// exchange publishes v as this lane's value of the warp's next shuffle and returns the value
// of lane src of the warp (its own v when src is not a lane of the warp).
uint64_t exchange(uint64_t v, int src);

template <class T>
inline T shuffle(T v, int src) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = exchange(bits, src);
    memcpy(&v, &bits, sizeof(T));
    return v;
}

inline int lane() { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31; }
}  // namespace cuda_emu

inline void __syncthreads() { cuda_emu::syncthreads(); }

// Shuffles within segments of width lanes (a power of two <= 32); the mask is not checked: all
// lanes of the warp take part.
template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int l = cuda_emu::lane();
    return cuda_emu::shuffle(v, (l & ~(width - 1)) | (src & (width - 1)));
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int l = cuda_emu::lane(), src = l ^ mask;
    return cuda_emu::shuffle(v, (src & ~(width - 1)) == (l & ~(width - 1)) ? src : l);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    int l = cuda_emu::lane();
    return cuda_emu::shuffle(v, (l & (width - 1)) + (int)delta < width ? l + (int)delta : l);
}

// atomicAdd returns the old value; relaxed ordering, as on the device. The value converts to
// the pointer's type, as with CUDA's overloads.
template <class T>
inline T atomicAdd(T* p, std::type_identity_t<T> v) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, int> || std::is_same_v<T, unsigned int> ||
                  std::is_same_v<T, unsigned long long>);
    return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}

inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __uint_as_float(unsigned int u) { return std::bit_cast<float>(u); }
inline unsigned int __float_as_uint(float f) { return std::bit_cast<unsigned int>(f); }

// fmaxf and fminf are the C library's: a NaN operand gives the other one, as on the device.

// The fast intrinsics as the hardware computes them: __expf is ex2.approx of x*log2(e) (the
// rounding of that product is most of its error), subnormal results flushed to zero; __logf
// is lg2.approx times ln 2; __fdividef is x times the reciprocal of y, 0 for
// 2^126 < |y| < 2^128 (NaN when x is infinite). rsqrtf is 1/sqrt(x) (rsqrt.approx is within
// 2 ulp of it).
inline float __expf(float x) {
    float e = exp2f(x * 1.44269504f);
    return e < 0x1p-126f ? 0.f : e;
}
inline float __logf(float x) { return log2f(x) * 0.693147181f; }
inline float __fdividef(float x, float y) {
    float a = fabsf(y);
    if (a > 0x1p126f && isfinite(a)) return isinf(x) ? NAN : 0.f;
    return x * (1.f / y);
}
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }

// __umulhi is the high 32 bits of the 64-bit product.
inline unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((uint64_t)a * b) >> 32); }

// The rounded double and float operations nvcc never fuses into multiply-adds.
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
// Their float twins, and the correctly rounded float division.
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

// min and max of CUDA's global namespace (same-type overloads).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
