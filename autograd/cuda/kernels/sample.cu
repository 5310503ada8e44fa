// The next token chosen on the GPU, so only its id crosses to the host. Over the first n
// logits (one block of 1024 threads):
//   x_i = logits_i with the repetition penalty where seen[i] (x/pen when positive, x*pen when
//   negative); greedy: the first arg-max of x. Otherwise z_i = x_i * inv_temp; top-k keeps
//   z_i >= the k-th largest z (ties kept; k = 0: all); top-p drops the ascending tail whose
//   cumulative probability (among the top-k) is <= 1 - top_p, found by bisection on the
//   ordered bit pattern of z; the draw walks the kept tokens in index order to the first whose
//   cumulative weight exceeds u * total, as the host sampler does with the same u.
// work [n] float32 scratch (the exponentials).
#include "common.cuh"

#define THREADS 1024

__device__ __forceinline__ unsigned int order_key(float f) {
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float penalized(const float* logits, const unsigned char* seen, int i, float pen) {
    float x = logits[i];
    if (seen && seen[i]) x = x < 0.f ? x * pen : x / pen;
    return x;
}


__device__ int block_count(int v, int* redi) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (lane == 0) redi[warp] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? redi[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    __syncthreads();
    return v;
}

extern "C" __global__ void sample_token(int* out, float* work, const float* logits, const unsigned char* seen, int n,
                                        float pen, int greedy, float inv_temp, int top_k, float top_p, double u) {
    __shared__ float red[32];
    __shared__ int redi[32];
    __shared__ float bestv[32];
    __shared__ int besti[32];
    __shared__ float seg[THREADS];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // arg-max of the penalized logits (first index among equals)
    float bv = -INFINITY;
    int bi = n;
    for (int i = tid; i < n; i += blockDim.x) {
        float x = penalized(logits, seen, i, pen);
        if (x > bv || (x == bv && i < bi)) { bv = x; bi = i; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, bv, o);
        int oi = __shfl_xor_sync(0xffffffff, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { bestv[warp] = bv; besti[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        bv = lane < (blockDim.x >> 5) ? bestv[lane] : -INFINITY;
        bi = lane < (blockDim.x >> 5) ? besti[lane] : n;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffff, bv, o);
            int oi = __shfl_xor_sync(0xffffffff, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) { bestv[0] = bv; besti[0] = bi; }
    }
    __syncthreads();
    float zmax = bestv[0] * inv_temp;
    int arg = besti[0];
    if (greedy || arg >= n) {
        if (tid == 0) out[0] = arg < n ? arg : 0;
        return;
    }
    // top-k: the k-th largest key, built bit by bit from the top
    unsigned int kth = 0;
    if (top_k > 0 && top_k < n) {
        for (int bit = 31; bit >= 0; bit--) {
            unsigned int cand = kth | (1u << bit);
            int c = 0;
            for (int i = tid; i < n; i += blockDim.x) c += order_key(penalized(logits, seen, i, pen) * inv_temp) >= cand;
            if (block_count(c, redi) >= top_k) kth = cand;
        }
    }
    float total = 0.f;
    for (int i = tid; i < n; i += blockDim.x) {
        float z = penalized(logits, seen, i, pen) * inv_temp;
        float e = order_key(z) >= kth ? __expf(z - zmax) : 0.f;
        work[i] = e;
        total += e;
    }
    total = block_sum(total, red);
    // top-p: the largest key K whose lower tail mass (keys < K) is <= (1 - top_p) total
    unsigned int kp = 0;
    if (top_p > 0.f && top_p < 1.f) {
        float limit = (1.f - top_p) * total;
        for (int bit = 31; bit >= 0; bit--) {
            unsigned int cand = kp | (1u << bit);
            float m = 0.f;
            for (int i = tid; i < n; i += blockDim.x) {
                float e = work[i];
                if (e > 0.f && order_key(penalized(logits, seen, i, pen) * inv_temp) < cand) m += e;
            }
            if (block_sum(m, red) <= limit) kp = cand;
        }
    }
    // the draw: contiguous segments per thread, a scan of their sums, then one walk
    int per = (n + blockDim.x - 1) / blockDim.x;
    int lo = min(n, tid * per), hi = min(n, lo + per);
    float s = 0.f;
    int last = -1;
    for (int i = lo; i < hi; i++) {
        float e = work[i];
        if (e > 0.f && order_key(penalized(logits, seen, i, pen) * inv_temp) >= kp) { s += e; last = i; }
        else work[i] = 0.f;
    }
    __syncthreads();
    seg[tid] = s;
    __syncthreads();
    for (int o = 1; o < blockDim.x; o <<= 1) { // inclusive scan
        float v = tid >= o ? seg[tid - o] : 0.f;
        __syncthreads();
        seg[tid] += v;
        __syncthreads();
    }
    float kept = seg[blockDim.x - 1];
    float target = (float)(u * (double)kept);
    float before = seg[tid] - s;
    if (tid == 0) out[0] = -1;
    // the highest kept index, for a target at the very end (rounding)
    int lastAll = last;
    for (int o = 16; o > 0; o >>= 1) lastAll = max(lastAll, __shfl_xor_sync(0xffffffff, lastAll, o));
    if (lane == 0) redi[warp] = lastAll;
    __syncthreads();
    if (tid == 0) {
        int m = -1;
        for (int w = 0; w < (blockDim.x >> 5); w++) m = max(m, redi[w]);
        redi[0] = m;
    }
    __syncthreads();
    if (s > 0.f && before <= target && target < before + s) {
        float c = before;
        for (int i = lo; i < hi; i++) {
            c += work[i];
            if (work[i] > 0.f && target < c) { out[0] = i; break; }
        }
    }
    __syncthreads();
    if (tid == 0 && out[0] < 0) out[0] = redi[0] >= 0 ? redi[0] : arg;
}
