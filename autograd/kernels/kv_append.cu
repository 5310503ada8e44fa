// Appends new keys and values to a layer's KV cache:
//   kc[b, pos+t, :] = k[b, t, :], vc[b, pos+t, :] = v[b, t, :]   (rows of width = heads*dim)
// k and v may be views into one fused qkv buffer (row stride src_stride floats).
// One block per (b, t); one launch for both tensors.
extern "C" __global__ void kv_append(float* kc, float* vc, const float* k, const float* v, int t_len, int width,
                                    int src_stride, int max_len, int pos) {
    int bt = blockIdx.x;
    int b = bt / t_len, t = bt % t_len;
    size_t dst = ((size_t)b * max_len + pos + t) * width;
    size_t src = (size_t)bt * src_stride;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        kc[dst + i] = k[src + i];
        vc[dst + i] = v[src + i];
    }
}
