/* context.c — contexts, devices, dtypes and counters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define FLX_STR2(x) #x
#define FLX_STR(x) FLX_STR2(x)

const char *flx_version(void) {
    return FLX_STR(FLX_VERSION_MAJOR) "." FLX_STR(FLX_VERSION_MINOR) "." FLX_STR(FLX_VERSION_PATCH);
}

size_t flx_dtype_size(flx_dtype dt) {
    switch (dt) {
    case FLX_F32: return 4;
    case FLX_F64: return 8;
    case FLX_I32: return 4;
    case FLX_I64: return 8;
    case FLX_BOOL: return 1;
    case FLX_F16: return 2;
    case FLX_BF16: return 2;
    default: return 0;
    }
}

const char *flx_dtype_name(flx_dtype dt) {
    static const char *names[] = {"f32", "f64", "i32", "i64", "bool", "f16", "bf16"};
    if ((int)dt < 0 || dt >= FLX_DTYPE_COUNT) return "invalid";
    return names[dt];
}

bool flx_dtype_valid(flx_dtype dt) { return (int)dt >= 0 && dt < FLX_DTYPE_COUNT; }
bool flx_dtype_is_float(flx_dtype dt) {
    return dt == FLX_F32 || dt == FLX_F64 || flx_dtype_is_half(dt);
}

flx_device flx_device_cpu(void) {
    flx_device d = {FLX_DEVICE_CPU, 0};
    return d;
}
flx_device flx_device_cuda(int32_t index) {
    flx_device d = {FLX_DEVICE_CUDA, index};
    return d;
}

#ifdef FLX_WITH_CUDA
int32_t flx_cuda_backend_device_count(void); /* runtime/cuda/backend.c */
bool flx_has_cuda(void) { return true; }
int32_t flx_cuda_device_count(void) { return flx_cuda_backend_device_count(); }
#else
bool flx_has_cuda(void) { return false; }
int32_t flx_cuda_device_count(void) { return 0; }
#endif

/* ---- device feature query ---- */
#ifdef FLX_WITH_CUDA
flx_status flx_cuda_backend_device_info(int32_t index, flx_cuda_device_props *out); /* runtime/cuda/backend.c */
#endif
flx_status flx_cuda_device_info(int32_t index, flx_cuda_device_props *out) {
    if (!out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_cuda_device_info: out is NULL");
    memset(out, 0, sizeof *out);
#ifdef FLX_WITH_CUDA
    int32_t n = flx_cuda_device_count();
    if (index < 0 || index >= n)
        return flx_set_error(FLX_ERR_DEVICE,
                             "flx_cuda_device_info: CUDA device %d does not exist (%d usable CUDA "
                             "devices; no GPU or no driver gives 0)",
                             (int)index, (int)n);
    flx_status s = flx_cuda_backend_device_info(index, out);
    if (s != FLX_OK) memset(out, 0, sizeof *out);
    return s;
#else
    return flx_set_error(FLX_ERR_UNSUPPORTED,
                         "flx_cuda_device_info: this fluxion was built without the CUDA backend "
                         "(device %d)",
                         (int)index);
#endif
}
/* ---- end device feature query ---- */

flx_ctx *flx_ctx_create(flx_device dev) {
    const flx_backend *be = NULL;
    if (dev.type == FLX_DEVICE_CPU) {
        if (dev.index != 0) {
            /* One CPU device: any other index is a caller's mistake, not a second device. */
            flx_set_error(FLX_ERR_DEVICE,
                          "flx_ctx_create: CPU device %d does not exist (the CPU is device 0)",
                          (int)dev.index);
            return NULL;
        }
        be = &flx_backend_cpu;
    } else if (dev.type == FLX_DEVICE_CUDA) {
#ifdef FLX_WITH_CUDA
        int32_t n = flx_cuda_device_count();
        if (dev.index < 0 || dev.index >= n) {
            flx_set_error(FLX_ERR_DEVICE,
                          "flx_ctx_create: CUDA device %d does not exist (%d usable CUDA devices)",
                          dev.index, n);
            flx_log_msg(FLX_LOG_ERROR, "%s", flx_last_error());
            return NULL;
        }
        be = &flx_backend_cuda;
#else
        flx_set_error(FLX_ERR_UNSUPPORTED,
                      "flx_ctx_create: this fluxion was built without the CUDA backend");
        flx_log_msg(FLX_LOG_ERROR, "%s", flx_last_error());
        return NULL;
#endif
    } else {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_ctx_create: unknown device type %d",
                      (int)dev.type);
        return NULL;
    }
    flx_ctx *ctx = (flx_ctx *)flx_host_calloc(1, sizeof *ctx, "flx_ctx_create");
    if (!ctx) return NULL;
    ctx->device = dev;
    ctx->be = be;
    ctx->fusion = flx_env_fusion();               /* FLX_FUSION=0 turns it off */
    if (be->init(ctx) != FLX_OK) {
        flx_log_msg(FLX_LOG_ERROR, "flx_ctx_create(%s:%d) failed: %s", be->name,
                    (int)dev.index, flx_last_error());
        free(ctx);
        return NULL;
    }
    flx_log_msg(FLX_LOG_INFO, "context %p created on %s:%d (fluxion %s)", (void *)ctx,
                be->name, (int)dev.index, flx_version());
    return ctx;
}

flx_status flx_ctx_destroy(flx_ctx *ctx) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_ctx_destroy: ctx is NULL");
    if (ctx->live_tensors != 0)
        return flx_set_error(FLX_ERR_STATE,
                             "flx_ctx_destroy: %lld tensors of this context are still alive; "
                             "release them first",
                             (long long)ctx->live_tensors);
    flx_buffer_cache_flush(ctx);
    ctx->be->shutdown(ctx);
    free(ctx);
    return FLX_OK;
}

flx_device flx_ctx_device(const flx_ctx *ctx) {
    if (!ctx) return flx_device_cpu();
    return ctx->device;
}

flx_status flx_ctx_synchronize(flx_ctx *ctx) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_ctx_synchronize: ctx is NULL");
    return ctx->be->synchronize(ctx);
}

flx_status flx_ctx_get_stats(const flx_ctx *ctx, flx_ctx_stats *out) {
    if (!ctx || !out)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_ctx_get_stats: NULL argument");
    *out = ctx->stats;
    return FLX_OK;
}

flx_status flx_ctx_reset_stats(flx_ctx *ctx) {
    if (!ctx) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_ctx_reset_stats: ctx is NULL");
    uint64_t in_use = ctx->stats.bytes_in_use;
    memset(&ctx->stats, 0, sizeof ctx->stats);
    ctx->stats.bytes_in_use = in_use;
    ctx->stats.peak_bytes = in_use;
    return FLX_OK;
}

void flx_stats_alloc(flx_ctx *ctx, size_t nbytes) {
    ctx->stats.allocs++;
    ctx->stats.bytes_in_use += nbytes;
    if (ctx->stats.bytes_in_use > ctx->stats.peak_bytes) ctx->stats.peak_bytes = ctx->stats.bytes_in_use;
}

void flx_stats_free(flx_ctx *ctx, size_t nbytes) {
    ctx->stats.frees++;
    ctx->stats.bytes_in_use -= nbytes;
}
