// reduce.cu — CUDA kernels of the reduce family: SUM, MAX, MIN, LSE, VAR, ARGMAX.
//
// Mapping: a group of G threads computes one output (G = 1, a warp of 32, or a block of 256),
// chosen from the shape on the host:
//   - G = 1 when the reduced extent is short (<= 16), or when outputs are plentiful and adjacent
//     outputs are adjacent in memory (reducing an outer axis: each thread walks its own column
//     and a warp's loads coalesce);
//   - G = 32 for moderate extents or many outputs (one warp per output, shuffle reductions);
//   - G = 256 for few outputs with long extents (one block per output: shuffles, then the 8 warp
//     partials combined through shared memory in warp order).
// Within a group, lane l visits r = l, l + G, l + 2G, ... in ascending order, and partials are
// combined in a fixed butterfly (xor-shuffle) tree, so every result is deterministic run to run
// on a given device: no atomics, no order that depends on scheduling. (The choice of G depends on
// the shape and the device's SM count only.)
//
// Precision: every element is converted to double and all accumulation (sums, the mean and the
// squared deviations of VAR, the exp-sums of LSE) is in double, for f32 as for f64, then rounded
// once to the output dtype — the CPU reference does the same, so GPU and CPU differ only by the
// summation order at double precision. f16 and bf16 are read exactly into double too and the
// result rounded once from double (flxk::from_d), so they differ from the CPU by at most one ulp
// of the 16-bit format (only where the double results straddle a rounding boundary). Exception:
// LSE of f32, f16 and bf16 evaluates each exp in f32 (a double exp per element would make it
// compute bound), within ~2e-7 absolute of the double result before the final rounding
// (exp_shifted). Reductions are bandwidth bound, and FP64 runs at half the
// FP32 rate on an H100, so the double accumulators are nearly free there.
//
// NaN: MAX, LSE and ARGMAX treat a NaN as the maximum that comes first (ARGMAX returns the index
// of the first NaN, MAX and LSE return NaN); MIN returns NaN if any element is NaN. Ties pick the
// first index (the first of equal values is kept, as the CPU's strict comparisons do). An empty
// extent gives SUM 0, MAX -inf, MIN +inf, LSE -inf, ARGMAX 0, VAR 0 / (0 - param), as on the CPU.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "flx_kernels.h"

using flxk::kBlock;
using flxk::Space;

namespace {

constexpr int kWarps = kBlock / 32;

template <typename T> __device__ __forceinline__ T to_out(double v) { return (T)v; }
template <> __device__ __forceinline__ uint8_t to_out<uint8_t>(double v) { return v != 0; }
template <> __device__ __forceinline__ __half to_out<__half>(double v) { return flxk::from_d<__half>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(double v) {
    return flxk::from_d<__nv_bfloat16>(v);
}

// A candidate for max/min/argmax: value, index, NaN flag. idx == INT64_MAX marks "none yet".
struct Cand {
    double v;
    int64_t idx;
    int nan;
};

__device__ __forceinline__ Cand cand_empty(bool mx) {
    Cand c;
    c.v = mx ? -INFINITY : INFINITY;
    c.idx = INT64_MAX;
    c.nan = 0;
    return c;
}

// The preferred of two candidates under a strict total order: NaN first (lowest index), then
// the larger (max) or smaller (min) value, then the lower index. Commutative and associative,
// so any combination tree gives the same answer.
__device__ __forceinline__ Cand better(const Cand &a, const Cand &b, bool mx) {
    if (a.nan != b.nan) return a.nan ? a : b;
    if (a.nan) return a.idx <= b.idx ? a : b;
    if (a.v != b.v) return (mx ? a.v > b.v : a.v < b.v) ? a : b;
    return a.idx <= b.idx ? a : b;
}

template <int G>
__device__ __forceinline__ double group_sum(double v, double *smem) {
    if constexpr (G == 1) {
        return v;
    } else {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if constexpr (G == 32) {
            return v;
        } else {
            int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            __syncthreads(); /* everyone is done reading smem from the previous phase */
            if (lane == 0) smem[warp] = v;
            __syncthreads();
            double s = 0;
#pragma unroll
            for (int w = 0; w < kWarps; w++) s += smem[w];
            return s;
        }
    }
}

// The candidate of lane (this lane ^ o), warp-wide.
__device__ __forceinline__ Cand shfl_xor(const Cand &c, int o) {
    Cand d;
    d.v = __shfl_xor_sync(0xffffffffu, c.v, o);
    d.idx = (int64_t)__shfl_xor_sync(0xffffffffu, (long long)c.idx, o);
    d.nan = __shfl_xor_sync(0xffffffffu, c.nan, o);
    return d;
}

template <int G>
__device__ __forceinline__ Cand group_best(Cand c, bool mx, Cand *smem) {
    if constexpr (G == 1) {
        return c;
    } else {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            c = better(c, shfl_xor(c, o), mx);
        }
        if constexpr (G == 32) {
            return c;
        } else {
            int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            __syncthreads();
            if (lane == 0) smem[warp] = c;
            __syncthreads();
            Cand r = smem[0];
#pragma unroll
            for (int w = 1; w < kWarps; w++) r = better(r, smem[w], mx);
            return r;
        }
    }
}

struct RParams {
    Space ks, rs; // kept space (strides into x), reduced space (strides into x)
    int64_t nk, nr;
    int32_t op;
    double param;
};

template <typename T>
__device__ __forceinline__ double ld(const T *x, int64_t off) {
    return flxk::to_d<T>(x[off]);
}

// exp(x - shift) of one element for LSE: in f32 for f32 input (expf: <= 2 ulp; the f32
// subtraction is exact up to 2^-24 |x - shift| in the exponent, which scales a term by at most
// 1 + 6e-8 |x - shift| while the term itself is exp(-|x - shift|)), so the double sum of the
// terms is within ~2e-7 relative and the result within ~2e-7 + its own f32 rounding of the
// exact value; in double for everything else.
template <typename T>
__device__ __forceinline__ double exp_shifted(const T *x, int64_t off, double shift) {
    return exp((double)x[off] - shift);
}
template <>
__device__ __forceinline__ double exp_shifted<float>(const float *x, int64_t off, double shift) {
    return (double)expf(x[off] - (float)shift);
}
template <>
__device__ __forceinline__ double exp_shifted<__half>(const __half *x, int64_t off, double shift) {
    return (double)expf(__half2float(x[off]) - (float)shift);
}
template <>
__device__ __forceinline__ double exp_shifted<__nv_bfloat16>(const __nv_bfloat16 *x, int64_t off,
                                                             double shift) {
    return (double)expf(__bfloat162float(x[off]) - (float)shift);
}

__device__ __forceinline__ int64_t roff(const Space &rs, int64_t r) {
    if (rs.ndim == 1) return r * rs.st[0][0];
    int64_t o;
    flxk::offsets<1>(rs, r, &o);
    return o;
}

template <typename T, int G>
__global__ void __launch_bounds__(kBlock) reduce_kernel(RParams p, const T *x, void *out) {
    constexpr int GPB = kBlock / G;
    __shared__ double s_sum[kWarps];
    __shared__ Cand s_cand[kWarps];
    const int lane = (int)(threadIdx.x % G);
    const int64_t ngroups = (int64_t)gridDim.x * GPB;
    const int64_t nr = p.nr;
    for (int64_t k = (int64_t)blockIdx.x * GPB + threadIdx.x / G; k < p.nk; k += ngroups) {
        int64_t base;
        flxk::offsets<1>(p.ks, k, &base);
        const T *xk = x + base;
        switch (p.op) {
        case FLX_REDUCE_SUM: {
            double s = 0;
            for (int64_t r = lane; r < nr; r += G) s += ld(xk, roff(p.rs, r));
            s = group_sum<G>(s, s_sum);
            if (lane == 0) ((T *)out)[k] = to_out<T>(p.param * s);
            break;
        }
        case FLX_REDUCE_VAR: {
            double s = 0;
            for (int64_t r = lane; r < nr; r += G) s += ld(xk, roff(p.rs, r));
            s = group_sum<G>(s, s_sum);
            double mean = s / (double)nr;
            double q = 0;
            for (int64_t r = lane; r < nr; r += G) {
                double d = ld(xk, roff(p.rs, r)) - mean;
                q += d * d;
            }
            q = group_sum<G>(q, s_sum);
            if (lane == 0) ((T *)out)[k] = to_out<T>(q / ((double)nr - p.param));
            break;
        }
        case FLX_REDUCE_MAX:
        case FLX_REDUCE_MIN:
        case FLX_REDUCE_ARGMAX:
        case FLX_REDUCE_LSE: {
            const bool mx = p.op != FLX_REDUCE_MIN;
            Cand c = cand_empty(mx);
            for (int64_t r = lane; r < nr; r += G) {
                Cand d;
                d.v = ld(xk, roff(p.rs, r));
                d.idx = r;
                d.nan = isnan(d.v) ? 1 : 0;
                c = better(c, d, mx);
            }
            c = group_best<G>(c, mx, s_cand);
            if (p.op == FLX_REDUCE_ARGMAX) {
                if (lane == 0) ((int64_t *)out)[k] = c.idx == INT64_MAX ? 0 : c.idx;
                break;
            }
            double m = c.nan ? (double)NAN : c.v;
            if (p.op != FLX_REDUCE_LSE) {
                if (lane == 0) ((T *)out)[k] = to_out<T>(m);
                break;
            }
            double shift = isfinite(m) ? m : 0.0;
            double s = 0;
            for (int64_t r = lane; r < nr; r += G) s += exp_shifted(xk, roff(p.rs, r), shift);
            s = group_sum<G>(s, s_sum);
            double res = isnan(m) ? (double)NAN : (m == -INFINITY ? -INFINITY : shift + log(s));
            if (lane == 0) ((T *)out)[k] = to_out<T>(res);
            break;
        }
        default: break;
        }
    }
}

// ---- split reductions: several blocks per output ------------------------------------------------
// When the outputs are too few to fill the GPU (a full reduction; a bias gradient over a long
// leading axis), the reduced range of every output is cut into S chunks of equal length. Stage 1:
// one block per (tile of KT outputs, chunk); a thread (tk, tr) walks r = r0 + tr, r0 + tr + RT,
// ... of output tile * KT + tk, and the RT partials of an output are combined in a fixed tree in
// shared memory. KT = 32 when the kept index is innermost and contiguous (bias gradients): the
// 32 outputs of a tile are adjacent in memory, so every warp load is one coalesced row segment;
// KT = 1 otherwise. Stage 2: one warp per output combines its S partials (lane l takes chunks l,
// l + 32, ... in order, then a butterfly). Chunking and trees depend on the shape and SM count
// only, so results are deterministic run to run; no atomics. SUM, MAX, MIN and ARGMAX, and VAR
// with kernels of its own (var_stage1/2 below: each chunk's count, sum and squared deviations from
// its own mean, combined by Chan's formula); LSE keeps the one-pass-per-group kernel.
struct SplitPlan {
    int kt = 0;      // 0: no split; else outputs per tile (1 or 32)
    int64_t S = 1;   // chunks per output
    int64_t chunk = 0;
};

inline SplitPlan split_plan(const RParams &p) {
    SplitPlan sp;
    if (p.op != FLX_REDUCE_SUM && p.op != FLX_REDUCE_MAX && p.op != FLX_REDUCE_MIN &&
        p.op != FLX_REDUCE_ARGMAX && p.op != FLX_REDUCE_VAR)
        return sp;
    if (p.nr <= 16 || p.nk * p.nr < ((int64_t)1 << 18)) return sp;
    const int64_t sms = flxk::sm_count(), want_blocks = sms * 8; // a full wave of 256-thread blocks
    const bool inner_contig = p.ks.st[0][p.ks.ndim - 1] == 1 && p.ks.shape[p.ks.ndim - 1] >= 32;
    const int kt = inner_contig ? 32 : 1;
    const int64_t tiles = (p.nk + kt - 1) / kt;
    if (kt == 1 && p.nk >= sms * 2) return sp; // a block per output already fills the GPU
    if (kt == 32 && tiles >= want_blocks && p.nk >= sms * 256) return sp; // thread per column coalesces
    int64_t S = (want_blocks + tiles - 1) / tiles;
    const int64_t rt = kBlock / kt, min_chunk = rt * 16; // at least 16 loads per thread
    int64_t maxS = (p.nr + min_chunk - 1) / min_chunk;
    if (S > maxS) S = maxS;
    if (S > 1024) S = 1024;
    if (S < 1) S = 1;
    sp.kt = kt;
    sp.S = S;
    sp.chunk = (p.nr + S - 1) / S;
    sp.S = (p.nr + sp.chunk - 1) / sp.chunk; // no empty chunk
    return sp;
}

__device__ __forceinline__ Cand combine(const Cand &a, const Cand &b, int op) {
    if (op == FLX_REDUCE_SUM) {
        Cand c = a;
        c.v = a.v + b.v;
        return c;
    }
    return better(a, b, op != FLX_REDUCE_MIN);
}

template <typename T>
__device__ __forceinline__ void store_final(const RParams &p, void *out, int64_t k, const Cand &c) {
    if (p.op == FLX_REDUCE_SUM) ((T *)out)[k] = to_out<T>(p.param * c.v);
    else if (p.op == FLX_REDUCE_ARGMAX) ((int64_t *)out)[k] = c.idx == INT64_MAX ? 0 : c.idx;
    else ((T *)out)[k] = to_out<T>(c.nan ? (double)NAN : c.v);
}

__device__ __forceinline__ Cand cand_start(int op) {
    if (op == FLX_REDUCE_SUM) {
        Cand c;
        c.v = 0.0;
        c.idx = INT64_MAX;
        c.nan = 0;
        return c;
    }
    return cand_empty(op != FLX_REDUCE_MIN);
}

// This thread's place in a stage-1 block: output tk of the block's tile of KT (k overall), lane tr
// of RT = kBlock / KT walking chunk j, which is [r0, r1) of the reduced range.
struct TileOf {
    int tk, tr;
    int64_t j, k, r0, r1;
};
template <int KT>
__device__ __forceinline__ TileOf tile_of(const RParams &p, int64_t S, int64_t chunk) {
    TileOf t;
    t.tk = (int)(threadIdx.x % KT);
    t.tr = (int)(threadIdx.x / KT);
    const int64_t tile = blockIdx.x / S;
    t.j = blockIdx.x - tile * S;
    t.k = tile * KT + t.tk;
    t.r0 = t.j * chunk;
    t.r1 = t.r0 + chunk < p.nr ? t.r0 + chunk : p.nr;
    return t;
}

// Stage 1. With S == 1 the block's result is final and goes straight to out.
template <typename T, int KT>
__global__ void __launch_bounds__(kBlock, 4) split_stage1(RParams p, const T *__restrict__ x, Cand *part,
                                                       void *out, int64_t S, int64_t chunk) {
    constexpr int RT = kBlock / KT;
    __shared__ Cand s[kBlock];
    const TileOf t = tile_of<KT>(p, S, chunk);
    const int tk = t.tk, tr = t.tr;
    const int64_t j = t.j, k = t.k, r0 = t.r0, r1 = t.r1;
    Cand c = cand_start(p.op);
    if (k < p.nk) {
        int64_t base;
        flxk::offsets<1>(p.ks, k, &base);
        const T *xk = x + base;
        if (p.op == FLX_REDUCE_SUM) {
            double acc = 0.0;
            for (int64_t r = r0 + tr; r < r1; r += RT) acc += ld(xk, roff(p.rs, r));
            c.v = acc;
        } else {
            const bool mx = p.op != FLX_REDUCE_MIN;
            for (int64_t r = r0 + tr; r < r1; r += RT) {
                Cand d;
                d.v = ld(xk, roff(p.rs, r));
                d.idx = r;
                d.nan = isnan(d.v) ? 1 : 0;
                c = better(c, d, mx);
            }
        }
    }
    s[threadIdx.x] = c;
    __syncthreads();
#pragma unroll
    for (int h = RT / 2; h >= 1; h >>= 1) {
        if (tr < h) s[threadIdx.x] = combine(s[threadIdx.x], s[threadIdx.x + h * KT], p.op);
        __syncthreads();
    }
    if (tr == 0 && k < p.nk) {
        if (S == 1) store_final<T>(p, out, k, s[tk]);
        else part[k * S + j] = s[tk];
    }
}

// Stage 2: one warp per output over its S partials.
template <typename T>
__global__ void __launch_bounds__(kBlock) split_stage2(RParams p, const Cand *__restrict__ part, void *out,
                                                       int64_t S) {
    const int lane = threadIdx.x & 31;
    const int64_t nw = ((int64_t)gridDim.x * kBlock) >> 5;
    for (int64_t k = ((int64_t)blockIdx.x * kBlock + threadIdx.x) >> 5; k < p.nk; k += nw) {
        Cand c = cand_start(p.op);
        for (int64_t j = lane; j < S; j += 32) c = combine(c, part[k * S + j], p.op);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            Cand d = shfl_xor(c, o);
            // The lower lane's partial first, so the sum's order is the same in every lane.
            c = (lane & o) ? combine(d, c, p.op) : combine(c, d, p.op);
        }
        if (lane == 0) store_final<T>(p, out, k, c);
    }
}

// ---- split VAR: a per-channel variance (batch norm: few outputs, long strided extents) over many
// blocks. A chunk's partial is its count, its mean and M2, the sum of squared deviations from that
// mean (two passes over the chunk, the second mostly from L2); partials combine by Chan et al.'s
// formula (d = mean_b - mean_a, f = nb / (na + nb): mean = mean_a + d f, M2 = M2a + M2b + d^2 na f),
// in a fixed order as for the sums, in double. The partials use the Cand scratch (same size per
// entry).
struct VarPart {
    double n, mean, m2;
};
static_assert(sizeof(VarPart) <= sizeof(Cand), "split VAR partials live in the Cand scratch");

__device__ __forceinline__ VarPart chan(const VarPart &a, const VarPart &b) {
    if (a.n == 0) return b;
    if (b.n == 0) return a;
    const double n = a.n + b.n, f = b.n / n, d = b.mean - a.mean;
    return VarPart{n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}

// Sum over the RT threads of each output's column of s (KT outputs per block), in a fixed tree;
// s[tk] holds output tk's total afterwards. Called by every thread of the block.
template <int KT>
__device__ __forceinline__ double tile_sum(double v, double *s, int tk, int tr) {
    constexpr int RT = kBlock / KT;
    __syncthreads(); // s is free (its last reads are done)
    s[threadIdx.x] = v;
    __syncthreads();
#pragma unroll
    for (int h = RT / 2; h >= 1; h >>= 1) {
        if (tr < h) s[threadIdx.x] += s[threadIdx.x + h * KT];
        __syncthreads();
    }
    return s[tk];
}

template <typename T, int KT>
__global__ void __launch_bounds__(kBlock, 4) var_stage1(RParams p, const T *__restrict__ x, VarPart *part,
                                                     void *out, int64_t S, int64_t chunk) {
    __shared__ double s[kBlock];
    const TileOf t = tile_of<KT>(p, S, chunk);
    const bool live = t.k < p.nk;
    int64_t base = 0;
    if (live) flxk::offsets<1>(p.ks, t.k, &base);
    const T *xk = x + base;
    double acc = 0.0;
    for (int64_t r = t.r0 + t.tr; live && r < t.r1; r += kBlock / KT) acc += ld(xk, roff(p.rs, r));
    const double n = (double)(t.r1 - t.r0), mean = tile_sum<KT>(acc, s, t.tk, t.tr) / n;
    double q = 0.0;
    for (int64_t r = t.r0 + t.tr; live && r < t.r1; r += kBlock / KT) {
        const double d = ld(xk, roff(p.rs, r)) - mean;
        q += d * d;
    }
    const double m2 = tile_sum<KT>(q, s, t.tk, t.tr);
    if (t.tr == 0 && live) {
        if (S == 1) ((T *)out)[t.k] = to_out<T>(m2 / ((double)p.nr - p.param));
        else part[t.k * S + t.j] = VarPart{n, mean, m2};
    }
}

// One warp per output over its S partials (lane l takes chunks l, l + 32, ... in order, then a
// butterfly with the lower lane's partial first).
template <typename T>
__global__ void __launch_bounds__(kBlock) var_stage2(RParams p, const VarPart *__restrict__ part, void *out,
                                                     int64_t S) {
    const int lane = threadIdx.x & 31;
    const int64_t nw = ((int64_t)gridDim.x * kBlock) >> 5;
    for (int64_t k = ((int64_t)blockIdx.x * kBlock + threadIdx.x) >> 5; k < p.nk; k += nw) {
        VarPart c{0.0, 0.0, 0.0};
        for (int64_t j = lane; j < S; j += 32) c = chan(c, part[k * S + j]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            VarPart d{__shfl_xor_sync(0xffffffffu, c.n, o), __shfl_xor_sync(0xffffffffu, c.mean, o),
                      __shfl_xor_sync(0xffffffffu, c.m2, o)};
            c = (lane & o) ? chan(d, c) : chan(c, d);
        }
        if (lane == 0) ((T *)out)[k] = to_out<T>(c.m2 / ((double)p.nr - p.param));
    }
}

// The two stages of a split reduction with partials of type Part: stage 1 over tiles x chunks
// (32-output tiles when the kept index is innermost), stage 2 when there is more than one chunk.
template <typename T, typename Part>
int two_stage(const RParams &p, const SplitPlan &sp, const void *x, void *out, void *scratch, cudaStream_t st,
              void (*stage1_tiled)(RParams, const T *, Part *, void *, int64_t, int64_t),
              void (*stage1_single)(RParams, const T *, Part *, void *, int64_t, int64_t),
              void (*stage2)(RParams, const Part *, void *, int64_t)) {
    const int64_t tiles = (p.nk + sp.kt - 1) / sp.kt;
    const unsigned blocks = (unsigned)(tiles * sp.S);
    Part *part = (Part *)scratch;
    (sp.kt == 32 ? stage1_tiled : stage1_single)<<<blocks, kBlock, 0, st>>>(p, (const T *)x, part, out, sp.S,
                                                                           sp.chunk);
    if (sp.S > 1) {
        int rc = flxk::launch_status();
        if (rc) return rc;
        stage2<<<flxk::grid_for(p.nk * 32), kBlock, 0, st>>>(p, part, out, sp.S);
    }
    return flxk::launch_status();
}

template <typename T>
int split_launch(const RParams &p, const SplitPlan &sp, const void *x, void *out, void *scratch,
                 cudaStream_t st) {
    if (p.op == FLX_REDUCE_VAR)
        return two_stage<T, VarPart>(p, sp, x, out, scratch, st, var_stage1<T, 32>, var_stage1<T, 1>,
                                     var_stage2<T>);
    return two_stage<T, Cand>(p, sp, x, out, scratch, st, split_stage1<T, 32>, split_stage1<T, 1>,
                              split_stage2<T>);
}

inline size_t split_scratch_bytes(const RParams &p, const SplitPlan &sp) {
    return sp.kt && sp.S > 1 ? sizeof(Cand) * (size_t)(p.nk * sp.S) : 0;
}

template <typename T>
int reduce_launch(const RParams &p, const void *x, void *out, void *scratch, size_t scratch_bytes,
                  cudaStream_t st) {
    const SplitPlan sp = split_plan(p);
    if (sp.kt && split_scratch_bytes(p, sp) <= scratch_bytes && (sp.S == 1 || scratch))
        return split_launch<T>(p, sp, x, out, scratch, st);
    const int64_t sms = flxk::sm_count();
    int inner_contig = p.ks.st[0][p.ks.ndim - 1] == 1 && p.ks.shape[p.ks.ndim - 1] >= 32;
    int G;
    if (p.nr <= 16 || (inner_contig && p.nk >= sms * 256)) G = 1;
    else if (p.nr <= 4096 || p.nk >= sms * 32) G = 32;
    else G = kBlock;
    int64_t groups_per_block = kBlock / G;
    int64_t blocks = (p.nk + groups_per_block - 1) / groups_per_block;
    int64_t cap = sms * 32;
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    const T *xt = (const T *)x;
    switch (G) {
    case 1: reduce_kernel<T, 1><<<(unsigned)blocks, kBlock, 0, st>>>(p, xt, out); break;
    case 32: reduce_kernel<T, 32><<<(unsigned)blocks, kBlock, 0, st>>>(p, xt, out); break;
    default: reduce_kernel<T, kBlock><<<(unsigned)blocks, kBlock, 0, st>>>(p, xt, out); break;
    }
    return flxk::launch_status();
}


// Kept and reduced index spaces of a, coalesced. Returns false on malformed arguments.
static bool make_params(const flx_reduce_args *a, RParams &p) {
    if (a->kdim < 0 || a->kdim > FLX_MAX_DIMS || a->rdim < 0 || a->rdim > FLX_MAX_DIMS) return false;
    if (a->op < FLX_REDUCE_SUM || a->op > FLX_REDUCE_ARGMAX) return false;
    p.nk = 1;
    p.nr = 1;
    p.ks.ndim = a->kdim;
    for (int d = 0; d < a->kdim; d++) {
        p.ks.shape[d] = a->kshape[d];
        p.ks.st[0][d] = a->kstride[d];
        p.nk *= a->kshape[d];
    }
    p.rs.ndim = a->rdim;
    for (int d = 0; d < a->rdim; d++) {
        p.rs.shape[d] = a->rshape[d];
        p.rs.st[0][d] = a->rstride[d];
        p.nr *= a->rshape[d];
    }
    if (p.nr < 0) return false;
    if (p.nk <= 0) return true;
    flxk::coalesce(p.ks, 1);
    if (p.nr > 0) flxk::coalesce(p.rs, 1);
    else {
        p.rs.ndim = 1;
        p.rs.shape[0] = 0;
        p.rs.st[0][0] = 0;
    }
    p.op = a->op;
    p.param = a->param;
    return true;
}

} // namespace

extern "C" size_t flx_cuda_reduce_scratch_bytes(const flx_reduce_args *a) {
    RParams p;
    if (!make_params(a, p) || p.nk <= 0) return 0;
    return split_scratch_bytes(p, split_plan(p));
}

extern "C" int flx_cuda_reduce(const flx_reduce_args *a, void *stream) {
    RParams p;
    if (!make_params(a, p)) return (int)cudaErrorInvalidValue;
    if (p.nk <= 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    void *sc = a->scratch;
    size_t sb = a->scratch_bytes;
    return flxk::with_dtype<flxk::kAny>(a->dtype, [&](auto t) {
        return reduce_launch<typename decltype(t)::type>(p, a->x, a->out, sc, sb, st);
    });
}
