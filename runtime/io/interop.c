/* interop.c — what language bindings and DLPack exchange need from the runtime: the data pointer
 * of a computed tensor, zero-copy wrapping of external memory (flx_from_blob), the context's
 * stream, and custom differentiable functions (flx_custom_fn, op row CUSTOM).
 *
 * External memory lives in an flx_buffer whose deleter field is set: flx_buffer_release calls it
 * instead of the backend's free, and the allocator stats never see it.
 *
 * A custom function runs its forward callback once, at record time, on detached inputs in no-grad
 * mode, and evaluates the result. The CUSTOM node then holds that value through a buffer record
 * of its own that shares the result's memory; the record's deleter drops the result's buffer and
 * calls the user's destroy, so the callbacks live exactly as long as the node's data (at least as
 * long as the node: a source's buffer is only dropped when the node dies, or when it is frozen
 * into a CONST and no longer needs its rules). The node keeps its inputs, so the reverse and
 * forward drivers reach it and call its rules, which call the user's VJP/JVP callbacks. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- helpers ------------------------------------------------------------------------------ */
/* Waits for a context's queued work without losing an error already recorded on this thread
 * (used before external memory is handed back to its owner). A device error found here stays
 * recorded. */
static void sync_keep_error(flx_ctx *ctx) {
    if (ctx->device.type == FLX_DEVICE_CPU) return;
    flx_status prev = flx_last_status();
    char msg[1024];
    if (prev != FLX_OK) {
        strncpy(msg, flx_last_error(), sizeof msg - 1);
        msg[sizeof msg - 1] = '\0';
    }
    flx_status s = ctx->be->synchronize(ctx);
    if (s == FLX_OK && prev != FLX_OK) flx_set_error(prev, "%s", msg);
}

static bool same_meta(const flx_tensor *a, const flx_tensor *b) {
    return a->ctx == b->ctx && flx_same_shape(a, b);
}

/* ---- data pointer and stream ---------------------------------------------------------------- */
flx_status flx_data_ptr(flx_tensor *t, void **ptr) {
    if (!ptr) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_data_ptr: ptr is NULL");
    *ptr = NULL;
    if (!t) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "flx_data_ptr: tensor is NULL");
    if (!flx_check_handle("flx_data_ptr", t)) return flx_last_status();
    flx_status s = flx_eval_nodes(1, &t);
    if (s != FLX_OK) return s;
    t->keep = true;
    *ptr = t->buf->ptr;
    return FLX_OK;
}

void *flx_ctx_stream(flx_ctx *ctx) {
    if (!ctx || ctx->device.type != FLX_DEVICE_CUDA) return NULL;
#ifdef FLX_WITH_CUDA
    return flx_cuda_ctx_stream(ctx);
#else
    return NULL;
#endif
}

/* ---- external memory -------------------------------------------------------------------------- */
typedef struct blob_owner {
    flx_ctx *ctx;
    void *data; /* as given (NULL for an empty blob given as NULL) */
    flx_blob_deleter deleter;
    void *user;
} blob_owner;

static void blob_free(void *ptr, void *p) {
    (void)ptr;
    blob_owner *o = (blob_owner *)p;
    sync_keep_error(o->ctx); /* no queued kernel may still read the memory */
    if (o->deleter) o->deleter(o->data, o->user);
    free(o);
}

static char g_empty_blob; /* stands for the data of a blob with no elements given as NULL */

flx_tensor *flx_from_blob(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                          void *data, flx_blob_deleter deleter, void *user) {
    flx_tensor *t = NULL;
    blob_owner *o = NULL;
    flx_buffer *b = NULL;
    if (!ctx) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_from_blob: ctx is NULL");
        goto fail;
    }
    if (!flx_dtype_valid(dt)) {
        flx_set_error(FLX_ERR_DTYPE, "flx_from_blob: unsupported dtype %s", flx_dtype_name(dt));
        goto fail;
    }
    t = flx_node_new(ctx, FLX_OP_CONST, dt, ndim, shape, 0, NULL, NULL);
    if (!t) goto fail;
    if (!data && t->numel > 0) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_from_blob: data is NULL for shape %s",
                      flx_shape_str(ndim, shape));
        goto fail;
    }
    o = (blob_owner *)calloc(1, sizeof *o);
    b = (flx_buffer *)calloc(1, sizeof *b);
    if (!o || !b) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_from_blob: out of host memory");
        goto fail;
    }
    *o = (blob_owner){ctx, data, deleter, user};
    b->refs = 1;
    b->ctx = ctx;
    b->ptr = data ? data : (void *)&g_empty_blob;
    b->nbytes = (size_t)t->numel * flx_dtype_size(dt);
    b->deleter = blob_free; /* external even without a user deleter: never the allocator's */
    b->deleter_ctx = o;
    t->buf = b;
    t->keep = true;
    return flx_adopt(t);
fail:
    free(o);
    free(b);
    if (t) flx_release(t);
    if (deleter) deleter(data, user);
    return NULL;
}

/* ---- custom differentiable functions --------------------------------------------------------- */
typedef struct flx_custom_def {
    flx_custom_fwd fwd;
    flx_custom_vjp vjp;
    flx_custom_jvp jvp;
    void *user;
    void (*destroy)(void *user);
    flx_buffer *inner; /* the forward result's buffer, shared by the node's own record */
} flx_custom_def;

static void custom_free(void *ptr, void *p) {
    (void)ptr;
    flx_custom_def *d = (flx_custom_def *)p;
    flx_buffer_release(d->inner);
    if (d->destroy) d->destroy(d->user);
    free(d);
}

static flx_status callback_failed(const char *what, flx_status s) {
    if (s == FLX_OK) s = FLX_ERR_INVALID_ARGUMENT;
    if (flx_last_status() == FLX_OK)
        flx_set_error(s, "flx_custom_fn: the %s callback failed (status %s)", what,
                      flx_status_string(s));
    return s;
}

static flx_status custom_vjp_rule(flx_tensor *node, flx_tensor *g, flx_tensor **gin) {
    flx_custom_def *d = node->attrs.u.custom.def;
    if (!d->vjp)
        return flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE,
                             "custom: this custom function %s has no VJP callback",
                             flx_describe(node));
    flx_status s = d->vjp(node->n_in, node->in, node, g, gin, d->user);
    if (s != FLX_OK) return callback_failed("vjp", s);
    for (int32_t i = 0; i < node->n_in; i++) {
        if (gin[i] && !same_meta(gin[i], node->in[i]))
            return flx_set_error(FLX_ERR_SHAPE,
                                 "custom: the VJP callback returned %s for input %d, which is %s",
                                 flx_describe(gin[i]), (int)i, flx_describe(node->in[i]));
    }
    return FLX_OK;
}

static flx_status custom_jvp_rule(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    flx_custom_def *d = node->attrs.u.custom.def;
    *tout = NULL;
    if (!d->jvp)
        return flx_set_error(FLX_ERR_NOT_DIFFERENTIABLE,
                             "custom: this custom function %s has no JVP callback",
                             flx_describe(node));
    flx_tensor *local[8];
    flx_tensor **t = node->n_in <= 8 ? local : (flx_tensor **)calloc((size_t)node->n_in, sizeof *t);
    if (!t) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "custom: out of host memory");
    flx_status s = FLX_OK;
    for (int32_t i = 0; i < node->n_in && s == FLX_OK; i++) {
        flx_tensor *x = node->in[i];
        t[i] = tin[i] ? tin[i] : flx_zeros(x->ctx, x->dtype, x->ndim, x->shape);
        if (!t[i]) s = flx_last_status();
    }
    flx_tensor *r = NULL;
    if (s == FLX_OK) {
        s = d->jvp(node->n_in, node->in, t, node, &r, d->user);
        if (s != FLX_OK) s = callback_failed("jvp", s);
    }
    if (s == FLX_OK && r && !same_meta(r, node))
        s = flx_set_error(FLX_ERR_SHAPE, "custom: the JVP callback returned %s for an output %s",
                          flx_describe(r), flx_describe(node));
    if (t != local) free(t);
    if (s == FLX_OK) *tout = r;
    return s;
}

void flx_ops_register_interop(flx_op_def *t) {
    /* A source: its value was computed at record time and cannot be recomputed. */
    t[FLX_OP_CUSTOM] = (flx_op_def){"custom", NULL, custom_vjp_rule, custom_jvp_rule,
                                    FLX_OPF_SOURCE};
}

/* Body of flx_custom_fn inside its private scope; on success *node holds the new node (a
 * caller-owned reference, not adopted) and d is owned by it. */
static flx_status custom_record(int32_t n_in, flx_tensor *const *inputs, flx_custom_def *d,
                                flx_tensor **node) {
    flx_tensor *local[8];
    flx_tensor **det = n_in <= 8 ? local : (flx_tensor **)calloc((size_t)n_in, sizeof *det);
    if (!det) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_custom_fn: out of host memory");
    flx_status s = FLX_OK;
    flx_tensor *r = NULL;
    flx_no_grad_begin();
    for (int32_t i = 0; i < n_in && s == FLX_OK; i++) {
        det[i] = flx_detach(inputs[i]);
        if (!det[i]) s = flx_last_status();
    }
    if (s == FLX_OK) {
        s = d->fwd(n_in, det, &r, d->user);
        if (s != FLX_OK) s = callback_failed("fwd", s);
        else if (!r) s = flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT,
                                                "flx_custom_fn: the fwd callback returned no tensor");
    }
    flx_no_grad_end();
    if (s == FLX_OK && r->ctx != inputs[0]->ctx)
        s = flx_set_error(FLX_ERR_DEVICE,
                          "flx_custom_fn: the fwd callback returned a tensor of another context");
    if (s == FLX_OK) s = flx_eval_nodes(1, &r);
    flx_buffer *b = NULL;
    if (s == FLX_OK) {
        b = (flx_buffer *)calloc(1, sizeof *b);
        if (!b) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_custom_fn: out of host memory");
    }
    flx_tensor *n = NULL;
    if (s == FLX_OK) {
        flx_attrs attrs = {.u.custom.def = d};
        n = flx_node_new(r->ctx, FLX_OP_CUSTOM, r->dtype, r->ndim, r->shape, n_in, inputs, &attrs);
        if (!n) {
            s = flx_last_status();
            free(b);
        }
    }
    if (s == FLX_OK) {
        d->inner = r->buf;
        d->inner->refs++;
        b->refs = 1;
        b->ctx = r->ctx;
        b->ptr = r->buf->ptr;
        b->nbytes = r->buf->nbytes;
        b->deleter = custom_free;
        b->deleter_ctx = d;
        n->buf = b;
        n->keep = true;
        *node = n;
    }
    if (det != local) free(det);
    return s;
}

flx_status flx_custom_fn(int32_t n_in, flx_tensor *const *inputs, flx_custom_fwd fwd,
                         flx_custom_vjp vjp, flx_custom_jvp jvp, void *user,
                         void (*destroy)(void *user), flx_tensor **out) {
    flx_status s = FLX_OK;
    if (out) *out = NULL;
    if (!out) s = flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_custom_fn: out is NULL");
    else if (!fwd) s = flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_custom_fn: fwd is NULL");
    else if (n_in <= 0 || !inputs)
        s = flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_custom_fn: needs at least one input (n_in %d)",
                          (int)n_in);
    else if (!flx_check_inputs("flx_custom_fn", n_in, inputs)) s = flx_last_status();
    flx_custom_def *d = NULL;
    if (s == FLX_OK) {
        d = (flx_custom_def *)calloc(1, sizeof *d);
        if (!d) s = flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_custom_fn: out of host memory");
    }
    if (s != FLX_OK) {
        if (destroy) destroy(user);
        return s;
    }
    *d = (flx_custom_def){fwd, vjp, jvp, user, destroy, NULL};
    flx_tensor *node = NULL;
    s = flx_scope_begin();
    if (s == FLX_OK) {
        s = custom_record(n_in, inputs, d, &node);
        flx_scope_end(0, NULL);
    }
    if (s != FLX_OK) {
        if (destroy) destroy(user);
        free(d);
        return s;
    }
    *out = flx_adopt(node);
    return FLX_OK;
}
