/* optim.c — CPU reference kernels of the fused optimisers (kernel family "optim").
 * Plain loops in float64, one per rule, written straight from the formulas in fluxion.h; the
 * CUDA kernels (kernels/optim.cu) are checked against these. */
#include <math.h>

#include "cpu_common.h"

static void update_one(const flx_optim_args *a, const double *hp, int32_t j) {
    const flx_dtype dt = a->dtype;
    const double lr = hp[FLX_HP_LR], mom = hp[FLX_HP_MOMENTUM], damp = hp[FLX_HP_DAMPENING];
    const double wd = hp[FLX_HP_WEIGHT_DECAY], b1 = hp[FLX_HP_BETA1], b2 = hp[FLX_HP_BETA2];
    const double eps = hp[FLX_HP_EPS], alpha = hp[FLX_HP_ALPHA], lr_decay = hp[FLX_HP_LR_DECAY];
    const double t = hp[FLX_HP_STEP] + 1.0;
    void *p = a->p[j];
    const void *gp = a->g[j];
    void *s0 = a->s0[j], *s1 = a->s1[j], *s2 = a->s2[j];
    const int64_t n = a->numel[j];
    switch (a->rule) {
    case FLX_OPTIM_RULE_SGD:
        for (int64_t i = 0; i < n; i++) {
            double w = ldf(dt, p, i), g = ldf(dt, gp, i) + wd * w;
            if (a->use_momentum) {
                double b = t == 1.0 ? g : mom * ldf(dt, s0, i) + (1.0 - damp) * g;
                stf(dt, s0, i, b);
                g = a->nesterov ? g + mom * b : b;
            }
            stf(dt, p, i, w - lr * g);
        }
        break;
    case FLX_OPTIM_RULE_ADAGRAD: {
        double clr = lr / (1.0 + (t - 1.0) * lr_decay);
        for (int64_t i = 0; i < n; i++) {
            double w = ldf(dt, p, i), g = ldf(dt, gp, i) + wd * w;
            double s = ldf(dt, s0, i) + g * g;
            stf(dt, s0, i, s);
            stf(dt, p, i, w - clr * g / (sqrt(s) + eps));
        }
        break;
    }
    case FLX_OPTIM_RULE_RMSPROP:
        for (int64_t i = 0; i < n; i++) {
            double w = ldf(dt, p, i), g = ldf(dt, gp, i) + wd * w;
            double v = alpha * ldf(dt, s0, i) + (1.0 - alpha) * g * g;
            stf(dt, s0, i, v);
            double d;
            if (a->centered) {
                double av = alpha * ldf(dt, s2, i) + (1.0 - alpha) * g;
                stf(dt, s2, i, av);
                d = sqrt(v - av * av) + eps;
            } else {
                d = sqrt(v) + eps;
            }
            if (a->use_momentum) {
                double b = mom * ldf(dt, s1, i) + g / d;
                stf(dt, s1, i, b);
                stf(dt, p, i, w - lr * b);
            } else {
                stf(dt, p, i, w - lr * g / d);
            }
        }
        break;
    case FLX_OPTIM_RULE_ADAM:
    case FLX_OPTIM_RULE_ADAMW: {
        const bool decoupled = a->rule == FLX_OPTIM_RULE_ADAMW;
        const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        const double step_size = lr / bc1, bc2_sqrt = sqrt(bc2);
        for (int64_t i = 0; i < n; i++) {
            double w = ldf(dt, p, i), g = ldf(dt, gp, i);
            if (decoupled) w = w * (1.0 - lr * wd);
            else g += wd * w;
            double m = b1 * ldf(dt, s0, i) + (1.0 - b1) * g;
            double v = b2 * ldf(dt, s1, i) + (1.0 - b2) * g * g;
            stf(dt, s0, i, m);
            stf(dt, s1, i, v);
            stf(dt, p, i, w - step_size * m / (sqrt(v) / bc2_sqrt + eps));
        }
        break;
    }
    default: break;
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
    if (a->dtype != FLX_F32 && a->dtype != FLX_F64)
        return flx_set_error(FLX_ERR_DTYPE, "cpu optim: dtype %s is not supported (f32, f64)",
                             flx_dtype_name(a->dtype));
    if (a->n < 0 || a->n > FLX_OPTIM_MAX_TENSORS_PER_LAUNCH)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "cpu optim: %d tensors in one launch",
                             (int)a->n);
    for (int32_t j = 0; j < a->n; j++) update_one(a, a->hp, j);
    if (a->advance_step) a->hp[FLX_HP_STEP] += 1.0;
    return FLX_OK;
}
