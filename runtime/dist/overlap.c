/* overlap.c — gradient all-reduce overlapped with backward: the bookkeeping of collectives split
 * into a START and a WAIT node, and flx_comm_backward, which schedules each bucket's START right
 * after the backward steps that make its gradients and every WAIT after all of backward. */
#include <stdlib.h>
#include <string.h>

#include "dist.h"

flx_status flx_comm_begin(flx_comm *c, const flx_coll_args *a, const void *key) {
    if (c->n_inflight == c->cap_inflight) {
        int32_t cap = c->cap_inflight ? 2 * c->cap_inflight : 16;
        flx_comm_inflight *p = (flx_comm_inflight *)realloc(c->inflight, (size_t)cap * sizeof *p);
        if (!p) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", flx_coll_name(a->kind));
        c->inflight = p;
        c->cap_inflight = cap;
    }
    /* Kernels queued since the previous start, beyond this start's own count: backward work
     * that ran while the previous bucket was in flight (packing a bucket of one gradient is a
     * reshape, which queues nothing). */
    uint64_t now = c->ctx->stats.kernels;
    if (c->n_inflight > 0 && now - c->inflight[c->n_inflight - 1].kernels_at_start > 1) c->stats.started_early++;
    void *op = NULL;
    flx_status s = c->impl->start(c, a, &op);
    if (s != FLX_OK) return s;
    c->inflight[c->n_inflight++] = (flx_comm_inflight){.key = key, .op = op, .kernels_at_start = now};
    c->stats.overlapped++;
    return FLX_OK;
}

flx_status flx_comm_finish(flx_comm *c, const void *key, void *recv) {
    for (int32_t i = 0; i < c->n_inflight; i++) {
        if (c->inflight[i].key != key) continue;
        void *op = c->inflight[i].op;
        memmove(c->inflight + i, c->inflight + i + 1, (size_t)(c->n_inflight - i - 1) * sizeof *c->inflight);
        c->n_inflight--;
        return c->impl->wait(c, op, recv);
    }
    return flx_set_error(FLX_ERR_STATE, "flx_comm_backward: an overlapped all-reduce was waited for "
                         "without having started in the same evaluation (internal error)");
}

/* After a failed evaluation: the collectives this rank started still complete (results
 * discarded), so the ranks stay in step. */
static void drain(flx_comm *c) {
    while (c->n_inflight > 0 && !c->failed) {
        void *op = c->inflight[0].op;
        memmove(c->inflight, c->inflight + 1, (size_t)(c->n_inflight - 1) * sizeof *c->inflight);
        c->n_inflight--;
        c->impl->wait(c, op, NULL);
    }
}

static flx_status check_loss(flx_comm *comm, flx_tensor *loss) {
    static const char *name = "flx_comm_backward";
    if (!loss) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: loss is NULL", name);
    if (!flx_check_handle(name, loss)) return flx_last_status();
    if (loss->ctx != comm->ctx)
        return flx_set_error(FLX_ERR_DEVICE, "%s: loss %s belongs to another context than the communicator",
                             name, flx_describe(loss));
    if (loss->numel != 1)
        return flx_set_error(FLX_ERR_SHAPE, "%s: loss must have one element, got %s", name, flx_describe(loss));
    if (comm->failed)
        return flx_set_error(FLX_ERR_STATE, "%s: the communicator failed earlier (%s); destroy it and "
                             "create a new one on every rank", name, comm->failure);
    return FLX_OK;
}

flx_status flx_comm_backward(flx_comm *comm, flx_tensor *loss, int32_t n, flx_tensor *const *params,
                             size_t bucket_bytes) {
    static const char *name = "flx_comm_backward";
    if (!flx_comm_check_params(name, comm, n, params)) return flx_last_status();
    flx_status s = check_loss(comm, loss);
    if (s != FLX_OK) return s;
    if (bucket_bytes == 0) bucket_bytes = (size_t)25 << 20;
    if (n == 0) return FLX_OK;
    /* gradients in reverse parameter order, the order backward makes them */
    flx_tensor **rev = (flx_tensor **)calloc((size_t)n, sizeof *rev);
    flx_tensor **g = (flx_tensor **)calloc((size_t)n, sizeof *g);
    flx_tensor **roots = (flx_tensor **)calloc(2 * (size_t)n + 1, sizeof *roots);
    if (!rev || !g || !roots) {
        free(rev);
        free(g);
        free(roots);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", name);
    }
    for (int32_t k = 0; k < n; k++) rev[k] = params[n - 1 - k];
    flx_range_push(comm->ctx, name);
    flx_no_grad_begin();
    s = flx_scope_begin();
    if (s == FLX_OK) {
        s = flx_grad_of(1, &loss, NULL, n, rev, false, g);
        for (int32_t k = 0; k < n && s == FLX_OK; k++) {
            if (rev[k]->grad) g[k] = flx_add(rev[k]->grad, g[k]);
            if (!g[k]) s = flx_last_status();
        }
        int32_t n_starts = 0;
        flx_tensor **avg = roots + n; /* the starts go first, then the means, then the loss */
        if (s == FLX_OK) s = flx_comm_bucket_means(comm, n, g, bucket_bytes, avg, roots, &n_starts);
        if (s == FLX_OK) {
            /* Depth-first from each START in turn: every bucket's all-reduce is issued right
             * after the steps its gradients need and before the rest of backward. */
            memmove(roots + n_starts, avg, (size_t)n * sizeof *roots);
            roots[n_starts + n] = loss;
            s = flx_eval_nodes(n_starts + n + 1, roots);
            avg = roots + n_starts;
        }
        if (s != FLX_OK) drain(comm);
        for (int32_t k = 0; s == FLX_OK && k < n; k++) {
            flx_freeze(avg[k]); /* the gradient keeps its value, not the graph that made it */
            flx_release(rev[k]->grad);
            rev[k]->grad = flx_retain(avg[k]);
        }
        flx_scope_end(0, NULL);
    }
    flx_no_grad_end();
    flx_range_pop(comm->ctx);
    free(rev);
    free(g);
    free(roots);
    return s;
}
