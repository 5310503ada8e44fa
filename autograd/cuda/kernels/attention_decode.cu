// Attention of one new query per (b, h) over a KV cache, for decoding (flash-decoding style):
//   q [B, H, D] (after rotary), bf16 cache k, v [B, max, H, D], keys 0..len-1 visible with
//   len = *pos + 1 (read on the device, so a captured CUDA graph replays with the next
//   position), s_j = c scale (q . k_j) with c the LogN factor of the query (ln(len)/ln(logn_seq)
//   when logn_seq > 0 and len > logn_seq, else 1), out = sum_j softmax(s)_j v_j -> out [B, H*D].
// Pass 1 (attention_decode_part): the keys are split into chunks of CHUNK; the grid covers
// max_chunks chunks per (b, h) and blocks past len return at once. 8 warps take the keys in
// turn, each lane four dims (8-byte loads): scores, the chunk's max and sum of exponentials,
// and its unnormalised output (warps' partial sums combined in shared memory). Pass 2
// (attention_decode_merge): one block per (b, h) rescales and sums the chunks. D <= 128 and a
// multiple of 4.
#include "common.cuh"

#define CHUNK 128
#define WARPS 8

__device__ __forceinline__ float logn_factor(int len, int logn_seq) {
    return (logn_seq > 0 && len > logn_seq) ? (float)(log((double)len) / log((double)logn_seq)) : 1.f;
}

extern "C" __global__ void attention_decode_part(float* part_out, float* part_ml, const float* q, const unsigned short* kc,
                                                 const unsigned short* vc, int heads, int dim, int max_len, const int* pos,
                                                 float scale, int logn_seq, int max_chunks) {
    __shared__ float s[CHUNK];
    __shared__ float red[32];
    __shared__ float acc_s[WARPS][128];
    int len = *pos + 1;
    int chunks = (len + CHUNK - 1) / CHUNK;
    int c = blockIdx.x % max_chunks, bh = blockIdx.x / max_chunks;
    if (c >= chunks) return;
    scale *= logn_factor(len, logn_seq);
    int b = bh / heads, h = bh % heads;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    size_t stride = (size_t)heads * dim;
    const float* qv = q + (size_t)bh * dim;
    const unsigned short* kb = kc + (size_t)b * max_len * stride + (size_t)h * dim;
    const unsigned short* vb = vc + (size_t)b * max_len * stride + (size_t)h * dim;
    int j0 = c * CHUNK, n = min(len, j0 + CHUNK) - j0;
    // each lane holds four consecutive dims (8-byte loads of bf16 keys and values)
    int d0 = 4 * lane;
    bool has = d0 < dim;
    float q0 = 0.f, q1 = 0.f, q2 = 0.f, q3 = 0.f;
    if (has) { q0 = qv[d0]; q1 = qv[d0 + 1]; q2 = qv[d0 + 2]; q3 = qv[d0 + 3]; }
#pragma unroll 4
    for (int j = warp; j < n; j += WARPS) {
        float dot = 0.f;
        if (has) {
            uint2 kk = *reinterpret_cast<const uint2*>(kb + (size_t)(j0 + j) * stride + d0);
            dot = q0 * __uint_as_float(kk.x << 16) + q1 * __uint_as_float(kk.x & 0xffff0000u) +
                  q2 * __uint_as_float(kk.y << 16) + q3 * __uint_as_float(kk.y & 0xffff0000u);
        }
        dot = warp_sum(dot);
        if (lane == 0) s[j] = dot * scale;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_max(m, red);
    float sum = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float e = __expf(s[j] - m);
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum, red); // ends with a barrier: s holds every exponential
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll 4
    for (int j = warp; j < n; j += WARPS) {
        float p = s[j];
        if (has) {
            uint2 vv = *reinterpret_cast<const uint2*>(vb + (size_t)(j0 + j) * stride + d0);
            a0 += p * __uint_as_float(vv.x << 16);
            a1 += p * __uint_as_float(vv.x & 0xffff0000u);
            a2 += p * __uint_as_float(vv.y << 16);
            a3 += p * __uint_as_float(vv.y & 0xffff0000u);
        }
    }
    if (has) { acc_s[warp][d0] = a0; acc_s[warp][d0 + 1] = a1; acc_s[warp][d0 + 2] = a2; acc_s[warp][d0 + 3] = a3; }
    __syncthreads();
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float t = 0.f;
        for (int w = 0; w < WARPS; w++) t += acc_s[w][i];
        part_out[((size_t)bh * max_chunks + c) * dim + i] = t;
    }
    if (threadIdx.x == 0) {
        part_ml[((size_t)bh * max_chunks + c) * 2] = m;
        part_ml[((size_t)bh * max_chunks + c) * 2 + 1] = sum;
    }
}

extern "C" __global__ void attention_decode_merge(float* out, const float* part_out, const float* part_ml, int dim,
                                                  const int* pos, int max_chunks) {
    int chunks = (*pos + CHUNK) / CHUNK; // ceil((pos + 1) / CHUNK)
    int bh = blockIdx.x;
    const float* ml = part_ml + (size_t)bh * max_chunks * 2;
    float m = -INFINITY;
    for (int c = 0; c < chunks; c++) m = fmaxf(m, ml[2 * c]);
    float total = 0.f;
    for (int c = 0; c < chunks; c++) total += ml[2 * c + 1] * __expf(ml[2 * c] - m);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float acc = 0.f;
        for (int c = 0; c < chunks; c++) acc += part_out[((size_t)bh * max_chunks + c) * dim + i] * __expf(ml[2 * c] - m);
        out[(size_t)bh * dim + i] = acc / total;
    }
}
