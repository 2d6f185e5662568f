// optim.cu — fused multi-tensor optimiser updates (kernel family "optim").
//
// One launch updates up to FLX_OPTIM_MAX_TENSORS_PER_LAUNCH tensors: the tensor pointers travel
// by value in the kernel's parameters (flx_optim_args, about 1.5 KB, under the 4 KB limit), so
// nothing is copied to the device per step. The grid is the concatenation of each tensor's
// chunks of kChunk elements; a block finds its tensor in a small prefix table (also by value).
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

struct BlockMap {
    int64_t start[kMax + 1]; // first block of each tensor; start[n] = total blocks
};
static_assert(sizeof(flx_optim_args) + sizeof(BlockMap) <= 4096,
              "the kernel's parameters must stay within the classic 4 KB limit");

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

template <typename T> __device__ __forceinline__ double ld(const void *p, int64_t i) {
    return to_d(static_cast<const T *>(p)[i]);
}
template <typename S> __device__ __forceinline__ void st(void *p, int64_t i, double v) {
    static_cast<S *>(p)[i] = (S)v;
}

// The weight a rule starts from and where its result goes: the master for halves.
template <typename T> struct Weight {
    void *p;
    float *master;
    __device__ __forceinline__ double get(int64_t i) const {
        if constexpr (kHalf<T>) return (double)master[i];
        else return ld<T>(p, i);
    }
    __device__ __forceinline__ void put(int64_t i, double w) const {
        if constexpr (kHalf<T>) {
            const float m = (float)w;
            master[i] = m;
            static_cast<T *>(p)[i] = from_f<T>(m);
        } else {
            static_cast<T *>(p)[i] = (T)w;
        }
    }
};

// Which tensor block b belongs to, and its element range.
__device__ __forceinline__ int block_tensor(const flx_optim_args &a, const BlockMap &map,
                                            int64_t b, int64_t *lo, int64_t *hi) {
    int j = 0;
    while (j + 1 < a.n && map.start[j + 1] <= b) j++;
    *lo = (b - map.start[j]) * (int64_t)kChunk;
    *hi = *lo + kChunk < a.numel[j] ? *lo + kChunk : a.numel[j];
    return j;
}

// The end of a step, by the last block: the step count, or PyTorch's GradScaler.update.
__device__ void finish_step(const flx_optim_args &a, double t) {
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

template <typename T, typename S>
__global__ void optim_kernel(const flx_optim_args a, const BlockMap map) {
    int64_t lo, hi;
    const int j = block_tensor(a, map, blockIdx.x, &lo, &hi);

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

    switch (skip ? -1 : a.rule) {
    case FLX_OPTIM_RULE_SGD:
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double w = w8.get(i), g = ld<T>(gp, i) * inv_scale + wd * w;
            if (a.use_momentum) {
                double bb = t == 1.0 ? g : mom * ld<S>(s0, i) + (1.0 - damp) * g;
                st<S>(s0, i, bb);
                g = a.nesterov ? g + mom * bb : bb;
            }
            w8.put(i, w - lr * g);
        }
        break;
    case FLX_OPTIM_RULE_ADAGRAD: {
        const double clr = lr / (1.0 + (t - 1.0) * lr_decay);
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double w = w8.get(i), g = ld<T>(gp, i) * inv_scale + wd * w;
            double s = ld<S>(s0, i) + g * g;
            st<S>(s0, i, s);
            w8.put(i, w - clr * g / (sqrt(s) + eps));
        }
        break;
    }
    case FLX_OPTIM_RULE_RMSPROP:
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double w = w8.get(i), g = ld<T>(gp, i) * inv_scale + wd * w;
            double v = alpha * ld<S>(s0, i) + (1.0 - alpha) * g * g;
            st<S>(s0, i, v);
            double d;
            if (a.centered) {
                double av = alpha * ld<S>(s2, i) + (1.0 - alpha) * g;
                st<S>(s2, i, av);
                d = sqrt(v - av * av) + eps;
            } else {
                d = sqrt(v) + eps;
            }
            if (a.use_momentum) {
                double bb = mom * ld<S>(s1, i) + g / d;
                st<S>(s1, i, bb);
                w8.put(i, w - lr * bb);
            } else {
                w8.put(i, w - lr * g / d);
            }
        }
        break;
    case FLX_OPTIM_RULE_ADAM:
    case FLX_OPTIM_RULE_ADAMW: {
        const bool decoupled = a.rule == FLX_OPTIM_RULE_ADAMW;
        const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        const double step_size = lr / bc1, bc2_sqrt = sqrt(bc2);
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double w = w8.get(i), g = ld<T>(gp, i) * inv_scale;
            if (decoupled) w = w * (1.0 - lr * wd);
            else g += wd * w;
            double m = b1 * ld<S>(s0, i) + (1.0 - b1) * g;
            double v = b2 * ld<S>(s1, i) + (1.0 - b2) * g * g;
            st<S>(s0, i, m);
            st<S>(s1, i, v);
            w8.put(i, w - step_size * m / (sqrt(v) / bc2_sqrt + eps));
        }
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
template <typename T> __global__ void find_inf_kernel(const flx_optim_args a, const BlockMap map) {
    int64_t lo, hi;
    const int j = block_tensor(a, map, blockIdx.x, &lo, &hi);
    bool bad = false;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) bad |= !isfinite(ld<T>(a.g[j], i));
    if (__syncthreads_or(bad) && threadIdx.x == 0) *a.found_inf = 1u;
}

// master = parameter, exactly (a half is an f32 value).
template <typename T> __global__ void init_master_kernel(const flx_optim_args a, const BlockMap map) {
    int64_t lo, hi;
    const int j = block_tensor(a, map, blockIdx.x, &lo, &hi);
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x)
        a.master[j][i] = (float)ld<T>(a.p[j], i);
}

__global__ void set_hp_kernel(double *hp, int32_t idx, double v) { hp[idx] = v; }

template <typename T, typename S>
int launch(const flx_optim_args &a, const BlockMap &map, unsigned blocks, cudaStream_t s) {
    switch (a.mode) {
    case FLX_OPTIM_UPDATE: optim_kernel<T, S><<<blocks, flxk::kBlock, 0, s>>>(a, map); break;
    case FLX_OPTIM_FIND_INF: find_inf_kernel<T><<<blocks, flxk::kBlock, 0, s>>>(a, map); break;
    case FLX_OPTIM_INIT_MASTER:
        if constexpr (kHalf<T>) init_master_kernel<T><<<blocks, flxk::kBlock, 0, s>>>(a, map);
        else return (int)cudaErrorInvalidValue;
        break;
    default: return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

int launch_dtype(const flx_optim_args &a, const BlockMap &map, unsigned blocks, cudaStream_t s) {
    switch (a.dtype) {
    case FLX_F32: return launch<float, float>(a, map, blocks, s);
    case FLX_F64: return launch<double, double>(a, map, blocks, s);
    case FLX_F16: return launch<__half, float>(a, map, blocks, s);
    case FLX_BF16: return launch<__nv_bfloat16, float>(a, map, blocks, s);
    default: return (int)cudaErrorInvalidValue;
    }
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
    BlockMap map;
    int64_t total = 0;
    for (int j = 0; j < a->n; j++) {
        map.start[j] = total;
        total += (a->numel[j] + kChunk - 1) / kChunk;
    }
    map.start[a->n] = total;
    for (int j = a->n + 1; j <= kMax; j++) map.start[j] = total;
    if (total == 0) {
        // Nothing to update, but the step's bookkeeping still runs when asked (one tiny launch).
        if (a->mode == FLX_OPTIM_UPDATE && a->advance_step) {
            flx_optim_args b = *a;
            b.n = 1;
            b.numel[0] = 0;
            BlockMap m1;
            for (int j = 0; j <= kMax; j++) m1.start[j] = 0;
            return launch_dtype(b, m1, 1, s);
        }
        return 0;
    }
    if (total > 0x7fffffffLL) return (int)cudaErrorInvalidConfiguration;
    return launch_dtype(*a, map, (unsigned)total, s);
}
