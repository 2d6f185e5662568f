// conv.cu — CUDA kernels of the sliding-window family (flx_conv_args; semantics in
// kernels/flx_kernels.h): im2col, its transpose col2im, max-pool values / argmax indices and the
// max-pool backward. One thread per output element, grid-stride loops, 64-bit indices (divided
// in 32 bits when every dividend fits: Geo::small). col2im
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

// A divisor fixed at launch with its 32-bit multiply-shift form (flxk::FastDiv).
struct Dv {
    int64_t d;
    flxk::FastDiv f;
};

inline Dv dv_make(int64_t d) {
    Dv r;
    r.d = d;
    r.f = flxk::fastdiv_make(d > 0 && d < ((int64_t)1 << 31) ? (uint32_t)d : 1u);
    return r;
}

// n / d. SMALL: every index a kernel divides is below 2^31 (Geo::small), so the division is a
// 32-bit multiply-shift instead of the ~70-instruction 64-bit routine; these kernels divide
// several times per element (and per tap in the gathers), which would otherwise bound them by
// integer throughput rather than by memory.
template <bool SMALL>
__device__ __forceinline__ int64_t div_(int64_t n, const Dv &d) {
    if constexpr (SMALL) return (int64_t)flxk::fastdiv((uint32_t)n, d.f);
    else return n / d.d;
}

struct Geo {
    int64_t N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
    Dv dH, dW, dKH, dKW, dOH, dOW, dSH, dSW;
    bool small;
};

Geo geo_of(const flx_conv_args *a) {
    Geo g;
    g.N = a->N; g.C = a->C; g.H = a->H; g.W = a->W; g.KH = a->KH; g.KW = a->KW;
    g.SH = a->SH; g.SW = a->SW; g.PH = a->PH; g.PW = a->PW; g.DH = a->DH; g.DW = a->DW;
    g.OH = a->OH; g.OW = a->OW;
    g.dH = dv_make(g.H); g.dW = dv_make(g.W); g.dKH = dv_make(g.KH); g.dKW = dv_make(g.KW);
    g.dOH = dv_make(g.OH); g.dOW = dv_make(g.OW); g.dSH = dv_make(g.SH); g.dSW = dv_make(g.SW);
    // The dividends: linear indices of the input, the columns and the pooled output, and the
    // window positions h + P, w + P of win_of (p + P - k D <= H - 1 + P).
    const int64_t lim = (int64_t)1 << 31;
    const double in = (double)g.N * g.C * g.H * g.W;
    const double cols = (double)g.N * g.C * g.KH * g.KW * g.OH * g.OW;
    g.small = in < (double)lim && cols < (double)lim && g.H + g.PH < lim && g.W + g.PW < lim &&
              g.KH < lim && g.KW < lim && g.SH < lim && g.SW < lim;
    return g;
}

// The window index along one axis that reads input position p with tap k, or -1.
template <bool SMALL>
__device__ __forceinline__ int64_t win_of(int64_t p, int64_t k, int64_t S, const Dv &dS, int64_t P,
                                          int64_t D, int64_t O) {
    int64_t q = p + P - k * D;
    if (q < 0) return -1;
    if (S != 1) {
        const int64_t t = div_<SMALL>(q, dS);
        if (t * S != q) return -1;
        q = t;
    }
    return q < O ? q : -1;
}

// out (N, C KH KW, OH OW); i runs densely over it.
template <typename T, bool SMALL>
__global__ void im2col_kernel(Geo g, const T *x, T *out, int64_t total) {
    const T zero = from_c<T>((compute_t<T>)0);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r = div_<SMALL>(i, g.dOW);
        const int64_t ow = i - r * g.OW;
        int64_t t = div_<SMALL>(r, g.dOH);
        const int64_t oh = r - t * g.OH;
        r = div_<SMALL>(t, g.dKW);
        const int64_t kj = t - r * g.KW;
        const int64_t nc = div_<SMALL>(r, g.dKH);
        const int64_t ki = r - nc * g.KH;
        int64_t h = oh * g.SH - g.PH + ki * g.DH;
        int64_t w = ow * g.SW - g.PW + kj * g.DW;
        T v = zero;
        if (h >= 0 && h < g.H && w >= 0 && w < g.W) v = x[(nc * g.H + h) * g.W + w];
        out[i] = v;
    }
}

// The flat index of the first maximum of window (oh, ow) of plane nc of x (NaN wins), -1 for a
// window with no tap inside the input; its value in *best.
template <typename T>
__device__ __forceinline__ int64_t window_argmax(const Geo &g, const T *x, int64_t nc, int64_t oh,
                                                 int64_t ow, compute_t<T> *best_out) {
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
    *best_out = best;
    return arg;
}

// The two gathers onto the input (N, C, H, W): each position sums, taps ascending, the entries
// of the windows that read it. COL2IM: out = col2im(src), src = cols (N, C KH KW, OH OW).
// MAXPOOL_BACKWARD: out = the sum of src = gy (N, C, OH, OW) over the windows whose argmax (idx,
// or found again in the pooled input x when idx is NULL) is this position.
template <typename T, bool POOL, bool SMALL>
__global__ void gather_kernel(Geo g, const T *src, const int64_t *idx, const T *x, T *out, int64_t total) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t K = g.KH * g.KW, L = g.OH * g.OW;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t r = div_<SMALL>(i, g.dW), w = i - r * g.W; // (N C, H, W)
        const int64_t nc = div_<SMALL>(r, g.dH), h = r - nc * g.H;
        compute_t<T> acc = 0;
        for (int64_t ki = 0; ki < g.KH; ki++) {
            int64_t oh = win_of<SMALL>(h, ki, g.SH, g.dSH, g.PH, g.DH, g.OH);
            if (oh < 0) continue;
            for (int64_t kj = 0; kj < g.KW; kj++) {
                int64_t ow = win_of<SMALL>(w, kj, g.SW, g.dSW, g.PW, g.DW, g.OW);
                if (ow < 0) continue;
                if constexpr (POOL) {
                    int64_t o = (nc * g.OH + oh) * g.OW + ow;
                    compute_t<T> unused;
                    int64_t arg = idx ? idx[o] : window_argmax<T>(g, x, nc, oh, ow, &unused);
                    if (arg == i) acc += to_c<T>(src[o]);
                } else {
                    acc += to_c<T>(src[(nc * K + ki * g.KW + kj) * L + oh * g.OW + ow]);
                }
            }
        }
        out[i] = from_c<T>(acc);
    }
}

// MAXPOOL (values) or ARGMAX (i64 flat indices) over out (N, C, OH, OW).
template <typename T, bool INDEX, bool SMALL>
__global__ void maxpool_kernel(Geo g, const T *x, void *out, int64_t total) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t r = div_<SMALL>(i, g.dOW), ow = i - r * g.OW; // (N C, OH, OW)
        const int64_t nc = div_<SMALL>(r, g.dOH), oh = r - nc * g.OH;
        compute_t<T> best;
        const int64_t arg = window_argmax<T>(g, x, nc, oh, ow, &best);
        if (INDEX)
            ((int64_t *)out)[i] = arg;
        else
            ((T *)out)[i] = from_c<T>(arg < 0 ? (compute_t<T>)(-INFINITY) : best);
    }
}

template <typename T, bool SMALL>
void launch_mode(const flx_conv_args *a, const Geo &g, int64_t total, cudaStream_t s) {
    const unsigned grid = flxk::grid_for(total);
    const T *in = (const T *)a->in;
    T *out = (T *)a->out;
    switch (a->mode) {
    case FLX_CONV_IM2COL: im2col_kernel<T, SMALL><<<grid, kBlock, 0, s>>>(g, in, out, total); break;
    case FLX_CONV_COL2IM:
        gather_kernel<T, false, SMALL><<<grid, kBlock, 0, s>>>(g, in, nullptr, nullptr, out, total);
        break;
    case FLX_CONV_MAXPOOL_BACKWARD:
        gather_kernel<T, true, SMALL><<<grid, kBlock, 0, s>>>(g, in, a->idx, (const T *)a->x, out, total);
        break;
    case FLX_CONV_MAXPOOL: maxpool_kernel<T, false, SMALL><<<grid, kBlock, 0, s>>>(g, in, a->out, total); break;
    default: maxpool_kernel<T, true, SMALL><<<grid, kBlock, 0, s>>>(g, in, a->out, total); break; // ARGMAX
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
    if (g.small) launch_mode<T, true>(a, g, total, s);
    else launch_mode<T, false>(a, g, total, s);
    return flxk::launch_status();
}

} // namespace

extern "C" int flx_cuda_conv(const flx_conv_args *a, void *stream) {
    cudaStream_t s = (cudaStream_t)stream;
    return flxk::with_dtype<flxk::kFloat>(a->dtype,
                                          [&](auto t) { return launch<typename decltype(t)::type>(a, s); });
}
