/* cpu_common.h — what every CPU kernel family shares: typed element access (values travel as
 * double and are rounded once on store, so each kernel is the obvious formula rounded to the
 * output dtype) and an odometer over strided index spaces.
 * defines: load, store, load_i, ldf, stf, ld_label, odo, odo_init, odo_next, and the CPU
 * kernel-family entry points flx_cpu_<family>. */
#ifndef FLX_CPU_COMMON_H
#define FLX_CPU_COMMON_H

#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "flx_unary_ops.h"
#include "flx_half.h"

/* ---- typed element access ------------------------------------------------------------------ */
static inline double load(flx_dtype dt, const void *p, int64_t i) {
    switch (dt) {
    case FLX_F32: return ((const float *)p)[i];
    case FLX_F64: return ((const double *)p)[i];
    case FLX_I32: return ((const int32_t *)p)[i];
    case FLX_I64: return (double)((const int64_t *)p)[i];
    case FLX_BOOL: return ((const uint8_t *)p)[i];
    case FLX_F16: return flx_f16_to_double(((const uint16_t *)p)[i]);
    case FLX_BF16: return flx_bf16_to_double(((const uint16_t *)p)[i]);
    default: return 0;
    }
}

/* Halves are rounded once from the double value (RNE), never through f32. */
static inline void store(flx_dtype dt, void *p, int64_t i, double v) {
    switch (dt) {
    case FLX_F32: ((float *)p)[i] = (float)v; break;
    case FLX_F64: ((double *)p)[i] = v; break;
    case FLX_I32: ((int32_t *)p)[i] = flx_f2i32(v); break; /* saturating, NaN -> 0 */
    case FLX_I64: ((int64_t *)p)[i] = flx_f2i64(v); break;
    case FLX_BOOL: ((uint8_t *)p)[i] = v != 0; break;
    case FLX_F16: ((uint16_t *)p)[i] = flx_f16_from_double(v); break;
    case FLX_BF16: ((uint16_t *)p)[i] = flx_bf16_from_double(v); break;
    default: break;
    }
}

/* Integers go through int64 so large values stay exact. */
static inline int64_t load_i(flx_dtype dt, const void *p, int64_t i) {
    switch (dt) {
    case FLX_I32: return ((const int32_t *)p)[i];
    case FLX_I64: return ((const int64_t *)p)[i];
    case FLX_BOOL: return ((const uint8_t *)p)[i];
    default: return flx_f2i64(load(dt, p, i));
    }
}

/* Odometer over an index space: advances idx and the running offsets of up to 3 operands. */
typedef struct odo {
    int32_t ndim;
    const int64_t *shape;
    int64_t idx[FLX_MAX_DIMS];
    int64_t off[3];
    const int64_t *strides[3];
    int32_t nops;
} odo;

static inline void odo_init(odo *o, int32_t ndim, const int64_t *shape, int32_t nops,
                     const int64_t *s0, const int64_t *s1, const int64_t *s2) {
    o->ndim = ndim;
    o->shape = shape;
    memset(o->idx, 0, sizeof o->idx);
    o->off[0] = o->off[1] = o->off[2] = 0;
    o->strides[0] = s0;
    o->strides[1] = s1;
    o->strides[2] = s2;
    o->nops = nops;
}

static inline void odo_next(odo *o) {
    for (int32_t d = o->ndim - 1; d >= 0; d--) {
        o->idx[d]++;
        for (int32_t k = 0; k < o->nops; k++) o->off[k] += o->strides[k][d];
        if (o->idx[d] < o->shape[d]) return;
        for (int32_t k = 0; k < o->nops; k++) o->off[k] -= o->strides[k][d] * o->shape[d];
        o->idx[d] = 0;
    }
}

/* Float-only access (f32, f64, f16, bf16), for kernels whose dtype is checked to be a float. */
static inline double ldf(flx_dtype dt, const void *p, int64_t i) {
    if (dt == FLX_F32) return (double)((const float *)p)[i];
    if (dt == FLX_F64) return ((const double *)p)[i];
    return load(dt, p, i);
}

static inline void stf(flx_dtype dt, void *p, int64_t i, double v) {
    if (dt == FLX_F32)
        ((float *)p)[i] = (float)v;
    else if (dt == FLX_F64)
        ((double *)p)[i] = v;
    else
        store(dt, p, i, v);
}

/* Class labels and indices are I32 or I64. */
static inline int64_t ld_label(flx_dtype dt, const void *p, int64_t i) {
    return dt == FLX_I32 ? (int64_t)((const int32_t *)p)[i] : ((const int64_t *)p)[i];
}

/* Kernel families of the CPU backend, one file each in runtime/cpu/. */
#define FLX_X_CPU_FAMILY(ID, name, ARGS) flx_status flx_cpu_##name(flx_ctx *ctx, const ARGS *a);
FLX_KERNEL_FAMILIES(FLX_X_CPU_FAMILY)
#undef FLX_X_CPU_FAMILY

#endif
