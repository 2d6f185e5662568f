// softmax.cu — CUDA kernels of the softmax family (flx_softmax_args in flx_kernels.h): softmax
// and log_softmax forward, the Jacobian products (BWD = s y (v - <y, v>), LOG_VJP, LOG_JVP) and
// cross-entropy (forward fused with its backward, the backward alone, the final reduction).
// Semantics, including non-finite inputs, are those of the CPU reference
// (runtime/cpu/softmax.c); only the summation order differs.
//
// Mapping (chosen on the host from the row length n; rows are contiguous when inner == 1). A
// thread holds at most VMAX elements of each operand in registers (f32: 16, or 8 per operand
// for the modes that also read v; f64: half that), so no kernel spills:
//   - n <= 32: a group of G = 4..32 lanes (the next power of two >= n) per row, one element per
//     lane; a 128-thread block packs 128 / G rows;
//   - up to 32 * VMAX: one warp per row, V elements per lane (lane l holds columns l, l + 32,
//     ...: every load instruction of the warp is one coalesced line), 4 rows per block;
//   - up to 1024 * VMAX: one block of G = 64..1024 threads per row, warps combined through
//     shared memory;
//   - longer rows (sm_90): each row is split over a thread-block cluster of up to 16 blocks;
//     every block keeps its slice in registers and the blocks exchange their partial (max, sum)
//     or dot through distributed shared memory, so the row is read from DRAM once. Up to
//     16 * 512 * VMAX elements, blocks of 512 threads (two per SM: one block's loads overlap
//     another's stores); beyond, blocks of 1024 threads that also stash up to ~220 KB of their
//     slice in shared memory (rows of 2^20 f32: 16 SMs per row, all of it on chip), and stream
//     any rest twice (f64 rows past ~3.5M elements; the second read mostly from L2). Without
//     sm_90 (older GPUs, or a build without sm_90 code) these rows take the multi-pass
//     one-block-per-row kernel.
//   - a strided axis (inner > 1): with many columns (outer * inner), one thread per column,
//     walking its row with stride inner (adjacent threads read adjacent addresses); with few
//     columns and long rows (axis 0 of (2^20, 8)) the rows are cut into chunks over the whole
//     GPU: a partial kernel writes each chunk's (max, sum) or dot to scratch, and the write
//     kernel combines a column's partials (fixed order) before writing its chunk.
// Cross-entropy uses the same row mappings (contiguous rows): CE_FWD first counts the rows that
// count (one block over the labels, 4 bytes or 8 a row) and then writes, in one pass over the
// logits, each row's loss and, when asked, the gradient scaled by 1 / count for the mean; CE_FINISH
// reduces the per-row losses (one block). At 32768 x 1024 f32 that is 128 MB read + 128 MB
// written by the row kernel and ~0.4 MB by the two small ones.
// Every path handles every length (tails are masked; no power-of-two assumption) and n == 0
// launches nothing.
//
// Reductions: within a warp by xor-shuffle butterflies, across warps through shared memory and
// across a cluster's blocks in rank order — a fixed order, no atomics, so results are
// deterministic. Accumulation is in the compute type, exp/log are the accurate expf/logf.
//
// Element types: f32 and f64 compute in their own type; f16 and bf16 (storage S) are loaded into
// f32 registers (flxk::to_c, exact), every reduction, exp and log is in f32, and each result is
// rounded once to S when stored (flxk::from_c, to nearest even). Kernels are templated on the
// storage type S; T = compute_t<S> is the type of every register, shared-memory and scratch value
// (so the register budget VMAX is counted in f32 values for the 16-bit types).
//
// Non-finite values: the max ignores -inf and the (max, sum) merge never forms -inf - -inf
// unless a whole row is -inf, which then gives 0/0 = NaN (as documented in fluxion.h); a +inf
// or NaN makes the sum NaN and so the whole row NaN, as on the CPU.
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "flx_kernels.h"

namespace cg = cooperative_groups;

namespace {

using flxk::compute_t;
using flxk::from_c;
using flxk::to_c;

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

// ---- rows held in registers: a group of G lanes per row, V elements per lane --------------------
template <typename S, int MODE, int G, int V>
__global__ void __launch_bounds__(G > 32 ? G : 128) k_rows_reg(KArgs<S> a) {
    typedef compute_t<S> T;
    constexpr int RPB = G > 32 ? 1 : 128 / G;
    __shared__ T sm[64];
    const int lane = threadIdx.x % G;
    const int64_t row = (int64_t)blockIdx.x * RPB + threadIdx.x / G;
    const bool live = row < a.rows;
    const int64_t n = a.n;
    const S *xr = a.x + (live ? row * n : 0);
    const S *vr = reads_v(MODE) ? a.v + (live ? row * n : 0) : nullptr;
    T xv[V], vv[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
        const int64_t c = lane + (int64_t)k * G;
        const bool ok = live && c < n;
        xv[k] = ok ? to_c<S>(xr[c]) : (T)0;
        if constexpr (reads_v(MODE)) vv[k] = ok ? to_c<S>(vr[c]) : (T)0;
        else vv[k] = (T)0;
    }
    Row<T> r;
    row_init<MODE>(a, row, live, lane == 0, r);
    if constexpr (is_stats(MODE)) {
        const T sc = is_ce(MODE) ? (T)1 : a.scale;
#pragma unroll
        for (int k = 0; k < V; k++)
            if (live && lane + (int64_t)k * G < n) r.m = fmax(r.m, sc * xv[k]);
        r.m = g_max<G>(r.m, sm);
#pragma unroll
        for (int k = 0; k < V; k++)
            if (live && lane + (int64_t)k * G < n) r.s += ex(sc * xv[k] - r.m);
        r.s = g_sum<G>(r.s, sm);
        r.ls = lg(r.s);
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) r.s += dot_term<MODE>(xv[k], vv[k]);
        r.s = g_sum<G>(r.s, sm);
    }
    if (!live) return;
    if (lane == 0) ce_loss<MODE>(a, row, r);
    S *orow = out_row<MODE>(a, row);
    if (!orow) return;
#pragma unroll
    for (int k = 0; k < V; k++) {
        const int64_t c = lane + (int64_t)k * G;
        if (c < n) orow[c] = from_c<S>(out_elem<MODE>(a, xv[k], vv[k], r, c));
    }
}

// ---- long rows on a thread-block cluster (sm_90) ------------------------------------------------
constexpr int kLong = 1024;

// Block rank r of a cluster of cs blocks holds columns [r * chunk, min(n, (r + 1) * chunk)): the
// first B * V of them in registers, the next `stash` (per operand) in dynamic shared memory,
// and any rest (f64 rows past ~4M elements) streamed twice, the second time mostly from L2.
// Blocks of B threads: 512 (two blocks per SM, so one block's loads overlap another's stores)
// when the row fits in the cluster's registers, else 1024 with the stash (one block per SM).
template <typename S, int MODE, int V, int B>
__global__ void __launch_bounds__(B, 1024 / B) k_rows_cluster(KArgs<S> a, int64_t chunk, int stash) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    typedef compute_t<S> T;
    extern __shared__ __align__(16) unsigned char dyn[];
    T *sx = reinterpret_cast<T *>(dyn);
    T *sv = sx + stash; // v's stash (modes that read v)
    __shared__ T sm[64];
    __shared__ T part[2];
    cg::cluster_group cl = cg::this_cluster();
    const int cs = (int)cl.num_blocks(), rank = (int)cl.block_rank();
    const int64_t row = (int64_t)blockIdx.x / cs, n = a.n;
    const int64_t lo = (int64_t)rank * chunk, hi = lo + chunk < n ? lo + chunk : n;
    const S *xr = a.x + row * n;
    const S *vr = reads_v(MODE) ? a.v + row * n : nullptr;
    const int t = threadIdx.x;
    T xv[V], vv[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
        const int64_t c = lo + t + (int64_t)k * B;
        const bool ok = c < hi;
        xv[k] = ok ? to_c<S>(xr[c]) : (T)0;
        if constexpr (reads_v(MODE)) vv[k] = ok ? to_c<S>(vr[c]) : (T)0;
        else vv[k] = (T)0;
    }
    const int64_t tail = lo + (int64_t)B * V;   // first column past the registers
    const int64_t spill = tail + stash;             // first streamed column
    // The stash: each thread reads back only what it stored itself, so no barrier is needed.
#pragma unroll 1
    for (int64_t c = tail + t; c < hi && c < spill; c += B) {
        sx[c - tail] = to_c<S>(xr[c]);
        if constexpr (reads_v(MODE)) sv[c - tail] = to_c<S>(vr[c]);
    }
    const int64_t shi = hi < spill ? hi : spill;
    Row<T> r;
    row_init<MODE>(a, row, true, rank == 0 && t == 0, r);
    if constexpr (is_stats(MODE)) {
        const T sc = is_ce(MODE) ? (T)1 : a.scale;
#pragma unroll
        for (int k = 0; k < V; k++)
            if (lo + t + (int64_t)k * B < hi) r.m = fmax(r.m, sc * xv[k]);
#pragma unroll 1
        for (int64_t c = tail + t; c < shi; c += B) r.m = fmax(r.m, sc * sx[c - tail]);
#pragma unroll
        for (int k = 0; k < V; k++)
            if (lo + t + (int64_t)k * B < hi) r.s += ex(sc * xv[k] - r.m);
#pragma unroll 1
        for (int64_t c = tail + t; c < shi; c += B) r.s += ex(sc * sx[c - tail] - r.m);
#pragma unroll 1
        for (int64_t c = spill + t; c < hi; c += B) ms_add(r.m, r.s, sc * to_c<S>(xr[c]));
        g_ms<B>(r.m, r.s, sm);
        if (t == 0) {
            part[0] = r.m;
            part[1] = r.s;
        }
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) r.s += dot_term<MODE>(xv[k], vv[k]);
#pragma unroll 1
        for (int64_t c = tail + t; c < shi; c += B) r.s += dot_term<MODE>(sx[c - tail], sv[c - tail]);
#pragma unroll 1
        for (int64_t c = spill + t; c < hi; c += B) r.s += dot_term<MODE>(to_c<S>(xr[c]), to_c<S>(vr[c]));
        r.s = g_sum<B>(r.s, sm);
        if (t == 0) part[0] = r.s;
    }
    cl.sync(); // every block's partial is visible cluster-wide
    if constexpr (is_stats(MODE)) {
        r.m = ninf<T>();
        r.s = 0;
        for (int q = 0; q < cs; q++) {
            const T *p = cl.map_shared_rank(part, q);
            ms_merge(r.m, r.s, p[0], p[1]);
        }
        r.ls = lg(r.s);
    } else {
        r.s = 0;
        for (int q = 0; q < cs; q++) r.s += *cl.map_shared_rank(part, q);
    }
    cl.sync(); // no block leaves (freeing its shared memory) while another still reads it
    if (rank == 0 && t == 0) ce_loss<MODE>(a, row, r);
    S *orow = out_row<MODE>(a, row);
    if (!orow) return;
#pragma unroll
    for (int k = 0; k < V; k++) {
        const int64_t c = lo + t + (int64_t)k * B;
        if (c < hi) orow[c] = from_c<S>(out_elem<MODE>(a, xv[k], vv[k], r, c));
    }
#pragma unroll 1
    for (int64_t c = tail + t; c < shi; c += B)
        orow[c] = from_c<S>(out_elem<MODE>(a, sx[c - tail], reads_v(MODE) ? sv[c - tail] : (T)0, r, c));
#pragma unroll 1
    for (int64_t c = spill + t; c < hi; c += B)
        orow[c] = from_c<S>(out_elem<MODE>(a, to_c<S>(xr[c]), reads_v(MODE) ? to_c<S>(vr[c]) : (T)0, r, c));
#else
    __trap(); // launched only on sm_90 and newer (checked on the host)
#endif
}

// ---- long rows without clusters: one block per row, several passes -----------------------------
// (Its loops stay rolled: unrolled, ptxas spills the f64 Jacobian-product variants.)
template <typename S, int MODE> __global__ void __launch_bounds__(kLong) k_rows_long(KArgs<S> a) {
    typedef compute_t<S> T;
    __shared__ T sm[64];
    const int64_t n = a.n;
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const S *xr = a.x + row * n;
        const S *vr = reads_v(MODE) ? a.v + row * n : nullptr;
        Row<T> r;
        row_init<MODE>(a, row, true, threadIdx.x == 0, r);
        if constexpr (is_stats(MODE)) {
            const T sc = is_ce(MODE) ? (T)1 : a.scale;
#pragma unroll 1
            for (int64_t c = threadIdx.x; c < n; c += kLong) ms_add(r.m, r.s, sc * to_c<S>(xr[c]));
            g_ms<kLong>(r.m, r.s, sm);
            r.ls = lg(r.s);
        } else {
#pragma unroll 1
            for (int64_t c = threadIdx.x; c < n; c += kLong)
                r.s += dot_term<MODE>(to_c<S>(xr[c]), to_c<S>(vr[c]));
            r.s = g_sum<kLong>(r.s, sm);
        }
        if (threadIdx.x == 0) ce_loss<MODE>(a, row, r);
        S *orow = out_row<MODE>(a, row);
        if (!orow) continue;
#pragma unroll 1
        for (int64_t c = threadIdx.x; c < n; c += kLong)
            orow[c] = from_c<S>(out_elem<MODE>(a, to_c<S>(xr[c]), reads_v(MODE) ? to_c<S>(vr[c]) : (T)0, r, c));
    }
}

// ---- strided rows (inner > 1) -------------------------------------------------------------------
// Many columns: one thread per (outer, inner) column, no transpose, two passes over its row.
template <typename S, int MODE> __global__ void k_rows_strided(KArgs<S> a) {
    typedef compute_t<S> T;
    const int64_t n = a.n, inner = a.inner, cols = a.rows * inner;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < cols;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t o = idx / inner, i = idx - o * inner;
        const int64_t base = o * n * inner + i;
        Row<T> r;
        row_init<MODE>(a, 0, false, false, r);
        if constexpr (is_stats(MODE)) {
            for (int64_t j = 0; j < n; j++) ms_add(r.m, r.s, a.scale * to_c<S>(a.x[base + j * inner]));
            r.ls = lg(r.s);
        } else {
            for (int64_t j = 0; j < n; j++)
                r.s += dot_term<MODE>(to_c<S>(a.x[base + j * inner]),
                                      reads_v(MODE) ? to_c<S>(a.v[base + j * inner]) : (T)0);
        }
        for (int64_t j = 0; j < n; j++) {
            const int64_t k = base + j * inner;
            a.out[k] = from_c<S>(out_elem<MODE>(a, to_c<S>(a.x[k]), reads_v(MODE) ? to_c<S>(a.v[k]) : (T)0, r, j));
        }
    }
}

// Few columns, long rows: blockIdx.x a tile of tx consecutive columns (flattened (o, i); tx =
// 32, or the next power of two >= the column count, so a warp's lanes all read), blockIdx.y a
// chunk of `chunk` row positions; thread (c, y) = (column in tile, position slice), ty = kSB /
// tx slices. Partials live in ws: m at [p * cols + col], s (or the dot) at [(P + p) * cols + col].
constexpr int kSB = 256;

template <typename T> struct Strided {
    int64_t col, base; // column, and the offset of its element 0
    int c, y, tx, ty;
};

template <typename T> __device__ __forceinline__ Strided<T> strided_at(const KArgs<T> &a, int tx) {
    Strided<T> q;
    q.tx = tx;
    q.ty = kSB / tx;
    q.c = threadIdx.x % tx;
    q.y = threadIdx.x / tx;
    q.col = (int64_t)blockIdx.x * tx + q.c;
    const int64_t o = q.col / a.inner, i = q.col - o * a.inner;
    q.base = o * a.n * a.inner + i;
    return q;
}

template <typename S, int MODE, typename T = compute_t<S>>
__global__ void __launch_bounds__(kSB) k_strided_partial(KArgs<S> a, int64_t chunk, int tx, T *ws) {
    __shared__ T sm[2][kSB];
    const auto q = strided_at(a, tx);
    const int64_t cols = a.rows * a.inner, P = gridDim.y, inner = a.inner;
    const int64_t j0 = (int64_t)blockIdx.y * chunk, j1 = j0 + chunk < a.n ? j0 + chunk : a.n;
    T m = ninf<T>(), s = 0;
    if (q.col < cols) {
#pragma unroll 1 // unrolled, the f64 LOG_JVP loop spills
        for (int64_t j = j0 + q.y; j < j1; j += q.ty) {
            const int64_t k = q.base + j * inner;
            if constexpr (is_stats(MODE)) ms_add(m, s, a.scale * to_c<S>(a.x[k]));
            else s += dot_term<MODE>(to_c<S>(a.x[k]), reads_v(MODE) ? to_c<S>(a.v[k]) : (T)0);
        }
    }
    sm[0][threadIdx.x] = m;
    sm[1][threadIdx.x] = s;
    __syncthreads();
    if (q.y == 0 && q.col < cols) {
        for (int y = 1; y < q.ty; y++) {
            if constexpr (is_stats(MODE)) ms_merge(m, s, sm[0][y * tx + q.c], sm[1][y * tx + q.c]);
            else s += sm[1][y * tx + q.c];
        }
        ws[blockIdx.y * cols + q.col] = m;
        ws[(P + blockIdx.y) * cols + q.col] = s;
    }
}

template <typename S, int MODE, typename T = compute_t<S>>
__global__ void __launch_bounds__(kSB) k_strided_write(KArgs<S> a, int64_t chunk, int tx, const T *ws) {
    __shared__ T sm[2][kSB];
    const auto q = strided_at(a, tx);
    const int64_t cols = a.rows * a.inner, P = gridDim.y, inner = a.inner;
    // combine the column's P partials: slice y takes p = y, y + ty, ..., then the slices in order
    T m = ninf<T>(), s = 0;
    if (q.col < cols) {
#pragma unroll 1
        for (int64_t p = q.y; p < P; p += q.ty) {
            if constexpr (is_stats(MODE)) ms_merge(m, s, ws[p * cols + q.col], ws[(P + p) * cols + q.col]);
            else s += ws[(P + p) * cols + q.col];
        }
    }
    sm[0][threadIdx.x] = m;
    sm[1][threadIdx.x] = s;
    __syncthreads();
    Row<T> r;
    row_init<MODE>(a, 0, false, false, r);
    for (int y = 0; y < q.ty; y++) {
        if constexpr (is_stats(MODE)) ms_merge(r.m, r.s, sm[0][y * tx + q.c], sm[1][y * tx + q.c]);
        else r.s += sm[1][y * tx + q.c];
    }
    r.ls = lg(r.s);
    if (q.col >= cols) return;
    const int64_t j0 = (int64_t)blockIdx.y * chunk, j1 = j0 + chunk < a.n ? j0 + chunk : a.n;
#pragma unroll 1
    for (int64_t j = j0 + q.y; j < j1; j += q.ty) {
        const int64_t k = q.base + j * inner;
        a.out[k] = from_c<S>(out_elem<MODE>(a, to_c<S>(a.x[k]), reads_v(MODE) ? to_c<S>(a.v[k]) : (T)0, r, j));
    }
}

// ---- cross-entropy: the count before the fused kernel, the reduction after it --------------------
constexpr int kFin = 1024;

// out[rows] = number of labels != ignore_index (one block; the fused kernel scales by it).
template <typename T> __global__ void __launch_bounds__(kFin) k_ce_count(KArgs<T> a) {
    __shared__ int64_t sm[kFin / 32];
    int64_t c = 0;
    for (int64_t r = threadIdx.x; r < a.rows; r += kFin) c += ce_raw(a, r) != a.ignore;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
    if (threadIdx.x % 32 == 0) sm[threadIdx.x / 32] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        int64_t t = 0;
        for (int w = 0; w < kFin / 32; w++) t += sm[w];
        a.stat[a.rows] = (compute_t<T>)t;
    }
}

// CE_FINISH: the loss from the per-row losses x[0..rows) and the count x[rows].
template <typename S> __global__ void __launch_bounds__(kFin) k_ce_finish(KArgs<S> a) {
    typedef compute_t<S> T;
    __shared__ T sm[64];
    if (a.red == kRedNone) {
        for (int64_t r = (int64_t)blockIdx.x * kFin + threadIdx.x; r < a.rows; r += (int64_t)gridDim.x * kFin)
            a.out[r] = from_c<S>(a.stat_x[r]);
        return;
    }
    if (a.red != kRedMean && a.red != kRedSum) { // the count
        if (threadIdx.x == 0) a.out[0] = from_c<S>(a.stat_x[a.rows]);
        return;
    }
    T s = 0;
    for (int64_t r = threadIdx.x; r < a.rows; r += kFin) s += a.stat_x[r];
    s = g_sum<kFin>(s, sm);
    if (threadIdx.x == 0) a.out[0] = from_c<S>(a.red == kRedMean ? s / a.stat_x[a.rows] : s);
}

// ---- host dispatch ------------------------------------------------------------------------------
template <typename T, int MODE, int G, int V> int launch_reg(const KArgs<T> &k, cudaStream_t st) {
    constexpr int RPB = G > 32 ? 1 : 128 / G;
    const int64_t blocks = (k.rows + RPB - 1) / RPB;
    if (blocks > INT32_MAX) return (int)cudaErrorInvalidConfiguration;
    k_rows_reg<T, MODE, G, V><<<(unsigned)blocks, G > 32 ? G : 128, 0, st>>>(k);
    return flxk::launch_status();
}

// Thread-block clusters need compute capability 9.0.
inline bool has_clusters() { return flxk::device_attr<cudaDevAttrComputeCapabilityMajor>(0) >= 9; }

// Bytes of dynamic shared memory a block may use for its stash: the opt-in maximum less room for
// the static reductions; 0 when the query fails.
inline int stash_bytes() {
    const int b = flxk::device_attr<cudaDevAttrMaxSharedMemoryPerBlockOptin>(0);
    return b > 4096 ? b - 4096 : 0;
}

// One row per cluster of cs blocks (cs <= 16; above 8 needs the non-portable opt-in, and a GPU
// whose GPCs cannot hold 16 blocks gets 8). Returns -2 when no cluster fits, so the caller can
// fall back.
template <typename T, int MODE, int B> int launch_cluster(const KArgs<T> &k, cudaStream_t st, int cs) {
    typedef compute_t<T> C; // registers and the stash hold compute values
    constexpr int V = vmax<C, MODE>();
    constexpr int ops = reads_v(MODE) ? 2 : 1;
    auto kern = k_rows_cluster<T, MODE, V, B>;
    // The kernel's code must be sm_90 too (a build for older GPUs JIT-run on a newer one has only
    // the trapping stub).
    static int built90; // 0 unknown, 1 yes, 2 no (benign race: the same value is written)
    if (built90 == 0) {
        cudaFuncAttributes fa;
        if (cudaFuncGetAttributes(&fa, kern) != cudaSuccess) {
            (void)cudaGetLastError();
            return -2;
        }
        built90 = fa.ptxVersion >= 90 ? 1 : 2;
    }
    if (built90 != 1) return -2;
    if (cs > 8 && cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
        (void)cudaGetLastError();
        cs = 8;
    }
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    int64_t chunk = 0;
    int stash = 0;
    for (;;) {
        const int64_t blocks = k.rows * cs;
        if (blocks > INT32_MAX) return (int)cudaErrorInvalidConfiguration;
        chunk = (k.n + cs - 1) / cs;
        const int64_t rest = chunk - (int64_t)B * V; // past the registers
        const int64_t cap = (int64_t)stash_bytes() / (int64_t)(sizeof(C) * ops);
        stash = (int)(rest <= 0 ? 0 : rest < cap ? rest : cap);
        const size_t dyn = sizeof(C) * ops * (size_t)stash;
        if (cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dyn) != cudaSuccess) {
            (void)cudaGetLastError();
            return -2;
        }
        cfg.gridDim = dim3((unsigned)blocks, 1, 1);
        cfg.blockDim = dim3(B, 1, 1);
        cfg.dynamicSmemBytes = dyn;
        cfg.stream = st;
        attr[0].val.clusterDim.x = (unsigned)cs;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        int active = 0;
        if (cudaOccupancyMaxActiveClusters(&active, kern, &cfg) != cudaSuccess) {
            (void)cudaGetLastError();
            active = 0;
        }
        if (active > 0) break;
        if (cs <= 8) return -2;
        cs = 8;
    }
    cudaError_t e = cudaLaunchKernelEx(&cfg, kern, k, chunk, stash);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return (int)e;
    }
    return flxk::launch_status();
}

template <typename T, int MODE> int launch_long(const KArgs<T> &k, cudaStream_t st) {
    if (has_clusters()) {
        constexpr int64_t half = 512 * (int64_t)vmax<compute_t<T>, MODE>(),
                          full = (int64_t)kLong * vmax<compute_t<T>, MODE>();
        int rc = -2;
        if (k.n <= 16 * half) {
            const int64_t cs = (k.n + half - 1) / half;
            rc = launch_cluster<T, MODE, 512>(k, st, cs < 2 ? 2 : (int)cs);
        } else {
            const int64_t cs = (k.n + full - 1) / full;
            rc = launch_cluster<T, MODE, kLong>(k, st, cs > 16 ? 16 : (int)cs);
        }
        if (rc != -2) return rc;
    }
    const int64_t cap = (int64_t)flxk::sm_count() * 2;
    const int64_t blocks = k.rows < cap ? k.rows : cap;
    k_rows_long<T, MODE><<<(unsigned)blocks, kLong, 0, st>>>(k);
    return flxk::launch_status();
}

template <typename T, int MODE> int launch_strided(const KArgs<T> &k, cudaStream_t st) {
    const int64_t cols = k.rows * k.inner;
    const int64_t threads = (int64_t)flxk::sm_count() * 2048;
    int tx = 32;
    while (tx > 1 && tx / 2 >= cols) tx /= 2;
    const int ty = kSB / tx;
    const int64_t tiles = (cols + tx - 1) / tx;
    // Enough columns to fill the GPU, or rows too short to split: one thread per column.
    if (cols >= threads / 2 || k.n < 4 * ty || tiles > INT32_MAX) {
        k_rows_strided<T, MODE><<<flxk::grid_for(cols), flxk::kBlock, 0, st>>>(k);
        return flxk::launch_status();
    }
    // Chunks: about 4 blocks per SM in all, each at least 4 positions per slice long.
    int64_t P = ((int64_t)flxk::sm_count() * 4 + tiles - 1) / tiles;
    const int64_t pmax = k.n / (4 * ty);
    if (P > pmax) P = pmax;
    if (P > 65535) P = 65535;
    if (P < 1) P = 1;
    const int64_t chunk = (k.n + P - 1) / P;
    P = (k.n + chunk - 1) / chunk;
    compute_t<T> *ws = nullptr; // partials in the compute type
    cudaError_t e = cudaMallocAsync((void **)&ws, sizeof(*ws) * 2 * (size_t)P * (size_t)cols, st);
    if (e != cudaSuccess) { // no room for the partials: the one-thread-per-column kernel
        (void)cudaGetLastError();
        k_rows_strided<T, MODE><<<flxk::grid_for(cols), flxk::kBlock, 0, st>>>(k);
        return flxk::launch_status();
    }
    const dim3 grid((unsigned)tiles, (unsigned)P, 1);
    k_strided_partial<T, MODE><<<grid, kSB, 0, st>>>(k, chunk, tx, ws);
    k_strided_write<T, MODE><<<grid, kSB, 0, st>>>(k, chunk, tx, ws);
    int rc = flxk::launch_status();
    (void)cudaFreeAsync(ws, st); // stream-ordered: freed after the kernels ran
    return rc;
}

template <typename T, int MODE> int launch_mode(const KArgs<T> &k, cudaStream_t st) {
    const int64_t n = k.n;
    if (k.inner > 1) {
        if constexpr (is_ce(MODE)) return (int)cudaErrorInvalidValue; // CE rows are contiguous
        else return launch_strided<T, MODE>(k, st);
    }
    constexpr int VM = vmax<compute_t<T>, MODE>();
    if (n <= 4) return launch_reg<T, MODE, 4, 1>(k, st);
    if (n <= 8) return launch_reg<T, MODE, 8, 1>(k, st);
    if (n <= 16) return launch_reg<T, MODE, 16, 1>(k, st);
    if (n <= 32) return launch_reg<T, MODE, 32, 1>(k, st);
    if (n <= 64) return launch_reg<T, MODE, 32, 2>(k, st);
    if (n <= 128) return launch_reg<T, MODE, 32, 4>(k, st);
    if (n <= 32 * VM) return launch_reg<T, MODE, 32, VM>(k, st);
    if (n <= 64 * VM) return launch_reg<T, MODE, 64, VM>(k, st);
    if (n <= 128 * VM) return launch_reg<T, MODE, 128, VM>(k, st);
    if (n <= 256 * VM) return launch_reg<T, MODE, 256, VM>(k, st);
    if (n <= 512 * VM) return launch_reg<T, MODE, 512, VM>(k, st);
    if (n <= 1024 * VM) return launch_reg<T, MODE, 1024, VM>(k, st);
    return launch_long<T, MODE>(k, st);
}

template <typename T> int launch_ce(const KArgs<T> &k, cudaStream_t st) {
    // the count first: the fused kernel's mean gradient divides by it
    k_ce_count<T><<<1, kFin, 0, st>>>(k);
    int rc = flxk::launch_status();
    if (rc != 0 || k.rows == 0) return rc;
    return launch_mode<T, FLX_SOFTMAX_CE_FWD>(k, st);
}

template <typename T> int launch_typed(const flx_softmax_args *a, cudaStream_t st) {
    KArgs<T> k;
    k.rows = a->outer;
    k.n = a->n;
    k.inner = a->inner;
    k.scale = (compute_t<T>)a->scale;
    k.x = (const T *)a->x;
    k.v = (const T *)a->v;
    k.labels = a->labels;
    k.lab64 = a->label_dtype == FLX_I64;
    k.ignore = a->ignore_index;
    k.red = a->reduction;
    k.out = (T *)a->out;
    k.grad = (T *)a->grad;
    k.stat = a->mode == FLX_SOFTMAX_CE_FWD ? (compute_t<T> *)a->out : nullptr;
    k.stat_x = a->mode == FLX_SOFTMAX_CE_FINISH ? (const compute_t<T> *)a->x : nullptr;
    k.err = a->err;
    switch (a->mode) {
    case FLX_SOFTMAX_FWD: return launch_mode<T, FLX_SOFTMAX_FWD>(k, st);
    case FLX_SOFTMAX_LOG_FWD: return launch_mode<T, FLX_SOFTMAX_LOG_FWD>(k, st);
    case FLX_SOFTMAX_BWD: return launch_mode<T, FLX_SOFTMAX_BWD>(k, st);
    case FLX_SOFTMAX_LOG_VJP: return launch_mode<T, FLX_SOFTMAX_LOG_VJP>(k, st);
    case FLX_SOFTMAX_LOG_JVP: return launch_mode<T, FLX_SOFTMAX_LOG_JVP>(k, st);
    case FLX_SOFTMAX_CE_FWD: return launch_ce<T>(k, st);
    case FLX_SOFTMAX_CE_BWD: return launch_mode<T, FLX_SOFTMAX_CE_BWD>(k, st);
    case FLX_SOFTMAX_CE_FINISH: {
        const unsigned blocks = a->reduction == kRedNone ? flxk::grid_for(k.rows, kFin) : 1;
        k_ce_finish<T><<<blocks, kFin, 0, st>>>(k);
        return flxk::launch_status();
    }
    default: return (int)cudaErrorInvalidValue;
    }
}

} // namespace

extern "C" int flx_cuda_softmax(const flx_softmax_args *a, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    const bool ce_fwd = a->mode == FLX_SOFTMAX_CE_FWD || a->mode == FLX_SOFTMAX_CE_FINISH;
    // nothing to compute, except that cross-entropy over 0 rows still has a count and a loss
    if (!ce_fwd && (a->outer <= 0 || a->n <= 0 || a->inner <= 0)) return 0;
    // The cross-entropy statistics are kept in the compute type (KArgs::stat): f32 for the halves.
    const flx_dtype stat = (a->dtype == FLX_F16 || a->dtype == FLX_BF16) ? FLX_F32 : a->dtype;
    if (ce_fwd && a->stat_dtype != stat) return (int)cudaErrorInvalidValue;
    if (a->dtype == FLX_F32) return launch_typed<float>(a, st);
    if (a->dtype == FLX_F64) return launch_typed<double>(a, st);
    if (a->dtype == FLX_F16) return launch_typed<__half>(a, st);
    if (a->dtype == FLX_BF16) return launch_typed<__nv_bfloat16>(a, st);
    return (int)cudaErrorInvalidValue;
}
