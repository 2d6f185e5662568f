/* schedule.c — the one scheduler the evaluator and plans share: the graph walk (an iterative
 * post-order over the nodes to run), the elementwise fusion groups over it (runtime/core/fuse.c)
 * and each step's lifetime (the last step that reads its value). The evaluator pairs a schedule
 * with the allocator (a buffer per step, freed after its last use); a plan pairs it with its
 * arena (a region per step, placed by lifetime). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Atomic uint64_t g_epoch;

uint64_t flx_next_epoch(void) { return atomic_fetch_add(&g_epoch, 1) + 1; }

typedef struct frame {
    flx_tensor *t;
    int32_t next;
} frame;

flx_status flx_graph_postorder(int32_t n, flx_tensor *const *roots, uint64_t epoch,
                               flx_enter_fn enter, flx_tensor ***out, size_t *n_out) {
    /* The walk's stack starts on the C stack; it moves to the heap only for deep graphs. */
    enum { LOCAL = 64 };
    frame local[LOCAL];
    size_t cap = LOCAL, top = 0, on = 0, ocap = 64;
    frame *st = local;
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
                    frame *ns = (frame *)(st == local ? malloc(2 * cap * sizeof *st)
                                                      : realloc(st, 2 * cap * sizeof *st));
                    if (!ns) { s = FLX_ERR_OUT_OF_MEMORY; break; }
                    if (st == local) memcpy(ns, local, sizeof local);
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
    if (st != local) free(st);
    if (s != FLX_OK) {
        free(order);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "graph walk: out of host memory");
    }
    *out = order;
    *n_out = on;
    return FLX_OK;
}


void flx_schedule_free(flx_schedule *s) {
    if (!s) return;
    free(s->nodes);
    free(s->read_at); /* and last_use and the fusion roles, in the same block */
    flx_fusion_free(&s->fusion);
    memset(s, 0, sizeof *s);
}

flx_status flx_schedule_build(int32_t n_roots, flx_tensor *const *roots, flx_enter_fn enter,
                              bool honor_keep, flx_schedule *out) {
    memset(out, 0, sizeof *out);
    out->epoch = flx_next_epoch();
    flx_status s = flx_graph_postorder(n_roots, roots, out->epoch, enter, &out->nodes, &out->n);
    if (s != FLX_OK) return s;
    if (out->n > (size_t)INT32_MAX / 4) {
        flx_schedule_free(out);
        return flx_set_error(FLX_ERR_UNSUPPORTED, "graph of more than %d nodes is too large",
                             INT32_MAX / 4);
    }
    size_t n = out->n;
    for (size_t i = 0; i < n; i++) out->nodes[i]->scratch = (int32_t)i;
    /* read_at, last_use and the fusion roles share one block (freed through read_at). */
    const size_t n1 = n ? n : 1;
    out->read_at = (int32_t *)malloc(3 * n1 * sizeof *out->read_at);
    out->last_use = out->read_at ? out->read_at + n1 : NULL;
    if (!out->read_at) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "schedule: out of host memory");
    /* Elementwise chains whose intermediates nothing else reads run as one kernel each; the
     * roots (requested values, plan outputs) stay materialised. */
    if (s == FLX_OK && n > 0)
        s = flx_fusion_plan(out->nodes, n, out->epoch, n_roots, roots, honor_keep,
                            out->read_at + 2 * n1, &out->fusion);
    if (s != FLX_OK) {
        flx_schedule_free(out);
        return s;
    }
    /* A fused member's reads happen when its group's root runs. */
    for (size_t i = 0; i < n; i++) {
        out->read_at[i] = (int32_t)i;
        out->last_use[i] = -1;
    }
    for (int32_t g = 0; g < out->fusion.n_groups; g++) {
        const flx_fused_group *fg = &out->fusion.groups[g];
        for (int32_t m = 0; m < fg->n_members; m++)
            out->read_at[fg->members[m]->scratch] = fg->root->scratch;
    }
    for (size_t i = 0; i < n; i++) {
        const flx_tensor *t = out->nodes[i];
        for (int32_t j = 0; j < t->n_in; j++) {
            const flx_tensor *x = t->in[j];
            if (x->mark != out->epoch) continue;
            if (out->last_use[x->scratch] < out->read_at[i]) out->last_use[x->scratch] = out->read_at[i];
        }
    }
    return FLX_OK;
}
