// lu_internal.cuh — what the two halves of the CUDA LU family share: the size thresholds of the
// paths, the det formula, and the launchers of fluxion's own n <= 64 kernels (lu_small.cu) that
// the orchestration and the cuSOLVER path (lu.cu) call. Private to those two files.
#pragma once

#include "cuda_common.cuh"

namespace flxk {
namespace lu {

constexpr int kSmallN = FLX_LU_REG_N; // n <= kSmallN: one thread per matrix, registers
constexpr int kBlockN = 64; // n <= kBlockN: one block per matrix, shared memory

// det / log|det| / sign / log det from the diagonal's product, log-sum, sign parity, zero and
// NaN flags (shared by the warp kernel on packed factors and the register kernel).
__device__ __forceinline__ double det_value(int mode, double prod, double logabs, int neg, int zero,
                                            int nanf) {
    double v;
    if (mode == FLX_LU_DET) v = zero ? 0.0 : (neg ? -fabs(prod) : fabs(prod));
    else if (mode == FLX_LU_LOGABS) v = zero ? -INFINITY : logabs;
    else if (mode == FLX_LU_SIGN) v = zero ? 0.0 : (neg ? -1.0 : 1.0);
    else v = zero ? -INFINITY : (neg ? NAN : logabs);
    return nanf ? NAN : v; // a NaN on U's diagonal wins over a zero pivot
}

// Launchers of lu_small.cu, f32 and f64 (cudaErrorInvalidValue for other dtypes); they return 0
// or a CUDA error code.
// Factors a->a (batch, n, n) with 1 <= n <= kBlockN into the packed rows of a->out; for
// n <= kSmallN a det mode (a->mode != FLX_LU_FACTOR) writes the det value per matrix instead.
int factor_small(const flx_lu_args *a, cudaStream_t s);
// Solves with the packed factors a->lu for 1 <= n <= kBlockN and k >= 1 right-hand sides; for
// n <= kSmallN also straight from a->a when a->lu is NULL (factorised in registers, not stored).
int solve_small(const flx_lu_args *a, cudaStream_t s);
// DET_GRAD / LOGDET_GRAD (flx_lu_args) for 1 <= n <= kSmallN, straight from a->a.
int det_grad_small(const flx_lu_args *a, cudaStream_t s);
// Library path: matrices of a->out whose info is nonzero are factorised again from a->a with
// exact zero multipliers; piv (batch, n) and info (batch) are the library's 1-based int arrays.
int refactor_singular(const flx_lu_args *a, int *piv, int *info, cudaStream_t s);

} // namespace lu
} // namespace flxk
