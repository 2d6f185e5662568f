/*
 * flx_unary_ops.h — the elementwise formulas, written once for both backends.
 *
 * X-macros over (NAME, expression). In an expression, x is the input value of type T, and a, b
 * are the op's scalar attributes (double). The CPU reference expands them with T = double
 * (every float dtype is computed in double there, then rounded); the CUDA kernels with T = float
 * or double, so f32 math stays in f32 on the GPU. FLX_HD marks functions for both compilers.
 */
#ifndef FLX_UNARY_OPS_H
#define FLX_UNARY_OPS_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FLX_HD __host__ __device__
#else
#define FLX_HD
#endif

/* Stable forms: sigmoid and softplus never overflow exp.
 * NaN: every formula gives NaN for a NaN operand (numpy semantics), written as x != x because
 * a comparison with NaN is false and would otherwise pick a branch (relu, sign, maximum); the
 * derivative helpers STEP and INSIDE give NaN too, so a NaN reaches the gradient as well. */
#define FLX_SIGMOID_EXPR(x) ((x) >= (T)0 ? (T)1 / ((T)1 + exp(-(x))) : exp(x) / ((T)1 + exp(x)))
#define FLX_SOFTPLUS_EXPR(x) ((x) > (T)0 ? (x) + log1p(exp(-(x))) : log1p(exp(x)))

#define FLX_UNARY_OPS(X)                                                         \
    X(NEG, -x)                                                                   \
    X(ABS, fabs(x))                                                              \
    X(SIGN, x != x ? x : (T)((x > (T)0) - (x < (T)0)))                           \
    X(SQUARE, x * x)                                                             \
    X(SQRT, sqrt(x))                                                             \
    X(RSQRT, (T)1 / sqrt(x))                                                     \
    X(RECIPROCAL, (T)1 / x)                                                      \
    X(EXP, exp(x))                                                               \
    X(LOG, log(x))                                                               \
    X(LOG1P, log1p(x))                                                           \
    X(SIN, sin(x))                                                               \
    X(COS, cos(x))                                                               \
    X(TANH, tanh(x))                                                             \
    X(COSH, cosh(x))                                                             \
    X(SINH, sinh(x))                                                             \
    X(ERF, erf(x))                                                               \
    X(SIGMOID, FLX_SIGMOID_EXPR(x))                                              \
    X(RELU, (x > (T)0 || x != x) ? x : (T)0)                                     \
    X(LEAKY_RELU, x > (T)0 ? x : (T)a * x)                                       \
    X(ELU, x > (T)0 ? x : (T)a * expm1(x))                                       \
    X(GELU, (T)0.5 * x * ((T)1 + erf(x * (T)0.70710678118654752440)))            \
    X(SOFTPLUS, FLX_SOFTPLUS_EXPR(x))                                            \
    X(POW, pow(x, (T)a))                                                         \
    X(CLAMP, x < (T)a ? (T)a : (x > (T)b ? (T)b : x))                            \
    X(AFFINE, (T)a * x + (T)b)                                                   \
    X(STEP, x > (T)0 ? (T)1 : (x != x ? x : (T)0))                               \
    X(INSIDE, (x > (T)a && x < (T)b) ? (T)1 : (x != x ? x : (T)0))

typedef enum flx_unary_op {
#define FLX_X_ENUM(NAME, EXPR) FLX_UNARY_##NAME,
    FLX_UNARY_OPS(FLX_X_ENUM)
#undef FLX_X_ENUM
    FLX_UNARY_COUNT
} flx_unary_op;

/* Binary formulas: a, b of type T. Compare ops produce 0/1 (stored as bool). */
#define FLX_BINARY_ARITH_OPS(X)                                                  \
    X(ADD, a + b)                                                                \
    X(SUB, a - b)                                                                \
    X(MUL, a * b)                                                                \
    X(DIV, a / b)                                                                \
    X(POW, pow(a, b))                                                            \
    X(MAXIMUM, (a >= b || a != a) ? a : b)                                       \
    X(MINIMUM, (a <= b || a != a) ? a : b)

#define FLX_BINARY_COMPARE_OPS(X)                                                \
    X(EQ, a == b)                                                                \
    X(NE, a != b)                                                                \
    X(LT, a < b)                                                                 \
    X(LE, a <= b)                                                                \
    X(GT, a > b)                                                                 \
    X(GE, a >= b)

typedef enum flx_binary_op {
#define FLX_X_ENUM(NAME, EXPR) FLX_BINARY_##NAME,
    FLX_BINARY_ARITH_OPS(FLX_X_ENUM)
    FLX_BINARY_COMPARE_OPS(FLX_X_ENUM)
#undef FLX_X_ENUM
    FLX_BINARY_COUNT
} flx_binary_op;

#define FLX_BINARY_IS_COMPARE(op) ((op) >= FLX_BINARY_EQ)

/* Float -> integer conversion, the same on both backends: truncation toward zero, saturated to
 * the integer's range, NaN -> 0 (what the GPU's conversion instruction does; a plain C cast of an
 * out-of-range value is undefined behaviour). */
static inline FLX_HD int64_t flx_f2i64(double v) {
    if (v != v) return 0;
    if (v >= 9223372036854775808.0) return INT64_MAX;
    if (v <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)v;
}
static inline FLX_HD int32_t flx_f2i32(double v) {
    if (v != v) return 0;
    if (v >= 2147483647.0) return INT32_MAX;
    if (v <= -2147483648.0) return INT32_MIN;
    return (int32_t)v;
}

#endif /* FLX_UNARY_OPS_H */
