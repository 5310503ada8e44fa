// GPTQ layers on the GPU, AutoGPTQ's layout as autograd.Int4 holds it (K inputs, N outputs,
// BITS bits a code, PER = 32 / BITS codes an int32):
//   W[k, n] = scales[g, n] (code[k, n] - (zero[g, n] + 1)),
//   code[k, n] = bits BITS (k % PER).. of qweight[k / PER, n]  (qweight [K/PER, N]),
//   zero[g, n] = bits BITS (n % PER).. of qzeros[g, n / PER]   (qzeros [G, N/PER]),
//   g = k / group with plain groups (group > 0; one group of K inputs for GPTQ's group size -1),
//   g = g_idx[k] with act-order (group == 0; g_idx [K] read, any order);
//   scales float32 [G, N] (the files' fp16 values, exact in float32).
// gemv_int4 is the decoding step (batch 1): y = x W (+ bias), every packed word read once;
// dequant_int4_bf16 writes W^T [N, K] in bf16 for the prefill's tensor-core GEMMs; bias_f32
// adds a float32 bias to the GEMM's rows. Bits 2, 4 and 8, each its own instantiation.
#include "common.cuh"

template <int BITS>
struct Codes {
    static constexpr int PER = 32 / BITS;
    static constexpr unsigned int MASK = (1u << BITS) - 1;
    __device__ __forceinline__ static float code(unsigned int q, int j) { return (float)((q >> (BITS * j)) & MASK); }
    // zero is zero[g, col] + 1, the value codes are centred on.
    __device__ __forceinline__ static float zero(const int* qzeros, int g, int col, int n) {
        unsigned int word = (unsigned int)qzeros[(size_t)g * (n / PER) + col / PER];
        return (float)(((word >> (BITS * (col % PER))) & MASK) + 1);
    }
};

// Group is the current group of a thread's column: its scale and zero, and, with plain groups,
// the first input past it.
struct Group {
    int g = -1, end = 0;
    float scale = 0.f, zero = 0.f;
};

// group_of is the group of input kk, the current one while kk is before its end (plain groups).
__device__ __forceinline__ int group_of(const Group& gr, int kk, const int* g_idx, int group) {
    return group > 0 ? (kk < gr.end ? gr.g : kk / group) : g_idx[kk];
}

// load makes g the current group of column col.
template <int BITS>
__device__ __forceinline__ void load(Group& gr, int g, const int* qzeros, const float* scales, int n, int group, int col) {
    gr.g = g;
    gr.end = (g + 1) * group;
    gr.scale = scales[(size_t)g * n + col];
    gr.zero = Codes<BITS>::zero(qzeros, g, col, n);
}

// GemvAcc is one thread's sum: per group, sq = sum x[k] code[k] and sx = sum x[k], folded into
// acc as scale (sq - zero sx) when the group ends (one multiply per code in the inner loop).
struct GemvAcc {
    float acc = 0.f, sq = 0.f, sx = 0.f;
    __device__ __forceinline__ void flush(const Group& gr) {
        acc = fmaf(gr.scale, sq - gr.zero * sx, acc);
        sq = 0.f;
        sx = 0.f;
    }
};

// gemv_word adds the PER inputs of packed word q (inputs k0..k0+PER-1 of column col) to a.
template <int BITS>
__device__ __forceinline__ void gemv_word(GemvAcc& a, Group& gr, unsigned int q, int k0, const float* x, const int* qzeros,
                                          const float* scales, const int* g_idx, int n, int group, int col) {
    constexpr int PER = Codes<BITS>::PER;
    if (group > 0 && k0 + PER <= gr.end) {  // the whole word lies in the current group
        const float4* xv = reinterpret_cast<const float4*>(x + k0);
#pragma unroll
        for (int j = 0; j < PER / 4; j++) {
            float4 v = xv[j];
            a.sq = fmaf(v.x, Codes<BITS>::code(q, 4 * j), a.sq);
            a.sq = fmaf(v.y, Codes<BITS>::code(q, 4 * j + 1), a.sq);
            a.sq = fmaf(v.z, Codes<BITS>::code(q, 4 * j + 2), a.sq);
            a.sq = fmaf(v.w, Codes<BITS>::code(q, 4 * j + 3), a.sq);
            a.sx += (v.x + v.y) + (v.z + v.w);
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < PER; j++) {
        int g = group_of(gr, k0 + j, g_idx, group);
        if (g != gr.g) {
            a.flush(gr);
            load<BITS>(gr, g, qzeros, scales, n, group, col);
        }
        float xk = x[k0 + j];
        a.sq = fmaf(xk, Codes<BITS>::code(q, j), a.sq);
        a.sx += xk;
    }
}

// gemv_int4: blocks of 32 columns x S slices of the packed rows (blockDim.x = 32 S, S <= 32,
// grid ceil(N / 32)). Thread (s, c) sums the words of slice s (a contiguous run of packed rows,
// four loads in flight) for column c: a warp reads 32 adjacent words of one packed row
// (128 bytes, coalesced) and broadcasts x. The slices' sums are added in slice order: the
// result does not depend on scheduling. x [K] float32 (16-byte aligned), y [N] float32, bias
// float32 [N] or null. Bounded to 64 registers a thread, so 1024-thread blocks always launch.
template <int BITS>
__device__ __forceinline__ void gemv_int4_body(float* __restrict__ y, const float* __restrict__ x,
                                               const unsigned int* __restrict__ qweight, const int* __restrict__ qzeros,
                                               const float* __restrict__ scales, const int* __restrict__ g_idx,
                                               const float* __restrict__ bias, int k, int n, int group, float (*part)[32]) {
    constexpr int PER = Codes<BITS>::PER;
    int c = threadIdx.x & 31, s = threadIdx.x >> 5, slices = blockDim.x >> 5;
    int col = blockIdx.x * 32 + c;
    int words = k / PER;
    int w0 = (int)((long long)words * s / slices), w1 = (int)((long long)words * (s + 1) / slices);
    GemvAcc a;
    if (col < n) {
        Group gr;
        for (int w = w0; w < w1; w += 4) {
            unsigned int q[4];
#pragma unroll
            for (int u = 0; u < 4; u++) q[u] = w + u < w1 ? qweight[(size_t)(w + u) * n + col] : 0u;
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (w + u < w1) gemv_word<BITS>(a, gr, q[u], (w + u) * PER, x, qzeros, scales, g_idx, n, group, col);
        }
        a.flush(gr);
    }
    part[s][c] = a.acc;
    __syncthreads();
    if (s == 0 && col < n) {
        float t = 0.f;
        for (int i = 0; i < slices; i++) t += part[i][c];
        y[col] = t + (bias ? bias[col] : 0.f);
    }
}

extern "C" __global__ void __launch_bounds__(1024)
    gemv_int4(float* y, const float* x, const unsigned int* qweight, const int* qzeros, const float* scales, const int* g_idx,
              const float* bias, int k, int n, int bits, int group) {
    __shared__ float part[32][32];
    switch (bits) {
        case 2: gemv_int4_body<2>(y, x, qweight, qzeros, scales, g_idx, bias, k, n, group, part); break;
        case 4: gemv_int4_body<4>(y, x, qweight, qzeros, scales, g_idx, bias, k, n, group, part); break;
        case 8: gemv_int4_body<8>(y, x, qweight, qzeros, scales, g_idx, bias, k, n, group, part); break;
    }
}

// dequant_int4_bf16: w [N, K] bf16 = W^T (PyTorch's Linear layout). One thread per run of 16
// inputs of one column (16 / PER packed words, read coalesced: consecutive threads take
// consecutive columns), whose 32 output bytes it writes as two 16-byte stores when K is a
// multiple of 8 (w 16-byte aligned), else as 32-bit pairs. Grid-stride over N ceil(K / 16) runs.
template <int BITS>
__device__ __forceinline__ void dequant_body(unsigned short* __restrict__ w, const unsigned int* __restrict__ qweight,
                                             const int* __restrict__ qzeros, const float* __restrict__ scales,
                                             const int* __restrict__ g_idx, int k, int n, int group) {
    constexpr int PER = Codes<BITS>::PER, WORDS = 16 / PER;
    long long total = (long long)((k + 15) / 16) * n;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        int r = (int)(i / n), col = (int)(i % n);
        int k0 = r * 16;
        unsigned int out[8];
        Group gr;
#pragma unroll
        for (int u = 0; u < WORDS; u++) {
            int kw = k0 + u * PER;
            unsigned int q = kw < k ? qweight[(size_t)(kw / PER) * n + col] : 0u;
#pragma unroll
            for (int j = 0; j < PER; j++) {
                unsigned short b = 0;
                if (kw + j < k) {
                    int g = group_of(gr, kw + j, g_idx, group);
                    if (g != gr.g) load<BITS>(gr, g, qzeros, scales, n, group, col);
                    b = to_bf16(gr.scale * (Codes<BITS>::code(q, j) - gr.zero));
                }
                int e = u * PER + j;
                if (e & 1) out[e >> 1] |= (unsigned int)b << 16;
                else out[e >> 1] = b;
            }
        }
        unsigned short* row = w + (size_t)col * k + k0;
        if (k0 + 16 <= k && (k & 7) == 0) {
            uint4* dst = reinterpret_cast<uint4*>(row);
            dst[0] = uint4{out[0], out[1], out[2], out[3]};
            dst[1] = uint4{out[4], out[5], out[6], out[7]};
        } else {
            unsigned int* dst = reinterpret_cast<unsigned int*>(row);  // K is even (a multiple of PER)
            for (int p = 0; p < 8 && k0 + 2 * p < k; p++) dst[p] = out[p];
        }
    }
}

extern "C" __global__ void dequant_int4_bf16(unsigned short* w, const unsigned int* qweight, const int* qzeros,
                                             const float* scales, const int* g_idx, int k, int n, int bits, int group) {
    switch (bits) {
        case 2: dequant_body<2>(w, qweight, qzeros, scales, g_idx, k, n, group); break;
        case 4: dequant_body<4>(w, qweight, qzeros, scales, g_idx, k, n, group); break;
        case 8: dequant_body<8>(w, qweight, qzeros, scales, g_idx, k, n, group); break;
    }
}

// bias_f32: y [rows, cols] += bias [cols] (float32, the GPTQ layer's fp16 bias exactly).
extern "C" __global__ void bias_f32(float* y, const float* bias, int rows, int cols) {
    long long total = (long long)rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)
        y[i] += bias[i % cols];
}
