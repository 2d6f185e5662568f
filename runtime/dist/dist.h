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

/* One collective over device buffers of the communicator's context. count is the number of
 * elements of send (all-reduce, broadcast, all-gather) or of recv (reduce-scatter). */
typedef struct flx_coll_args {
    flx_coll_kind kind;
    flx_comm_op op;
    int32_t root;
    flx_dtype dtype;
    int64_t count;
    const void *send;
    void *recv;
} flx_coll_args;

/* A transport: the world of one process, MPI, or NCCL. run queues (NCCL) or performs (MPI) the
 * collective; AVG is done by the transport or by the caller when avg_native is false. */
typedef struct flx_comm_impl {
    const char *name;
    flx_status (*run)(flx_comm *c, const flx_coll_args *a);
    void (*destroy)(flx_comm *c);
} flx_comm_impl;

struct flx_comm {
    uint64_t id;           /* the handle collective nodes keep (never reused)              */
    flx_ctx *ctx;
    int32_t rank, size;
    const flx_comm_impl *impl;
    void *state;           /* the transport's (an MPI_Comm, an ncclComm_t)                  */
};

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
