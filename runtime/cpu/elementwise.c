/* elementwise.c — CPU kernels of the elementwise families: fill (constants, iota, eye, Philox
 * random numbers), cast, unary, binary and where (broadcasting through strides), strided copy. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_common.h"
#include "philox.h"

/* ---- fill, cast ------------------------------------------------------------------------------ */
/* Uniform draws for the halves: u < hi in double can still round up to hi in 8 or 11 bits, so a
 * stored value >= hi steps down to the dtype's next value below it (as kernels/elementwise.cu). */
static void store_below_hi(flx_dtype dt, void *out, int64_t i, double v, double lo, double hi) {
    store(dt, out, i, v);
    if (!(load(dt, out, i) >= hi) || !(hi > lo)) return;
    uint16_t *h = (uint16_t *)out + i;
    *h = flx_half_next_down(*h);
    if (load(dt, out, i) < lo) store(dt, out, i, lo);
}

flx_status flx_cpu_fill(flx_ctx *ctx, const flx_fill_args *a) {
    (void)ctx;
    int is64 = a->dtype == FLX_F64;
    uint64_t stream = a->run ? (uint64_t)*a->run : 0;
    for (int64_t i = 0; i < a->n; i++) {
        double v = 0;
        switch (a->kind) {
        case FLX_FILL_CONST: v = a->a; break;
        case FLX_FILL_IOTA: v = a->a + (double)i * a->b; break;
        case FLX_FILL_EYE: v = (i / a->cols) == (i % a->cols); break;
        case FLX_FILL_UNIFORM: {
            double u = flx_philox_uniform((uint64_t)i, stream, a->seed, is64);
            v = a->a + (a->b - a->a) * u;
            if (v >= a->b && a->b > a->a) v = a->a; /* rounding must not reach hi */
            if (a->dtype == FLX_F32) {
                ((float *)a->out)[i] = flx_uniform_f32_below_hi(v, a->a, a->b);
                continue;
            }
            if (flx_dtype_is_half(a->dtype)) {
                store_below_hi(a->dtype, a->out, i, v, a->a, a->b);
                continue;
            }
            break;
        }
        case FLX_FILL_NORMAL: v = a->a + a->b * flx_philox_normal((uint64_t)i, stream, a->seed); break;
        }
        store(a->dtype, a->out, i, v);
    }
    return FLX_OK;
}

flx_status flx_cpu_cast(flx_ctx *ctx, const flx_cast_args *a) {
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
flx_status flx_cpu_unary(flx_ctx *ctx, const flx_unary_args *ar) {
    (void)ctx;
    typedef double T;
    const double a = ar->a, b = ar->b;
    (void)a;
    (void)b;
    switch (ar->op) {
#define FLX_X_CASE(NAME, FN, KIND, EXPR, DERIV)                                        \
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
/* Float fast path (CPU training speed). Dimensions along which both inputs are
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
#define FLX_X_CASE(NAME, FN, EXPR)                                                  \
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

/* One element of the general loop: integer dtypes compute in int64_t, float ones in double, from
 * the same formula list (returning converts the formula's value to T, as a cast would). */
#define FLX_X_CASE(NAME, FN, EXPR) case FLX_BINARY_##NAME: return (EXPR);
#define FLX_DEFINE_BINARY_ELEMENT(NAME, T)                                                        \
    static inline T NAME(int32_t op, T a, T b) {                                                  \
        switch (op) {                                                                             \
            FLX_BINARY_ARITH_OPS(FLX_X_CASE)                                                      \
            FLX_BINARY_COMPARE_OPS(FLX_X_CASE)                                                    \
        }                                                                                         \
        return 0;                                                                                 \
    }
FLX_DEFINE_BINARY_ELEMENT(binary_int, int64_t)
FLX_DEFINE_BINARY_ELEMENT(binary_float, double)
#undef FLX_DEFINE_BINARY_ELEMENT
#undef FLX_X_CASE

flx_status flx_cpu_binary(flx_ctx *ctx, const flx_binary_args *ar) {
    (void)ctx;
    int64_t n = flx_shape_numel(ar->ndim, ar->shape);
    if (n == 0) return FLX_OK;
    if (ar->dtype == FLX_F32 || ar->dtype == FLX_F64) {
        binary_float_fast(ar, n);
        return FLX_OK;
    }
    odo o;
    odo_init(&o, ar->ndim, ar->shape, 2, ar->sa, ar->sb, NULL);
    bool is_int = !flx_dtype_is_float(ar->dtype), cmp = FLX_BINARY_IS_COMPARE(ar->op);
    for (int64_t i = 0; i < n; i++, odo_next(&o)) {
        if (is_int) {
            int64_t r = binary_int(ar->op, load_i(ar->dtype, ar->a, o.off[0]),
                                   load_i(ar->dtype, ar->b, o.off[1]));
            if (cmp) ((uint8_t *)ar->out)[i] = (uint8_t)r;
            else if (ar->dtype == FLX_I32) ((int32_t *)ar->out)[i] = (int32_t)r;
            else ((int64_t *)ar->out)[i] = r;
        } else {
            double r = binary_float(ar->op, load(ar->dtype, ar->a, o.off[0]),
                                    load(ar->dtype, ar->b, o.off[1]));
            if (cmp) ((uint8_t *)ar->out)[i] = (uint8_t)r;
            else store(ar->dtype, ar->out, i, r);
        }
    }
    return FLX_OK;
}

flx_status flx_cpu_where(flx_ctx *ctx, const flx_where_args *ar) {
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
flx_status flx_cpu_copy(flx_ctx *ctx, const flx_copy_args *ar) {
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

