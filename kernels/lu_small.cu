// lu_small.cu — fluxion's own LU kernels for n <= 64, the paths plans can capture into CUDA
// graphs (lu.cu has the overview and the n > 64 cuSOLVER path):
//   n <= 8:       one thread per matrix (factor, det, solve, det gradients), partial pivoting held in
//                 registers, templated on N (PERFORMANCE.md: cuBLAS's batched LU is 2x slower
//                 there); every global access staged through shared memory (stage). A solve or
//                 inverse no gradient needs factorises A in registers and stores no factors.
//   9 <= n <= 64: one block per matrix staged in shared memory (block_lu, k_solve_block).
// block_lu also runs in global memory for the library path's singular fix-up
// (k_refactor_singular). Packed layout: flx_lu_args in flx_kernels.h.
#include <limits.h>

#include "lu_internal.cuh"

namespace {

using flxk::grid_for;
using flxk::lu::det_value;
using flxk::lu::kSmallN;

// ---- small register LU --------------------------------------------------------------------------
// One thread per matrix. A block's matrices are one contiguous slab of global memory: it is
// staged through shared memory (one matrix per thread at an odd stride, so the per-thread
// accesses are free of bank conflicts) so that every global load and store is coalesced
// instead of each thread touching its own 256-byte row (32 cache lines per warp instruction).
template <typename T> struct SmallTpb { static constexpr int value = 128; };
template <> struct SmallTpb<double> { static constexpr int value = 64; }; // 37 KB of staging

// The small kernels: factor (or forward-only det), solve from the factors, solve from A, and the
// gradients of det and of log|det|.
enum SmallKernel { kFactor, kSolve, kSolveDirect, kDetGrad, kLogdetGrad };

// Resident blocks per SM a small kernel is compiled for (__launch_bounds__' second argument: the
// register budget is 64K / (SmallTpb * blocks)). 0 leaves the budget to ptxas, whose own choice
// aims at an occupancy step and spilled a few loop-invariant words (the slab loop's bounds and
// pointers, reloaded per slab) in the instantiations given an explicit budget here (ptxas -v,
// CUDA 13, sm_90); each fits its budget with no spill.
template <typename T, int N, SmallKernel K> struct SmallBlocks { static constexpr int value = 0; };
template <> struct SmallBlocks<double, 4, kSolveDirect> { static constexpr int value = 10; }; // 90 registers
template <> struct SmallBlocks<double, 4, kDetGrad> { static constexpr int value = 10; };     // 66
template <> struct SmallBlocks<float, 6, kLogdetGrad> { static constexpr int value = 5; };    // 80

// Moves a block's slab between global memory g and shared memory st, LOAD: g -> st, else back.
// Item t < cnt (one per thread of the compute phase) is rows x w elements: row r at
// g + t * item + r * row, and all of it at st + t * ld (ld odd). Consecutive threads take
// consecutive elements, so the warp's accesses are coalesced (fully when w == row and
// item == rows * w: the slab is contiguous). Ends without a barrier.
template <bool LOAD, int TPB, typename T, typename G>
__device__ __forceinline__ void stage(T *st, int ld, G *g, int cnt, int rows, int w, int64_t item,
                                      int64_t row) {
    const int per = rows * w;
    if (item == per && row == w) { // contiguous slab: 32-bit indices
        for (int e = threadIdx.x; e < cnt * per; e += TPB) {
            const int t = e / per;
            if constexpr (LOAD) st[t * ld + (e - t * per)] = g[e];
            else g[e] = st[t * ld + (e - t * per)];
        }
        return;
    }
    for (int e = threadIdx.x; e < cnt * per; e += TPB) {
        const int t = e / per, r = e - t * per, i = r / w, c = r - i * w;
        G *p = g + t * item + i * row + c;
        if constexpr (LOAD) st[t * ld + r] = *p;
        else *p = st[t * ld + r];
    }
}

// m := the row-major N x N matrix of a thread's staging slot sm.
template <typename T, int N>
__device__ __forceinline__ void load_rows(T (&m)[N][N], const T *sm) {
#pragma unroll
    for (int i = 0; i < N; i++)
#pragma unroll
        for (int j = 0; j < N; j++) m[i][j] = sm[i * N + j];
}

// In-register LU with partial pivoting of m (row i, column j at m[i][j]): L below the diagonal,
// U on and above it, piv as the packed layout's; rd[k] = 1 / U(k, k) (inf for a zero pivot).
// Returns info (0 or the 1-based first zero pivot); a zero pivot column keeps multipliers 0.
template <typename T, int N>
__device__ __forceinline__ int reg_lu(T (&m)[N][N], int (&piv)[N], T (&rd)[N]) {
    int info = 0;
#pragma unroll
    for (int k = 0; k < N; k++) {
        int p = k;
        T best = fabs(m[k][k]);
        bool bnan = isnan(best);
#pragma unroll
        for (int i = k + 1; i < N; i++) {
            T v = fabs(m[i][k]);
            if (!bnan && (v > best || isnan(v))) { // the first NaN wins and stays
                best = v;
                p = i;
                bnan = isnan(v);
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
        const T r = T(1) / d; // +-inf for a zero pivot
        rd[k] = r;
        // As the CPU reference and block_lu, whose multipliers are quotients: x * (1 / x) misses
        // 1 for about one x in seven, so two equal rows would leave a rounding-size pivot where
        // the CPU finds the exact zero that makes A singular. One FMA correction of m * r gives
        // the correctly rounded m / d (for finite d with a finite reciprocal) without a divide,
        // whose slow-path call spills. A zero pivot leaves its column uneliminated (exact zero
        // multipliers, no update) and a zero in the pivot row skips its column's update, so an
        // inf or NaN elsewhere in A never meets a zero factor there (0 * inf is NaN).
#pragma unroll
        for (int i = k + 1; i < N; i++) {
            const T q = m[i][k] * r;
            m[i][k] = d == T(0) ? T(0) : isfinite(d) ? fma(fma(-q, d, m[i][k]), r, q) : q;
        }
#pragma unroll
        for (int j = k + 1; j < N; j++) {
            const bool upd = d != T(0) && m[k][j] != T(0);
#pragma unroll
            for (int i = k + 1; i < N; i++) m[i][j] = upd ? m[i][j] - m[i][k] * m[k][j] : m[i][j];
        }
    }
    return info;
}

template <typename T, int N>
__device__ __forceinline__ int reg_lu(T (&m)[N][N], int (&piv)[N]) {
    T rd[N]; // unused: the compiler drops it
    return reg_lu<T, N>(m, piv, rd);
}

// DET: write det_value(mode) per matrix instead of the packed LU (forward-only det).
template <typename T, int N, bool DET>
__global__ void __launch_bounds__(SmallTpb<T>::value, SmallBlocks<T, N, kFactor>::value)
    k_factor_small(const T *__restrict__ a, T *__restrict__ out, int64_t batch, int mode) {
    constexpr int TPB = SmallTpb<T>::value, NN = N * N, P = NN + N + 1, LD = P | 1;
    __shared__ T st[TPB * LD];
    for (int64_t b0 = (int64_t)blockIdx.x * TPB; b0 < batch; b0 += (int64_t)gridDim.x * TPB) {
        const int cnt = batch - b0 < TPB ? (int)(batch - b0) : TPB;
        stage<true, TPB>(st, LD, a + b0 * NN, cnt, 1, NN, NN, NN);
        __syncthreads();
        T *sm = st + threadIdx.x * LD;
        if ((int)threadIdx.x < cnt) {
            T m[N][N];
            load_rows<T, N>(m, sm);
            int piv[N];
            const int info = reg_lu<T, N>(m, piv);
            if (DET) {
                double prod = 1.0, logabs = 0.0;
                int neg = 0, zero = 0, nanf = 0;
#pragma unroll
                for (int i = 0; i < N; i++) {
                    double d = (double)m[i][i];
                    neg ^= (piv[i] != i) ^ (d < 0);
                    zero |= d == 0;
                    nanf |= isnan(d);
                    prod *= d;
                    logabs += log(fabs(d));
                }
                out[b0 + threadIdx.x] = (T)det_value(mode, prod, logabs, neg, zero, nanf);
            } else {
#pragma unroll
                for (int j = 0; j < N; j++)
#pragma unroll
                    for (int i = 0; i < N; i++) sm[j * N + i] = m[i][j];
#pragma unroll
                for (int i = 0; i < N; i++) sm[NN + i] = (T)piv[i];
                sm[NN + N] = (T)info;
            }
        }
        __syncthreads();
        if (DET) continue; // uniform: a template constant; st is free again after the barrier
        stage<false, TPB>(st, LD, out + b0 * P, cnt, 1, P, P, P);
        __syncthreads();
    }
}

// x[i] <-> x[piv[i]] (piv[i] >= i) by selects over the later rows: a dynamic index would put x
// in local memory instead of registers.
template <typename T, int N>
__device__ __forceinline__ void swap_with_pivot(T (&x)[N], const int (&piv)[N], int i) {
#pragma unroll
    for (int q = i + 1; q < N; q++) {
        bool s = (q == piv[i]);
        T u = x[i], v = x[q];
        x[i] = s ? v : u;
        x[q] = s ? u : v;
    }
}

// x := A^-1 x (A^-T x when trans) with the register factors of reg_lu.
template <typename T, int N>
__device__ __forceinline__ void reg_solve(const T (&m)[N][N], const int (&piv)[N], T (&x)[N], int trans) {
    if (!trans) {
#pragma unroll
        for (int i = 0; i < N; i++) swap_with_pivot<T, N>(x, piv, i);
#pragma unroll
        for (int i = 0; i < N; i++)
#pragma unroll
            for (int j = 0; j < i; j++) x[i] -= m[i][j] * x[j];
#pragma unroll
        for (int i = N - 1; i >= 0; i--) {
#pragma unroll
            for (int j = i + 1; j < N; j++) x[i] -= m[i][j] * x[j];
            x[i] /= m[i][i];
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) {
#pragma unroll
            for (int j = 0; j < i; j++) x[i] -= m[j][i] * x[j];
            x[i] /= m[i][i];
        }
#pragma unroll
        for (int i = N - 1; i >= 0; i--)
#pragma unroll
            for (int j = i + 1; j < N; j++) x[i] -= m[j][i] * x[j];
#pragma unroll
        for (int i = N - 1; i >= 0; i--) swap_with_pivot<T, N>(x, piv, i);
    }
}

// v := row c of s A^-1 (INV) or of s adj(A) (!INV) from the register factors of reg_lu:
// A^-1 = U^-1 L^-1 P^T and adj(A) = sign(P) adj(U) L^-1 P^T. Row c of U^-1 is x_c = rd_c,
// x_j = -rd_j sum_{k=c..j-1} x_k u_kj; row c of adj(U) is its division-free form pre_c suf[j] Y_j
// (exact at singular A, as the CPU's adjugate): Y_c = 1, Y_j = -sum_{k=c..j-1} Y_k u_kj
// prod_{q=k+1..j-1} u_qq (Horner over k), pre_c the product of the pivots before c, suf[j] of
// those after j. ps: s (INV), s sign(P) pre_c (!INV). Called in an unrolled loop over c, so every
// index is a compile-time constant and v stays in registers.
template <typename T, int N, bool INV>
__device__ __forceinline__ void reg_inv_row(const T (&m)[N][N], const int (&piv)[N], const T (&rd)[N],
                                            const T (&suf)[N], T ps, int c, T (&v)[N]) {
#pragma unroll
    for (int j = 0; j < N; j++) v[j] = j != c ? T(0) : INV ? rd[c] : T(1);
#pragma unroll
    for (int j = 0; j < N; j++) {
        if (j <= c) continue;
        T acc = T(0);
#pragma unroll
        for (int k = 0; k < N; k++)
            if (k >= c && k < j) acc = (INV ? acc : acc * m[k][k]) + v[k] * m[k][j];
        v[j] = INV ? -acc * rd[j] : -acc;
    }
#pragma unroll
    for (int j = 0; j < N; j++)
        if (j >= c) v[j] *= INV ? ps : ps * suf[j];
    // v L^-1 (L unit lower, below m's diagonal): v_j -= sum_{k>j} v_k L_kj, last column first.
#pragma unroll
    for (int j = N - 1; j >= 0; j--)
#pragma unroll
        for (int k = j + 1; k < N; k++) v[j] -= v[k] * m[k][j];
    // P^T: the column swaps of the pivots, last first.
#pragma unroll
    for (int i = N - 1; i >= 0; i--) swap_with_pivot<T, N>(v, piv, i);
}

// The gradients of det (COF: g adj(A)^T) and of log|det| (g A^-T) straight from A, g per matrix
// (NULL: 1): one thread per matrix, A factorised in registers by reg_lu. The block's slab of A
// is staged in like k_factor_small's, each thread writes its gradient over its own matrix in
// shared memory (column c of the result is row c of adj(A) or of A^-1), and the slab is staged
// out: A and g are read once and only the gradient is written (no factors, no scratch).
template <typename T, int N, bool COF>
__global__ void __launch_bounds__(SmallTpb<T>::value, SmallBlocks<T, N, COF ? kDetGrad : kLogdetGrad>::value)
    k_det_grad_small(const T *__restrict__ a, const T *__restrict__ g, T *__restrict__ out, int64_t batch) {
    constexpr int TPB = SmallTpb<T>::value, NN = N * N, LD = NN | 1;
    __shared__ T st[TPB * LD];
    for (int64_t b0 = (int64_t)blockIdx.x * TPB; b0 < batch; b0 += (int64_t)gridDim.x * TPB) {
        const int cnt = batch - b0 < TPB ? (int)(batch - b0) : TPB;
        stage<true, TPB>(st, LD, a + b0 * NN, cnt, 1, NN, NN, NN);
        __syncthreads();
        if ((int)threadIdx.x < cnt) {
            T *sm = st + threadIdx.x * LD;
            T m[N][N];
            load_rows<T, N>(m, sm);
            int piv[N];
            T rd[N];
            (void)reg_lu<T, N>(m, piv, rd);
            T ps = g ? g[b0 + threadIdx.x] : T(1), suf[N];
            if (COF) {
                bool neg = false;
#pragma unroll
                for (int i = 0; i < N; i++) neg ^= piv[i] != i;
                if (neg) ps = -ps;
                suf[N - 1] = T(1);
#pragma unroll
                for (int j = N - 2; j >= 0; j--) suf[j] = suf[j + 1] * m[j + 1][j + 1];
            }
#pragma unroll
            for (int c = 0; c < N; c++) {
                T v[N];
                reg_inv_row<T, N, !COF>(m, piv, rd, suf, ps, c, v);
#pragma unroll
                for (int i = 0; i < N; i++) sm[i * N + c] = v[i];
                if (COF) ps *= m[c][c];
            }
        }
        __syncthreads();
        stage<false, TPB>(st, LD, out + b0 * NN, cnt, 1, NN, NN, NN);
        __syncthreads(); // st is reused by the next slab
    }
}

// Solve, one thread per matrix with its factors in registers, all of it staged like
// k_factor_small: the block's slab of factors (DIRECT: of A, factorised here by reg_lu and never
// written back: nothing downstream needs them), then the right-hand sides in chunks of KC
// columns through the same shared memory, solved and stored in place. bm == NULL: the identity,
// generated in registers (inverses: nothing to load).
template <typename T, int N, bool DIRECT>
__global__ void __launch_bounds__(SmallTpb<T>::value, SmallBlocks<T, N, DIRECT ? kSolveDirect : kSolve>::value)
    k_solve_small(const T *__restrict__ src, const T *__restrict__ bm, T *__restrict__ out, int64_t batch,
                  int64_t k, int trans, int check, flx_kerr err) {
    constexpr int TPB = SmallTpb<T>::value, NN = N * N, P = NN + N + 1, LD = P | 1;
    constexpr int IN = DIRECT ? NN : P, KC = (LD - 1) / N; // KC >= N + 1: an inverse in one chunk
    __shared__ T st[TPB * LD];
    for (int64_t b0 = (int64_t)blockIdx.x * TPB; b0 < batch; b0 += (int64_t)gridDim.x * TPB) {
        const int cnt = batch - b0 < TPB ? (int)(batch - b0) : TPB;
        const bool live = (int)threadIdx.x < cnt;
        stage<true, TPB>(st, LD, src + b0 * IN, cnt, 1, IN, IN, IN);
        __syncthreads();
        T m[N][N];
        int piv[N], info = 0;
        if (live) {
            const T *sm = st + threadIdx.x * LD;
            if (DIRECT) {
                load_rows<T, N>(m, sm);
                info = reg_lu<T, N>(m, piv);
            } else {
#pragma unroll
                for (int j = 0; j < N; j++)
#pragma unroll
                    for (int i = 0; i < N; i++) m[i][j] = sm[j * N + i];
#pragma unroll
                for (int i = 0; i < N; i++) piv[i] = (int)sm[NN + i];
                info = (int)sm[NN + N];
            }
        }
        const T *bb = bm ? bm + b0 * N * k : nullptr;
        T *ob = out + b0 * N * k;
        for (int64_t c0 = 0; c0 < k; c0 += KC) {
            const int w = k - c0 < KC ? (int)(k - c0) : KC, ldb = (N * w) | 1;
            __syncthreads(); // st is free: the factors are in registers, the last chunk stored
            if (bb) {
                stage<true, TPB>(st, ldb, bb + c0, cnt, N, w, (int64_t)N * k, k);
                __syncthreads();
            }
            if (live) {
                T *sx = st + threadIdx.x * ldb;
                for (int c = 0; c < w; c++) {
                    T x[N];
#pragma unroll
                    for (int i = 0; i < N; i++) x[i] = bb ? sx[i * w + c] : T(i == c0 + c);
                    reg_solve<T, N>(m, piv, x, trans);
#pragma unroll
                    for (int i = 0; i < N; i++) sx[i * w + c] = x[i];
                }
            }
            __syncthreads();
            stage<false, TPB>(st, ldb, ob + c0, cnt, N, w, (int64_t)N * k, k);
        }
        // Raised once the factors are dead: no registers to save around the atomics.
        if (check && info != 0) flx_kerr_raise(err, FLX_KERR_SINGULAR, info, 0, 0, b0 + threadIdx.x);
        __syncthreads(); // st is reused by the next slab
    }
}

// ---- block LU: one thread block per matrix (9 <= n <= 64 in shared memory; the singular fix-up
// of the library path in global memory) -------------------------------------------------------
// Pivot candidate order (shared with the register kernel and the CPU reference): the first NaN
// wins, so a NaN in the column reaches the factors and every result; otherwise the largest
// |value|, ties to the lowest row.
template <typename T>
__device__ __forceinline__ bool piv_better(T v, int i, bool vnan, T w, int j, bool wnan) {
    if (vnan != wnan) return vnan;
    if (vnan) return i < j;
    if (v != w) return v > w;
    return i < j;
}

constexpr int kLuThreads = 128;

// In-place LU with partial pivoting of the column-major n x n matrix m (leading dimension ld),
// by the whole block (blockDim.x == kLuThreads). Pivot k is handed to put_piv(k, p) by thread 0.
// A zero pivot column keeps multipliers 0 (exact form A = P L U, the cofactor kernels rely on
// it). Returns info (0 or 1-based first zero pivot), valid in thread 0. Ends with a barrier.
template <typename T, typename PutPiv>
__device__ int block_lu(T *m, int64_t ld, int n, PutPiv put_piv) {
    __shared__ int s_p;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    constexpr int nwarps = kLuThreads / 32;
    int info = 0;
    for (int k = 0; k < n; k++) {
        T *ck = m + (int64_t)k * ld;
        if (warp == 0) {
            T best = T(-1);
            int p = INT_MAX;
            bool bnan = false;
            for (int i = k + lane; i < n; i += 32) {
                T v = fabs(ck[i]);
                bool vn = isnan(v);
                if (p == INT_MAX || piv_better(v, i, vn, best, p, bnan)) best = v, p = i, bnan = vn;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                T w = __shfl_xor_sync(0xffffffffu, best, o);
                int q = __shfl_xor_sync(0xffffffffu, p, o);
                bool wn = __shfl_xor_sync(0xffffffffu, (int)bnan, o) != 0;
                if (q != INT_MAX && (p == INT_MAX || piv_better(w, q, wn, best, p, bnan)))
                    best = w, p = q, bnan = wn;
            }
            if (lane == 0) {
                s_p = p;
                put_piv(k, p);
            }
        }
        __syncthreads();
        const int p = s_p;
        if (p != k)
            for (int j = tid; j < n; j += kLuThreads) {
                T x = m[(int64_t)j * ld + k];
                m[(int64_t)j * ld + k] = m[(int64_t)j * ld + p];
                m[(int64_t)j * ld + p] = x;
            }
        __syncthreads();
        const T d = ck[k];
        if (d == T(0)) {
            // Exactly zero pivot: the column below is zero too (it was the largest |value|);
            // store exact zeros and skip the (no-op) update.
            if (tid == 0 && info == 0) info = k + 1;
            for (int i = k + 1 + tid; i < n; i += kLuThreads) ck[i] = T(0);
            __syncthreads();
            continue;
        }
        for (int i = k + 1 + tid; i < n; i += kLuThreads) ck[i] /= d;
        __syncthreads();
        // Trailing update, a warp per column: consecutive lanes touch consecutive rows.
        for (int j = k + 1 + warp; j < n; j += nwarps) {
            T *cj = m + (int64_t)j * ld;
            const T u = cj[k];
            if (u == T(0)) continue;
            for (int i = k + 1 + lane; i < n; i += 32) cj[i] -= ck[i] * u;
        }
        __syncthreads();
    }
    return info;
}

// 9 <= n <= 64: each block stages one matrix at a time in shared memory (ld = n + 1 keeps the row
// swaps free of bank conflicts), loading and storing it coalesced.
template <typename T>
__global__ void __launch_bounds__(kLuThreads) k_factor_block(const T *__restrict__ a, T *__restrict__ out,
                                                             int64_t batch, int n) {
    extern __shared__ __align__(16) unsigned char s_raw[];
    T *sm = reinterpret_cast<T *>(s_raw);
    const int ld = n + 1, nn = n * n;
    const int64_t P = (int64_t)nn + n + 1;
    for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
        const T *ab = a + b * nn;
        T *o = out + b * P;
        for (int t = threadIdx.x; t < nn; t += kLuThreads) {
            int i = t / n, j = t - i * n;
            sm[j * ld + i] = ab[t];
        }
        __syncthreads();
        int info = block_lu(sm, ld, n, [=](int k, int p) { o[nn + k] = (T)p; });
        for (int t = threadIdx.x; t < nn; t += kLuThreads) {
            int j = t / n, i = t - j * n;
            o[t] = sm[j * ld + i];
        }
        if (threadIdx.x == 0) o[nn + n] = (T)info;
        __syncthreads(); // sm is reused by the next matrix
    }
}

// Library path (n > 64): a matrix whose library factorisation met a zero pivot (info != 0) is
// factorised again from A by block_lu in global memory, so its zero-pivot columns hold exact
// zero multipliers instead of whatever the library left there (0 * inf = NaN). Decided on the
// device: no host wait, and nonsingular matrices cost one load of info.
template <typename T>
__global__ void __launch_bounds__(kLuThreads, 8) k_refactor_singular(const T *__restrict__ a, T *__restrict__ out,
                                                                  int *piv, int *info, int64_t batch, int n) {
    const int64_t nn = (int64_t)n * n, P = nn + n + 1;
    for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
        if (info[b] == 0) continue; // uniform over the block
        T *m = out + b * P;
        for (int64_t t = threadIdx.x; t < nn; t += kLuThreads) {
            int64_t i = t / n, j = t - i * n;
            m[j * n + i] = a[b * nn + t];
        }
        __syncthreads();
        int *pb = piv + b * n;
        int inf = block_lu(m, n, n, [=](int k, int p) { pb[k] = p + 1; });
        if (threadIdx.x == 0) info[b] = inf;
        __syncthreads();
    }
}

// Column c of x (row stride kc): the row swaps of the pivots, in order (P^T x) or in reverse
// (P x).
template <typename T>
__device__ __forceinline__ void swap_rows(T *x, int kc, int c, const int *piv, int n, bool reverse) {
    for (int q = 0; q < n; q++) {
        int i = reverse ? n - 1 - q : q, p = piv[i];
        if (p != i) {
            T u = x[i * kc + c];
            x[i * kc + c] = x[p * kc + c];
            x[p * kc + c] = u;
        }
    }
}

// Solve with the packed factors of 9 <= n <= 64: one block per matrix, the LU and a chunk of kc
// right-hand-side columns staged in shared memory; substitution column by column, every thread
// on one (row, rhs column) element of the chunk.
template <typename T>
__global__ void __launch_bounds__(kLuThreads) k_solve_block(const T *__restrict__ lu, const T *__restrict__ bm,
                                                            T *__restrict__ out, int64_t batch, int n,
                                                            int64_t k, int kc, int trans, int check,
                                                            flx_kerr err) {
    extern __shared__ __align__(16) unsigned char s_raw[];
    T *sm = reinterpret_cast<T *>(s_raw);
    const int ld = n + 1, nn = n * n;
    T *x = sm + n * ld; // (n, kc) row-major
    __shared__ int s_piv[64];
    const int64_t P = (int64_t)nn + n + 1;
    const int tid = threadIdx.x;
#define L_(i, j) sm[(j) * ld + (i)]
    for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
        const T *f = lu + b * P;
        for (int t = tid; t < nn; t += kLuThreads) {
            int j = t / n, i = t - j * n;
            L_(i, j) = f[t];
        }
        for (int t = tid; t < n; t += kLuThreads) s_piv[t] = (int)f[nn + t];
        if (check && tid == 0 && f[nn + n] != T(0))
            flx_kerr_raise(err, FLX_KERR_SINGULAR, (int64_t)f[nn + n], 0, 0, b);
        for (int64_t c0 = 0; c0 < k; c0 += kc) {
            const int w = (int)(k - c0 < kc ? k - c0 : kc), tot = n * w;
            const T *bb = bm ? bm + b * n * k + c0 : nullptr; // NULL: the identity
            T *ob = out + b * n * k + c0;
            __syncthreads(); // LU staged; previous chunk stored
            for (int t = tid; t < tot; t += kLuThreads) {
                int i = t / w, c = t - i * w;
                x[i * kc + c] = bm ? bb[(int64_t)i * k + c] : T(i == c0 + c);
            }
            __syncthreads();
            if (!trans) {
                if (tid < w) swap_rows(x, kc, tid, s_piv, n, false);
                __syncthreads();
                for (int j = 0; j < n - 1; j++) { // L y = x, unit lower
                    for (int t = tid; t < (n - 1 - j) * w; t += kLuThreads) {
                        int i = j + 1 + t / w, c = t % w;
                        x[i * kc + c] -= L_(i, j) * x[j * kc + c];
                    }
                    __syncthreads();
                }
                for (int j = n - 1; j >= 0; j--) { // U z = y
                    if (tid < w) x[j * kc + tid] /= L_(j, j);
                    __syncthreads();
                    for (int t = tid; t < j * w; t += kLuThreads) {
                        int i = t / w, c = t % w;
                        x[i * kc + c] -= L_(i, j) * x[j * kc + c];
                    }
                    __syncthreads();
                }
            } else {
                for (int j = 0; j < n; j++) { // U^T z = x, lower
                    if (tid < w) x[j * kc + tid] /= L_(j, j);
                    __syncthreads();
                    for (int t = tid; t < (n - 1 - j) * w; t += kLuThreads) {
                        int i = j + 1 + t / w, c = t % w;
                        x[i * kc + c] -= L_(j, i) * x[j * kc + c];
                    }
                    __syncthreads();
                }
                for (int j = n - 1; j > 0; j--) { // L^T w = z, unit upper
                    for (int t = tid; t < j * w; t += kLuThreads) {
                        int i = t / w, c = t % w;
                        x[i * kc + c] -= L_(j, i) * x[j * kc + c];
                    }
                    __syncthreads();
                }
                if (tid < w) swap_rows(x, kc, tid, s_piv, n, true);
                __syncthreads();
            }
            for (int t = tid; t < tot; t += kLuThreads) {
                int i = t / w, c = t - i * w;
                ob[(int64_t)i * k + c] = x[i * kc + c];
            }
        }
        __syncthreads(); // sm is reused by the next matrix
    }
#undef L_
}

template <typename T, int N>
int launch_factor_small(const flx_lu_args *a, cudaStream_t s) {
    constexpr int TPB = SmallTpb<T>::value;
    if (a->mode == FLX_LU_FACTOR)
        k_factor_small<T, N, false><<<grid_for(a->batch, TPB), TPB, 0, s>>>((const T *)a->a, (T *)a->out,
                                                                          a->batch, a->mode);
    else
        k_factor_small<T, N, true><<<grid_for(a->batch, TPB), TPB, 0, s>>>((const T *)a->a, (T *)a->out,
                                                                         a->batch, a->mode);
    return flxk::launch_status();
}

template <typename T, int N>
int launch_solve_small(const flx_lu_args *a, cudaStream_t s) {
    constexpr int TPB = SmallTpb<T>::value;
    if (a->lu)
        k_solve_small<T, N, false><<<grid_for(a->batch, TPB), TPB, 0, s>>>(
            (const T *)a->lu, (const T *)a->b, (T *)a->out, a->batch, a->k, a->trans, a->check, a->err);
    else
        k_solve_small<T, N, true><<<grid_for(a->batch, TPB), TPB, 0, s>>>(
            (const T *)a->a, (const T *)a->b, (T *)a->out, a->batch, a->k, a->trans, a->check, a->err);
    return flxk::launch_status();
}

template <typename T, int N>
int launch_det_grad_small(const flx_lu_args *a, cudaStream_t s) {
    constexpr int TPB = SmallTpb<T>::value;
    if (a->mode == FLX_LU_DET_GRAD)
        k_det_grad_small<T, N, true><<<grid_for(a->batch, TPB), TPB, 0, s>>>((const T *)a->a, (const T *)a->b,
                                                                           (T *)a->out, a->batch);
    else
        k_det_grad_small<T, N, false><<<grid_for(a->batch, TPB), TPB, 0, s>>>((const T *)a->a, (const T *)a->b,
                                                                            (T *)a->out, a->batch);
    return flxk::launch_status();
}

// kind: kFactor, kSolve (either form) or kDetGrad (either mode); a->mode and a->lu pick the rest.
template <typename T>
int small_dispatch(const flx_lu_args *a, cudaStream_t s, SmallKernel kind) {
    switch (a->n) {
#define FLX_LU_CASE(NN)                                                                              \
    case NN:                                                                                         \
        return kind == kFactor ? launch_factor_small<T, NN>(a, s)                                    \
             : kind == kSolve  ? launch_solve_small<T, NN>(a, s)                                     \
                               : launch_det_grad_small<T, NN>(a, s);
        FLX_LU_CASE(1) FLX_LU_CASE(2) FLX_LU_CASE(3) FLX_LU_CASE(4)
        FLX_LU_CASE(5) FLX_LU_CASE(6) FLX_LU_CASE(7) FLX_LU_CASE(8)
#undef FLX_LU_CASE
    default: return (int)cudaErrorInvalidValue;
    }
}

// Blocks for one-matrix-per-block kernels: every matrix its own block up to a few resident waves.
inline unsigned grid_blocks(int64_t batch) {
    int64_t cap = (int64_t)flxk::sm_count() * 64;
    return (unsigned)(batch < 1 ? 1 : (batch < cap ? batch : cap));
}

// Right-hand-side columns per shared-memory chunk of k_solve_block: the LU (n x (n + 1)) and
// the chunk stay within the 48 KB of static + dynamic shared memory a block gets by default.
template <typename T>
inline int solve_chunk(int64_t n, int64_t k) {
    int64_t room = (40 * 1024) / (int64_t)sizeof(T) - n * (n + 1);
    int64_t kc = room / n;
    if (kc > kLuThreads) kc = kLuThreads;
    if (kc > k) kc = k;
    return (int)(kc < 1 ? 1 : kc);
}

template <typename T>
int factor_t(const flx_lu_args *a, cudaStream_t s) {
    if (a->n <= kSmallN) return small_dispatch<T>(a, s, kFactor);
    size_t shm = sizeof(T) * (size_t)(a->n * (a->n + 1));
    k_factor_block<T><<<grid_blocks(a->batch), kLuThreads, shm, s>>>((const T *)a->a, (T *)a->out, a->batch,
                                                                     (int)a->n);
    return flxk::launch_status();
}

template <typename T>
int solve_t(const flx_lu_args *a, cudaStream_t s) {
    if (a->n <= kSmallN) return small_dispatch<T>(a, s, kSolve);
    int64_t n = a->n, k = a->k;
    int kc = solve_chunk<T>(n, k);
    size_t shm = sizeof(T) * (size_t)(n * (n + 1) + n * kc);
    k_solve_block<T><<<grid_blocks(a->batch), kLuThreads, shm, s>>>((const T *)a->lu, (const T *)a->b,
                                                                    (T *)a->out, a->batch, (int)n, k, kc,
                                                                    a->trans, a->check, a->err);
    return flxk::launch_status();
}

template <typename T>
int refactor_t(const flx_lu_args *a, int *piv, int *info, cudaStream_t s) {
    k_refactor_singular<T><<<grid_blocks(a->batch), kLuThreads, 0, s>>>((const T *)a->a, (T *)a->out, piv, info,
                                                                        a->batch, (int)a->n);
    return flxk::launch_status();
}

} // namespace

int flxk::lu::factor_small(const flx_lu_args *a, cudaStream_t s) {
    return flxk::with_dtype<flxk::kReal>(a->dtype, [&](auto t) {
        return factor_t<typename decltype(t)::type>(a, s);
    });
}

int flxk::lu::solve_small(const flx_lu_args *a, cudaStream_t s) {
    return flxk::with_dtype<flxk::kReal>(a->dtype, [&](auto t) {
        return solve_t<typename decltype(t)::type>(a, s);
    });
}

int flxk::lu::det_grad_small(const flx_lu_args *a, cudaStream_t s) {
    return flxk::with_dtype<flxk::kReal>(a->dtype, [&](auto t) {
        return small_dispatch<typename decltype(t)::type>(a, s, kDetGrad);
    });
}

int flxk::lu::refactor_singular(const flx_lu_args *a, int *piv, int *info, cudaStream_t s) {
    return flxk::with_dtype<flxk::kReal>(a->dtype, [&](auto t) {
        return refactor_t<typename decltype(t)::type>(a, piv, info, s);
    });
}
