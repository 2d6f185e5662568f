/* plan_optim.c — optimisers stepped inside a plan's replay (flx_plan_options.optims): their
 * argument checks and, at compile, the parameters they update (private buffers, held and pinned)
 * with each one's gradient d loss / d parameter built as graph (loss = output 0). The update
 * itself is queued by flx_plan_queue_body (plan.c) through flx_optim_queue_update. */
#include <stdlib.h>

#include "plan_internal.h"

static bool enter_requires_grad(const flx_tensor *t) { return t->requires_grad; }

/* Marks (with a new epoch, returned in *ep) every tensor that the loss depends on through tensors
 * that require grad: the parameters a plan updates. */
static flx_status mark_loss_reach(flx_tensor *loss, uint64_t *ep) {
    *ep = flx_next_epoch();
    flx_tensor **order = NULL;
    size_t n_order = 0;
    flx_status s = flx_graph_postorder(1, &loss, *ep, enter_requires_grad, &order, &n_order);
    free(order);
    return s;
}

/* Argument checks of options.optims, before anything is allocated; the loss is outputs[0]. */
bool flx_plan_check_optims(const char *fn, flx_ctx *ctx, flx_tensor *loss, int32_t n_in,
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
    uint64_t ep;
    if (mark_loss_reach(loss, &ep) != FLX_OK) return false;
    for (int32_t k = 0; k < o->n_optim; k++) {
        flx_tensor *const *prm;
        int32_t np = flx_optim_params(o->optims[k], &prm), reached = 0;
        for (int32_t i = 0; i < np; i++) reached += prm[i]->mark == ep;
        if (reached == 0) {
            flx_set_error(FLX_ERR_STATE,
                          "%s: output 0 (the loss) depends on none of the %d parameters of "
                          "optimiser %d (through tensors that require grad)",
                          fn, (int)np, (int)k);
            return false;
        }
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
flx_status flx_plan_setup_optims(flx_plan *p, const flx_plan_options *o, flx_tensor *loss) {
    static const char *const fn = "flx_plan_compile";
    int32_t cap = 0;
    flx_tensor *const *prm;
    for (int32_t k = 0; k < o->n_optim; k++) cap += flx_optim_params(o->optims[k], &prm);
    p->optim = (plan_optim *)calloc((size_t)o->n_optim, sizeof *p->optim);
    p->param = (plan_param *)calloc((size_t)cap, sizeof *p->param);
    if (!p->optim || !p->param)
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    p->n_optim = o->n_optim;
    /* The parameters updated are those the loss reaches (a .grad is not needed: the plan builds
     * the gradients itself); others are skipped, as flx_optim_step skips those without a .grad. */
    uint64_t ep;
    flx_status rs = mark_loss_reach(loss, &ep);
    if (rs != FLX_OK) return rs;
    for (int32_t k = 0; k < o->n_optim; k++) {
        plan_optim *po = &p->optim[k];
        po->opt = o->optims[k];
        flx_optim_retain(po->opt);
        flx_status ms = flx_optim_sync_masters(po->opt);
        if (ms != FLX_OK) return ms;
        int32_t np = flx_optim_params(po->opt, &prm);
        po->idx = (int32_t *)malloc((size_t)np * sizeof *po->idx);
        po->pk = (int32_t *)malloc((size_t)np * sizeof *po->pk);
        po->grad_ptr = (void **)calloc((size_t)np, sizeof *po->grad_ptr);
        if (!po->idx || !po->pk || !po->grad_ptr)
            return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        for (int32_t i = 0; i < np; i++) {
            flx_tensor *t = prm[i];
            if (t->mark != ep) continue;
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


