// softmax.cu — CUDA kernels of the softmax family (flx_softmax_args in flx_kernels.h): softmax
// and log_softmax forward, the Jacobian products (BWD = s y (v - <y, v>), LOG_VJP, LOG_JVP) and
// fused cross-entropy forward/backward. Semantics, including non-finite inputs, are those of the
// CPU reference (runtime/cpu_softmax.c); only the summation order differs.
//
// Mapping (chosen on the host from the row length n; rows are contiguous when inner == 1):
//   - short rows, n <= 32: a group of G = 4, 8, 16 or 32 lanes (the next power of two >= n, at
//     least 4) holds one row, one element per lane; a 128-thread block packs 128 / G rows, so a
//     warp serves several rows at once;
//   - medium rows, 32 < n <= 1024: one warp per row, V = 2..32 elements per lane in registers
//     (lane l holds columns l, l + 32, ...: every load instruction of the warp is one coalesced
//     128-byte line), 4 rows per block;
//   - long rows up to 32768 (f32 forward modes; 16384 for modes that also read v, halved for
//     f64): one 1024-thread block per row, the row in registers (V = 2..32 per thread), so x is
//     read once and out written once;
//   - longer rows (any length, 2^20 and beyond): one block per row in several passes — an online
//     (max, sum) or dot pass, then the write pass, which re-reads the row (mostly from L2: the
//     rows in flight across the GPU fit in its 50 MB L2 for rows up to ~100k elements).
//   - a strided axis (inner > 1, softmax along a non-last axis) is handled without a transpose:
//     one thread per (outer, inner) column, walking its row with stride inner (adjacent threads
//     read adjacent addresses, so each step of a warp is coalesced), two passes.
// Every path handles every length (tails are masked; no power-of-two assumption) and n == 0
// launches nothing.
//
// Reductions: within a group by xor-shuffle butterflies, across a block's warps through shared
// memory combined in warp order — a fixed order, no atomics, so results are deterministic.
// Accumulation is in the element type (f32 for f32: these kernels are bandwidth bound and the
// tree sums keep f32 errors ~1e-6 relative for rows of 2^20), exp/log are the accurate expf/logf.
//
// Non-finite values: the max ignores -inf and the (max, sum) merge never forms -inf - -inf
// unless a whole row is -inf, which then gives 0/0 = NaN (as documented in fluxion.h); a +inf
// or NaN makes the sum NaN and so the whole row NaN, as on the CPU.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "flx_kernels.h"

namespace {

template <typename T> struct KArgs {
    int64_t rows, n, inner;
    T scale;
    const T *x;
    const T *v;
    const void *labels;
    int lab64;
    int64_t ignore;
    T *out;
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
// raises FLX_KERR_INDEX_RANGE, once per row by the caller's lane 0).
template <typename T>
__device__ __forceinline__ int64_t ce_label(const KArgs<T> &a, int64_t row, bool report) {
    int64_t lab = a.lab64 ? ((const int64_t *)a.labels)[row] : (int64_t)((const int32_t *)a.labels)[row];
    if (lab == a.ignore) return -1;
    if (lab < 0 || lab >= a.n) {
        if (report) flx_kerr_raise(a.err, FLX_KERR_INDEX_RANGE, lab, 0, a.n, row);
        return -1;
    }
    return lab;
}

// Per-row reduced quantity for the dot modes.
template <int MODE, typename T> __device__ __forceinline__ T dot_term(T y, T v) {
    if constexpr (MODE == FLX_SOFTMAX_BWD) return y * v;
    else if constexpr (MODE == FLX_SOFTMAX_LOG_VJP) return v;
    else return ex(y) * v; // LOG_JVP
}

// One output element given the row's reductions (m, s) or d.
template <int MODE, typename T>
__device__ __forceinline__ T out_elem(const KArgs<T> &a, T xv, T vv, T m, T s_or_d, T lse,
                                      int64_t col, int64_t lab, T g) {
    if constexpr (MODE == FLX_SOFTMAX_FWD) return ex(a.scale * xv - m) / s_or_d;
    else if constexpr (MODE == FLX_SOFTMAX_LOG_FWD) return a.scale * xv - lse;
    else if constexpr (MODE == FLX_SOFTMAX_BWD) return a.scale * xv * (vv - s_or_d);
    else if constexpr (MODE == FLX_SOFTMAX_LOG_VJP) return a.scale * (vv - ex(xv) * s_or_d);
    else if constexpr (MODE == FLX_SOFTMAX_LOG_JVP) return a.scale * (vv - s_or_d);
    else { // CE_BWD
        if (lab < 0) return (T)0;
        return (ex(xv - m) / s_or_d - (col == lab ? (T)1 : (T)0)) * g;
    }
}

// ---- rows held in registers: a group of G lanes per row, V elements per lane --------------------
template <typename T, int MODE, int G, int V>
__global__ void __launch_bounds__(G > 32 ? G : 128) k_rows_reg(KArgs<T> a) {
    constexpr int RPB = G > 32 ? 1 : 128 / G;
    __shared__ T sm[64];
    const int lane = threadIdx.x % G;
    const int64_t row = (int64_t)blockIdx.x * RPB + threadIdx.x / G;
    const bool live = row < a.rows;
    const int64_t n = a.n;
    const T *xr = a.x + (live ? row * n : 0);
    T xv[V], vv[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
        const int64_t c = lane + (int64_t)k * G;
        const bool ok = live && c < n;
        xv[k] = ok ? xr[c] : (T)0;
        if constexpr (reads_v(MODE)) vv[k] = ok ? a.v[row * n + c] : (T)0;
        else vv[k] = (T)0;
    }
    int64_t lab = -1;
    T g = 0;
    if constexpr (is_ce(MODE)) {
        if (live) lab = ce_label(a, row, lane == 0);
        if constexpr (MODE == FLX_SOFTMAX_CE_BWD) g = live ? a.v[row] : (T)0;
    }
    T m = ninf<T>(), s = 0, lse = 0;
    if constexpr (is_stats(MODE)) {
        const T sc = is_ce(MODE) ? (T)1 : a.scale;
#pragma unroll
        for (int k = 0; k < V; k++)
            if (live && lane + (int64_t)k * G < n) m = fmax(m, sc * xv[k]);
        m = g_max<G>(m, sm);
#pragma unroll
        for (int k = 0; k < V; k++)
            if (live && lane + (int64_t)k * G < n) s += ex(sc * xv[k] - m);
        s = g_sum<G>(s, sm);
        lse = m + lg(s);
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) s += dot_term<MODE>(xv[k], vv[k]);
        s = g_sum<G>(s, sm);
    }
    if (!live) return;
    if constexpr (MODE == FLX_SOFTMAX_CE_FWD) {
        if (lane == 0) a.out[row] = lab < 0 ? (T)0 : lse - xr[lab];
    } else {
        T *orow = a.out + row * n;
#pragma unroll
        for (int k = 0; k < V; k++) {
            const int64_t c = lane + (int64_t)k * G;
            if (c < n) orow[c] = out_elem<MODE>(a, xv[k], vv[k], m, s, lse, c, lab, g);
        }
    }
}

// ---- long rows: one block per row, several passes (online max/sum, then the write pass) --------
constexpr int kLong = 1024;

template <typename T, int MODE> __global__ void __launch_bounds__(kLong) k_rows_long(KArgs<T> a) {
    __shared__ T sm[64];
    const int64_t n = a.n;
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const T *xr = a.x + row * n;
        const T *vr = reads_v(MODE) ? a.v + row * n : nullptr;
        int64_t lab = -1;
        T g = 0;
        if constexpr (is_ce(MODE)) {
            lab = ce_label(a, row, threadIdx.x == 0);
            if constexpr (MODE == FLX_SOFTMAX_CE_BWD) g = a.v[row];
        }
        T m = ninf<T>(), s = 0, lse = 0;
        if constexpr (is_stats(MODE)) {
            const T sc = is_ce(MODE) ? (T)1 : a.scale;
            for (int64_t c = threadIdx.x; c < n; c += kLong) ms_add(m, s, sc * xr[c]);
            g_ms<kLong>(m, s, sm);
            lse = m + lg(s);
        } else {
            for (int64_t c = threadIdx.x; c < n; c += kLong) s += dot_term<MODE>(xr[c], vr[c]);
            s = g_sum<kLong>(s, sm);
        }
        if constexpr (MODE == FLX_SOFTMAX_CE_FWD) {
            if (threadIdx.x == 0) a.out[row] = lab < 0 ? (T)0 : lse - xr[lab];
        } else {
            T *orow = a.out + row * n;
            for (int64_t c = threadIdx.x; c < n; c += kLong)
                orow[c] = out_elem<MODE>(a, xr[c], reads_v(MODE) ? vr[c] : (T)0, m, s, lse, c, lab, g);
        }
    }
}

// ---- strided rows (inner > 1): one thread per (outer, inner) column, no transpose --------------
template <typename T, int MODE> __global__ void k_rows_strided(KArgs<T> a) {
    const int64_t n = a.n, inner = a.inner, cols = a.rows * inner;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < cols;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t o = idx / inner, i = idx - o * inner;
        const int64_t base = o * n * inner + i;
        T m = ninf<T>(), s = 0, lse = 0;
        if constexpr (is_stats(MODE)) {
            for (int64_t j = 0; j < n; j++) ms_add(m, s, a.scale * a.x[base + j * inner]);
            lse = m + lg(s);
        } else {
            for (int64_t j = 0; j < n; j++)
                s += dot_term<MODE>(a.x[base + j * inner], reads_v(MODE) ? a.v[base + j * inner] : (T)0);
        }
        for (int64_t j = 0; j < n; j++) {
            const int64_t k = base + j * inner;
            a.out[k] = out_elem<MODE>(a, a.x[k], reads_v(MODE) ? a.v[k] : (T)0, m, s, lse, j, -1, (T)0);
        }
    }
}

// ---- host dispatch ------------------------------------------------------------------------------
template <typename T, int MODE, int G, int V> int launch_reg(const KArgs<T> &k, cudaStream_t st) {
    constexpr int RPB = G > 32 ? 1 : 128 / G;
    const int64_t blocks = (k.rows + RPB - 1) / RPB;
    if (blocks > INT32_MAX) return (int)cudaErrorInvalidConfiguration;
    k_rows_reg<T, MODE, G, V><<<(unsigned)blocks, G > 32 ? G : 128, 0, st>>>(k);
    return flxk::launch_status();
}

// Most elements per thread a 1024-thread block keeps in registers for this type and mode.
template <typename T, int MODE> constexpr int block_vmax() {
    return (sizeof(T) == 4 ? 32 : 16) / (reads_v(MODE) ? 2 : 1);
}

template <typename T, int MODE> int launch_mode(const KArgs<T> &k, cudaStream_t st) {
    const int64_t n = k.n;
    if (k.inner > 1) {
        if constexpr (is_ce(MODE)) {
            return (int)cudaErrorInvalidValue; // cross-entropy rows are always contiguous
        } else {
            const int64_t cols = k.rows * k.inner;
            k_rows_strided<T, MODE><<<flxk::grid_for(cols), flxk::kBlock, 0, st>>>(k);
            return flxk::launch_status();
        }
    }
    if (n <= 4) return launch_reg<T, MODE, 4, 1>(k, st);
    if (n <= 8) return launch_reg<T, MODE, 8, 1>(k, st);
    if (n <= 16) return launch_reg<T, MODE, 16, 1>(k, st);
    if (n <= 32) return launch_reg<T, MODE, 32, 1>(k, st);
    if (n <= 64) return launch_reg<T, MODE, 32, 2>(k, st);
    if (n <= 128) return launch_reg<T, MODE, 32, 4>(k, st);
    if (n <= 256) return launch_reg<T, MODE, 32, 8>(k, st);
    if (n <= 512) return launch_reg<T, MODE, 32, 16>(k, st);
    if (n <= 1024) return launch_reg<T, MODE, 32, 32>(k, st);
    constexpr int vmax = block_vmax<T, MODE>();
    if (n <= 2048) return launch_reg<T, MODE, kLong, 2>(k, st);
    if (n <= 4096) return launch_reg<T, MODE, kLong, 4>(k, st);
    if (n <= 8192 && vmax >= 8) return launch_reg<T, MODE, kLong, 8>(k, st);
    if constexpr (vmax >= 16) {
        if (n <= 16384) return launch_reg<T, MODE, kLong, 16>(k, st);
    }
    if constexpr (vmax >= 32) {
        if (n <= 32768) return launch_reg<T, MODE, kLong, 32>(k, st);
    }
    const int64_t cap = (int64_t)flxk::sm_count() * 2;
    const int64_t blocks = k.rows < cap ? k.rows : cap;
    k_rows_long<T, MODE><<<(unsigned)blocks, kLong, 0, st>>>(k);
    return flxk::launch_status();
}

template <typename T> int launch_typed(const flx_softmax_args *a, cudaStream_t st) {
    KArgs<T> k;
    k.rows = a->outer;
    k.n = a->n;
    k.inner = a->inner;
    k.scale = (T)a->scale;
    k.x = (const T *)a->x;
    k.v = (const T *)a->v;
    k.labels = a->labels;
    k.lab64 = a->label_dtype == FLX_I64;
    k.ignore = a->ignore_index;
    k.out = (T *)a->out;
    k.err = a->err;
    switch (a->mode) {
    case FLX_SOFTMAX_FWD: return launch_mode<T, FLX_SOFTMAX_FWD>(k, st);
    case FLX_SOFTMAX_LOG_FWD: return launch_mode<T, FLX_SOFTMAX_LOG_FWD>(k, st);
    case FLX_SOFTMAX_BWD: return launch_mode<T, FLX_SOFTMAX_BWD>(k, st);
    case FLX_SOFTMAX_LOG_VJP: return launch_mode<T, FLX_SOFTMAX_LOG_VJP>(k, st);
    case FLX_SOFTMAX_LOG_JVP: return launch_mode<T, FLX_SOFTMAX_LOG_JVP>(k, st);
    case FLX_SOFTMAX_CE_FWD: return launch_mode<T, FLX_SOFTMAX_CE_FWD>(k, st);
    case FLX_SOFTMAX_CE_BWD: return launch_mode<T, FLX_SOFTMAX_CE_BWD>(k, st);
    default: return (int)cudaErrorInvalidValue;
    }
}

} // namespace

extern "C" int flx_cuda_softmax(const flx_softmax_args *a, void *stream) {
    if (a->outer <= 0 || a->n <= 0 || a->inner <= 0) return 0; // nothing to compute
    cudaStream_t st = (cudaStream_t)stream;
    if (a->dtype == FLX_F32) return launch_typed<float>(a, st);
    if (a->dtype == FLX_F64) return launch_typed<double>(a, st);
    return (int)cudaErrorInvalidValue;
}
