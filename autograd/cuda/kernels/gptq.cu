// GPTQ's solve on the device, in the order of operations of quantize/gptq.go so that codes
// match the CPU's: the Hessian H = scale * S from the float32 sums S (upper triangle read, as
// the CPU's Hessian.Matrix), damped and reversed (A = J H J + damp*mean(diag) I, float64), A's
// blocked Cholesky factor L and its inverse X = L^-1 (float64), U = J X J rounded to float32
// (the upper Cholesky factor of H^-1), then the column sweep in float32: per block of columns,
// the group grids (float64 from the float32 working weights), each column's codes, dequantized
// values and error fed back into the block's later columns (gptq_block, one thread per row),
// and the lazy update of the later blocks (gptq_update: a product summed in the order of
// gonum's sgemm, one term after the other, so the working weights equal the CPU's bit for bit).
// The floating-point arithmetic of the Hessian's entries, the grids and the sweep uses the _rn
// intrinsics: PTX arithmetic without a rounding mode may be fused into multiply-adds by the
// driver's compiler, where the CPU rounds twice.
//
// Shapes: S [k, k] float32; A, X [k, k] float64 row-major; U [k, k] float32; W [n, k] float32
// (rows are outputs); codes [n, k] uint8 and Q [n, k] float32 in the original column order;
// grids scale/zero [G, n] float64.
#include "common.cuh"

#define GPTQ_NB 64     // Cholesky panel width
#define GPTQ_MAXB 128  // most columns per lazy block

// h_at is H[p][q] from the upper triangle of the float32 sums, rounded before any damping is
// added (as the CPU's Hessian.Matrix rounds it: no fused multiply-add).
__device__ __forceinline__ double h_at(const float* s, int k, int p, int q, double scale) {
    int a = p < q ? p : q, b = p < q ? q : p;
    return __dmul_rn(scale, (double)s[(long long)a * k + b]);
}

// gptq_diag: diag[j] = H[j][j] (dead inputs still 0).
extern "C" __global__ void gptq_diag(double* diag, const float* s, int k, double scale) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < k; j += gridDim.x * blockDim.x)
        diag[j] = h_at(s, k, j, j, scale);
}

// gptq_damped: a = J P^T H P J + add*I with P the act-order permutation (perm may be null) and
// dead diagonal entries (0) raised to 1 first, as the CPU does before permuting.
extern "C" __global__ void gptq_damped(double* a, const float* s, const int* perm, int k, double scale, double add) {
    long long n = (long long)k * k;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int r = (int)(i / k), c = (int)(i % k);
        int p = k - 1 - r, q = k - 1 - c;
        if (perm) p = perm[p], q = perm[q];
        double v = h_at(s, k, p, q, scale);
        if (r == c) {
            if (v == 0) v = 1;
            v = __dadd_rn(v, add);
        }
        a[i] = v;
    }
}

// gptq_chol_diag (one block of GPTQ_NB threads): factors the diagonal block of a at (p, p)
// in place (lower, a = L L^T after the panels before it are applied) and writes its inverse,
// zero above the diagonal, into x at (p, p). *fail is set when a pivot is not positive.
extern "C" __global__ void gptq_chol_diag(double* a, double* x, int k, int p, int* fail) {
    __shared__ double s[GPTQ_NB][GPTQ_NB + 1];
    int m = min(GPTQ_NB, k - p), t = threadIdx.x;
    if (t < m)
        for (int j = 0; j <= t; j++) s[t][j] = a[(long long)(p + t) * k + p + j];
    __syncthreads();
    for (int j = 0; j < m; j++) {
        if (t == 0) {
            double d = s[j][j];
            if (!(d > 0)) {
                *fail = 1;
                d = 1;
            }
            s[j][j] = sqrt(d);
        }
        __syncthreads();
        if (t > j && t < m) s[t][j] /= s[j][j];
        __syncthreads();
        if (t > j && t < m)
            for (int l = j + 1; l <= t; l++) s[t][l] -= s[t][j] * s[l][j];
        __syncthreads();
    }
    if (t < m) {
        for (int j = 0; j <= t; j++) a[(long long)(p + t) * k + p + j] = s[t][j];
        // column t of L^-1: forward substitution from row t down
        double col[GPTQ_NB];
        for (int i = 0; i < m; i++) {
            if (i < t) {
                col[i] = 0;
                continue;
            }
            double v = i == t ? 1.0 : 0.0;
            for (int l = t; l < i; l++) v -= s[i][l] * col[l];
            col[i] = v / s[i][i];
        }
        for (int i = 0; i < m; i++) x[(long long)(p + i) * k + p + t] = col[i];
    }
}

// gptq_chol_panel: the rows below the diagonal block at p solve L21 L11^T = A21 in place, one
// thread per row.
extern "C" __global__ void gptq_chol_panel(double* a, int k, int p) {
    int m = min(GPTQ_NB, k - p);
    int r = p + m + blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= k) return;
    double* row = a + (long long)r * k + p;
    double v[GPTQ_NB];
    for (int j = 0; j < m; j++) {
        double s = row[j];
        const double* lj = a + (long long)(p + j) * k + p;
        for (int l = 0; l < j; l++) s -= v[l] * lj[l];
        v[j] = s / lj[j];
    }
    for (int j = 0; j < m; j++) row[j] = v[j];
}

// gptq_chol_update: the trailing matrix's lower tiles A22 -= L21 L21^T (64 x 64 tiles, 256
// threads, 4 x 4 outputs each; tiles across the diagonal are computed whole).
extern "C" __global__ void gptq_chol_update(double* a, int k, int p) {
    __shared__ double as[64][17];
    __shared__ double bs[16][65];
    int m = min(GPTQ_NB, k - p), r0 = p + m;
    int b = blockIdx.x;
    int ti = (int)((sqrt(8.0 * b + 1) - 1) / 2);
    while (ti * (ti + 1) / 2 > b) ti--;
    while ((ti + 1) * (ti + 2) / 2 <= b) ti++;
    int tj = b - ti * (ti + 1) / 2;
    int i0 = r0 + ti * 64, j0 = r0 + tj * 64;
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    double acc[4][4] = {};
    for (int l0 = 0; l0 < m; l0 += 16) {
        for (int e = threadIdx.x; e < 64 * 16; e += 256) {
            int rr = e / 16, ll = e % 16;
            int gi = i0 + rr, gj = j0 + rr, gl = l0 + ll;
            as[rr][ll] = gi < k && gl < m ? a[(long long)gi * k + p + gl] : 0;
            bs[ll][rr] = gj < k && gl < m ? a[(long long)gj * k + p + gl] : 0;
        }
        __syncthreads();
        for (int ll = 0; ll < 16; ll++)
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += as[ty + 16 * i][ll] * bs[ll][tx + 16 * j];
        __syncthreads();
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int gi = i0 + ty + 16 * i, gj = j0 + tx + 16 * j;
            if (gi < k && gj < k && gj <= gi) a[(long long)gi * k + gj] -= acc[i][j];
        }
}

// gptq_dgemm: c [m, n] = alpha * a [m, kk] b [kk, n] (row-major with leading dimensions; 64 x
// 64 tiles in a 1-D grid, 256 threads).
extern "C" __global__ void gptq_dgemm(double* c, const double* a, const double* b, int m, int n, int kk, int lda, int ldb, int ldc, double alpha) {
    __shared__ double as[64][17];
    __shared__ double bs[16][65];
    int tilesN = (n + 63) / 64;
    int i0 = (blockIdx.x / tilesN) * 64, j0 = (blockIdx.x % tilesN) * 64;
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    double acc[4][4] = {};
    for (int l0 = 0; l0 < kk; l0 += 16) {
        for (int e = threadIdx.x; e < 64 * 16; e += 256) {
            int rr = e / 16, ll = e % 16;
            as[rr][ll] = i0 + rr < m && l0 + ll < kk ? a[(long long)(i0 + rr) * lda + l0 + ll] : 0;
            int cc = e % 64, l2 = e / 64;
            bs[l2][cc] = j0 + cc < n && l0 + l2 < kk ? b[(long long)(l0 + l2) * ldb + j0 + cc] : 0;
        }
        __syncthreads();
        for (int ll = 0; ll < 16; ll++)
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += as[ty + 16 * i][ll] * bs[ll][tx + 16 * j];
        __syncthreads();
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int gi = i0 + ty + 16 * i, gj = j0 + tx + 16 * j;
            if (gi < m && gj < n) c[(long long)gi * ldc + gj] = alpha * acc[i][j];
        }
}

// gptq_upper_f32: u[i][j] = float(x[k-1-i][k-1-j]) for j >= i, 0 below the diagonal.
extern "C" __global__ void gptq_upper_f32(float* u, const double* x, int k) {
    long long n = (long long)k * k;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        int i = (int)(e / k), j = (int)(e % k);
        u[e] = j >= i ? (float)x[(long long)(k - 1 - i) * k + (k - 1 - j)] : 0.f;
    }
}

// gptq_weights: wf [n, k] = the weights with columns in act-order (perm may be null) and dead
// inputs (diag 0, unpermuted) zeroed.
extern "C" __global__ void gptq_weights(float* wf, const float* w, const int* perm, const double* diag, int n, int k) {
    long long total = (long long)n * k;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        int r = (int)(e / k), j = (int)(e % k);
        int src = perm ? perm[j] : j;
        wf[e] = diag[src] == 0 ? 0.f : w[(long long)r * k + src];
    }
}

// gptq_grids: the grid (quantize/gptq.go findGrid) of columns j0..j0+gs of each row of w
// [n, k], into scale[n] and zero[n]; one thread per row.
extern "C" __global__ void gptq_grids(double* scale, double* zero, const float* w, int n, int k, int j0, int gs, int bits, int sym) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    double maxq = (double)((1 << bits) - 1);
    double xmin = 0, xmax = 0;
    const float* row = w + (long long)r * k + j0;
    for (int j = 0; j < gs; j++) {
        double v = (double)row[j];
        xmin = v < xmin ? v : xmin;
        xmax = v > xmax ? v : xmax;
    }
    if (sym) {
        double a = fabs(xmin);
        xmax = a > xmax ? a : xmax;
        if (xmin < 0) xmin = -xmax;
    }
    if (xmin == 0 && xmax == 0) xmin = -1, xmax = 1;
    double s = __ddiv_rn(__dsub_rn(xmax, xmin), maxq);
    scale[r] = s;
    zero[r] = sym ? __ddiv_rn(__dadd_rn(maxq, 1), 2) : rint(__ddiv_rn(-xmin, s));
}

// gptq_block: the columns i1..i1+count of the working weights wf, one thread per row:
// quantize each column on its group's grid (gcol: the grid of each column, into gscale/gzero
// [G, n]), record code and dequantized value at the original column (perm[j], or j), and
// feed the error, divided by U[j][j], into the block's later columns through row j of U.
// err [n, count] receives the scaled errors for gptq_update; wf's block columns are left as
// they were (as the CPU leaves them: its block works on a copy).
extern "C" __global__ void gptq_block(float* wf, float* err, unsigned char* codes, float* q, const float* u,
                                      const double* gscale, const double* gzero, const int* gcol, const int* perm,
                                      int n, int k, int i1, int count, int bits) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    double maxq = (double)((1 << bits) - 1);
    float w1[GPTQ_MAXB];
    float* row = wf + (long long)r * k + i1;
    for (int i = 0; i < count; i++) w1[i] = row[i];
    for (int i = 0; i < count; i++) {
        int j = i1 + i;
        const float* urow = u + (long long)j * k + i1;
        float d = urow[i];
        long long g = (long long)gcol[j] * n + r;
        double s = gscale[g], z = gzero[g];
        double wv = (double)w1[i];
        double c = fmin(fmax(__dadd_rn(rint(__ddiv_rn(wv, s)), z), 0.0), maxq);
        float qv = __fmul_rn((float)s, (float)__dsub_rn(c, z));
        int orig = perm ? perm[j] : j;
        codes[(long long)r * k + orig] = (unsigned char)c;
        q[(long long)r * k + orig] = qv;
        float e = __fdiv_rn(__fsub_rn(w1[i], qv), d);
        err[(long long)r * count + i] = e;
        for (int c2 = i; c2 < count; c2++) w1[c2] = __fsub_rn(w1[c2], __fmul_rn(e, urow[c2]));
    }
}

// gptq_update: wf[:, i2:] -= err [n, count] U[i1:i2, i2:] with i2 = i1 + count, each output
// summed term by term in order (gonum's sgemm: c += (-e) * u, a zero e skipped), 64 x 64
// tiles in a 1-D grid, 256 threads.
extern "C" __global__ void gptq_update(float* wf, const float* err, const float* u, int n, int k, int i1, int count) {
    __shared__ float es[64][17];
    __shared__ float us[16][65];
    int i2 = i1 + count, cols = k - i2;
    int tilesN = (cols + 63) / 64;
    int r0 = (blockIdx.x / tilesN) * 64, c0 = (blockIdx.x % tilesN) * 64;
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int r = r0 + ty + 16 * i, c = c0 + tx + 16 * j;
            acc[i][j] = r < n && c < cols ? wf[(long long)r * k + i2 + c] : 0.f;
        }
    for (int l0 = 0; l0 < count; l0 += 16) {
        for (int e = threadIdx.x; e < 64 * 16; e += 256) {
            int rr = e / 16, ll = e % 16;
            es[rr][ll] = r0 + rr < n && l0 + ll < count ? err[(long long)(r0 + rr) * count + l0 + ll] : 0.f;
            int cc = e % 64, l2 = e / 64;
            us[l2][cc] = c0 + cc < cols && l0 + l2 < count ? u[(long long)(i1 + l0 + l2) * k + i2 + c0 + cc] : 0.f;
        }
        __syncthreads();
        for (int ll = 0; ll < 16 && l0 + ll < count; ll++)
            for (int i = 0; i < 4; i++) {
                float e = es[ty + 16 * i][ll];
                if (e != 0.f) {
                    float ne = -e;
                    for (int j = 0; j < 4; j++) acc[i][j] = __fadd_rn(acc[i][j], __fmul_rn(ne, us[ll][tx + 16 * j]));
                }
            }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int r = r0 + ty + 16 * i, c = c0 + tx + 16 * j;
            if (r < n && c < cols) wf[(long long)r * k + i2 + c] = acc[i][j];
        }
}

// gptq_rtn_diff: d [n, k] = w - q with q the round-to-nearest value of w on the grids
// scale/zero [G, n] of contiguous groups of gs columns (quantize.RTNResult: code and value in
// float64, the difference in float32 as RelativeError takes it).
extern "C" __global__ void gptq_rtn_diff(float* d, const float* w, const double* scale, const double* zero, int n, int k, int gs, int bits) {
    long long total = (long long)n * k;
    double maxq = (double)((1 << bits) - 1);
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        int r = (int)(e / k), j = (int)(e % k);
        long long g = (long long)(j / gs) * n + r;
        double s = scale[g], z = zero[g];
        double c = fmin(fmax(__dadd_rn(rint(__ddiv_rn((double)w[e], s)), z), 0.0), maxq);
        d[e] = __fsub_rn(w[e], (float)__dmul_rn(s, __dsub_rn(c, z)));
    }
}
