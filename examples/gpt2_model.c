/* gpt2_model.c — GPT-2 over fluxion's public API: configuration, parameters, forward pass, loss,
 * the AdamW step eager and as a plan, synthetic data. See gpt2_model.h for the model. */
#define _POSIX_C_SOURCE 200809L /* example_util.h: clock_gettime */
#include "gpt2_model.h"

#include "example_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char g_err[512];

const char *gpt2_error(void) { return g_err; }

static flx_status fail(flx_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return st;
}

/* A fluxion call failed: keep its message under the name of the gpt2 step that made it. */
static flx_status fail_flx(const char *where) {
    flx_status st = flx_last_status();
    snprintf(g_err, sizeof g_err, "%s: %s", where, flx_last_error());
    return st == FLX_OK ? FLX_ERR_INVALID_ARGUMENT : st;
}

/* ---- configuration ------------------------------------------------------------------------- */
gpt2_config gpt2_config_small(flx_dtype dt) {
    gpt2_config c = {50257, 50304, 1024, 12, 12, 768, dt};
    return c;
}

gpt2_config gpt2_config_tiny(flx_dtype dt) {
    gpt2_config c = {64, 64, 16, 2, 2, 32, dt};
    return c;
}

flx_status gpt2_config_check(const gpt2_config *c) {
    if (!c) return fail(FLX_ERR_INVALID_ARGUMENT, "gpt2: NULL config");
    if (c->vocab < 1 || c->padded_vocab < c->vocab)
        return fail(FLX_ERR_INVALID_ARGUMENT, "gpt2: needs 1 <= vocab <= padded_vocab (got %lld, %lld)",
                    (long long)c->vocab, (long long)c->padded_vocab);
    if (c->max_seq < 1 || c->n_layer < 1 || c->n_head < 1 || c->channels < 1 || c->channels % c->n_head)
        return fail(FLX_ERR_INVALID_ARGUMENT,
                    "gpt2: needs max_seq, n_layer, n_head, channels >= 1 and channels a multiple of "
                    "n_head (got %lld, %d, %d, %lld)",
                    (long long)c->max_seq, (int)c->n_layer, (int)c->n_head, (long long)c->channels);
    /* f16 would need dynamic loss scaling (its range underflows small gradients): not wired. */
    if (c->dtype != FLX_F32 && c->dtype != FLX_F64 && c->dtype != FLX_BF16)
        return fail(FLX_ERR_DTYPE, "gpt2: dtype must be f32, f64 or bf16 (got %s)",
                    flx_dtype_name(c->dtype));
    return FLX_OK;
}

int32_t gpt2_n_tensors(const gpt2_config *c) { return 2 + GPT2_PER_LAYER * c->n_layer + 2; }

int32_t gpt2_param_index(int32_t layer, int32_t which) { return 2 + GPT2_PER_LAYER * layer + which; }

int32_t gpt2_param_shape(const gpt2_config *c, int32_t i, int64_t shape[2]) {
    const int64_t C = c->channels;
    int32_t n = gpt2_n_tensors(c);
    if (i < 0 || i >= n) return -1;
    if (i == 0) return shape[0] = c->padded_vocab, shape[1] = C, 2;
    if (i == 1) return shape[0] = c->max_seq, shape[1] = C, 2;
    if (i >= n - 2) return shape[0] = C, 1;
    switch ((i - 2) % GPT2_PER_LAYER) {
    case GPT2_QKV_W: return shape[0] = 3 * C, shape[1] = C, 2;
    case GPT2_QKV_B: return shape[0] = 3 * C, 1;
    case GPT2_PROJ_W: return shape[0] = C, shape[1] = C, 2;
    case GPT2_FC_W: return shape[0] = 4 * C, shape[1] = C, 2;
    case GPT2_FC_B: return shape[0] = 4 * C, 1;
    case GPT2_FCPROJ_W: return shape[0] = C, shape[1] = 4 * C, 2;
    default: return shape[0] = C, 1; /* layer-norm gains and biases, proj_b, fcproj_b */
    }
}

int64_t gpt2_n_weights(const gpt2_config *c) {
    int64_t total = 0, s[2];
    for (int32_t i = 0; i < gpt2_n_tensors(c); i++) {
        int32_t nd = gpt2_param_shape(c, i, s);
        total += nd == 2 ? s[0] * s[1] : s[0];
    }
    return total;
}

double gpt2_flops_per_token(const gpt2_config *c, int64_t seq) {
    return 6.0 * (double)gpt2_n_weights(c) + 12.0 * c->n_layer * (double)seq * (double)c->channels;
}

double gpt2_peak_bf16_flops(void) {
    flx_cuda_device_props pr;
    if (flx_cuda_device_info(0, &pr) != FLX_OK || pr.major != 9 || pr.multiprocessors < 1) {
        flx_clear_error();
        return 0;
    }
    return 989.4e12 * pr.multiprocessors / 132.0;
}

gpt2_adamw gpt2_adamw_defaults(void) {
    gpt2_adamw h = {6e-4, 0.9, 0.95, 1e-8, 0.1};
    return h;
}

/* ---- parameters ------------------------------------------------------------------------------ */
/* Initial value of parameter i (see the header); generated in f32 (f64 for an f64 model) and
 * rounded once to bf16 for a bf16 model. */
static flx_tensor *init_value(flx_ctx *ctx, const gpt2_config *c, int32_t i, uint64_t seed) {
    int64_t s[2];
    int32_t nd = gpt2_param_shape(c, i, s);
    flx_dtype gen = c->dtype == FLX_F64 ? FLX_F64 : FLX_F32;
    flx_tensor *v;
    if (nd == 2) {
        int32_t which = i >= 2 ? (i - 2) % GPT2_PER_LAYER : -1;
        double std = 0.02;
        if (which == GPT2_PROJ_W || which == GPT2_FCPROJ_W) std /= sqrt(2.0 * c->n_layer);
        v = flx_normal(ctx, gen, nd, s, 0.0, std, seed + (uint64_t)i);
    } else {
        int32_t n = gpt2_n_tensors(c);
        int32_t which = i >= n - 2 ? (i == n - 2 ? GPT2_LN1_W : GPT2_LN1_B) : (i - 2) % GPT2_PER_LAYER;
        bool gain = which == GPT2_LN1_W || which == GPT2_LN2_W;
        v = gain ? flx_ones(ctx, gen, nd, s) : flx_zeros(ctx, gen, nd, s);
    }
    return gen == c->dtype ? v : flx_cast(v, c->dtype);
}

void gpt2_destroy(gpt2_model *m) {
    if (!m) return;
    for (int k = 0; k < 2; k++) {
        if (m->opt[k]) flx_optim_zero_grad(m->opt[k]);
        flx_optim_destroy(m->opt[k]);
        m->opt[k] = NULL;
    }
    if (m->params) {
        for (int32_t i = 0; i < m->n_params; i++) {
            if (m->params[i]) flx_zero_grad(m->params[i]);
            flx_release(m->params[i]);
        }
        free(m->params);
    }
    m->params = NULL;
    m->n_params = 0;
}

flx_status gpt2_init(gpt2_model *m, flx_ctx *ctx, const gpt2_config *cfg, uint64_t seed,
                     const gpt2_adamw *hp) {
    if (!m) return fail(FLX_ERR_INVALID_ARGUMENT, "gpt2_init: NULL model");
    memset(m, 0, sizeof *m);
    if (!ctx) return fail(FLX_ERR_INVALID_ARGUMENT, "gpt2_init: NULL context");
    flx_status st = gpt2_config_check(cfg);
    if (st != FLX_OK) return st;
    gpt2_adamw h = hp ? *hp : gpt2_adamw_defaults();
    m->cfg = *cfg;
    m->ctx = ctx;
    int32_t n = gpt2_n_tensors(cfg);
    m->params = (flx_tensor **)calloc((size_t)n, sizeof *m->params);
    if (!m->params) return fail(FLX_ERR_OUT_OF_MEMORY, "gpt2_init: out of host memory");
    m->n_params = n;
    /* Each parameter is made in a scope of its own, so the intermediates of its initial value
     * vanish at once; the parameter moves out (to the caller, or retained by the model inside a
     * caller's scope: gpt2_destroy releases the model's reference either way). */
    flx_tensor **decay = (flx_tensor **)calloc((size_t)n, sizeof *decay);
    flx_tensor **plain = (flx_tensor **)calloc((size_t)n, sizeof *plain);
    int32_t nd = 0, np = 0;
    st = decay && plain ? FLX_OK : fail(FLX_ERR_OUT_OF_MEMORY, "gpt2_init: out of host memory");
    for (int32_t i = 0; i < n && st == FLX_OK; i++) {
        flx_scope_begin();
        /* requires_grad computes the initial value and makes it a leaf holding it */
        flx_tensor *p = init_value(ctx, cfg, i, seed);
        if (p && flx_set_requires_grad(p, true) != FLX_OK) p = NULL;
        flx_scope_end(p ? 1 : 0, &p);
        /* outside a scope p is ours now; inside the caller's scope it is that scope's: retain */
        if (p && flx_scope_depth() > 0) flx_retain(p);
        m->params[i] = p;
        if (!p) st = fail_flx("gpt2_init: parameter");
        else if (flx_ndim(p) == 2) decay[nd++] = p;
        else plain[np++] = p;
    }
    if (st == FLX_OK) {
        flx_optim_config oc = flx_optim_defaults(FLX_OPTIM_ADAMW);
        oc.lr = h.lr, oc.beta1 = h.beta1, oc.beta2 = h.beta2, oc.eps = h.eps;
        oc.weight_decay = h.weight_decay;
        m->opt[0] = flx_optim_create(ctx, FLX_OPTIM_ADAMW, nd, decay, &oc);
        oc.weight_decay = 0;
        m->opt[1] = m->opt[0] ? flx_optim_create(ctx, FLX_OPTIM_ADAMW, np, plain, &oc) : NULL;
        if (!m->opt[1]) st = fail_flx("gpt2_init: AdamW");
    }
    free(decay);
    free(plain);
    if (st != FLX_OK) {
        char keep[sizeof g_err];
        memcpy(keep, g_err, sizeof keep);
        gpt2_destroy(m);
        memcpy(g_err, keep, sizeof keep);
    }
    return st;
}

/* ---- forward ---------------------------------------------------------------------------------- */
/* Columns [c0, c0 + H D) of qkv (B T, 3C) as heads (B, H, T, D). The three heads of one qkv
 * tile it, so flx_attention reads them in place and writes its gradient into qkv's layout: the
 * slices and permutes here never run. */
static flx_tensor *heads(flx_tensor *qkv, int64_t c0, int64_t B, int64_t T, int64_t H, int64_t D) {
    const int64_t s4[4] = {B, T, H, D};
    const int32_t perm[4] = {0, 2, 1, 3};
    return flx_permute(flx_reshape(flx_slice(qkv, 1, c0, c0 + H * D, 1), 4, s4), perm);
}

/* One pre-LN block on the residual stream x (B T, C). Rows stay flattened so that every linear
 * layer is one GEMM over B T rows (its weight gradient one GEMM too, with no batch to reduce). */
static flx_tensor *block(const gpt2_config *c, flx_tensor *const *p, flx_tensor *x, int64_t B, int64_t T) {
    const int64_t C = c->channels, H = c->n_head, D = C / H;
    const int64_t s2[2] = {B * T, C};
    const int32_t perm[4] = {0, 2, 1, 3};
    flx_tensor *a = flx_layer_norm(x, 1, p[GPT2_LN1_W], p[GPT2_LN1_B], 1e-5);
    flx_tensor *qkv = flx_linear(a, p[GPT2_QKV_W], p[GPT2_QKV_B]);
    flx_tensor *y = flx_attention(heads(qkv, 0, B, T, H, D), heads(qkv, C, B, T, H, D),
                                  heads(qkv, 2 * C, B, T, H, D), true, 0.0); /* scale 1/sqrt(D) */
    y = flx_reshape(flx_permute(y, perm), 2, s2);
    x = flx_add(x, flx_linear(y, p[GPT2_PROJ_W], p[GPT2_PROJ_B]));
    flx_tensor *m = flx_layer_norm(x, 1, p[GPT2_LN2_W], p[GPT2_LN2_B], 1e-5);
    m = flx_gelu(flx_linear(m, p[GPT2_FC_W], p[GPT2_FC_B]));
    return flx_add(x, flx_linear(m, p[GPT2_FCPROJ_W], p[GPT2_FCPROJ_B]));
}

/* Checks tokens (B, T) with 1 <= T <= max_seq, an integer dtype, and params present. */
static flx_status check_inputs(const char *fn, const gpt2_config *c, flx_tensor *const *params,
                               flx_tensor *tokens) {
    flx_status st = gpt2_config_check(c);
    if (st != FLX_OK) return st;
    if (!params) return fail(FLX_ERR_INVALID_ARGUMENT, "%s: NULL parameter list", fn);
    for (int32_t i = 0; i < gpt2_n_tensors(c); i++) {
        int64_t s[2];
        int32_t nd = gpt2_param_shape(c, i, s);
        if (!params[i]) return fail(FLX_ERR_INVALID_ARGUMENT, "%s: parameter %d is NULL", fn, (int)i);
        if (flx_ndim(params[i]) != nd || flx_dim(params[i], 0) != s[0] ||
            (nd == 2 && flx_dim(params[i], 1) != s[1]))
            return fail(FLX_ERR_SHAPE, "%s: parameter %d does not have the configured shape", fn, (int)i);
        if (flx_dtype_of(params[i]) != c->dtype)
            return fail(FLX_ERR_DTYPE, "%s: parameter %d is %s, the config says %s", fn, (int)i,
                        flx_dtype_name(flx_dtype_of(params[i])), flx_dtype_name(c->dtype));
    }
    if (!tokens) return fail(FLX_ERR_INVALID_ARGUMENT, "%s: NULL tokens", fn);
    if (flx_dtype_of(tokens) != FLX_I64 && flx_dtype_of(tokens) != FLX_I32)
        return fail(FLX_ERR_DTYPE, "%s: tokens must be i32 or i64 (got %s)", fn,
                    flx_dtype_name(flx_dtype_of(tokens)));
    if (flx_ndim(tokens) != 2 || flx_dim(tokens, 1) < 1 || flx_dim(tokens, 1) > c->max_seq)
        return fail(FLX_ERR_SHAPE, "%s: tokens must be (B, T) with 1 <= T <= max_seq = %lld", fn,
                    (long long)c->max_seq);
    return FLX_OK;
}

/* The logits (B T, padded_vocab) of tokens (B, T), rows in token order. */
static flx_tensor *logits_unchecked(const gpt2_config *c, flx_tensor *const *p, flx_tensor *tokens) {
    const int64_t B = flx_dim(tokens, 0), T = flx_dim(tokens, 1);
    const int64_t s2[2] = {B * T, c->channels};
    flx_tensor *pos = flx_arange(flx_ctx_of(tokens), FLX_I64, 0, (double)T, 1);
    flx_tensor *x = flx_reshape(flx_add(flx_embedding(p[0], tokens), flx_embedding(p[1], pos)), 2, s2);
    for (int32_t l = 0; l < c->n_layer; l++) x = block(c, p + gpt2_param_index(l, 0), x, B, T);
    int32_t n = gpt2_n_tensors(c);
    x = flx_layer_norm(x, 1, p[n - 2], p[n - 1], 1e-5);
    return flx_linear(x, p[0], NULL); /* tied: logits = x wte^T */
}

/* Ends the scope the caller opened, handing r to the enclosing scope (or the caller). */
static flx_tensor *scoped_result(flx_tensor *r, const char *fn) {
    if (!r) fail_flx(fn);
    flx_scope_end(r ? 1 : 0, &r);
    return r;
}

flx_tensor *gpt2_logits(const gpt2_config *c, flx_tensor *const *params, flx_tensor *tokens) {
    if (check_inputs("gpt2_logits", c, params, tokens) != FLX_OK) return NULL;
    flx_scope_begin();
    const int64_t s3[3] = {flx_dim(tokens, 0), flx_dim(tokens, 1), c->padded_vocab};
    return scoped_result(flx_reshape(logits_unchecked(c, params, tokens), 3, s3), "gpt2_logits");
}

flx_tensor *gpt2_loss(const gpt2_config *c, flx_tensor *const *params, flx_tensor *tokens,
                      flx_tensor *targets) {
    if (check_inputs("gpt2_loss", c, params, tokens) != FLX_OK) return NULL;
    if (!targets || flx_ndim(targets) != 2 || flx_dim(targets, 0) != flx_dim(tokens, 0) ||
        flx_dim(targets, 1) != flx_dim(tokens, 1)) {
        fail(FLX_ERR_SHAPE, "gpt2_loss: targets must be given with the shape of tokens (B, T)");
        return NULL;
    }
    flx_scope_begin();
    const int64_t flat[1] = {-1};
    flx_tensor *loss = flx_cross_entropy(logits_unchecked(c, params, tokens), flx_reshape(targets, 1, flat),
                                         FLX_REDUCTION_MEAN, -100);
    return scoped_result(loss, "gpt2_loss");
}

/* ---- training --------------------------------------------------------------------------------- */
flx_status gpt2_step_eager(gpt2_model *m, flx_tensor *tokens, flx_tensor *targets, double *loss_out) {
    if (!m || !m->params || !m->opt[0]) return fail(FLX_ERR_INVALID_ARGUMENT, "gpt2_step_eager: no model");
    flx_scope_begin();
    flx_tensor *loss = gpt2_loss(&m->cfg, m->params, tokens, targets);
    flx_status st = loss ? flx_backward(loss) : FLX_ERR_INVALID_ARGUMENT;
    if (st == FLX_OK && loss_out) st = flx_item(loss, loss_out);
    if (loss && st != FLX_OK) fail_flx("gpt2_step_eager");
    flx_scope_end(0, NULL);
    for (int k = 0; k < 2 && st == FLX_OK; k++)
        if ((st = flx_optim_step(m->opt[k])) != FLX_OK || (st = flx_optim_zero_grad(m->opt[k])) != FLX_OK)
            fail_flx("gpt2_step_eager: AdamW");
    return st;
}

flx_plan *gpt2_compile_step(gpt2_model *m, flx_tensor *tokens, flx_tensor *targets, int32_t capture) {
    if (!m || !m->params || !m->opt[0]) {
        fail(FLX_ERR_INVALID_ARGUMENT, "gpt2_compile_step: no model");
        return NULL;
    }
    flx_scope_begin();
    flx_tensor *loss = gpt2_loss(&m->cfg, m->params, tokens, targets);
    flx_plan *plan = NULL;
    if (loss) {
        flx_plan_options o = flx_plan_default_options();
        o.capture = capture;
        o.n_optim = 2;
        o.optims = m->opt;
        flx_tensor *ins[2] = {tokens, targets};
        plan = flx_plan_compile(1, &loss, 2, ins, &o);
        if (!plan) fail_flx("gpt2_compile_step");
    }
    flx_scope_end(0, NULL);
    return plan;
}

/* ---- data ------------------------------------------------------------------------------------- */
flx_status gpt2_synthetic_batch(flx_ctx *ctx, const gpt2_config *c, int64_t batch, int64_t seq,
                                uint64_t seed, flx_tensor **tokens, flx_tensor **targets) {
    if (!tokens || !targets) return fail(FLX_ERR_INVALID_ARGUMENT, "gpt2_synthetic_batch: NULL output");
    *tokens = *targets = NULL;
    flx_status st = gpt2_config_check(c);
    if (st != FLX_OK) return st;
    if (!ctx || batch < 1 || seq < 1 || seq > c->max_seq)
        return fail(FLX_ERR_INVALID_ARGUMENT, "gpt2_synthetic_batch: needs a context, batch >= 1 and "
                    "1 <= seq <= max_seq (got %lld, %lld)", (long long)batch, (long long)seq);
    int64_t *x = (int64_t *)malloc((size_t)(batch * seq) * sizeof *x);
    int64_t *y = (int64_t *)malloc((size_t)(batch * seq) * sizeof *y);
    if (!x || !y) {
        free(x);
        free(y);
        return fail(FLX_ERR_OUT_OF_MEMORY, "gpt2_synthetic_batch: out of host memory");
    }
    uint64_t s = seed;
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t t = 0; t <= seq; t++) {
            int64_t id = (int64_t)(ex_splitmix64(&s) % (uint64_t)c->vocab);
            if (t < seq) x[b * seq + t] = id;
            if (t > 0) y[b * seq + t - 1] = id;
        }
    }
    const int64_t shape[2] = {batch, seq};
    *tokens = flx_from_host(ctx, FLX_I64, 2, shape, x);
    *targets = *tokens ? flx_from_host(ctx, FLX_I64, 2, shape, y) : NULL;
    free(x);
    free(y);
    if (!*targets) {
        st = fail_flx("gpt2_synthetic_batch");
        if (flx_scope_depth() == 0) flx_release(*tokens);
        *tokens = NULL;
    }
    return st;
}
