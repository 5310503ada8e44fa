// Rotary embedding, NeoX halves: y = rotary(x), x and y [B, T, H, D] whose (b, t) rows are
// x_stride and y_stride floats apart (x may be a view into a fused qkv buffer; y may be x).
// Position p = past + t, inv_freq[i] = float(base_b^(-2i/D)) (computed in double, rounded to
// float, as the CPU does), angle = float(p) * inv_freq[i] in float32 as torch computes it,
// cos/sin of that angle in double; o[i] = x[i] cos - x[i+D/2] sin,
// o[i+D/2] = x[i+D/2] cos + x[i] sin. One block per (b, t), threads over (h, i < D/2).
// base [B] (double) per row: dynamic NTK.
#include "common.cuh"
#include "rotary.cuh"

extern "C" __global__ void rotary(float* y, const float* x, const double* base, int t_len, int heads, int dim, int past,
                                  int x_stride, int y_stride) {
    int bt = blockIdx.x;
    int b = bt / t_len, t = bt % t_len;
    rotary_heads(y + (size_t)bt * y_stride, x + (size_t)bt * x_stride, base[b], (float)(past + t), heads, dim, 1.f);
}
