// Rotary embedding, NeoX halves, in place on x [B, T, H, D]: position p = past + t,
// inv_freq[i] = float(base_b^(-2i/D)) (computed in double, rounded to float, as the CPU
// does), angle = float(p) * inv_freq[i] in float32 as torch computes it, cos/sin of that
// angle in double; o[i] = x[i] cos - x[i+D/2] sin, o[i+D/2] = x[i+D/2] cos + x[i] sin.
// One block per (b, t), threads over (h, i < D/2). base [B] (double) per row: dynamic NTK.
#include "common.cuh"

extern "C" __global__ void rotary(float* x, const double* base, int t_len, int heads, int dim, int past) {
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
        float* v = x + ((size_t)bt * heads + h) * dim;
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * (float)c - x2 * (float)s;
        v[i + half] = x2 * (float)c + x1 * (float)s;
    }
}
