// Residual add in place: x[i] += y[i] over n floats.
extern "C" __global__ void add_inplace(float* x, const float* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) x[i] += y[i];
}
