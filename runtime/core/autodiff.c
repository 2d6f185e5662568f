/* autodiff.c — reverse mode built as more graph: flx_grad_of walks the recorded graph backwards
 * and calls each op's VJP rule, which records new nodes with public ops. Nothing is computed
 * here; flx_backward then evaluates every gradient (and the loss) in one plan, so on a CUDA
 * context the backward pass is device work only. Also no-grad mode, detach and gradcheck. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- grad mode -------------------------------------------------------------------------- */
static _Thread_local int tl_no_grad;

int flx_no_grad_depth(void) { return tl_no_grad; }
void flx_no_grad_begin(void) { tl_no_grad++; }
void flx_no_grad_end(void) {
    if (tl_no_grad > 0) tl_no_grad--;
}
bool flx_grad_enabled(void) { return tl_no_grad == 0; }

/* ---- detach: an alias with no gradient ---------------------------------------------------- */
static flx_status jvp_zero(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    (void)node;
    (void)tin;
    *tout = NULL;
    return FLX_OK;
}

void flx_ops_register_autodiff(flx_op_def *t) {
    t[FLX_OP_DETACH] = (flx_op_def){"detach", NULL, NULL, jvp_zero, FLX_OPF_ALIAS | FLX_OPF_NONDIFF};
}

flx_tensor *flx_detach(flx_tensor *x) {
    if (!flx_check_inputs("flx_detach", 1, &x)) return NULL;
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_DETACH, x->dtype, x->ndim, x->shape, 1, &x, NULL));
}

/* ---- leaves ------------------------------------------------------------------------------- */
flx_status flx_set_requires_grad(flx_tensor *t, bool requires_grad) {
    if (!t)
        return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT,
                                      "flx_set_requires_grad: tensor is NULL");
    if (!flx_check_handle("flx_set_requires_grad", t)) return flx_last_status();
    if (!requires_grad) {
        t->requires_grad = false;
        t->is_leaf = false;
        flx_release(t->grad);
        t->grad = NULL;
        return FLX_OK;
    }
    if (!flx_dtype_is_float(t->dtype))
        return flx_set_error(FLX_ERR_DTYPE,
                             "flx_set_requires_grad: only float tensors can require grad, got %s",
                             flx_describe(t));
    if (t->op != FLX_OP_CONST) {
        flx_status s = flx_eval_nodes(1, &t);
        if (s != FLX_OK) return s;
        flx_freeze(t);
    }
    t->keep = true;
    t->is_leaf = true;
    t->requires_grad = true;
    return FLX_OK;
}

bool flx_requires_grad(const flx_tensor *t) { return t && t->requires_grad; }

flx_tensor *flx_grad(flx_tensor *t) {
    if (!t) {
        flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_grad: tensor is NULL");
        return NULL;
    }
    if (!flx_check_handle("flx_grad", t)) return NULL;
    return t->grad ? flx_adopt(flx_retain(t->grad)) : NULL;
}

flx_status flx_zero_grad(flx_tensor *t) {
    if (!t) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_zero_grad: tensor is NULL");
    if (!flx_check_handle("flx_zero_grad", t)) return flx_last_status();
    flx_release(t->grad);
    t->grad = NULL;
    return FLX_OK;
}

/* ---- shared helper for broadcasting rules ------------------------------------------------- */
flx_status flx_rule_status(const flx_tensor *r) {
    if (r) return FLX_OK;
    flx_status s = flx_last_status();
    return s != FLX_OK ? s : flx_set_error(FLX_ERR_STATE, "a derivative rule produced no result");
}

flx_status flx_jvp_linear_attrs(flx_tensor *node, flx_tensor *const *tin, const flx_attrs *attrs,
                                flx_tensor **tout) {
    *tout = NULL;
    bool any = false;
    for (int32_t i = 0; i < node->n_in; i++) any = any || tin[i];
    if (!any) return FLX_OK;
    enum { SMALL = 8 };
    flx_tensor *local[SMALL];
    flx_tensor **in = node->n_in <= SMALL ? local : (flx_tensor **)malloc((size_t)node->n_in * sizeof *in);
    if (!in) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s rule: out of host memory",
                                  flx_op_get(node->op)->name);
    flx_status s = FLX_OK;
    for (int32_t i = 0; i < node->n_in && s == FLX_OK; i++) {
        flx_tensor *x = node->in[i];
        if (!flx_dtype_is_float(x->dtype)) in[i] = x; /* indices: no tangent */
        else if (tin[i]) in[i] = tin[i];
        else if (!(in[i] = flx_zeros(x->ctx, x->dtype, x->ndim, x->shape))) s = flx_last_status();
    }
    if (s == FLX_OK) {
        *tout = flx_adopt(flx_node_new(node->ctx, node->op, node->dtype, node->ndim, node->shape,
                                       node->n_in, in, attrs ? attrs : &node->attrs));
        s = flx_rule_status(*tout);
    }
    if (in != local) free(in);
    return s;
}

flx_status flx_jvp_zero(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    (void)node;
    (void)tin;
    *tout = NULL;
    return FLX_OK;
}

flx_status flx_jvp_linear(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    return flx_jvp_linear_attrs(node, tin, NULL, tout);
}

flx_tensor *flx_sum_to_shape(flx_tensor *g, int32_t ndim, const int64_t *shape) {
    if (!g) return NULL;
    if (g->ndim == ndim && memcmp(g->shape, shape, sizeof(int64_t) * (size_t)ndim) == 0)
        return g;
    /* Sum the leading axes g has in excess, and the axes where shape has size 1. */
    int32_t axes[FLX_MAX_DIMS], n = 0, lead = g->ndim - ndim;
    for (int32_t i = 0; i < g->ndim; i++) {
        if (i < lead || (shape[i - lead] == 1 && g->shape[i] != 1)) axes[n++] = i;
    }
    flx_tensor *s = n ? flx_sum(g, n, axes, true) : g;
    return flx_reshape(s, ndim, shape);
}

/* ---- reverse mode --------------------------------------------------------------------------- */
typedef struct walk {
    flx_tensor **order; /* post-order (inputs before consumers) */
    size_t n, cap;
} walk;

static bool walk_push(walk *w, flx_tensor *t) {
    if (w->n == w->cap) {
        size_t nc = w->cap ? 2 * w->cap : 64;
        flx_tensor **no = (flx_tensor **)realloc(w->order, nc * sizeof *no);
        if (!no) return false;
        w->order = no;
        w->cap = nc;
    }
    w->order[w->n++] = t;
    return true;
}

static bool enter_requires_grad(const flx_tensor *t) { return t->requires_grad; }
static bool enter_all(const flx_tensor *t) {
    (void)t;
    return true;
}

/* Post-order over nodes reachable from roots (only requires_grad ones unless all). */
static flx_status walk_any(int32_t n_roots, flx_tensor *const *roots, uint64_t epoch, walk *w,
                           bool all) {
    flx_status s = flx_graph_postorder(n_roots, roots, epoch, all ? enter_all : enter_requires_grad,
                                       &w->order, &w->n);
    w->cap = w->n;
    return s;
}

static flx_status walk_graph(int32_t n_roots, flx_tensor *const *roots, uint64_t epoch,
                             walk *w) {
    return walk_any(n_roots, roots, epoch, w, false);
}

/* Position of each walked node, in a table local to one driver call. Rules run user code
 * (custom functions) that may evaluate, differentiate or read data, and the evaluator writes
 * its own marks into nodes; so after the walk nothing here relies on fields of the nodes. */
typedef struct walk_index {
    flx_tensor **keys;
    int32_t *vals;
    size_t mask;
} walk_index;

static size_t ptr_hash(const flx_tensor *t) {
    uint64_t x = (uint64_t)(uintptr_t)t;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static flx_status index_build(walk_index *ix, const walk *w) {
    size_t cap = 16;
    while (cap < 2 * w->n + 1) cap *= 2;
    ix->keys = (flx_tensor **)calloc(cap, sizeof *ix->keys);
    ix->vals = (int32_t *)malloc(cap * sizeof *ix->vals);
    ix->mask = cap - 1;
    if (!ix->keys || !ix->vals) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "autodiff: out of host memory");
    for (size_t i = 0; i < w->n; i++) {
        size_t h = ptr_hash(w->order[i]) & ix->mask;
        while (ix->keys[h]) h = (h + 1) & ix->mask;
        ix->keys[h] = w->order[i];
        ix->vals[h] = (int32_t)i;
    }
    return FLX_OK;
}

/* Index of t in the walk, or -1. */
static int32_t index_of(const walk_index *ix, const flx_tensor *t) {
    for (size_t h = ptr_hash(t) & ix->mask; ix->keys[h]; h = (h + 1) & ix->mask)
        if (ix->keys[h] == t) return ix->vals[h];
    return -1;
}

static void index_free(walk_index *ix) {
    free(ix->keys);
    free(ix->vals);
}

/* One driver's view of the graph below its roots: the walk, its index, and per walked node (by
 * position in the walk) a tensor and a flag whose meaning the driver gives them. */
typedef struct pass {
    walk w;
    walk_index ix;
    flx_tensor **val;
    bool *flag;
} pass;

static void pass_end(pass *p) {
    free(p->val);
    free(p->flag);
    index_free(&p->ix);
    free(p->w.order);
}

/* Walks from roots (every node if all, else those requiring grad) and allocates the per-node
 * arrays, zeroed; who names the caller in an out-of-memory message. On success the caller ends
 * the pass with pass_end; on failure nothing is left to release. */
static flx_status pass_begin(pass *p, int32_t n_roots, flx_tensor *const *roots, bool all,
                             const char *who) {
    memset(p, 0, sizeof *p);
    flx_status s = walk_any(n_roots, roots, flx_next_epoch(), &p->w, all);
    if (s == FLX_OK) s = index_build(&p->ix, &p->w);
    if (s == FLX_OK) {
        size_t n = p->w.n ? p->w.n : 1;
        p->val = (flx_tensor **)calloc(n, sizeof *p->val);
        p->flag = (bool *)calloc(n, sizeof *p->flag);
        if (!p->val || !p->flag) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", who);
    }
    if (s != FLX_OK) pass_end(p);
    return s;
}

/* Ends the pass, first (if s is FLX_OK) setting out[j] to its value at ts[j], or zeros shaped
 * like ts[j] where it has none (not reached). Returns s or the first failure. */
static flx_status pass_collect(pass *p, flx_status s, int32_t n, flx_tensor *const *ts,
                               flx_tensor **out) {
    for (int32_t j = 0; j < n && s == FLX_OK; j++) {
        flx_tensor *x = ts[j];
        int32_t k = index_of(&p->ix, x);
        flx_tensor *v = k >= 0 ? p->val[k] : NULL;
        if (!v) v = flx_zeros(x->ctx, x->dtype, x->ndim, x->shape);
        if (!v) s = flx_last_status();
        out[j] = v;
    }
    pass_end(p);
    return s;
}

/* Core of flx_grad_of: must be called inside a scope, which owns everything it makes.
 * grads_out[j] are borrowed from that scope. */
static flx_status grad_core(int32_t n_out, flx_tensor *const *outputs,
                            flx_tensor *const *cotangents, int32_t n_in,
                            flx_tensor *const *inputs, flx_tensor **grads_out) {
    /* Cotangent of each visited node and whether an input is reachable from it (rules run only
     * where they matter). */
    pass p;
    flx_status s = pass_begin(&p, n_out, outputs, false, "autodiff");
    if (s != FLX_OK) return s;
    flx_tensor **cot = p.val;
    bool *reach = p.flag;
    for (int32_t j = 0; j < n_in; j++) {
        int32_t k = index_of(&p.ix, inputs[j]);
        if (k >= 0) reach[k] = true;
    }
    for (size_t i = 0; i < p.w.n; i++) {
        flx_tensor *t = p.w.order[i];
        for (int32_t k = 0; k < t->n_in && !reach[i]; k++) {
            int32_t pk = index_of(&p.ix, t->in[k]);
            if (pk >= 0 && reach[pk]) reach[i] = true;
        }
    }
    for (int32_t o = 0; o < n_out && s == FLX_OK; o++) {
        flx_tensor *y = outputs[o];
        int32_t k = index_of(&p.ix, y);
        if (k < 0 || !reach[k]) continue;
        flx_tensor *c = cotangents ? cotangents[o] : NULL;
        if (!c) {
            if (y->numel != 1) {
                s = flx_set_error(FLX_ERR_SHAPE,
                                  "flx_grad_of: output %d %s has more than one element; give a "
                                  "cotangent",
                                  (int)o, flx_describe(y));
                break;
            }
            c = flx_ones(y->ctx, y->dtype, y->ndim, y->shape);
        }
        cot[k] = cot[k] ? flx_add(cot[k], c) : c;
        if (!cot[k]) s = flx_last_status();
    }
    for (size_t i = p.w.n; i-- > 0 && s == FLX_OK;) {
        flx_tensor *t = p.w.order[i];
        flx_tensor *g = cot[i];
        if (!g || t->n_in == 0 || !reach[i]) continue;
        const flx_op_def *def = flx_op_get(t->op);
        if (!def->vjp) {
            s = flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE, "flx_grad_of: op %s has no VJP rule",
                              def->name);
            break;
        }
        flx_tensor *gin_local[8];
        flx_tensor **gin = t->n_in <= 8 ? gin_local : (flx_tensor **)calloc((size_t)t->n_in, sizeof *gin);
        if (!gin) {
            s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "autodiff: out of host memory");
            break;
        }
        for (int32_t k = 0; k < t->n_in; k++) gin[k] = NULL;
        s = def->vjp(t, g, gin);
        for (int32_t k = 0; k < t->n_in && s == FLX_OK; k++) {
            int32_t pk = gin[k] ? index_of(&p.ix, t->in[k]) : -1;
            if (pk < 0 || !reach[pk]) continue;
            cot[pk] = cot[pk] ? flx_add(cot[pk], gin[k]) : gin[k];
            if (!cot[pk]) s = flx_last_status();
        }
        if (gin != gin_local) free(gin);
    }
    return pass_collect(&p, s, n_in, inputs, grads_out);
}

static flx_status check_grad_args(const char *fn, int32_t n_out, flx_tensor *const *outputs,
                                  flx_tensor *const *cotangents, int32_t n_in,
                                  flx_tensor *const *inputs) {
    if (n_out <= 0 || !outputs)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one output", fn);
    if (n_in <= 0 || !inputs)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one input", fn);
    for (int32_t i = 0; i < n_out; i++) {
        if (!outputs[i])
            return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: output %d is NULL", fn, (int)i);
        if (!flx_check_handle(fn, outputs[i])) return flx_last_status();
        if (cotangents && cotangents[i]) {
            flx_tensor *y = outputs[i], *c = cotangents[i];
            if (c->dtype != y->dtype && c->ctx == y->ctx)
                return flx_set_error(FLX_ERR_DTYPE,
                                     "%s: cotangent %d %s differs in dtype from output %s", fn,
                                     (int)i, flx_describe(c), flx_describe(y));
            if (c->ctx != y->ctx || c->dtype != y->dtype || c->ndim != y->ndim ||
                memcmp(c->shape, y->shape, sizeof(int64_t) * (size_t)y->ndim) != 0)
                return flx_set_error(FLX_ERR_SHAPE,
                                     "%s: cotangent %d %s does not match output %s", fn, (int)i,
                                     flx_describe(c), flx_describe(y));
        }
    }
    for (int32_t j = 0; j < n_in; j++) {
        if (!inputs[j])
            return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: input %d is NULL", fn, (int)j);
        if (!flx_check_handle(fn, inputs[j])) return flx_last_status();
        if (!inputs[j]->requires_grad)
            return flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE,
                                 "%s: input %d %s does not require grad (flx_set_requires_grad)",
                                 fn, (int)j, flx_describe(inputs[j]));
    }
    return FLX_OK;
}

flx_status flx_grad_of(int32_t n_out, flx_tensor *const *outputs, flx_tensor *const *cotangents,
                       int32_t n_in, flx_tensor *const *inputs, bool create_graph,
                       flx_tensor **grads_out) {
    if (!grads_out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_grad_of: grads_out is NULL");
    for (int32_t j = 0; j < n_in && inputs; j++) grads_out[j] = NULL;
    flx_status s = check_grad_args("flx_grad_of", n_out, outputs, cotangents, n_in, inputs);
    if (s != FLX_OK) return s;
    if (!create_graph) flx_no_grad_begin();
    s = flx_scope_begin();
    if (s == FLX_OK) {
        s = grad_core(n_out, outputs, cotangents, n_in, inputs, grads_out);
        /* Move the results out of the private scope to the caller's scope (or the caller). */
        flx_scope_end(s == FLX_OK ? n_in : 0, grads_out);
    }
    if (!create_graph) flx_no_grad_end();
    if (s != FLX_OK)
        for (int32_t j = 0; j < n_in; j++) grads_out[j] = NULL;
    return s;
}

/* ---- forward mode ------------------------------------------------------------------------- */
static flx_status jvp_core(int32_t n_in, flx_tensor *const *inputs, flx_tensor *const *tangents,
                           int32_t n_out, flx_tensor *const *outputs, flx_tensor **tout) {
    /* Tangent of each visited node and whether it was seeded by an input's tangent. */
    pass p;
    flx_status s = pass_begin(&p, n_out, outputs, true, "flx_jvp");
    if (s != FLX_OK) return s;
    flx_tensor **tan = p.val;
    bool *seeded = p.flag;
    for (int32_t j = 0; j < n_in && s == FLX_OK; j++) {
        int32_t k = index_of(&p.ix, inputs[j]);
        if (k < 0 || !tangents[j]) continue;
        tan[k] = tan[k] ? flx_add(tan[k], tangents[j]) : tangents[j];
        if (!tan[k]) s = flx_last_status();
        seeded[k] = true; /* its own rule is not applied */
    }
    flx_tensor *tin_local[8];
    for (size_t i = 0; i < p.w.n && s == FLX_OK; i++) {
        flx_tensor *t = p.w.order[i];
        if (seeded[i] || t->n_in == 0) continue;
        flx_tensor **tin = t->n_in <= 8 ? tin_local : (flx_tensor **)calloc((size_t)t->n_in, sizeof *tin);
        if (!tin) {
            s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_jvp: out of host memory");
            break;
        }
        bool any = false;
        for (int32_t k = 0; k < t->n_in; k++) {
            int32_t pk = index_of(&p.ix, t->in[k]);
            tin[k] = pk >= 0 ? tan[pk] : NULL;
            any = any || tin[k];
        }
        if (any) {
            const flx_op_def *def = flx_op_get(t->op);
            if (!def->jvp)
                s = flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE, "flx_jvp: op %s has no JVP rule", def->name);
            else
                s = def->jvp(t, tin, &tan[i]);
        }
        if (tin != tin_local) free(tin);
    }
    return pass_collect(&p, s, n_out, outputs, tout);
}

flx_status flx_jvp(int32_t n_in, flx_tensor *const *inputs, flx_tensor *const *tangents,
                   int32_t n_out, flx_tensor *const *outputs, flx_tensor **tangents_out) {
    if (!tangents_out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_jvp: tangents_out is NULL");
    for (int32_t k = 0; k < n_out && outputs; k++) tangents_out[k] = NULL;
    if (n_in <= 0 || !inputs || !tangents)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_jvp: needs at least one input and its tangent list");
    if (n_out <= 0 || !outputs)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_jvp: needs at least one output");
    for (int32_t k = 0; k < n_out; k++)
        if (!outputs[k]) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_jvp: output %d is NULL", (int)k);
        else if (!flx_check_handle("flx_jvp", outputs[k])) return flx_last_status();
    for (int32_t j = 0; j < n_in; j++) {
        flx_tensor *x = inputs[j], *t = tangents[j];
        if (!x) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_jvp: input %d is NULL", (int)j);
        if (!flx_check_handle("flx_jvp", x) || (t && !flx_check_handle("flx_jvp", t)))
            return flx_last_status();
        if (t && t->ctx != x->ctx)
            return flx_set_error(FLX_ERR_DEVICE,
                                 "flx_jvp: tangent %d %s belongs to another context than input %s",
                                 (int)j, flx_describe(t), flx_describe(x));
        if (t && t->dtype != x->dtype)
            return flx_set_error(FLX_ERR_DTYPE,
                                 "flx_jvp: tangent %d %s differs in dtype from input %s", (int)j,
                                 flx_describe(t), flx_describe(x));
        if (t && (t->ndim != x->ndim ||
                  memcmp(t->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim) != 0))
            return flx_set_error(FLX_ERR_SHAPE, "flx_jvp: tangent %d %s does not match input %s",
                                 (int)j, flx_describe(t), flx_describe(x));
    }
    flx_status s = flx_scope_begin();
    if (s != FLX_OK) return s;
    s = jvp_core(n_in, inputs, tangents, n_out, outputs, tangents_out);
    flx_scope_end(s == FLX_OK ? n_out : 0, tangents_out);
    if (s != FLX_OK)
        for (int32_t k = 0; k < n_out; k++) tangents_out[k] = NULL;
    return s;
}

/* Leaves (requires_grad, is_leaf) reachable from loss through requires_grad nodes. */
static flx_status collect_leaves(flx_tensor *loss, walk *leaves) {
    walk w = {0};
    uint64_t epoch = flx_next_epoch();
    flx_status s = walk_graph(1, &loss, epoch, &w);
    for (size_t i = 0; i < w.n && s == FLX_OK; i++)
        if (w.order[i]->is_leaf && !walk_push(leaves, w.order[i]))
            s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_backward: out of host memory");
    free(w.order);
    return s;
}

flx_status flx_backward(flx_tensor *loss) {
    if (!loss) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_backward: loss is NULL");
    if (!flx_check_handle("flx_backward", loss)) return flx_last_status();
    if (loss->numel != 1)
        return flx_set_error(FLX_ERR_SHAPE, "flx_backward: loss must have one element, got %s",
                             flx_describe(loss));
    if (!loss->requires_grad)
        return flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE,
                             "flx_backward: loss %s does not depend on any tensor that requires "
                             "grad",
                             flx_describe(loss));
    walk leaves = {0};
    flx_status s = collect_leaves(loss, &leaves);
    if (s != FLX_OK || leaves.n == 0) {
        free(leaves.order);
        return s;
    }
    int32_t n = (int32_t)leaves.n;
    flx_tensor **g = (flx_tensor **)calloc((size_t)n + 1, sizeof *g);
    if (!g) {
        free(leaves.order);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_backward: out of host memory");
    }
    flx_range_push(loss->ctx, "flx_backward"); /* one profiler range per backward pass */
    flx_no_grad_begin();
    s = flx_scope_begin();
    if (s == FLX_OK) {
        s = grad_core(1, &loss, NULL, n, leaves.order, g);
        for (int32_t j = 0; j < n && s == FLX_OK; j++) {
            flx_tensor *old = leaves.order[j]->grad;
            if (old) g[j] = flx_add(old, g[j]);
            if (!g[j]) s = flx_last_status();
        }
        if (s == FLX_OK) {
            g[n] = loss;
            s = flx_eval_nodes(n + 1, g);
        }
        if (s == FLX_OK) {
            for (int32_t j = 0; j < n; j++) {
                flx_tensor *leaf = leaves.order[j];
                flx_freeze(g[j]); /* the gradient keeps its value, not the graph that made it */
                flx_release(leaf->grad);
                leaf->grad = flx_retain(g[j]);
            }
        }
        flx_scope_end(0, NULL);
    }
    flx_no_grad_end();
    flx_range_pop(loss->ctx);
    free(g);
    free(leaves.order);
    return s;
}

/* ---- gradcheck ---------------------------------------------------------------------------- */
static double dot_host(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* <u, fn(xs)> evaluated on the host. */
static flx_status eval_projection(flx_fn fn, void *user, int32_t n_in, flx_tensor *const *xs,
                                  const double *u, int64_t m, double *out) {
    flx_tensor *y = fn(n_in, xs, user);
    if (!y) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_gradcheck: fn returned NULL");
    if (y->numel != m || y->dtype != FLX_F64)
        return flx_set_error(FLX_ERR_SHAPE, "flx_gradcheck: fn changed its output to %s",
                             flx_describe(y));
    double *yh = (double *)malloc((size_t)(m ? m : 1) * sizeof *yh);
    if (!yh) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_gradcheck: out of host memory");
    flx_status s = flx_to_host(y, yh, (size_t)m * sizeof *yh);
    if (s == FLX_OK) *out = dot_host(u, yh, m);
    free(yh);
    return s;
}

static flx_status gradcheck_body(flx_fn fn, void *user, int32_t n_in, flx_tensor *const *inputs,
                                 double eps, double atol, double rtol, uint64_t seed,
                                 flx_gradcheck_report *rep, double **host) {
    flx_tensor **xs = (flx_tensor **)calloc((size_t)n_in, sizeof *xs);
    flx_tensor **gs = (flx_tensor **)calloc((size_t)n_in, sizeof *gs);
    double *u = NULL, *ga = NULL;
    flx_status s = (xs && gs) ? FLX_OK : flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_gradcheck: out of host memory");
    /* Leaves holding copies of the inputs' values. */
    for (int32_t j = 0; j < n_in && s == FLX_OK; j++) {
        flx_tensor *x = inputs[j];
        host[j] = (double *)malloc((size_t)(x->numel ? x->numel : 1) * sizeof(double));
        if (!host[j]) { s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_gradcheck: out of host memory"); break; }
        s = flx_to_host(x, host[j], (size_t)x->numel * sizeof(double));
        if (s != FLX_OK) break;
        xs[j] = flx_from_host(x->ctx, FLX_F64, x->ndim, x->shape, host[j]);
        if (!xs[j]) { s = flx_last_status(); break; }
        s = flx_set_requires_grad(xs[j], true);
    }
    flx_tensor *y = NULL;
    if (s == FLX_OK) {
        y = fn(n_in, xs, user);
        if (!y) s = flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_gradcheck: fn returned NULL");
        else if (y->dtype != FLX_F64)
            s = flx_set_error(FLX_ERR_DTYPE, "flx_gradcheck: fn must return f64, got %s", flx_describe(y));
    }
    int64_t m = y ? y->numel : 0;
    flx_tensor *ut = NULL;
    if (s == FLX_OK) {
        ut = flx_randn(y->ctx, FLX_F64, y->ndim, y->shape, seed);
        u = (double *)malloc((size_t)(m ? m : 1) * sizeof *u);
        if (!ut || !u) s = flx_last_status() ? flx_last_status() : flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_gradcheck: out of host memory");
        else s = flx_to_host(ut, u, (size_t)m * sizeof *u);
    }
    if (s == FLX_OK && !y->requires_grad) {
        /* fn ignores its inputs: every analytic gradient is zero. */
        for (int32_t j = 0; j < n_in && s == FLX_OK; j++) {
            gs[j] = flx_zeros(xs[j]->ctx, FLX_F64, xs[j]->ndim, xs[j]->shape);
            if (!gs[j]) s = flx_last_status();
        }
    } else if (s == FLX_OK) {
        s = flx_grad_of(1, &y, &ut, n_in, xs, false, gs);
    }
    if (s == FLX_OK) s = flx_eval(n_in, gs);
    flx_no_grad_begin();
    for (int32_t j = 0; j < n_in && s == FLX_OK; j++) {
        int64_t nj = xs[j]->numel;
        ga = (double *)realloc(ga, (size_t)(nj ? nj : 1) * sizeof *ga);
        if (!ga) { s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_gradcheck: out of host memory"); break; }
        s = flx_to_host(gs[j], ga, (size_t)nj * sizeof *ga);
        flx_tensor *orig = xs[j];
        for (int64_t e = 0; e < nj && s == FLX_OK; e++) {
            double v0 = host[j][e], fp = 0, fm = 0;
            s = flx_scope_begin();
            if (s != FLX_OK) break;
            host[j][e] = v0 + eps;
            xs[j] = flx_from_host(orig->ctx, FLX_F64, orig->ndim, orig->shape, host[j]);
            s = xs[j] ? eval_projection(fn, user, n_in, xs, u, m, &fp) : flx_last_status();
            host[j][e] = v0 - eps;
            if (s == FLX_OK) {
                xs[j] = flx_from_host(orig->ctx, FLX_F64, orig->ndim, orig->shape, host[j]);
                s = xs[j] ? eval_projection(fn, user, n_in, xs, u, m, &fm) : flx_last_status();
            }
            host[j][e] = v0;
            xs[j] = orig;
            flx_scope_end(0, NULL);
            if (s != FLX_OK) break;
            double num = (fp - fm) / (2 * eps), ana = ga[e];
            double err = fabs(num - ana);
            double rel = err / fmax(1.0, fmax(fabs(num), fabs(ana)));
            if (err > rep->max_abs_err || isnan(err)) {
                rep->max_abs_err = isnan(err) ? INFINITY : err;
                rep->worst_input = j;
                rep->worst_index = e;
            }
            if (rel > rep->max_rel_err) rep->max_rel_err = rel;
            if (!(err <= atol + rtol * fabs(num)))
                s = flx_set_error(FLX_ERR_NUMERIC,
                                  "flx_gradcheck: input %d entry %lld: numeric %.10g, analytic "
                                  "%.10g (|diff| %.3g > atol %.3g + rtol %.3g * |numeric|)",
                                  (int)j, (long long)e, num, ana, err, atol, rtol);
        }
    }
    flx_no_grad_end();
    free(ga);
    free(u);
    free(xs);
    free(gs);
    return s;
}

flx_status flx_gradcheck(flx_fn fn, void *user, int32_t n_in, flx_tensor *const *inputs,
                         double eps, double atol, double rtol, uint64_t seed,
                         flx_gradcheck_report *report) {
    if (!fn) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_gradcheck: fn is NULL");
    if (n_in <= 0 || !inputs)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_gradcheck: needs at least one input");
    if (!(eps > 0) || !(atol >= 0) || !(rtol >= 0))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                             "flx_gradcheck: eps must be > 0 and tolerances >= 0 (eps %g, atol %g, rtol %g)",
                             eps, atol, rtol);
    if (!flx_check_inputs("flx_gradcheck", n_in, inputs)) return flx_last_status();
    for (int32_t j = 0; j < n_in; j++)
        if (inputs[j]->dtype != FLX_F64)
            return flx_set_error(FLX_ERR_DTYPE, "flx_gradcheck: input %d must be f64, got %s",
                                 (int)j, flx_describe(inputs[j]));
    flx_gradcheck_report local = {0, 0, -1, -1};
    flx_gradcheck_report *rep = report ? report : &local;
    *rep = local;
    double **host = (double **)calloc((size_t)n_in, sizeof *host);
    if (!host) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_gradcheck: out of host memory");
    flx_status s = flx_scope_begin();
    if (s == FLX_OK) {
        s = gradcheck_body(fn, user, n_in, inputs, eps, atol, rtol, seed, rep, host);
        flx_scope_end(0, NULL);
    }
    for (int32_t j = 0; j < n_in; j++) free(host[j]);
    free(host);
    return s;
}
