/* eval.c — the evaluator: schedules the unrealised ancestors of the requested tensors
 * (runtime/core/schedule.c), pairs each step with a buffer from the allocator, runs it through the
 * step executor and frees each intermediate right after its last use in the schedule (memory
 * planned by last use). Also the host transfer entry points and flx_assign. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

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

/* flx_step_exec on the buffers the nodes hold: node's own (just allocated) and its inputs' (or,
 * for a group, its kernel's external inputs'). */
static flx_status exec_on_buffers(const flx_tensor *node, const flx_fused_group *g) {
    enum { SMALL = 16 };
    const void *small[SMALL] = {NULL};
    int32_t n = g ? g->n_ext : node->n_in;
    const void **in = n <= SMALL ? small : (const void **)malloc((size_t)n * sizeof *in);
    if (!in) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory",
                                  flx_op_get(node->op)->name);
    for (int32_t k = 0; k < n; k++) in[k] = flx_data(g ? g->ext[k] : node->in[k]);
    flx_status s = flx_step_exec(node, g, flx_data(node), in);
    if (in != small) free((void *)in);
    return s;
}

/* Runs one node, or (g non-NULL) the fused group g rooted at t: only the root (and a second
 * output) gets a buffer. */
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
        flx_tensor *second = g ? g->second : NULL;
        t->buf = flx_buffer_new(t->ctx, flx_nbytes(t));
        if (!t->buf) return flx_last_status();
        if (second && !(second->buf = flx_buffer_new(t->ctx, flx_nbytes(second)))) {
            flx_buffer_release(t->buf);
            t->buf = NULL;
            return flx_last_status();
        }
        flx_status s = exec_on_buffers(t, g);
        if (s != FLX_OK) {
            flx_buffer_release(t->buf);
            t->buf = NULL;
            if (second) {
                flx_buffer_release(second->buf);
                second->buf = NULL;
            }
            return s;
        }
    }
    t->ctx->stats.nodes_executed += (uint64_t)nm;
    if (g) t->ctx->stats.nodes_fused += (uint64_t)nm;
    return FLX_OK;
}

/* After step i ran: the inputs of t (a step, or a member of the group step i ran) whose last use
 * this was lose their buffers unless requested or not recomputable. */
static void release_inputs(const flx_schedule *sc, const flx_tensor *t, int32_t i) {
    for (int32_t j = 0; j < t->n_in; j++) {
        flx_tensor *in = t->in[j];
        if (in->mark != sc->epoch || sc->last_use[in->scratch] != i) continue;
        if (!in->keep && flx_recomputable(in) && in->buf) {
            flx_buffer_release(in->buf);
            in->buf = NULL;
        }
    }
}

/* The eager case: one requested node whose inputs all hold data. Its schedule would be the node
 * alone (nothing to fuse, no intermediate to free), so it runs without building one. */
static bool runs_alone(int32_t n, flx_tensor *const *ts) {
    if (n != 1 || ts[0]->buf) return false;
    const flx_tensor *t = ts[0];
    for (int32_t i = 0; i < t->n_in; i++)
        if (!t->in[i]->buf) return false;
    return true;
}

static flx_status eval_scheduled(int32_t n, flx_tensor *const *ts);

flx_status flx_eval_nodes(int32_t n, flx_tensor *const *ts) {
    for (int32_t r = 0; r < n; r++) ts[r]->keep = true;
    if (n == 0 || (n == 1 && ts[0]->buf)) return FLX_OK; /* nothing to compute */
    /* One device switch for the whole evaluation: its allocations and launches find the
     * context's device current. */
    flx_ctx *ctx = ts[0]->ctx;
    flx_device_saved saved;
    flx_status s = flx_device_enter(ctx, &saved);
    if (s != FLX_OK) return s;
    s = runs_alone(n, ts) ? run_node(ts[0], NULL) : eval_scheduled(n, ts);
    flx_device_leave(ctx, &saved);
    return s;
}

static flx_status eval_scheduled(int32_t n, flx_tensor *const *ts) {
    flx_schedule sc;
    flx_status s = flx_schedule_build(n, ts, needs_data, true, &sc);
    if (s != FLX_OK) return s;
    for (size_t i = 0; i < sc.n && s == FLX_OK; i++) {
        flx_tensor *t = sc.nodes[i];
        int32_t role = flx_schedule_role(&sc, i);
        /* computed inside its group's kernel (a second output: at the root's step) */
        if (role == FLX_FUSE_INTERIOR || role == FLX_FUSE_OUTPUT) continue;
        const flx_fused_group *g = role >= 0 ? &sc.fusion.groups[role] : NULL;
        s = run_node(t, g);
        if (s != FLX_OK) break;
        if (!g) {
            release_inputs(&sc, t, (int32_t)i);
        } else {
            for (int32_t m = 0; m < g->n_members; m++) release_inputs(&sc, g->members[m], (int32_t)i);
        }
    }
    if (s != FLX_OK) {
        /* Leave no half-planned intermediates holding memory. */
        for (size_t i = 0; i < sc.n; i++) {
            flx_tensor *t = sc.nodes[i];
            if (!t->keep && flx_recomputable(t) && t->buf) {
                flx_buffer_release(t->buf);
                t->buf = NULL;
            }
        }
    }
    flx_schedule_free(&sc);
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
    uint32_t *in_version = t->in_version;
    int32_t n_in = t->n_in;
    t->op = FLX_OP_CONST;
    t->in = NULL;
    t->n_in = 0;
    t->in_version = NULL;
    for (int32_t i = 0; i < n_in; i++) flx_unuse(in[i]); /* t lives on: in may be its inline storage */
    flx_node_edges_free(t, in, in_version);
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

/* Conversions between dtypes run on the host with the CPU backend's cast (the rules of flx_cast),
 * so no device memory or graph node is spent on them. */
flx_status flx_to_host_as(flx_tensor *t, flx_dtype dt, void *dst, size_t nbytes) {
    static const char *fn = "flx_to_host_as";
    if (!t) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: tensor is NULL", fn);
    if (!flx_dtype_valid(dt))
        return flx_set_error(FLX_ERR_DTYPE, "%s: unsupported host dtype %s", fn, flx_dtype_name(dt));
    if (!dst) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: dst is NULL", fn);
    size_t need = (size_t)t->numel * flx_dtype_size(dt);
    if (nbytes < need)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: dst holds %zu bytes but %s as %s needs %zu",
                             fn, nbytes, flx_describe(t), flx_dtype_name(dt), need);
    if (dt == t->dtype) return flx_to_host(t, dst, nbytes);
    size_t src_bytes = (size_t)t->numel * flx_dtype_size(t->dtype);
    void *tmp = malloc(src_bytes ? src_bytes : 1);
    if (!tmp) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory (%zu bytes)", fn, src_bytes);
    flx_status s = flx_to_host(t, tmp, src_bytes);
    if (s == FLX_OK) {
        flx_cast_args a = {t->dtype, dt, t->numel, tmp, dst};
        s = flx_backend_cpu.cast(NULL, &a);
    }
    free(tmp);
    return s;
}

flx_status flx_item(flx_tensor *t, double *out) {
    if (!t) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_item: tensor is NULL");
    if (!flx_check_handle("flx_item", t)) return flx_last_status();
    if (!out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_item: out is NULL");
    if (t->numel != 1)
        return flx_set_error(FLX_ERR_SHAPE, "flx_item: expects one element, got %s",
                             flx_describe(t));
    if (flx_dtype_is_half(t->dtype)) return flx_to_host_as(t, FLX_F64, out, sizeof *out); /* exact */
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
    if (!flx_shape_eq(dst->ndim, dst->shape, src->ndim, src->shape))
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
