/* reduce.c — reductions over a set of axes: sum, mean, max, min, logsumexp, var, argmax.
 * One row (REDUCE) serves them all; attrs.reduce holds the kernel op (flx_reduce_op), the
 * normalised reduced axes (ascending), keepdims and the kernel parameter (the scale of SUM, so
 * mean is SUM with 1/N; the correction of VAR). Rules are built from public ops. */
#include <math.h>
#include <string.h>

#include "internal.h"

/* ---- axes ----------------------------------------------------------------------------------- */
/* Normalises (n_axes, axes) for x into a mask; n_axes == 0 selects every axis. */
static bool parse_axes(const char *name, const flx_tensor *x, int32_t n_axes, const int32_t *axes,
                       bool mask[FLX_MAX_DIMS]) {
    for (int32_t d = 0; d < FLX_MAX_DIMS; d++) mask[d] = false;
    if (n_axes < 0 || (n_axes > 0 && !axes)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad axis list (n_axes %d%s) for %s", name,
                      (int)n_axes, n_axes > 0 ? ", axes NULL" : "", flx_describe(x));
        return false;
    }
    if (n_axes == 0) {
        for (int32_t d = 0; d < x->ndim; d++) mask[d] = true;
        return true;
    }
    for (int32_t i = 0; i < n_axes; i++) {
        int32_t a = axes[i] < 0 ? axes[i] + x->ndim : axes[i];
        if (a < 0 || a >= x->ndim) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: axis %d is out of range for %s", name,
                          (int)axes[i], flx_describe(x));
            return false;
        }
        if (mask[a]) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: axis %d is listed twice (as %d) for %s",
                          name, (int)a, (int)axes[i], flx_describe(x));
            return false;
        }
        mask[a] = true;
    }
    return true;
}

/* Shape of x with the reduced axes set to 1 (the keepdims shape). */
static void keep_shape(const flx_tensor *node, int64_t *shape) {
    const flx_tensor *x = node->in[0];
    for (int32_t d = 0; d < x->ndim; d++) shape[d] = x->shape[d];
    for (int32_t i = 0; i < node->attrs.u.reduce.naxes; i++) shape[node->attrs.u.reduce.axes[i]] = 1;
}

/* Number of reduced elements of a reduce node. */
static int64_t reduced_count(const flx_tensor *node) {
    const flx_tensor *x = node->in[0];
    int64_t n = 1;
    for (int32_t i = 0; i < node->attrs.u.reduce.naxes; i++) n *= x->shape[node->attrs.u.reduce.axes[i]];
    return n;
}

/* Records a REDUCE node over the axes in mask (no validation beyond shapes). */
static flx_tensor *reduce_node(int32_t op, flx_tensor *x, const bool *mask, bool keepdims,
                               double param, flx_dtype odt) {
    flx_attrs at = {.u.reduce.op = op, .u.reduce.keepdims = keepdims, .u.reduce.param = param};
    int64_t shape[FLX_MAX_DIMS];
    int32_t nd = 0;
    for (int32_t d = 0; d < x->ndim; d++) {
        if (mask[d]) {
            at.u.reduce.axes[at.u.reduce.naxes++] = d;
            if (keepdims) shape[nd++] = 1;
        } else {
            shape[nd++] = x->shape[d];
        }
    }
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_REDUCE, odt, nd, shape, 1, &x, &at));
}

/* Public entry: validates and builds. param: correction for var (ignored otherwise). */
static flx_tensor *make_reduce(const char *name, int32_t op, bool mean, flx_tensor *x,
                               int32_t n_axes, const int32_t *axes, bool keepdims, double param) {
    if (!flx_check_inputs(name, 1, &x)) return NULL;
    bool is_float = flx_dtype_is_float(x->dtype);
    bool is_int = x->dtype == FLX_I32 || x->dtype == FLX_I64;
    bool dt_ok = is_float || (is_int && !mean && (op == FLX_REDUCE_SUM || op == FLX_REDUCE_MAX ||
                                                  op == FLX_REDUCE_MIN || op == FLX_REDUCE_ARGMAX));
    if (!dt_ok) {
        flx_set_error(FLX_ERR_DTYPE, "%s: unsupported dtype for %s (expects a float dtype%s)", name,
                      flx_describe(x),
                      (op == FLX_REDUCE_LSE || op == FLX_REDUCE_VAR || mean) ? "" : ", i32 or i64");
        return NULL;
    }
    bool mask[FLX_MAX_DIMS];
    if (!parse_axes(name, x, n_axes, axes, mask)) return NULL;
    int64_t n = 1;
    for (int32_t d = 0; d < x->ndim; d++)
        if (mask[d]) n *= x->shape[d];
    if (n == 0 && (op == FLX_REDUCE_MAX || op == FLX_REDUCE_MIN || op == FLX_REDUCE_LSE ||
                   op == FLX_REDUCE_ARGMAX)) {
        flx_set_error(FLX_ERR_SHAPE, "%s: cannot reduce an empty set of elements of %s", name,
                      flx_describe(x));
        return NULL;
    }
    if (mean) param = 1.0 / (double)n; /* n == 0: inf, and 0 * inf = NaN */
    if (op == FLX_REDUCE_VAR) {
        /* divisor max(0, N - correction); an empty set divides 0 by 0 (NaN) */
        if (n == 0 || param > (double)n) param = (double)n;
    }
    flx_dtype odt = op == FLX_REDUCE_ARGMAX ? FLX_I64 : x->dtype;
    return reduce_node(op, x, mask, keepdims, param, odt);
}

/* ---- exec ----------------------------------------------------------------------------------- */
static flx_status exec_reduce(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    const flx_tensor *x = t->in[0];
    flx_reduce_args a = {
        .op = t->attrs.u.reduce.op, .dtype = x->dtype, .param = t->attrs.u.reduce.param
    };
    int64_t strides[FLX_MAX_DIMS];
    flx_contiguous_strides(x->ndim, x->shape, strides);
    bool mask[FLX_MAX_DIMS] = {false};
    for (int32_t i = 0; i < t->attrs.u.reduce.naxes; i++) mask[t->attrs.u.reduce.axes[i]] = true;
    for (int32_t d = 0; d < x->ndim; d++) {
        if (mask[d]) {
            a.rshape[a.rdim] = x->shape[d];
            a.rstride[a.rdim++] = strides[d];
        } else {
            a.kshape[a.kdim] = x->shape[d];
            a.kstride[a.kdim++] = strides[d];
        }
    }
    a.x = in[0];
    a.out = out;
    return flx_kernel_reduce(t->ctx, &a);
}

/* ---- rules ---------------------------------------------------------------------------------- */
/* v * s, also for a non-finite s (flx_mul_scalar takes finite factors only). */
static flx_tensor *scale_by(flx_tensor *v, double s) {
    if (!v) return NULL;
    if (s == 1.0) return v;
    if (isfinite(s)) return flx_mul_scalar(v, s);
    return flx_mul(v, flx_scalar(v->ctx, v->dtype, s));
}

/* A tensor of the node's output layout reshaped to the keepdims shape (broadcastable to x). */
static flx_tensor *to_keep(flx_tensor *node, flx_tensor *v) {
    int64_t ks[FLX_MAX_DIMS];
    keep_shape(node, ks);
    if (v->ndim == node->in[0]->ndim && memcmp(v->shape, ks, sizeof(int64_t) * (size_t)v->ndim) == 0)
        return v;
    return flx_reshape(v, node->in[0]->ndim, ks);
}

/* Sum of v (shape of x) over the node's axes, in the node's output layout. */
static flx_tensor *sum_like(flx_tensor *node, flx_tensor *v) {
    if (!v) return NULL;
    bool mask[FLX_MAX_DIMS] = {false};
    for (int32_t i = 0; i < node->attrs.u.reduce.naxes; i++) mask[node->attrs.u.reduce.axes[i]] = true;
    return reduce_node(FLX_REDUCE_SUM, v, mask, node->attrs.u.reduce.keepdims, 1.0, v->dtype);
}

/* mask of the extreme elements (x == y) as the dtype, and its count in keepdims layout. */
static flx_tensor *tie_weights(flx_tensor *node) {
    flx_tensor *x = node->in[0];
    flx_tensor *mask = flx_cast(flx_eq(x, to_keep(node, node)), x->dtype);
    if (!mask) return NULL;
    bool m[FLX_MAX_DIMS] = {false};
    for (int32_t i = 0; i < node->attrs.u.reduce.naxes; i++) m[node->attrs.u.reduce.axes[i]] = true;
    flx_tensor *count = reduce_node(FLX_REDUCE_SUM, mask, m, true, 1.0, x->dtype);
    return flx_div(mask, count); /* each tied element's share, shape of x */
}

/* The per-element factor dy/dx_i (shape of x) for LSE and VAR. */
static flx_tensor *lse_factor(flx_tensor *node) {
    return flx_exp(flx_sub(node->in[0], to_keep(node, node)));
}

static double var_scale(flx_tensor *node) {
    double denom = (double)reduced_count(node) - node->attrs.u.reduce.param;
    return 2.0 / denom;
}

static flx_tensor *var_centered(flx_tensor *node) {
    flx_tensor *x = node->in[0];
    bool m[FLX_MAX_DIMS] = {false};
    for (int32_t i = 0; i < node->attrs.u.reduce.naxes; i++) m[node->attrs.u.reduce.axes[i]] = true;
    int64_t n = reduced_count(node);
    flx_tensor *mean = reduce_node(FLX_REDUCE_SUM, x, m, true, 1.0 / (double)n, x->dtype);
    return flx_sub(x, mean);
}

static flx_status vjp_reduce(flx_tensor *node, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *x = node->in[0];
    flx_tensor *r = NULL;
    if (x->numel == 0) {
        gin[0] = flx_zeros(x->ctx, x->dtype, x->ndim, x->shape);
        return flx_rule_status(gin[0]);
    }
    flx_tensor *gk = to_keep(node, g);
    switch ((flx_reduce_op)node->attrs.u.reduce.op) {
    case FLX_REDUCE_SUM:
        r = scale_by(flx_broadcast_to(gk, x->ndim, x->shape), node->attrs.u.reduce.param);
        break;
    case FLX_REDUCE_MAX:
    case FLX_REDUCE_MIN: r = flx_mul(gk, tie_weights(node)); break;
    case FLX_REDUCE_LSE: r = flx_mul(gk, lse_factor(node)); break;
    case FLX_REDUCE_VAR: r = scale_by(flx_mul(gk, var_centered(node)), var_scale(node)); break;
    case FLX_REDUCE_ARGMAX: return FLX_OK;
    }
    gin[0] = r;
    return flx_rule_status(r);
}

static flx_status jvp_reduce(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    flx_tensor *t = tin[0];
    if (!t || !flx_dtype_is_float(node->dtype)) return FLX_OK;
    flx_tensor *r = NULL;
    switch ((flx_reduce_op)node->attrs.u.reduce.op) {
    case FLX_REDUCE_SUM: {
        bool m[FLX_MAX_DIMS] = {false};
        for (int32_t i = 0; i < node->attrs.u.reduce.naxes; i++) m[node->attrs.u.reduce.axes[i]] = true;
        r = reduce_node(FLX_REDUCE_SUM, t, m, node->attrs.u.reduce.keepdims,
                        node->attrs.u.reduce.param, t->dtype);
        break;
    }
    case FLX_REDUCE_MAX:
    case FLX_REDUCE_MIN: r = sum_like(node, flx_mul(t, tie_weights(node))); break;
    case FLX_REDUCE_LSE: r = sum_like(node, flx_mul(t, lse_factor(node))); break;
    case FLX_REDUCE_VAR:
        if (node->in[0]->numel == 0) return FLX_OK;
        r = scale_by(sum_like(node, flx_mul(t, var_centered(node))), var_scale(node));
        break;
    case FLX_REDUCE_ARGMAX: return FLX_OK;
    }
    *tout = r;
    return flx_rule_status(r);
}

void flx_ops_register_reduce(flx_op_def *t) {
    t[FLX_OP_REDUCE] = (flx_op_def){"reduce", exec_reduce, vjp_reduce, jvp_reduce, 0};
}

/* ---- public ops ----------------------------------------------------------------------------- */
/* The sum of bools counts the true values, as an i64 (numpy's rule). */
static flx_tensor *sum_of_bool(const char *name, flx_tensor *x, int32_t n_axes,
                               const int32_t *axes, bool keepdims) {
    if (flx_scope_begin() != FLX_OK) return NULL;
    return flx_scope_return(make_reduce(name, FLX_REDUCE_SUM, false, flx_cast(x, FLX_I64), n_axes,
                                        axes, keepdims, 1.0));
}

static bool is_bool(const char *name, flx_tensor *x) {
    return x && flx_check_handle(name, x) && x->dtype == FLX_BOOL;
}

flx_tensor *flx_sum(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims) {
    if (is_bool("flx_sum", x)) return sum_of_bool("flx_sum", x, n_axes, axes, keepdims);
    return make_reduce("flx_sum", FLX_REDUCE_SUM, false, x, n_axes, axes, keepdims, 1.0);
}
flx_tensor *flx_mean(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims) {
    return make_reduce("flx_mean", FLX_REDUCE_SUM, true, x, n_axes, axes, keepdims, 1.0);
}
flx_tensor *flx_max(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims) {
    return make_reduce("flx_max", FLX_REDUCE_MAX, false, x, n_axes, axes, keepdims, 0.0);
}
flx_tensor *flx_min(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims) {
    return make_reduce("flx_min", FLX_REDUCE_MIN, false, x, n_axes, axes, keepdims, 0.0);
}
flx_tensor *flx_logsumexp(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims) {
    return make_reduce("flx_logsumexp", FLX_REDUCE_LSE, false, x, n_axes, axes, keepdims, 0.0);
}
flx_tensor *flx_var(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims,
                    int32_t correction) {
    if (x && correction < 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_var: correction must be >= 0, got %d for %s",
                      (int)correction, flx_describe(x));
        return NULL;
    }
    return make_reduce("flx_var", FLX_REDUCE_VAR, false, x, n_axes, axes, keepdims,
                       (double)correction);
}
flx_tensor *flx_argmax(flx_tensor *x, int32_t axis, bool keepdims) {
    if (!flx_check_inputs("flx_argmax", 1, &x)) return NULL;
    if (x->ndim == 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_argmax: axis %d is out of range for %s",
                      (int)axis, flx_describe(x));
        return NULL;
    }
    return make_reduce("flx_argmax", FLX_REDUCE_ARGMAX, false, x, 1, &axis, keepdims, 0.0);
}
flx_tensor *flx_sum_all(flx_tensor *x) {
    if (is_bool("flx_sum_all", x)) return sum_of_bool("flx_sum_all", x, 0, NULL, false);
    return make_reduce("flx_sum_all", FLX_REDUCE_SUM, false, x, 0, NULL, false, 1.0);
}
flx_tensor *flx_mean_all(flx_tensor *x) {
    return make_reduce("flx_mean_all", FLX_REDUCE_SUM, true, x, 0, NULL, false, 1.0);
}
