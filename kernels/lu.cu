// lu.cu — the LU family on CUDA: factor, solve, det and the division-free cofactor matrix, all
// on the context's stream with no host waits. Packed layout: flx_lu_args in flx_kernels.h
// (column-major LU, 0-based pivots and info stored in the dtype, one row of P = n*n + n + 1
// elements per matrix).
//
// Paths (every path up to n = 64 is fluxion's own kernels, in lu_small.cu, so plans holding them
// can be captured into CUDA graphs; whether cuSOLVER captures is unknown):
//   n <= 8:       one thread per matrix, registers (lu_small.cu).
//   9 <= n <= 64: one block per matrix in shared memory (lu_small.cu).
//   n > 64:       cuSOLVER getrf / getrs per matrix (this file), workspace from the context's
//                 stream-ordered allocator; a matrix that met a zero pivot is factorised again by
//                 block_lu in global memory (lu_small.cu's refactor_singular) so the packed
//                 contract holds.
// Pivoting everywhere picks the first NaN of a column if it holds one (NaN reaches the results),
// else the largest |value|, ties to the lowest row; a zero pivot column keeps multipliers 0.
// det / log|det| / sign: one warp per matrix reduces the diagonal and the pivot parity.
// cofactor: adj(U) one thread per (matrix, column), then V = adj(U) L^-1 and the pivot columns
// one thread per (matrix, row); no division anywhere, so singular matrices give the exact form.
// det / log|det| gradients straight from A (n <= 8): one register kernel (lu_small.cu).
#include "lu_internal.cuh"
#include "solver_common.cuh"

namespace {

using flxk::grid_for;
using flxk::kBlock;
using flxk::Scratch;
using flxk::solver_rc;
using flxk::lu::det_value;
using flxk::lu::kBlockN;
using flxk::lu::kSmallN;

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

// (batch, n, n) identity matrices.
template <typename T>
__global__ void k_eye(T *out, int64_t batch, int64_t n) {
    int64_t total = batch * n * n;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = t % (n * n);
        out[t] = T(r / n == r % n);
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
        int neg = 0, zero = 0, nanf = 0;
        for (int64_t i = lane; i < n; i += 32) {
            double d = (double)f[i * n + i];
            if (isnan(d)) nanf = 1;
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
            nanf |= __shfl_xor_sync(0xffffffffu, nanf, o);
        }
        if (lane == 0) out[b] = (T)det_value(mode, prod, logabs, neg, zero, nanf);
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

template <typename T>
int factor(const flx_lu_args *a, const flx_cuda_lib_env *env) {
    cudaStream_t s = (cudaStream_t)env->stream;
    int64_t n = a->n, B = a->batch, P = n * n + n + 1;
    T *out = (T *)a->out;
    if (n == 0) return (int)cudaMemsetAsync(out, 0, (size_t)B * sizeof(T), s);
    if (n <= kBlockN) return flxk::lu::factor_small(a, s);
    if (n > INT32_MAX / n || B > INT32_MAX) return (int)cudaErrorInvalidValue;
    Scratch sc(env);
    int *piv = (int *)sc.get(sizeof(int) * (size_t)(B * n));
    int *info = (int *)sc.get(sizeof(int) * (size_t)B);
    if (!piv || !info) return FLX_LIB_RC_SCRATCH;
    k_pack<T><<<grid_for(B * n * n), kBlock, 0, s>>>((const T *)a->a, out, B, n);
    int rc = flxk::launch_status();
    if (rc) return rc;
    cusolverDnHandle_t h = (cusolverDnHandle_t)env->cusolver;
    int lw = 0;
    rc = solver_rc(getrf_ws(h, (int)n, out, &lw));
    if (rc) return rc;
    T *work = (T *)sc.get(sizeof(T) * (size_t)(lw > 0 ? lw : 1));
    if (!work) return FLX_LIB_RC_SCRATCH;
    for (int64_t b = 0; b < B; b++) {
        rc = solver_rc(getrf(h, (int)n, out + b * P, work, piv + b * n, info + b));
        if (rc) return rc;
    }
    if ((rc = flxk::lu::refactor_singular(a, piv, info, s))) return rc;
    k_store_piv<T><<<grid_for(B * (n + 1)), kBlock, 0, s>>>(piv, info, out, B, n);
    return flxk::launch_status();
}

// Packed factors of a->a in scratch owned by sc, for the forward-only modes of n > kSmallN
// (det and solve straight from A, which write no factors); NULL with *rc set on failure.
template <typename T>
const T *factors_in_scratch(const flx_lu_args *a, const flx_cuda_lib_env *env, Scratch &sc, int *rc) {
    flx_lu_args f = *a;
    f.mode = FLX_LU_FACTOR;
    f.out = sc.get(sizeof(T) * (size_t)(a->batch * (a->n * a->n + a->n + 1)));
    if (!f.out) {
        *rc = FLX_LIB_RC_SCRATCH;
        return nullptr;
    }
    *rc = factor<T>(&f, env);
    return *rc ? nullptr : (const T *)f.out;
}

template <typename T>
int solve(const flx_lu_args *a, const flx_cuda_lib_env *env) {
    cudaStream_t s = (cudaStream_t)env->stream;
    int64_t n = a->n, B = a->batch, k = a->k, P = n * n + n + 1;
    if (n == 0 || k == 0) return 0;
    if (!a->lu && n > kSmallN) { // straight from A: the register kernel factorises in place
        Scratch sc(env);
        flx_lu_args f = *a;
        int rc = 0;
        if (!(f.lu = factors_in_scratch<T>(a, env, sc, &rc))) return rc;
        return solve<T>(&f, env);
    }
    if (n <= kBlockN) return flxk::lu::solve_small(a, s);
    if (n > INT32_MAX / n || B > INT32_MAX || k > INT32_MAX) return (int)cudaErrorInvalidValue;
    Scratch sc(env);
    int *piv = (int *)sc.get(sizeof(int) * (size_t)(B * n));
    T *X = (T *)sc.get(sizeof(T) * (size_t)(B * n * k));
    int *dinfo = (int *)sc.get(sizeof(int));
    if (!piv || !X || !dinfo) return FLX_LIB_RC_SCRATCH;
    T *lu = (T *)a->lu;
    k_load_piv<T><<<grid_for(B * (n + 1)), kBlock, 0, s>>>(lu, piv, B, n, a->check, a->err);
    int rc = flxk::launch_status();
    if (rc) return rc;
    const T *bsrc = (const T *)a->b;
    T *xcm = X;
    if (!bsrc) { // the identity: the same in row- and column-major order
        k_eye<T><<<grid_for(B * n * k), kBlock, 0, s>>>(X, B, n);
        if ((rc = flxk::launch_status())) return rc;
    } else if (k > 1) {
        k_to_colmajor<T><<<grid_for(B * n * k), kBlock, 0, s>>>(bsrc, X, B, n, k, 0);
        if ((rc = flxk::launch_status())) return rc;
    } else { // one column: row-major and column-major coincide
        rc = (int)cudaMemcpyAsync(X, bsrc, sizeof(T) * (size_t)(B * n), cudaMemcpyDeviceToDevice, s);
        if (rc) return rc;
    }
    cublasOperation_t op = a->trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    cusolverDnHandle_t h = (cusolverDnHandle_t)env->cusolver;
    for (int64_t b = 0; b < B; b++) {
        rc = solver_rc(getrs(h, op, (int)n, (int)k, lu + b * P, piv + b * n, xcm + b * n * k, dinfo));
        if (rc) return rc;
    }
    if (k > 1) {
        k_to_colmajor<T><<<grid_for(B * n * k), kBlock, 0, s>>>(X, (T *)a->out, B, n, k, 1);
        return flxk::launch_status();
    }
    return (int)cudaMemcpyAsync(a->out, X, sizeof(T) * (size_t)(B * n), cudaMemcpyDeviceToDevice, s);
}

// det of 0x0 matrices: 1 (log|det| 0, sign 1, log det 0), as k_det gives for n == 0.
template <typename T>
__global__ void k_det_empty(T *out, int64_t batch, int mode) {
    for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < batch;
         b += (int64_t)gridDim.x * blockDim.x)
        out[b] = (T)det_value(mode, 1.0, 0.0, 0, 0, 0);
}

template <typename T>
int det_of_empty(const flx_lu_args *a, cudaStream_t s) {
    k_det_empty<T><<<grid_for(a->batch), kBlock, 0, s>>>((T *)a->out, a->batch, a->mode);
    return flxk::launch_status();
}

template <typename T>
int run(const flx_lu_args *a, const flx_cuda_lib_env *env) {
    cudaStream_t s = (cudaStream_t)env->stream;
    if (a->batch <= 0) return 0;
    switch (a->mode) {
    case FLX_LU_FACTOR: return factor<T>(a, env);
    case FLX_LU_SOLVE: return solve<T>(a, env);
    case FLX_LU_DET_GRAD:
    case FLX_LU_LOGDET_GRAD: // register kernels only: the op builds this mode for small n
        if (a->n < 1 || a->n > kSmallN) return (int)cudaErrorInvalidValue;
        return flxk::lu::det_grad_small(a, s);
    case FLX_LU_COFACTOR: {
        if (a->n == 0) return 0;
        Scratch sc(env);
        double *W = (double *)sc.get(sizeof(double) * (size_t)(a->batch * a->n * a->n));
        if (!W) return FLX_LIB_RC_SCRATCH;
        k_cof_adjU<T><<<grid_for(a->batch * a->n, 128), 128, 0, s>>>((const T *)a->lu, W, a->batch, a->n);
        int rc = flxk::launch_status();
        if (rc) return rc;
        k_cof_rows<T><<<grid_for(a->batch * a->n, 128), 128, 0, s>>>((const T *)a->lu, W, (T *)a->out,
                                                                   a->batch, a->n);
        return flxk::launch_status();
    }
    default: {
        const T *lu = (const T *)a->lu;
        if (!lu && a->n == 0) return det_of_empty<T>(a, s);
        if (!lu && a->n <= kSmallN) return flxk::lu::factor_small(a, s); // straight from A
        Scratch sc(env);
        int rc = 0;
        if (!lu && !(lu = factors_in_scratch<T>(a, env, sc, &rc))) return rc; // forward-only, n > 8
        k_det<T><<<grid_for(a->batch * 32), kBlock, 0, s>>>(lu, (T *)a->out, a->batch, a->n, a->mode);
        return flxk::launch_status();
    }
    }
}

} // namespace

extern "C" int flx_cuda_lu(const flx_lu_args *a, const flx_cuda_lib_env *env) {
    return flxk::with_dtype<flxk::kReal>(a->dtype, [&](auto t) { return run<typename decltype(t)::type>(a, env); });
}
