/* higher_order.c — Hessian-vector products, Jacobians and Hessians of functions given as
 * callbacks (flx_fn), built only from flx_grad_of and flx_jvp: every op's rules are graph ops,
 * so the results are lazy graph tensors too (device work only on a CUDA context) and can be
 * differentiated again.
 *
 * HVP: forward-over-reverse computes g = grad f (create_graph) and then the JVP of g along u;
 * reverse-over-reverse differentiates <g, u> again. Both give H u exactly (the seeds' identity
 * H u = grad <grad f, u>); forward-over-reverse records fewer nodes (one tangent per node of g
 * instead of a second reverse sweep over g's graph and f's).
 *
 * Jacobian and Hessian are for small problems: one JVP or VJP per column or row, each a separate
 * graph, stacked into one tensor. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Leaves to differentiate at: an input that requires grad is used as is (so the result stays
 * differentiable with respect to it); any other gets a leaf copy of its value. */
static flx_status make_leaves(const char *fn, int32_t n, flx_tensor *const *inputs, flx_tensor **xs) {
    for (int32_t j = 0; j < n; j++) {
        flx_tensor *x = inputs[j];
        if (!x) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: input %d is NULL", fn, (int)j);
        if (!flx_check_handle(fn, x)) return flx_last_status();
        if (!flx_dtype_is_float(x->dtype))
            return flx_set_error(FLX_ERR_DTYPE, "%s: input %d %s must have a float dtype", fn, (int)j,
                                 flx_describe(x));
        if (j > 0 && x->ctx != inputs[0]->ctx)
            return flx_set_error(FLX_ERR_DEVICE, "%s: input %d %s is on another context than input 0",
                                 fn, (int)j, flx_describe(x));
        if (x->requires_grad) {
            xs[j] = x;
            continue;
        }
        xs[j] = flx_detach(x);
        if (!xs[j]) return flx_last_status();
        flx_status s = flx_set_requires_grad(xs[j], true);
        if (s != FLX_OK) return s;
    }
    return FLX_OK;
}

/* Calls f and checks its result: a float tensor of the inputs' context (one element if scalar). */
static flx_tensor *call_f(const char *fn, flx_fn f, void *user, int32_t n, flx_tensor *const *xs,
                          bool scalar) {
    flx_tensor *y = f(n, xs, user);
    if (!y) {
        flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: f returned NULL", fn);
        return NULL;
    }
    if (y->ctx != xs[0]->ctx || !flx_dtype_is_float(y->dtype) || (scalar && y->numel != 1)) {
        flx_set_error(FLX_ERR_SHAPE, "%s: f must return %s float tensor on the inputs' context, got %s",
                      fn, scalar ? "a one-element" : "a", flx_describe(y));
        return NULL;
    }
    return y;
}

static flx_status hvp_core(flx_fn f, void *user, int32_t n, flx_tensor *const *inputs,
                           flx_tensor *const *u, flx_hvp_mode mode, bool create_graph,
                           flx_tensor **out) {
    const char *fn = "flx_hvp";
    flx_tensor **xs = (flx_tensor **)calloc((size_t)n * 3, sizeof *xs);
    if (!xs) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    flx_tensor **g = xs + n, **us = xs + 2 * n;
    flx_status s = make_leaves(fn, n, inputs, xs);
    for (int32_t j = 0; j < n && s == FLX_OK; j++) {
        flx_tensor *x = inputs[j], *v = u[j];
        if (!v) {
            us[j] = flx_zeros(x->ctx, x->dtype, x->ndim, x->shape);
            if (!us[j]) s = flx_last_status();
        } else if (v->ctx != x->ctx || v->dtype != x->dtype || v->ndim != x->ndim ||
                   memcmp(v->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim) != 0) {
            s = flx_set_error(FLX_ERR_SHAPE, "%s: u[%d] %s does not match input %s", fn, (int)j,
                              flx_describe(v), flx_describe(x));
        } else {
            us[j] = v;
        }
    }
    flx_tensor *y = s == FLX_OK ? call_f(fn, f, user, n, xs, true) : NULL;
    if (s == FLX_OK && !y) s = flx_last_status();
    if (s == FLX_OK && !y->requires_grad) {
        /* f does not depend on its inputs: H = 0 */
        for (int32_t j = 0; j < n && s == FLX_OK; j++) {
            out[j] = flx_zeros(xs[j]->ctx, xs[j]->dtype, xs[j]->ndim, xs[j]->shape);
            if (!out[j]) s = flx_last_status();
        }
        free(xs);
        return s;
    }
    if (s == FLX_OK) s = flx_grad_of(1, &y, NULL, n, xs, true, g);
    if (s == FLX_OK && mode == FLX_HVP_FORWARD_OVER_REVERSE) {
        if (!create_graph) flx_no_grad_begin();
        s = flx_jvp(n, xs, us, n, g, out);
        if (!create_graph) flx_no_grad_end();
    } else if (s == FLX_OK) {
        flx_tensor *dot = NULL;
        for (int32_t j = 0; j < n && s == FLX_OK; j++) {
            flx_tensor *gj = g[j];
            if (gj->dtype != us[j]->dtype) gj = flx_cast(gj, us[j]->dtype);
            flx_tensor *term = flx_sum_all(flx_mul(gj, us[j]));
            dot = dot ? flx_add(dot, term) : term;
            if (!dot) s = flx_last_status();
        }
        if (s == FLX_OK && !dot->requires_grad) {
            /* the gradient does not depend on the inputs (f is linear): H = 0 */
            for (int32_t j = 0; j < n && s == FLX_OK; j++) {
                out[j] = flx_zeros(xs[j]->ctx, xs[j]->dtype, xs[j]->ndim, xs[j]->shape);
                if (!out[j]) s = flx_last_status();
            }
        } else if (s == FLX_OK) {
            s = flx_grad_of(1, &dot, NULL, n, xs, create_graph, out);
        }
    }
    free(xs);
    return s;
}

flx_status flx_hvp(flx_fn f, void *user, int32_t n_in, flx_tensor *const *inputs,
                   flx_tensor *const *u, flx_hvp_mode mode, bool create_graph,
                   flx_tensor **hvp_out) {
    if (!hvp_out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_hvp: hvp_out is NULL");
    for (int32_t j = 0; j < n_in && inputs; j++) hvp_out[j] = NULL;
    if (!f) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_hvp: f is NULL");
    if (n_in <= 0 || !inputs || !u)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                             "flx_hvp: needs at least one input and the list u (n_in %d)", (int)n_in);
    if (mode != FLX_HVP_FORWARD_OVER_REVERSE && mode != FLX_HVP_REVERSE_OVER_REVERSE)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_hvp: unknown mode %d", (int)mode);
    flx_status s = flx_scope_begin();
    if (s != FLX_OK) return s;
    s = hvp_core(f, user, n_in, inputs, u, mode, create_graph, hvp_out);
    flx_scope_end(s == FLX_OK ? n_in : 0, hvp_out);
    if (s != FLX_OK)
        for (int32_t j = 0; j < n_in; j++) hvp_out[j] = NULL;
    return s;
}

/* Unit vector k of x's shape (one-hot of the flat index). */
static flx_tensor *basis(flx_tensor *like, int64_t k) {
    int64_t n = like->numel;
    flx_tensor *idx = flx_scalar(like->ctx, FLX_I64, (double)k);
    flx_tensor *e = flx_one_hot(idx, n, like->dtype); /* (n) */
    return e ? flx_reshape(e, like->ndim, like->shape) : NULL;
}

/* Stacks n tensors of one shape S along a new axis (0 for rows, last for columns) and reshapes
 * to (lead..., tail...). */
static flx_tensor *stack_to(int64_t n, flx_tensor **parts, int32_t axis, int32_t nd,
                            const int64_t *shape) {
    flx_tensor *st;
    if (n == 0) return NULL;
    int64_t m = parts[0]->numel;
    flx_tensor **flat = (flx_tensor **)calloc((size_t)n, sizeof *flat);
    if (!flat) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "jacobian: out of host memory");
        return NULL;
    }
    for (int64_t k = 0; k < n; k++) {
        flat[k] = flx_reshape(parts[k], 1, &m);
        if (!flat[k]) {
            free(flat);
            return NULL;
        }
    }
    st = flx_stack((int32_t)n, flat, axis);
    free(flat);
    return st ? flx_reshape(st, nd, shape) : NULL;
}

/* shape = a.shape + b.shape; false if too many dims. */
static bool cat_shape(const char *fn, const flx_tensor *a, const flx_tensor *b, int64_t *shape, int32_t *nd) {
    if (a->ndim + b->ndim > FLX_MAX_DIMS) {
        flx_set_error(FLX_ERR_SHAPE, "%s: result would have %d dims (more than %d): %s and %s", fn,
                      (int)(a->ndim + b->ndim), FLX_MAX_DIMS, flx_describe(a), flx_describe(b));
        return false;
    }
    for (int32_t d = 0; d < a->ndim; d++) shape[d] = a->shape[d];
    for (int32_t d = 0; d < b->ndim; d++) shape[a->ndim + d] = b->shape[d];
    *nd = a->ndim + b->ndim;
    return true;
}

/* Jacobian of y (built from leaf x) with respect to x: columns by JVPs or rows by VJPs. */
static flx_status jacobian_of(const char *fn, flx_tensor *x, flx_tensor *y, bool prefer_columns,
                              flx_tensor **out) {
    int64_t shape[FLX_MAX_DIMS];
    int32_t nd;
    if (!cat_shape(fn, y, x, shape, &nd)) return flx_last_status();
    int64_t n = x->numel, m = y->numel;
    if (n == 0 || m == 0 || !y->requires_grad) {
        *out = flx_zeros(x->ctx, y->dtype, nd, shape);
        return flx_rule_status(*out);
    }
    if (n > INT32_MAX || m > INT32_MAX)
        return flx_set_error(FLX_ERR_UNSUPPORTED, "%s: too large (%s, %s): for small problems",
                             fn, flx_describe(y), flx_describe(x));
    bool columns = prefer_columns ? n <= m : n < m;
    int64_t count = columns ? n : m;
    flx_tensor **parts = (flx_tensor **)calloc((size_t)count, sizeof *parts);
    if (!parts) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    flx_status s = FLX_OK;
    for (int64_t k = 0; k < count && s == FLX_OK; k++) {
        if (columns) {
            flx_tensor *e = basis(x, k);
            s = e ? flx_jvp(1, &x, &e, 1, &y, &parts[k]) : flx_last_status();
        } else {
            flx_tensor *e = basis(y, k);
            s = e ? flx_grad_of(1, &y, &e, 1, &x, true, &parts[k]) : flx_last_status();
            if (s == FLX_OK && parts[k]->dtype != y->dtype) parts[k] = flx_cast(parts[k], y->dtype);
        }
    }
    if (s == FLX_OK) {
        /* columns: (m) each -> stack on the last axis -> (m, n); rows: (n) each -> (m, n) */
        *out = stack_to(count, parts, columns ? 1 : 0, nd, shape);
        if (!*out) s = flx_last_status();
    }
    free(parts);
    return s;
}

/* The start of flx_jacobian and flx_hessian: checks out (named out_name, cleared first), f and
 * x, then opens the scope the caller ends (only when this returns FLX_OK). */
static flx_status begin_single(const char *fn, flx_fn f, flx_tensor *x, flx_tensor **out,
                               const char *out_name) {
    if (!out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, out_name);
    *out = NULL;
    if (!f) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: f is NULL", fn);
    if (!x) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: x is NULL", fn);
    if (!flx_check_handle(fn, x)) return flx_last_status();
    return flx_scope_begin();
}

/* x's leaf copy *xl and *y = f(*xl) (scalar: y must be a scalar). */
static flx_status leaf_and_call(const char *fn, flx_fn f, void *user, flx_tensor *x, bool scalar,
                                flx_tensor **xl, flx_tensor **y) {
    flx_status s = make_leaves(fn, 1, &x, xl);
    if (s == FLX_OK && !(*y = call_f(fn, f, user, 1, xl, scalar))) s = flx_last_status();
    return s;
}

flx_status flx_jacobian(flx_fn f, void *user, flx_tensor *x, flx_tensor **jac_out) {
    const char *fn = "flx_jacobian";
    flx_status s = begin_single(fn, f, x, jac_out, "jac_out");
    if (s != FLX_OK) return s;
    flx_tensor *xl = NULL, *y = NULL;
    s = leaf_and_call(fn, f, user, x, false, &xl, &y);
    if (s == FLX_OK) s = jacobian_of(fn, xl, y, true, jac_out);
    flx_scope_end(s == FLX_OK ? 1 : 0, jac_out);
    if (s != FLX_OK) *jac_out = NULL;
    return s;
}

flx_status flx_hessian(flx_fn f, void *user, flx_tensor *x, flx_tensor **hess_out) {
    const char *fn = "flx_hessian";
    flx_status s = begin_single(fn, f, x, hess_out, "hess_out");
    if (s != FLX_OK) return s;
    flx_tensor *xl = NULL, *y = NULL, *g = NULL;
    s = leaf_and_call(fn, f, user, x, true, &xl, &y);
    if (s == FLX_OK && !y->requires_grad) {
        int64_t shape[FLX_MAX_DIMS];
        int32_t nd;
        if (!cat_shape(fn, xl, xl, shape, &nd)) s = flx_last_status();
        else if (!(*hess_out = flx_zeros(xl->ctx, xl->dtype, nd, shape))) s = flx_last_status();
    } else if (s == FLX_OK) {
        s = flx_grad_of(1, &y, NULL, 1, &xl, true, &g);
        /* H = d g / d x: square, so columns by JVPs of g (forward-over-reverse). */
        if (s == FLX_OK) s = jacobian_of(fn, xl, g, true, hess_out);
    }
    flx_scope_end(s == FLX_OK ? 1 : 0, hess_out);
    if (s != FLX_OK) *hess_out = NULL;
    return s;
}
