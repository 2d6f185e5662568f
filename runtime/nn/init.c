/* init.c — parameter initialisers (Glorot/Xavier, He/Kaiming, U[±1/sqrt(n)]) drawn from the
 * counter-based Philox fills (flx_uniform / flx_normal: the same values on every backend for a
 * seed), and the L1 / L2 regularisation terms. Formulas in include/fluxion/fluxion.h. */
#include <math.h>

#include "internal.h"

/* fan_in / fan_out of a weight shape; false with the error set if the shape has no fans. */
static bool fans(const char *op, int32_t ndim, const int64_t *shape, double *fan_in,
                 double *fan_out) {
    if (ndim < 1 || ndim > FLX_MAX_DIMS || !shape) {
        flx_set_error(FLX_ERR_SHAPE, "%s: needs a shape of rank 1..%d", op, FLX_MAX_DIMS);
        return false;
    }
    if (!flx_check_shape(op, ndim, shape)) return false;
    if (ndim == 1) {
        *fan_in = *fan_out = (double)shape[0];
    } else {
        double rf = 1;
        for (int32_t d = 2; d < ndim; d++) rf *= (double)shape[d];
        *fan_in = (double)shape[1] * rf;
        *fan_out = (double)shape[0] * rf;
    }
    if (!(*fan_in > 0) || !(*fan_out > 0)) {
        flx_set_error(FLX_ERR_SHAPE, "%s: shape %s has a zero fan", op, flx_shape_str(ndim, shape));
        return false;
    }
    return true;
}

static bool check_gain(const char *op, double gain) {
    if (isfinite(gain) && gain >= 0) return true;
    flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: gain must be finite and >= 0, got %g", op, gain);
    return false;
}

static bool check_ctx(const char *op, flx_ctx *ctx) {
    if (ctx) return true;
    flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", op);
    return false;
}

flx_tensor *flx_init_xavier_uniform(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                    double gain, uint64_t seed) {
    static const char *op = "flx_init_xavier_uniform";
    double fi, fo;
    if (!check_ctx(op, ctx) || !check_gain(op, gain) || !fans(op, ndim, shape, &fi, &fo)) return NULL;
    double a = gain * sqrt(6.0 / (fi + fo));
    return flx_uniform(ctx, dt, ndim, shape, -a, a, seed);
}

flx_tensor *flx_init_xavier_normal(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                   double gain, uint64_t seed) {
    static const char *op = "flx_init_xavier_normal";
    double fi, fo;
    if (!check_ctx(op, ctx) || !check_gain(op, gain) || !fans(op, ndim, shape, &fi, &fo)) return NULL;
    return flx_normal(ctx, dt, ndim, shape, 0.0, gain * sqrt(2.0 / (fi + fo)), seed);
}

static bool pick_fan(const char *op, flx_fan_mode mode, double fi, double fo, double *fan) {
    if (mode != FLX_FAN_IN && mode != FLX_FAN_OUT) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: mode must be FLX_FAN_IN or FLX_FAN_OUT, got %d",
                      op, (int)mode);
        return false;
    }
    *fan = mode == FLX_FAN_IN ? fi : fo;
    return true;
}

/* The checks of a Kaiming initialiser and the fan it scales by. */
static bool kaiming_fan(const char *op, flx_ctx *ctx, int32_t ndim, const int64_t *shape,
                        flx_fan_mode mode, double gain, double *fan) {
    double fi, fo;
    return check_ctx(op, ctx) && check_gain(op, gain) && fans(op, ndim, shape, &fi, &fo) &&
           pick_fan(op, mode, fi, fo, fan);
}

flx_tensor *flx_init_kaiming_uniform(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                     flx_fan_mode mode, double gain, uint64_t seed) {
    double fan;
    if (!kaiming_fan("flx_init_kaiming_uniform", ctx, ndim, shape, mode, gain, &fan)) return NULL;
    double a = gain * sqrt(3.0 / fan);
    return flx_uniform(ctx, dt, ndim, shape, -a, a, seed);
}

flx_tensor *flx_init_kaiming_normal(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                    flx_fan_mode mode, double gain, uint64_t seed) {
    double fan;
    if (!kaiming_fan("flx_init_kaiming_normal", ctx, ndim, shape, mode, gain, &fan)) return NULL;
    return flx_normal(ctx, dt, ndim, shape, 0.0, gain / sqrt(fan), seed);
}

flx_tensor *flx_init_uniform_fan_in(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                    int64_t fan_in, uint64_t seed) {
    static const char *op = "flx_init_uniform_fan_in";
    if (!check_ctx(op, ctx)) return NULL;
    if (fan_in < 1) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: fan_in must be >= 1, got %lld", op,
                      (long long)fan_in);
        return NULL;
    }
    double a = 1.0 / sqrt((double)fan_in);
    return flx_uniform(ctx, dt, ndim, shape, -a, a, seed);
}

/* ---- penalties ------------------------------------------------------------------------------ */
static flx_tensor *penalty(const char *op, int32_t n, flx_tensor *const *params, double lambda,
                           bool l2) {
    if (n < 1 || !params) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one parameter", op);
        return NULL;
    }
    if (!isfinite(lambda)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: lambda must be finite, got %g", op, lambda);
        return NULL;
    }
    if (!flx_check_inputs(op, n, params)) return NULL;
    for (int32_t i = 0; i < n; i++) {
        if (!flx_check_float(op, params[i])) return NULL;
        if (params[i]->dtype != params[0]->dtype) {
            flx_set_error(FLX_ERR_DTYPE, "%s: parameters 0 %s and %d %s have different dtypes", op,
                          flx_describe(params[0]), (int)i, flx_describe(params[i]));
            return NULL;
        }
    }
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *acc = NULL;
    for (int32_t i = 0; i < n; i++) {
        flx_tensor *term = flx_sum_all(l2 ? flx_square(params[i]) : flx_abs(params[i]));
        acc = acc ? flx_add(acc, term) : term;
    }
    return flx_scope_return(flx_mul_scalar(acc, l2 ? 0.5 * lambda : lambda));
}

flx_tensor *flx_l2_penalty(int32_t n, flx_tensor *const *params, double lambda) {
    return penalty("flx_l2_penalty", n, params, lambda, true);
}

flx_tensor *flx_l1_penalty(int32_t n, flx_tensor *const *params, double lambda) {
    return penalty("flx_l1_penalty", n, params, lambda, false);
}
