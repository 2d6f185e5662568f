/* optim.c — fused optimisers: SGD (plain, momentum, Nesterov), Adagrad, RMSprop, Adam
 * and AdamW. Update rules and conventions: fluxion.h, "optimisers".
 *
 * Design
 *   - State slots (moments, accumulators) are plain device buffers owned by the optimiser; the
 *     hyperparameters and the step count are FLX_HP_COUNT doubles in one device buffer, followed
 *     by a 32-bit counter the CUDA kernel uses to advance the step from its last block.
 *   - A step gathers every parameter that has a .grad and updates them with one kernel-family
 *     call per FLX_OPTIM_MAX_TENSORS_PER_LAUNCH parameters (one launch for models of up to that
 *     many tensors), passing the pointers by value.
 *   - Buffer immutability (runtime/core/eval.c): computed buffers are shared (reshape, detach and
 *     flx_assign alias them) and never written again. The optimiser writes a parameter's buffer
 *     in place only when the parameter is its sole holder (refs == 1, not external memory);
 *     otherwise it first gives the parameter a private copy. That check runs at create time and
 *     at every step, so a user's flx_assign, or a live alias of a parameter, is never written
 *     through. Each update bumps the parameter's version, as flx_assign does.
 *   - Plans (runtime/core/plan.c) queue the same update inside their replay through
 *     flx_optim_queue_update, the one function that fills and launches the chunks; since the
 *     hyperparameters and the step count live in device memory, a captured launch stays valid
 *     across flx_optim_set_hparam. A plan holds the optimiser (refs) until it is destroyed.
 *   - f16/bf16 parameters: the state slots are f32, and one more slot (the last) holds the f32
 *     master copy, which the kernel updates and rounds into the parameter. The master is seeded
 *     from the parameter at create time, and again at a step when the parameter's version is not
 *     the one the optimiser last left (flx_assign, a load): the parameter as the user set it wins.
 *   - Loss scaling: the scale is a 0-d f64 leaf (scale_t) that flx_optim_scale_loss multiplies
 *     into the loss graph and the update kernel rewrites in place, so a plan's forward reads the
 *     current scale from the same buffer every run. Found-inf detection is two-phase: FIND_INF
 *     launches over every gradient of the step set a device flag, then the UPDATE launches read
 *     it; the last one does the scaler's bookkeeping and clears the flag. No host branch, so it
 *     is captured into a plan's CUDA graph unchanged.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim_internal.h"

const char *flx_optim_kind_name(flx_optim_kind k) {
    switch (k) {
    case FLX_OPTIM_SGD: return "sgd";
    case FLX_OPTIM_MOMENTUM: return "momentum";
    case FLX_OPTIM_NESTEROV: return "nesterov";
    case FLX_OPTIM_ADAGRAD: return "adagrad";
    case FLX_OPTIM_RMSPROP: return "rmsprop";
    case FLX_OPTIM_ADAM: return "adam";
    case FLX_OPTIM_ADAMW: return "adamw";
    default: return "invalid";
    }
}

static const char *hp_name(int32_t h) {
    static const char *names[FLX_HP_COUNT] = {"lr",   "momentum", "dampening", "weight_decay",
                                              "beta1", "beta2",   "eps",       "alpha",
                                              "lr_decay", "step"};
    return h >= 0 && h < FLX_HP_COUNT ? names[h] : "invalid";
}

flx_optim_config flx_optim_defaults(flx_optim_kind kind) {
    flx_optim_config c;
    memset(&c, 0, sizeof c);
    c.lr = 1e-2;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.alpha = 0.99;
    c.init_scale = 65536.0;
    c.growth_factor = 2.0;
    c.backoff_factor = 0.5;
    c.growth_interval = 2000;
    switch (kind) {
    case FLX_OPTIM_MOMENTUM: c.momentum = 0.9; break;
    case FLX_OPTIM_NESTEROV: c.momentum = 0.9; c.nesterov = true; break;
    case FLX_OPTIM_ADAGRAD: c.eps = 1e-10; break;
    case FLX_OPTIM_ADAM: c.lr = 1e-3; break;
    case FLX_OPTIM_ADAMW: c.lr = 1e-3; c.weight_decay = 1e-2; break;
    default: break;
    }
    return c;
}

/* Checks one hyperparameter value; false with the error set. */
bool flx_optim_check_hp(const char *fn, int32_t which, double v) {
    bool ok = isfinite(v) && v >= 0;
    switch (which) {
    case FLX_HP_BETA1:
    case FLX_HP_BETA2:
    case FLX_HP_ALPHA: ok = ok && v < 1; break;
    case FLX_HP_DAMPENING: ok = ok && v <= 1; break;
    case FLX_HP_STEP: ok = ok && v == floor(v) && v < 9007199254740992.0; break;
    default: break;
    }
    if (!ok) {
        const char *range = "a finite value >= 0";
        if (which == FLX_HP_BETA1 || which == FLX_HP_BETA2 || which == FLX_HP_ALPHA)
            range = "a value in [0, 1)";
        else if (which == FLX_HP_DAMPENING) range = "a value in [0, 1]";
        else if (which == FLX_HP_STEP) range = "a whole number >= 0";
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s = %g, expected %s", fn, hp_name(which), v,
                      range);
    }
    return ok;
}


static flx_status fill_buffer(flx_ctx *ctx, flx_buffer *b, flx_dtype dt, int64_t n, double v) {
    if (n == 0) return FLX_OK;
    flx_fill_args fa = {.kind = FLX_FILL_CONST, .dtype = dt, .n = n, .a = v, .out = b->ptr};
    return flx_kernel_fill(ctx, &fa);
}

/* Checks the loss-scaling fields of a config; false with the error set. */
static bool check_scaling(const char *fn, const flx_optim_config *c) {
    const char *what = NULL;
    double v = 0;
    if (!isfinite(c->init_scale) || c->init_scale <= 0 || !isfinite((float)c->init_scale))
        what = "init_scale", v = c->init_scale;
    else if (!isfinite(c->growth_factor) || c->growth_factor <= 1)
        what = "growth_factor", v = c->growth_factor;
    else if (!(c->backoff_factor > 0 && c->backoff_factor < 1))
        what = "backoff_factor", v = c->backoff_factor;
    else if (c->growth_interval < 1)
        what = "growth_interval", v = c->growth_interval;
    if (!what) return true;
    flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                  "%s: loss scaling %s = %g, expected init_scale > 0 (finite in f32), "
                  "growth_factor > 1, backoff_factor in (0, 1), growth_interval >= 1",
                  fn, what, v);
    return false;
}

static void base_args(const flx_optim *o, flx_optim_args *a) {
    memset(a, 0, sizeof *a);
    a->rule = o->rule;
    a->nesterov = o->nesterov;
    a->centered = o->centered;
    a->use_momentum = o->use_momentum;
    a->dtype = o->dtype;
    a->sdtype = o->sdtype;
    a->hp = (double *)o->hp->ptr;
    a->counter = (uint32_t *)((char *)o->hp->ptr + FLX_HP_COUNT * sizeof(double));
    if (o->scaling) {
        a->scale = (double *)o->scale_t->buf->ptr;
        a->scaler = (double *)o->scaler->ptr;
        a->found_inf = (uint32_t *)((char *)o->scaler->ptr + 2 * sizeof(double));
        a->growth_factor = o->growth;
        a->backoff_factor = o->backoff;
        a->growth_interval = o->interval;
    }
}

/* master := parameter for parameters idx[0..m) (queued; exact, a half is an f32 value), and the
 * versions recorded as in step with their masters. */
static flx_status seed_masters(flx_optim *o, int32_t m, const int32_t *idx) {
    flx_status s = FLX_OK;
    for (int32_t k0 = 0; k0 < m && s == FLX_OK; k0 += FLX_OPTIM_MAX_TENSORS_PER_LAUNCH) {
        flx_optim_args a;
        base_args(o, &a);
        a.mode = FLX_OPTIM_INIT_MASTER;
        int32_t k1 = k0 + FLX_OPTIM_MAX_TENSORS_PER_LAUNCH;
        if (k1 > m) k1 = m;
        a.n = k1 - k0;
        for (int32_t k = k0; k < k1; k++) {
            int32_t i = idx[k];
            a.p[k - k0] = o->params[i]->buf->ptr;
            a.master[k - k0] = (float *)o->state[i * MAX_SLOTS + MASTER_SLOT]->ptr;
            a.numel[k - k0] = o->params[i]->numel;
            o->seen[i] = o->params[i]->version;
        }
        s = flx_kernel_optim(o->ctx, &a);
    }
    return s;
}

/* The scale leaf (held by the optimiser, outside any scope) and the zeroed scaler words. */
static flx_status create_scaler(flx_optim *o, double init_scale) {
    flx_status s = flx_scope_begin();
    if (s != FLX_OK) return s;
    flx_tensor *t = flx_from_host(o->ctx, FLX_F64, 0, NULL, &init_scale);
    if (t) o->scale_t = flx_retain(t);
    else s = flx_last_status();
    flx_scope_end(0, NULL);
    if (s == FLX_OK) {
        o->scaler = flx_buffer_new(o->ctx, SCALER_BYTES);
        if (!o->scaler) return flx_last_status();
        double zero[3] = {0, 0, 0}; /* all-zero bits: found-inf flag clear */
        s = o->ctx->be->upload(o->ctx, o->scaler->ptr, zero, SCALER_BYTES);
    }
    return s;
}

void flx_optim_destroy(flx_optim *o) {
    if (!o) return;
    if (--o->refs > 0) return; /* a plan that updates it still holds it */
    if (o->state)
        for (int32_t i = 0; i < o->n * MAX_SLOTS; i++) flx_buffer_release(o->state[i]);
    if (o->params)
        for (int32_t i = 0; i < o->n; i++) flx_release(o->params[i]);
    flx_buffer_release(o->hp);
    flx_buffer_release(o->scaler);
    flx_release(o->scale_t);
    FLX_FREE_ALL(o->seen, o->state, o->params, o);
}

flx_optim *flx_optim_create(flx_ctx *ctx, flx_optim_kind kind, int32_t n,
                            flx_tensor *const *params, const flx_optim_config *cfg) {
    static const char *fn = "flx_optim_create";
    if (!ctx) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", fn);
        return NULL;
    }
    if ((int)kind < 0 || kind >= FLX_OPTIM_KIND_COUNT) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: unknown optimiser kind %d", fn, (int)kind);
        return NULL;
    }
    if (n < 1 || !params) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one parameter (n %d, params %s)",
                      fn, (int)n, params ? "given" : "NULL");
        return NULL;
    }
    if (!flx_check_source_list(fn, "parameter", FLX_ERR_STATE, ctx, n, params)) return NULL;
    for (int32_t i = 0; i < n; i++) {
        flx_tensor *p = params[i];
        if (!flx_dtype_is_float(p->dtype)) {
            flx_set_error(FLX_ERR_DTYPE, "%s: parameter %d %s is not f32, f64, f16 or bf16", fn,
                          (int)i, flx_describe(p));
            return NULL;
        }
        if (p->dtype != params[0]->dtype) {
            flx_set_error(FLX_ERR_DTYPE, "%s: parameter %d %s and parameter 0 %s differ in dtype",
                          fn, (int)i, flx_describe(p), flx_describe(params[0]));
            return NULL;
        }
    }
    flx_optim_config c = cfg ? *cfg : flx_optim_defaults(kind);
    double hpv[FLX_HP_COUNT] = {0};
    hpv[FLX_HP_LR] = c.lr;
    hpv[FLX_HP_MOMENTUM] = c.momentum;
    hpv[FLX_HP_DAMPENING] = c.dampening;
    hpv[FLX_HP_WEIGHT_DECAY] = c.weight_decay;
    hpv[FLX_HP_BETA1] = c.beta1;
    hpv[FLX_HP_BETA2] = c.beta2;
    hpv[FLX_HP_EPS] = c.eps;
    hpv[FLX_HP_ALPHA] = c.alpha;
    hpv[FLX_HP_LR_DECAY] = c.lr_decay;
    hpv[FLX_HP_STEP] = 0;
    for (int32_t h = 0; h < FLX_HP_COUNT; h++)
        if (!flx_optim_check_hp(fn, h, hpv[h])) return NULL;
    if (!isfinite(c.initial_accumulator) || c.initial_accumulator < 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: initial_accumulator = %g, expected >= 0", fn,
                      c.initial_accumulator);
        return NULL;
    }
    if (c.loss_scaling && !check_scaling(fn, &c)) return NULL;
    bool is_sgd = kind == FLX_OPTIM_SGD || kind == FLX_OPTIM_MOMENTUM || kind == FLX_OPTIM_NESTEROV;
    if (c.nesterov && (!is_sgd || c.momentum <= 0 || c.dampening != 0)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: nesterov needs an SGD kind with momentum > 0 and dampening 0 (kind %s, "
                      "momentum %g, dampening %g)",
                      fn, flx_optim_kind_name(kind), c.momentum, c.dampening);
        return NULL;
    }

    flx_optim *o = (flx_optim *)flx_host_calloc(1, sizeof *o, fn);
    if (!o) return NULL;
    o->ctx = ctx;
    o->refs = 1;
    o->kind = kind;
    o->dtype = params[0]->dtype;
    o->has_master = flx_dtype_is_half(o->dtype);
    o->sdtype = o->has_master ? FLX_F32 : o->dtype;
    o->scaling = c.loss_scaling;
    o->growth = c.growth_factor;
    o->backoff = c.backoff_factor;
    o->interval = c.growth_interval;
    o->nesterov = c.nesterov;
    o->centered = c.centered && kind == FLX_OPTIM_RMSPROP;
    o->use_momentum = c.momentum != 0 && (is_sgd || kind == FLX_OPTIM_RMSPROP);
    bool used[MAX_SLOTS] = {false, false, false, o->has_master};
    double init[MAX_SLOTS] = {0, 0, 0, 0};
    switch (kind) {
    case FLX_OPTIM_ADAGRAD:
        o->rule = FLX_OPTIM_RULE_ADAGRAD;
        used[0] = true;
        init[0] = c.initial_accumulator;
        break;
    case FLX_OPTIM_RMSPROP:
        o->rule = FLX_OPTIM_RULE_RMSPROP;
        used[0] = true;
        used[1] = o->use_momentum;
        used[2] = o->centered;
        break;
    case FLX_OPTIM_ADAM:
    case FLX_OPTIM_ADAMW:
        o->rule = kind == FLX_OPTIM_ADAM ? FLX_OPTIM_RULE_ADAM : FLX_OPTIM_RULE_ADAMW;
        used[0] = used[1] = true;
        break;
    default:
        o->rule = FLX_OPTIM_RULE_SGD;
        used[0] = o->use_momentum;
        break;
    }
    for (int32_t s = 0; s < MAX_SLOTS; s++)
        if (used[s]) o->slot_phys[o->n_slots++] = s;

    o->params = (flx_tensor **)calloc((size_t)n, sizeof *o->params);
    o->state = (flx_buffer **)calloc((size_t)n * MAX_SLOTS, sizeof *o->state);
    o->seen = (uint32_t *)calloc((size_t)n, sizeof *o->seen);
    if (!o->params || !o->state || !o->seen) {
        flx_optim_destroy(o);
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return NULL;
    }
    flx_status st = FLX_OK;
    for (int32_t i = 0; i < n; i++) {
        o->params[i] = flx_retain(params[i]);
        o->n = i + 1;
    }
    /* Hyperparameters: FLX_HP_COUNT doubles then the 32-bit block counter (zeroed). */
    size_t hp_bytes = FLX_HP_COUNT * sizeof(double) + sizeof(double);
    o->hp = flx_buffer_new(ctx, hp_bytes);
    if (!o->hp) st = flx_last_status();
    if (st == FLX_OK) {
        double host[FLX_HP_COUNT + 1];
        memcpy(host, hpv, sizeof hpv);
        host[FLX_HP_COUNT] = 0; /* all-zero bits: counter 0 */
        st = ctx->be->upload(ctx, o->hp->ptr, host, hp_bytes);
    }
    for (int32_t i = 0; i < n && st == FLX_OK; i++) {
        flx_tensor *p = params[i];
        st = flx_tensor_make_private(p);
        for (int32_t s = 0; s < MAX_SLOTS && st == FLX_OK; s++) {
            if (!used[s]) continue;
            flx_buffer *b = flx_buffer_new(ctx, (size_t)p->numel * flx_dtype_size(o->sdtype));
            if (!b) {
                st = flx_last_status();
                break;
            }
            o->state[i * MAX_SLOTS + s] = b;
            if (s != MASTER_SLOT) st = fill_buffer(ctx, b, o->sdtype, p->numel, init[s]);
        }
    }
    /* before the masters: every launch of this optimiser passes the scaler */
    if (st == FLX_OK && o->scaling) st = create_scaler(o, c.init_scale);
    if (st == FLX_OK && o->has_master) {
        int32_t *all = (int32_t *)malloc((size_t)n * sizeof *all);
        if (!all) st = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        for (int32_t i = 0; all && i < n; i++) all[i] = i;
        if (st == FLX_OK) st = seed_masters(o, n, all);
        free(all);
    }
    if (st != FLX_OK) {
        flx_optim_destroy(o);
        return NULL;
    }
    return o;
}

bool flx_optim_check(const char *fn, const flx_optim *o) {
    if (!o) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: optimiser is NULL", fn);
        return false;
    }
    return true;
}



/* Fills one launch's tensor lists with parameters idx[k0..k1). */
static void fill_chunk(const flx_optim *o, flx_optim_args *a, int32_t k0, int32_t k1,
                       const int32_t *idx, void *const *grad_ptrs) {
    a->n = k1 - k0;
    for (int32_t k = k0; k < k1; k++) {
        int32_t i = idx[k];
        flx_buffer *const *st = &o->state[i * MAX_SLOTS];
        a->p[k - k0] = o->params[i]->buf->ptr;
        a->g[k - k0] = grad_ptrs[k];
        a->s0[k - k0] = st[0] ? st[0]->ptr : NULL;
        a->s1[k - k0] = st[1] ? st[1]->ptr : NULL;
        a->s2[k - k0] = st[2] ? st[2]->ptr : NULL;
        a->master[k - k0] = st[MASTER_SLOT] ? (float *)st[MASTER_SLOT]->ptr : NULL;
        a->numel[k - k0] = o->params[i]->numel;
    }
}

/* The fused update of parameters idx[0..m) (indices into o->params, ascending as step gathers
 * them) from the gradients at grad_ptrs[k]: one kernel-family call per
 * FLX_OPTIM_MAX_TENSORS_PER_LAUNCH parameters, the last of which does the step's bookkeeping
 * on the device (step count; with loss scaling the scale, preceded by one found-inf pass over
 * every gradient). Only queues: the parameters' buffers must already be private (the caller's
 * job), and no version is bumped. Shared by flx_optim_step and compiled plans
 * (runtime/core/plan.c), which call it while a CUDA graph is being captured: it allocates
 * nothing on the device, copies nothing and waits for nothing. m == 0 queues nothing (the step
 * count does not advance). */
flx_status flx_optim_queue_update(flx_optim *o, int32_t m, const int32_t *idx,
                                  void *const *grad_ptrs) {
    flx_status s = FLX_OK;
    const int32_t per = FLX_OPTIM_MAX_TENSORS_PER_LAUNCH;
    for (int32_t k0 = 0; o->scaling && k0 < m && s == FLX_OK; k0 += per) {
        flx_optim_args a;
        base_args(o, &a);
        a.mode = FLX_OPTIM_FIND_INF;
        fill_chunk(o, &a, k0, k0 + per < m ? k0 + per : m, idx, grad_ptrs);
        s = flx_kernel_optim(o->ctx, &a);
    }
    for (int32_t k0 = 0; k0 < m && s == FLX_OK; k0 += per) {
        flx_optim_args a;
        base_args(o, &a);
        a.mode = FLX_OPTIM_UPDATE;
        int32_t k1 = k0 + per < m ? k0 + per : m;
        fill_chunk(o, &a, k0, k1, idx, grad_ptrs);
        a.advance_step = k1 == m;
        s = flx_kernel_optim(o->ctx, &a);
    }
    if (s != FLX_OK && o->scaling && m > 0) {
        /* Only the step's last UPDATE launch consumes and clears the found-inf flag: after a
         * failed launch the flag of this step would still be set and skip the next, finite
         * step, so it is cleared here (best effort: after a sticky device error the context is
         * unusable anyway). Parameters of chunks before the failed one may have moved. */
        uint32_t zero = 0;
        (void)o->ctx->be->upload(o->ctx, (char *)o->scaler->ptr + 2 * sizeof(double), &zero,
                                 sizeof zero);
    }
    return s;
}

/* A parameter changed since the optimiser last wrote it (flx_assign, a checkpoint load) gets its
 * master reseeded: the value the user gave wins over the stale master. Queued only. */
flx_status flx_optim_sync_masters(flx_optim *o) {
    if (!o->has_master) return FLX_OK;
    int32_t *stale = (int32_t *)malloc((size_t)o->n * sizeof *stale), m = 0;
    if (!stale) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_optim: out of host memory");
    for (int32_t i = 0; i < o->n; i++)
        if (o->params[i]->version != o->seen[i]) stale[m++] = i;
    flx_status s = m > 0 ? seed_masters(o, m, stale) : FLX_OK;
    free(stale);
    return s;
}

/* After an update of parameters idx[0..m) was queued (flx_optim_step, a plan run): their
 * versions move on (as flx_assign's do), and so does the scale's, which the update rewrote. */
void flx_optim_mark_updated(flx_optim *o, int32_t m, const int32_t *idx, const char *by) {
    for (int32_t k = 0; k < m; k++) {
        flx_tensor *p = o->params[idx[k]];
        p->version++;
        p->changed_by = by;
        o->seen[idx[k]] = p->version;
    }
    if (o->scaling && m > 0) {
        o->scale_t->version++;
        o->scale_t->changed_by = by;
    }
}

/* For plans: the parameter list, and a hold that flx_optim_destroy releases. */
int32_t flx_optim_params(const flx_optim *o, flx_tensor *const **params) {
    *params = o->params;
    return o->n;
}

void flx_optim_retain(flx_optim *o) { o->refs++; }

flx_status flx_optim_step(flx_optim *o) {
    static const char *fn = "flx_optim_step";
    if (!flx_optim_check(fn, o)) return flx_last_status();
    /* Gradients: compute the lazy ones in one evaluation. */
    flx_tensor **gs = (flx_tensor **)malloc((size_t)o->n * sizeof *gs);
    int32_t *idx = (int32_t *)malloc((size_t)o->n * sizeof *idx);
    void **gp = (void **)calloc((size_t)o->n, sizeof *gp);
    if (!gs || !idx || !gp) {
        free(gs);
        free(idx);
        free(gp);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    int32_t m = 0;
    flx_status s = FLX_OK;
    for (int32_t i = 0; i < o->n && s == FLX_OK; i++) {
        flx_tensor *p = o->params[i], *g = p->grad;
        if (!g) continue;
        if (g->dtype != p->dtype || g->numel != p->numel || g->ctx != p->ctx)
            s = flx_set_error(FLX_ERR_STATE, "%s: parameter %d %s has a gradient %s that does not match it",
                              fn, (int)i, flx_describe(p), flx_describe(g));
        gs[m] = g;
        idx[m++] = i;
    }
    if (s == FLX_OK && m > 0) s = flx_eval_nodes(m, gs);
    /* Parameters: private buffers, then the fused update (flx_optim_queue_update). */
    for (int32_t k = 0; k < m && s == FLX_OK; k++) {
        flx_tensor *p = o->params[idx[k]];
        if (p->op != FLX_OP_CONST)
            s = flx_set_error(FLX_ERR_STATE, "%s: parameter %d is no longer a leaf", fn, (int)idx[k]);
        else
            s = flx_tensor_make_private(p);
    }
    if (s == FLX_OK && o->scaling) s = flx_tensor_make_private(o->scale_t);
    if (s == FLX_OK) s = flx_optim_sync_masters(o);
    if (s == FLX_OK) {
        for (int32_t k = 0; k < m; k++) gp[k] = gs[k]->buf->ptr;
        s = flx_optim_queue_update(o, m, idx, gp);
    }
    if (s == FLX_OK) flx_optim_mark_updated(o, m, idx, "flx_optim_step");
    free(gs);
    free(idx);
    free(gp);
    return s;
}

flx_status flx_optim_zero_grad(flx_optim *o) {
    if (!flx_optim_check("flx_optim_zero_grad", o)) return flx_last_status();
    for (int32_t i = 0; i < o->n; i++) {
        flx_status s = flx_zero_grad(o->params[i]);
        if (s != FLX_OK) return s;
    }
    return FLX_OK;
}

flx_status flx_optim_set_hparam(flx_optim *o, flx_optim_hparam which, double value) {
    static const char *fn = "flx_optim_set_hparam";
    if (!flx_optim_check(fn, o)) return flx_last_status();
    if ((int)which < 0 || which >= FLX_HP_COUNT)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: unknown hyperparameter %d", fn, (int)which);
    if (!flx_optim_check_hp(fn, which, value)) return flx_last_status();
    if (which == FLX_HP_MOMENTUM && !o->use_momentum && value != 0)
        return flx_set_error(FLX_ERR_STATE,
                             "%s: this %s optimiser was created without momentum; whether momentum "
                             "is used is fixed at create time",
                             fn, flx_optim_kind_name(o->kind));
    if (which == FLX_HP_MOMENTUM && o->use_momentum && value == 0 && o->nesterov)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: nesterov needs momentum > 0", fn);
    flx_optim_args a;
    base_args(o, &a);
    a.mode = FLX_OPTIM_SET_HP;
    a.set_index = (int32_t)which;
    a.set_value = value;
    return flx_kernel_optim(o->ctx, &a);
}

flx_status flx_optim_set_lr(flx_optim *o, double lr) {
    return flx_optim_set_hparam(o, FLX_HP_LR, lr);
}

flx_status flx_optim_get_hparam(flx_optim *o, flx_optim_hparam which, double *out) {
    static const char *fn = "flx_optim_get_hparam";
    if (!flx_optim_check(fn, o)) return flx_last_status();
    if ((int)which < 0 || which >= FLX_HP_COUNT)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: unknown hyperparameter %d", fn, (int)which);
    if (!out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    double host[FLX_HP_COUNT];
    flx_status s = o->ctx->be->download(o->ctx, host, o->hp->ptr, sizeof host);
    if (s == FLX_OK) *out = host[which];
    return s;
}

int32_t flx_optim_state_count(const flx_optim *o) { return o ? o->n_slots : -1; }

static flx_buffer *state_of(const char *fn, flx_optim *o, int32_t i, int32_t slot) {
    if (!flx_optim_check(fn, o) || !flx_check_index(fn, "parameter index", i, o->n)) return NULL;
    if (slot < 0 || slot >= o->n_slots) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: state slot %d outside [0, %d) for a %s optimiser",
                      fn, (int)slot, (int)o->n_slots, flx_optim_kind_name(o->kind));
        return NULL;
    }
    return o->state[i * MAX_SLOTS + o->slot_phys[slot]];
}

flx_tensor *flx_optim_get_state(flx_optim *o, int32_t i, int32_t slot) {
    flx_buffer *b = state_of("flx_optim_get_state", o, i, slot);
    if (!b) return NULL;
    flx_tensor *p = o->params[i];
    flx_tensor *t = flx_node_new(o->ctx, FLX_OP_CONST, o->sdtype, p->ndim, p->shape, 0, NULL, NULL);
    if (!t) return NULL;
    size_t nbytes = (size_t)p->numel * flx_dtype_size(o->sdtype);
    t->buf = flx_buffer_new(o->ctx, nbytes);
    flx_status s = t->buf ? FLX_OK : flx_last_status();
    if (s == FLX_OK && nbytes) s = o->ctx->be->copy_d2d(o->ctx, t->buf->ptr, b->ptr, nbytes);
    if (s != FLX_OK) {
        flx_release(t);
        return NULL;
    }
    t->keep = true;
    return flx_adopt(t);
}

flx_status flx_optim_set_state(flx_optim *o, int32_t i, int32_t slot, flx_tensor *value) {
    static const char *fn = "flx_optim_set_state";
    flx_buffer *b = state_of(fn, o, i, slot);
    if (!b) return flx_last_status();
    if (!value) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: value is NULL", fn);
    if (!flx_check_handle(fn, value)) return flx_last_status();
    flx_tensor *p = o->params[i];
    if (value->ctx != o->ctx)
        return flx_set_error(FLX_ERR_DEVICE, "%s: value %s belongs to another context", fn,
                             flx_describe(value));
    if (value->ndim != p->ndim ||
        memcmp(value->shape, p->shape, sizeof(int64_t) * (size_t)p->ndim) != 0)
        return flx_set_error(FLX_ERR_SHAPE, "%s: value %s does not match parameter %d %s", fn,
                             flx_describe(value), (int)i, flx_describe(p));
    if (value->dtype != o->sdtype)
        return flx_set_error(FLX_ERR_DTYPE, "%s: value %s is not %s, the state dtype of parameter "
                             "%d %s", fn, flx_describe(value), flx_dtype_name(o->sdtype), (int)i,
                             flx_describe(p));
    flx_status s = flx_eval_nodes(1, &value);
    if (s != FLX_OK) return s;
    size_t nbytes = (size_t)p->numel * flx_dtype_size(o->sdtype);
    if (nbytes) s = o->ctx->be->copy_d2d(o->ctx, b->ptr, value->buf->ptr, nbytes);
    /* A master set by hand is the truth for the parameter as it is now (not reseeded). */
    if (s == FLX_OK && o->slot_phys[slot] == MASTER_SLOT) o->seen[i] = p->version;
    return s;
}

/* ---- dynamic loss scaling -------------------------------------------------------------------- */
flx_tensor *flx_optim_scale_loss(flx_optim *o, flx_tensor *loss) {
    static const char *fn = "flx_optim_scale_loss";
    if (!flx_optim_check(fn, o)) return NULL;
    if (!flx_check_inputs(fn, 1, &loss)) return NULL;
    if (loss->ctx != o->ctx) {
        flx_set_error(FLX_ERR_DEVICE, "%s: loss %s belongs to another context than the optimiser",
                      fn, flx_describe(loss));
        return NULL;
    }
    if (!flx_dtype_is_float(loss->dtype)) {
        flx_set_error(FLX_ERR_DTYPE, "%s: loss %s is not a float tensor", fn, flx_describe(loss));
        return NULL;
    }
    if (!o->scaling) return flx_adopt(flx_retain(loss));
    /* f16 cannot hold the scaled loss (65536 * loss overflows it): the product is f32 at least.
     * The scale is a power of two in practice, so the product is exact. */
    flx_dtype dt = loss->dtype == FLX_F64 ? FLX_F64 : FLX_F32;
    if (flx_scope_begin() != FLX_OK) return NULL;
    return flx_scope_return(flx_mul(flx_cast(loss, dt), flx_cast(o->scale_t, dt)));
}

/* Reads the scaler's words (waits for the device). */
flx_status flx_optim_read_scaler(const char *fn, flx_optim *o, double *scale, double *words) {
    if (!flx_optim_check(fn, o)) return flx_last_status();
    if (!o->scaling) {
        *scale = 1.0;
        words[0] = words[1] = 0;
        return FLX_OK;
    }
    flx_status s = o->ctx->be->download(o->ctx, scale, o->scale_t->buf->ptr, sizeof *scale);
    if (s == FLX_OK) s = o->ctx->be->download(o->ctx, words, o->scaler->ptr, 2 * sizeof *words);
    return s;
}

flx_status flx_optim_loss_scale(flx_optim *o, double *scale) {
    static const char *fn = "flx_optim_loss_scale";
    if (o && !scale) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: scale is NULL", fn);
    double words[2];
    return flx_optim_read_scaler(fn, o, scale, words);
}

flx_status flx_optim_skipped_steps(flx_optim *o, int64_t *count) {
    static const char *fn = "flx_optim_skipped_steps";
    if (o && !count) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: count is NULL", fn);
    double scale, words[2];
    flx_status s = flx_optim_read_scaler(fn, o, &scale, words);
    if (s == FLX_OK) *count = (int64_t)words[1];
    return s;
}
