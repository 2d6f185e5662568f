/* ops_unary.c — elementwise unary ops. One row (UNARY) serves them all; the formula is chosen by
 * attrs.unary.op (kernels/flx_unary_ops.h). Each op's derivative f'(x) is built from public ops,
 * and the same factor serves the VJP (g * f'(x)) and the JVP (t * f'(x)). */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "flx_unary_ops.h"

static const char *const unary_names[FLX_UNARY_COUNT] = {
    "flx_neg", "flx_abs", "flx_sign", "flx_square", "flx_sqrt", "flx_rsqrt", "flx_reciprocal",
    "flx_exp", "flx_log", "flx_log1p", "flx_sin", "flx_cos", "flx_tanh", "flx_cosh", "flx_sinh",
    "flx_erf", "flx_sigmoid", "flx_relu", "flx_leaky_relu", "flx_elu", "flx_gelu", "flx_softplus",
    "flx_pow_scalar", "flx_clamp", "flx_affine", "flx_unary_step", "flx_unary_inside"};
_Static_assert(sizeof unary_names / sizeof unary_names[0] == FLX_UNARY_COUNT,
               "one name per unary op, in the order of FLX_UNARY_OPS");

static flx_status exec_unary(flx_tensor *t) {
    flx_unary_args a = {t->attrs.u.unary.op, t->dtype, t->numel, t->attrs.u.unary.a,
                        t->attrs.u.unary.b, flx_data(t->in[0]), flx_data(t)};
    t->ctx->stats.kernels++;
    return t->ctx->be->unary(t->ctx, &a);
}

static flx_tensor *make_unary(int32_t op, flx_tensor *x, double a, double b) {
    if (!flx_check_inputs(unary_names[op], 1, &x)) return NULL;
    if (!flx_check_float(unary_names[op], x)) return NULL;
    flx_attrs at;
    memset(&at, 0, sizeof at);
    at.u.unary.op = op;
    at.u.unary.a = a;
    at.u.unary.b = b;
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_UNARY, x->dtype, x->ndim, x->shape, 1, &x, &at));
}

/* A rule's result: NULL from an op is a failure (a NULL that means "zero" never comes here), so
 * the status is the op's, never a stale error left on the thread by earlier code. */
static flx_tensor *checked(flx_tensor *r, flx_status *st) {
    if (!r) *st = flx_last_status() != FLX_OK ? flx_last_status()
                                              : flx_set_error(FLX_ERR_STATE, "unary rule failed");
    return r;
}

/* v * f'(x) for the node y = f(x); NULL result with FLX_OK status means zero. */
static flx_tensor *times_derivative(flx_tensor *node, flx_tensor *v, flx_status *st) {
    flx_tensor *x = node->in[0], *y = node;
    double a = node->attrs.u.unary.a, b = node->attrs.u.unary.b;
    flx_tensor *d = NULL; /* the factor f'(x), when it is a tensor */
    *st = FLX_OK;
    switch ((flx_unary_op)node->attrs.u.unary.op) {
    case FLX_UNARY_NEG: return checked(flx_neg(v), st);
    case FLX_UNARY_AFFINE: return checked(flx_mul_scalar(v, a), st);
    case FLX_UNARY_SIGN:
    case FLX_UNARY_STEP:
    case FLX_UNARY_INSIDE: return NULL;
    case FLX_UNARY_ABS: d = flx_sign(x); break;
    case FLX_UNARY_SQUARE: d = flx_mul_scalar(x, 2.0); break;
    case FLX_UNARY_SQRT: return checked(flx_div(flx_mul_scalar(v, 0.5), y), st);
    case FLX_UNARY_RSQRT: d = flx_mul_scalar(flx_pow_scalar(y, 3.0), -0.5); break;
    case FLX_UNARY_RECIPROCAL: d = flx_neg(flx_square(y)); break;
    case FLX_UNARY_EXP: d = y; break;
    case FLX_UNARY_LOG: return checked(flx_div(v, x), st);
    case FLX_UNARY_LOG1P: return checked(flx_div(v, flx_add_scalar(x, 1.0)), st);
    case FLX_UNARY_SIN: d = flx_cos(x); break;
    case FLX_UNARY_COS: d = flx_neg(flx_sin(x)); break;
    case FLX_UNARY_TANH: d = flx_affine(flx_square(y), -1.0, 1.0); break;
    case FLX_UNARY_COSH: d = flx_sinh(x); break;
    case FLX_UNARY_SINH: d = flx_cosh(x); break;
    case FLX_UNARY_ERF: /* 2/sqrt(pi) exp(-x^2) */
        d = flx_mul_scalar(flx_exp(flx_mul_scalar(flx_square(x), -1.0)), 1.1283791670955125739);
        break;
    case FLX_UNARY_SIGMOID: d = flx_mul(y, flx_affine(y, -1.0, 1.0)); break;
    case FLX_UNARY_RELU: d = flx_unary_step(x); break;
    case FLX_UNARY_LEAKY_RELU: d = flx_affine(flx_unary_step(x), 1.0 - a, a); break;
    case FLX_UNARY_ELU: /* step(x) (1 - (y + alpha)) + (y + alpha): 1 for x > 0, alpha e^x else */
        d = flx_add(flx_mul(flx_unary_step(x), flx_affine(y, -1.0, 1.0 - a)), flx_affine(y, 1.0, a));
        break;
    case FLX_UNARY_GELU: { /* Phi(x) + x phi(x) */
        flx_tensor *cdf = flx_affine(flx_erf(flx_mul_scalar(x, 0.70710678118654752440)), 0.5, 0.5);
        flx_tensor *pdf = flx_mul_scalar(flx_exp(flx_mul_scalar(flx_square(x), -0.5)),
                                         0.39894228040143267794);
        d = flx_add(cdf, flx_mul(x, pdf));
        break;
    }
    case FLX_UNARY_SOFTPLUS: d = flx_sigmoid(x); break;
    case FLX_UNARY_POW:
        if (a == 0.0) return NULL;
        d = flx_mul_scalar(flx_pow_scalar(x, a - 1.0), a);
        break;
    case FLX_UNARY_CLAMP: d = flx_unary_inside(x, a, b); break;
    case FLX_UNARY_COUNT: break;
    }
    (void)b;
    if (!d) return checked(NULL, st);
    return checked(flx_mul(v, d), st);
}

static flx_status vjp_unary(flx_tensor *node, flx_tensor *g, flx_tensor **gin) {
    flx_status st;
    gin[0] = times_derivative(node, g, &st);
    return st;
}

static flx_status jvp_unary(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    flx_status st = FLX_OK;
    *tout = tin[0] ? times_derivative(node, tin[0], &st) : NULL;
    return st;
}

void flx_ops_register_unary(flx_op_def *t) {
    t[FLX_OP_UNARY] = (flx_op_def){"unary", exec_unary, vjp_unary, jvp_unary, 0};
}

/* ---- public ops ----------------------------------------------------------------------------- */
/* Integer neg and abs are exact in integer arithmetic (the unary kernels compute in floating
 * point): 0 - x and where(x < 0, 0 - x, x) with the binary integer kernels, which wrap like
 * two's complement (neg of the most negative value is itself, as in numpy). */
static flx_tensor *int_neg_abs(flx_tensor *x, bool is_abs) {
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *zero = flx_scalar(x->ctx, x->dtype, 0.0);
    flx_tensor *r = flx_sub(zero, x);
    if (is_abs) r = flx_where(flx_lt(x, zero), r, x);
    return flx_scope_return(r);
}

flx_tensor *flx_neg(flx_tensor *x) {
    if (x && (x->dtype == FLX_I32 || x->dtype == FLX_I64) && flx_check_handle("flx_neg", x))
        return int_neg_abs(x, false);
    return make_unary(FLX_UNARY_NEG, x, 0, 0);
}
flx_tensor *flx_abs(flx_tensor *x) {
    if (x && (x->dtype == FLX_I32 || x->dtype == FLX_I64) && flx_check_handle("flx_abs", x))
        return int_neg_abs(x, true);
    return make_unary(FLX_UNARY_ABS, x, 0, 0);
}

#define FLX_UNARY_PLAIN(fn, OP) \
    flx_tensor *fn(flx_tensor *x) { return make_unary(FLX_UNARY_##OP, x, 0, 0); }
FLX_UNARY_PLAIN(flx_sign, SIGN)
FLX_UNARY_PLAIN(flx_square, SQUARE)
FLX_UNARY_PLAIN(flx_sqrt, SQRT)
FLX_UNARY_PLAIN(flx_rsqrt, RSQRT)
FLX_UNARY_PLAIN(flx_reciprocal, RECIPROCAL)
FLX_UNARY_PLAIN(flx_exp, EXP)
FLX_UNARY_PLAIN(flx_log, LOG)
FLX_UNARY_PLAIN(flx_log1p, LOG1P)
FLX_UNARY_PLAIN(flx_sin, SIN)
FLX_UNARY_PLAIN(flx_cos, COS)
FLX_UNARY_PLAIN(flx_tanh, TANH)
FLX_UNARY_PLAIN(flx_cosh, COSH)
FLX_UNARY_PLAIN(flx_sinh, SINH)
FLX_UNARY_PLAIN(flx_erf, ERF)
FLX_UNARY_PLAIN(flx_sigmoid, SIGMOID)
FLX_UNARY_PLAIN(flx_relu, RELU)
FLX_UNARY_PLAIN(flx_gelu, GELU)
FLX_UNARY_PLAIN(flx_softplus, SOFTPLUS)
FLX_UNARY_PLAIN(flx_unary_step, STEP)
#undef FLX_UNARY_PLAIN

flx_tensor *flx_unary_inside(flx_tensor *x, double lo, double hi) {
    return make_unary(FLX_UNARY_INSIDE, x, lo, hi);
}
flx_tensor *flx_leaky_relu(flx_tensor *x, double slope) {
    if (!isfinite(slope)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_leaky_relu: slope must be finite (got %g)", slope);
        return NULL;
    }
    return make_unary(FLX_UNARY_LEAKY_RELU, x, slope, 0);
}
flx_tensor *flx_elu(flx_tensor *x, double alpha) {
    if (!isfinite(alpha)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_elu: alpha must be finite (got %g)", alpha);
        return NULL;
    }
    return make_unary(FLX_UNARY_ELU, x, alpha, 0);
}
flx_tensor *flx_pow_scalar(flx_tensor *x, double p) {
    if (!isfinite(p)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_pow_scalar: exponent must be finite (got %g)", p);
        return NULL;
    }
    return make_unary(FLX_UNARY_POW, x, p, 0);
}
flx_tensor *flx_clamp(flx_tensor *x, double lo, double hi) {
    if (!(lo <= hi)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_clamp: needs lo <= hi (got %g, %g)", lo, hi);
        return NULL;
    }
    return make_unary(FLX_UNARY_CLAMP, x, lo, hi);
}
flx_tensor *flx_affine(flx_tensor *x, double a, double b) {
    if (!isfinite(a) || !isfinite(b)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_affine: a and b must be finite (got %g, %g)", a, b);
        return NULL;
    }
    return make_unary(FLX_UNARY_AFFINE, x, a, b);
}
flx_tensor *flx_mul_scalar(flx_tensor *x, double a) { return flx_affine(x, a, 0.0); }
flx_tensor *flx_add_scalar(flx_tensor *x, double b) { return flx_affine(x, 1.0, b); }
