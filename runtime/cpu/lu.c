/* lu.c — CPU reference kernels of the LU family: plain partial-pivoting LU in
 * double, solves with the packed factors, det / log|det| / sign from the diagonal and the pivot
 * parity, the division-free cofactor matrix, and the gradients of det and log|det| from A. Layout of the packed factorisation: see
 * flx_lu_args in kernels/flx_kernels.h (column-major LU, 0-based pivots, info). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_common.h"

/* In-place LU with partial pivoting of the column-major n x n matrix m (A = P L U). A zero
 * pivot column is skipped (multipliers 0). Returns info (0 or the 1-based first zero pivot). */
static int64_t lu_inplace(double *m, int64_t n, int64_t *piv) {
    int64_t info = 0;
    for (int64_t k = 0; k < n; k++) {
        int64_t p = k;
        /* The first NaN candidate wins the pivot (a NaN compares false with everything and
         * would otherwise be skipped), so a NaN in A reaches det, inv and solve. */
        double best = fabs(m[k * n + k]);
        for (int64_t i = k + 1; i < n && best == best; i++)
            if (fabs(m[k * n + i]) > best || m[k * n + i] != m[k * n + i])
                best = fabs(m[k * n + (p = i)]);
        piv[k] = p;
        if (p != k)
            for (int64_t j = 0; j < n; j++) {
                double t = m[j * n + k];
                m[j * n + k] = m[j * n + p];
                m[j * n + p] = t;
            }
        double d = m[k * n + k];
        if (d == 0.0) {
            if (!info) info = k + 1;
            for (int64_t i = k + 1; i < n; i++) m[k * n + i] = 0.0;
            continue;
        }
        for (int64_t i = k + 1; i < n; i++) m[k * n + i] /= d;
        for (int64_t j = k + 1; j < n; j++) {
            double u = m[j * n + k];
            if (u == 0.0) continue;
            for (int64_t i = k + 1; i < n; i++) m[j * n + i] -= m[k * n + i] * u;
        }
    }
    return info;
}

/* Reads matrix b of the packed buffer into m (n*n doubles) and piv; returns info. */
static int64_t unpack(const flx_lu_args *a, int64_t b, double *m, int64_t *piv) {
    int64_t n = a->n, P = n * n + n + 1;
    int64_t base = b * P;
    for (int64_t i = 0; i < n * n; i++) m[i] = ldf(a->dtype, a->lu, base + i);
    for (int64_t i = 0; i < n; i++) piv[i] = (int64_t)ldf(a->dtype, a->lu, base + n * n + i);
    return (int64_t)ldf(a->dtype, a->lu, base + n * n + n);
}

static void factor(const flx_lu_args *a, double *m, int64_t *piv) {
    int64_t n = a->n, P = n * n + n + 1;
    for (int64_t b = 0; b < a->batch; b++) {
        /* row-major input (i, j) at i*n + j -> column-major m (i, j) at j*n + i */
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) m[j * n + i] = ldf(a->dtype, a->a, b * n * n + i * n + j);
        int64_t info = lu_inplace(m, n, piv);
        int64_t base = b * P;
        for (int64_t i = 0; i < n * n; i++) stf(a->dtype, a->out, base + i, m[i]);
        for (int64_t i = 0; i < n; i++) stf(a->dtype, a->out, base + n * n + i, (double)piv[i]);
        stf(a->dtype, a->out, base + n * n + n, (double)info);
    }
}

/* x (n doubles) := A^-1 x or A^-T x from the factors. */
static void solve_vec(const double *m, const int64_t *piv, int64_t n, int trans, double *x) {
    if (!trans) {
        for (int64_t i = 0; i < n; i++)
            if (piv[i] != i) {
                double t = x[i];
                x[i] = x[piv[i]];
                x[piv[i]] = t;
            }
        for (int64_t i = 0; i < n; i++) /* L y = x (unit lower) */
            for (int64_t j = 0; j < i; j++) x[i] -= m[j * n + i] * x[j];
        for (int64_t i = n - 1; i >= 0; i--) { /* U z = y */
            for (int64_t j = i + 1; j < n; j++) x[i] -= m[j * n + i] * x[j];
            x[i] /= m[i * n + i];
        }
    } else {
        for (int64_t i = 0; i < n; i++) { /* U^T z = x (lower) */
            for (int64_t j = 0; j < i; j++) x[i] -= m[i * n + j] * x[j];
            x[i] /= m[i * n + i];
        }
        for (int64_t i = n - 1; i >= 0; i--) /* L^T w = z (unit upper) */
            for (int64_t j = i + 1; j < n; j++) x[i] -= m[i * n + j] * x[j];
        for (int64_t i = n - 1; i >= 0; i--)
            if (piv[i] != i) {
                double t = x[i];
                x[i] = x[piv[i]];
                x[piv[i]] = t;
            }
    }
}

/* Matrix b of a (row-major) factorised into m (column-major) and piv; returns info. */
static int64_t factor_one(const flx_lu_args *a, int64_t b, double *m, int64_t *piv) {
    int64_t n = a->n;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) m[j * n + i] = ldf(a->dtype, a->a, b * n * n + i * n + j);
    return lu_inplace(m, n, piv);
}

/* a->lu == NULL: straight from a->a (forward-only solve; no packed factors). */
static void solve(const flx_lu_args *a, double *m, int64_t *piv, double *x) {
    int64_t n = a->n, k = a->k;
    for (int64_t b = 0; b < a->batch; b++) {
        int64_t info = a->lu ? unpack(a, b, m, piv) : factor_one(a, b, m, piv);
        if (info != 0 && a->check) flx_kerr_raise(a->err, FLX_KERR_SINGULAR, info, 0, 0, b);
        for (int64_t c = 0; c < k; c++) {
            for (int64_t i = 0; i < n; i++)
                x[i] = a->b ? ldf(a->dtype, a->b, b * n * k + i * k + c) : (double)(i == c);
            solve_vec(m, piv, n, a->trans, x);
            for (int64_t i = 0; i < n; i++) stf(a->dtype, a->out, b * n * k + i * k + c, x[i]);
        }
    }
}

static void det(const flx_lu_args *a, double *m, int64_t *piv) {
    int64_t n = a->n;
    for (int64_t b = 0; b < a->batch; b++) {
        if (a->lu) (void)unpack(a, b, m, piv);
        else factor_one(a, b, m, piv); /* forward-only det: no packed factors */
        int neg = 0;
        double logabs = 0.0, prod = 1.0;
        bool zero = false, nanf = false;
        for (int64_t i = 0; i < n; i++) {
            if (piv[i] != i) neg ^= 1;
            double d = m[i * n + i];
            if (d < 0) neg ^= 1;
            if (d == 0) zero = true;
            if (d != d) nanf = true;
            prod *= d;
            logabs += log(fabs(d));
        }
        double sign = zero ? 0.0 : (neg ? -1.0 : 1.0), v;
        switch (a->mode) {
        case FLX_LU_DET: v = neg ? -fabs(prod) : fabs(prod); if (zero) v = 0.0; break;
        case FLX_LU_LOGABS: v = zero ? -INFINITY : logabs; break;
        case FLX_LU_SIGN: v = sign; break;
        default: v = zero ? -INFINITY : (neg ? NAN : logabs); break; /* LOGDET */
        }
        /* A NaN on U's diagonal wins over a zero pivot (det_value of the CUDA kernels): the zero
         * entries of a NaN pivot's row skip the update, so a later pivot can be an exact 0. */
        if (nanf) v = NAN;
        stf(a->dtype, a->out, b, v);
    }
}

/* W (n*n scratch, row-major) := adj(A) from the factors m, piv of A, without any division:
 * adj(A) = sign(P) adj(U) L^-1 P^T (see flx_lu_args). */
static void adjugate(const double *m, const int64_t *piv, int64_t n, double *w) {
    int neg = 0;
    for (int64_t i = 0; i < n; i++)
        if (piv[i] != i) neg ^= 1;
#define U(i, j) m[(j) * n + (i)]
#define W(i, j) w[(i) * n + (j)] /* row-major scratch */
    /* adj(U): W(i, j) = (prod_{q<i} u_qq)(prod_{q>j} u_qq) Z(i, j), i <= j, where Z(j, j) = 1
     * and Z(i, j) = -sum_{k=i+1..j} u_ik Z(k, j) prod_{q=i+1..k-1} u_qq. */
    memset(w, 0, sizeof(double) * (size_t)(n * n));
    /* Column 0 has no entry above the diagonal: starting at j = 1 means the i loop never
     * starts at -1 (GCC -O3 peels j = 0 into a copy whose trip count it cannot bound and
     * warns, -Waggressive-loop-optimizations). */
    for (int64_t j = 0; j < n; j++) W(j, j) = 1.0;
    for (int64_t j = 1; j < n; j++) {
        for (int64_t i = j - 1; i >= 0; i--) {
            double s = 0.0, prod = 1.0;
            for (int64_t k = i + 1; k <= j; k++) {
                s += U(i, k) * W(k, j) * prod;
                prod *= U(k, k);
            }
            W(i, j) = -s;
        }
    }
    for (int64_t j = 0; j < n; j++) {
        double suf = 1.0;
        for (int64_t q = j + 1; q < n; q++) suf *= U(q, q);
        double pre = 1.0;
        for (int64_t i = 0; i <= j; i++) {
            W(i, j) *= pre * suf;
            pre *= U(i, i);
        }
    }
    /* V = W L^-1 in place, row by row: V(i, j) = W(i, j) - sum_{k>j} V(i, k) L(k, j). */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = n - 1; j >= 0; j--) {
            double s = W(i, j);
            for (int64_t k = j + 1; k < n; k++) s -= W(i, k) * U(k, j);
            W(i, j) = s;
        }
    /* adj(A) = sign(P) V P^T: column swaps (i, piv[i]) for i descending. */
    for (int64_t i = n - 1; i >= 0; i--)
        if (piv[i] != i)
            for (int64_t r = 0; r < n; r++) {
                double t = W(r, i);
                W(r, i) = W(r, piv[i]);
                W(r, piv[i]) = t;
            }
    if (neg)
        for (int64_t q = 0; q < n * n; q++) w[q] = -w[q];
#undef U
#undef W
}

/* out (batch, n, n) row-major := s_b adj(A_b)^T from W = adj(A_b) (row-major). */
static void store_adj_t(const flx_lu_args *a, int64_t b, double s, const double *w) {
    int64_t n = a->n;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < n; c++) stf(a->dtype, a->out, b * n * n + r * n + c, s * w[c * n + r]);
}

/* Division-free cofactor matrix adj(A)^T from the packed factors. w: n*n scratch. */
static void cofactor(const flx_lu_args *a, double *m, int64_t *piv, double *w) {
    for (int64_t b = 0; b < a->batch; b++) {
        (void)unpack(a, b, m, piv);
        adjugate(m, piv, a->n, w);
        store_adj_t(a, b, 1.0, w);
    }
}

/* DET_GRAD: g adj(A)^T; LOGDET_GRAD: g A^-T (column c = A^-T e_c); both straight from A.
 * w: n*n scratch, x: n. */
static void det_grad(const flx_lu_args *a, double *m, int64_t *piv, double *w, double *x) {
    int64_t n = a->n;
    for (int64_t b = 0; b < a->batch; b++) {
        factor_one(a, b, m, piv);
        double s = a->b ? ldf(a->dtype, a->b, b) : 1.0;
        if (a->mode == FLX_LU_DET_GRAD) {
            adjugate(m, piv, n, w);
            store_adj_t(a, b, s, w);
            continue;
        }
        for (int64_t c = 0; c < n; c++) {
            for (int64_t i = 0; i < n; i++) x[i] = (double)(i == c);
            solve_vec(m, piv, n, 1, x);
            for (int64_t i = 0; i < n; i++) stf(a->dtype, a->out, b * n * n + i * n + c, s * x[i]);
        }
    }
}

flx_status flx_cpu_lu(flx_ctx *ctx, const flx_lu_args *a) {
    (void)ctx;
    if (a->dtype != FLX_F32 && a->dtype != FLX_F64)
        return flx_set_error(FLX_ERR_DTYPE, "cpu lu: dtype %s is not supported (f32, f64)",
                             flx_dtype_name(a->dtype));
    if (a->batch <= 0) return FLX_OK;
    int64_t n = a->n;
    size_t nn = (size_t)(n * n) + 1;
    double *m = (double *)malloc(sizeof(double) * nn * 2 + sizeof(double) * (size_t)(n + 1));
    int64_t *piv = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!m || !piv) {
        free(m);
        free(piv);
        return flx_set_error(FLX_ERR_OUT_OF_MEMORY, "cpu lu: out of host memory (n = %lld)",
                             (long long)n);
    }
    double *w = m + nn, *x = w + nn;
    switch (a->mode) {
    case FLX_LU_FACTOR: factor(a, m, piv); break;
    case FLX_LU_SOLVE: solve(a, m, piv, x); break;
    case FLX_LU_COFACTOR: cofactor(a, m, piv, w); break;
    case FLX_LU_DET_GRAD:
    case FLX_LU_LOGDET_GRAD: det_grad(a, m, piv, w, x); break;
    default: det(a, m, piv); break;
    }
    free(m);
    free(piv);
    return FLX_OK;
}
