/* backend_cpu.c — the CPU backend: the plain, obviously-correct reference every GPU result is
 * checked against. Float math runs in double and is rounded to the output dtype; reductions and
 * matmul accumulate in double in a fixed order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "flx_unary_ops.h"
#include "philox.h"

/* ---- memory ------------------------------------------------------------------------------ */
static flx_status cpu_init(flx_ctx *ctx) {
    ctx->err_word = (int32_t *)calloc(1, sizeof(int32_t));
    if (!ctx->err_word) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_ctx_create: out of host memory");
    return FLX_OK;
}

static void cpu_shutdown(flx_ctx *ctx) { free(ctx->err_word); }

static void *cpu_alloc(flx_ctx *ctx, size_t nbytes) {
    (void)ctx;
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    if (!p)
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes of host memory", nbytes);
    return p;
}

static void cpu_free(flx_ctx *ctx, void *p) {
    (void)ctx;
    free(p);
}

static flx_status cpu_memcpy(flx_ctx *ctx, void *dst, const void *src, size_t n) {
    (void)ctx;
    memcpy(dst, src, n);
    return FLX_OK;
}

static flx_status cpu_synchronize(flx_ctx *ctx) {
    int32_t e = *ctx->err_word;
    *ctx->err_word = FLX_KERR_NONE;
    if (e == FLX_KERR_INDEX_RANGE)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                             "an index op met an index out of range (read as 0)");
    if (e == FLX_KERR_SINGULAR) /* LU family (issue 4) */
        return flx_set_error(FLX_ERR_NUMERIC, "flx_inv/flx_solve: the matrix is singular (a zero "
                             "pivot in its LU factorisation); use the _ex variant for per-matrix info");
    if (e == FLX_KERR_EIGH_NOCONV) /* eigh (issue 4) */
        return flx_set_error(FLX_ERR_NUMERIC, "flx_eigh: the eigensolver did not converge (non-finite "
                             "input?)");
    return FLX_OK;
}

static flx_status cpu_download(flx_ctx *ctx, void *dst, const void *src, size_t n) {
    memcpy(dst, src, n);
    return cpu_synchronize(ctx);
}

/* ---- typed element access ------------------------------------------------------------------ */
static inline double load(flx_dtype dt, const void *p, int64_t i) {
    switch (dt) {
    case FLX_F32: return ((const float *)p)[i];
    case FLX_F64: return ((const double *)p)[i];
    case FLX_I32: return ((const int32_t *)p)[i];
    case FLX_I64: return (double)((const int64_t *)p)[i];
    case FLX_BOOL: return ((const uint8_t *)p)[i];
    default: return 0;
    }
}

static inline void store(flx_dtype dt, void *p, int64_t i, double v) {
    switch (dt) {
    case FLX_F32: ((float *)p)[i] = (float)v; break;
    case FLX_F64: ((double *)p)[i] = v; break;
    case FLX_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case FLX_I64: ((int64_t *)p)[i] = (int64_t)v; break;
    case FLX_BOOL: ((uint8_t *)p)[i] = v != 0; break;
    default: break;
    }
}

/* Integers go through int64 so large values stay exact. */
static inline int64_t load_i(flx_dtype dt, const void *p, int64_t i) {
    switch (dt) {
    case FLX_I32: return ((const int32_t *)p)[i];
    case FLX_I64: return ((const int64_t *)p)[i];
    case FLX_BOOL: return ((const uint8_t *)p)[i];
    default: return (int64_t)load(dt, p, i);
    }
}

/* Odometer over an index space: advances idx and the running offsets of up to 3 operands. */
typedef struct odo {
    int32_t ndim;
    const int64_t *shape;
    int64_t idx[FLX_MAX_DIMS];
    int64_t off[3];
    const int64_t *strides[3];
    int32_t nops;
} odo;

static void odo_init(odo *o, int32_t ndim, const int64_t *shape, int32_t nops,
                     const int64_t *s0, const int64_t *s1, const int64_t *s2) {
    o->ndim = ndim;
    o->shape = shape;
    memset(o->idx, 0, sizeof o->idx);
    o->off[0] = o->off[1] = o->off[2] = 0;
    o->strides[0] = s0;
    o->strides[1] = s1;
    o->strides[2] = s2;
    o->nops = nops;
}

static inline void odo_next(odo *o) {
    for (int32_t d = o->ndim - 1; d >= 0; d--) {
        o->idx[d]++;
        for (int32_t k = 0; k < o->nops; k++) o->off[k] += o->strides[k][d];
        if (o->idx[d] < o->shape[d]) return;
        for (int32_t k = 0; k < o->nops; k++) o->off[k] -= o->strides[k][d] * o->shape[d];
        o->idx[d] = 0;
    }
}

/* ---- fill, cast ------------------------------------------------------------------------------ */
static flx_status cpu_fill(flx_ctx *ctx, const flx_fill_args *a) {
    (void)ctx;
    int is64 = a->dtype == FLX_F64;
    for (int64_t i = 0; i < a->n; i++) {
        double v = 0;
        switch (a->kind) {
        case FLX_FILL_CONST: v = a->a; break;
        case FLX_FILL_IOTA: v = a->a + (double)i * a->b; break;
        case FLX_FILL_EYE: v = (i / a->cols) == (i % a->cols); break;
        case FLX_FILL_UNIFORM: {
            double u = flx_philox_uniform((uint64_t)i, a->seed, is64);
            v = a->a + (a->b - a->a) * u;
            if (v >= a->b && a->b > a->a) v = a->a; /* rounding must not reach hi */
            break;
        }
        case FLX_FILL_NORMAL: v = a->a + a->b * flx_philox_normal((uint64_t)i, a->seed); break;
        }
        store(a->dtype, a->out, i, v);
    }
    return FLX_OK;
}

static flx_status cpu_cast(flx_ctx *ctx, const flx_cast_args *a) {
    (void)ctx;
    bool ints = !flx_dtype_is_float(a->src_dtype) && !flx_dtype_is_float(a->dst_dtype);
    for (int64_t i = 0; i < a->n; i++) {
        if (ints) {
            int64_t v = load_i(a->src_dtype, a->src, i);
            switch (a->dst_dtype) {
            case FLX_I32: ((int32_t *)a->dst)[i] = (int32_t)v; break;
            case FLX_I64: ((int64_t *)a->dst)[i] = v; break;
            default: ((uint8_t *)a->dst)[i] = v != 0; break;
            }
        } else {
            store(a->dst_dtype, a->dst, i, load(a->src_dtype, a->src, i));
        }
    }
    return FLX_OK;
}

/* ---- unary ------------------------------------------------------------------------------------ */
static flx_status cpu_unary(flx_ctx *ctx, const flx_unary_args *ar) {
    (void)ctx;
    typedef double T;
    const double a = ar->a, b = ar->b;
    (void)a;
    (void)b;
    switch (ar->op) {
#define FLX_X_CASE(NAME, EXPR)                                        \
    case FLX_UNARY_##NAME:                                            \
        for (int64_t i = 0; i < ar->n; i++) {                         \
            T x = load(ar->dtype, ar->x, i);                          \
            store(ar->dtype, ar->y, i, (EXPR));                       \
        }                                                             \
        break;
        FLX_UNARY_OPS(FLX_X_CASE)
#undef FLX_X_CASE
    default: return flx_set_error(FLX_ERR_UNSUPPORTED, "cpu: unknown unary op %d", (int)ar->op);
    }
    return FLX_OK;
}

/* ---- binary, where -------------------------------------------------------------------------- */
static flx_status cpu_binary(flx_ctx *ctx, const flx_binary_args *ar) {
    (void)ctx;
    int64_t n = flx_shape_numel(ar->ndim, ar->shape);
    odo o;
    odo_init(&o, ar->ndim, ar->shape, 2, ar->sa, ar->sb, NULL);
    bool is_int = !flx_dtype_is_float(ar->dtype);
    for (int64_t i = 0; i < n; i++, odo_next(&o)) {
        if (is_int) {
            int64_t a = load_i(ar->dtype, ar->a, o.off[0]), b = load_i(ar->dtype, ar->b, o.off[1]);
            int64_t r = 0;
            switch (ar->op) {
#define FLX_X_CASE(NAME, EXPR) case FLX_BINARY_##NAME: r = (int64_t)(EXPR); break;
                FLX_BINARY_ARITH_OPS(FLX_X_CASE)
                FLX_BINARY_COMPARE_OPS(FLX_X_CASE)
#undef FLX_X_CASE
            }
            if (FLX_BINARY_IS_COMPARE(ar->op)) ((uint8_t *)ar->out)[i] = (uint8_t)r;
            else if (ar->dtype == FLX_I32) ((int32_t *)ar->out)[i] = (int32_t)r;
            else ((int64_t *)ar->out)[i] = r;
        } else {
            double a = load(ar->dtype, ar->a, o.off[0]), b = load(ar->dtype, ar->b, o.off[1]);
            double r = 0;
            switch (ar->op) {
#define FLX_X_CASE(NAME, EXPR) case FLX_BINARY_##NAME: r = (double)(EXPR); break;
                FLX_BINARY_ARITH_OPS(FLX_X_CASE)
                FLX_BINARY_COMPARE_OPS(FLX_X_CASE)
#undef FLX_X_CASE
            }
            if (FLX_BINARY_IS_COMPARE(ar->op)) ((uint8_t *)ar->out)[i] = (uint8_t)r;
            else store(ar->dtype, ar->out, i, r);
        }
    }
    return FLX_OK;
}

static flx_status cpu_where(flx_ctx *ctx, const flx_where_args *ar) {
    (void)ctx;
    int64_t n = flx_shape_numel(ar->ndim, ar->shape);
    size_t es = flx_dtype_size(ar->dtype);
    odo o;
    odo_init(&o, ar->ndim, ar->shape, 3, ar->sc, ar->sa, ar->sb);
    for (int64_t i = 0; i < n; i++, odo_next(&o)) {
        const char *src = ar->cond[o.off[0]] ? (const char *)ar->a + (size_t)o.off[1] * es
                                             : (const char *)ar->b + (size_t)o.off[2] * es;
        memcpy((char *)ar->out + (size_t)i * es, src, es);
    }
    return FLX_OK;
}

/* ---- copy ------------------------------------------------------------------------------------ */
static flx_status cpu_copy(flx_ctx *ctx, const flx_copy_args *ar) {
    (void)ctx;
    int64_t n = flx_shape_numel(ar->ndim, ar->shape);
    size_t es = ar->elem_size;
    odo o;
    odo_init(&o, ar->ndim, ar->shape, 2, ar->in_strides, ar->out_strides, NULL);
    const char *in = (const char *)ar->in;
    char *out = (char *)ar->out;
    for (int64_t i = 0; i < n; i++, odo_next(&o))
        memcpy(out + (size_t)(ar->out_off + o.off[1]) * es, in + (size_t)(ar->in_off + o.off[0]) * es, es);
    return FLX_OK;
}

/* ---- reduce ---------------------------------------------------------------------------------- */
static flx_status cpu_reduce(flx_ctx *ctx, const flx_reduce_args *ar) {
    (void)ctx;
    int64_t nk = flx_shape_numel(ar->kdim, ar->kshape);
    int64_t nr = flx_shape_numel(ar->rdim, ar->rshape);
    odo ko;
    odo_init(&ko, ar->kdim, ar->kshape, 1, ar->kstride, NULL, NULL);
    for (int64_t k = 0; k < nk; k++, odo_next(&ko)) {
        int64_t base = ko.off[0];
        odo ro;
        double acc = 0, m = -INFINITY, mn = INFINITY;
        int64_t best = 0;
        if (ar->op == FLX_REDUCE_MAX || ar->op == FLX_REDUCE_LSE || ar->op == FLX_REDUCE_ARGMAX) {
            odo_init(&ro, ar->rdim, ar->rshape, 1, ar->rstride, NULL, NULL);
            bool nan = false;
            for (int64_t r = 0; r < nr; r++, odo_next(&ro)) {
                double v = load(ar->dtype, ar->x, base + ro.off[0]);
                if (isnan(v)) {
                    if (!nan) best = r;
                    nan = true;
                }
                if (!nan && (v > m || r == 0)) {
                    m = v;
                    best = r;
                }
            }
            if (nan) m = NAN;
        }
        if (ar->op == FLX_REDUCE_MIN) {
            odo_init(&ro, ar->rdim, ar->rshape, 1, ar->rstride, NULL, NULL);
            bool nan = false;
            for (int64_t r = 0; r < nr; r++, odo_next(&ro)) {
                double v = load(ar->dtype, ar->x, base + ro.off[0]);
                nan = nan || isnan(v);
                if (v < mn) mn = v;
            }
            if (nan) mn = NAN;
        }
        double mean = 0;
        if (ar->op == FLX_REDUCE_VAR) {
            odo_init(&ro, ar->rdim, ar->rshape, 1, ar->rstride, NULL, NULL);
            for (int64_t r = 0; r < nr; r++, odo_next(&ro)) mean += load(ar->dtype, ar->x, base + ro.off[0]);
            mean /= (double)nr;
        }
        if (ar->op == FLX_REDUCE_SUM || ar->op == FLX_REDUCE_VAR || ar->op == FLX_REDUCE_LSE) {
            odo_init(&ro, ar->rdim, ar->rshape, 1, ar->rstride, NULL, NULL);
            double shift = isfinite(m) ? m : 0;
            for (int64_t r = 0; r < nr; r++, odo_next(&ro)) {
                double v = load(ar->dtype, ar->x, base + ro.off[0]);
                if (ar->op == FLX_REDUCE_SUM) acc += v;
                else if (ar->op == FLX_REDUCE_VAR) acc += (v - mean) * (v - mean);
                else acc += exp(v - shift);
            }
            if (ar->op == FLX_REDUCE_LSE) acc = isnan(m) ? NAN : (m == -INFINITY ? -INFINITY : shift + log(acc));
        }
        switch (ar->op) {
        case FLX_REDUCE_SUM: store(ar->dtype, ar->out, k, ar->param * acc); break;
        case FLX_REDUCE_VAR: store(ar->dtype, ar->out, k, acc / ((double)nr - ar->param)); break;
        case FLX_REDUCE_LSE: store(ar->dtype, ar->out, k, acc); break;
        case FLX_REDUCE_MAX: store(ar->dtype, ar->out, k, m); break;
        case FLX_REDUCE_MIN: store(ar->dtype, ar->out, k, mn); break;
        case FLX_REDUCE_ARGMAX: ((int64_t *)ar->out)[k] = best; break;
        default: return flx_set_error(FLX_ERR_UNSUPPORTED, "cpu: unknown reduce op %d", (int)ar->op);
        }
    }
    return FLX_OK;
}

/* ---- matmul ---------------------------------------------------------------------------------- */
static flx_status cpu_matmul(flx_ctx *ctx, const flx_matmul_args *ar) {
    (void)ctx;
    const int64_t m = ar->m, n = ar->n, k = ar->k;
    double *row = (double *)malloc((size_t)(n ? n : 1) * sizeof *row);
    if (!row) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cpu matmul: out of host memory");
    for (int64_t bt = 0; bt < ar->batch; bt++) {
        int64_t oa = bt * ar->sa, ob = bt * ar->sb, oc = bt * ar->sc;
        for (int64_t i = 0; i < m; i++) {
            for (int64_t j = 0; j < n; j++) row[j] = 0;
            for (int64_t p = 0; p < k; p++) {
                /* no skip of zero entries: 0 * inf and 0 * NaN must give NaN, as in cuBLAS */
                double av = load(ar->dtype, ar->a, oa + (ar->ta ? p * m + i : i * k + p));
                if (ar->tb) {
                    for (int64_t j = 0; j < n; j++) row[j] += av * load(ar->dtype, ar->b, ob + j * k + p);
                } else if (ar->dtype == FLX_F32) {
                    const float *bp = (const float *)ar->b + ob + p * n;
                    for (int64_t j = 0; j < n; j++) row[j] += av * (double)bp[j];
                } else {
                    const double *bp = (const double *)ar->b + ob + p * n;
                    for (int64_t j = 0; j < n; j++) row[j] += av * bp[j];
                }
            }
            for (int64_t j = 0; j < n; j++) {
                double v = ar->alpha * row[j];
                if (ar->beta != 0) v += ar->beta * load(ar->dtype, ar->c, oc + i * n + j);
                store(ar->dtype, ar->c, oc + i * n + j, v);
            }
        }
    }
    free(row);
    return FLX_OK;
}

/* ---- index ------------------------------------------------------------------------------------ */
static flx_status cpu_index(flx_ctx *ctx, const flx_index_args *ar) {
    (void)ctx;
    size_t es = flx_dtype_size(ar->dtype);
    const char *src = (const char *)ar->src;
    char *out = (char *)ar->out;
    if (ar->mode == FLX_INDEX_SELECT) {
        for (int64_t o = 0; o < ar->outer; o++)
            for (int64_t j = 0; j < ar->n_idx; j++) {
                int64_t t = load_i(ar->idx_dtype, ar->idx, j);
                char *dst = out + (size_t)((o * ar->n_idx + j) * ar->inner) * es;
                if (t < 0 || t >= ar->n_src) {
                    *ar->err = FLX_KERR_INDEX_RANGE;
                    memset(dst, 0, (size_t)ar->inner * es);
                    continue;
                }
                memcpy(dst, src + (size_t)((o * ar->n_src + t) * ar->inner) * es, (size_t)ar->inner * es);
            }
        return FLX_OK;
    }
    /* ADD: out (outer, n_src, inner) = sum of src (outer, n_idx, inner) rows by index. */
    int64_t total = ar->outer * ar->n_src * ar->inner;
    for (int64_t i = 0; i < total; i++) store(ar->dtype, ar->out, i, 0);
    for (int64_t o = 0; o < ar->outer; o++)
        for (int64_t j = 0; j < ar->n_idx; j++) {
            int64_t t = load_i(ar->idx_dtype, ar->idx, j);
            if (t < 0 || t >= ar->n_src) {
                *ar->err = FLX_KERR_INDEX_RANGE;
                continue;
            }
            for (int64_t i = 0; i < ar->inner; i++) {
                int64_t d = (o * ar->n_src + t) * ar->inner + i;
                store(ar->dtype, ar->out, d,
                      load(ar->dtype, ar->out, d) + load(ar->dtype, ar->src, (o * ar->n_idx + j) * ar->inner + i));
            }
        }
    return FLX_OK;
}

const flx_backend flx_backend_cpu = {
    .name = "cpu",
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_download,
    .copy_d2d = cpu_memcpy,
    .synchronize = cpu_synchronize,
    .fill = cpu_fill,
    .cast = cpu_cast,
    .unary = cpu_unary,
    .binary = cpu_binary,
    .where = cpu_where,
    .copy = cpu_copy,
    .reduce = cpu_reduce,
    .matmul = cpu_matmul,
    .index = cpu_index,
    .conv = flx_cpu_conv, /* nn sliding windows: runtime/cpu_conv.c */
    .lu = flx_cpu_lu, /* LU family: runtime/cpu_lu.c (issue 4) */
    .softmax = flx_cpu_softmax, /* softmax family: runtime/cpu_softmax.c */
    .optim = flx_cpu_optim, /* fused optimisers: runtime/cpu_optim.c (issue 5) */
    .eigh = flx_cpu_eigh, /* eigh: runtime/cpu_eigh.c (issue 4) */
};
