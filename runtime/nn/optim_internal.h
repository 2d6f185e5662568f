/* optim_internal.h — the optimiser object shared by runtime/nn/optim.c (create, step, state,
 * loss scaling) and runtime/nn/optim_io.c (save, load).
 * defines: struct flx_optim, MAX_SLOTS, MASTER_SLOT, SCALER_BYTES and the helpers both use. */
#ifndef FLX_OPTIM_INTERNAL_H
#define FLX_OPTIM_INTERNAL_H

#include "internal.h"

/* Physical slots: three rule slots, then the f32 master copy of an f16/bf16 parameter. */
#define MAX_SLOTS 4
#define MASTER_SLOT 3
/* The scaler's device words: growth tracker and skipped steps (doubles), then the found-inf
 * flag (uint32) padded to a double. */
#define SCALER_BYTES (3 * sizeof(double))

struct flx_optim {
    flx_ctx *ctx;
    flx_optim_kind kind;
    int32_t rule;
    bool use_momentum, nesterov, centered;
    flx_dtype dtype;
    flx_dtype sdtype;       /* state slots: dtype, or f32 for f16/bf16 (mixed precision)  */
    bool has_master;        /* f16/bf16 parameters: an f32 master copy in MASTER_SLOT      */
    int32_t n;
    flx_tensor **params;    /* each retained                                           */
    flx_buffer **state;     /* n * MAX_SLOTS, NULL where a slot is unused              */
    int32_t n_slots;        /* slots in use                                           */
    int32_t slot_phys[MAX_SLOTS];
    flx_buffer *hp;         /* FLX_HP_COUNT doubles + a uint32 counter (device memory) */
    int32_t refs;           /* the creator's, plus one per plan that updates it   */
    uint32_t *seen;         /* with masters: each parameter's version after our last write */
    /* Dynamic loss scaling (cfg.loss_scaling). */
    bool scaling;
    flx_tensor *scale_t;    /* 0-d f64 leaf: the loss scale (held)                        */
    flx_buffer *scaler;     /* SCALER_BYTES: tracker, skipped, found-inf flag             */
    double growth, backoff, interval;
};

/* "sgd", "adam", ... */
const char *flx_optim_kind_name(flx_optim_kind k);
/* Checks one hyperparameter value; false with the error set. */
bool flx_optim_check_hp(const char *fn, int32_t which, double v);
/* False with the error set when o is NULL. */
bool flx_optim_check(const char *fn, const flx_optim *o);
/* Reads the loss scale and the scaler's words (growth tracker, skipped steps); waits for the
 * device. Without loss scaling: scale 1, words 0. */
flx_status flx_optim_read_scaler(const char *fn, flx_optim *o, double *scale, double *words);

#endif
