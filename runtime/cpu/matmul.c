/* matmul.c — CPU matmul: the reference loop and the CBLAS dgemm path. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_common.h"
#ifdef FLX_WITH_BLAS
#include <cblas.h> /* the CPU matmul's dgemm (CMake option FLX_CPU_BLAS) */
#include <limits.h>
#endif

/* ---- matmul ----------------------------------------------------------------------------------
 * Two implementations with one contract (flx_matmul_args, computed in double, rounded on store):
 *   - matmul_loop: the reference loop, always compiled; deterministic fixed order.
 *   - matmul_blas (built with FLX_WITH_BLAS when CMake found a CBLAS): cblas_dgemm per
 *     batch on double operands (f64 buffers are passed as they are, f32, f16 and bf16 ones are
 *     widened into scratch, exactly). It is used only when the result is the IEEE one: every input is finite (an
 *     optimised BLAS may skip or reorder products with zeros, and alpha == 0 skips A B, so
 *     0 * inf or 0 * NaN would not give NaN) and the sizes fit the BLAS integer; anything else
 *     goes to the loop. A BLAS with a fixed thread count gives the same bits run to run.
 * FLX_CPU_MATMUL=loop in the environment (read once) forces the loop, for comparisons. */
static flx_status matmul_loop(const flx_matmul_args *ar) {
    const int64_t m = ar->m, n = ar->n, k = ar->k;
    double *row = (double *)malloc((size_t)(n ? n : 1) * sizeof *row);
    if (!row) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cpu matmul: out of host memory");
    for (int64_t bt = 0; bt < ar->batch; bt++) {
        int64_t oa = bt * ar->sa, ob = bt * ar->sb, oc = bt * ar->sc;
        for (int64_t i = 0; i < m; i++) {
            for (int64_t j = 0; j < n; j++) row[j] = 0;
            for (int64_t p = 0; p < k; p++) {
                /* no skip of zero entries: 0 * inf and 0 * NaN must give NaN, as in cuBLAS */
                double av = load(ar->dtype, ar->a, oa + (ar->ta ? p * m + i : i * k + p));
                if (ar->tb) {
                    for (int64_t j = 0; j < n; j++) row[j] += av * load(ar->dtype, ar->b, ob + j * k + p);
                } else if (ar->dtype == FLX_F32) {
                    const float *bp = (const float *)ar->b + ob + p * n;
                    for (int64_t j = 0; j < n; j++) row[j] += av * (double)bp[j];
                } else if (ar->dtype == FLX_F64) {
                    const double *bp = (const double *)ar->b + ob + p * n;
                    for (int64_t j = 0; j < n; j++) row[j] += av * bp[j];
                } else {
                    for (int64_t j = 0; j < n; j++) row[j] += av * load(ar->dtype, ar->b, ob + p * n + j);
                }
            }
            for (int64_t j = 0; j < n; j++) {
                double v = ar->alpha * row[j];
                if (ar->beta != 0) v += ar->beta * load(ar->dtype, ar->c, oc + i * n + j);
                store(ar->dtype, ar->c, oc + i * n + j, v);
            }
        }
    }
    free(row);
    return FLX_OK;
}

#ifdef FLX_WITH_BLAS
/* True when the n values of p (a float dtype) starting at element off are all finite. */
static bool all_finite(flx_dtype dt, const void *p, int64_t off, int64_t n) {
    int bad = 0; /* accumulate instead of branching, so the loop vectorises */
    if (dt == FLX_F32) {
        const float *q = (const float *)p + off;
        for (int64_t i = 0; i < n; i++) bad |= !isfinite(q[i]);
    } else if (dt == FLX_F64) {
        const double *q = (const double *)p + off;
        for (int64_t i = 0; i < n; i++) bad |= !isfinite(q[i]);
    } else {
        for (int64_t i = 0; i < n; i++) bad |= !isfinite(load(dt, p, off + i));
    }
    return !bad;
}

/* Every batch's matrix of an operand (count elements each; stride 0: one shared matrix). */
static bool operand_finite(const flx_matmul_args *ar, const void *p, int64_t stride, int64_t count) {
    int64_t nb = stride == 0 ? 1 : ar->batch;
    for (int64_t bt = 0; bt < nb; bt++)
        if (!all_finite(ar->dtype, p, bt * stride, count)) return false;
    return true;
}

/* n elements of p (f32, f16 or bf16) from element off, as double (exact). */
static void widen(flx_dtype dt, const void *p, int64_t off, double *dst, int64_t n) {
    if (dt == FLX_F32) {
        const float *src = (const float *)p + off;
        for (int64_t i = 0; i < n; i++) dst[i] = src[i];
    } else {
        for (int64_t i = 0; i < n; i++) dst[i] = load(dt, p, off + i);
    }
}

/* Returns 1 when done, 0 when the loop must do it (nothing written), -1 on out of memory. */
static int matmul_blas(const flx_matmul_args *ar) {
    const int64_t m = ar->m, n = ar->n, k = ar->k;
    if (!flx_dtype_is_float(ar->dtype)) return 0;
    if (m <= 0 || n <= 0 || k <= 0 || m > INT_MAX || n > INT_MAX || k > INT_MAX) return 0;
    if (!isfinite(ar->alpha) || ar->alpha == 0 || !isfinite(ar->beta)) return 0;
    if (!operand_finite(ar, ar->a, ar->sa, m * k) || !operand_finite(ar, ar->b, ar->sb, k * n)) return 0;
    const enum CBLAS_TRANSPOSE ta = ar->ta ? CblasTrans : CblasNoTrans;
    const enum CBLAS_TRANSPOSE tb = ar->tb ? CblasTrans : CblasNoTrans;
    const int lda = (int)(ar->ta ? m : k), ldb = (int)(ar->tb ? k : n);
    if (ar->dtype == FLX_F64) {
        for (int64_t bt = 0; bt < ar->batch; bt++)
            cblas_dgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, ar->alpha,
                        (const double *)ar->a + bt * ar->sa, lda, (const double *)ar->b + bt * ar->sb,
                        ldb, ar->beta, (double *)ar->c + bt * ar->sc, (int)n);
        return 1;
    }
    /* f32 and the halves: widen A and B (once when broadcast) into scratch, compute C in double,
     * round once on store. */
    const flx_dtype dt = ar->dtype;
    const size_t na = (size_t)(m * k), nbm = (size_t)(k * n), nc = (size_t)(m * n);
    double *da = (double *)malloc((na + nbm + nc) * sizeof(double));
    if (!da) return -1;
    double *db = da + na, *dc = db + nbm;
    for (int64_t bt = 0; bt < ar->batch; bt++) {
        if (bt == 0 || ar->sa != 0) widen(dt, ar->a, bt * ar->sa, da, (int64_t)na);
        if (bt == 0 || ar->sb != 0) widen(dt, ar->b, bt * ar->sb, db, (int64_t)nbm);
        if (ar->beta != 0) widen(dt, ar->c, bt * ar->sc, dc, (int64_t)nc);
        cblas_dgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, ar->alpha, da, lda, db, ldb, ar->beta,
                    dc, (int)n);
        if (dt == FLX_F32) {
            float *cb = (float *)ar->c + bt * ar->sc;
            for (size_t i = 0; i < nc; i++) cb[i] = (float)dc[i];
        } else {
            for (size_t i = 0; i < nc; i++) store(dt, ar->c, bt * ar->sc + (int64_t)i, dc[i]);
        }
    }
    free(da);
    return 1;
}

static int matmul_use_loop(void) {
    static atomic_int cached; /* 0: not read yet, 1: BLAS, 2: loop */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v == 0) {
        const char *e = getenv("FLX_CPU_MATMUL");
        v = (e && !strcmp(e, "loop")) ? 2 : 1;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v == 2;
}
#endif

flx_status flx_cpu_matmul(flx_ctx *ctx, const flx_matmul_args *ar) {
    (void)ctx;
#ifdef FLX_WITH_BLAS
    if (!matmul_use_loop()) {
        int r = matmul_blas(ar);
        if (r > 0) return FLX_OK;
        if (r < 0) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cpu matmul: out of host memory");
    }
#endif
    return matmul_loop(ar);
}


/* ---- gemm_ex ---------------------------------------------------------------------------------
 * The product, then the bias, then the activation, each by the kernel the unfused graph would
 * run, in place on out: every value is rounded to the dtype where the unfused kernels store it,
 * so the fused and unfused dense layers give the same bits on the reference backend. A bias
 * gradient is the unfused sum's reduce kernel (flx_gemm_bgrad_reduce_args). */
flx_status flx_cpu_gemm_ex(flx_ctx *ctx, const flx_gemm_ex_args *g) {
    flx_matmul_args mm = {
        .dtype = g->dtype, .batch = g->batch, .m = g->m, .n = g->n, .k = g->k, .ta = g->ta,
        .tb = g->tb, .alpha = 1.0, .beta = 0.0, .a = g->a, .sa = g->m * g->k, .b = g->b, .sb = 0,
        .c = g->out, .sc = g->m * g->n
    };
    const int64_t rows = g->batch * g->m;
    flx_status s = flx_cpu_matmul(ctx, &mm);
    if (s != FLX_OK) return s;
    if (g->bias) {
        flx_binary_args ad = {.op = FLX_BINARY_ADD, .dtype = g->dtype, .ndim = 2,
                              .shape = {rows, g->n}, .sa = {g->n, 1}, .sb = {0, 1},
                              .a = g->out, .b = g->bias, .out = g->out};
        s = flx_cpu_binary(ctx, &ad);
        if (s != FLX_OK) return s;
    }
    if (g->act == FLX_GEMM_ACT_RELU) {
        flx_unary_args re = {.op = FLX_UNARY_RELU, .dtype = g->dtype, .n = rows * g->n,
                             .x = g->out, .y = g->out};
        s = flx_cpu_unary(ctx, &re);
    }
    if (s == FLX_OK && g->bgrad != FLX_GEMM_BGRAD_NONE) {
        flx_reduce_args r = flx_gemm_bgrad_reduce_args(g);
        s = flx_cpu_reduce(ctx, &r);
    }
    return s;
}
