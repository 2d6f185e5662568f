/* math_mode.c — per-context math settings: the elementwise-fusion switch, and the
 * math mode, FLX_MATH_STRICT (default) or FLX_MATH_TF32, an explicit opt-in that lets cuBLAS use TF32 tensor cores for f32 GEMMs. The CPU backend has no
 * set_math_mode entry: the mode is recorded and has no effect there. */
#include "internal.h"

#define FLX_MATH_KNOWN_BITS ((int32_t)FLX_MATH_TF32)

flx_status flx_set_math_mode(flx_ctx *ctx, int32_t mode) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_set_math_mode: ctx is NULL");
    if (mode < 0 || (mode & ~FLX_MATH_KNOWN_BITS) != 0)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                             "flx_set_math_mode: unknown mode %d (expected FLX_MATH_STRICT = 0 or "
                             "FLX_MATH_TF32 = 1)",
                             (int)mode);
    if (ctx->be->set_math_mode) {
        flx_status s = ctx->be->set_math_mode(ctx, mode);
        if (s != FLX_OK) return s;
    }
    ctx->math_mode = mode;
    return FLX_OK;
}

flx_status flx_get_math_mode(const flx_ctx *ctx, int32_t *mode) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_get_math_mode: ctx is NULL");
    if (!mode) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_get_math_mode: mode is NULL");
    *mode = ctx->math_mode;
    return FLX_OK;
}

/* Elementwise fusion switch (runtime/core/fuse.c reads ctx->fusion when planning an evaluation). */
flx_status flx_set_fusion(flx_ctx *ctx, bool enabled) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_set_fusion: ctx is NULL");
    ctx->fusion = enabled;
    return FLX_OK;
}

flx_status flx_get_fusion(const flx_ctx *ctx, bool *enabled) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_get_fusion: ctx is NULL");
    if (!enabled) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_get_fusion: enabled is NULL");
    *enabled = ctx->fusion;
    return FLX_OK;
}
