/* dispatch.c — the one path from the graph layer to a backend: the kernel-family dispatcher
 * (generated from FLX_KERNEL_FAMILIES) and the step executor the evaluator and plans share.
 * Support checks, the kernel counter and the profiler-range hook (NVTX on CUDA) live here and
 * nowhere else. */
#include "internal.h"

static const char *const g_family_names[FLX_KERNEL_COUNT] = {
#define FLX_X_FAMILY_NAME(ID, name, ARGS) #name,
    FLX_KERNEL_FAMILIES(FLX_X_FAMILY_NAME)
#undef FLX_X_FAMILY_NAME
};

bool flx_backend_supports(const flx_backend *be, flx_kernel_family f) {
    switch (f) {
#define FLX_X_FAMILY_CASE(ID, name, ARGS) \
    case FLX_KERNEL_##ID: return be->name != NULL;
        FLX_KERNEL_FAMILIES(FLX_X_FAMILY_CASE)
#undef FLX_X_FAMILY_CASE
    default: return false;
    }
}

static flx_status unsupported(const flx_ctx *ctx, flx_kernel_family f) {
    return flx_set_error(FLX_ERR_UNSUPPORTED, "the %s backend has no %s kernels", ctx->be->name,
                         g_family_names[f]);
}

#define FLX_X_FAMILY_DISPATCH(ID, name, ARGS)                                 \
    flx_status flx_kernel_##name(flx_ctx *ctx, const ARGS *a) {               \
        if (!ctx->be->name) return unsupported(ctx, FLX_KERNEL_##ID);          \
        ctx->stats.kernels++;                                                  \
        return ctx->be->name(ctx, a);                                          \
    }
FLX_KERNEL_FAMILIES(FLX_X_FAMILY_DISPATCH)
#undef FLX_X_FAMILY_DISPATCH

void flx_range_push(flx_ctx *ctx, const char *name) {
    if (ctx->be->range_push) ctx->be->range_push(ctx, name);
}

void flx_range_pop(flx_ctx *ctx) {
    if (ctx->be->range_pop) ctx->be->range_pop(ctx);
}

flx_status flx_step_exec(const flx_tensor *node, const flx_fused_group *g, void *out,
                         const void *const *in) {
    const flx_op_def *def = flx_op_get(node->op);
    if (!g && !def->exec)
        return flx_set_error(FLX_ERR_STATE, "%s: op has no kernel (internal error)", def->name);
    flx_range_push(node->ctx, g ? "fused" : def->name);
    flx_status s = g ? flx_fused_group_exec(g, out, in) : def->exec(node, out, in);
    flx_range_pop(node->ctx);
    return s;
}
