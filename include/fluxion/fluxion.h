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
 * are per thread.
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
    FLX_ERR_NUMERIC = 10          /* a check on values failed (gradcheck, singular input) */
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
    FLX_F16 = 5,  /* reserved: not yet supported by any op                      */
    FLX_BF16 = 6, /* reserved: not yet supported by any op                      */
    FLX_DTYPE_COUNT
} flx_dtype;

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

/* ---------------------------------------------------------------------------------------------
 * Contexts
 * ------------------------------------------------------------------------------------------- */
typedef struct flx_ctx flx_ctx;
typedef struct flx_tensor flx_tensor;

/* Creates a context on a device; NULL with FLX_ERR_DEVICE if the device does not exist. */
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
} flx_ctx_stats;
FLX_API flx_status flx_ctx_get_stats(const flx_ctx *ctx, flx_ctx_stats *out);
/* Zeroes the counters; peak_bytes restarts from bytes_in_use. */
FLX_API flx_status flx_ctx_reset_stats(flx_ctx *ctx);

/* ---------------------------------------------------------------------------------------------
 * Tensor handles and scopes
 * ------------------------------------------------------------------------------------------- */
/* Adds a reference (returns t; NULL-safe). */
FLX_API flx_tensor *flx_retain(flx_tensor *t);
/* Drops a reference (NULL-safe). */
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
/* A copy of t on another context (any pair of devices). Not differentiable across contexts. */
FLX_API flx_tensor *flx_to_ctx(flx_tensor *t, flx_ctx *dst);
/* Converts elements to another dtype (float -> int truncates toward zero; to bool: x != 0). */
FLX_API flx_tensor *flx_cast(flx_tensor *t, flx_dtype dt);

/* Computes every tensor in ts (one evaluation, so shared work runs once) and keeps their data. */
FLX_API flx_status flx_eval(int32_t n, flx_tensor *const *ts);
/* In-place update of a leaf: dst takes the value of src (same shape, dtype and context). src is
 * computed first. Graph nodes that read dst's old value and have not run yet, or must be
 * recomputed, fail with FLX_ERR_STATE. dst keeps requires_grad. */
FLX_API flx_status flx_assign(flx_tensor *dst, flx_tensor *src);

/* ---------------------------------------------------------------------------------------------
 * Elementwise unary ops (f32, f64). Derivative conventions at kinks: abs'(0) = 0, relu'(0) = 0,
 * clamp' = 1 strictly inside (lo, hi) and 0 elsewhere.
 * ------------------------------------------------------------------------------------------- */
FLX_API flx_tensor *flx_neg(flx_tensor *x);
FLX_API flx_tensor *flx_abs(flx_tensor *x);
FLX_API flx_tensor *flx_sign(flx_tensor *x);       /* -1, 0, 1; zero gradient */
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
 * Elementwise binary ops with NumPy broadcasting. Both inputs have one dtype and one context.
 * Arithmetic: f32, f64 (add, sub, mul, maximum, minimum also i32, i64). Comparisons take every
 * dtype but bool and return FLX_BOOL; they have no gradient. maximum/minimum send the gradient
 * to a on ties.
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
/* out[..., c] = (index[...] == c) as dt (f32/f64/i32/i64), num_classes > 0. */
FLX_API flx_tensor *flx_one_hot(flx_tensor *index, int64_t num_classes, flx_dtype dt);
/* Constant padding: pads holds 2*ndim entries (before_0, after_0, before_1, after_1, ...), each
 * >= 0. */
FLX_API flx_tensor *flx_pad(flx_tensor *x, const int64_t *pads, double value);

/* ---------------------------------------------------------------------------------------------
 * Linear algebra
 * ------------------------------------------------------------------------------------------- */
/* NumPy matmul: (..., m, k) @ (..., k, n) with broadcast batch dims; a 1-d left operand is a
 * row vector, a 1-d right operand a column vector (that axis is removed from the result). f32,
 * f64. cuBLAS on CUDA (strict f32, no TF32 unless asked for). */
FLX_API flx_tensor *flx_matmul(flx_tensor *a, flx_tensor *b);
FLX_API flx_tensor *flx_dot(flx_tensor *a, flx_tensor *b);    /* 1-d . 1-d -> 0-d  */
FLX_API flx_tensor *flx_outer(flx_tensor *a, flx_tensor *b);  /* (n), (m) -> (n, m) */
FLX_API flx_tensor *flx_trace(flx_tensor *a);                 /* 2-d -> 0-d        */
/* 1-d v -> square matrix with v on the diagonal. */
FLX_API flx_tensor *flx_diag(flx_tensor *v);
/* 2-d (n, m) -> 1-d main diagonal of length min(n, m). */
FLX_API flx_tensor *flx_diagonal(flx_tensor *a);

/* ---------------------------------------------------------------------------------------------
 * Autodiff
 * ------------------------------------------------------------------------------------------- */
/* Marks a tensor as a leaf that collects gradients (f32/f64 only). Making an op result require
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

#ifdef __cplusplus
}
#endif

#endif /* FLUXION_H */
