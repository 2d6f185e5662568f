/* fuse.c — elementwise fusion, shared by the evaluator (runtime/core/eval.c) and plans
 * (runtime/core/plan.c).
 *
 * Why: a training step is full of short elementwise chains (bias + activation, the activation's
 * backward g * f'(x), residual adds, optimiser arithmetic written as ops). Run op by op, each link
 * reads and writes a whole tensor; run as one kernel, the chain reads its inputs once and writes
 * one result, and the intermediates never get memory.
 *
 * Grouping (flx_fusion_plan). The list is walked consumers-first (reverse post-order). A fusable
 * node (float unary, binary arithmetic, where) joins the group of its consumers when
 *   - every consumer edge it has inside the list comes from members of one group (so no other
 *     kernel of this evaluation reads it: it needs no buffer),
 *   - it is not pinned (a requested tensor, a plan output) and not a leaf,
 *   - it has the group's shape and dtype (an input that is broadcast is computed once, outside),
 *   - the group stays within FLX_FUSE_MAX_MEMBERS members and FLX_FUSED_MAX_IN distinct inputs;
 * otherwise it starts a group of its own. A node whose value is its input 0's (FLX_OPF_SAME_VALUE)
 * joins like an elementwise node but never starts a group: it is a member without an instruction,
 * its readers read input 0's value, and its other inputs are not the kernel's. Members of dense-layer groups (matmul [+ bias] [relu],
 * or a weight gradient with its bias gradient; runtime/core/fuse_gemm.c, planned first) are left out. A group of one node runs its ordinary
 * kernel. This is
 * the evaluator's last-use rule applied one step further: a node whose every reader is in the
 * same kernel is freed "before" it is written. Consumers outside the list (graphs not being
 * evaluated now) do not matter: the unfused evaluator would free the value after its last
 * consumer in the list as well, and recompute it if read later — so does this.
 *
 * Programs (build_program). Members in post-order become instructions over a few slots: each
 * external input is LOADed just before its first use, a slot is freed after its value's last
 * use, and the result slot may reuse an operand's slot. A group whose program would need more
 * than FLX_FUSED_MAX_SLOTS live values is dissolved (its nodes run unfused) — rare, and always
 * correct. The index space is coalesced (size-1 dims dropped, dims merged where every input's
 * strides allow), so contiguous inputs read at the linear index and a bias broadcast over rows
 * reads at (i mod cols).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "flx_unary_ops.h"

#define FLX_FUSE_MAX_MEMBERS 16
_Static_assert(FLX_FUSE_MAX_MEMBERS + FLX_FUSED_MAX_IN <= FLX_FUSED_MAX_INSTR,
               "a program holds one instruction per member and one LOAD per input");

enum { CG_UNSEEN = -1, CG_CONFLICT = -2 };

/* A node whose value is its input 0's (FLX_OPF_SAME_VALUE: a batch-norm node over its value):
 * a group passes through it, reading neither it nor its other inputs. */
static bool pass_through(const flx_tensor *t) {
    return (flx_op_get(t->op)->flags & FLX_OPF_SAME_VALUE) && t->in[0]->dtype == t->dtype &&
           flx_same_shape(t, t->in[0]);
}

/* The inputs a member's instruction reads. */
static int32_t value_inputs(const flx_tensor *t) { return pass_through(t) ? 1 : t->n_in; }

static bool fusable(const flx_tensor *t) {
    if (!flx_dtype_is_float(t->dtype)) return false;
    if (pass_through(t)) return true;
    switch (t->op) {
    case FLX_OP_UNARY: return t->in[0]->dtype == t->dtype;
    case FLX_OP_BINARY:
        return !FLX_BINARY_IS_COMPARE(t->attrs.u.binary.op) && t->in[0]->dtype == t->dtype &&
               t->in[1]->dtype == t->dtype;
    case FLX_OP_WHERE:
        return t->in[0]->dtype == FLX_BOOL && t->in[1]->dtype == t->dtype &&
               t->in[2]->dtype == t->dtype;
    default: return false;
    }
}

/* Group under construction: members (consumers first) and the exact set of external inputs. */
typedef struct draft {
    int32_t n_members;
    flx_tensor *members[FLX_FUSE_MAX_MEMBERS];
    int32_t n_ext;
    flx_tensor *ext[FLX_FUSED_MAX_IN];
} draft;

static int32_t find(flx_tensor *const *xs, int32_t n, const flx_tensor *t) {
    for (int32_t i = 0; i < n; i++)
        if (xs[i] == t) return i;
    return -1;
}

/* Adds t (an external input of d, or the root when d is empty) as a member if the inputs fit. */
static bool draft_add(draft *d, flx_tensor *t) {
    if (d->n_members == FLX_FUSE_MAX_MEMBERS) return false;
    flx_tensor *ext[FLX_FUSED_MAX_IN];
    int32_t n = 0;
    for (int32_t i = 0; i < d->n_ext; i++)
        if (d->ext[i] != t) ext[n++] = d->ext[i];
    for (int32_t j = 0; j < value_inputs(t); j++) {
        flx_tensor *x = t->in[j];
        if (find(ext, n, x) >= 0 || find(d->members, d->n_members, x) >= 0) continue;
        if (n == FLX_FUSED_MAX_IN) return false;
        ext[n++] = x;
    }
    memcpy(d->ext, ext, sizeof(flx_tensor *) * (size_t)n);
    d->n_ext = n;
    d->members[d->n_members++] = t;
    return true;
}

/* ---- programs ---------------------------------------------------------------------------- */
/* Drops size-1 dims and merges dims whose strides chain for every input (the output is dense). */
static void coalesce(flx_fused_args *a) {
    int32_t nd = 0;
    for (int32_t d = 0; d < a->ndim; d++) {
        if (a->shape[d] == 1) continue;
        if (nd > 0) {
            bool ok = true;
            for (int32_t k = 0; k < a->n_in; k++)
                if (a->in_strides[k][nd - 1] != a->in_strides[k][d] * a->shape[d]) ok = false;
            if (ok) {
                a->shape[nd - 1] *= a->shape[d];
                for (int32_t k = 0; k < a->n_in; k++) a->in_strides[k][nd - 1] = a->in_strides[k][d];
                continue;
            }
        }
        a->shape[nd] = a->shape[d];
        for (int32_t k = 0; k < a->n_in; k++) a->in_strides[k][nd] = a->in_strides[k][d];
        nd++;
    }
    if (nd == 0) { /* one element */
        nd = 1;
        a->shape[0] = 1;
        for (int32_t k = 0; k < a->n_in; k++) a->in_strides[k][0] = 0;
    }
    for (int32_t d = nd; d < FLX_MAX_DIMS; d++) {
        a->shape[d] = 1;
        for (int32_t k = 0; k < a->n_in; k++) a->in_strides[k][d] = 0;
    }
    a->ndim = nd;
    int64_t dense[FLX_MAX_DIMS];
    flx_contiguous_strides(nd, a->shape, dense);
    for (int32_t k = 0; k < a->n_in; k++) {
        bool contig = true, scalar = true;
        for (int32_t d = 0; d < nd; d++) {
            if (a->in_strides[k][d] != dense[d]) contig = false;
            if (a->in_strides[k][d] != 0) scalar = false;
        }
        a->in_kind[k] = (uint8_t)(contig ? FLX_FUSED_IN_CONTIG
                                         : scalar ? FLX_FUSED_IN_SCALAR : FLX_FUSED_IN_STRIDED);
    }
}

/* Builds g->args from g's members (post-order) and inputs; false if it needs too many slots. */
static bool build_program(flx_fused_group *g) {
    flx_fused_args *a = &g->args;
    const flx_tensor *root = g->root;
    memset(a, 0, sizeof *a);
    a->dtype = root->dtype;
    a->ndim = root->ndim;
    memcpy(a->shape, root->shape, sizeof(int64_t) * (size_t)root->ndim);
    a->n = root->numel;
    a->n_in = g->n_ext;
    for (int32_t k = 0; k < g->n_ext; k++) {
        a->in_bool[k] = g->ext[k]->dtype == FLX_BOOL;
        flx_broadcast_strides(g->ext[k], root->ndim, root->shape, a->in_strides[k]);
    }
    /* Last member reading each value: members first, then inputs. */
    int32_t last[FLX_FUSED_MAX_INSTR + FLX_FUSED_MAX_IN];
    int32_t slot[FLX_FUSED_MAX_INSTR + FLX_FUSED_MAX_IN];
    int32_t nm = g->n_members;
    for (int32_t v = 0; v < nm + g->n_ext; v++) last[v] = -1, slot[v] = -1;
    /* A pass-through member stands for its input's value (same_as), so it needs no instruction
     * and its readers read that value. */
    int32_t value_of[FLX_FUSED_MAX_INSTR][3], same_as[FLX_FUSED_MAX_INSTR];
    for (int32_t m = 0; m < nm; m++) {
        const flx_tensor *t = g->members[m];
        same_as[m] = m;
        for (int32_t j = 0; j < value_inputs(t); j++) {
            int32_t v = find(g->members, nm, t->in[j]);
            v = v >= 0 ? same_as[v] : nm + find(g->ext, g->n_ext, t->in[j]);
            value_of[m][j] = v;
            if (pass_through(t)) same_as[m] = v;
            else last[v] = m;
        }
    }
    bool used[FLX_FUSED_MAX_SLOTS] = {false};
    int32_t pc = 0;
    for (int32_t m = 0; m < nm; m++) {
        const flx_tensor *t = g->members[m];
        if (pass_through(t)) continue;
        uint8_t src[3] = {0, 0, 0};
        for (int32_t j = 0; j < t->n_in; j++) {
            int32_t v = value_of[m][j];
            if (slot[v] < 0) { /* an input not loaded yet */
                int32_t s = 0;
                while (s < FLX_FUSED_MAX_SLOTS && used[s]) s++;
                if (s == FLX_FUSED_MAX_SLOTS) return false;
                used[s] = true;
                slot[v] = s;
                a->instr[pc++] = (flx_fused_instr){FLX_FUSED_LOAD, (uint8_t)(v - nm), (uint8_t)s,
                                                   0, 0, 0, 0, 0};
            }
            src[j] = (uint8_t)slot[v];
        }
        for (int32_t j = 0; j < t->n_in; j++)
            if (last[value_of[m][j]] == m) used[slot[value_of[m][j]]] = false;
        int32_t s = 0;
        while (s < FLX_FUSED_MAX_SLOTS && used[s]) s++;
        if (s == FLX_FUSED_MAX_SLOTS) return false;
        used[s] = true;
        slot[m] = s;
        flx_fused_instr in = {0, 0, (uint8_t)s, src[0], src[1], src[2], 0, 0};
        switch (t->op) {
        case FLX_OP_UNARY:
            in.kind = FLX_FUSED_UNARY;
            in.op = (uint8_t)t->attrs.u.unary.op;
            in.a = t->attrs.u.unary.a;
            in.b = t->attrs.u.unary.b;
            break;
        case FLX_OP_BINARY:
            in.kind = FLX_FUSED_BINARY;
            in.op = (uint8_t)t->attrs.u.binary.op;
            break;
        default: in.kind = FLX_FUSED_WHERE; break;
        }
        a->instr[pc++] = in;
    }
    a->n_instr = pc;
    coalesce(a);
    return true;
}

/* ---- planning ------------------------------------------------------------------------------ */
/* Per-position temporaries of flx_fusion_plan: in the struct itself for up to PLANNER_LOCAL
 * nodes, on the heap beyond. */
enum { PLANNER_LOCAL = 16 };
typedef struct {
    int32_t *cg;         /* consumers' group per position   */
    int32_t *group_root; /* root position per draft group   */
    int32_t *gemm_of;    /* dense-layer group per position  */
    int32_t *reads, *reader; /* dense-layer planning: edges into each position, its last reader */
    uint8_t *pin;
    draft *dr;           /* at most one group per node      */
    int32_t l_cg[PLANNER_LOCAL], l_group_root[PLANNER_LOCAL], l_gemm_of[PLANNER_LOCAL], renum[PLANNER_LOCAL];
    int32_t l_reads[PLANNER_LOCAL], l_reader[PLANNER_LOCAL];
    uint8_t l_pin[PLANNER_LOCAL];
    draft l_dr[PLANNER_LOCAL];
} planner_tmp;

static bool planner_tmp_init(planner_tmp *t, size_t n, bool heap) {
    if (!heap) {
        t->cg = t->l_cg, t->group_root = t->l_group_root, t->gemm_of = t->l_gemm_of;
        t->reads = t->l_reads, t->reader = t->l_reader;
        t->pin = t->l_pin, t->dr = t->l_dr;
        return true;
    }
    t->cg = (int32_t *)malloc(n * sizeof *t->cg);
    t->group_root = (int32_t *)malloc(n * sizeof *t->group_root);
    t->gemm_of = (int32_t *)malloc(n * sizeof *t->gemm_of);
    t->reads = (int32_t *)malloc(2 * n * sizeof *t->reads); /* and reader */
    t->reader = t->reads ? t->reads + n : NULL;
    t->pin = (uint8_t *)malloc(n);
    t->dr = (draft *)malloc(n * sizeof *t->dr);
    return t->cg && t->group_root && t->gemm_of && t->reads && t->pin && t->dr;
}

static void planner_tmp_free(planner_tmp *t, bool heap) {
    if (!heap) return;
    free(t->cg), free(t->group_root), free(t->gemm_of), free(t->reads), free(t->pin), free(t->dr);
}

void flx_fusion_free(flx_fusion *f) {
    if (!f) return;
    free(f->groups);
    memset(f, 0, sizeof *f);
}

flx_status flx_fusion_plan(flx_tensor *const *order, size_t n, uint64_t epoch, int32_t n_pinned,
                           flx_tensor *const *pinned, bool honor_keep, int32_t *role,
                           flx_fusion *out) {
    memset(out, 0, sizeof *out);
    if (n < 2 || !order[0]->ctx->fusion) return FLX_OK;
    const bool elementwise = flx_backend_supports(order[0]->ctx->be, FLX_KERNEL_FUSED);
    bool any = false;
    for (size_t i = 0; i < n && !any; i++)
        any = (elementwise && fusable(order[i])) || order[i]->op == FLX_OP_MATMUL;
    if (!any) return FLX_OK;
    /* The planner's temporaries live on the C stack for the short lists of eager evaluation
     * (no allocator call per evaluation), on the heap for longer ones. */
    planner_tmp local, *tmp = &local;
    const bool heap = n > PLANNER_LOCAL;
    if (!planner_tmp_init(tmp, n, heap)) {
        planner_tmp_free(tmp, heap);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "fusion: out of host memory");
    }
    int32_t *cg = tmp->cg, *group_root = tmp->group_root, *gemm_of = tmp->gemm_of;
    uint8_t *pin = tmp->pin;
    draft *dr = tmp->dr;
    for (size_t i = 0; i < n; i++) {
        order[i]->scratch = (int32_t)i;
        cg[i] = CG_UNSEEN;
        pin[i] = honor_keep && order[i]->keep;
    }
    for (int32_t k = 0; k < n_pinned; k++)
        if (pinned[k] && pinned[k]->mark == epoch) pin[pinned[k]->scratch] = 1;
    /* Dense layers first: their members are one GEMM call, out of the elementwise groups. */
    int32_t n_gemm = 0;
    flx_gemm_groups_plan(order, n, epoch, pin, tmp->reads, tmp->reader, gemm_of, &n_gemm);
    int32_t ng = 0;
    for (size_t ii = n; ii-- > 0;) {
        flx_tensor *t = order[ii];
        role[ii] = FLX_FUSE_SINGLE;
        int32_t g = -1;
        if (elementwise && fusable(t) && gemm_of[ii] < 0) {
            int32_t c = cg[ii];
            if (c >= 0 && !pin[ii] && !t->is_leaf &&
                flx_same_shape(t, order[group_root[c]]) && draft_add(&dr[c], t)) {
                g = c;
                role[ii] = FLX_FUSE_INTERIOR;
            } else if (pass_through(t)) {
                g = -1; /* only inside a group: its value is its input's */
            } else {
                g = ng++;
                dr[g].n_members = dr[g].n_ext = 0;
                group_root[g] = (int32_t)ii;
                if (!draft_add(&dr[g], t)) { /* more distinct inputs than a program takes */
                    ng--;
                    g = -1;
                } else {
                    role[ii] = g;
                }
            }
        }
        for (int32_t j = 0; j < t->n_in; j++) {
            flx_tensor *x = t->in[j];
            if (x->mark != epoch) continue;
            int32_t *c = &cg[x->scratch];
            if (g < 0 || j >= value_inputs(t)) *c = CG_CONFLICT;
            else if (*c == CG_UNSEEN) *c = g;
            else if (*c != g) *c = CG_CONFLICT;
        }
    }
    /* Groups of two or more members become programs; the rest run unfused (and when none has two,
     * nothing is allocated and role stays unpublished). */
    any = n_gemm > 0;
    for (int32_t g = 0; g < ng && !any; g++) any = dr[g].n_members >= 2;
    if (!any) {
        planner_tmp_free(tmp, heap);
        return FLX_OK;
    }
    flx_fused_group *groups = (flx_fused_group *)malloc((size_t)(ng + n_gemm + 1) * sizeof *groups);
    int32_t *renum = heap ? (int32_t *)malloc((size_t)(ng ? ng : 1) * sizeof *renum) : tmp->renum;
    if (!groups || !renum) {
        free(groups);
        if (heap) free(renum);
        planner_tmp_free(tmp, heap);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "fusion: out of host memory");
    }
    int32_t nk = 0;
    for (int32_t g = 0; g < ng; g++) {
        renum[g] = -1;
        draft *d = &dr[g];
        if (d->n_members < 2) continue;
        flx_fused_group *fg = &groups[nk];
        fg->kind = FLX_GROUP_ELEMENTWISE;
        fg->root = d->members[0];
        fg->second = NULL;
        fg->n_members = d->n_members;
        for (int32_t m = 0; m < d->n_members; m++) /* consumers-first -> post-order */
            fg->members[m] = d->members[d->n_members - 1 - m];
        fg->n_ext = d->n_ext;
        memcpy(fg->ext, d->ext, sizeof(flx_tensor *) * (size_t)d->n_ext);
        if (build_program(fg)) renum[g] = nk++;
    }
    /* Members of dropped groups (single nodes, programs that did not fit) run unfused. */
    for (int32_t g = 0; g < ng; g++)
        if (renum[g] < 0)
            for (int32_t m = 0; m < dr[g].n_members; m++) role[dr[g].members[m]->scratch] = FLX_FUSE_SINGLE;
        else
            role[group_root[g]] = renum[g];
    flx_gemm_groups_write(order, n, epoch, pin, tmp->reads, tmp->reader, gemm_of, groups + nk);
    for (int32_t j = 0; j < n_gemm; j++) {
        const flx_fused_group *gg = &groups[nk];
        for (int32_t m = 0; m < gg->n_members; m++) {
            const flx_tensor *t = gg->members[m];
            role[t->scratch] = t == gg->root ? nk : t == gg->second ? FLX_FUSE_OUTPUT : FLX_FUSE_INTERIOR;
        }
        nk++;
    }
    if (heap) free(renum);
    planner_tmp_free(tmp, heap);
    if (nk == 0) {
        free(groups);
        return FLX_OK;
    }
    out->role = role;
    out->groups = groups;
    out->n_groups = nk;
    return FLX_OK;
}

flx_status flx_fused_group_exec(const flx_fused_group *g, void *out, const void *const *ext) {
    if (g->kind == FLX_GROUP_GEMM) {
        flx_gemm_ex_args ge = g->gemm;
        ge.a = ext[0];
        ge.b = ext[1];
        ge.out = out;
        if (g->second) { /* the product and the bias gradient: the root is either */
            void *second = (void *)ext[g->n_ext - 1];
            bool root_is_product = g->root->op == FLX_OP_MATMUL;
            ge.out = root_is_product ? out : second;
            ge.bgrad_out = root_is_product ? second : out;
        } else {
            ge.bias = g->n_ext > 2 ? ext[2] : NULL;
        }
        return flx_kernel_gemm_ex(g->root->ctx, &ge);
    }
    flx_fused_args a = g->args;
    for (int32_t k = 0; k < g->n_ext; k++) a.in[k] = ext[k];
    a.out = out;
    return flx_kernel_fused(g->root->ctx, &a);
}
