/* batch_norm.c — batch normalisation in training mode as one node with a closed-form rule.
 *
 * Why a node: written as public ops, y = (x - mu) rstd gamma + beta with mu = mean(x) and
 * rstd = 1 / sqrt(var(x) + eps) differentiates op by op into about a dozen full-size passes per
 * layer (the cotangent flows back through mu and var separately, mean(x) is recomputed for var's
 * rule, broadcasts are materialised). The rule below shares two per-channel reductions between
 * dx, dgamma and dbeta, and recomputes x̂ inside the elementwise kernels that read it.
 *
 * Node: BATCH_NORM(Y, x, mu, rstd [, gamma] [, beta]) (attrs.bnorm says which of the last two are
 * there). Y is the value, computed by flx_batch_norm from detached inputs with grad recording off
 * by the same ops as the eval-mode formula, so the forward bits are unchanged; the node aliases
 * Y's buffer, and elementwise fusion passes through it (FLX_OPF_SAME_VALUE: the chain computing Y
 * and an activation after the node are one kernel). mu and rstd are x's batch mean and 1 / sqrt(biased var + eps) over every axis but 1,
 * kept (1, C, 1, ...); gamma and beta are (1, C, 1, ...) views. The rules assume that contract:
 * they give x the whole derivative, including what flows through mu and rstd, and give mu, rstd
 * and Y none. With x̂ = (x - mu) rstd, n the count per channel and sums over every axis but 1:
 *   VJP:  dbeta = sum g,  dgamma = sum g x̂,  dx = gamma rstd (n g - sum g - x̂ sum(g x̂)) / n
 *   JVP:  dy = gamma rstd (dx - mean dx - x̂ mean(dx x̂)) + x̂ dgamma + dbeta
 * Both are graphs of public ops over x, mu(x), rstd(x), gamma and beta, so they differentiate
 * again to any order. */
#include <string.h>

#include "internal.h"

/* Every axis but the channel axis 1. */
static int32_t stat_axes(const flx_tensor *x, int32_t *axes) {
    int32_t na = 0;
    for (int32_t d = 0; d < x->ndim; d++)
        if (d != 1) axes[na++] = d;
    return na;
}

/* x̂ = (x - mu) rstd, built afresh at each use so that each elementwise kernel reading it
 * recomputes it instead of one kernel writing it for the others. */
static flx_tensor *xhat(flx_tensor *x, flx_tensor *mu, flx_tensor *rstd) {
    return flx_mul(flx_sub(x, mu), rstd);
}

typedef struct bn_parts {
    flx_tensor *x, *mu, *rstd, *gamma, *beta;
    int32_t gi, bi; /* input indices of gamma and beta, -1 when absent */
} bn_parts;

static bn_parts parts_of(const flx_tensor *t) {
    bn_parts p = {t->in[1], t->in[2], t->in[3], NULL, NULL, -1, -1};
    int32_t k = 4;
    if (t->attrs.u.bnorm.has_gamma) p.gamma = t->in[p.gi = k++];
    if (t->attrs.u.bnorm.has_beta) p.beta = t->in[p.bi = k];
    return p;
}

static flx_status vjp_batch_norm(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    bn_parts p = parts_of(t);
    int32_t axes[FLX_MAX_DIMS], na = stat_axes(p.x, axes);
    bool want_x = p.x->requires_grad, want_g = p.gamma && p.gamma->requires_grad;
    bool want_b = p.beta && p.beta->requires_grad;
    flx_tensor *s1 = want_x || want_b ? flx_sum(g, na, axes, true) : NULL;
    flx_tensor *s2 = want_x || want_g ? flx_sum(flx_mul(g, xhat(p.x, p.mu, p.rstd)), na, axes, true) : NULL;
    flx_status s = FLX_OK;
    if (want_b && (s = flx_rule_status(gin[p.bi] = s1)) != FLX_OK) return s;
    if (want_g && (s = flx_rule_status(gin[p.gi] = s2)) != FLX_OK) return s;
    if (want_x) {
        /* (n g - s1 - x̂ s2) rstd gamma / n: every op has a full-size operand, so the whole
         * expression is one elementwise kernel (no per-channel launches for the factors). */
        double n = (double)p.x->numel / (double)p.x->shape[1];
        flx_tensor *d = flx_sub(flx_sub(flx_mul_scalar(g, n), s1), flx_mul(xhat(p.x, p.mu, p.rstd), s2));
        d = flx_mul(d, p.rstd);
        if (p.gamma) d = flx_mul(d, p.gamma);
        gin[1] = flx_mul_scalar(d, 1.0 / n);
        s = flx_rule_status(gin[1]);
    }
    return s;
}

static flx_status jvp_batch_norm(flx_tensor *t, flx_tensor *const *tin, flx_tensor **tout) {
    bn_parts p = parts_of(t);
    flx_tensor *tx = tin[1], *tg = p.gamma ? tin[p.gi] : NULL, *tb = p.beta ? tin[p.bi] : NULL;
    *tout = NULL;
    if (!tx && !tg && !tb) return FLX_OK;
    int32_t axes[FLX_MAX_DIMS], na = stat_axes(p.x, axes);
    flx_tensor *r = NULL;
    if (tx) {
        flx_tensor *m1 = flx_mean(tx, na, axes, true);
        flx_tensor *m2 = flx_mean(flx_mul(tx, xhat(p.x, p.mu, p.rstd)), na, axes, true);
        r = flx_mul(flx_sub(flx_sub(tx, m1), flx_mul(xhat(p.x, p.mu, p.rstd), m2)), p.rstd);
        if (p.gamma) r = flx_mul(r, p.gamma);
    }
    if (tg) {
        flx_tensor *u = flx_mul(xhat(p.x, p.mu, p.rstd), tg);
        r = r ? flx_add(r, u) : u;
    }
    if (tb) r = r ? flx_add(r, tb) : flx_broadcast_to(tb, t->ndim, t->shape);
    *tout = r;
    return flx_rule_status(r);
}

void flx_ops_register_batch_norm(flx_op_def *t) {
    t[FLX_OP_BATCH_NORM] = (flx_op_def){"batch_norm", NULL, vjp_batch_norm, jvp_batch_norm,
                                              FLX_OPF_ALIAS | FLX_OPF_SAME_VALUE};
}

flx_tensor *flx_batch_norm_node(flx_tensor *y, flx_tensor *x, flx_tensor *mu, flx_tensor *rstd,
                                flx_tensor *gamma, flx_tensor *beta) {
    if (!y || !x || !mu || !rstd) return NULL;
    flx_tensor *in[6] = {y, x, mu, rstd, NULL, NULL};
    int32_t n = 4;
    flx_attrs at;
    memset(&at, 0, sizeof at);
    if (gamma) {
        in[n++] = gamma;
        at.u.bnorm.has_gamma = 1;
    }
    if (beta) {
        in[n++] = beta;
        at.u.bnorm.has_beta = 1;
    }
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_BATCH_NORM, x->dtype, x->ndim, x->shape, n, in, &at));
}
