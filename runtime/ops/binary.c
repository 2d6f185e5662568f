/* binary.c — elementwise binary ops with NumPy broadcasting, comparisons and where.
 * Rules reduce cotangents over broadcast axes (flx_sum_to_shape). */
#include <string.h>

#include "internal.h"
#include "flx_unary_ops.h"

static const char *const binary_names[FLX_BINARY_COUNT] = {
#define FLX_X_NAME(NAME, FN, EXPR) "flx_" #FN,
    FLX_BINARY_ARITH_OPS(FLX_X_NAME)
    FLX_BINARY_COMPARE_OPS(FLX_X_NAME)
#undef FLX_X_NAME
};

/* NumPy broadcast of n shapes; false with the error set if they do not fit. */
static bool broadcast_shapes(const char *op, int32_t n, flx_tensor *const *xs, int32_t *ndim,
                             int64_t *shape) {
    int32_t nd = 0;
    for (int32_t i = 0; i < n; i++)
        if (xs[i]->ndim > nd) nd = xs[i]->ndim;
    for (int32_t d = 0; d < nd; d++) {
        int64_t s = 1;
        for (int32_t i = 0; i < n; i++) {
            int32_t k = d - (nd - xs[i]->ndim);
            if (k < 0) continue;
            int64_t v = xs[i]->shape[k];
            if (v == s || v == 1) continue;
            if (s == 1) {
                s = v;
                continue;
            }
            flx_set_error(FLX_ERR_SHAPE, "%s: shapes %s and %s do not broadcast", op,
                          flx_describe(xs[0]), flx_describe(xs[n > 1 ? (i ? i : 1) : 0]));
            return false;
        }
        shape[d] = s;
    }
    *ndim = nd;
    return true;
}

/* Strides of x read over an output index space of rank nd (0 on broadcast axes); internal.h. */
void flx_broadcast_strides(const flx_tensor *x, int32_t nd, const int64_t *oshape,
                           int64_t *strides) {
    int64_t cs[FLX_MAX_DIMS];
    flx_contiguous_strides(x->ndim, x->shape, cs);
    for (int32_t d = 0; d < nd; d++) {
        int32_t k = d - (nd - x->ndim);
        strides[d] = (k < 0 || (x->shape[k] == 1 && oshape[d] != 1)) ? 0 : cs[k];
    }
}

static flx_status exec_binary(const flx_tensor *t, void *out, const void *const *in) {
    flx_binary_args a = {.op = t->attrs.u.binary.op, .dtype = t->in[0]->dtype, .ndim = t->ndim};
    memcpy(a.shape, t->shape, sizeof a.shape);
    flx_broadcast_strides(t->in[0], t->ndim, t->shape, a.sa);
    flx_broadcast_strides(t->in[1], t->ndim, t->shape, a.sb);
    a.a = in[0];
    a.b = in[1];
    a.out = out;
    return flx_kernel_binary(t->ctx, &a);
}

static flx_status exec_where(const flx_tensor *t, void *out, const void *const *in) {
    flx_where_args a = {.dtype = t->dtype, .ndim = t->ndim};
    memcpy(a.shape, t->shape, sizeof a.shape);
    flx_broadcast_strides(t->in[0], t->ndim, t->shape, a.sc);
    flx_broadcast_strides(t->in[1], t->ndim, t->shape, a.sa);
    flx_broadcast_strides(t->in[2], t->ndim, t->shape, a.sb);
    a.cond = (const uint8_t *)in[0];
    a.a = in[1];
    a.b = in[2];
    a.out = out;
    return flx_kernel_where(t->ctx, &a);
}

/* Rank of a dtype in the promotion order bool < i32 < i64 < f16, bf16 < f32 < f64 (PyTorch's rule
 * for two tensors: a float beats any integer, and within a kind the wider type wins). f16 and
 * bf16 share a rank: neither holds the other (f16 has the bits, bf16 the range), so a mix of the
 * two is computed in f32, which holds both exactly. */
static int promotion_rank(flx_dtype dt) {
    switch (dt) {
    case FLX_BOOL: return 0;
    case FLX_I32: return 1;
    case FLX_I64: return 2;
    case FLX_F16:
    case FLX_BF16: return 3;
    case FLX_F32: return 4;
    case FLX_F64: return 5;
    default: return -1;
    }
}

static flx_tensor *make_binary(int32_t op, flx_tensor *a, flx_tensor *b);

/* a op b after casting the lower-ranked operand to the other's dtype (both to f32 for f16 with
 * bf16). The cast is an op, so the gradient flows back through it to the operand's own dtype. A
 * private scope owns the cast; only the result leaves it. */
static flx_tensor *promoted_binary(int32_t op, flx_tensor *a, flx_tensor *b) {
    int ra = promotion_rank(a->dtype), rb = promotion_rank(b->dtype);
    if (ra < 0 || rb < 0) {
        flx_set_error(FLX_ERR_DTYPE, "%s: unsupported dtypes %s and %s", binary_names[op],
                      flx_describe(a), flx_describe(b));
        return NULL;
    }
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_dtype dt = ra == rb ? FLX_F32 : ra < rb ? b->dtype : a->dtype;
    return flx_scope_return(make_binary(op, flx_cast(a, dt), flx_cast(b, dt)));
}

static flx_tensor *make_binary(int32_t op, flx_tensor *a, flx_tensor *b) {
    const char *name = binary_names[op];
    flx_tensor *in[2] = {a, b};
    if (!flx_check_inputs(name, 2, in)) return NULL;
    if (a->dtype != b->dtype) return promoted_binary(op, a, b);
    bool is_float = flx_dtype_is_float(a->dtype);
    bool int_ok = a->dtype == FLX_I32 || a->dtype == FLX_I64;
    bool ok = FLX_BINARY_IS_COMPARE(op) ? a->dtype != FLX_BOOL
              : (op == FLX_BINARY_DIV || op == FLX_BINARY_POW) ? is_float
                                                                : (is_float || int_ok);
    if (!ok) {
        flx_set_error(FLX_ERR_DTYPE, "%s: unsupported dtype %s", name, flx_dtype_name(a->dtype));
        return NULL;
    }
    int32_t nd;
    int64_t shape[FLX_MAX_DIMS];
    if (!broadcast_shapes(name, 2, in, &nd, shape)) return NULL;
    flx_attrs at = {.u.binary.op = op};
    flx_dtype odt = FLX_BINARY_IS_COMPARE(op) ? FLX_BOOL : a->dtype;
    return flx_adopt(flx_node_new(a->ctx, FLX_OP_BINARY, odt, nd, shape, 2, in, &at));
}

/* Partial derivatives of y = f(a, b): da, db (borrowed tensors, broadcastable to y) with scale
 * factors: the partial is scale * tensor, or just scale when the tensor is NULL. */
typedef struct partial {
    flx_tensor *t;
    double scale;
    bool zero;
} partial;

static flx_status binary_partials(flx_tensor *y, partial *pa, partial *pb) {
    flx_tensor *a = y->in[0], *b = y->in[1];
    pa->t = pb->t = NULL;
    pa->scale = pb->scale = 1.0;
    pa->zero = pb->zero = false;
    switch ((flx_binary_op)y->attrs.u.binary.op) {
    case FLX_BINARY_ADD: break;
    case FLX_BINARY_SUB: pb->scale = -1.0; break;
    case FLX_BINARY_MUL: pa->t = b; pb->t = a; break;
    case FLX_BINARY_DIV: /* 1/b and -a/b^2 = -y/b */
        pa->t = flx_reciprocal(b);
        pb->t = flx_neg(flx_div(y, b));
        break;
    case FLX_BINARY_POW: {
        /* b a^(b-1) and y log(a), with PyTorch's limits where those are 0 * inf: d/da is 0 where
         * b == 0 (a^b is constant 1), d/db is 0 where a == 0 and b >= 0 (0^b is constant on
         * b > 0, and its one-sided limit at b = 0). */
        flx_tensor *zero = flx_zeros(y->ctx, y->dtype, 0, NULL);
        flx_tensor *da = flx_mul(b, flx_pow(a, flx_add_scalar(b, -1.0)));
        pa->t = flx_where(flx_eq(b, zero), zero, da);
        flx_tensor *db = flx_mul(y, flx_log(a));
        pb->t = flx_where(flx_eq(a, zero), flx_where(flx_ge(b, zero), zero, db), db);
        break;
    }
    case FLX_BINARY_MAXIMUM:
    case FLX_BINARY_MINIMUM: {
        /* The gradient goes to the operand the value came from: a on ties and where a is NaN,
         * b where b alone is NaN (the formula's NaN rule), so the two masks sum to one. */
        bool mx = y->attrs.u.binary.op == FLX_BINARY_MAXIMUM;
        flx_tensor *pick_a = flx_add(flx_cast(mx ? flx_ge(a, b) : flx_le(a, b), y->dtype),
                                     flx_cast(flx_ne(a, a), y->dtype));
        pa->t = pick_a;
        pb->t = flx_affine(pick_a, -1.0, 1.0);
        break;
    }
    default: pa->zero = pb->zero = true; return FLX_OK;
    }
    bool need = y->attrs.u.binary.op >= FLX_BINARY_DIV;
    if (need && (!pa->t || !pb->t)) return flx_last_status();
    return FLX_OK;
}

static flx_tensor *apply_partial(const partial *p, flx_tensor *v) {
    flx_tensor *r = p->t ? flx_mul(v, p->t) : v;
    return p->scale != 1.0 ? flx_mul_scalar(r, p->scale) : r;
}

static flx_status vjp_binary(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    partial p[2];
    flx_status s = binary_partials(y, &p[0], &p[1]);
    if (s != FLX_OK) return s;
    for (int i = 0; i < 2; i++) {
        if (p[i].zero || !y->in[i]->requires_grad) continue;
        gin[i] = flx_sum_to_shape(apply_partial(&p[i], g), y->in[i]->ndim, y->in[i]->shape);
        if (!gin[i]) return flx_last_status();
    }
    return FLX_OK;
}

static flx_status jvp_binary(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[0] && !tin[1]) return FLX_OK;
    partial p[2];
    flx_status s = binary_partials(y, &p[0], &p[1]);
    if (s != FLX_OK) return s;
    flx_tensor *acc = NULL;
    for (int i = 0; i < 2; i++) {
        if (p[i].zero || !tin[i]) continue;
        flx_tensor *term = apply_partial(&p[i], tin[i]);
        acc = acc ? flx_add(acc, term) : term;
        if (!acc) return flx_last_status();
    }
    /* A tangent that only broadcasts (e.g. t_b for add with a wider a) must take y's shape. */
    if (acc && !flx_shape_eq(acc->ndim, acc->shape, y->ndim, y->shape))
        acc = flx_broadcast_to(acc, y->ndim, y->shape);
    *tout = acc;
    return (acc || p[0].zero) ? FLX_OK : flx_last_status();
}

/* where: gradient to a where cond holds, to b elsewhere. */
static flx_status vjp_where(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *zero = flx_zeros(y->ctx, y->dtype, 0, NULL);
    for (int i = 1; i < 3; i++) {
        if (!y->in[i]->requires_grad) continue;
        flx_tensor *sel = i == 1 ? flx_where(y->in[0], g, zero) : flx_where(y->in[0], zero, g);
        gin[i] = flx_sum_to_shape(sel, y->in[i]->ndim, y->in[i]->shape);
        if (!gin[i]) return flx_last_status();
    }
    return FLX_OK;
}

static flx_status jvp_where(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[1] && !tin[2]) return FLX_OK;
    flx_tensor *zero = flx_zeros(y->ctx, y->dtype, 0, NULL);
    flx_tensor *r = flx_where(y->in[0], tin[1] ? tin[1] : zero, tin[2] ? tin[2] : zero);
    if (r && !flx_shape_eq(r->ndim, r->shape, y->ndim, y->shape))
        r = flx_broadcast_to(r, y->ndim, y->shape);
    *tout = r;
    return flx_rule_status(r);
}

void flx_ops_register_binary(flx_op_def *t) {
    t[FLX_OP_BINARY] = (flx_op_def){"binary", exec_binary, vjp_binary, jvp_binary, 0};
    t[FLX_OP_WHERE] = (flx_op_def){"where", exec_where, vjp_where, jvp_where, 0};
}

/* ---- public ops ----------------------------------------------------------------------------- */
#define FLX_X_DEF(NAME, FN, EXPR) \
    flx_tensor *flx_##FN(flx_tensor *a, flx_tensor *b) { return make_binary(FLX_BINARY_##NAME, a, b); }
FLX_BINARY_ARITH_OPS(FLX_X_DEF)
FLX_BINARY_COMPARE_OPS(FLX_X_DEF)
#undef FLX_X_DEF

flx_tensor *flx_where(flx_tensor *cond, flx_tensor *a, flx_tensor *b) {
    flx_tensor *in[3] = {cond, a, b};
    if (!flx_check_inputs("flx_where", 3, in)) return NULL;
    if (cond->dtype != FLX_BOOL) {
        flx_set_error(FLX_ERR_DTYPE, "flx_where: cond must be bool, got %s", flx_describe(cond));
        return NULL;
    }
    if (a->dtype != b->dtype) {
        flx_set_error(FLX_ERR_DTYPE, "flx_where: a %s and b %s differ in dtype", flx_describe(a),
                      flx_describe(b));
        return NULL;
    }
    int32_t nd;
    int64_t shape[FLX_MAX_DIMS];
    if (!broadcast_shapes("flx_where", 3, in, &nd, shape)) return NULL;
    return flx_adopt(flx_node_new(a->ctx, FLX_OP_WHERE, a->dtype, nd, shape, 3, in, NULL));
}
