/* plan.c — compiled plans, the replay side: runs (input binding, checks, the queued body or
 * one graph launch), outputs, info and destroy. Compilation is in plan_compile.c. Public
 * contract: fluxion.h, "plans".
 *
 * A replay never touches the graph's nodes: every step's output and input addresses in the arena
 * were fixed at compile (plan->step_out, plan->step_in), and the step executor
 * (flx_step_exec) runs each op's kernel on them. Nothing here aborts: every failure sets the
 * thread's error and returns a status or NULL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flx_unary_ops.h" /* FLX_BINARY_ADD: the run counter's increment */
#include "plan_internal.h"

/* ---- destroy -------------------------------------------------------------------------------- */
void flx_plan_destroy(flx_plan *p) {
    if (!p) return;
    if (p->graph && p->ctx->be->graph_destroy) p->ctx->be->graph_destroy(p->ctx, p->graph);
    if (p->out)
        for (int32_t k = 0; k < p->n_out; k++) {
            flx_release(p->out[k].handle);
            flx_buffer_release(p->out[k].rec);
            if (p->out[k].copy_src_buf) p->out[k].copy_src_buf->pins--;
            flx_buffer_release(p->out[k].copy_src_buf);
        }
    if (p->as)
        for (int32_t k = 0; k < p->n_assign; k++) {
            flx_buffer_release(p->as[k].dst_buf);
            flx_release(p->as[k].dst);
        }
    if (p->optim)
        for (int32_t k = 0; k < p->n_optim; k++) {
            flx_optim_destroy(p->optim[k].opt); /* releases the plan's hold */
            free(p->optim[k].idx);
            free(p->optim[k].pk);
            free(p->optim[k].grad_ptr);
        }
    if (p->param)
        for (int32_t j = 0; j < p->n_param; j++) {
            if (p->param[j].buf) {
                p->param[j].buf->pins--;
                flx_buffer_release(p->param[j].buf);
            }
            flx_release(p->param[j].grad);
            flx_release(p->param[j].t);
        }
    free(p->optim);
    free(p->param);
    if (p->ext)
        for (int32_t k = 0; k < p->n_ext; k++) {
            p->ext[k].buf->pins--;
            flx_buffer_release(p->ext[k].buf);
            flx_release(p->ext[k].t);
        }
    if (p->in)
        for (int32_t k = 0; k < p->n_in; k++) flx_release(p->in[k]);
    if (p->steps)
        for (int32_t i = 0; i < p->n_steps; i++) flx_unuse(p->steps[i]);
    flx_schedule_free(&p->sched);
    flx_buffer_release(p->arena);
    flx_buffer_release(p->rng);
    FLX_FREE_ALL(p->records, p->op, p->step_out, p->step_in, p->in_at, p->in, p->in_rec, p->ext,
                 p->out, p->as, p);
}

flx_plan_options flx_plan_default_options(void) {
    flx_plan_options o;
    memset(&o, 0, sizeof o);
    return o;
}

/* ---- replay body ------------------------------------------------------------------------------ */
static _Thread_local const int64_t *tl_rng_stream;

const int64_t *flx_plan_rng_stream(void) { return tl_rng_stream; }

/* The run counter += 1, on the device: a captured replay advances it too. */
static flx_status advance_rng(flx_plan *p) {
    int64_t *c = (int64_t *)p->rng->ptr;
    flx_binary_args a = {.op = FLX_BINARY_ADD, .dtype = FLX_I64, .ndim = 1, .shape = {1}, .sa = {1},
                         .sb = {1}, .a = c, .b = c + 1, .out = c};
    return flx_kernel_binary(p->ctx, &a);
}

flx_status flx_plan_queue_body(flx_plan *p) {
    flx_ctx *ctx = p->ctx;
    const flx_backend *be = ctx->be;
    tl_rng_stream = p->rng ? (const int64_t *)p->rng->ptr : NULL;
    for (int32_t i = 0; i < p->n_steps; i++) {
        if (!p->step_out[i]) continue; /* alias or fused interior: nothing to queue */
        int32_t role = flx_schedule_role(&p->sched, (size_t)i);
        flx_status s = flx_step_exec(p->steps[i], role >= 0 ? &p->sched.fusion.groups[role] : NULL,
                                     p->step_out[i], p->step_in + p->in_at[i]);
        if (s != FLX_OK) {
            tl_rng_stream = NULL;
            return s;
        }
    }
    tl_rng_stream = NULL;
    if (p->rng) {
        flx_status s = advance_rng(p);
        if (s != FLX_OK) return s;
    }
    for (int32_t k = 0; k < p->n_out; k++) {
        plan_out *o = &p->out[k];
        if (!o->copy_src || o->nbytes == 0) continue;
        flx_status s = be->copy_d2d(ctx, o->rec->ptr, o->copy_src, o->nbytes);
        if (s != FLX_OK) return s;
    }
    /* Every value is read (staged) before any leaf is written. */
    for (int32_t k = 0; k < p->n_assign; k++) {
        plan_assign *a = &p->as[k];
        if (!a->stage || a->nbytes == 0) continue;
        flx_status s = be->copy_d2d(ctx, a->stage, a->src_ptr, a->nbytes);
        if (s != FLX_OK) return s;
    }
    /* Each optimiser's fused update, after every output and assignment value has been
     * read (they see the parameters from before the update) and before any leaf is written. */
    for (int32_t k = 0; k < p->n_optim; k++) {
        plan_optim *po = &p->optim[k];
        flx_status s = flx_optim_queue_update(po->opt, po->m, po->idx, po->grad_ptr);
        if (s != FLX_OK) return s;
    }
    for (int32_t k = 0; k < p->n_assign; k++) {
        plan_assign *a = &p->as[k];
        if (a->nbytes == 0) continue;
        flx_status s = be->copy_d2d(ctx, a->dst_buf->ptr, a->stage ? a->stage : a->src_ptr,
                                    a->nbytes);
        if (s != FLX_OK) return s;
    }
    return FLX_OK;
}

/* ---- run ----------------------------------------------------------------------------------- */
static bool check_plan(const char *fn, const flx_plan *p) {
    if (!p) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: plan is NULL", fn);
        return false;
    }
    return true;
}

flx_status flx_plan_check_input(const flx_plan *p, int32_t k, const flx_tensor *t, const char *fn) {
    const flx_tensor *want = p->in[k];
    if (t->ctx != p->ctx)
        return flx_set_error(FLX_ERR_DEVICE, "%s: input %d %s belongs to another context", fn,
                             (int)k, flx_describe(t));
    if (t->dtype != want->dtype)
        return flx_set_error(FLX_ERR_DTYPE, "%s: input %d is %s but the plan was compiled for %s",
                             fn, (int)k, flx_describe(t), flx_describe(want));
    if (!flx_same_shape(t, want))
        return flx_set_error(FLX_ERR_SHAPE, "%s: input %d is %s but the plan was compiled for %s",
                             fn, (int)k, flx_describe(t), flx_describe(want));
    return FLX_OK;
}

static flx_status bind(flx_plan *p, int32_t k, flx_tensor *t, const char *fn) {
    flx_status s = flx_plan_check_input(p, k, t, fn);
    if (s != FLX_OK) return s;
    s = flx_eval_nodes(1, &t);
    if (s != FLX_OK) return s;
    size_t nb = flx_nbytes(t);
    return nb ? p->ctx->be->copy_d2d(p->ctx, p->in_rec[k]->ptr, t->buf->ptr, nb) : FLX_OK;
}

/* A plan and an input index in range; false with the error set. */
static bool check_plan_input(const char *fn, const flx_plan *p, int32_t k) {
    return check_plan(fn, p) && flx_check_index(fn, "input index", k, p->n_in);
}

flx_status flx_plan_set_input(flx_plan *p, int32_t k, flx_tensor *t) {
    static const char *fn = "flx_plan_set_input";
    if (!check_plan_input(fn, p, k)) return flx_last_status();
    if (!t) return flx_set_error_if_clear(FLX_ERR_INVALID_ARGUMENT, "%s: tensor is NULL", fn);
    if (!flx_check_handle(fn, t)) return flx_last_status();
    return bind(p, k, t, fn);
}

flx_status flx_plan_set_input_host(flx_plan *p, int32_t k, const void *data, size_t nbytes) {
    static const char *fn = "flx_plan_set_input_host";
    if (!check_plan_input(fn, p, k)) return flx_last_status();
    if (!data) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: data is NULL", fn);
    size_t need = flx_nbytes(p->in[k]);
    if (nbytes != need)
        return flx_set_error(FLX_ERR_SHAPE, "%s: input %d %s takes %zu bytes, got %zu", fn, (int)k,
                             flx_describe(p->in[k]), need, nbytes);
    return need ? p->ctx->be->upload(p->ctx, p->in_rec[k]->ptr, data, need) : FLX_OK;
}

/* Before a run: an output buffer that someone else came to share (flx_assign from the handle, a
 * realised reshape of it) is moved to memory of its own holding the current value, so sharers
 * never see the run's writes; a handle that was given another buffer gets the region back. */
static flx_status protect_outputs(flx_plan *p) {
    flx_ctx *ctx = p->ctx;
    for (int32_t k = 0; k < p->n_out; k++) {
        plan_out *o = &p->out[k];
        flx_tensor *h = o->handle;
        int32_t holders = 1 + (h->buf == o->rec ? 1 : 0);
        if (o->rec->refs > holders) {
            size_t nb = o->rec->nbytes;
            void *mem = ctx->be->alloc(ctx, nb);
            if (!mem) return flx_last_status();
            flx_status s = ctx->be->copy_d2d(ctx, mem, o->rec->ptr, nb);
            if (s != FLX_OK) {
                ctx->be->free(ctx, mem);
                return s;
            }
            flx_buffer *nrec = (flx_buffer *)calloc(1, sizeof *nrec);
            if (!nrec) {
                ctx->be->free(ctx, mem);
                return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_plan_run: out of host memory");
            }
            *nrec = *o->rec;
            nrec->refs = 1; /* the plan */
            p->arena->refs++;
            /* The old record now owns the copy (allocator memory) and drops its arena hold. */
            flx_buffer *old = o->rec;
            old->ptr = mem;
            old->deleter = NULL;
            old->deleter_ctx = NULL;
            flx_stats_alloc(ctx, nb);
            flx_buffer_release(p->arena);
            if (h->buf == old) {
                h->buf = nrec;
                nrec->refs++;
                old->refs--; /* the handle's hold; others remain */
            }
            old->refs--; /* the plan's hold */
            o->rec = nrec;
        }
        if (h->buf != o->rec) {
            flx_buffer_release(h->buf);
            h->buf = o->rec;
            o->rec->refs++;
        }
        if (h->op != FLX_OP_CONST)
            return flx_set_error(FLX_ERR_STATE, "flx_plan_run: output %d is no longer a source", (int)k);
    }
    return FLX_OK;
}

flx_status flx_plan_run(flx_plan *p, int32_t n_in, flx_tensor *const *inputs) {
    static const char *fn = "flx_plan_run";
    if (!check_plan(fn, p)) return flx_last_status();
    if (!((n_in == 0 && !inputs) || (n_in == p->n_in && (inputs || n_in == 0))))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                             "%s: the plan takes %d inputs, got n_in %d (inputs %s); pass all of "
                             "them (NULL entries keep an input) or none (n_in 0, NULL)",
                             fn, (int)p->n_in, (int)n_in, inputs ? "given" : "NULL");
    /* Checks first, so a failed run changes nothing. */
    for (int32_t j = 0; j < p->n_param; j++) { /* parameters the run updates in place */
        const plan_param *pp = &p->param[j];
        if (pp->t->buf != pp->buf)
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: parameter %s of an optimiser of the plan was given a new "
                                 "buffer (flx_assign?) after the plan was compiled; the plan "
                                 "updates the buffer it had then: compile the plan again",
                                 fn, flx_describe(pp->t));
        if (pp->buf->refs - pp->buf->pins != 1 || pp->buf->deleter)
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: parameter %s of an optimiser of the plan shares its buffer "
                                 "with another tensor (flx_assign from it, a live realised reshape "
                                 "or detach of it) and the plan updates it in place; release the "
                                 "sharer or compile the plan again", fn, flx_describe(pp->t));
    }
    for (int32_t k = 0; k < p->n_ext; k++)
        if (p->ext[k].t->buf != p->ext[k].buf)
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: source %s was given a new buffer (flx_assign?) after the plan "
                                 "was compiled; the plan reads the buffer it had then: compile the "
                                 "plan again", fn, flx_describe(p->ext[k].t));
    for (int32_t k = 0; k < p->n_assign; k++)
        if (p->as[k].dst->buf != p->as[k].dst_buf)
            return flx_set_error(FLX_ERR_STATE,
                                 "%s: assigned leaf %s (assignment %d) was given a new buffer after "
                                 "the plan was compiled; compile the plan again",
                                 fn, flx_describe(p->as[k].dst), (int)k);
    for (int32_t i = 0; i < p->n_steps; i++)
        if (p->steps[i]->op != p->op[i])
            return flx_set_error(FLX_ERR_STATE, "%s: a node of the plan's graph was frozen into a "
                                 "source after compile; compile the plan again", fn);
    for (int32_t k = 0; k < n_in; k++) {
        if (!inputs[k]) continue;
        flx_status cs = flx_plan_check_input(p, k, inputs[k], fn);
        if (cs != FLX_OK) return cs;
    }
    flx_status s = FLX_OK;
    for (int32_t k = 0; k < n_in && s == FLX_OK; k++)
        if (inputs[k]) s = bind(p, k, inputs[k], fn);
    if (s == FLX_OK) s = protect_outputs(p);
    if (s != FLX_OK) return s;
    if (p->graph) {
        s = p->ctx->be->graph_launch(p->ctx, p->graph);
        if (s == FLX_OK) p->ctx->stats.kernels++; /* the whole replay is one launch */
    } else {
        /* Queued op by op: one device switch for all the steps. */
        flx_device_saved saved;
        s = flx_device_enter(p->ctx, &saved);
        if (s == FLX_OK) s = flx_plan_queue_body(p);
        flx_device_leave(p->ctx, &saved);
    }
    if (s != FLX_OK) return s;
    for (int32_t k = 0; k < p->n_out; k++) {
        p->out[k].handle->version++;
        p->out[k].handle->changed_by = "flx_plan_run";
    }
    for (int32_t k = 0; k < p->n_assign; k++) {
        p->as[k].version = ++p->as[k].dst->version;
        p->as[k].dst->changed_by = "flx_plan_run";
    }
    for (int32_t k = 0; k < p->n_optim; k++)
        flx_optim_mark_updated(p->optim[k].opt, p->optim[k].m, p->optim[k].idx,
                               "flx_plan_run (optimiser step)");
    p->ctx->stats.nodes_executed += (uint64_t)p->n_steps;
    p->ctx->stats.nodes_fused += p->n_fused;
    p->runs++;
    return FLX_OK;
}

flx_tensor *flx_plan_output(flx_plan *p, int32_t k) {
    if (!check_plan("flx_plan_output", p)) return NULL;
    if (!flx_check_index("flx_plan_output", "output index", k, p->n_out)) return NULL;
    return flx_adopt(flx_retain(p->out[k].handle));
}

flx_status flx_plan_get_info(const flx_plan *p, flx_plan_info *out) {
    if (!check_plan("flx_plan_get_info", p)) return flx_last_status();
    if (!out) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_plan_get_info: out is NULL");
    memset(out, 0, sizeof *out);
    out->n_nodes = p->n_steps;
    out->n_inputs = p->n_in;
    out->n_outputs = p->n_out;
    out->n_assign = p->n_assign;
    out->captured = p->graph != NULL;
    out->arena_bytes = p->arena_bytes;
    out->unplanned_bytes = p->unplanned_bytes;
    out->runs = p->runs;
    out->n_optim = p->n_optim;
    out->capture_state = p->capture_state;
    snprintf(out->capture_reason, sizeof out->capture_reason, "%s", p->capture_reason);
    return FLX_OK;
}
