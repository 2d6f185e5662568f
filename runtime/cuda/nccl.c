/* nccl.c — the NCCL transport of communicators for CUDA contexts: one nonblocking ncclComm per
 * communicator, its unique id sent from rank 0 over MPI or a TCP rendezvous (a world of one needs
 * none), collectives queued on the context's stream (no host sync; capturable into a plan's CUDA
 * graph), overlapped all-reduces on a communication stream of their own, and a watchdog that
 * aborts the communicator when a collective outlives the timeout.
 *
 * Why a watchdog: the host never waits for a collective (it is queued), so a rank whose peer
 * never joins would hang in its next synchronisation, inside the device. The watchdog thread
 * polls an event recorded behind each eager collective; past the deadline it calls
 * ncclCommAbort, which makes the stuck kernels return, and the next call on the communicator
 * reports FLX_ERR_TIMEOUT naming the collective. */
#ifdef FLX_WITH_NCCL
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>
#include <time.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "cuda_internal.h"
#include "../dist/dist.h"
#include "../dist/rendezvous.h"

typedef struct nccl_watch {
    cudaEvent_t done;
    double deadline;
    flx_coll_args a; /* for the message */
} nccl_watch;

typedef struct nccl_state {
    ncclComm_t nc;
    cudaStream_t side; /* overlapped collectives (created on first use) */
    flx_comm *c;
    int device;
    void *cu_ctx;
    /* watchdog */
    mtx_t lock;
    thrd_t dog;
    bool dog_running;
    atomic_bool stop;
    atomic_bool aborted;  /* the watchdog aborted nc: msg says why */
    char msg[512];
    nccl_watch *watch;
    int32_t n_watch, cap_watch;
} nccl_state;

static nccl_state *st_of(flx_comm *c) { return (nccl_state *)c->state; }

static flx_status nccl_fail(ncclResult_t r, const char *what) {
    return flx_set_error(FLX_ERR_BACKEND, "nccl: %s failed: %s", what, ncclGetErrorString(r));
}

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A nonblocking communicator's calls may return ncclInProgress: the call completes in the
 * background, and nothing else may be called until the communicator's state leaves that value.
 * Waits for it at most until deadline; on a timeout the communicator is aborted. */
static ncclResult_t settle(nccl_state *st, ncclResult_t r, double deadline, bool *timed_out) {
    ncclComm_t nc = st->nc;
    *timed_out = false;
    while (r == ncclInProgress) {
        if (flx_comm_now() > deadline) {
            *timed_out = true;
            ncclCommAbort(nc);
            atomic_store(&st->aborted, true);
            return ncclInProgress;
        }
        pause_ms(1);
        if (ncclCommGetAsyncError(nc, &r) != ncclSuccess) return ncclInternalError;
    }
    return r;
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

/* ---- the watchdog ---- */
static int watchdog(void *arg) {
    nccl_state *st = (nccl_state *)arg;
    flx_cuda_guard g;
    bool entered = flx_cuda_enter_device(st->device, st->cu_ctx, &g) == cudaSuccess;
    while (!atomic_load(&st->stop) && !atomic_load(&st->aborted)) {
        mtx_lock(&st->lock);
        double now = flx_comm_now();
        for (int32_t i = 0; i < st->n_watch;) {
            cudaError_t q = cudaEventQuery(st->watch[i].done);
            if (q == cudaSuccess) {
                cudaEventDestroy(st->watch[i].done);
                st->watch[i] = st->watch[--st->n_watch];
                continue;
            }
            if (q != cudaErrorNotReady) (void)cudaGetLastError();
            ncclResult_t ar = ncclSuccess;
            ncclCommGetAsyncError(st->nc, &ar);
            bool late = now > st->watch[i].deadline;
            if (late || (ar != ncclSuccess && ar != ncclInProgress)) {
                const flx_coll_args *a = &st->watch[i].a;
                snprintf(st->msg, sizeof st->msg, "%s #%llu (%s, %lld elements) on rank %d of %d: %s; the "
                         "watchdog aborted the NCCL communicator", flx_coll_name(a->kind),
                         (unsigned long long)a->seq, flx_dtype_name(a->dtype), (long long)a->count,
                         (int)st->c->rank, (int)st->c->size,
                         late ? "not finished on the device within the timeout (a rank skipped it, "
                                "is stuck before it, or failed)"
                              : ncclGetErrorString(ar));
                ncclCommAbort(st->nc); /* the stuck kernels return; nc is unusable from here */
                atomic_store(&st->aborted, true);
                break;
            }
            i++;
        }
        mtx_unlock(&st->lock);
        pause_ms(20);
    }
    if (entered) flx_cuda_leave(&g);
    return 0;
}

/* Watches the work queued on stream so far (not while a plan is being captured: a replay is
 * not a collective of this call). */
static flx_status watch(flx_comm *c, const flx_coll_args *a, cudaStream_t stream) {
    nccl_state *st = st_of(c);
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) return FLX_OK;
    cudaEvent_t ev;
    cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(ev, stream);
    if (e != cudaSuccess) return flx_cuda_fail(e, "cudaEventRecord (collective watchdog)");
    mtx_lock(&st->lock);
    if (st->n_watch == st->cap_watch) {
        int32_t cap = st->cap_watch ? 2 * st->cap_watch : 32;
        nccl_watch *w = (nccl_watch *)realloc(st->watch, (size_t)cap * sizeof *w);
        if (w) {
            st->watch = w;
            st->cap_watch = cap;
        }
    }
    bool ok = st->n_watch < st->cap_watch;
    if (ok) st->watch[st->n_watch++] = (nccl_watch){ev, flx_comm_now() + c->timeout_s, *a};
    mtx_unlock(&st->lock);
    if (!ok) {
        cudaEventDestroy(ev);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", flx_coll_name(a->kind));
    }
    return FLX_OK;
}

/* The watchdog's verdict, turned into this thread's error and the communicator's failure. */
static flx_status check_aborted(flx_comm *c, const flx_coll_args *a) {
    nccl_state *st = st_of(c);
    if (!atomic_load(&st->aborted)) return FLX_OK;
    c->failed = true;
    snprintf(c->failure, sizeof c->failure, "%.*s", (int)sizeof c->failure - 1, st->msg);
    return flx_set_error(FLX_ERR_TIMEOUT, "%s: an earlier collective failed: %s; destroy the "
                         "communicator on every rank", flx_coll_name(a->kind), st->msg);
}

/* ---- collectives ---- */
static ncclResult_t enqueue(const flx_comm *c, const flx_coll_args *a, const void *send, void *recv,
                            cudaStream_t s) {
    ncclComm_t nc = st_of((flx_comm *)c)->nc;
    size_t n = (size_t)a->count;
    ncclDataType_t dt = nccl_dtype(a->dtype);
    switch (a->kind) {
    case FLX_COLL_ALL_REDUCE: return ncclAllReduce(send, recv, n, dt, nccl_op(a->op), nc, s);
    case FLX_COLL_BROADCAST: return ncclBroadcast(send, recv, n, dt, a->root, nc, s);
    case FLX_COLL_ALL_GATHER: return ncclAllGather(send, recv, n, dt, nc, s);
    case FLX_COLL_REDUCE_SCATTER: return ncclReduceScatter(send, recv, n, dt, nccl_op(a->op), nc, s);
    }
    return ncclInvalidArgument;
}

/* Enqueues on stream s and lets the call settle (bounded by the timeout). */
static flx_status issue(flx_comm *c, const flx_coll_args *a, const void *send, void *recv, cudaStream_t s) {
    nccl_state *st = st_of(c);
    bool late = false;
    ncclResult_t r = settle(st, enqueue(c, a, send, recv, s), flx_comm_now() + c->timeout_s, &late);
    if (late) return flx_comm_timed_out(c, a, "NCCL could not enqueue it");
    if (r != ncclSuccess) return nccl_fail(r, flx_coll_name(a->kind));
    /* a peer that failed or a network error surfaces here on every rank instead of a silent hang */
    ncclResult_t ar = ncclSuccess;
    if (ncclCommGetAsyncError(st->nc, &ar) == ncclSuccess && ar != ncclSuccess && ar != ncclInProgress)
        return nccl_fail(ar, "communicator (asynchronous error)");
    return watch(c, a, s);
}

static flx_status nccl_run(flx_comm *c, const flx_coll_args *a) {
    flx_status s = check_aborted(c, a);
    if (s != FLX_OK) return s;
    flx_cuda_guard g; /* NCCL launches on the current device: make it the context's, then restore */
    s = flx_cuda_enter(c->ctx, &g);
    if (s != FLX_OK) return s;
    s = issue(c, a, a->send, a->recv, (cudaStream_t)flx_cuda_ctx_stream(c->ctx));
    flx_cuda_leave(&g);
    return s;
}

/* An overlapped collective: the send buffer copied into a staging buffer on the context's stream
 * (the runtime may free and reuse send right away, stream-ordered), the collective in place on
 * the communication stream after an event, and a second event the context's stream waits on. */
typedef struct nccl_op_rec {
    flx_coll_args a;
    void *stage;
    size_t out_bytes;
    cudaEvent_t ready, done;
} nccl_op_rec;

static flx_status nccl_start(flx_comm *c, const flx_coll_args *a, void **op) {
    flx_status s = check_aborted(c, a);
    if (s != FLX_OK) return s;
    if (a->kind != FLX_COLL_ALL_REDUCE)
        return flx_set_error(FLX_ERR_UNSUPPORTED, "%s: only all-reduce is overlapped", flx_coll_name(a->kind));
    nccl_state *st = st_of(c);
    nccl_op_rec *o = (nccl_op_rec *)calloc(1, sizeof *o);
    if (!o) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", flx_coll_name(a->kind));
    o->a = *a;
    o->out_bytes = (size_t)a->count * flx_dtype_size(a->dtype);
    flx_cuda_guard g;
    s = flx_cuda_enter(c->ctx, &g);
    if (s != FLX_OK) {
        free(o);
        return s;
    }
    cudaStream_t main = (cudaStream_t)flx_cuda_ctx_stream(c->ctx);
    cudaError_t e = cudaSuccess;
    if (!st->side) e = cudaStreamCreateWithFlags(&st->side, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&o->ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&o->done, cudaEventDisableTiming);
    if (e != cudaSuccess) s = flx_cuda_fail(e, "flx_comm_backward: stream or event creation");
    if (s == FLX_OK) {
        o->stage = c->ctx->be->alloc(c->ctx, o->out_bytes ? o->out_bytes : 1);
        if (!o->stage) s = flx_last_status();
    }
    if (s == FLX_OK && o->out_bytes) s = c->ctx->be->copy_d2d(c->ctx, o->stage, a->send, o->out_bytes);
    if (s == FLX_OK) {
        e = cudaEventRecord(o->ready, main);
        if (e == cudaSuccess) e = cudaStreamWaitEvent(st->side, o->ready, 0);
        if (e != cudaSuccess) s = flx_cuda_fail(e, "flx_comm_backward: ordering the communication stream");
    }
    bool issued = false;
    if (s == FLX_OK) {
        s = issue(c, a, o->stage, o->stage, st->side);
        issued = s == FLX_OK;
    }
    if (s == FLX_OK) {
        e = cudaEventRecord(o->done, st->side);
        if (e != cudaSuccess) s = flx_cuda_fail(e, "flx_comm_backward: cudaEventRecord");
    }
    flx_cuda_leave(&g);
    if (s != FLX_OK) {
        /* the stage is freed on the context's stream, unless the side stream may still use it
         * (the collective was queued, or its enqueue timed out): then it is left to leak */
        if (o->stage && !issued && !c->failed) c->ctx->be->free(c->ctx, o->stage);
        if (o->ready) cudaEventDestroy(o->ready);
        if (o->done) cudaEventDestroy(o->done);
        free(o);
        return s;
    }
    *op = o;
    return FLX_OK;
}

static flx_status nccl_wait(flx_comm *c, void *op, void *recv) {
    nccl_op_rec *o = (nccl_op_rec *)op;
    flx_cuda_guard g;
    flx_status s = flx_cuda_enter(c->ctx, &g);
    if (s == FLX_OK) {
        cudaError_t e = cudaStreamWaitEvent((cudaStream_t)flx_cuda_ctx_stream(c->ctx), o->done, 0);
        if (e != cudaSuccess) s = flx_cuda_fail(e, "flx_comm_backward: cudaStreamWaitEvent");
        if (s == FLX_OK && recv && o->out_bytes) s = c->ctx->be->copy_d2d(c->ctx, recv, o->stage, o->out_bytes);
        if (s == FLX_OK) c->ctx->be->free(c->ctx, o->stage); /* ordered after the collective */
        flx_cuda_leave(&g);
    }
    cudaEventDestroy(o->ready);
    cudaEventDestroy(o->done);
    free(o);
    return s;
}

static void nccl_destroy(flx_comm *c) {
    nccl_state *st = st_of(c);
    if (!st) return;
    if (st->dog_running) {
        atomic_store(&st->stop, true);
        thrd_join(st->dog, NULL);
    }
    flx_cuda_guard g;
    bool entered = flx_cuda_enter(c->ctx, &g) == FLX_OK;
    for (int32_t i = 0; i < st->n_watch; i++) cudaEventDestroy(st->watch[i].done);
    /* a communicator whose peers are gone cannot be destroyed collectively: abort it */
    if (st->nc && !atomic_load(&st->aborted)) {
        if (c->failed) ncclCommAbort(st->nc);
        else ncclCommDestroy(st->nc);
    }
    if (st->side) cudaStreamDestroy(st->side);
    if (entered) flx_cuda_leave(&g);
    mtx_destroy(&st->lock);
    free(st->watch);
    free(st);
    c->state = NULL;
}

static const flx_comm_impl nccl_impl = {"nccl", nccl_run, nccl_start, nccl_wait, nccl_destroy};

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
    int rc = flx_rendezvous_bytes(id, sizeof *id, c->rank, c->size, addr ? addr : "127.0.0.1",
                                  port ? port : "29500", c->timeout_s, err, sizeof err);
    if (rc != 0)
        return flx_set_error(rc == FLX_RENDEZVOUS_TIMEOUT ? FLX_ERR_TIMEOUT : FLX_ERR_BACKEND,
                             "flx_comm_create: rendezvous for NCCL's id failed: %s", err);
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
    nccl_state *st = (nccl_state *)calloc(1, sizeof *st);
    if (!st || mtx_init(&st->lock, mtx_plain) != thrd_success) {
        free(st);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_comm_create: out of host memory");
    }
    cuda_state *cs = flx_cuda_st(c->ctx);
    st->c = c;
    st->device = cs->device;
    st->cu_ctx = cs->cu_ctx;
    atomic_init(&st->stop, false);
    atomic_init(&st->aborted, false);
    flx_cuda_guard g; /* NCCL binds the communicator to the current device: restore it after */
    s = flx_cuda_enter(c->ctx, &g);
    if (s != FLX_OK) {
        mtx_destroy(&st->lock);
        free(st);
        return s;
    }
    /* nonblocking, so that set-up waiting on a missing rank is bounded by the timeout */
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    bool late = false;
    ncclResult_t r = ncclCommInitRankConfig(&st->nc, c->size, id, c->rank, &config);
    if (st->nc) r = settle(st, r, flx_comm_now() + c->timeout_s, &late);
    flx_cuda_leave(&g);
    if (late || r != ncclSuccess) {
        if (st->nc && !atomic_load(&st->aborted)) ncclCommAbort(st->nc);
        mtx_destroy(&st->lock);
        free(st);
        if (late)
            return flx_set_error(FLX_ERR_TIMEOUT, "flx_comm_create: NCCL's set-up did not finish within %g s "
                                 "on rank %d of %d (a rank did not join)", c->timeout_s, (int)c->rank,
                                 (int)c->size);
        return nccl_fail(r, "ncclCommInitRankConfig");
    }
    c->state = st;
    c->impl = &nccl_impl;
    if (thrd_create(&st->dog, watchdog, st) == thrd_success) st->dog_running = true;
    else return flx_set_error(FLX_ERR_BACKEND, "flx_comm_create: cannot start the NCCL watchdog thread");
    return FLX_OK;
}
#endif
