/*
 * flx_kernels.h — the kernel families: plain-C argument structs shared by the CPU reference
 * kernels (runtime/cpu/) and the CUDA kernels (kernels/ (.cu files)), and the C launch functions of the
 * CUDA kernels. Kernels know nothing of graphs: they see pointers, sizes and strides.
 *
 * Conventions
 *   - Strides and offsets are in elements, not bytes. Outputs are written densely (row-major over
 *     the index space) unless a family says otherwise.
 *   - err (where present) is the raise site of the context's error record (kernels/flx_kerr.h): a
 *     kernel that meets a bad value (an index out of range) calls flx_kerr_raise and carries on;
 *     the runtime reads the record at the next synchronisation point.
 *   - CUDA launch functions queue work on stream (a cudaStream_t passed as void*) and return 0 or
 *     a cudaError_t value; they never synchronise.
 */
#ifndef FLX_KERNELS_H
#define FLX_KERNELS_H

#include <stdint.h>
#include <stddef.h>

#include "fluxion/fluxion.h"
#include "flx_kerr.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- fill: creation of values ---------------------------------------------------------------
 * CONST: a. IOTA: a + i*b. EYE: 1 where (i / cols) == (i % cols), else 0.
 * UNIFORM: a + (b - a) * u, u in [0, 1). NORMAL: a + b * z, z standard normal.
 * Random values come from Philox4x32-10 with key = seed and counter = (i / 4, stream)
 * (kernels/philox.h): stream is *run when run is non-NULL (a plan's replay counter, in device
 * memory, advanced on the device by each replay), else 0. */
typedef enum flx_fill_kind {
    FLX_FILL_CONST, FLX_FILL_IOTA, FLX_FILL_EYE, FLX_FILL_UNIFORM, FLX_FILL_NORMAL
} flx_fill_kind;
typedef struct flx_fill_args {
    flx_fill_kind kind;
    flx_dtype dtype;
    int64_t n;
    double a, b;
    int64_t cols;
    uint64_t seed;
    const int64_t *run;
    void *out;
} flx_fill_args;

/* ---- cast: dst[i] = (dst_dtype) src[i]; to bool is (x != 0) --------------------------------- */
typedef struct flx_cast_args {
    flx_dtype src_dtype, dst_dtype;
    int64_t n;
    const void *src;
    void *dst;
} flx_cast_args;

/* ---- unary: y[i] = f(x[i]; a, b), f32/f64; formulas in kernels/flx_unary_ops.h ------------- */
typedef struct flx_unary_args {
    int32_t op; /* flx_unary_op */
    flx_dtype dtype;
    int64_t n;
    double a, b;
    const void *x;
    void *y;
} flx_unary_args;

/* ---- binary: out[idx] = f(a[idx . sa], b[idx . sb]) over shape; compare ops write bool ----- */
typedef struct flx_binary_args {
    int32_t op; /* flx_binary_op */
    flx_dtype dtype; /* of a and b */
    int32_t ndim;
    int64_t shape[FLX_MAX_DIMS];
    int64_t sa[FLX_MAX_DIMS], sb[FLX_MAX_DIMS];
    const void *a, *b;
    void *out;
} flx_binary_args;

/* ---- where: out[idx] = cond[idx . sc] ? a[idx . sa] : b[idx . sb] -------------------------- */
typedef struct flx_where_args {
    flx_dtype dtype;
    int32_t ndim;
    int64_t shape[FLX_MAX_DIMS];
    int64_t sc[FLX_MAX_DIMS], sa[FLX_MAX_DIMS], sb[FLX_MAX_DIMS];
    const uint8_t *cond;
    const void *a, *b;
    void *out;
} flx_where_args;

/* ---- copy: out[out_off + idx . out_strides] = in[in_off + idx . in_strides] over shape --------
 * Serves permute, broadcast, slice, pad, concat, diag and diagonal. */
typedef struct flx_copy_args {
    size_t elem_size;
    int32_t ndim;
    int64_t shape[FLX_MAX_DIMS];
    int64_t in_off, in_strides[FLX_MAX_DIMS];
    int64_t out_off, out_strides[FLX_MAX_DIMS];
    const void *in;
    void *out;
} flx_copy_args;

/* ---- reduce: out[k] = R over r of x[koff(k) + roff(r)] --------------------------------------
 * k runs densely over the kept index space (kshape, strides kstride into x), r over the reduced
 * one (rshape, rstride). SUM writes param * sum; VAR writes sum((x - mean)^2) / (count - param);
 * ARGMAX writes the first r (i64) of the maximum (rdim must be 1). Reductions are deterministic:
 * a fixed order, no atomics. MAX, MIN, ARGMAX and LSE propagate NaN (ARGMAX: the first NaN).
 * scratch (CUDA only; NULL elsewhere): device memory of flx_cuda_reduce_scratch_bytes(args)
 * bytes for the partials of a reduction split over many blocks (stream-ordered: free after
 * queueing); without it the kernel falls back to fewer blocks per output. */
typedef enum flx_reduce_op {
    FLX_REDUCE_SUM, FLX_REDUCE_MAX, FLX_REDUCE_MIN, FLX_REDUCE_LSE, FLX_REDUCE_VAR,
    FLX_REDUCE_ARGMAX
} flx_reduce_op;
typedef struct flx_reduce_args {
    int32_t op;
    flx_dtype dtype; /* of x */
    int32_t kdim;
    int64_t kshape[FLX_MAX_DIMS], kstride[FLX_MAX_DIMS];
    int32_t rdim;
    int64_t rshape[FLX_MAX_DIMS], rstride[FLX_MAX_DIMS];
    double param;
    const void *x;
    void *out;
    void *scratch;
    size_t scratch_bytes;
} flx_reduce_args;

/* ---- matmul: C[b] = alpha * op(A[b]) op(B[b]) + beta * C[b], row-major ----------------------
 * op(A) is (m, k): stored (m, k), or (k, m) when ta. op(B) is (k, n): stored (k, n), or (n, k)
 * when tb. sa, sb, sc: batch strides in elements (0 broadcasts one matrix to every batch). */
typedef struct flx_matmul_args {
    flx_dtype dtype;
    int64_t batch, m, n, k;
    int32_t ta, tb;
    double alpha, beta;
    const void *a;
    int64_t sa;
    const void *b;
    int64_t sb;
    void *c;
    int64_t sc;
} flx_matmul_args;

/* ---- gemm_ex: out = act(op(A) op(B) + bias), one 2-d product with its epilogue --------------
 * A dense layer's GEMM in one call (runtime/core/fuse_gemm.c groups the forward's matmul [+ bias]
 * [relu], and the backward's weight-gradient matmul with the bias gradient beside it).
 * op(A) (m, k), op(B) (k, n) stored as in matmul (ta, tb); A may hold batch such matrices one
 * after another (batch > 1 only with ta == 0: rows of one (batch m, k) matrix), B is one matrix
 * shared by all; bias (n) added to every row, or NULL; act FLX_GEMM_ACT_NONE or _RELU. batch, m,
 * n, k >= 1. The result must be what the unfused matmul (batch strides m k, 0, m n), add and relu
 * kernels of the same backend give (the CPU: bit for bit).
 * bgrad (then batch 1, no bias, act NONE) also writes a second output, the sum over k of an
 * operand: _A: bgrad_out[i] = sum_k op(A)[i, k] (m values); _B: bgrad_out[j] = sum_k op(B)[k, j]
 * (n values) — the bias gradient of a dense layer whose weight gradient is the product (dW =
 * dy^T x with dy as A: _A). It must be what the unfused sum reduction of that stored operand over
 * its k axis gives on the same backend (the CPU: bit for bit). */
typedef enum flx_gemm_act { FLX_GEMM_ACT_NONE = 0, FLX_GEMM_ACT_RELU = 1 } flx_gemm_act;
typedef enum flx_gemm_bgrad {
    FLX_GEMM_BGRAD_NONE = 0, FLX_GEMM_BGRAD_A = 1, FLX_GEMM_BGRAD_B = 2
} flx_gemm_bgrad;
typedef struct flx_gemm_ex_args {
    flx_dtype dtype;
    int64_t batch, m, n, k;
    int32_t ta, tb;
    int32_t act;      /* flx_gemm_act */
    int32_t bgrad;    /* flx_gemm_bgrad */
    const void *a;    /* op(A) is (m, k) */
    const void *b;    /* op(B) is (k, n) */
    const void *bias; /* (n) or NULL */
    void *out;        /* (batch m, n), dense */
    void *bgrad_out;  /* (m) or (n) with bgrad, else NULL */
} flx_gemm_ex_args;
/* The reduce arguments of g's bias gradient: exactly those the unfused sum of the stored operand
 * over its k axis gets from its exec (runtime/ops/reduce.c: the kept axis, then the reduced one),
 * so a backend that runs it with its reduce kernel gives the unfused bits. */
static inline flx_reduce_args flx_gemm_bgrad_reduce_args(const flx_gemm_ex_args *g) {
    flx_reduce_args r = {0};
    r.op = FLX_REDUCE_SUM;
    r.dtype = g->dtype;
    r.kdim = r.rdim = 1;
    r.rshape[0] = g->k;
    r.param = 1.0;
    if (g->bgrad == FLX_GEMM_BGRAD_A) { /* A stored (k, m) when ta, else (m, k) */
        r.x = g->a;
        r.kshape[0] = g->m;
        r.kstride[0] = g->ta ? 1 : g->k;
        r.rstride[0] = g->ta ? g->m : 1;
    } else { /* B stored (n, k) when tb, else (k, n) */
        r.x = g->b;
        r.kshape[0] = g->n;
        r.kstride[0] = g->tb ? g->k : 1;
        r.rstride[0] = g->tb ? 1 : g->n;
    }
    r.out = g->bgrad_out;
    return r;
}

/* ---- index: along the middle axis of (outer, n, inner) views ---------------------------------
 * SELECT: out(outer, n_idx, inner)[o, j, i] = src(outer, n_src, inner)[o, idx[j], i].
 * ADD:    out(outer, n_src, inner)[o, t, i] = sum over j with idx[j] == t of
 *         src(outer, n_idx, inner)[o, j, i]  (deterministic: j ascending; the transpose of SELECT).
 * An index outside [0, n_src) reads 0 / is skipped and raises FLX_KERR_INDEX_RANGE (value = the
 * index, [0, n_src), row = its position j). */
typedef enum flx_index_mode { FLX_INDEX_SELECT, FLX_INDEX_ADD } flx_index_mode;
typedef struct flx_index_args {
    int32_t mode;
    flx_dtype dtype, idx_dtype;
    int64_t outer, n_src, n_idx, inner;
    const void *src, *idx;
    void *out;
    flx_kerr err;
} flx_index_args;

/* ---- conv: sliding-window family over NCHW planes (nn layers) -----------------------
 * Geometry: input planes (N, C, H, W); window KH x KW with stride SH, SW, zero padding PH, PW
 * and dilation DH, DW; output planes OH x OW, where OH = (H + 2 PH - DH (KH - 1) - 1) / SH + 1.
 * Window (oh, ow) tap (ki, kj) reads input row h = oh SH - PH + ki DH, column w = ow SW - PW + kj DW.
 * IM2COL:   out (N, C KH KW, OH OW)[n, (c KH + ki) KW + kj, oh OW + ow] = x[n, c, h, w] (0 outside).
 * COL2IM:   out (N, C, H, W) = the transpose of IM2COL applied to in (N, C KH KW, OH OW): each
 *           input position sums the columns that read it (gather form: deterministic, no atomics).
 * MAXPOOL:  out (N, C, OH, OW) = max over the taps inside the input (padding never wins; NaN wins).
 * MAXPOOL_ARGMAX: out (i64, same shape) = flat index ((n C + c) H + h) W + w of the first maximum
 *           (taps in row-major (ki, kj) order); -1 for a window with no tap inside the input.
 * MAXPOOL_BACKWARD: in = g (N, C, OH, OW); out (N, C, H, W)[p] = sum of g over the windows whose
 *           argmax is p (gather form, taps ascending, deterministic). The argmax is idx (i64
 *           indices as above) or, when idx is NULL, found again from x (the pooled input, dtype):
 *           each window's first maximum, as MAXPOOL_ARGMAX finds it, with no index tensor. */
typedef enum flx_conv_mode {
    FLX_CONV_IM2COL, FLX_CONV_COL2IM, FLX_CONV_MAXPOOL, FLX_CONV_MAXPOOL_ARGMAX,
    FLX_CONV_MAXPOOL_BACKWARD
} flx_conv_mode;
typedef struct flx_conv_args {
    int32_t mode;
    flx_dtype dtype; /* of in and out (out is i64 for MAXPOOL_ARGMAX) */
    int64_t N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
    const void *in;
    const int64_t *idx; /* MAXPOOL_BACKWARD only: the argmax indices, or NULL (then x) */
    const void *x;      /* MAXPOOL_BACKWARD without idx: the pooled input (N, C, H, W) */
    void *out;
} flx_conv_args;
int flx_cuda_conv(const flx_conv_args *args, void *stream);

/* ---- softmax family (runtime/ops/softmax.c, runtime/cpu/softmax.c, kernels/softmax.cu)
 * Rows: x is viewed as (outer, n, inner) and every (o, i) pair is one row of n elements with
 * stride inner (inner == 1: contiguous rows). s = scale (1 / temperature), z = s x.
 * FWD:      out = softmax(z) along the row.
 * LOG_FWD:  out = (z - max) - log(sum(exp(z - max)))   (never z - (max + log sum): that rounding
 *           costs |max| * eps, all of the result for |z| ~ 1e16).
 * BWD:      x = y (a softmax output), v: out = s * y (v - <y, v>)   (softmax VJP and JVP).
 * LOG_VJP:  x = y (a log_softmax output): out = s * (v - exp(y) sum(v)).
 * LOG_JVP:  x = y (a log_softmax output): out = s * (v - <exp(y), v>).
 * CE_FWD:   cross-entropy forward, and with grad != NULL its backward in the same pass:
 *           x = logits (outer = N, n = C, inner = 1), labels (N). out (N + 1): out[r] =
 *           log(sum(exp(x_r - max_r))) - (x_r[label_r] - max_r), 0 where label_r ==
 *           ignore_index; out[N] = the number of labels != ignore_index; out is stat_dtype
 *           (f32 for the halves), rounded once from the double/f32 value. grad (N, C), when
 *           given: (softmax(x_r) - onehot(label_r)) * scale, divided by out[N] when reduction is
 *           FLX_REDUCTION_MEAN; rows with label_r == ignore_index are 0. s is not applied to x.
 * CE_BWD:   as CE_FWD, v = g (N): out (N, C) = (softmax(x_r) - onehot(label_r)) g_r, rows with
 *           label_r == ignore_index are 0.
 * CE_FINISH: x = a CE_FWD out (N + 1, stat_dtype) (outer = N): out (dtype) = sum(x[0..N)) (SUM), that sum
 *           / x[N] (MEAN, 0/0 = NaN when every row is ignored), x[N] (reduction -1: the count),
 *           or x[0..N) copied (NONE). Summed in a fixed order (deterministic).
 * A label outside [0, C) other than ignore_index is treated as ignored (counted, loss and
 * gradient 0) and raises FLX_KERR_INDEX_RANGE (value = the label, [0, C), row = r). A row whose z are all -inf gives NaN
 * (0 / 0); +inf gives NaN. */
typedef enum flx_softmax_mode {
    FLX_SOFTMAX_FWD, FLX_SOFTMAX_LOG_FWD, FLX_SOFTMAX_BWD, FLX_SOFTMAX_LOG_VJP,
    FLX_SOFTMAX_LOG_JVP, FLX_SOFTMAX_CE_FWD, FLX_SOFTMAX_CE_BWD, FLX_SOFTMAX_CE_FINISH
} flx_softmax_mode;
enum { FLX_SOFTMAX_CE_COUNT = -1 }; /* CE_FINISH reduction: read the count */
typedef struct flx_softmax_args {
    int32_t mode;
    flx_dtype dtype;        /* of x, v, out and grad (f32, f64, f16, bf16) */
    flx_dtype stat_dtype;   /* CE_FWD out and CE_FINISH x (the per-row losses and the count):
                               f32 for f16/bf16 logits (a count or a loss in 8 or 11 bits is not
                               exact), else dtype */
    int64_t outer, n, inner;
    double scale;
    const void *x;
    const void *v;
    const void *labels;     /* CE modes */
    flx_dtype label_dtype;  /* i32 or i64 */
    int64_t ignore_index;
    int32_t reduction;      /* CE_FWD (gradient scale) and CE_FINISH: flx_reduction or
                               FLX_SOFTMAX_CE_COUNT */
    void *out;
    void *grad;             /* CE_FWD: the fused gradient (N, C), or NULL */
    flx_kerr err;
    /* CUDA only (NULL elsewhere): flx_cuda_softmax_scratch_bytes(args) bytes of device memory for
     * the partials of a strided softmax split over the GPU (stream-ordered: free after queueing);
     * without it the kernel runs one thread per column. */
    void *scratch;
    size_t scratch_bytes;
} flx_softmax_args;
int flx_cuda_softmax(const flx_softmax_args *args, void *stream);
/* Bytes of scratch flx_cuda_softmax wants for args (0: none); depends on the current device. */
size_t flx_cuda_softmax_scratch_bytes(const flx_softmax_args *args);

/* ---- optim: fused multi-tensor optimiser updates (runtime/nn/optim.c, runtime/cpu/optim.c,
 * kernels/optim.cu). Update rules: fluxion.h, "optimisers".
 * UPDATE: for each j < n: p[j] (numel[j] elements, dtype) is updated from g[j] (dtype too) and
 *   the state slots s0/s1/s2[j] (NULL where the rule does not use them; sdtype) with
 *   hyperparameters read from the device array hp (FLX_HP_COUNT doubles; t = hp[FLX_HP_STEP] + 1).
 *   master[j] (f32, or NULL): the master copy of an f16/bf16 parameter; the rule reads and
 *   writes it instead of p[j], and p[j] is then written as master[j] rounded to nearest even.
 *   When advance_step is set, the step's bookkeeping runs after every element has been updated
 *   (on CUDA: by the last block to finish, counted in *counter, which it resets to 0): the step
 *   count advances and, with loss scaling, the scale and the growth tracker are updated and
 *   *found_inf is cleared. Math in float64.
 *   Loss scaling (scale != NULL): the gradients are read as g * (1 / *scale); if *found_inf is
 *   set (by FIND_INF over every gradient of the step, queued before the first UPDATE), nothing
 *   is written except the bookkeeping: scale *= backoff, tracker = 0, skipped += 1, step count
 *   unchanged. Otherwise tracker += 1 and at growth_interval: scale *= growth (if finite),
 *   tracker = 0. scaler: [0] growth tracker, [1] skipped steps (doubles).
 * FIND_INF: sets *found_inf to 1 if any g[j] holds an inf or NaN (never clears it).
 * INIT_MASTER: master[j] = p[j] for each j < n (exact: f16/bf16 values are f32 values).
 * SET_HP: hp[set_index] = set_value (one device write, queued). */
typedef enum flx_optim_mode {
    FLX_OPTIM_UPDATE, FLX_OPTIM_SET_HP, FLX_OPTIM_FIND_INF, FLX_OPTIM_INIT_MASTER
} flx_optim_mode;
typedef enum flx_optim_rule {
    FLX_OPTIM_RULE_SGD, FLX_OPTIM_RULE_ADAGRAD, FLX_OPTIM_RULE_RMSPROP, FLX_OPTIM_RULE_ADAM,
    FLX_OPTIM_RULE_ADAMW
} flx_optim_rule;
typedef struct flx_optim_args {
    int32_t mode, rule;
    int32_t nesterov, centered, use_momentum; /* structural flags fixed at create time */
    flx_dtype dtype;                           /* parameters and gradients: f32, f64, f16, bf16 */
    flx_dtype sdtype;                          /* state slots: dtype, or f32 for f16/bf16      */
    int32_t n;                                 /* <= FLX_OPTIM_MAX_TENSORS_PER_LAUNCH    */
    void *p[FLX_OPTIM_MAX_TENSORS_PER_LAUNCH];
    const void *g[FLX_OPTIM_MAX_TENSORS_PER_LAUNCH];
    void *s0[FLX_OPTIM_MAX_TENSORS_PER_LAUNCH], *s1[FLX_OPTIM_MAX_TENSORS_PER_LAUNCH],
        *s2[FLX_OPTIM_MAX_TENSORS_PER_LAUNCH];
    float *master[FLX_OPTIM_MAX_TENSORS_PER_LAUNCH];
    int64_t numel[FLX_OPTIM_MAX_TENSORS_PER_LAUNCH];
    int32_t advance_step;
    double *hp;        /* device memory */
    uint32_t *counter; /* device memory (CUDA only) */
    double *scale;     /* device memory: the loss scale (one double), or NULL */
    double *scaler;    /* device memory: growth tracker, skipped steps */
    uint32_t *found_inf; /* device memory */
    double growth_factor, backoff_factor;
    double growth_interval;
    int32_t set_index;
    double set_value;
} flx_optim_args;
int flx_cuda_optim(const flx_optim_args *args, void *stream);

/* ---- LU family (runtime/ops/lu.c, runtime/cpu/lu.c, kernels/lu.cu, kernels/lu_small.cu) -
 * Packed factorisation: one row of P = n*n + n + 1 elements (dtype of A) per matrix:
 *   [0, n*n)       the LU of A = P L U (partial pivoting), column-major: (i, j) at j*n + i;
 *                  L unit lower (below the diagonal), U upper (on and above it);
 *   [n*n, n*n+n)   pivots, 0-based: at step i rows i and piv[i] were swapped (as LAPACK's ipiv);
 *   n*n + n        info: 0, or k > 0 when U(k-1, k-1) is exactly zero (the first such k).
 * A zero pivot column is left uneliminated (its multipliers are 0), so A = P L U stays exact.
 * FACTOR:   a (batch, n, n) row-major -> out packed (batch, P).
 * SOLVE:    lu packed, b (batch, n, k) -> out (batch, n, k) = A^-1 b (A^-T b when trans); with
 *           check, a matrix whose info != 0 raises FLX_KERR_SINGULAR (value = info, row = the
 *           matrix; values then inf/NaN).
 *           b == NULL: b is the identity (k == n), generated in the kernel (inverses).
 *           lu == NULL: a (as for FACTOR) is factorised on the fly and no packed LU is written
 *           (forward-only solve and inverse).
 * DET, LOGABS, SIGN, LOGDET: lu packed -> out (batch): det, log|det|, sign(det) (0 if singular),
 *           log det (NaN when det < 0, -inf when det == 0); every form is NaN when U's diagonal
 *           holds a NaN, even beside a zero pivot. lu == NULL: a (as for FACTOR) is factorised
 *           on the fly and no packed LU is written (forward-only det).
 * COFACTOR: lu packed -> out (batch, n, n) row-major = adj(A)^T, computed without any division
 *           (finite and exact in form at singular A): adj(A) = sign(P) adj(U) L^-1 P^T with adj(U)
 *           from products of U's diagonal.
 * DET_GRAD, LOGDET_GRAD: the gradients of det and of log|det| in one pass straight from A (no
 *           packed factors read or written): a (batch, n, n) row-major, b (batch) the per-matrix
 *           cotangent g or NULL (g = 1) -> out (batch, n, n) row-major = g adj(A)^T (division-free
 *           as COFACTOR: exact at singular A) / g A^-T (inf/NaN at singular A, as SOLVE).
 *           1 <= n <= FLX_LU_REG_N on CUDA (one thread per matrix, registers); any n on the CPU.
 *           For A holding inf or NaN, which entries come out NaN rather than inf or finite may
 *           differ between backends (the adjugate's products are grouped differently). */
#define FLX_LU_REG_N 8
typedef enum flx_lu_mode {
    FLX_LU_FACTOR, FLX_LU_SOLVE, FLX_LU_DET, FLX_LU_LOGABS, FLX_LU_SIGN, FLX_LU_LOGDET,
    FLX_LU_COFACTOR, FLX_LU_DET_GRAD, FLX_LU_LOGDET_GRAD
} flx_lu_mode;
typedef struct flx_lu_args {
    int32_t mode;
    flx_dtype dtype; /* f32, f64 */
    int64_t batch, n, k;
    int32_t trans, check;
    const void *a, *lu, *b;
    void *out;
    flx_kerr err;
} flx_lu_args;
/* What the CUDA launchers that need more than a stream get from the backend (LU and eigh on
 * the vendor libraries, index_add's sort): the stream, library handles (cublasHandle_t,
 * cusolverDnHandle_t as void*) and the context's stream-ordered allocator for scratch (OOM
 * retry, statistics, capture-safe). alloc returns NULL on failure with the thread's error set. */
typedef struct flx_cuda_lib_env {
    void *stream;
    void *cublas;
    void *cusolver;
    void *(*alloc)(void *actx, size_t nbytes);
    void (*free)(void *actx, void *ptr);
    void *actx;
} flx_cuda_lib_env;
/* What the launchers on a flx_cuda_lib_env return besides 0 and a cudaError_t (> 0): scratch
 * allocation failed (the error already set by alloc), or FLX_LIB_RC_CUSOLVER - cusolverStatus_t.
 * (No launcher calls cuBLAS: matmul's cuBLAS calls are in runtime/cuda and report directly.) */
enum { FLX_LIB_RC_SCRATCH = -1, FLX_LIB_RC_CUSOLVER = -2000 };
/* Returns 0, a cudaError_t or an FLX_LIB_RC_* code. */
int flx_cuda_lu(const flx_lu_args *args, const flx_cuda_lib_env *env);

/* ---- eigh (runtime/ops/eigh.c, runtime/cpu/eigh.c, kernels/eigh.cu) ------------------
 * a: (batch, n, n) row-major symmetric matrices (only the lower triangle is read on CUDA; the CPU
 * reads both triangles' average -- the builder passes exactly symmetric input). out: (batch, n,
 * n + 1) row-major = [V | w]: columns 0..n-1 the orthonormal eigenvectors (column j for w[j]),
 * column n the eigenvalues, ascending. Sign convention: each eigenvector's entry of largest
 * magnitude (the first such) is positive. A matrix that does not converge raises
 * FLX_KERR_EIGH_NOCONV (row = the matrix; its values are then unspecified). */
typedef struct flx_eigh_args {
    flx_dtype dtype; /* f32, f64 */
    int64_t batch, n;
    const void *a;
    void *out;
    flx_kerr err;
} flx_eigh_args;
/* Same return convention and environment as flx_cuda_lu. */
int flx_cuda_eigh(const flx_eigh_args *args, const flx_cuda_lib_env *env);

/* ---- attention (runtime/ops/attention.c, runtime/cpu/attention.c, kernels/attention.cu) ------
 * Scaled dot-product attention for every (batch b, head h) pair, flash style: no mode ever
 * stores an S x T matrix.
 *   q (B, H, S, D)   k (B, H, T, D)   v (B, H, T, Dv)   o, dout, tout (B, H, S, Dv)
 *   dq, tq like q    dk, tk like k    dv, tv like v
 * Every tensor X above is addressed as X[b sX.b + h sX.h + i sX.r + d] (strides in elements; the
 * last axis is contiguous, stride 1). Strides may be anything, so q, k, v can be views of one
 * fused projection; outputs may be written strided too.
 * lse, delta: (B, H, S) contiguous, index (b H + h) S + i, in the stats dtype: f64 for f64 data,
 * f32 for f32, f16 and bf16 data.
 * Math, per (b, h), with s = scale (> 0) and rows i < S, keys j < T:
 *   valid(i, j) = !causal || j <= i + (T - S)       (bottom-right aligned, as FlashAttention 2)
 *   z_ij = s <q_i, k_j>; a row with no valid j (causal with i < S - T, or T == 0) is dead.
 *   live row:  lse_i = log sum_{valid j} exp(z_ij)  (= m_i + log sum exp(z_ij - m_i));
 *              p_ij = exp(z_ij - lse_i) for valid j, 0 otherwise.
 *   dead row:  lse_i = -inf; p_ij = 0 for every j (so o_i = 0 and its derivatives are 0).
 * FWD: o_i = sum_j p_ij v_j. lse == NULL: not wanted (inference); else written.
 * BWD: reads q, k, v, o, lse (as FWD wrote them) and dout (the cotangent of o):
 *        delta_i = <dout_i, o_i>   (o as stored: rounded like FWD wrote it)
 *        dv_j = sum_i p_ij dout_i
 *        ds_ij = p_ij (<dout_i, v_j> - delta_i)
 *        dq_i = s sum_j ds_ij k_j          dk_j = s sum_i ds_ij q_i
 *      delta: (B, H, S) stats scratch owned by the caller; the kernel may write and read it
 *      (contents afterwards unspecified). dq == NULL: dq is not wanted; dk and dv are both NULL
 *      (not wanted) or both given. When S == 0, dk and dv are zeros; when T == 0, dq is zero.
 * JVP: the tangent of o for tangents tq, tk, tv (each NULL = zero):
 *        ts_ij = s (<tq_i, k_j> + <q_i, tk_j>)    c_i = sum_j p_ij ts_ij
 *        tout_i = sum_j p_ij ((ts_ij - c_i) v_j + tv_j)
 *      (the softmax JVP dp = p o (ts - rowsum(p o ts)) folded into o = p v; one online pass:
 *      no lse input, the kernel carries the running max and sums itself.)
 * Every element of every output given is written, whatever the sizes (D == 0 makes z = 0).
 * Accumulation: in f64 for f64 data, f32 (or better) for f32, f16, bf16; each stored value is
 * rounded once. Deterministic: a fixed summation order per element, no float atomics.
 * dtype is one of f32, f64, f16, bf16; every data tensor has it (lse and delta: the stats dtype). */
typedef enum flx_attention_mode {
    FLX_ATTENTION_FWD, FLX_ATTENTION_BWD, FLX_ATTENTION_JVP
} flx_attention_mode;
/* Strides of one (B, H, rows, cols) operand, in elements: batch, head, row. */
typedef struct flx_attention_strides {
    int64_t b, h, r;
} flx_attention_strides;
typedef struct flx_attention_args {
    int32_t mode;   /* flx_attention_mode */
    flx_dtype dtype;
    int64_t B, H, S, T, D, Dv;
    int32_t causal; /* 0 or 1 */
    double scale;   /* s > 0, finite */
    const void *q, *k, *v;                 /* every mode */
    flx_attention_strides sq, sk, sv;
    void *o;                               /* FWD: written; BWD: read */
    flx_attention_strides so;
    void *lse;                             /* FWD: written (or NULL); BWD: read */
    const void *dout;                      /* BWD */
    flx_attention_strides sdout;
    void *dq, *dk, *dv;                    /* BWD: written (see NULL rules above) */
    flx_attention_strides sdq, sdk, sdv;
    void *delta;                           /* BWD: scratch */
    const void *tq, *tk, *tv;              /* JVP: tangents, NULL = zero */
    flx_attention_strides stq, stk, stv;
    void *tout;                            /* JVP: written */
    flx_attention_strides stout;
} flx_attention_args;
/* The stats dtype of lse and delta for data of dtype dt. */
static inline flx_dtype flx_attention_stats_dtype(flx_dtype dt) {
    return dt == FLX_F64 ? FLX_F64 : FLX_F32;
}
/* Same return convention and environment as flx_cuda_lu (scratch through env->alloc, if wanted). */
int flx_cuda_attention(const flx_attention_args *args, const flx_cuda_lib_env *env);

/* ---- fused: a chain of float elementwise ops run as one kernel (runtime/core/fuse.c,
 * runtime/cpu/fused.c, kernels/elementwise.cu) ------------------------------------------------------
 * A tiny register program, interpreted per element over the dense output index space `shape`
 * (already coalesced: ndim >= 1, no size-1 dims). Values live in FLX_FUSED_MAX_SLOTS slots:
 *   LOAD   slot[dst] = in[op][offset of the element in input op]   (bool inputs read as 0/1)
 *   UNARY  slot[dst] = unary formula op (kernels/flx_unary_ops.h) of slot[s0], attributes a, b
 *   BINARY slot[dst] = binary arithmetic formula op of slot[s0], slot[s1]
 *   WHERE  slot[dst] = slot[s0] != 0 ? slot[s1] : slot[s2]
 * Every operand is read before dst is written (dst may reuse an operand's slot). The last
 * instruction's slot is stored to out. Every value has the output dtype (a float dtype) except
 * LOADs of bool inputs; the CPU computes each instruction in double and rounds to the dtype, as
 * the unfused kernels do, so fused and unfused results are bit-identical on each backend.
 * Input layout (in_kind): CONTIG = strides of the dense shape (read at the linear index);
 * SCALAR = one element; STRIDED = in_strides (0 on broadcast axes). */
#define FLX_FUSED_MAX_IN 8
#define FLX_FUSED_MAX_INSTR 24
#define FLX_FUSED_MAX_SLOTS 8
typedef enum flx_fused_kind {
    FLX_FUSED_LOAD, FLX_FUSED_UNARY, FLX_FUSED_BINARY, FLX_FUSED_WHERE
} flx_fused_kind;
typedef enum flx_fused_in_kind {
    FLX_FUSED_IN_CONTIG, FLX_FUSED_IN_SCALAR, FLX_FUSED_IN_STRIDED
} flx_fused_in_kind;
typedef struct flx_fused_instr {
    uint8_t kind, op, dst, s0, s1, s2;
    double a, b;
} flx_fused_instr;
typedef struct flx_fused_args {
    flx_dtype dtype; /* of every value and of out: f32, f64, f16 or bf16 */
    int32_t ndim;
    int64_t shape[FLX_MAX_DIMS];
    int64_t n;
    int32_t n_in, n_instr;
    uint8_t in_bool[FLX_FUSED_MAX_IN]; /* input k is a bool tensor (uint8) */
    uint8_t in_kind[FLX_FUSED_MAX_IN]; /* flx_fused_in_kind */
    int64_t in_strides[FLX_FUSED_MAX_IN][FLX_MAX_DIMS];
    const void *in[FLX_FUSED_MAX_IN];
    void *out;
    flx_fused_instr instr[FLX_FUSED_MAX_INSTR];
} flx_fused_args;
int flx_cuda_fused(const flx_fused_args *args, void *stream);

/* ---- the kernel families -----------------------------------------------------------------------
 * X(ID, name, args type): one entry per family, ordered by concept (creation and conversion,
 * elementwise, data movement, reductions, linear algebra, nn windows, optimisers). This list is the
 * one place a family is named: it generates the backend vtable slots and the family ids
 * (runtime/core/internal.h), the dispatcher flx_kernel_<name> (runtime/core/dispatch.c), the CPU
 * entry points flx_cpu_<name> (runtime/cpu/cpu_common.h) and both backends' tables. */
#define FLX_KERNEL_FAMILIES(X)                                                                    \
    X(FILL, fill, flx_fill_args)                                                                  \
    X(CAST, cast, flx_cast_args)                                                                  \
    X(UNARY, unary, flx_unary_args)                                                               \
    X(BINARY, binary, flx_binary_args)                                                            \
    X(WHERE, where, flx_where_args)                                                               \
    X(FUSED, fused, flx_fused_args)                                                               \
    X(COPY, copy, flx_copy_args)                                                                  \
    X(INDEX, index, flx_index_args)                                                               \
    X(REDUCE, reduce, flx_reduce_args)                                                            \
    X(SOFTMAX, softmax, flx_softmax_args)                                                         \
    X(MATMUL, matmul, flx_matmul_args)                                                            \
    X(GEMM_EX, gemm_ex, flx_gemm_ex_args)                                                         \
    X(LU, lu, flx_lu_args)                                                                        \
    X(EIGH, eigh, flx_eigh_args)                                                                  \
    X(ATTENTION, attention, flx_attention_args)                                                   \
    X(CONV, conv, flx_conv_args)                                                                  \
    X(OPTIM, optim, flx_optim_args)

/* ---- CUDA launch functions (defined only in builds with the CUDA backend) ------------------
 * matmul and gemm_ex have none (the backend calls cuBLAS, cuBLASLt); lu, eigh and index take
 * the library environment above. */
int flx_cuda_fill(const flx_fill_args *args, void *stream);
int flx_cuda_cast(const flx_cast_args *args, void *stream);
int flx_cuda_unary(const flx_unary_args *args, void *stream);
int flx_cuda_binary(const flx_binary_args *args, void *stream);
int flx_cuda_where(const flx_where_args *args, void *stream);
int flx_cuda_copy(const flx_copy_args *args, void *stream);
int flx_cuda_reduce(const flx_reduce_args *args, void *stream);
/* Bytes of scratch flx_cuda_reduce wants for args (0: none); depends on the current device. */
size_t flx_cuda_reduce_scratch_bytes(const flx_reduce_args *args);
/* index_add's sorted path takes its workspace from env->alloc; where that fails (alloc returns
 * NULL, the backend's alloc then leaves no error) it falls back to the scan, which needs none. */
int flx_cuda_index(const flx_index_args *args, const flx_cuda_lib_env *env);

#ifdef __cplusplus
}
#endif

#endif /* FLX_KERNELS_H */
