// The kernels of the optimizer state a run keeps on the device (optim.go): the step's
// gradient sums, pooled micro-batch by micro-batch with each one's trained tokens as weight
// and divided by the step's tokens, as lora's trainer pools them on the host. Element-wise,
// with the _rn intrinsics nvcc never fuses into multiply-adds and a correctly rounded
// division: bitwise the host's float32 arithmetic, the same bits every run.

// grad_accumulate: acc = (first ? 0 : acc) + g w over n floats, as the host's
// sum[j] += g[j] * float32(tokens) from a cleared sum (0 + x is x, -0 included: +0).
extern "C" __global__ void grad_accumulate(float* acc, const float* g, long long n, float w, int first) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        acc[i] = __fadd_rn(first ? 0.f : acc[i], __fmul_rn(g[i], w));
}

// div_f32: x = x / s over n floats, correctly rounded, as the host's g[j] /= float32(tokens).
extern "C" __global__ void div_f32(float* x, long long n, float s) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] = __fdiv_rn(x[i], s);
}
