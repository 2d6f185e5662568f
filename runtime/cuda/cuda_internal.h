/* cuda_internal.h — private to runtime/cuda: the per-context state of the CUDA backend and the
 * helpers its files share (errors, the current-device guard, memory). defines: cuda_state,
 * flx_cuda_guard, flx_cuda_* helpers.
 *
 * Files: backend.c (lifetime, kernel families, libraries, graphs, the vtable), device.c (device
 * queries, the current-device guard, error helpers), gemm_lt.c (gemm_ex on cuBLASLt), memory.c (the private memory pool, uploads
 * through pinned staging, downloads and the error record at synchronisation points). */
#ifndef FLX_CUDA_INTERNAL_H
#define FLX_CUDA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include "internal.h"

/* Uploads go through a few pinned staging slots used round-robin: the host copies the caller's
 * data into a slot (so the caller may reuse its memory at once) and queues the device copy from
 * it; a slot is reused only after the event recorded behind its last copy has completed. */
#define FLX_CUDA_STAGING_SLOTS 4
#define FLX_CUDA_STAGING_MAX ((size_t)8 << 20) /* larger uploads go in chunks of this size */

/* Scratch blocks a launcher may hold at once through the cache (flx_scratch_new); more come
 * straight from the pool. A launcher holds at most 6 at once (flxk::Scratch), and LU nests two. */
#define FLX_CUDA_SCRATCH_SLOTS 16

typedef struct cuda_staging {
    void *host; /* pinned, cap bytes (NULL until first used) */
    size_t cap;
    cudaEvent_t done; /* recorded after the slot's last device copy */
    bool pending;     /* done was recorded and may not have completed */
} cuda_staging;

typedef struct cuda_state {
    int device;
    void *cu_ctx; /* the device's primary context (CUcontext), current while we work */
    cudaStream_t stream;
    cublasHandle_t blas;
    cudaMemPool_t pool; /* private: the device's default pool (PyTorch's, CuPy's) is left alone */
    flx_kerr_record *kerr_host; /* pinned: the error record is read into it when synchronising */
    cusolverDnHandle_t cusolver; /* created lazily, bound to stream */
    void *blas_ws; /* cuBLAS workspace, set before the first graph capture */
    struct flx_cuda_lt *lt; /* cuBLASLt handle, workspace, descriptor cache (gemm_lt.c); lazy */
    cuda_staging staging[FLX_CUDA_STAGING_SLOTS];
    int next_slot;
    struct flx_buffer *scratch[FLX_CUDA_SCRATCH_SLOTS]; /* lent to a kernel launcher (backend.c) */
    int n_scratch;
} cuda_state;

static inline cuda_state *flx_cuda_st(flx_ctx *ctx) { return (cuda_state *)ctx->backend_state; }

/* ---- device.c ---- */
/* Sets the thread's error from a CUDA error (clearing a non-sticky one) and returns its status. */
flx_status flx_cuda_fail(cudaError_t e, const char *what);
const char *flx_cuda_cublas_status_name(cublasStatus_t s);

/* Makes a context's device current for the duration of a backend call and puts back whatever
 * the caller had current (another device, another library's context, or none), so fluxion never
 * changes the current device of a PyTorch/CuPy thread. */
typedef flx_device_saved flx_cuda_guard; /* prev_ctx: a CUcontext (NULL: none current) */
cudaError_t flx_cuda_enter_device(int device, void *cu_ctx, flx_cuda_guard *g); /* sets no error */
void flx_cuda_leave(flx_cuda_guard *g);
/* The thread's current CUcontext (NULL when none or unknown). */
void *flx_cuda_current_context(void);
static inline flx_status flx_cuda_enter(flx_ctx *ctx, flx_cuda_guard *g) {
    cuda_state *s = flx_cuda_st(ctx);
    cudaError_t e = flx_cuda_enter_device(s->device, s->cu_ctx, g);
    return e == cudaSuccess ? FLX_OK : flx_cuda_fail(e, "cudaSetDevice");
}

/* The backend's device_enter/device_leave (the guard around a whole evaluation). */
flx_status flx_cuda_device_enter(flx_ctx *ctx, flx_device_saved *saved);
void flx_cuda_device_leave(flx_ctx *ctx, flx_device_saved *saved);

/* ---- memory.c ---- */
flx_status flx_cuda_pool_create(cuda_state *s);
void flx_cuda_staging_release(cuda_state *s);
void *flx_cuda_alloc(flx_ctx *ctx, size_t nbytes);
void flx_cuda_free(flx_ctx *ctx, void *ptr);
flx_status flx_cuda_upload(flx_ctx *ctx, void *dst, const void *src, size_t nbytes);
flx_status flx_cuda_download(flx_ctx *ctx, void *dst, const void *src, size_t nbytes);
flx_status flx_cuda_copy_d2d(flx_ctx *ctx, void *dst, const void *src, size_t nbytes);
flx_status flx_cuda_synchronize(flx_ctx *ctx);

/* ---- gemm_lt.c ---- */
/* The cuBLASLt state, made before a graph capture or on first use outside one. */
flx_status flx_cuda_lt_prepare(cuda_state *s);
void flx_cuda_lt_release(cuda_state *s); /* after the stream is synchronised */
/* The gemm_ex family body (the caller holds the device guard). */
flx_status flx_cuda_gemm_ex_in(flx_ctx *ctx, const flx_gemm_ex_args *a);

#endif /* FLX_CUDA_INTERNAL_H */
