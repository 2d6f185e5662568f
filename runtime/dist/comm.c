/* comm.c — communicators: the registry that lets collective nodes outlive a destroyed
 * communicator safely, timeouts, the world of one process, and the MPI transport for CPU
 * contexts. */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>
#include <time.h>

#include "dist.h"

#ifdef FLX_WITH_MPI
#include <mpi.h>
#endif

/* ---- registry: ids are never reused, so a node holding a stale id finds nothing ---- */
#define FLX_MAX_COMMS 64
static mtx_t g_lock;
static once_flag g_once = ONCE_FLAG_INIT;
static flx_comm *g_comms[FLX_MAX_COMMS];
static uint64_t g_next_id = 1;

static void registry_init(void) { mtx_init(&g_lock, mtx_plain); }

flx_comm *flx_comm_lookup(uint64_t id) {
    call_once(&g_once, registry_init);
    flx_comm *c = NULL;
    mtx_lock(&g_lock);
    for (int i = 0; i < FLX_MAX_COMMS; i++)
        if (g_comms[i] && g_comms[i]->id == id) c = g_comms[i];
    mtx_unlock(&g_lock);
    return c;
}

static bool registry_add(flx_comm *c) {
    call_once(&g_once, registry_init);
    bool ok = false;
    mtx_lock(&g_lock);
    for (int i = 0; i < FLX_MAX_COMMS && !ok; i++)
        if (!g_comms[i]) {
            c->id = g_next_id++;
            g_comms[i] = c;
            ok = true;
        }
    mtx_unlock(&g_lock);
    return ok;
}

static void registry_remove(flx_comm *c) {
    call_once(&g_once, registry_init);
    mtx_lock(&g_lock);
    for (int i = 0; i < FLX_MAX_COMMS; i++)
        if (g_comms[i] == c) g_comms[i] = NULL;
    mtx_unlock(&g_lock);
}

/* ---- timeouts ---- */
double flx_comm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double flx_comm_default_timeout(void) {
    const char *t = getenv("FLX_COMM_TIMEOUT_S");
    char *end = NULL;
    double v = t ? strtod(t, &end) : 0.0;
    return t && end != t && *end == '\0' && v > 0 && isfinite(v) ? v : 600.0;
}

flx_status flx_comm_timed_out(flx_comm *c, const flx_coll_args *a, const char *detail) {
    c->failed = true;
    snprintf(c->failure, sizeof c->failure, "%s #%llu timed out on rank %d after %g s",
             flx_coll_name(a->kind), (unsigned long long)a->seq, (int)c->rank, c->timeout_s);
    return flx_set_error(FLX_ERR_TIMEOUT, "%s: collective #%llu of this communicator (%s, %lld elements) "
                         "waited %g s on rank %d of %d without the other ranks (%s): a rank skipped "
                         "this collective, is stuck before it, or failed. The communicator is failed "
                         "now: destroy it on every rank", flx_coll_name(a->kind),
                         (unsigned long long)a->seq, flx_dtype_name(a->dtype), (long long)a->count,
                         c->timeout_s, (int)c->rank, (int)c->size, detail);
}

flx_status flx_comm_set_timeout(flx_comm *comm, double seconds) {
    if (!comm) return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_comm_set_timeout: comm is NULL");
    if (!(seconds > 0) || !isfinite(seconds))
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_comm_set_timeout: seconds must be finite "
                             "and > 0, got %g", seconds);
    comm->timeout_s = seconds;
    return FLX_OK;
}

flx_status flx_comm_get_timeout(const flx_comm *comm, double *seconds) {
    if (!comm || !seconds)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_comm_get_timeout: %s is NULL",
                             comm ? "seconds" : "comm");
    *seconds = comm->timeout_s;
    return FLX_OK;
}

flx_status flx_comm_get_stats(const flx_comm *comm, flx_comm_stats *out) {
    if (!comm || !out)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_comm_get_stats: %s is NULL",
                             comm ? "out" : "comm");
    *out = comm->stats;
    return FLX_OK;
}

/* ---- the world of one process: every collective is a copy ---- */
static size_t coll_bytes(const flx_coll_args *a) { return (size_t)a->count * flx_dtype_size(a->dtype); }

static flx_status self_run(flx_comm *c, const flx_coll_args *a) {
    size_t nbytes = coll_bytes(a);
    if (nbytes == 0 || a->recv == a->send) return FLX_OK;
    return c->ctx->be->copy_d2d(c->ctx, a->recv, a->send, nbytes);
}

/* A started collective of one rank: the value, copied (the sender's buffer may go at once). */
typedef struct self_op {
    void *copy;
    size_t nbytes;
} self_op;

static flx_status self_start(flx_comm *c, const flx_coll_args *a, void **op) {
    self_op *o = (self_op *)flx_host_calloc(1, sizeof *o, flx_coll_name(a->kind));
    if (!o) return flx_last_status();
    o->nbytes = coll_bytes(a);
    if (o->nbytes) {
        o->copy = c->ctx->be->alloc(c->ctx, o->nbytes);
        flx_status s = o->copy ? c->ctx->be->copy_d2d(c->ctx, o->copy, a->send, o->nbytes) : flx_last_status();
        if (s != FLX_OK) {
            if (o->copy) c->ctx->be->free(c->ctx, o->copy);
            free(o);
            return s;
        }
    }
    *op = o;
    return FLX_OK;
}

static flx_status self_wait(flx_comm *c, void *op, void *recv) {
    self_op *o = (self_op *)op;
    flx_status s = o->nbytes && recv ? c->ctx->be->copy_d2d(c->ctx, recv, o->copy, o->nbytes) : FLX_OK;
    if (o->copy) c->ctx->be->free(c->ctx, o->copy);
    free(o);
    return s;
}

static void self_destroy(flx_comm *c) { (void)c; }

static const flx_comm_impl self_impl = {"self", self_run, self_start, self_wait, self_destroy};

/* ---- MPI (CPU contexts) ---- */
#ifdef FLX_WITH_MPI
static bool g_mpi_ours; /* fluxion initialised MPI, so it finalises it at exit */

static void mpi_finalize_at_exit(void) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

static flx_status mpi_error(int rc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", rc);
    return flx_set_error(FLX_ERR_BACKEND, "mpi: %s failed: %s", what, msg);
}

flx_status flx_mpi_world(flx_comm *c) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (fin) return flx_set_error(FLX_ERR_STATE, "flx_comm_create: MPI was already finalised");
    if (!init) {
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) return flx_set_error(FLX_ERR_BACKEND, "flx_comm_create: MPI_Init_thread failed (%d)", rc);
        g_mpi_ours = true;
        atexit(mpi_finalize_at_exit);
    }
    /* errors come back as codes (reported as FLX_ERR_BACKEND), never MPI's default abort */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    c->rank = rank;
    c->size = size;
    return FLX_OK;
}

flx_status flx_mpi_bcast_bytes(void *buf, int32_t nbytes, int32_t root) {
    int rc = MPI_Bcast(buf, nbytes, MPI_BYTE, root, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? FLX_OK : mpi_error(rc, "MPI_Bcast");
}

static MPI_Datatype mpi_dtype(flx_dtype dt) {
    switch (dt) {
    case FLX_F32: return MPI_FLOAT;
    case FLX_F64: return MPI_DOUBLE;
    case FLX_I32: return MPI_INT32_T;
    case FLX_I64: return MPI_INT64_T;
    default: return MPI_DATATYPE_NULL;
    }
}

static MPI_Op mpi_op(flx_comm_op op) {
    switch (op) {
    case FLX_COMM_MAX: return MPI_MAX;
    case FLX_COMM_MIN: return MPI_MIN;
    default: return MPI_SUM; /* AVG: the sum, divided below */
    }
}

static void divide(flx_dtype dt, void *p, int64_t n, int32_t size) {
    if (dt == FLX_F32)
        for (int64_t i = 0; i < n; i++) ((float *)p)[i] = (float)((double)((float *)p)[i] / size);
    else if (dt == FLX_F64)
        for (int64_t i = 0; i < n; i++) ((double *)p)[i] /= size;
}

/* A collective in flight. It works in place in its own staging buffer, never in the runtime's
 * buffers: after a timeout the request can be neither cancelled nor completed (collectives have
 * no MPI_Cancel), so the staging buffer is abandoned to it and a rank that arrives late writes
 * into memory nobody else uses. */
typedef struct mpi_op_rec {
    MPI_Request req;
    flx_coll_args a;  /* send and recv unused */
    void *stage;      /* count * size elements for all-gather and reduce-scatter, else count */
    size_t out_off;   /* where the result starts in stage, in bytes */
    size_t out_bytes; /* the result's size */
} mpi_op_rec;

static MPI_Comm mpi_comm_of(const flx_comm *c) { return *(const MPI_Comm *)c->state; }

static flx_status mpi_start(flx_comm *c, const flx_coll_args *a, void **op) {
    const char *name = flx_coll_name(a->kind);
    int64_t total = a->kind == FLX_COLL_ALL_GATHER || a->kind == FLX_COLL_REDUCE_SCATTER
                        ? a->count * c->size : a->count;
    if (total > INT_MAX)
        return flx_set_error(FLX_ERR_UNSUPPORTED, "mpi: %s of %lld elements exceeds MPI's int count",
                             name, (long long)total);
    size_t es = flx_dtype_size(a->dtype);
    mpi_op_rec *o = (mpi_op_rec *)calloc(1, sizeof *o);
    if (o) o->stage = malloc(total ? (size_t)total * es : 1);
    if (!o || !o->stage) {
        if (o) free(o);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", name);
    }
    o->a = *a;
    o->a.send = o->a.recv = NULL;
    int n = (int)a->count, rc = MPI_SUCCESS;
    MPI_Datatype dt = mpi_dtype(a->dtype);
    MPI_Comm mc = mpi_comm_of(c);
    o->out_bytes = (size_t)(a->kind == FLX_COLL_ALL_GATHER ? total : a->count) * es;
    switch (a->kind) {
    case FLX_COLL_ALL_REDUCE:
        if (n) memcpy(o->stage, a->send, (size_t)n * es);
        rc = MPI_Iallreduce(MPI_IN_PLACE, o->stage, n, dt, mpi_op(a->op), mc, &o->req);
        break;
    case FLX_COLL_BROADCAST:
        if (c->rank == a->root && n) memcpy(o->stage, a->send, (size_t)n * es);
        rc = MPI_Ibcast(o->stage, n, dt, a->root, mc, &o->req);
        break;
    case FLX_COLL_ALL_GATHER: /* in place: this rank's block already at its position */
        if (n) memcpy((char *)o->stage + (size_t)c->rank * (size_t)n * es, a->send, (size_t)n * es);
        rc = MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, o->stage, n, dt, mc, &o->req);
        break;
    case FLX_COLL_REDUCE_SCATTER: /* in place: the result is the leading block */
        if (total) memcpy(o->stage, a->send, (size_t)total * es);
        rc = MPI_Ireduce_scatter_block(MPI_IN_PLACE, o->stage, n, dt, mpi_op(a->op), mc, &o->req);
        break;
    }
    if (rc != MPI_SUCCESS) {
        free(o->stage);
        free(o);
        return mpi_error(rc, name);
    }
    *op = o;
    return FLX_OK;
}

/* Tests the request until it completes or the communicator's timeout runs out: spinning for the
 * first few microseconds (a collective whose peers are there completes fast), then sleeping in
 * growing steps up to a millisecond so that a long wait does not burn a core. */
static flx_status mpi_wait(flx_comm *c, void *op, void *recv) {
    mpi_op_rec *o = (mpi_op_rec *)op;
    double deadline = flx_comm_now() + c->timeout_s;
    long pause_ns = 0;
    for (int spins = 0;; spins++) {
        int done = 0;
        int rc = MPI_Test(&o->req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            flx_status s = mpi_error(rc, flx_coll_name(o->a.kind));
            c->failed = true;
            snprintf(c->failure, sizeof c->failure, "%s", flx_last_error());
            return s; /* the request is abandoned with its staging buffer */
        }
        if (done) break;
        if (flx_comm_now() > deadline) {
            flx_status s = flx_comm_timed_out(c, &o->a, "MPI request still pending");
            free(o); /* o->stage stays with the abandoned request */
            return s;
        }
        if (spins > 200) {
            pause_ns = pause_ns ? (pause_ns * 2 > 1000000 ? 1000000 : pause_ns * 2) : 2000;
            struct timespec ts = {0, pause_ns};
            nanosleep(&ts, NULL);
        }
    }
    if (o->out_bytes && recv) memcpy(recv, (char *)o->stage + o->out_off, o->out_bytes);
    if (o->a.op == FLX_COMM_AVG && recv) divide(o->a.dtype, recv, (int64_t)(o->out_bytes / flx_dtype_size(o->a.dtype)), c->size);
    free(o->stage);
    free(o);
    return FLX_OK;
}

static flx_status mpi_run(flx_comm *c, const flx_coll_args *a) {
    void *op = NULL;
    flx_status s = mpi_start(c, a, &op);
    return s == FLX_OK ? mpi_wait(c, op, a->recv) : s;
}

/* Each communicator is its own duplicate of MPI_COMM_WORLD: a collective abandoned on a failed
 * one cannot match a later collective of a new one. A failed communicator is not freed (its
 * abandoned request still refers to it). */
static void mpi_destroy(flx_comm *c) {
    if (!c->state) return;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin && !c->failed) MPI_Comm_free((MPI_Comm *)c->state);
    if (!c->failed) free(c->state);
    c->state = NULL;
}

static flx_status mpi_comm_init(flx_comm *c) {
    MPI_Comm *mc = (MPI_Comm *)malloc(sizeof *mc);
    if (!mc) return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_comm_create: out of host memory");
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, mc);
    if (rc != MPI_SUCCESS) {
        free(mc);
        return mpi_error(rc, "MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(*mc, MPI_ERRORS_RETURN);
    c->state = mc;
    return FLX_OK;
}

static const flx_comm_impl mpi_impl = {"mpi", mpi_run, mpi_start, mpi_wait, mpi_destroy};
#endif

bool flx_has_mpi(void) {
#ifdef FLX_WITH_MPI
    return true;
#else
    return false;
#endif
}

bool flx_has_nccl(void) {
#ifdef FLX_WITH_NCCL
    return true;
#else
    return false;
#endif
}

/* A job started by an MPI launcher (mpirun, srun with PMI/PMIx). */
static bool launched_by_mpi(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return true;
    return false;
}

/* A torchrun-style job: RANK and WORLD_SIZE (MASTER_ADDR/MASTER_PORT for the rendezvous). */
static bool launched_torchrun_style(int32_t *rank, int32_t *size) {
    const char *r = getenv("RANK"), *w = getenv("WORLD_SIZE");
    if (!r || !w) return false;
    char *e1 = NULL, *e2 = NULL;
    long rv = strtol(r, &e1, 10), wv = strtol(w, &e2, 10);
    if (*e1 || *e2 || wv < 1 || wv > INT32_MAX || rv < 0 || rv >= wv) {
        *rank = -1; /* malformed: the caller reports it */
        return true;
    }
    *rank = (int32_t)rv;
    *size = (int32_t)wv;
    return true;
}

/* Picks the transport: an MPI launcher -> MPI (CPU) or NCCL with the id over MPI (CUDA); a
 * torchrun-style environment -> NCCL with the id over TCP (CUDA only); otherwise a world of one,
 * through NCCL on a CUDA context when NCCL is built (so one GPU exercises the real transport). */
static flx_status pick_transport(flx_comm *c) {
    bool cuda = c->ctx->device.type == FLX_DEVICE_CUDA;
    int32_t trank = 0, tsize = 1;
    if (launched_by_mpi()) {
#ifdef FLX_WITH_MPI
        flx_status s = flx_mpi_world(c);
        if (s != FLX_OK) return s;
        if (!cuda) {
            s = mpi_comm_init(c);
            if (s == FLX_OK) c->impl = &mpi_impl;
            return s;
        }
#ifdef FLX_WITH_NCCL
        return flx_nccl_init(c, FLX_ID_OVER_MPI);
#else
        return flx_set_error(FLX_ERR_UNSUPPORTED, "flx_comm_create: a CUDA context in an MPI job needs "
                             "NCCL, and this build has none");
#endif
#else
        return flx_set_error(FLX_ERR_UNSUPPORTED, "flx_comm_create: this process was started by an MPI "
                             "launcher, but fluxion was built without MPI (install libopenmpi-dev and "
                             "rebuild); refusing to run as a world of one process");
#endif
    }
    if (launched_torchrun_style(&trank, &tsize)) {
        if (trank < 0)
            return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_comm_create: RANK=%s and WORLD_SIZE=%s do "
                                 "not describe a rank of a job", getenv("RANK"), getenv("WORLD_SIZE"));
        c->rank = trank;
        c->size = tsize;
        if (tsize > 1 && !cuda)
            return flx_set_error(FLX_ERR_UNSUPPORTED, "flx_comm_create: CPU contexts talk through MPI: "
                                 "start the job with mpirun (RANK/WORLD_SIZE serve CUDA contexts only)");
#ifdef FLX_WITH_NCCL
        if (cuda) return flx_nccl_init(c, FLX_ID_OVER_TCP);
#endif
        if (tsize > 1)
            return flx_set_error(FLX_ERR_UNSUPPORTED, "flx_comm_create: a job of %d ranks on CUDA "
                                 "contexts needs NCCL, and this build has none", (int)tsize);
        return FLX_OK;
    }
#ifdef FLX_WITH_NCCL
    if (cuda) return flx_nccl_init(c, FLX_ID_LOCAL);
#endif
    return FLX_OK;
}

flx_comm *flx_comm_create(flx_ctx *ctx) {
    if (!ctx) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_comm_create: ctx is NULL");
        return NULL;
    }
    flx_comm *c = (flx_comm *)flx_host_calloc(1, sizeof *c, "flx_comm_create");
    if (!c) return NULL;
    c->ctx = ctx;
    c->rank = 0;
    c->size = 1;
    c->impl = &self_impl;
    c->timeout_s = flx_comm_default_timeout();
    flx_status s = pick_transport(c);
    if (s == FLX_OK && !registry_add(c))
        s = flx_set_error(FLX_ERR_STATE, "flx_comm_create: more than %d communicators alive", FLX_MAX_COMMS);
    if (s != FLX_OK) {
        c->impl->destroy(c);
        free(c);
        return NULL;
    }
    return c;
}

flx_status flx_comm_destroy(flx_comm *comm) {
    if (!comm) return FLX_OK;
    registry_remove(comm);
    /* collectives started and never waited for (an evaluation that failed midway) keep their
     * transport state: the communicator is left to them, as after a timeout */
    if (comm->n_inflight > 0) comm->failed = true;
    comm->impl->destroy(comm);
    free(comm->inflight);
    free(comm);
    return FLX_OK;
}

int32_t flx_comm_rank(const flx_comm *comm) { return comm ? comm->rank : -1; }
int32_t flx_comm_size(const flx_comm *comm) { return comm ? comm->size : -1; }
