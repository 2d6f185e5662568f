// softmax_long.cu — the softmax family's rows too long for one block's registers (more than
// 1024 * VMAX elements; mapping and semantics: the top of softmax.cu, shared pieces: softmax.cuh).
// On sm_90 a row is split over a thread-block cluster whose blocks exchange their partial
// (max, sum) or dot through distributed shared memory, so the row is read from DRAM once; on
// older GPUs, or when no cluster fits, one block per row walks it in several passes.
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "softmax.cuh"

namespace cg = cooperative_groups;

namespace flxk {
namespace softmax {
namespace {

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
        // The limit set is the same for every launch (the largest stash), not this launch's size:
        // it is the kernel's, shared by every thread, and another thread's smaller setting landing
        // between ours and our launch would make the launch fail.
        if (cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, stash_bytes()) != cudaSuccess) {
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

} // namespace

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

// The modes and element types softmax.cu dispatches to launch_long.
#define FLX_LONG_MODE(S, MODE) template int launch_long<S, MODE>(const KArgs<S> &, cudaStream_t);
#define FLX_LONG_TYPE(S)                                                                            \
    FLX_LONG_MODE(S, FLX_SOFTMAX_FWD)                                                              \
    FLX_LONG_MODE(S, FLX_SOFTMAX_LOG_FWD)                                                          \
    FLX_LONG_MODE(S, FLX_SOFTMAX_BWD)                                                              \
    FLX_LONG_MODE(S, FLX_SOFTMAX_LOG_VJP)                                                          \
    FLX_LONG_MODE(S, FLX_SOFTMAX_LOG_JVP)                                                          \
    FLX_LONG_MODE(S, FLX_SOFTMAX_CE_FWD)                                                           \
    FLX_LONG_MODE(S, FLX_SOFTMAX_CE_BWD)
FLX_LONG_TYPE(float)
FLX_LONG_TYPE(double)
FLX_LONG_TYPE(__half)
FLX_LONG_TYPE(__nv_bfloat16)
#undef FLX_LONG_TYPE
#undef FLX_LONG_MODE

} // namespace softmax
} // namespace flxk
