/* creation.c — sources and conversions: host data, fills (zeros ... normal), copies between
 * contexts, dtype casts. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static bool check_ctx_shape(const char *op, flx_ctx *ctx, flx_dtype dt, int32_t ndim,
                            const int64_t *shape) {
    if (!ctx) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", op);
        return false;
    }
    if (!flx_dtype_valid(dt)) {
        flx_set_error(FLX_ERR_DTYPE, "%s: unsupported dtype %s", op, flx_dtype_name(dt));
        return false;
    }
    return flx_check_shape(op, ndim, shape);
}

/* ---- exec ------------------------------------------------------------------------------- */
static flx_status exec_fill(const flx_tensor *t, void *out, const void *const *in) {
    flx_fill_args a = t->attrs.u.fill;
    a.dtype = t->dtype;
    a.n = t->numel;
    a.out = out;
    if (a.kind == FLX_FILL_UNIFORM || a.kind == FLX_FILL_NORMAL) a.run = flx_plan_rng_stream();
    return flx_kernel_fill(t->ctx, &a);
}

static flx_status exec_cast(const flx_tensor *t, void *out, const void *const *in) {
    flx_cast_args a = {t->in[0]->dtype, t->dtype, t->numel, in[0], out};
    return flx_kernel_cast(t->ctx, &a);
}

/* Copy between contexts through host memory (the simple, always-correct path). */
static flx_status exec_to_ctx(const flx_tensor *t, void *out, const void *const *in) {
    const flx_tensor *src = t->in[0];
    size_t nbytes = (size_t)t->numel * flx_dtype_size(t->dtype);
    if (nbytes == 0) return FLX_OK;
    if (src->ctx == t->ctx) return t->ctx->be->copy_d2d(t->ctx, out, in[0], nbytes);
    void *host = malloc(nbytes);
    if (!host) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_to_ctx: out of host memory");
    flx_status s = src->ctx->be->download(src->ctx, host, in[0], nbytes);
    if (s == FLX_OK) s = t->ctx->be->upload(t->ctx, out, host, nbytes);
    /* upload may be asynchronous: wait before freeing the staging memory */
    if (s == FLX_OK) s = t->ctx->be->synchronize(t->ctx);
    free(host);
    return s;
}

/* ---- rules ------------------------------------------------------------------------------ */
static flx_status vjp_cast(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    gin[0] = flx_cast(g, t->in[0]->dtype);
    return flx_rule_status(gin[0]);
}

static flx_status vjp_to_ctx(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    gin[0] = flx_to_ctx(g, t->in[0]->ctx);
    return flx_rule_status(gin[0]);
}

static flx_status jvp_cast(flx_tensor *t, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = (tin[0] && flx_dtype_is_float(t->dtype)) ? flx_cast(tin[0], t->dtype) : NULL;
    return (!tin[0] || *tout) ? FLX_OK : flx_last_status();
}

static flx_status jvp_to_ctx(flx_tensor *t, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = tin[0] ? flx_to_ctx(tin[0], t->ctx) : NULL;
    return (!tin[0] || *tout) ? FLX_OK : flx_last_status();
}

void flx_ops_register_creation(flx_op_def *t) {
    t[FLX_OP_CONST] = (flx_op_def){"const", NULL, NULL, flx_jvp_zero, FLX_OPF_SOURCE};
    t[FLX_OP_FILL] = (flx_op_def){"fill", exec_fill, NULL, flx_jvp_zero, FLX_OPF_NONDIFF};
    t[FLX_OP_TO_CTX] = (flx_op_def){"to_ctx", exec_to_ctx, vjp_to_ctx, jvp_to_ctx, 0};
    t[FLX_OP_CAST] = (flx_op_def){"cast", exec_cast, vjp_cast, jvp_cast, 0};
}

/* ---- public constructors ---------------------------------------------------------------- */
static flx_tensor *make_fill(const char *op, flx_ctx *ctx, flx_dtype dt, int32_t ndim,
                             const int64_t *shape, flx_fill_kind kind, double a, double b,
                             int64_t cols, uint64_t seed) {
    if (!check_ctx_shape(op, ctx, dt, ndim, shape)) return NULL;
    flx_attrs at = {
        .u.fill.kind = kind, .u.fill.a = a, .u.fill.b = b, .u.fill.cols = cols, .u.fill.seed = seed
    };
    return flx_adopt(flx_node_new(ctx, FLX_OP_FILL, dt, ndim, shape, 0, NULL, &at));
}

flx_tensor *flx_full(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape, double value) {
    return make_fill("flx_full", ctx, dt, ndim, shape, FLX_FILL_CONST, value, 0, 0, 0);
}
flx_tensor *flx_zeros(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape) {
    return make_fill("flx_zeros", ctx, dt, ndim, shape, FLX_FILL_CONST, 0, 0, 0, 0);
}
flx_tensor *flx_ones(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape) {
    return make_fill("flx_ones", ctx, dt, ndim, shape, FLX_FILL_CONST, 1, 0, 0, 0);
}
flx_tensor *flx_scalar(flx_ctx *ctx, flx_dtype dt, double value) {
    return make_fill("flx_scalar", ctx, dt, 0, NULL, FLX_FILL_CONST, value, 0, 0, 0);
}

flx_tensor *flx_eye(flx_ctx *ctx, flx_dtype dt, int64_t n, int64_t m) {
    if (n < 0 || m < 0) {
        flx_set_error(FLX_ERR_SHAPE, "flx_eye: negative size (%lld, %lld)", (long long)n, (long long)m);
        return NULL;
    }
    int64_t shape[2] = {n, m};
    return make_fill("flx_eye", ctx, dt, 2, shape, FLX_FILL_EYE, 0, 0, m, 0);
}

flx_tensor *flx_arange(flx_ctx *ctx, flx_dtype dt, double start, double stop, double step) {
    if (!(step != 0) || !isfinite(start) || !isfinite(stop) || !isfinite(step)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "flx_arange: start, stop, step must be finite and step != 0 (got %g, %g, %g)",
                      start, stop, step);
        return NULL;
    }
    double count = ceil((stop - start) / step);
    /* Checked before the conversion: a double beyond int64's range has no int64 value (UB). */
    if (!(count < 0x1p62)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "flx_arange: (%g - %g) / %g gives %g elements, more than a tensor can hold",
                      stop, start, step, count);
        return NULL;
    }
    int64_t n = count > 0 ? (int64_t)count : 0;
    return make_fill("flx_arange", ctx, dt, 1, &n, FLX_FILL_IOTA, start, step, 0, 0);
}

static bool float_only(const char *op, flx_dtype dt) {
    if (flx_dtype_is_float(dt)) return true;
    flx_set_error(FLX_ERR_DTYPE, "%s: random tensors have a float dtype (f32, f64, f16, bf16), got %s", op, flx_dtype_name(dt));
    return false;
}

flx_tensor *flx_uniform(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape, double lo,
                        double hi, uint64_t seed) {
    if (!float_only("flx_uniform", dt)) return NULL;
    if (!(lo <= hi) || !isfinite(lo) || !isfinite(hi)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_uniform: needs finite lo <= hi (got %g, %g)", lo, hi);
        return NULL;
    }
    return make_fill("flx_uniform", ctx, dt, ndim, shape, FLX_FILL_UNIFORM, lo, hi, 0, seed);
}

flx_tensor *flx_normal(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape, double mean,
                       double std, uint64_t seed) {
    if (!float_only("flx_normal", dt)) return NULL;
    if (!(std >= 0) || !isfinite(mean) || !isfinite(std)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_normal: needs finite mean and std >= 0 (got %g, %g)",
                      mean, std);
        return NULL;
    }
    return make_fill("flx_normal", ctx, dt, ndim, shape, FLX_FILL_NORMAL, mean, std, 0, seed);
}

flx_tensor *flx_randn(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape, uint64_t seed) {
    if (!float_only("flx_randn", dt)) return NULL;
    return make_fill("flx_randn", ctx, dt, ndim, shape, FLX_FILL_NORMAL, 0, 1, 0, seed);
}

flx_tensor *flx_from_host(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                          const void *data) {
    if (!check_ctx_shape("flx_from_host", ctx, dt, ndim, shape)) return NULL;
    int64_t n = flx_shape_numel(ndim, shape);
    if (!data && n > 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_from_host: data is NULL for shape %s",
                      flx_shape_str(ndim, shape));
        return NULL;
    }
    return flx_adopt(flx_const_new(ctx, dt, ndim, shape, data));
}

flx_tensor *flx_const_new(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                          const void *data) {
    flx_tensor *t = flx_node_new(ctx, FLX_OP_CONST, dt, ndim, shape, 0, NULL, NULL);
    if (!t) return NULL;
    size_t nbytes = flx_nbytes(t);
    t->buf = flx_buffer_new(ctx, nbytes);
    flx_status s = t->buf ? FLX_OK : flx_last_status();
    if (s == FLX_OK && nbytes) s = ctx->be->upload(ctx, t->buf->ptr, data, nbytes);
    if (s != FLX_OK) {
        flx_release(t);
        return NULL;
    }
    t->keep = true;
    return t;
}

flx_tensor *flx_from_host_as(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                             flx_dtype host_dt, const void *data) {
    static const char *fn = "flx_from_host_as";
    if (!flx_dtype_valid(host_dt)) {
        flx_set_error(FLX_ERR_DTYPE, "%s: unsupported host dtype %s", fn, flx_dtype_name(host_dt));
        return NULL;
    }
    if (host_dt == dt) return flx_from_host(ctx, dt, ndim, shape, data);
    if (!check_ctx_shape(fn, ctx, dt, ndim, shape)) return NULL;
    int64_t n = flx_shape_numel(ndim, shape);
    if (!data && n > 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: data is NULL for shape %s", fn,
                      flx_shape_str(ndim, shape));
        return NULL;
    }
    /* Converted on the host with the CPU backend's cast (flx_cast's rules), then uploaded. */
    size_t nbytes = (size_t)n * flx_dtype_size(dt);
    void *tmp = malloc(nbytes ? nbytes : 1);
    if (!tmp) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory (%zu bytes)", fn, nbytes);
        return NULL;
    }
    flx_cast_args a = {host_dt, dt, n, data, tmp};
    flx_tensor *t = flx_backend_cpu.cast(NULL, &a) == FLX_OK ? flx_from_host(ctx, dt, ndim, shape, tmp) : NULL;
    free(tmp);
    return t;
}

flx_tensor *flx_to_ctx(flx_tensor *x, flx_ctx *dst) {
    if (!flx_check_inputs("flx_to_ctx", 1, &x)) return NULL;
    if (!dst) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_to_ctx: dst context is NULL");
        return NULL;
    }
    /* The node lives on dst and reads its input from the source context. */
    return flx_adopt(flx_node_new(dst, FLX_OP_TO_CTX, x->dtype, x->ndim, x->shape, 1, &x, NULL));
}

flx_tensor *flx_cast(flx_tensor *x, flx_dtype dt) {
    if (!flx_check_inputs("flx_cast", 1, &x)) return NULL;
    if (!flx_dtype_valid(dt)) {
        flx_set_error(FLX_ERR_DTYPE, "flx_cast: unsupported target dtype %s", flx_dtype_name(dt));
        return NULL;
    }
    if (dt == x->dtype) return flx_adopt(flx_retain(x));
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_CAST, dt, x->ndim, x->shape, 1, &x, NULL));
}
