/* kerr.c — the one mapping from a kernels' error record (kernels/flx_kerr.h) to a status and a
 * message, used by every backend at its synchronisation points. The message names the public
 * call that built the node whose kernel raised, the offending value and its bound, and lists the
 * other kinds raised in the same window (only the first raise carries a payload). */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* The public call behind a runtime op that can raise (several public calls build some ops). */
static const char *public_name(int32_t op) {
    switch (op) {
    case FLX_OP_INDEX_SELECT: return "flx_index_select/flx_gather/flx_embedding";
    case FLX_OP_INDEX_ADD: return "the gradient of flx_index_select/flx_gather/flx_embedding";
    case FLX_OP_CROSS_ENTROPY: return "flx_cross_entropy";
    case FLX_OP_CROSS_ENTROPY_BWD: return "the gradient of flx_cross_entropy";
    case FLX_OP_LU_SOLVE: return "flx_solve/flx_inv";
    case FLX_OP_EIGH: return "flx_eigh";
    default:
        if (op >= 0 && op < FLX_OP_COUNT) return flx_op_get((flx_op)op)->name;
        return "a kernel";
    }
}

static const char *kind_name(int32_t kind) {
    switch (kind) {
    case FLX_KERR_INDEX_RANGE: return "an index out of range";
    case FLX_KERR_SINGULAR: return "a singular matrix";
    case FLX_KERR_EIGH_NOCONV: return "an eigensolver that did not converge";
    default: return "an unknown device error";
    }
}

static bool is_label_op(int32_t op) {
    return op == FLX_OP_CROSS_ENTROPY || op == FLX_OP_CROSS_ENTROPY_BWD;
}

flx_status flx_kerr_report(const flx_kerr_record *r) {
    if (!r || r->kinds == 0) return FLX_OK;
    char also[256] = "";
    size_t used = 0;
    for (int32_t k = 1; k < 32; k++) {
        if (k == r->kind || !(r->kinds & (1u << k))) continue;
        int n = snprintf(also + used, sizeof also - used, "%s%s", used ? ", " : "; also raised in "
                         "the same window: ", kind_name(k));
        if (n < 0 || (size_t)n >= sizeof also - used) break;
        used += (size_t)n;
    }
    const char *who = public_name(r->op);
    long long value = (long long)r->value, lo = (long long)r->lo, hi = (long long)r->hi,
              row = (long long)r->row;
    switch (r->kind) {
    case FLX_KERR_INDEX_RANGE:
        if (is_label_op(r->op))
            return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                                 "%s: label %lld of row %lld is outside [%lld, %lld) (and is not "
                                 "ignore_index); the row was treated as ignored%s",
                                 who, value, row, lo, hi, also);
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                             "%s: index %lld at position %lld of the index tensor is outside "
                             "[%lld, %lld)%s%s",
                             who, value, row, lo, hi,
                             r->op == FLX_OP_INDEX_SELECT ? "; its output rows were set to 0" : "",
                             also);
    case FLX_KERR_SINGULAR:
        return flx_set_error(FLX_ERR_NUMERIC,
                             "%s: matrix %lld of the batch is singular (U(%lld, %lld) of its LU "
                             "factorisation is exactly 0); flx_solve_ex/flx_inv_ex report "
                             "per-matrix info%s",
                             who, row, value - 1, value - 1, also);
    case FLX_KERR_EIGH_NOCONV: {
        char info[48] = "";
        if (value != 0) snprintf(info, sizeof info, "solver info %lld; ", value);
        return flx_set_error(FLX_ERR_NUMERIC,
                             "%s: the eigensolver did not converge on matrix %lld of the batch "
                             "(%snon-finite input?)%s",
                             who, row, info, also);
    }
    default:
        return flx_set_error(FLX_ERR_BACKEND, "%s: a kernel raised unknown device error kind %d%s",
                             who, (int)r->kind, also);
    }
}
