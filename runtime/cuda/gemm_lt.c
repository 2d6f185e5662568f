/* gemm_lt.c — the gemm_ex family on cuBLASLt: a dense layer's product with its bias and relu
 * applied in the GEMM's epilogue (CUBLASLT_EPILOGUE_BIAS, _RELU, _RELU_BIAS), so the layer's
 * output is written once and never read back for the bias or the activation; and the backward's
 * weight gradient with the bias gradient summed from the operand the GEMM reads anyway
 * (CUBLASLT_EPILOGUE_BGRADA, _BGRADB), so dy is not read a second time by a reduce kernel.
 *
 * Per context (cuda_state.lt): one cuBLASLt handle, a workspace, and a small cache of matmul
 * descriptors, layouts and the algorithm the heuristic chose, keyed by everything the choice
 * depends on (dtype, sizes, transposes, epilogue, math mode, pointer alignment). A plan replays
 * the same keys, so it never queries the heuristic again; the bias pointer is the only per-call
 * attribute. The handle and workspace are made before a graph capture begins (a capture forbids
 * cudaMalloc), or on first use outside one.
 *
 * Precision: f32 computes in CUBLAS_COMPUTE_32F unless the context's math mode allows TF32
 * (FLX_MATH_TF32, as for cuBLAS); f16/bf16 accumulate in f32; f64 in f64. Split-K partial sums
 * are kept in the compute type, never in the output type (the reduction-scheme mask), as the
 * cuBLAS handle's math mode does for matmul.
 *
 * Fallback: when cuBLASLt has no algorithm for a key (or refuses a call), the key is remembered
 * as refused and the call runs as the unfused kernels would: cuBLAS matmul, then the bias add and
 * the relu in place (or the bias gradient's reduce), through the backend's own family functions.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>

#include "cuda_internal.h"
#include "flx_unary_ops.h"

#define LT_WS_BYTES ((size_t)32 << 20) /* cuBLAS's recommendation for sm_90 */
#define LT_CACHE 32

typedef struct lt_key {
    int32_t dtype, ta, tb, epi, math, align;
    int64_t m, n, k;
} lt_key;

typedef struct lt_entry {
    bool used, ok; /* ok false: cuBLASLt refused this key; run the fallback */
    lt_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} lt_entry;

struct flx_cuda_lt {
    cublasLtHandle_t handle;
    void *ws;
    int next; /* round-robin victim when the cache is full */
    lt_entry cache[LT_CACHE];
};

static void entry_clear(lt_entry *e) {
    if (e->desc) cublasLtMatmulDescDestroy(e->desc);
    if (e->la) cublasLtMatrixLayoutDestroy(e->la);
    if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
    if (e->lc) cublasLtMatrixLayoutDestroy(e->lc);
    memset(e, 0, sizeof *e);
}

void flx_cuda_lt_release(cuda_state *s) {
    struct flx_cuda_lt *lt = s->lt;
    if (!lt) return;
    for (int i = 0; i < LT_CACHE; i++) entry_clear(&lt->cache[i]);
    if (lt->handle) cublasLtDestroy(lt->handle);
    if (lt->ws) cudaFree(lt->ws); /* the caller synchronised the stream */
    free(lt);
    s->lt = NULL;
}

flx_status flx_cuda_lt_prepare(cuda_state *s) {
    if (s->lt) return FLX_OK;
    struct flx_cuda_lt *lt = (struct flx_cuda_lt *)calloc(1, sizeof *lt);
    if (!lt) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cuda gemm_ex: out of host memory");
    cublasStatus_t bs = cublasLtCreate(&lt->handle);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        free(lt);
        return flx_set_error(FLX_ERR_BACKEND, "cuda gemm_ex: cublasLtCreate failed: %s",
                             flx_cuda_cublas_status_name(bs));
    }
    cudaError_t e = cudaMalloc(&lt->ws, LT_WS_BYTES);
    if (e != cudaSuccess) {
        cublasLtDestroy(lt->handle);
        free(lt);
        return flx_cuda_fail(e, "cudaMalloc (cuBLASLt workspace)");
    }
    s->lt = lt;
    return FLX_OK;
}

/* Largest power of two (at most 256) dividing every address the call reads or writes. */
static int32_t alignment_of(const flx_gemm_ex_args *a) {
    uintptr_t bits = (uintptr_t)a->a | (uintptr_t)a->b | (uintptr_t)a->out | (uintptr_t)256;
    if (a->bias) bits |= (uintptr_t)a->bias;
    if (a->bgrad_out) bits |= (uintptr_t)a->bgrad_out;
    return (int32_t)(bits & (~bits + 1));
}

/* Our row-major product is cuBLASLt's column-major one with the operands swapped (entry_build):
 * a bias gradient over our A (one value per row of ours, per column of its D) is its BGRADB, one
 * over our B its BGRADA; either reduces over k. */
static cublasLtEpilogue_t epilogue_of(const flx_gemm_ex_args *a) {
    if (a->bgrad == FLX_GEMM_BGRAD_A) return CUBLASLT_EPILOGUE_BGRADB;
    if (a->bgrad == FLX_GEMM_BGRAD_B) return CUBLASLT_EPILOGUE_BGRADA;
    if (a->act == FLX_GEMM_ACT_RELU) return a->bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    return a->bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
}

static bool lt_types(flx_dtype dt, int32_t math, cudaDataType_t *data, cublasComputeType_t *compute,
                     cudaDataType_t *scale) {
    switch (dt) {
    case FLX_F32:
        *data = CUDA_R_32F;
        *compute = (math & FLX_MATH_TF32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        *scale = CUDA_R_32F;
        return true;
    case FLX_F64: *data = CUDA_R_64F, *compute = CUBLAS_COMPUTE_64F, *scale = CUDA_R_64F; return true;
    case FLX_F16: *data = CUDA_R_16F, *compute = CUBLAS_COMPUTE_32F, *scale = CUDA_R_32F; return true;
    case FLX_BF16: *data = CUDA_R_16BF, *compute = CUBLAS_COMPUTE_32F, *scale = CUDA_R_32F; return true;
    default: return false;
    }
}

/* Descriptors and the heuristic's first algorithm for e->key; false (e->ok false) when cuBLASLt
 * has none. Row-major C (m, n) = op(A) op(B) is column-major C^T (n, m) = op(B)^T op(A)^T, so
 * cuBLASLt's "A" is our B and its "B" our A (as in the cuBLAS matmul), and the bias, one value
 * per row of the column-major D, is one per column of ours. */
static bool entry_build(struct flx_cuda_lt *lt, lt_entry *e, const flx_gemm_ex_args *a) {
    const lt_key *k = &e->key;
    cudaDataType_t data, scale;
    cublasComputeType_t compute;
    if (!lt_types(a->dtype, k->math, &data, &compute, &scale)) return false;
    if (k->m > INT32_MAX || k->n > INT32_MAX || k->k > INT32_MAX) return false;
    cublasOperation_t opa = a->tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = a->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)k->epi;
    bool ok = cublasLtMatmulDescCreate(&e->desc, compute, scale) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) == CUBLAS_STATUS_SUCCESS;
    if (ok && a->bias) {
        ok = cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &data,
                                            sizeof data) == CUBLAS_STATUS_SUCCESS;
    }
    /* The heuristic may read the bias (gradient) pointer's alignment; the entry serves every call
     * of its key, whose alignment is the least of all its pointers', so the heuristic sees an
     * address aligned to exactly that (never dereferenced: each call sets its own pointer). A
     * first call's better-aligned bias must not pick an algorithm a later call's cannot run. */
    const bool has_bias = a->bgrad != FLX_GEMM_BGRAD_NONE ? a->bgrad_out != NULL : a->bias != NULL;
    const void *bias_ptr = has_bias ? (const void *)(uintptr_t)k->align : NULL;
    if (ok && bias_ptr) {
        ok = cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                            sizeof bias_ptr) == CUBLAS_STATUS_SUCCESS;
    }
    /* Stored shapes, column-major: B (k, n) row-major is (n, k) with ld n; B^T stored (n, k) is
     * (k, n) with ld k. Likewise A. */
    uint64_t m = (uint64_t)k->m, n = (uint64_t)k->n, kk = (uint64_t)k->k;
    ok = ok && cublasLtMatrixLayoutCreate(&e->la, data, a->tb ? kk : n, a->tb ? n : kk,
                                          (int64_t)(a->tb ? kk : n)) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&e->lb, data, a->ta ? m : kk, a->ta ? kk : m,
                                          (int64_t)(a->ta ? m : kk)) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatrixLayoutCreate(&e->lc, data, n, m, (int64_t)n) == CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulPreference_t pref = NULL;
    ok = ok && cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS;
    size_t ws = LT_WS_BYTES;
    uint32_t align = (uint32_t)k->align;
    uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    const cublasLtMatmulPreferenceAttributes_t aligns[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    ok = ok && cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws, sizeof ws) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                    &schemes, sizeof schemes) == CUBLAS_STATUS_SUCCESS;
    for (int i = 0; i < 4 && ok; i++)
        ok = cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &align, sizeof align) == CUBLAS_STATUS_SUCCESS;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    ok = ok && cublasLtMatmulAlgoGetHeuristic(lt->handle, e->desc, e->la, e->lb, e->lc, e->lc, pref, 1,
                                              &res, &found) == CUBLAS_STATUS_SUCCESS;
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    ok = ok && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
    if (ok) e->algo = res.algo;
    return ok;
}

static lt_entry *lookup(struct flx_cuda_lt *lt, const flx_gemm_ex_args *a, int32_t math) {
    lt_key key;
    memset(&key, 0, sizeof key); /* compared bytewise */
    key.dtype = (int32_t)a->dtype;
    key.ta = a->ta;
    key.tb = a->tb;
    key.epi = (int32_t)epilogue_of(a);
    key.math = a->dtype == FLX_F32 ? (math & FLX_MATH_TF32) : 0;
    key.align = alignment_of(a);
    key.m = a->batch * a->m; /* batch > 1 only untransposed: one (batch m, k) matrix */
    key.n = a->n;
    key.k = a->k;
    for (int i = 0; i < LT_CACHE; i++)
        if (lt->cache[i].used && memcmp(&lt->cache[i].key, &key, sizeof key) == 0) return &lt->cache[i];
    lt_entry *e = NULL;
    for (int i = 0; i < LT_CACHE && !e; i++)
        if (!lt->cache[i].used) e = &lt->cache[i];
    if (!e) {
        e = &lt->cache[lt->next];
        lt->next = (lt->next + 1) % LT_CACHE;
        entry_clear(e);
    }
    e->used = true;
    e->key = key;
    e->ok = entry_build(lt, e, a);
    return e;
}

/* The unfused path: the kernels the graph would have run without the group (the bias gradient:
 * the sum's reduce kernel, with the arguments its exec gives it). */
static flx_status fallback(flx_ctx *ctx, const flx_gemm_ex_args *a) {
    flx_matmul_args mm = {.dtype = a->dtype, .batch = a->batch, .m = a->m, .n = a->n, .k = a->k,
                          .ta = a->ta, .tb = a->tb, .alpha = 1.0, .beta = 0.0, .a = a->a,
                          .sa = a->m * a->k, .b = a->b, .sb = 0, .c = a->out, .sc = a->m * a->n};
    const int64_t rows = a->batch * a->m;
    flx_status st = ctx->be->matmul(ctx, &mm);
    if (st == FLX_OK && a->bias) {
        flx_binary_args ad = {.op = FLX_BINARY_ADD, .dtype = a->dtype, .ndim = 2,
                              .shape = {rows, a->n}, .sa = {a->n, 1}, .sb = {0, 1},
                              .a = a->out, .b = a->bias, .out = a->out};
        st = ctx->be->binary(ctx, &ad);
    }
    if (st == FLX_OK && a->act == FLX_GEMM_ACT_RELU) {
        flx_unary_args re = {.op = FLX_UNARY_RELU, .dtype = a->dtype, .n = rows * a->n,
                             .x = a->out, .y = a->out};
        st = ctx->be->unary(ctx, &re);
    }
    if (st == FLX_OK && a->bgrad != FLX_GEMM_BGRAD_NONE) {
        flx_reduce_args r = flx_gemm_bgrad_reduce_args(a);
        st = ctx->be->reduce(ctx, &r);
    }
    return st;
}

flx_status flx_cuda_gemm_ex_in(flx_ctx *ctx, const flx_gemm_ex_args *a) {
    cuda_state *s = flx_cuda_st(ctx);
    if (a->batch <= 0 || a->m <= 0 || a->n <= 0 || a->k <= 0 || (a->batch > 1 && a->ta) ||
        (a->bgrad != FLX_GEMM_BGRAD_NONE && (a->batch != 1 || a->bias || a->act != FLX_GEMM_ACT_NONE)))
        return fallback(ctx, a);
    if (!s->lt) {
        enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(s->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone)
            return fallback(ctx, a); /* no allocation inside a capture */
        if (flx_cuda_lt_prepare(s) != FLX_OK) return flx_last_status();
    }
    lt_entry *e = lookup(s->lt, a, ctx->math_mode);
    if (!e->ok) return fallback(ctx, a);
    /* The bias, or the bias gradient's output: the only per-call attribute. */
    const void *bias_ptr = a->bgrad != FLX_GEMM_BGRAD_NONE ? (const void *)a->bgrad_out : a->bias;
    if (bias_ptr &&
        cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                       sizeof bias_ptr) != CUBLAS_STATUS_SUCCESS) {
        e->ok = false;
        return fallback(ctx, a);
    }
    float one32 = 1.0f, zero32 = 0.0f;
    double one64 = 1.0, zero64 = 0.0;
    const void *alpha = a->dtype == FLX_F64 ? (const void *)&one64 : (const void *)&one32;
    const void *beta = a->dtype == FLX_F64 ? (const void *)&zero64 : (const void *)&zero32;
    cublasStatus_t bs = cublasLtMatmul(s->lt->handle, e->desc, alpha, a->b, e->la, a->a, e->lb, beta,
                                       a->out, e->lc, a->out, e->lc, &e->algo, s->lt->ws, LT_WS_BYTES,
                                       s->stream);
    if (bs == CUBLAS_STATUS_SUCCESS) return FLX_OK;
    (void)cudaGetLastError();
    if (bs == CUBLAS_STATUS_NOT_SUPPORTED || bs == CUBLAS_STATUS_INVALID_VALUE) {
        e->ok = false; /* refused before any work was queued */
        return fallback(ctx, a);
    }
    return flx_set_error(FLX_ERR_BACKEND,
                         "cuda gemm_ex: cublasLtMatmul (%s, m %lld, n %lld, k %lld, ta %d, tb %d, "
                         "epilogue %d) failed: %s",
                         flx_dtype_name(a->dtype), (long long)e->key.m, (long long)a->n, (long long)a->k,
                         (int)a->ta, (int)a->tb, (int)e->key.epi, flx_cuda_cublas_status_name(bs));
}
