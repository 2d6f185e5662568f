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
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_SLOTS 3

struct flx_optim {
    flx_ctx *ctx;
    flx_optim_kind kind;
    int32_t rule;
    bool use_momentum, nesterov, centered;
    flx_dtype dtype;
    int32_t n;
    flx_tensor **params;    /* each retained                                           */
    flx_buffer **state;     /* n * MAX_SLOTS, NULL where a slot is unused              */
    int32_t n_slots;        /* slots in use                                           */
    int32_t slot_phys[MAX_SLOTS];
    flx_buffer *hp;         /* FLX_HP_COUNT doubles + a uint32 counter (device memory) */
    int32_t refs;           /* the creator's, plus one per plan that updates it   */
};

static const char *kind_name(flx_optim_kind k) {
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
static bool check_hp(const char *fn, int32_t which, double v) {
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

void flx_optim_destroy(flx_optim *o) {
    if (!o) return;
    if (--o->refs > 0) return; /* a plan that updates it still holds it */
    if (o->state)
        for (int32_t i = 0; i < o->n * MAX_SLOTS; i++) flx_buffer_release(o->state[i]);
    if (o->params)
        for (int32_t i = 0; i < o->n; i++) flx_release(o->params[i]);
    flx_buffer_release(o->hp);
    free(o->state);
    free(o->params);
    free(o);
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
        if (p->dtype != FLX_F32 && p->dtype != FLX_F64) {
            flx_set_error(FLX_ERR_DTYPE, "%s: parameter %d %s is not f32 or f64", fn, (int)i,
                          flx_describe(p));
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
        if (!check_hp(fn, h, hpv[h])) return NULL;
    if (!isfinite(c.initial_accumulator) || c.initial_accumulator < 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: initial_accumulator = %g, expected >= 0", fn,
                      c.initial_accumulator);
        return NULL;
    }
    bool is_sgd = kind == FLX_OPTIM_SGD || kind == FLX_OPTIM_MOMENTUM || kind == FLX_OPTIM_NESTEROV;
    if (c.nesterov && (!is_sgd || c.momentum <= 0 || c.dampening != 0)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: nesterov needs an SGD kind with momentum > 0 and dampening 0 (kind %s, "
                      "momentum %g, dampening %g)",
                      fn, kind_name(kind), c.momentum, c.dampening);
        return NULL;
    }

    flx_optim *o = (flx_optim *)calloc(1, sizeof *o);
    if (!o) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return NULL;
    }
    o->ctx = ctx;
    o->refs = 1;
    o->kind = kind;
    o->dtype = params[0]->dtype;
    o->nesterov = c.nesterov;
    o->centered = c.centered && kind == FLX_OPTIM_RMSPROP;
    o->use_momentum = c.momentum != 0 && (is_sgd || kind == FLX_OPTIM_RMSPROP);
    bool used[MAX_SLOTS] = {false, false, false};
    double init[MAX_SLOTS] = {0, 0, 0};
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
    if (!o->params || !o->state) {
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
            flx_buffer *b = flx_buffer_new(ctx, (size_t)p->numel * flx_dtype_size(p->dtype));
            if (!b) {
                st = flx_last_status();
                break;
            }
            o->state[i * MAX_SLOTS + s] = b;
            st = fill_buffer(ctx, b, p->dtype, p->numel, init[s]);
        }
    }
    if (st != FLX_OK) {
        flx_optim_destroy(o);
        return NULL;
    }
    return o;
}

static bool check_opt(const char *fn, const flx_optim *o) {
    if (!o) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: optimiser is NULL", fn);
        return false;
    }
    return true;
}


static void base_args(const flx_optim *o, flx_optim_args *a) {
    memset(a, 0, sizeof *a);
    a->rule = o->rule;
    a->nesterov = o->nesterov;
    a->centered = o->centered;
    a->use_momentum = o->use_momentum;
    a->dtype = o->dtype;
    a->hp = (double *)o->hp->ptr;
    a->counter = (uint32_t *)((char *)o->hp->ptr + FLX_HP_COUNT * sizeof(double));
}

/* The fused update of parameters idx[0..m) (indices into o->params, ascending as step gathers
 * them) from the gradients at grad_ptrs[k]: one kernel-family call per
 * FLX_OPTIM_MAX_TENSORS_PER_LAUNCH parameters, the last of which advances the step count on the
 * device. Only queues: the parameters' buffers must already be private (the caller's job), and
 * no version is bumped. Shared by flx_optim_step and compiled plans (runtime/core/plan.c),
 * which call it while a CUDA graph is being captured: it allocates nothing on the device, copies
 * nothing and waits for nothing. m == 0 queues nothing (the step count does not advance). */
flx_status flx_optim_queue_update(flx_optim *o, int32_t m, const int32_t *idx,
                                  void *const *grad_ptrs) {
    flx_status s = FLX_OK;
    for (int32_t k0 = 0; k0 < m && s == FLX_OK; k0 += FLX_OPTIM_MAX_TENSORS_PER_LAUNCH) {
        flx_optim_args a;
        base_args(o, &a);
        a.mode = FLX_OPTIM_UPDATE;
        int32_t k1 = k0 + FLX_OPTIM_MAX_TENSORS_PER_LAUNCH;
        if (k1 > m) k1 = m;
        a.n = k1 - k0;
        for (int32_t k = k0; k < k1; k++) {
            int32_t i = idx[k];
            a.p[k - k0] = o->params[i]->buf->ptr;
            a.g[k - k0] = grad_ptrs[k];
            a.s0[k - k0] = o->state[i * MAX_SLOTS] ? o->state[i * MAX_SLOTS]->ptr : NULL;
            a.s1[k - k0] = o->state[i * MAX_SLOTS + 1] ? o->state[i * MAX_SLOTS + 1]->ptr : NULL;
            a.s2[k - k0] = o->state[i * MAX_SLOTS + 2] ? o->state[i * MAX_SLOTS + 2]->ptr : NULL;
            a.numel[k - k0] = o->params[i]->numel;
        }
        a.advance_step = k1 == m;
        s = flx_kernel_optim(o->ctx, &a);
    }
    return s;
}

/* For plans: the parameter list, and a hold that flx_optim_destroy releases. */
int32_t flx_optim_params(const flx_optim *o, flx_tensor *const **params) {
    *params = o->params;
    return o->n;
}

void flx_optim_retain(flx_optim *o) { o->refs++; }

flx_status flx_optim_step(flx_optim *o) {
    static const char *fn = "flx_optim_step";
    if (!check_opt(fn, o)) return flx_last_status();
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
    if (s == FLX_OK) {
        for (int32_t k = 0; k < m; k++) gp[k] = gs[k]->buf->ptr;
        s = flx_optim_queue_update(o, m, idx, gp);
    }
    if (s == FLX_OK)
        for (int32_t k = 0; k < m; k++) {
            o->params[idx[k]]->version++;
            o->params[idx[k]]->changed_by = "flx_optim_step";
        }
    free(gs);
    free(idx);
    free(gp);
    return s;
}

flx_status flx_optim_zero_grad(flx_optim *o) {
    if (!check_opt("flx_optim_zero_grad", o)) return flx_last_status();
    for (int32_t i = 0; i < o->n; i++) {
        flx_status s = flx_zero_grad(o->params[i]);
        if (s != FLX_OK) return s;
    }
    return FLX_OK;
}

flx_status flx_optim_set_hparam(flx_optim *o, flx_optim_hparam which, double value) {
    static const char *fn = "flx_optim_set_hparam";
    if (!check_opt(fn, o)) return flx_last_status();
    if ((int)which < 0 || which >= FLX_HP_COUNT)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: unknown hyperparameter %d", fn, (int)which);
    if (!check_hp(fn, which, value)) return flx_last_status();
    if (which == FLX_HP_MOMENTUM && !o->use_momentum && value != 0)
        return flx_set_error(FLX_ERR_STATE,
                             "%s: this %s optimiser was created without momentum; whether momentum "
                             "is used is fixed at create time",
                             fn, kind_name(o->kind));
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
    if (!check_opt(fn, o)) return flx_last_status();
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
    if (!check_opt(fn, o)) return NULL;
    if (i < 0 || i >= o->n) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: parameter index %d outside [0, %d)", fn, (int)i,
                      (int)o->n);
        return NULL;
    }
    if (slot < 0 || slot >= o->n_slots) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: state slot %d outside [0, %d) for a %s optimiser",
                      fn, (int)slot, (int)o->n_slots, kind_name(o->kind));
        return NULL;
    }
    return o->state[i * MAX_SLOTS + o->slot_phys[slot]];
}

flx_tensor *flx_optim_get_state(flx_optim *o, int32_t i, int32_t slot) {
    flx_buffer *b = state_of("flx_optim_get_state", o, i, slot);
    if (!b) return NULL;
    flx_tensor *p = o->params[i];
    flx_tensor *t = flx_node_new(o->ctx, FLX_OP_CONST, p->dtype, p->ndim, p->shape, 0, NULL, NULL);
    if (!t) return NULL;
    size_t nbytes = (size_t)p->numel * flx_dtype_size(p->dtype);
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
    if (value->dtype != p->dtype || value->ndim != p->ndim ||
        memcmp(value->shape, p->shape, sizeof(int64_t) * (size_t)p->ndim) != 0)
        return flx_set_error(FLX_ERR_SHAPE, "%s: value %s does not match parameter %d %s", fn,
                             flx_describe(value), (int)i, flx_describe(p));
    flx_status s = flx_eval_nodes(1, &value);
    if (s != FLX_OK) return s;
    size_t nbytes = (size_t)p->numel * flx_dtype_size(p->dtype);
    return nbytes ? o->ctx->be->copy_d2d(o->ctx, b->ptr, value->buf->ptr, nbytes) : FLX_OK;
}

/* ---- saving and loading the whole state ------------------------------------------------------ */
/* One safetensors file: "state.<i>.<slot>" for every parameter i and state slot, "hparams" (f64,
 * FLX_HP_COUNT values in flx_optim_hparam order, the step count included), and metadata naming
 * the kind and the counts, so that a file is loaded only into an optimiser of the same layout. */
#define OPTIM_META_KIND "fluxion.optimizer"
#define OPTIM_META_PARAMS "fluxion.optimizer.params"
#define OPTIM_META_SLOTS "fluxion.optimizer.slots"

flx_status flx_optim_save(flx_optim *o, const char *path) {
    static const char *fn = "flx_optim_save";
    if (!check_opt(fn, o)) return flx_last_status();
    if (!path) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);
    int32_t n_t = o->n * o->n_slots + 1;
    flx_scope_begin(); /* owns the copies made below */
    flx_tensor **ts = (flx_tensor **)calloc((size_t)n_t, sizeof *ts);
    char **names = (char **)calloc((size_t)n_t, sizeof *names);
    flx_status s = ts && names ? FLX_OK : flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    double hp[FLX_HP_COUNT];
    if (s == FLX_OK) s = o->ctx->be->download(o->ctx, hp, o->hp->ptr, sizeof hp);
    int32_t k = 0;
    for (int32_t i = 0; s == FLX_OK && i < o->n; i++)
        for (int32_t j = 0; s == FLX_OK && j < o->n_slots; j++, k++) {
            names[k] = (char *)malloc(32);
            ts[k] = flx_optim_get_state(o, i, j);
            if (!names[k]) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
            else if (!ts[k]) s = flx_last_status();
            else snprintf(names[k], 32, "state.%d.%d", (int)i, (int)j);
        }
    if (s == FLX_OK) {
        int64_t shape = FLX_HP_COUNT;
        names[k] = (char *)malloc(32);
        ts[k] = flx_from_host(o->ctx, FLX_F64, 1, &shape, hp);
        if (!names[k]) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        else if (!ts[k]) s = flx_last_status();
        else snprintf(names[k], 32, "hparams");
    }
    if (s == FLX_OK) {
        char np[24], ns[24];
        snprintf(np, sizeof np, "%d", (int)o->n);
        snprintf(ns, sizeof ns, "%d", (int)o->n_slots);
        const char *keys[3] = {OPTIM_META_KIND, OPTIM_META_PARAMS, OPTIM_META_SLOTS};
        const char *vals[3] = {kind_name(o->kind), np, ns};
        s = flx_save_safetensors(path, n_t, (const char *const *)names, ts, 3, keys, vals);
    }
    flx_scope_end(0, NULL);
    for (int32_t i = 0; names && i < n_t; i++) free(names[i]);
    free(ts);
    free(names);
    return s;
}

static flx_status load_check(const char *fn, flx_optim *o, flx_checkpoint *ck, const char *path,
                             double *hp) {
    char want[24];
    const char *kind = flx_checkpoint_metadata(ck, OPTIM_META_KIND);
    if (!kind || strcmp(kind, kind_name(o->kind)) != 0)
        return flx_set_error(FLX_ERR_STATE, "%s: %s holds %s optimiser state, not %s", fn, path,
                             kind ? kind : "no", kind_name(o->kind));
    snprintf(want, sizeof want, "%d", (int)o->n);
    const char *np = flx_checkpoint_metadata(ck, OPTIM_META_PARAMS);
    if (!np || strcmp(np, want) != 0)
        return flx_set_error(FLX_ERR_SHAPE, "%s: %s holds state for %s parameters, this optimiser has %d",
                             fn, path, np ? np : "an unknown number of", (int)o->n);
    snprintf(want, sizeof want, "%d", (int)o->n_slots);
    const char *ns = flx_checkpoint_metadata(ck, OPTIM_META_SLOTS);
    if (!ns || strcmp(ns, want) != 0)
        return flx_set_error(FLX_ERR_STATE, "%s: %s holds %s state slots per parameter, this %s optimiser has %d",
                             fn, path, ns ? ns : "an unknown number of", kind_name(o->kind), (int)o->n_slots);
    for (int32_t i = 0; i < o->n; i++)
        for (int32_t j = 0; j < o->n_slots; j++) {
            char name[32];
            snprintf(name, sizeof name, "state.%d.%d", (int)i, (int)j);
            flx_tensor *t = flx_checkpoint_find(ck, name), *p = o->params[i];
            if (!t) return flx_last_status();
            bool same = t->dtype == p->dtype && t->ndim == p->ndim &&
                        memcmp(t->shape, p->shape, sizeof(int64_t) * (size_t)p->ndim) == 0;
            if (!same)
                return flx_set_error(FLX_ERR_SHAPE, "%s: %s: %s is %s, parameter %d is %s", fn, path,
                                     name, flx_describe(t), (int)i, flx_describe(p));
        }
    flx_tensor *h = flx_checkpoint_find(ck, "hparams");
    if (!h) return flx_last_status();
    flx_status s = h->dtype == FLX_F64 && h->ndim == 1 && h->numel == FLX_HP_COUNT
                       ? flx_to_host(h, hp, FLX_HP_COUNT * sizeof(double))
                       : flx_set_error(FLX_ERR_SHAPE, "%s: %s: hparams is %s, expected (%d) f64", fn,
                                       path, flx_describe(h), (int)FLX_HP_COUNT);
    if (s != FLX_OK) return s;
    for (int32_t w = 0; w < FLX_HP_COUNT; w++)
        if (!check_hp(fn, w, hp[w])) return flx_last_status();
    if (!o->use_momentum && hp[FLX_HP_MOMENTUM] != 0)
        return flx_set_error(FLX_ERR_STATE, "%s: %s was saved with momentum %g; this %s optimiser "
                             "was created without momentum", fn, path, hp[FLX_HP_MOMENTUM],
                             kind_name(o->kind));
    if (o->nesterov && hp[FLX_HP_MOMENTUM] == 0)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s has momentum 0; nesterov needs momentum > 0",
                             fn, path);
    return FLX_OK;
}

flx_status flx_optim_load(flx_optim *o, const char *path) {
    static const char *fn = "flx_optim_load";
    if (!check_opt(fn, o)) return flx_last_status();
    if (!path) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);
    flx_scope_begin(); /* owns the tensors taken from the file */
    flx_checkpoint *ck = flx_load_safetensors(o->ctx, path);
    double hp[FLX_HP_COUNT];
    /* Everything is checked before anything is written: a bad file leaves the optimiser as it was. */
    flx_status s = ck ? load_check(fn, o, ck, path, hp) : flx_last_status();
    for (int32_t i = 0; s == FLX_OK && i < o->n; i++)
        for (int32_t j = 0; s == FLX_OK && j < o->n_slots; j++) {
            char name[32];
            snprintf(name, sizeof name, "state.%d.%d", (int)i, (int)j);
            s = flx_optim_set_state(o, i, j, flx_checkpoint_find(ck, name));
        }
    if (s == FLX_OK) s = o->ctx->be->upload(o->ctx, o->hp->ptr, hp, sizeof hp);
    flx_scope_end(0, NULL);
    flx_checkpoint_destroy(ck);
    return s;
}
