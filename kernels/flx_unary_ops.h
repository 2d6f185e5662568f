/*
 * flx_unary_ops.h — the elementwise formulas and their derivatives, written once for both
 * backends and both modes of differentiation.
 *
 * FLX_UNARY_OPS: X(NAME, fn, KIND, formula, derivative), one line per op.
 *   fn          the public function (flx_<fn>), also the name in messages.
 *   KIND        PLAIN: flx_<fn>(x) is generated (runtime/ops/unary.c); PARAM: the op takes scalar
 *               attributes a, b and its builder, which validates them, is written by hand there;
 *               INT: the builder is written by hand there because it takes integer dtypes too
 *               (exact integer arithmetic instead of the formula).
 *   formula     over x, the input value of type T, and a, b, the op's scalar attributes (double).
 *               The CPU reference expands it with T = double (every float dtype is computed in
 *               double there, then rounded); the CUDA kernels with T = float or double, so f32
 *               math stays in f32 on the GPU. FLX_HD marks functions for both compilers.
 *   derivative  v * f'(x) for a tangent or cotangent v, built from public ops over the tensors
 *               x (input), y (output) and v, and the doubles a, b. It is expanded only by
 *               runtime/ops/unary.c, where it is both the VJP (v = g) and the JVP (v = t); since
 *               it is made of ops, it is differentiable in turn (every order works).
 *               FLX_D_MUL(d): v * d. FLX_D_EXPR(e): the expression e itself (a quotient, a
 *               scaling). FLX_D_ZERO: the derivative is zero (no tensor is built).
 *               Prefer the output y when that is cheaper (exp: y; tanh: 1 - y^2); indicator
 *               factors use the internal STEP / INSIDE ops.
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
/* gelu'(x) = Phi(x) + x phi(x) (a derivative column: tensors, public ops). */
#define FLX_GELU_DERIV(x)                                                                    \
    flx_add(flx_affine(flx_erf(flx_mul_scalar(x, 0.70710678118654752440)), 0.5, 0.5),       \
            flx_mul(x, flx_mul_scalar(flx_exp(flx_mul_scalar(flx_square(x), -0.5)),        \
                                      0.39894228040143267794)))

#define FLX_UNARY_OPS(X)                                                                          \
    X(NEG, neg, INT, -x, FLX_D_EXPR(flx_neg(v)))                                                \
    X(ABS, abs, INT, fabs(x), FLX_D_MUL(flx_sign(x)))                                           \
    X(SIGN, sign, PLAIN, x != x ? x : (T)((x > (T)0) - (x < (T)0)), FLX_D_ZERO)                   \
    X(SQUARE, square, PLAIN, x * x, FLX_D_MUL(flx_mul_scalar(x, 2.0)))                            \
    X(SQRT, sqrt, PLAIN, sqrt(x), FLX_D_EXPR(flx_div(flx_mul_scalar(v, 0.5), y)))                 \
    X(RSQRT, rsqrt, PLAIN, (T)1 / sqrt(x), FLX_D_MUL(flx_mul_scalar(flx_pow_scalar(y, 3.0), -0.5))) \
    X(RECIPROCAL, reciprocal, PLAIN, (T)1 / x, FLX_D_MUL(flx_neg(flx_square(y))))                 \
    X(EXP, exp, PLAIN, exp(x), FLX_D_MUL(y))                                                      \
    X(LOG, log, PLAIN, log(x), FLX_D_EXPR(flx_div(v, x)))                                         \
    X(LOG1P, log1p, PLAIN, log1p(x), FLX_D_EXPR(flx_div(v, flx_add_scalar(x, 1.0))))              \
    X(SIN, sin, PLAIN, sin(x), FLX_D_MUL(flx_cos(x)))                                             \
    X(COS, cos, PLAIN, cos(x), FLX_D_MUL(flx_neg(flx_sin(x))))                                    \
    X(TANH, tanh, PLAIN, tanh(x), FLX_D_MUL(flx_affine(flx_square(y), -1.0, 1.0)))                \
    X(COSH, cosh, PLAIN, cosh(x), FLX_D_MUL(flx_sinh(x)))                                         \
    X(SINH, sinh, PLAIN, sinh(x), FLX_D_MUL(flx_cosh(x)))                                         \
    X(ERF, erf, PLAIN, erf(x), /* 2/sqrt(pi) exp(-x^2) */                                         \
      FLX_D_MUL(flx_mul_scalar(flx_exp(flx_mul_scalar(flx_square(x), -1.0)), 1.1283791670955125739))) \
    X(SIGMOID, sigmoid, PLAIN, FLX_SIGMOID_EXPR(x), FLX_D_MUL(flx_mul(y, flx_affine(y, -1.0, 1.0)))) \
    X(RELU, relu, PLAIN, (x > (T)0 || x != x) ? x : (T)0, FLX_D_MUL(flx_unary_step(y)))           \
    X(LEAKY_RELU, leaky_relu, PARAM, x > (T)0 ? x : (T)a * x,                                     \
      FLX_D_MUL(flx_affine(flx_unary_step(x), 1.0 - a, a)))                                       \
    X(ELU, elu, PARAM, x > (T)0 ? x : (T)a * expm1(x), /* 1 for x > 0, alpha e^x else */          \
      FLX_D_MUL(flx_add(flx_mul(flx_unary_step(x), flx_affine(y, -1.0, 1.0 - a)), flx_affine(y, 1.0, a)))) \
    X(GELU, gelu, PLAIN, (T)0.5 * x * ((T)1 + erf(x * (T)0.70710678118654752440)),                \
      FLX_D_MUL(FLX_GELU_DERIV(x)))                                                               \
    X(SOFTPLUS, softplus, PLAIN, FLX_SOFTPLUS_EXPR(x), FLX_D_MUL(flx_sigmoid(x)))                 \
    X(POW, pow_scalar, PARAM, pow(x, (T)a),                                                       \
      a == 0.0 ? FLX_D_ZERO : FLX_D_MUL(flx_mul_scalar(flx_pow_scalar(x, a - 1.0), a)))           \
    X(CLAMP, clamp, PARAM, x < (T)a ? (T)a : (x > (T)b ? (T)b : x), FLX_D_MUL(flx_unary_inside(x, a, b))) \
    X(AFFINE, affine, PARAM, (T)a * x + (T)b, FLX_D_EXPR(flx_mul_scalar(v, a)))                   \
    X(STEP, unary_step, PLAIN, x > (T)0 ? (T)1 : (x != x ? x : (T)0), FLX_D_ZERO)                 \
    X(INSIDE, unary_inside, PARAM, (x > (T)a && x < (T)b) ? (T)1 : (x != x ? x : (T)0), FLX_D_ZERO)

typedef enum flx_unary_op {
#define FLX_X_ENUM(NAME, FN, KIND, EXPR, DERIV) FLX_UNARY_##NAME,
    FLX_UNARY_OPS(FLX_X_ENUM)
#undef FLX_X_ENUM
    FLX_UNARY_COUNT
} flx_unary_op;

/* Binary formulas: X(NAME, fn, formula) over a, b of type T; flx_<fn>(a, b) is the public op
 * (generated in runtime/ops/binary.c, where the partial derivatives live). Compare ops produce
 * 0/1 (stored as bool) and stay last (FLX_BINARY_IS_COMPARE). */
#define FLX_BINARY_ARITH_OPS(X)                                                  \
    X(ADD, add, a + b)                                                           \
    X(SUB, sub, a - b)                                                           \
    X(MUL, mul, a * b)                                                           \
    X(DIV, div, a / b)                                                           \
    X(POW, pow, pow(a, b))                                                       \
    X(MAXIMUM, maximum, (a >= b || a != a) ? a : b)                              \
    X(MINIMUM, minimum, (a <= b || a != a) ? a : b)

#define FLX_BINARY_COMPARE_OPS(X)                                                \
    X(EQ, eq, a == b)                                                            \
    X(NE, ne, a != b)                                                            \
    X(LT, lt, a < b)                                                             \
    X(LE, le, a <= b)                                                            \
    X(GT, gt, a > b)                                                             \
    X(GE, ge, a >= b)

typedef enum flx_binary_op {
#define FLX_X_ENUM(NAME, FN, EXPR) FLX_BINARY_##NAME,
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
