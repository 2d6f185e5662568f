/*
 * flx_kerr.h — the device error record: how a kernel (CPU reference or CUDA) reports a bad value
 * it met (an index out of range, a singular matrix) without stopping. defines: flx_kerr_record,
 * flx_kerr (a raise site: the record and the runtime op id that launched the kernel),
 * flx_kerr_raise.
 *
 * A context owns one record (host memory on the CPU, device memory on CUDA). Kernels keep running
 * after a raise; the runtime reads the record at the next synchronisation point, turns it into a
 * status and a message (flx_kerr_report, runtime/core/kerr.c) and zeroes it.
 *
 * Many threads of many kernels may raise between two synchronisation points, so the record is
 * written atomically: every raise ORs the bit of its kind into `kinds`; the first raise claims the
 * payload (a compare-and-swap on `claimed`) and only it writes the payload fields. Kernels on one
 * stream run in order, so the payload names the first kernel (in program order) that raised; on
 * the CPU kernels visit rows in ascending order, so it is also the first offending row there (on
 * CUDA, one of the offending rows of that kernel).
 */
#ifndef FLX_KERR_H
#define FLX_KERR_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error kinds: bit positions in flx_kerr_record.kinds. */
enum {
    FLX_KERR_NONE = 0,
    FLX_KERR_INDEX_RANGE = 1, /* an index or label outside [lo, hi): value, lo, hi, row       */
    FLX_KERR_SINGULAR = 2,    /* an exactly singular matrix: value = info (1-based zero pivot), row = matrix */
    FLX_KERR_EIGH_NOCONV = 3, /* the eigensolver did not converge: value = solver info, row = matrix */
    FLX_KERR_KIND_COUNT
};

typedef struct flx_kerr_record {
    uint32_t kinds;   /* bit (1u << kind) for every kind raised since the last read */
    uint32_t claimed; /* 0 until the first raise claims the payload below           */
    int32_t kind;     /* payload of the first raise                                  */
    int32_t op;       /* runtime op id (flx_op) of the node whose kernel raised     */
    int64_t value, lo, hi, row;
} flx_kerr_record;

/* A raise site, passed by value in kernel arguments. rec == NULL: nothing is recorded. */
typedef struct flx_kerr {
    flx_kerr_record *rec;
    int32_t op;
} flx_kerr;

#if defined(__CUDACC__)
#define FLX_KERR_FN static __host__ __device__ inline
#else
#define FLX_KERR_FN static inline
#endif

/* Records one bad value. Safe from any number of threads at once (CPU or GPU). */
FLX_KERR_FN void flx_kerr_raise(flx_kerr site, int32_t kind, int64_t value, int64_t lo, int64_t hi,
                                int64_t row) {
    flx_kerr_record *r = site.rec;
    if (!r) return;
#if defined(__CUDA_ARCH__)
    atomicOr(&r->kinds, 1u << kind);
    if (atomicCAS(&r->claimed, 0u, 1u) != 0u) return;
#else
    uint32_t expected = 0;
    __atomic_fetch_or(&r->kinds, 1u << kind, __ATOMIC_RELAXED);
    if (!__atomic_compare_exchange_n(&r->claimed, &expected, 1u, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_RELAXED))
        return;
#endif
    r->kind = kind;
    r->op = site.op;
    r->value = value;
    r->lo = lo;
    r->hi = hi;
    r->row = row;
}

#undef FLX_KERR_FN

#ifdef __cplusplus
}
#endif

#endif /* FLX_KERR_H */
