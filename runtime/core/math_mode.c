/* math_mode.c — per-context math settings: the elementwise-fusion switch, and the
 * math mode, FLX_MATH_STRICT (default) or FLX_MATH_TF32, an explicit opt-in that lets cuBLAS use
 * TF32 tensor cores for f32 GEMMs. The CPU backend has no set_math_mode entry: the mode is
 * recorded and has no effect there. */
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

/* A getter's arguments: the context and where the value goes (named out_name in messages). */
static flx_status check_getter(const char *fn, const flx_ctx *ctx, const void *out,
                               const char *out_name) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", fn);
    if (!out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, out_name);
    return FLX_OK;
}

flx_status flx_get_math_mode(const flx_ctx *ctx, int32_t *mode) {
    flx_status s = check_getter("flx_get_math_mode", ctx, mode, "mode");
    if (s == FLX_OK) *mode = ctx->math_mode;
    return s;
}

/* Elementwise fusion switch (runtime/core/fuse.c reads ctx->fusion when planning an evaluation). */
flx_status flx_set_fusion(flx_ctx *ctx, bool enabled) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_set_fusion: ctx is NULL");
    ctx->fusion = enabled;
    return FLX_OK;
}

flx_status flx_get_fusion(const flx_ctx *ctx, bool *enabled) {
    flx_status s = check_getter("flx_get_fusion", ctx, enabled, "enabled");
    if (s == FLX_OK) *enabled = ctx->fusion;
    return s;
}
