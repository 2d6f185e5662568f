/* tensor.c — tensor handles as graph nodes: creation, reference counts, scopes, accessors. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Handle validation. A node carries FLX_TENSOR_LIVE while it exists; a destroyed node is marked
 * FLX_TENSOR_DEAD, cleared, and kept in a process-wide quarantine of the most recently destroyed
 * nodes before its memory goes back to malloc, so that a stale handle (double release, use
 * after release) reads valid memory and is reported as FLX_ERR_STATE instead of corrupting the
 * heap. A handle older than the quarantine's capacity cannot be told apart from freed memory. */
#define FLX_TENSOR_LIVE 0x544c5846u /* "FLXT" */
#define FLX_TENSOR_DEAD 0x44414544u /* "DEAD" */
#define FLX_QUARANTINE 4096

static flx_tensor *g_quarantine[FLX_QUARANTINE];
static size_t g_quarantine_next;
static atomic_flag g_quarantine_lock = ATOMIC_FLAG_INIT;

/* Recycling. A node leaving the quarantine is not handed back to malloc but kept (up to
 * FLX_NODE_SPARE of them) on a free list that node_alloc takes from first, so recording ops in a
 * loop costs no host allocation once the quarantine has filled. Nodes are reused only after they
 * have passed through the whole quarantine, so stale handles are detected exactly as before. A
 * spare node still reads FLX_TENSOR_DEAD; the list is linked through its in field. */
#define FLX_NODE_SPARE 1024
/* Under AddressSanitizer nothing is recycled (no spare nodes, no cached buffers, exact-size
 * blocks): every destroyed node and released buffer goes back to the allocator, so ASan still
 * reports a use after free through a handle staler than the quarantine, and an overflow past a
 * tensor's bytes that a rounded-up cached block would hide. */
#if defined(__SANITIZE_ADDRESS__)
#define FLX_RECYCLE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FLX_RECYCLE 0
#endif
#endif
#ifndef FLX_RECYCLE
#define FLX_RECYCLE 1
#endif
static flx_tensor *g_spare;
static size_t g_n_spare;
/* Nodes alive in the process, counted under the same lock as the pool (one locked instruction
 * per node made or destroyed, not one more for the counter). */
static int64_t g_live_tensors;

static void pool_lock(void) {
    while (atomic_flag_test_and_set_explicit(&g_quarantine_lock, memory_order_acquire)) {
    }
}
static void pool_unlock(void) { atomic_flag_clear_explicit(&g_quarantine_lock, memory_order_release); }

static void quarantine_put(flx_tensor *t) {
    pool_lock();
    g_live_tensors--;
    flx_tensor *old = g_quarantine[g_quarantine_next];
    g_quarantine[g_quarantine_next] = t;
    g_quarantine_next = (g_quarantine_next + 1) % FLX_QUARANTINE;
    if (FLX_RECYCLE && old && g_n_spare < FLX_NODE_SPARE) {
        old->in = (flx_tensor **)(void *)g_spare;
        g_spare = old;
        g_n_spare++;
        old = NULL;
    }
    pool_unlock();
    free(old);
}

/* Undoes node_alloc for a node that never became live (t may be NULL). */
static void node_unalloc(flx_tensor *t) {
    pool_lock();
    g_live_tensors--;
    pool_unlock();
    free(t);
}

/* A zeroed node: a spare one (cleared by destroy_chain) when there is one, else fresh memory. */
static flx_tensor *node_alloc(void) {
    pool_lock();
    flx_tensor *t = g_spare;
    if (t) {
        g_spare = (flx_tensor *)(void *)t->in;
        g_n_spare--;
    }
    g_live_tensors++;
    pool_unlock();
    if (t) {
        t->magic = 0; /* the rest was cleared when the node was destroyed */
        t->in = NULL;
        return t;
    }
    t = (flx_tensor *)calloc(1, sizeof *t);
    if (!t) node_unalloc(NULL);
    return t;
}

void flx_node_edges_free(const flx_tensor *t, flx_tensor **in, uint32_t *in_version) {
    if (in != t->in_inline) free(in);
    if (in_version != t->in_version_inline) free(in_version);
}

bool flx_check_handle(const char *op, const flx_tensor *t) {
    if (t->magic == FLX_TENSOR_LIVE) return true;
    if (t->magic == FLX_TENSOR_DEAD)
        flx_set_error(FLX_ERR_STATE,
                      "%s: tensor handle %p was released and no longer exists (use after "
                      "release, or a double release)",
                      op, (const void *)t);
    else
        flx_set_error(FLX_ERR_STATE, "%s: %p is not a fluxion tensor handle", op, (const void *)t);
    return false;
}

int64_t flx_live_tensors(void) {
    pool_lock();
    int64_t n = g_live_tensors;
    pool_unlock();
    return n;
}

/* ---- buffers ---------------------------------------------------------------------------- */
/* The cache: released records of up to FLX_BIN_DEPTH blocks per power-of-two size class from
 * 64 B to 64 KiB, at most about 1 MiB per context. A block of class k holds 64 << k bytes. */
#define FLX_BIN_MIN_SHIFT 6
#define FLX_BIN_COUNT 11
#define FLX_BIN_DEPTH 8

struct flx_buffer_cache {
    int32_t n[FLX_BIN_COUNT];
    flx_buffer *bin[FLX_BIN_COUNT][FLX_BIN_DEPTH];
};

/* The class of a block of nbytes, or -1 when it is too large to cache. */
static int size_class(size_t nbytes) {
    if (nbytes > ((size_t)1 << (FLX_BIN_MIN_SHIFT + FLX_BIN_COUNT - 1))) return -1;
    int k = 0;
    while (((size_t)1 << (FLX_BIN_MIN_SHIFT + k)) < nbytes) k++;
    return k;
}

flx_buffer *flx_buffer_new(flx_ctx *ctx, size_t nbytes) {
    /* Zero-byte tensors still get a distinct non-NULL pointer: allocate one byte. */
    size_t want = nbytes ? nbytes : 1;
    int k = ctx->capturing || !FLX_RECYCLE ? -1 : size_class(want);
    struct flx_buffer_cache *c = ctx->buffer_cache;
    if (k >= 0 && c && c->n[k] > 0) {
        flx_buffer *b = c->bin[k][--c->n[k]];
        b->refs = 1;
        b->nbytes = want;
        flx_stats_alloc(ctx, want);
        return b;
    }
    flx_buffer *b = (flx_buffer *)calloc(1, sizeof *b);
    if (!b) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "out of host memory for a buffer record");
        return NULL;
    }
    const size_t block = k >= 0 ? (size_t)1 << (FLX_BIN_MIN_SHIFT + k) : want;
    b->ptr = ctx->be->alloc(ctx, block);
    if (!b->ptr && ctx->buffer_cache && !ctx->capturing) {
        /* Out of memory: give the cached blocks back and try once more. */
        flx_buffer_cache_flush(ctx);
        flx_clear_error();
        b->ptr = ctx->be->alloc(ctx, block);
    }
    if (!b->ptr) {
        free(b);
        return NULL;
    }
    b->refs = 1;
    b->ctx = ctx;
    b->nbytes = want;
    b->cache_bin = (uint8_t)(k + 1);
    flx_stats_alloc(ctx, want);
    return b;
}

/* Keeps a released record of the allocator's for reuse; false when its class is full. */
static bool cache_put(flx_buffer *b) {
    flx_ctx *ctx = b->ctx;
    if (!b->cache_bin || ctx->capturing) return false;
    struct flx_buffer_cache *c = ctx->buffer_cache;
    if (!c) {
        c = (struct flx_buffer_cache *)calloc(1, sizeof *c);
        if (!c) return false;
        ctx->buffer_cache = c;
    }
    int k = b->cache_bin - 1;
    if (c->n[k] == FLX_BIN_DEPTH) return false;
    b->pins = 0;
    c->bin[k][c->n[k]++] = b;
    return true;
}

void flx_buffer_release(flx_buffer *b) {
    if (!b) return;
    if (--b->refs > 0) return;
    if (b->deleter) {
        b->deleter(b->ptr, b->deleter_ctx); /* external memory: not the allocator's */
        free(b);
        return;
    }
    flx_stats_free(b->ctx, b->nbytes);
    if (cache_put(b)) return;
    b->ctx->be->free(b->ctx, b->ptr);
    free(b);
}

/* Scratch is an ordinary buffer whose bytes the statistics leave out (it lives only while its
 * launcher queues work), so the buffer path itself stays as it is. */
flx_buffer *flx_scratch_new(flx_ctx *ctx, size_t nbytes) {
    const uint64_t peak = ctx->stats.peak_bytes;
    flx_buffer *b = flx_buffer_new(ctx, nbytes);
    if (b) {
        ctx->stats.bytes_in_use -= b->nbytes;
        ctx->stats.peak_bytes = peak;
    }
    return b;
}

void flx_scratch_release(flx_buffer *b) {
    if (!b) return;
    b->ctx->stats.bytes_in_use += b->nbytes;
    flx_buffer_release(b);
}

void flx_buffer_cache_flush(flx_ctx *ctx) {
    struct flx_buffer_cache *c = ctx->buffer_cache;
    if (!c) return;
    for (int k = 0; k < FLX_BIN_COUNT; k++)
        for (int32_t i = 0; i < c->n[k]; i++) {
            ctx->be->free(ctx, c->bin[k][i]->ptr);
            free(c->bin[k][i]);
        }
    free(c);
    ctx->buffer_cache = NULL;
}

/* ---- nodes ------------------------------------------------------------------------------ */
bool flx_check_source_list(const char *fn, const char *what, flx_status not_source, flx_ctx *ctx,
                           int32_t n, flx_tensor *const *ts) {
    for (int32_t k = 0; k < n; k++) {
        flx_tensor *t = ts[k];
        if (!t) {
            flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: %s %d is NULL", fn, what, (int)k);
            return false;
        }
        if (!flx_check_handle(fn, t)) return false;
        if (t->ctx != ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: %s %d %s belongs to another context", fn, what,
                          (int)k, flx_describe(t));
            return false;
        }
        if (t->op != FLX_OP_CONST || !t->buf) {
            flx_set_error(not_source,
                          "%s: %s %d %s is an op result (%s), not a source tensor made from data "
                          "(flx_from_host, flx_from_blob, or a detached value)",
                          fn, what, (int)k, flx_describe(t), flx_op_get(t->op)->name);
            return false;
        }
        for (int32_t j = 0; j < k; j++)
            if (ts[j] == t) {
                flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s %d repeats %s %d", fn, what, (int)k,
                              what, (int)j);
                return false;
            }
    }
    return true;
}

bool flx_check_shape(const char *op, int32_t ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > FLX_MAX_DIMS || (ndim > 0 && !shape)) {
        flx_set_error(FLX_ERR_SHAPE, "%s: bad shape (rank %d%s)", op, (int)ndim,
                      ndim > 0 && !shape ? ", shape NULL" : "");
        return false;
    }
    for (int32_t i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            flx_set_error(FLX_ERR_SHAPE, "%s: negative size in shape %s", op,
                          flx_shape_str(ndim, shape));
            return false;
        }
    return true;
}

bool flx_check_square(const char *op, flx_tensor *a) {
    if (!flx_check_inputs(op, 1, &a)) return false;
    if (!flx_check_float(op, a)) return false;
    /* LU, eigensolvers and the Pade series with 8 or 11 significant bits would return noise
     * (a pivot loses all its digits after a few eliminations); the caller casts to f32. */
    if (flx_dtype_is_half(a->dtype)) {
        flx_set_error(FLX_ERR_DTYPE, "%s: linear algebra takes f32 or f64, got %s (cast with flx_cast)",
                      op, flx_describe(a));
        return false;
    }
    if (a->ndim < 2) {
        flx_set_error(FLX_ERR_SHAPE, "%s: needs a matrix or a batch of matrices (rank >= 2), got %s",
                      op, flx_describe(a));
        return false;
    }
    if (a->shape[a->ndim - 1] != a->shape[a->ndim - 2]) {
        flx_set_error(FLX_ERR_SHAPE, "%s: matrices must be square, got %s", op, flx_describe(a));
        return false;
    }
    return true;
}

bool flx_shape_eq(int32_t na, const int64_t *a, int32_t nb, const int64_t *b) {
    return na == nb && (na == 0 || memcmp(a, b, sizeof(int64_t) * (size_t)na) == 0);
}

bool flx_same_shape(const flx_tensor *a, const flx_tensor *b) {
    return a->dtype == b->dtype && flx_shape_eq(a->ndim, a->shape, b->ndim, b->shape);
}

int64_t flx_shape_numel(int32_t ndim, const int64_t *shape) {
    for (int32_t i = 0; i < ndim; i++)
        if (shape[i] == 0) return 0; /* an empty axis makes the product 0 whatever the others */
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] < 0 || n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

void flx_contiguous_strides(int32_t ndim, const int64_t *shape, int64_t *strides) {
    int64_t s = 1;
    for (int32_t i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= shape[i];
    }
}

flx_tensor *flx_node_new(flx_ctx *ctx, flx_op op, flx_dtype dt, int32_t ndim,
                         const int64_t *shape, int32_t n_in, flx_tensor *const *in,
                         const flx_attrs *attrs) {
    const flx_op_def *def = flx_op_get(op);
    if (ndim < 0 || ndim > FLX_MAX_DIMS) {
        flx_set_error(FLX_ERR_SHAPE, "%s: rank %d is outside [0, %d]", def->name, ndim,
                      FLX_MAX_DIMS);
        return NULL;
    }
    if (ndim > 0 && !shape) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: shape is NULL for rank %d", def->name, ndim);
        return NULL;
    }
    int64_t numel = 1;
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            flx_set_error(FLX_ERR_SHAPE, "%s: negative size in shape %s", def->name,
                          flx_shape_str(ndim, shape));
            return NULL;
        }
        /* Both factors below 2^28 cannot pass the bound: the division only runs for big ones. */
        bool small = numel < ((int64_t)1 << 28) && shape[i] < ((int64_t)1 << 28);
        if (!small && shape[i] > 0 && numel > INT64_MAX / 16 / shape[i]) {
            flx_set_error(FLX_ERR_SHAPE, "%s: shape %s is too large", def->name,
                          flx_shape_str(ndim, shape));
            return NULL;
        }
        numel *= shape[i];
    }
    flx_tensor *t = node_alloc();
    if (!t) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", def->name);
        return NULL;
    }
    if (n_in > FLX_NODE_INLINE_IN) {
        t->in = (flx_tensor **)calloc((size_t)n_in, sizeof *t->in);
        t->in_version = (uint32_t *)calloc((size_t)n_in, sizeof *t->in_version);
        if (!t->in || !t->in_version) {
            free(t->in);
            free(t->in_version);
            node_unalloc(t);
            flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", def->name);
            return NULL;
        }
    } else if (n_in > 0) {
        t->in = t->in_inline;
        t->in_version = t->in_version_inline;
    }
    t->magic = FLX_TENSOR_LIVE;
    t->refs = 1;
    t->ctx = ctx;
    t->dtype = dt;
    t->ndim = ndim;
    for (int32_t i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->numel = numel;
    t->op = op;
    t->n_in = n_in;
    bool rg = false;
    for (int32_t i = 0; i < n_in; i++) {
        t->in[i] = in[i];
        t->in_version[i] = in[i]->version;
        in[i]->uses++;
        rg = rg || in[i]->requires_grad;
    }
    if (attrs) t->attrs = *attrs;
    t->requires_grad = rg && !(def->flags & FLX_OPF_NONDIFF) && flx_no_grad_depth() == 0 &&
                       flx_dtype_is_float(dt);
    ctx->live_tensors++;
    return t;
}

/* Destroys nodes without recursion: a long chain must not overflow the C stack. */
static void destroy_chain(flx_tensor *t) {
    /* The stack starts on the C stack and moves to the heap only for wide fan-ins. */
    enum { LOCAL = 32 };
    flx_tensor *local[LOCAL];
    flx_tensor **stack = local;
    size_t cap = LOCAL, n = 0;
    bool can_grow = true; /* false after a failed growth: later inputs leak rather than crash */
    stack[n++] = t;
    while (n > 0) {
        flx_tensor *x = stack[--n];
        flx_buffer_release(x->buf);
        x->buf = NULL;
        flx_tensor *g = x->grad;
        x->grad = NULL;
        for (int32_t i = 0; i < x->n_in; i++) {
            flx_tensor *p = x->in[i];
            if (--p->uses == 0 && p->refs == 0) {
                if (n == cap && can_grow) {
                    flx_tensor **ns = (flx_tensor **)(stack == local ? malloc(2 * cap * sizeof *stack)
                                                                     : realloc(stack, 2 * cap * sizeof *stack));
                    if (ns) {
                        if (stack == local) memcpy(ns, local, sizeof local);
                        stack = ns;
                        cap *= 2;
                    } else {
                        can_grow = false;
                    }
                }
                if (n < cap) stack[n++] = p;
            }
        }
        x->ctx->live_tensors--;
        flx_node_edges_free(x, x->in, x->in_version);
        memset(x, 0, sizeof *x);
        x->magic = FLX_TENSOR_DEAD;
        quarantine_put(x);
        if (g) flx_release(g);
    }
    if (stack != local) free(stack);
}

flx_tensor *flx_retain(flx_tensor *t) {
    if (!t) return NULL;
    if (!flx_check_handle("flx_retain", t)) return NULL;
    t->refs++;
    return t;
}

/* Drops one reference, whoever holds it (the caller or a scope). */
static void drop_ref(flx_tensor *t) {
    if (--t->refs > 0) return;
    if (t->uses == 0) {
        destroy_chain(t);
    } else if (flx_recomputable(t)) {
        /* No handle left: the data is no longer requested; consumers recompute it if needed. */
        t->keep = false;
        flx_buffer_release(t->buf);
        t->buf = NULL;
    }
}

void flx_release(flx_tensor *t) {
    if (!t) return;
    if (!flx_check_handle("flx_release", t)) return;
    if (t->refs <= 0) {
        flx_set_error(FLX_ERR_STATE,
                      "flx_release: tensor %s has no reference left to drop (released twice)",
                      flx_describe(t));
        return;
    }
    if (t->refs <= t->scope_refs) {
        /* The scope's reference is the scope's: dropping it here would free a tensor the scope
         * still lists and releases again at flx_scope_end. */
        flx_set_error(FLX_ERR_STATE,
                      "flx_release: tensor %s is owned by an open scope and is released by "
                      "flx_scope_end; flx_retain it first to hold a reference of your own",
                      flx_describe(t));
        return;
    }
    drop_ref(t);
}

void flx_use(flx_tensor *t) { t->uses++; }

void flx_unuse(flx_tensor *t) {
    if (!t) return;
    if (--t->uses == 0 && t->refs == 0) destroy_chain(t);
}

/* Gives t a buffer nobody else holds (copying its data; computing t first if needed), unless it
 * already has one. Used by writers in place (optimisers, plan assignments): computed buffers are
 * otherwise immutable because reshapes, detaches and flx_assign may share them. */
flx_status flx_tensor_make_private(flx_tensor *t) {
    flx_buffer *old = t->buf;
    if (!old) {
        flx_status s = flx_eval_nodes(1, &t);
        if (s != FLX_OK) return s;
        old = t->buf;
    }
    if (old->refs - old->pins == 1 && !old->deleter) return FLX_OK;
    size_t nbytes = (size_t)t->numel * flx_dtype_size(t->dtype);
    flx_buffer *nb = flx_buffer_new(t->ctx, nbytes);
    if (!nb) return flx_last_status();
    if (nbytes) {
        flx_status s = t->ctx->be->copy_d2d(t->ctx, nb->ptr, old->ptr, nbytes);
        if (s != FLX_OK) {
            flx_buffer_release(nb);
            return s;
        }
    }
    t->buf = nb;
    flx_buffer_release(old);
    return FLX_OK;
}

/* ---- scopes ----------------------------------------------------------------------------- */
typedef struct scope {
    flx_tensor **items;
    size_t n, cap;
} scope;

static _Thread_local scope *tl_scopes;
static _Thread_local int32_t tl_depth, tl_scope_cap;

flx_status flx_scope_begin(void) {
    if (tl_depth == tl_scope_cap) {
        int32_t nc = tl_scope_cap ? 2 * tl_scope_cap : 8;
        scope *ns = (scope *)realloc(tl_scopes, (size_t)nc * sizeof *ns);
        if (!ns) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_scope_begin: out of host memory");
        memset(ns + tl_scope_cap, 0, (size_t)(nc - tl_scope_cap) * sizeof *ns);
        tl_scopes = ns;
        tl_scope_cap = nc;
    }
    tl_scopes[tl_depth].n = 0;
    tl_depth++;
    return FLX_OK;
}

static void scope_push(scope *s, flx_tensor *t) {
    if (s->n == s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 64;
        flx_tensor **ni = (flx_tensor **)realloc(s->items, nc * sizeof *ni);
        if (!ni) {
            /* Cannot record ownership: the tensor stays alive (a leak, never a crash). */
            flx_set_error(FLX_ERR_OUT_OF_MEMORY, "scope: out of host memory; a tensor leaks");
            return;
        }
        s->items = ni;
        s->cap = nc;
    }
    s->items[s->n++] = t;
    t->scope_refs++;
}

int32_t flx_scope_depth(void) { return tl_depth; }

flx_tensor *flx_adopt(flx_tensor *t) {
    if (t && tl_depth > 0) scope_push(&tl_scopes[tl_depth - 1], t);
    return t;
}

flx_status flx_scope_end(int32_t n_keep, flx_tensor *const *keep) {
    if (tl_depth == 0)
        return flx_set_error(FLX_ERR_STATE, "flx_scope_end: no scope is open on this thread");
    if (n_keep < 0 || (n_keep > 0 && !keep))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_scope_end: bad keep list (n_keep %d)",
                             (int)n_keep);
    scope *s = &tl_scopes[tl_depth - 1];
    tl_depth--;
    /* Kept tensors get a reference owned by the enclosing scope (or the caller). */
    for (int32_t i = 0; i < n_keep; i++)
        if (keep[i]) flx_adopt(flx_retain(keep[i]));
    for (size_t i = 0; i < s->n; i++) {
        s->items[i]->scope_refs--;
        drop_ref(s->items[i]);
    }
    s->n = 0;
    if (tl_depth == 0) {
        for (int32_t i = 0; i < tl_scope_cap; i++) free(tl_scopes[i].items);
        free(tl_scopes);
        tl_scopes = NULL;
        tl_scope_cap = 0;
    }
    return FLX_OK;
}

flx_tensor *flx_scope_return(flx_tensor *r) {
    flx_tensor *keep[1] = {r};
    flx_scope_end(r ? 1 : 0, keep);
    return r;
}

/* ---- accessors -------------------------------------------------------------------------- */
/* A stale handle reads as NULL (with FLX_ERR_STATE set), never as the fields of a dead node. */
static bool usable(const char *fn, const flx_tensor *t) { return t && flx_check_handle(fn, t); }
int32_t flx_ndim(const flx_tensor *t) { return usable("flx_ndim", t) ? t->ndim : -1; }
const int64_t *flx_shape(const flx_tensor *t) { return usable("flx_shape", t) ? t->shape : NULL; }
int64_t flx_numel(const flx_tensor *t) { return usable("flx_numel", t) ? t->numel : -1; }
flx_dtype flx_dtype_of(const flx_tensor *t) {
    return usable("flx_dtype_of", t) ? t->dtype : FLX_DTYPE_COUNT;
}
flx_ctx *flx_ctx_of(const flx_tensor *t) { return usable("flx_ctx_of", t) ? t->ctx : NULL; }
bool flx_is_realized(const flx_tensor *t) { return usable("flx_is_realized", t) && t->buf; }

int64_t flx_dim(const flx_tensor *t, int32_t axis) {
    if (!t) {
        flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_dim: tensor is NULL");
        return -1;
    }
    if (!flx_check_handle("flx_dim", t)) return -1;
    int32_t a;
    if (!flx_norm_axis("flx_dim", axis, t->ndim, &a)) return -1;
    return t->shape[a];
}

/* ---- validation helpers ----------------------------------------------------------------- */
bool flx_check_inputs(const char *op, int32_t n, flx_tensor *const *in) {
    for (int32_t i = 0; i < n; i++) {
        if (!in[i]) {
            flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: input %d is NULL", op, (int)i);
            return false;
        }
        if (!flx_check_handle(op, in[i])) return false;
    }
    for (int32_t i = 1; i < n; i++) {
        if (in[i]->ctx != in[0]->ctx) {
            flx_set_error(FLX_ERR_DEVICE,
                          "%s: inputs 0 and %d belong to different contexts (%s:%d and %s:%d); "
                          "move one with flx_to_ctx",
                          op, (int)i, in[0]->ctx->be->name, in[0]->ctx->device.index,
                          in[i]->ctx->be->name, in[i]->ctx->device.index);
            return false;
        }
    }
    return true;
}

bool flx_check_float(const char *op, const flx_tensor *t) {
    if (flx_dtype_is_float(t->dtype)) return true;
    flx_set_error(FLX_ERR_DTYPE, "%s: expects a float dtype (f32, f64, f16, bf16), got %s", op,
                  flx_describe(t));
    return false;
}

bool flx_check_index(const char *fn, const char *what, int32_t k, int32_t n) {
    if (k >= 0 && k < n) return true;
    flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: %s %d outside [0, %d)", fn, what, (int)k, (int)n);
    return false;
}

bool flx_norm_axis(const char *op, int32_t axis, int32_t ndim, int32_t *out) {
    int32_t a = axis < 0 ? axis + ndim : axis;
    if (a < 0 || a >= ndim) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: axis %d is out of range for rank %d", op,
                      (int)axis, (int)ndim);
        return false;
    }
    *out = a;
    return true;
}
