// Trainable embedding rows and tables in training graphs: the forward of a partial table's
// rows (special-token rows), the gradient of a table (whole or partial) as segmented sums,
// and the columns of a partial lm_head added into the logits. No atomics: every output
// element is written by one thread, its sum taken in position order from 0 as the CPU does.
#include "common.cuh"

// gather_rows_bf16: y[i, :] = float(w[idx[i], :]) for the bf16 table w [rows, h], zeros where
// idx[i] < 0 (a position whose token has no row in a partial table). One block per position;
// the host checks idx against the table's rows.
extern "C" __global__ void gather_rows_bf16(float* y, const unsigned short* w, const int* idx, int h) {
    int r = idx[blockIdx.x];
    float* out = y + (size_t)blockIdx.x * h;
    if (r < 0) {
        for (int j = threadIdx.x; j < h; j += blockDim.x) out[j] = 0.f;
        return;
    }
    const unsigned short* row = w + (size_t)r * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[j] = bf16f(row[j]);
}

// segment_sum_rows: the gradient of a gathered table, dw[rows[s], :] = the sum of dy[p, :]
// [n, h] over the positions p = order[starts[s]], ..., order[starts[s+1]-1] (ascending: the
// host groups the positions by row, keeping their order), for the segments s of the rows some
// position gathered; the other rows of dw are zeroed before. Block b takes segment b / per,
// per = ceil(h / blockDim.x) blocks a segment, one column a thread: each sum runs in position
// order from 0, bitwise the CPU's scatterRows.
extern "C" __global__ void segment_sum_rows(float* dw, const float* dy, const int* rows, const int* starts, const int* order, int h) {
    int per = (h + blockDim.x - 1) / blockDim.x;
    int s = blockIdx.x / per, j = (blockIdx.x % per) * blockDim.x + threadIdx.x;
    if (j >= h) return;
    float acc = 0.f;
    for (int k = starts[s]; k < starts[s + 1]; k++) acc += dy[(size_t)order[k] * h + j];
    dw[(size_t)rows[s] * h + j] = acc;
}

// add_columns: y[i, off + j] += x[i, j] for x [n, s], y rows ystride apart: a partial
// lm_head's logits (the special-token rows' columns) added into the full logits in place.
extern "C" __global__ void add_columns(float* y, const float* x, int n, int s, int ystride, int off) {
    long long total = (long long)n * s;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        long long i = e / s, j = e % s;
        y[i * ystride + off + j] += x[e];
    }
}
