// The softmax of prefill attention, between the two batched GEMMs (scores = K q, out = V p),
// in place: s [H, T, L] float32 raw scores q_t . k_j of the T new queries over L keys (the
// chunk's queries sit at positions past..past+T-1) become bf16 probabilities written over
// the first half of each score row (so p is [H, T, 2L] in bf16 elements, row stride 2L):
//   p_tj = softmax_j(c_t scale s_tj) over the visible keys j <= past + t, 0 beyond, where
//   c_t is the LogN factor of position past + t: ln(pos+1)/ln(logn_seq) when logn_seq > 0,
//   keys > logn_seq and pos+1 > logn_seq, else 1. fp32 throughout. One block per (h, t);
//   each block-wide step reads its scores before any thread overwrites them.
#include "common.cuh"

extern "C" __global__ void causal_softmax(float* s, int t_len, int len, int past, float scale, int logn_seq, int keys) {
    __shared__ float red[32];
    int row = blockIdx.x, t = row % t_len;
    int pos = past + t, visible = min(pos + 1, len);
    float c = scale;
    if (logn_seq > 0 && keys > logn_seq && pos + 1 > logn_seq) c *= (float)(log((double)(pos + 1)) / log((double)logn_seq));
    float* sr = s + (size_t)row * len;
    unsigned short* pr = reinterpret_cast<unsigned short*>(sr);
    float m = -INFINITY;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, c * sr[j]);
    m = block_max(m, red);
    float sum = 0.f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sum += __expf(c * sr[j] - m);
    sum = block_sum(sum, red);
    float inv = 1.f / sum;
    for (int j0 = 0; j0 < len; j0 += blockDim.x) {
        int j = j0 + threadIdx.x;
        float v = j < visible ? sr[j] : 0.f;
        __syncthreads(); // every score of this step is read before p overwrites s[j0/2 ..]
        if (j < len) pr[j] = j < visible ? to_bf16(__expf(c * v - m) * inv) : 0;
        __syncthreads();
    }
}
