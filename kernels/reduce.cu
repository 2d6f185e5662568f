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
// summation order at double precision. Reductions are bandwidth bound, and FP64 runs at half the
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

template <int G>
__device__ __forceinline__ Cand group_best(Cand c, bool mx, Cand *smem) {
    if constexpr (G == 1) {
        return c;
    } else {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            Cand d;
            d.v = __shfl_xor_sync(0xffffffffu, c.v, o);
            d.idx = (int64_t)__shfl_xor_sync(0xffffffffu, (long long)c.idx, o);
            d.nan = __shfl_xor_sync(0xffffffffu, c.nan, o);
            c = better(c, d, mx);
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
    return (double)x[off];
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
            for (int64_t r = lane; r < nr; r += G) s += exp(ld(xk, roff(p.rs, r)) - shift);
            s = group_sum<G>(s, s_sum);
            double res = isnan(m) ? (double)NAN : (m == -INFINITY ? -INFINITY : shift + log(s));
            if (lane == 0) ((T *)out)[k] = to_out<T>(res);
            break;
        }
        default: break;
        }
    }
}

template <typename T>
int reduce_launch(const RParams &p, const void *x, void *out, cudaStream_t st) {
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

} // namespace

extern "C" int flx_cuda_reduce(const flx_reduce_args *a, void *stream) {
    if (a->kdim < 0 || a->kdim > FLX_MAX_DIMS || a->rdim < 0 || a->rdim > FLX_MAX_DIMS)
        return (int)cudaErrorInvalidValue;
    if (a->op < FLX_REDUCE_SUM || a->op > FLX_REDUCE_ARGMAX) return (int)cudaErrorInvalidValue;
    RParams p;
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
    if (p.nk <= 0) return 0;
    if (p.nr < 0) return (int)cudaErrorInvalidValue;
    flxk::coalesce(p.ks, 1);
    if (p.nr > 0) flxk::coalesce(p.rs, 1);
    else {
        p.rs.ndim = 1;
        p.rs.shape[0] = 0;
        p.rs.st[0][0] = 0;
    }
    p.op = a->op;
    p.param = a->param;
    cudaStream_t st = (cudaStream_t)stream;
    switch (a->dtype) {
    case FLX_F32: return reduce_launch<float>(p, a->x, a->out, st);
    case FLX_F64: return reduce_launch<double>(p, a->x, a->out, st);
    case FLX_I32: return reduce_launch<int32_t>(p, a->x, a->out, st);
    case FLX_I64: return reduce_launch<int64_t>(p, a->x, a->out, st);
    case FLX_BOOL: return reduce_launch<uint8_t>(p, a->x, a->out, st);
    default: return (int)cudaErrorInvalidValue;
    }
}
