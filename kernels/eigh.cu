// eigh.cu — symmetric eigendecomposition on CUDA, on the context's stream with no host
// waits. Layout and conventions: flx_eigh_args in flx_kernels.h (out = [V | w] per matrix,
// (n, n+1) row-major, eigenvalues ascending, each eigenvector's largest-magnitude entry positive).
//
// Paths:
//   batch > 1 and n <= 32:  cuSOLVER syevjBatched (Jacobi, default tolerance and sweeps,
//                           eigenvalues sorted ascending).
//   otherwise:              cuSOLVER syevd per matrix (divide and conquer, ascending).
// The input is symmetric (the builder symmetrises), so its row-major copy is also its
// column-major form; the solver reads the lower triangle. A matrix whose info > 0 (no
// convergence), or that holds a NaN or infinity (then its outputs are NaN, as on the CPU), raises
// FLX_KERR_EIGH_NOCONV in the error record. Workspace comes from the context's
// stream-ordered allocator (freed after queueing, which is safe on the stream).
#include <climits>
#include <cmath>

#include "solver_common.cuh"

namespace {

using flxk::grid_for;
using flxk::kBlock;
using flxk::Scratch;
using flxk::solver_rc;

// ---- library wrappers by dtype ----------------------------------------------------------------
const cusolverEigMode_t kJob = CUSOLVER_EIG_MODE_VECTOR;
const cublasFillMode_t kUplo = CUBLAS_FILL_MODE_LOWER;

inline cusolverStatus_t syevd_ws(cusolverDnHandle_t h, int n, const float *A, const float *W, int *lw) {
    return cusolverDnSsyevd_bufferSize(h, kJob, kUplo, n, A, n, W, lw);
}
inline cusolverStatus_t syevd_ws(cusolverDnHandle_t h, int n, const double *A, const double *W, int *lw) {
    return cusolverDnDsyevd_bufferSize(h, kJob, kUplo, n, A, n, W, lw);
}
inline cusolverStatus_t syevd(cusolverDnHandle_t h, int n, float *A, float *W, float *work, int lw,
                              int *info) {
    return cusolverDnSsyevd(h, kJob, kUplo, n, A, n, W, work, lw, info);
}
inline cusolverStatus_t syevd(cusolverDnHandle_t h, int n, double *A, double *W, double *work, int lw,
                              int *info) {
    return cusolverDnDsyevd(h, kJob, kUplo, n, A, n, W, work, lw, info);
}
inline cusolverStatus_t syevjB_ws(cusolverDnHandle_t h, int n, const float *A, const float *W, int *lw,
                                  syevjInfo_t p, int batch) {
    return cusolverDnSsyevjBatched_bufferSize(h, kJob, kUplo, n, A, n, W, lw, p, batch);
}
inline cusolverStatus_t syevjB_ws(cusolverDnHandle_t h, int n, const double *A, const double *W, int *lw,
                                  syevjInfo_t p, int batch) {
    return cusolverDnDsyevjBatched_bufferSize(h, kJob, kUplo, n, A, n, W, lw, p, batch);
}
inline cusolverStatus_t syevjB(cusolverDnHandle_t h, int n, float *A, float *W, float *work, int lw,
                               int *info, syevjInfo_t p, int batch) {
    return cusolverDnSsyevjBatched(h, kJob, kUplo, n, A, n, W, work, lw, info, p, batch);
}
inline cusolverStatus_t syevjB(cusolverDnHandle_t h, int n, double *A, double *W, double *work, int lw,
                               int *info, syevjInfo_t p, int batch) {
    return cusolverDnDsyevjBatched(h, kJob, kUplo, n, A, n, W, work, lw, info, p, batch);
}

// ---- non-finite input: one thread per (matrix, row) ------------------------------------------
// Marks info[b] = kNonFinite when matrix b of the input holds a NaN or infinity, after the solver
// wrote its own info, so k_pack writes NaN and flags the error as the CPU reference does.
constexpr int kNonFinite = INT_MIN;
template <typename T>
__global__ void k_check(const T *__restrict__ A, int *__restrict__ info, int64_t batch, int64_t n) {
    const int64_t total = batch * n;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        const T *row = A + t * n;
        bool bad = false;
        for (int64_t i = 0; i < n; i++) bad |= !isfinite(row[i]);
        if (bad) info[t / n] = kNonFinite; /* every writer stores the same value */
    }
}

// ---- packing: one thread per (matrix, eigenvector) ------------------------------------------
// V column-major in work (column j of matrix b at work[b*n*n + j*n ...]), w[b*n + j].
template <typename T>
__global__ void k_pack(const T *__restrict__ V, const T *__restrict__ w, const int *__restrict__ info,
                       T *__restrict__ out, int64_t batch, int64_t n, flx_kerr err) {
    const int64_t total = batch * n;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = t / n, j = t % n;
        const T *col = V + b * n * n + j * n;
        int64_t best = 0;
        T bv = (T)0;
        for (int64_t i = 0; i < n; i++) {
            T v = col[i] < (T)0 ? -col[i] : col[i];
            if (v > bv) {
                bv = v;
                best = i;
            }
        }
        const T sg = col[best] < (T)0 ? (T)-1 : (T)1;
        const bool nonfinite = info[b] == kNonFinite;
        const T nan = (T)NAN;
        T *o = out + b * n * (n + 1);
        for (int64_t i = 0; i < n; i++) o[i * (n + 1) + j] = nonfinite ? nan : sg * col[i];
        o[j * (n + 1) + n] = nonfinite ? nan : w[b * n + j];
        if (j == 0 && info[b] != 0) flx_kerr_raise(err, FLX_KERR_EIGH_NOCONV, info[b], 0, 0, b);
    }
}

template <typename T>
int run(const flx_eigh_args *a, const flx_cuda_lib_env *env) {
    cudaStream_t s = (cudaStream_t)env->stream;
    const int64_t n = a->n, B = a->batch;
    if (n == 0 || B <= 0) return 0;
    if (n > 46340 || B > INT32_MAX) return (int)cudaErrorInvalidValue;
    Scratch sc(env);
    T *V = (T *)sc.get(sizeof(T) * (size_t)(B * n * n));
    T *w = (T *)sc.get(sizeof(T) * (size_t)(B * n));
    int *info = (int *)sc.get(sizeof(int) * (size_t)B);
    if (!V || !w || !info) return FLX_LIB_RC_SCRATCH;
    int rc = (int)cudaMemcpyAsync(V, a->a, sizeof(T) * (size_t)(B * n * n), cudaMemcpyDeviceToDevice, s);
    if (rc) return rc;
    rc = (int)cudaMemsetAsync(info, 0, sizeof(int) * (size_t)B, s);
    if (rc) return rc;
    cusolverDnHandle_t h = (cusolverDnHandle_t)env->cusolver;
    int lw = 0;
    if (B > 1 && n <= 32) {
        syevjInfo_t p = nullptr;
        rc = solver_rc(cusolverDnCreateSyevjInfo(&p));
        if (rc) return rc;
        rc = solver_rc(syevjB_ws(h, (int)n, V, w, &lw, p, (int)B));
        T *work = rc ? nullptr : (T *)sc.get(sizeof(T) * (size_t)(lw > 0 ? lw : 1));
        if (!rc && !work) rc = FLX_LIB_RC_SCRATCH;
        if (!rc) rc = solver_rc(syevjB(h, (int)n, V, w, work, lw, info, p, (int)B));
        cusolverDnDestroySyevjInfo(p);
        if (rc) return rc;
    } else {
        rc = solver_rc(syevd_ws(h, (int)n, V, w, &lw));
        if (rc) return rc;
        T *work = (T *)sc.get(sizeof(T) * (size_t)(lw > 0 ? lw : 1));
        if (!work) return FLX_LIB_RC_SCRATCH;
        for (int64_t b = 0; b < B; b++) {
            rc = solver_rc(syevd(h, (int)n, V + b * n * n, w + b * n, work, lw, info + b));
            if (rc) return rc;
        }
    }
    k_check<T><<<grid_for(B * n), kBlock, 0, s>>>((const T *)a->a, info, B, n);
    k_pack<T><<<grid_for(B * n), kBlock, 0, s>>>(V, w, info, (T *)a->out, B, n, a->err);
    return flxk::launch_status();
}

} // namespace

extern "C" int flx_cuda_eigh(const flx_eigh_args *a, const flx_cuda_lib_env *env) {
    return flxk::with_dtype<flxk::kReal>(a->dtype, [&](auto t) { return run<typename decltype(t)::type>(a, env); });
}
