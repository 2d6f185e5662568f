/* optim_io.c — an optimiser's whole state in one safetensors file (flx_optim_save,
 * flx_optim_load; the object: optim_internal.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim_internal.h"

/* ---- saving and loading the whole state ------------------------------------------------------ */
/* One safetensors file: "state.<i>.<slot>" for every parameter i and state slot (the f32 master
 * of an f16/bf16 parameter is its last slot), "hparams" (f64, FLX_HP_COUNT values in
 * flx_optim_hparam order, the step count included), with loss scaling "loss_scaler" (f64: scale,
 * growth tracker, skipped steps), and metadata naming the kind and the counts, so that a file is
 * loaded only into an optimiser of the same layout. */
#define OPTIM_META_KIND "fluxion.optimizer"
#define OPTIM_META_PARAMS "fluxion.optimizer.params"
#define OPTIM_META_SLOTS "fluxion.optimizer.slots"

flx_status flx_optim_save(flx_optim *o, const char *path) {
    static const char *fn = "flx_optim_save";
    if (!flx_optim_check(fn, o)) return flx_last_status();
    if (!path) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);
    int32_t n_t = o->n * o->n_slots + 1 + (o->scaling ? 1 : 0);
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
        k++;
    }
    if (s == FLX_OK && o->scaling) {
        double sw[3], words[2];
        int64_t shape = 3;
        s = flx_optim_read_scaler(fn, o, &sw[0], words);
        sw[1] = words[0];
        sw[2] = words[1];
        names[k] = (char *)malloc(32);
        if (s == FLX_OK && !names[k])
            s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        if (s == FLX_OK) ts[k] = flx_from_host(o->ctx, FLX_F64, 1, &shape, sw);
        if (s == FLX_OK && !ts[k]) s = flx_last_status();
        if (s == FLX_OK) snprintf(names[k], 32, "loss_scaler");
    }
    if (s == FLX_OK) {
        char np[24], ns[24];
        snprintf(np, sizeof np, "%d", (int)o->n);
        snprintf(ns, sizeof ns, "%d", (int)o->n_slots);
        const char *keys[3] = {OPTIM_META_KIND, OPTIM_META_PARAMS, OPTIM_META_SLOTS};
        const char *vals[3] = {flx_optim_kind_name(o->kind), np, ns};
        s = flx_save_safetensors(path, n_t, (const char *const *)names, ts, 3, keys, vals);
    }
    flx_scope_end(0, NULL);
    for (int32_t i = 0; names && i < n_t; i++) free(names[i]);
    free(ts);
    free(names);
    return s;
}

/* The scaler's state (scale, growth tracker, skipped steps) as a checkpoint holds it: a scale
 * > 0 that f32 can hold (the device multiplies in f32), whole counts >= 0. */
static bool scaler_in_range(const double *sw) {
    bool ok = isfinite(sw[0]) && sw[0] > 0 && isfinite((float)sw[0]);
    for (int32_t k = 1; k < 3; k++) ok = ok && isfinite(sw[k]) && sw[k] >= 0 && sw[k] == floor(sw[k]);
    return ok;
}

/* Overwrites the scaler's device state with sw (checked by the caller); the found-inf flag is
 * cleared. The scale tensor may be shared by a graph recorded earlier: it is made private first. */
static flx_status write_scaler(flx_optim *o, const double *sw) {
    flx_status s = flx_tensor_make_private(o->scale_t);
    if (s == FLX_OK) s = o->ctx->be->upload(o->ctx, o->scale_t->buf->ptr, sw, sizeof sw[0]);
    if (s == FLX_OK) {
        double words[3] = {sw[1], sw[2], 0};
        s = o->ctx->be->upload(o->ctx, o->scaler->ptr, words, SCALER_BYTES);
    }
    return s;
}

/* The "loss_scaler" entry: present exactly when this optimiser scales, (3) f64 with a scale > 0
 * (finite in f32) and whole counts >= 0. */
static flx_status load_scaler_check(const char *fn, flx_optim *o, flx_checkpoint *ck,
                                    const char *path, double *sw) {
    bool has = false;
    for (int32_t i = 0; i < flx_checkpoint_count(ck); i++)
        has = has || strcmp(flx_checkpoint_name(ck, i), "loss_scaler") == 0;
    if (has != o->scaling)
        return flx_set_error(FLX_ERR_STATE, "%s: %s was saved %s loss scaling; this optimiser was "
                             "created %s it", fn, path, has ? "with" : "without",
                             o->scaling ? "with" : "without");
    if (!has) return FLX_OK;
    flx_tensor *t = flx_checkpoint_find(ck, "loss_scaler");
    if (!t) return flx_last_status();
    if (t->dtype != FLX_F64 || t->ndim != 1 || t->numel != 3)
        return flx_set_error(FLX_ERR_SHAPE, "%s: %s: loss_scaler is %s, expected (3) f64", fn,
                             path, flx_describe(t));
    flx_status s = flx_to_host(t, sw, 3 * sizeof(double));
    if (s != FLX_OK) return s;
    if (!scaler_in_range(sw))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s: loss_scaler (scale %g, tracker %g, "
                             "skipped %g) out of range", fn, path, sw[0], sw[1], sw[2]);
    return FLX_OK;
}

static flx_status load_check(const char *fn, flx_optim *o, flx_checkpoint *ck, const char *path,
                             double *hp) {
    char want[24];
    const char *kind = flx_checkpoint_metadata(ck, OPTIM_META_KIND);
    if (!kind || strcmp(kind, flx_optim_kind_name(o->kind)) != 0)
        return flx_set_error(FLX_ERR_STATE, "%s: %s holds %s optimiser state, not %s", fn, path,
                             kind ? kind : "no", flx_optim_kind_name(o->kind));
    snprintf(want, sizeof want, "%d", (int)o->n);
    const char *np = flx_checkpoint_metadata(ck, OPTIM_META_PARAMS);
    if (!np || strcmp(np, want) != 0)
        return flx_set_error(FLX_ERR_SHAPE, "%s: %s holds state for %s parameters, this optimiser has %d",
                             fn, path, np ? np : "an unknown number of", (int)o->n);
    snprintf(want, sizeof want, "%d", (int)o->n_slots);
    const char *ns = flx_checkpoint_metadata(ck, OPTIM_META_SLOTS);
    if (!ns || strcmp(ns, want) != 0)
        return flx_set_error(FLX_ERR_STATE, "%s: %s holds %s state slots per parameter, this %s optimiser has %d",
                             fn, path, ns ? ns : "an unknown number of", flx_optim_kind_name(o->kind), (int)o->n_slots);
    for (int32_t i = 0; i < o->n; i++)
        for (int32_t j = 0; j < o->n_slots; j++) {
            char name[32];
            snprintf(name, sizeof name, "state.%d.%d", (int)i, (int)j);
            flx_tensor *t = flx_checkpoint_find(ck, name), *p = o->params[i];
            if (!t) return flx_last_status();
            bool same = t->dtype == o->sdtype && t->ndim == p->ndim &&
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
        if (!flx_optim_check_hp(fn, w, hp[w])) return flx_last_status();
    if (!o->use_momentum && hp[FLX_HP_MOMENTUM] != 0)
        return flx_set_error(FLX_ERR_STATE, "%s: %s was saved with momentum %g; this %s optimiser "
                             "was created without momentum", fn, path, hp[FLX_HP_MOMENTUM],
                             flx_optim_kind_name(o->kind));
    if (o->nesterov && hp[FLX_HP_MOMENTUM] == 0)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s has momentum 0; nesterov needs momentum > 0",
                             fn, path);
    return FLX_OK;
}

flx_status flx_optim_load(flx_optim *o, const char *path) {
    static const char *fn = "flx_optim_load";
    if (!flx_optim_check(fn, o)) return flx_last_status();
    if (!path) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: path is NULL", fn);
    flx_scope_begin(); /* owns the tensors taken from the file */
    flx_checkpoint *ck = flx_load_safetensors(o->ctx, path);
    double hp[FLX_HP_COUNT];
    /* Everything is checked before anything is written: a bad file leaves the optimiser as it was. */
    double sw[3];
    flx_status s = ck ? load_check(fn, o, ck, path, hp) : flx_last_status();
    if (s == FLX_OK) s = load_scaler_check(fn, o, ck, path, sw);
    for (int32_t i = 0; s == FLX_OK && i < o->n; i++)
        for (int32_t j = 0; s == FLX_OK && j < o->n_slots; j++) {
            char name[32];
            snprintf(name, sizeof name, "state.%d.%d", (int)i, (int)j);
            s = flx_optim_set_state(o, i, j, flx_checkpoint_find(ck, name));
        }
    if (s == FLX_OK) s = o->ctx->be->upload(o->ctx, o->hp->ptr, hp, sizeof hp);
    if (s == FLX_OK && o->scaling) s = write_scaler(o, sw);
    flx_scope_end(0, NULL);
    flx_checkpoint_destroy(ck);
    return s;
}

/* ---- the loss scaler's state alone (checkpoints kept outside flx_optim_save) ---------------- */
flx_status flx_optim_get_scaler(flx_optim *o, double *scale, int64_t *growth_tracker, int64_t *skipped) {
    static const char *fn = "flx_optim_get_scaler";
    if (o && (!scale || !growth_tracker || !skipped))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: an output pointer is NULL", fn);
    double sc, words[2];
    flx_status s = flx_optim_read_scaler(fn, o, &sc, words);
    if (s != FLX_OK) return s;
    *scale = sc;
    *growth_tracker = (int64_t)words[0];
    *skipped = (int64_t)words[1];
    return FLX_OK;
}

flx_status flx_optim_set_scaler(flx_optim *o, double scale, int64_t growth_tracker, int64_t skipped) {
    static const char *fn = "flx_optim_set_scaler";
    if (!flx_optim_check(fn, o)) return flx_last_status();
    if (!o->scaling)
        return flx_set_error(FLX_ERR_STATE, "%s: this %s optimiser was created without loss scaling",
                             fn, flx_optim_kind_name(o->kind));
    /* the device keeps the counts as doubles: exact up to 2^53 */
    const double limit = 9007199254740992.0;
    double sw[3] = {scale, (double)growth_tracker, (double)skipped};
    if (!scaler_in_range(sw) || sw[1] > limit || sw[2] > limit)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: scale %g, growth tracker %lld, skipped "
                             "%lld: expected a scale > 0 finite in f32 and counts in [0, 2^53]", fn,
                             scale, (long long)growth_tracker, (long long)skipped);
    return write_scaler(o, sw);
}
