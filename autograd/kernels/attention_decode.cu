// Attention of one new query per (b, h) over a KV cache, for decoding:
//   q [B, H, D] (after rotary), cache k, v [B, max, H, D], keys 0..len-1 visible,
//   s_j = c (q . k_j) / sqrt(D) with c the LogN factor, out = sum_j softmax(s)_j v_j
//   -> out [B, H*D] (heads merged). One block per (b, h); scores in dynamic shared memory
//   (len floats), softmax in float32.
#include "common.cuh"

extern "C" __global__ void attention_decode(float* out, const float* q, const float* kc, const float* vc,
                                            int heads, int dim, int max_len, int len, float scale) {
    extern __shared__ float s[];
    __shared__ float red[32];
    int b = blockIdx.x / heads, h = blockIdx.x % heads;
    const float* qv = q + ((size_t)b * heads + h) * dim;
    size_t stride = (size_t)heads * dim;
    const float* kb = kc + (size_t)b * max_len * stride + (size_t)h * dim;
    const float* vb = vc + (size_t)b * max_len * stride + (size_t)h * dim;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        const float* kv = kb + (size_t)j * stride;
        float dot = 0.f;
        for (int i = 0; i < dim; i++) dot += qv[i] * kv[i];
        s[j] = dot * scale;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_max(m, red);
    float sum = 0.f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float e = __expf(s[j] - m);
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    float inv = 1.f / sum;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < len; j++) acc += s[j] * vb[(size_t)j * stride + i];
        out[((size_t)b * heads + h) * dim + i] = acc * inv;
    }
}
