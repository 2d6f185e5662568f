/* backend.c — the CUDA backend: host glue between the runtime and the CUDA kernels (the .cu
 * files in kernels/) and libraries (cuBLAS, cuSOLVER): context lifetime, the kernel families,
 * graph capture and the vtable. Memory, uploads and synchronisation live in memory.c, the
 * current-device guard and error helpers in device.c (shared declarations: cuda_internal.h).
 * runtime/cuda is the only host code that includes CUDA headers.
 *
 * Per context: one non-blocking stream on which everything is queued, a cuBLAS handle bound to
 * it, a private memory pool, the kernels' error record (device memory, ctx->kerr) and a pinned
 * copy it is read into at synchronisation points, and pinned upload staging.
 *
 * Every entry point makes the context's device current through a guard that puts the caller's
 * current context back before returning. Every kernel family only queues work and checks the
 * launch. Nothing here aborts: every failure sets the thread's error and returns a status.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nvtx3/nvToolsExt.h> /* profiler ranges, header-only NVTX3 */

#include "cuda_internal.h"
#include "flx_unary_ops.h"

/* cuBLAS math mode for fluxion's FLX_MATH_* flags. TF32 only when opted in. Reduced-precision
 * reductions are always disallowed: by default cuBLAS may keep split-K partial sums of a f16/bf16
 * GEMM in the 16-bit output type, which would break the promise of f32 accumulation. */
static cublasMath_t math_mode_of(int32_t flx_mode) {
    const int base = (flx_mode & FLX_MATH_TF32) ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
    return (cublasMath_t)(base | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
}

/* ---- lifetime ------------------------------------------------------------------------------ */
static void release_state(cuda_state *s, flx_kerr_record *kerr) {
    if (s->stream) (void)cudaStreamSynchronize(s->stream);
    if (kerr) cudaFree(kerr);
    if (s->kerr_host) cudaFreeHost(s->kerr_host);
    if (s->blas) cublasDestroy(s->blas);
    if (s->blas_ws) cudaFree(s->blas_ws); /* after the handle that used it */
    flx_cuda_lt_release(s);
    if (s->cusolver) cusolverDnDestroy(s->cusolver);
    flx_cuda_staging_release(s);
    if (s->stream) cudaStreamDestroy(s->stream);
    /* Blocks still cached return to the device; any still allocated are released when freed. */
    if (s->pool) cudaMemPoolDestroy(s->pool);
    (void)cudaGetLastError();
    free(s);
}

static flx_status init_in(flx_ctx *ctx, cuda_state *s, flx_kerr_record **kerr) {
    const char *what = NULL;
    cudaError_t e = cudaFree(NULL); /* creates the primary context if needed */
    if (e != cudaSuccess) { what = "creating the device context"; goto fail; }
    s->cu_ctx = flx_cuda_current_context();
    e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) { what = "cudaStreamCreateWithFlags"; goto fail; }
    if (flx_cuda_pool_create(s) != FLX_OK)
        return flx_set_error(flx_last_status(), "flx_ctx_create: CUDA device %d: %s",
                             (int)ctx->device.index, flx_last_error());
    e = cudaMalloc((void **)kerr, sizeof **kerr);
    if (e != cudaSuccess) { what = "cudaMalloc(error record)"; goto fail; }
    /* On our stream, so every later kernel sees it zeroed (the legacy default stream does not
     * order a non-blocking stream). */
    e = cudaMemsetAsync(*kerr, 0, sizeof **kerr, s->stream);
    if (e != cudaSuccess) { what = "cudaMemsetAsync(error record)"; goto fail; }
    e = cudaMallocHost((void **)&s->kerr_host, sizeof *s->kerr_host);
    if (e != cudaSuccess) { what = "cudaMallocHost(error record)"; goto fail; }
    memset(s->kerr_host, 0, sizeof *s->kerr_host);
    cublasStatus_t bs = cublasCreate(&s->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        s->blas = NULL;
        return flx_set_error(FLX_ERR_BACKEND, "flx_ctx_create: cublasCreate failed: %s",
                             flx_cuda_cublas_status_name(bs));
    }
    bs = cublasSetStream(s->blas, s->stream);
    /* Strict precision: no TF32 for f32 GEMMs; f32 accumulation for f16/bf16 (math_mode_of). */
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetMathMode(s->blas, math_mode_of(0));
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetPointerMode(s->blas, CUBLAS_POINTER_MODE_HOST);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return flx_set_error(FLX_ERR_BACKEND, "flx_ctx_create: configuring cuBLAS failed: %s",
                             flx_cuda_cublas_status_name(bs));
    return FLX_OK;
fail:
    (void)cudaGetLastError();
    return flx_set_error(FLX_ERR_BACKEND, "flx_ctx_create: CUDA device %d: %s failed: %s",
                         (int)ctx->device.index, what, cudaGetErrorString(e));
}

static flx_status cuda_init(flx_ctx *ctx) {
    cuda_state *s = (cuda_state *)calloc(1, sizeof *s);
    if (!s) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_ctx_create: out of host memory");
    s->device = ctx->device.index;
    flx_cuda_guard g;
    cudaError_t e = flx_cuda_enter_device(s->device, NULL, &g);
    if (e != cudaSuccess) {
        free(s);
        return flx_set_error(FLX_ERR_BACKEND, "flx_ctx_create: CUDA device %d: cudaSetDevice "
                             "failed: %s", (int)ctx->device.index, cudaGetErrorString(e));
    }
    flx_kerr_record *kerr = NULL;
    flx_status st = init_in(ctx, s, &kerr);
    if (st != FLX_OK) {
        release_state(s, kerr);
    } else {
        ctx->backend_state = s;
        ctx->kerr = kerr;
    }
    flx_cuda_leave(&g);
    return st;
}

static void cuda_shutdown(flx_ctx *ctx) {
    cuda_state *s = flx_cuda_st(ctx);
    if (!s) return;
    flx_cuda_guard g;
    bool entered = flx_cuda_enter(ctx, &g) == FLX_OK;
    release_state(s, ctx->kerr);
    if (entered) flx_cuda_leave(&g);
    ctx->kerr = NULL;
    ctx->backend_state = NULL;
}

/* Wraps fn(ctx, a), the body of a backend entry point, in the current-device guard. */
#define FLX_CUDA_GUARDED(NAME, ARGS, BODY)                                                  \
    static flx_status NAME(flx_ctx *ctx, const ARGS *a) {                                  \
        flx_cuda_guard g_;                                                                   \
        if (flx_cuda_enter(ctx, &g_) != FLX_OK) return flx_last_status();                  \
        flx_status st_ = BODY(ctx, a);                                                       \
        flx_cuda_leave(&g_);                                                                 \
        return st_;                                                                          \
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

#define FLX_CUDA_FAMILY(NAME, ARGS, DTYPE_EXPR)                                              \
    static flx_status NAME##_in(flx_ctx *ctx, const ARGS *a) {                               \
        return launched(flx_cuda_##NAME(a, (void *)flx_cuda_st(ctx)->stream), #NAME,         \
                        (DTYPE_EXPR));                                                       \
    }                                                                                        \
    FLX_CUDA_GUARDED(cuda_##NAME, ARGS, NAME##_in)
FLX_CUDA_FAMILY(fill, flx_fill_args, a->dtype)
FLX_CUDA_FAMILY(cast, flx_cast_args, a->src_dtype)
FLX_CUDA_FAMILY(unary, flx_unary_args, a->dtype)
FLX_CUDA_FAMILY(binary, flx_binary_args, a->dtype)
FLX_CUDA_FAMILY(where, flx_where_args, a->dtype)
FLX_CUDA_FAMILY(conv, flx_conv_args, a->dtype)       /* nn sliding windows: kernels/conv.cu */
FLX_CUDA_FAMILY(optim, flx_optim_args, a->dtype)     /* fused optimisers: kernels/optim.cu */
FLX_CUDA_FAMILY(fused, flx_fused_args, a->dtype)     /* fused elementwise: kernels/elementwise.cu */
#undef FLX_CUDA_FAMILY

static flx_status copy_in(flx_ctx *ctx, const flx_copy_args *a) {
    int rc = flx_cuda_copy(a, (void *)flx_cuda_st(ctx)->stream);
    if (rc == 0) return FLX_OK;
    cudaError_t e = (cudaError_t)rc;
    (void)cudaGetLastError();
    return flx_set_error(FLX_ERR_BACKEND, "cuda copy kernel (%zu-byte elements) failed: %s (%s)",
                         a->elem_size, cudaGetErrorString(e), cudaGetErrorName(e));
}
FLX_CUDA_GUARDED(cuda_copy, flx_copy_args, copy_in)

/* Scratch for the kernel launchers that need some (LU, eigh, index_add, attention): blocks from
 * the context's buffer cache (flx_scratch_new), so a small call costs no allocator call; each is
 * freed right after the launcher queues the work using it (stream-ordered). The launchers free by
 * pointer, so the blocks they hold are listed in the state; past that list (or while a graph is
 * captured, when the cache is off anyway) they come straight from the pool. Counted in
 * allocs/frees; not in bytes_in_use. */
static void *scratch_alloc(void *actx, size_t nbytes) {
    flx_ctx *ctx = (flx_ctx *)actx;
    cuda_state *s = flx_cuda_st(ctx);
    if (s->n_scratch < FLX_CUDA_SCRATCH_SLOTS) {
        flx_buffer *b = flx_scratch_new(ctx, nbytes);
        if (!b) return NULL;
        s->scratch[s->n_scratch++] = b;
        return b->ptr;
    }
    void *p = flx_cuda_alloc(ctx, nbytes);
    if (p) ctx->stats.allocs++;
    return p;
}
static void scratch_free(void *actx, void *ptr) {
    if (!ptr) return;
    flx_ctx *ctx = (flx_ctx *)actx;
    cuda_state *s = flx_cuda_st(ctx);
    for (int i = s->n_scratch; i-- > 0;)
        if (s->scratch[i]->ptr == ptr) {
            flx_scratch_release(s->scratch[i]);
            s->scratch[i] = s->scratch[--s->n_scratch];
            return;
        }
    ctx->stats.frees++;
    flx_cuda_free(ctx, ptr);
}
/* For scratch that only speeds a kernel up (index_add's sort): failing is not an error. */
static void *scratch_try_alloc(void *actx, size_t nbytes) {
    void *p = scratch_alloc(actx, nbytes);
    if (!p) flx_clear_error();
    return p;
}

static flx_cuda_lib_env env_of(flx_ctx *ctx, void *(*alloc)(void *, size_t)) {
    cuda_state *s = flx_cuda_st(ctx);
    flx_cuda_lib_env env = {(void *)s->stream, (void *)s->blas, (void *)s->cusolver, alloc,
                        scratch_free, (void *)ctx};
    return env;
}

static flx_status index_in(flx_ctx *ctx, const flx_index_args *a) {
    flx_cuda_lib_env env = env_of(ctx, scratch_try_alloc);
    return launched(flx_cuda_index(a, &env), "index", a->dtype);
}
FLX_CUDA_GUARDED(cuda_index, flx_index_args, index_in)

/* Reductions split over many blocks (kernels/reduce.cu) take their partials from scratch. */
static flx_status reduce_in(flx_ctx *ctx, const flx_reduce_args *a) {
    flx_reduce_args b = *a;
    b.scratch_bytes = flx_cuda_reduce_scratch_bytes(a);
    flx_buffer *sb = b.scratch_bytes ? flx_scratch_new(ctx, b.scratch_bytes) : NULL;
    if (b.scratch_bytes && !sb) return flx_last_status();
    b.scratch = sb ? sb->ptr : NULL;
    int rc = flx_cuda_reduce(&b, (void *)flx_cuda_st(ctx)->stream);
    flx_scratch_release(sb);
    return launched(rc, "reduce", a->dtype);
}
FLX_CUDA_GUARDED(cuda_reduce, flx_reduce_args, reduce_in)

/* The softmax family (kernels/softmax.cu): a strided softmax over few long columns is split over
 * the GPU with its partials in scratch from the context's pool; without it (out of memory) the
 * kernel runs one thread per column, so failing to allocate is not an error. */
static flx_status softmax_in(flx_ctx *ctx, const flx_softmax_args *a) {
    flx_softmax_args b = *a;
    b.scratch_bytes = flx_cuda_softmax_scratch_bytes(a);
    b.scratch = b.scratch_bytes ? scratch_try_alloc(ctx, b.scratch_bytes) : NULL;
    if (!b.scratch) b.scratch_bytes = 0;
    int rc = flx_cuda_softmax(&b, (void *)flx_cuda_st(ctx)->stream);
    scratch_free(ctx, b.scratch);
    return launched(rc, "softmax", a->dtype);
}
FLX_CUDA_GUARDED(cuda_softmax, flx_softmax_args, softmax_in)

/* ---- matmul ----------------------------------------------------------------------------------- */
/* C := beta * C for every batch when k == 0 (no products to add). */
static flx_status matmul_scale_c(flx_ctx *ctx, const flx_matmul_args *a) {
    cuda_state *s = flx_cuda_st(ctx);
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
            if (e != cudaSuccess) return flx_cuda_fail(e, "cudaMemsetAsync (matmul with k = 0)");
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

static flx_status matmul_in(flx_ctx *ctx, const flx_matmul_args *a) {
    if (!flx_dtype_is_float(a->dtype))
        return flx_set_error(FLX_ERR_DTYPE,
                             "cuda matmul: dtype %s is not supported (f32, f64, f16, bf16)",
                             flx_dtype_name(a->dtype));
    if (a->batch <= 0 || a->m <= 0 || a->n <= 0) return FLX_OK; /* empty result */
    if (a->k <= 0) return matmul_scale_c(ctx, a);
    if (a->m > INT32_MAX || a->n > INT32_MAX || a->k > INT32_MAX || a->batch > INT32_MAX)
        return flx_set_error(FLX_ERR_UNSUPPORTED,
                             "cuda matmul: sizes batch %lld, m %lld, n %lld, k %lld exceed the "
                             "32-bit cuBLAS limits",
                             (long long)a->batch, (long long)a->m, (long long)a->n, (long long)a->k);
    cuda_state *s = flx_cuda_st(ctx);
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
    const char *fn = a->dtype == FLX_F32 ? "SgemmStridedBatched"
                     : a->dtype == FLX_F64 ? "DgemmStridedBatched" : "GemmStridedBatchedEx";
    if (flx_dtype_is_half(a->dtype)) {
        /* 16-bit A, B and C on tensor cores, products accumulated in f32 (CUBLAS_COMPUTE_32F with
         * reduced-precision reductions disallowed, see math_mode_of), C rounded once to its
         * dtype; alpha and beta are f32, the scale type of CUBLAS_COMPUTE_32F. */
        cudaDataType_t t = a->dtype == FLX_F16 ? CUDA_R_16F : CUDA_R_16BF;
        float alpha = (float)a->alpha, beta = (float)a->beta;
        bs = cublasGemmStridedBatchedEx(s->blas, opB, opA, n, m, k, &alpha, a->b, t, ldb, sb, a->a, t,
                                        lda, sa, &beta, a->c, t, ldc, sc, batch, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT);
    } else if (a->dtype == FLX_F32) {
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
                             "cuda matmul: cuBLAS %s (%s, batch %d, m %d, n %d, k %d, ta %d, tb %d) "
                             "failed: %s",
                             fn, flx_dtype_name(a->dtype), batch, m, n, k, (int)a->ta, (int)a->tb,
                             flx_cuda_cublas_status_name(bs));
    }
    return FLX_OK;
}

FLX_CUDA_GUARDED(cuda_matmul, flx_matmul_args, matmul_in)
FLX_CUDA_GUARDED(cuda_gemm_ex, flx_gemm_ex_args, flx_cuda_gemm_ex_in) /* gemm_lt.c */

/* ---- LU family: thin glue; the paths live in kernels/lu.cu and kernels/lu_small.cu --------- */

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

/* Said of a library failure while a plan is being captured: the likely cause. */
static const char *capture_note(flx_ctx *ctx) {
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(flx_cuda_st(ctx)->stream, &cs) != cudaSuccess) (void)cudaGetLastError();
    return cs == cudaStreamCaptureStatusNone ? "" : " (while capturing a CUDA graph: this cuSOLVER "
                                                    "path is not capture-safe)";
}

/* The result rc of a launcher on the vendor libraries (FLX_LIB_RC_* in flx_kernels.h) as a
 * status; the printf-style `fmt, ...` names the call in messages, e.g.
 * "cuda lu (mode 0, f32, batch 2, n 70)" (formatted only on failure). */
static flx_status library_launched(flx_ctx *ctx, int rc, const char *family, flx_dtype dt,
                                   const char *fmt, ...) FLX_PRINTF(5, 6);
static flx_status library_launched(flx_ctx *ctx, int rc, const char *family, flx_dtype dt,
                                   const char *fmt, ...) {
    if (rc == 0) return FLX_OK;
    if (rc == FLX_LIB_RC_SCRATCH) return flx_last_status(); /* set by the allocator */
    char what[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (rc <= FLX_LIB_RC_CUSOLVER)
        return flx_set_error(FLX_ERR_BACKEND, "%s: cuSOLVER failed with status %d%s", what,
                             FLX_LIB_RC_CUSOLVER - rc, capture_note(ctx));
    return launched(rc, family, dt);
}

static flx_status lu_in(flx_ctx *ctx, const flx_lu_args *a) {
    if (ensure_cusolver(flx_cuda_st(ctx)) != FLX_OK) return flx_last_status();
    flx_cuda_lib_env env = env_of(ctx, scratch_alloc);
    return library_launched(ctx, flx_cuda_lu(a, &env), "lu", a->dtype,
                            "cuda lu (mode %d, %s, batch %lld, n %lld)", (int)a->mode,
                            flx_dtype_name(a->dtype), (long long)a->batch, (long long)a->n);
}
FLX_CUDA_GUARDED(cuda_lu, flx_lu_args, lu_in)

/* ---- eigh: thin glue; cuSOLVER syevd / syevjBatched in kernels/eigh.cu ------------ */
static flx_status eigh_in(flx_ctx *ctx, const flx_eigh_args *a) {
    if (ensure_cusolver(flx_cuda_st(ctx)) != FLX_OK) return flx_last_status();
    flx_cuda_lib_env env = env_of(ctx, scratch_alloc);
    return library_launched(ctx, flx_cuda_eigh(a, &env), "eigh", a->dtype,
                            "cuda eigh (%s, batch %lld, n %lld)", flx_dtype_name(a->dtype),
                            (long long)a->batch, (long long)a->n);
}
FLX_CUDA_GUARDED(cuda_eigh, flx_eigh_args, eigh_in)

/* ---- attention: fused forward, backward and JVP in kernels/attention.cu ----------------- */
static flx_status attention_in(flx_ctx *ctx, const flx_attention_args *a) {
    flx_cuda_lib_env env = env_of(ctx, scratch_alloc);
    int rc = flx_cuda_attention(a, &env);
    if (rc == -1) return flx_last_status(); /* scratch allocation: error already set */
    return launched(rc, "attention", a->dtype);
}
FLX_CUDA_GUARDED(cuda_attention, flx_attention_args, attention_in)

/* ---- profiler ranges ---------------------------------------------------------------
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

/* ---- plans (CUDA graph capture, runtime/core/plan.c) and math mode ---------------------------
 * A plan's replay is recorded once on the context stream (thread-local capture mode, so other
 * threads are not affected) and instantiated; a run is one cudaGraphLaunch. Before the first
 * capture cuBLAS is given a preallocated workspace, so it never allocates during capture (set
 * once per context, after draining the stream that may still use its default workspace). */
#define FLX_CUDA_BLAS_WS_BYTES ((size_t)32 << 20)

static flx_status capture_begin_in(flx_ctx *ctx) {
    cuda_state *s = flx_cuda_st(ctx);
    cudaError_t e;
    if (!s->blas_ws) {
        e = cudaStreamSynchronize(s->stream);
        ctx->stats.syncs++;
        if (e != cudaSuccess)
            return flx_cuda_fail(e, "cudaStreamSynchronize (before setting the cuBLAS workspace)");
        void *ws = NULL;
        e = cudaMalloc(&ws, FLX_CUDA_BLAS_WS_BYTES);
        if (e != cudaSuccess) return flx_cuda_fail(e, "cudaMalloc (cuBLAS workspace for graph capture)");
        cublasStatus_t bs = cublasSetWorkspace(s->blas, ws, FLX_CUDA_BLAS_WS_BYTES);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            cudaFree(ws);
            return flx_set_error(FLX_ERR_BACKEND, "cuda: cublasSetWorkspace failed: %s",
                                 flx_cuda_cublas_status_name(bs));
        }
        s->blas_ws = ws;
    }
    if (ensure_cusolver(s) != FLX_OK) return flx_last_status();
    if (flx_cuda_lt_prepare(s) != FLX_OK) return flx_last_status();
    e = cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) return flx_cuda_fail(e, "cudaStreamBeginCapture");
    return FLX_OK;
}

static flx_status cuda_capture_begin(flx_ctx *ctx) {
    flx_cuda_guard g;
    if (flx_cuda_enter(ctx, &g) != FLX_OK) return flx_last_status();
    flx_status st = capture_begin_in(ctx);
    flx_cuda_leave(&g);
    return st;
}

static flx_status capture_end_in(flx_ctx *ctx, bool keep, void **graph) {
    cuda_state *s = flx_cuda_st(ctx);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(s->stream, &g); /* always: leaves capture mode */
    if (e != cudaSuccess || !keep) {
        if (g) cudaGraphDestroy(g);
        (void)cudaGetLastError();
        if (!keep) return FLX_OK;
        return flx_cuda_fail(e, "cudaStreamEndCapture (an operation of the plan could not be captured)");
    }
    cudaGraphExec_t ex = NULL;
    e = cudaGraphInstantiate(&ex, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) return flx_cuda_fail(e, "cudaGraphInstantiate");
    *graph = (void *)ex;
    return FLX_OK;
}

static flx_status cuda_capture_end(flx_ctx *ctx, bool keep, void **graph) {
    *graph = NULL;
    cuda_state *s = flx_cuda_st(ctx);
    flx_cuda_guard g;
    /* Ending the capture matters even if the device cannot be made current: try regardless. */
    bool entered = flx_cuda_enter_device(s->device, s->cu_ctx, &g) == cudaSuccess;
    flx_status st = capture_end_in(ctx, keep, graph);
    if (entered) flx_cuda_leave(&g);
    return st;
}

static flx_status cuda_graph_launch(flx_ctx *ctx, void *graph) {
    flx_cuda_guard g;
    if (flx_cuda_enter(ctx, &g) != FLX_OK) return flx_last_status();
    flx_status st = FLX_OK;
    cudaError_t e = cudaGraphLaunch((cudaGraphExec_t)graph, flx_cuda_st(ctx)->stream);
    if (e != cudaSuccess) st = flx_cuda_fail(e, "cudaGraphLaunch");
    flx_cuda_leave(&g);
    return st;
}

static void cuda_graph_destroy(flx_ctx *ctx, void *graph) {
    if (!graph) return;
    cuda_state *s = flx_cuda_st(ctx);
    flx_cuda_guard g;
    bool entered = flx_cuda_enter_device(s->device, s->cu_ctx, &g) == cudaSuccess;
    if (cudaGraphExecDestroy((cudaGraphExec_t)graph) != cudaSuccess) (void)cudaGetLastError();
    if (entered) flx_cuda_leave(&g);
}

static flx_status cuda_set_math_mode(flx_ctx *ctx, int32_t mode) {
    /* A handle setting: no device work, so no guard is needed. */
    cublasStatus_t bs = cublasSetMathMode(flx_cuda_st(ctx)->blas, math_mode_of(mode));
    if (bs != CUBLAS_STATUS_SUCCESS)
        return flx_set_error(FLX_ERR_BACKEND, "flx_set_math_mode: cublasSetMathMode failed: %s",
                             flx_cuda_cublas_status_name(bs));
    return FLX_OK;
}

const flx_backend flx_backend_cuda = {
    FLX_BACKEND_BASE_SLOTS("cuda", cuda_, flx_cuda_)
#define FLX_X_CUDA_SLOT(ID, name, ARGS) .name = cuda_##name,
    FLX_KERNEL_FAMILIES(FLX_X_CUDA_SLOT)
#undef FLX_X_CUDA_SLOT
    .range_push = cuda_range_push,
    .range_pop = cuda_range_pop,
    .capture_begin = cuda_capture_begin,
    .capture_end = cuda_capture_end,
    .graph_launch = cuda_graph_launch,
    .graph_destroy = cuda_graph_destroy,
    .set_math_mode = cuda_set_math_mode,
    .device_enter = flx_cuda_device_enter,
    .device_leave = flx_cuda_device_leave,
};

/* The context's stream as void* (flx_ctx_stream in runtime/io/interop.c; DLPack stream semantics). */
void *flx_cuda_ctx_stream(flx_ctx *ctx) {
    cuda_state *s = ctx ? flx_cuda_st(ctx) : NULL;
    return s ? (void *)s->stream : NULL;
}

