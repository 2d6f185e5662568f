/* eval.c — the evaluator: plans the unrealised ancestors of the requested tensors in topological
 * order, runs them on their backends, and frees each intermediate right after its last consumer
 * in the plan has been queued (memory planned by last use). Also the host transfer entry points
 * and flx_assign. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Atomic uint64_t g_epoch;

static bool recomputable(const flx_tensor *t) {
    return !(flx_op_get(t->op)->flags & FLX_OPF_SOURCE) && !t->is_leaf;
}

uint64_t flx_next_epoch(void) { return atomic_fetch_add(&g_epoch, 1) + 1; }

typedef struct frame {
    flx_tensor *t;
    int32_t next;
} frame;

flx_status flx_graph_postorder(int32_t n, flx_tensor *const *roots, uint64_t epoch,
                               flx_enter_fn enter, flx_tensor ***out, size_t *n_out) {
    size_t cap = 64, top = 0, on = 0, ocap = 64;
    frame *st = (frame *)malloc(cap * sizeof *st);
    flx_tensor **order = (flx_tensor **)malloc(ocap * sizeof *order);
    flx_status s = (st && order) ? FLX_OK : FLX_ERR_OUT_OF_MEMORY;
    for (int32_t r = 0; r < n && s == FLX_OK; r++) {
        flx_tensor *root = roots[r];
        if (root->mark == epoch || !enter(root)) continue;
        root->mark = epoch;
        st[top++] = (frame){root, 0};
        while (top > 0 && s == FLX_OK) {
            frame *f = &st[top - 1];
            if (f->next < f->t->n_in) {
                flx_tensor *c = f->t->in[f->next++];
                if (c->mark == epoch || !enter(c)) continue;
                c->mark = epoch;
                if (top == cap) {
                    frame *ns = (frame *)realloc(st, 2 * cap * sizeof *st);
                    if (!ns) { s = FLX_ERR_OUT_OF_MEMORY; break; }
                    st = ns;
                    cap *= 2;
                }
                st[top++] = (frame){c, 0};
            } else {
                if (on == ocap) {
                    flx_tensor **no = (flx_tensor **)realloc(order, 2 * ocap * sizeof *order);
                    if (!no) { s = FLX_ERR_OUT_OF_MEMORY; break; }
                    order = no;
                    ocap *= 2;
                }
                order[on++] = f->t;
                top--;
            }
        }
    }
    free(st);
    if (s != FLX_OK) {
        free(order);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "graph walk: out of host memory");
    }
    *out = order;
    *n_out = on;
    return FLX_OK;
}

static bool needs_data(const flx_tensor *t) { return t->buf == NULL; }

/* The checks before x runs: every input unchanged since recording and (unless it is computed
 * inside the same fused kernel) holding data. */
static flx_status check_inputs_ready(const flx_tensor *x, const flx_fused_group *g) {
    const char *name = flx_op_get(x->op)->name;
    for (int32_t i = 0; i < x->n_in; i++) {
        const flx_tensor *in = x->in[i];
        if (in->version != x->in_version[i])
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: input %d %s was changed in place by %s after this op was "
                                 "recorded; record the op again",
                                 name, (int)i, flx_describe(in),
                                 in->changed_by ? in->changed_by : "flx_assign");
        bool member = false;
        for (int32_t m = 0; g && m < g->n_members && !member; m++) member = g->members[m] == in;
        if (!member && !in->buf)
            return flx_set_error(FLX_ERR_STATE, "%s: input %d has no data (internal error)", name,
                                 (int)i);
    }
    return FLX_OK;
}

/* Runs one node, or (g non-NULL) the fused group g rooted at t: only the root gets a buffer. */
static flx_status run_node(flx_tensor *t, const flx_fused_group *g) {
    const flx_op_def *def = flx_op_get(t->op);
    int32_t nm = g ? g->n_members : 1;
    for (int32_t m = 0; m < nm; m++) {
        flx_status cs = check_inputs_ready(g ? g->members[m] : t, g);
        if (cs != FLX_OK) return cs;
    }
    if (def->flags & FLX_OPF_ALIAS) {
        t->buf = t->in[0]->buf;
        t->buf->refs++;
    } else {
        if (!def->exec)
            return flx_set_error(FLX_ERR_STATE, "%s: a source op lost its data (internal error)",
                                 def->name);
        t->buf = flx_buffer_new(t->ctx, (size_t)t->numel * flx_dtype_size(t->dtype));
        if (!t->buf) return flx_last_status();
        const flx_backend *rbe = t->ctx->be; /* issue 9: profiler range named after the op */
        if (rbe->range_push) rbe->range_push(t->ctx, g ? "fused" : def->name);
        flx_status s = g ? flx_fused_group_exec(g) : def->exec(t);
        if (rbe->range_pop) rbe->range_pop(t->ctx);
        if (s != FLX_OK) {
            flx_buffer_release(t->buf);
            t->buf = NULL;
            return s;
        }
    }
    t->ctx->stats.nodes_executed += (uint64_t)nm;
    if (g) t->ctx->stats.nodes_fused += (uint64_t)nm;
    return FLX_OK;
}

/* After t (and, for a fused group, its other members) ran: inputs whose last consumer in the
 * evaluation this was lose their buffers unless requested or not recomputable. */
static void release_inputs(const flx_tensor *t, uint64_t epoch) {
    for (int32_t j = 0; j < t->n_in; j++) {
        flx_tensor *in = t->in[j];
        if (in->mark != epoch) continue;
        if (--in->pending == 0 && !in->keep && recomputable(in) && in->buf) {
            flx_buffer_release(in->buf);
            in->buf = NULL;
        }
    }
}

flx_status flx_eval_nodes(int32_t n, flx_tensor *const *ts) {
    uint64_t epoch = flx_next_epoch();
    struct { flx_tensor **nodes; size_t n; } p = {NULL, 0};
    flx_status s = flx_graph_postorder(n, ts, epoch, needs_data, &p.nodes, &p.n);
    if (s != FLX_OK) return s;
    for (int32_t r = 0; r < n; r++) ts[r]->keep = true;
    /* Remaining consumers of each planned node within the plan. */
    for (size_t i = 0; i < p.n; i++) p.nodes[i]->pending = 0;
    for (size_t i = 0; i < p.n; i++)
        for (int32_t j = 0; j < p.nodes[i]->n_in; j++)
            if (p.nodes[i]->in[j]->mark == epoch) p.nodes[i]->in[j]->pending++;
    /* Elementwise chains whose intermediates nothing else reads run as one kernel each. */
    flx_fusion fu;
    s = p.n ? flx_fusion_plan(p.nodes, p.n, epoch, n, ts, true, &fu) : FLX_OK;
    if (s != FLX_OK) {
        free(p.nodes);
        return s;
    }
    if (!p.n) memset(&fu, 0, sizeof fu);
    for (size_t i = 0; i < p.n && s == FLX_OK; i++) {
        flx_tensor *t = p.nodes[i];
        int32_t role = fu.role ? fu.role[i] : FLX_FUSE_SINGLE;
        if (role == FLX_FUSE_INTERIOR) continue; /* computed inside its group's kernel */
        const flx_fused_group *g = role >= 0 ? &fu.groups[role] : NULL;
        s = run_node(t, g);
        if (s != FLX_OK) break;
        if (!g) {
            release_inputs(t, epoch);
        } else {
            for (int32_t m = 0; m < g->n_members; m++) release_inputs(g->members[m], epoch);
        }
    }
    if (s != FLX_OK) {
        /* Leave no half-planned intermediates holding memory. */
        for (size_t i = 0; i < p.n; i++) {
            flx_tensor *t = p.nodes[i];
            if (!t->keep && recomputable(t) && t->buf) {
                flx_buffer_release(t->buf);
                t->buf = NULL;
            }
        }
    }
    flx_fusion_free(&fu);
    free(p.nodes);
    return s;
}

flx_status flx_eval(int32_t n, flx_tensor *const *ts) {
    if (n < 0 || (n > 0 && !ts))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_eval: bad tensor list (n %d)", (int)n);
    for (int32_t i = 0; i < n; i++)
        if (!ts[i])
            return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_eval: tensor %d is NULL",
                                          (int)i);
        else if (!flx_check_handle("flx_eval", ts[i]))
            return flx_last_status();
    return flx_eval_nodes(n, ts);
}

void flx_freeze(flx_tensor *t) {
    if (t->op == FLX_OP_CONST) return;
    flx_tensor **in = t->in;
    int32_t n_in = t->n_in;
    t->op = FLX_OP_CONST;
    t->in = NULL;
    t->n_in = 0;
    free(t->in_version);
    t->in_version = NULL;
    for (int32_t i = 0; i < n_in; i++) flx_unuse(in[i]);
    free(in);
}

flx_status flx_to_host(flx_tensor *t, void *dst, size_t nbytes) {
    if (!t) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_to_host: tensor is NULL");
    if (!flx_check_handle("flx_to_host", t)) return flx_last_status();
    if (!dst) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_to_host: dst is NULL");
    size_t need = (size_t)t->numel * flx_dtype_size(t->dtype);
    if (nbytes < need)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                             "flx_to_host: dst holds %zu bytes but %s needs %zu", nbytes,
                             flx_describe(t), need);
    flx_status s = flx_eval_nodes(1, &t);
    if (s != FLX_OK) return s;
    if (need == 0) return t->ctx->be->synchronize(t->ctx);
    return t->ctx->be->download(t->ctx, dst, t->buf->ptr, need);
}

flx_status flx_item(flx_tensor *t, double *out) {
    if (!t) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_item: tensor is NULL");
    if (!flx_check_handle("flx_item", t)) return flx_last_status();
    if (!out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_item: out is NULL");
    if (t->numel != 1)
        return flx_set_error(FLX_ERR_SHAPE, "flx_item: expects one element, got %s",
                             flx_describe(t));
    union { float f; double d; int32_t i; int64_t l; uint8_t b; } v;
    flx_status s = flx_to_host(t, &v, sizeof v);
    if (s != FLX_OK) return s;
    switch (t->dtype) {
    case FLX_F32: *out = v.f; break;
    case FLX_F64: *out = v.d; break;
    case FLX_I32: *out = v.i; break;
    case FLX_I64: *out = (double)v.l; break;
    case FLX_BOOL: *out = v.b; break;
    default: return flx_set_error(FLX_ERR_DTYPE, "flx_item: unsupported dtype %s",
                                  flx_dtype_name(t->dtype));
    }
    return FLX_OK;
}

flx_status flx_assign(flx_tensor *dst, flx_tensor *src) {
    flx_tensor *in[2] = {dst, src};
    if (!flx_check_inputs("flx_assign", 2, in)) return flx_last_status();
    if (dst->op != FLX_OP_CONST)
        return flx_set_error(FLX_ERR_STATE,
                             "flx_assign: dst %s is an op result, not a leaf; only tensors made "
                             "from data (or detached) can be assigned",
                             flx_describe(dst));
    if (dst->dtype != src->dtype)
        return flx_set_error(FLX_ERR_DTYPE, "flx_assign: dst %s and src %s differ in dtype",
                             flx_describe(dst), flx_describe(src));
    if (dst->ndim != src->ndim ||
        memcmp(dst->shape, src->shape, sizeof(int64_t) * (size_t)dst->ndim) != 0)
        return flx_set_error(FLX_ERR_SHAPE, "flx_assign: dst %s and src %s differ in shape",
                             flx_describe(dst), flx_describe(src));
    if (dst == src) return FLX_OK;
    flx_status s = flx_eval_nodes(1, &src);
    if (s != FLX_OK) return s;
    /* Computed buffers are never written again, so dst can share src's buffer: no copy. */
    flx_buffer *old = dst->buf;
    dst->buf = src->buf;
    dst->buf->refs++;
    flx_buffer_release(old);
    dst->version++;
    dst->changed_by = "flx_assign";
    return FLX_OK;
}
