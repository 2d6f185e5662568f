/* plan_internal.h — what the two halves of plans share: the plan's structure, built by
 * plan_compile.c and replayed by plan.c. Private to runtime/core/plan*.c. */
#ifndef FLX_PLAN_INTERNAL_H
#define FLX_PLAN_INTERNAL_H

#include "internal.h"

#define PLAN_ALIGN 256u

typedef struct plan_root {
    size_t size;       /* aligned bytes                                                      */
    size_t offset;     /* in the arena                                                       */
    int32_t start, end; /* lifetime in step indices (inclusive); pinned roots span everything */
} plan_root;

typedef struct plan_ext {
    flx_tensor *t;     /* retained */
    flx_buffer *buf;   /* its buffer at compile time (a reference held) */
} plan_ext;

typedef struct plan_out {
    flx_tensor *node;     /* the graph tensor computing it                                  */
    flx_tensor *handle;   /* CONST tensor owned by the plan (one reference)                 */
    flx_buffer *rec;      /* the region's record; the plan holds one reference               */
    int32_t root;         /* arena root of the region                                        */
    const void *copy_src; /* non-NULL: copied from here at the end of each run               */
    flx_buffer *copy_src_buf; /* an external's buffer copy_src points into (a reference)      */
    int32_t copy_in;      /* >= 0: copied from input region copy_in instead                  */
    size_t nbytes;
} plan_out;

typedef struct plan_assign {
    flx_tensor *dst;      /* retained leaf with a private buffer                              */
    flx_buffer *dst_buf;  /* its buffer (a reference held)                                    */
    flx_tensor *src;      /* graph tensor of the value                                        */
    const void *src_ptr;  /* where the value is at the end of a run                           */
    int32_t src_in, src_ext; /* value outside the arena: an input or an external (else -1)    */
    void *stage;          /* non-NULL: the value is staged here before any write-back         */
    size_t nbytes;
    uint32_t version;     /* dst's version after the last run (or compile)                    */
} plan_assign;

/* ---- optimisers stepped inside the replay (options.optims) ---- */
/* A parameter that some optimiser of the plan updates (each listed once). */
typedef struct plan_param {
    flx_tensor *t;        /* retained                                                         */
    flx_buffer *buf;      /* its private buffer at compile time (a reference held, pinned)    */
    flx_tensor *grad;     /* d loss / d t built at compile time, a root of the walk (retained) */
    void *grad_ptr;       /* where the gradient is at the end of the body                     */
} plan_param;

typedef struct plan_optim {
    flx_optim *opt;       /* held (flx_optim_retain; released with flx_optim_destroy)         */
    int32_t m;            /* parameters updated: those with a .grad at compile time           */
    int32_t *idx;         /* their indices in the optimiser (ascending)                       */
    int32_t *pk;          /* each one's entry in plan->param                                  */
    void **grad_ptr;      /* each one's gradient (flx_optim_queue_update's argument)          */
} plan_optim;

struct flx_plan {
    flx_ctx *ctx;
    flx_schedule sched;       /* the steps (post-order, each holding a use) and fusion groups   */
    int32_t n_steps;
    flx_tensor **steps;       /* = sched.nodes                                                   */
    flx_op *op;               /* op at compile time (a frozen node is detected)                */
    void **step_out;          /* where step i writes; NULL for steps that queue nothing (alias
                                 steps, fused interior members)                                  */
    const void **step_in;     /* the data step i reads: step_in[in_at[i] .. in_at[i + 1]) are its
                                 inputs' (a group root: its kernel's external inputs')           */
    int32_t *in_at;
    int32_t n_in;
    flx_tensor **in;          /* retained                                                      */
    flx_buffer **in_rec;
    int32_t n_ext;
    plan_ext *ext;
    int32_t n_out;
    plan_out *out;
    int32_t n_assign;
    plan_assign *as;
    int32_t n_optim, n_param; /* optimisers stepped by each run, their parameters              */
    plan_optim *optim;
    plan_param *param;
    uint64_t n_fused;         /* steps computed inside fused kernels, per run                  */
    flx_buffer *arena;        /* one allocation, refcounted (output records hold references)   */
    flx_buffer *records;      /* n_records non-owning records (steps' roots and inputs)        */
    int32_t n_records;
    void *graph;              /* instantiated CUDA graph, or NULL                              */
    int32_t capture_state;    /* flx_plan_capture_state                                        */
    char capture_reason[256]; /* why not captured ("" when captured)                           */
    uint64_t arena_bytes, unplanned_bytes, runs;
    flx_buffer *rng;          /* {run, 1} (int64) when the plan draws random numbers, else NULL */
};

/* Queues every kernel of one replay (plan.c): steps, output copies, staging, optimiser updates,
 * write-back. Used by runs and, once, by the capture at compile. */
flx_status flx_plan_queue_body(flx_plan *p);
/* t may be bound to input k: same context, dtype and shape as compiled (plan.c). */
flx_status flx_plan_check_input(const flx_plan *p, int32_t k, const flx_tensor *t, const char *fn);

/* Checks of options.optims before anything is allocated; the loss is outputs[0] (plan_optim.c). */
bool flx_plan_check_optims(const char *fn, flx_ctx *ctx, flx_tensor *loss, int32_t n_in,
                           flx_tensor *const *inputs, const flx_plan_options *o);
/* Records the optimisers and their parameters, and builds the parameters' gradients (the
 * extra roots of the plan's schedule) (plan_optim.c). */
flx_status flx_plan_setup_optims(flx_plan *p, const flx_plan_options *o, flx_tensor *loss);

#endif /* FLX_PLAN_INTERNAL_H */
