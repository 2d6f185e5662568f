// conv.cu — CUDA kernels of the sliding-window family (flx_conv_args; semantics in
// kernels/flx_kernels.h): im2col, its transpose col2im, max-pool values / argmax indices and the
// max-pool backward. One thread per output element, grid-stride loops, 64-bit indices. col2im
// and the max-pool backward are gathers (each input position sums the few window entries that
// read it, taps ascending), so they are deterministic and need no atomics. Float math in the
// compute type of the element type S (f32 for f16/bf16: the sums are rounded once on store).
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "flx_kernels.h"

using flxk::compute_t;
using flxk::from_c;
using flxk::kBlock;
using flxk::to_c;

namespace {

struct Geo {
    int64_t N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
};

Geo geo_of(const flx_conv_args *a) {
    Geo g;
    g.N = a->N; g.C = a->C; g.H = a->H; g.W = a->W; g.KH = a->KH; g.KW = a->KW;
    g.SH = a->SH; g.SW = a->SW; g.PH = a->PH; g.PW = a->PW; g.DH = a->DH; g.DW = a->DW;
    g.OH = a->OH; g.OW = a->OW;
    return g;
}

__device__ __forceinline__ int64_t win_of(int64_t p, int64_t k, int64_t S, int64_t P, int64_t D,
                                          int64_t O) {
    int64_t q = p + P - k * D;
    if (q < 0 || q % S != 0) return -1;
    q /= S;
    return q < O ? q : -1;
}

// out (N, C KH KW, OH OW); i runs densely over it.
template <typename T>
__global__ void im2col_kernel(Geo g, const T *x, T *out, int64_t total) {
    const T zero = from_c<T>((compute_t<T>)0);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t ow = i % g.OW;
        int64_t r = i / g.OW;
        int64_t oh = r % g.OH;
        r /= g.OH;
        int64_t kj = r % g.KW;
        r /= g.KW;
        int64_t ki = r % g.KH;
        int64_t nc = r / g.KH;
        int64_t h = oh * g.SH - g.PH + ki * g.DH;
        int64_t w = ow * g.SW - g.PW + kj * g.DW;
        T v = zero;
        if (h >= 0 && h < g.H && w >= 0 && w < g.W) v = x[(nc * g.H + h) * g.W + w];
        out[i] = v;
    }
}

// The two gathers onto the input (N, C, H, W): each position sums, taps ascending, the entries
// of the windows that read it. COL2IM: out = col2im(src), src = cols (N, C KH KW, OH OW).
// MAXPOOL_BACKWARD: out = the sum of src = gy (N, C, OH, OW) over the windows whose argmax idx
// is this position.
template <typename T, bool POOL>
__global__ void gather_kernel(Geo g, const T *src, const int64_t *idx, T *out, int64_t total) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t K = g.KH * g.KW, L = g.OH * g.OW;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const flxk::Ori q = flxk::ori_of(i, g.H, g.W); // (N C, H, W)
        const int64_t nc = q.o, h = q.r, w = q.in;
        compute_t<T> acc = 0;
        for (int64_t ki = 0; ki < g.KH; ki++) {
            int64_t oh = win_of(h, ki, g.SH, g.PH, g.DH, g.OH);
            if (oh < 0) continue;
            for (int64_t kj = 0; kj < g.KW; kj++) {
                int64_t ow = win_of(w, kj, g.SW, g.PW, g.DW, g.OW);
                if (ow < 0) continue;
                if constexpr (POOL) {
                    int64_t o = (nc * g.OH + oh) * g.OW + ow;
                    if (idx[o] == i) acc += to_c<T>(src[o]);
                } else {
                    acc += to_c<T>(src[(nc * K + ki * g.KW + kj) * L + oh * g.OW + ow]);
                }
            }
        }
        out[i] = from_c<T>(acc);
    }
}

// MAXPOOL (values) or ARGMAX (i64 flat indices) over out (N, C, OH, OW).
template <typename T, bool INDEX>
__global__ void maxpool_kernel(Geo g, const T *x, void *out, int64_t total) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const flxk::Ori q = flxk::ori_of(i, g.OH, g.OW); // (N C, OH, OW)
        const int64_t nc = q.o, oh = q.r, ow = q.in;
        compute_t<T> best = 0;
        int64_t arg = -1;
        bool best_nan = false;
        for (int64_t ki = 0; ki < g.KH; ki++) {
            int64_t h = oh * g.SH - g.PH + ki * g.DH;
            if (h < 0 || h >= g.H) continue;
            for (int64_t kj = 0; kj < g.KW; kj++) {
                int64_t w = ow * g.SW - g.PW + kj * g.DW;
                if (w < 0 || w >= g.W) continue;
                int64_t p = (nc * g.H + h) * g.W + w;
                compute_t<T> v = to_c<T>(x[p]);
                bool vnan = v != v;
                if (arg < 0 || (!best_nan && (v > best || vnan))) {
                    best = v;
                    arg = p;
                    best_nan = vnan;
                }
            }
        }
        if (INDEX)
            ((int64_t *)out)[i] = arg;
        else
            ((T *)out)[i] = from_c<T>(arg < 0 ? (compute_t<T>)(-INFINITY) : best);
    }
}

template <typename T>
int launch(const flx_conv_args *a, cudaStream_t s) {
    const Geo g = geo_of(a);
    int64_t total; // elements of the output
    switch (a->mode) {
    case FLX_CONV_IM2COL: total = g.N * g.C * g.KH * g.KW * g.OH * g.OW; break;
    case FLX_CONV_COL2IM:
    case FLX_CONV_MAXPOOL_BACKWARD: total = g.N * g.C * g.H * g.W; break;
    case FLX_CONV_MAXPOOL:
    case FLX_CONV_MAXPOOL_ARGMAX: total = g.N * g.C * g.OH * g.OW; break;
    default: return (int)cudaErrorInvalidValue;
    }
    if (total == 0) return 0;
    const unsigned grid = flxk::grid_for(total);
    const T *in = (const T *)a->in;
    T *out = (T *)a->out;
    switch (a->mode) {
    case FLX_CONV_IM2COL: im2col_kernel<T><<<grid, kBlock, 0, s>>>(g, in, out, total); break;
    case FLX_CONV_COL2IM: gather_kernel<T, false><<<grid, kBlock, 0, s>>>(g, in, nullptr, out, total); break;
    case FLX_CONV_MAXPOOL_BACKWARD:
        gather_kernel<T, true><<<grid, kBlock, 0, s>>>(g, in, a->idx, out, total);
        break;
    case FLX_CONV_MAXPOOL: maxpool_kernel<T, false><<<grid, kBlock, 0, s>>>(g, in, a->out, total); break;
    default: maxpool_kernel<T, true><<<grid, kBlock, 0, s>>>(g, in, a->out, total); break; // ARGMAX
    }
    return flxk::launch_status();
}

} // namespace

extern "C" int flx_cuda_conv(const flx_conv_args *a, void *stream) {
    cudaStream_t s = (cudaStream_t)stream;
    return flxk::with_dtype<flxk::kFloat>(a->dtype,
                                          [&](auto t) { return launch<typename decltype(t)::type>(a, s); });
}
