/* linalg.c — linear algebra: matmul (NumPy semantics, batched, broadcast batch dims), dot,
 * outer, trace, diag and diagonal.
 *
 * One MATMUL node computes C[b] = op(A[b]) op(B[b]) for operands of rank >= 2 whose batch dims
 * are either the full broadcast batch shape or hold a single matrix (batch stride 0). The
 * transpose flags (attrs.u.matmul.ta/tb) let the VJP form g B^T and A^T g without copies. The
 * 1-d cases of flx_matmul are reshapes around a 2-d product.
 *
 * DIAG writes a 1-d v of length min(r, c) on the main diagonal of a zero (r, c) matrix (r == c
 * for flx_diag; the general shape serves the VJP of DIAGONAL); DIAGONAL reads it back. Each is
 * the other's transpose, so their rules are each other. */
#include <string.h>

#include "internal.h"

/* ---- helpers ------------------------------------------------------------------------------ */
static bool same_dtype(const char *op, const flx_tensor *a, const flx_tensor *b) {
    if (a->dtype == b->dtype) return true;
    flx_set_error(FLX_ERR_DTYPE, "%s: dtypes differ: a %s and b %s (cast one with flx_cast)", op,
                  flx_describe(a), flx_describe(b));
    return false;
}

static bool check_rank(const char *op, const char *what, const flx_tensor *t, int32_t ndim) {
    if (t->ndim == ndim) return true;
    flx_set_error(FLX_ERR_SHAPE, "%s: %s must be %d-d, got %s", op, what, (int)ndim,
                  flx_describe(t));
    return false;
}

/* The inner dimension of a product: a's ak columns against b's bk rows. */
static bool inner_match(const char *op, const flx_tensor *a, int64_t ak, const flx_tensor *b,
                        int64_t bk) {
    if (ak == bk) return true;
    flx_set_error(FLX_ERR_SHAPE,
                  "%s: inner dimensions differ: a %s has %lld columns but b %s has %lld rows", op,
                  flx_describe(a), (long long)ak, flx_describe(b), (long long)bk);
    return false;
}

/* Broadcast of the batch dims (all but the last two) of a and b; false with the error set. */
static bool batch_broadcast(const char *op, const flx_tensor *a, const flx_tensor *b,
                            int32_t *nb, int64_t *shape) {
    int32_t na = a->ndim - 2, nbb = b->ndim - 2;
    int32_t n = na > nbb ? na : nbb;
    for (int32_t d = 0; d < n; d++) {
        int32_t ia = d - (n - na), ib = d - (n - nbb);
        int64_t va = ia >= 0 ? a->shape[ia] : 1, vb = ib >= 0 ? b->shape[ib] : 1;
        if (va != vb && va != 1 && vb != 1) {
            flx_set_error(FLX_ERR_SHAPE, "%s: batch dims of a %s and b %s do not broadcast", op,
                          flx_describe(a), flx_describe(b));
            return false;
        }
        shape[d] = va == 1 ? vb : va;
    }
    *nb = n;
    return true;
}

/* ---- matmul ------------------------------------------------------------------------------- */
static flx_status fill_zeros(const flx_tensor *t, void *out) {
    flx_fill_args f = {
        .kind = FLX_FILL_CONST, .dtype = t->dtype, .n = t->numel, .a = 0.0, .out = out
    };
    return flx_kernel_fill(t->ctx, &f);
}

static flx_status exec_matmul(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    const flx_tensor *A = t->in[0], *B = t->in[1];
    int32_t ta = t->attrs.u.matmul.ta, tb = t->attrs.u.matmul.tb;
    int64_t m = t->shape[t->ndim - 2], n = t->shape[t->ndim - 1];
    int64_t k = ta ? A->shape[A->ndim - 2] : A->shape[A->ndim - 1];
    if (k == 0) return fill_zeros(t, out);
    flx_matmul_args a = {
        .dtype = t->dtype, .batch = flx_shape_numel(t->ndim - 2, t->shape), .m = m, .n = n, .k = k,
        .ta = ta, .tb = tb, .alpha = 1.0, .beta = 0.0, .a = in[0],
        .sa = flx_shape_numel(A->ndim - 2, A->shape) == 1 ? 0 : m * k, .b = in[1],
        .sb = flx_shape_numel(B->ndim - 2, B->shape) == 1 ? 0 : k * n, .c = out, .sc = m * n
    };
    return flx_kernel_matmul(t->ctx, &a);
}

/* op(a) @ op(b) for operands of rank >= 2 (same dtype and context, checked by the caller).
 * An operand whose batch holds more than one matrix but not the full broadcast batch shape is
 * materialised with flx_broadcast_to. Returns an adopted tensor. */
static flx_tensor *mm_node(flx_tensor *a, flx_tensor *b, int32_t ta, int32_t tb) {
    static const char *op = "flx_matmul";
    flx_tensor *in[2] = {a, b};
    if (!flx_check_inputs(op, 2, in)) return NULL;
    if (a->ndim < 2 || b->ndim < 2) {
        flx_set_error(FLX_ERR_SHAPE, "%s: internal product needs rank >= 2, got a %s and b %s",
                      op, flx_describe(a), flx_describe(b));
        return NULL;
    }
    int64_t am = ta ? a->shape[a->ndim - 1] : a->shape[a->ndim - 2];
    int64_t ak = ta ? a->shape[a->ndim - 2] : a->shape[a->ndim - 1];
    int64_t bk = tb ? b->shape[b->ndim - 1] : b->shape[b->ndim - 2];
    int64_t bn = tb ? b->shape[b->ndim - 2] : b->shape[b->ndim - 1];
    if (!inner_match(op, a, ak, b, bk)) return NULL;
    int32_t nb;
    int64_t shape[FLX_MAX_DIMS];
    if (!batch_broadcast(op, a, b, &nb, shape)) return NULL;
    int64_t nbatch = flx_shape_numel(nb, shape);
    flx_tensor *x[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        flx_tensor *t = x[i];
        int64_t own = flx_shape_numel(t->ndim - 2, t->shape);
        if (own == 1 || own == nbatch) continue;
        int64_t full[FLX_MAX_DIMS];
        memcpy(full, shape, sizeof(int64_t) * (size_t)nb);
        full[nb] = t->shape[t->ndim - 2];
        full[nb + 1] = t->shape[t->ndim - 1];
        x[i] = flx_broadcast_to(t, nb + 2, full);
        if (!x[i]) return NULL;
    }
    shape[nb] = am;
    shape[nb + 1] = bn;
    flx_attrs at = {.u.matmul.ta = ta, .u.matmul.tb = tb};
    return flx_adopt(flx_node_new(a->ctx, FLX_OP_MATMUL, a->dtype, nb + 2, shape, 2, x, &at));
}

/* C = op(A) op(B), G = dC:
 *   dA = G op(B)^T (stored transposed when ta: op(B) G^T),
 *   dB = op(A)^T G (stored transposed when tb: G^T op(A)),
 * then summed over the batch axes the operand was broadcast along. */
static flx_status vjp_matmul(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *A = y->in[0], *B = y->in[1];
    int32_t ta = y->attrs.u.matmul.ta, tb = y->attrs.u.matmul.tb;
    if (A->requires_grad) {
        flx_tensor *r = !ta ? mm_node(g, B, 0, !tb) : mm_node(B, g, tb, 1);
        gin[0] = flx_sum_to_shape(r, A->ndim, A->shape);
        if (!gin[0]) return flx_last_status();
    }
    if (B->requires_grad) {
        flx_tensor *r = !tb ? mm_node(A, g, !ta, 0) : mm_node(g, A, 1, ta);
        gin[1] = flx_sum_to_shape(r, B->ndim, B->shape);
        if (!gin[1]) return flx_last_status();
    }
    return FLX_OK;
}

static flx_status jvp_matmul(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[0] && !tin[1]) return FLX_OK;
    int32_t ta = y->attrs.u.matmul.ta, tb = y->attrs.u.matmul.tb;
    flx_tensor *acc = NULL;
    if (tin[0]) {
        acc = mm_node(tin[0], y->in[1], ta, tb);
        if (!acc) return flx_last_status();
    }
    if (tin[1]) {
        flx_tensor *term = mm_node(y->in[0], tin[1], ta, tb);
        acc = acc ? flx_add(acc, term) : term;
        if (!acc) return flx_last_status();
    }
    if (!flx_shape_eq(acc->ndim, acc->shape, y->ndim, y->shape)) acc = flx_broadcast_to(acc, y->ndim, y->shape);
    *tout = acc;
    return flx_rule_status(acc);
}

/* Common checks of the binary public ops: inputs, one dtype, a float dtype. */
static bool check_pair(const char *op, flx_tensor *a, flx_tensor *b) {
    flx_tensor *in[2] = {a, b};
    if (!flx_check_inputs(op, 2, in)) return false;
    if (!same_dtype(op, a, b)) return false;
    return flx_check_float(op, a);
}

/* Result of a composite op built inside its own scope: moves r out (NULL-safe). */
flx_tensor *flx_matmul(flx_tensor *a, flx_tensor *b) {
    static const char *op = "flx_matmul";
    if (!check_pair(op, a, b)) return NULL;
    if (a->ndim == 0 || b->ndim == 0) {
        flx_set_error(FLX_ERR_SHAPE,
                      "%s: operands must have rank >= 1 (use flx_mul for scalars), got a %s and b %s",
                      op, flx_describe(a), flx_describe(b));
        return NULL;
    }
    int64_t ka = a->shape[a->ndim - 1];
    int64_t kb = b->ndim == 1 ? b->shape[0] : b->shape[b->ndim - 2];
    if (!inner_match(op, a, ka, b, kb)) return NULL;
    bool va = a->ndim == 1, vb = b->ndim == 1;
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *a2 = a, *b2 = b;
    if (va) {
        int64_t s[2] = {1, ka};
        a2 = flx_reshape(a, 2, s);
    }
    if (vb) {
        int64_t s[2] = {kb, 1};
        b2 = flx_reshape(b, 2, s);
    }
    flx_tensor *r = (a2 && b2) ? mm_node(a2, b2, 0, 0) : NULL;
    if (r && (va || vb)) {
        /* Drop the row axis of a vector a (-2) and the column axis of a vector b (-1). */
        int64_t s[FLX_MAX_DIMS];
        int32_t nd = 0;
        for (int32_t d = 0; d < r->ndim; d++) {
            if (va && d == r->ndim - 2) continue;
            if (vb && d == r->ndim - 1) continue;
            s[nd++] = r->shape[d];
        }
        r = flx_reshape(r, nd, s);
    }
    return flx_scope_return(r);
}

flx_tensor *flx_matmul_bt(flx_tensor *a, flx_tensor *b) {
    if (!check_pair("flx_matmul", a, b)) return NULL;
    return mm_node(a, b, 0, 1);
}

flx_tensor *flx_dot(flx_tensor *a, flx_tensor *b) {
    static const char *op = "flx_dot";
    if (!check_pair(op, a, b)) return NULL;
    if (!check_rank(op, "a", a, 1) || !check_rank(op, "b", b, 1)) return NULL;
    if (a->shape[0] != b->shape[0]) {
        flx_set_error(FLX_ERR_SHAPE, "%s: lengths differ: a %s and b %s", op, flx_describe(a),
                      flx_describe(b));
        return NULL;
    }
    return flx_matmul(a, b);
}

flx_tensor *flx_outer(flx_tensor *a, flx_tensor *b) {
    static const char *op = "flx_outer";
    if (!check_pair(op, a, b)) return NULL;
    if (!check_rank(op, "a", a, 1) || !check_rank(op, "b", b, 1)) return NULL;
    if (flx_scope_begin() != FLX_OK) return NULL;
    int64_t sa[2] = {a->shape[0], 1}, sb[2] = {1, b->shape[0]};
    flx_tensor *a2 = flx_reshape(a, 2, sa), *b2 = flx_reshape(b, 2, sb);
    flx_tensor *r = (a2 && b2) ? mm_node(a2, b2, 0, 0) : NULL;
    return flx_scope_return(r);
}

/* ---- diag / diagonal ---------------------------------------------------------------------- */
static flx_status exec_diag(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    flx_status s = fill_zeros(t, out);
    if (s != FLX_OK) return s;
    const flx_tensor *v = t->in[0];
    if (v->numel == 0) return FLX_OK;
    flx_copy_args c = {.elem_size = flx_dtype_size(t->dtype), .ndim = 1};
    c.shape[0] = v->shape[0];
    c.in_strides[0] = 1;
    c.out_strides[0] = t->shape[1] + 1;
    c.in = in[0];
    c.out = out;
    return flx_kernel_copy(t->ctx, &c);
}

static flx_status exec_diagonal(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    const flx_tensor *a = t->in[0];
    flx_copy_args c = {.elem_size = flx_dtype_size(t->dtype), .ndim = 1};
    c.shape[0] = t->shape[0];
    c.in_strides[0] = a->shape[1] + 1;
    c.out_strides[0] = 1;
    c.in = in[0];
    c.out = out;
    return flx_kernel_copy(t->ctx, &c);
}

/* A zero (r, c) matrix with the 1-d v (length min(r, c)) on its main diagonal. */
static flx_tensor *diag_node(const char *op, flx_tensor *v, int64_t r, int64_t c) {
    if (!flx_check_inputs(op, 1, &v)) return NULL;
    if (!check_rank(op, "v", v, 1)) return NULL;
    if (!flx_check_float(op, v)) return NULL;
    int64_t len = r < c ? r : c;
    if (v->shape[0] != len) {
        flx_set_error(FLX_ERR_SHAPE, "%s: diagonal of a (%lld, %lld) matrix needs length %lld, got %s",
                      op, (long long)r, (long long)c, (long long)len, flx_describe(v));
        return NULL;
    }
    int64_t shape[2] = {r, c};
    return flx_adopt(flx_node_new(v->ctx, FLX_OP_DIAG, v->dtype, 2, shape, 1, &v, NULL));
}

flx_tensor *flx_diag(flx_tensor *v) {
    if (!flx_check_inputs("flx_diag", 1, &v)) return NULL;
    if (!check_rank("flx_diag", "v", v, 1)) return NULL;
    return diag_node("flx_diag", v, v->shape[0], v->shape[0]);
}

flx_tensor *flx_diagonal(flx_tensor *a) {
    static const char *op = "flx_diagonal";
    if (!flx_check_inputs(op, 1, &a)) return NULL;
    if (!check_rank(op, "a", a, 2)) return NULL;
    if (!flx_check_float(op, a)) return NULL;
    int64_t len = a->shape[0] < a->shape[1] ? a->shape[0] : a->shape[1];
    return flx_adopt(flx_node_new(a->ctx, FLX_OP_DIAGONAL, a->dtype, 1, &len, 1, &a, NULL));
}

flx_tensor *flx_trace(flx_tensor *a) {
    static const char *op = "flx_trace";
    if (!flx_check_inputs(op, 1, &a)) return NULL;
    if (!check_rank(op, "a", a, 2)) return NULL;
    if (!flx_check_float(op, a)) return NULL;
    if (flx_scope_begin() != FLX_OK) return NULL;
    return flx_scope_return(flx_sum_all(flx_diagonal(a)));
}

static flx_status vjp_diag(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    gin[0] = flx_diagonal(g);
    return flx_rule_status(gin[0]);
}

static flx_status vjp_diagonal(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    const flx_tensor *a = y->in[0];
    gin[0] = diag_node("flx_diagonal", g, a->shape[0], a->shape[1]);
    return flx_rule_status(gin[0]);
}

void flx_ops_register_linalg(flx_op_def *t) {
    t[FLX_OP_MATMUL] = (flx_op_def){"matmul", exec_matmul, vjp_matmul, jvp_matmul, 0};
    t[FLX_OP_DIAG] = (flx_op_def){"diag", exec_diag, vjp_diag, flx_jvp_linear, 0};
    t[FLX_OP_DIAGONAL] = (flx_op_def){"diagonal", exec_diagonal, vjp_diagonal, flx_jvp_linear, 0};
}
