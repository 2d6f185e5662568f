/* memory.c — memory of the CUDA backend: the private stream-ordered pool, uploads through pinned
 * staging, downloads, and the kernels' error record read at synchronisation points.
 *
 * Pool: each context allocates from a pool of its own (cudaMemPoolCreate), never from the
 * device's default pool: PyTorch, CuPy or the caller may use that one, and changing its release
 * threshold or trimming it would change their memory. The private pool's release threshold is
 * UINT64_MAX, so freed blocks stay cached and later allocations on the stream reuse them without
 * a host wait. On an allocation failure the stream is drained, this pool (only) trimmed to 0 and
 * the allocation retried once; if that also fails the call reports FLX_ERR_OUT_OF_MEMORY and the
 * context stays usable.
 *
 * Host waits: download, synchronize, shutdown, an allocation retry, and an upload that finds
 * every staging slot still in flight (the host is FLX_CUDA_STAGING_SLOTS copies ahead). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- pool ------------------------------------------------------------------------------------ */
flx_status flx_cuda_pool_create(cuda_state *s) {
    struct cudaMemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = s->device;
    cudaError_t e = cudaMemPoolCreate(&s->pool, &props);
    if (e != cudaSuccess) {
        s->pool = NULL;
        return flx_cuda_fail(e, "cudaMemPoolCreate");
    }
    uint64_t threshold = UINT64_MAX; /* keep freed memory cached in the pool */
    e = cudaMemPoolSetAttribute(s->pool, cudaMemPoolAttrReleaseThreshold, &threshold);
    if (e != cudaSuccess) return flx_cuda_fail(e, "cudaMemPoolSetAttribute(release threshold)");
    return FLX_OK;
}

static void *alloc_in(flx_ctx *ctx, size_t nbytes) {
    cuda_state *s = flx_cuda_st(ctx);
    void *p = NULL;
    cudaError_t e = cudaMallocFromPoolAsync(&p, nbytes, s->pool, s->stream);
    if (e == cudaSuccess) return p;
    (void)cudaGetLastError();
    enum cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    (void)cudaStreamIsCapturing(s->stream, &capturing);
    /* The retry waits on the stream, which a capture in progress forbids: no retry then. */
    if (e == cudaErrorMemoryAllocation && capturing == cudaStreamCaptureStatusNone) {
        flx_log_msg(FLX_LOG_WARN, "cuda: allocation of %zu bytes failed on device %d; freeing the "
                    "context's cache and retrying", nbytes, s->device);
        cudaError_t se = cudaStreamSynchronize(s->stream);
        ctx->stats.syncs++;
        if (se != cudaSuccess) {
            flx_cuda_fail(se, "cudaStreamSynchronize (before retrying an allocation)");
            return NULL;
        }
        if (cudaMemPoolTrimTo(s->pool, 0) != cudaSuccess) (void)cudaGetLastError();
        p = NULL;
        e = cudaMallocFromPoolAsync(&p, nbytes, s->pool, s->stream);
        if (e == cudaSuccess) return p;
        (void)cudaGetLastError();
    }
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        (void)cudaGetLastError();
        free_b = total_b = 0;
    }
    if (e == cudaErrorMemoryAllocation || (total_b && nbytes > total_b)) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY,
                      "cuda: cannot allocate %zu bytes on device %d (%zu of %zu bytes free after "
                      "freeing the context's cache): %s",
                      nbytes, s->device, free_b, total_b, cudaGetErrorString(e));
    } else {
        flx_set_error(FLX_ERR_BACKEND, "cuda: cudaMallocFromPoolAsync of %zu bytes failed: %s",
                      nbytes, cudaGetErrorString(e));
    }
    return NULL;
}

void *flx_cuda_alloc(flx_ctx *ctx, size_t nbytes) {
    flx_cuda_guard g;
    if (flx_cuda_enter(ctx, &g) != FLX_OK) return NULL;
    void *p = alloc_in(ctx, nbytes);
    flx_cuda_leave(&g);
    return p;
}

void flx_cuda_free(flx_ctx *ctx, void *ptr) {
    if (!ptr) return;
    flx_cuda_guard g;
    cuda_state *s = flx_cuda_st(ctx);
    if (flx_cuda_enter_device(s->device, s->cu_ctx, &g) != cudaSuccess) return; /* no status */
    if (cudaFreeAsync(ptr, flx_cuda_st(ctx)->stream) != cudaSuccess)
        (void)cudaGetLastError(); /* free has no status: the error shows at the next sync */
    flx_cuda_leave(&g);
}

/* ---- uploads through pinned staging -------------------------------------------------------- */
void flx_cuda_staging_release(cuda_state *s) {
    for (int i = 0; i < FLX_CUDA_STAGING_SLOTS; i++) {
        cuda_staging *sl = &s->staging[i];
        if (sl->done) {
            (void)cudaEventSynchronize(sl->done);
            cudaEventDestroy(sl->done);
        }
        if (sl->host) cudaFreeHost(sl->host);
        memset(sl, 0, sizeof *sl);
    }
    (void)cudaGetLastError();
}

/* Waits (only if needed) until slot sl's last device copy has completed. */
static flx_status slot_wait(flx_ctx *ctx, cuda_staging *sl) {
    if (!sl->pending) return FLX_OK;
    cudaError_t e = cudaEventQuery(sl->done);
    if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();
        e = cudaEventSynchronize(sl->done);
        ctx->stats.syncs++;
    }
    if (e != cudaSuccess) return flx_cuda_fail(e, "waiting for an earlier upload");
    sl->pending = false;
    return FLX_OK;
}

/* Slot sl idle and holding at least nbytes. */
static flx_status slot_ready(flx_ctx *ctx, cuda_staging *sl, size_t nbytes) {
    if (slot_wait(ctx, sl) != FLX_OK) return flx_last_status();
    if (!sl->done) {
        cudaError_t e = cudaEventCreateWithFlags(&sl->done, cudaEventDisableTiming);
        if (e != cudaSuccess) {
            sl->done = NULL;
            return flx_cuda_fail(e, "cudaEventCreateWithFlags (upload staging)");
        }
    }
    if (sl->cap >= nbytes) return FLX_OK;
    size_t cap = sl->cap ? sl->cap : ((size_t)64 << 10);
    while (cap < nbytes) cap *= 2;
    if (cap > FLX_CUDA_STAGING_MAX) cap = FLX_CUDA_STAGING_MAX;
    if (sl->host) cudaFreeHost(sl->host); /* idle (waited above) */
    sl->host = NULL;
    sl->cap = 0;
    cudaError_t e = cudaMallocHost(&sl->host, cap);
    if (e != cudaSuccess) {
        sl->host = NULL;
        return flx_cuda_fail(e, "cudaMallocHost (upload staging)");
    }
    sl->cap = cap;
    return FLX_OK;
}

/* The caller may free or reuse src as soon as this returns: each chunk is copied into a pinned
 * slot by the host before its device copy is queued. The device copy is ordered after all work
 * queued so far (earlier kernels may still read dst), but the host does not wait for it. */
static flx_status upload_in(flx_ctx *ctx, void *dst, const void *src, size_t nbytes) {
    cuda_state *s = flx_cuda_st(ctx);
    enum cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    (void)cudaStreamIsCapturing(s->stream, &capturing);
    if (capturing != cudaStreamCaptureStatusNone)
        return flx_set_error(FLX_ERR_STATE, "cuda: a host upload cannot be recorded into a CUDA "
                             "graph (the plan binds its inputs before each run)");
    const char *from = (const char *)src;
    char *to = (char *)dst;
    size_t left = nbytes;
    while (left) {
        size_t n = left < FLX_CUDA_STAGING_MAX ? left : FLX_CUDA_STAGING_MAX;
        cuda_staging *sl = &s->staging[s->next_slot];
        s->next_slot = (s->next_slot + 1) % FLX_CUDA_STAGING_SLOTS;
        if (slot_ready(ctx, sl, n) != FLX_OK) return flx_last_status();
        memcpy(sl->host, from, n);
        cudaError_t e = cudaMemcpyAsync(to, sl->host, n, cudaMemcpyHostToDevice, s->stream);
        if (e != cudaSuccess) return flx_cuda_fail(e, "cudaMemcpyAsync (host to device)");
        e = cudaEventRecord(sl->done, s->stream);
        if (e != cudaSuccess) {
            /* Without the event the slot's reuse cannot be ordered: drain the stream instead. */
            (void)cudaGetLastError();
            e = cudaStreamSynchronize(s->stream);
            ctx->stats.syncs++;
            if (e != cudaSuccess) return flx_cuda_fail(e, "cudaStreamSynchronize (after an upload)");
        } else {
            sl->pending = true;
        }
        from += n;
        to += n;
        left -= n;
    }
    ctx->stats.h2d_copies++;
    return FLX_OK;
}

flx_status flx_cuda_upload(flx_ctx *ctx, void *dst, const void *src, size_t nbytes) {
    if (nbytes == 0) return FLX_OK;
    flx_cuda_guard g;
    if (flx_cuda_enter(ctx, &g) != FLX_OK) return flx_last_status();
    flx_status st = upload_in(ctx, dst, src, nbytes);
    flx_cuda_leave(&g);
    return st;
}

/* ---- synchronisation points and the error record ------------------------------------------- */
/* Reads the error record (queued after all work so far, then one host wait) and turns it and any
 * CUDA error into a status; a raised record is zeroed for the next window. */
static flx_status finish_and_check(flx_ctx *ctx, const char *what) {
    cuda_state *s = flx_cuda_st(ctx);
    cudaError_t e = cudaMemcpyAsync(s->kerr_host, ctx->kerr, sizeof *ctx->kerr,
                                    cudaMemcpyDeviceToHost, s->stream);
    if (e == cudaSuccess) ctx->stats.d2h_copies++;
    cudaError_t se = cudaStreamSynchronize(s->stream);
    ctx->stats.syncs++;
    if (se != cudaSuccess) return flx_cuda_fail(se, what);
    if (e != cudaSuccess) return flx_cuda_fail(e, "reading the kernels' error record");
    /* Every queued copy has completed, so every staging slot is idle. */
    for (int i = 0; i < FLX_CUDA_STAGING_SLOTS; i++) s->staging[i].pending = false;
    if (s->kerr_host->kinds == 0) return FLX_OK;
    flx_kerr_record r = *s->kerr_host;
    memset(s->kerr_host, 0, sizeof *s->kerr_host);
    e = cudaMemsetAsync(ctx->kerr, 0, sizeof *ctx->kerr, s->stream);
    if (e != cudaSuccess) return flx_cuda_fail(e, "resetting the kernels' error record");
    return flx_kerr_report(&r);
}

flx_status flx_cuda_synchronize(flx_ctx *ctx) {
    flx_cuda_guard g;
    if (flx_cuda_enter(ctx, &g) != FLX_OK) return flx_last_status();
    flx_status st = finish_and_check(ctx, "cudaStreamSynchronize");
    flx_cuda_leave(&g);
    return st;
}

flx_status flx_cuda_download(flx_ctx *ctx, void *dst, const void *src, size_t nbytes) {
    flx_cuda_guard g;
    if (flx_cuda_enter(ctx, &g) != FLX_OK) return flx_last_status();
    cuda_state *s = flx_cuda_st(ctx);
    flx_status st = FLX_OK;
    if (nbytes) {
        cudaError_t e = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, s->stream);
        if (e != cudaSuccess) st = flx_cuda_fail(e, "cudaMemcpyAsync (device to host)");
        else ctx->stats.d2h_copies++;
    }
    /* One host wait covers the data and the error record. */
    if (st == FLX_OK) st = finish_and_check(ctx, "cudaStreamSynchronize (after a download)");
    flx_cuda_leave(&g);
    return st;
}

flx_status flx_cuda_copy_d2d(flx_ctx *ctx, void *dst, const void *src, size_t nbytes) {
    if (nbytes == 0 || dst == src) return FLX_OK;
    flx_cuda_guard g;
    if (flx_cuda_enter(ctx, &g) != FLX_OK) return flx_last_status();
    flx_status st = FLX_OK;
    cudaError_t e = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice,
                                    flx_cuda_st(ctx)->stream);
    if (e != cudaSuccess) st = flx_cuda_fail(e, "cudaMemcpyAsync (device to device)");
    flx_cuda_leave(&g);
    return st;
}
