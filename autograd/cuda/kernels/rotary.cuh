// The NeoX rotation of one (b, t) row as rotary.cu computes it, for train.cu's rotary_pos.
#pragma once

// rotary_heads: o = v rotated, both one row of heads x dim floats (o may be v). Position p,
// inv_freq[i] = float(base^(-2i/dim)) computed in double and rounded to float, as the CPU
// does; angle = float(p) * inv_freq[i] in float32, as torch computes it; cos and sin of that
// angle in double; sign -1 rotates by the opposite angle (the backward's inverse rotation):
// o[i] = v[i] cos - v[i+dim/2] sin, o[i+dim/2] = v[i+dim/2] cos + v[i] sin. The block's
// threads stride over the pairs (head, i < dim/2).
__device__ __forceinline__ void rotary_heads(float* o, const float* v, double base, float p, int heads, int dim,
                                             float sign) {
    int half = dim / 2;
    for (int k = threadIdx.x; k < heads * half; k += blockDim.x) {
        int h = k / half, i = k % half;
        float f = (float)(1.0 / pow(base, (2.0 * i) / dim));
        float a = p * f;
        double s, c;
        sincos((double)a, &s, &c);
        float cf = (float)c, sf = (float)(sign * s);
        const float* vh = v + h * dim;
        float* oh = o + h * dim;
        float x1 = vh[i], x2 = vh[i + half];
        oh[i] = x1 * cf - x2 * sf;
        oh[i + half] = x2 * cf + x1 * sf;
    }
}
