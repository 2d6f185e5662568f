/* attention.c — CPU reference kernels of the attention family: FWD (output and logsumexp), BWD
 * (dq, dk, dv from the saved logsumexp) and JVP (tangent of the output), semantics as stated
 * above flx_attention_args in kernels/flx_kernels.h. Plain loops: each (batch, head) pair's
 * operands are loaded into double matrices, every sum runs in double in a fixed order, and each
 * stored value is rounded once. This is the oracle the CUDA kernels are tested against.
 * defines: flx_cpu_attention. */
#include <math.h>
#include <stdlib.h>

#include "cpu_common.h"

static int64_t at(flx_attention_strides s, int64_t b, int64_t h, int64_t i) {
    return b * s.b + h * s.h + i * s.r;
}

/* rows x cols block (b, h) of a strided operand into dst (row-major doubles); NULL reads zeros. */
static void load_block(const flx_attention_args *a, const void *p, flx_attention_strides s,
                       int64_t b, int64_t h, int64_t rows, int64_t cols, double *dst) {
    for (int64_t i = 0; i < rows; i++) {
        int64_t base = at(s, b, h, i);
        for (int64_t d = 0; d < cols; d++) dst[i * cols + d] = p ? load(a->dtype, p, base + d) : 0.0;
    }
}

static void store_block(const flx_attention_args *a, void *p, flx_attention_strides s, int64_t b,
                        int64_t h, int64_t rows, int64_t cols, const double *src) {
    for (int64_t i = 0; i < rows; i++) {
        int64_t base = at(s, b, h, i);
        for (int64_t d = 0; d < cols; d++) store(a->dtype, p, base + d, src[i * cols + d]);
    }
}

static double dot(const double *x, const double *y, int64_t n) {
    double acc = 0;
    for (int64_t d = 0; d < n; d++) acc += x[d] * y[d];
    return acc;
}

/* The last key row i sees (valid j are 0..last); -1 for a dead row. */
static int64_t last_key(const flx_attention_args *a, int64_t i) {
    int64_t last = a->causal ? i + (a->T - a->S) : a->T - 1;
    return last < a->T - 1 ? last : a->T - 1;
}

/* Softmax weights of live row i into p[0..last] (z_ij = s <q_i, k_j>); returns the logsumexp. */
static double row_probs(const flx_attention_args *a, const double *q, const double *k,
                        int64_t last, double *p) {
    double m = -INFINITY;
    for (int64_t j = 0; j <= last; j++) {
        p[j] = a->scale * dot(q, k + j * a->D, a->D);
        if (p[j] > m) m = p[j];
    }
    double l = 0;
    for (int64_t j = 0; j <= last; j++) l += exp(p[j] - m);
    for (int64_t j = 0; j <= last; j++) p[j] = exp(p[j] - m) / l;
    return m + log(l);
}

typedef struct blocks {
    double *q, *k, *v, *o, *dout, *dq, *dk, *dv, *tq, *tk, *tv, *p;
} blocks;

static void blocks_free(blocks *w) {
    double **all[] = {&w->q, &w->k, &w->v, &w->o, &w->dout, &w->dq, &w->dk, &w->dv,
                      &w->tq, &w->tk, &w->tv, &w->p};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        free(*all[i]);
        *all[i] = NULL;
    }
}

static bool blocks_alloc(const flx_attention_args *a, blocks *w) {
    size_t sd = (size_t)(a->S * a->D), td = (size_t)(a->T * a->D), tv = (size_t)(a->T * a->Dv),
           sv = (size_t)(a->S * a->Dv);
    double **slot[] = {&w->q, &w->k, &w->v, &w->o, &w->dout, &w->dq, &w->dk, &w->dv,
                       &w->tq, &w->tk, &w->tv, &w->p};
    size_t len[] = {sd, td, tv, sv, sv, sd, td, tv, sd, td, tv, (size_t)a->T};
    for (size_t i = 0; i < sizeof len / sizeof len[0]; i++) {
        *slot[i] = (double *)calloc(len[i] ? len[i] : 1, sizeof(double));
        if (!*slot[i]) return false;
    }
    return true;
}

static void fwd_head(const flx_attention_args *a, blocks *w, int64_t b, int64_t h) {
    flx_dtype st = flx_attention_stats_dtype(a->dtype);
    for (int64_t i = 0; i < a->S; i++) {
        int64_t last = last_key(a, i);
        double *o = w->o + i * a->Dv;
        for (int64_t d = 0; d < a->Dv; d++) o[d] = 0;
        double lse = -INFINITY;
        if (last >= 0) {
            lse = row_probs(a, w->q + i * a->D, w->k, last, w->p);
            for (int64_t j = 0; j <= last; j++)
                for (int64_t d = 0; d < a->Dv; d++) o[d] += w->p[j] * w->v[j * a->Dv + d];
        }
        if (a->lse) store(st, a->lse, (b * a->H + h) * a->S + i, lse);
    }
    store_block(a, a->o, a->so, b, h, a->S, a->Dv, w->o);
}

static void bwd_head(const flx_attention_args *a, blocks *w, int64_t b, int64_t h) {
    flx_dtype st = flx_attention_stats_dtype(a->dtype);
    load_block(a, a->o, a->so, b, h, a->S, a->Dv, w->o);
    load_block(a, a->dout, a->sdout, b, h, a->S, a->Dv, w->dout);
    for (int64_t n = 0; n < a->S * a->D; n++) w->dq[n] = 0;
    for (int64_t n = 0; n < a->T * a->D; n++) w->dk[n] = 0;
    for (int64_t n = 0; n < a->T * a->Dv; n++) w->dv[n] = 0;
    const double s = a->scale;
    for (int64_t i = 0; i < a->S; i++) {
        const int64_t row = (b * a->H + h) * a->S + i;
        const double *qi = w->q + i * a->D, *gi = w->dout + i * a->Dv;
        const double delta = dot(gi, w->o + i * a->Dv, a->Dv);
        if (a->delta) store(st, a->delta, row, delta);
        const double lse = load(st, a->lse, row);
        const int64_t last = last_key(a, i);
        if (last < 0 || lse == -INFINITY) continue; /* dead row: p = 0 */
        for (int64_t j = 0; j <= last; j++) {
            const double *kj = w->k + j * a->D, *vj = w->v + j * a->Dv;
            const double p = exp(s * dot(qi, kj, a->D) - lse);
            const double ds = p * (dot(gi, vj, a->Dv) - delta);
            for (int64_t d = 0; d < a->Dv; d++) w->dv[j * a->Dv + d] += p * gi[d];
            for (int64_t d = 0; d < a->D; d++) {
                w->dq[i * a->D + d] += s * ds * kj[d];
                w->dk[j * a->D + d] += s * ds * qi[d];
            }
        }
    }
    if (a->dq) store_block(a, a->dq, a->sdq, b, h, a->S, a->D, w->dq);
    if (a->dk) store_block(a, a->dk, a->sdk, b, h, a->T, a->D, w->dk);
    if (a->dv) store_block(a, a->dv, a->sdv, b, h, a->T, a->Dv, w->dv);
}

static void jvp_head(const flx_attention_args *a, blocks *w, int64_t b, int64_t h) {
    load_block(a, a->tq, a->stq, b, h, a->S, a->D, w->tq);
    load_block(a, a->tk, a->stk, b, h, a->T, a->D, w->tk);
    load_block(a, a->tv, a->stv, b, h, a->T, a->Dv, w->tv);
    const double s = a->scale;
    for (int64_t i = 0; i < a->S; i++) {
        double *out = w->o + i * a->Dv;
        for (int64_t d = 0; d < a->Dv; d++) out[d] = 0;
        const int64_t last = last_key(a, i);
        if (last < 0) continue;
        const double *qi = w->q + i * a->D, *tqi = w->tq + i * a->D;
        row_probs(a, qi, w->k, last, w->p);
        double c = 0;
        for (int64_t j = 0; j <= last; j++)
            c += w->p[j] * s * (dot(tqi, w->k + j * a->D, a->D) + dot(qi, w->tk + j * a->D, a->D));
        for (int64_t j = 0; j <= last; j++) {
            const double ts = s * (dot(tqi, w->k + j * a->D, a->D) + dot(qi, w->tk + j * a->D, a->D));
            for (int64_t d = 0; d < a->Dv; d++)
                out[d] += w->p[j] * ((ts - c) * w->v[j * a->Dv + d] + w->tv[j * a->Dv + d]);
        }
    }
    store_block(a, a->tout, a->stout, b, h, a->S, a->Dv, w->o);
}

flx_status flx_cpu_attention(flx_ctx *ctx, const flx_attention_args *a) {
    (void)ctx;
    if (a->mode != FLX_ATTENTION_FWD && a->mode != FLX_ATTENTION_BWD && a->mode != FLX_ATTENTION_JVP)
        return flx_set_error(FLX_ERR_STATE, "attention: bad kernel mode %d", (int)a->mode);
    blocks w = {0};
    if (!blocks_alloc(a, &w)) {
        blocks_free(&w);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "attention: out of host memory for one head");
    }
    for (int64_t b = 0; b < a->B; b++) {
        for (int64_t h = 0; h < a->H; h++) {
            load_block(a, a->q, a->sq, b, h, a->S, a->D, w.q);
            load_block(a, a->k, a->sk, b, h, a->T, a->D, w.k);
            load_block(a, a->v, a->sv, b, h, a->T, a->Dv, w.v);
            if (a->mode == FLX_ATTENTION_FWD) fwd_head(a, &w, b, h);
            else if (a->mode == FLX_ATTENTION_BWD) bwd_head(a, &w, b, h);
            else jvp_head(a, &w, b, h);
        }
    }
    blocks_free(&w);
    return FLX_OK;
}
