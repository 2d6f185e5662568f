// optim.cu — fused multi-tensor optimiser updates (kernel family "optim").
//
// One launch updates up to FLX_OPTIM_MAX_TENSORS_PER_LAUNCH tensors: the tensor pointers travel
// by value in the kernel's parameters (flx_optim_args, about 1.3 KB, under the 4 KB limit), so
// nothing is copied to the device per step. The grid is the concatenation of each tensor's
// chunks of kChunk elements; a block finds its tensor in a small prefix table (also by value).
// Hyperparameters are read from device memory (hp), so a captured graph stays valid when they
// change. The step count hp[FLX_HP_STEP] is advanced by the last block to finish (a counter in
// device memory, reset by that block): every block has read the old count before it arrives at
// the counter, so all elements of one step see the same t. Math in float64, as the CPU reference
// (runtime/cpu/optim.c), so both agree up to the final rounding.
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda_common.cuh"
#include "flx_kernels.h"

namespace {

constexpr int kChunk = 4096; // elements per block
constexpr int kMax = FLX_OPTIM_MAX_TENSORS_PER_LAUNCH;

struct BlockMap {
    int64_t start[kMax + 1]; // first block of each tensor; start[n] = total blocks
};

template <typename T>
__device__ __forceinline__ double ld(const void *p, int64_t i) {
    return (double)static_cast<const T *>(p)[i];
}
template <typename T>
__device__ __forceinline__ void st(void *p, int64_t i, double v) {
    static_cast<T *>(p)[i] = (T)v;
}

template <typename T>
__global__ void optim_kernel(const flx_optim_args a, const BlockMap map) {
    const int64_t b = blockIdx.x;
    int j = 0;
    while (j + 1 < a.n && map.start[j + 1] <= b) j++;
    const int64_t n = a.numel[j];
    const int64_t lo = (b - map.start[j]) * (int64_t)kChunk;
    int64_t hi = lo + kChunk;
    if (hi > n) hi = n;

    const double *hp = a.hp;
    const double lr = hp[FLX_HP_LR], mom = hp[FLX_HP_MOMENTUM], damp = hp[FLX_HP_DAMPENING];
    const double wd = hp[FLX_HP_WEIGHT_DECAY], b1 = hp[FLX_HP_BETA1], b2 = hp[FLX_HP_BETA2];
    const double eps = hp[FLX_HP_EPS], alpha = hp[FLX_HP_ALPHA], lr_decay = hp[FLX_HP_LR_DECAY];
    const double t = hp[FLX_HP_STEP] + 1.0;
    void *p = a.p[j];
    const void *gp = a.g[j];
    void *s0 = a.s0[j], *s1 = a.s1[j], *s2 = a.s2[j];

    switch (a.rule) {
    case FLX_OPTIM_RULE_SGD:
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double w = ld<T>(p, i), g = ld<T>(gp, i) + wd * w;
            if (a.use_momentum) {
                double bb = t == 1.0 ? g : mom * ld<T>(s0, i) + (1.0 - damp) * g;
                st<T>(s0, i, bb);
                g = a.nesterov ? g + mom * bb : bb;
            }
            st<T>(p, i, w - lr * g);
        }
        break;
    case FLX_OPTIM_RULE_ADAGRAD: {
        const double clr = lr / (1.0 + (t - 1.0) * lr_decay);
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double w = ld<T>(p, i), g = ld<T>(gp, i) + wd * w;
            double s = ld<T>(s0, i) + g * g;
            st<T>(s0, i, s);
            st<T>(p, i, w - clr * g / (sqrt(s) + eps));
        }
        break;
    }
    case FLX_OPTIM_RULE_RMSPROP:
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double w = ld<T>(p, i), g = ld<T>(gp, i) + wd * w;
            double v = alpha * ld<T>(s0, i) + (1.0 - alpha) * g * g;
            st<T>(s0, i, v);
            double d;
            if (a.centered) {
                double av = alpha * ld<T>(s2, i) + (1.0 - alpha) * g;
                st<T>(s2, i, av);
                d = sqrt(v - av * av) + eps;
            } else {
                d = sqrt(v) + eps;
            }
            if (a.use_momentum) {
                double bb = mom * ld<T>(s1, i) + g / d;
                st<T>(s1, i, bb);
                st<T>(p, i, w - lr * bb);
            } else {
                st<T>(p, i, w - lr * g / d);
            }
        }
        break;
    case FLX_OPTIM_RULE_ADAM:
    case FLX_OPTIM_RULE_ADAMW: {
        const bool decoupled = a.rule == FLX_OPTIM_RULE_ADAMW;
        const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        const double step_size = lr / bc1, bc2_sqrt = sqrt(bc2);
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            double w = ld<T>(p, i), g = ld<T>(gp, i);
            if (decoupled) w = w * (1.0 - lr * wd);
            else g += wd * w;
            double m = b1 * ld<T>(s0, i) + (1.0 - b1) * g;
            double v = b2 * ld<T>(s1, i) + (1.0 - b2) * g * g;
            st<T>(s0, i, m);
            st<T>(s1, i, v);
            st<T>(p, i, w - step_size * m / (sqrt(v) / bc2_sqrt + eps));
        }
        break;
    }
    default: break;
    }

    if (!a.advance_step) return;
    // Every thread of this block has read hp; the last block to arrive advances the step.
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        unsigned prev = atomicAdd(a.counter, 1u);
        if (prev == gridDim.x - 1) {
            a.hp[FLX_HP_STEP] = t;
            *a.counter = 0u;
            __threadfence();
        }
    }
}

__global__ void set_hp_kernel(double *hp, int32_t idx, double v) { hp[idx] = v; }

} // namespace

extern "C" int flx_cuda_optim(const flx_optim_args *a, void *stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (a->mode == FLX_OPTIM_SET_HP) {
        if (a->set_index < 0 || a->set_index >= FLX_HP_COUNT) return (int)cudaErrorInvalidValue;
        set_hp_kernel<<<1, 1, 0, s>>>(a->hp, a->set_index, a->set_value);
        return (int)cudaGetLastError();
    }
    if (a->n < 0 || a->n > kMax) return (int)cudaErrorInvalidValue;
    if (a->dtype != FLX_F32 && a->dtype != FLX_F64) return (int)cudaErrorInvalidValue;
    BlockMap map;
    int64_t total = 0;
    for (int j = 0; j < a->n; j++) {
        map.start[j] = total;
        total += (a->numel[j] + kChunk - 1) / kChunk;
    }
    map.start[a->n] = total;
    for (int j = a->n + 1; j <= kMax; j++) map.start[j] = total;
    if (total == 0) {
        // Nothing to update, but the step still advances when asked (one tiny launch).
        if (a->advance_step) {
            flx_optim_args b = *a;
            b.n = 1;
            b.numel[0] = 0;
            BlockMap m1;
            for (int j = 0; j <= kMax; j++) m1.start[j] = 0;
            if (a->dtype == FLX_F32) optim_kernel<float><<<1, flxk::kBlock, 0, s>>>(b, m1);
            else optim_kernel<double><<<1, flxk::kBlock, 0, s>>>(b, m1);
            return (int)cudaGetLastError();
        }
        return 0;
    }
    if (total > 0x7fffffffLL) return (int)cudaErrorInvalidConfiguration;
    dim3 grid((unsigned)total);
    if (a->dtype == FLX_F32) optim_kernel<float><<<grid, flxk::kBlock, 0, s>>>(*a, map);
    else optim_kernel<double><<<grid, flxk::kBlock, 0, s>>>(*a, map);
    return (int)cudaGetLastError();
}
