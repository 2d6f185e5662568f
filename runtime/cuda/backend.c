/* backend.c — the CUDA backend: host glue between the runtime and the CUDA kernels
 * (the .cu files in kernels/) and libraries (cuBLAS). The only host file that includes CUDA headers.
 *
 * Per context: one non-blocking stream on which everything is queued, a cuBLAS handle bound to
 * it, a device-side error word (ctx->err_word) that index kernels set, and a pinned host word
 * the error word is read into at synchronisation points.
 *
 * Memory: stream-ordered allocation (cudaMallocAsync / cudaFreeAsync) from the device's default
 * memory pool, whose release threshold is raised to UINT64_MAX so freed blocks stay cached in the
 * pool and are reused by later allocations on the stream without any host wait. On an allocation
 * failure the stream is drained, the pool trimmed to 0 and the allocation retried once; if that
 * also fails the call reports FLX_ERR_OUT_OF_MEMORY and the context stays usable.
 *
 * Host waits happen only in upload (the caller may free its host memory at once), download,
 * synchronize and shutdown; every kernel family only queues work and checks the launch.
 * Nothing here aborts: every failure sets the thread's error and returns a status.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cusolverDn.h> /* LU family (issue 4) */
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h> /* profiler ranges, header-only NVTX3 (issue 9) */

#include "internal.h"
#include "flx_unary_ops.h"

typedef struct cuda_state {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    cudaMemPool_t pool;
    int32_t *err_host; /* pinned: the error word is copied here at synchronisation points */
    cusolverDnHandle_t cusolver; /* LU family (issue 4): created lazily, bound to stream */
    void *blas_ws; /* issue 6: cuBLAS workspace, set before the first graph capture */
} cuda_state;

static cuda_state *st_of(flx_ctx *ctx) { return (cuda_state *)ctx->backend_state; }

static flx_status cuda_fail(cudaError_t e, const char *what) {
    (void)cudaGetLastError(); /* clear a non-sticky error so later calls are not blamed */
    return flx_set_error(FLX_ERR_BACKEND, "cuda: %s failed: %s (%s)", what, cudaGetErrorString(e),
                         cudaGetErrorName(e));
}

static const char *cublas_status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
    }
}

/* Makes the context's device current for this thread (contexts on several devices may be used
 * from one thread in turn). */
static flx_status use_device(flx_ctx *ctx) {
    cudaError_t e = cudaSetDevice(st_of(ctx)->device);
    if (e != cudaSuccess) return cuda_fail(e, "cudaSetDevice");
    return FLX_OK;
}

/* ---- devices ------------------------------------------------------------------------------ */
int32_t flx_cuda_backend_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n < 0 ? 0 : (int32_t)n;
}

/* ---- device feature query (issue 9): flx_cuda_device_info in context.c checks the index ---- */
flx_status flx_cuda_backend_device_info(int32_t index, flx_cuda_device_props *out) {
    struct cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, (int)index);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return flx_set_error(FLX_ERR_DEVICE, "flx_cuda_device_info: device %d: %s (%s)", (int)index,
                             cudaGetErrorString(e), cudaGetErrorName(e));
    }
    size_t n = strlen(p.name);
    if (n >= sizeof out->name) n = sizeof out->name - 1;
    memcpy(out->name, p.name, n);
    out->name[n] = '\0';
    out->major = p.major;
    out->minor = p.minor;
    out->total_memory = (uint64_t)p.totalGlobalMem;
    out->multiprocessors = p.multiProcessorCount;
    return FLX_OK;
}

/* ---- lifetime ------------------------------------------------------------------------------ */
static void release_state(cuda_state *s, int32_t *err_word) {
    if (err_word) cudaFree(err_word);
    if (s->err_host) cudaFreeHost(s->err_host);
    if (s->blas) cublasDestroy(s->blas);
    if (s->blas_ws) cudaFree(s->blas_ws); /* issue 6: after the handle that used it */
    if (s->cusolver) cusolverDnDestroy(s->cusolver); /* LU family (issue 4) */
    if (s->stream) cudaStreamDestroy(s->stream);
    (void)cudaGetLastError();
    free(s);
}

static flx_status cuda_init(flx_ctx *ctx) {
    cuda_state *s = (cuda_state *)calloc(1, sizeof *s);
    if (!s) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_ctx_create: out of host memory");
    s->device = ctx->device.index;
    int32_t *err_word = NULL;
    const char *what = NULL;
    cudaError_t e = cudaSetDevice(s->device);
    if (e != cudaSuccess) { what = "cudaSetDevice"; goto fail; }
    e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) { what = "cudaStreamCreateWithFlags"; goto fail; }
    e = cudaDeviceGetDefaultMemPool(&s->pool, s->device);
    if (e != cudaSuccess) { what = "cudaDeviceGetDefaultMemPool"; goto fail; }
    {
        uint64_t threshold = UINT64_MAX; /* keep freed memory cached in the pool */
        e = cudaMemPoolSetAttribute(s->pool, cudaMemPoolAttrReleaseThreshold, &threshold);
        if (e != cudaSuccess) { what = "cudaMemPoolSetAttribute(release threshold)"; goto fail; }
    }
    e = cudaMalloc((void **)&err_word, sizeof(int32_t));
    if (e != cudaSuccess) { what = "cudaMalloc(error word)"; goto fail; }
    /* On our stream, so every later kernel sees it zeroed (the legacy default stream does not
     * order a non-blocking stream). */
    e = cudaMemsetAsync(err_word, 0, sizeof(int32_t), s->stream);
    if (e != cudaSuccess) { what = "cudaMemsetAsync(error word)"; goto fail; }
    e = cudaMallocHost((void **)&s->err_host, sizeof(int32_t));
    if (e != cudaSuccess) { what = "cudaMallocHost(error word)"; goto fail; }
    *s->err_host = 0;
    {
        cublasStatus_t bs = cublasCreate(&s->blas);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            s->blas = NULL;
            release_state(s, err_word);
            return flx_set_error(FLX_ERR_BACKEND, "flx_ctx_create: cublasCreate failed: %s",
                                 cublas_status_name(bs));
        }
        bs = cublasSetStream(s->blas, s->stream);
        /* Strict precision: no TF32 for f32 GEMMs. */
        if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH);
        if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetPointerMode(s->blas, CUBLAS_POINTER_MODE_HOST);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            release_state(s, err_word);
            return flx_set_error(FLX_ERR_BACKEND, "flx_ctx_create: configuring cuBLAS failed: %s",
                                 cublas_status_name(bs));
        }
    }
    ctx->backend_state = s;
    ctx->err_word = err_word;
    return FLX_OK;
fail:
    release_state(s, err_word);
    (void)cudaGetLastError();
    return flx_set_error(FLX_ERR_BACKEND, "flx_ctx_create: CUDA device %d: %s failed: %s",
                         (int)ctx->device.index, what, cudaGetErrorString(e));
}

static void cuda_shutdown(flx_ctx *ctx) {
    cuda_state *s = st_of(ctx);
    if (!s) return;
    cudaSetDevice(s->device);
    cudaStreamSynchronize(s->stream);
    release_state(s, ctx->err_word);
    ctx->err_word = NULL;
    ctx->backend_state = NULL;
}

/* ---- memory -------------------------------------------------------------------------------- */
static void *cuda_alloc(flx_ctx *ctx, size_t nbytes) {
    if (use_device(ctx) != FLX_OK) return NULL;
    cuda_state *s = st_of(ctx);
    void *p = NULL;
    cudaError_t e = cudaMallocAsync(&p, nbytes, s->stream);
    if (e == cudaSuccess) return p;
    (void)cudaGetLastError();
    enum cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    (void)cudaStreamIsCapturing(s->stream, &capturing);
    /* The retry waits on the stream, which a capture in progress forbids: no retry then. */
    if (e == cudaErrorMemoryAllocation && capturing == cudaStreamCaptureStatusNone) {
        /* Give cached blocks back to the device and try once more. */
        flx_log_msg(FLX_LOG_WARN, "cuda: allocation of %zu bytes failed on device %d; freeing the "
                "cache and retrying", nbytes, s->device); /* issue 9 */
        cudaError_t se = cudaStreamSynchronize(s->stream);
        ctx->stats.syncs++;
        if (se != cudaSuccess) {
            cuda_fail(se, "cudaStreamSynchronize (before retrying an allocation)");
            return NULL;
        }
        cudaMemPoolTrimTo(s->pool, 0);
        (void)cudaGetLastError();
        p = NULL;
        e = cudaMallocAsync(&p, nbytes, s->stream);
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
                      "freeing the cache): %s",
                      nbytes, s->device, free_b, total_b, cudaGetErrorString(e));
    } else {
        flx_set_error(FLX_ERR_BACKEND, "cuda: cudaMallocAsync of %zu bytes failed: %s", nbytes,
                      cudaGetErrorString(e));
    }
    return NULL;
}

static void cuda_free(flx_ctx *ctx, void *ptr) {
    if (!ptr) return;
    cuda_state *s = st_of(ctx);
    if (cudaSetDevice(s->device) != cudaSuccess || cudaFreeAsync(ptr, s->stream) != cudaSuccess)
        (void)cudaGetLastError(); /* free has no status: the error shows at the next sync */
}

/* Reads the device error word (queued after all work so far, then one host wait) and turns it
 * and any CUDA error into a status. */
static flx_status finish_and_check(flx_ctx *ctx, const char *what) {
    cuda_state *s = st_of(ctx);
    cudaError_t e = cudaMemcpyAsync(s->err_host, ctx->err_word, sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, s->stream);
    if (e == cudaSuccess) ctx->stats.d2h_copies++;
    cudaError_t se = cudaStreamSynchronize(s->stream);
    ctx->stats.syncs++;
    if (se != cudaSuccess) return cuda_fail(se, what);
    if (e != cudaSuccess) return cuda_fail(e, "reading the device error word");
    int32_t word = *s->err_host;
    if (word != FLX_KERR_NONE) {
        *s->err_host = FLX_KERR_NONE;
        e = cudaMemsetAsync(ctx->err_word, 0, sizeof(int32_t), s->stream);
        if (e != cudaSuccess) return cuda_fail(e, "resetting the device error word");
        if (word == FLX_KERR_INDEX_RANGE)
            return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                                 "an index op met an index out of range (read as 0)");
        if (word == FLX_KERR_SINGULAR) /* LU family (issue 4) */
            return flx_set_error(FLX_ERR_NUMERIC, "flx_inv/flx_solve: the matrix is singular (a zero "
                                 "pivot in its LU factorisation); use the _ex variant for per-matrix info");
        if (word == FLX_KERR_EIGH_NOCONV) /* eigh (issue 4) */
            return flx_set_error(FLX_ERR_NUMERIC, "flx_eigh: the eigensolver did not converge "
                                 "(non-finite input?)");
        return flx_set_error(FLX_ERR_BACKEND, "cuda: a kernel reported device error code %d",
                             (int)word);
    }
    return FLX_OK;
}

static flx_status cuda_synchronize(flx_ctx *ctx) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    return finish_and_check(ctx, "cudaStreamSynchronize");
}

static flx_status cuda_upload(flx_ctx *ctx, void *dst, const void *src, size_t nbytes) {
    if (nbytes == 0) return FLX_OK;
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    cuda_state *s = st_of(ctx);
    cudaError_t e = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, s->stream);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync (host to device)");
    ctx->stats.h2d_copies++;
    /* The caller may free or reuse its host memory as soon as we return. */
    e = cudaStreamSynchronize(s->stream);
    ctx->stats.syncs++;
    if (e != cudaSuccess) return cuda_fail(e, "cudaStreamSynchronize (after an upload)");
    return FLX_OK;
}

static flx_status cuda_download(flx_ctx *ctx, void *dst, const void *src, size_t nbytes) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    cuda_state *s = st_of(ctx);
    if (nbytes) {
        cudaError_t e = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, s->stream);
        if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync (device to host)");
        ctx->stats.d2h_copies++;
    }
    /* One host wait covers the data and the error word. */
    return finish_and_check(ctx, "cudaStreamSynchronize (after a download)");
}

static flx_status cuda_copy_d2d(flx_ctx *ctx, void *dst, const void *src, size_t nbytes) {
    if (nbytes == 0 || dst == src) return FLX_OK;
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    cudaError_t e = cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, st_of(ctx)->stream);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync (device to device)");
    return FLX_OK;
}

/* ---- kernel families -------------------------------------------------------------------------- */
static flx_status launched(int rc, const char *family, flx_dtype dt) {
    if (rc == 0) return FLX_OK;
    cudaError_t e = (cudaError_t)rc;
    (void)cudaGetLastError();
    return flx_set_error(e == cudaErrorMemoryAllocation ? FLX_ERR_OUT_OF_MEMORY : FLX_ERR_BACKEND,
                         "cuda %s kernel (%s) failed: %s (%s)", family,
                         flx_dtype_name(dt), cudaGetErrorString(e), cudaGetErrorName(e));
}

#define FLX_CUDA_FAMILY(NAME, ARGS, DTYPE_EXPR)                                          \
    static flx_status cuda_##NAME(flx_ctx *ctx, const ARGS *a) {                         \
        if (use_device(ctx) != FLX_OK) return flx_last_status();                         \
        return launched(flx_cuda_##NAME(a, (void *)st_of(ctx)->stream), #NAME, (DTYPE_EXPR)); \
    }
FLX_CUDA_FAMILY(fill, flx_fill_args, a->dtype)
FLX_CUDA_FAMILY(cast, flx_cast_args, a->src_dtype)
FLX_CUDA_FAMILY(unary, flx_unary_args, a->dtype)
FLX_CUDA_FAMILY(binary, flx_binary_args, a->dtype)
FLX_CUDA_FAMILY(where, flx_where_args, a->dtype)
FLX_CUDA_FAMILY(index, flx_index_args, a->dtype)
FLX_CUDA_FAMILY(conv, flx_conv_args, a->dtype) /* nn sliding windows: kernels/conv.cu */
FLX_CUDA_FAMILY(softmax, flx_softmax_args, a->dtype) /* softmax family: kernels/softmax.cu */
FLX_CUDA_FAMILY(optim, flx_optim_args, a->dtype) /* fused optimisers: kernels/optim.cu (issue 5) */
FLX_CUDA_FAMILY(fused, flx_fused_args, a->dtype) /* fused elementwise programs: kernels/elementwise.cu (issue 6) */
#undef FLX_CUDA_FAMILY

/* Reductions split over many blocks (kernels/reduce.cu) take their partials from the allocator. */
static flx_status cuda_reduce(flx_ctx *ctx, const flx_reduce_args *a) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    flx_reduce_args b = *a;
    b.scratch_bytes = flx_cuda_reduce_scratch_bytes(a);
    b.scratch = b.scratch_bytes ? cuda_alloc(ctx, b.scratch_bytes) : NULL;
    if (b.scratch_bytes && !b.scratch) return flx_last_status();
    int rc = flx_cuda_reduce(&b, (void *)st_of(ctx)->stream);
    cuda_free(ctx, b.scratch);
    return launched(rc, "reduce", a->dtype);
}

static flx_status cuda_copy(flx_ctx *ctx, const flx_copy_args *a) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    int rc = flx_cuda_copy(a, (void *)st_of(ctx)->stream);
    if (rc == 0) return FLX_OK;
    cudaError_t e = (cudaError_t)rc;
    (void)cudaGetLastError();
    return flx_set_error(FLX_ERR_BACKEND, "cuda copy kernel (%zu-byte elements) failed: %s (%s)",
                         a->elem_size, cudaGetErrorString(e), cudaGetErrorName(e));
}

/* ---- matmul ----------------------------------------------------------------------------------- */
/* C := beta * C for every batch when k == 0 (no products to add). */
static flx_status matmul_scale_c(flx_ctx *ctx, const flx_matmul_args *a) {
    cuda_state *s = st_of(ctx);
    size_t es = flx_dtype_size(a->dtype);
    int64_t mn = a->m * a->n;
    bool dense = a->sc == mn || a->batch == 1;
    int64_t runs = dense ? 1 : a->batch;
    int64_t run_len = dense ? mn * a->batch : mn;
    for (int64_t b = 0; b < runs; b++) {
        char *c = (char *)a->c + (size_t)(b * a->sc) * es;
        if (a->beta == 0) {
            /* beta == 0 never reads C (NaN in C does not leak), as in BLAS. */
            cudaError_t e = cudaMemsetAsync(c, 0, (size_t)run_len * es, s->stream);
            if (e != cudaSuccess) return cuda_fail(e, "cudaMemsetAsync (matmul with k = 0)");
        } else if (a->beta != 1) {
            flx_unary_args u;
            memset(&u, 0, sizeof u);
            u.op = FLX_UNARY_AFFINE;
            u.dtype = a->dtype;
            u.n = run_len;
            u.a = a->beta;
            u.b = 0;
            u.x = c;
            u.y = c;
            flx_status st = launched(flx_cuda_unary(&u, (void *)s->stream), "matmul (k = 0)", a->dtype);
            if (st != FLX_OK) return st;
        }
    }
    return FLX_OK;
}

static flx_status cuda_matmul(flx_ctx *ctx, const flx_matmul_args *a) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    if (a->dtype != FLX_F32 && a->dtype != FLX_F64)
        return flx_set_error(FLX_ERR_DTYPE, "cuda matmul: dtype %s is not supported (f32, f64)",
                             flx_dtype_name(a->dtype));
    if (a->batch <= 0 || a->m <= 0 || a->n <= 0) return FLX_OK; /* empty result */
    if (a->k <= 0) return matmul_scale_c(ctx, a);
    if (a->m > INT32_MAX || a->n > INT32_MAX || a->k > INT32_MAX || a->batch > INT32_MAX)
        return flx_set_error(FLX_ERR_UNSUPPORTED,
                             "cuda matmul: sizes batch %lld, m %lld, n %lld, k %lld exceed the "
                             "32-bit cuBLAS limits",
                             (long long)a->batch, (long long)a->m, (long long)a->n, (long long)a->k);
    cuda_state *s = st_of(ctx);
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: pass B first.
     * Row-major B (k, n) read column-major is (n, k) = the B^T we need: no transpose, ld = n;
     * row-major B stored (n, k) (tb) read column-major is (k, n): transpose, ld = k. Likewise A. */
    int m = (int)a->m, n = (int)a->n, k = (int)a->k, batch = (int)a->batch;
    cublasOperation_t opB = a->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opA = a->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    int ldb = a->tb ? k : n;
    int lda = a->ta ? m : k;
    int ldc = n;
    long long sa = a->sa, sb = a->sb, sc = a->sc;
    cublasStatus_t bs;
    if (a->dtype == FLX_F32) {
        float alpha = (float)a->alpha, beta = (float)a->beta;
        bs = cublasSgemmStridedBatched(s->blas, opB, opA, n, m, k, &alpha, (const float *)a->b, ldb,
                                       sb, (const float *)a->a, lda, sa, &beta, (float *)a->c, ldc,
                                       sc, batch);
    } else {
        double alpha = a->alpha, beta = a->beta;
        bs = cublasDgemmStridedBatched(s->blas, opB, opA, n, m, k, &alpha, (const double *)a->b,
                                       ldb, sb, (const double *)a->a, lda, sa, &beta,
                                       (double *)a->c, ldc, sc, batch);
    }
    if (bs != CUBLAS_STATUS_SUCCESS) {
        (void)cudaGetLastError();
        return flx_set_error(FLX_ERR_BACKEND,
                             "cuda matmul: cuBLAS %cgemmStridedBatched (batch %d, m %d, n %d, k %d, "
                             "ta %d, tb %d) failed: %s",
                             a->dtype == FLX_F32 ? 'S' : 'D', batch, m, n, k, (int)a->ta, (int)a->tb,
                             cublas_status_name(bs));
    }
    return FLX_OK;
}

/* ---- LU family (issue 4): thin glue; the paths live in kernels/lu.cu ---------------------- */
static void *lu_scratch_alloc(void *actx, size_t nbytes) { return cuda_alloc((flx_ctx *)actx, nbytes); }
static void lu_scratch_free(void *actx, void *ptr) { cuda_free((flx_ctx *)actx, ptr); }

/* The cuSOLVER handle (LU, eigh), created on first use and bound to the context stream. Also
 * created before a graph capture begins: creating it allocates, which a capture forbids. */
static flx_status ensure_cusolver(cuda_state *s) {
    if (s->cusolver) return FLX_OK;
    cusolverStatus_t cs = cusolverDnCreate(&s->cusolver);
    if (cs == CUSOLVER_STATUS_SUCCESS) cs = cusolverDnSetStream(s->cusolver, s->stream);
    if (cs != CUSOLVER_STATUS_SUCCESS) {
        if (s->cusolver) cusolverDnDestroy(s->cusolver);
        s->cusolver = NULL;
        return flx_set_error(FLX_ERR_BACKEND, "cuda: creating the cuSOLVER handle failed "
                             "(cusolverStatus %d)", (int)cs);
    }
    return FLX_OK;
}

static flx_status cuda_lu(flx_ctx *ctx, const flx_lu_args *a) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    cuda_state *s = st_of(ctx);
    if (ensure_cusolver(s) != FLX_OK) return flx_last_status();
    flx_cuda_lib_env env = {(void *)s->stream, (void *)s->blas, (void *)s->cusolver,
                           lu_scratch_alloc, lu_scratch_free, (void *)ctx};
    int rc = flx_cuda_lu(a, &env);
    if (rc == 0) return FLX_OK;
    if (rc == -1) return flx_last_status(); /* scratch allocation: error already set */
    if (rc <= -2000)
        return flx_set_error(FLX_ERR_BACKEND, "cuda lu (mode %d, %s, batch %lld, n %lld): cuSOLVER "
                             "failed with status %d", (int)a->mode, flx_dtype_name(a->dtype),
                             (long long)a->batch, (long long)a->n, -rc - 2000);
    if (rc <= -1000)
        return flx_set_error(FLX_ERR_BACKEND, "cuda lu (mode %d, %s, batch %lld, n %lld): cuBLAS "
                             "failed: %s", (int)a->mode, flx_dtype_name(a->dtype),
                             (long long)a->batch, (long long)a->n,
                             cublas_status_name((cublasStatus_t)(-rc - 1000)));
    return launched(rc, "lu", a->dtype);
}

/* ---- eigh (issue 4): thin glue; cuSOLVER syevd / syevjBatched in kernels/eigh.cu ------------ */
static flx_status cuda_eigh(flx_ctx *ctx, const flx_eigh_args *a) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    cuda_state *s = st_of(ctx);
    if (ensure_cusolver(s) != FLX_OK) return flx_last_status();
    flx_cuda_lib_env env = {(void *)s->stream, (void *)s->blas, (void *)s->cusolver,
                           lu_scratch_alloc, lu_scratch_free, (void *)ctx};
    int rc = flx_cuda_eigh(a, &env);
    if (rc == 0) return FLX_OK;
    if (rc == -1) return flx_last_status(); /* scratch allocation: error already set */
    if (rc <= -2000)
        return flx_set_error(FLX_ERR_BACKEND, "cuda eigh (%s, batch %lld, n %lld): cuSOLVER failed "
                             "with status %d", flx_dtype_name(a->dtype), (long long)a->batch,
                             (long long)a->n, -rc - 2000);
    return launched(rc, "eigh", a->dtype);
}

/* ---- profiler ranges (issue 9) ---------------------------------------------------------------
 * NVTX3 is header-only: without a tool attached (Nsight Systems / Compute) each call is one
 * check of a function pointer, so the ranges stay compiled in. Ranges are per thread (host-side
 * push/pop around the queuing of an op's kernels), named after the op. */
static void cuda_range_push(flx_ctx *ctx, const char *name) {
    (void)ctx;
    nvtxRangePushA(name);
}
static void cuda_range_pop(flx_ctx *ctx) {
    (void)ctx;
    nvtxRangePop();
}

/* ---- issue 6: plans (CUDA graph capture, runtime/core/plan.c) and math mode ---------------------
 * A plan's replay is recorded once on the context stream (thread-local capture mode, so other
 * threads are not affected) and instantiated; a run is one cudaGraphLaunch. Before the first
 * capture cuBLAS is given a preallocated workspace, so it never allocates during capture (set
 * once per context, after draining the stream that may still use its default workspace). */
#define FLX_CUDA_BLAS_WS_BYTES ((size_t)32 << 20)

static flx_status cuda_capture_begin(flx_ctx *ctx) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    cuda_state *s = st_of(ctx);
    cudaError_t e;
    if (!s->blas_ws) {
        e = cudaStreamSynchronize(s->stream);
        ctx->stats.syncs++;
        if (e != cudaSuccess) return cuda_fail(e, "cudaStreamSynchronize (before setting the cuBLAS workspace)");
        void *ws = NULL;
        e = cudaMalloc(&ws, FLX_CUDA_BLAS_WS_BYTES);
        if (e != cudaSuccess) return cuda_fail(e, "cudaMalloc (cuBLAS workspace for graph capture)");
        cublasStatus_t bs = cublasSetWorkspace(s->blas, ws, FLX_CUDA_BLAS_WS_BYTES);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            cudaFree(ws);
            return flx_set_error(FLX_ERR_BACKEND, "cuda: cublasSetWorkspace failed: %s",
                                 cublas_status_name(bs));
        }
        s->blas_ws = ws;
    }
    if (ensure_cusolver(s) != FLX_OK) return flx_last_status();
    e = cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) return cuda_fail(e, "cudaStreamBeginCapture");
    return FLX_OK;
}

static flx_status cuda_capture_end(flx_ctx *ctx, bool keep, void **graph) {
    *graph = NULL;
    cuda_state *s = st_of(ctx);
    (void)cudaSetDevice(s->device);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(s->stream, &g); /* always: leaves capture mode */
    if (e != cudaSuccess || !keep) {
        if (g) cudaGraphDestroy(g);
        (void)cudaGetLastError();
        if (!keep) return FLX_OK;
        return cuda_fail(e, "cudaStreamEndCapture (an operation of the plan could not be captured)");
    }
    cudaGraphExec_t ex = NULL;
    e = cudaGraphInstantiate(&ex, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) return cuda_fail(e, "cudaGraphInstantiate");
    *graph = (void *)ex;
    return FLX_OK;
}

static flx_status cuda_graph_launch(flx_ctx *ctx, void *graph) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    cudaError_t e = cudaGraphLaunch((cudaGraphExec_t)graph, st_of(ctx)->stream);
    if (e != cudaSuccess) return cuda_fail(e, "cudaGraphLaunch");
    return FLX_OK;
}

static void cuda_graph_destroy(flx_ctx *ctx, void *graph) {
    if (!graph) return;
    (void)cudaSetDevice(st_of(ctx)->device);
    if (cudaGraphExecDestroy((cudaGraphExec_t)graph) != cudaSuccess) (void)cudaGetLastError();
}

static flx_status cuda_set_math_mode(flx_ctx *ctx, int32_t mode) {
    if (use_device(ctx) != FLX_OK) return flx_last_status();
    cublasStatus_t bs = cublasSetMathMode(st_of(ctx)->blas, (mode & FLX_MATH_TF32)
                                                                ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                : CUBLAS_DEFAULT_MATH);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return flx_set_error(FLX_ERR_BACKEND, "flx_set_math_mode: cublasSetMathMode failed: %s",
                             cublas_status_name(bs));
    return FLX_OK;
}
/* ---- end issue 6 ---- */

const flx_backend flx_backend_cuda = {
    .name = "cuda",
    .init = cuda_init,
    .shutdown = cuda_shutdown,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy_d2d = cuda_copy_d2d,
    .synchronize = cuda_synchronize,
#define FLX_X_CUDA_SLOT(ID, name, ARGS) .name = cuda_##name,
    FLX_KERNEL_FAMILIES(FLX_X_CUDA_SLOT)
#undef FLX_X_CUDA_SLOT
    .range_push = cuda_range_push, /* NVTX ranges (issue 9) */
    .range_pop = cuda_range_pop,
    .capture_begin = cuda_capture_begin, /* issue 6: plans (runtime/core/plan.c) */
    .capture_end = cuda_capture_end,
    .graph_launch = cuda_graph_launch,
    .graph_destroy = cuda_graph_destroy,
    .set_math_mode = cuda_set_math_mode, /* issue 6: TF32 opt-in */
};

/* The context's stream as void* (flx_ctx_stream in interop.c; DLPack stream semantics). */
void *flx_cuda_ctx_stream(flx_ctx *ctx) {
    cuda_state *s = ctx ? st_of(ctx) : NULL;
    return s ? (void *)s->stream : NULL;
}

int flx_cuda_ctx_device(flx_ctx *ctx) { return st_of(ctx)->device; }
