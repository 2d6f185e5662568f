/* nccl.c — the NCCL transport of communicators for CUDA contexts: one ncclComm per
 * communicator, its unique id sent from rank 0 over MPI or a TCP rendezvous (a world of one needs
 * none), collectives queued on the context's stream (no host sync; capturable into a plan's CUDA
 * graph). */
#ifdef FLX_WITH_NCCL
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "cuda_internal.h"
#include "../dist/dist.h"
#include "../dist/rendezvous.h"

static flx_status nccl_fail(ncclResult_t r, const char *what) {
    return flx_set_error(FLX_ERR_BACKEND, "nccl: %s failed: %s", what, ncclGetErrorString(r));
}

static ncclDataType_t nccl_dtype(flx_dtype dt) {
    switch (dt) {
    case FLX_F32: return ncclFloat32;
    case FLX_F64: return ncclFloat64;
    case FLX_I32: return ncclInt32;
    default: return ncclInt64;
    }
}

static ncclRedOp_t nccl_op(flx_comm_op op) {
    switch (op) {
    case FLX_COMM_AVG: return ncclAvg;
    case FLX_COMM_MAX: return ncclMax;
    case FLX_COMM_MIN: return ncclMin;
    default: return ncclSum;
    }
}

static flx_status nccl_run(flx_comm *c, const flx_coll_args *a) {
    ncclComm_t nc = (ncclComm_t)c->state;
    cudaStream_t s = (cudaStream_t)flx_cuda_ctx_stream(c->ctx);
    flx_cuda_guard g; /* NCCL launches on the current device: make it the context's, then restore */
    flx_status gs = flx_cuda_enter(c->ctx, &g);
    if (gs != FLX_OK) return gs;
    size_t n = (size_t)a->count;
    ncclDataType_t dt = nccl_dtype(a->dtype);
    ncclResult_t r = ncclSuccess;
    switch (a->kind) {
    case FLX_COLL_ALL_REDUCE: r = ncclAllReduce(a->send, a->recv, n, dt, nccl_op(a->op), nc, s); break;
    case FLX_COLL_BROADCAST: r = ncclBroadcast(a->send, a->recv, n, dt, a->root, nc, s); break;
    case FLX_COLL_ALL_GATHER: r = ncclAllGather(a->send, a->recv, n, dt, nc, s); break;
    case FLX_COLL_REDUCE_SCATTER: r = ncclReduceScatter(a->send, a->recv, n, dt, nccl_op(a->op), nc, s); break;
    }
    flx_cuda_leave(&g);
    if (r != ncclSuccess) return nccl_fail(r, "collective");
    /* a peer that failed or a network error surfaces here on every rank instead of a silent hang */
    ncclResult_t ar = ncclSuccess;
    if (ncclCommGetAsyncError(nc, &ar) == ncclSuccess && ar != ncclSuccess && ar != ncclInProgress)
        return nccl_fail(ar, "communicator (asynchronous error)");
    return FLX_OK;
}

static void nccl_destroy(flx_comm *c) {
    if (c->state) ncclCommDestroy((ncclComm_t)c->state);
    c->state = NULL;
}

static const flx_comm_impl nccl_impl = {"nccl", nccl_run, nccl_destroy};

/* Seconds a rank waits for the others at the TCP rendezvous (FLX_COMM_TIMEOUT_S, default 300). */
static double rendezvous_timeout(void) {
    const char *t = getenv("FLX_COMM_TIMEOUT_S");
    double v = t ? atof(t) : 0.0;
    return v > 0 ? v : 300.0;
}

static flx_status exchange_id(flx_comm *c, flx_id_exchange how, ncclUniqueId *id) {
    if (c->size == 1 || how == FLX_ID_LOCAL) return FLX_OK;
    if (how == FLX_ID_OVER_MPI) {
#ifdef FLX_WITH_MPI
        return flx_mpi_bcast_bytes(id, (int32_t)sizeof *id, 0);
#else
        return flx_set_error(FLX_ERR_UNSUPPORTED, "flx_comm_create: no MPI in this build");
#endif
    }
    const char *addr = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");
    char err[256];
    if (flx_rendezvous_bytes(id, sizeof *id, c->rank, c->size, addr ? addr : "127.0.0.1",
                             port ? port : "29500", rendezvous_timeout(), err, sizeof err) != 0)
        return flx_set_error(FLX_ERR_BACKEND, "flx_comm_create: rendezvous for NCCL's id failed: %s", err);
    return FLX_OK;
}

flx_status flx_nccl_init(flx_comm *c, flx_id_exchange how) {
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (c->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) return nccl_fail(r, "ncclGetUniqueId");
    }
    flx_status s = exchange_id(c, how, &id);
    if (s != FLX_OK) return s;
    flx_cuda_guard g; /* NCCL binds the communicator to the current device: restore it after */
    s = flx_cuda_enter(c->ctx, &g);
    if (s != FLX_OK) return s;
    ncclComm_t nc = NULL;
    ncclResult_t r = ncclCommInitRank(&nc, c->size, id, c->rank);
    flx_cuda_leave(&g);
    if (r != ncclSuccess) return nccl_fail(r, "ncclCommInitRank");
    c->state = nc;
    c->impl = &nccl_impl;
    return FLX_OK;
}
#endif
