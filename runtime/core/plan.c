/* plan.c — compiled plans (issue 6): a frozen graph with a static memory plan, replayed with new
 * input data; on CUDA captured once as a CUDA graph and launched once per run. Public contract:
 * fluxion.h, "plans".
 *
 * Compile
 *   0. Optimisers (issue 6): the parameters that have a .grad get private buffers, and their
 *      gradients d loss / d parameter (loss = output 0) are built as graph with flx_grad_of.
 *   1. Walk the graph from the roots (outputs, assignment values, gradients) in post-order,
 *      entering only recomputable nodes that are not plan inputs: these are the plan's steps.
 *      Every other tensor met on an edge is an input (plan-owned buffer) or an external source
 *      (its buffer at compile time is retained and must still be the tensor's buffer at each
 *      run).
 *   2. Storage: each non-alias step defines a "root" (numel * dtype size bytes, 256-aligned);
 *      alias steps (reshape, detach) share their input's storage. A root lives from its defining
 *      step to the last step reading it (through any alias). Inputs, outputs, and staging copies
 *      are pinned for the whole run (their data persists between runs).
 *   3. Places: greedy by size — roots sorted by size (largest first) each take the lowest offset
 *      that overlaps no already placed root whose lifetime overlaps its own. One arena holds
 *      everything, allocated once.
 *   4. Each step, input and pinned region gets a non-owning flx_buffer record pointing into the
 *      arena. A replay points the graph's nodes at these records (saving their own buffers),
 *      runs each step's exec (the op table's kernels read node->buf and the inputs' bufs), copies
 *      outputs that live outside the arena into their regions, stages the assignment values,
 *      queues each optimiser's fused update (flx_optim_queue_update, reading the gradients'
 *      regions, which live to the end), writes back the assignments, then restores the nodes'
 *      own buffers.
 *   5. With capture (CUDA), step 4's kernel queuing is recorded once between capture_begin and
 *      capture_end; a run is then the checks, one graph launch and the version bumps.
 * Nothing here aborts: every failure sets the thread's error and returns a status or NULL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define PLAN_ALIGN 256u

typedef struct plan_root {
    size_t size;       /* aligned bytes                                                      */
    size_t offset;     /* in the arena                                                       */
    int32_t start, end; /* lifetime in step indices (inclusive); pinned roots span everything */
} plan_root;

typedef struct plan_ext {
    flx_tensor *t;     /* retained */
    flx_buffer *buf;   /* its buffer at compile time (a reference held) */
} plan_ext;

typedef struct plan_out {
    flx_tensor *node;     /* the graph tensor computing it                                  */
    flx_tensor *handle;   /* CONST tensor owned by the plan (one reference)                 */
    flx_buffer *rec;      /* the region's record; the plan holds one reference               */
    int32_t root;         /* arena root of the region                                        */
    const void *copy_src; /* non-NULL: copied from here at the end of each run               */
    flx_buffer *copy_src_buf; /* an external's buffer copy_src points into (a reference)      */
    int32_t copy_in;      /* >= 0: copied from input region copy_in instead                  */
    size_t nbytes;
} plan_out;

typedef struct plan_assign {
    flx_tensor *dst;      /* retained leaf with a private buffer                              */
    flx_buffer *dst_buf;  /* its buffer (a reference held)                                    */
    flx_tensor *src;      /* graph tensor of the value                                        */
    const void *src_ptr;  /* where the value is at the end of a run                           */
    int32_t src_in, src_ext; /* value outside the arena: an input or an external (else -1)    */
    void *stage;          /* non-NULL: the value is staged here before any write-back         */
    size_t nbytes;
    uint32_t version;     /* dst's version after the last run (or compile)                    */
} plan_assign;

/* ---- issue 6: optimisers stepped inside the replay (options.optims) ---- */
/* A parameter that some optimiser of the plan updates (each listed once). */
typedef struct plan_param {
    flx_tensor *t;        /* retained                                                         */
    flx_buffer *buf;      /* its private buffer at compile time (a reference held, pinned)    */
    flx_tensor *grad;     /* d loss / d t built at compile time, a root of the walk (retained) */
    void *grad_ptr;       /* where the gradient is at the end of the body                     */
} plan_param;

typedef struct plan_optim {
    flx_optim *opt;       /* held (flx_optim_retain; released with flx_optim_destroy)         */
    int32_t m;            /* parameters updated: those with a .grad at compile time           */
    int32_t *idx;         /* their indices in the optimiser (ascending)                       */
    int32_t *pk;          /* each one's entry in plan->param                                  */
    void **grad_ptr;      /* each one's gradient (flx_optim_queue_update's argument)          */
} plan_optim;

struct flx_plan {
    flx_ctx *ctx;
    int32_t n_steps;
    flx_tensor **steps;       /* post-order; each holds a use                                  */
    flx_exec_fn *exec;        /* NULL for alias steps                                          */
    flx_op *op;               /* op at compile time (a frozen node is detected)               */
    flx_buffer **step_rec;    /* record each step points at during a replay                   */
    flx_buffer **saved;       /* the nodes' own buffers during a replay (steps, then inputs)   */
    int32_t n_in;
    flx_tensor **in;          /* retained                                                      */
    flx_buffer **in_rec;
    int32_t n_ext;
    plan_ext *ext;
    int32_t n_out;
    plan_out *out;
    int32_t n_assign;
    plan_assign *as;
    int32_t n_optim, n_param; /* issue 6: optimisers stepped by each run, their parameters     */
    plan_optim *optim;
    plan_param *param;
    flx_fusion fusion;        /* elementwise groups (runtime/fuse.c); role NULL = none fused   */
    uint64_t n_fused;         /* steps computed inside fused kernels, per run                  */
    flx_buffer *arena;        /* one allocation, refcounted (output records hold references)   */
    flx_buffer *records;      /* n_records non-owning records (steps' roots and inputs)        */
    int32_t n_records;
    void *graph;              /* instantiated CUDA graph, or NULL                              */
    int32_t capture_state;    /* flx_plan_capture_state                                        */
    char capture_reason[256]; /* why not captured ("" when captured)                           */
    uint64_t arena_bytes, unplanned_bytes, runs;
};

/* ---- helpers ------------------------------------------------------------------------------- */
static size_t align_up(size_t n) { return (n + PLAN_ALIGN - 1) / PLAN_ALIGN * PLAN_ALIGN; }
static size_t bytes_of(const flx_tensor *t) { return (size_t)t->numel * flx_dtype_size(t->dtype); }

static bool recomputable(const flx_tensor *t) {
    return !(flx_op_get(t->op)->flags & FLX_OPF_SOURCE) && !t->is_leaf;
}

static _Thread_local uint64_t tl_input_epoch;
static bool enter_step(const flx_tensor *t) {
    return t->mark != tl_input_epoch && recomputable(t);
}

static void no_delete(void *ptr, void *ctx) {
    (void)ptr;
    (void)ctx;
}
/* Deleter of output records: the region belongs to the arena, which the record holds. */
static void release_arena(void *ptr, void *arena) {
    (void)ptr;
    flx_buffer_release((flx_buffer *)arena);
}

/* qsort has no context argument in C11: the roots being sorted, per thread. */
static _Thread_local const plan_root *tl_sort_roots;
static int cmp_idx(const void *a, const void *b) {
    const plan_root *r = tl_sort_roots;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (r[x].size != r[y].size) return r[x].size > r[y].size ? -1 : 1;
    if (r[x].start != r[y].start) return r[x].start < r[y].start ? -1 : 1;
    return (x > y) - (x < y);
}

typedef struct span { size_t lo, hi; } span;
static int cmp_span(const void *a, const void *b) {
    const span *x = (const span *)a, *y = (const span *)b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Greedy by size: places every root; returns the arena size, or SIZE_MAX on host OOM. */
static size_t place_roots(plan_root *roots, int32_t n) {
    if (n == 0) return 0;
    int32_t *order = (int32_t *)malloc((size_t)n * sizeof *order);
    bool *placed = (bool *)calloc((size_t)n, sizeof *placed);
    span *busy = (span *)malloc((size_t)n * sizeof *busy);
    if (!order || !placed || !busy) {
        free(order);
        free(placed);
        free(busy);
        return SIZE_MAX;
    }
    for (int32_t i = 0; i < n; i++) order[i] = i;
    tl_sort_roots = roots;
    qsort(order, (size_t)n, sizeof *order, cmp_idx);
    size_t total = 0;
    for (int32_t k = 0; k < n; k++) {
        plan_root *r = &roots[order[k]];
        int32_t nb = 0;
        for (int32_t j = 0; j < n; j++) {
            if (!placed[j]) continue;
            const plan_root *q = &roots[j];
            if (q->end < r->start || r->end < q->start) continue;
            busy[nb++] = (span){q->offset, q->offset + q->size};
        }
        qsort(busy, (size_t)nb, sizeof *busy, cmp_span);
        size_t off = 0;
        for (int32_t j = 0; j < nb; j++) {
            if (busy[j].lo >= off + r->size) break;
            if (busy[j].hi > off) off = busy[j].hi;
        }
        r->offset = off;
        placed[order[k]] = true;
        if (off + r->size > total) total = off + r->size;
    }
    free(order);
    free(placed);
    free(busy);
    return total;
}

/* ---- destroy -------------------------------------------------------------------------------- */
void flx_plan_destroy(flx_plan *p) {
    if (!p) return;
    if (p->graph && p->ctx->be->graph_destroy) p->ctx->be->graph_destroy(p->ctx, p->graph);
    if (p->out)
        for (int32_t k = 0; k < p->n_out; k++) {
            flx_release(p->out[k].handle);
            flx_buffer_release(p->out[k].rec);
            if (p->out[k].copy_src_buf) p->out[k].copy_src_buf->pins--;
            flx_buffer_release(p->out[k].copy_src_buf);
        }
    if (p->as)
        for (int32_t k = 0; k < p->n_assign; k++) {
            flx_buffer_release(p->as[k].dst_buf);
            flx_release(p->as[k].dst);
        }
    /* issue 6: optimisers and their parameters */
    if (p->optim)
        for (int32_t k = 0; k < p->n_optim; k++) {
            flx_optim_destroy(p->optim[k].opt); /* releases the plan's hold */
            free(p->optim[k].idx);
            free(p->optim[k].pk);
            free(p->optim[k].grad_ptr);
        }
    if (p->param)
        for (int32_t j = 0; j < p->n_param; j++) {
            if (p->param[j].buf) {
                p->param[j].buf->pins--;
                flx_buffer_release(p->param[j].buf);
            }
            flx_release(p->param[j].grad);
            flx_release(p->param[j].t);
        }
    free(p->optim);
    free(p->param);
    if (p->ext)
        for (int32_t k = 0; k < p->n_ext; k++) {
            p->ext[k].buf->pins--;
            flx_buffer_release(p->ext[k].buf);
            flx_release(p->ext[k].t);
        }
    if (p->in)
        for (int32_t k = 0; k < p->n_in; k++) flx_release(p->in[k]);
    if (p->steps)
        for (int32_t i = 0; i < p->n_steps; i++) flx_unuse(p->steps[i]);
    flx_buffer_release(p->arena);
    free(p->records);
    free(p->steps);
    free(p->exec);
    flx_fusion_free(&p->fusion);
    free(p->op);
    free(p->step_rec);
    free(p->saved);
    free(p->in);
    free(p->in_rec);
    free(p->ext);
    free(p->out);
    free(p->as);
    free(p);
}

flx_plan_options flx_plan_default_options(void) {
    flx_plan_options o;
    memset(&o, 0, sizeof o);
    return o;
}

/* ---- replay body ------------------------------------------------------------------------------ */
static void swap_in(flx_plan *p) {
    for (int32_t i = 0; i < p->n_steps; i++) {
        p->saved[i] = p->steps[i]->buf;
        p->steps[i]->buf = p->step_rec[i];
    }
    for (int32_t k = 0; k < p->n_in; k++) {
        p->saved[p->n_steps + k] = p->in[k]->buf;
        p->in[k]->buf = p->in_rec[k];
    }
}

static void swap_out(flx_plan *p) {
    for (int32_t i = 0; i < p->n_steps; i++) p->steps[i]->buf = p->saved[i];
    for (int32_t k = 0; k < p->n_in; k++) p->in[k]->buf = p->saved[p->n_steps + k];
}

/* Queues every kernel of one replay (nodes already swapped in). */
static flx_status queue_body(flx_plan *p) {
    flx_ctx *ctx = p->ctx;
    const flx_backend *be = ctx->be;
    for (int32_t i = 0; i < p->n_steps; i++) {
        int32_t role = p->fusion.role ? p->fusion.role[i] : FLX_FUSE_SINGLE;
        if (role == FLX_FUSE_INTERIOR) continue; /* computed inside its group's kernel */
        if (role == FLX_FUSE_SINGLE && !p->exec[i]) continue; /* alias: shares its input's record */
        flx_tensor *t = p->steps[i];
        if (be->range_push) be->range_push(ctx, role >= 0 ? "fused" : flx_op_get(t->op)->name);
        flx_status s = role >= 0 ? flx_fused_group_exec(&p->fusion.groups[role]) : p->exec[i](t);
        if (be->range_pop) be->range_pop(ctx);
        if (s != FLX_OK) return s;
    }
    for (int32_t k = 0; k < p->n_out; k++) {
        plan_out *o = &p->out[k];
        if (!o->copy_src || o->nbytes == 0) continue;
        flx_status s = be->copy_d2d(ctx, o->rec->ptr, o->copy_src, o->nbytes);
        if (s != FLX_OK) return s;
    }
    /* Every value is read (staged) before any leaf is written. */
    for (int32_t k = 0; k < p->n_assign; k++) {
        plan_assign *a = &p->as[k];
        if (!a->stage || a->nbytes == 0) continue;
        flx_status s = be->copy_d2d(ctx, a->stage, a->src_ptr, a->nbytes);
        if (s != FLX_OK) return s;
    }
    /* issue 6: each optimiser's fused update, after every output and assignment value has been
     * read (they see the parameters from before the update) and before any leaf is written. */
    for (int32_t k = 0; k < p->n_optim; k++) {
        plan_optim *po = &p->optim[k];
        flx_status s = flx_optim_queue_update(po->opt, po->m, po->idx, po->grad_ptr);
        if (s != FLX_OK) return s;
    }
    for (int32_t k = 0; k < p->n_assign; k++) {
        plan_assign *a = &p->as[k];
        if (a->nbytes == 0) continue;
        flx_status s = be->copy_d2d(ctx, a->dst_buf->ptr, a->stage ? a->stage : a->src_ptr,
                                    a->nbytes);
        if (s != FLX_OK) return s;
    }
    return FLX_OK;
}

/* ---- compile --------------------------------------------------------------------------------- */
static flx_plan *fail_plan(flx_plan *p) {
    flx_plan_destroy(p);
    return NULL;
}

/* Index of t among the plan's inputs, or -1. */
static int32_t input_index(const flx_plan *p, const flx_tensor *t) {
    for (int32_t k = 0; k < p->n_in; k++)
        if (p->in[k] == t) return k;
    return -1;
}

/* Index of t among the externals (adding it), or -1 with the error set. */
static int32_t ext_index(flx_plan *p, flx_tensor *t, int32_t *cap) {
    for (int32_t k = 0; k < p->n_ext; k++)
        if (p->ext[k].t == t) return k;
    if (!t->buf) {
        flx_set_error(FLX_ERR_STATE, "flx_plan_compile: source tensor %s has no data", flx_describe(t));
        return -1;
    }
    if (p->n_ext == *cap) {
        int32_t nc = *cap ? 2 * *cap : 16;
        plan_ext *ne = (plan_ext *)realloc(p->ext, (size_t)nc * sizeof *ne);
        if (!ne) {
            flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_plan_compile: out of host memory");
            return -1;
        }
        p->ext = ne;
        *cap = nc;
    }
    p->ext[p->n_ext].t = flx_retain(t);
    p->ext[p->n_ext].buf = t->buf;
    t->buf->refs++;
    t->buf->pins++; /* a read-only hold: an optimiser may still update the leaf in place */
    return p->n_ext++;
}

static bool same_shape(const flx_tensor *a, const flx_tensor *b) {
    return a->dtype == b->dtype && a->ndim == b->ndim &&
           memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0;
}

/* ---- issue 6: optimisers stepped inside the replay ------------------------------------------- */
static bool enter_requires_grad(const flx_tensor *t) { return t->requires_grad; }

/* Argument checks of options.optims, before anything is allocated; the loss is outputs[0]. */
static bool check_optims(const char *fn, flx_ctx *ctx, flx_tensor *loss, int32_t n_in,
                         flx_tensor *const *inputs, const flx_plan_options *o) {
    if (o->n_optim < 0 || (o->n_optim > 0 && !o->optims)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad optimiser list (n_optim %d, optims %s)",
                      fn, (int)o->n_optim, o->optims ? "given" : "NULL");
        return false;
    }
    for (int32_t k = 0; k < o->n_optim; k++) {
        flx_optim *op = o->optims[k];
        if (!op) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: optimiser %d is NULL", fn, (int)k);
            return false;
        }
        for (int32_t j = 0; j < k; j++)
            if (o->optims[j] == op) {
                flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: optimiser %d repeats optimiser %d", fn,
                              (int)k, (int)j);
                return false;
            }
        flx_tensor *const *prm;
        int32_t np = flx_optim_params(op, &prm);
        if (prm[0]->ctx != ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: optimiser %d belongs to another context than output 0",
                          fn, (int)k);
            return false;
        }
        int32_t with_grad = 0;
        for (int32_t i = 0; i < np; i++) {
            flx_tensor *t = prm[i];
            for (int32_t j = 0; j < n_in; j++)
                if (inputs[j] == t) {
                    flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                                  "%s: parameter %d %s of optimiser %d is input %d of the plan; the "
                                  "plan updates parameters in place but binds inputs by copy",
                                  fn, (int)i, flx_describe(t), (int)k, (int)j);
                    return false;
                }
            for (int32_t j = 0; j < o->n_assign; j++)
                if (o->assign_dst[j] == t) {
                    flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                                  "%s: parameter %d %s of optimiser %d is also the destination of "
                                  "assignment %d; a leaf is updated by an optimiser or assigned, "
                                  "not both", fn, (int)i, flx_describe(t), (int)k, (int)j);
                    return false;
                }
            if (t->grad) with_grad++;
        }
        if (with_grad == 0) {
            flx_set_error(FLX_ERR_STATE,
                          "%s: optimiser %d: none of its %d parameters has a gradient (.grad); call "
                          "flx_backward(loss) once before compiling (the parameters that have one "
                          "are those the plan updates)", fn, (int)k, (int)np);
            return false;
        }
    }
    if (o->n_optim == 0) return true;
    if (loss->numel != 1) {
        flx_set_error(FLX_ERR_SHAPE, "%s: with optimisers, output 0 is the loss and must have one "
                      "element, got %s", fn, flx_describe(loss));
        return false;
    }
    if (!loss->requires_grad) {
        flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE, "%s: with optimisers, output 0 is the loss, but %s "
                      "does not depend on any tensor that requires grad", fn, flx_describe(loss));
        return false;
    }
    /* A parameter with a .grad that the loss does not reach would get a zero gradient every run,
     * where an eager flx_backward(loss) would give it none: refuse instead of guessing. */
    uint64_t ep = flx_next_epoch();
    flx_tensor **order = NULL;
    size_t n_order = 0;
    if (flx_graph_postorder(1, &loss, ep, enter_requires_grad, &order, &n_order) != FLX_OK)
        return false;
    free(order);
    for (int32_t k = 0; k < o->n_optim; k++) {
        flx_tensor *const *prm;
        int32_t np = flx_optim_params(o->optims[k], &prm);
        for (int32_t i = 0; i < np; i++)
            if (prm[i]->grad && prm[i]->mark != ep) {
                flx_set_error(FLX_ERR_STATE,
                              "%s: parameter %d %s of optimiser %d has a .grad but output 0 (the "
                              "loss) does not depend on it; clear its stale gradient "
                              "(flx_zero_grad) or compile with the loss that uses it",
                              fn, (int)i, flx_describe(prm[i]), (int)k);
                return false;
            }
    }
    return true;
}

/* Records the optimisers (held), the parameters they update (private buffers, held and pinned)
 * and each parameter's gradient d loss / d parameter, built here as graph (flx_grad_of, no
 * history): the gradients become roots of the plan's walk. */
static flx_status setup_optims(flx_plan *p, const flx_plan_options *o, flx_tensor *loss) {
    static const char *fn = "flx_plan_compile";
    int32_t cap = 0;
    flx_tensor *const *prm;
    for (int32_t k = 0; k < o->n_optim; k++) cap += flx_optim_params(o->optims[k], &prm);
    p->optim = (plan_optim *)calloc((size_t)o->n_optim, sizeof *p->optim);
    p->param = (plan_param *)calloc((size_t)cap, sizeof *p->param);
    if (!p->optim || !p->param)
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    p->n_optim = o->n_optim;
    for (int32_t k = 0; k < o->n_optim; k++) {
        plan_optim *po = &p->optim[k];
        po->opt = o->optims[k];
        flx_optim_retain(po->opt);
        int32_t np = flx_optim_params(po->opt, &prm);
        po->idx = (int32_t *)malloc((size_t)np * sizeof *po->idx);
        po->pk = (int32_t *)malloc((size_t)np * sizeof *po->pk);
        po->grad_ptr = (void **)calloc((size_t)np, sizeof *po->grad_ptr);
        if (!po->idx || !po->pk || !po->grad_ptr)
            return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        for (int32_t i = 0; i < np; i++) {
            flx_tensor *t = prm[i];
            if (!t->grad) continue; /* skipped, as flx_optim_step does */
            int32_t j = 0;
            while (j < p->n_param && p->param[j].t != t) j++;
            if (j == p->n_param) p->param[p->n_param++].t = flx_retain(t);
            po->idx[po->m] = i;
            po->pk[po->m++] = j;
        }
    }
    /* The run writes each parameter in place: the buffer the plan's forward reads next run. */
    for (int32_t j = 0; j < p->n_param; j++) {
        plan_param *pp = &p->param[j];
        flx_status s = flx_tensor_make_private(pp->t);
        if (s != FLX_OK) return s;
        pp->buf = pp->t->buf;
        pp->buf->refs++;
        pp->buf->pins++; /* not a sharer: the run-time check counts the parameter's hold only */
    }
    flx_tensor **ts = (flx_tensor **)malloc((size_t)p->n_param * 2 * sizeof *ts);
    if (!ts) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    for (int32_t j = 0; j < p->n_param; j++) ts[j] = p->param[j].t;
    flx_status s = flx_scope_begin();
    if (s == FLX_OK) {
        s = flx_grad_of(1, &loss, NULL, p->n_param, ts, false, ts + p->n_param);
        for (int32_t j = 0; j < p->n_param && s == FLX_OK; j++)
            p->param[j].grad = flx_retain(ts[p->n_param + j]);
        flx_scope_end(0, NULL);
    }
    free(ts);
    return s;
}

flx_plan *flx_plan_compile(int32_t n_out, flx_tensor *const *outputs, int32_t n_in,
                           flx_tensor *const *inputs, const flx_plan_options *opt) {
    static const char *fn = "flx_plan_compile";
    flx_plan_options o = opt ? *opt : flx_plan_default_options();
    /* ---- arguments ---- */
    if (n_out < 1 || !outputs) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one output (n_out %d, outputs %s)",
                      fn, (int)n_out, outputs ? "given" : "NULL");
        return NULL;
    }
    if (n_in < 0 || (n_in > 0 && !inputs)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad input list (n_in %d, inputs %s)", fn,
                      (int)n_in, inputs ? "given" : "NULL");
        return NULL;
    }
    if (o.capture < FLX_PLAN_CAPTURE_DEFAULT || o.capture > FLX_PLAN_CAPTURE_ON) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: unknown capture option %d", fn, (int)o.capture);
        return NULL;
    }
    if (o.n_assign < 0 || (o.n_assign > 0 && (!o.assign_dst || !o.assign_src))) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad assignment lists (n_assign %d)", fn,
                      (int)o.n_assign);
        return NULL;
    }
    for (int32_t k = 0; k < n_out; k++)
        if (!outputs[k]) {
            flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: output %d is NULL", fn, (int)k);
            return NULL;
        }
    flx_ctx *ctx = outputs[0]->ctx;
    for (int32_t k = 0; k < n_out; k++)
        if (outputs[k]->ctx != ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: output %d %s belongs to another context than output 0",
                          fn, (int)k, flx_describe(outputs[k]));
            return NULL;
        }
    for (int32_t k = 0; k < n_in; k++) {
        flx_tensor *t = inputs[k];
        if (!t) {
            flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: input %d is NULL", fn, (int)k);
            return NULL;
        }
        if (t->ctx != ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: input %d %s belongs to another context", fn, (int)k,
                          flx_describe(t));
            return NULL;
        }
        if (t->op != FLX_OP_CONST || !t->buf) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                          "%s: input %d %s is an op result (%s), not a source tensor made from data "
                          "(flx_from_host, flx_from_blob, or a detached value)",
                          fn, (int)k, flx_describe(t), flx_op_get(t->op)->name);
            return NULL;
        }
        for (int32_t j = 0; j < k; j++)
            if (inputs[j] == t) {
                flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: input %d repeats input %d", fn, (int)k,
                              (int)j);
                return NULL;
            }
    }
    for (int32_t k = 0; k < o.n_assign; k++) {
        flx_tensor *d = o.assign_dst[k], *v = o.assign_src[k];
        if (!d || !v) {
            flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: assignment %d has a NULL %s", fn,
                                   (int)k, d ? "value" : "destination");
            return NULL;
        }
        if (d->ctx != ctx || v->ctx != ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: assignment %d uses another context", fn, (int)k);
            return NULL;
        }
        if (d->op != FLX_OP_CONST || !d->buf) {
            flx_set_error(FLX_ERR_STATE, "%s: assignment %d destination %s is an op result, not a leaf "
                          "made from data", fn, (int)k, flx_describe(d));
            return NULL;
        }
        if (!same_shape(d, v)) {
            flx_set_error(FLX_ERR_SHAPE, "%s: assignment %d: destination %s and value %s differ", fn,
                          (int)k, flx_describe(d), flx_describe(v));
            return NULL;
        }
        for (int32_t j = 0; j < n_in; j++)
            if (inputs[j] == d) {
                flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: assignment %d destination is input %d",
                              fn, (int)k, (int)j);
                return NULL;
            }
        for (int32_t j = 0; j < k; j++)
            if (o.assign_dst[j] == d) {
                flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: assignments %d and %d have the same "
                              "destination", fn, (int)j, (int)k);
                return NULL;
            }
    }
    if (!check_optims(fn, ctx, outputs[0], n_in, inputs, &o)) return NULL; /* issue 6 */

    flx_plan *p = (flx_plan *)calloc(1, sizeof *p);
    if (!p) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return NULL;
    }
    p->ctx = ctx;
    p->n_in = n_in;
    p->n_out = n_out;
    p->in = (flx_tensor **)calloc((size_t)(n_in ? n_in : 1), sizeof *p->in);
    p->in_rec = (flx_buffer **)calloc((size_t)(n_in ? n_in : 1), sizeof *p->in_rec);
    p->out = (plan_out *)calloc((size_t)n_out, sizeof *p->out);
    p->as = (plan_assign *)calloc((size_t)(o.n_assign ? o.n_assign : 1), sizeof *p->as);
    if (!p->in || !p->in_rec || !p->out || !p->as) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return fail_plan(p);
    }
    for (int32_t k = 0; k < n_in; k++) p->in[k] = flx_retain(inputs[k]);
    /* Assigned leaves get private buffers first, so everything below sees the final ones. */
    p->n_assign = o.n_assign;
    for (int32_t k = 0; k < o.n_assign; k++) {
        plan_assign *a = &p->as[k];
        a->dst = flx_retain(o.assign_dst[k]);
        flx_status ps = flx_tensor_make_private(a->dst);
        if (ps != FLX_OK) return fail_plan(p);
        a->dst_buf = a->dst->buf;
        a->dst_buf->refs++;
    }
    /* issue 6: optimisers' parameters and gradients (before the walk, which marks nodes). */
    if (o.n_optim > 0 && setup_optims(p, &o, outputs[0]) != FLX_OK) return fail_plan(p);

    /* ---- 1. steps ---- */
    int32_t n_roots_in = n_out + o.n_assign + p->n_param;
    flx_tensor **roots = (flx_tensor **)malloc((size_t)n_roots_in * sizeof *roots);
    if (!roots) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return fail_plan(p);
    }
    for (int32_t k = 0; k < n_out; k++) roots[k] = outputs[k];
    for (int32_t k = 0; k < o.n_assign; k++) roots[n_out + k] = o.assign_src[k];
    for (int32_t j = 0; j < p->n_param; j++) roots[n_out + o.n_assign + j] = p->param[j].grad;
    tl_input_epoch = flx_next_epoch();
    for (int32_t k = 0; k < n_in; k++) inputs[k]->mark = tl_input_epoch;
    uint64_t epoch = flx_next_epoch();
    flx_tensor **order = NULL;
    size_t n_order = 0;
    flx_status s = flx_graph_postorder(n_roots_in, roots, epoch, enter_step, &order, &n_order);
    /* Elementwise fusion, as the evaluator does it; every root (output, assignment value,
     * gradient read by an optimiser) stays materialised. */
    if (s == FLX_OK && n_order > 0)
        s = flx_fusion_plan(order, n_order, epoch, n_roots_in, roots, false, &p->fusion);
    free(roots);
    if (s != FLX_OK) {
        free(order);
        return fail_plan(p);
    }
    if (n_order > (size_t)INT32_MAX / 4) {
        free(order);
        flx_set_error(FLX_ERR_UNSUPPORTED, "%s: graph of %zu nodes is too large", fn, n_order);
        return fail_plan(p);
    }
    p->steps = order;
    p->n_steps = (int32_t)n_order;
    int32_t N = p->n_steps;
    for (int32_t i = 0; i < N; i++) flx_use(p->steps[i]); /* held until destroy */
    p->exec = (flx_exec_fn *)calloc((size_t)(N ? N : 1), sizeof *p->exec);
    p->op = (flx_op *)calloc((size_t)(N ? N : 1), sizeof *p->op);
    p->step_rec = (flx_buffer **)calloc((size_t)(N ? N : 1), sizeof *p->step_rec);
    p->saved = (flx_buffer **)calloc((size_t)(N + n_in + 1), sizeof *p->saved);
    int32_t *root_of = (int32_t *)malloc((size_t)(N ? N : 1) * sizeof *root_of); /* step -> root */
    /* roots: one per non-alias step, one per input, plus pinned extras (<= n_out + n_assign) */
    int32_t root_cap = N + n_in + n_out + o.n_assign + 1;
    plan_root *pr = (plan_root *)calloc((size_t)root_cap, sizeof *pr);
    int32_t *ext_of_step = (int32_t *)malloc((size_t)(N ? N : 1) * sizeof *ext_of_step);
    int32_t *in_of_step = (int32_t *)malloc((size_t)(N ? N : 1) * sizeof *in_of_step);
    if (!p->exec || !p->op || !p->step_rec || !p->saved || !root_of || !pr || !ext_of_step ||
        !in_of_step) {
        free(root_of);
        free(pr);
        free(ext_of_step);
        free(in_of_step);
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return fail_plan(p);
    }
#define FAIL_COMPILE()          \
    do {                        \
        free(root_of);          \
        free(pr);               \
        free(ext_of_step);      \
        free(in_of_step);       \
        return fail_plan(p);    \
    } while (0)
    int32_t ext_cap = 0, n_pr = 0;
    for (int32_t i = 0; i < N; i++) p->steps[i]->scratch = i;
    /* Fused groups: a member's reads happen when its group's root runs. (root_of doubles as
     * that step index for interior members until their storage is set below.) */
    for (int32_t g = 0; g < p->fusion.n_groups; g++) {
        const flx_fused_group *fg = &p->fusion.groups[g];
        for (int32_t m = 0; m < fg->n_members; m++) root_of[fg->members[m]->scratch] = fg->root->scratch;
        p->n_fused += (uint64_t)fg->n_members;
    }
    /* Storage of each step: a new root, or (alias) its input's storage, which is a step's root
     * (root_of >= 0), an input (in_of_step), or an external (ext_of_step). */
    for (int32_t k = 0; k < n_in; k++) {
        pr[n_pr] = (plan_root){align_up(bytes_of(inputs[k]) ? bytes_of(inputs[k]) : 1), 0, 0, N};
        n_pr++;
    }
    for (int32_t i = 0; i < N; i++) {
        flx_tensor *t = p->steps[i];
        const flx_op_def *def = flx_op_get(t->op);
        int32_t role = p->fusion.role ? p->fusion.role[i] : FLX_FUSE_SINGLE;
        int32_t read_at = role == FLX_FUSE_SINGLE ? i : root_of[i]; /* step that reads t's inputs */
        p->op[i] = t->op;
        root_of[i] = -1;
        ext_of_step[i] = -1;
        in_of_step[i] = -1;
        if (t->ctx != ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: node %s (%s) belongs to another context", fn,
                          def->name, flx_describe(t));
            FAIL_COMPILE();
        }
        if (t->op == FLX_OP_TO_CTX) {
            flx_set_error(FLX_ERR_UNSUPPORTED, "%s: %s copies from another context and cannot be "
                          "planned; make its result an input of the plan", fn, def->name);
            FAIL_COMPILE();
        }
        for (int32_t j = 0; j < t->n_in; j++) {
            flx_tensor *x = t->in[j];
            if (x->version != t->in_version[j]) {
                flx_set_error(FLX_ERR_STATE, "%s: %s reads input %d %s, which was changed in place "
                              "(flx_assign or an optimiser step) after the op was recorded; record "
                              "the graph again", fn, def->name, (int)j, flx_describe(x));
                FAIL_COMPILE();
            }
            if (x->mark == epoch) continue; /* a step: ordered before t */
            if (x->mark == tl_input_epoch) continue;
            if (recomputable(x)) { /* cannot happen: the walk enters every recomputable node */
                flx_set_error(FLX_ERR_STATE, "%s: internal error: node %s not planned", fn,
                              flx_describe(x));
                FAIL_COMPILE();
            }
            if (ext_index(p, x, &ext_cap) < 0) FAIL_COMPILE();
        }
        if (role == FLX_FUSE_INTERIOR) {
            p->exec[i] = NULL; /* no storage: lives in its group's kernel */
        } else if (def->flags & FLX_OPF_ALIAS) {
            flx_tensor *x = t->in[0];
            if (x->mark == epoch) root_of[i] = root_of[x->scratch], ext_of_step[i] = ext_of_step[x->scratch],
                                  in_of_step[i] = in_of_step[x->scratch];
            else if (x->mark == tl_input_epoch) in_of_step[i] = input_index(p, x);
            else ext_of_step[i] = ext_index(p, x, &ext_cap);
            p->exec[i] = NULL;
        } else {
            if (!def->exec) {
                flx_set_error(FLX_ERR_STATE, "%s: op %s has no kernel (internal error)", fn, def->name);
                FAIL_COMPILE();
            }
            p->exec[i] = def->exec;
            size_t b = bytes_of(t);
            pr[n_pr] = (plan_root){align_up(b ? b : 1), 0, i, i};
            root_of[i] = n_pr++;
        }
        /* Lifetimes: each step extends the roots it reads (a fused member reads when its
         * group's root runs). */
        for (int32_t j = 0; j < t->n_in; j++) {
            flx_tensor *x = t->in[j];
            if (x->mark != epoch || x->scratch >= i) continue;
            int32_t r = root_of[x->scratch];
            if (r >= 0 && pr[r].end < read_at) pr[r].end = read_at;
        }
    }
    /* ---- outputs ---- */
    for (int32_t k = 0; k < n_out; k++) {
        flx_tensor *t = outputs[k];
        plan_out *po = &p->out[k];
        po->node = t;
        po->nbytes = bytes_of(t);
        po->copy_in = -1;
        int32_t r = t->mark == epoch ? root_of[t->scratch] : -1;
        if (r >= 0) {
            pr[r].start = 0; /* pinned: its data persists between runs */
            pr[r].end = N;
            po->root = r;
        } else {
            /* The value lives outside the arena (an input, an external source, or an alias of
             * one): a pinned region of its own, refreshed by a copy at the end of each run. */
            pr[n_pr] = (plan_root){align_up(po->nbytes ? po->nbytes : 1), 0, 0, N};
            po->root = n_pr++;
            int32_t in_k = -1, ext_k = -1;
            if (t->mark == epoch) in_k = in_of_step[t->scratch], ext_k = ext_of_step[t->scratch];
            else if (t->mark == tl_input_epoch) in_k = input_index(p, t);
            else ext_k = ext_index(p, t, &ext_cap);
            if (ext_k < 0 && in_k < 0) FAIL_COMPILE(); /* error set by ext_index */
            po->copy_in = in_k;
            if (ext_k >= 0) {
                po->copy_src_buf = p->ext[ext_k].buf;
                po->copy_src_buf->refs++;
                po->copy_src_buf->pins++; /* read-only, like ext_index's hold (issue 6) */
                po->copy_src = po->copy_src_buf->ptr;
            }
        }
    }
    /* ---- issue 6: gradients live to the end of the body, where the optimisers read them ---- */
    for (int32_t j = 0; j < p->n_param; j++) {
        flx_tensor *g = p->param[j].grad;
        int32_t r = g->mark == epoch ? root_of[g->scratch] : -1;
        if (r >= 0) pr[r].end = N;
        /* Otherwise the gradient is (an alias of) an input or an external source, which no step
         * writes: read where it is (an external is held through ext_index). */
        else if (g->mark != epoch && g->mark != tl_input_epoch && ext_index(p, g, &ext_cap) < 0)
            FAIL_COMPILE();
    }
    /* ---- assignments ---- */
    int32_t *assign_stage_root = (int32_t *)malloc((size_t)(o.n_assign ? o.n_assign : 1) * sizeof(int32_t));
    if (!assign_stage_root) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        FAIL_COMPILE();
    }
    for (int32_t k = 0; k < o.n_assign; k++) {
        flx_tensor *v = o.assign_src[k];
        plan_assign *a = &p->as[k];
        a->src = v;
        a->nbytes = bytes_of(v);
        a->src_in = a->src_ext = -1;
        assign_stage_root[k] = -1;
        int32_t r = v->mark == epoch ? root_of[v->scratch] : -1;
        if (r >= 0) {
            pr[r].start = 0; /* read at the end of the run */
            pr[r].end = N;
        } else {
            /* Outside the arena (possibly another assigned leaf): staged so that every value is
             * read before any leaf is written. */
            pr[n_pr] = (plan_root){align_up(a->nbytes ? a->nbytes : 1), 0, 0, N};
            assign_stage_root[k] = n_pr++;
            if (v->mark == epoch) a->src_in = in_of_step[v->scratch], a->src_ext = ext_of_step[v->scratch];
            else if (v->mark == tl_input_epoch) a->src_in = input_index(p, v);
            else a->src_ext = ext_index(p, v, &ext_cap);
            if (a->src_in < 0 && a->src_ext < 0) {
                free(assign_stage_root);
                FAIL_COMPILE(); /* error set by ext_index */
            }
        }
    }
    /* ---- 3. places ---- */
    size_t arena = place_roots(pr, n_pr);
    if (arena == SIZE_MAX) {
        free(assign_stage_root);
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        FAIL_COMPILE();
    }
    uint64_t unplanned = 0;
    for (int32_t r = 0; r < n_pr; r++) unplanned += pr[r].size;
    p->arena_bytes = arena;
    p->unplanned_bytes = unplanned;
    p->arena = flx_buffer_new(ctx, arena ? arena : 1);
    if (!p->arena) {
        free(assign_stage_root);
        FAIL_COMPILE();
    }
    char *base = (char *)p->arena->ptr;
    /* ---- 4. records ---- */
    p->records = (flx_buffer *)calloc((size_t)(n_pr ? n_pr : 1), sizeof *p->records);
    if (!p->records) {
        free(assign_stage_root);
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        FAIL_COMPILE();
    }
    p->n_records = n_pr;
    for (int32_t r = 0; r < n_pr; r++) {
        flx_buffer *b = &p->records[r];
        b->refs = 1; /* never released: owned by the plan */
        b->ctx = ctx;
        b->ptr = base + pr[r].offset;
        b->nbytes = pr[r].size;
        b->deleter = no_delete;
    }
    for (int32_t k = 0; k < n_in; k++) p->in_rec[k] = &p->records[k]; /* roots 0..n_in-1 */
    for (int32_t i = 0; i < N; i++) {
        if (root_of[i] >= 0) p->step_rec[i] = &p->records[root_of[i]];
        else if (in_of_step[i] >= 0) p->step_rec[i] = p->in_rec[in_of_step[i]];
        else if (ext_of_step[i] >= 0) p->step_rec[i] = p->ext[ext_of_step[i]].buf;
        else p->step_rec[i] = NULL; /* fused interior member: never materialised */
    }
    /* Output records (refcounted: a handle and the plan hold them; each holds the arena). */
    for (int32_t k = 0; k < n_out; k++) {
        plan_out *po = &p->out[k];
        flx_tensor *t = po->node;
        if (po->copy_in >= 0) po->copy_src = p->in_rec[po->copy_in]->ptr;
        flx_buffer *rec = (flx_buffer *)calloc(1, sizeof *rec);
        flx_tensor *h = rec ? flx_node_new(ctx, FLX_OP_CONST, t->dtype, t->ndim, t->shape, 0, NULL, NULL)
                            : NULL;
        if (!rec || !h) {
            free(rec);
            free(assign_stage_root);
            if (!rec) flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
            FAIL_COMPILE();
        }
        rec->refs = 2; /* the plan and the handle */
        rec->ctx = ctx;
        rec->ptr = base + pr[po->root].offset;
        rec->nbytes = po->nbytes ? po->nbytes : 1;
        rec->deleter = release_arena;
        rec->deleter_ctx = p->arena;
        p->arena->refs++;
        h->buf = rec;
        h->keep = true;
        po->rec = rec;
        po->handle = h;
    }
    for (int32_t k = 0; k < o.n_assign; k++) {
        plan_assign *a = &p->as[k];
        flx_tensor *v = a->src;
        if (assign_stage_root[k] >= 0) {
            a->stage = base + pr[assign_stage_root[k]].offset;
            a->src_ptr = a->src_in >= 0 ? p->in_rec[a->src_in]->ptr : p->ext[a->src_ext].buf->ptr;
        } else {
            a->src_ptr = p->step_rec[v->scratch]->ptr;
        }
    }
    free(assign_stage_root);
    /* issue 6: where each gradient is at the end of the body. */
    for (int32_t j = 0; j < p->n_param; j++) {
        plan_param *pp = &p->param[j];
        flx_tensor *g = pp->grad;
        if (g->mark == epoch) pp->grad_ptr = p->step_rec[g->scratch]->ptr;
        else if (g->mark == tl_input_epoch) pp->grad_ptr = p->in_rec[input_index(p, g)]->ptr;
        else pp->grad_ptr = p->ext[ext_index(p, g, &ext_cap)].buf->ptr; /* found: added above */
    }
    for (int32_t k = 0; k < p->n_optim; k++)
        for (int32_t q = 0; q < p->optim[k].m; q++)
            p->optim[k].grad_ptr[q] = p->param[p->optim[k].pk[q]].grad_ptr;
    /* ---- inputs' initial data, assigned leaves' private buffers ---- */
    for (int32_t k = 0; k < n_in && s == FLX_OK; k++) {
        size_t nb = bytes_of(inputs[k]);
        if (nb) s = ctx->be->copy_d2d(ctx, p->in_rec[k]->ptr, inputs[k]->buf->ptr, nb);
    }
    free(root_of);
    free(pr);
    free(ext_of_step);
    free(in_of_step);
#undef FAIL_COMPILE
    if (s != FLX_OK) return fail_plan(p);
    /* Graphs recorded from the leaves' values before now must not run after a write-back. */
    for (int32_t k = 0; k < p->n_assign; k++) p->as[k].version = ++p->as[k].dst->version;
    /* ---- 5. capture ---- */
    const flx_backend *be = ctx->be;
    bool want = o.capture != FLX_PLAN_CAPTURE_OFF;
    bool can = be->capture_begin && be->capture_end && be->graph_launch;
    if (!want) {
        p->capture_state = FLX_PLAN_NOT_CAPTURED_DISABLED;
        snprintf(p->capture_reason, sizeof p->capture_reason,
                 "capture disabled (compiled with FLX_PLAN_CAPTURE_OFF)");
    } else if (!can) {
        p->capture_state = FLX_PLAN_NOT_CAPTURED_UNSUPPORTED;
        snprintf(p->capture_reason, sizeof p->capture_reason,
                 "the %s backend has no graph capture: kernels are queued one by one", be->name);
    }
    if (want && can) {
        s = be->capture_begin(ctx);
        if (s != FLX_OK) return fail_plan(p);
        swap_in(p);
        flx_status qs = queue_body(p);
        swap_out(p);
        void *g = NULL;
        s = be->capture_end(ctx, qs == FLX_OK, &g);
        if (qs != FLX_OK || s != FLX_OK) {
            if (g && be->graph_destroy) be->graph_destroy(ctx, g);
            /* Asked for explicitly: a failure is the caller's to see. By default a plan whose
             * work cannot be captured (a library call that is not capture-safe) still replays,
             * queued op by op. */
            if (o.capture == FLX_PLAN_CAPTURE_ON) return fail_plan(p);
            flx_log_msg(FLX_LOG_WARN, "flx_plan_compile: capture failed (%s); the plan replays "
                        "without a CUDA graph", flx_last_error());
            p->capture_state = FLX_PLAN_NOT_CAPTURED_FAILED;
            snprintf(p->capture_reason, sizeof p->capture_reason, "capture failed: %s",
                     flx_last_error());
            flx_clear_error();
            g = NULL;
        }
        p->graph = g;
        if (g) p->capture_state = FLX_PLAN_CAPTURED;
    }
    return p;
}

/* ---- run ----------------------------------------------------------------------------------- */
static bool check_plan(const char *fn, const flx_plan *p) {
    if (!p) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: plan is NULL", fn);
        return false;
    }
    return true;
}

/* t may be bound to input k: same context, dtype and shape as compiled. */
static flx_status check_input(const flx_plan *p, int32_t k, const flx_tensor *t, const char *fn) {
    const flx_tensor *want = p->in[k];
    if (t->ctx != p->ctx)
        return flx_set_error(FLX_ERR_DEVICE, "%s: input %d %s belongs to another context", fn,
                             (int)k, flx_describe(t));
    if (t->dtype != want->dtype)
        return flx_set_error(FLX_ERR_DTYPE, "%s: input %d is %s but the plan was compiled for %s",
                             fn, (int)k, flx_describe(t), flx_describe(want));
    if (!same_shape(t, want))
        return flx_set_error(FLX_ERR_SHAPE, "%s: input %d is %s but the plan was compiled for %s",
                             fn, (int)k, flx_describe(t), flx_describe(want));
    return FLX_OK;
}

static flx_status bind(flx_plan *p, int32_t k, flx_tensor *t, const char *fn) {
    flx_status s = check_input(p, k, t, fn);
    if (s != FLX_OK) return s;
    s = flx_eval_nodes(1, &t);
    if (s != FLX_OK) return s;
    size_t nb = bytes_of(t);
    return nb ? p->ctx->be->copy_d2d(p->ctx, p->in_rec[k]->ptr, t->buf->ptr, nb) : FLX_OK;
}

flx_status flx_plan_set_input(flx_plan *p, int32_t k, flx_tensor *t) {
    static const char *fn = "flx_plan_set_input";
    if (!check_plan(fn, p)) return flx_last_status();
    if (k < 0 || k >= p->n_in)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: input index %d outside [0, %d)", fn,
                             (int)k, (int)p->n_in);
    if (!t) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: tensor is NULL", fn);
    return bind(p, k, t, fn);
}

flx_status flx_plan_set_input_host(flx_plan *p, int32_t k, const void *data, size_t nbytes) {
    static const char *fn = "flx_plan_set_input_host";
    if (!check_plan(fn, p)) return flx_last_status();
    if (k < 0 || k >= p->n_in)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: input index %d outside [0, %d)", fn,
                             (int)k, (int)p->n_in);
    if (!data) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: data is NULL", fn);
    size_t need = bytes_of(p->in[k]);
    if (nbytes != need)
        return flx_set_error(FLX_ERR_SHAPE, "%s: input %d %s takes %zu bytes, got %zu", fn, (int)k,
                             flx_describe(p->in[k]), need, nbytes);
    return need ? p->ctx->be->upload(p->ctx, p->in_rec[k]->ptr, data, need) : FLX_OK;
}

/* Before a run: an output buffer that someone else came to share (flx_assign from the handle, a
 * realised reshape of it) is moved to memory of its own holding the current value, so sharers
 * never see the run's writes; a handle that was given another buffer gets the region back. */
static flx_status protect_outputs(flx_plan *p) {
    flx_ctx *ctx = p->ctx;
    for (int32_t k = 0; k < p->n_out; k++) {
        plan_out *o = &p->out[k];
        flx_tensor *h = o->handle;
        int32_t holders = 1 + (h->buf == o->rec ? 1 : 0);
        if (o->rec->refs > holders) {
            size_t nb = o->rec->nbytes;
            void *mem = ctx->be->alloc(ctx, nb);
            if (!mem) return flx_last_status();
            flx_status s = ctx->be->copy_d2d(ctx, mem, o->rec->ptr, nb);
            if (s != FLX_OK) {
                ctx->be->free(ctx, mem);
                return s;
            }
            flx_buffer *nrec = (flx_buffer *)calloc(1, sizeof *nrec);
            if (!nrec) {
                ctx->be->free(ctx, mem);
                return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_plan_run: out of host memory");
            }
            *nrec = *o->rec;
            nrec->refs = 1; /* the plan */
            p->arena->refs++;
            /* The old record now owns the copy (allocator memory) and drops its arena hold. */
            flx_buffer *old = o->rec;
            old->ptr = mem;
            old->deleter = NULL;
            old->deleter_ctx = NULL;
            flx_stats_alloc(ctx, nb);
            flx_buffer_release(p->arena);
            if (h->buf == old) {
                h->buf = nrec;
                nrec->refs++;
                old->refs--; /* the handle's hold; others remain */
            }
            old->refs--; /* the plan's hold */
            o->rec = nrec;
        }
        if (h->buf != o->rec) {
            flx_buffer_release(h->buf);
            h->buf = o->rec;
            o->rec->refs++;
        }
        if (h->op != FLX_OP_CONST)
            return flx_set_error(FLX_ERR_STATE, "flx_plan_run: output %d is no longer a source", (int)k);
    }
    return FLX_OK;
}

flx_status flx_plan_run(flx_plan *p, int32_t n_in, flx_tensor *const *inputs) {
    static const char *fn = "flx_plan_run";
    if (!check_plan(fn, p)) return flx_last_status();
    if (!((n_in == 0 && !inputs) || (n_in == p->n_in && (inputs || n_in == 0))))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                             "%s: the plan takes %d inputs, got n_in %d (inputs %s); pass all of "
                             "them (NULL entries keep an input) or none (n_in 0, NULL)",
                             fn, (int)p->n_in, (int)n_in, inputs ? "given" : "NULL");
    /* Checks first, so a failed run changes nothing. */
    for (int32_t j = 0; j < p->n_param; j++) { /* issue 6: parameters the run updates in place */
        const plan_param *pp = &p->param[j];
        if (pp->t->buf != pp->buf)
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: parameter %s of an optimiser of the plan was given a new "
                                 "buffer (flx_assign?) after the plan was compiled; the plan "
                                 "updates the buffer it had then: compile the plan again",
                                 fn, flx_describe(pp->t));
        if (pp->buf->refs - pp->buf->pins != 1 || pp->buf->deleter)
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: parameter %s of an optimiser of the plan shares its buffer "
                                 "with another tensor (flx_assign from it, a live realised reshape "
                                 "or detach of it) and the plan updates it in place; release the "
                                 "sharer or compile the plan again", fn, flx_describe(pp->t));
    }
    for (int32_t k = 0; k < p->n_ext; k++)
        if (p->ext[k].t->buf != p->ext[k].buf)
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: source %s was given a new buffer (flx_assign?) after the plan "
                                 "was compiled; the plan reads the buffer it had then: compile the "
                                 "plan again", fn, flx_describe(p->ext[k].t));
    for (int32_t k = 0; k < p->n_assign; k++)
        if (p->as[k].dst->buf != p->as[k].dst_buf)
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: assigned leaf %s (assignment %d) was given a new buffer after "
                                 "the plan was compiled; compile the plan again",
                                 fn, flx_describe(p->as[k].dst), (int)k);
    for (int32_t i = 0; i < p->n_steps; i++)
        if (p->steps[i]->op != p->op[i])
            return flx_set_error(FLX_ERR_STATE, "%s: a node of the plan's graph was frozen into a "
                                 "source after compile; compile the plan again", fn);
    for (int32_t k = 0; k < n_in; k++) {
        if (!inputs[k]) continue;
        flx_status cs = check_input(p, k, inputs[k], fn);
        if (cs != FLX_OK) return cs;
    }
    flx_status s = FLX_OK;
    for (int32_t k = 0; k < n_in && s == FLX_OK; k++)
        if (inputs[k]) s = bind(p, k, inputs[k], fn);
    if (s == FLX_OK) s = protect_outputs(p);
    if (s != FLX_OK) return s;
    if (p->graph) {
        s = p->ctx->be->graph_launch(p->ctx, p->graph);
    } else {
        swap_in(p);
        s = queue_body(p);
        swap_out(p);
    }
    if (s != FLX_OK) return s;
    for (int32_t k = 0; k < p->n_out; k++) p->out[k].handle->version++;
    for (int32_t k = 0; k < p->n_assign; k++) p->as[k].version = ++p->as[k].dst->version;
    for (int32_t j = 0; j < p->n_param; j++) p->param[j].t->version++; /* issue 6 */
    p->ctx->stats.nodes_executed += (uint64_t)p->n_steps;
    p->ctx->stats.nodes_fused += p->n_fused;
    p->runs++;
    return FLX_OK;
}

flx_tensor *flx_plan_output(flx_plan *p, int32_t k) {
    if (!check_plan("flx_plan_output", p)) return NULL;
    if (k < 0 || k >= p->n_out) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_plan_output: output index %d outside [0, %d)",
                      (int)k, (int)p->n_out);
        return NULL;
    }
    return flx_adopt(flx_retain(p->out[k].handle));
}

flx_status flx_plan_get_info(const flx_plan *p, flx_plan_info *out) {
    if (!check_plan("flx_plan_get_info", p)) return flx_last_status();
    if (!out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_plan_get_info: out is NULL");
    memset(out, 0, sizeof *out);
    out->n_nodes = p->n_steps;
    out->n_inputs = p->n_in;
    out->n_outputs = p->n_out;
    out->n_assign = p->n_assign;
    out->captured = p->graph != NULL;
    out->arena_bytes = p->arena_bytes;
    out->unplanned_bytes = p->unplanned_bytes;
    out->runs = p->runs;
    out->n_optim = p->n_optim;
    out->capture_state = p->capture_state;
    snprintf(out->capture_reason, sizeof out->capture_reason, "%s", p->capture_reason);
    return FLX_OK;
}
