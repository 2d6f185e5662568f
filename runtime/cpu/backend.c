/* backend.c — the CPU backend: the plain, obviously-correct reference every GPU result is
 * checked against. Float math runs in double and is rounded to the output dtype; reductions and
 * matmul accumulate in double in a fixed order (matmul through a CBLAS dgemm when one was found at
 * configure time: see matmul.c). This file holds host memory and the kernel-family table; each
 * family's kernels live in a file of their own beside it. */
#include <stdlib.h>
#include <string.h>

#include "cpu_common.h"

/* ---- memory ------------------------------------------------------------------------------ */
static flx_status cpu_init(flx_ctx *ctx) {
    ctx->kerr = (flx_kerr_record *)calloc(1, sizeof *ctx->kerr);
    if (!ctx->kerr) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_ctx_create: out of host memory");
    return FLX_OK;
}

static void cpu_shutdown(flx_ctx *ctx) {
    free(ctx->kerr);
    ctx->kerr = NULL;
}

static void *cpu_alloc(flx_ctx *ctx, size_t nbytes) {
    (void)ctx;
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    if (!p)
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes of host memory", nbytes);
    return p;
}

static void cpu_free(flx_ctx *ctx, void *p) {
    (void)ctx;
    free(p);
}

static flx_status cpu_upload(flx_ctx *ctx, void *dst, const void *src, size_t n) {
    (void)ctx;
    memcpy(dst, src, n);
    return FLX_OK;
}

/* Host memory on both sides: a device-to-device copy is the same memcpy. */
static flx_status cpu_copy_d2d(flx_ctx *ctx, void *dst, const void *src, size_t n) {
    return cpu_upload(ctx, dst, src, n);
}

static flx_status cpu_synchronize(flx_ctx *ctx) {
    flx_kerr_record r = *ctx->kerr;
    memset(ctx->kerr, 0, sizeof *ctx->kerr);
    return flx_kerr_report(&r);
}

static flx_status cpu_download(flx_ctx *ctx, void *dst, const void *src, size_t n) {
    memcpy(dst, src, n);
    return cpu_synchronize(ctx);
}

const flx_backend flx_backend_cpu = {
    FLX_BACKEND_BASE_SLOTS("cpu", cpu_, cpu_)
#define FLX_X_CPU_SLOT(ID, name, ARGS) .name = flx_cpu_##name,
    FLX_KERNEL_FAMILIES(FLX_X_CPU_SLOT)
#undef FLX_X_CPU_SLOT
};
