// Rotary embedding of q and k fused with the KV-cache append, on the fused c_attn output:
//   qkv [T, stride] float32 holds q at q_off, k at k_off and v at v_off (floats, [heads, dim]
//   each); q is rotated in place; k rotated and v are rounded to bf16 into the caches
//   kc, vc [max_len, heads*dim] at position past + t, past = *pos (read on the device, so a
//   captured CUDA graph replays with the next position). NeoX halves: inv_freq [dim/2] is
//   computed on the host as the CPU does (float(base^(-2i/D))), angle = float(p) * inv_freq in
//   float32 as torch computes it, cos/sin of that angle in double. One block per (t, head),
//   one thread per pair (i, i + dim/2). Batch 1.
#include "common.cuh"

extern "C" __global__ void rotary_qkv(float* qkv, unsigned short* kc, unsigned short* vc, const float* inv_freq, int heads,
                                      int dim, const int* pos, int stride, int q_off, int k_off, int v_off, int max_len) {
    int t = blockIdx.x / heads, h = blockIdx.x % heads;
    int half = dim / 2, width = heads * dim;
    float p = (float)(*pos + t);
    float* row = qkv + (size_t)t * stride;
    size_t dst = (size_t)(*pos + t) * width + h * dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos((double)(p * inv_freq[i]), &s, &c);
        float cf = (float)c, sf = (float)s;
        float* q = row + q_off + h * dim;
        float q1 = q[i], q2 = q[i + half];
        q[i] = q1 * cf - q2 * sf;
        q[i + half] = q2 * cf + q1 * sf;
        const float* k = row + k_off + h * dim;
        float k1 = k[i], k2 = k[i + half];
        kc[dst + i] = to_bf16(k1 * cf - k2 * sf);
        kc[dst + i + half] = to_bf16(k2 * cf + k1 * sf);
        const float* v = row + v_off + h * dim;
        vc[dst + i] = to_bf16(v[i]);
        vc[dst + i + half] = to_bf16(v[i + half]);
    }
}
