/*
 * internal.h — private structures of the runtime: tensors as graph nodes, the op table, the
 * backend vtable and the helpers every op family uses. Never installed.
 */
#ifndef FLX_INTERNAL_H
#define FLX_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fluxion/fluxion.h"
#include "flx_kernels.h"

#if defined(__GNUC__)
#define FLX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define FLX_PRINTF(a, b)
#endif

/* ---------------------------------------------------------------------------------------------
 * Op ids: one per row of the op table. Grouped by family; each family file registers its rows.
 * ------------------------------------------------------------------------------------------- */
#define FLX_OP_LIST(X)                                                                    \
    /* sources */                                                                         \
    X(CONST) /* data given by the host, or a computed value frozen by detach/assign */    \
    X(FILL)  /* zeros/ones/full/eye/arange/uniform/normal: attrs.fill                */   \
    X(TO_CTX) /* copy from another context                                            */  \
    X(CAST)                                                                               \
    /* elementwise unary: attrs.unary */                                                  \
    X(UNARY)                                                                              \
    /* elementwise binary with broadcasting: attrs.binary */                              \
    X(BINARY)                                                                             \
    X(WHERE)                                                                              \
    /* reductions: attrs.reduce */                                                        \
    X(REDUCE)                                                                             \
    /* shape */                                                                           \
    X(RESHAPE)                                                                            \
    X(PERMUTE)                                                                            \
    X(BROADCAST)                                                                          \
    X(SLICE)                                                                              \
    X(PAD)                                                                                \
    X(CONCAT)                                                                             \
    X(INDEX_SELECT)                                                                       \
    X(INDEX_ADD)                                                                          \
    X(DIAG)                                                                               \
    X(DIAGONAL)                                                                           \
    /* linear algebra */                                                                  \
    X(MATMUL)                                                                             \
    /* autodiff */                                                                        \
    X(DETACH) /* shares its input's buffer; no gradient flows */                           \
    /* interop (runtime/io/interop.c) */                                                      \
    X(CUSTOM) /* flx_custom_fn: value computed at record time; user VJP/JVP: attrs.custom */ \
    /* nn layers: sliding windows (runtime/ops/conv.c): attrs.conv */                      \
    X(IM2COL)                                                                             \
    X(COL2IM)                                                                             \
    X(MAXPOOL)                                                                            \
    X(MAXPOOL_ARGMAX) /* i64 indices, no gradient */                                      \
    X(MAXPOOL_BACKWARD) /* inputs: g, then the i64 argmax indices or the pooled input */ \
    /* batch norm in training mode (runtime/ops/batch_norm.c): attrs.bnorm */              \
    X(BATCH_NORM) /* inputs: Y (value, no history), x, mu, rstd [, gamma] [, beta]; aliases Y */ \
    /* LU family (runtime/ops/lu.c): attrs.lu */                                \
    X(LU_FACTOR) /* packed (..., n*n + n + 1): LU, pivots, info; no gradient */           \
    X(LU_SOLVE)  /* inputs: A, LU, B (without B: B = I, an inverse) */                     \
    X(LU_DET)    /* inputs: A, LU; det / log|det| / sign / logdet */                      \
    X(LU_COFACTOR) /* inputs: A, LU; cofactor matrix adj(A)^T, division-free */                                         \
    X(LU_DET_GRAD) /* inputs: A [, g]: g adj(A)^T or g A^-T straight from A (n <= FLX_LU_REG_N) */ \
    /* softmax family (runtime/ops/softmax.c): attrs.softmax */                           \
    X(SOFTMAX)        /* softmax / log_softmax of x along an axis                   */    \
    X(SOFTMAX_BWD)    /* inputs y, v: the rows' Jacobian products (BWD, LOG_VJP/JVP) */    \
    X(CROSS_ENTROPY)  /* logits (N, C), labels (N): packed [gradient | losses | count] */  \
    X(CROSS_ENTROPY_LOSS) /* packed, logits, labels: the reduced loss (or packed: count) */  \
    X(CROSS_ENTROPY_GRAD) /* packed, logits, labels: the fused gradient (aliases packed) */  \
    X(CROSS_ENTROPY_BWD) /* inputs logits, labels, g (N): (softmax - onehot) g       */    \
    /* expm / eigh (runtime/ops/expm.c, runtime/ops/eigh.c) */                   \
    X(EXPM) /* inputs: Y (expm value, no history), A; aliases Y                  */       \
    X(EIGH) /* input: symmetric S (..., n, n) -> packed (..., n, n+1) = [V | w]   */      \
    /* attention (runtime/ops/attention.c): attrs.attention */                            \
    X(ATTENTION)      /* q, k, v -> o; forward only (no logsumexp kept)              */    \
    X(ATTENTION_FWD)  /* q, k, v -> packed [o | lse]; no gradient                     */    \
    X(ATTENTION_OUT)  /* packed, q, k, v -> o (aliases packed's leading elements)     */    \
    X(ATTENTION_BWD)  /* q, k, v, packed, g -> packed [dq | dk | dv | delta]; no gradient */ \
    X(ATTENTION_DQ)   /* bwd, q, k, v, g -> dq (aliases bwd's leading elements)       */    \
    X(ATTENTION_GRAD) /* bwd, q, k, v, g -> dk or dv (attrs.attention.part): a copy   */    \
    X(ATTENTION_JVP)  /* q, k, v, then the tangents present (attrs.attention.tmask)   */    \
    /* distributed (runtime/dist/): attrs.coll */                                         \
    X(COLLECTIVE) /* all-reduce, broadcast, all-gather, reduce-scatter over a comm */

typedef enum flx_op {
#define FLX_X_ENUM(NAME) FLX_OP_##NAME,
    FLX_OP_LIST(FLX_X_ENUM)
#undef FLX_X_ENUM
    FLX_OP_COUNT
} flx_op;

/* Attributes of a node: a small union, one member per family. */
typedef struct flx_attrs {
    union {
        flx_fill_args fill; /* pointers unused: kind, dtype, a, b, cols, seed */
        struct { int32_t op; double a, b; } unary;
        struct { int32_t op; } binary;
        struct { int32_t op; int32_t naxes; int32_t axes[FLX_MAX_DIMS]; bool keepdims; double param; } reduce;
        struct { int32_t perm[FLX_MAX_DIMS]; } permute;
        /* slice: start, step per axis (stop is implied by the output shape) */
        struct { int64_t start[FLX_MAX_DIMS]; int64_t step[FLX_MAX_DIMS]; } slice;
        /* pad: lo and interior (step - 1) per axis; value fills the rest */
        struct { int64_t lo[FLX_MAX_DIMS]; int64_t interior[FLX_MAX_DIMS]; double value; } pad;
        struct { int32_t axis; } concat;
        struct { int32_t axis; } index;
        struct { int32_t ta, tb; } matmul;
        /* flx_custom_fn callbacks; owned by the node's buffer (freed with it, runtime/io/interop.c) */
        struct { struct flx_custom_def *def; } custom;
        /* nn sliding windows (runtime/ops/conv.c): kernel, stride, padding, dilation (h, w) and
         * the input plane size (h, w) for ops whose output is the input geometry */
        struct { int64_t k[2], s[2], p[2], d[2], in_hw[2]; } conv;
        /* batch norm node (runtime/ops/batch_norm.c): which affine inputs follow rstd */
        struct { int32_t has_gamma, has_beta; } bnorm;
        /* LU family: flx_lu_mode, solve with A^T, report singular input */
        struct { int32_t mode; int32_t trans; int32_t check; } lu;
        /* softmax family (runtime/ops/softmax.c): kernel mode (flx_softmax_mode), axis,
         * scale = 1 / temperature; cross-entropy: ignore_index, reduction, whether the forward
         * node also computes the gradient, rows N and classes C of the logits */
        struct { int32_t mode; int32_t axis; double scale; int64_t ignore_index;
                 int32_t reduction; bool fused_grad; int64_t rows, classes; } softmax;
        /* attention (runtime/ops/attention.c): causal mask, scale (> 0), the gradient part
         * of a BWD read-out node (0 dq, 1 dk, 2 dv), which tangents a JVP node has (bit i: of
         * q, k, v), which gradients a BWD node computes (bit 0: dq, bit 1: dk and dv); qkv:
         * q, k, v are views of one tensor they tile exactly (a fused projection), read in
         * place: view i at element off[i] with strides vs and shape vdims (B, H, seq, dim) */
        struct { int32_t causal; double scale; int32_t part, tmask, want, qkv;
                 int64_t vdims[4], off[3]; flx_attention_strides vs; } attention;
        /* collectives (runtime/dist/): the communicator's registry id, flx_coll_kind,
         * flx_comm_op, broadcast root, flx_coll_phase (whole, or the start/wait halves of an
         * overlapped one) */
        struct { uint64_t comm_id; int32_t kind, op, root, phase; } coll;
    } u;
} flx_attrs;

/* A reference-counted device buffer. Reshape shares its input's buffer. */
typedef struct flx_buffer {
    int32_t refs;
    int32_t pins; /* of refs, those held by plans that only read the buffer (they do not make it
                     shared for in-place writers such as optimisers) */
    flx_ctx *ctx;
    void *ptr;
    size_t nbytes;
    /* External memory (flx_from_blob, custom-op results): released by deleter(ptr, deleter_ctx)
     * instead of the backend's free, and not counted in the allocator stats. NULL otherwise. */
    void (*deleter)(void *ptr, void *deleter_ctx);
    void *deleter_ctx;
    /* 1 + the size class of ptr's block when the record and its block may go back to the
     * context's buffer cache on release (runtime/core/tensor.c); 0 for every other record. */
    uint8_t cache_bin;
} flx_buffer;

enum { FLX_NODE_INLINE_IN = 4 };

/* A tensor is a graph node. Its buffer is NULL until computed, and again after the evaluator
 * frees it (it is then recomputed from its inputs when needed). */
struct flx_tensor {
    uint32_t magic;      /* FLX_TENSOR_LIVE while the node exists (handle validation)   */
    int32_t refs;        /* handles held by callers and scopes                          */
    int32_t scope_refs;  /* of refs, those held by open scopes (the caller cannot drop) */
    int32_t uses;        /* edges from live consumer nodes, and internal holders        */
    flx_ctx *ctx;
    flx_dtype dtype;
    int32_t ndim;
    int64_t shape[FLX_MAX_DIMS];
    int64_t numel;
    flx_op op;
    int32_t n_in;
    flx_tensor **in;             /* n_in inputs, each holding a use                     */
    uint32_t *in_version;        /* inputs' versions when this node was recorded        */
    /* Storage of in and in_version for nodes of up to FLX_NODE_INLINE_IN inputs (nearly every
     * op), so recording one allocates nothing but the node; larger fan-ins are malloc'ed. */
    flx_tensor *in_inline[FLX_NODE_INLINE_IN];
    uint32_t in_version_inline[FLX_NODE_INLINE_IN];
    flx_attrs attrs;
    flx_buffer *buf;
    uint32_t version;            /* bumped by flx_assign, optimiser steps and plan runs  */
    const char *changed_by;      /* the public call that last bumped version (messages)  */
    bool requires_grad;          /* a leaf that collects .grad, or a node on a grad path */
    bool is_leaf;                /* requires_grad set by the user (collects .grad)       */
    bool keep;                   /* data requested: keep the buffer while handles exist  */
    flx_tensor *grad;            /* accumulated gradient of a leaf (holds a ref)         */
    /* graph walks (runtime/core/schedule.c): the epoch of the last walk that reached the node
     * and, for a schedule, its step index */
    uint64_t mark;
    int32_t scratch;
};

/* Family-specific exec: computes the node's value into out (numel * dtype size bytes, already
 * allocated) from in[i], the data of input i, on the node's backend. It reads the node only for
 * its op, attributes, shapes and dtypes, never its or its inputs' buffers: the caller (evaluator
 * or plan) decides where every value lives. Alias ops have no exec. */
typedef flx_status (*flx_exec_fn)(const flx_tensor *node, void *out, const void *const *in);
/* VJP rule: given the cotangent g of node (same shape and dtype), sets gin[i] to the cotangent
 * of input i (shape and dtype of input i) or leaves it NULL where there is none. Rules run inside
 * a scope opened by the autodiff driver and build their results with public ops, so the scope
 * owns every tensor they make and returned pointers are borrowed (g itself may be returned).
 * Because rules are made of ops, they are themselves differentiable. */
typedef flx_status (*flx_vjp_fn)(flx_tensor *node, flx_tensor *g, flx_tensor **gin);
/* JVP rule: given tangents tin[i] of the inputs (NULL = zero), sets *tout to the tangent of the
 * output (borrowed, as for VJP rules) or NULL for zero. Filled in by the forward-mode work. */
typedef flx_status (*flx_jvp_fn)(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout);

enum {
    FLX_OPF_SOURCE = 1u << 0,  /* holds data that cannot be recomputed                  */
    FLX_OPF_ALIAS = 1u << 1,   /* the output shares input 0's buffer                    */
    FLX_OPF_NONDIFF = 1u << 2, /* no gradient flows through (integer or boolean result)  */
    /* With FLX_OPF_ALIAS: the value is input 0's, same shape and dtype; the other inputs only
     * carry derivatives. Elementwise fusion passes through such a node (runtime/core/fuse.c). */
    FLX_OPF_SAME_VALUE = 1u << 3,
};

typedef struct flx_op_def {
    const char *name;
    flx_exec_fn exec;
    flx_vjp_fn vjp;
    flx_jvp_fn jvp;
    uint32_t flags;
} flx_op_def;

const flx_op_def *flx_op_get(flx_op op);
/* Registration of each family's rows (the files of runtime/ops/). */
void flx_ops_register_creation(flx_op_def *table);
void flx_ops_register_unary(flx_op_def *table);
void flx_ops_register_binary(flx_op_def *table);
void flx_ops_register_reduce(flx_op_def *table);
void flx_ops_register_shape(flx_op_def *table);
void flx_ops_register_linalg(flx_op_def *table);
void flx_ops_register_autodiff(flx_op_def *table);
void flx_ops_register_interop(flx_op_def *table);
/* nn layers: sliding-window ops (runtime/ops/conv.c); CPU kernels in runtime/cpu/conv.c */
void flx_ops_register_conv(flx_op_def *table);
/* LU family: runtime/ops/lu.c; CPU reference kernels in runtime/cpu/lu.c */
void flx_ops_register_lu(flx_op_def *table);
/* softmax family: runtime/ops/softmax.c; CPU kernels in runtime/cpu/softmax.c */
void flx_ops_register_softmax(flx_op_def *table);
/* expm / eigh: runtime/ops/expm.c, runtime/ops/eigh.c; CPU Jacobi in runtime/cpu/eigh.c */
void flx_ops_register_expm(flx_op_def *table);
void flx_ops_register_batch_norm(flx_op_def *table);
/* The training-mode batch-norm node over the value y (runtime/ops/batch_norm.c: the contract of
 * its inputs is there); gamma and beta (1, C, 1, ...) views or NULL. */
flx_tensor *flx_batch_norm_node(flx_tensor *y, flx_tensor *x, flx_tensor *mu, flx_tensor *rstd,
                                flx_tensor *gamma, flx_tensor *beta);
void flx_ops_register_eigh(flx_op_def *table);
/* attention: runtime/ops/attention.c; CPU reference kernels in runtime/cpu/attention.c */
void flx_ops_register_attention(flx_op_def *table);
void flx_ops_register_collective(flx_op_def *table);

/* ---------------------------------------------------------------------------------------------
 * Backends
 * ------------------------------------------------------------------------------------------- */
/* Kernel-family ids, one per entry of FLX_KERNEL_FAMILIES (kernels/flx_kernels.h). */
typedef enum flx_kernel_family {
#define FLX_X_FAMILY_ID(ID, name, ARGS) FLX_KERNEL_##ID,
    FLX_KERNEL_FAMILIES(FLX_X_FAMILY_ID)
#undef FLX_X_FAMILY_ID
    FLX_KERNEL_COUNT
} flx_kernel_family;

/* What a backend's device_enter saved: the caller's current device context, to put back. */
typedef struct flx_device_saved {
    void *prev_ctx;  /* the driver context current on entry (CUcontext)               */
    int prev_device; /* the current device on entry, where the driver context is unknown */
    bool switched;   /* something was switched and must be put back                   */
} flx_device_saved;

typedef struct flx_backend {
    const char *name;
    flx_status (*init)(flx_ctx *ctx);
    void (*shutdown)(flx_ctx *ctx);
    /* Memory: alloc returns NULL with the error set on failure (after one cache flush). */
    void *(*alloc)(flx_ctx *ctx, size_t nbytes);
    void (*free)(flx_ctx *ctx, void *ptr);
    flx_status (*upload)(flx_ctx *ctx, void *dst, const void *src, size_t nbytes);
    flx_status (*download)(flx_ctx *ctx, void *dst, const void *src, size_t nbytes);
    flx_status (*copy_d2d)(flx_ctx *ctx, void *dst, const void *src, size_t nbytes);
    flx_status (*synchronize)(flx_ctx *ctx); /* also reads, reports and clears the error record */
    /* Kernel families, one slot each, in list order. A NULL slot is a family the backend does
     * not implement: callers go through the dispatcher (flx_kernel_<name>), which refuses it. */
#define FLX_X_FAMILY_SLOT(ID, name, ARGS) flx_status (*name)(flx_ctx *ctx, const ARGS *a);
    FLX_KERNEL_FAMILIES(FLX_X_FAMILY_SLOT)
#undef FLX_X_FAMILY_SLOT
    /* Profiler ranges (NVTX push/pop on CUDA); NULL -> no range. name is static. */
    void (*range_push)(flx_ctx *ctx, const char *name);
    void (*range_pop)(flx_ctx *ctx);
    /* Graph capture for plans (runtime/core/plan.c); NULL on CPU = replay op by op.
     * capture_begin starts recording the context stream's work into a graph (nothing runs until
     * launched); capture_end ends it: *graph gets an instantiated graph, or with keep false the
     * recording is discarded (after an error during capture) and *graph is NULL. */
    flx_status (*capture_begin)(flx_ctx *ctx);
    flx_status (*capture_end)(flx_ctx *ctx, bool keep, void **graph);
    flx_status (*graph_launch)(flx_ctx *ctx, void *graph);
    void (*graph_destroy)(flx_ctx *ctx, void *graph);
    /* flx_math_mode bits (validated by the caller); NULL -> nothing to set */
    flx_status (*set_math_mode)(flx_ctx *ctx, int32_t mode);
    /* Makes the context's device current for a stretch of backend calls (one evaluation) and
     * puts the caller's back after, so the calls inside find it current and switch nothing:
     * one switch and one restore per entry point instead of one pair per call. NULL: no device
     * to make current (CPU). Use through flx_device_enter/flx_device_leave. */
    flx_status (*device_enter)(flx_ctx *ctx, flx_device_saved *saved);
    void (*device_leave)(flx_ctx *ctx, flx_device_saved *saved);
} flx_backend;

/* A backend table's name, lifetime and memory slots, filled by naming convention so no table can
 * skip or cross-wire one: LP##init, LP##shutdown, then MP##alloc, MP##free, MP##upload,
 * MP##download, MP##copy_d2d, MP##synchronize. */
#define FLX_BACKEND_BASE_SLOTS(NAME, LP, MP)                                                     \
    .name = NAME, .init = LP##init, .shutdown = LP##shutdown, .alloc = MP##alloc,               \
    .free = MP##free, .upload = MP##upload, .download = MP##download, .copy_d2d = MP##copy_d2d, \
    .synchronize = MP##synchronize,

/* The dispatcher (runtime/core/dispatch.c): the one way to queue a kernel. Each
 * flx_kernel_<name>(ctx, args) refuses a family the context's backend does not implement
 * (FLX_ERR_UNSUPPORTED, naming family and backend), counts the launch in ctx->stats.kernels and
 * calls the backend. */
bool flx_backend_supports(const flx_backend *be, flx_kernel_family f);
#define FLX_X_FAMILY_DISPATCH(ID, name, ARGS) \
    flx_status flx_kernel_##name(flx_ctx *ctx, const ARGS *a);
FLX_KERNEL_FAMILIES(FLX_X_FAMILY_DISPATCH)
#undef FLX_X_FAMILY_DISPATCH
/* Profiler ranges (NVTX on CUDA; nothing where the backend has none). name is static. */
void flx_range_push(flx_ctx *ctx, const char *name);
void flx_range_pop(flx_ctx *ctx);
/* Runs one step of a schedule on the buffers given, inside a profiler range named after the op
 * ("fused" for a group): node's exec with out = the node's data and in[i] = input i's, or (g
 * non-NULL) the fused group g, whose root is node, with in[k] = the data of g->ext[k]. The
 * evaluator and plans both execute through it. */
struct flx_fused_group;
flx_status flx_step_exec(const flx_tensor *node, const struct flx_fused_group *g, void *out,
                         const void *const *in);

extern const flx_backend flx_backend_cpu;
#ifdef FLX_WITH_CUDA
extern const flx_backend flx_backend_cuda;
/* The context's stream (a cudaStream_t): DLPack interop and NCCL glue. */
void *flx_cuda_ctx_stream(flx_ctx *ctx);
#endif

struct flx_ctx {
    flx_device device;
    const flx_backend *be;
    flx_ctx_stats stats;
    int64_t live_tensors;   /* tensors of this context alive now                    */
    uint64_t epoch;         /* evaluator marks                                       */
    flx_kerr_record *kerr;  /* kernels' error record (device memory on CUDA): flx_kerr.h */
    void *backend_state;    /* stream, handles, pools (backend-private)              */
    int32_t math_mode;      /* flx_math_mode bits (runtime/core/math_mode.c)       */
    bool fusion;            /* fuse elementwise chains (runtime/core/fuse.c)       */
    bool capturing;         /* a plan is recording a CUDA graph: no buffer cache   */
    struct flx_buffer_cache *buffer_cache; /* small released buffers (tensor.c)    */
};

/* The backend's device_enter/device_leave around a stretch of backend calls. */
static inline flx_status flx_device_enter(flx_ctx *ctx, flx_device_saved *saved) {
    saved->switched = false;
    return ctx->be->device_enter ? ctx->be->device_enter(ctx, saved) : FLX_OK;
}
static inline void flx_device_leave(flx_ctx *ctx, flx_device_saved *saved) {
    if (saved->switched) ctx->be->device_leave(ctx, saved);
}

/* ---- logging and environment switches (runtime/core/log.c) ---- */
enum { FLX_LOG_OFF = 0, FLX_LOG_ERROR = 1, FLX_LOG_WARN = 2, FLX_LOG_INFO = 3, FLX_LOG_DEBUG = 4 };
/* The level from FLX_LOG_LEVEL (error|warn|info|debug; unset or unknown: off), read once. */
int flx_log_level(void);
/* flx_log_msg: prints "fluxion[level]: message" to stderr when level <= flx_log_level(); one write per call. */
void flx_log_msg(int level, const char *fmt, ...) FLX_PRINTF(2, 3);
/* False when FLX_FUSION=0 (contexts start with fusion off). */
bool flx_env_fusion(void);
/* ---- end logging ---- */

/* ---------------------------------------------------------------------------------------------
 * Errors (runtime/core/error.c)
 * ------------------------------------------------------------------------------------------- */
/* Records an error for this thread and returns s. */
flx_status flx_set_error(flx_status s, const char *fmt, ...) FLX_PRINTF(2, 3);
/* Records an error only if none is pending (used when NULL inputs propagate). */
flx_status flx_set_error_if_clear(flx_status s, const char *fmt, ...) FLX_PRINTF(2, 3);
/* "(2, 3) f32" style description of a tensor for messages; uses a small rotating buffer. */
const char *flx_describe(const flx_tensor *t);
const char *flx_shape_str(int32_t ndim, const int64_t *shape);
/* calloc(n, size), or NULL with FLX_ERR_OUT_OF_MEMORY "<who>: out of host memory" set. */
void *flx_host_calloc(size_t n, size_t size, const char *who);
/* free() of each of n pointers (NULL ones included); FLX_FREE_ALL(a, b, c) lists them inline. */
void flx_free_each(void *const *ptrs, size_t n);
#define FLX_FREE_ALL(...)                                                                          \
    flx_free_each((void *const[]){__VA_ARGS__}, sizeof((void *[]){__VA_ARGS__}) / sizeof(void *))

/* ---------------------------------------------------------------------------------------------
 * Tensors and graph building (runtime/core/tensor.c)
 * ------------------------------------------------------------------------------------------- */
/* Makes a node with the given inputs (each gains a use). Returns a new reference owned by the
 * caller (not registered in any scope), or NULL with the error set. requires_grad is derived
 * from the inputs, the op's flags and grad mode. */
flx_tensor *flx_node_new(flx_ctx *ctx, flx_op op, flx_dtype dt, int32_t ndim,
                         const int64_t *shape, int32_t n_in, flx_tensor *const *in,
                         const flx_attrs *attrs);
/* A CONST source holding a copy of the host data (numel * dtype size bytes), uploaded on ctx;
 * a new reference owned by the caller (not registered in any scope), or NULL with the error set.
 * Arguments are checked by the caller (runtime/ops/creation.c). */
flx_tensor *flx_const_new(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                          const void *data);
/* Registers a caller-owned reference with the current scope (if any) and returns t. Every
 * public op returns flx_adopt(node). */
flx_tensor *flx_adopt(flx_tensor *t);
/* Frees a node's input edge arrays (in, in_version) after the caller has detached them: the
 * inline storage of small nodes is left alone. Does not release the inputs' uses. */
void flx_node_edges_free(const flx_tensor *t, flx_tensor **in, uint32_t *in_version);
/* Releases a use held by the runtime (input edges, internal holders). */
void flx_unuse(flx_tensor *t);
void flx_use(flx_tensor *t);
bool flx_dtype_is_float(flx_dtype dt);
bool flx_dtype_valid(flx_dtype dt);
/* f16 and bf16: stored in 16 bits, computed in at least f32 (the CPU backend: double). */
static inline bool flx_dtype_is_half(flx_dtype dt) { return dt == FLX_F16 || dt == FLX_BF16; }
/* The dtype that composite ops (norms) compute in for inputs of dtype dt: f32 for the halves, whose
 * 8 (bf16) or 11 (f16) significant bits would lose a mean or a variance to cancellation; dt
 * itself otherwise. */
static inline flx_dtype flx_dtype_compute(flx_dtype dt) { return flx_dtype_is_half(dt) ? FLX_F32 : dt; }
/* Checks for an op: every input non-NULL (else propagates NULL), same context. Returns false
 * with the error set. */
bool flx_check_inputs(const char *op, int32_t n, flx_tensor *const *in);
/* Checks that a non-NULL t is a live tensor handle (not destroyed, not foreign memory); false
 * with FLX_ERR_STATE set. Destroyed nodes stay in a quarantine for a while so that this check
 * reads valid memory for a recently released handle. */
bool flx_check_handle(const char *op, const flx_tensor *t);
/* Checks a list of n tensors an API binds as leaves (what names one in messages: "input",
 * "parameter"): each non-NULL, of ctx, a CONST holding data (else the status not_source) and
 * listed once. Returns false with the error set. */
bool flx_check_source_list(const char *fn, const char *what, flx_status not_source, flx_ctx *ctx,
                           int32_t n, flx_tensor *const *ts);
/* Checks an f32/f64 matrix or batch of matrices with square last two dims (rank >= 2),
 * after flx_check_inputs. */
bool flx_check_square(const char *op, flx_tensor *a);
/* Checks a float dtype (f32, f64, f16, bf16) for an op. */
bool flx_check_float(const char *op, const flx_tensor *t);
/* Normalises an axis for ndim (negative counts from the end); false with the error set if out
 * of range. */
bool flx_norm_axis(const char *op, int32_t axis, int32_t ndim, int32_t *out);
/* An index k into n things (what names them in messages: "input index"): false with
 * FLX_ERR_INVALID_ARGUMENT "<fn>: <what> k outside [0, n)" set when k is out of range. */
bool flx_check_index(const char *fn, const char *what, int32_t k, int32_t n);
/* Row-major contiguous strides of a shape (elements). */
void flx_contiguous_strides(int32_t ndim, const int64_t *shape, int64_t *strides);
/* Product of the sizes; 0 when any size is 0, -1 when a size is negative or the product
 * overflows int64 (checked before each multiplication). */
int64_t flx_shape_numel(int32_t ndim, const int64_t *shape);
/* A shape an API is given: rank 0..FLX_MAX_DIMS, shape non-NULL when the rank is not 0, no
 * negative size. False with the error set. */
bool flx_check_shape(const char *op, int32_t ndim, const int64_t *shape);
/* Shapes (na, a) and (nb, b) are equal. */
bool flx_shape_eq(int32_t na, const int64_t *a, int32_t nb, const int64_t *b);

/* Buffers. Small blocks (up to 64 KiB) come from and return to a per-context cache of released
 * records with their blocks, so an eager op costs no allocator call (on CUDA: no
 * cudaMallocFromPoolAsync / cudaFreeAsync pair) in the common case. Reuse is ordered like the
 * backend's own stream-ordered free: every kernel runs on the context's one stream. Nothing
 * enters or leaves the cache while a plan captures a graph (ctx->capturing). */
flx_buffer *flx_buffer_new(flx_ctx *ctx, size_t nbytes);
void flx_buffer_release(flx_buffer *b);
/* Returns every cached block to the backend (context destruction). */
void flx_buffer_cache_flush(flx_ctx *ctx);
/* Device scratch of a kernel launcher, released right after the work that uses it is queued
 * (stream-ordered, like a buffer): from the same cache, so a small reduction or solver call costs
 * no allocator call either. Counted in allocs/frees, not in bytes_in_use. */
flx_buffer *flx_scratch_new(flx_ctx *ctx, size_t nbytes);
void flx_scratch_release(flx_buffer *b);
/* While a plan queues its replay on this thread: the device address of its run counter, which
 * random fills use as their Philox stream (so every replay draws new numbers); NULL otherwise
 * (runtime/core/plan.c). */
const int64_t *flx_plan_rng_stream(void);
/* Gives t a buffer no other tensor shares (copy-on-write for in-place writers). */
flx_status flx_tensor_make_private(flx_tensor *t);
static inline void *flx_data(const flx_tensor *t) { return t->buf ? t->buf->ptr : NULL; }
/* The raise site for the kernels that compute node t (kernels/flx_kerr.h). */
static inline flx_kerr flx_kerr_site(const flx_tensor *t) {
    flx_kerr k = {t->ctx->kerr, (int32_t)t->op};
    return k;
}
/* Turns a snapshot of an error record into a status and message (FLX_OK when nothing was
 * raised): the one mapping both backends use at their synchronisation points (runtime/core/kerr.c). */
flx_status flx_kerr_report(const flx_kerr_record *r);
/* Bytes of t's data (numel * dtype size). */
static inline size_t flx_nbytes(const flx_tensor *t) {
    return (size_t)t->numel * flx_dtype_size(t->dtype);
}
/* Same dtype and shape. */
bool flx_same_shape(const flx_tensor *a, const flx_tensor *b);

/* ---------------------------------------------------------------------------------------------
 * Evaluation (runtime/core/eval.c)
 * ------------------------------------------------------------------------------------------- */
/* Computes the nodes (and any ancestor without data), marking them keep. */
flx_status flx_eval_nodes(int32_t n, flx_tensor *const *ts);
/* Turns a computed node into a CONST source holding its data, dropping its inputs. */
void flx_freeze(flx_tensor *t);

/* a (..., k) @ b^T for b (n, k), a of rank >= 2, read through the matmul's transpose flag so b^T
 * is never copied, forward or backward (the dense layer; runtime/ops/linalg.c). Adopted. */
flx_tensor *flx_matmul_bt(flx_tensor *a, flx_tensor *b);

/* ---------------------------------------------------------------------------------------------
 * Elementwise fusion (runtime/core/fuse.c), shared by the evaluator and plans.
 * Given a post-order list of nodes to run (each marked with epoch), groups chains of float
 * elementwise nodes (unary, binary arithmetic, where) of one shape and dtype into programs of
 * one kernel each (flx_fused_args). A node joins its consumers' group only when every consumer
 * edge it has inside the list comes from that group and it is not pinned (a requested value, a
 * plan output), so its value is never needed outside the kernel: it gets no buffer at all.
 * ------------------------------------------------------------------------------------------- */
/* Roles of list positions: run alone, computed inside a group's kernel without memory, or (a
 * group's second output) written by the group's kernel at its root's step into memory of its
 * own, and not run at its own position. */
enum { FLX_FUSE_SINGLE = -1, FLX_FUSE_INTERIOR = -2, FLX_FUSE_OUTPUT = -3 };
/* What a group's one kernel call is: an elementwise program (args), or a dense layer's GEMM with
 * its bias and activation epilogue (gemm; members matmul [add] [relu], ext A, B [, bias]), or
 * a weight-gradient GEMM with its bias gradient (gemm.bgrad; members the matmul and the sum, the
 * earlier in the list being the root and the later one the second output; ext A, B, second). */
typedef enum flx_group_kind { FLX_GROUP_ELEMENTWISE = 0, FLX_GROUP_GEMM = 1 } flx_group_kind;
typedef struct flx_fused_group {
    flx_group_kind kind;
    flx_tensor *root;                           /* computed and stored by the kernel       */
    flx_tensor *second;                         /* a second output stored by the kernel (role
                                                   FLX_FUSE_OUTPUT), or NULL               */
    int32_t n_members;                          /* members, root and second included       */
    flx_tensor *members[FLX_FUSED_MAX_INSTR];   /* post-order, root last (root, second for
                                                   a two-output group)                     */
    int32_t n_ext;
    /* The kernel's inputs (args.in order); then, for a two-output group, the second output:
     * its address travels with the inputs' in the evaluator and in plans. */
    flx_tensor *ext[FLX_FUSED_MAX_IN];
    flx_fused_args args;                        /* the program; pointers set at exec time  */
    flx_gemm_ex_args gemm;                      /* FLX_GROUP_GEMM; pointers set at exec    */
} flx_fused_group;
typedef struct flx_fusion {
    int32_t *role; /* per list position: FLX_FUSE_SINGLE, FLX_FUSE_INTERIOR, FLX_FUSE_OUTPUT or
                      the index of the group it is the root of; NULL when nothing was fused;
                      the caller's array (flx_fusion_plan) */
    int32_t n_groups;
    flx_fused_group *groups;
} flx_fusion;
/* Plans the groups of order[0..n) (post-order, every node marked epoch; uses node->scratch).
 * pinned[0..n_pinned) must stay materialised; with honor_keep nodes marked keep too. Dense
 * layers become FLX_GROUP_GEMM groups where the backend has gemm_ex (flx_gemm_groups_plan).
 * role: n entries the caller owns and keeps while out is used (out->role points there when
 * something was fused). Does nothing (role NULL) when the context has fusion off. */
flx_status flx_fusion_plan(flx_tensor *const *order, size_t n, uint64_t epoch, int32_t n_pinned,
                           flx_tensor *const *pinned, bool honor_keep, int32_t *role,
                           flx_fusion *out);
void flx_fusion_free(flx_fusion *f);
/* Dense-layer groups (runtime/core/fuse_gemm.c): in order[0..n) (scratch = position, inputs in
 * the list marked epoch), each matmul of one B matrix whose value only a row-bias add reads, or only a relu,
 * becomes one FLX_GROUP_GEMM group with that chain (matmul [+ bias] [relu]; interior members not
 * pinned and read by nothing else in the list); each other 2-d matmul with a sum of one of its
 * operands over its k axis (the bias gradient beside a weight gradient) becomes a two-output
 * group. Sets member_of[i] to the group index of each member (-1 elsewhere) and *n_groups;
 * reads and reader are the caller's scratch of n entries each, kept for flx_gemm_groups_write,
 * which stores the groups to out[0..*n_groups). */
void flx_gemm_groups_plan(flx_tensor *const *order, size_t n, uint64_t epoch, const uint8_t *pin,
                          int32_t *reads, int32_t *reader, int32_t *member_of, int32_t *n_groups);
void flx_gemm_groups_write(flx_tensor *const *order, size_t n, uint64_t epoch, const uint8_t *pin,
                           const int32_t *reads, const int32_t *reader, const int32_t *member_of,
                           flx_fused_group *out);
/* Queues group g's kernel: reads ext[k] (the data of g->ext[k]), writes out (the root's data). */
flx_status flx_fused_group_exec(const flx_fused_group *g, void *out, const void *const *ext);
/* ---------------------------------------------------------------------------------------------
 * Scheduling (runtime/core/schedule.c), shared by the evaluator and plans
 * ------------------------------------------------------------------------------------------- */
/* A fresh mark value for graph walks (process-wide, atomic). */
uint64_t flx_next_epoch(void);
/* Post-order (inputs before consumers) of the nodes reachable from roots through nodes for
 * which enter(t) holds, each marked with epoch; iterative, so long chains cannot overflow the C
 * stack. *out is malloc'ed (the caller frees it). */
typedef bool (*flx_enter_fn)(const flx_tensor *t);
flx_status flx_graph_postorder(int32_t n, flx_tensor *const *roots, uint64_t epoch,
                               flx_enter_fn enter, flx_tensor ***out, size_t *n_out);
/* What to run, in which order and groups, and how long each value lives. Every scheduled node
 * has mark == epoch and scratch == its step index until the next walk that marks it. */
typedef struct flx_schedule {
    uint64_t epoch;
    size_t n;
    flx_tensor **nodes;  /* the steps, post-order (inputs before consumers)                     */
    int32_t *read_at;    /* per step: the step whose execution reads its inputs (itself, or its
                            fused group's root)                                                 */
    int32_t *last_use;   /* per step: the last step reading its value, -1 if no step does       */
    flx_fusion fusion;   /* role NULL when nothing was fused                                    */
} flx_schedule;
/* Schedules the nodes reachable from roots through enter: walk, fusion (roots stay
 * materialised; with honor_keep nodes marked keep too), lifetimes. */
flx_status flx_schedule_build(int32_t n_roots, flx_tensor *const *roots, flx_enter_fn enter,
                              bool honor_keep, flx_schedule *out);
void flx_schedule_free(flx_schedule *s);
/* FLX_FUSE_SINGLE, FLX_FUSE_INTERIOR, FLX_FUSE_OUTPUT or the index of the group step i is the
 * root of. */
static inline int32_t flx_schedule_role(const flx_schedule *s, size_t i) {
    return s->fusion.role ? s->fusion.role[i] : FLX_FUSE_SINGLE;
}
/* Not a source and not a leaf: a value that can be dropped and computed again. */
static inline bool flx_recomputable(const flx_tensor *t) {
    return !(flx_op_get(t->op)->flags & FLX_OPF_SOURCE) && !t->is_leaf;
}

/* Strides of x read over an output index space (nd, oshape) under NumPy broadcasting (0 on
 * broadcast axes); runtime/ops/binary.c. */
void flx_broadcast_strides(const flx_tensor *x, int32_t nd, const int64_t *oshape,
                           int64_t *strides);

/* x as a strided view of the tensor below its chain of slices (positive steps), reshapes and
 * permutes that have not run, with inputs unchanged since: element i of x is element off + sum
 * i[d] strides[d] of base. base == x (contiguous) when there is no such chain or it cannot be a
 * view; runtime/ops/shape.c. Lets an op read its operand in place instead of a copy. */
typedef struct flx_view {
    flx_tensor *base;
    int64_t off;
    int32_t ndim;
    int64_t shape[FLX_MAX_DIMS], strides[FLX_MAX_DIMS];
} flx_view;
flx_view flx_view_of(flx_tensor *x);

/* ---------------------------------------------------------------------------------------------
 * Helpers for rules (runtime/core/autodiff.c): reduce a cotangent over broadcast axes back to shape.
 * Returns a new reference; g itself (retained) when shapes already match.
 * ------------------------------------------------------------------------------------------- */
flx_tensor *flx_sum_to_shape(flx_tensor *g, int32_t ndim, const int64_t *shape);
/* The status of a rule or builder whose result is r: NULL is a failure (a NULL that means "zero"
 * never comes here), reported with the op's error, never a stale FLX_OK. */
flx_status flx_rule_status(const flx_tensor *r);
/* JVP of an op that is linear in its float inputs (the others, such as indices, are carried
 * as they are): the op itself, with the same attributes (attrs NULL) or the ones given, applied
 * to the tangents, NULL ones read as zeros; NULL when every tangent is. */
flx_status flx_jvp_linear(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout);
flx_status flx_jvp_linear_attrs(flx_tensor *node, flx_tensor *const *tin, const flx_attrs *attrs,
                                flx_tensor **tout);
/* JVP of an op whose tangent is always zero (sources, indices, factorisations with no
 * gradient): *tout = NULL. */
flx_status flx_jvp_zero(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout);
/* Ends the innermost scope keeping r (if any) for the caller: the return of a composite op
 * built in its own scope. */
flx_tensor *flx_scope_return(flx_tensor *r);
/* Internal unary ops used by derivative rules: step(x) = x > 0 ? 1 : 0, inside(x) = lo < x < hi. */
flx_tensor *flx_unary_step(flx_tensor *x);
flx_tensor *flx_unary_inside(flx_tensor *x, double lo, double hi);
/* Thread-local grad mode depth (0 = enabled). */
int flx_no_grad_depth(void);

/* Optimisers inside plans (runtime/nn/optim.c): the fused update of parameters idx[0..m)
 * from gradients at grad_ptrs, queued only (shared by flx_optim_step and plan replays); the
 * parameter list; a hold released by flx_optim_destroy. */
flx_status flx_optim_queue_update(flx_optim *o, int32_t m, const int32_t *idx,
                                  void *const *grad_ptrs);
int32_t flx_optim_params(const flx_optim *o, flx_tensor *const **params);
void flx_optim_retain(flx_optim *o);
/* After the update of parameters idx[0..m) was queued: bumps their versions (changed_by = by)
 * and the loss scale's, and records them as in step with the f16/bf16 master copies. */
void flx_optim_mark_updated(flx_optim *o, int32_t m, const int32_t *idx, const char *by);
/* Reseeds the master copy of every f16/bf16 parameter changed since the optimiser last wrote it
 * (queued; plans call it at compile, flx_optim_step before each update). */
flx_status flx_optim_sync_masters(flx_optim *o);

/* Context bookkeeping for stats (runtime/core/context.c) */
void flx_stats_alloc(flx_ctx *ctx, size_t nbytes);
void flx_stats_free(flx_ctx *ctx, size_t nbytes);

#endif /* FLX_INTERNAL_H */
