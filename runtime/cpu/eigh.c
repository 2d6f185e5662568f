/* eigh.c — CPU reference of eigh: cyclic Jacobi in double on the symmetric part
 * of each matrix, eigenvalues sorted ascending, each eigenvector's first largest-magnitude entry
 * made positive. Layout: flx_eigh_args in kernels/flx_kernels.h (out = [V | w], (n, n+1)
 * row-major per matrix). Non-finite input, or no convergence within the sweep limit, stores
 * FLX_KERR_EIGH_NOCONV in the error record and writes NaN. */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "cpu_common.h"

/* Jacobi on the row-major symmetric n x n matrix m (destroyed: its diagonal ends as the
 * eigenvalues); v gets the eigenvectors in columns. Returns false if it did not converge. */
static bool jacobi(double *m, double *v, int64_t n) {
    for (int64_t i = 0; i < n * n; i++) v[i] = 0.0;
    for (int64_t i = 0; i < n; i++) v[i * n + i] = 1.0;
    double total = 0.0;
    for (int64_t i = 0; i < n * n; i++) total += m[i] * m[i];
    if (!isfinite(total)) return false;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0;
        for (int64_t p = 0; p < n; p++)
            for (int64_t q = p + 1; q < n; q++) off += m[p * n + q] * m[p * n + q];
        if (off == 0.0 || off <= DBL_EPSILON * DBL_EPSILON * 1e-4 * total) return true;
        for (int64_t p = 0; p < n; p++) {
            for (int64_t q = p + 1; q < n; q++) {
                double apq = m[p * n + q];
                if (apq == 0.0) continue;
                double theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + hypot(theta, 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int64_t k = 0; k < n; k++) { /* columns p, q: m J */
                    double akp = m[k * n + p], akq = m[k * n + q];
                    m[k * n + p] = c * akp - s * akq;
                    m[k * n + q] = s * akp + c * akq;
                }
                for (int64_t k = 0; k < n; k++) { /* rows p, q: J^T (m J) */
                    double apk = m[p * n + k], aqk = m[q * n + k];
                    m[p * n + k] = c * apk - s * aqk;
                    m[q * n + k] = s * apk + c * aqk;
                }
                m[p * n + q] = m[q * n + p] = 0.0;
                for (int64_t k = 0; k < n; k++) { /* v J */
                    double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    return false;
}

flx_status flx_cpu_eigh(flx_ctx *ctx, const flx_eigh_args *a) {
    (void)ctx;
    const int64_t n = a->n, P = n * (n + 1);
    if (n == 0 || a->batch <= 0) return FLX_OK;
    double *m = (double *)malloc(sizeof(double) * (size_t)(2 * n * n));
    int64_t *ord = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    if (!m || !ord) {
        free(m);
        free(ord);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "flx_eigh: out of host memory (n = %lld)",
                             (long long)n);
    }
    double *v = m + n * n;
    for (int64_t b = 0; b < a->batch; b++) {
        const int64_t in = b * n * n, out = b * P;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                m[i * n + j] = 0.5 * (ldf(a->dtype, a->a, in + i * n + j) + ldf(a->dtype, a->a, in + j * n + i));
        if (!jacobi(m, v, n)) {
            flx_kerr_raise(a->err, FLX_KERR_EIGH_NOCONV, 0, 0, 0, b);
            for (int64_t i = 0; i < P; i++) stf(a->dtype, a->out, out + i, NAN);
            continue;
        }
        /* ascending order (insertion sort on the eigenvalues; stable) */
        for (int64_t i = 0; i < n; i++) ord[i] = i;
        for (int64_t i = 1; i < n; i++) {
            int64_t k = ord[i], j = i;
            while (j > 0 && m[ord[j - 1] * n + ord[j - 1]] > m[k * n + k]) {
                ord[j] = ord[j - 1];
                j--;
            }
            ord[j] = k;
        }
        for (int64_t j = 0; j < n; j++) {
            int64_t c = ord[j], best = 0;
            double bv = 0.0;
            for (int64_t i = 0; i < n; i++)
                if (fabs(v[i * n + c]) > bv) bv = fabs(v[(best = i) * n + c]);
            double sg = v[best * n + c] < 0 ? -1.0 : 1.0;
            for (int64_t i = 0; i < n; i++) stf(a->dtype, a->out, out + i * (n + 1) + j, sg * v[i * n + c]);
            stf(a->dtype, a->out, out + j * (n + 1) + n, m[c * n + c]);
        }
    }
    free(m);
    free(ord);
    return FLX_OK;
}
