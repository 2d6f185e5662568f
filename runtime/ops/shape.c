/* shape.c — shape and indexing ops: reshape (an alias of its input's buffer), permute,
 * broadcast, strided slice, pad, concat, index_select / index_add, and the compositions built on
 * them (transpose, stack, squeeze, unsqueeze, gather, one_hot). Most run on the strided copy
 * family. Every op is linear, so each JVP is the op itself applied to the tangent; VJPs are the
 * transposes: slice <-> pad (interior = step - 1), index_select <-> index_add, permute <-> the
 * inverse permute, broadcast -> sum over the broadcast axes, concat -> slices. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Strided copy on the node's backend; skips empty copies. */
static flx_status run_copy(flx_ctx *ctx, size_t es, int32_t ndim, const int64_t *shape,
                           int64_t in_off, const int64_t *in_strides, int64_t out_off,
                           const int64_t *out_strides, const void *in, void *out) {
    if (flx_shape_numel(ndim, shape) == 0) return FLX_OK;
    flx_copy_args a = {.elem_size = es, .ndim = ndim};
    for (int32_t d = 0; d < ndim; d++) {
        a.shape[d] = shape[d];
        a.in_strides[d] = in_strides[d];
        a.out_strides[d] = out_strides[d];
    }
    a.in_off = in_off;
    a.out_off = out_off;
    a.in = in;
    a.out = out;
    return flx_kernel_copy(ctx, &a);
}

/* ---- internal builders (no argument checks beyond what the callers did) ------------------- */
static flx_tensor *reshape_node(flx_tensor *x, int32_t ndim, const int64_t *shape) {
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_RESHAPE, x->dtype, ndim, shape, 1, &x, NULL));
}

static flx_tensor *permute_node(flx_tensor *x, const int32_t *perm) {
    flx_attrs at;
    memset(&at, 0, sizeof at);
    int64_t shape[FLX_MAX_DIMS];
    for (int32_t i = 0; i < x->ndim; i++) {
        at.u.permute.perm[i] = perm[i];
        shape[i] = x->shape[perm[i]];
    }
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_PERMUTE, x->dtype, x->ndim, shape, 1, &x, &at));
}

/* Strided slice on every axis: out[i] = x[start + i * step], out has shape. */
static flx_tensor *slice_node(flx_tensor *x, const int64_t *start, const int64_t *step,
                              const int64_t *shape) {
    flx_attrs at;
    memset(&at, 0, sizeof at);
    for (int32_t d = 0; d < x->ndim; d++) {
        at.u.slice.start[d] = start[d];
        at.u.slice.step[d] = step[d];
    }
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_SLICE, x->dtype, x->ndim, shape, 1, &x, &at));
}

/* Padding to shape: x[i] lands at lo + i * (interior + 1); value elsewhere. */
static flx_tensor *pad_node(flx_tensor *x, const int64_t *lo, const int64_t *interior,
                            const int64_t *shape, double value) {
    flx_attrs at;
    memset(&at, 0, sizeof at);
    for (int32_t d = 0; d < x->ndim; d++) {
        at.u.pad.lo[d] = lo[d];
        at.u.pad.interior[d] = interior[d];
    }
    at.u.pad.value = value;
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_PAD, x->dtype, x->ndim, shape, 1, &x, &at));
}

/* out (shape of x with axis of size n_src) = sum of g's rows by index (the transpose of select). */
static flx_tensor *index_add_node(flx_tensor *g, int32_t axis, flx_tensor *index, int64_t n_src) {
    if (!g || !index) return NULL;
    flx_attrs at = {.u.index.axis = axis};
    int64_t shape[FLX_MAX_DIMS];
    for (int32_t d = 0; d < g->ndim; d++) shape[d] = g->shape[d];
    shape[axis] = n_src;
    flx_tensor *in[2] = {g, index};
    return flx_adopt(flx_node_new(g->ctx, FLX_OP_INDEX_ADD, g->dtype, g->ndim, shape, 2, in, &at));
}

static flx_tensor *index_select_node(flx_tensor *x, int32_t axis, flx_tensor *index) {
    if (!x || !index) return NULL;
    flx_attrs at = {.u.index.axis = axis};
    int64_t shape[FLX_MAX_DIMS];
    for (int32_t d = 0; d < x->ndim; d++) shape[d] = x->shape[d];
    shape[axis] = index->numel;
    flx_tensor *in[2] = {x, index};
    return flx_adopt(
        flx_node_new(x->ctx, FLX_OP_INDEX_SELECT, x->dtype, x->ndim, shape, 2, in, &at));
}

/* ---- exec ----------------------------------------------------------------------------------- */
/* permute, broadcast and slice: the output's elements, written contiguously, are read from the
 * input's contiguous layout at offset off with per-axis strides is (the op's view of it). */
static flx_status exec_view(const flx_tensor *t, void *out, const void *const *in) {
    const flx_tensor *x = t->in[0];
    int64_t xs[FLX_MAX_DIMS], is[FLX_MAX_DIMS], os[FLX_MAX_DIMS], off = 0;
    flx_contiguous_strides(x->ndim, x->shape, xs);
    flx_contiguous_strides(t->ndim, t->shape, os);
    int32_t lead = t->ndim - x->ndim; /* broadcast: new leading axes */
    for (int32_t d = 0; d < t->ndim; d++) {
        switch (t->op) {
        case FLX_OP_PERMUTE: is[d] = xs[t->attrs.u.permute.perm[d]]; break;
        case FLX_OP_BROADCAST:
            is[d] = (d < lead || x->shape[d - lead] == 1) ? 0 : xs[d - lead];
            break;
        default: /* FLX_OP_SLICE */
            off += t->attrs.u.slice.start[d] * xs[d];
            is[d] = t->attrs.u.slice.step[d] * xs[d];
        }
    }
    return run_copy(t->ctx, flx_dtype_size(t->dtype), t->ndim, t->shape, off, is, 0, os,
                    in[0], out);
}

static flx_status exec_pad(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    const flx_tensor *x = t->in[0];
    flx_fill_args f = {
        .kind = FLX_FILL_CONST, .dtype = t->dtype, .n = t->numel, .a = t->attrs.u.pad.value,
        .out = out
    };
    flx_status s = flx_kernel_fill(t->ctx, &f);
    if (s != FLX_OK) return s;
    int64_t xs[FLX_MAX_DIMS], os[FLX_MAX_DIMS], ws[FLX_MAX_DIMS];
    flx_contiguous_strides(x->ndim, x->shape, xs);
    flx_contiguous_strides(t->ndim, t->shape, os);
    int64_t off = 0;
    for (int32_t d = 0; d < t->ndim; d++) {
        off += t->attrs.u.pad.lo[d] * os[d];
        ws[d] = (t->attrs.u.pad.interior[d] + 1) * os[d];
    }
    return run_copy(t->ctx, flx_dtype_size(t->dtype), x->ndim, x->shape, 0, xs, off, ws,
                    in[0], out);
}

static flx_status exec_concat(const flx_tensor *t, void *out, const void *const *in) {
    int32_t axis = t->attrs.u.concat.axis;
    int64_t os[FLX_MAX_DIMS];
    flx_contiguous_strides(t->ndim, t->shape, os);
    size_t es = flx_dtype_size(t->dtype);
    int64_t pos = 0;
    for (int32_t i = 0; i < t->n_in; i++) {
        const flx_tensor *x = t->in[i];
        int64_t xs[FLX_MAX_DIMS];
        flx_contiguous_strides(x->ndim, x->shape, xs);
        flx_status s = run_copy(t->ctx, es, x->ndim, x->shape, 0, xs, pos * os[axis], os,
                                in[i], out);
        if (s != FLX_OK) return s;
        pos += x->shape[axis];
    }
    return FLX_OK;
}

static void index_dims(const flx_tensor *x, int32_t axis, int64_t *outer, int64_t *inner) {
    *outer = 1;
    *inner = 1;
    for (int32_t d = 0; d < axis; d++) *outer *= x->shape[d];
    for (int32_t d = axis + 1; d < x->ndim; d++) *inner *= x->shape[d];
}

static flx_status exec_index(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    bool add = t->op == FLX_OP_INDEX_ADD;
    const flx_tensor *src = t->in[0], *idx = t->in[1];
    int32_t axis = t->attrs.u.index.axis;
    flx_index_args a = {
        .mode = add ? FLX_INDEX_ADD : FLX_INDEX_SELECT, .dtype = t->dtype, .idx_dtype = idx->dtype
    };
    index_dims(t, axis, &a.outer, &a.inner);
    a.n_src = add ? t->shape[axis] : src->shape[axis];
    a.n_idx = idx->numel;
    a.src = in[0];
    a.idx = in[1];
    a.out = out;
    a.err = flx_kerr_site(t);
    return flx_kernel_index(t->ctx, &a);
}

/* ---- rules ---------------------------------------------------------------------------------- */
static flx_status vjp_reshape(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *x = t->in[0];
    gin[0] = reshape_node(g, x->ndim, x->shape);
    return flx_rule_status(gin[0]);
}
static flx_status vjp_permute(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    int32_t inv[FLX_MAX_DIMS];
    for (int32_t i = 0; i < t->ndim; i++) inv[t->attrs.u.permute.perm[i]] = i;
    gin[0] = permute_node(g, inv);
    return flx_rule_status(gin[0]);
}
static flx_status vjp_broadcast(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *x = t->in[0];
    gin[0] = flx_sum_to_shape(g, x->ndim, x->shape);
    return flx_rule_status(gin[0]);
}
static flx_status vjp_slice(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *x = t->in[0];
    int64_t interior[FLX_MAX_DIMS];
    for (int32_t d = 0; d < x->ndim; d++) interior[d] = t->attrs.u.slice.step[d] - 1;
    gin[0] = pad_node(g, t->attrs.u.slice.start, interior, x->shape, 0.0);
    return flx_rule_status(gin[0]);
}
static flx_status vjp_pad(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *x = t->in[0];
    int64_t step[FLX_MAX_DIMS];
    for (int32_t d = 0; d < x->ndim; d++) step[d] = t->attrs.u.pad.interior[d] + 1;
    gin[0] = slice_node(g, t->attrs.u.pad.lo, step, x->shape);
    return flx_rule_status(gin[0]);
}
static flx_status jvp_pad(flx_tensor *t, flx_tensor *const *tin, flx_tensor **tout) {
    flx_attrs at = t->attrs;
    at.u.pad.value = 0.0; /* the padding value is a constant: its tangent is 0 */
    return flx_jvp_linear_attrs(t, tin, &at, tout);
}

static flx_status vjp_concat(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    int32_t axis = t->attrs.u.concat.axis;
    int64_t start[FLX_MAX_DIMS] = {0}, step[FLX_MAX_DIMS];
    for (int32_t d = 0; d < t->ndim; d++) step[d] = 1;
    int64_t pos = 0;
    for (int32_t i = 0; i < t->n_in; i++) {
        flx_tensor *x = t->in[i];
        if (x->requires_grad) {
            start[axis] = pos;
            gin[i] = slice_node(g, start, step, x->shape);
            if (!gin[i]) return flx_last_status();
        }
        pos += x->shape[axis];
    }
    return FLX_OK;
}
static flx_status vjp_index_select(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *x = t->in[0];
    int32_t axis = t->attrs.u.index.axis;
    gin[0] = index_add_node(g, axis, t->in[1], x->shape[axis]);
    return flx_rule_status(gin[0]);
}
static flx_status vjp_index_add(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    gin[0] = index_select_node(g, t->attrs.u.index.axis, t->in[1]);
    return flx_rule_status(gin[0]);
}
void flx_ops_register_shape(flx_op_def *t) {
    t[FLX_OP_RESHAPE] = (flx_op_def){"reshape", NULL, vjp_reshape, flx_jvp_linear, FLX_OPF_ALIAS};
    t[FLX_OP_PERMUTE] = (flx_op_def){"permute", exec_view, vjp_permute, flx_jvp_linear, 0};
    t[FLX_OP_BROADCAST] =
        (flx_op_def){"broadcast", exec_view, vjp_broadcast, flx_jvp_linear, 0};
    t[FLX_OP_SLICE] = (flx_op_def){"slice", exec_view, vjp_slice, flx_jvp_linear, 0};
    t[FLX_OP_PAD] = (flx_op_def){"pad", exec_pad, vjp_pad, jvp_pad, 0};
    t[FLX_OP_CONCAT] = (flx_op_def){"concat", exec_concat, vjp_concat, flx_jvp_linear, 0};
    t[FLX_OP_INDEX_SELECT] =
        (flx_op_def){"index_select", exec_index, vjp_index_select, flx_jvp_linear, 0};
    t[FLX_OP_INDEX_ADD] = (flx_op_def){"index_add", exec_index, vjp_index_add, flx_jvp_linear, 0};
}

/* ---- views: a chain of shape ops read as strides ------------------------------------------ */
/* v reshaped to shape without moving data (PyTorch's view rule); false when it would need to. */
static bool view_reshape(flx_view *v, int32_t nd, const int64_t *shape) {
    int64_t st[FLX_MAX_DIMS], n = 1;
    for (int32_t i = 0; i < v->ndim; i++) n *= v->shape[i];
    if (n == 0 || v->ndim < 1 || nd < 1) return false;
    int32_t vd = nd - 1;
    int64_t chunk = v->strides[v->ndim - 1], tn = 1, vn = 1;
    for (int32_t td = v->ndim - 1; td >= 0; td--) {
        tn *= v->shape[td];
        if (td == 0 || (v->shape[td - 1] != 1 && v->strides[td - 1] != tn * chunk)) {
            while (vd >= 0 && (vn < tn || shape[vd] == 1)) {
                st[vd] = vn * chunk;
                vn *= shape[vd--];
            }
            if (vn != tn) return false;
            if (td > 0) {
                chunk = v->strides[td - 1];
                tn = vn = 1;
            }
        }
    }
    if (vd != -1) return false;
    v->ndim = nd;
    for (int32_t i = 0; i < nd; i++) {
        v->shape[i] = shape[i];
        v->strides[i] = st[i];
    }
    return true;
}

static flx_view contiguous_view(flx_tensor *t) {
    flx_view v = {t, 0, t->ndim, {0}, {0}};
    memcpy(v.shape, t->shape, sizeof v.shape);
    flx_contiguous_strides(t->ndim, t->shape, v.strides);
    return v;
}

flx_view flx_view_of(flx_tensor *x) {
    flx_tensor *chain[16], *t = x;
    int32_t n = 0;
    while (n < 16 && (t->op == FLX_OP_SLICE || t->op == FLX_OP_RESHAPE || t->op == FLX_OP_PERMUTE) &&
           !t->buf && !t->is_leaf && t->in_version[0] == t->in[0]->version) {
        chain[n++] = t;
        t = t->in[0];
    }
    flx_view v = contiguous_view(t);
    for (int32_t i = n - 1; i >= 0; i--) {
        const flx_tensor *c = chain[i];
        bool ok = true;
        if (c->op == FLX_OP_SLICE) {
            for (int32_t d = 0; d < c->ndim; d++) {
                ok = ok && c->attrs.u.slice.step[d] > 0;
                v.off += c->attrs.u.slice.start[d] * v.strides[d];
                v.strides[d] *= c->attrs.u.slice.step[d];
                v.shape[d] = c->shape[d];
            }
        } else if (c->op == FLX_OP_PERMUTE) {
            flx_view p = v;
            for (int32_t d = 0; d < c->ndim; d++) {
                p.shape[d] = v.shape[c->attrs.u.permute.perm[d]];
                p.strides[d] = v.strides[c->attrs.u.permute.perm[d]];
            }
            v = p;
        } else {
            ok = view_reshape(&v, c->ndim, c->shape);
        }
        if (!ok) return contiguous_view(x);
    }
    return v;
}

/* ---- public ops ----------------------------------------------------------------------------- */
/* Runs a composition in its own scope so intermediates are released; the result moves to the
 * caller's scope (or the caller). */
#define FLX_COMPOSE_BEGIN() \
    if (flx_scope_begin() != FLX_OK) return NULL

static bool check_shape_arg(const char *name, const flx_tensor *x, int32_t ndim,
                            const int64_t *shape, bool allow_infer) {
    if (ndim < 0 || ndim > FLX_MAX_DIMS) {
        flx_set_error(FLX_ERR_SHAPE, "%s: rank %d is outside [0, %d] (input %s)", name, (int)ndim,
                      FLX_MAX_DIMS, flx_describe(x));
        return false;
    }
    if (ndim > 0 && !shape) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: shape is NULL for rank %d (input %s)", name,
                      (int)ndim, flx_describe(x));
        return false;
    }
    int32_t n_infer = 0;
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] == -1 && allow_infer) {
            n_infer++;
        } else if (shape[i] < 0) {
            flx_set_error(FLX_ERR_SHAPE, "%s: bad size %lld in shape %s (input %s)", name,
                          (long long)shape[i], flx_shape_str(ndim, shape), flx_describe(x));
            return false;
        }
    }
    if (n_infer > 1) {
        flx_set_error(FLX_ERR_SHAPE, "%s: more than one -1 in shape %s (input %s)", name,
                      flx_shape_str(ndim, shape), flx_describe(x));
        return false;
    }
    return true;
}

flx_tensor *flx_reshape(flx_tensor *x, int32_t ndim, const int64_t *shape) {
    if (!flx_check_inputs("flx_reshape", 1, &x)) return NULL;
    if (!check_shape_arg("flx_reshape", x, ndim, shape, true)) return NULL;
    int64_t s[FLX_MAX_DIMS];
    int64_t known = 1;
    int32_t infer = -1;
    bool overflow = false;
    for (int32_t i = 0; i < ndim; i++) {
        s[i] = shape[i];
        if (shape[i] == -1) {
            infer = i;
        } else {
            if (shape[i] > 0 && known > INT64_MAX / shape[i]) overflow = true;
            else known *= shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || overflow || x->numel % known != 0) {
            flx_set_error(FLX_ERR_SHAPE,
                          "flx_reshape: cannot reshape %s (%lld elements) to %s: the -1 size is "
                          "%s",
                          flx_describe(x), (long long)x->numel, flx_shape_str(ndim, shape),
                          known == 0 ? "ambiguous" : "not a whole number");
            return NULL;
        }
        s[infer] = x->numel / known;
    } else if (overflow || known != x->numel) {
        flx_set_error(FLX_ERR_SHAPE,
                      "flx_reshape: cannot reshape %s (%lld elements) to %s (%s elements)",
                      flx_describe(x), (long long)x->numel, flx_shape_str(ndim, shape),
                      overflow ? "too many" : "a different number of");
        return NULL;
    }
    return reshape_node(x, ndim, s);
}

flx_tensor *flx_permute(flx_tensor *x, const int32_t *perm) {
    if (!flx_check_inputs("flx_permute", 1, &x)) return NULL;
    if (x->ndim > 0 && !perm) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_permute: perm is NULL for %s", flx_describe(x));
        return NULL;
    }
    bool seen[FLX_MAX_DIMS] = {false};
    int32_t p[FLX_MAX_DIMS];
    for (int32_t i = 0; i < x->ndim; i++) {
        int32_t a = perm[i] < 0 ? perm[i] + x->ndim : perm[i];
        if (a < 0 || a >= x->ndim || seen[a]) {
            char buf[96];
            size_t n = 0;
            for (int32_t j = 0; j < x->ndim && n < 80; j++)
                n += (size_t)snprintf(buf + n, sizeof buf - n, j ? ", %d" : "%d", (int)perm[j]);
            flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                          "flx_permute: (%s) is not a permutation of the %d axes of %s", buf,
                          (int)x->ndim, flx_describe(x));
            return NULL;
        }
        seen[a] = true;
        p[i] = a;
    }
    return permute_node(x, p);
}

flx_tensor *flx_transpose(flx_tensor *x, int32_t axis0, int32_t axis1) {
    if (!flx_check_inputs("flx_transpose", 1, &x)) return NULL;
    int32_t a, b;
    if (!flx_norm_axis("flx_transpose", axis0, x->ndim, &a)) return NULL;
    if (!flx_norm_axis("flx_transpose", axis1, x->ndim, &b)) return NULL;
    int32_t p[FLX_MAX_DIMS];
    for (int32_t i = 0; i < x->ndim; i++) p[i] = i;
    p[a] = b;
    p[b] = a;
    return permute_node(x, p);
}

flx_tensor *flx_broadcast_to(flx_tensor *x, int32_t ndim, const int64_t *shape) {
    if (!flx_check_inputs("flx_broadcast_to", 1, &x)) return NULL;
    if (!check_shape_arg("flx_broadcast_to", x, ndim, shape, false)) return NULL;
    bool ok = ndim >= x->ndim;
    for (int32_t i = 0; ok && i < x->ndim; i++) {
        int64_t xd = x->shape[i], td = shape[ndim - x->ndim + i];
        if (xd != td && xd != 1) ok = false;
    }
    if (!ok) {
        flx_set_error(FLX_ERR_SHAPE, "flx_broadcast_to: cannot broadcast %s to %s",
                      flx_describe(x), flx_shape_str(ndim, shape));
        return NULL;
    }
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_BROADCAST, x->dtype, ndim, shape, 1, &x, NULL));
}

static int64_t clamp_index(int64_t v, int64_t n) {
    if (v < 0) {
        v += n;
        if (v < 0) v = 0;
    }
    return v > n ? n : v;
}

flx_tensor *flx_slice(flx_tensor *x, int32_t axis, int64_t start, int64_t stop, int64_t step) {
    if (!flx_check_inputs("flx_slice", 1, &x)) return NULL;
    int32_t a;
    if (!flx_norm_axis("flx_slice", axis, x->ndim, &a)) return NULL;
    if (step <= 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_slice: step must be > 0, got %lld for %s",
                      (long long)step, flx_describe(x));
        return NULL;
    }
    int64_t n = x->shape[a];
    int64_t b = clamp_index(start, n), e = clamp_index(stop, n);
    int64_t len = e > b ? (e - b - 1) / step + 1 : 0;
    int64_t st[FLX_MAX_DIMS] = {0}, sp[FLX_MAX_DIMS], shape[FLX_MAX_DIMS];
    for (int32_t d = 0; d < x->ndim; d++) {
        sp[d] = 1;
        shape[d] = x->shape[d];
    }
    st[a] = len > 0 ? b : 0;
    sp[a] = len > 1 ? step : 1; /* the step of 0 or 1 element is irrelevant: keep strides small */
    shape[a] = len;
    return slice_node(x, st, sp, shape);
}

/* concat, stack: at least one tensor, each valid and of tensor 0's dtype. */
static bool check_joined(const char *name, int32_t n, flx_tensor *const *xs) {
    if (n <= 0 || !xs) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one tensor (n %d%s)", name,
                      (int)n, xs ? "" : ", xs NULL");
        return false;
    }
    if (!flx_check_inputs(name, n, xs)) return false;
    for (int32_t i = 1; i < n; i++)
        if (xs[i]->dtype != xs[0]->dtype) {
            flx_set_error(FLX_ERR_DTYPE, "%s: tensor %d %s differs in dtype from tensor 0 %s", name,
                          (int)i, flx_describe(xs[i]), flx_describe(xs[0]));
            return false;
        }
    return true;
}

flx_tensor *flx_concat(int32_t n, flx_tensor *const *xs, int32_t axis) {
    if (!check_joined("flx_concat", n, xs)) return NULL;
    flx_tensor *x0 = xs[0];
    int32_t a;
    if (!flx_norm_axis("flx_concat", axis, x0->ndim, &a)) return NULL;
    int64_t shape[FLX_MAX_DIMS];
    for (int32_t d = 0; d < x0->ndim; d++) shape[d] = x0->shape[d];
    shape[a] = 0;
    for (int32_t i = 0; i < n; i++) {
        flx_tensor *x = xs[i];
        bool ok = x->ndim == x0->ndim;
        for (int32_t d = 0; ok && d < x->ndim; d++)
            if (d != a && x->shape[d] != x0->shape[d]) ok = false;
        if (!ok) {
            flx_set_error(FLX_ERR_SHAPE,
                          "flx_concat: tensor %d %s does not match tensor 0 %s outside axis %d",
                          (int)i, flx_describe(x), flx_describe(x0), (int)a);
            return NULL;
        }
        shape[a] += x->shape[a];
    }
    flx_attrs at = {.u.concat.axis = a};
    return flx_adopt(flx_node_new(x0->ctx, FLX_OP_CONCAT, x0->dtype, x0->ndim, shape, n, xs, &at));
}

/* Axis of a result of rank ndim + 1 (insertion position). */
static bool insert_axis(const char *name, const flx_tensor *x, int32_t axis, int32_t *out) {
    int32_t nd = x->ndim + 1;
    if (nd > FLX_MAX_DIMS) {
        flx_set_error(FLX_ERR_SHAPE, "%s: %s already has the most dimensions (%d)", name,
                      flx_describe(x), FLX_MAX_DIMS);
        return false;
    }
    int32_t a = axis < 0 ? axis + nd : axis;
    if (a < 0 || a >= nd) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: axis %d is out of range for a result of rank %d (input %s)",
                      name, (int)axis, (int)nd, flx_describe(x));
        return false;
    }
    *out = a;
    return true;
}

static flx_tensor *unsqueeze_at(flx_tensor *x, int32_t a) {
    int64_t shape[FLX_MAX_DIMS];
    for (int32_t d = 0, j = 0; d <= x->ndim; d++) shape[d] = d == a ? 1 : x->shape[j++];
    return reshape_node(x, x->ndim + 1, shape);
}

flx_tensor *flx_stack(int32_t n, flx_tensor *const *xs, int32_t axis) {
    if (!check_joined("flx_stack", n, xs)) return NULL;
    int32_t a;
    if (!insert_axis("flx_stack", xs[0], axis, &a)) return NULL;
    for (int32_t i = 1; i < n; i++) {
        if (!flx_shape_eq(xs[i]->ndim, xs[i]->shape, xs[0]->ndim, xs[0]->shape)) {
            flx_set_error(FLX_ERR_SHAPE, "flx_stack: tensor %d %s differs in shape from tensor 0 %s",
                          (int)i, flx_describe(xs[i]), flx_describe(xs[0]));
            return NULL;
        }
    }
    flx_tensor *local[16];
    flx_tensor **us =
        n <= 16 ? local : (flx_tensor **)flx_host_calloc((size_t)n, sizeof *us, "flx_stack");
    if (!us) return NULL;
    if (flx_scope_begin() != FLX_OK) {
        if (us != local) free(us);
        return NULL;
    }
    flx_tensor *r = NULL;
    bool ok = true;
    for (int32_t i = 0; i < n && ok; i++) {
        us[i] = unsqueeze_at(xs[i], a);
        ok = us[i] != NULL;
    }
    if (ok) r = flx_concat(n, us, a);
    if (us != local) free(us);
    return flx_scope_return(r);
}

flx_tensor *flx_squeeze(flx_tensor *x, int32_t axis) {
    if (!flx_check_inputs("flx_squeeze", 1, &x)) return NULL;
    int32_t a;
    if (!flx_norm_axis("flx_squeeze", axis, x->ndim, &a)) return NULL;
    if (x->shape[a] != 1) {
        flx_set_error(FLX_ERR_SHAPE, "flx_squeeze: axis %d of %s has size %lld, not 1", (int)axis,
                      flx_describe(x), (long long)x->shape[a]);
        return NULL;
    }
    int64_t shape[FLX_MAX_DIMS];
    for (int32_t d = 0, j = 0; d < x->ndim; d++)
        if (d != a) shape[j++] = x->shape[d];
    return reshape_node(x, x->ndim - 1, shape);
}

flx_tensor *flx_unsqueeze(flx_tensor *x, int32_t axis) {
    if (!flx_check_inputs("flx_unsqueeze", 1, &x)) return NULL;
    int32_t a;
    if (!insert_axis("flx_unsqueeze", x, axis, &a)) return NULL;
    return unsqueeze_at(x, a);
}

static flx_tensor *make_index_select(const char *name, flx_tensor *x, int32_t axis,
                                     flx_tensor *index) {
    flx_tensor *in[2] = {x, index};
    if (!flx_check_inputs(name, 2, in)) return NULL;
    int32_t a;
    if (!flx_norm_axis(name, axis, x->ndim, &a)) return NULL;
    if (index->dtype != FLX_I32 && index->dtype != FLX_I64) {
        flx_set_error(FLX_ERR_DTYPE, "%s: index must be i32 or i64, got %s (x %s)", name,
                      flx_describe(index), flx_describe(x));
        return NULL;
    }
    if (index->ndim != 1) {
        flx_set_error(FLX_ERR_SHAPE, "%s: index must be 1-d, got %s (x %s)", name,
                      flx_describe(index), flx_describe(x));
        return NULL;
    }
    if (!flx_dtype_valid(x->dtype)) {
        flx_set_error(FLX_ERR_DTYPE, "%s: unsupported dtype of x %s", name, flx_describe(x));
        return NULL;
    }
    return index_select_node(x, a, index);
}

flx_tensor *flx_index_select(flx_tensor *x, int32_t axis, flx_tensor *index) {
    return make_index_select("flx_index_select", x, axis, index);
}
flx_tensor *flx_gather(flx_tensor *x, int32_t axis, flx_tensor *index) {
    return make_index_select("flx_gather", x, axis, index);
}

flx_tensor *flx_one_hot(flx_tensor *index, int64_t num_classes, flx_dtype dt) {
    if (!flx_check_inputs("flx_one_hot", 1, &index)) return NULL;
    if (index->dtype != FLX_I32 && index->dtype != FLX_I64) {
        flx_set_error(FLX_ERR_DTYPE, "flx_one_hot: index must be i32 or i64, got %s",
                      flx_describe(index));
        return NULL;
    }
    if (num_classes <= 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_one_hot: num_classes must be > 0, got %lld (index %s)",
                      (long long)num_classes, flx_describe(index));
        return NULL;
    }
    if (!flx_dtype_is_float(dt) && dt != FLX_I32 && dt != FLX_I64) {
        flx_set_error(FLX_ERR_DTYPE, "flx_one_hot: result dtype must be a float dtype, i32 or i64, got %s",
                      flx_dtype_name(dt));
        return NULL;
    }
    int32_t a;
    if (!insert_axis("flx_one_hot", index, -1, &a)) return NULL;
    FLX_COMPOSE_BEGIN();
    flx_tensor *classes = flx_arange(index->ctx, index->dtype, 0.0, (double)num_classes, 1.0);
    flx_tensor *r = flx_cast(flx_eq(unsqueeze_at(index, a), classes), dt);
    return flx_scope_return(r);
}

flx_tensor *flx_pad(flx_tensor *x, const int64_t *pads, double value) {
    if (!flx_check_inputs("flx_pad", 1, &x)) return NULL;
    if (x->ndim > 0 && !pads) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_pad: pads is NULL for %s", flx_describe(x));
        return NULL;
    }
    if (!flx_dtype_is_float(x->dtype) && !isfinite(value)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_pad: value %g does not fit %s", value,
                      flx_describe(x));
        return NULL;
    }
    int64_t lo[FLX_MAX_DIMS], interior[FLX_MAX_DIMS], shape[FLX_MAX_DIMS];
    for (int32_t d = 0; d < x->ndim; d++) {
        int64_t b = pads[2 * d], e = pads[2 * d + 1];
        if (b < 0 || e < 0 || b > INT64_MAX / 4 || e > INT64_MAX / 4) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                          "flx_pad: pads of axis %d must be >= 0, got (%lld, %lld) for %s", (int)d,
                          (long long)b, (long long)e, flx_describe(x));
            return NULL;
        }
        lo[d] = b;
        interior[d] = 0;
        shape[d] = b + x->shape[d] + e;
    }
    return pad_node(x, lo, interior, shape, value);
}
