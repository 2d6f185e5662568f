/* unary.c — elementwise unary ops. One row (UNARY) serves them all; the formula is chosen by
 * attrs.unary.op. Everything per op comes from one line of FLX_UNARY_OPS
 * (kernels/flx_unary_ops.h): its name, its builder when it has no scalar attributes, and its
 * derivative v * f'(x), built from public ops, which serves the VJP (v = g) and the JVP (v = t). */
#include <math.h>
#include <string.h>

#include "internal.h"
#include "flx_unary_ops.h"

static const char *const unary_names[FLX_UNARY_COUNT] = {
#define FLX_X_NAME(NAME, FN, KIND, EXPR, DERIV) "flx_" #FN,
    FLX_UNARY_OPS(FLX_X_NAME)
#undef FLX_X_NAME
};

static flx_status exec_unary(const flx_tensor *t, void *out, const void *const *in) {
    flx_unary_args a = {t->attrs.u.unary.op, t->dtype, t->numel, t->attrs.u.unary.a,
                        t->attrs.u.unary.b, in[0], out};
    return flx_kernel_unary(t->ctx, &a);
}

static flx_tensor *make_unary(int32_t op, flx_tensor *x, double a, double b) {
    if (!flx_check_inputs(unary_names[op], 1, &x)) return NULL;
    if (!flx_check_float(unary_names[op], x)) return NULL;
    flx_attrs at = {.u.unary.op = op, .u.unary.a = a, .u.unary.b = b};
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_UNARY, x->dtype, x->ndim, x->shape, 1, &x, &at));
}

/* A rule's result: NULL from an op is a failure (a NULL that means "zero" never comes here), so
 * the status is the op's, never a stale error left on the thread by earlier code. */
static flx_tensor *checked(flx_tensor *r, flx_status *st) {
    if (!r) *st = flx_rule_status(r);
    return r;
}

/* v * d, or a failure when d could not be built. */
static flx_tensor *times(flx_tensor *v, flx_tensor *d, flx_status *st) {
    return checked(d ? flx_mul(v, d) : NULL, st);
}

/* v * f'(x) for the node y = f(x), from the derivative column of FLX_UNARY_OPS; NULL result
 * with FLX_OK status means zero. */
static flx_tensor *times_derivative(flx_tensor *node, flx_tensor *v, flx_status *st) {
    flx_tensor *x = node->in[0], *y = node;
    double a = node->attrs.u.unary.a, b = node->attrs.u.unary.b;
    (void)x, (void)y, (void)a, (void)b;
    *st = FLX_OK;
#define FLX_D_MUL(d) times(v, (d), st)
#define FLX_D_EXPR(e) checked((e), st)
#define FLX_D_ZERO ((flx_tensor *)NULL)
    switch ((flx_unary_op)node->attrs.u.unary.op) {
#define FLX_X_DERIV(NAME, FN, KIND, EXPR, DERIV) \
    case FLX_UNARY_##NAME: return DERIV;
        FLX_UNARY_OPS(FLX_X_DERIV)
#undef FLX_X_DERIV
    case FLX_UNARY_COUNT: break;
    }
#undef FLX_D_MUL
#undef FLX_D_EXPR
#undef FLX_D_ZERO
    return checked(NULL, st);
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
/* Ops without scalar attributes: generated from the list. */
#define FLX_UNARY_DEF_PLAIN(NAME, FN) \
    flx_tensor *flx_##FN(flx_tensor *x) { return make_unary(FLX_UNARY_##NAME, x, 0, 0); }
#define FLX_UNARY_DEF_PARAM(NAME, FN)
#define FLX_UNARY_DEF_INT(NAME, FN)
#define FLX_X_DEF(NAME, FN, KIND, EXPR, DERIV) FLX_UNARY_DEF_##KIND(NAME, FN)
FLX_UNARY_OPS(FLX_X_DEF)
#undef FLX_X_DEF
#undef FLX_UNARY_DEF_PLAIN
#undef FLX_UNARY_DEF_PARAM
#undef FLX_UNARY_DEF_INT

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

flx_tensor *flx_unary_inside(flx_tensor *x, double lo, double hi) {
    return make_unary(FLX_UNARY_INSIDE, x, lo, hi);
}
/* A unary op with one parameter v that must be finite (named what in the message). */
static flx_tensor *unary_finite(const char *fn, const char *what, int32_t op, flx_tensor *x,
                                double v) {
    if (!isfinite(v)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s must be finite (got %g)", fn, what, v);
        return NULL;
    }
    return make_unary(op, x, v, 0);
}
flx_tensor *flx_leaky_relu(flx_tensor *x, double slope) {
    return unary_finite("flx_leaky_relu", "slope", FLX_UNARY_LEAKY_RELU, x, slope);
}
flx_tensor *flx_elu(flx_tensor *x, double alpha) {
    return unary_finite("flx_elu", "alpha", FLX_UNARY_ELU, x, alpha);
}
flx_tensor *flx_pow_scalar(flx_tensor *x, double p) {
    return unary_finite("flx_pow_scalar", "exponent", FLX_UNARY_POW, x, p);
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
