/* fuse_gemm.c — dense-layer groups: matmul [+ row bias] [relu], and a weight gradient with its
 * bias gradient, as one gemm_ex call each.
 *
 * Why: a dense layer run op by op writes the product, reads it back to add the bias, and again to
 * apply the activation; cuBLASLt's epilogues do both while the product is still in registers, so
 * the layer costs one GEMM and its output is written once. A training graph keeps this shape
 * after the backward is added, because relu's derivative reads relu's output (step(y) equals
 * step(x) for every x, NaN included), not the pre-activation: nothing outside the chain reads the
 * product or the biased product.
 *
 * Rule, on the schedule's list (runtime/core/fuse.c calls it before elementwise grouping, which
 * then leaves these members alone): a MATMUL with k >= 1 whose B is one matrix (2-d, or a batch
 * of one; then a batched A is not transposed, so its matrices are the rows of one) extends its
 * chain through its consumer while that consumer is its only reader inside the list (one edge)
 * and the value is not pinned (requested, a plan output) nor a leaf:
 *   - ADD of the chain's value and a bias of n values ((n) or (1, ..., 1, n)) of the same dtype
 *     (either order),
 *   - then RELU of the same dtype.
 * A chain of the matmul alone is not a group. The same last-use argument as elementwise fusion
 * makes this safe: a member read by nothing else in the list would be freed right after the
 * chain's next op anyway, and is recomputed if read later.
 *
 * The backward of a dense layer y = x W^T + b computes dW = dy^T x (a MATMUL reading dy as A,
 * transposed) and db = sum(dy, axis 0) (flx_sum_to_shape's REDUCE, then a reshape) from the same
 * dy. cuBLASLt's BGRAD epilogues write that sum while the GEMM reads dy, so the pair becomes one
 * gemm_ex call with two outputs: a 2-d MATMUL not taken by a chain, and a SUM (scale 1, one axis)
 * of its A or B over the product's k axis, of the same dtype. Both values are stored, so nothing
 * about their readers matters; what matters is when they are written. The group runs at the
 * earlier of the two positions (its root) and the later node (its second output, role
 * FLX_FUSE_OUTPUT) is not run at its own: that is only sound when every input the later node
 * has in the list is computed before the root's step, which the rule checks. The second output's
 * memory lives from the root's step to its last reader, in the evaluator and in plans alike.
 */
#include <string.h>

#include "internal.h"
#include "flx_unary_ops.h"

/* The bias operand of t if t is add(x, bias) with bias (n), or (1, ..., 1, n) of at most x's
 * rank, broadcast over x's rows. */
static flx_tensor *row_bias(const flx_tensor *t, const flx_tensor *x) {
    if (t->op != FLX_OP_BINARY || t->attrs.u.binary.op != FLX_BINARY_ADD) return NULL;
    if (t->n_in != 2 || (t->in[0] == x) == (t->in[1] == x)) return NULL;
    flx_tensor *b = t->in[0] == x ? t->in[1] : t->in[0];
    if (b->dtype != x->dtype || t->dtype != x->dtype || !flx_same_shape(t, x)) return NULL;
    if (b->ndim < 1 || b->ndim > x->ndim || b->shape[b->ndim - 1] != x->shape[x->ndim - 1]) return NULL;
    return b->numel == b->shape[b->ndim - 1] ? b : NULL;
}

static bool is_relu_of(const flx_tensor *t, const flx_tensor *x) {
    return t->op == FLX_OP_UNARY && t->attrs.u.unary.op == FLX_UNARY_RELU && t->in[0] == x &&
           t->dtype == x->dtype;
}

/* The group of the chain starting at matmul position i, or false when no epilogue applies.
 * reads[j]: edges into position j from the list; reader[j]: the last position reading j. */
static bool chain_at(flx_tensor *const *order, size_t i, const uint8_t *pin, const int32_t *reads,
                     const int32_t *reader, flx_fused_group *g) {
    flx_tensor *mm = order[i];
    if (mm->numel == 0 || !flx_dtype_is_float(mm->dtype)) return false;
    const flx_tensor *A = mm->in[0], *B = mm->in[1];
    int32_t ta = mm->attrs.u.matmul.ta, tb = mm->attrs.u.matmul.tb;
    /* One B for every batch (x W^T of a (..., in) x); A's matrices then hold the whole batch
     * (matmul materialises other broadcasts), and without ta they are the rows of one matrix. */
    int64_t batch = flx_shape_numel(mm->ndim - 2, mm->shape);
    if (flx_shape_numel(B->ndim - 2, B->shape) != 1 || (batch > 1 && ta)) return false;
    int64_t k = ta ? A->shape[A->ndim - 2] : A->shape[A->ndim - 1];
    if (k < 1) return false;
    memset(g, 0, sizeof *g);
    g->kind = FLX_GROUP_GEMM;
    g->members[g->n_members++] = mm;
    g->ext[g->n_ext++] = mm->in[0];
    g->ext[g->n_ext++] = mm->in[1];
    flx_tensor *cur = mm, *bias = NULL;
    int32_t act = FLX_GEMM_ACT_NONE;
    for (;;) {
        size_t c = (size_t)cur->scratch;
        if (reads[c] != 1 || pin[c] || cur->is_leaf) break;
        flx_tensor *next = order[reader[c]];
        flx_tensor *b = (!bias && act == FLX_GEMM_ACT_NONE) ? row_bias(next, cur) : NULL;
        if (b) {
            bias = b;
            g->ext[g->n_ext++] = b;
        } else if (act == FLX_GEMM_ACT_NONE && is_relu_of(next, cur)) {
            act = FLX_GEMM_ACT_RELU;
        } else {
            break;
        }
        g->members[g->n_members++] = next;
        cur = next;
        if (act != FLX_GEMM_ACT_NONE) break;
    }
    if (g->n_members < 2) return false;
    g->root = cur;
    g->gemm = (flx_gemm_ex_args){.dtype = mm->dtype, .batch = batch, .m = mm->shape[mm->ndim - 2],
                                 .n = mm->shape[mm->ndim - 1], .k = k, .ta = ta, .tb = tb, .act = act};
    return true;
}

/* The operand of mm whose sum over the product's k axis r is (r: SUM with scale 1 over one axis
 * of a 2-d operand, in mm's dtype): FLX_GEMM_BGRAD_A (m values), _B (n values), or _NONE.
 * Stored A is (k, m) when ta, else (m, k); stored B is (n, k) when tb, else (k, n). */
static int32_t bgrad_of(const flx_tensor *mm, const flx_tensor *r) {
    if (r->op != FLX_OP_REDUCE || r->attrs.u.reduce.op != FLX_REDUCE_SUM ||
        r->attrs.u.reduce.param != 1.0 || r->attrs.u.reduce.naxes != 1 || r->dtype != mm->dtype)
        return FLX_GEMM_BGRAD_NONE;
    const flx_tensor *x = r->in[0];
    int32_t axis = r->attrs.u.reduce.axes[0];
    if (x->ndim != 2 || x->dtype != mm->dtype) return FLX_GEMM_BGRAD_NONE;
    if (x == mm->in[0] && axis == (mm->attrs.u.matmul.ta ? 0 : 1)) return FLX_GEMM_BGRAD_A;
    if (x == mm->in[1] && axis == (mm->attrs.u.matmul.tb ? 1 : 0)) return FLX_GEMM_BGRAD_B;
    return FLX_GEMM_BGRAD_NONE;
}

/* Every input of t inside the list is computed before step. */
static bool inputs_before(const flx_tensor *t, int32_t step, uint64_t epoch) {
    for (int32_t j = 0; j < t->n_in; j++)
        if (t->in[j]->mark == epoch && t->in[j]->scratch >= step) return false;
    return true;
}

/* The two-output group of the matmul at position i and the sum at position j (bgrad_of gave
 * side), or false when the later of them cannot run at the earlier one's step. */
static bool bgrad_pair(flx_tensor *const *order, int32_t i, int32_t j, int32_t side, uint64_t epoch,
                       flx_fused_group *g) {
    flx_tensor *mm = order[i];
    int32_t first = i < j ? i : j, later = i < j ? j : i;
    if (!inputs_before(order[later], first, epoch)) return false;
    const flx_tensor *A = mm->in[0];
    int32_t ta = mm->attrs.u.matmul.ta, tb = mm->attrs.u.matmul.tb;
    memset(g, 0, sizeof *g);
    g->kind = FLX_GROUP_GEMM;
    g->root = order[first];
    g->second = order[later];
    g->members[g->n_members++] = g->root;
    g->members[g->n_members++] = g->second;
    g->ext[g->n_ext++] = mm->in[0];
    g->ext[g->n_ext++] = mm->in[1];
    g->ext[g->n_ext++] = g->second;
    g->gemm = (flx_gemm_ex_args){.dtype = mm->dtype, .batch = 1, .m = mm->shape[0], .n = mm->shape[1],
                                 .k = ta ? A->shape[0] : A->shape[1], .ta = ta, .tb = tb,
                                 .act = FLX_GEMM_ACT_NONE, .bgrad = side};
    return true;
}

/* A matmul that can carry a bias gradient: 2-d operands and result, float, not empty. */
static bool bgrad_matmul(const flx_tensor *mm) {
    return mm->op == FLX_OP_MATMUL && mm->ndim == 2 && mm->in[0]->ndim == 2 && mm->in[1]->ndim == 2 &&
           mm->numel > 0 && flx_dtype_is_float(mm->dtype) &&
           (mm->attrs.u.matmul.ta ? mm->in[0]->shape[0] : mm->in[0]->shape[1]) >= 1;
}

void flx_gemm_groups_plan(flx_tensor *const *order, size_t n, uint64_t epoch, const uint8_t *pin,
                          int32_t *reads, int32_t *reader, int32_t *member_of, int32_t *n_groups) {
    *n_groups = 0;
    for (size_t i = 0; i < n; i++) member_of[i] = -1;
    if (n < 2 || !flx_backend_supports(order[0]->ctx->be, FLX_KERNEL_GEMM_EX)) return;
    size_t n_mm = 0;
    for (size_t i = 0; i < n; i++) n_mm += order[i]->op == FLX_OP_MATMUL;
    if (n_mm == 0) return;
    for (size_t i = 0; i < n; i++) reads[i] = 0;
    for (size_t i = 0; i < n; i++)
        for (int32_t j = 0; j < order[i]->n_in; j++) {
            const flx_tensor *x = order[i]->in[j];
            if (x->mark != epoch) continue;
            reads[x->scratch]++;
            reader[x->scratch] = (int32_t)i;
        }
    int32_t ng = 0;
    flx_fused_group g;
    for (size_t i = 0; i < n; i++) {
        if (order[i]->op != FLX_OP_MATMUL || !chain_at(order, i, pin, reads, reader, &g)) continue;
        /* An add of two (1, n) products could end two chains: the first one takes it. */
        bool taken = false;
        for (int32_t m = 0; m < g.n_members; m++) taken |= member_of[g.members[m]->scratch] >= 0;
        if (taken) continue;
        for (int32_t m = 0; m < g.n_members; m++) member_of[g.members[m]->scratch] = ng;
        ng++;
    }
    /* Bias gradients beside the remaining matmuls: each unclaimed sum pairs with the first
     * unclaimed matmul it fits (sums and matmuls are few in a training step: a double scan). */
    for (size_t j = 0; j < n; j++) {
        const flx_tensor *r = order[j];
        if (r->op != FLX_OP_REDUCE || r->attrs.u.reduce.op != FLX_REDUCE_SUM || member_of[j] >= 0) continue;
        for (size_t i = 0; i < n; i++) {
            if (member_of[i] >= 0 || !bgrad_matmul(order[i])) continue;
            int32_t side = bgrad_of(order[i], r);
            if (side == FLX_GEMM_BGRAD_NONE || !bgrad_pair(order, (int32_t)i, (int32_t)j, side, epoch, &g))
                continue;
            member_of[i] = member_of[j] = ng++;
            break;
        }
    }
    *n_groups = ng;
}

void flx_gemm_groups_write(flx_tensor *const *order, size_t n, uint64_t epoch, const uint8_t *pin,
                           const int32_t *reads, const int32_t *reader, const int32_t *member_of,
                           flx_fused_group *out) {
    /* A matmul is never a later member of a chain (those are adds and relus), so a matmul that
     * belongs to a group is its head, and the chain from it is the one found when planning. A
     * matmul paired with a sum may have a chain too (one whose add another chain took): its
     * group is written again below, from the sum. */
    for (size_t i = 0; i < n; i++)
        if (order[i]->op == FLX_OP_MATMUL && member_of[i] >= 0)
            chain_at(order, i, pin, reads, reader, &out[member_of[i]]);
    for (size_t j = 0; j < n; j++) {
        if (order[j]->op != FLX_OP_REDUCE || member_of[j] < 0) continue;
        for (size_t i = 0; i < n; i++)
            if (i != j && member_of[i] == member_of[j]) {
                bgrad_pair(order, (int32_t)i, (int32_t)j, bgrad_of(order[i], order[j]), epoch,
                           &out[member_of[j]]);
                break;
            }
    }
}
