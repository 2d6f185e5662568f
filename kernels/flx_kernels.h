/*
 * flx_kernels.h — the kernel families: plain-C argument structs shared by the CPU reference
 * kernels (runtime/cpu/) and the CUDA kernels (kernels/ (.cu files)), and the C launch functions of the
 * CUDA kernels. Kernels know nothing of graphs: they see pointers, sizes and strides.
 *
 * Conventions
 *   - Strides and offsets are in elements, not bytes. Outputs are written densely (row-major over
 *     the index space) unless a family says otherwise.
 *   - err (where present) points at the context's device-side error word: a kernel that meets a
 *     bad value (an index out of range) stores a FLX_KERR_* code there and carries on; the runtime
 *     reads the word at the next synchronisation point.
 *   - CUDA launch functions queue work on stream (a cudaStream_t passed as void*) and return 0 or
 *     a cudaError_t value; they never synchronise.
 */
#ifndef FLX_KERNELS_H
#define FLX_KERNELS_H

#include <stdint.h>
#include <stddef.h>

#include "fluxion/fluxion.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Device-side error codes stored in the error word. */
enum { FLX_KERR_NONE = 0, FLX_KERR_INDEX_RANGE = 1 };

/* ---- fill: creation of values ---------------------------------------------------------------
 * CONST: a. IOTA: a + i*b. EYE: 1 where (i / cols) == (i % cols), else 0.
 * UNIFORM: a + (b - a) * u, u in [0, 1). NORMAL: a + b * z, z standard normal.
 * Random values come from Philox4x32-10 with key = seed and counter = i / 4 (kernels/philox.h). */
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
 * a fixed order, no atomics. */
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

/* ---- index: along the middle axis of (outer, n, inner) views ---------------------------------
 * SELECT: out(outer, n_idx, inner)[o, j, i] = src(outer, n_src, inner)[o, idx[j], i].
 * ADD:    out(outer, n_src, inner)[o, t, i] = sum over j with idx[j] == t of
 *         src(outer, n_idx, inner)[o, j, i]  (deterministic: j ascending; the transpose of SELECT).
 * An index outside [0, n_src) reads 0 / is skipped and stores FLX_KERR_INDEX_RANGE in err. */
typedef enum flx_index_mode { FLX_INDEX_SELECT, FLX_INDEX_ADD } flx_index_mode;
typedef struct flx_index_args {
    int32_t mode;
    flx_dtype dtype, idx_dtype;
    int64_t outer, n_src, n_idx, inner;
    const void *src;
    const void *idx;
    void *out;
    int32_t *err;
} flx_index_args;

/* ---- CUDA launch functions (defined only in builds with the CUDA backend) ------------------ */
int flx_cuda_fill(const flx_fill_args *args, void *stream);
int flx_cuda_cast(const flx_cast_args *args, void *stream);
int flx_cuda_unary(const flx_unary_args *args, void *stream);
int flx_cuda_binary(const flx_binary_args *args, void *stream);
int flx_cuda_where(const flx_where_args *args, void *stream);
int flx_cuda_copy(const flx_copy_args *args, void *stream);
int flx_cuda_reduce(const flx_reduce_args *args, void *stream);
int flx_cuda_index(const flx_index_args *args, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* FLX_KERNELS_H */
