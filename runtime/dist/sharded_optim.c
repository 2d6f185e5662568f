/* sharded_optim.c — ZeRO stage 1: the optimiser state is split over the ranks. The parameters
 * are packed (in order, padded to a multiple of the world size) into one flat vector; rank r owns
 * the r-th contiguous shard of it and keeps the optimiser state (moments, accumulators) of that
 * shard only. A step is: the packed gradients reduce-scattered (mean over the ranks) so each rank
 * gets the averaged gradient of its shard, one fused optimiser update of the shard, and an
 * all-gather of the updated shards written back into every parameter. The update is elementwise,
 * so the result equals every rank running the unsharded optimiser on averaged gradients. */
#include <stdlib.h>
#include <string.h>

#include "dist.h"

struct flx_sharded_optim {
    flx_comm *comm;
    int32_t n;
    flx_tensor **params;  /* held references */
    flx_tensor *shard;    /* this rank's shard of the packed parameters: a leaf the optimiser updates */
    flx_optim *opt;       /* the optimiser over {shard} */
    int64_t total, shard_len;
};

/* Packed values of the tensors ts (each flattened, in order) and zeros up to padded elements. */
static flx_tensor *pack(flx_ctx *ctx, flx_dtype dt, int32_t n, flx_tensor *const *ts, int64_t total,
                        int64_t padded) {
    flx_tensor **flat =
        (flx_tensor **)flx_host_calloc((size_t)n + 1, sizeof *flat, "flx_sharded_optim");
    if (!flat) return NULL;
    for (int32_t i = 0; i < n; i++) flat[i] = flx_reshape(ts[i], 1, &ts[i]->numel);
    int32_t k = n;
    int64_t pad = padded - total;
    if (pad > 0) flat[k++] = flx_zeros(ctx, dt, 1, &pad);
    flx_tensor *r = k == 1 ? flat[0] : flx_concat(k, flat, 0);
    free(flat);
    return r;
}

flx_sharded_optim *flx_sharded_optim_create(flx_comm *comm, flx_optim_kind kind, int32_t n,
                                            flx_tensor *const *params, const flx_optim_config *cfg) {
    static const char *fn = "flx_sharded_optim_create";
    if (!flx_comm_check_params(fn, comm, n, params)) return NULL;
    if (n < 1) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: needs at least one parameter", fn);
        return NULL;
    }
    /* Mixed precision is not sharded: the packed gradients would be averaged in half precision,
     * and a found-inf flag would have to be agreed by every rank before any of them updates. */
    if (flx_dtype_is_half(params[0]->dtype)) {
        flx_set_error(FLX_ERR_DTYPE, "%s: params[0] is %s; the sharded optimiser takes f32 or f64 "
                      "parameters (for f16/bf16 use flx_comm_average_grads and flx_optim_step)",
                      fn, flx_describe(params[0]));
        return NULL;
    }
    if (cfg && cfg->loss_scaling) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: loss scaling is not supported by the sharded "
                      "optimiser (ranks would skip steps independently)", fn);
        return NULL;
    }
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (params[i]->dtype != params[0]->dtype) {
            flx_set_error(FLX_ERR_DTYPE, "%s: params[%d] is %s; parameters share one float dtype (%s)",
                          fn, (int)i, flx_describe(params[i]), flx_dtype_name(params[0]->dtype));
            return NULL;
        }
        if (params[i]->op != FLX_OP_CONST) {
            flx_set_error(FLX_ERR_STATE, "%s: params[%d] %s is an op result, not a leaf made from data",
                          fn, (int)i, flx_describe(params[i]));
            return NULL;
        }
        total += params[i]->numel;
    }
    flx_sharded_optim *z = (flx_sharded_optim *)calloc(1, sizeof *z);
    flx_tensor **held = (flx_tensor **)calloc((size_t)n, sizeof *held);
    if (!z || !held) {
        free(z);
        free(held);
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return NULL;
    }
    z->comm = comm;
    z->n = n;
    z->params = held;
    z->total = total;
    z->shard_len = (total + comm->size - 1) / comm->size;
    if (flx_scope_begin() != FLX_OK) {
        free(held);
        free(z);
        return NULL;
    }
    flx_tensor *packed = pack(comm->ctx, params[0]->dtype, n, params, total, z->shard_len * comm->size);
    flx_tensor *shard = packed ? flx_slice(packed, 0, comm->rank * z->shard_len,
                                           (comm->rank + 1) * z->shard_len, 1) : NULL;
    flx_status s = shard ? flx_eval(1, &shard) : flx_last_status();
    if (s == FLX_OK) {
        flx_freeze(shard); /* a leaf of its own data: the optimiser's parameter */
        z->shard = flx_retain(shard);
        s = flx_set_requires_grad(z->shard, true);
    }
    flx_scope_end(0, NULL);
    if (s == FLX_OK) {
        z->opt = flx_optim_create(comm->ctx, kind, 1, &z->shard, cfg);
        if (!z->opt) s = flx_last_status();
    }
    if (s != FLX_OK) {
        flx_release(z->shard);
        free(held);
        free(z);
        return NULL;
    }
    for (int32_t i = 0; i < n; i++) held[i] = flx_retain(params[i]);
    return z;
}

flx_status flx_sharded_optim_step(flx_sharded_optim *z) {
    static const char *fn = "flx_sharded_optim_step";
    if (!z) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: optimiser is NULL", fn);
    if (!flx_comm_lookup(z->comm->id))
        return flx_set_error(FLX_ERR_STATE, "%s: its communicator was destroyed", fn);
    flx_status s = flx_scope_begin();
    if (s != FLX_OK) return s;
    flx_ctx *ctx = z->comm->ctx;
    flx_dtype dt = z->shard->dtype;
    int32_t n = z->n;
    flx_tensor **g = (flx_tensor **)calloc((size_t)n, sizeof *g);
    flx_tensor **v = (flx_tensor **)calloc((size_t)n, sizeof *v);
    if (!g || !v) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    /* a parameter without a gradient contributes zeros (every rank must take part) */
    for (int32_t i = 0; s == FLX_OK && i < n; i++) {
        flx_tensor *p = z->params[i];
        g[i] = p->grad ? p->grad : flx_zeros(ctx, dt, p->ndim, p->shape);
        if (!g[i]) s = flx_last_status();
    }
    flx_tensor *gs = NULL;
    if (s == FLX_OK) {
        flx_tensor *packed = pack(ctx, dt, n, g, z->total, z->shard_len * z->comm->size);
        gs = packed ? flx_comm_reduce_scatter(z->comm, packed, FLX_COMM_AVG) : NULL;
        if (!gs) s = flx_last_status();
    }
    if (s == FLX_OK) {
        flx_tensor *old = z->shard->grad;
        z->shard->grad = flx_retain(gs);
        flx_release(old);
        s = flx_optim_step(z->opt);
    }
    flx_tensor *full = s == FLX_OK ? flx_comm_all_gather(z->comm, z->shard) : NULL;
    if (s == FLX_OK && !full) s = flx_last_status();
    int64_t off = 0;
    for (int32_t i = 0; s == FLX_OK && i < n; i++) {
        flx_tensor *p = z->params[i];
        flx_tensor *sl = flx_slice(full, 0, off, off + p->numel, 1);
        v[i] = sl ? flx_reshape(sl, p->ndim, p->shape) : NULL;
        if (!v[i]) s = flx_last_status();
        off += p->numel;
    }
    if (s == FLX_OK) s = flx_eval(n, v);
    for (int32_t i = 0; s == FLX_OK && i < n; i++) s = flx_assign(z->params[i], v[i]);
    free(g);
    free(v);
    flx_scope_end(0, NULL);
    return s;
}

flx_status flx_sharded_optim_zero_grad(flx_sharded_optim *z) {
    if (!z) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_sharded_optim_zero_grad: optimiser is NULL");
    for (int32_t i = 0; i < z->n; i++) flx_zero_grad(z->params[i]);
    return flx_zero_grad(z->shard);
}

flx_optim *flx_sharded_optim_shard(flx_sharded_optim *z) { return z ? z->opt : NULL; }

void flx_sharded_optim_destroy(flx_sharded_optim *z) {
    if (!z) return;
    flx_optim_destroy(z->opt);
    flx_release(z->shard);
    for (int32_t i = 0; i < z->n; i++) flx_release(z->params[i]);
    free(z->params);
    free(z);
}
