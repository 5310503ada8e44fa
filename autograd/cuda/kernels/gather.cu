// Embedding gather: y[i, :] = float(w[ids[i], :]) for a bf16 table w [V, H].
// One block per id; an id outside [0, V) writes NaN so the host check catches it.
#include "common.cuh"

extern "C" __global__ void gather_bf16(float* y, const unsigned short* w, const int* ids, int h, int vocab) {
    int id = ids[blockIdx.x];
    float* out = y + (size_t)blockIdx.x * h;
    if (id < 0 || id >= vocab) {
        for (int j = threadIdx.x; j < h; j += blockDim.x) out[j] = __int_as_float(0x7fc00000);
        return;
    }
    const unsigned short* row = w + (size_t)id * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[j] = bf16f(row[j]);
}
