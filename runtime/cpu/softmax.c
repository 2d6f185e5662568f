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

static flx_status cpu_cross_entropy(flx_ctx *ctx, const flx_softmax_args *a) {
    const int64_t N = a->outer, C = a->n;
    for (int64_t r = 0; r < N; r++) {
        int64_t lab = ld_label(a->label_dtype, a->labels, r);
        bool ignored = lab == a->ignore_index;
        if (!ignored && (lab < 0 || lab >= C)) {
            flx_kerr_raise(a->err, FLX_KERR_INDEX_RANGE, lab, 0, C, r);
            ignored = true;
        }
        int64_t base = r * C;
        if (a->mode == FLX_SOFTMAX_CE_FWD) {
            if (ignored) {
                stf(a->dtype, a->out, r, 0.0);
                continue;
            }
            double m, sum;
            row_stats(a->dtype, a->x, base, C, 1, 1.0, &m, &sum);
            stf(a->dtype, a->out, r, m + log(sum) - ldf(a->dtype, a->x, base + lab));
        } else {
            if (ignored) {
                for (int64_t c = 0; c < C; c++) stf(a->dtype, a->out, base + c, 0.0);
                continue;
            }
            double m, sum, g = ldf(a->dtype, a->v, r);
            row_stats(a->dtype, a->x, base, C, 1, 1.0, &m, &sum);
            for (int64_t c = 0; c < C; c++) {
                double p = exp(ldf(a->dtype, a->x, base + c) - m) / sum;
                stf(a->dtype, a->out, base + c, (p - (c == lab ? 1.0 : 0.0)) * g);
            }
        }
    }
    return FLX_OK;
}

flx_status flx_cpu_softmax(flx_ctx *ctx, const flx_softmax_args *a) {
    if (a->dtype != FLX_F32 && a->dtype != FLX_F64)
        return flx_set_error(FLX_ERR_DTYPE, "cpu softmax: dtype %s is not supported (f32, f64)",
                             flx_dtype_name(a->dtype));
    if (a->mode == FLX_SOFTMAX_CE_FWD || a->mode == FLX_SOFTMAX_CE_BWD) return cpu_cross_entropy(ctx, a);
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
                double lse = m + log(sum);
                for (int64_t j = 0; j < n; j++) {
                    int64_t k = base + j * inner;
                    double z = s * ldf(dt, a->x, k);
                    stf(dt, a->out, k, a->mode == FLX_SOFTMAX_FWD ? exp(z - m) / sum : z - lse);
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
