// Appends new keys and values to a layer's bf16 KV cache:
//   kc[b, pos+t, :] = bf16(k[b, t, :]), vc[b, pos+t, :] = bf16(v[b, t, :])  (rows of width = heads*dim)
// k and v rows are k_stride and v_stride floats apart (views into a fused qkv buffer).
// One block per (b, t); one launch for both tensors.
#include "common.cuh"

extern "C" __global__ void kv_append(unsigned short* kc, unsigned short* vc, const float* k, const float* v, int t_len,
                                    int width, int k_stride, int v_stride, int max_len, int pos) {
    int bt = blockIdx.x;
    int b = bt / t_len, t = bt % t_len;
    size_t dst = ((size_t)b * max_len + pos + t) * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        kc[dst + i] = to_bf16(k[(size_t)bt * k_stride + i]);
        vc[dst + i] = to_bf16(v[(size_t)bt * v_stride + i]);
    }
}
