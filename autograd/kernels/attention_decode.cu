// Attention of one new query per (b, h) over a KV cache, for decoding (flash-decoding style):
//   q [B, H, D] (after rotary), cache k, v [B, max, H, D], keys 0..len-1 visible,
//   s_j = scale (q . k_j), out = sum_j softmax(s)_j v_j -> out [B, H*D] (heads merged).
// Pass 1 (attention_decode_part): the keys are split into chunks of CHUNK; one block per
// (b, h, chunk), one warp per key: scores, the chunk's max and sum of exponentials, and the
// chunk's unnormalised output. Pass 2 (attention_decode_merge): one block per (b, h)
// rescales and sums the chunks. D must be 128 or less (4 floats per lane).
#include "common.cuh"

#define CHUNK 256

extern "C" __global__ void attention_decode_part(float* part_out, float* part_ml, const float* q, const float* kc,
                                                 const float* vc, int heads, int dim, int max_len, int len, float scale) {
    __shared__ float s[CHUNK];
    __shared__ float red[32];
    int chunks = (len + CHUNK - 1) / CHUNK;
    int c = blockIdx.x % chunks, bh = blockIdx.x / chunks;
    int b = bh / heads, h = bh % heads;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    size_t stride = (size_t)heads * dim;
    const float* qv = q + (size_t)bh * dim;
    const float* kb = kc + (size_t)b * max_len * stride + (size_t)h * dim;
    const float* vb = vc + (size_t)b * max_len * stride + (size_t)h * dim;
    int j0 = c * CHUNK, j1 = min(len, j0 + CHUNK);
    float qr[4];
    for (int u = 0; u < 4; u++) qr[u] = (lane + 32 * u < dim) ? qv[lane + 32 * u] : 0.f;
    for (int j = j0 + warp; j < j1; j += warps) {
        const float* kv = kb + (size_t)j * stride;
        float dot = 0.f;
        for (int u = 0; u < 4; u++) if (lane + 32 * u < dim) dot += qr[u] * kv[lane + 32 * u];
        dot = warp_sum(dot);
        if (lane == 0) s[j - j0] = dot * scale;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j < j1 - j0; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_max(m, red);
    float sum = 0.f;
    for (int j = threadIdx.x; j < j1 - j0; j += blockDim.x) {
        float e = __expf(s[j] - m);
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float acc = 0.f;
        for (int j = j0; j < j1; j++) acc += s[j - j0] * vb[(size_t)j * stride + i];
        part_out[((size_t)bh * chunks + c) * dim + i] = acc;
    }
    if (threadIdx.x == 0) {
        part_ml[((size_t)bh * chunks + c) * 2] = m;
        part_ml[((size_t)bh * chunks + c) * 2 + 1] = sum;
    }
}

extern "C" __global__ void attention_decode_merge(float* out, const float* part_out, const float* part_ml, int dim, int len) {
    int chunks = (len + CHUNK - 1) / CHUNK;
    int bh = blockIdx.x;
    const float* ml = part_ml + (size_t)bh * chunks * 2;
    float m = -INFINITY;
    for (int c = 0; c < chunks; c++) m = fmaxf(m, ml[2 * c]);
    float total = 0.f;
    for (int c = 0; c < chunks; c++) total += ml[2 * c + 1] * __expf(ml[2 * c] - m);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float acc = 0.f;
        for (int c = 0; c < chunks; c++) acc += part_out[((size_t)bh * chunks + c) * dim + i] * __expf(ml[2 * c] - m);
        out[(size_t)bh * dim + i] = acc / total;
    }
}
