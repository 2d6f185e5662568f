// cuda_common.cuh — helpers shared by the CUDA kernel files (kernels/*.cu): launch geometry sized
// to the device, dimension coalescing for strided index spaces, offset computation, and the
// 16-bit float storage types (load to f32, round once on store).
// Private to the kernels; host code never includes it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <initializer_list>

#include "flx_kernels.h"

namespace flxk {

constexpr int kBlock = 256; // threads per block for every grid-stride kernel

// Attribute A of the current device, cached per ordinal (benign race: the same value is
// written); `fallback` when the query fails or gives a value <= 0.
template <cudaDeviceAttr A> inline int device_attr(int fallback) {
    static int cache[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
        (void)cudaGetLastError();
        return fallback;
    }
    if (cache[dev] == 0) {
        int n = 0;
        if (cudaDeviceGetAttribute(&n, A, dev) != cudaSuccess || n <= 0) {
            (void)cudaGetLastError();
            n = fallback;
        }
        cache[dev] = n;
    }
    return cache[dev];
}

// Number of SMs of the current device. Falls back to 132 (an H100 SXM) if the query fails.
inline int sm_count() { return device_attr<cudaDevAttrMultiProcessorCount>(132); }

// Blocks for a grid-stride loop over `work` items: enough to cover it, at most a few waves of
// fully resident blocks (2048 threads per SM / kBlock = 8 blocks per SM, times 4).
inline unsigned grid_for(int64_t work, int per_block = kBlock) {
    if (work <= 0) return 1;
    int64_t want = (work + per_block - 1) / per_block;
    int64_t cap = (int64_t)sm_count() * 32;
    if (want > cap) want = cap;
    if (want < 1) want = 1;
    return (unsigned)want;
}

// Unsigned 32-bit division by a divisor fixed at launch, without a divide instruction:
// n / d = (umulhi(n, m) + n) >> s with s = ceil(log2 d), m = floor(2^32 (2^s - d) / d) + 1
// (Granlund & Montgomery), exact for n, d < 2^31 (the sum cannot wrap).
struct FastDiv {
    uint32_t m, s;
};

inline FastDiv fastdiv_make(uint32_t d) {
    uint32_t s = 0;
    while (s < 31 && ((uint32_t)1 << s) < d) s++;
    FastDiv f;
    f.m = (uint32_t)((((uint64_t)1 << 32) * (((uint64_t)1 << s) - d)) / d + 1);
    f.s = s;
    return f;
}

__device__ __forceinline__ uint32_t fastdiv(uint32_t n, const FastDiv &f) {
    return (__umulhi(n, f.m) + n) >> f.s;
}

// Strided index space of up to FLX_MAX_DIMS dims and up to 3 operands (strides in elements).
// small: the whole space has fewer than 2^31 elements, and fd holds each dim's divider, so
// offsets() divides in 32 bits (a 64-bit division is a ~70-instruction software routine);
// set by coalesce().
struct Space {
    int32_t ndim;
    int64_t shape[FLX_MAX_DIMS];
    int64_t st[3][FLX_MAX_DIMS];
    int32_t small = 0;
    FastDiv fd[FLX_MAX_DIMS];
};

// Drops size-1 dims and merges adjacent dims whose strides are compatible for every operand
// (outer stride == inner stride * inner size), keeping the row-major visiting order. The
// result has ndim >= 1 (a 0-d or all-ones space becomes shape (1) with zero strides).
inline void coalesce(Space &s, int nops) {
    int nd = 0;
    for (int d = 0; d < s.ndim; d++) {
        if (s.shape[d] == 1) continue;
        if (nd > 0) {
            bool ok = true;
            for (int k = 0; k < nops; k++)
                if (s.st[k][nd - 1] != s.st[k][d] * s.shape[d]) ok = false;
            if (ok) {
                s.shape[nd - 1] *= s.shape[d];
                for (int k = 0; k < nops; k++) s.st[k][nd - 1] = s.st[k][d];
                continue;
            }
        }
        s.shape[nd] = s.shape[d];
        for (int k = 0; k < nops; k++) s.st[k][nd] = s.st[k][d];
        nd++;
    }
    if (nd == 0) {
        nd = 1;
        s.shape[0] = 1;
        for (int k = 0; k < nops; k++) s.st[k][0] = 0;
    }
    for (int d = nd; d < FLX_MAX_DIMS; d++) {
        s.shape[d] = 1;
        for (int k = 0; k < 3; k++) s.st[k][d] = 0;
    }
    for (int k = nops; k < 3; k++)
        for (int d = 0; d < FLX_MAX_DIMS; d++) s.st[k][d] = 0;
    s.ndim = nd;
    int64_t total = 1;
    bool fits = true;
    for (int d = 0; d < nd && fits; d++) {
        if (s.shape[d] <= 0 || s.shape[d] >= ((int64_t)1 << 31)) fits = false;
        else if ((total *= s.shape[d]) >= ((int64_t)1 << 31)) fits = false;
    }
    s.small = fits ? 1 : 0;
    for (int d = 0; d < FLX_MAX_DIMS; d++) s.fd[d] = fastdiv_make(fits && d < nd ? (uint32_t)s.shape[d] : 1u);
}

// The index space of a strided launch over ndim dims of shape with the strides of up to 3
// operands (st: operand k's strides), coalesced into s. Returns the element count, 0 when the
// space is empty (s is then unset: nothing is to be launched), or -1 when ndim is out of range.
inline int64_t space_of(Space &s, int ndim, const int64_t *shape,
                        std::initializer_list<const int64_t *> st) {
    if (ndim < 0 || ndim > FLX_MAX_DIMS || st.size() > 3) return -1;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    if (n <= 0) return 0;
    s.ndim = ndim;
    for (int d = 0; d < ndim; d++) s.shape[d] = shape[d];
    int k = 0;
    for (const int64_t *o : st) {
        for (int d = 0; d < ndim; d++) s.st[k][d] = o[d];
        k++;
    }
    coalesce(s, k);
    return n;
}

// Element i of a dense (outer, rows, inner) array as its outer index o, row r and inner index in.
struct Ori {
    int64_t o, r, in;
};
__host__ __device__ __forceinline__ Ori ori_of(int64_t i, int64_t rows, int64_t inner) {
    const int64_t rest = i / inner;
    return Ori{rest / rows, rest % rows, i % inner};
}

// Offsets of linear index i (row-major over shape) for NOPS operands. Dim 0 needs no division,
// so a coalesced 1-d space costs one multiply per operand; below 2^31 elements the divisions
// are 32-bit multiply-shifts (FastDiv), else 64-bit divisions.
template <int NOPS>
__device__ __forceinline__ void offsets(const Space &s, int64_t i, int64_t *off) {
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] = 0;
    if (s.small) {
        uint32_t j = (uint32_t)i;
#pragma unroll
        for (int d = FLX_MAX_DIMS - 1; d >= 1; d--) {
            if (d < s.ndim) {
                uint32_t q = fastdiv(j, s.fd[d]);
                uint32_t r = j - q * (uint32_t)s.shape[d];
#pragma unroll
                for (int k = 0; k < NOPS; k++) off[k] += (int64_t)r * s.st[k][d];
                j = q;
            }
        }
#pragma unroll
        for (int k = 0; k < NOPS; k++) off[k] += (int64_t)j * s.st[k][0];
        return;
    }
#pragma unroll
    for (int d = FLX_MAX_DIMS - 1; d >= 1; d--) {
        if (d < s.ndim) {
            int64_t q = i / s.shape[d];
            int64_t r = i - q * s.shape[d];
#pragma unroll
            for (int k = 0; k < NOPS; k++) off[k] += r * s.st[k][d];
            i = q;
        }
    }
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] += i * s.st[k][0];
}

// ---- 16-bit floats: FLX_F16 is __half, FLX_BF16 is __nv_bfloat16 --------------------------------
// Storage only: every kernel loads them into f32 (exact: both formats are subsets of f32), computes
// in f32 and rounds once, to nearest even, when it stores. Other element types compute in their own
// type (compute_t<S> is S), so the helpers below are identities for them and one template body
// serves every dtype. Conversions are the explicit intrinsics, never the classes' implicit
// operators (those make mixed expressions ambiguous and hide where rounding happens).
template <typename S> struct Compute { typedef S type; };
template <> struct Compute<__half> { typedef float type; };
template <> struct Compute<__nv_bfloat16> { typedef float type; };
template <typename S> using compute_t = typename Compute<S>::type;

template <typename S> struct is_half16 { static constexpr bool value = false; };
template <> struct is_half16<__half> { static constexpr bool value = true; };
template <> struct is_half16<__nv_bfloat16> { static constexpr bool value = true; };

// A stored value as the compute type (exact).
template <typename S> __device__ __forceinline__ compute_t<S> to_c(S v) { return v; }
template <> __device__ __forceinline__ float to_c<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_c<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

// A compute-type value stored as S: f32 -> 16-bit rounds to nearest even.
template <typename S> __device__ __forceinline__ S from_c(compute_t<S> v) { return v; }
template <> __device__ __forceinline__ __half from_c<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_c<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The value a compute-type result has once stored as S (rounded to S and back; identity for
// f32/f64), for chains that must round after every step as the unfused kernels do.
template <typename S> __device__ __forceinline__ compute_t<S> round_c(compute_t<S> v) {
    if constexpr (is_half16<S>::value) return to_c<S>(from_c<S>(v));
    else return v;
}

// A double stored as a float type S with one rounding (double -> f32 -> 16-bit would round
// twice, which can differ from the CPU's single rounding by an ulp at ties).
template <typename S> __device__ __forceinline__ S from_d(double v) { return (S)v; }
template <> __device__ __forceinline__ __half from_d<__half>(double v) { return __double2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_d<__nv_bfloat16>(double v) { return __double2bfloat16(v); }
template <typename S> __device__ __forceinline__ double to_d(S v) { return (double)to_c<S>(v); }

// Launch check that never synchronises: the launch error (bad configuration), if any.
inline int launch_status() { return (int)cudaGetLastError(); }

// ---- dispatch on an element type --------------------------------------------------------------
// A type carried into a generic lambda: [&](auto t) { using T = typename decltype(t)::type; ... }.
template <typename T> struct Tag { typedef T type; };

// Sets of dtypes (bit flx_dtype) that a launcher takes.
enum : unsigned {
    kF32 = 1u << FLX_F32, kF64 = 1u << FLX_F64, kI32 = 1u << FLX_I32, kI64 = 1u << FLX_I64,
    kBool = 1u << FLX_BOOL, kF16 = 1u << FLX_F16, kBF16 = 1u << FLX_BF16,
    kReal = kF32 | kF64, kFloat = kReal | kF16 | kBF16, kNumeric = kFloat | kI32 | kI64,
    kAny = kNumeric | kBool
};

// f(Tag<S>{}) for S the storage type of dtype (f32 float, f64 double, i32 int32_t, i64 int64_t,
// bool uint8_t, f16 __half, bf16 __nv_bfloat16) when dtype is in TYPES, else
// cudaErrorInvalidValue. Only the types of TYPES are instantiated.
template <unsigned TYPES, typename F> inline int with_dtype(int dtype, F &&f) {
    switch (dtype) {
    case FLX_F32: if constexpr ((TYPES & kF32) != 0) return f(Tag<float>{}); break;
    case FLX_F64: if constexpr ((TYPES & kF64) != 0) return f(Tag<double>{}); break;
    case FLX_I32: if constexpr ((TYPES & kI32) != 0) return f(Tag<int32_t>{}); break;
    case FLX_I64: if constexpr ((TYPES & kI64) != 0) return f(Tag<int64_t>{}); break;
    case FLX_BOOL: if constexpr ((TYPES & kBool) != 0) return f(Tag<uint8_t>{}); break;
    case FLX_F16: if constexpr ((TYPES & kF16) != 0) return f(Tag<__half>{}); break;
    case FLX_BF16: if constexpr ((TYPES & kBF16) != 0) return f(Tag<__nv_bfloat16>{}); break;
    default: break;
    }
    return (int)cudaErrorInvalidValue;
}

// f(Tag<U>{}) for U the unsigned integer of `bytes` bytes (1, 2, 4 or 8), else
// cudaErrorInvalidValue: kernels that only move elements need their size, not their type.
template <typename F> inline int with_size(size_t bytes, F &&f) {
    switch (bytes) {
    case 1: return f(Tag<uint8_t>{});
    case 2: return f(Tag<uint16_t>{});
    case 4: return f(Tag<uint32_t>{});
    case 8: return f(Tag<uint64_t>{});
    default: return (int)cudaErrorInvalidValue;
    }
}

} // namespace flxk
