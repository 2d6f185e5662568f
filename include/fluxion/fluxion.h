/*
 * fluxion.h — the one public header of fluxion, a GPU tensor automatic-differentiation runtime.
 *
 * Model of use
 *   - A context (flx_ctx) per device and thread owns the stream, the allocator, library handles
 *     and the random-number state. Tensors of two contexts never mix: ops reject them.
 *   - Tensors are opaque, reference-counted handles. Ops are lazy: they record a graph node with
 *     its shape and dtype inferred at once, and the work runs when data is needed (flx_to_host,
 *     flx_eval, flx_backward, flx_assign).
 *   - Ownership: every function that returns a flx_tensor* returns a new reference. Inside a
 *     scope (flx_scope_begin) the scope owns it and releases it at flx_scope_end unless kept;
 *     outside any scope the caller owns it and calls flx_release.
 *   - Errors never abort. A failing op returns NULL and sets a per-thread status and message
 *     naming the op, the shapes and dtypes. An op given a NULL input returns NULL and keeps the
 *     first error, so a chain of calls can be checked once at its end. Errors only the device can
 *     see are reported at the next synchronisation point (a read to the host, flx_ctx_synchronize).
 *   - Memory: an intermediate's buffer is freed as soon as its last consumer in an evaluation has
 *     run. A tensor whose data was requested (flx_eval, flx_to_host, a leaf, a gradient) keeps its
 *     buffer while the caller holds a handle; an intermediate whose buffer was freed is recomputed
 *     from its inputs if it is read later.
 *
 * Thread safety: distinct contexts may be used from distinct threads at once. One context, and
 * every tensor of it, must be used by one thread at a time. Error state, scopes and no-grad mode
 * are per thread. Functions without a context (flx_version, flx_has_cuda, flx_cuda_device_*,
 * flx_live_tensors, dtype and status names) may be called from any thread at any time; the
 * library's process-wide state is initialised once and is thread-safe (tests/test_threads.cc).
 */
#ifndef FLUXION_H
#define FLUXION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLX_VERSION_MAJOR 0
#define FLX_VERSION_MINOR 1
#define FLX_VERSION_PATCH 0

#if defined(_WIN32)
#define FLX_API
#elif defined(FLX_BUILDING_LIBRARY)
#define FLX_API __attribute__((visibility("default")))
#else
#define FLX_API
#endif

/* Most dimensions a tensor may have. */
#define FLX_MAX_DIMS 8

/* ---------------------------------------------------------------------------------------------
 * Status and errors
 * ------------------------------------------------------------------------------------------- */
typedef enum flx_status {
    FLX_OK = 0,
    FLX_ERR_INVALID_ARGUMENT = 1, /* NULL handle, bad axis, bad range, bad flag          */
    FLX_ERR_SHAPE = 2,            /* shapes that do not fit the op                       */
    FLX_ERR_DTYPE = 3,            /* a dtype the op does not take, or mismatched dtypes  */
    FLX_ERR_DEVICE = 4,           /* tensors of different contexts, or no such device    */
    FLX_ERR_OUT_OF_MEMORY = 5,    /* allocation failed after the cache was freed         */
    FLX_ERR_BACKEND = 6,          /* the CUDA runtime or a CUDA library reported failure */
    FLX_ERR_NOT_DIFFERENTIABLE = 7, /* backward through an op without a rule, or no path */
    FLX_ERR_UNSUPPORTED = 8,      /* valid request that this build cannot serve          */
    FLX_ERR_STATE = 9,            /* misuse of state: unbalanced scopes, in-place change */
    FLX_ERR_NUMERIC = 10,         /* a check on values failed (gradcheck, singular input) */
    FLX_ERR_TIMEOUT = 11          /* other processes did not join a collective in time    */
} flx_status;

/* Status of the last failing call on this thread (FLX_OK if none since flx_clear_error). */
FLX_API flx_status flx_last_status(void);
/* Message of the last failing call on this thread ("" if none). Valid until the next error. */
FLX_API const char *flx_last_error(void);
/* Clears this thread's error state. */
FLX_API void flx_clear_error(void);
/* Constant name of a status ("FLX_ERR_SHAPE", ...). */
FLX_API const char *flx_status_string(flx_status s);

/* ---------------------------------------------------------------------------------------------
 * Dtypes and devices
 * ------------------------------------------------------------------------------------------- */
typedef enum flx_dtype {
    FLX_F32 = 0,
    FLX_F64 = 1,
    FLX_I32 = 2,
    FLX_I64 = 3,
    FLX_BOOL = 4, /* one byte per element, 0 or 1: masks and comparison results */
    FLX_F16 = 5,  /* IEEE binary16: 11 significant bits, max 65504              */
    FLX_BF16 = 6, /* bfloat16: f32's range, 8 significant bits                   */
    FLX_DTYPE_COUNT
} flx_dtype;
/* Half precision (f16, bf16) is a storage format: every op on halves computes in at least f32
 * (the CPU backend in double) and rounds once to the output dtype, to nearest with ties to even
 * (overflow gives +-inf, NaN stays NaN). Reductions, softmax, log-softmax, cross-entropy, matmul
 * and convolution accumulate in f32 or wider (the CPU in double); layer norm and batch norm
 * compute in f32 and round their result once; cross-entropy keeps its per-row losses and row
 * count in f32. Ops built from several ops (losses, layers) round each intermediate result.
 * Gradients and tangents have their input's dtype. Casts convert between every pair of dtypes
 * (to a half: rounded to nearest even; from a half to an integer: truncation toward zero,
 * saturated, NaN -> 0, as from any float). Promotion: see the binary ops (f16 with bf16 is f32).
 * The linear-algebra ops (det, logdet, slogdet, inv, solve, eigh, expm) take f32 and f64 only
 * and refuse halves with FLX_ERR_DTYPE: an LU or an eigensolver in 8 or 11 bits gives noise. */

/* Bytes per element (0 for an invalid dtype). */
FLX_API size_t flx_dtype_size(flx_dtype dt);
/* "f32", "f64", "i32", "i64", "bool", "f16", "bf16" or "invalid". */
FLX_API const char *flx_dtype_name(flx_dtype dt);

typedef enum flx_device_type { FLX_DEVICE_CPU = 0, FLX_DEVICE_CUDA = 1 } flx_device_type;
typedef struct flx_device {
    flx_device_type type;
    int32_t index; /* CUDA device ordinal; 0 for the CPU */
} flx_device;

FLX_API flx_device flx_device_cpu(void);
FLX_API flx_device flx_device_cuda(int32_t index);

/* True when this library was built with the CUDA backend (whether or not a GPU is present). */
FLX_API bool flx_has_cuda(void);
/* Number of usable CUDA devices (0 without a GPU, a driver, or CUDA support). Never fails. */
FLX_API int32_t flx_cuda_device_count(void);
/* Library version as "MAJOR.MINOR.PATCH". */
FLX_API const char *flx_version(void);

/* Device feature query */
typedef struct flx_cuda_device_props {
    char name[256];              /* e.g. "NVIDIA H100 80GB HBM3" (NUL-terminated)        */
    int32_t major, minor;        /* compute capability, e.g. 9 and 0                     */
    uint64_t total_memory;       /* bytes of device memory                               */
    int32_t multiprocessors;     /* streaming multiprocessor count                      */
} flx_cuda_device_props;
/* Fills *out for CUDA device index. FLX_ERR_UNSUPPORTED in a build without the CUDA backend,
 * FLX_ERR_DEVICE when no such device is usable (no GPU, no driver, index out of range),
 * FLX_ERR_INVALID_ARGUMENT for a NULL out. *out is zeroed on every error. */
FLX_API flx_status flx_cuda_device_info(int32_t index, flx_cuda_device_props *out);

/* ---------------------------------------------------------------------------------------------
 * Contexts
 * ------------------------------------------------------------------------------------------- */
typedef struct flx_ctx flx_ctx;
typedef struct flx_tensor flx_tensor;

/* Creates a context on a device; NULL with FLX_ERR_DEVICE if the device does not exist (the CPU
 * is device 0 only). */
FLX_API flx_ctx *flx_ctx_create(flx_device dev);
/* Destroys a context. Every tensor of it must have been released first; otherwise the context
 * is not destroyed, FLX_ERR_STATE is returned and the count of live tensors is in the message. */
FLX_API flx_status flx_ctx_destroy(flx_ctx *ctx);
FLX_API flx_device flx_ctx_device(const flx_ctx *ctx);
/* Waits for all queued work; reports device-side errors raised since the last check. */
FLX_API flx_status flx_ctx_synchronize(flx_ctx *ctx);

/* Counters of a context, for tests and profiling. Copies and syncs count host-visible
 * transfers and host waits; on the CPU backend they stay 0. */
typedef struct flx_ctx_stats {
    uint64_t h2d_copies;       /* host -> device copies                          */
    uint64_t d2h_copies;       /* device -> host copies                          */
    uint64_t syncs;            /* host waits on the device                       */
    uint64_t kernels;          /* kernel-family calls queued                     */
    uint64_t allocs;           /* buffers obtained from the allocator            */
    uint64_t frees;            /* buffers returned to the allocator              */
    uint64_t bytes_in_use;     /* bytes of live buffers now                      */
    uint64_t peak_bytes;       /* most bytes_in_use since the last reset         */
    uint64_t nodes_executed;   /* graph nodes run by the evaluator               */
    uint64_t nodes_fused;      /* of nodes_executed, those computed inside a fused
                                  kernel: elementwise, or a dense layer's GEMM
                                  (flx_set_fusion)                               */
} flx_ctx_stats;
FLX_API flx_status flx_ctx_get_stats(const flx_ctx *ctx, flx_ctx_stats *out);
/* Zeroes the counters; peak_bytes restarts from bytes_in_use. */
FLX_API flx_status flx_ctx_reset_stats(flx_ctx *ctx);

/* ---------------------------------------------------------------------------------------------
 * Tensor handles and scopes
 * ------------------------------------------------------------------------------------------- */
/* Adds a reference (returns t; NULL-safe). */
FLX_API flx_tensor *flx_retain(flx_tensor *t);
/* Drops a reference (NULL-safe).
 * Misuse is reported, never undefined: releasing a tensor an open scope owns (without a reference
 * of the caller's own from flx_retain or a keep list), releasing twice, and using a handle after
 * its last release set FLX_ERR_STATE and do nothing (the scope still releases its tensor at
 * flx_scope_end). Every function taking a tensor checks the handle the same way (ops return
 * NULL). A destroyed tensor's memory is held back for the next few thousand destructions so the
 * check reads valid memory; a handle older than that cannot be told from freed memory. */
FLX_API void flx_release(flx_tensor *t);
/* Number of tensor objects alive in the process (handles and graph nodes), for leak checks. */
FLX_API int64_t flx_live_tensors(void);

FLX_API int32_t flx_ndim(const flx_tensor *t);      /* -1 for NULL          */
FLX_API int64_t flx_dim(const flx_tensor *t, int32_t axis); /* negative axes count from the end; -1 on error */
FLX_API const int64_t *flx_shape(const flx_tensor *t); /* ndim entries; NULL for NULL */
FLX_API int64_t flx_numel(const flx_tensor *t);     /* -1 for NULL          */
FLX_API flx_dtype flx_dtype_of(const flx_tensor *t); /* FLX_DTYPE_COUNT for NULL */
FLX_API flx_ctx *flx_ctx_of(const flx_tensor *t);
/* True when the tensor's data is present (computed and not freed). */
FLX_API bool flx_is_realized(const flx_tensor *t);

/* Scopes: every tensor returned inside a scope is owned by it and released by the matching
 * flx_scope_end, except the n_keep tensors in keep, which move to the enclosing scope (or, at the
 * outermost level, to the caller, who must release them). Scopes nest, per thread. */
FLX_API flx_status flx_scope_begin(void);
FLX_API flx_status flx_scope_end(int32_t n_keep, flx_tensor *const *keep);
/* Number of scopes open on this thread (0 outside any scope): whether a tensor returned now is
 * owned by a scope. Wrappers that keep their own reference (fluxion.hpp) flx_retain a result
 * when this is > 0, and then never release the scope's reference. */
FLX_API int32_t flx_scope_depth(void);

/* ---------------------------------------------------------------------------------------------
 * Creation and transfer
 * Shapes are given as (ndim, shape); ndim == 0 makes a 0-d tensor and shape may be NULL then.
 * ------------------------------------------------------------------------------------------- */
FLX_API flx_tensor *flx_zeros(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape);
FLX_API flx_tensor *flx_ones(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape);
FLX_API flx_tensor *flx_full(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                             double value);
/* 0-d tensor holding value. */
FLX_API flx_tensor *flx_scalar(flx_ctx *ctx, flx_dtype dt, double value);
/* n x m identity (ones on the main diagonal). */
FLX_API flx_tensor *flx_eye(flx_ctx *ctx, flx_dtype dt, int64_t n, int64_t m);
/* 1-d [start, start+step, ...) below stop (above stop for step < 0); step != 0. */
FLX_API flx_tensor *flx_arange(flx_ctx *ctx, flx_dtype dt, double start, double stop, double step);
/* Counter-based (Philox4x32-10) random numbers: element i of a tensor made with seed s is the
 * same on every backend (up to the last bits of the float math of the transform). */
FLX_API flx_tensor *flx_uniform(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                double lo, double hi, uint64_t seed);
FLX_API flx_tensor *flx_normal(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                               double mean, double std, uint64_t seed);
/* Standard normal: flx_normal(..., 0, 1, seed). */
FLX_API flx_tensor *flx_randn(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                              uint64_t seed);
/* Copies numel * dtype_size bytes from host memory (row-major). */
FLX_API flx_tensor *flx_from_host(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                  const void *data);
/* Computes t if needed and copies its data (row-major) to dst, which holds nbytes; nbytes must be
 * at least numel * dtype_size. Waits for the device; reports pending device-side errors. */
FLX_API flx_status flx_to_host(flx_tensor *t, void *dst, size_t nbytes);
/* The single element of a tensor with numel 1, converted to double. */
FLX_API flx_status flx_item(flx_tensor *t, double *out);
/* Dtype conversion on the way in and out, with flx_cast's rules (float -> int truncates toward
 * zero and saturates, NaN -> 0; to bool: x != 0; int -> float and to f16/bf16 round to nearest
 * even), done on the host
 * (no device memory, no graph node).
 * flx_to_host_as: like flx_to_host, but writes the elements as host_dt (dst holds nbytes >=
 *   numel * flx_dtype_size(host_dt)); host_dt == the tensor's dtype is flx_to_host.
 * flx_from_host_as: a tensor of dtype dt (a CONST leaf, like flx_from_host) from numel elements of
 *   type host_dt at data; host_dt == dt is flx_from_host.
 * Errors: FLX_ERR_DTYPE for an invalid dtype, FLX_ERR_INVALID_ARGUMENT for
 * NULL pointers or a too small dst, as flx_to_host / flx_from_host otherwise. */
FLX_API flx_status flx_to_host_as(flx_tensor *t, flx_dtype host_dt, void *dst, size_t nbytes);
FLX_API flx_tensor *flx_from_host_as(flx_ctx *ctx, flx_dtype dt, int32_t ndim,
                                     const int64_t *shape, flx_dtype host_dt, const void *data);
/* A copy of t on another context (any pair of devices), lazy like every op: the copy runs when
 * the result is evaluated, and that evaluation reads t (and computes it if needed) on t's
 * context. So while the result is unevaluated it ties the two contexts together: when they are
 * used by different threads, evaluate the result (flx_eval) at a point where neither context is
 * in use elsewhere, before either thread goes on with it. Gradients flow back through the
 * copy (to t's context). */
FLX_API flx_tensor *flx_to_ctx(flx_tensor *t, flx_ctx *dst);
/* Converts elements to another dtype (float -> int truncates toward zero and saturates to the
 * integer's range, NaN -> 0, the same on every backend; to bool: x != 0; to f16/bf16: rounded to
 * nearest even, beyond the range: +-inf). */
FLX_API flx_tensor *flx_cast(flx_tensor *t, flx_dtype dt);

/* Computes every tensor in ts (one evaluation, so shared work runs once) and keeps their data. */
FLX_API flx_status flx_eval(int32_t n, flx_tensor *const *ts);
/* In-place update of a leaf: dst takes the value of src (same shape, dtype and context). src is
 * computed first. Graph nodes that read dst's old value and have not run yet, or must be
 * recomputed, fail with FLX_ERR_STATE naming the call that changed dst (flx_assign,
 * flx_optim_step, flx_plan_run). A dtype mismatch is FLX_ERR_DTYPE, a shape mismatch
 * FLX_ERR_SHAPE. dst keeps requires_grad. */
FLX_API flx_status flx_assign(flx_tensor *dst, flx_tensor *src);

/* ---------------------------------------------------------------------------------------------
 * Elementwise unary ops (f32, f64, f16, bf16; neg and abs also i32, i64, exact in integer
 * arithmetic).
 * Derivative conventions at kinks: abs'(0) = 0, relu'(0) = 0, clamp' = 1 strictly inside
 * (lo, hi) and 0 elsewhere. NaN propagates as in numpy: relu, sign, clamp, leaky_relu, elu of
 * NaN are NaN, and so are the derivatives of relu, leaky_relu, elu, abs and clamp at NaN.
 * ------------------------------------------------------------------------------------------- */
FLX_API flx_tensor *flx_neg(flx_tensor *x);
FLX_API flx_tensor *flx_abs(flx_tensor *x);
FLX_API flx_tensor *flx_sign(flx_tensor *x);       /* -1, 0, 1 (NaN for NaN); zero gradient */
FLX_API flx_tensor *flx_square(flx_tensor *x);
FLX_API flx_tensor *flx_sqrt(flx_tensor *x);
FLX_API flx_tensor *flx_rsqrt(flx_tensor *x);      /* 1/sqrt(x) */
FLX_API flx_tensor *flx_reciprocal(flx_tensor *x);
FLX_API flx_tensor *flx_exp(flx_tensor *x);
FLX_API flx_tensor *flx_log(flx_tensor *x);
FLX_API flx_tensor *flx_log1p(flx_tensor *x);
FLX_API flx_tensor *flx_sin(flx_tensor *x);
FLX_API flx_tensor *flx_cos(flx_tensor *x);
FLX_API flx_tensor *flx_tanh(flx_tensor *x);
FLX_API flx_tensor *flx_cosh(flx_tensor *x);
FLX_API flx_tensor *flx_sinh(flx_tensor *x);
FLX_API flx_tensor *flx_erf(flx_tensor *x);
FLX_API flx_tensor *flx_sigmoid(flx_tensor *x);
FLX_API flx_tensor *flx_relu(flx_tensor *x);
FLX_API flx_tensor *flx_leaky_relu(flx_tensor *x, double slope);     /* x > 0 ? x : slope*x */
FLX_API flx_tensor *flx_elu(flx_tensor *x, double alpha);            /* x > 0 ? x : alpha*(e^x-1) */
FLX_API flx_tensor *flx_gelu(flx_tensor *x);        /* exact: x * Phi(x) = x/2 (1 + erf(x/sqrt 2)) */
FLX_API flx_tensor *flx_softplus(flx_tensor *x);    /* log(1 + e^x), stable for large |x|     */
FLX_API flx_tensor *flx_pow_scalar(flx_tensor *x, double p);         /* x^p                    */
FLX_API flx_tensor *flx_clamp(flx_tensor *x, double lo, double hi);  /* lo <= hi               */
/* a*x + b in one op (used widely by derivative rules). */
FLX_API flx_tensor *flx_affine(flx_tensor *x, double a, double b);
FLX_API flx_tensor *flx_mul_scalar(flx_tensor *x, double a);
FLX_API flx_tensor *flx_add_scalar(flx_tensor *x, double b);

/* ---------------------------------------------------------------------------------------------
 * Elementwise binary ops with NumPy broadcasting. Both inputs have one context.
 * Dtype promotion (PyTorch's rule for two tensors): inputs of different dtypes are computed in
 * the higher of bool < i32 < i64 < f16, bf16 < f32 < f64, the other input cast to it first (so
 * i64 * f32 is f32, f32 + f64 is f64, bool * f64 is f64, bf16 * f32 is f32, i64 * bf16 is bf16);
 * f16 with bf16 is computed in f32 (neither holds the other). The gradient flows back through
 * that cast to the input's own dtype. Arithmetic: f32, f64, f16, bf16 (add, sub, mul, maximum,
 * minimum also i32, i64).
 * Comparisons take every dtype but bool and return FLX_BOOL; they have no gradient.
 * maximum/minimum propagate NaN from either side (numpy) and send the gradient to the input the
 * value came from: a on ties and where a is NaN, b where only b is NaN.
 * ------------------------------------------------------------------------------------------- */
FLX_API flx_tensor *flx_add(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_sub(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_mul(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_div(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_pow(flx_tensor *a, flx_tensor *b);  /* a^b; d/db uses log(a), a > 0 */
FLX_API flx_tensor *flx_maximum(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_minimum(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_eq(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_ne(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_lt(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_le(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_gt(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_ge(flx_tensor *a, flx_tensor *b);
/* cond ? a : b, broadcasting all three; cond is FLX_BOOL. Gradient flows to a and b. */
FLX_API flx_tensor *flx_where(flx_tensor *cond, flx_tensor *a, flx_tensor *b);

/* ---------------------------------------------------------------------------------------------
 * Reductions over a set of axes. (n_axes, axes) lists distinct axes, negative ones counting from
 * the end; n_axes == 0 reduces over every axis. keepdims keeps reduced axes with size 1.
 * Reducing an empty set of elements: sum -> 0, mean/var -> NaN, max/min/logsumexp/argmax -> error.
 * A NaN among the values makes max/min NaN, and argmax the index of the first NaN (numpy).
 * The sum of a bool tensor counts its true values as an i64.
 * ------------------------------------------------------------------------------------------- */
FLX_API flx_tensor *flx_sum(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims);
FLX_API flx_tensor *flx_mean(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims);
/* Gradient of max/min is shared equally among tied maxima (minima). */
FLX_API flx_tensor *flx_max(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims);
FLX_API flx_tensor *flx_min(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims);
FLX_API flx_tensor *flx_logsumexp(flx_tensor *x, int32_t n_axes, const int32_t *axes,
                                  bool keepdims);
/* sum((x - mean)^2) / (N - correction); correction 0 is the population variance, 1 unbiased. */
FLX_API flx_tensor *flx_var(flx_tensor *x, int32_t n_axes, const int32_t *axes, bool keepdims,
                            int32_t correction);
/* Index (FLX_I64) of the first maximum along one axis. */
FLX_API flx_tensor *flx_argmax(flx_tensor *x, int32_t axis, bool keepdims);
/* Convenience: sum over every axis to a 0-d tensor. */
FLX_API flx_tensor *flx_sum_all(flx_tensor *x);
FLX_API flx_tensor *flx_mean_all(flx_tensor *x);

/* ---------------------------------------------------------------------------------------------
 * Shape and indexing ops. Results are new tensors (reshape of a computed tensor shares its
 * buffer). Axes may be negative.
 * ------------------------------------------------------------------------------------------- */
/* One entry of shape may be -1 (inferred). */
FLX_API flx_tensor *flx_reshape(flx_tensor *x, int32_t ndim, const int64_t *shape);
/* perm is a permutation of 0..ndim-1: out.shape[i] = x.shape[perm[i]]. */
FLX_API flx_tensor *flx_permute(flx_tensor *x, const int32_t *perm);
FLX_API flx_tensor *flx_transpose(flx_tensor *x, int32_t axis0, int32_t axis1);
/* NumPy broadcasting of x to shape. */
FLX_API flx_tensor *flx_broadcast_to(flx_tensor *x, int32_t ndim, const int64_t *shape);
/* Elements start, start+step, ... before stop along axis (Python slice semantics, step > 0,
 * start/stop clamped to [0, dim] after adding dim to negative values). */
FLX_API flx_tensor *flx_slice(flx_tensor *x, int32_t axis, int64_t start, int64_t stop,
                              int64_t step);
FLX_API flx_tensor *flx_concat(int32_t n, flx_tensor *const *xs, int32_t axis);
FLX_API flx_tensor *flx_stack(int32_t n, flx_tensor *const *xs, int32_t axis);
/* Removes axis, which must have size 1. */
FLX_API flx_tensor *flx_squeeze(flx_tensor *x, int32_t axis);
/* Inserts a size-1 axis at position axis of the result (-1 appends). */
FLX_API flx_tensor *flx_unsqueeze(flx_tensor *x, int32_t axis);
/* out = x with axis indexed by the 1-d integer tensor index (i32 or i64): out[.., j, ..] =
 * x[.., index[j], ..]. Out-of-range indices are reported at the next synchronisation point and
 * read as 0 meanwhile. */
FLX_API flx_tensor *flx_index_select(flx_tensor *x, int32_t axis, flx_tensor *index);
/* Alias of flx_index_select (gather along one axis with a 1-d index). */
FLX_API flx_tensor *flx_gather(flx_tensor *x, int32_t axis, flx_tensor *index);
/* out[..., c] = (index[...] == c) as dt (f32/f64/f16/bf16/i32/i64), num_classes > 0. */
FLX_API flx_tensor *flx_one_hot(flx_tensor *index, int64_t num_classes, flx_dtype dt);
/* Constant padding: pads holds 2*ndim entries (before_0, after_0, before_1, after_1, ...), each
 * >= 0. */
FLX_API flx_tensor *flx_pad(flx_tensor *x, const int64_t *pads, double value);

/* ---------------------------------------------------------------------------------------------
 * Linear algebra
 * ------------------------------------------------------------------------------------------- */
/* NumPy matmul: (..., m, k) @ (..., k, n) with broadcast batch dims; a 1-d left operand is a
 * row vector, a 1-d right operand a column vector (that axis is removed from the result). f32,
 * f64, f16, bf16 (halves accumulate in f32 or wider, rounded once). cuBLAS on CUDA (strict f32,
 * no TF32 unless asked for). */
FLX_API flx_tensor *flx_matmul(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_dot(flx_tensor *a, flx_tensor *b);    /* 1-d . 1-d -> 0-d  */
FLX_API flx_tensor *flx_outer(flx_tensor *a, flx_tensor *b);  /* (n), (m) -> (n, m) */
FLX_API flx_tensor *flx_trace(flx_tensor *a);                 /* 2-d -> 0-d        */
/* 1-d v -> square matrix with v on the diagonal. */
FLX_API flx_tensor *flx_diag(flx_tensor *v);
/* 2-d (n, m) -> 1-d main diagonal of length min(n, m). */
FLX_API flx_tensor *flx_diagonal(flx_tensor *a);

/* ---- LU family: batched over leading dims, f32/f64, A (..., n, n) square -------------
 * One LU factorisation with partial pivoting (cuSOLVER/cuBLAS or a register kernel for n <= 8 on
 * CUDA; plain LU in double on the CPU) serves each op's value and its derivatives (solves with
 * the saved factors). Non-square A, rank < 2 or mismatched batch dims fail when the op is built.
 * Derivatives treat every entry of A as free (d ln det X = X^-T, not the symmetric form).
 *   det:    (...) determinant, the product of the LU pivots: exactly 0 when a pivot is exactly
 *           0 (e.g. [[1, 2, 3], [2, 4, 6], [1, 1, 1]]); a matrix singular only in exact arithmetic
 *           usually gets a tiny value from rounding ([[1, 2, 3], [4, 5, 6], [7, 8, 9]]: 6.7e-16,
 *           as in LAPACK and NumPy). The gradient is the cofactor matrix adj(A)^T (computed
 *           without dividing by det: finite and exact at rank n-1).
 *           Second derivatives of det are valid only at nonsingular A.
 *   logdet: log det A: NaN where det < 0, -inf where det == 0. Gradient A^-T.
 *   slogdet: *sign = sign(det) (-1, 0, 1; no gradient), *logabsdet = log|det| (gradient A^-T).
 *   inv:    A^-1. solve: X with A X = B, B (..., n) (a vector per matrix) or (..., n, k) with A's
 *           batch dims. An exactly singular A (a zero pivot) is reported at the next
 *           synchronisation point as FLX_ERR_NUMERIC (values are then inf/NaN); nearly singular
 *           input is not detected (as in LAPACK).
 *   _ex:    the same without the report: *info (i32, batch shape) is 0, or k > 0 when U(k-1, k-1)
 *           of the LU is exactly zero. n == 0: det 1, logdet 0, inv/solve empty. */
FLX_API flx_tensor *flx_det(flx_tensor *a);
FLX_API flx_tensor *flx_logdet(flx_tensor *a);
FLX_API flx_status flx_slogdet(flx_tensor *a, flx_tensor **sign, flx_tensor **logabsdet);
FLX_API flx_tensor *flx_inv(flx_tensor *a);
FLX_API flx_tensor *flx_solve(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_inv_ex(flx_tensor *a, flx_tensor **info);
FLX_API flx_tensor *flx_solve_ex(flx_tensor *a, flx_tensor *b, flx_tensor **info);
/* Entrywise p-norm over axes (n_axes == 0: every axis), f32/f64: p = 1 (sum |x|), 2 (Euclidean;
 * over a matrix's two axes the Frobenius norm), INFINITY (max |x|) or any p >= 1. Gradient at a
 * zero norm: the subgradient 0 (never NaN). The norm of an empty set is 0. */
FLX_API flx_tensor *flx_norm(flx_tensor *x, double p, int32_t n_axes, const int32_t *axes,
                             bool keepdims);
/* ---- expm / eigh (runtime/ops/expm.c, runtime/ops/eigh.c) ----------------------------
 * expm(A): matrix exponential of (..., n, n), f32/f64, batched. Scaling and squaring with a
 * diagonal Pade approximant [m/m] (Higham 2005): m = 13 for f64, m = 7 for f32, with
 * s = ceil(log2(b / theta_m)) squarings for b = max(||A||_1, ||A||_inf) of each matrix.
 * Backward stable in exact-arithmetic terms (Higham's bound); tested against a float64 Taylor
 * reference to 1e-12 (f64) and 2e-5 (f32) relative to max|exp(A)|. Nothing is read on the host:
 * s is chosen on the device (a fixed loop of predicated squarings), so a graph or plan built
 * with expm is right for every input it runs on, and building never waits for the device. The
 * loop covers b up to ~5.9e12 (f64) and ~6.6e7 (f32); a matrix beyond that gives NaN.
 * Derivatives are exact (Frechet derivative, Mathias' block form): VJP = upper-right block of
 * expm([[A^T, G], [0, A^T]]), JVP = upper-right block of expm([[A, E], [0, A]]), built with
 * concat/slice and expm itself, so they differentiate again (to any order).
 * n == 0 or an empty batch: an empty result. Non-square or rank < 2: FLX_ERR_SHAPE. */
FLX_API flx_tensor *flx_expm(flx_tensor *a);
/* eigh(A): symmetric eigendecomposition of (..., n, n), f32/f64, batched. Uses the symmetric
 * part S = (A + A^T)/2 (for symmetric A that is A): *w (..., n) ascending eigenvalues, *v (..., n,
 * n) orthonormal eigenvectors in columns (S V = V diag(w)); each column's largest-magnitude entry
 * is made positive. CPU: cyclic Jacobi in double; CUDA: cuSOLVER syevd (one matrix) or
 * syevjBatched (n <= 32, many matrices). Non-convergence (non-finite input) is reported at the
 * next synchronisation point as FLX_ERR_NUMERIC.
 * Derivatives, for the map A -> eigh((A + A^T)/2) (so gradients are symmetric):
 *   VJP  gA = sym(V (diag(gw) + F o (V^T gV)) V^T), F_ij = 1/(w_j - w_i) (i != j), F_ii = 0;
 *   JVP  K = V^T dS V, dw = diag(K), dV = V (F o K), dS = (dA + dA^T)/2.
 * Repeated (or nearly repeated) eigenvalues: the eigenvalue derivatives are fine only when the
 * function is symmetric in the tied ones; the eigenvector derivative is UNSUPPORTED there (F is
 * infinite; results are inf/NaN). w or v may be NULL when not wanted (not both). */
FLX_API flx_status flx_eigh(flx_tensor *a, flx_tensor **w, flx_tensor **v);

/* ---- softmax family (runtime/ops/softmax.c, kernels/softmax.cu) ---------------------
 * softmax(x / T) and log_softmax(x / T) along one axis (negative counts from the end) of a float
 * tensor (f32, f64, f16, bf16; halves computed in f32 or wider) with at least one axis; temperature T is a plain scale of the logits, finite and
 * > 0. Numerically stable (max-subtracted, so logits of +-1e4 do not overflow in f32).
 * Non-finite inputs: -inf entries get probability 0 (log-probability -inf) as long as the row
 * has a finite entry; a row whose entries are ALL -inf gives NaN in every entry (0/0); a +inf or
 * NaN entry makes its whole row NaN. Any row length (1 to 2^20 and beyond) and any axis: on CUDA
 * the last axis uses row kernels, another axis a strided kernel (no transpose).
 * Derivatives: VJP and JVP are one dedicated kernel each (softmax: s y (v - <y, v>); log_softmax:
 * s (g - softmax sum(g)) and s (t - <softmax, t>), s = 1/T), itself differentiable to any order. */
FLX_API flx_tensor *flx_softmax(flx_tensor *x, int32_t axis, double temperature);
FLX_API flx_tensor *flx_log_softmax(flx_tensor *x, int32_t axis, double temperature);

/* (flx_cross_entropy, the fused loss of this family, is declared after flx_reduction in the
 * "Losses" block below.) */

/* ---- attention (runtime/ops/attention.c, kernels/attention.cu) -----------------------------
 * Scaled dot-product attention: o = softmax(scale q k^T + mask) v per (batch, head), for
 * q (B, H, S, D), k (B, H, T, D), v (B, H, T, Dv) of one float dtype (f32, f64, f16, bf16) and
 * context; o is (B, H, S, Dv). scale: finite and > 0, or 0 meaning 1/sqrt(D) (1 when D == 0).
 * causal: query i sees keys j <= i + (T - S) (bottom-right aligned, as FlashAttention 2; S == T is
 * the usual lower triangle). A row that sees no key (causal with i < S - T, or T == 0) outputs 0,
 * and its gradient and tangent are 0. One fused kernel per pass, never storing the S x T scores:
 * the forward keeps the rows' logsumexp (f32; f64 for f64 data) when a gradient may follow; the
 * VJP recomputes the probabilities from it (deterministic, no atomics), and the JVP is one
 * fused pass of its own (the softmax JVP inside the online softmax), so flx_jvp and
 * forward-over-reverse HVPs run fused. Second and higher derivatives are compositions of
 * matmul and softmax that do store S x T per (batch, head). Views are read in place: when q, k
 * and v are slices, reshapes and permutes (not yet evaluated) of one tensor X that together they
 * cover exactly once -- the heads of a fused QKV projection, e.g. X (B T, 3 C) sliced into
 * thirds, reshaped to (B, T, H, D) and permuted to (B, H, T, D) -- the kernels read X with
 * strides (no copies), and the first-order gradient is written straight into X's layout (no
 * permute, pad or sum). Other views are copied first. Errors: FLX_ERR_DTYPE (non-float or
 * mixed dtypes), FLX_ERR_SHAPE (not rank 4, sizes that do not fit), FLX_ERR_DEVICE (two contexts),
 * FLX_ERR_INVALID_ARGUMENT (scale negative or not finite). */
FLX_API flx_tensor *flx_attention(flx_tensor *q, flx_tensor *k, flx_tensor *v, bool causal,
                                  double scale);

/* ---------------------------------------------------------------------------------------------
 * Autodiff
 * ------------------------------------------------------------------------------------------- */
/* Marks a tensor as a leaf that collects gradients (float dtypes only). Making an op result require
 * grad computes and detaches it first: it becomes a leaf holding its value. */
FLX_API flx_status flx_set_requires_grad(flx_tensor *t, bool requires_grad);
FLX_API bool flx_requires_grad(const flx_tensor *t);
/* The accumulated gradient of a leaf (a new reference), or NULL with FLX_OK status if none. */
FLX_API flx_tensor *flx_grad(flx_tensor *t);
/* Forgets the accumulated gradient of a leaf. */
FLX_API flx_status flx_zero_grad(flx_tensor *t);
/* Reverse mode from a tensor with one element: adds d loss / d leaf to the .grad of every leaf
 * that requires grad and that loss depends on, and computes loss too. On a CUDA context the
 * whole pass is device work: no host copies, no host waits. */
FLX_API flx_status flx_backward(flx_tensor *loss);
/* Vector-Jacobian products as lazy tensors: grads_out[j] = sum_i d<cot_i, out_i>/d inputs[j].
 * cotangents may be NULL when every output has one element (ones are used); an entry of it may
 * be NULL likewise. Inputs the outputs do not depend on get zeros. With create_graph the results
 * are themselves differentiable (higher-order derivatives); without, they are not. */
FLX_API flx_status flx_grad_of(int32_t n_out, flx_tensor *const *outputs,
                               flx_tensor *const *cotangents, int32_t n_in,
                               flx_tensor *const *inputs, bool create_graph,
                               flx_tensor **grads_out);
/* Forward mode (Jacobian-vector products) as lazy tensors: tangents_out[k] is the directional
 * derivative of outputs[k] at the recorded graph when inputs[j] moves along tangents[j] (a
 * tangent has its input's shape and dtype; a NULL tangent is zero). Outputs that do not depend on
 * the inputs get zeros. Inputs need not require grad. Results are differentiable in turn (JVP of
 * a VJP, VJP of a JVP). On a CUDA context this records device work only. */
FLX_API flx_status flx_jvp(int32_t n_in, flx_tensor *const *inputs, flx_tensor *const *tangents,
                           int32_t n_out, flx_tensor *const *outputs, flx_tensor **tangents_out);
/* No-grad mode (nesting, per thread): ops record no gradient history. */
FLX_API void flx_no_grad_begin(void);
FLX_API void flx_no_grad_end(void);
FLX_API bool flx_grad_enabled(void);
/* Same value, no gradient history (stops gradients). */
FLX_API flx_tensor *flx_detach(flx_tensor *x);

/* A function of tensors for flx_gradcheck: returns a new tensor (any shape) or NULL on error. */
typedef flx_tensor *(*flx_fn)(int32_t n_in, flx_tensor *const *inputs, void *user);

typedef struct flx_gradcheck_report {
    double max_abs_err;   /* largest |numeric - analytic| over all checked entries */
    double max_rel_err;   /* the same relative to max(|numeric|, |analytic|, 1)    */
    int32_t worst_input;  /* input holding the worst entry                         */
    int64_t worst_index;  /* flat index of that entry                              */
} flx_gradcheck_report;

/* Central-difference check of the VJP of fn at inputs (every input f64): with a random
 * cotangent u, compares grad_x <u, fn(x)> from flx_grad_of against
 * (<u, fn(x + eps e_j)> - <u, fn(x - eps e_j)>) / (2 eps) for every entry j of every input.
 * Returns FLX_OK if every entry satisfies |num - ana| <= atol + rtol |num|, FLX_ERR_NUMERIC
 * otherwise (the worst entry is named in the message). report may be NULL. */
FLX_API flx_status flx_gradcheck(flx_fn fn, void *user, int32_t n_in, flx_tensor *const *inputs,
                                 double eps, double atol, double rtol, uint64_t seed,
                                 flx_gradcheck_report *report);

/* ---- higher-order helpers (runtime/core/higher_order.c) ----------------------------------
 * f is called once (it builds the graph); it must return a tensor (a single element for
 * flx_hvp and flx_hessian) of the inputs' context and a float dtype. Results are lazy tensors
 * (new references, see Ownership) that stay differentiable with respect to inputs that require
 * grad, so derivatives can be nested (a third derivative is the gradient of an HVP). Inputs that
 * do not require grad are differentiated through an internal leaf copy of their value. */
typedef enum flx_hvp_mode {
    FLX_HVP_FORWARD_OVER_REVERSE = 0, /* H u = JVP of grad f along u (default; cheapest)   */
    FLX_HVP_REVERSE_OVER_REVERSE = 1  /* H u = grad <grad f, u>                             */
} flx_hvp_mode;
/* Hessian-vector product of a scalar function without forming the Hessian: hvp_out[j] =
 * sum_k d^2 f / (d inputs[j] d inputs[k]) u[k], each of inputs[j]'s shape and dtype (u[k] has
 * inputs[k]'s shape and dtype; a NULL u[k] is zero). With create_graph false the results carry no
 * gradient history. */
FLX_API flx_status flx_hvp(flx_fn f, void *user, int32_t n_in, flx_tensor *const *inputs,
                           flx_tensor *const *u, flx_hvp_mode mode, bool create_graph,
                           flx_tensor **hvp_out);
/* Full Jacobian of f at x, for small problems: *jac_out has shape f(x).shape + x.shape (dtype of
 * f(x)), jac[i..., j...] = d f_i / d x_j. Built from numel(x) JVPs (columns) when numel(x) <=
 * numel(f(x)), else from numel(f(x)) VJPs (rows). */
FLX_API flx_status flx_jacobian(flx_fn f, void *user, flx_tensor *x, flx_tensor **jac_out);
/* Hessian of a scalar f at x, for small problems: shape x.shape + x.shape, built column by
 * column by forward-over-reverse (numel(x) JVPs of the gradient). */
FLX_API flx_status flx_hessian(flx_fn f, void *user, flx_tensor *x, flx_tensor **hess_out);

/* ---------------------------------------------------------------------------------------------
 * Interop: raw data access, zero-copy wrapping of external memory, streams and custom
 * differentiable functions (for language bindings and DLPack; runtime/io/interop.c).
 * ------------------------------------------------------------------------------------------- */
/* Computes t if needed, marks it kept and sets *ptr to its buffer (row-major, contiguous; a
 * device pointer on a CUDA context, valid on the context's stream). The pointer is valid while t
 * is alive and not the dst of flx_assign. Computed buffers are shared and never written again by
 * fluxion (reshape, detach and assign alias them), so writing through the pointer is allowed only
 * for tensors the caller made with flx_from_blob, or that nobody else reads. On a CUDA context the
 * work that computes t is queued on the context's stream (flx_ctx_stream), not waited for. */
FLX_API flx_status flx_data_ptr(flx_tensor *t, void **ptr);

/* Called when a wrapped external buffer is no longer used (data as given, user as given). */
typedef void (*flx_blob_deleter)(void *data, void *user);

/* Zero-copy wrap of contiguous row-major external memory as a source tensor (a constant, like
 * flx_from_host): host memory for a CPU context, device memory of that GPU for a CUDA context.
 * fluxion never writes to it. deleter (may be NULL) is called exactly once, with (data, user),
 * when the last tensor sharing the buffer dies — also when this call fails, so ownership always
 * passes to fluxion. On a CUDA context the stream is synchronised before the deleter runs, so
 * the memory may be reused at once. The buffer is not counted in flx_ctx_stats. Returns a new
 * reference (see Ownership). data may be NULL only when the shape has no elements. */
FLX_API flx_tensor *flx_from_blob(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                  void *data, flx_blob_deleter deleter, void *user);

/* The cudaStream_t of a CUDA context as void* (NULL for a CPU context or NULL ctx). Every piece
 * of a context's work is queued on this one stream (DLPack stream semantics). */
FLX_API void *flx_ctx_stream(flx_ctx *ctx);

/* Custom differentiable functions. Callbacks run inside a scope opened for them: every tensor
 * they make is owned by that scope, and the tensors they hand back are borrowed (the runtime keeps
 * what it needs). They return FLX_OK, or an error status (set a message with the failing op's
 * error, or leave it: a generic one is recorded).
 *   fwd: *out = f(inputs). Called once, by flx_custom_fn, in no-grad mode with detached inputs;
 *        uses public ops; the result (any shape, the inputs' context) is computed at once.
 *   vjp: grads_out[i] = cotangent of input i given the cotangent g of output (shapes and dtypes
 *        of the inputs; leave an entry NULL for none). Built with public ops from inputs, output
 *        and g, so it is differentiable in turn (higher-order derivatives, create_graph).
 *   jvp: *tangent_out = tangent of output given tangents of the inputs (never NULL: zeros are
 *        passed for inputs without a tangent); built with public ops likewise. */
typedef flx_status (*flx_custom_fwd)(int32_t n_in, flx_tensor *const *inputs, flx_tensor **out,
                                     void *user);
typedef flx_status (*flx_custom_vjp)(int32_t n_in, flx_tensor *const *inputs, flx_tensor *output,
                                     flx_tensor *g, flx_tensor **grads_out, void *user);
typedef flx_status (*flx_custom_jvp)(int32_t n_in, flx_tensor *const *inputs,
                                     flx_tensor *const *tangents, flx_tensor *output,
                                     flx_tensor **tangent_out, void *user);

/* Records out = fwd(inputs) as one graph node whose derivatives are vjp and jvp (either may be
 * NULL: differentiating through it then fails with FLX_ERR_NOT_DIFFERENTIABLE). fwd runs now and
 * its value is kept by the node (never recomputed); the node records inputs for autodiff. destroy
 * (may be NULL) is called exactly once with user when the callbacks can no longer be called:
 * when the node's data dies, or at once when this call fails. *out is a new reference (see
 * Ownership), NULL on error. n_in >= 1; every input of one context. */
FLX_API flx_status flx_custom_fn(int32_t n_in, flx_tensor *const *inputs, flx_custom_fwd fwd,
                                 flx_custom_vjp vjp, flx_custom_jvp jvp, void *user,
                                 void (*destroy)(void *user), flx_tensor **out);

/* ---------------------------------------------------------------------------------------------
 * Neural-network layers (runtime/ops/conv.c, runtime/ops/nn.c, runtime/nn/init.c)
 *
 * Building blocks for training. Every layer is differentiable in every float input (VJP and JVP,
 * any order) and takes f32, f64, f16 or bf16 (all float inputs of one call share a dtype and a
 * context).
 * Images are NCHW: x is (N, C, H, W). Window arguments are 2-arrays (h, w); NULL picks the
 * default named per function. Output size along an axis of length L with kernel k, stride s,
 * padding p, dilation d: O = floor((L + 2p - d (k - 1) - 1) / s) + 1 (no ceil mode).
 * Layers that keep state (batch norm's running statistics) never change a tensor in place: they
 * return the new state as lazy tensors that the caller assigns (flx_assign) when it wants. */

/* y = x W^T + b: x (..., in), W (out, in) — PyTorch's layout — b (out) or NULL; y (..., out). */
FLX_API flx_tensor *flx_linear(flx_tensor *x, flx_tensor *W, flx_tensor *b);

/* 2-d convolution (cross-correlation, groups = 1), by im2col + matmul (cuBLAS on CUDA):
 *   y[n, o, i, j] = b[o] + sum_{c, ki, kj} w[o, c, ki, kj] x[n, c, i s0 - p0 + ki d0, j s1 - p1 + kj d1]
 * with x zero outside its planes. x (N, C, H, W), w (O, C, KH, KW), b (O) or NULL;
 * y (N, O, OH, OW). stride (default 1, 1), padding (default 0, 0), dilation (default 1, 1). */
FLX_API flx_tensor *flx_conv2d(flx_tensor *x, flx_tensor *w, flx_tensor *b, const int64_t *stride,
                               const int64_t *padding, const int64_t *dilation);

/* im2col: x (N, C, H, W) -> cols (N, C KH KW, OH OW) with
 *   cols[n, (c KH + ki) KW + kj, i OW + j] = x[n, c, i s0 - p0 + ki d0, j s1 - p1 + kj d1] (0 outside).
 * kernel is required; stride default (1, 1), padding (0, 0), dilation (1, 1). Linear; its
 * transpose is flx_col2im (image_hw = (H, W)), which sums overlapping columns back into the
 * image. They are each other's VJP. */
FLX_API flx_tensor *flx_im2col(flx_tensor *x, const int64_t *kernel, const int64_t *stride,
                               const int64_t *padding, const int64_t *dilation);
FLX_API flx_tensor *flx_col2im(flx_tensor *cols, const int64_t *image_hw, const int64_t *kernel,
                               const int64_t *stride, const int64_t *padding,
                               const int64_t *dilation);

/* Max pooling: y[n, c, i, j] = max over the taps (ki, kj) of the window that lie inside x (the
 * padding never wins; a NaN does). stride default = kernel, padding default 0 (at most half the
 * kernel per axis), dilation default 1. The gradient goes to the first maximum of each window
 * (taps in row-major order), as in PyTorch; the JVP reads the tangent there. */
FLX_API flx_tensor *flx_max_pool2d(flx_tensor *x, const int64_t *kernel, const int64_t *stride,
                                   const int64_t *padding, const int64_t *dilation);
/* The argmax of flx_max_pool2d as i64, shape (N, C, OH, OW): flat index ((n C + c) H + h) W + w
 * into x. No gradient. */
FLX_API flx_tensor *flx_max_pool2d_indices(flx_tensor *x, const int64_t *kernel,
                                           const int64_t *stride, const int64_t *padding,
                                           const int64_t *dilation);
/* Average pooling: y = sum of the KH KW taps (zero padding included) / (KH KW), PyTorch's
 * count_include_pad = true. stride default = kernel, padding default 0 (at most half the kernel). */
FLX_API flx_tensor *flx_avg_pool2d(flx_tensor *x, const int64_t *kernel, const int64_t *stride,
                                   const int64_t *padding);

/* Batch normalisation over axis 1 of x (N, C) or (N, C, ...): per channel c,
 *   y = gamma[c] (x - mu[c]) / sqrt(var[c] + eps) + beta[c]
 * gamma, beta (C) or NULL (1 and 0). Training (training = true): mu and var are the batch mean and
 * the biased (population) variance over every axis but 1, and gradients flow through them. If
 * new_running_mean / new_running_var are non-NULL (and running_mean / running_var given, (C)),
 * they receive lazy, gradient-free tensors
 *   new_running_mean = (1 - momentum) running_mean + momentum mu
 *   new_running_var  = (1 - momentum) running_var  + momentum var_unbiased   (var n / (n - 1))
 * which the caller assigns after the step (flx_assign(running_mean, *new_running_mean)); the
 * running tensors are never changed in place. Eval (training = false): mu and var are
 * running_mean and running_var (required); the new_running_* outputs are set to NULL.
 * momentum in [0, 1], eps > 0. Caller owns the new_running_* results (see Ownership). */
FLX_API flx_tensor *flx_batch_norm(flx_tensor *x, flx_tensor *gamma, flx_tensor *beta,
                                   flx_tensor *running_mean, flx_tensor *running_var,
                                   bool training, double momentum, double eps,
                                   flx_tensor **new_running_mean, flx_tensor **new_running_var);

/* Layer normalisation over the last n_norm axes of x (1 <= n_norm <= ndim):
 *   y = gamma (x - mean) / sqrt(var + eps) + beta,
 * mean and biased var over those axes per leading index; gamma, beta have the shape of those
 * axes, or NULL. eps > 0. */
FLX_API flx_tensor *flx_layer_norm(flx_tensor *x, int32_t n_norm, flx_tensor *gamma,
                                   flx_tensor *beta, double eps);

/* Inverted dropout: training ? x * keep / (1 - p) : x, keep[i] = (u[i] >= p) with u the f64
 * Philox uniform of flx_uniform(ctx, FLX_F64, shape, 0, 1, seed) — the same mask on every
 * backend for a seed, for any dtype of x. 0 <= p < 1 (p == 0 or !training returns x unchanged). */
FLX_API flx_tensor *flx_dropout(flx_tensor *x, double p, uint64_t seed, bool training);
/* The keep mask of flx_dropout (bool, shape of x) for (p, seed). */
FLX_API flx_tensor *flx_dropout_mask(flx_ctx *ctx, int32_t ndim, const int64_t *shape, double p,
                                     uint64_t seed);

/* Embedding lookup: weight (V, D), indices i32/i64 of any shape; y (indices.shape..., D) with
 * y[..., :] = weight[indices[...], :]. Gradient to weight (rows summed per index); indices out of
 * [0, V) are reported at the next synchronisation point (read as 0). */
FLX_API flx_tensor *flx_embedding(flx_tensor *weight, flx_tensor *indices);

/* ---- Losses. Elementwise loss l_i, then reduction: MEAN (sum / count, 0-d), SUM (0-d), or NONE
 * (shape of the inputs). Predictions and targets have one shape and dtype. ---- */
typedef enum flx_reduction { FLX_REDUCTION_MEAN = 0, FLX_REDUCTION_SUM = 1, FLX_REDUCTION_NONE = 2 } flx_reduction;
/* l = (y - t)^2. */
FLX_API flx_tensor *flx_mse_loss(flx_tensor *y, flx_tensor *t, flx_reduction red);
/* Binary log-loss of logits z against targets t in [0, 1]:
 *   l = max(z, 0) - z t + log1p(exp(-|z|))   (= softplus(z) - z t; stable for any z). */
FLX_API flx_tensor *flx_bce_with_logits(flx_tensor *z, flx_tensor *t, flx_reduction red);
/* l = log cosh(y - t), computed stably as |r| + log1p(exp(-2|r|)) - log 2 (r = y - t) in the
 * smooth form softplus(2r) - r - log 2; gradient tanh(r). */
FLX_API flx_tensor *flx_log_cosh_loss(flx_tensor *y, flx_tensor *t, flx_reduction red);
/* Hinge loss for labels t in {-1, +1}: l = max(0, 1 - y t) (gradient 0 at the kink). */
FLX_API flx_tensor *flx_hinge_loss(flx_tensor *y, flx_tensor *t, flx_reduction red);
/* (Cross-entropy with integer labels is flx_cross_entropy, in the softmax block.) */
/* -- softmax family (runtime/ops/softmax.c): fused cross-entropy --
 * Cross-entropy from logits with integer class labels, fused: per row r,
 * loss_r = log sum exp(logits_r - max_r) - (logits_r[labels_r] - max_r) (the precise form of
 * logsumexp(logits_r) - logits_r[labels_r]), and 0 where labels_r == ignore_index.
 * logits (N, C) f32/f64/f16/bf16 with labels (N), or logits (N, C, d1, ...) with labels (N, d1, ...) (the
 * class axis is 1); labels i32 or i64 in [0, C) or equal to ignore_index (e.g. -100). A label out
 * of range is reported at the next synchronisation point (FLX_ERR_INVALID_ARGUMENT) and its row
 * counts as ignored meanwhile. MEAN divides by the number of non-ignored rows (NaN when that is
 * 0); MEAN/SUM give a 0-d result, NONE the per-row losses (shape of labels). The gradient wrt
 * logits is (softmax - onehot) g / count. When the logits require grad (in grad mode), the
 * forward kernel also writes that gradient for a unit cotangent, so loss + gradient (the seed of
 * flx_backward / flx_grad_of, or any cotangent the graph fixes as a constant) read the logits
 * once; the price is an (N, C) buffer written even when no gradient is asked for. Any other
 * cotangent goes through a backward kernel that recomputes the softmax from the logits. The
 * gradient has rules of its own (second order works). No gradient flows to labels. */
FLX_API flx_tensor *flx_cross_entropy(flx_tensor *logits, flx_tensor *labels,
                                      flx_reduction reduction, int64_t ignore_index);

/* ---- Initialisers: new tensors (float dtypes) from the counter-based Philox generator (same values
 * on every backend for a seed). Fans of a shape: 2-d (out, in): fan_in = in, fan_out = out;
 * rank r > 2 (out, in, k...): fan_in = in prod(k), fan_out = out prod(k); 1-d (n): both n.
 * gain: 1 for linear/sigmoid, sqrt(2) (FLX_GAIN_RELU) for ReLU, 5/3 for tanh. ---- */
#define FLX_GAIN_RELU 1.4142135623730951
/* U(-a, a), a = gain sqrt(6 / (fan_in + fan_out)). */
FLX_API flx_tensor *flx_init_xavier_uniform(flx_ctx *ctx, flx_dtype dt, int32_t ndim,
                                            const int64_t *shape, double gain, uint64_t seed);
/* N(0, std^2), std = gain sqrt(2 / (fan_in + fan_out)). */
FLX_API flx_tensor *flx_init_xavier_normal(flx_ctx *ctx, flx_dtype dt, int32_t ndim,
                                           const int64_t *shape, double gain, uint64_t seed);
typedef enum flx_fan_mode { FLX_FAN_IN = 0, FLX_FAN_OUT = 1 } flx_fan_mode;
/* U(-a, a), a = gain sqrt(3 / fan) with fan = fan_in or fan_out by mode. */
FLX_API flx_tensor *flx_init_kaiming_uniform(flx_ctx *ctx, flx_dtype dt, int32_t ndim,
                                             const int64_t *shape, flx_fan_mode mode, double gain,
                                             uint64_t seed);
/* N(0, std^2), std = gain / sqrt(fan). */
FLX_API flx_tensor *flx_init_kaiming_normal(flx_ctx *ctx, flx_dtype dt, int32_t ndim,
                                            const int64_t *shape, flx_fan_mode mode, double gain,
                                            uint64_t seed);
/* U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default for Linear/Conv biases). */
FLX_API flx_tensor *flx_init_uniform_fan_in(flx_ctx *ctx, flx_dtype dt, int32_t ndim,
                                            const int64_t *shape, int64_t fan_in, uint64_t seed);

/* ---- Regularisation terms (0-d, differentiable): ---- */
/* L2 (weight decay): (lambda / 2) sum_k ||p_k||^2, so its gradient is lambda p_k. */
FLX_API flx_tensor *flx_l2_penalty(int32_t n, flx_tensor *const *params, double lambda);
/* L1: lambda sum_k sum |p_k| (gradient lambda sign(p), 0 at 0). */
FLX_API flx_tensor *flx_l1_penalty(int32_t n, flx_tensor *const *params, double lambda);

/* ---- Recurrent cells (composed from primitives; unroll them over time with shared weights).
 * x (B, I), h (B, H); biases (G) or NULL. ---- */
/* Elman: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh); W_ih (H, I), W_hh (H, H). */
FLX_API flx_tensor *flx_rnn_cell(flx_tensor *x, flx_tensor *h, flx_tensor *W_ih,
                                 flx_tensor *W_hh, flx_tensor *b_ih, flx_tensor *b_hh);
/* GRU (PyTorch's layout, gates stacked r, z, n along rows): W_ih (3H, I), W_hh (3H, H),
 *   r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
 *   z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
 *   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
 *   h' = (1 - z) * n + z * h */
FLX_API flx_tensor *flx_gru_cell(flx_tensor *x, flx_tensor *h, flx_tensor *W_ih,
                                 flx_tensor *W_hh, flx_tensor *b_ih, flx_tensor *b_hh);

/* ---------------------------------------------------------------------------------------------
 * Optimisers (runtime/nn/optim.c)
 *
 * Fused, device-side optimisers. One flx_optim_step updates every parameter with one kernel
 * launch (up to FLX_OPTIM_MAX_TENSORS_PER_LAUNCH parameters per launch; more are chunked). The
 * state (moments, accumulators) and the hyperparameters, step count included, live in device
 * memory: changing the learning rate (flx_optim_set_lr) queues a tiny device write with no host
 * wait, so work recorded once stays valid while a schedule changes it.
 *
 * Update rules, per element, with g = p.grad, t = the step number counted from 1, PyTorch's
 * conventions (torch.optim, default arguments in flx_optim_defaults):
 *   SGD (FLX_OPTIM_SGD; MOMENTUM and NESTEROV are SGD with momentum 0.9, NESTEROV also nesterov):
 *       g = g + weight_decay * p
 *       if momentum != 0:  b = (t == 1) ? g : momentum * b + (1 - dampening) * g
 *                          g = nesterov ? g + momentum * b : b
 *       p = p - lr * g
 *   Adagrad:   g = g + weight_decay * p;  clr = lr / (1 + (t - 1) * lr_decay)
 *              s = s + g^2  (s starts at initial_accumulator);  p = p - clr * g / (sqrt(s) + eps)
 *   RMSprop:   g = g + weight_decay * p;  v = alpha * v + (1 - alpha) * g^2
 *              centered: a = alpha * a + (1 - alpha) * g;  d = sqrt(v - a^2) + eps
 *              else d = sqrt(v) + eps
 *              momentum > 0: b = momentum * b + g / d;  p = p - lr * b
 *              else          p = p - lr * g / d
 *   Adam:      g = g + weight_decay * p  (L2, coupled)
 *              m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
 *              p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 *   AdamW:     p = p * (1 - lr * weight_decay)  (decoupled), then Adam with weight_decay 0.
 * The step count is one per optimiser (not per parameter); parameters whose .grad is NULL at a
 * step are skipped (their state is not touched), as in PyTorch. Math runs in float64 and the
 * result is rounded to the parameter's dtype (all parameters of one optimiser share one dtype,
 * f32, f64, f16 or bf16, and one context; a gradient has its parameter's dtype).
 *
 * f16/bf16 parameters (mixed precision): the optimiser keeps an f32 master copy of each one and
 * f32 state slots. The rule above runs on the master (p is the master, g the half gradient read
 * exactly), in float64, inside the same fused step: the new master is rounded to f32, and the
 * parameter is written as the master rounded to nearest even. So small updates accumulate in
 * the master even where they are below the half's resolution. The master starts as the exact
 * value of the parameter (at create), and is reseeded from the parameter at the next step (or
 * plan compile) if the parameter was changed by anything but the optimiser (flx_assign, a
 * loaded checkpoint): the value the user set wins. It is the last state slot
 * (flx_optim_state_count counts it; flx_optim_get_state, set_state, save and load include it;
 * setting it by hand makes it the truth for the parameter's current value).
 *
 * Dynamic loss scaling (cfg.loss_scaling; PyTorch's GradScaler, fused into the step). f16's
 * range (6e-8 .. 65504) loses small gradients to underflow; the loss is multiplied by a large
 * scale S before backward (flx_optim_scale_loss) and the step divides the gradients by S again:
 *   - each step first scans every gradient it updates for inf/NaN (one pass setting a device
 *     flag), then the update reads g * (1/S). With an inf/NaN the step is skipped: parameters,
 *     masters, state slots and the step count stay as they were; S = S * backoff_factor, the
 *     growth tracker returns to 0 and the skipped-step count grows by one.
 *   - otherwise the update runs and the tracker counts the step; after growth_interval clean
 *     steps in a row S = S * growth_factor (kept if finite in f32) and the tracker returns to 0.
 * All of it happens on the device with no host wait (and inside a plan's CUDA graph); reading S
 * or the skipped count (flx_optim_loss_scale, flx_optim_skipped_steps) waits for the device.
 * Checkpoints (flx_optim_save, or flx_optim_get_scaler / set_scaler) include S, the tracker and
 * the skipped count. Loss scaling works with every dtype (harmless, and rarely needed, for bf16,
 * f32 and f64).
 *
 * Recipe (mixed-precision training):
 *   bf16 (Ampere and later; no loss scaling needed, bf16 has f32's range):
 *       parameters are bf16 tensors (flx_cast an f32 initialisation, then flx_set_requires_grad);
 *       opt = flx_optim_create(ctx, FLX_OPTIM_ADAMW, n, params, &cfg);   // f32 masters inside
 *       per step: loss in bf16 or f32 -> flx_backward(loss) -> flx_optim_step(opt)
 *   f16 (needs the scaler):
 *       cfg.loss_scaling = true (init_scale 65536, growth 2, backoff 0.5, interval 2000);
 *       per step: flx_backward(flx_optim_scale_loss(opt, loss)) -> flx_optim_step(opt)
 *       (in a plan: output 0 is flx_optim_scale_loss(opt, loss); the plan's update unscales).
 *   Save the parameters and flx_optim_save together: the masters carry the bits below the
 *   parameters' precision. To resume, restore the parameters first (flx_assign), then
 *   flx_optim_load: the loaded masters are then the truth for those values.
 *
 * Parameters are updated in place. At create time (and again at a step, if something else has
 * come to share a parameter's buffer, e.g. flx_assign to it or a reshape/detach of it that is
 * still alive) each parameter gets a private copy of its buffer, so no other tensor ever sees a
 * write. Like flx_assign, a step bumps each updated parameter's version: graph nodes recorded
 * from the old value and not yet run fail with FLX_ERR_STATE (record the next step's graph after
 * flx_optim_step). The optimiser holds a reference to each parameter until destroyed. */
#define FLX_OPTIM_MAX_TENSORS_PER_LAUNCH 24
typedef struct flx_optim flx_optim;
typedef enum flx_optim_kind {
    FLX_OPTIM_SGD = 0,
    FLX_OPTIM_MOMENTUM = 1, /* SGD, defaults momentum 0.9 */
    FLX_OPTIM_NESTEROV = 2, /* SGD, defaults momentum 0.9, nesterov */
    FLX_OPTIM_ADAGRAD = 3,
    FLX_OPTIM_RMSPROP = 4,
    FLX_OPTIM_ADAM = 5,
    FLX_OPTIM_ADAMW = 6,
    FLX_OPTIM_KIND_COUNT
} flx_optim_kind;
/* Hyperparameters held in device memory (flx_optim_set_hparam); STEP is the count of steps
 * taken so far (t - 1 during a step). */
typedef enum flx_optim_hparam {
    FLX_HP_LR = 0, FLX_HP_MOMENTUM, FLX_HP_DAMPENING, FLX_HP_WEIGHT_DECAY, FLX_HP_BETA1,
    FLX_HP_BETA2, FLX_HP_EPS, FLX_HP_ALPHA, FLX_HP_LR_DECAY, FLX_HP_STEP, FLX_HP_COUNT
} flx_optim_hparam;
typedef struct flx_optim_config {
    double lr;                  /* > 0 (SGD 1e-2, Adagrad 1e-2, RMSprop 1e-2, Adam(W) 1e-3) */
    double momentum;            /* SGD, RMSprop: >= 0                                       */
    double dampening;           /* SGD: in [0, 1]; must be 0 with nesterov                   */
    double weight_decay;        /* >= 0 (AdamW default 1e-2, others 0)                      */
    double beta1, beta2;        /* Adam(W): in [0, 1)  (0.9, 0.999)                          */
    double eps;                 /* >= 0 (Adam 1e-8, RMSprop 1e-8, Adagrad 1e-10)             */
    double alpha;               /* RMSprop smoothing in [0, 1) (0.99)                         */
    double lr_decay;            /* Adagrad: >= 0                                             */
    double initial_accumulator; /* Adagrad: >= 0                                             */
    bool nesterov;              /* SGD: needs momentum > 0 and dampening 0                   */
    bool centered;              /* RMSprop                                                   */
    bool loss_scaling;          /* dynamic loss scaling (see above); off by default          */
    double init_scale;          /* loss scaling: > 0, finite in f32 (65536)                  */
    double growth_factor;       /* loss scaling: > 1 (2)                                     */
    double backoff_factor;      /* loss scaling: in (0, 1) (0.5)                             */
    int32_t growth_interval;    /* loss scaling: clean steps before growth, >= 1 (2000)      */
} flx_optim_config;

/* PyTorch's default arguments for a kind. */
FLX_API flx_optim_config flx_optim_defaults(flx_optim_kind kind);
/* An optimiser over n parameters (distinct leaves made from data, f32, f64, f16 or bf16, one
 * dtype, ctx's context, 1 <= n). cfg NULL uses flx_optim_defaults(kind). NULL with the error set
 * on bad input (FLX_ERR_INVALID_ARGUMENT for a hyperparameter or loss-scaling field out of
 * range, FLX_ERR_DTYPE for another dtype). */
FLX_API flx_optim *flx_optim_create(flx_ctx *ctx, flx_optim_kind kind, int32_t n,
                                    flx_tensor *const *params, const flx_optim_config *cfg);
/* One update of every parameter from its .grad (which is computed first if lazy). */
FLX_API flx_status flx_optim_step(flx_optim *opt);
/* flx_zero_grad on every parameter. */
FLX_API flx_status flx_optim_zero_grad(flx_optim *opt);
/* Writes a hyperparameter in device memory (queued, no host wait); validated like create. */
FLX_API flx_status flx_optim_set_hparam(flx_optim *opt, flx_optim_hparam which, double value);
FLX_API flx_status flx_optim_set_lr(flx_optim *opt, double lr);
/* Reads a hyperparameter (waits for the device). */
FLX_API flx_status flx_optim_get_hparam(flx_optim *opt, flx_optim_hparam which, double *out);
/* State slots per parameter, in this order, those the configuration uses only: SGD: momentum
 * buffer (with momentum); Adagrad: sum; RMSprop: square average, momentum buffer (with
 * momentum), grad average (centered); Adam(W): m, v; then, for f16/bf16 parameters, the f32
 * master copy. -1 for NULL. */
FLX_API int32_t flx_optim_state_count(const flx_optim *opt);
/* A copy of state slot `slot` of parameter i, for checkpoints: the parameter's shape, and its
 * dtype (f32 for the slots of f16/bf16 parameters). */
FLX_API flx_tensor *flx_optim_get_state(flx_optim *opt, int32_t i, int32_t slot);
/* Overwrites a state slot with value (same shape and dtype as flx_optim_get_state gives: a
 * different shape is FLX_ERR_SHAPE, dtype FLX_ERR_DTYPE), e.g. when resuming. */
FLX_API flx_status flx_optim_set_state(flx_optim *opt, int32_t i, int32_t slot, flx_tensor *value);
/* The optimiser's whole state in one safetensors file (crash-safe, as flx_save_safetensors):
 * every state slot of every parameter ("state.<i>.<slot>"), the hyperparameters and the step
 * count ("hparams", f64), and metadata naming the kind and the counts. The parameters themselves
 * are not in it (save them with flx_save_safetensors). flx_optim_load restores such a file into
 * an optimiser of the same kind over parameters of the same shapes and dtype, in the same order:
 * after it the next flx_optim_step continues exactly as the saved optimiser would have. The file
 * is checked completely before anything is written (a mismatch leaves the optimiser unchanged):
 * FLX_ERR_STATE for another kind, momentum where this one has none, another number of state
 * slots (master copies: f16/bf16 against f32/f64 parameters), or loss scaling on one side only;
 * FLX_ERR_SHAPE for other parameter counts, shapes or state dtypes; FLX_ERR_INVALID_ARGUMENT for
 * a NULL argument or an unreadable or malformed file (or hyperparameters, the loss scale or its
 * counts out of range). */
FLX_API flx_status flx_optim_save(flx_optim *opt, const char *path);
FLX_API flx_status flx_optim_load(flx_optim *opt, const char *path);
/* loss * S as a new lazy tensor, S being the current loss scale read on the device when the
 * graph runs (so a plan whose output 0 this is scales by the current S every run). The product
 * is f32 (f64 for an f64 loss): a scaled f16 loss would overflow. Without loss scaling it is the
 * loss itself (a new reference), so one training loop serves both. NULL with the error set for
 * a NULL or non-float loss (FLX_ERR_DTYPE) or one of another context (FLX_ERR_DEVICE). Record it
 * after the previous flx_optim_step: a step updates S in place, like a parameter. */
FLX_API flx_tensor *flx_optim_scale_loss(flx_optim *opt, flx_tensor *loss);
/* The current loss scale S (1 without loss scaling). Waits for the device. */
FLX_API flx_status flx_optim_loss_scale(flx_optim *opt, double *scale);
/* The number of steps skipped for an inf/NaN gradient so far (0 without loss scaling). Waits for
 * the device. */
FLX_API flx_status flx_optim_skipped_steps(flx_optim *opt, int64_t *count);
/* The loss scaler's whole state, for checkpoints kept outside flx_optim_save (e.g. a binding's
 * state dict): the scale S, the growth tracker (clean steps since S last changed) and the
 * skipped-step count. Waits for the device. Without loss scaling: 1, 0, 0. NULL outputs are
 * FLX_ERR_INVALID_ARGUMENT. */
FLX_API flx_status flx_optim_get_scaler(flx_optim *opt, double *scale, int64_t *growth_tracker,
                                        int64_t *skipped);
/* Restores what flx_optim_get_scaler gave (queued, no host wait): FLX_ERR_STATE for an optimiser
 * created without loss scaling, FLX_ERR_INVALID_ARGUMENT for a scale that is not > 0 and finite
 * in f32 or a count outside [0, 2^53]. */
FLX_API flx_status flx_optim_set_scaler(flx_optim *opt, double scale, int64_t growth_tracker,
                                        int64_t skipped);
/* Releases the optimiser (NULL-safe); the parameters keep their current values. A plan that
 * updates it (flx_plan_options.optims) keeps it alive until the plan is destroyed. */
FLX_API void flx_optim_destroy(flx_optim *opt);

/* ---------------------------------------------------------------------------------------------
 * Checkpoints (runtime/io/safetensors.c)
 *
 * safetensors files: 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * then the data region, which the tensors' [begin, end) ranges tile exactly (in file order of
 * offsets), little-endian, row-major. dtypes: F32, F64, F16, BF16, I32, I64, BOOL. Readable by the Python
 * `safetensors` package and PyTorch.
 * Saving is crash-safe: the file is written to a temporary file in the same directory, fsynced,
 * renamed over path and the directory fsynced; a failed save leaves any previous file intact.
 * Loading checks everything (header length within the file, strict JSON, known dtypes, shapes
 * that match the byte ranges, ranges that tile the data region without overlap or gap, unique
 * names, sizes that fit in memory) and rejects a bad file with FLX_ERR_INVALID_ARGUMENT naming
 * the problem; it never reads outside the file. */
/* Saves n named tensors (names unique, non-empty, valid UTF-8 without control characters, not
 * "__metadata__"). metadata: n_meta (key, value) string pairs, may be NULL when n_meta == 0. */
FLX_API flx_status flx_save_safetensors(const char *path, int32_t n, const char *const *names,
                                        flx_tensor *const *tensors, int32_t n_meta,
                                        const char *const *meta_keys,
                                        const char *const *meta_values);
typedef struct flx_checkpoint flx_checkpoint;
/* Loads every tensor of a file onto ctx. NULL with the error set on a bad or unreadable file. */
FLX_API flx_checkpoint *flx_load_safetensors(flx_ctx *ctx, const char *path);
FLX_API int32_t flx_checkpoint_count(const flx_checkpoint *ck);       /* -1 for NULL */
/* Name of tensor i (in the file's header order); NULL if out of range. Valid until destroy. */
FLX_API const char *flx_checkpoint_name(const flx_checkpoint *ck, int32_t i);
/* Tensor i, or the tensor called name: a new reference (NULL with the error set if absent). */
FLX_API flx_tensor *flx_checkpoint_tensor(flx_checkpoint *ck, int32_t i);
FLX_API flx_tensor *flx_checkpoint_find(flx_checkpoint *ck, const char *name);
/* Metadata value of key (NULL if absent). Valid until destroy. */
FLX_API const char *flx_checkpoint_metadata(const flx_checkpoint *ck, const char *key);
FLX_API void flx_checkpoint_destroy(flx_checkpoint *ck);                 /* NULL-safe */

/* ---------------------------------------------------------------------------------------------
 * Plans (runtime/core/plan*.c) and math mode (runtime/core/math_mode.c)
 *
 * A plan freezes the graph that computes `outputs` from `inputs` and replays it with new input
 * data: node order, a static memory plan (every intermediate gets a fixed place in one arena
 * allocated at compile time, places reused by last use), and on CUDA one CUDA graph captured at
 * compile time and launched once per run. A run allocates nothing and waits for nothing.
 *
 * What the plan reads:
 *   - inputs: CONST tensors (made from data: flx_from_host, flx_from_blob, detached values),
 *     distinct, on one context. The plan has its own buffer per input, filled at compile time
 *     from the input's data; new data is bound BY COPY (flx_plan_set_input, flx_plan_run with
 *     tensors, flx_plan_set_input_host with host memory) and stays until replaced, so an input
 *     that does not change need not be passed again. Binding by pointer is not offered: a
 *     captured graph holds addresses.
 *   - every other source the outputs reach (parameters and other leaves, constants): read at run
 *     time from the buffer it had at compile time. flx_optim_step may update such a leaf in
 *     place between runs (the plan sees the new values), but giving it a new buffer (flx_assign)
 *     makes the next run fail with FLX_ERR_STATE: compile the plan again.
 *   - everything else reachable is recomputed by every run (values already computed by the eager
 *     evaluator are not reused).
 * Outputs: flx_plan_output(plan, k) is a CONST tensor owned by the plan whose data is refreshed
 * by each run (its version is bumped per run, so lazy ops recorded from an older value fail with
 * FLX_ERR_STATE instead of reading newer data; a tensor that came to share its buffer, e.g. by
 * flx_assign or a realised reshape, keeps the value it saw: the plan copies it away first).
 * Assignments (options): pairs (leaf, value); at the end of every run each leaf takes its value
 * (all values are read before any leaf is written), in place. At compile time each assigned leaf
 * gets a private copy of its buffer and its version is bumped, so graphs recorded earlier that
 * read the leaf fail with FLX_ERR_STATE, and no other tensor ever sees the in-place writes. Other
 * graphs may read an assigned leaf after a run (flx_to_host, new ops): they see its current value.
 * Optimisers (options n_optim, optims): a run also performs one flx_optim_step of each, fused
 * into the replay (on CUDA inside the captured graph: forward, backward and update are one
 * launch). Output 0 is the loss: one element, depending on the parameters through tensors that
 * require grad. The parameters updated are those the loss depends on (through tensors that
 * require grad); no flx_backward is needed first. The plan builds d loss / d parameter as part of
 * its graph and every run computes it afresh from that run's data (.grad is neither read nor
 * changed by runs).
 * Errors at compile: FLX_ERR_INVALID_ARGUMENT for a NULL optimiser, one listed twice, or a
 * parameter that is also a plan input or an assignment destination; FLX_ERR_DEVICE for one of
 * another context; FLX_ERR_STATE for an optimiser none of whose parameters the loss depends on,
 * or a parameter with a (stale) .grad that the loss does not depend on; FLX_ERR_SHAPE for a loss of more than
 * one element; FLX_ERR_NOT_DIFFERENTIABLE for a loss that depends on nothing requiring grad.
 * Each updated parameter gets a private buffer at compile time and the run updates it in place
 * (the buffer the plan's forward reads next run); a run fails with FLX_ERR_STATE (compile the
 * plan again, from a graph recorded after the last run) if a parameter was given a new buffer
 * (flx_assign) or something came to share its buffer (flx_assign from it, a live realised
 * reshape/detach of it); eager steps would copy instead, but a captured graph cannot move.
 * Hyperparameters and the step count are read on the device, so flx_optim_set_lr and
 * flx_optim_set_hparam between runs take effect without recompiling. After a run each updated
 * parameter's version is bumped (as flx_optim_step does). A plan holds its optimisers:
 * flx_optim_destroy before flx_plan_destroy is safe (the optimiser lives until the plan goes).
 * Order at the end of a run: outputs are copied (they see the parameters before the update),
 * every assignment value is read, then each optimiser updates its parameters (in list order),
 * then the assigned leaves are written. So assignments and outputs see the values from before
 * the update, like the eager sequence "evaluate, flx_optim_step, flx_assign".
 * Values that change between runs (a learning rate, a step count) should be plan inputs (or, for
 * optimisers, flx_optim_set_hparam).
 * Random numbers (flx_uniform, flx_normal, flx_randn, dropout masks) are drawn anew by every run,
 * as eager code drawing with a new seed per step would: run k draws Philox stream k of the seed
 * (counted on the device, so captured replays advance too); run 0 draws the values eager
 * evaluation of the same graph gives. Within one run every reader of a random tensor (a dropout
 * mask in forward and backward) sees the same values.
 * The plan holds its graph alive until flx_plan_destroy; run a plan from one thread at a time
 * and not while another thread uses the tensors of its graph. Math mode and other cuBLAS
 * settings are those at capture (compile) time. */
typedef struct flx_plan flx_plan;
typedef enum flx_plan_capture {
    FLX_PLAN_CAPTURE_DEFAULT = 0, /* on where the backend can capture (CUDA), else off; if the
                                     plan's work cannot be captured (a library call that is not
                                     capture-safe), the plan replays without a graph (logged) */
    FLX_PLAN_CAPTURE_OFF = 1,     /* replay by queuing each kernel from the host             */
    FLX_PLAN_CAPTURE_ON = 2       /* capture, and fail the compile if capture fails (a no-op
                                     on the CPU backend)                                      */
} flx_plan_capture;
typedef struct flx_plan_options {
    int32_t capture;                 /* flx_plan_capture                                      */
    int32_t n_assign;                /* assignments: assign_dst[k] := assign_src[k] per run    */
    flx_tensor *const *assign_dst;   /* distinct CONST leaves, not inputs                     */
    flx_tensor *const *assign_src;   /* same shape and dtype as their dst                     */
    int32_t n_optim;                 /* optimisers stepped by every run (see above)            */
    flx_optim *const *optims;        /* distinct, on the plan's context; output 0 is the loss   */
} flx_plan_options;
/* The zero options: capture default, no assignments, no optimisers. */
FLX_API flx_plan_options flx_plan_default_options(void);
/* NULL with the error set on bad input (NULL or foreign tensors, inputs that are not CONST,
 * ops that cannot be planned such as flx_to_ctx, stale graphs). opt may be NULL. n_in may be 0. */
FLX_API flx_plan *flx_plan_compile(int32_t n_out, flx_tensor *const *outputs, int32_t n_in,
                                   flx_tensor *const *inputs, const flx_plan_options *opt);
/* Copies t's data (same shape, dtype and context as compiled input k; computed first if lazy)
 * into the plan's input buffer k (queued, no host wait). */
FLX_API flx_status flx_plan_set_input(flx_plan *plan, int32_t k, flx_tensor *t);
/* Copies nbytes (exactly numel * dtype size) of host memory into input buffer k. data may be
 * freed or reused on return (on CUDA it is first copied into pinned staging memory); the device
 * copy is queued behind the work already queued, without waiting for a previous run. */
FLX_API flx_status flx_plan_set_input_host(flx_plan *plan, int32_t k, const void *data,
                                           size_t nbytes);
/* Binds inputs (n_in == the plan's input count with inputs[k] NULL = keep input k, or n_in == 0
 * and inputs NULL = keep all) as flx_plan_set_input does, then replays the plan. */
FLX_API flx_status flx_plan_run(flx_plan *plan, int32_t n_in, flx_tensor *const *inputs);
/* Output k: a new reference (scope-owned inside a scope) to the plan's output tensor. */
FLX_API flx_tensor *flx_plan_output(flx_plan *plan, int32_t k);
typedef struct flx_plan_info {
    int32_t n_nodes;           /* nodes replayed per run (kernels, aliases)                 */
    int32_t n_inputs, n_outputs, n_assign;
    bool captured;             /* replayed as one CUDA graph launch                         */
    uint64_t arena_bytes;      /* the planned memory, allocated once at compile time         */
    uint64_t unplanned_bytes;  /* the sum of every planned buffer, as without reuse          */
    uint64_t runs;             /* completed runs                                            */
    int32_t n_optim;           /* optimisers updated by each run                           */
    int32_t capture_state;     /* flx_plan_capture_state: captured, or why not              */
    char capture_reason[256];  /* "" when captured; else why not, in words (for a failed
                                  capture: the error of the call that could not be captured,
                                  e.g. a cuSOLVER path)                                      */
} flx_plan_info;
typedef enum flx_plan_capture_state {
    FLX_PLAN_CAPTURED = 0,                 /* replayed as one CUDA graph launch              */
    FLX_PLAN_NOT_CAPTURED_DISABLED = 1,    /* compiled with FLX_PLAN_CAPTURE_OFF             */
    FLX_PLAN_NOT_CAPTURED_UNSUPPORTED = 2, /* the backend has no graphs (CPU)               */
    FLX_PLAN_NOT_CAPTURED_FAILED = 3       /* capture was tried and failed (default mode)     */
} flx_plan_capture_state;
FLX_API flx_status flx_plan_get_info(const flx_plan *plan, flx_plan_info *out);
/* Releases the plan (NULL-safe). Output tensors still referenced keep their last data. */
FLX_API void flx_plan_destroy(flx_plan *plan);

/* Math mode of a context: FLX_MATH_STRICT (default: IEEE f32 GEMMs) or FLX_MATH_TF32 (an
 * explicit opt-in: cuBLAS f32 GEMMs may use TF32 tensor cores, about 10 mantissa bits of
 * products). The CPU backend records and ignores it. Unknown bits: FLX_ERR_INVALID_ARGUMENT. */
typedef enum flx_math_mode { FLX_MATH_STRICT = 0, FLX_MATH_TF32 = 1 } flx_math_mode;
FLX_API flx_status flx_set_math_mode(flx_ctx *ctx, int32_t mode);
FLX_API flx_status flx_get_math_mode(const flx_ctx *ctx, int32_t *mode);

/* Elementwise fusion (default on; FLX_FUSION=0 in the environment turns it off for new
 * contexts). When the evaluator or a plan runs a chain of float elementwise ops of one shape
 * and dtype (unary ops, + - * / pow maximum minimum with broadcasting, where), it runs the chain
 * as one kernel: intermediates that nothing else needs (not requested, not plan outputs, no
 * consumer outside the chain in the same evaluation) are never written to memory. Results are
 * bit-identical with fusion on or off on each backend (the CPU rounds every step to the dtype
 * as the unfused kernels do; the CUDA kernel applies the same per-op formulas). Bias +
 * activation, activation backward (g * f'(x)) and optimiser arithmetic written as ops all fuse.
 * The same switch covers dense layers: a matmul with its row bias and relu, and a weight
 * gradient with the bias gradient summed beside it, run as one GEMM call each (cuBLASLt
 * epilogues on CUDA, whose results are within GEMM rounding of the unfused kernels' rather than
 * bit-identical; the CPU gives the same bits). A plan keeps the setting it was compiled with. */
FLX_API flx_status flx_set_fusion(flx_ctx *ctx, bool enabled);
FLX_API flx_status flx_get_fusion(const flx_ctx *ctx, bool *enabled);

/* ---------------------------------------------------------------------------------------------
 * Distributed: communicators and collectives (runtime/dist/).
 *
 * A communicator joins the processes of one job, one context each: CPU contexts talk through
 * MPI (the job started by mpirun/srun), CUDA contexts through NCCL (its unique id exchanged over
 * MPI). Without a launcher (no MPI rank in the environment) flx_comm_create gives a world of one
 * process, so the same program runs unchanged in one process.
 *
 * Collectives are graph ops like any other: flx_comm_all_reduce returns a lazy tensor, the work
 * runs when something needs it (on CUDA, queued on the context's stream with no host sync, so a
 * plan can capture it), and gradients and tangents flow through it (the VJP of a sum all-reduce
 * is a sum all-reduce of the cotangent, all-gather and reduce-scatter are each other's VJP,
 * broadcast's VJP sums the cotangents onto the root). Every rank must build and evaluate the same
 * collectives in the same order (as in MPI and NCCL), gradients included: a collective that one
 * rank evaluates and another never does fails on the waiting ranks with FLX_ERR_TIMEOUT after the
 * communicator's timeout (flx_comm_set_timeout).
 *
 * A communicator is identified by a handle that ops keep by value: evaluating a collective after
 * its communicator was destroyed fails with FLX_ERR_STATE instead of touching freed memory.
 * ------------------------------------------------------------------------------------------- */
typedef struct flx_comm flx_comm;
typedef enum flx_comm_op {
    FLX_COMM_SUM = 0,
    FLX_COMM_AVG = 1, /* the sum divided by the world size */
    FLX_COMM_MAX = 2, /* no gradient */
    FLX_COMM_MIN = 3, /* no gradient */
} flx_comm_op;
/* True when this build can talk through MPI (CPU contexts) / NCCL (CUDA contexts). */
FLX_API bool flx_has_mpi(void);
FLX_API bool flx_has_nccl(void);
/* The world of the job this process was launched in, for ctx (every rank passes a context of
 * the same kind; a CUDA context is usually cuda(local_rank)). The environment decides:
 * OMPI_COMM_WORLD_SIZE / PMI_SIZE / PMIX_RANK (mpirun, srun) -> MPI is initialised if the
 * application has not done so (and finalised at exit); CPU contexts talk MPI, CUDA contexts NCCL
 * with its id sent over MPI. RANK and WORLD_SIZE (torchrun style) -> NCCL for CUDA contexts, its
 * id handed over TCP by rank 0 listening on MASTER_PORT at MASTER_ADDR (defaults 29500,
 * 127.0.0.1; FLX_COMM_TIMEOUT_S bounds the wait, default 600 s: FLX_ERR_TIMEOUT). Otherwise a world of one (over
 * NCCL on a CUDA context when NCCL is built). A launcher world this build cannot serve (no MPI, no
 * NCCL, CPU contexts under torchrun) is an FLX_ERR_UNSUPPORTED error, never a silent world of
 * one. Every rank of a job creates its communicators together, in the same order (each MPI one
 * is a duplicate of MPI_COMM_WORLD, so a failed communicator leaves the others in step). Returns
 * NULL with the error set on failure. */
FLX_API flx_comm *flx_comm_create(flx_ctx *ctx);
/* Destroys the communicator. Collectives recorded on it and not yet run fail with
 * FLX_ERR_STATE when evaluated. NULL is a no-op. */
FLX_API flx_status flx_comm_destroy(flx_comm *comm);
/* How long a rank waits for the others in one collective (and NCCL's set-up) before giving up
 * with FLX_ERR_TIMEOUT: seconds > 0 and finite; the default is FLX_COMM_TIMEOUT_S from the
 * environment, else 600. The message of a timeout names the collective, its sequence number on
 * the communicator (collectives counted from 1 in the order this rank ran them) and the rank.
 * After a timeout the communicator is failed: every later collective on it fails at once with
 * FLX_ERR_STATE, and every rank should destroy it (the ranks disagree on which collective comes
 * next; a new communicator starts them in step again). */
FLX_API flx_status flx_comm_set_timeout(flx_comm *comm, double seconds);
FLX_API flx_status flx_comm_get_timeout(const flx_comm *comm, double *seconds);
FLX_API int32_t flx_comm_rank(const flx_comm *comm); /* -1 for NULL */
FLX_API int32_t flx_comm_size(const flx_comm *comm); /* -1 for NULL */
/* x reduced elementwise over the ranks (same shape and dtype on every rank; f32, f64, and for
 * SUM/MAX/MIN also i32, i64). */
FLX_API flx_tensor *flx_comm_all_reduce(flx_comm *comm, flx_tensor *x, flx_comm_op op);
/* root's x on every rank (0 <= root < size). */
FLX_API flx_tensor *flx_comm_broadcast(flx_comm *comm, flx_tensor *x, int32_t root);
/* The ranks' x (each of shape (n, ...)) concatenated along axis 0 in rank order: (size*n, ...). */
FLX_API flx_tensor *flx_comm_all_gather(flx_comm *comm, flx_tensor *x);
/* x (shape (size*n, ...), the same on every rank) reduced over the ranks, and rank r keeps rows
 * [r*n, (r+1)*n): shape (n, ...). op SUM or AVG. */
FLX_API flx_tensor *flx_comm_reduce_scatter(flx_comm *comm, flx_tensor *x, flx_comm_op op);

/* Data-parallel training helpers. Each rank runs the same model on its share of the batch.
 * flx_comm_broadcast_params assigns root's value to every parameter (call once at start, so
 * every rank starts equal). flx_comm_average_grads replaces each parameter's .grad by its mean
 * over the ranks: gradients are packed into buckets of about bucket_bytes (0: 25 MiB), taken in
 * reverse parameter order (the order backward produces them), each bucket one all-reduce; the
 * work is queued (evaluated, no host sync on CUDA). Every rank must pass the same parameters, and
 * each must have a .grad on every rank or on none. With the mean loss over each rank's equal
 * share of the batch, the result is the gradient of the mean loss over the whole batch. */
FLX_API flx_status flx_comm_broadcast_params(flx_comm *comm, int32_t n, flx_tensor *const *params,
                                             int32_t root);
FLX_API flx_status flx_comm_average_grads(flx_comm *comm, int32_t n, flx_tensor *const *params,
                                          size_t bucket_bytes);

/* flx_backward(loss) and flx_comm_average_grads(comm, n, params, bucket_bytes) in one evaluation,
 * with the gradient communication overlapping the rest of backward: each bucket's all-reduce
 * starts as soon as the backward steps that make its gradients have run (buckets are filled in
 * reverse parameter order, so the last layers' go first), and the evaluation waits for it only
 * after the rest of backward. MPI: nonblocking collectives, waited for at the end. NCCL: the
 * all-reduces run on a communication stream of their own, ordered against the context's stream
 * by events (no host wait). Every parameter gets a .grad, the mean over the ranks of (its .grad
 * + d loss / d parameter): zeros where the loss does not depend on it, so that every rank
 * reduces the same buckets. Leaves not in params get no .grad. loss: one element, of the
 * communicator's context; params: as flx_comm_average_grads, each requiring grad. If the
 * evaluation fails midway, the collectives already started are completed (results discarded),
 * so the ranks stay in step. */
FLX_API flx_status flx_comm_backward(flx_comm *comm, flx_tensor *loss, int32_t n, flx_tensor *const *params,
                                     size_t bucket_bytes);

/* Counters of a communicator (this rank's view), for tests and tuning. */
typedef struct flx_comm_stats {
    uint64_t collectives;   /* collectives run or started on this communicator            */
    uint64_t bytes;         /* bytes of their inputs on this rank                         */
    uint64_t overlapped;    /* of those, started by flx_comm_backward and waited for later */
    uint64_t started_early; /* overlapped ones after whose start the context queued other
                               kernels before the next one started: buckets whose
                               communication overlaps the rest of backward                */
} flx_comm_stats;
FLX_API flx_status flx_comm_get_stats(const flx_comm *comm, flx_comm_stats *out);

/* Sharded optimiser state (ZeRO stage 1). Each rank keeps the optimiser state of 1/size of the
 * parameters (packed in order into one flat vector, padded to a multiple of the world size, split
 * into contiguous shards). flx_sharded_optim_step reduce-scatters the packed gradients (mean over
 * the ranks; a parameter without .grad counts as zeros, where flx_optim_step would skip it: the
 * shard is one tensor), runs one fused update of this rank's
 * shard, and all-gathers the updated shards back into every parameter (flx_assign). The update
 * rules are elementwise, so the parameters equal those of an unsharded optimiser stepping on
 * averaged gradients (flx_comm_average_grads + flx_optim_step), with 1/size of its state memory.
 * Parameters: distinct leaves made from data, one dtype (f32 or f64: f16/bf16 parameters are
 * FLX_ERR_DTYPE, and cfg->loss_scaling is FLX_ERR_INVALID_ARGUMENT; for mixed precision over
 * ranks use flx_comm_average_grads + flx_optim_step), the communicator's context. Every
 * rank creates it with the same parameter list and steps it together. flx_sharded_optim_shard
 * gives the optimiser of the shard (flx_optim_set_lr, flx_optim_get_state on the shard). */
typedef struct flx_sharded_optim flx_sharded_optim;
FLX_API flx_sharded_optim *flx_sharded_optim_create(flx_comm *comm, flx_optim_kind kind, int32_t n,
                                                    flx_tensor *const *params,
                                                    const flx_optim_config *cfg);
FLX_API flx_status flx_sharded_optim_step(flx_sharded_optim *opt);
FLX_API flx_status flx_sharded_optim_zero_grad(flx_sharded_optim *opt);
FLX_API flx_optim *flx_sharded_optim_shard(flx_sharded_optim *opt);
FLX_API void flx_sharded_optim_destroy(flx_sharded_optim *opt);

#ifdef __cplusplus
}
#endif

#endif /* FLUXION_H */
