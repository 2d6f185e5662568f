// softmax.cu — CUDA kernels of the softmax family (flx_softmax_args in flx_kernels.h): softmax
// and log_softmax forward, the Jacobian products (BWD = s y (v - <y, v>), LOG_VJP, LOG_JVP) and
// cross-entropy (forward fused with its backward, the backward alone, the final reduction).
// Semantics, including non-finite inputs, are those of the CPU reference
// (runtime/cpu/softmax.c); only the summation order differs. This file holds the row, strided
// and cross-entropy kernels and the dispatch; softmax_long.cu the rows longer than a block holds;
// softmax.cuh what both share (argument block, (max, sum) algebra, per-mode formulas).
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
//   - longer rows (softmax_long.cu; sm_90): each row is split over a thread-block cluster of up to 16 blocks;
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
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "softmax.cuh"

namespace {

using namespace flxk::softmax;
using flxk::compute_t;
using flxk::from_c;
using flxk::to_c;

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

// The mapping of a strided softmax (inner > 1) over cols = outer * inner columns of n positions:
// P == 0 one thread per column; else tiles x P blocks of tx columns, each column cut into P chunks
// of `chunk` positions, with 2 P partials per column in scratch.
struct StridedPlan {
    int tx = 32;
    int64_t tiles = 0, P = 0, chunk = 0;
};

inline StridedPlan strided_plan(int64_t cols, int64_t n) {
    StridedPlan sp;
    const int64_t threads = (int64_t)flxk::sm_count() * 2048;
    while (sp.tx > 1 && sp.tx / 2 >= cols) sp.tx /= 2;
    const int ty = kSB / sp.tx;
    sp.tiles = (cols + sp.tx - 1) / sp.tx;
    // Enough columns to fill the GPU, or rows too short to split: one thread per column.
    if (cols >= threads / 2 || n < 4 * ty || sp.tiles > INT32_MAX) return sp;
    // Chunks: about 4 blocks per SM in all, each at least 4 positions per slice long.
    int64_t P = ((int64_t)flxk::sm_count() * 4 + sp.tiles - 1) / sp.tiles;
    const int64_t pmax = n / (4 * ty);
    if (P > pmax) P = pmax;
    if (P > 65535) P = 65535;
    if (P < 1) P = 1;
    sp.chunk = (n + P - 1) / P;
    sp.P = (n + sp.chunk - 1) / sp.chunk;
    return sp;
}

// The partials (in the compute type) come from the caller's scratch: the context's own pool, not
// the device's default one that PyTorch or CuPy may be using.
template <typename T, int MODE>
int launch_strided(const KArgs<T> &k, cudaStream_t st, void *scratch, size_t scratch_bytes) {
    const int64_t cols = k.rows * k.inner;
    const StridedPlan sp = strided_plan(cols, k.n);
    compute_t<T> *ws = (compute_t<T> *)scratch;
    if (sp.P == 0 || !ws || scratch_bytes < sizeof(*ws) * 2 * (size_t)sp.P * (size_t)cols) {
        k_rows_strided<T, MODE><<<flxk::grid_for(cols), flxk::kBlock, 0, st>>>(k);
        return flxk::launch_status();
    }
    const dim3 grid((unsigned)sp.tiles, (unsigned)sp.P, 1);
    k_strided_partial<T, MODE><<<grid, kSB, 0, st>>>(k, sp.chunk, sp.tx, ws);
    k_strided_write<T, MODE><<<grid, kSB, 0, st>>>(k, sp.chunk, sp.tx, ws);
    return flxk::launch_status();
}

template <typename T, int MODE>
int launch_mode(const KArgs<T> &k, cudaStream_t st, void *scratch = nullptr, size_t scratch_bytes = 0) {
    const int64_t n = k.n;
    if (k.inner > 1) {
        if constexpr (is_ce(MODE)) return (int)cudaErrorInvalidValue; // CE rows are contiguous
        else return launch_strided<T, MODE>(k, st, scratch, scratch_bytes);
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
    void *ws = a->scratch;
    const size_t wb = a->scratch_bytes;
    switch (a->mode) {
    case FLX_SOFTMAX_FWD: return launch_mode<T, FLX_SOFTMAX_FWD>(k, st, ws, wb);
    case FLX_SOFTMAX_LOG_FWD: return launch_mode<T, FLX_SOFTMAX_LOG_FWD>(k, st, ws, wb);
    case FLX_SOFTMAX_BWD: return launch_mode<T, FLX_SOFTMAX_BWD>(k, st, ws, wb);
    case FLX_SOFTMAX_LOG_VJP: return launch_mode<T, FLX_SOFTMAX_LOG_VJP>(k, st, ws, wb);
    case FLX_SOFTMAX_LOG_JVP: return launch_mode<T, FLX_SOFTMAX_LOG_JVP>(k, st, ws, wb);
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

extern "C" size_t flx_cuda_softmax_scratch_bytes(const flx_softmax_args *a) {
    const bool strided_mode = a->mode == FLX_SOFTMAX_FWD || a->mode == FLX_SOFTMAX_LOG_FWD ||
                              a->mode == FLX_SOFTMAX_BWD || a->mode == FLX_SOFTMAX_LOG_VJP ||
                              a->mode == FLX_SOFTMAX_LOG_JVP;
    if (!strided_mode || a->outer <= 0 || a->n <= 0 || a->inner <= 1) return 0;
    const int64_t cols = a->outer * a->inner;
    const StridedPlan sp = strided_plan(cols, a->n);
    const size_t c = a->dtype == FLX_F64 ? sizeof(double) : sizeof(float); // the compute type
    return sp.P ? c * 2 * (size_t)sp.P * (size_t)cols : 0;
}

extern "C" int flx_cuda_softmax(const flx_softmax_args *a, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    const bool ce_fwd = a->mode == FLX_SOFTMAX_CE_FWD || a->mode == FLX_SOFTMAX_CE_FINISH;
    // nothing to compute, except that cross-entropy over 0 rows still has a count and a loss
    if (!ce_fwd && (a->outer <= 0 || a->n <= 0 || a->inner <= 0)) return 0;
    // The cross-entropy statistics are kept in the compute type (KArgs::stat): f32 for the halves.
    const flx_dtype stat = (a->dtype == FLX_F16 || a->dtype == FLX_BF16) ? FLX_F32 : a->dtype;
    if (ce_fwd && a->stat_dtype != stat) return (int)cudaErrorInvalidValue;
    return flxk::with_dtype<flxk::kFloat>(a->dtype, [&](auto t) {
        return launch_typed<typename decltype(t)::type>(a, st);
    });
}
