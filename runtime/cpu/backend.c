/* backend_cpu.c — the CPU backend: the plain, obviously-correct reference every GPU result is
 * checked against. Float math runs in double and is rounded to the output dtype; reductions and
 * matmul accumulate in double in a fixed order (matmul through a CBLAS dgemm when one was found at
 * configure time: see the matmul section). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "flx_unary_ops.h"
#include "philox.h"
#ifdef FLX_WITH_BLAS
#include <cblas.h> /* issue 5: the CPU matmul's dgemm (CMake option FLX_CPU_BLAS) */
#include <limits.h>
#endif

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
    case FLX_I32: ((int32_t *)p)[i] = flx_f2i32(v); break; /* saturating, NaN -> 0 */
    case FLX_I64: ((int64_t *)p)[i] = flx_f2i64(v); break;
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
    default: return flx_f2i64(load(dt, p, i));
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
/* Float fast path (issue 5: CPU training speed). Dimensions along which both inputs are
 * contiguous (and size-1 dimensions) are merged, then the innermost dimension runs as one loop
 * per op and dtype with the op chosen once per call. Every element is computed by the same double
 * formula and rounded the same way as in the general loop below, so the results are the same
 * bits; only the per-element odometer step and switches are gone. */
static void binary_float_fast(const flx_binary_args *ar, int64_t n) {
    int32_t nd = 0;
    int64_t shp[FLX_MAX_DIMS], sa[FLX_MAX_DIMS], sb[FLX_MAX_DIMS];
    for (int32_t d = 0; d < ar->ndim; d++) {
        if (ar->shape[d] == 1) continue;
        if (nd > 0 && sa[nd - 1] == ar->sa[d] * ar->shape[d] && sb[nd - 1] == ar->sb[d] * ar->shape[d]) {
            shp[nd - 1] *= ar->shape[d];
            sa[nd - 1] = ar->sa[d];
            sb[nd - 1] = ar->sb[d];
            continue;
        }
        shp[nd] = ar->shape[d];
        sa[nd] = ar->sa[d];
        sb[nd] = ar->sb[d];
        nd++;
    }
    if (nd == 0) {
        shp[0] = 1;
        sa[0] = sb[0] = 0;
        nd = 1;
    }
    const int64_t len = shp[nd - 1], ia = sa[nd - 1], ib = sb[nd - 1];
    odo o; /* over the outer dimensions */
    odo_init(&o, nd - 1, shp, 2, sa, sb, NULL);
    const bool f32 = ar->dtype == FLX_F32, cmp = FLX_BINARY_IS_COMPARE(ar->op);
    for (int64_t i0 = 0; i0 < n; i0 += len, odo_next(&o)) {
        const int64_t oa = o.off[0], ob = o.off[1];
#define FLX_BIN_RUN(TI, TO, EXPR)                                               \
    do {                                                                        \
        const TI *pa = (const TI *)ar->a + oa, *pb = (const TI *)ar->b + ob;    \
        TO *po = (TO *)ar->out + i0;                                            \
        for (int64_t j = 0; j < len; j++) {                                     \
            double a = pa[j * ia], b = pb[j * ib];                              \
            po[j] = (TO)(double)(EXPR);                                         \
        }                                                                       \
    } while (0)
#define FLX_X_CASE(NAME, EXPR)                                                  \
    case FLX_BINARY_##NAME:                                                     \
        if (cmp) {                                                              \
            if (f32) FLX_BIN_RUN(float, uint8_t, EXPR);                         \
            else FLX_BIN_RUN(double, uint8_t, EXPR);                            \
        } else if (f32) FLX_BIN_RUN(float, float, EXPR);                        \
        else FLX_BIN_RUN(double, double, EXPR);                                 \
        break;
        switch (ar->op) {
            FLX_BINARY_ARITH_OPS(FLX_X_CASE)
            FLX_BINARY_COMPARE_OPS(FLX_X_CASE)
        }
#undef FLX_X_CASE
#undef FLX_BIN_RUN
    }
}

static flx_status cpu_binary(flx_ctx *ctx, const flx_binary_args *ar) {
    (void)ctx;
    int64_t n = flx_shape_numel(ar->ndim, ar->shape);
    if (n == 0) return FLX_OK;
    if (ar->dtype == FLX_F32 || ar->dtype == FLX_F64) {
        binary_float_fast(ar, n);
        return FLX_OK;
    }
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
/* Float fast path of SUM and VAR (issue 5: CPU training speed). The reduced dimensions are merged
 * where contiguous (and size-1 ones dropped) and the innermost one runs as a plain loop; the
 * values are visited in the same row-major order and accumulated in double exactly as in the
 * general loop below, so the results are the same bits. */
static void reduce_sum_var_fast(const flx_reduce_args *ar, int64_t nk, int64_t nr) {
    int32_t nd = 0;
    int64_t shp[FLX_MAX_DIMS], str[FLX_MAX_DIMS];
    for (int32_t d = 0; d < ar->rdim; d++) {
        if (ar->rshape[d] == 1) continue;
        if (nd > 0 && str[nd - 1] == ar->rstride[d] * ar->rshape[d]) {
            shp[nd - 1] *= ar->rshape[d];
            str[nd - 1] = ar->rstride[d];
            continue;
        }
        shp[nd] = ar->rshape[d];
        str[nd] = ar->rstride[d];
        nd++;
    }
    if (nd == 0) {
        shp[0] = 1;
        str[0] = 0;
        nd = 1;
    }
    const int64_t len = shp[nd - 1], is = str[nd - 1];
    const bool f32 = ar->dtype == FLX_F32;
    const float *xf = (const float *)ar->x;
    const double *xd = (const double *)ar->x;
    /* acc += F(v) over the values of output k, in row-major order */
#define FLX_RED_PASS(F)                                                                  \
    do {                                                                                 \
        odo ro;                                                                          \
        odo_init(&ro, nd - 1, shp, 1, str, NULL, NULL);                                  \
        for (int64_t r0 = 0; r0 < nr; r0 += len, odo_next(&ro)) {                        \
            const int64_t o0 = base + ro.off[0];                                         \
            if (f32)                                                                     \
                for (int64_t j = 0; j < len; j++) {                                      \
                    double v = xf[o0 + j * is];                                          \
                    acc += F;                                                            \
                }                                                                        \
            else                                                                         \
                for (int64_t j = 0; j < len; j++) {                                      \
                    double v = xd[o0 + j * is];                                          \
                    acc += F;                                                            \
                }                                                                        \
        }                                                                                \
    } while (0)
    odo ko;
    odo_init(&ko, ar->kdim, ar->kshape, 1, ar->kstride, NULL, NULL);
    for (int64_t k = 0; k < nk; k++, odo_next(&ko)) {
        const int64_t base = ko.off[0];
        double acc = 0;
        if (ar->op == FLX_REDUCE_SUM) {
            FLX_RED_PASS(v);
            store(ar->dtype, ar->out, k, ar->param * acc);
        } else {
            FLX_RED_PASS(v);
            const double mean = acc / (double)nr;
            acc = 0;
            FLX_RED_PASS((v - mean) * (v - mean));
            store(ar->dtype, ar->out, k, acc / ((double)nr - ar->param));
        }
    }
#undef FLX_RED_PASS
}

static flx_status cpu_reduce(flx_ctx *ctx, const flx_reduce_args *ar) {
    (void)ctx;
    int64_t nk = flx_shape_numel(ar->kdim, ar->kshape);
    int64_t nr = flx_shape_numel(ar->rdim, ar->rshape);
    if ((ar->op == FLX_REDUCE_SUM || ar->op == FLX_REDUCE_VAR) &&
        (ar->dtype == FLX_F32 || ar->dtype == FLX_F64) && nr > 0) {
        reduce_sum_var_fast(ar, nk, nr);
        return FLX_OK;
    }
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

/* ---- matmul ----------------------------------------------------------------------------------
 * Two implementations with one contract (flx_matmul_args, computed in double, rounded on store):
 *   - matmul_loop: the reference loop, always compiled; deterministic fixed order.
 *   - matmul_blas (issue 5, built with FLX_WITH_BLAS when CMake found a CBLAS): cblas_dgemm per
 *     batch on double operands (f64 buffers are passed as they are, f32 ones are widened into
 *     scratch). It is used only when the result is the IEEE one: every input is finite (an
 *     optimised BLAS may skip or reorder products with zeros, and alpha == 0 skips A B, so
 *     0 * inf or 0 * NaN would not give NaN) and the sizes fit the BLAS integer; anything else
 *     goes to the loop. A BLAS with a fixed thread count gives the same bits run to run.
 * FLX_CPU_MATMUL=loop in the environment (read once) forces the loop, for comparisons. */
static flx_status matmul_loop(const flx_matmul_args *ar) {
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

#ifdef FLX_WITH_BLAS
/* True when the n values of p (f32 or f64) starting at element off are all finite. */
static bool all_finite(flx_dtype dt, const void *p, int64_t off, int64_t n) {
    int bad = 0; /* accumulate instead of branching, so the loop vectorises */
    if (dt == FLX_F32) {
        const float *q = (const float *)p + off;
        for (int64_t i = 0; i < n; i++) bad |= !isfinite(q[i]);
    } else {
        const double *q = (const double *)p + off;
        for (int64_t i = 0; i < n; i++) bad |= !isfinite(q[i]);
    }
    return !bad;
}

/* Every batch's matrix of an operand (count elements each; stride 0: one shared matrix). */
static bool operand_finite(const flx_matmul_args *ar, const void *p, int64_t stride, int64_t count) {
    int64_t nb = stride == 0 ? 1 : ar->batch;
    for (int64_t bt = 0; bt < nb; bt++)
        if (!all_finite(ar->dtype, p, bt * stride, count)) return false;
    return true;
}

static void widen(const float *src, double *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = src[i];
}

/* Returns 1 when done, 0 when the loop must do it (nothing written), -1 on out of memory. */
static int matmul_blas(const flx_matmul_args *ar) {
    const int64_t m = ar->m, n = ar->n, k = ar->k;
    if (ar->dtype != FLX_F32 && ar->dtype != FLX_F64) return 0;
    if (m <= 0 || n <= 0 || k <= 0 || m > INT_MAX || n > INT_MAX || k > INT_MAX) return 0;
    if (!isfinite(ar->alpha) || ar->alpha == 0 || !isfinite(ar->beta)) return 0;
    if (!operand_finite(ar, ar->a, ar->sa, m * k) || !operand_finite(ar, ar->b, ar->sb, k * n)) return 0;
    const enum CBLAS_TRANSPOSE ta = ar->ta ? CblasTrans : CblasNoTrans;
    const enum CBLAS_TRANSPOSE tb = ar->tb ? CblasTrans : CblasNoTrans;
    const int lda = (int)(ar->ta ? m : k), ldb = (int)(ar->tb ? k : n);
    if (ar->dtype == FLX_F64) {
        for (int64_t bt = 0; bt < ar->batch; bt++)
            cblas_dgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, ar->alpha,
                        (const double *)ar->a + bt * ar->sa, lda, (const double *)ar->b + bt * ar->sb,
                        ldb, ar->beta, (double *)ar->c + bt * ar->sc, (int)n);
        return 1;
    }
    /* f32: widen A and B (once when broadcast) into scratch, compute C in double, round. */
    const size_t na = (size_t)(m * k), nbm = (size_t)(k * n), nc = (size_t)(m * n);
    double *da = (double *)malloc((na + nbm + nc) * sizeof(double));
    if (!da) return -1;
    double *db = da + na, *dc = db + nbm;
    const float *a = (const float *)ar->a, *b = (const float *)ar->b;
    float *c = (float *)ar->c;
    for (int64_t bt = 0; bt < ar->batch; bt++) {
        if (bt == 0 || ar->sa != 0) widen(a + bt * ar->sa, da, (int64_t)na);
        if (bt == 0 || ar->sb != 0) widen(b + bt * ar->sb, db, (int64_t)nbm);
        float *cb = c + bt * ar->sc;
        if (ar->beta != 0) widen(cb, dc, (int64_t)nc);
        cblas_dgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, ar->alpha, da, lda, db, ldb, ar->beta,
                    dc, (int)n);
        for (size_t i = 0; i < nc; i++) cb[i] = (float)dc[i];
    }
    free(da);
    return 1;
}

static int matmul_use_loop(void) {
    static atomic_int cached; /* 0: not read yet, 1: BLAS, 2: loop */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v == 0) {
        const char *e = getenv("FLX_CPU_MATMUL");
        v = (e && !strcmp(e, "loop")) ? 2 : 1;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v == 2;
}
#endif

static flx_status cpu_matmul(flx_ctx *ctx, const flx_matmul_args *ar) {
    (void)ctx;
#ifdef FLX_WITH_BLAS
    if (!matmul_use_loop()) {
        int r = matmul_blas(ar);
        if (r > 0) return FLX_OK;
        if (r < 0) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cpu matmul: out of host memory");
    }
#endif
    return matmul_loop(ar);
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
    .fused = flx_cpu_fused, /* fused elementwise programs: runtime/cpu_fused.c (issue 6) */
};
