/* softmax.c — CPU reference kernels of the softmax family (flx_softmax_args in
 * kernels/flx_kernels.h): softmax, log_softmax, their Jacobian products and cross-entropy.
 * Plain loops over rows of (outer, n, inner) views, math in double, rows visited in ascending
 * order, so the result is the obvious formula rounded once to the output dtype. This is the
 * oracle the CUDA kernels are tested against. */
#include <math.h>
#include <stdint.h>

#include "cpu_common.h"

/* Max and sum of exp(z - max) over one row of z = s x. -inf entries contribute 0; a row of -inf
 * keeps max = -inf and sum = 0, so the callers produce 0/0 = NaN there (documented). A NaN
 * anywhere makes the sum NaN. */
static void row_stats(flx_dtype dt, const void *x, int64_t base, int64_t n, int64_t stride,
                      double s, double *mx, double *sum) {
    double m = -INFINITY;
    bool nan = false;
    for (int64_t j = 0; j < n; j++) {
        double z = s * ldf(dt, x, base + j * stride);
        if (isnan(z)) nan = true;
        else if (z > m) m = z;
    }
    double acc = 0;
    if (m == -INFINITY) {
        acc = 0;
    } else {
        for (int64_t j = 0; j < n; j++) {
            double z = s * ldf(dt, x, base + j * stride);
            acc += (z == -INFINITY) ? 0.0 : exp(z - m); /* +inf - +inf = NaN: +inf rows give NaN */
        }
    }
    *mx = nan ? NAN : m;
    *sum = nan ? NAN : acc;
}

/* Label of row r, or -1 when the row is ignored (an out-of-range label also raises
 * FLX_KERR_INDEX_RANGE). */
static int64_t row_label(const flx_softmax_args *a, int64_t r) {
    int64_t lab = ld_label(a->label_dtype, a->labels, r);
    if (lab == a->ignore_index) return -1;
    if (lab < 0 || lab >= a->n) {
        flx_kerr_raise(a->err, FLX_KERR_INDEX_RANGE, lab, 0, a->n, r);
        return -1;
    }
    return lab;
}

static flx_status cpu_cross_entropy(const flx_softmax_args *a) {
    const int64_t N = a->outer, C = a->n;
    const flx_dtype dt = a->dtype, st = a->stat_dtype;
    double scale = a->scale;
    if (a->mode == FLX_SOFTMAX_CE_FWD) {
        int64_t count = 0;
        for (int64_t r = 0; r < N; r++) count += ld_label(a->label_dtype, a->labels, r) != a->ignore_index;
        stf(st, a->out, N, (double)count);
        /* the mean's gradient scale divides by the count as stored, as on the GPU */
        if (a->reduction == FLX_REDUCTION_MEAN) scale = scale / ldf(st, a->out, N);
    }
    for (int64_t r = 0; r < N; r++) {
        const int64_t lab = row_label(a, r), base = r * C;
        void *g = a->mode == FLX_SOFTMAX_CE_FWD ? a->grad : a->out;
        if (lab < 0) {
            if (a->mode == FLX_SOFTMAX_CE_FWD) stf(st, a->out, r, 0.0);
            if (g)
                for (int64_t c = 0; c < C; c++) stf(dt, g, base + c, 0.0);
            continue;
        }
        double m, sum;
        row_stats(dt, a->x, base, C, 1, 1.0, &m, &sum);
        /* log(sum) - (x_lab - m), never (m + log(sum)) - x_lab: the rounding of m + log(sum)
         * would cost |m| * eps of absolute error (all of it for |x| ~ 1e16). */
        if (a->mode == FLX_SOFTMAX_CE_FWD) stf(st, a->out, r, log(sum) - (ldf(dt, a->x, base + lab) - m));
        if (!g) continue;
        const double gs = a->mode == FLX_SOFTMAX_CE_FWD ? scale : ldf(dt, a->v, r);
        for (int64_t c = 0; c < C; c++) {
            double p = exp(ldf(dt, a->x, base + c) - m) / sum;
            stf(dt, g, base + c, (p - (c == lab ? 1.0 : 0.0)) * gs);
        }
    }
    return FLX_OK;
}

/* Reduction of a CE_FWD result (N + 1): the loss of the graph's cross-entropy node. */
static flx_status cpu_ce_finish(const flx_softmax_args *a) {
    const int64_t N = a->outer;
    const flx_dtype dt = a->dtype, st = a->stat_dtype;
    if (a->reduction == FLX_REDUCTION_NONE) {
        for (int64_t r = 0; r < N; r++) stf(dt, a->out, r, ldf(st, a->x, r));
        return FLX_OK;
    }
    const double count = ldf(st, a->x, N);
    if (a->reduction == FLX_SOFTMAX_CE_COUNT) {
        stf(dt, a->out, 0, count);
        return FLX_OK;
    }
    double total = 0;
    for (int64_t r = 0; r < N; r++) total += ldf(st, a->x, r);
    stf(dt, a->out, 0, a->reduction == FLX_REDUCTION_MEAN ? total / count : total);
    return FLX_OK;
}

flx_status flx_cpu_softmax(flx_ctx *ctx, const flx_softmax_args *a) {
    if (!flx_dtype_is_float(a->dtype))
        return flx_set_error(FLX_ERR_DTYPE, "cpu softmax: dtype %s is not a float dtype",
                             flx_dtype_name(a->dtype));
    (void)ctx;
    if (a->mode == FLX_SOFTMAX_CE_FWD || a->mode == FLX_SOFTMAX_CE_BWD) return cpu_cross_entropy(a);
    if (a->mode == FLX_SOFTMAX_CE_FINISH) return cpu_ce_finish(a);
    const int64_t n = a->n, inner = a->inner;
    const double s = a->scale;
    const flx_dtype dt = a->dtype;
    for (int64_t o = 0; o < a->outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            int64_t base = o * n * inner + i;
            switch ((flx_softmax_mode)a->mode) {
            case FLX_SOFTMAX_FWD:
            case FLX_SOFTMAX_LOG_FWD: {
                double m, sum;
                row_stats(dt, a->x, base, n, inner, s, &m, &sum);
                double ls = log(sum);
                for (int64_t j = 0; j < n; j++) {
                    int64_t k = base + j * inner;
                    double z = s * ldf(dt, a->x, k);
                    stf(dt, a->out, k, a->mode == FLX_SOFTMAX_FWD ? exp(z - m) / sum : (z - m) - ls);
                }
                break;
            }
            case FLX_SOFTMAX_BWD: {
                double dot = 0;
                for (int64_t j = 0; j < n; j++)
                    dot += ldf(dt, a->x, base + j * inner) * ldf(dt, a->v, base + j * inner);
                for (int64_t j = 0; j < n; j++) {
                    int64_t k = base + j * inner;
                    stf(dt, a->out, k, s * ldf(dt, a->x, k) * (ldf(dt, a->v, k) - dot));
                }
                break;
            }
            case FLX_SOFTMAX_LOG_VJP: {
                double sum = 0;
                for (int64_t j = 0; j < n; j++) sum += ldf(dt, a->v, base + j * inner);
                for (int64_t j = 0; j < n; j++) {
                    int64_t k = base + j * inner;
                    stf(dt, a->out, k, s * (ldf(dt, a->v, k) - exp(ldf(dt, a->x, k)) * sum));
                }
                break;
            }
            case FLX_SOFTMAX_LOG_JVP: {
                double dot = 0;
                for (int64_t j = 0; j < n; j++)
                    dot += exp(ldf(dt, a->x, base + j * inner)) * ldf(dt, a->v, base + j * inner);
                for (int64_t j = 0; j < n; j++) {
                    int64_t k = base + j * inner;
                    stf(dt, a->out, k, s * (ldf(dt, a->v, k) - dot));
                }
                break;
            }
            default:
                return flx_set_error(FLX_ERR_UNSUPPORTED, "cpu softmax: unknown mode %d", (int)a->mode);
            }
        }
    }
    return FLX_OK;
}
