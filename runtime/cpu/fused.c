/* fused.c — the CPU reference interpreter of fused elementwise programs (the program
 * format is in kernels/flx_kernels.h, planning in runtime/core/fuse.c).
 *
 * Elements are processed in blocks so each instruction is decoded once per block. Every value is
 * computed in double and rounded to the program's dtype after each instruction, exactly as the
 * unfused CPU kernels (runtime/cpu/backend.c) store each op's result: fused and unfused CPU
 * results are bit-identical, which the tests assert. */
#include <math.h>
#include <string.h>

#include "cpu_common.h"
#include "flx_unary_ops.h"

#define BLOCK 512

static inline double rnd(flx_dtype dt, double v) {
    if (dt == FLX_F32) return (double)(float)v;
    if (dt == FLX_F16) return flx_f16_to_double(flx_f16_from_double(v));
    if (dt == FLX_BF16) return flx_bf16_to_double(flx_bf16_from_double(v));
    return v;
}

/* Input k at elements base .. base + m - 1, one loop per layout and element type: contiguous
 * inputs read straight through, broadcast (strided) ones step an odometer from the offset of the
 * first element (a bias broadcast over rows reads at i mod cols without a division per element). */
#define FLX_LOAD_LOOPS(TYPE, GET)                                                              \
    do {                                                                                        \
        const TYPE *src = (const TYPE *)a->in[k];                                               \
        if (a->in_kind[k] == FLX_FUSED_IN_CONTIG) {                                             \
            for (int64_t e = 0; e < m; e++) dst[e] = GET(base + e);                             \
        } else if (a->in_kind[k] == FLX_FUSED_IN_SCALAR) {                                      \
            for (int64_t e = 0; e < m; e++) dst[e] = GET(0);                                    \
        } else {                                                                                \
            for (int64_t e = 0; e < m; e++) {                                                   \
                dst[e] = GET(off);                                                              \
                for (int32_t d = nd - 1; d >= 0; d--) {                                         \
                    off += st[d];                                                               \
                    if (++idx[d] < a->shape[d]) break;                                          \
                    off -= st[d] * a->shape[d];                                                 \
                    idx[d] = 0;                                                                 \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    } while (0)

static void load_block(const flx_fused_args *a, int32_t k, int64_t base, int64_t m, double *dst) {
    const int32_t nd = a->ndim;
    const int64_t *st = a->in_strides[k];
    int64_t idx[FLX_MAX_DIMS] = {0}, off = 0;
    if (a->in_kind[k] == FLX_FUSED_IN_STRIDED) {
        int64_t i = base;
        for (int32_t d = nd - 1; d >= 0; d--) {
            idx[d] = i % a->shape[d];
            i /= a->shape[d];
            off += idx[d] * st[d];
        }
    }
#define FLX_GET_PLAIN(i) src[i]
#define FLX_GET_HALF(i) load(a->dtype, src, i)
    if (a->in_bool[k]) FLX_LOAD_LOOPS(uint8_t, FLX_GET_PLAIN);
    else if (a->dtype == FLX_F32) FLX_LOAD_LOOPS(float, FLX_GET_PLAIN);
    else if (a->dtype == FLX_F64) FLX_LOAD_LOOPS(double, FLX_GET_PLAIN);
    else FLX_LOAD_LOOPS(uint16_t, FLX_GET_HALF);
#undef FLX_GET_PLAIN
#undef FLX_GET_HALF
}
#undef FLX_LOAD_LOOPS

/* One case of an instruction's block loop: y[e] = EXPR for each element e of the block, rounded
 * to the dtype; BIND declares the operands EXPR reads at element e. */
#define FLX_BLOCK_CASE(LABEL, BIND, EXPR)                                                     \
    case LABEL:                                                                               \
        for (int64_t e = 0; e < m; e++) {                                                     \
            BIND;                                                                             \
            y[e] = rnd(dt, (double)(EXPR));                                                   \
        }                                                                                     \
        break;

static flx_status run_unary(int32_t op, double a, double b, const double *xs, double *y, int64_t m,
                            flx_dtype dt) {
    typedef double T;
    (void)a;
    (void)b;
    switch (op) {
#define FLX_X_CASE(NAME, FN, KIND, EXPR, DERIV) FLX_BLOCK_CASE(FLX_UNARY_##NAME, T x = xs[e], EXPR)
        FLX_UNARY_OPS(FLX_X_CASE)
#undef FLX_X_CASE
    default: return flx_set_error(FLX_ERR_UNSUPPORTED, "cpu fused: unknown unary op %d", (int)op);
    }
    return FLX_OK;
}

static flx_status run_binary(int32_t op, const double *xa, const double *xb, double *y, int64_t m,
                             flx_dtype dt) {
    switch (op) {
#define FLX_X_CASE(NAME, FN, EXPR) FLX_BLOCK_CASE(FLX_BINARY_##NAME, double a = xa[e]; double b = xb[e], EXPR)
        FLX_BINARY_ARITH_OPS(FLX_X_CASE)
#undef FLX_X_CASE
    default: return flx_set_error(FLX_ERR_UNSUPPORTED, "cpu fused: binary op %d", (int)op);
    }
    return FLX_OK;
}
#undef FLX_BLOCK_CASE

flx_status flx_cpu_fused(flx_ctx *ctx, const flx_fused_args *a) {
    (void)ctx;
    if (a->n_instr < 1 || a->n_instr > FLX_FUSED_MAX_INSTR || a->n_in > FLX_FUSED_MAX_IN ||
        !flx_dtype_is_float(a->dtype))
        return flx_set_error(FLX_ERR_STATE, "cpu fused: malformed program (internal error)");
    double slot[FLX_FUSED_MAX_SLOTS][BLOCK];
    int32_t out_slot = a->instr[a->n_instr - 1].dst;
    for (int64_t base = 0; base < a->n; base += BLOCK) {
        int64_t m = a->n - base < BLOCK ? a->n - base : BLOCK;
        for (int32_t pc = 0; pc < a->n_instr; pc++) {
            const flx_fused_instr *I = &a->instr[pc];
            flx_status s = FLX_OK;
            /* Results go straight to the destination slot: element e of an operand is read
             * before element e of the result is written, so dst may be an operand's slot. */
            double *y = slot[I->dst];
            switch (I->kind) {
            case FLX_FUSED_LOAD: load_block(a, I->op, base, m, y); break;
            case FLX_FUSED_UNARY: s = run_unary(I->op, I->a, I->b, slot[I->s0], y, m, a->dtype); break;
            case FLX_FUSED_BINARY: s = run_binary(I->op, slot[I->s0], slot[I->s1], y, m, a->dtype); break;
            case FLX_FUSED_WHERE:
                for (int64_t e = 0; e < m; e++) y[e] = slot[I->s0][e] != 0 ? slot[I->s1][e] : slot[I->s2][e];
                break;
            default: s = flx_set_error(FLX_ERR_STATE, "cpu fused: bad instruction %d", (int)I->kind);
            }
            if (s != FLX_OK) return s;
        }
        if (a->dtype == FLX_F32)
            for (int64_t e = 0; e < m; e++) ((float *)a->out)[base + e] = (float)slot[out_slot][e];
        else if (a->dtype == FLX_F64)
            memcpy((double *)a->out + base, slot[out_slot], (size_t)m * sizeof(double));
        else /* the slot holds values already rounded to the dtype: store is exact */
            for (int64_t e = 0; e < m; e++) store(a->dtype, a->out, base + e, slot[out_slot][e]);
    }
    return FLX_OK;
}
