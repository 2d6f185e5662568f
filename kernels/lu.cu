// lu.cu — the LU family on CUDA (issue 4): factor, solve, det and the division-free cofactor
// matrix, all on the context's stream with no host waits. Packed layout: flx_lu_args in
// flx_kernels.h (column-major LU, 0-based pivots and info stored in the dtype, one row of
// P = n*n + n + 1 elements per matrix).
//
// Paths:
//   n <= 8:                 one thread per matrix (factor) or per (matrix, rhs column) (solve),
//                           partial pivoting held in registers, templated on N (PERFORMANCE.md:
//                           cuBLAS's batched LU is 2x slower there).
//   1 < batch, n <= 64:     cuBLAS getrfBatched / getrsBatched over pointer arrays into the packed
//                           rows (B is transposed to column-major scratch and back).
//   otherwise:              cuSOLVER getrf / getrs per matrix, workspace from the context's
//                           stream-ordered allocator.
// det / log|det| / sign: one warp per matrix reduces the diagonal and the pivot parity.
// cofactor: adj(U) one thread per (matrix, column), then V = adj(U) L^-1 and the pivot columns
// one thread per (matrix, row); no division anywhere, so singular matrices give the exact form.
#include <cublas_v2.h>
#include <cusolverDn.h>

#include "cuda_common.cuh"

namespace {

using flxk::grid_for;
using flxk::kBlock;

constexpr int kSmallN = 8;

// ---- scratch from the context allocator (stream-ordered: freeing after queueing is safe) ----
struct Scratch {
    const flx_cuda_lib_env *env;
    void *p[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    int n = 0;
    explicit Scratch(const flx_cuda_lib_env *e) : env(e) {}
    void *get(size_t bytes) {
        if (n >= 6) return nullptr;
        void *q = env->alloc(env->actx, bytes ? bytes : 16);
        if (q) p[n++] = q;
        return q;
    }
    ~Scratch() {
        for (int i = 0; i < n; i++) env->free(env->actx, p[i]);
    }
};

// ---- small register LU --------------------------------------------------------------------------
template <typename T, int N>
__global__ void k_factor_small(const T *__restrict__ a, T *__restrict__ out, int64_t batch) {
    constexpr int64_t P = (int64_t)N * N + N + 1;
    for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < batch;
         b += (int64_t)gridDim.x * blockDim.x) {
        T m[N][N];
#pragma unroll
        for (int i = 0; i < N; i++)
#pragma unroll
            for (int j = 0; j < N; j++) m[i][j] = a[b * N * N + i * N + j];
        int piv[N];
        int info = 0;
#pragma unroll
        for (int k = 0; k < N; k++) {
            int p = k;
            T best = fabs(m[k][k]);
#pragma unroll
            for (int i = k + 1; i < N; i++) {
                T v = fabs(m[i][k]);
                if (v > best) {
                    best = v;
                    p = i;
                }
            }
            piv[k] = p;
            // Swap rows k and p with selects only (indices stay compile-time: registers).
#pragma unroll
            for (int i = k + 1; i < N; i++) {
                bool s = (i == p);
#pragma unroll
                for (int j = 0; j < N; j++) {
                    T x = m[k][j], y = m[i][j];
                    m[k][j] = s ? y : x;
                    m[i][j] = s ? x : y;
                }
            }
            T d = m[k][k];
            if (d == T(0) && info == 0) info = k + 1;
            T r = d != T(0) ? T(1) / d : T(0); // zero pivot: its column is all zero; skip it
#pragma unroll
            for (int i = k + 1; i < N; i++) {
                m[i][k] *= r;
#pragma unroll
                for (int j = k + 1; j < N; j++) m[i][j] -= m[i][k] * m[k][j];
            }
        }
        T *o = out + b * P;
#pragma unroll
        for (int j = 0; j < N; j++)
#pragma unroll
            for (int i = 0; i < N; i++) o[j * N + i] = m[i][j];
#pragma unroll
        for (int i = 0; i < N; i++) o[N * N + i] = (T)piv[i];
        o[N * N + N] = (T)info;
    }
}

template <typename T, int N>
__global__ void k_solve_small(const T *__restrict__ lu, const T *__restrict__ bm, T *__restrict__ out,
                              int64_t batch, int64_t k, int trans, int check, flx_kerr err) {
    constexpr int64_t P = (int64_t)N * N + N + 1;
    int64_t total = batch * k;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = t / k, c = t - b * k;
        const T *f = lu + b * P;
        if (check && c == 0 && f[N * N + N] != T(0))
            flx_kerr_raise(err, FLX_KERR_SINGULAR, (int64_t)f[N * N + N], 0, 0, b);
        T x[N];
#pragma unroll
        for (int i = 0; i < N; i++) x[i] = bm[(b * N + i) * k + c];
        int piv[N];
#pragma unroll
        for (int i = 0; i < N; i++) piv[i] = (int)f[N * N + i];
        if (!trans) {
#pragma unroll
            for (int i = 0; i < N; i++) {
#pragma unroll
                for (int q = i + 1; q < N; q++) {
                    bool s = (q == piv[i]);
                    T u = x[i], v = x[q];
                    x[i] = s ? v : u;
                    x[q] = s ? u : v;
                }
            }
#pragma unroll
            for (int i = 0; i < N; i++)
#pragma unroll
                for (int j = 0; j < i; j++) x[i] -= f[j * N + i] * x[j];
#pragma unroll
            for (int i = N - 1; i >= 0; i--) {
#pragma unroll
                for (int j = i + 1; j < N; j++) x[i] -= f[j * N + i] * x[j];
                x[i] /= f[i * N + i];
            }
        } else {
#pragma unroll
            for (int i = 0; i < N; i++) {
#pragma unroll
                for (int j = 0; j < i; j++) x[i] -= f[i * N + j] * x[j];
                x[i] /= f[i * N + i];
            }
#pragma unroll
            for (int i = N - 1; i >= 0; i--)
#pragma unroll
                for (int j = i + 1; j < N; j++) x[i] -= f[i * N + j] * x[j];
#pragma unroll
            for (int i = N - 1; i >= 0; i--) {
#pragma unroll
                for (int q = i + 1; q < N; q++) {
                    bool s = (q == piv[i]);
                    T u = x[i], v = x[q];
                    x[i] = s ? v : u;
                    x[q] = s ? u : v;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < N; i++) out[(b * N + i) * k + c] = x[i];
    }
}

// ---- helpers of the library paths -------------------------------------------------------------
// Row-major A (batch, n, n) -> column-major into the packed rows.
template <typename T>
__global__ void k_pack(const T *__restrict__ a, T *__restrict__ out, int64_t batch, int64_t n) {
    int64_t P = n * n + n + 1, total = batch * n * n;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = t / (n * n), r = t - b * n * n, i = r / n, j = r - i * n;
        out[b * P + j * n + i] = a[t];
    }
}

template <typename T>
__global__ void k_ptrs(T **ptrs, T *base, int64_t stride, int64_t batch) {
    for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < batch;
         b += (int64_t)gridDim.x * blockDim.x)
        ptrs[b] = base + b * stride;
}

// 1-based int pivots and int info -> the packed rows.
template <typename T>
__global__ void k_store_piv(const int *piv, const int *info, T *out, int64_t batch, int64_t n) {
    int64_t P = n * n + n + 1, total = batch * (n + 1);
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = t / (n + 1), i = t - b * (n + 1);
        out[b * P + n * n + i] = i < n ? (T)(piv[b * n + i] - 1) : (T)info[b];
    }
}

// Packed pivots -> 1-based int pivots; with check, a nonzero info raises FLX_KERR_SINGULAR.
template <typename T>
__global__ void k_load_piv(const T *lu, int *piv, int64_t batch, int64_t n, int check, flx_kerr err) {
    int64_t P = n * n + n + 1, total = batch * (n + 1);
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = t / (n + 1), i = t - b * (n + 1);
        T v = lu[b * P + n * n + i];
        if (i < n) piv[b * n + i] = (int)v + 1;
        else if (check && v != T(0)) flx_kerr_raise(err, FLX_KERR_SINGULAR, (int64_t)v, 0, 0, b);
    }
}

// Row-major (batch, n, k) <-> column-major per matrix.
template <typename T>
__global__ void k_to_colmajor(const T *in, T *out, int64_t batch, int64_t n, int64_t k, int back) {
    int64_t total = batch * n * k;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = t / (n * k), r = t - b * n * k, i = r / k, c = r - i * k;
        int64_t cm = b * n * k + c * n + i;
        if (!back) out[cm] = in[t];
        else out[t] = in[cm];
    }
}

// ---- det: one warp per matrix ------------------------------------------------------------------
template <typename T>
__global__ void k_det(const T *__restrict__ lu, T *__restrict__ out, int64_t batch, int64_t n, int mode) {
    int64_t P = n * n + n + 1;
    int lane = threadIdx.x & 31;
    int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t b = warp; b < batch; b += nwarps) {
        const T *f = lu + b * P;
        double prod = 1.0, logabs = 0.0;
        int neg = 0, zero = 0;
        for (int64_t i = lane; i < n; i += 32) {
            double d = (double)f[i * n + i];
            if ((int64_t)f[n * n + i] != i) neg ^= 1;
            if (d < 0) neg ^= 1;
            if (d == 0) zero = 1;
            prod *= d;
            logabs += log(fabs(d));
        }
        for (int o = 16; o > 0; o >>= 1) {
            prod *= __shfl_xor_sync(0xffffffffu, prod, o);
            logabs += __shfl_xor_sync(0xffffffffu, logabs, o);
            neg ^= __shfl_xor_sync(0xffffffffu, neg, o);
            zero |= __shfl_xor_sync(0xffffffffu, zero, o);
        }
        if (lane == 0) {
            double v;
            if (mode == FLX_LU_DET) v = zero ? 0.0 : (neg ? -fabs(prod) : fabs(prod));
            else if (mode == FLX_LU_LOGABS) v = zero ? -INFINITY : logabs;
            else if (mode == FLX_LU_SIGN) v = zero ? 0.0 : (neg ? -1.0 : 1.0);
            else v = zero ? -INFINITY : (neg ? NAN : logabs);
            out[b] = (T)v;
        }
    }
}

// ---- cofactor ------------------------------------------------------------------------------------
// Column j of adj(U) (see cpu_lu.c) into W (row-major n x n per matrix), in double.
template <typename T>
__global__ void k_cof_adjU(const T *__restrict__ lu, double *__restrict__ W, int64_t batch, int64_t n) {
    int64_t P = n * n + n + 1, total = batch * n;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = t / n, j = t - b * n;
        const T *f = lu + b * P;
        double *w = W + b * n * n;
#define U_(i, jj) ((double)f[(jj) * n + (i)])
        for (int64_t i = j + 1; i < n; i++) w[i * n + j] = 0.0;
        w[j * n + j] = 1.0;
        for (int64_t i = j - 1; i >= 0; i--) {
            double s = 0.0, prod = 1.0;
            for (int64_t q = i + 1; q <= j; q++) {
                s += U_(i, q) * w[q * n + j] * prod;
                prod *= U_(q, q);
            }
            w[i * n + j] = -s;
        }
        double suf = 1.0;
        for (int64_t q = j + 1; q < n; q++) suf *= U_(q, q);
        double pre = 1.0;
        for (int64_t i = 0; i <= j; i++) {
            w[i * n + j] *= pre * suf;
            pre *= U_(i, i);
        }
#undef U_
    }
}

// Row i: V = W L^-1 in place, column swaps for P^T, times sign(P), written transposed.
template <typename T>
__global__ void k_cof_rows(const T *__restrict__ lu, double *__restrict__ W, T *__restrict__ out,
                           int64_t batch, int64_t n) {
    int64_t P = n * n + n + 1, total = batch * n;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = t / n, i = t - b * n;
        const T *f = lu + b * P;
        double *row = W + b * n * n + i * n;
        for (int64_t j = n - 1; j >= 0; j--) {
            double s = row[j];
            for (int64_t q = j + 1; q < n; q++) s -= row[q] * (double)f[j * n + q];
            row[j] = s;
        }
        int neg = 0;
        for (int64_t q = n - 1; q >= 0; q--) {
            int64_t p = (int64_t)f[n * n + q];
            if (p != q) {
                neg ^= 1;
                double x = row[q];
                row[q] = row[p];
                row[p] = x;
            }
        }
        double sg = neg ? -1.0 : 1.0;
        for (int64_t j = 0; j < n; j++) out[b * n * n + j * n + i] = (T)(sg * row[j]);
    }
}

// ---- library wrappers by dtype ----------------------------------------------------------------
inline int blas_rc(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? 0 : -(1000 + (int)s); }
inline int solver_rc(cusolverStatus_t s) { return s == CUSOLVER_STATUS_SUCCESS ? 0 : -(2000 + (int)s); }

inline cublasStatus_t getrfB(cublasHandle_t h, int n, float **A, int *piv, int *info, int batch) {
    return cublasSgetrfBatched(h, n, A, n, piv, info, batch);
}
inline cublasStatus_t getrfB(cublasHandle_t h, int n, double **A, int *piv, int *info, int batch) {
    return cublasDgetrfBatched(h, n, A, n, piv, info, batch);
}
inline cublasStatus_t getrsB(cublasHandle_t h, cublasOperation_t op, int n, int k, float **A,
                             const int *piv, float **B, int *info, int batch) {
    return cublasSgetrsBatched(h, op, n, k, (const float *const *)A, n, piv, B, n, info, batch);
}
inline cublasStatus_t getrsB(cublasHandle_t h, cublasOperation_t op, int n, int k, double **A,
                             const int *piv, double **B, int *info, int batch) {
    return cublasDgetrsBatched(h, op, n, k, (const double *const *)A, n, piv, B, n, info, batch);
}
inline cusolverStatus_t getrf_ws(cusolverDnHandle_t h, int n, float *A, int *lw) {
    return cusolverDnSgetrf_bufferSize(h, n, n, A, n, lw);
}
inline cusolverStatus_t getrf_ws(cusolverDnHandle_t h, int n, double *A, int *lw) {
    return cusolverDnDgetrf_bufferSize(h, n, n, A, n, lw);
}
inline cusolverStatus_t getrf(cusolverDnHandle_t h, int n, float *A, float *w, int *piv, int *info) {
    return cusolverDnSgetrf(h, n, n, A, n, w, piv, info);
}
inline cusolverStatus_t getrf(cusolverDnHandle_t h, int n, double *A, double *w, int *piv, int *info) {
    return cusolverDnDgetrf(h, n, n, A, n, w, piv, info);
}
inline cusolverStatus_t getrs(cusolverDnHandle_t h, cublasOperation_t op, int n, int k, const float *A,
                              const int *piv, float *B, int *info) {
    return cusolverDnSgetrs(h, op, n, k, A, n, piv, B, n, info);
}
inline cusolverStatus_t getrs(cusolverDnHandle_t h, cublasOperation_t op, int n, int k, const double *A,
                              const int *piv, double *B, int *info) {
    return cusolverDnDgetrs(h, op, n, k, A, n, piv, B, n, info);
}

template <typename T, int N>
int launch_factor_small(const flx_lu_args *a, cudaStream_t s) {
    k_factor_small<T, N><<<grid_for(a->batch, 128), 128, 0, s>>>((const T *)a->a, (T *)a->out, a->batch);
    return flxk::launch_status();
}

template <typename T, int N>
int launch_solve_small(const flx_lu_args *a, cudaStream_t s) {
    k_solve_small<T, N><<<grid_for(a->batch * a->k, 128), 128, 0, s>>>(
        (const T *)a->lu, (const T *)a->b, (T *)a->out, a->batch, a->k, a->trans, a->check, a->err);
    return flxk::launch_status();
}

template <typename T>
int small_dispatch(const flx_lu_args *a, cudaStream_t s, bool factor) {
    switch (a->n) {
#define FLX_LU_CASE(NN) \
    case NN: return factor ? launch_factor_small<T, NN>(a, s) : launch_solve_small<T, NN>(a, s);
        FLX_LU_CASE(1) FLX_LU_CASE(2) FLX_LU_CASE(3) FLX_LU_CASE(4)
        FLX_LU_CASE(5) FLX_LU_CASE(6) FLX_LU_CASE(7) FLX_LU_CASE(8)
#undef FLX_LU_CASE
    default: return (int)cudaErrorInvalidValue;
    }
}

inline bool use_batched_blas(const flx_lu_args *a) { return a->batch > 1 && a->n <= 64; }

template <typename T>
int factor(const flx_lu_args *a, const flx_cuda_lib_env *env) {
    cudaStream_t s = (cudaStream_t)env->stream;
    int64_t n = a->n, B = a->batch, P = n * n + n + 1;
    T *out = (T *)a->out;
    if (n == 0) return (int)cudaMemsetAsync(out, 0, (size_t)B * sizeof(T), s);
    if (n <= kSmallN) return small_dispatch<T>(a, s, true);
    if (n > INT32_MAX / n || B > INT32_MAX) return (int)cudaErrorInvalidValue;
    Scratch sc(env);
    int *piv = (int *)sc.get(sizeof(int) * (size_t)(B * n));
    int *info = (int *)sc.get(sizeof(int) * (size_t)B);
    if (!piv || !info) return -1;
    k_pack<T><<<grid_for(B * n * n), kBlock, 0, s>>>((const T *)a->a, out, B, n);
    int rc = flxk::launch_status();
    if (rc) return rc;
    if (use_batched_blas(a)) {
        T **ptrs = (T **)sc.get(sizeof(T *) * (size_t)B);
        if (!ptrs) return -1;
        k_ptrs<T><<<grid_for(B), kBlock, 0, s>>>(ptrs, out, P, B);
        if ((rc = flxk::launch_status())) return rc;
        rc = blas_rc(getrfB((cublasHandle_t)env->cublas, (int)n, ptrs, piv, info, (int)B));
        if (rc) return rc;
    } else {
        cusolverDnHandle_t h = (cusolverDnHandle_t)env->cusolver;
        int lw = 0;
        rc = solver_rc(getrf_ws(h, (int)n, out, &lw));
        if (rc) return rc;
        T *work = (T *)sc.get(sizeof(T) * (size_t)(lw > 0 ? lw : 1));
        if (!work) return -1;
        for (int64_t b = 0; b < B; b++) {
            rc = solver_rc(getrf(h, (int)n, out + b * P, work, piv + b * n, info + b));
            if (rc) return rc;
        }
    }
    k_store_piv<T><<<grid_for(B * (n + 1)), kBlock, 0, s>>>(piv, info, out, B, n);
    return flxk::launch_status();
}

template <typename T>
int solve(const flx_lu_args *a, const flx_cuda_lib_env *env) {
    cudaStream_t s = (cudaStream_t)env->stream;
    int64_t n = a->n, B = a->batch, k = a->k, P = n * n + n + 1;
    if (n == 0 || k == 0) return 0;
    if (n <= kSmallN) return small_dispatch<T>(a, s, false);
    if (n > INT32_MAX / n || B > INT32_MAX || k > INT32_MAX) return (int)cudaErrorInvalidValue;
    Scratch sc(env);
    int *piv = (int *)sc.get(sizeof(int) * (size_t)(B * n));
    T *X = (T *)sc.get(sizeof(T) * (size_t)(B * n * k));
    int *dinfo = (int *)sc.get(sizeof(int));
    if (!piv || !X || !dinfo) return -1;
    T *lu = (T *)a->lu;
    k_load_piv<T><<<grid_for(B * (n + 1)), kBlock, 0, s>>>(lu, piv, B, n, a->check, a->err);
    int rc = flxk::launch_status();
    if (rc) return rc;
    const T *bsrc = (const T *)a->b;
    T *xcm = X;
    if (k > 1) {
        k_to_colmajor<T><<<grid_for(B * n * k), kBlock, 0, s>>>(bsrc, X, B, n, k, 0);
        if ((rc = flxk::launch_status())) return rc;
    } else { // one column: row-major and column-major coincide
        rc = (int)cudaMemcpyAsync(X, bsrc, sizeof(T) * (size_t)(B * n), cudaMemcpyDeviceToDevice, s);
        if (rc) return rc;
    }
    cublasOperation_t op = a->trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (use_batched_blas(a)) {
        T **ptrs = (T **)sc.get(sizeof(T *) * (size_t)(2 * B));
        if (!ptrs) return -1;
        k_ptrs<T><<<grid_for(B), kBlock, 0, s>>>(ptrs, lu, P, B);
        k_ptrs<T><<<grid_for(B), kBlock, 0, s>>>(ptrs + B, xcm, n * k, B);
        if ((rc = flxk::launch_status())) return rc;
        int hinfo = 0; // parameter errors only (host, set at the call)
        rc = blas_rc(getrsB((cublasHandle_t)env->cublas, op, (int)n, (int)k, ptrs, piv, ptrs + B,
                            &hinfo, (int)B));
        if (rc) return rc;
        if (hinfo != 0) return -(1000 + (int)CUBLAS_STATUS_INVALID_VALUE);
    } else {
        cusolverDnHandle_t h = (cusolverDnHandle_t)env->cusolver;
        for (int64_t b = 0; b < B; b++) {
            rc = solver_rc(getrs(h, op, (int)n, (int)k, lu + b * P, piv + b * n, xcm + b * n * k, dinfo));
            if (rc) return rc;
        }
    }
    if (k > 1) {
        k_to_colmajor<T><<<grid_for(B * n * k), kBlock, 0, s>>>(X, (T *)a->out, B, n, k, 1);
        return flxk::launch_status();
    }
    return (int)cudaMemcpyAsync(a->out, X, sizeof(T) * (size_t)(B * n), cudaMemcpyDeviceToDevice, s);
}

template <typename T>
int run(const flx_lu_args *a, const flx_cuda_lib_env *env) {
    cudaStream_t s = (cudaStream_t)env->stream;
    if (a->batch <= 0) return 0;
    switch (a->mode) {
    case FLX_LU_FACTOR: return factor<T>(a, env);
    case FLX_LU_SOLVE: return solve<T>(a, env);
    case FLX_LU_COFACTOR: {
        if (a->n == 0) return 0;
        Scratch sc(env);
        double *W = (double *)sc.get(sizeof(double) * (size_t)(a->batch * a->n * a->n));
        if (!W) return -1;
        k_cof_adjU<T><<<grid_for(a->batch * a->n, 128), 128, 0, s>>>((const T *)a->lu, W, a->batch, a->n);
        int rc = flxk::launch_status();
        if (rc) return rc;
        k_cof_rows<T><<<grid_for(a->batch * a->n, 128), 128, 0, s>>>((const T *)a->lu, W, (T *)a->out,
                                                                   a->batch, a->n);
        return flxk::launch_status();
    }
    default:
        k_det<T><<<grid_for(a->batch * 32), kBlock, 0, s>>>((const T *)a->lu, (T *)a->out, a->batch,
                                                            a->n, a->mode);
        return flxk::launch_status();
    }
}

} // namespace

extern "C" int flx_cuda_lu(const flx_lu_args *a, const flx_cuda_lib_env *env) {
    if (a->dtype == FLX_F32) return run<float>(a, env);
    if (a->dtype == FLX_F64) return run<double>(a, env);
    return (int)cudaErrorInvalidValue;
}
