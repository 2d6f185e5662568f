/* comm.c — communicators: the registry that lets collective nodes outlive a destroyed
 * communicator safely, the world of one process, and the MPI transport for CPU contexts. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <threads.h>

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

/* ---- the world of one process: every collective is a copy ---- */
static flx_status self_run(flx_comm *c, const flx_coll_args *a) {
    size_t nbytes = (size_t)a->count * flx_dtype_size(a->dtype);
    if (nbytes == 0 || a->recv == a->send) return FLX_OK;
    return c->ctx->be->copy_d2d(c->ctx, a->recv, a->send, nbytes);
}

static void self_destroy(flx_comm *c) { (void)c; }

static const flx_comm_impl self_impl = {"self", self_run, self_destroy};

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

static flx_status mpi_run(flx_comm *c, const flx_coll_args *a) {
    if (a->count > INT_MAX)
        return flx_set_error(FLX_ERR_UNSUPPORTED, "mpi: a collective of %lld elements exceeds MPI's "
                             "int count", (long long)a->count);
    int n = (int)a->count, rc = MPI_SUCCESS;
    MPI_Datatype dt = mpi_dtype(a->dtype);
    size_t es = flx_dtype_size(a->dtype);
    switch (a->kind) {
    case FLX_COLL_ALL_REDUCE:
        rc = MPI_Allreduce(a->send, a->recv, n, dt, mpi_op(a->op), MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Allreduce");
        if (a->op == FLX_COMM_AVG) divide(a->dtype, a->recv, a->count, c->size);
        return FLX_OK;
    case FLX_COLL_BROADCAST:
        if (c->rank == a->root && n) memcpy(a->recv, a->send, (size_t)n * es);
        rc = MPI_Bcast(a->recv, n, dt, a->root, MPI_COMM_WORLD);
        return rc == MPI_SUCCESS ? FLX_OK : mpi_error(rc, "MPI_Bcast");
    case FLX_COLL_ALL_GATHER:
        rc = MPI_Allgather(a->send, n, dt, a->recv, n, dt, MPI_COMM_WORLD);
        return rc == MPI_SUCCESS ? FLX_OK : mpi_error(rc, "MPI_Allgather");
    case FLX_COLL_REDUCE_SCATTER:
        rc = MPI_Reduce_scatter_block(a->send, a->recv, n, dt, mpi_op(a->op), MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Reduce_scatter_block");
        if (a->op == FLX_COMM_AVG) divide(a->dtype, a->recv, a->count, c->size);
        return FLX_OK;
    }
    return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "mpi: unknown collective %d", (int)a->kind);
}

static void mpi_destroy(flx_comm *c) { (void)c; /* MPI_COMM_WORLD is not ours to free */ }

static const flx_comm_impl mpi_impl = {"mpi", mpi_run, mpi_destroy};
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
            c->impl = &mpi_impl;
            return FLX_OK;
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
    flx_comm *c = (flx_comm *)calloc(1, sizeof *c);
    if (!c) {
        flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_comm_create: out of host memory");
        return NULL;
    }
    c->ctx = ctx;
    c->rank = 0;
    c->size = 1;
    c->impl = &self_impl;
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
    comm->impl->destroy(comm);
    free(comm);
    return FLX_OK;
}

int32_t flx_comm_rank(const flx_comm *comm) { return comm ? comm->rank : -1; }
int32_t flx_comm_size(const flx_comm *comm) { return comm ? comm->size : -1; }
