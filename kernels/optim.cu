// optim.cu — fused multi-tensor optimiser updates (kernel family "optim").
//
// One launch updates up to FLX_OPTIM_MAX_TENSORS_PER_LAUNCH tensors: the tensor pointers travel
// by value in the kernel's parameters (Params<NT>, sized for 8 tensors or for the maximum, so a
// small model's launch copies about 0.6 KB instead of 1.5 KB), so nothing is copied to the
// device per step. The grid is the concatenation of each tensor's chunks of kChunk elements; a
// block finds its tensor in a small prefix table (also by value).
// Hyperparameters are read from device memory (hp), so a captured graph stays valid when they
// change. The step's bookkeeping (step count, loss scale) is done by the last block to finish
// (a counter in device memory, reset by that block): every block has read the old count, scale
// and found-inf flag before it arrives at the counter, so all elements of one step see the same
// t and the same verdict. Math in float64, as the CPU reference (runtime/cpu/optim.c), so both
// agree up to the final rounding.
//
// Mixed precision: T is the parameter/gradient type, S the state type (float for __half and
// __nv_bfloat16). Half parameters are always updated through their f32 master: the rule reads
// the master, writes it rounded to f32, and the parameter is that f32 rounded to nearest even
// (__float2half_rn / __float2bfloat16_rn: one rounding, as the CPU's store of an f32 value).
// Loss scaling is two-phase: find_inf_kernel over every gradient of the step sets *found_inf,
// then the update launches read it (a grid-wide barrier inside one kernel would not survive
// graph capture and small grids alike).
//
// Memory access: a tensor whose pointers (parameter, gradient, state slots, master) are all
// aligned to kVec elements is read and written kVec elements per access (16 bytes for f32, two
// 16-byte accesses for f64, 8 for halves), its last numel % kVec elements one by one; others
// element by element. Both apply the same per-element arithmetic, so results are bit-identical.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "cuda_common.cuh"
#include "flx_kernels.h"

namespace {

constexpr int kChunk = 4096; // elements per block
constexpr int kMax = FLX_OPTIM_MAX_TENSORS_PER_LAUNCH;

constexpr int kVec = 4;      // elements per vector access
static_assert(kChunk % kVec == 0, "chunks must start vector-aligned");
static_assert(kMax <= 32, "vec is a 32-bit mask");

constexpr int kSmall = 8;   // tensors of the smaller parameter block

// The kernels' parameters: flx_optim_args's fields that the kernels read, for up to NT tensors.
template <int NT> struct Params {
    int32_t rule, n;
    int32_t nesterov, centered, use_momentum, advance_step;
    uint32_t vec;            // bit j: tensor j is accessed kVec elements at a time
    int32_t start[NT + 1];   // first block of each tensor; start[n] = total blocks (< 2^31)
    void *p[NT];
    const void *g[NT];
    void *s0[NT], *s1[NT], *s2[NT];
    float *master[NT];
    int64_t numel[NT];
    double *hp;
    uint32_t *counter;
    double *scale, *scaler;
    uint32_t *found_inf;
    double growth_factor, backoff_factor, growth_interval;
};
static_assert(sizeof(Params<kMax>) <= 4096, "the kernel's parameters must stay within the classic 4 KB limit");

template <typename T> constexpr bool kHalf =
    std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;

__device__ __forceinline__ double to_d(float v) { return (double)v; }
__device__ __forceinline__ double to_d(double v) { return v; }
__device__ __forceinline__ double to_d(__half v) { return (double)__half2float(v); }
__device__ __forceinline__ double to_d(__nv_bfloat16 v) { return (double)__bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// V consecutive elements in one access (V * sizeof(X) bytes, aligned to that).
template <typename X, int V> struct alignas(V * sizeof(X)) Pack {
    X v[V];
};

// Elements i .. i + V - 1 of p, as doubles.
template <typename X, int V> __device__ __forceinline__ void ld(const void *p, int64_t i, double (&out)[V]) {
    const Pack<X, V> pk = *reinterpret_cast<const Pack<X, V> *>(static_cast<const X *>(p) + i);
#pragma unroll
    for (int e = 0; e < V; e++) out[e] = to_d(pk.v[e]);
}
template <typename S, int V> __device__ __forceinline__ void st(void *p, int64_t i, const double (&in)[V]) {
    Pack<S, V> pk;
#pragma unroll
    for (int e = 0; e < V; e++) pk.v[e] = (S)in[e];
    *reinterpret_cast<Pack<S, V> *>(static_cast<S *>(p) + i) = pk;
}

// The weight a rule starts from and where its result goes: the master for halves.
template <typename T> struct Weight {
    void *p;
    float *master;
    template <int V> __device__ __forceinline__ void get(int64_t i, double (&w)[V]) const {
        if constexpr (kHalf<T>) ld<float, V>(master, i, w);
        else ld<T, V>(p, i, w);
    }
    template <int V> __device__ __forceinline__ void put(int64_t i, const double (&w)[V]) const {
        if constexpr (kHalf<T>) {
            Pack<float, V> m;
            Pack<T, V> h;
#pragma unroll
            for (int e = 0; e < V; e++) {
                m.v[e] = (float)w[e];
                h.v[e] = from_f<T>(m.v[e]);
            }
            *reinterpret_cast<Pack<float, V> *>(master + i) = m;
            *reinterpret_cast<Pack<T, V> *>(static_cast<T *>(p) + i) = h;
        } else {
            st<T, V>(p, i, w);
        }
    }
};

// Runs f(i, V-wide step) over the block's share of [lo, hi): vector steps over the aligned bulk
// when vec (lo is a multiple of kVec), then single elements.
template <typename F>
__device__ __forceinline__ void for_span(int64_t lo, int64_t hi, bool vec, F f) {
    int64_t mid = lo;
    if (vec) {
        mid = lo + ((hi - lo) & ~(int64_t)(kVec - 1));
        for (int64_t i = lo + (int64_t)kVec * threadIdx.x; i < mid; i += (int64_t)kVec * blockDim.x)
            f(i, std::integral_constant<int, kVec>());
    }
    for (int64_t i = mid + threadIdx.x; i < hi; i += blockDim.x) f(i, std::integral_constant<int, 1>());
}

// One update step of V elements at i: weights, gradients and the state slots in use (non-NULL)
// are loaded, rule(w, g, s0, s1, s2) updates one element in place (doubles), and all is stored.
template <typename T, typename S, int V, typename Rule>
__device__ __forceinline__ void update(const Weight<T> &w8, const void *gp, void *s0, void *s1, void *s2,
                                       int64_t i, Rule rule) {
    double w[V], g[V], a[V] = {}, b[V] = {}, c[V] = {};
    w8.template get<V>(i, w);
    ld<T, V>(gp, i, g);
    if (s0) ld<S, V>(s0, i, a);
    if (s1) ld<S, V>(s1, i, b);
    if (s2) ld<S, V>(s2, i, c);
#pragma unroll
    for (int e = 0; e < V; e++) rule(w[e], g[e], a[e], b[e], c[e]);
    if (s0) st<S, V>(s0, i, a);
    if (s1) st<S, V>(s1, i, b);
    if (s2) st<S, V>(s2, i, c);
    w8.template put<V>(i, w);
}

// Which tensor block b belongs to, and its element range.
template <typename P>
__device__ __forceinline__ int block_tensor(const P &a, int64_t b, int64_t *lo, int64_t *hi) {
    int j = 0;
    while (j + 1 < a.n && a.start[j + 1] <= b) j++;
    *lo = (b - a.start[j]) * (int64_t)kChunk;
    *hi = *lo + kChunk < a.numel[j] ? *lo + kChunk : a.numel[j];
    return j;
}

// The end of a step, by the last block: the step count, or PyTorch's GradScaler.update.
template <typename P> __device__ void finish_step(const P &a, double t) {
    if (!a.scale) {
        a.hp[FLX_HP_STEP] = t;
        return;
    }
    double *tracker = &a.scaler[0], *skipped = &a.scaler[1];
    if (*a.found_inf) {
        *a.scale *= a.backoff_factor;
        *tracker = 0;
        *skipped += 1.0;
        *a.found_inf = 0u;
        return;
    }
    a.hp[FLX_HP_STEP] = t;
    *tracker += 1.0;
    if (*tracker >= a.growth_interval) {
        const double grown = *a.scale * a.growth_factor;
        if (isfinite((float)grown)) *a.scale = grown;
        *tracker = 0;
    }
}

// Two blocks per SM (up to 128 registers): a vector step holds five V-wide double arrays plus
// the hyper-parameters, which spilled 12-24 bytes under the three-block cap of 80 registers. Two
// blocks still keep 512 threads x 5 streams x 16 bytes = 40 KB in flight per SM, more than the
// ~15 KB that DRAM latency x bandwidth asks for.
template <typename T, typename S, typename P>
__global__ void __launch_bounds__(flxk::kBlock, 2) optim_kernel(const P a) {
    int64_t lo, hi;
    const int j = block_tensor(a, blockIdx.x, &lo, &hi);

    const double *hp = a.hp;
    const double lr = hp[FLX_HP_LR], mom = hp[FLX_HP_MOMENTUM], damp = hp[FLX_HP_DAMPENING];
    const double wd = hp[FLX_HP_WEIGHT_DECAY], b1 = hp[FLX_HP_BETA1], b2 = hp[FLX_HP_BETA2];
    const double eps = hp[FLX_HP_EPS], alpha = hp[FLX_HP_ALPHA], lr_decay = hp[FLX_HP_LR_DECAY];
    const double t = hp[FLX_HP_STEP] + 1.0;
    const bool skip = a.scale && *a.found_inf;
    const double inv_scale = a.scale ? 1.0 / *a.scale : 1.0;
    const Weight<T> w8{a.p[j], a.master[j]};
    const void *gp = a.g[j];
    void *s0 = a.s0[j], *s1 = a.s1[j], *s2 = a.s2[j];

    const bool vec = (a.vec >> j) & 1u;
    auto run = [&](auto rule) {
        for_span(lo, hi, vec, [&](int64_t i, auto v) {
            update<T, S, decltype(v)::value>(w8, gp, s0, s1, s2, i, rule);
        });
    };
    switch (skip ? -1 : a.rule) {
    case FLX_OPTIM_RULE_SGD:
        run([&](double &w, double gr, double &m0, double &, double &) {
            double g = gr * inv_scale + wd * w;
            if (a.use_momentum) {
                double bb = t == 1.0 ? g : mom * m0 + (1.0 - damp) * g;
                m0 = bb;
                g = a.nesterov ? g + mom * bb : bb;
            }
            w = w - lr * g;
        });
        break;
    case FLX_OPTIM_RULE_ADAGRAD: {
        const double clr = lr / (1.0 + (t - 1.0) * lr_decay);
        run([&](double &w, double gr, double &sum, double &, double &) {
            double g = gr * inv_scale + wd * w;
            double s = sum + g * g;
            sum = s;
            w = w - clr * g / (sqrt(s) + eps);
        });
        break;
    }
    case FLX_OPTIM_RULE_RMSPROP:
        run([&](double &w, double gr, double &sq, double &buf, double &avg) {
            double g = gr * inv_scale + wd * w;
            double v = alpha * sq + (1.0 - alpha) * g * g;
            sq = v;
            double d;
            if (a.centered) {
                double av = alpha * avg + (1.0 - alpha) * g;
                avg = av;
                d = sqrt(v - av * av) + eps;
            } else {
                d = sqrt(v) + eps;
            }
            if (a.use_momentum) {
                double bb = mom * buf + g / d;
                buf = bb;
                w = w - lr * bb;
            } else {
                w = w - lr * g / d;
            }
        });
        break;
    case FLX_OPTIM_RULE_ADAM:
    case FLX_OPTIM_RULE_ADAMW: {
        const bool decoupled = a.rule == FLX_OPTIM_RULE_ADAMW;
        const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        const double step_size = lr / bc1, bc2_sqrt = sqrt(bc2);
        run([&](double &w, double gr, double &m1, double &m2, double &) {
            double g = gr * inv_scale;
            if (decoupled) w = w * (1.0 - lr * wd);
            else g += wd * w;
            double m = b1 * m1 + (1.0 - b1) * g;
            double v = b2 * m2 + (1.0 - b2) * g * g;
            m1 = m;
            m2 = v;
            w = w - step_size * m / (sqrt(v) / bc2_sqrt + eps);
        });
        break;
    }
    default: break; // a skipped step (loss scaling found an inf/NaN): nothing is written
    }

    if (!a.advance_step) return;
    // Every thread of this block has read hp, the scale and the flag; the last block to arrive
    // does the bookkeeping.
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        unsigned prev = atomicAdd(a.counter, 1u);
        if (prev == gridDim.x - 1) {
            finish_step(a, t);
            *a.counter = 0u;
            __threadfence();
        }
    }
}

// *found_inf = 1 if any gradient element is inf or NaN (a benign race: every writer stores 1).
template <typename T, typename P> __global__ void find_inf_kernel(const P a) {
    int64_t lo, hi;
    const int j = block_tensor(a, blockIdx.x, &lo, &hi);
    bool bad = false;
    for_span(lo, hi, (a.vec >> j) & 1u, [&](int64_t i, auto v) {
        constexpr int V = decltype(v)::value;
        double g[V];
        ld<T, V>(a.g[j], i, g);
#pragma unroll
        for (int e = 0; e < V; e++) bad |= !isfinite(g[e]);
    });
    if (__syncthreads_or(bad) && threadIdx.x == 0) *a.found_inf = 1u;
}

// master = parameter, exactly (a half is an f32 value).
template <typename T, typename P> __global__ void init_master_kernel(const P a) {
    int64_t lo, hi;
    const int j = block_tensor(a, blockIdx.x, &lo, &hi);
    for_span(lo, hi, (a.vec >> j) & 1u, [&](int64_t i, auto v) {
        constexpr int V = decltype(v)::value;
        double p[V];
        ld<T, V>(a.p[j], i, p);
        st<float, V>(a.master[j], i, p);
    });
}

__global__ void set_hp_kernel(double *hp, int32_t idx, double v) { hp[idx] = v; }

// Whether p is NULL or aligned for a vector access of X.
template <typename X> bool vec_aligned(const void *p) {
    return (uintptr_t)p % alignof(Pack<X, kVec>) == 0;
}

// a's tensors [0, a.n) with their first blocks start[0..n] as the kernels' parameters (P starts
// zeroed: the slots past n stay NULL).
template <typename T, typename S, int NT>
void pack(const flx_optim_args &a, const int64_t *start, Params<NT> &P) {
    P.rule = a.rule, P.n = a.n, P.advance_step = a.advance_step;
    P.nesterov = a.nesterov, P.centered = a.centered, P.use_momentum = a.use_momentum;
    for (int j = 0; j <= NT; j++) P.start[j] = (int32_t)start[j < a.n ? j : a.n];
    for (int j = 0; j < a.n; j++) {
        P.p[j] = a.p[j], P.g[j] = a.g[j], P.master[j] = a.master[j], P.numel[j] = a.numel[j];
        P.s0[j] = a.s0[j], P.s1[j] = a.s1[j], P.s2[j] = a.s2[j];
        if (vec_aligned<T>(a.p[j]) && vec_aligned<T>(a.g[j]) && vec_aligned<S>(a.s0[j]) &&
            vec_aligned<S>(a.s1[j]) && vec_aligned<S>(a.s2[j]) && vec_aligned<float>(a.master[j]))
            P.vec |= 1u << j;
    }
    P.hp = a.hp, P.counter = a.counter, P.found_inf = a.found_inf;
    P.scale = a.scale, P.scaler = a.scaler;
    P.growth_factor = a.growth_factor, P.backoff_factor = a.backoff_factor;
    P.growth_interval = a.growth_interval;
}

template <typename T, typename S, int NT>
int launch(const flx_optim_args &a, const int64_t *start, unsigned blocks, cudaStream_t s) {
    Params<NT> P{};
    pack<T, S, NT>(a, start, P);
    switch (a.mode) {
    case FLX_OPTIM_UPDATE: optim_kernel<T, S, Params<NT>><<<blocks, flxk::kBlock, 0, s>>>(P); break;
    case FLX_OPTIM_FIND_INF: find_inf_kernel<T, Params<NT>><<<blocks, flxk::kBlock, 0, s>>>(P); break;
    case FLX_OPTIM_INIT_MASTER:
        if constexpr (kHalf<T>) init_master_kernel<T, Params<NT>><<<blocks, flxk::kBlock, 0, s>>>(P);
        else return (int)cudaErrorInvalidValue;
        break;
    default: return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

int launch_dtype(const flx_optim_args &a, const int64_t *start, unsigned blocks, cudaStream_t s) {
    return flxk::with_dtype<flxk::kFloat>(a.dtype, [&](auto t) {
        using S = typename decltype(t)::type; // stored; the math in compute_t<S>
        return a.n <= kSmall ? launch<S, flxk::compute_t<S>, kSmall>(a, start, blocks, s)
                             : launch<S, flxk::compute_t<S>, kMax>(a, start, blocks, s);
    });
}

} // namespace

extern "C" int flx_cuda_optim(const flx_optim_args *a, void *stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (a->mode == FLX_OPTIM_SET_HP) {
        if (a->set_index < 0 || a->set_index >= FLX_HP_COUNT) return (int)cudaErrorInvalidValue;
        set_hp_kernel<<<1, 1, 0, s>>>(a->hp, a->set_index, a->set_value);
        return (int)cudaGetLastError();
    }
    if (a->n < 0 || a->n > kMax) return (int)cudaErrorInvalidValue;
    int64_t start[kMax + 1];
    int64_t total = 0;
    for (int j = 0; j < a->n; j++) {
        start[j] = total;
        total += (a->numel[j] + kChunk - 1) / kChunk;
    }
    start[a->n] = total;
    if (total == 0) {
        // Nothing to update, but the step's bookkeeping still runs when asked (one tiny launch).
        if (a->mode == FLX_OPTIM_UPDATE && a->advance_step) {
            flx_optim_args b = *a;
            b.n = 1;
            b.numel[0] = 0;
            const int64_t zero[2] = {0, 0};
            return launch_dtype(b, zero, 1, s);
        }
        return 0;
    }
    if (total > 0x7fffffffLL) return (int)cudaErrorInvalidConfiguration;
    return launch_dtype(*a, start, (unsigned)total, s);
}
