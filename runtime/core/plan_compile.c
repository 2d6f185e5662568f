/* plan_compile.c — compiling a plan: a frozen graph with a static memory plan. Public contract:
 * fluxion.h, "plans"; the replay side is plan.c.
 *
 * flx_plan_compile reads top to bottom:
 *   validate   arguments, assignments and optimisers, before anything is allocated.
 *   setup      the plan object; assigned leaves and optimised parameters get private buffers;
 *              each optimised parameter's gradient d loss / d parameter (loss = output 0) is
 *              built as graph (flx_grad_of) and becomes a root.
 *   schedule   the shared scheduler (runtime/core/schedule.c) from the roots (outputs,
 *              assignment values, gradients), entering only recomputable nodes: the plan's steps,
 *              their fusion groups and lifetimes. Every other tensor met on an edge is an input
 *              (plan-owned region, rebound by copy) or an external source (its buffer at compile
 *              time is retained and must still be the tensor's buffer at each run).
 *   lifetimes  each non-alias step defines a root (numel * dtype size bytes, 256-aligned) living
 *              from its step to its last reader (through any alias); alias steps share their
 *              input's storage. Inputs, outputs and staging copies are pinned for the whole run.
 *   placement  greedy by size: roots sorted largest first each take the lowest offset that
 *              overlaps no placed root whose lifetime overlaps its own; one arena, allocated once.
 *              Every step's output and input addresses are then fixed (plan->step_out/step_in).
 *   capture    with capture (CUDA), one replay's queuing is recorded as a graph.
 * Nothing here aborts: every failure sets the thread's error and returns NULL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan_internal.h"

static const char *const fn = "flx_plan_compile";

/* ---- validate ------------------------------------------------------------------------------- */
static bool check_lists(int32_t n_out, flx_tensor *const *outputs, int32_t n_in,
                        flx_tensor *const *inputs, const flx_plan_options *o) {
    if (n_out < 1 || !outputs) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one output (n_out %d, outputs %s)",
                      fn, (int)n_out, outputs ? "given" : "NULL");
        return false;
    }
    if (n_in < 0 || (n_in > 0 && !inputs)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad input list (n_in %d, inputs %s)", fn,
                      (int)n_in, inputs ? "given" : "NULL");
        return false;
    }
    if (o->capture < FLX_PLAN_CAPTURE_DEFAULT || o->capture > FLX_PLAN_CAPTURE_ON) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: unknown capture option %d", fn, (int)o->capture);
        return false;
    }
    if (o->n_assign < 0 || (o->n_assign > 0 && (!o->assign_dst || !o->assign_src))) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad assignment lists (n_assign %d)", fn,
                      (int)o->n_assign);
        return false;
    }
    for (int32_t k = 0; k < n_out; k++)
        if (!outputs[k]) {
            flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: output %d is NULL", fn, (int)k);
            return false;
        } else if (!flx_check_handle(fn, outputs[k])) {
            return false;
        }
    flx_ctx *ctx = outputs[0]->ctx;
    for (int32_t k = 0; k < n_out; k++)
        if (outputs[k]->ctx != ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: output %d %s belongs to another context than output 0",
                          fn, (int)k, flx_describe(outputs[k]));
            return false;
        }
    return flx_check_source_list(fn, "input", FLX_ERR_INVALID_ARGUMENT, ctx, n_in, inputs);
}

static bool check_assignments(flx_ctx *ctx, int32_t n_in, flx_tensor *const *inputs,
                              const flx_plan_options *o) {
    for (int32_t k = 0; k < o->n_assign; k++) {
        flx_tensor *d = o->assign_dst[k], *v = o->assign_src[k];
        if (!d || !v) {
            flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: assignment %d has a NULL %s", fn,
                                   (int)k, d ? "value" : "destination");
            return false;
        }
        if (d->ctx != ctx || v->ctx != ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: assignment %d uses another context", fn, (int)k);
            return false;
        }
        if (d->op != FLX_OP_CONST || !d->buf) {
            flx_set_error(FLX_ERR_STATE, "%s: assignment %d destination %s is an op result, not a leaf "
                          "made from data", fn, (int)k, flx_describe(d));
            return false;
        }
        if (!flx_same_shape(d, v)) {
            flx_set_error(FLX_ERR_SHAPE, "%s: assignment %d: destination %s and value %s differ", fn,
                          (int)k, flx_describe(d), flx_describe(v));
            return false;
        }
        for (int32_t j = 0; j < n_in; j++)
            if (inputs[j] == d) {
                flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: assignment %d destination is input %d",
                              fn, (int)k, (int)j);
                return false;
            }
        for (int32_t j = 0; j < k; j++)
            if (o->assign_dst[j] == d) {
                flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: assignments %d and %d have the same "
                              "destination", fn, (int)j, (int)k);
                return false;
            }
    }
    return true;
}

/* ---- setup ---------------------------------------------------------------------------------- */
static flx_plan *fail_plan(flx_plan *p) {
    flx_plan_destroy(p);
    return NULL;
}

/* The plan object with its inputs retained, assigned leaves made private and optimisers set
 * up (before the schedule's walk, which marks nodes). */
static flx_plan *plan_new(flx_ctx *ctx, int32_t n_out, flx_tensor *const *outputs, int32_t n_in,
                          flx_tensor *const *inputs, const flx_plan_options *o) {
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
    p->as = (plan_assign *)calloc((size_t)(o->n_assign ? o->n_assign : 1), sizeof *p->as);
    if (!p->in || !p->in_rec || !p->out || !p->as) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return fail_plan(p);
    }
    for (int32_t k = 0; k < n_in; k++) p->in[k] = flx_retain(inputs[k]);
    /* Assigned leaves get private buffers first, so everything below sees the final ones. */
    p->n_assign = o->n_assign;
    for (int32_t k = 0; k < o->n_assign; k++) {
        plan_assign *a = &p->as[k];
        a->dst = flx_retain(o->assign_dst[k]);
        if (flx_tensor_make_private(a->dst) != FLX_OK) return fail_plan(p);
        a->dst_buf = a->dst->buf;
        a->dst_buf->refs++;
    }
    if (o->n_optim > 0 && flx_plan_setup_optims(p, o, outputs[0]) != FLX_OK) return fail_plan(p);
    return p;
}

/* What compiling needs between phases and the plan does not keep. */
typedef struct compile_state {
    const flx_plan_options *o;
    flx_tensor *const *outputs;
    flx_tensor *const *inputs;
    uint64_t input_epoch;   /* mark of the plan's inputs                                      */
    int32_t ext_cap;
    int32_t *root_of;       /* per step: its arena root, or -1                                */
    int32_t *in_of_step;    /* per step: the input its storage is (an alias of), or -1         */
    int32_t *ext_of_step;   /* per step: the external its storage is (an alias of), or -1      */
    flx_buffer **step_rec;  /* per step: the record it is stored in (NULL: fused interior)     */
    plan_root *pr;          /* arena roots: inputs first, then steps' and pinned extras        */
    int32_t n_pr;
    int32_t *stage_root;    /* per assignment: the root it is staged in, or -1                 */
} compile_state;

static void compile_state_free(compile_state *cs) {
    FLX_FREE_ALL(cs->root_of, cs->in_of_step, cs->ext_of_step, cs->step_rec, cs->pr, cs->stage_root);
}

static flx_status oom(void) { return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn); }

static size_t align_up(size_t n) { return (n + PLAN_ALIGN - 1) / PLAN_ALIGN * PLAN_ALIGN; }
/* A root of n bytes (at least one: every region has an address) living from start to end. */
static plan_root region(size_t n, int32_t start, int32_t end) {
    return (plan_root){align_up(n ? n : 1), 0, start, end};
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


/* ---- schedule ------------------------------------------------------------------------------- */
static flx_status schedule_steps(flx_plan *p, compile_state *cs) {
    const flx_plan_options *o = cs->o;
    int32_t n_roots = p->n_out + o->n_assign + p->n_param;
    flx_tensor **roots = (flx_tensor **)malloc((size_t)n_roots * sizeof *roots);
    if (!roots) return oom();
    for (int32_t k = 0; k < p->n_out; k++) roots[k] = cs->outputs[k];
    for (int32_t k = 0; k < o->n_assign; k++) roots[p->n_out + k] = o->assign_src[k];
    for (int32_t j = 0; j < p->n_param; j++) roots[p->n_out + o->n_assign + j] = p->param[j].grad;
    cs->input_epoch = flx_next_epoch();
    for (int32_t k = 0; k < p->n_in; k++) p->in[k]->mark = cs->input_epoch;
    /* Inputs are sources, so entering recomputable nodes stops at them too. Every root stays
     * materialised (output, assignment value, gradient read by an optimiser). */
    flx_status s = flx_schedule_build(n_roots, roots, flx_recomputable, false, &p->sched);
    free(roots);
    if (s != FLX_OK) return s;
    p->steps = p->sched.nodes;
    p->n_steps = (int32_t)p->sched.n;
    int32_t N = p->n_steps;
    for (int32_t i = 0; i < N; i++) flx_use(p->steps[i]); /* held until destroy */
    for (int32_t g = 0; g < p->sched.fusion.n_groups; g++)
        p->n_fused += (uint64_t)p->sched.fusion.groups[g].n_members;
    size_t n1 = (size_t)(N ? N : 1);
    p->op = (flx_op *)calloc(n1, sizeof *p->op);
    cs->root_of = (int32_t *)malloc(n1 * sizeof *cs->root_of);
    cs->in_of_step = (int32_t *)malloc(n1 * sizeof *cs->in_of_step);
    cs->ext_of_step = (int32_t *)malloc(n1 * sizeof *cs->ext_of_step);
    cs->step_rec = (flx_buffer **)calloc(n1, sizeof *cs->step_rec);
    /* roots: one per non-alias step, one per input, plus pinned extras (<= n_out + n_assign) */
    cs->pr = (plan_root *)calloc((size_t)(N + p->n_in + p->n_out + o->n_assign + 1), sizeof *cs->pr);
    cs->stage_root = (int32_t *)malloc((size_t)(o->n_assign ? o->n_assign : 1) * sizeof(int32_t));
    if (!p->op || !cs->root_of || !cs->in_of_step || !cs->ext_of_step || !cs->step_rec || !cs->pr ||
        !cs->stage_root)
        return oom();
    return FLX_OK;
}

/* ---- lifetimes ------------------------------------------------------------------------------ */
/* The checks on one step: its context, an op that can be planned, inputs unchanged since
 * recording; inputs that are neither steps nor plan inputs become externals. */
static flx_status check_step(flx_plan *p, compile_state *cs, const flx_tensor *t) {
    const char *name = flx_op_get(t->op)->name;
    if (t->ctx != p->ctx)
        return flx_set_error(FLX_ERR_DEVICE, "%s: node %s (%s) belongs to another context", fn,
                             name, flx_describe(t));
    if (t->op == FLX_OP_TO_CTX)
        return flx_set_error(FLX_ERR_UNSUPPORTED, "%s: %s copies from another context and cannot "
                             "be planned; make its result an input of the plan", fn, name);
    for (int32_t j = 0; j < t->n_in; j++) {
        flx_tensor *x = t->in[j];
        if (x->version != t->in_version[j])
            return flx_set_error(FLX_ERR_STATE, "%s: %s reads input %d %s, which was changed in "
                                 "place by %s after the op was recorded; record the graph again",
                                 fn, name, (int)j, flx_describe(x),
                                 x->changed_by ? x->changed_by : "flx_assign");
        if (x->mark == p->sched.epoch || x->mark == cs->input_epoch) continue;
        if (flx_recomputable(x)) /* cannot happen: the walk enters every recomputable node */
            return flx_set_error(FLX_ERR_STATE, "%s: internal error: node %s not planned", fn,
                                 flx_describe(x));
        if (ext_index(p, x, &cs->ext_cap) < 0) return flx_last_status();
    }
    return FLX_OK;
}

/* Storage of each step: a new root, or (alias) its input's storage, which is a step's root, an
 * input or an external; nothing for a fused interior member. Each root lives to the last use of
 * any step stored in it. */
static flx_status step_storage(flx_plan *p, compile_state *cs) {
    const flx_schedule *sc = &p->sched;
    for (int32_t k = 0; k < p->n_in; k++) cs->pr[cs->n_pr++] = region(flx_nbytes(p->in[k]), 0, p->n_steps);
    for (int32_t i = 0; i < p->n_steps; i++) {
        flx_tensor *t = p->steps[i];
        const flx_op_def *def = flx_op_get(t->op);
        p->op[i] = t->op;
        cs->root_of[i] = cs->ext_of_step[i] = cs->in_of_step[i] = -1;
        flx_status s = check_step(p, cs, t);
        if (s != FLX_OK) return s;
        int32_t role = flx_schedule_role(sc, (size_t)i);
        if (role == FLX_FUSE_INTERIOR) continue; /* lives in its group's kernel */
        if (role == FLX_FUSE_SINGLE && (def->flags & FLX_OPF_ALIAS)) {
            flx_tensor *x = t->in[0];
            if (x->mark == sc->epoch) {
                cs->root_of[i] = cs->root_of[x->scratch];
                cs->ext_of_step[i] = cs->ext_of_step[x->scratch];
                cs->in_of_step[i] = cs->in_of_step[x->scratch];
            } else if (x->mark == cs->input_epoch) {
                cs->in_of_step[i] = input_index(p, x);
            } else {
                cs->ext_of_step[i] = ext_index(p, x, &cs->ext_cap);
            }
            continue;
        }
        if (!def->exec)
            return flx_set_error(FLX_ERR_STATE, "%s: op %s has no kernel (internal error)", fn,
                                 def->name);
        /* A group's second output is written at its root's step (read_at), before its own. */
        cs->pr[cs->n_pr] = region(flx_nbytes(t), sc->read_at[i], i);
        cs->root_of[i] = cs->n_pr++;
    }
    for (int32_t i = 0; i < p->n_steps; i++) {
        int32_t r = cs->root_of[i];
        if (r >= 0 && cs->pr[r].end < sc->last_use[i]) cs->pr[r].end = sc->last_use[i];
    }
    return FLX_OK;
}

/* Outputs: a root computed by a step is pinned (its data persists between runs); a value that
 * lives outside the arena (an input, an external source, or an alias of one) gets a pinned
 * region of its own, refreshed by a copy at the end of each run. */
static flx_status pin_outputs(flx_plan *p, compile_state *cs) {
    uint64_t ep = p->sched.epoch;
    int32_t N = p->n_steps;
    for (int32_t k = 0; k < p->n_out; k++) {
        flx_tensor *t = cs->outputs[k];
        plan_out *po = &p->out[k];
        po->node = t;
        po->nbytes = flx_nbytes(t);
        po->copy_in = -1;
        int32_t r = t->mark == ep ? cs->root_of[t->scratch] : -1;
        if (r >= 0) {
            cs->pr[r].start = 0;
            cs->pr[r].end = N;
            po->root = r;
            continue;
        }
        cs->pr[cs->n_pr] = region(po->nbytes, 0, N);
        po->root = cs->n_pr++;
        int32_t in_k = -1, ext_k = -1;
        if (t->mark == ep) in_k = cs->in_of_step[t->scratch], ext_k = cs->ext_of_step[t->scratch];
        else if (t->mark == cs->input_epoch) in_k = input_index(p, t);
        else ext_k = ext_index(p, t, &cs->ext_cap);
        if (ext_k < 0 && in_k < 0) return flx_last_status(); /* error set by ext_index */
        po->copy_in = in_k;
        if (ext_k >= 0) {
            po->copy_src_buf = p->ext[ext_k].buf;
            po->copy_src_buf->refs++;
            po->copy_src_buf->pins++; /* read-only, like ext_index's hold */
            po->copy_src = po->copy_src_buf->ptr;
        }
    }
    return FLX_OK;
}

/* Gradients live to the end of the body, where the optimisers read them. One that is (an alias
 * of) an input or an external source, which no step writes, is read where it is. */
static flx_status pin_gradients(flx_plan *p, compile_state *cs) {
    uint64_t ep = p->sched.epoch;
    for (int32_t j = 0; j < p->n_param; j++) {
        flx_tensor *g = p->param[j].grad;
        int32_t r = g->mark == ep ? cs->root_of[g->scratch] : -1;
        if (r >= 0) cs->pr[r].end = p->n_steps;
        else if (g->mark != ep && g->mark != cs->input_epoch && ext_index(p, g, &cs->ext_cap) < 0)
            return flx_last_status();
    }
    return FLX_OK;
}

/* Assignment values are read at the end of the run; one outside the arena (possibly another
 * assigned leaf) is staged, so that every value is read before any leaf is written. */
static flx_status stage_assignments(flx_plan *p, compile_state *cs) {
    uint64_t ep = p->sched.epoch;
    int32_t N = p->n_steps;
    for (int32_t k = 0; k < p->n_assign; k++) {
        flx_tensor *v = cs->o->assign_src[k];
        plan_assign *a = &p->as[k];
        a->src = v;
        a->nbytes = flx_nbytes(v);
        a->src_in = a->src_ext = -1;
        cs->stage_root[k] = -1;
        int32_t r = v->mark == ep ? cs->root_of[v->scratch] : -1;
        if (r >= 0) {
            cs->pr[r].start = 0;
            cs->pr[r].end = N;
            continue;
        }
        cs->pr[cs->n_pr] = region(a->nbytes, 0, N);
        cs->stage_root[k] = cs->n_pr++;
        if (v->mark == ep) a->src_in = cs->in_of_step[v->scratch], a->src_ext = cs->ext_of_step[v->scratch];
        else if (v->mark == cs->input_epoch) a->src_in = input_index(p, v);
        else a->src_ext = ext_index(p, v, &cs->ext_cap);
        if (a->src_in < 0 && a->src_ext < 0) return flx_last_status(); /* error set by ext_index */
    }
    return FLX_OK;
}

/* ---- placement ------------------------------------------------------------------------------ */
static void no_delete(void *ptr, void *ctx) {
    (void)ptr;
    (void)ctx;
}
/* Deleter of output records: the region belongs to the arena, which the record holds. */
static void release_arena(void *ptr, void *arena) {
    (void)ptr;
    flx_buffer_release((flx_buffer *)arena);
}

/* Placement order: largest first, then earliest start, then index (a total order). */
typedef struct place_key {
    size_t size;
    int32_t start, idx;
} place_key;
static int cmp_key(const void *a, const void *b) {
    const place_key *x = (const place_key *)a, *y = (const place_key *)b;
    if (x->size != y->size) return x->size > y->size ? -1 : 1;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

typedef struct span { size_t lo, hi; } span;
static int cmp_span(const void *a, const void *b) {
    const span *x = (const span *)a, *y = (const span *)b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Greedy by size: places every root; returns the arena size, or SIZE_MAX on host OOM. */
static size_t place_roots(plan_root *roots, int32_t n) {
    if (n == 0) return 0;
    place_key *order = (place_key *)malloc((size_t)n * sizeof *order);
    bool *placed = (bool *)calloc((size_t)n, sizeof *placed);
    span *busy = (span *)malloc((size_t)n * sizeof *busy);
    if (!order || !placed || !busy) {
        free(order);
        free(placed);
        free(busy);
        return SIZE_MAX;
    }
    for (int32_t i = 0; i < n; i++) order[i] = (place_key){roots[i].size, roots[i].start, i};
    qsort(order, (size_t)n, sizeof *order, cmp_key);
    size_t total = 0;
    for (int32_t k = 0; k < n; k++) {
        plan_root *r = &roots[order[k].idx];
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
        placed[order[k].idx] = true;
        if (off + r->size > total) total = off + r->size;
    }
    free(order);
    free(placed);
    free(busy);
    return total;
}


/* Places the roots in one arena and gives each a non-owning record; steps get theirs. */
static flx_status place_arena(flx_plan *p, compile_state *cs) {
    size_t arena = place_roots(cs->pr, cs->n_pr);
    if (arena == SIZE_MAX) return oom();
    uint64_t unplanned = 0;
    for (int32_t r = 0; r < cs->n_pr; r++) unplanned += cs->pr[r].size;
    p->arena_bytes = arena;
    p->unplanned_bytes = unplanned;
    p->arena = flx_buffer_new(p->ctx, arena ? arena : 1);
    if (!p->arena) return flx_last_status();
    char *base = (char *)p->arena->ptr;
    p->records = (flx_buffer *)calloc(cs->n_pr > 0 ? (size_t)cs->n_pr : 1, sizeof *p->records);
    if (!p->records) return oom();
    p->n_records = cs->n_pr;
    for (int32_t r = 0; r < cs->n_pr; r++)
        p->records[r] = (flx_buffer){.refs = 1, /* never released: owned by the plan */
                                     .ctx = p->ctx,
                                     .ptr = base + cs->pr[r].offset,
                                     .nbytes = cs->pr[r].size,
                                     .deleter = no_delete};
    for (int32_t k = 0; k < p->n_in; k++) p->in_rec[k] = &p->records[k]; /* roots 0..n_in-1 */
    for (int32_t i = 0; i < p->n_steps; i++) {
        if (cs->root_of[i] >= 0) cs->step_rec[i] = &p->records[cs->root_of[i]];
        else if (cs->in_of_step[i] >= 0) cs->step_rec[i] = p->in_rec[cs->in_of_step[i]];
        else if (cs->ext_of_step[i] >= 0) cs->step_rec[i] = p->ext[cs->ext_of_step[i]].buf;
    }
    return FLX_OK;
}

/* Output records are refcounted (a handle and the plan hold them; each holds the arena). */
static flx_status bind_outputs(flx_plan *p, compile_state *cs) {
    char *base = (char *)p->arena->ptr;
    for (int32_t k = 0; k < p->n_out; k++) {
        plan_out *po = &p->out[k];
        flx_tensor *t = po->node;
        if (po->copy_in >= 0) po->copy_src = p->in_rec[po->copy_in]->ptr;
        flx_buffer *rec = (flx_buffer *)calloc(1, sizeof *rec);
        if (!rec) return oom();
        flx_tensor *h = flx_node_new(p->ctx, FLX_OP_CONST, t->dtype, t->ndim, t->shape, 0, NULL, NULL);
        if (!h) {
            free(rec);
            return flx_last_status();
        }
        *rec = (flx_buffer){.refs = 2, /* the plan and the handle */
                            .ctx = p->ctx,
                            .ptr = base + cs->pr[po->root].offset,
                            .nbytes = po->nbytes ? po->nbytes : 1,
                            .deleter = release_arena,
                            .deleter_ctx = p->arena};
        p->arena->refs++;
        h->buf = rec;
        h->keep = true;
        po->rec = rec;
        po->handle = h;
    }
    return FLX_OK;
}

/* Where x's data is during a replay. */
static const void *data_at(flx_plan *p, compile_state *cs, flx_tensor *x) {
    if (x->mark == p->sched.epoch) return cs->step_rec[x->scratch] ? cs->step_rec[x->scratch]->ptr : NULL;
    if (x->mark == cs->input_epoch) return p->in_rec[input_index(p, x)]->ptr;
    return p->ext[ext_index(p, x, &cs->ext_cap)].buf->ptr; /* found: added by check_step */
}

/* Fixes the addresses every step, assignment value and gradient is read from or written to. */
static flx_status bind_addresses(flx_plan *p, compile_state *cs) {
    char *base = (char *)p->arena->ptr;
    for (int32_t k = 0; k < p->n_assign; k++) {
        plan_assign *a = &p->as[k];
        if (cs->stage_root[k] >= 0) {
            a->stage = base + cs->pr[cs->stage_root[k]].offset;
            a->src_ptr = a->src_in >= 0 ? p->in_rec[a->src_in]->ptr : p->ext[a->src_ext].buf->ptr;
        } else {
            a->src_ptr = cs->step_rec[a->src->scratch]->ptr;
        }
    }
    for (int32_t j = 0; j < p->n_param; j++) p->param[j].grad_ptr = (void *)data_at(p, cs, p->param[j].grad);
    for (int32_t k = 0; k < p->n_optim; k++)
        for (int32_t q = 0; q < p->optim[k].m; q++)
            p->optim[k].grad_ptr[q] = p->param[p->optim[k].pk[q]].grad_ptr;
    /* Steps: out and in addresses; a group root reads its kernel's external inputs. */
    int32_t N = p->n_steps;
    const flx_schedule *sc = &p->sched;
    size_t total = 0;
    for (int32_t i = 0; i < N; i++) {
        int32_t role = flx_schedule_role(sc, (size_t)i);
        total += (size_t)(role >= 0 ? sc->fusion.groups[role].n_ext : p->steps[i]->n_in);
    }
    p->step_out = (void **)calloc((size_t)(N ? N : 1), sizeof *p->step_out);
    p->step_in = (const void **)calloc(total ? total : 1, sizeof *p->step_in);
    p->in_at = (int32_t *)malloc(((size_t)N + 1) * sizeof *p->in_at);
    if (!p->step_out || !p->step_in || !p->in_at) return oom();
    int32_t pos = 0;
    for (int32_t i = 0; i < N; i++) {
        flx_tensor *t = p->steps[i];
        int32_t role = flx_schedule_role(sc, (size_t)i);
        p->in_at[i] = pos;
        bool alias = role == FLX_FUSE_SINGLE && (flx_op_get(t->op)->flags & FLX_OPF_ALIAS);
        if (role == FLX_FUSE_INTERIOR || role == FLX_FUSE_OUTPUT || alias) continue;
        p->step_out[i] = cs->step_rec[i]->ptr;
        const flx_fused_group *g = role >= 0 ? &sc->fusion.groups[role] : NULL;
        int32_t n = g ? g->n_ext : t->n_in;
        for (int32_t k = 0; k < n; k++) p->step_in[pos++] = data_at(p, cs, g ? g->ext[k] : t->in[k]);
    }
    p->in_at[N] = pos;
    return FLX_OK;
}

/* ---- capture -------------------------------------------------------------------------------- */
/* Records one replay's queuing as a graph on backends that can. Asked for explicitly, a failure
 * is the caller's to see; by default a plan whose work cannot be captured (a library call that
 * is not capture-safe) still replays, queued op by op. */
static flx_status capture(flx_plan *p, int32_t mode) {
    flx_ctx *ctx = p->ctx;
    const flx_backend *be = ctx->be;
    if (mode == FLX_PLAN_CAPTURE_OFF) {
        p->capture_state = FLX_PLAN_NOT_CAPTURED_DISABLED;
        snprintf(p->capture_reason, sizeof p->capture_reason,
                 "capture disabled (compiled with FLX_PLAN_CAPTURE_OFF)");
        return FLX_OK;
    }
    if (!be->capture_begin || !be->capture_end || !be->graph_launch) {
        p->capture_state = FLX_PLAN_NOT_CAPTURED_UNSUPPORTED;
        snprintf(p->capture_reason, sizeof p->capture_reason,
                 "the %s backend has no graph capture: kernels are queued one by one", be->name);
        return FLX_OK;
    }
    flx_status s = be->capture_begin(ctx);
    if (s != FLX_OK) return s;
    ctx->capturing = true;
    flx_status qs = flx_plan_queue_body(p);
    ctx->capturing = false;
    void *g = NULL;
    s = be->capture_end(ctx, qs == FLX_OK, &g);
    if (qs != FLX_OK || s != FLX_OK) {
        if (g && be->graph_destroy) be->graph_destroy(ctx, g);
        if (mode == FLX_PLAN_CAPTURE_ON) return qs != FLX_OK ? qs : s;
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
    return FLX_OK;
}

/* ---- random numbers ------------------------------------------------------------------------- */
/* A replay draws new random numbers, as eager code drawing with a new seed each step does (a
 * dropout mask that repeated every step would be no dropout): random fills take their Philox
 * stream from a run counter that each replay advances on the device, so a captured graph
 * advances it too. Run 0 draws what eager evaluation of the same graph draws. */
static flx_status setup_rng(flx_plan *p) {
    bool any = false;
    for (int32_t i = 0; i < p->n_steps && !any; i++) {
        const flx_tensor *t = p->steps[i];
        any = t->op == FLX_OP_FILL &&
              (t->attrs.u.fill.kind == FLX_FILL_UNIFORM || t->attrs.u.fill.kind == FLX_FILL_NORMAL);
    }
    if (!any) return FLX_OK;
    p->rng = flx_buffer_new(p->ctx, 2 * sizeof(int64_t));
    if (!p->rng) return flx_last_status();
    const int64_t init[2] = {0, 1};
    return p->ctx->be->upload(p->ctx, p->rng->ptr, init, sizeof init);
}

/* ---- compile -------------------------------------------------------------------------------- */
flx_plan *flx_plan_compile(int32_t n_out, flx_tensor *const *outputs, int32_t n_in,
                           flx_tensor *const *inputs, const flx_plan_options *opt) {
    flx_plan_options o = opt ? *opt : flx_plan_default_options();
    if (!check_lists(n_out, outputs, n_in, inputs, &o)) return NULL;
    flx_ctx *ctx = outputs[0]->ctx;
    if (!check_assignments(ctx, n_in, inputs, &o)) return NULL;
    if (!flx_plan_check_optims(fn, ctx, outputs[0], n_in, inputs, &o)) return NULL;
    flx_plan *p = plan_new(ctx, n_out, outputs, n_in, inputs, &o);
    if (!p) return NULL;
    compile_state cs = {.o = &o, .outputs = outputs, .inputs = inputs};
    flx_status s = schedule_steps(p, &cs);
    if (s == FLX_OK) s = step_storage(p, &cs);
    if (s == FLX_OK) s = pin_outputs(p, &cs);
    if (s == FLX_OK) s = pin_gradients(p, &cs);
    if (s == FLX_OK) s = stage_assignments(p, &cs);
    if (s == FLX_OK) s = place_arena(p, &cs);
    if (s == FLX_OK) s = bind_outputs(p, &cs);
    if (s == FLX_OK) s = bind_addresses(p, &cs);
    if (s == FLX_OK) s = setup_rng(p);
    compile_state_free(&cs);
    /* The inputs' initial data. */
    for (int32_t k = 0; k < n_in && s == FLX_OK; k++) {
        size_t nb = flx_nbytes(inputs[k]);
        if (nb) s = ctx->be->copy_d2d(ctx, p->in_rec[k]->ptr, inputs[k]->buf->ptr, nb);
    }
    if (s != FLX_OK) return fail_plan(p);
    /* Graphs recorded from the leaves' values before now must not run after a write-back. */
    for (int32_t k = 0; k < p->n_assign; k++) {
        p->as[k].version = ++p->as[k].dst->version;
        p->as[k].dst->changed_by = "flx_plan_compile";
    }
    if (capture(p, o.capture) != FLX_OK) return fail_plan(p);
    return p;
}
