/* collective.c — collectives as graph ops (one row, COLLECTIVE, attrs.coll) with their VJP and
 * JVP rules, and the data-parallel helpers built from them. A node keeps its communicator's id,
 * not its pointer: the registry (comm.c) turns a destroyed communicator into FLX_ERR_STATE. */
#include <stdlib.h>
#include <string.h>

#include "dist.h"

const char *flx_coll_name(int32_t kind) {
    switch (kind) {
    case FLX_COLL_ALL_REDUCE: return "flx_comm_all_reduce";
    case FLX_COLL_BROADCAST: return "flx_comm_broadcast";
    case FLX_COLL_ALL_GATHER: return "flx_comm_all_gather";
    default: return "flx_comm_reduce_scatter";
    }
}

static flx_status exec_collective(const flx_tensor *t, void *out, const void *const *in) {
    const char *name = flx_coll_name(t->attrs.u.coll.kind);
    flx_comm *c = flx_comm_lookup(t->attrs.u.coll.comm_id);
    if (!c)
        return flx_set_error(FLX_ERR_STATE, "%s: its communicator was destroyed before the "
                             "collective ran", name);
    if (c->failed)
        return flx_set_error(FLX_ERR_STATE, "%s: the communicator failed earlier (%s); destroy it and "
                             "create a new one on every rank", name, c->failure);
    t->ctx->stats.kernels++; /* a transport call, not a kernel family: counted here */
    if (t->attrs.u.coll.phase == FLX_COLL_WAIT) return flx_comm_finish(c, t->in[0], out);
    const flx_tensor *x = t->in[0];
    flx_coll_args a = {
        .kind = (flx_coll_kind)t->attrs.u.coll.kind,
        .op = (flx_comm_op)t->attrs.u.coll.op,
        .root = t->attrs.u.coll.root,
        .dtype = t->dtype,
        .count = t->attrs.u.coll.kind == FLX_COLL_REDUCE_SCATTER ? x->numel / c->size : x->numel,
        .seq = ++c->seq,
        .send = in[0],
        .recv = out,
    };
    c->stats.collectives++;
    c->stats.bytes += (uint64_t)x->numel * flx_dtype_size(x->dtype);
    if (t->attrs.u.coll.phase == FLX_COLL_START) return flx_comm_begin(c, &a, t);
    return c->impl->run(c, &a);
}

/* Builds one collective node after the checks every collective shares. */
static flx_tensor *collective(flx_comm *comm, flx_tensor *x, flx_coll_kind kind, flx_comm_op op,
                              int32_t root) {
    const char *name = flx_coll_name(kind);
    if (!comm) {
        flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: comm is NULL", name);
        return NULL;
    }
    if (!flx_check_inputs(name, 1, &x)) return NULL;
    if (x->ctx != comm->ctx) {
        flx_set_error(FLX_ERR_DEVICE, "%s: %s belongs to another context than the communicator",
                      name, flx_describe(x));
        return NULL;
    }
    if ((int)op < FLX_COMM_SUM || (int)op > FLX_COMM_MIN) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: unknown reduce op %d", name, (int)op);
        return NULL;
    }
    /* MPI has no half-precision types: f16/bf16 values travel as f32 (flx_cast) */
    bool is_int = x->dtype == FLX_I32 || x->dtype == FLX_I64;
    if (x->dtype != FLX_F32 && x->dtype != FLX_F64 && !(is_int && op != FLX_COMM_AVG)) {
        flx_set_error(FLX_ERR_DTYPE, "%s: %s: collectives take f32, f64 (and i32, i64 without AVG)",
                      name, flx_describe(x));
        return NULL;
    }
    if (kind == FLX_COLL_REDUCE_SCATTER && op != FLX_COMM_SUM && op != FLX_COMM_AVG) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: op must be FLX_COMM_SUM or FLX_COMM_AVG", name);
        return NULL;
    }
    if (kind == FLX_COLL_BROADCAST && (root < 0 || root >= comm->size)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: root %d is outside [0, %d)", name, (int)root,
                      (int)comm->size);
        return NULL;
    }
    int64_t shape[FLX_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    if (kind == FLX_COLL_ALL_GATHER || kind == FLX_COLL_REDUCE_SCATTER) {
        if (x->ndim < 1) {
            flx_set_error(FLX_ERR_SHAPE, "%s: %s: needs at least one axis (ranks meet along axis 0)",
                          name, flx_describe(x));
            return NULL;
        }
        if (kind == FLX_COLL_ALL_GATHER) {
            shape[0] *= comm->size;
        } else if (x->shape[0] % comm->size != 0) {
            flx_set_error(FLX_ERR_SHAPE, "%s: axis 0 of %s does not split into %d equal parts", name,
                          flx_describe(x), (int)comm->size);
            return NULL;
        } else {
            shape[0] /= comm->size;
        }
    }
    flx_attrs at = {.u.coll = {.comm_id = comm->id, .kind = kind, .op = op, .root = root}};
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_COLLECTIVE, x->dtype, x->ndim, shape, 1, &x, &at));
}

flx_tensor *flx_comm_all_reduce(flx_comm *comm, flx_tensor *x, flx_comm_op op) {
    return collective(comm, x, FLX_COLL_ALL_REDUCE, op, 0);
}

flx_tensor *flx_comm_broadcast(flx_comm *comm, flx_tensor *x, int32_t root) {
    return collective(comm, x, FLX_COLL_BROADCAST, FLX_COMM_SUM, root);
}

flx_tensor *flx_comm_all_gather(flx_comm *comm, flx_tensor *x) {
    return collective(comm, x, FLX_COLL_ALL_GATHER, FLX_COMM_SUM, 0);
}

flx_tensor *flx_comm_reduce_scatter(flx_comm *comm, flx_tensor *x, flx_comm_op op) {
    return collective(comm, x, FLX_COLL_REDUCE_SCATTER, op, 0);
}

/* The linear map of a collective node, applied to v (a cotangent when transpose is set, else a
 * tangent). Sum all-reduce is self-adjoint; all-gather and reduce-scatter are each other's
 * adjoint; broadcast's adjoint sums onto the root. Every rank applies the same collectives, so
 * the rules keep the ranks in step. */
static flx_tensor *apply_linear(flx_tensor *node, flx_tensor *v, bool transpose) {
    flx_comm *c = flx_comm_lookup(node->attrs.u.coll.comm_id);
    int32_t kind = node->attrs.u.coll.kind, op = node->attrs.u.coll.op;
    if (!c) {
        flx_set_error(FLX_ERR_STATE, "%s: derivative after its communicator was destroyed", flx_coll_name(kind));
        return NULL;
    }
    if (op == FLX_COMM_MAX || op == FLX_COMM_MIN) {
        flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE, "%s: max/min reductions have no derivative rule",
                      flx_coll_name(kind));
        return NULL;
    }
    if (!transpose) return collective(c, v, (flx_coll_kind)kind, (flx_comm_op)op, node->attrs.u.coll.root);
    switch (kind) {
    case FLX_COLL_ALL_REDUCE: return collective(c, v, FLX_COLL_ALL_REDUCE, (flx_comm_op)op, 0);
    case FLX_COLL_ALL_GATHER: return collective(c, v, FLX_COLL_REDUCE_SCATTER, FLX_COMM_SUM, 0);
    case FLX_COLL_REDUCE_SCATTER: {
        flx_tensor *g = collective(c, v, FLX_COLL_ALL_GATHER, FLX_COMM_SUM, 0);
        return op == FLX_COMM_AVG ? flx_mul_scalar(g, 1.0 / c->size) : g;
    }
    default: { /* broadcast: the summed cotangent on the root, zero elsewhere */
        flx_tensor *s = collective(c, v, FLX_COLL_ALL_REDUCE, FLX_COMM_SUM, 0);
        if (c->rank == node->attrs.u.coll.root) return s;
        flx_tensor *off = flx_full(v->ctx, FLX_BOOL, 0, NULL, 0.0);
        return flx_where(off, s, flx_zeros(v->ctx, v->dtype, 0, NULL));
    }
    }
}

/* The halves of a split collective exist only inside flx_comm_backward, built without history. */
static bool whole(const flx_tensor *y) {
    if (y->attrs.u.coll.phase == FLX_COLL_WHOLE) return true;
    flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE, "%s: the halves of an overlapped collective have no "
                  "derivative rule", flx_coll_name(y->attrs.u.coll.kind));
    return false;
}

static flx_status vjp_collective(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    if (!whole(y)) return flx_last_status();
    gin[0] = apply_linear(y, g, true);
    return gin[0] ? FLX_OK : flx_last_status();
}

static flx_status jvp_collective(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    if (!whole(y)) return flx_last_status();
    flx_tensor *x = y->in[0];
    /* a rank without a tangent still takes part, with zeros */
    flx_tensor *t = tin[0] ? tin[0] : flx_zeros(x->ctx, x->dtype, x->ndim, x->shape);
    *tout = t ? apply_linear(y, t, false) : NULL;
    return *tout ? FLX_OK : flx_last_status();
}

void flx_ops_register_collective(flx_op_def *table) {
    table[FLX_OP_COLLECTIVE] = (flx_op_def){"collective", exec_collective, vjp_collective, jvp_collective, 0};
}

/* ---- data parallelism ---- */
bool flx_comm_check_params(const char *name, flx_comm *comm, int32_t n, flx_tensor *const *params) {
    if (!comm) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: comm is NULL", name);
        return false;
    }
    if (n < 0 || (n > 0 && !params)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: bad parameter list (n %d, params %p)", name, (int)n,
                      (const void *)params);
        return false;
    }
    for (int32_t i = 0; i < n; i++) {
        if (!params[i]) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: params[%d] is NULL", name, (int)i);
            return false;
        }
        if (!flx_check_handle(name, params[i])) return false;
        if (params[i]->ctx != comm->ctx) {
            flx_set_error(FLX_ERR_DEVICE, "%s: params[%d] %s belongs to another context than the "
                          "communicator", name, (int)i, flx_describe(params[i]));
            return false;
        }
        if (params[i]->dtype != FLX_F32 && params[i]->dtype != FLX_F64) {
            flx_set_error(FLX_ERR_DTYPE, "%s: params[%d] is %s; parameters are f32 or f64", name,
                          (int)i, flx_describe(params[i]));
            return false;
        }
    }
    return true;
}

flx_status flx_comm_broadcast_params(flx_comm *comm, int32_t n, flx_tensor *const *params, int32_t root) {
    static const char *name = "flx_comm_broadcast_params";
    if (!flx_comm_check_params(name, comm, n, params)) return flx_last_status();
    if (root < 0 || root >= comm->size)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: root %d is outside [0, %d)", name, (int)root,
                             (int)comm->size);
    if (n == 0) return FLX_OK;
    flx_status s = flx_scope_begin();
    if (s != FLX_OK) return s;
    flx_tensor **b = (flx_tensor **)calloc((size_t)n, sizeof *b);
    if (!b) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", name);
    for (int32_t i = 0; s == FLX_OK && i < n; i++) {
        b[i] = flx_comm_broadcast(comm, params[i], root);
        if (!b[i]) s = flx_last_status();
    }
    if (s == FLX_OK) s = flx_eval(n, b);
    for (int32_t i = 0; s == FLX_OK && i < n; i++) s = flx_assign(params[i], b[i]);
    free(b);
    flx_scope_end(0, NULL);
    return s;
}

/* An all-reduce in two halves: START (a 0-d token) and WAIT (the result), so the scheduler can
 * run other steps between them. */
static flx_tensor *split_all_reduce(flx_comm *comm, flx_tensor *x, flx_comm_op op, flx_tensor **start) {
    flx_attrs at = {.u.coll = {.comm_id = comm->id, .kind = FLX_COLL_ALL_REDUCE, .op = op,
                               .phase = FLX_COLL_START}};
    *start = flx_adopt(flx_node_new(x->ctx, FLX_OP_COLLECTIVE, x->dtype, 0, x->shape, 1, &x, &at));
    if (!*start) return NULL;
    at.u.coll.phase = FLX_COLL_WAIT;
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_COLLECTIVE, x->dtype, x->ndim, x->shape, 1, start, &at));
}

flx_status flx_comm_bucket_means(flx_comm *comm, int32_t m, flx_tensor *const *grads, size_t bucket_bytes,
                                 flx_tensor **avg, flx_tensor **starts, int32_t *n_starts) {
    flx_tensor **flat = (flx_tensor **)flx_host_calloc(m > 0 ? (size_t)m : 1, sizeof *flat,
                                                       "flx_comm_average_grads");
    if (!flat) return flx_last_status();
    flx_status s = FLX_OK;
    for (int32_t b0 = 0; s == FLX_OK && b0 < m;) {
        /* one bucket: consecutive gradients of one dtype up to bucket_bytes (at least one) */
        int32_t b1 = b0;
        size_t bytes = 0;
        flx_dtype dt = grads[b0]->dtype;
        while (b1 < m && grads[b1]->dtype == dt &&
               (b1 == b0 || bytes + (size_t)grads[b1]->numel * flx_dtype_size(dt) <= bucket_bytes)) {
            bytes += (size_t)grads[b1]->numel * flx_dtype_size(dt);
            b1++;
        }
        for (int32_t k = b0; k < b1 && s == FLX_OK; k++) {
            flx_tensor *g = grads[k];
            flat[k - b0] = flx_reshape(g, 1, &g->numel);
            if (!flat[k - b0]) s = flx_last_status();
        }
        flx_tensor *packed = s != FLX_OK ? NULL : b1 - b0 == 1 ? flat[0] : flx_concat(b1 - b0, flat, 0);
        flx_tensor *red = NULL;
        if (packed && starts) {
            red = split_all_reduce(comm, packed, FLX_COMM_AVG, &starts[*n_starts]);
            if (red) (*n_starts)++;
        } else if (packed) {
            red = flx_comm_all_reduce(comm, packed, FLX_COMM_AVG);
        }
        if (!red && s == FLX_OK) s = flx_last_status();
        int64_t off = 0;
        for (int32_t k = b0; k < b1 && s == FLX_OK; k++) {
            flx_tensor *sl = flx_slice(red, 0, off, off + grads[k]->numel, 1);
            avg[k] = sl ? flx_reshape(sl, grads[k]->ndim, grads[k]->shape) : NULL;
            if (!avg[k]) s = flx_last_status();
            off += grads[k]->numel;
        }
        b0 = b1;
    }
    free(flat);
    return s;
}

flx_status flx_comm_average_grads(flx_comm *comm, int32_t n, flx_tensor *const *params, size_t bucket_bytes) {
    static const char *name = "flx_comm_average_grads";
    if (!flx_comm_check_params(name, comm, n, params)) return flx_last_status();
    if (bucket_bytes == 0) bucket_bytes = (size_t)25 << 20;
    if (n == 0) return FLX_OK;
    flx_status s = flx_scope_begin();
    if (s != FLX_OK) return s;
    flx_tensor **grads = (flx_tensor **)calloc((size_t)n, sizeof *grads);
    flx_tensor **avg = (flx_tensor **)calloc((size_t)n, sizeof *avg);
    int32_t *order = (int32_t *)calloc((size_t)n, sizeof *order);
    if (!grads || !avg || !order) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", name);
    int32_t m = 0; /* parameters with a gradient, in reverse order: backward's order */
    for (int32_t i = n - 1; s == FLX_OK && i >= 0; i--)
        if (params[i]->grad) {
            order[m] = i;
            grads[m++] = params[i]->grad;
        }
    if (s == FLX_OK) s = flx_comm_bucket_means(comm, m, grads, bucket_bytes, avg, NULL, NULL);
    if (s == FLX_OK) s = flx_eval(m, avg);
    for (int32_t k = 0; s == FLX_OK && k < m; k++) {
        flx_tensor *p = params[order[k]], *old = p->grad;
        p->grad = flx_retain(avg[k]); /* the parameter's own reference, outside any scope */
        flx_release(old);
    }
    free(grads);
    free(avg);
    free(order);
    flx_scope_end(0, NULL);
    return s;
}
