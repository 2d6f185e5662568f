// softmax.cuh — what the two softmax kernel files share (kernels/softmax.cu: the row, strided and
// cross-entropy kernels and the dispatch; kernels/softmax_long.cu: rows too long for one block):
// the argument block, the (max, sum) algebra, the group reductions and the per-row state and
// per-element formulas of every mode. Design notes: the top of softmax.cu. Private to those files.
#pragma once

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "flx_kernels.h"

namespace flxk {
namespace softmax {

constexpr int kRedMean = 0, kRedSum = 1, kRedNone = 2; // flx_reduction

// x, v, out, grad are stored as S; scale is a compute value. The cross-entropy statistics (the
// per-row losses and the count: CE_FWD's out, CE_FINISH's x) are in the compute type, which is
// the args' stat_dtype (f32 for the halves: a count above 256 is not exact in bf16).
template <typename S> struct KArgs {
    int64_t rows, n, inner;
    compute_t<S> scale;
    const S *x;
    const S *v;
    const void *labels;
    int lab64;
    int64_t ignore;
    int red;
    S *out;
    S *grad;
    compute_t<S> *stat;         // CE_FWD: out (rows + 1)
    const compute_t<S> *stat_x; // CE_FINISH: x (rows + 1)
    flx_kerr err;
};

__device__ __forceinline__ float ex(float v) { return expf(v); }
__device__ __forceinline__ double ex(double v) { return exp(v); }
__device__ __forceinline__ float lg(float v) { return logf(v); }
__device__ __forceinline__ double lg(double v) { return log(v); }
template <typename T> __device__ __forceinline__ T ninf() { return -(T)INFINITY; }

constexpr bool is_stats(int m) {
    return m == FLX_SOFTMAX_FWD || m == FLX_SOFTMAX_LOG_FWD || m == FLX_SOFTMAX_CE_FWD ||
           m == FLX_SOFTMAX_CE_BWD;
}
constexpr bool is_ce(int m) { return m == FLX_SOFTMAX_CE_FWD || m == FLX_SOFTMAX_CE_BWD; }
constexpr bool reads_v(int m) {
    return m == FLX_SOFTMAX_BWD || m == FLX_SOFTMAX_LOG_VJP || m == FLX_SOFTMAX_LOG_JVP;
}
// Elements of each operand a thread keeps in registers: 16 (f32) or 8 (f64) values in all.
template <typename T, int MODE> constexpr int vmax() {
    return (sizeof(T) == 4 ? 16 : 8) / (reads_v(MODE) ? 2 : 1);
}

// ---- (max, sum of exp) algebra ------------------------------------------------------------------
// Adds z to the running (m, s): s = sum exp(z_i - m). -inf adds nothing; +inf or NaN poison s.
template <typename T> __device__ __forceinline__ void ms_add(T &m, T &s, T z) {
    if (z > m) {
        s = (z == -ninf<T>()) ? (T)NAN : s * ex(m - z) + (T)1;
        m = z;
    } else if (!(z == ninf<T>())) {
        s += ex(z - m); // NaN z lands here and poisons s
    }
}
template <typename T> __device__ __forceinline__ void ms_merge(T &m, T &s, T m2, T s2) {
    T mm = fmax(m, m2);
    if (mm == ninf<T>()) {
        s = s + s2; // both rows empty so far (0), or NaN
    } else {
        T a = (s == (T)0) ? (T)0 : s * ex(m - mm);
        T b = (s2 == (T)0) ? (T)0 : s2 * ex(m2 - mm);
        s = a + b;
    }
    m = mm;
}

// ---- group reductions: G <= 32 lanes by shuffles, G > 32 (the whole block) via shared memory ---
template <int G, typename T> __device__ __forceinline__ T g_sum(T v, T *sm) {
#pragma unroll
    for (int o = (G < 32 ? G : 32) / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if constexpr (G > 32) {
        const int w = threadIdx.x / 32, l = threadIdx.x % 32;
        if (l == 0) sm[w] = v;
        __syncthreads();
        v = 0;
        for (int i = 0; i < G / 32; i++) v += sm[i];
        __syncthreads();
    }
    return v;
}
template <int G, typename T> __device__ __forceinline__ T g_max(T v, T *sm) {
#pragma unroll
    for (int o = (G < 32 ? G : 32) / 2; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    if constexpr (G > 32) {
        const int w = threadIdx.x / 32, l = threadIdx.x % 32;
        if (l == 0) sm[w] = v;
        __syncthreads();
        v = sm[0];
        for (int i = 1; i < G / 32; i++) v = fmax(v, sm[i]);
        __syncthreads();
    }
    return v;
}
template <int G, typename T> __device__ __forceinline__ void g_ms(T &m, T &s, T *sm) {
#pragma unroll
    for (int o = (G < 32 ? G : 32) / 2; o > 0; o >>= 1) {
        T m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        ms_merge(m, s, m2, s2);
    }
    if constexpr (G > 32) {
        const int w = threadIdx.x / 32, l = threadIdx.x % 32;
        if (l == 0) {
            sm[w] = m;
            sm[32 + w] = s;
        }
        __syncthreads();
        m = sm[0];
        s = sm[32];
        for (int i = 1; i < G / 32; i++) ms_merge(m, s, sm[i], sm[32 + i]);
        __syncthreads();
    }
}

// Label of a row for the CE modes; -1 means the row is ignored (an out-of-range label also
// raises FLX_KERR_INDEX_RANGE when report is set: once per row).
template <typename T> __device__ __forceinline__ int64_t ce_raw(const KArgs<T> &a, int64_t row) {
    return a.lab64 ? ((const int64_t *)a.labels)[row] : (int64_t)((const int32_t *)a.labels)[row];
}
template <typename T>
__device__ __forceinline__ int64_t ce_label(const KArgs<T> &a, int64_t row, bool report) {
    int64_t lab = ce_raw(a, row);
    if (lab == a.ignore) return -1;
    if (lab < 0 || lab >= a.n) {
        if (report) flx_kerr_raise(a.err, FLX_KERR_INDEX_RANGE, lab, 0, a.n, row);
        return -1;
    }
    return lab;
}

// Scale of the fused cross-entropy gradient: 1 / count for the mean (count written by
// k_ce_count before the main kernel), else 1.
template <typename S> __device__ __forceinline__ compute_t<S> ce_gscale(const KArgs<S> &a) {
    typedef compute_t<S> T;
    return a.red == kRedMean ? (T)1 / a.stat[a.rows] : (T)1;
}

// Per-row reduced quantity for the dot modes.
template <int MODE, typename T> __device__ __forceinline__ T dot_term(T y, T v) {
    if constexpr (MODE == FLX_SOFTMAX_BWD) return y * v;
    else if constexpr (MODE == FLX_SOFTMAX_LOG_VJP) return v;
    else return ex(y) * v; // LOG_JVP
}

// Row state after the reductions: (m, s) and ls = log s for the stats modes, s = the dot for
// the others; lab and g (gradient scale) for the CE modes.
template <typename T> struct Row {
    T m, s, ls, g;
    int64_t lab;
};

// One output element (of out, or of grad for CE_FWD) given the row's reductions.
template <int MODE, typename S, typename T = compute_t<S>>
__device__ __forceinline__ T out_elem(const KArgs<S> &a, T xv, T vv, const Row<T> &r, int64_t col) {
    if constexpr (MODE == FLX_SOFTMAX_FWD) return ex(a.scale * xv - r.m) / r.s;
    else if constexpr (MODE == FLX_SOFTMAX_LOG_FWD) return (a.scale * xv - r.m) - r.ls;
    else if constexpr (MODE == FLX_SOFTMAX_BWD) return a.scale * xv * (vv - r.s);
    else if constexpr (MODE == FLX_SOFTMAX_LOG_VJP) return a.scale * (vv - ex(xv) * r.s);
    else if constexpr (MODE == FLX_SOFTMAX_LOG_JVP) return a.scale * (vv - r.s);
    else { // CE_FWD's gradient, CE_BWD
        if (r.lab < 0) return (T)0;
        return (ex(xv - r.m) / r.s - (col == r.lab ? (T)1 : (T)0)) * r.g;
    }
}

// Where a row's elementwise results go (CE_FWD: the gradient, or nowhere without one).
template <int MODE, typename T> __device__ __forceinline__ T *out_row(const KArgs<T> &a, int64_t row) {
    if constexpr (MODE == FLX_SOFTMAX_CE_FWD) return a.grad ? a.grad + row * a.n : nullptr;
    else return a.out + row * a.n;
}

// The row's loss (CE_FWD), written once per row: log s - (x[lab] - m).
template <int MODE, typename S, typename T = compute_t<S>>
__device__ __forceinline__ void ce_loss(const KArgs<S> &a, int64_t row, const Row<T> &r) {
    if constexpr (MODE == FLX_SOFTMAX_CE_FWD)
        a.stat[row] = r.lab < 0 ? (T)0 : r.ls - (to_c<S>(a.x[row * a.n + r.lab]) - r.m);
}

template <int MODE, typename S, typename T = compute_t<S>>
__device__ __forceinline__ void row_init(const KArgs<S> &a, int64_t row, bool live, bool report, Row<T> &r) {
    r.m = ninf<T>();
    r.s = 0;
    r.ls = 0;
    r.g = 0;
    r.lab = -1;
    if constexpr (is_ce(MODE)) {
        if (live) r.lab = ce_label(a, row, report);
        if constexpr (MODE == FLX_SOFTMAX_CE_BWD) r.g = live ? to_c<S>(a.v[row]) : (T)0;
        else r.g = ce_gscale(a);
    }
}


// Rows longer than one block holds in registers (softmax_long.cu): on a thread-block cluster
// (sm_90), else one block per row in several passes. Returns 0 or a cudaError_t.
template <typename S, int MODE> int launch_long(const KArgs<S> &k, cudaStream_t st);

} // namespace softmax
} // namespace flxk
