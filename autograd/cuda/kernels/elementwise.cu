// Small elementwise kernels of the executor.
//   add_f32:      y = a + b over n floats (the residual adds; y may be a or b).
//   to_bf16_rows: y [rows, cols] bf16 = x rows (x_stride floats apart), for the GEMM inputs.
//   bias_bf16:    y [rows, cols] += bias [cols] (bf16), after a GEMM.
#include "common.cuh"

extern "C" __global__ void add_f32(float* y, const float* a, const float* b, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = a[i] + b[i];
}

extern "C" __global__ void to_bf16_rows(unsigned short* y, const float* x, int rows, int cols, int x_stride) {
    long long n = (long long)rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / cols, c = i % cols;
        y[i] = to_bf16(x[r * x_stride + c]);
    }
}

extern "C" __global__ void bias_bf16(float* y, const unsigned short* bias, int rows, int cols) {
    long long n = (long long)rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] += bf16f(bias[i % cols]);
}
