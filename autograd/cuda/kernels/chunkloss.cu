// The loss over the vocabulary by chunks of rows (the fusion "lm_head + cross-entropy by
// chunks" of autograd/cuda/chunkloss.go): the host computes one chunk's fp32 logits with a
// GEMM, cross_entropy_chunk takes every row's loss and log-sum-exp and, in a gradient program,
// writes the chunk's dlogits in bf16 for the GEMM of lm_head's input gradient. The row
// arithmetic is train.cu's cross_entropy_rows, cross_entropy_grad and to_bf16_rows, operation
// for operation, so the same logits give the same bits.
#include "common.cuh"

// cross_entropy_chunk: the gridDim.x rows row0, row0+1, ... of the [B*T] rows of seq positions,
// whose logits [gridDim.x, vocab] start at logits. For each: loss[row] and lse[row] as
// cross_entropy_rows (0 and 0 for a row whose target is -100 or that is its sequence's last;
// NaN loss for a target of vocab or more) and, when dx is not null, its row of dx
// [gridDim.x, vocab] (bf16) = to_bf16((expf(logit - lse) - onehot(target)) scale) as
// cross_entropy_grad then to_bf16_rows: zero on rows without a target. One block per row
// (blockDim.x a multiple of 32, as cross_entropy_rows is launched, for the same sums).
extern "C" __global__ void cross_entropy_chunk(float* loss, float* lse, unsigned short* dx, const float* logits,
                                               const int* labels, int row0, int seq, int vocab, float scale) {
    __shared__ float red[32];
    int r = row0 + blockIdx.x;
    const float* row = logits + (size_t)blockIdx.x * vocab;
    unsigned short* out = dx == nullptr ? nullptr : dx + (size_t)blockIdx.x * vocab;
    int target = r % seq + 1 < seq ? labels[r + 1] : -100;  // train.cu's ce_target
    if (target < 0) {                                        // block-uniform
        if (threadIdx.x == 0) loss[r] = 0.f, lse[r] = 0.f;
        if (out != nullptr)
            for (int j = threadIdx.x; j < vocab; j += blockDim.x) out[j] = 0;
        return;
    }
    float m = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, row[j]);
    m = block_max(m, red);
    float s = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(row[j] - m);
    s = block_sum(s, red);
    float l = m + logf(s);
    if (threadIdx.x == 0) {
        lse[r] = l;
        loss[r] = target < vocab ? l - row[target] : NAN;  // NaN: a label beyond the vocabulary
    }
    if (out != nullptr)
        for (int j = threadIdx.x; j < vocab; j += blockDim.x)
            out[j] = to_bf16((expf(row[j] - l) - (j == target ? 1.f : 0.f)) * scale);
}
