/* nn.c — neural-network layers composed from public ops: linear, batch norm,
 * layer norm, dropout, embedding, the losses (mse, binary log-loss from logits, log-cosh, hinge)
 * and the recurrent cells (Elman, GRU). Each public function checks its arguments (naming the
 * function, shapes and dtypes), then builds its graph inside a private scope and keeps only the
 * result, like ops_linalg.c: the ops it uses carry the VJP/JVP rules and kernels, so every
 * derivative order and both backends come for free. Formulas are in include/fluxion/fluxion.h. */
#include <math.h>
#include <string.h>

#include "internal.h"

/* ---- helpers ------------------------------------------------------------------------------ */
static bool same_dtype_all(const char *op, int32_t n, flx_tensor *const *t, const char *const *names) {
    for (int32_t i = 1; i < n; i++) {
        if (!t[i] || t[i]->dtype == t[0]->dtype) continue;
        flx_set_error(FLX_ERR_DTYPE, "%s: dtypes differ: %s %s and %s %s", op, names[0],
                      flx_describe(t[0]), names[i], flx_describe(t[i]));
        return false;
    }
    return true;
}

/* 1-d of length n (or NULL, accepted). */
static bool check_vec(const char *op, const char *what, const flx_tensor *v, int64_t n) {
    if (!v) return true;
    if (v->ndim == 1 && v->shape[0] == n) return true;
    flx_set_error(FLX_ERR_SHAPE, "%s: %s must be 1-d of length %lld, got %s", op, what,
                  (long long)n, flx_describe(v));
    return false;
}

/* Inputs list without NULL optional entries, for flx_check_inputs. */
static int32_t compact(int32_t n, flx_tensor *const *in, flx_tensor **out) {
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++)
        if (in[i]) out[k++] = in[i];
    return k;
}

/* ---- linear --------------------------------------------------------------------------------- */
flx_tensor *flx_linear(flx_tensor *x, flx_tensor *W, flx_tensor *b) {
    static const char *op = "flx_linear";
    flx_tensor *in[3] = {x, W, b};
    static const char *names[3] = {"x", "W", "b"};
    if (!flx_check_inputs(op, b ? 3 : 2, in)) return NULL;
    if (!flx_check_float(op, x) || !same_dtype_all(op, 3, in, names)) return NULL;
    if (W->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != W->shape[1]) {
        flx_set_error(FLX_ERR_SHAPE,
                      "%s: needs x (..., in) and W (out, in) with matching in, got x %s and W %s",
                      op, flx_describe(x), flx_describe(W));
        return NULL;
    }
    if (!check_vec(op, "b", b, W->shape[0])) return NULL;
    if (flx_scope_begin() != FLX_OK) return NULL;
    /* x W^T through the transpose flag: no copy of W^T, and dW comes out in W's layout. */
    flx_tensor *y = x->ndim >= 2 ? flx_matmul_bt(x, W) : flx_matmul(x, flx_transpose(W, 0, 1));
    if (b) y = flx_add(y, b);
    return flx_scope_return(y);
}

/* ---- normalisation -------------------------------------------------------------------------- */
/* v in the compute dtype of the norms (f32 for f16/bf16 inputs: a mean and a variance in 8 bits
 * lose the small deviations to cancellation); NULL stays NULL. The cast is an op, so gradients
 * return to each tensor's own dtype. */
static flx_tensor *in_compute(flx_tensor *v) { return v ? flx_cast(v, flx_dtype_compute(v->dtype)) : NULL; }

/* (1, C, 1, ..., 1) view of a (C) vector for broadcasting against rank nd. */
static flx_tensor *chan_view(flx_tensor *v, int32_t nd) {
    int64_t s[FLX_MAX_DIMS];
    for (int32_t d = 0; d < nd; d++) s[d] = 1;
    s[1] = v->shape[0];
    return flx_reshape(v, nd, s);
}

flx_tensor *flx_batch_norm(flx_tensor *x, flx_tensor *gamma, flx_tensor *beta,
                           flx_tensor *running_mean, flx_tensor *running_var, bool training,
                           double momentum, double eps, flx_tensor **new_running_mean,
                           flx_tensor **new_running_var) {
    static const char *op = "flx_batch_norm";
    if (new_running_mean) *new_running_mean = NULL;
    if (new_running_var) *new_running_var = NULL;
    flx_tensor *all[5] = {x, gamma, beta, running_mean, running_var};
    static const char *names[5] = {"x", "gamma", "beta", "running_mean", "running_var"};
    if (!x) return flx_check_inputs(op, 1, &x), NULL;
    flx_tensor *in[5];
    int32_t n = compact(5, all, in);
    if (!flx_check_inputs(op, n, in)) return NULL;
    if (!flx_check_float(op, x) || !same_dtype_all(op, 5, all, names)) return NULL;
    if (x->ndim < 2) {
        flx_set_error(FLX_ERR_SHAPE, "%s: x must be (N, C) or (N, C, ...), got %s", op,
                      flx_describe(x));
        return NULL;
    }
    int64_t C = x->shape[1];
    for (int i = 1; i < 5; i++)
        if (!check_vec(op, names[i], all[i], C)) return NULL;
    if (!(eps > 0) || !isfinite(eps) || !(momentum >= 0 && momentum <= 1)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs eps > 0 and momentum in [0, 1], got %g, %g",
                      op, eps, momentum);
        return NULL;
    }
    int64_t count = C > 0 ? x->numel / C : 0;
    if (!training && (!running_mean || !running_var)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: eval mode needs running_mean and running_var", op);
        return NULL;
    }
    if (training && count <= 1) {
        flx_set_error(FLX_ERR_SHAPE, "%s: training needs more than one value per channel, x is %s",
                      op, flx_describe(x));
        return NULL;
    }
    bool want_stats = training && running_mean && running_var && (new_running_mean || new_running_var);
    if (flx_scope_begin() != FLX_OK) return NULL;
    int32_t nd = x->ndim, axes[FLX_MAX_DIMS], na = 0;
    for (int32_t d = 0; d < nd; d++)
        if (d != 1) axes[na++] = d;
    const flx_dtype dt = x->dtype;
    flx_tensor *xc = in_compute(x), *rm = in_compute(running_mean), *rv = in_compute(running_var);
    flx_tensor *mu, *var;
    if (training) {
        mu = flx_mean(xc, na, axes, true);
        var = flx_var(xc, na, axes, true, 0);
    } else {
        mu = chan_view(rm, nd);
        var = chan_view(rv, nd);
    }
    flx_tensor *rstd = flx_rsqrt(flx_add_scalar(var, eps));
    flx_tensor *gv = gamma ? chan_view(in_compute(gamma), nd) : NULL;
    flx_tensor *bv = beta ? chan_view(in_compute(beta), nd) : NULL;
    flx_tensor *y;
    if (training) {
        /* The value from detached inputs, the derivatives from the node's closed-form rules
         * (runtime/ops/batch_norm.c); the same ops as below, so the same bits. */
        flx_no_grad_begin();
        y = flx_mul(flx_sub(flx_detach(xc), flx_detach(mu)), flx_detach(rstd));
        if (gv) y = flx_mul(y, flx_detach(gv));
        if (bv) y = flx_add(y, flx_detach(bv));
        flx_no_grad_end();
        y = flx_batch_norm_node(y, xc, mu, rstd, gv, bv);
    } else {
        y = flx_mul(flx_sub(xc, mu), rstd);
        if (gv) y = flx_mul(y, gv);
        if (bv) y = flx_add(y, bv);
    }
    y = flx_cast(y, dt);
    flx_tensor *keep[3] = {y, NULL, NULL};
    int32_t nk = 1;
    if (y && want_stats) {
        int64_t cs[1] = {C};
        flx_tensor *m1 = flx_reshape(flx_detach(mu), 1, cs);
        flx_tensor *v1 = flx_reshape(flx_detach(var), 1, cs);
        v1 = flx_mul_scalar(v1, (double)count / (double)(count - 1));
        flx_tensor *nm = flx_add(flx_mul_scalar(rm, 1.0 - momentum), flx_mul_scalar(m1, momentum));
        flx_tensor *nv = flx_add(flx_mul_scalar(rv, 1.0 - momentum), flx_mul_scalar(v1, momentum));
        /* Stats are state, not part of any gradient path. */
        nm = flx_detach(flx_cast(nm, dt));
        nv = flx_detach(flx_cast(nv, dt));
        if (!nm || !nv) y = NULL;
        if (y) {
            if (new_running_mean) keep[nk++] = nm;
            if (new_running_var) keep[nk++] = nv;
        }
    }
    if (!y) {
        flx_scope_end(0, NULL);
        return NULL;
    }
    flx_scope_end(nk, keep);
    nk = 1;
    if (want_stats && new_running_mean) *new_running_mean = keep[nk++];
    if (want_stats && new_running_var) *new_running_var = keep[nk++];
    return y;
}

flx_tensor *flx_layer_norm(flx_tensor *x, int32_t n_norm, flx_tensor *gamma, flx_tensor *beta,
                           double eps) {
    static const char *op = "flx_layer_norm";
    flx_tensor *all[3] = {x, gamma, beta};
    static const char *names[3] = {"x", "gamma", "beta"};
    if (!x) return flx_check_inputs(op, 1, &x), NULL;
    flx_tensor *in[3];
    if (!flx_check_inputs(op, compact(3, all, in), in)) return NULL;
    if (!flx_check_float(op, x) || !same_dtype_all(op, 3, all, names)) return NULL;
    if (n_norm < 1 || n_norm > x->ndim) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: n_norm %d must be in [1, %d] for x %s", op,
                      (int)n_norm, (int)x->ndim, flx_describe(x));
        return NULL;
    }
    if (!(eps > 0) || !isfinite(eps)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs eps > 0, got %g", op, eps);
        return NULL;
    }
    const int64_t *ns = x->shape + (x->ndim - n_norm);
    for (int i = 1; i < 3; i++) {
        flx_tensor *p = all[i];
        if (!p) continue;
        if (p->ndim != n_norm || memcmp(p->shape, ns, sizeof(int64_t) * (size_t)n_norm) != 0) {
            flx_set_error(FLX_ERR_SHAPE, "%s: %s %s must have the shape %s of the last %d axes of x %s",
                          op, names[i], flx_describe(p), flx_shape_str(n_norm, ns), (int)n_norm,
                          flx_describe(x));
            return NULL;
        }
    }
    if (flx_scope_begin() != FLX_OK) return NULL;
    int32_t axes[FLX_MAX_DIMS];
    for (int32_t i = 0; i < n_norm; i++) axes[i] = x->ndim - n_norm + i;
    flx_tensor *xc = in_compute(x);
    flx_tensor *mu = flx_mean(xc, n_norm, axes, true);
    flx_tensor *var = flx_var(xc, n_norm, axes, true, 0);
    flx_tensor *y = flx_mul(flx_sub(xc, mu), flx_rsqrt(flx_add_scalar(var, eps)));
    if (gamma) y = flx_mul(y, in_compute(gamma));
    if (beta) y = flx_add(y, in_compute(beta));
    return flx_scope_return(flx_cast(y, x->dtype));
}

/* ---- dropout -------------------------------------------------------------------------------- */
static bool check_p(const char *op, double p) {
    if (p >= 0 && p < 1) return true;
    flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: p must be in [0, 1), got %g", op, p);
    return false;
}

flx_tensor *flx_dropout_mask(flx_ctx *ctx, int32_t ndim, const int64_t *shape, double p,
                             uint64_t seed) {
    static const char *op = "flx_dropout_mask";
    if (!ctx) {
        flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", op);
        return NULL;
    }
    if (!check_p(op, p)) return NULL;
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *u = flx_uniform(ctx, FLX_F64, ndim, shape, 0.0, 1.0, seed);
    flx_tensor *r = flx_ge(u, flx_scalar(ctx, FLX_F64, p));
    return flx_scope_return(r);
}

flx_tensor *flx_dropout(flx_tensor *x, double p, uint64_t seed, bool training) {
    static const char *op = "flx_dropout";
    if (!flx_check_inputs(op, 1, &x)) return NULL;
    if (!flx_check_float(op, x) || !check_p(op, p)) return NULL;
    if (!training || p == 0) return flx_adopt(flx_retain(x));
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *mask = flx_dropout_mask(x->ctx, x->ndim, x->shape, p, seed);
    flx_tensor *y = flx_where(mask, flx_mul_scalar(x, 1.0 / (1.0 - p)), flx_scalar(x->ctx, x->dtype, 0.0));
    return flx_scope_return(y);
}

/* ---- embedding ------------------------------------------------------------------------------ */
flx_tensor *flx_embedding(flx_tensor *weight, flx_tensor *indices) {
    static const char *op = "flx_embedding";
    flx_tensor *in[2] = {weight, indices};
    if (!flx_check_inputs(op, 2, in)) return NULL;
    if (!flx_check_float(op, weight)) return NULL;
    if (weight->ndim != 2) {
        flx_set_error(FLX_ERR_SHAPE, "%s: weight must be 2-d (num_embeddings, dim), got %s", op,
                      flx_describe(weight));
        return NULL;
    }
    if (indices->dtype != FLX_I32 && indices->dtype != FLX_I64) {
        flx_set_error(FLX_ERR_DTYPE, "%s: indices must be i32 or i64, got %s", op,
                      flx_describe(indices));
        return NULL;
    }
    if (indices->ndim >= FLX_MAX_DIMS) {
        flx_set_error(FLX_ERR_SHAPE, "%s: indices %s have too many axes (at most %d)", op,
                      flx_describe(indices), FLX_MAX_DIMS - 1);
        return NULL;
    }
    if (flx_scope_begin() != FLX_OK) return NULL;
    int64_t n = indices->numel;
    flx_tensor *flat = flx_reshape(indices, 1, &n);
    flx_tensor *rows = flx_index_select(weight, 0, flat);
    int64_t s[FLX_MAX_DIMS];
    for (int32_t d = 0; d < indices->ndim; d++) s[d] = indices->shape[d];
    s[indices->ndim] = weight->shape[1];
    return flx_scope_return(flx_reshape(rows, indices->ndim + 1, s));
}

/* ---- losses --------------------------------------------------------------------------------- */
static bool loss_args(const char *op, flx_tensor *y, flx_tensor *t, flx_reduction red) {
    flx_tensor *in[2] = {y, t};
    if (!flx_check_inputs(op, 2, in)) return false;
    if (!flx_check_float(op, y)) return false;
    if (y->dtype != t->dtype) {
        flx_set_error(FLX_ERR_DTYPE, "%s: dtypes differ: prediction %s, target %s", op,
                      flx_describe(y), flx_describe(t));
        return false;
    }
    if (!flx_shape_eq(y->ndim, y->shape, t->ndim, t->shape)) {
        flx_set_error(FLX_ERR_SHAPE, "%s: prediction %s and target %s must have one shape", op,
                      flx_describe(y), flx_describe(t));
        return false;
    }
    if (red != FLX_REDUCTION_MEAN && red != FLX_REDUCTION_SUM && red != FLX_REDUCTION_NONE) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad reduction %d (MEAN, SUM or NONE)", op,
                      (int)red);
        return false;
    }
    return flx_scope_begin() == FLX_OK;
}

static flx_tensor *reduce_loss(flx_tensor *l, flx_reduction red) {
    if (red == FLX_REDUCTION_MEAN) l = flx_mean_all(l);
    else if (red == FLX_REDUCTION_SUM) l = flx_sum_all(l);
    return flx_scope_return(l);
}

flx_tensor *flx_mse_loss(flx_tensor *y, flx_tensor *t, flx_reduction red) {
    if (!loss_args("flx_mse_loss", y, t, red)) return NULL;
    return reduce_loss(flx_square(flx_sub(y, t)), red);
}

flx_tensor *flx_bce_with_logits(flx_tensor *z, flx_tensor *t, flx_reduction red) {
    if (!loss_args("flx_bce_with_logits", z, t, red)) return NULL;
    return reduce_loss(flx_sub(flx_softplus(z), flx_mul(z, t)), red);
}

flx_tensor *flx_log_cosh_loss(flx_tensor *y, flx_tensor *t, flx_reduction red) {
    if (!loss_args("flx_log_cosh_loss", y, t, red)) return NULL;
    flx_tensor *r = flx_sub(y, t);
    flx_tensor *l = flx_add_scalar(flx_sub(flx_softplus(flx_mul_scalar(r, 2.0)), r), -0.69314718055994530942); /* - log 2 */
    return reduce_loss(l, red);
}

flx_tensor *flx_hinge_loss(flx_tensor *y, flx_tensor *t, flx_reduction red) {
    if (!loss_args("flx_hinge_loss", y, t, red)) return NULL;
    return reduce_loss(flx_relu(flx_affine(flx_mul(y, t), -1.0, 1.0)), red);
}

/* ---- recurrent cells ------------------------------------------------------------------------ */
static bool cell_args(const char *op, flx_tensor *x, flx_tensor *h, flx_tensor *W_ih,
                      flx_tensor *W_hh, flx_tensor *b_ih, flx_tensor *b_hh, int64_t gates) {
    flx_tensor *all[6] = {x, h, W_ih, W_hh, b_ih, b_hh};
    static const char *names[6] = {"x", "h", "W_ih", "W_hh", "b_ih", "b_hh"};
    for (int i = 0; i < 4; i++)
        if (!all[i]) return flx_check_inputs(op, 1, &all[i]), false;
    flx_tensor *in[6];
    if (!flx_check_inputs(op, compact(6, all, in), in)) return false;
    if (!flx_check_float(op, x) || !same_dtype_all(op, 6, all, names)) return false;
    if (x->ndim != 2 || h->ndim != 2 || W_ih->ndim != 2 || W_hh->ndim != 2 ||
        h->shape[0] != x->shape[0] || W_ih->shape[0] != gates * h->shape[1] ||
        W_ih->shape[1] != x->shape[1] || W_hh->shape[0] != gates * h->shape[1] ||
        W_hh->shape[1] != h->shape[1]) {
        flx_set_error(FLX_ERR_SHAPE,
                      "%s: needs x (B, I), h (B, H), W_ih (%lld H, I), W_hh (%lld H, H); got x %s, "
                      "h %s, W_ih %s, W_hh %s",
                      op, (long long)gates, (long long)gates, flx_describe(x), flx_describe(h),
                      flx_describe(W_ih), flx_describe(W_hh));
        return false;
    }
    if (!check_vec(op, "b_ih", b_ih, W_ih->shape[0]) || !check_vec(op, "b_hh", b_hh, W_hh->shape[0]))
        return false;
    return flx_scope_begin() == FLX_OK;
}

flx_tensor *flx_rnn_cell(flx_tensor *x, flx_tensor *h, flx_tensor *W_ih, flx_tensor *W_hh,
                         flx_tensor *b_ih, flx_tensor *b_hh) {
    if (!cell_args("flx_rnn_cell", x, h, W_ih, W_hh, b_ih, b_hh, 1)) return NULL;
    return flx_scope_return(flx_tanh(flx_add(flx_linear(x, W_ih, b_ih), flx_linear(h, W_hh, b_hh))));
}

flx_tensor *flx_gru_cell(flx_tensor *x, flx_tensor *h, flx_tensor *W_ih, flx_tensor *W_hh,
                         flx_tensor *b_ih, flx_tensor *b_hh) {
    if (!cell_args("flx_gru_cell", x, h, W_ih, W_hh, b_ih, b_hh, 3)) return NULL;
    int64_t H = h->shape[1];
    flx_tensor *gi = flx_linear(x, W_ih, b_ih); /* (B, 3H) */
    flx_tensor *gh = flx_linear(h, W_hh, b_hh);
    flx_tensor *r = flx_sigmoid(flx_add(flx_slice(gi, 1, 0, H, 1), flx_slice(gh, 1, 0, H, 1)));
    flx_tensor *z = flx_sigmoid(flx_add(flx_slice(gi, 1, H, 2 * H, 1), flx_slice(gh, 1, H, 2 * H, 1)));
    flx_tensor *nn = flx_tanh(flx_add(flx_slice(gi, 1, 2 * H, 3 * H, 1),
                                      flx_mul(r, flx_slice(gh, 1, 2 * H, 3 * H, 1))));
    /* h' = (1 - z) n + z h = n + z (h - n) */
    flx_tensor *hn = flx_add(nn, flx_mul(z, flx_sub(h, nn)));
    return flx_scope_return(hn);
}
