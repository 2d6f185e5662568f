/* dist.h — communicators inside the runtime: how a collective node reaches MPI or NCCL.
 * defines: flx_coll_kind, flx_coll_args, flx_comm_impl, flx_comm_lookup. */
#ifndef FLX_DIST_H
#define FLX_DIST_H

#include "internal.h"

typedef enum flx_coll_kind {
    FLX_COLL_ALL_REDUCE = 0,
    FLX_COLL_BROADCAST = 1,
    FLX_COLL_ALL_GATHER = 2,
    FLX_COLL_REDUCE_SCATTER = 3,
} flx_coll_kind;

/* A collective node runs a whole collective, or one half of a split one: START begins it (its
 * output is a 0-d token that orders the halves), WAIT finishes it (its input is the START node). */
typedef enum flx_coll_phase { FLX_COLL_WHOLE = 0, FLX_COLL_START = 1, FLX_COLL_WAIT = 2 } flx_coll_phase;

/* One collective over device buffers of the communicator's context. count is the number of
 * elements of send (all-reduce, broadcast, all-gather) or of recv (reduce-scatter). seq numbers
 * the communicator's collectives from 1, in the order this rank starts them (for messages). */
typedef struct flx_coll_args {
    flx_coll_kind kind;
    flx_comm_op op;
    int32_t root;
    flx_dtype dtype;
    int64_t count;
    uint64_t seq;
    const void *send;
    void *recv;
} flx_coll_args;

/* A transport: the world of one process, MPI, or NCCL.
 * run performs (MPI) or queues on the context's stream (NCCL) one collective from a->send to
 * a->recv, waiting at most the communicator's timeout for the other ranks.
 * start begins one without waiting for it: it copies a->send as needed (the caller may free it
 * as soon as start returns; a->recv is ignored) and returns the transport's record of the
 * collective in flight; wait finishes that record (exactly once, in start order), writing the
 * result to recv, and frees it. On a timeout the transport calls flx_comm_timed_out. */
typedef struct flx_comm_impl {
    const char *name;
    flx_status (*run)(flx_comm *c, const flx_coll_args *a);
    flx_status (*start)(flx_comm *c, const flx_coll_args *a, void **op);
    flx_status (*wait)(flx_comm *c, void *op, void *recv);
    void (*destroy)(flx_comm *c);
} flx_comm_impl;

/* Collectives started by the overlapped backward and not yet waited for, keyed by their start
 * node (runtime/dist/overlap.c). */
typedef struct flx_comm_inflight {
    const void *key;
    void *op;
    uint64_t kernels_at_start; /* the context's stats.kernels when it started */
} flx_comm_inflight;

struct flx_comm {
    uint64_t id;           /* the handle collective nodes keep (never reused)              */
    flx_ctx *ctx;
    int32_t rank, size;
    const flx_comm_impl *impl;
    void *state;           /* the transport's (an MPI_Comm, an ncclComm_t)                  */
    double timeout_s;      /* how long one collective waits for the other ranks            */
    uint64_t seq;          /* collectives started so far                                  */
    bool failed;           /* a collective timed out: the ranks are out of step           */
    char failure[256];     /* what failed, for the later calls' messages                  */
    flx_comm_inflight *inflight;
    int32_t n_inflight, cap_inflight;
    flx_comm_stats stats;
};

/* The public name of a collective kind ("flx_comm_all_reduce", ...). */
const char *flx_coll_name(int32_t kind);

/* FLX_COMM_TIMEOUT_S when set to a positive number, else 600 seconds. */
double flx_comm_default_timeout(void);

/* Marks c failed after collective a waited timeout_s in vain (detail: what the transport saw)
 * and returns FLX_ERR_TIMEOUT with a message naming the collective, its sequence number, the
 * rank and the timeout. */
flx_status flx_comm_timed_out(flx_comm *c, const flx_coll_args *a, const char *detail);

/* Seconds on a monotonic clock. */
double flx_comm_now(void);

/* The halves of a split collective (runtime/dist/overlap.c): begin starts a and files it under
 * key (the START node); finish waits for the one filed under key and writes its result to recv. */
flx_status flx_comm_begin(flx_comm *c, const flx_coll_args *a, const void *key);
flx_status flx_comm_finish(flx_comm *c, const void *key, void *recv);

/* The mean over the ranks of each of grads[0..m) (their order: the order backward makes them),
 * in buckets of consecutive gradients of one dtype of about bucket_bytes, one all-reduce each.
 * avg[k] receives the lazy mean of grads[k]. With starts non-NULL each all-reduce is split in
 * halves and the START node of each bucket goes to starts[*n_starts++] (room for m): evaluating
 * the starts before the means lets each bucket start as soon as its gradients exist. */
flx_status flx_comm_bucket_means(flx_comm *comm, int32_t m, flx_tensor *const *grads, size_t bucket_bytes,
                                 flx_tensor **avg, flx_tensor **starts, int32_t *n_starts);

/* Checks a parameter list for a communicator: comm and every tensor non-NULL, n >= 0, each
 * tensor of comm's context and a float dtype. False with the error set (messages name fn). */
bool flx_comm_check_params(const char *fn, flx_comm *comm, int32_t n, flx_tensor *const *params);

/* The live communicator with this id, or NULL (destroyed). */
flx_comm *flx_comm_lookup(uint64_t id);

#ifdef FLX_WITH_MPI
/* MPI_COMM_WORLD, initialising MPI when needed; the transport for CPU contexts. */
flx_status flx_mpi_world(flx_comm *c);
/* Exchanges nbytes from root to every rank over MPI_COMM_WORLD (NCCL's unique id). */
flx_status flx_mpi_bcast_bytes(void *buf, int32_t nbytes, int32_t root);
#endif
#ifdef FLX_WITH_NCCL
/* How rank 0's NCCL unique id reaches the other ranks. */
typedef enum { FLX_ID_LOCAL, FLX_ID_OVER_MPI, FLX_ID_OVER_TCP } flx_id_exchange;
/* An NCCL communicator for a CUDA context of rank c->rank of c->size (runtime/cuda/nccl.c). */
flx_status flx_nccl_init(flx_comm *c, flx_id_exchange how);
#endif

#endif
