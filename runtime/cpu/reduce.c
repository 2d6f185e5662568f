/* reduce.c — CPU reduction kernels: sum, mean, max, min, logsumexp, var, argmax over any set of
 * axes, accumulated in double in a fixed order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_common.h"

/* ---- reduce ---------------------------------------------------------------------------------- */
/* Float fast path of SUM and VAR (CPU training speed). The reduced dimensions are merged
 * where contiguous (and size-1 ones dropped) and the innermost one runs as a plain loop; the
 * values are visited in the same row-major order and accumulated in double exactly as in the
 * general loop below, so the results are the same bits. */
static void reduce_sum_var_fast(const flx_reduce_args *ar, int64_t nk, int64_t nr) {
    int32_t nd = 0;
    int64_t shp[FLX_MAX_DIMS], str[FLX_MAX_DIMS];
    for (int32_t d = 0; d < ar->rdim; d++) {
        if (ar->rshape[d] == 1) continue;
        if (nd > 0 && str[nd - 1] == ar->rstride[d] * ar->rshape[d]) {
            shp[nd - 1] *= ar->rshape[d];
            str[nd - 1] = ar->rstride[d];
            continue;
        }
        shp[nd] = ar->rshape[d];
        str[nd] = ar->rstride[d];
        nd++;
    }
    if (nd == 0) {
        shp[0] = 1;
        str[0] = 0;
        nd = 1;
    }
    const int64_t len = shp[nd - 1], is = str[nd - 1];
    const bool f32 = ar->dtype == FLX_F32;
    const float *xf = (const float *)ar->x;
    const double *xd = (const double *)ar->x;
    /* acc += F(v) over the values of output k, in row-major order */
#define FLX_RED_PASS(F)                                                                  \
    do {                                                                                 \
        odo ro;                                                                          \
        odo_init(&ro, nd - 1, shp, 1, str, NULL, NULL);                                  \
        for (int64_t r0 = 0; r0 < nr; r0 += len, odo_next(&ro)) {                        \
            const int64_t o0 = base + ro.off[0];                                         \
            if (f32)                                                                     \
                for (int64_t j = 0; j < len; j++) {                                      \
                    double v = xf[o0 + j * is];                                          \
                    acc += F;                                                            \
                }                                                                        \
            else                                                                         \
                for (int64_t j = 0; j < len; j++) {                                      \
                    double v = xd[o0 + j * is];                                          \
                    acc += F;                                                            \
                }                                                                        \
        }                                                                                \
    } while (0)
    odo ko;
    odo_init(&ko, ar->kdim, ar->kshape, 1, ar->kstride, NULL, NULL);
    for (int64_t k = 0; k < nk; k++, odo_next(&ko)) {
        const int64_t base = ko.off[0];
        double acc = 0;
        if (ar->op == FLX_REDUCE_SUM) {
            FLX_RED_PASS(v);
            store(ar->dtype, ar->out, k, ar->param * acc);
        } else {
            FLX_RED_PASS(v);
            const double mean = acc / (double)nr;
            acc = 0;
            FLX_RED_PASS((v - mean) * (v - mean));
            store(ar->dtype, ar->out, k, acc / ((double)nr - ar->param));
        }
    }
#undef FLX_RED_PASS
}

flx_status flx_cpu_reduce(flx_ctx *ctx, const flx_reduce_args *ar) {
    (void)ctx;
    int64_t nk = flx_shape_numel(ar->kdim, ar->kshape);
    int64_t nr = flx_shape_numel(ar->rdim, ar->rshape);
    if ((ar->op == FLX_REDUCE_SUM || ar->op == FLX_REDUCE_VAR) &&
        (ar->dtype == FLX_F32 || ar->dtype == FLX_F64) && nr > 0) {
        reduce_sum_var_fast(ar, nk, nr);
        return FLX_OK;
    }
    odo ko;
    odo_init(&ko, ar->kdim, ar->kshape, 1, ar->kstride, NULL, NULL);
    for (int64_t k = 0; k < nk; k++, odo_next(&ko)) {
        int64_t base = ko.off[0];
        odo ro;
        double acc = 0, m = -INFINITY, mn = INFINITY;
        int64_t best = 0;
        if (ar->op == FLX_REDUCE_MAX || ar->op == FLX_REDUCE_LSE || ar->op == FLX_REDUCE_ARGMAX) {
            odo_init(&ro, ar->rdim, ar->rshape, 1, ar->rstride, NULL, NULL);
            bool nan = false;
            for (int64_t r = 0; r < nr; r++, odo_next(&ro)) {
                double v = load(ar->dtype, ar->x, base + ro.off[0]);
                if (isnan(v)) {
                    if (!nan) best = r;
                    nan = true;
                }
                if (!nan && (v > m || r == 0)) {
                    m = v;
                    best = r;
                }
            }
            if (nan) m = NAN;
        }
        if (ar->op == FLX_REDUCE_MIN) {
            odo_init(&ro, ar->rdim, ar->rshape, 1, ar->rstride, NULL, NULL);
            bool nan = false;
            for (int64_t r = 0; r < nr; r++, odo_next(&ro)) {
                double v = load(ar->dtype, ar->x, base + ro.off[0]);
                nan = nan || isnan(v);
                if (v < mn) mn = v;
            }
            if (nan) mn = NAN;
        }
        double mean = 0;
        if (ar->op == FLX_REDUCE_VAR) {
            odo_init(&ro, ar->rdim, ar->rshape, 1, ar->rstride, NULL, NULL);
            for (int64_t r = 0; r < nr; r++, odo_next(&ro)) mean += load(ar->dtype, ar->x, base + ro.off[0]);
            mean /= (double)nr;
        }
        if (ar->op == FLX_REDUCE_SUM || ar->op == FLX_REDUCE_VAR || ar->op == FLX_REDUCE_LSE) {
            odo_init(&ro, ar->rdim, ar->rshape, 1, ar->rstride, NULL, NULL);
            double shift = isfinite(m) ? m : 0;
            for (int64_t r = 0; r < nr; r++, odo_next(&ro)) {
                double v = load(ar->dtype, ar->x, base + ro.off[0]);
                if (ar->op == FLX_REDUCE_SUM) acc += v;
                else if (ar->op == FLX_REDUCE_VAR) acc += (v - mean) * (v - mean);
                else acc += exp(v - shift);
            }
            if (ar->op == FLX_REDUCE_LSE) acc = isnan(m) ? NAN : (m == -INFINITY ? -INFINITY : shift + log(acc));
        }
        switch (ar->op) {
        case FLX_REDUCE_SUM: store(ar->dtype, ar->out, k, ar->param * acc); break;
        case FLX_REDUCE_VAR: store(ar->dtype, ar->out, k, acc / ((double)nr - ar->param)); break;
        case FLX_REDUCE_LSE: store(ar->dtype, ar->out, k, acc); break;
        case FLX_REDUCE_MAX: store(ar->dtype, ar->out, k, m); break;
        case FLX_REDUCE_MIN: store(ar->dtype, ar->out, k, mn); break;
        case FLX_REDUCE_ARGMAX: ((int64_t *)ar->out)[k] = best; break;
        default: return flx_set_error(FLX_ERR_UNSUPPORTED, "cpu: unknown reduce op %d", (int)ar->op);
        }
    }
    return FLX_OK;
}

