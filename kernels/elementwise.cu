// elementwise.cu — CUDA kernels of the fill, cast, unary, binary, where and fused-program families.
//
// Semantics follow the CPU reference (runtime/cpu/backend.c) exactly:
//   - fill computes each value in double (Philox stream of kernels/philox.h) and converts it to
//     the output dtype like the CPU's store(): float cast, truncation to integers saturated to
//     their range with NaN -> 0 (flx_f2i32/flx_f2i64 of flx_unary_ops.h), != 0 to bool;
//   - cast goes through int64 between integer/bool dtypes and through double otherwise;
//   - unary applies the formulas of kernels/flx_unary_ops.h with T = float for f32 (f32 stays
//     f32 on the GPU; results may differ from the CPU's double-then-round in the last ulp) and
//     T = double for f64;
//   - binary computes float dtypes in their own precision (+ - * / max min and compares are then
//     bit-identical to the CPU) and integers in int64 (wrapping like the CPU's int64 then cast);
//   - f16 and bf16 are loaded into f32, computed in f32 and rounded once (to nearest even) on
//     store (flxk::to_c / from_c). f32 carries 24 significand bits >= 2p + 2 for both formats
//     (p = 11 and 8), so + - * / computed in f32 and rounded again are exactly the correctly
//     rounded results the CPU gets from double; the transcendental formulas are within a few f32
//     ulps (~2^-22 relative) of exact before the rounding to 2^-11 / 2^-8, so they can differ
//     from the CPU by at most one ulp of the 16-bit format (only when the exact value lies within
//     that distance of a rounding boundary). fill and cast round from double once.
// All kernels use 64-bit indices and grid-stride loops; contiguous operands take a flat
// (vectorised where 16-byte aligned) path. n == 0 launches nothing.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <type_traits>

#include "cuda_common.cuh"
#include "flx_half.h"
#include "flx_kernels.h"
#include "flx_unary_ops.h"
#include "philox.h"

using flxk::kBlock;
using flxk::Space;

namespace {

// ---- conversions like the CPU's store()/load() ---------------------------------------------
template <typename D> __device__ __forceinline__ D from_double(double v) { return (D)v; }
template <> __device__ __forceinline__ uint8_t from_double<uint8_t>(double v) { return v != 0; }
template <> __device__ __forceinline__ int32_t from_double<int32_t>(double v) { return flx_f2i32(v); }
template <> __device__ __forceinline__ int64_t from_double<int64_t>(double v) { return flx_f2i64(v); }
template <> __device__ __forceinline__ __half from_double<__half>(double v) { return flxk::from_d<__half>(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) {
    return flxk::from_d<__nv_bfloat16>(v);
}

template <typename D> __device__ __forceinline__ D from_int64(int64_t v) { return (D)v; }
template <> __device__ __forceinline__ uint8_t from_int64<uint8_t>(int64_t v) { return v != 0; }

template <typename T> struct is_float_t { static constexpr bool value = false; };
template <> struct is_float_t<float> { static constexpr bool value = true; };
template <> struct is_float_t<double> { static constexpr bool value = true; };
template <> struct is_float_t<__half> { static constexpr bool value = true; };
template <> struct is_float_t<__nv_bfloat16> { static constexpr bool value = true; };

using flxk::compute_t;
using flxk::from_c;
using flxk::to_c;

// ---- fill -------------------------------------------------------------------------------------
template <typename T>
__global__ void fill_kernel(flx_fill_args a, int is64) {
    T *out = (T *)a.out;
    const uint64_t stream = a.run ? (uint64_t)*a.run : 0;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += stride) {
        double v = 0;
        switch (a.kind) {
        case FLX_FILL_CONST: v = a.a; break;
        /* __dadd_rn/__dmul_rn: no FMA contraction, so values round exactly as on the CPU */
        case FLX_FILL_IOTA: v = __dadd_rn(a.a, __dmul_rn((double)i, a.b)); break;
        case FLX_FILL_EYE: v = a.cols > 0 && (i / a.cols) == (i % a.cols); break;
        case FLX_FILL_UNIFORM: {
            double u = flx_philox_uniform((uint64_t)i, stream, a.seed, is64);
            v = __dadd_rn(a.a, __dmul_rn(a.b - a.a, u));
            if (v >= a.b && a.b > a.a) v = a.a; /* rounding must not reach hi (as on the CPU) */
            break;
        }
        case FLX_FILL_NORMAL: v = __dadd_rn(a.a, __dmul_rn(a.b, flx_philox_normal((uint64_t)i, stream, a.seed))); break;
        }
        out[i] = from_double<T>(v);
        if constexpr (std::is_same<T, float>::value) {
            if (a.kind == FLX_FILL_UNIFORM) out[i] = flx_uniform_f32_below_hi(v, a.a, a.b);
        }
        if constexpr (flxk::is_half16<T>::value) {
            /* a uniform draw that rounded up to hi steps one value down, as on the CPU */
            if (a.kind == FLX_FILL_UNIFORM && a.b > a.a && flxk::to_d<T>(out[i]) >= a.b) {
                uint16_t bits;
                memcpy(&bits, &out[i], sizeof bits);
                bits = flx_half_next_down(bits);
                T h;
                memcpy(&h, &bits, sizeof h);
                out[i] = flxk::to_d<T>(h) < a.a ? from_double<T>(a.a) : h;
            }
        }
    }
}

// ---- cast -------------------------------------------------------------------------------------
template <typename S, typename D>
__global__ void cast_kernel(const S *src, D *dst, int64_t n) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if constexpr (!is_float_t<S>::value && !is_float_t<D>::value)
            dst[i] = from_int64<D>((int64_t)src[i]);
        else
            dst[i] = from_double<D>(flxk::to_d<S>(src[i]));
    }
}

template <typename S>
int cast_from(const flx_cast_args *a, cudaStream_t st) {
    return flxk::with_dtype<flxk::kAny>(a->dst_dtype, [&](auto t) {
        using D = typename decltype(t)::type;
        cast_kernel<S, D><<<flxk::grid_for(a->n), kBlock, 0, st>>>((const S *)a->src, (D *)a->dst, a->n);
        return flxk::launch_status();
    });
}

// ---- unary ------------------------------------------------------------------------------------
template <typename T, int OP> struct UnaryF;
#define FLX_X_UNARY(NAME, FN, KIND, EXPR, DERIV)                                                    \
    template <typename T> struct UnaryF<T, FLX_UNARY_##NAME> {                     \
        __device__ __forceinline__ static T f(T x, double a, double b) {           \
            (void)a;                                                               \
            (void)b;                                                               \
            return (T)(EXPR);                                                      \
        }                                                                          \
    };
FLX_UNARY_OPS(FLX_X_UNARY)
#undef FLX_X_UNARY

// f(x) for a stored element: computed in compute_t<T> (f32 for the 16-bit types), rounded once.
template <typename T, int OP>
__device__ __forceinline__ T unary_apply(T x, double a, double b) {
    return from_c<T>(UnaryF<compute_t<T>, OP>::f(to_c<T>(x), a, b));
}

template <typename T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };

template <typename T, int OP>
__global__ void unary_kernel(const T *x, T *y, int64_t n, double a, double b, int vec) {
    constexpr int N = 16 / sizeof(T);
    int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t start = 0;
    if (vec) {
        int64_t nv = n / N;
        const Vec<T, N> *xv = (const Vec<T, N> *)x;
        Vec<T, N> *yv = (Vec<T, N> *)y;
        for (int64_t i = tid; i < nv; i += stride) {
            Vec<T, N> v = xv[i];
#pragma unroll
            for (int k = 0; k < N; k++) v.v[k] = unary_apply<T, OP>(v.v[k], a, b);
            yv[i] = v;
        }
        start = nv * N;
    }
    for (int64_t i = start + tid; i < n; i += stride) y[i] = unary_apply<T, OP>(x[i], a, b);
}

template <typename T>
int unary_launch(const flx_unary_args *a, cudaStream_t st) {
    const T *x = (const T *)a->x;
    T *y = (T *)a->y;
    int vec = ((uintptr_t)x % 16 == 0) && ((uintptr_t)y % 16 == 0);
    int64_t work = vec ? (a->n + (16 / sizeof(T)) - 1) / (16 / sizeof(T)) : a->n;
    unsigned grid = flxk::grid_for(work);
    switch (a->op) {
#define FLX_X_CASE(NAME, FN, KIND, EXPR, DERIV)                                                                    \
    case FLX_UNARY_##NAME:                                                                        \
        unary_kernel<T, FLX_UNARY_##NAME><<<grid, kBlock, 0, st>>>(x, y, a->n, a->a, a->b, vec); \
        break;
        FLX_UNARY_OPS(FLX_X_CASE)
#undef FLX_X_CASE
    default: return (int)cudaErrorInvalidValue;
    }
    return flxk::launch_status();
}

// ---- binary -----------------------------------------------------------------------------------
// Float formulas from the X-macro in T; integer formulas in int64 as on the CPU (div/pow guarded
// so a zero divisor cannot trap: the public API takes neither for integers).
template <typename T, int OP> struct BinF;
#define FLX_X_BIN(NAME, FN, EXPR)                                                      \
    template <typename T> struct BinF<T, FLX_BINARY_##NAME> {                      \
        __device__ __forceinline__ static T f(T a, T b) { return (T)(EXPR); }      \
    };
FLX_BINARY_ARITH_OPS(FLX_X_BIN)
#undef FLX_X_BIN
#define FLX_X_CMP(NAME, FN, EXPR)                                                      \
    template <typename T> struct BinF<T, FLX_BINARY_##NAME> {                      \
        __device__ __forceinline__ static uint8_t f(T a, T b) { return (uint8_t)(EXPR); } \
    };
FLX_BINARY_COMPARE_OPS(FLX_X_CMP)
#undef FLX_X_CMP

template <int OP> struct IntF {
    __device__ __forceinline__ static int64_t f(int64_t a, int64_t b) {
        switch (OP) {
        case FLX_BINARY_ADD: return (int64_t)((uint64_t)a + (uint64_t)b);
        case FLX_BINARY_SUB: return (int64_t)((uint64_t)a - (uint64_t)b);
        case FLX_BINARY_MUL: return (int64_t)((uint64_t)a * (uint64_t)b);
        case FLX_BINARY_DIV: return b == 0 ? 0 : (b == -1 ? (int64_t)(0 - (uint64_t)a) : a / b);
        case FLX_BINARY_POW: return (int64_t)pow((double)a, (double)b);
        case FLX_BINARY_MAXIMUM: return a >= b ? a : b;
        case FLX_BINARY_MINIMUM: return a <= b ? a : b;
        case FLX_BINARY_EQ: return a == b;
        case FLX_BINARY_NE: return a != b;
        case FLX_BINARY_LT: return a < b;
        case FLX_BINARY_LE: return a <= b;
        case FLX_BINARY_GT: return a > b;
        case FLX_BINARY_GE: return a >= b;
        }
        return 0;
    }
};

// Result type of op OP on inputs T: uint8 for compares, T otherwise.
template <typename T, int OP> struct BinOut { typedef T type; };
#define FLX_X_OUT(NAME, FN, EXPR) \
    template <typename T> struct BinOut<T, FLX_BINARY_##NAME> { typedef uint8_t type; };
FLX_BINARY_COMPARE_OPS(FLX_X_OUT)
#undef FLX_X_OUT

template <typename T, int OP>
__device__ __forceinline__ typename BinOut<T, OP>::type bin_apply(T a, T b) {
    if constexpr (flxk::is_half16<T>::value) {
        if constexpr (FLX_BINARY_IS_COMPARE(OP)) return BinF<float, OP>::f(to_c<T>(a), to_c<T>(b));
        else return from_c<T>(BinF<float, OP>::f(to_c<T>(a), to_c<T>(b)));
    } else if constexpr (is_float_t<T>::value) {
        return BinF<T, OP>::f(a, b);
    } else {
        return (typename BinOut<T, OP>::type)IntF<OP>::f((int64_t)a, (int64_t)b);
    }
}

template <typename T, int OP>
__global__ void binary_strided(Space s, const T *a, const T *b, typename BinOut<T, OP>::type *out,
                               int64_t n) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int64_t off[2];
        flxk::offsets<2>(s, i, off);
        out[i] = bin_apply<T, OP>(a[off[0]], b[off[1]]);
    }
}

template <typename T, int OP>
__global__ void binary_contig(const T *a, const T *b, typename BinOut<T, OP>::type *out, int64_t n,
                              int vec) {
    typedef typename BinOut<T, OP>::type O;
    constexpr int N = 16 / sizeof(T);
    int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t start = 0;
    if (vec) {
        int64_t nv = n / N;
        const Vec<T, N> *av = (const Vec<T, N> *)a;
        const Vec<T, N> *bv = (const Vec<T, N> *)b;
        for (int64_t i = tid; i < nv; i += stride) {
            Vec<T, N> x = av[i], y = bv[i];
            Vec<O, N> r;
#pragma unroll
            for (int k = 0; k < N; k++) r.v[k] = bin_apply<T, OP>(x.v[k], y.v[k]);
            ((Vec<O, N> *)out)[i] = r;
        }
        start = nv * N;
    }
    for (int64_t i = start + tid; i < n; i += stride) out[i] = bin_apply<T, OP>(a[i], b[i]);
}

template <typename T, int OP>
int binary_launch_op(const Space &s, const flx_binary_args *ar, int64_t n, cudaStream_t st) {
    typedef typename BinOut<T, OP>::type O;
    const T *a = (const T *)ar->a;
    const T *b = (const T *)ar->b;
    O *out = (O *)ar->out;
    if (s.ndim == 1 && s.st[0][0] == 1 && s.st[1][0] == 1) {
        constexpr int N = 16 / sizeof(T);
        int vec = (uintptr_t)a % 16 == 0 && (uintptr_t)b % 16 == 0 &&
                  (uintptr_t)out % (sizeof(O) * N) == 0;
        unsigned grid = flxk::grid_for(vec ? (n + N - 1) / N : n);
        binary_contig<T, OP><<<grid, kBlock, 0, st>>>(a, b, out, n, vec);
    } else {
        binary_strided<T, OP><<<flxk::grid_for(n), kBlock, 0, st>>>(s, a, b, out, n);
    }
    return flxk::launch_status();
}

template <typename T>
int binary_launch(const Space &s, const flx_binary_args *ar, int64_t n, cudaStream_t st) {
    switch (ar->op) {
#define FLX_X_CASE(NAME, FN, EXPR) \
    case FLX_BINARY_##NAME: return binary_launch_op<T, FLX_BINARY_##NAME>(s, ar, n, st);
        FLX_BINARY_ARITH_OPS(FLX_X_CASE)
        FLX_BINARY_COMPARE_OPS(FLX_X_CASE)
#undef FLX_X_CASE
    default: return (int)cudaErrorInvalidValue;
    }
}

// ---- where ------------------------------------------------------------------------------------
template <typename E>
__global__ void where_kernel(Space s, const uint8_t *cond, const E *a, const E *b, E *out,
                             int64_t n) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int64_t off[3];
        flxk::offsets<3>(s, i, off);
        out[i] = cond[off[0]] ? a[off[1]] : b[off[2]];
    }
}

// ---- fused programs (format in flx_kernels.h, planning in runtime/core/fuse.c) -----------
// Each thread runs the program over FV consecutive elements at once, so an instruction is
// decoded once per FV elements and contiguous inputs are read with one vector load. The slots
// are indexed only with compile-time constants (the unrolled select loops below), so they stay
// in registers instead of spilling to local memory. Each instruction applies the same per-op
// formula (UnaryF / BinF) as the unfused kernels, so results match them bit for bit.
constexpr int FV = 1;

template <typename T>
__device__ __forceinline__ void slot_get(const T (&r)[FLX_FUSED_MAX_SLOTS][FV], int s, T (&x)[FV]) {
#pragma unroll
    for (int q = 0; q < FLX_FUSED_MAX_SLOTS; q++)
        if (q == s) {
#pragma unroll
            for (int l = 0; l < FV; l++) x[l] = r[q][l];
        }
}

template <typename T>
__device__ __forceinline__ void slot_put(T (&r)[FLX_FUSED_MAX_SLOTS][FV], int s, const T (&x)[FV]) {
#pragma unroll
    for (int q = 0; q < FLX_FUSED_MAX_SLOTS; q++)
        if (q == s) {
#pragma unroll
            for (int l = 0; l < FV; l++) r[q][l] = x[l];
        }
}

// The kernel's parameters. cudaLaunchKernel copies the whole parameter block on every launch
// (and a captured graph keeps one per node), so the common launch passes a compact form:
// FusedSmall<R, NI> holds up to R dims and NI instructions, 32-bit sizes and strides, and each
// dim's FastDiv, so strided offsets divide in 32 bits instead of a 64-bit division per dim. It
// serves every program of fewer than 2^31 elements whose strides fit in 32 bits (offsets are
// still summed in 64 bits); anything larger runs on flx_fused_args itself (64-bit divisions).
// Both name their fields as flx_fused_args does, so one kernel body reads either.
template <int R, int NI> struct FusedSmall {
    int32_t ndim, n_instr;
    int32_t n;
    uint8_t in_bool[FLX_FUSED_MAX_IN];
    uint8_t in_kind[FLX_FUSED_MAX_IN];
    uint32_t shape[R];
    flxk::FastDiv fd[R];
    int32_t in_strides[FLX_FUSED_MAX_IN][R];
    const void *in[FLX_FUSED_MAX_IN];
    void *out;
    flx_fused_instr instr[NI];
};

// Offset of element i in input k; *inner gets i's index along the innermost dimension.
template <int R, int NI>
__device__ __forceinline__ int64_t fused_offset(const FusedSmall<R, NI> &a, int k, int64_t i,
                                                int64_t *inner) {
    int64_t off = 0;
    *inner = i;
    uint32_t j = (uint32_t)i;
    for (int d = a.ndim - 1; d >= 1; d--) {
        uint32_t q = flxk::fastdiv(j, a.fd[d]);
        uint32_t r = j - q * a.shape[d];
        if (d == a.ndim - 1) *inner = r;
        off += (int64_t)r * a.in_strides[k][d];
        j = q;
    }
    return off + (int64_t)j * a.in_strides[k][0];
}

__device__ __forceinline__ int64_t fused_offset(const flx_fused_args &a, int k, int64_t i,
                                                int64_t *inner) {
    int64_t off = 0;
    *inner = i;
    for (int d = a.ndim - 1; d >= 1; d--) {
        int64_t q = i / a.shape[d];
        int64_t r = i - q * a.shape[d];
        if (d == a.ndim - 1) *inner = r;
        off += r * a.in_strides[k][d];
        i = q;
    }
    return off + i * a.in_strides[k][0];
}

// Input k's elements i0 .. i0 + m - 1, stored as S, as compute values (exact).
template <typename S, typename P>
__device__ __forceinline__ void fused_load(const P &a, int k, int64_t i0, int m,
                                           compute_t<S> (&o)[FV]) {
    typedef compute_t<S> T;
    const void *p = a.in[k];
    // Offsets of the FV elements: one division chain for the first; the others step along the
    // innermost dimension unless they cross a row (then they divide again).
    int64_t off[FV];
    if (a.in_kind[k] == FLX_FUSED_IN_STRIDED) {
        int64_t r0;
        off[0] = fused_offset(a, k, i0, &r0);
        const int64_t inner = a.shape[a.ndim - 1], step = a.in_strides[k][a.ndim - 1];
#pragma unroll
        for (int l = 1; l < FV; l++) {
            int64_t r;
            off[l] = r0 + l < inner ? off[0] + l * step : fused_offset(a, k, i0 + l, &r);
        }
    }
    if (a.in_bool[k]) {
#pragma unroll
        for (int l = 0; l < FV; l++) {
            int64_t of = a.in_kind[k] == FLX_FUSED_IN_CONTIG ? i0 + l
                       : a.in_kind[k] == FLX_FUSED_IN_SCALAR ? 0 : off[l];
            o[l] = l < m ? (T)((const uint8_t *)p)[of] : (T)0;
        }
        return;
    }
    const S *x = (const S *)p;
    switch (a.in_kind[k]) {
    case FLX_FUSED_IN_CONTIG:
        if (m == FV && (uintptr_t)(x + i0) % sizeof(Vec<S, FV>) == 0) {
            Vec<S, FV> v = *(const Vec<S, FV> *)(x + i0);
#pragma unroll
            for (int l = 0; l < FV; l++) o[l] = to_c<S>(v.v[l]);
        } else {
#pragma unroll
            for (int l = 0; l < FV; l++) o[l] = l < m ? to_c<S>(x[i0 + l]) : (T)0;
        }
        break;
    case FLX_FUSED_IN_SCALAR: {
        T v = to_c<S>(x[0]);
#pragma unroll
        for (int l = 0; l < FV; l++) o[l] = v;
        break;
    }
    default:
#pragma unroll
        for (int l = 0; l < FV; l++) o[l] = l < m ? to_c<S>(x[off[l]]) : (T)0;
    }
}

template <typename T>
__device__ __forceinline__ void fused_unary(int op, double fa, double fb, T (&x)[FV]) {
    switch (op) {
#define FLX_X_CASE(NAME, FN, KIND, EXPR, DERIV)                                                     \
    case FLX_UNARY_##NAME:                                                         \
        _Pragma("unroll") for (int l = 0; l < FV; l++) x[l] = UnaryF<T, FLX_UNARY_##NAME>::f(x[l], fa, fb); \
        break;
        FLX_UNARY_OPS(FLX_X_CASE)
#undef FLX_X_CASE
    default: break;
    }
}

template <typename T>
__device__ __forceinline__ void fused_binary(int op, T (&x)[FV], const T (&y)[FV]) {
    switch (op) {
#define FLX_X_CASE(NAME, FN, EXPR)                                                     \
    case FLX_BINARY_##NAME:                                                        \
        _Pragma("unroll") for (int l = 0; l < FV; l++) x[l] = BinF<T, FLX_BINARY_##NAME>::f(x[l], y[l]); \
        break;
        FLX_BINARY_ARITH_OPS(FLX_X_CASE)
#undef FLX_X_CASE
    default: break;
    }
}

// Registers bounded for occupancy: f32 at 64 (4 blocks of 256 threads per SM: 50 %), f64 at 80
// (3 blocks: 37.5 %). Neither spills with FV = 1 (sm_90: f32 56, f64 70 registers); FV = 4 took
// 102 / over 128 registers (25 % / 12.5 % occupancy) and FV = 2 spilled under these bounds. One
// element per pass costs an instruction decode per element, well inside the ~100 instructions
// per element a memory-bound f32 chain can spend at copy bandwidth.
// f16/bf16 programs compute in f32 (the f32 bound) and round each instruction's result to the
// storage type (flxk::round_c), so a fused chain gives the same bits as the unfused kernels, which
// round on every store.
template <typename T> struct FusedMinBlocks { static constexpr int value = 4; };
template <> struct FusedMinBlocks<double> { static constexpr int value = 3; };

template <typename S, typename P>
__global__ void __launch_bounds__(kBlock, FusedMinBlocks<compute_t<S>>::value)
    fused_kernel(const __grid_constant__ P a) {
    typedef compute_t<S> T;
    const int64_t nv = (a.n + FV - 1) / FV;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int out_slot = a.instr[a.n_instr - 1].dst;
    for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nv; v += stride) {
        const int64_t i0 = v * FV;
        const int m = (int64_t)a.n - i0 < FV ? (int)((int64_t)a.n - i0) : FV;
        T r[FLX_FUSED_MAX_SLOTS][FV];
#pragma unroll
        for (int q = 0; q < FLX_FUSED_MAX_SLOTS; q++)
#pragma unroll
            for (int l = 0; l < FV; l++) r[q][l] = (T)0;
        for (int pc = 0; pc < a.n_instr; pc++) {
            const flx_fused_instr &I = a.instr[pc];
            T x[FV], y[FV], z[FV];
            switch (I.kind) {
            case FLX_FUSED_LOAD: fused_load<S>(a, I.op, i0, m, x); break;
            case FLX_FUSED_UNARY:
                slot_get(r, I.s0, x);
                fused_unary<T>(I.op, I.a, I.b, x);
#pragma unroll
                for (int l = 0; l < FV; l++) x[l] = flxk::round_c<S>(x[l]);
                break;
            case FLX_FUSED_BINARY:
                slot_get(r, I.s0, x);
                slot_get(r, I.s1, y);
                fused_binary<T>(I.op, x, y);
#pragma unroll
                for (int l = 0; l < FV; l++) x[l] = flxk::round_c<S>(x[l]);
                break;
            default: /* WHERE */
                slot_get(r, I.s0, z);
                slot_get(r, I.s1, x);
                slot_get(r, I.s2, y);
#pragma unroll
                for (int l = 0; l < FV; l++) x[l] = z[l] != (T)0 ? x[l] : y[l];
            }
            slot_put(r, I.dst, x);
        }
        T o[FV];
        slot_get(r, out_slot, o);
        S *out = (S *)a.out;
        if (m == FV && (uintptr_t)(out + i0) % sizeof(Vec<S, FV>) == 0) {
            Vec<S, FV> w;
#pragma unroll
            for (int l = 0; l < FV; l++) w.v[l] = from_c<S>(o[l]);
            *(Vec<S, FV> *)(out + i0) = w;
        } else {
            for (int l = 0; l < m; l++) out[i0 + l] = from_c<S>(o[l]);
        }
    }
}

// Packs a into the compact form when it fits (see FusedSmall); false when it does not.
template <int R, int NI> bool fused_pack(const flx_fused_args *a, FusedSmall<R, NI> &L) {
    const int64_t lim = (int64_t)1 << 31;
    if (a->ndim > R || a->n_instr > NI || a->n >= lim) return false;
    L.ndim = a->ndim;
    L.n_instr = a->n_instr;
    L.n = (int32_t)a->n;
    for (int d = 0; d < R; d++) {
        const int64_t sz = d < a->ndim ? a->shape[d] : 1;
        if (sz <= 0 || sz >= lim) return false;
        L.shape[d] = (uint32_t)sz;
        L.fd[d] = flxk::fastdiv_make((uint32_t)sz);
    }
    for (int k = 0; k < FLX_FUSED_MAX_IN; k++) {
        const bool live = k < a->n_in;
        L.in_bool[k] = live ? a->in_bool[k] : 0;
        L.in_kind[k] = live ? a->in_kind[k] : (uint8_t)FLX_FUSED_IN_CONTIG;
        L.in[k] = live ? a->in[k] : nullptr;
        for (int d = 0; d < R; d++) {
            /* only strided inputs read their strides */
            const int64_t st = live && a->in_kind[k] == FLX_FUSED_IN_STRIDED && d < a->ndim
                                   ? a->in_strides[k][d] : 0;
            if (st >= lim || st < -lim) return false;
            L.in_strides[k][d] = (int32_t)st;
        }
    }
    L.out = a->out;
    for (int pc = 0; pc < a->n_instr; pc++) L.instr[pc] = a->instr[pc];
    return true;
}

template <typename S, int R, int NI>
bool fused_launch_small(const flx_fused_args *a, unsigned grid, cudaStream_t st) {
    FusedSmall<R, NI> L;
    if (!fused_pack(a, L)) return false;
    fused_kernel<S, FusedSmall<R, NI>><<<grid, kBlock, 0, st>>>(L);
    return true;
}

// The smallest compact form that holds a, else the full one.
template <typename S> void fused_launch(const flx_fused_args *a, unsigned grid, cudaStream_t st) {
    bool done;
    if (a->n_instr <= 8)
        done = a->ndim <= 2 ? fused_launch_small<S, 2, 8>(a, grid, st)
             : a->ndim <= 4 ? fused_launch_small<S, 4, 8>(a, grid, st)
                            : fused_launch_small<S, FLX_MAX_DIMS, 8>(a, grid, st);
    else
        done = a->ndim <= 2 ? fused_launch_small<S, 2, FLX_FUSED_MAX_INSTR>(a, grid, st)
             : a->ndim <= 4 ? fused_launch_small<S, 4, FLX_FUSED_MAX_INSTR>(a, grid, st)
                            : fused_launch_small<S, FLX_MAX_DIMS, FLX_FUSED_MAX_INSTR>(a, grid, st);
    if (!done) fused_kernel<S, flx_fused_args><<<grid, kBlock, 0, st>>>(*a);
}

} // namespace

// ---- C launch functions ---------------------------------------------------------------------
extern "C" int flx_cuda_fill(const flx_fill_args *a, void *stream) {
    if (a->n <= 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    const int is64 = a->dtype == FLX_F64;
    return flxk::with_dtype<flxk::kAny>(a->dtype, [&](auto t) {
        fill_kernel<typename decltype(t)::type><<<flxk::grid_for(a->n), kBlock, 0, st>>>(*a, is64);
        return flxk::launch_status();
    });
}

extern "C" int flx_cuda_cast(const flx_cast_args *a, void *stream) {
    if (a->n <= 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    return flxk::with_dtype<flxk::kAny>(a->src_dtype,
                                        [&](auto t) { return cast_from<typename decltype(t)::type>(a, st); });
}

extern "C" int flx_cuda_unary(const flx_unary_args *a, void *stream) {
    if (a->n <= 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    return flxk::with_dtype<flxk::kFloat>(a->dtype, [&](auto t) {
        return unary_launch<typename decltype(t)::type>(a, st);
    });
}

extern "C" int flx_cuda_binary(const flx_binary_args *ar, void *stream) {
    Space s;
    const int64_t n = flxk::space_of(s, ar->ndim, ar->shape, {ar->sa, ar->sb});
    if (n <= 0) return n < 0 ? (int)cudaErrorInvalidValue : 0;
    cudaStream_t st = (cudaStream_t)stream;
    return flxk::with_dtype<flxk::kNumeric>(
        ar->dtype, [&](auto t) { return binary_launch<typename decltype(t)::type>(s, ar, n, st); });
}

extern "C" int flx_cuda_where(const flx_where_args *ar, void *stream) {
    Space s;
    const int64_t n = flxk::space_of(s, ar->ndim, ar->shape, {ar->sc, ar->sa, ar->sb});
    if (n <= 0) return n < 0 ? (int)cudaErrorInvalidValue : 0;
    cudaStream_t st = (cudaStream_t)stream;
    return flxk::with_size(flx_dtype_size(ar->dtype), [&](auto t) {
        using E = typename decltype(t)::type;
        where_kernel<E><<<flxk::grid_for(n), kBlock, 0, st>>>(s, ar->cond, (const E *)ar->a, (const E *)ar->b,
                                                              (E *)ar->out, n);
        return flxk::launch_status();
    });
}

extern "C" int flx_cuda_fused(const flx_fused_args *a, void *stream) {
    if (a->n <= 0) return 0;
    if (a->n_instr < 1 || a->n_instr > FLX_FUSED_MAX_INSTR || a->ndim < 1 || a->ndim > FLX_MAX_DIMS ||
        a->n_in < 0 || a->n_in > FLX_FUSED_MAX_IN)
        return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)stream;
    unsigned grid = flxk::grid_for((a->n + FV - 1) / FV);
    return flxk::with_dtype<flxk::kFloat>(a->dtype, [&](auto t) {
        fused_launch<typename decltype(t)::type>(a, grid, st);
        return flxk::launch_status();
    });
}
