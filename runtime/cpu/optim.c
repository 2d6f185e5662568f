/* optim.c — CPU reference kernels of the fused optimisers (kernel family "optim").
 * Plain loops in float64, one per rule, written straight from the formulas in fluxion.h; the
 * CUDA kernels (kernels/optim.cu) are checked against these. f16/bf16 parameters are updated
 * through their f32 master copy (a->master): the rule reads and writes the master, and the
 * parameter is the master rounded to nearest even. With loss scaling the gradients are read
 * unscaled, and a step whose gradients held an inf or NaN (FIND_INF, queued first) writes
 * nothing but the scaler's bookkeeping. */
#include <math.h>

#include "cpu_common.h"

/* The weight the rule starts from: the master copy where there is one. */
static inline double ld_w(const flx_optim_args *a, int32_t j, int64_t i) {
    return a->master[j] ? (double)a->master[j][i] : load(a->dtype, a->p[j], i);
}

/* Writes the new weight: the master rounded to f32, then the parameter rounded from the master
 * (one rounding from an f32 value, so the parameter is exactly the master's nearest half). */
static inline void st_w(const flx_optim_args *a, int32_t j, int64_t i, double w) {
    if (a->master[j]) {
        float m = (float)w;
        a->master[j][i] = m;
        store(a->dtype, a->p[j], i, (double)m);
    } else {
        store(a->dtype, a->p[j], i, w);
    }
}

static void update_one(const flx_optim_args *a, const double *hp, double inv_scale, int32_t j) {
    const flx_dtype dt = a->dtype, sd = a->sdtype;
    const double lr = hp[FLX_HP_LR], mom = hp[FLX_HP_MOMENTUM], damp = hp[FLX_HP_DAMPENING];
    const double wd = hp[FLX_HP_WEIGHT_DECAY], b1 = hp[FLX_HP_BETA1], b2 = hp[FLX_HP_BETA2];
    const double eps = hp[FLX_HP_EPS], alpha = hp[FLX_HP_ALPHA], lr_decay = hp[FLX_HP_LR_DECAY];
    const double t = hp[FLX_HP_STEP] + 1.0;
    const void *gp = a->g[j];
    void *s0 = a->s0[j], *s1 = a->s1[j], *s2 = a->s2[j];
    const int64_t n = a->numel[j];
    switch (a->rule) {
    case FLX_OPTIM_RULE_SGD:
        for (int64_t i = 0; i < n; i++) {
            double w = ld_w(a, j, i), g = load(dt, gp, i) * inv_scale + wd * w;
            if (a->use_momentum) {
                double b = t == 1.0 ? g : mom * load(sd, s0, i) + (1.0 - damp) * g;
                store(sd, s0, i, b);
                g = a->nesterov ? g + mom * b : b;
            }
            st_w(a, j, i, w - lr * g);
        }
        break;
    case FLX_OPTIM_RULE_ADAGRAD: {
        double clr = lr / (1.0 + (t - 1.0) * lr_decay);
        for (int64_t i = 0; i < n; i++) {
            double w = ld_w(a, j, i), g = load(dt, gp, i) * inv_scale + wd * w;
            double s = load(sd, s0, i) + g * g;
            store(sd, s0, i, s);
            st_w(a, j, i, w - clr * g / (sqrt(s) + eps));
        }
        break;
    }
    case FLX_OPTIM_RULE_RMSPROP:
        for (int64_t i = 0; i < n; i++) {
            double w = ld_w(a, j, i), g = load(dt, gp, i) * inv_scale + wd * w;
            double v = alpha * load(sd, s0, i) + (1.0 - alpha) * g * g;
            store(sd, s0, i, v);
            double d;
            if (a->centered) {
                double av = alpha * load(sd, s2, i) + (1.0 - alpha) * g;
                store(sd, s2, i, av);
                d = sqrt(v - av * av) + eps;
            } else {
                d = sqrt(v) + eps;
            }
            if (a->use_momentum) {
                double b = mom * load(sd, s1, i) + g / d;
                store(sd, s1, i, b);
                st_w(a, j, i, w - lr * b);
            } else {
                st_w(a, j, i, w - lr * g / d);
            }
        }
        break;
    case FLX_OPTIM_RULE_ADAM:
    case FLX_OPTIM_RULE_ADAMW: {
        const bool decoupled = a->rule == FLX_OPTIM_RULE_ADAMW;
        const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        const double step_size = lr / bc1, bc2_sqrt = sqrt(bc2);
        for (int64_t i = 0; i < n; i++) {
            double w = ld_w(a, j, i), g = load(dt, gp, i) * inv_scale;
            if (decoupled) w = w * (1.0 - lr * wd);
            else g += wd * w;
            double m = b1 * load(sd, s0, i) + (1.0 - b1) * g;
            double v = b2 * load(sd, s1, i) + (1.0 - b2) * g * g;
            store(sd, s0, i, m);
            store(sd, s1, i, v);
            st_w(a, j, i, w - step_size * m / (sqrt(v) / bc2_sqrt + eps));
        }
        break;
    }
    default: break;
    }
}

/* The end of a step: the step count advances, or with loss scaling the scaler moves
 * (PyTorch's GradScaler.update): a skipped step backs the scale off, growth_interval clean
 * steps in a row grow it. */
static void finish_step(const flx_optim_args *a) {
    if (!a->scale) {
        a->hp[FLX_HP_STEP] += 1.0;
        return;
    }
    double *tracker = &a->scaler[0], *skipped = &a->scaler[1];
    if (*a->found_inf) {
        *a->scale *= a->backoff_factor;
        *tracker = 0;
        *skipped += 1.0;
        *a->found_inf = 0;
        return;
    }
    a->hp[FLX_HP_STEP] += 1.0;
    *tracker += 1.0;
    if (*tracker >= a->growth_interval) {
        double grown = *a->scale * a->growth_factor;
        if (isfinite((float)grown)) *a->scale = grown;
        *tracker = 0;
    }
}

flx_status flx_cpu_optim(flx_ctx *ctx, const flx_optim_args *a) {
    (void)ctx;
    if (a->mode == FLX_OPTIM_SET_HP) {
        if (a->set_index < 0 || a->set_index >= FLX_HP_COUNT)
            return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "cpu optim: hyperparameter index %d",
                                 (int)a->set_index);
        a->hp[a->set_index] = a->set_value;
        return FLX_OK;
    }
    if (!flx_dtype_is_float(a->dtype))
        return flx_set_error(FLX_ERR_DTYPE, "cpu optim: dtype %s is not a float dtype",
                             flx_dtype_name(a->dtype));
    if (a->n < 0 || a->n > FLX_OPTIM_MAX_TENSORS_PER_LAUNCH)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "cpu optim: %d tensors in one launch",
                             (int)a->n);
    switch (a->mode) {
    case FLX_OPTIM_INIT_MASTER:
        for (int32_t j = 0; j < a->n; j++)
            for (int64_t i = 0; i < a->numel[j]; i++)
                a->master[j][i] = (float)load(a->dtype, a->p[j], i);
        return FLX_OK;
    case FLX_OPTIM_FIND_INF:
        for (int32_t j = 0; j < a->n && !*a->found_inf; j++)
            for (int64_t i = 0; i < a->numel[j]; i++)
                if (!isfinite(load(a->dtype, a->g[j], i))) {
                    *a->found_inf = 1;
                    break;
                }
        return FLX_OK;
    case FLX_OPTIM_UPDATE:
        if (!a->scale || !*a->found_inf) {
            double inv_scale = a->scale ? 1.0 / *a->scale : 1.0;
            for (int32_t j = 0; j < a->n; j++) update_one(a, a->hp, inv_scale, j);
        }
        if (a->advance_step) finish_step(a);
        return FLX_OK;
    default:
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "cpu optim: mode %d", (int)a->mode);
    }
}
