/* softmax.c — the softmax family: softmax and log_softmax along any axis (with a
 * temperature), their dedicated Jacobian-product op, and fused cross-entropy from logits with
 * integer labels. Kernels: runtime/cpu/softmax.c (reference) and kernels/softmax.cu.
 *
 * Rows (ops and their rules):
 *   SOFTMAX (x)                 y = softmax(s x) or log_softmax(s x) along attrs.axis, s = 1/T.
 *   SOFTMAX_BWD (y, v)          BWD:     s y (v - <y, v>)          softmax VJP (v = g) and JVP
 *                                                                   (v = tangent): the Jacobian
 *                                                                   s (diag(y) - y y^T) is symmetric
 *                               LOG_VJP: s (v - e^y sum(v))        log_softmax VJP (y = its output)
 *                               LOG_JVP: s (v - <e^y, v>)          log_softmax JVP
 *   CROSS_ENTROPY (x, labels)   packed 1-D [gradient (N C, when fused) | losses (N) | count],
 *                               the losses and count in f32 for f16/bf16 logits (the gradient
 *                               part padded to an even length, for alignment):
 *                               one kernel reads the logits once and writes the per-row losses
 *                               lse(x_r) - x_r[label_r] (0 at ignore_index), the number of rows
 *                               that count and, when x requires grad, the gradient of the
 *                               reduced loss for a unit cotangent: (softmax - onehot) (/ count
 *                               for the mean). No gradient flows through this node itself.
 *   CROSS_ENTROPY_LOSS (P, x, labels)  the reduced loss read from P (mean / sum / rows); with P
 *                               alone, the count (a node of the rules, not differentiable).
 *   CROSS_ENTROPY_GRAD (P, x, labels)  the fused gradient: aliases P's leading N C elements (no
 *                               copy). The loss's VJP returns it when its cotangent is a known
 *                               constant (the seed of flx_backward), so the graph of loss +
 *                               gradient holds one pass over the logits; any other cotangent
 *                               goes through CROSS_ENTROPY_BWD. Its own rules are those of
 *                               CROSS_ENTROPY_BWD with g = 1 (or 1 / count).
 *   CROSS_ENTROPY_BWD (x, labels, g)   (softmax(x_r) - onehot(label_r)) g_r, one kernel that
 *                               recomputes the row's softmax from the logits.
 * SOFTMAX_BWD and CROSS_ENTROPY_BWD have VJP and JVP rules of their own, built from public ops
 * and from SOFTMAX_BWD itself (the three modes map onto each other: LOG_VJP and LOG_JVP are each
 * other's transpose in v, BWD is its own), so derivatives of any order never reach a dead end.
 * The mean divides by the number of rows whose label is not ignore_index (0/0 = NaN when every
 * row is ignored). A forward pass in grad mode on logits that require grad writes the gradient
 * even if it is never asked for (N C stores): the price of one pass when it is. */
#include <math.h>
#include <string.h>

#include "internal.h"

/* ---- helpers -------------------------------------------------------------------------------- */
/* (outer, n, inner) view of shape around axis. */
static void row_view(const flx_tensor *x, int32_t axis, int64_t *outer, int64_t *n, int64_t *inner) {
    int64_t o = 1, in = 1;
    for (int32_t d = 0; d < axis; d++) o *= x->shape[d];
    for (int32_t d = axis + 1; d < x->ndim; d++) in *= x->shape[d];
    *outer = o;
    *n = x->ndim ? x->shape[axis] : 1;
    *inner = in;
}

static flx_tensor *softmax_node(int32_t mode, flx_tensor *x, int32_t axis, double scale) {
    flx_attrs at = {.u.softmax.mode = mode, .u.softmax.axis = axis, .u.softmax.scale = scale};
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_SOFTMAX, x->dtype, x->ndim, x->shape, 1, &x, &at));
}

/* The Jacobian-product op: mode BWD, LOG_VJP or LOG_JVP over rows along axis (normalised). y and
 * v have one shape and dtype (checked here because rules call it with tensors they built). */
static flx_tensor *softmax_bwd(int32_t mode, flx_tensor *y, flx_tensor *v, int32_t axis, double scale) {
    flx_tensor *in[2] = {y, v};
    if (!flx_check_inputs("softmax_bwd", 2, in)) return NULL;
    if (y->dtype != v->dtype || y->ndim != v->ndim ||
        memcmp(y->shape, v->shape, sizeof(int64_t) * (size_t)y->ndim) != 0) {
        flx_set_error(FLX_ERR_SHAPE, "softmax_bwd: y %s and v %s must have one shape and dtype",
                      flx_describe(y), flx_describe(v));
        return NULL;
    }
    flx_attrs at = {.u.softmax.mode = mode, .u.softmax.axis = axis, .u.softmax.scale = scale};
    return flx_adopt(flx_node_new(y->ctx, FLX_OP_SOFTMAX_BWD, y->dtype, y->ndim, y->shape, 2, in, &at));
}

static flx_tensor *ce_bwd(flx_tensor *x, flx_tensor *labels, flx_tensor *g, int64_t ignore_index) {
    flx_tensor *in[3] = {x, labels, g};
    if (!flx_check_inputs("cross_entropy_bwd", 3, in)) return NULL;
    flx_attrs at = {
        .u.softmax.mode = FLX_SOFTMAX_CE_BWD, .u.softmax.axis = 1, .u.softmax.scale = 1.0,
        .u.softmax.ignore_index = ignore_index, .u.softmax.rows = x->shape[0],
        .u.softmax.classes = x->shape[1]
    };
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_CROSS_ENTROPY_BWD, x->dtype, 2, x->shape, 3, in, &at));
}

/* Sum along the node's axis, kept as size 1 (broadcasts against the rows). */
static flx_tensor *row_sum(flx_tensor *v, int32_t axis) {
    return v ? flx_sum(v, 1, &axis, true) : NULL;
}

/* a + b where either may be NULL (a zero tangent). */
static flx_tensor *add_opt(flx_tensor *a, flx_tensor *b) {
    if (!a) return b;
    if (!b) return a;
    return flx_add(a, b);
}

static flx_tensor *scaled(flx_tensor *v, double s) { return (v && s != 1.0) ? flx_mul_scalar(v, s) : v; }

/* ---- exec ----------------------------------------------------------------------------------- */
static flx_status run_kernel(const flx_tensor *t, flx_softmax_args *a) {
    a->err = flx_kerr_site(t);
    return flx_kernel_softmax(t->ctx, a);
}

static flx_status exec_softmax(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    flx_softmax_args a = {.mode = t->attrs.u.softmax.mode, .dtype = t->dtype};
    row_view(t, t->attrs.u.softmax.axis, &a.outer, &a.n, &a.inner);
    a.scale = t->attrs.u.softmax.scale;
    a.x = in[0];
    a.v = t->n_in > 1 ? in[1] : NULL;
    a.out = out;
    return run_kernel(t, &a);
}

/* The dtype of the losses and the count in the packed buffer: f32 for f16/bf16 logits (a count
 * above 256 is not exact in bf16, 65536 overflows f16), else the logits' dtype. */
static flx_dtype ce_stat_dtype(flx_dtype dt) { return flx_dtype_compute(dt); }

/* Elements (of dtype dt) of a packed CROSS_ENTROPY buffer before the losses; for the halves an
 * even count, so the f32 losses that follow are 4-byte aligned. */
static int64_t ce_grad_elems(flx_dtype dt, bool fused, int64_t rows, int64_t classes) {
    int64_t n = fused ? rows * classes : 0;
    return ce_stat_dtype(dt) != dt ? n + (n & 1) : n;
}

static int64_t ce_grad_len(const flx_tensor *packed) {
    const flx_attrs *at = &packed->attrs;
    return ce_grad_elems(packed->dtype, at->u.softmax.fused_grad, at->u.softmax.rows, at->u.softmax.classes);
}

/* The cross-entropy kernel arguments of a node with the attributes of a packed node (or of
 * CROSS_ENTROPY_BWD). */
static flx_softmax_args ce_args(const flx_tensor *t, int32_t mode) {
    return (flx_softmax_args){
        .mode = mode, .dtype = t->dtype, .stat_dtype = ce_stat_dtype(t->dtype),
        .outer = t->attrs.u.softmax.rows,
        .n = t->attrs.u.softmax.classes, .inner = 1, .scale = 1.0,
        .ignore_index = t->attrs.u.softmax.ignore_index, .reduction = t->attrs.u.softmax.reduction
    };
}

/* CROSS_ENTROPY (packed out) and CROSS_ENTROPY_BWD. */
static flx_status exec_cross_entropy(const flx_tensor *t, void *out, const void *const *in) {
    flx_softmax_args a = ce_args(t, t->attrs.u.softmax.mode);
    a.x = in[0];
    a.labels = in[1];
    a.label_dtype = t->in[1]->dtype;
    if (a.mode == FLX_SOFTMAX_CE_FWD) {
        a.grad = t->attrs.u.softmax.fused_grad ? out : NULL;
        a.out = (char *)out + (size_t)ce_grad_len(t) * flx_dtype_size(t->dtype);
    } else { /* CE_BWD */
        if (t->numel == 0) return FLX_OK;
        a.v = in[2];
        a.out = out;
    }
    return run_kernel(t, &a);
}

/* CROSS_ENTROPY_LOSS: the loss (or the count) read from the packed node in[0]. */
static flx_status exec_ce_loss(const flx_tensor *t, void *out, const void *const *in) {
    const flx_tensor *packed = t->in[0];
    if (t->numel == 0) return FLX_OK;
    flx_softmax_args a = ce_args(packed, FLX_SOFTMAX_CE_FINISH);
    a.reduction = t->attrs.u.softmax.reduction;
    a.x = (const char *)in[0] + (size_t)ce_grad_len(packed) * flx_dtype_size(t->dtype);
    a.out = out;
    return run_kernel(t, &a);
}

/* ---- rules: SOFTMAX ------------------------------------------------------------------------- */
static flx_status vjp_softmax(flx_tensor *node, flx_tensor *g, flx_tensor **gin) {
    bool lg = node->attrs.u.softmax.mode == FLX_SOFTMAX_LOG_FWD;
    gin[0] = softmax_bwd(lg ? FLX_SOFTMAX_LOG_VJP : FLX_SOFTMAX_BWD, node, g,
                         node->attrs.u.softmax.axis, node->attrs.u.softmax.scale);
    return flx_rule_status(gin[0]);
}

static flx_status jvp_softmax(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[0]) return FLX_OK;
    bool lg = node->attrs.u.softmax.mode == FLX_SOFTMAX_LOG_FWD;
    *tout = softmax_bwd(lg ? FLX_SOFTMAX_LOG_JVP : FLX_SOFTMAX_BWD, node, tin[0],
                        node->attrs.u.softmax.axis, node->attrs.u.softmax.scale);
    return flx_rule_status(*tout);
}

/* ---- rules: SOFTMAX_BWD (y, v) -------------------------------------------------------------- */
/* The partial derivative in y applied to dy (JVP) or transposed to h (VJP), per mode:
 *   BWD     out = s y (v - <y,v>):  J_y dy = s (dy (v - <y,v>) - y <dy, v>)
 *                                   J_y^T h = s (h (v - <y,v>) - v <y, h>)
 *   LOG_VJP out = s (v - e^y S),  S = sum(v):  J_y dy = -s e^y dy S = J_y^T applied to dy
 *   LOG_JVP out = s (v - <e^y, v>):  J_y dy = -s <e^y v, dy>,  J_y^T h = -s e^y v sum(h) */
static flx_tensor *bwd_partial_y(flx_tensor *node, flx_tensor *w, bool transpose) {
    flx_tensor *y = node->in[0], *v = node->in[1];
    int32_t ax = node->attrs.u.softmax.axis;
    double s = node->attrs.u.softmax.scale;
    switch ((flx_softmax_mode)node->attrs.u.softmax.mode) {
    case FLX_SOFTMAX_BWD: {
        flx_tensor *centered = flx_sub(v, row_sum(flx_mul(y, v), ax));
        flx_tensor *r = transpose ? flx_sub(flx_mul(w, centered), flx_mul(v, row_sum(flx_mul(y, w), ax)))
                                  : flx_sub(flx_mul(w, centered), flx_mul(y, row_sum(flx_mul(w, v), ax)));
        return scaled(r, s);
    }
    case FLX_SOFTMAX_LOG_VJP:
        return scaled(flx_mul(flx_mul(w, flx_exp(y)), row_sum(v, ax)), -s);
    case FLX_SOFTMAX_LOG_JVP: {
        flx_tensor *ev = flx_mul(flx_exp(y), v);
        return transpose ? scaled(flx_mul(ev, row_sum(w, ax)), -s)
                         : scaled(row_sum(flx_mul(ev, w), ax), -s);
    }
    default: flx_set_error(FLX_ERR_STATE, "softmax_bwd: bad mode %d", (int)node->attrs.u.softmax.mode);
    }
    return NULL;
}

/* The op is linear in v; its transpose in v is: BWD -> BWD, LOG_VJP <-> LOG_JVP. */
static int32_t transpose_mode(int32_t mode) {
    return mode == FLX_SOFTMAX_LOG_VJP ? FLX_SOFTMAX_LOG_JVP
         : mode == FLX_SOFTMAX_LOG_JVP ? FLX_SOFTMAX_LOG_VJP : mode;
}

static flx_status vjp_softmax_bwd(flx_tensor *node, flx_tensor *g, flx_tensor **gin) {
    int32_t ax = node->attrs.u.softmax.axis, mode = node->attrs.u.softmax.mode;
    double s = node->attrs.u.softmax.scale;
    if (node->in[1]->requires_grad) {
        gin[1] = softmax_bwd(transpose_mode(mode), node->in[0], g, ax, s);
        if (!gin[1]) return flx_rule_status(NULL);
    }
    if (node->in[0]->requires_grad) {
        gin[0] = bwd_partial_y(node, g, true);
        if (!gin[0]) return flx_rule_status(NULL);
    }
    return FLX_OK;
}

static flx_status jvp_softmax_bwd(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    flx_tensor *r = NULL;
    if (tin[1]) {
        r = softmax_bwd(node->attrs.u.softmax.mode, node->in[0], tin[1], node->attrs.u.softmax.axis,
                        node->attrs.u.softmax.scale);
        if (!r) return flx_rule_status(NULL);
    }
    if (tin[0]) {
        flx_tensor *p = bwd_partial_y(node, tin[0], false);
        if (!p) return flx_rule_status(NULL);
        r = add_opt(r, p);
    }
    *tout = r;
    return (tin[0] || tin[1]) ? flx_rule_status(r) : FLX_OK;
}

/* ---- rules: cross-entropy ------------------------------------------------------------------- */
static flx_tensor *ones_rows(flx_tensor *x) {
    return flx_ones(x->ctx, x->dtype, 1, x->shape);
}

/* 1 for rows whose label is not ignore_index, else 0, as the logits' dtype, shape (N, 1). */
static flx_tensor *row_mask(flx_tensor *x, flx_tensor *labels, int64_t ignore_index) {
    flx_tensor *ig = flx_scalar(labels->ctx, labels->dtype, (double)ignore_index);
    flx_tensor *m = flx_cast(flx_ne(labels, ig), x->dtype);
    int64_t shape[2] = {x->shape[0], 1};
    return m ? flx_reshape(m, 2, shape) : NULL;
}

/* The derivative of ce_bwd(x, labels, g) in x applied to w: m g times the softmax Jacobian
 * (symmetric, so the same expression serves VJP and JVP): softmax_bwd(p, w m g), p = softmax(x). */
static flx_tensor *ce_bwd_dx(flx_tensor *x, flx_tensor *labels, flx_tensor *g, int64_t ig, flx_tensor *w) {
    int64_t shape[2] = {x->shape[0], 1};
    flx_tensor *gm = flx_mul(flx_reshape(g, 2, shape), row_mask(x, labels, ig));
    flx_tensor *p = softmax_node(FLX_SOFTMAX_FWD, x, 1, 1.0);
    return p ? softmax_bwd(FLX_SOFTMAX_BWD, p, flx_mul(w, gm), 1, 1.0) : NULL;
}

/* The rows that count, read from the packed node (no gradient). */
static flx_tensor *ce_count(flx_tensor *packed) {
    flx_attrs at = packed->attrs;
    at.u.softmax.mode = FLX_SOFTMAX_CE_FINISH;
    at.u.softmax.reduction = FLX_SOFTMAX_CE_COUNT;
    return flx_adopt(flx_node_new(packed->ctx, FLX_OP_CROSS_ENTROPY_LOSS, packed->dtype, 0, NULL, 1,
                                  &packed, &at));
}

/* The per-row cotangent g_r of the losses for a cotangent g of the loss node. */
static flx_tensor *ce_rows_cotangent(flx_tensor *loss, flx_tensor *g) {
    flx_tensor *packed = loss->in[0], *x = loss->in[1];
    int32_t red = loss->attrs.u.softmax.reduction;
    if (red == FLX_REDUCTION_NONE) return g;
    if (red == FLX_REDUCTION_MEAN) g = flx_div(g, ce_count(packed));
    return g ? flx_broadcast_to(g, 1, x->shape) : NULL;
}

/* The value of g when the graph fixes it: a constant fill, possibly reshaped or broadcast. */
static bool known_constant(const flx_tensor *g, double *value) {
    while (g->op == FLX_OP_RESHAPE || g->op == FLX_OP_BROADCAST) g = g->in[0];
    if (g->op != FLX_OP_FILL || g->attrs.u.fill.kind != FLX_FILL_CONST) return false;
    *value = g->attrs.u.fill.a;
    return true;
}

static flx_tensor *ce_fused_grad(flx_tensor *loss) {
    flx_tensor *packed = loss->in[0];
    flx_tensor *in[3] = {packed, loss->in[1], loss->in[2]};
    flx_attrs at = packed->attrs;
    return flx_adopt(flx_node_new(packed->ctx, FLX_OP_CROSS_ENTROPY_GRAD, packed->dtype, 2,
                                  loss->in[1]->shape, 3, in, &at));
}

static flx_status vjp_ce_loss(flx_tensor *node, flx_tensor *g, flx_tensor **gin) {
    if (node->n_in < 3 || !node->in[1]->requires_grad) return FLX_OK;
    flx_tensor *packed = node->in[0], *x = node->in[1], *labels = node->in[2];
    double c;
    if (packed->attrs.u.softmax.fused_grad && known_constant(g, &c)) {
        flx_tensor *d = ce_fused_grad(node);
        gin[1] = c == 1.0 ? d : (d ? flx_mul_scalar(d, c) : NULL);
    } else {
        gin[1] = ce_bwd(x, labels, ce_rows_cotangent(node, g), packed->attrs.u.softmax.ignore_index);
    }
    return flx_rule_status(gin[1]);
}

static flx_status jvp_ce_loss(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (node->n_in < 3 || !tin[1]) return FLX_OK;
    flx_tensor *packed = node->in[0], *x = node->in[1];
    int32_t ax = 1, red = node->attrs.u.softmax.reduction;
    flx_tensor *d = ce_bwd(x, node->in[2], ones_rows(x), packed->attrs.u.softmax.ignore_index);
    flx_tensor *rows = d ? flx_sum(flx_mul(d, tin[1]), 1, &ax, false) : NULL;
    if (red == FLX_REDUCTION_NONE) *tout = rows;
    else if (red == FLX_REDUCTION_SUM) *tout = flx_sum_all(rows);
    else *tout = flx_div(flx_sum_all(rows), ce_count(packed));
    return flx_rule_status(*tout);
}

/* CROSS_ENTROPY_GRAD is ce_bwd(x, labels, g) with g = 1 per row (1 / count for the mean). */
static flx_tensor *ce_grad_rows(flx_tensor *node) {
    flx_tensor *packed = node->in[0], *x = node->in[1];
    flx_tensor *one = ones_rows(x);
    return node->attrs.u.softmax.reduction == FLX_REDUCTION_MEAN ? flx_div(one, ce_count(packed)) : one;
}

static flx_status vjp_ce_grad(flx_tensor *node, flx_tensor *h, flx_tensor **gin) {
    if (!node->in[1]->requires_grad) return FLX_OK;
    gin[1] = ce_bwd_dx(node->in[1], node->in[2], ce_grad_rows(node), node->attrs.u.softmax.ignore_index, h);
    return flx_rule_status(gin[1]);
}

static flx_status jvp_ce_grad(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[1]) return FLX_OK;
    *tout = ce_bwd_dx(node->in[1], node->in[2], ce_grad_rows(node), node->attrs.u.softmax.ignore_index,
                      tin[1]);
    return flx_rule_status(*tout);
}

/* CROSS_ENTROPY_BWD (x, labels, g): out = m g (p - onehot), p = softmax(x), m the row mask.
 * In g it is linear: J_g dg = ce_bwd(x, labels, dg); J_g^T h = sum(h ce_bwd(x, labels, 1), 1).
 * In x it is m g times the softmax Jacobian (ce_bwd_dx). */
static flx_status vjp_ce_bwd(flx_tensor *node, flx_tensor *h, flx_tensor **gin) {
    flx_tensor *x = node->in[0], *labels = node->in[1], *g = node->in[2];
    int64_t ig = node->attrs.u.softmax.ignore_index;
    int32_t ax = 1;
    if (g->requires_grad) {
        flx_tensor *d = ce_bwd(x, labels, ones_rows(x), ig);
        gin[2] = d ? flx_sum(flx_mul(h, d), 1, &ax, false) : NULL;
        if (!gin[2]) return flx_rule_status(NULL);
    }
    if (x->requires_grad) {
        gin[0] = ce_bwd_dx(x, labels, g, ig, h);
        if (!gin[0]) return flx_rule_status(NULL);
    }
    return FLX_OK;
}

static flx_status jvp_ce_bwd(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    flx_tensor *x = node->in[0], *labels = node->in[1], *g = node->in[2];
    int64_t ig = node->attrs.u.softmax.ignore_index;
    flx_tensor *r = NULL;
    if (tin[2]) {
        r = ce_bwd(x, labels, tin[2], ig);
        if (!r) return flx_rule_status(NULL);
    }
    if (tin[0]) {
        flx_tensor *q = ce_bwd_dx(x, labels, g, ig, tin[0]);
        if (!q) return flx_rule_status(NULL);
        r = add_opt(r, q);
    }
    *tout = r;
    return (tin[0] || tin[2]) ? flx_rule_status(r) : FLX_OK;
}

void flx_ops_register_softmax(flx_op_def *t) {
    t[FLX_OP_SOFTMAX] = (flx_op_def){"softmax", exec_softmax, vjp_softmax, jvp_softmax, 0};
    t[FLX_OP_SOFTMAX_BWD] =
        (flx_op_def){"softmax_bwd", exec_softmax, vjp_softmax_bwd, jvp_softmax_bwd, 0};
    t[FLX_OP_CROSS_ENTROPY] =
        (flx_op_def){"cross_entropy", exec_cross_entropy, NULL, flx_jvp_zero, FLX_OPF_NONDIFF};
    t[FLX_OP_CROSS_ENTROPY_LOSS] =
        (flx_op_def){"cross_entropy_loss", exec_ce_loss, vjp_ce_loss, jvp_ce_loss, 0};
    t[FLX_OP_CROSS_ENTROPY_GRAD] =
        (flx_op_def){"cross_entropy_grad", NULL, vjp_ce_grad, jvp_ce_grad, FLX_OPF_ALIAS};
    t[FLX_OP_CROSS_ENTROPY_BWD] =
        (flx_op_def){"cross_entropy_bwd", exec_cross_entropy, vjp_ce_bwd, jvp_ce_bwd, 0};
}

/* ---- public ops ----------------------------------------------------------------------------- */
static flx_tensor *make_softmax(const char *name, int32_t mode, flx_tensor *x, int32_t axis,
                                double temperature) {
    if (!flx_check_inputs(name, 1, &x)) return NULL;
    if (!flx_check_float(name, x)) return NULL;
    if (x->ndim == 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one axis, got 0-d %s", name,
                      flx_describe(x));
        return NULL;
    }
    int32_t ax;
    if (!flx_norm_axis(name, axis, x->ndim, &ax)) return NULL;
    if (!(temperature > 0) || !isfinite(temperature) || !isfinite(1.0 / temperature)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: temperature must be finite and > 0 (got %g) for %s", name, temperature,
                      flx_describe(x));
        return NULL;
    }
    return softmax_node(mode, x, ax, 1.0 / temperature);
}

flx_tensor *flx_softmax(flx_tensor *x, int32_t axis, double temperature) {
    return make_softmax("flx_softmax", FLX_SOFTMAX_FWD, x, axis, temperature);
}

flx_tensor *flx_log_softmax(flx_tensor *x, int32_t axis, double temperature) {
    return make_softmax("flx_log_softmax", FLX_SOFTMAX_LOG_FWD, x, axis, temperature);
}

/* Validated (N, C) logits and (N) labels -> the reduced loss. Runs inside a scope. */
static flx_tensor *cross_entropy_2d(flx_tensor *x, flx_tensor *labels, flx_reduction red,
                                    int64_t ignore_index, int32_t nd_out, const int64_t *out_shape) {
    const bool fused = x->requires_grad && flx_no_grad_depth() == 0;
    flx_attrs at = {
        .u.softmax.mode = FLX_SOFTMAX_CE_FWD, .u.softmax.axis = 1, .u.softmax.scale = 1.0,
        .u.softmax.ignore_index = ignore_index, .u.softmax.reduction = (int32_t)red,
        .u.softmax.fused_grad = fused, .u.softmax.rows = x->shape[0], .u.softmax.classes = x->shape[1]
    };
    const int64_t stat_elems = (int64_t)(flx_dtype_size(ce_stat_dtype(x->dtype)) / flx_dtype_size(x->dtype));
    int64_t packed_len = ce_grad_elems(x->dtype, fused, x->shape[0], x->shape[1]) +
                         (x->shape[0] + 1) * stat_elems;
    flx_tensor *in[3] = {x, labels, NULL};
    flx_tensor *packed =
        flx_adopt(flx_node_new(x->ctx, FLX_OP_CROSS_ENTROPY, x->dtype, 1, &packed_len, 2, in, &at));
    if (!packed) return NULL;
    in[0] = packed;
    in[1] = x;
    in[2] = labels;
    at.u.softmax.mode = FLX_SOFTMAX_CE_FINISH;
    flx_tensor *loss = flx_adopt(flx_node_new(x->ctx, FLX_OP_CROSS_ENTROPY_LOSS, x->dtype,
                                              red == FLX_REDUCTION_NONE ? 1 : 0, x->shape, 3, in, &at));
    return red == FLX_REDUCTION_NONE && loss ? flx_reshape(loss, nd_out, out_shape) : loss;
}

flx_tensor *flx_cross_entropy(flx_tensor *logits, flx_tensor *labels, flx_reduction reduction,
                              int64_t ignore_index) {
    const char *name = "flx_cross_entropy";
    flx_tensor *in[2] = {logits, labels};
    if (!flx_check_inputs(name, 2, in)) return NULL;
    if (!flx_check_float(name, logits)) return NULL;
    if (labels->dtype != FLX_I32 && labels->dtype != FLX_I64) {
        flx_set_error(FLX_ERR_DTYPE, "%s: labels must be i32 or i64, got %s", name, flx_describe(labels));
        return NULL;
    }
    if (reduction != FLX_REDUCTION_MEAN && reduction != FLX_REDUCTION_SUM &&
        reduction != FLX_REDUCTION_NONE) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: unknown reduction %d", name, (int)reduction);
        return NULL;
    }
    bool ok = logits->ndim >= 2 && labels->ndim == logits->ndim - 1 &&
              labels->shape[0] == logits->shape[0];
    for (int32_t d = 2; ok && d < logits->ndim; d++) ok = labels->shape[d - 1] == logits->shape[d];
    if (!ok) {
        flx_set_error(FLX_ERR_SHAPE,
                      "%s: logits %s and labels %s do not fit (logits (N, C) or (N, C, d...), "
                      "labels (N) or (N, d...))",
                      name, flx_describe(logits), flx_describe(labels));
        return NULL;
    }
    if (logits->shape[1] == 0) {
        flx_set_error(FLX_ERR_SHAPE, "%s: logits %s have no classes", name, flx_describe(logits));
        return NULL;
    }
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *x = logits, *lab = labels;
    if (logits->ndim > 2) {
        /* (N, C, d...) -> (N d..., C): move the class axis last, then rows are contiguous. */
        int32_t perm[FLX_MAX_DIMS];
        int32_t k = 0;
        perm[k++] = 0;
        for (int32_t d = 2; d < logits->ndim; d++) perm[k++] = d;
        perm[k++] = 1;
        int64_t s2[2] = {-1, logits->shape[1]};
        if (flx_numel(logits) == 0) s2[0] = flx_numel(labels);
        x = flx_reshape(flx_permute(logits, perm), 2, s2);
        int64_t s1[1] = {flx_numel(labels)};
        lab = flx_reshape(labels, 1, s1);
    }
    flx_tensor *r = x && lab ? cross_entropy_2d(x, lab, reduction, ignore_index, labels->ndim,
                                                 labels->shape)
                             : NULL;
    return flx_scope_return(r);
}
