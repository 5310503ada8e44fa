// The kernels of training graphs: the gradients of the block's element-wise ops, dropout,
// the shifted cross-entropy, AdamW, the global gradient norm and the softmax steps of chunked
// attention. Each follows its CPU twin in package autograd (or optim) step for step;
// reductions run in a fixed order (no atomics), so a step gives the same bits every time it
// runs.
#include "common.cuh"
#include "rotary.cuh"

// rmsnorm_grad_x: dx = r (dy w - x r mean_j(dy_j w_j x_j r)), r = rsqrt(mean(x^2) + eps), as
// rmsNormGradX; x, dy, dx float32 [N, H] (dx may be dy), w bf16 [H]. One block per row
// (blockDim.x a multiple of 32); one pass sums x^2 and dy w x (float32 partials, then the
// block reductions), a second writes dx.
extern "C" __global__ void rmsnorm_grad_x(float* dx, const float* x, const unsigned short* w, const float* dy, int h,
                                          float eps) {
    __shared__ float red[32];
    const float* row = x + (size_t)blockIdx.x * h;
    const float* g = dy + (size_t)blockIdx.x * h;
    float* out = dx + (size_t)blockIdx.x * h;
    float ss = 0.f, dot = 0.f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float v = row[j];
        ss += v * v;
        dot += g[j] * bf16f(w[j]) * v;
    }
    ss = block_sum(ss, red);
    dot = block_sum(dot, red);
    float r = rsqrtf(ss / h + eps);
    float mean = dot * r / h;  // mean_j(dy_j w_j x_j r)
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[j] = r * (g[j] * bf16f(w[j]) - row[j] * r * mean);
}

// swiglu_grad: for y = a silu(g): da = dy silu(g), dg = dy a s (1 + g (1 - s)), s = sigmoid(g),
// as swiglu's grad 1 and 2; elementwise over n floats (da may be a, dg may be g).
extern "C" __global__ void swiglu_grad(float* da, float* dg, const float* a, const float* g, const float* dy,
                                       long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float gv = g[i], av = a[i], d = dy[i];
        float s = 1.f / (1.f + __expf(-gv));
        da[i] = d * gv * s;
        dg[i] = d * av * s * (1.f + gv * (1.f - s));
    }
}

// rotary_pos: rotary.cu at explicit positions pos [B*T] (int32; packed rows restart at 0;
// null: position t) with per-row bases base [B] (double) and rotation sign (+1 forward, -1
// the backward's inverse rotation), as rotate with Step.Positions; x and y [B, T, heads, dim]
// with (b, t) rows x_stride and y_stride floats apart (y may be x). One block per (b, t).
extern "C" __global__ void rotary_pos(float* y, const float* x, const int* pos, const double* base, int t_len, int heads,
                                      int dim, int x_stride, int y_stride, float sign) {
    int bt = blockIdx.x;
    float p = (float)(pos != nullptr ? pos[bt] : bt % t_len);
    rotary_heads(y + (size_t)bt * y_stride, x + (size_t)bt * x_stride, base[bt / t_len], p, heads, dim, sign);
}

// philox4x32_10 is internal/philox.Block: the counter c under the key (k0, k1).
__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        unsigned int hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
        unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

// dropout: y = x scale where element i's word of the Philox stream (seed, key) is at least
// threshold, else 0, as autograd's dropout (philox.Words): word i is word i % 4 of the block
// of counter (i / 4 as two words, key as two words) under seed (two words), low words first.
// One thread per block of four words; y may be x.
extern "C" __global__ void dropout(float* y, const float* x, long long n, unsigned long long seed,
                                   unsigned long long key, unsigned long long threshold, float scale) {
    long long groups = (n + 3) / 4;
    for (long long gi = blockIdx.x * (long long)blockDim.x + threadIdx.x; gi < groups;
         gi += (long long)gridDim.x * blockDim.x) {
        unsigned long long g = (unsigned long long)gi;
        unsigned int c[4] = {(unsigned int)g, (unsigned int)(g >> 32), (unsigned int)key, (unsigned int)(key >> 32)};
        philox4x32_10(c, (unsigned int)seed, (unsigned int)(seed >> 32));
        for (int j = 0; j < 4; j++) {
            long long i = gi * 4 + j;
            if (i < n) y[i] = (unsigned long long)c[j] >= threshold ? x[i] * scale : 0.f;
        }
    }
}

// ce_target is the label row (of the [B*T] labels of rows of seq positions) predicts: the
// next position's label, -100 (IgnoreIndex) for a row's last position.
__device__ __forceinline__ int ce_target(const int* labels, int row, int seq) {
    return row % seq + 1 < seq ? labels[row + 1] : -100;
}

// cross_entropy_rows: for each row of logits [rows, vocab] whose shifted target (ce_target)
// is not -100: lse = log sum exp of the row and loss = lse - logit[target]; loss 0 and lse 0
// elsewhere; a NaN loss for a target of vocab or more (CrossEntropy refuses such labels on
// the host). The loss of crossEntropy is the sum of the rows' losses over the number of
// counted targets. One block per row (blockDim.x a multiple of 32); float32 sums of expf
// (accurate, as PyTorch's log-softmax) by block reductions.
extern "C" __global__ void cross_entropy_rows(float* loss, float* lse, const float* logits, const int* labels, int seq,
                                              int vocab) {
    __shared__ float red[32];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    int target = ce_target(labels, blockIdx.x, seq);
    if (target < 0) {  // block-uniform
        if (threadIdx.x == 0) loss[blockIdx.x] = 0.f, lse[blockIdx.x] = 0.f;
        return;
    }
    float m = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, row[j]);
    m = block_max(m, red);
    float s = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(row[j] - m);
    s = block_sum(s, red);
    if (threadIdx.x == 0) {
        float l = m + logf(s);
        lse[blockIdx.x] = l;
        loss[blockIdx.x] = target < vocab ? l - row[target] : NAN;  // NaN: a label beyond the vocabulary
    }
}

// cross_entropy_grad: dlogits = (softmax - onehot(target)) scale with the rows' lse from
// cross_entropy_rows, scale = dloss / (counted targets) (0 when there are none); zero on rows
// whose target is -100. dx may be logits (each element is read, then written, by one thread).
// One block per row.
extern "C" __global__ void cross_entropy_grad(float* dx, const float* logits, const float* lse, const int* labels,
                                              int seq, int vocab, float scale) {
    size_t off = (size_t)blockIdx.x * vocab;
    int target = ce_target(labels, blockIdx.x, seq);
    float l = lse[blockIdx.x];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        dx[off + j] = target < 0 ? 0.f : (expf(logits[off + j] - l) - (j == target ? 1.f : 0.f)) * scale;
}

// embedding_rows_grad: the gradient of a partial table of trainable rows [rows, h] holding the
// embeddings of ids offset..offset+rows-1, as scatterRows: drows[r] = the sum over positions
// p = 0, 1, ... of dy[p] [n, h] where ids[p] - offset == r (0 for a row no position has).
// Block b takes row b / per of the table, per = ceil(h / blockDim.x) blocks a row, one column
// a thread, so every sum runs in position order from 0 (no atomics: bitwise the CPU's).
extern "C" __global__ void embedding_rows_grad(float* drows, const float* dy, const int* ids, int n, int h, int offset) {
    int per = (h + blockDim.x - 1) / blockDim.x;
    int r = blockIdx.x / per, j = (blockIdx.x % per) * blockDim.x + threadIdx.x;
    if (j >= h) return;
    float acc = 0.f;
    for (int p = 0; p < n; p++)
        if (ids[p] - offset == r) acc += dy[(size_t)p * h + j];
    drows[(size_t)r * h + j] = acc;
}

// adamw: optim.AdamW.Update of n parameters p with float32 moments m, v and gradient g, in
// double as there: step_size = lr / (1 - beta1^t), decay = 1 - lr wd, bc2 = sqrt(1 - beta2^t).
// The products and sums are __dmul_rn and __dadd_rn, which nvcc never fuses into
// multiply-adds, and double division and sqrt round correctly: the results are bitwise
// optim's.
extern "C" __global__ void adamw(float* p, float* m, float* v, const float* g, long long n, double beta1, double beta2,
                                 double eps, double step_size, double decay, double bc2) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        double gj = (double)g[i], m0 = (double)m[i];
        float mf = (float)__dadd_rn(m0, __dmul_rn(1 - beta1, gj - m0));  // lerp, as torch
        float vf = (float)__dadd_rn(__dmul_rn(beta2, (double)v[i]), __dmul_rn(__dmul_rn(1 - beta2, gj), gj));
        m[i] = mf;
        v[i] = vf;
        double pj = __dmul_rn((double)p[i], decay);
        p[i] = (float)(pj - step_size * (double)mf / (sqrt((double)vf) / bc2 + eps));
    }
}

// sum_squares: partial[blockIdx.x] = the sum in double of g[i]^2 over the elements block
// blockIdx.x strides over (blockDim.x a power of two, at most 1024). With a grid that depends
// only on n, the partials, and their sum in a fixed order, are the same every run.
extern "C" __global__ void sum_squares(double* partial, const float* g, long long n) {
    __shared__ double red[1024];
    double s = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        s += (double)g[i] * (double)g[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

// scale_f32: x = float(double(x) s) over n floats, as optim.ClipGradNorm scales (one product:
// bitwise the CPU's).
extern "C" __global__ void scale_f32(float* x, long long n, double s) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] = (float)((double)x[i] * s);
}

// Attention of training graphs, one batch row at a time, chunk by chunk of queries, with the
// scores and probabilities of one chunk [H, tc, L] only (never [H, T, T] for all queries):
// the host runs S = Q K^T with a batched GEMM per chunk [t0, t0 + tc) over the keys
// 0..L-1 (L = t0 + tc: later keys are beyond every query of the chunk), then the kernels
// below, then the GEMMs that use P or dS. A query t sees key j when j <= t, the key is real
// (keymask[j] != 0, or keymask null) and both are in the same packed segment (seg[t] ==
// seg[j], or seg null): the rules of flash.mask. No LogN (training graphs have none).
__device__ __forceinline__ bool attn_visible(int t, int j, const unsigned char* keymask, const int* seg) {
    return j <= t && (keymask == nullptr || keymask[j]) && (seg == nullptr || seg[t] == seg[j]);
}

// attn_train_softmax: s [H, tc, L] raw scores of the chunk's queries t0..t0+tc-1 give the
// probabilities softmax_j(scale s_tj) over the visible keys (0 elsewhere), in bf16 in p
// [H, tc, L]; lse [H, T] gets their log-sum-exps in scaled-score space, as attnForward's
// (-inf for a query that sees no key, whose row of p is 0). One block per (h, t)
// (blockDim.x a multiple of 32).
extern "C" __global__ void attn_train_softmax(unsigned short* p, float* lse, const float* s, const unsigned char* keymask,
                                              const int* seg, int t0, int tc, int t_len, int len, float scale) {
    __shared__ float red[32];
    int h = blockIdx.x / tc, t = t0 + blockIdx.x % tc;
    const float* sr = s + (size_t)blockIdx.x * len;
    unsigned short* pr = p + (size_t)blockIdx.x * len;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x)
        if (attn_visible(t, j, keymask, seg)) m = fmaxf(m, scale * sr[j]);
    m = block_max(m, red);
    float sum = 0.f;
    if (m != -INFINITY)  // block-uniform
        for (int j = threadIdx.x; j < len; j += blockDim.x)
            if (attn_visible(t, j, keymask, seg)) sum += __expf(scale * sr[j] - m);
    sum = block_sum(sum, red);
    float l = m == -INFINITY ? -INFINITY : m + logf(sum);
    for (int j = threadIdx.x; j < len; j += blockDim.x)
        pr[j] = l != -INFINITY && attn_visible(t, j, keymask, seg) ? to_bf16(__expf(scale * sr[j] - l)) : 0;
    if (threadIdx.x == 0) lse[(size_t)h * t_len + t] = l;
}

// attn_row_dot: dsum [H, T] = sum_i dout[t, h, i] out[t, h, i] for one batch row, dout and
// out [T, H, D] (merged heads, rows of H*D floats): D_t of attnBackward. One warp per (h, t)
// (blockDim.x a multiple of 32).
extern "C" __global__ void attn_row_dot(float* dsum, const float* dout, const float* out, int t_len, int heads, int dim) {
    int w = (int)((blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (w >= heads * t_len) return;  // warp-uniform
    int h = w / t_len, t = w % t_len;
    const float* a = dout + ((size_t)t * heads + h) * dim;
    const float* b = out + ((size_t)t * heads + h) * dim;
    float v = 0.f;
    for (int i = lane; i < dim; i += 32) v += a[i] * b[i];
    v = warp_sum(v);
    if (lane == 0) dsum[(size_t)h * t_len + t] = v;
}

// attn_train_dscores: the backward of the chunk's softmax, as attnBackward. From the raw
// scores s and dp = dO V^T (both [H, tc, L] float32), with P = exp(scale s - lse) on the
// visible keys (0 elsewhere and for a query that sees no key): p [H, tc, L] gets P in bf16
// (for dV = P^T dO) and ds [H, tc, L] gets scale P (dp - dsum_t) in bf16, the gradient of the
// raw scores (for dQ = dS K and dK = dS^T Q). One block per (h, t).
extern "C" __global__ void attn_train_dscores(unsigned short* p, unsigned short* ds, const float* s, const float* dp,
                                              const float* lse, const float* dsum, const unsigned char* keymask,
                                              const int* seg, int t0, int tc, int t_len, int len, float scale) {
    int h = blockIdx.x / tc, t = t0 + blockIdx.x % tc;
    size_t off = (size_t)blockIdx.x * len;
    float l = lse[(size_t)h * t_len + t], d = dsum[(size_t)h * t_len + t];
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float pv = 0.f;
        if (l != -INFINITY && attn_visible(t, j, keymask, seg)) pv = __expf(scale * s[off + j] - l);
        p[off + j] = to_bf16(pv);
        ds[off + j] = to_bf16(scale * pv * (dp[off + j] - d));
    }
}
