// SwiGLU: y = a * silu(g), elementwise over n floats (Qwen's MLP: a = w1(x), g = w2(x)).
#include "common.cuh"

extern "C" __global__ void swiglu(float* y, const float* a, const float* g, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float gv = g[i];
        y[i] = a[i] * gv / (1.f + __expf(-gv));
    }
}
