// Rotary embedding, NeoX halves: y = rotary(x), x and y [B, T, H, D] whose (b, t) rows are
// x_stride and y_stride floats apart (x may be a view into a fused qkv buffer; y may be x).
// Position p = past + t, inv_freq[i] = float(base_b^(-2i/D)) (computed in double, rounded to
// float, as the CPU does), angle = float(p) * inv_freq[i] in float32 as torch computes it,
// cos/sin of that angle in double; o[i] = x[i] cos - x[i+D/2] sin,
// o[i+D/2] = x[i+D/2] cos + x[i] sin. One block per (b, t), threads over (h, i < D/2).
// base [B] (double) per row: dynamic NTK.
#include "common.cuh"

extern "C" __global__ void rotary(float* y, const float* x, const double* base, int t_len, int heads, int dim, int past,
                                  int x_stride, int y_stride) {
    int bt = blockIdx.x;
    int b = bt / t_len, t = bt % t_len;
    int half = dim / 2;
    float p = (float)(past + t);
    for (int k = threadIdx.x; k < heads * half; k += blockDim.x) {
        int h = k / half, i = k % half;
        float f = (float)(1.0 / pow(base[b], (2.0 * i) / dim));
        float a = p * f;
        double s, c;
        sincos((double)a, &s, &c);
        const float* v = x + (size_t)bt * x_stride + h * dim;
        float* o = y + (size_t)bt * y_stride + h * dim;
        float x1 = v[i], x2 = v[i + half];
        o[i] = x1 * (float)c - x2 * (float)s;
        o[i + half] = x2 * (float)c + x1 * (float)s;
    }
}
