/* matrix_calculus.c — gradients of matrix expressions computed by fluxion, each printed next to a
 * closed form derived by hand (and checked against finite differences when they first disagreed).
 * Every entry of a matrix argument is a free variable (no symmetry assumed).
 *
 *   f(X) = ln det X              grad = X^-T
 *   f(x) = sin ||A x + b||       grad = cos(r) A^T (A x + b) / r,  r = ||A x + b||
 *   f(w) = mean log cosh(Xw - y) grad = X^T tanh(X w - y) / N
 *   ridge: f(w) = ||X w - y||^2 + lam ||w||^2, grad = 2 X^T (X w - y) + 2 lam w, optimum
 *          w* = (X^T X + lam I)^-1 X^T y (checked: the gradient vanishes there)
 *   nearest symmetric matrix to A: gradient descent on ||S - A||_F^2 over S = (X + X^T)/2 converges
 *          to (A + A^T)/2
 *   x^T exp(x x^T) x = s e^s with s = ||x||^2 (since (x x^T) x = s x): grad = 2 (1 + s) e^s x,
 *          fluxion's through flx_expm (its exact block-matrix VJP).
 *   tr(Q diag(e^lam) Q^T) = sum e^lam_i with (lam, Q) = eigh(S), S = [[a, b], [b, c]] symmetric:
 *          grad = Q diag(e^lam) Q^T = exp(S) = e^m (cosh r I + sinh(r)/r (S - m I)),
 *          m = (a + c)/2, r = sqrt(((a - c)/2)^2 + b^2) (eigh differentiates (S + S^T)/2, so the
 *          gradient is symmetric: every entry of S free).
 * Exit status 0 when every comparison holds to 1e-8 (CPU, f64), else 1. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fluxion/fluxion.h"

static int g_fail = 0;

static void check(const char *what, flx_tensor *got, const double *want, int64_t n) {
    double buf[64], err = 0;
    if (!got || n > 64 || flx_to_host(got, buf, sizeof(double) * (size_t)n) != FLX_OK) {
        printf("%-34s FAILED: %s\n", what, flx_last_error());
        g_fail = 1;
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(buf[i] - want[i]) / (1 + fabs(want[i]));
        if (e > err) err = e;
    }
    printf("%-34s fluxion [", what);
    for (int64_t i = 0; i < n && i < 4; i++) printf(" % .6f", buf[i]);
    printf("%s ] closed form [", n > 4 ? " ..." : "");
    for (int64_t i = 0; i < n && i < 4; i++) printf(" % .6f", want[i]);
    printf("%s ] max rel err %.1e\n", n > 4 ? " ..." : "", err);
    if (!(err < 1e-8)) g_fail = 1;
}

static flx_tensor *leaf(flx_ctx *ctx, int32_t nd, const int64_t *shape, const double *v) {
    flx_tensor *t = flx_from_host(ctx, FLX_F64, nd, shape, v);
    flx_set_requires_grad(t, true);
    return t;
}

static flx_tensor *grad1(flx_tensor *f, flx_tensor *x) {
    flx_tensor *g = NULL;
    if (flx_grad_of(1, &f, NULL, 1, &x, false, &g) != FLX_OK) return NULL;
    return g;
}

int main(void) {
    flx_ctx *ctx = flx_ctx_create(flx_device_cpu());
    if (!ctx) return fprintf(stderr, "%s\n", flx_last_error()), 1;
    flx_scope_begin();

    /* ln det X, X 3x3 (det > 0): gradient X^-T. Inverse by the adjugate formula here. */
    double X[9] = {4, 1, 0.5, 0.3, 3, 1, 0.2, 0.7, 2};
    int64_t s33[2] = {3, 3};
    flx_tensor *Xt = leaf(ctx, 2, s33, X);
    double c[9], det = 0, want[9];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            int r0 = (i + 1) % 3, r1 = (i + 2) % 3, c0 = (j + 1) % 3, c1 = (j + 2) % 3;
            c[i * 3 + j] = X[r0 * 3 + c0] * X[r1 * 3 + c1] - X[r0 * 3 + c1] * X[r1 * 3 + c0];
        }
    for (int j = 0; j < 3; j++) det += X[j] * c[j];
    for (int i = 0; i < 9; i++) want[i] = c[i] / det; /* X^-T = cof(X) / det */
    check("grad ln det X = X^-T", grad1(flx_logdet(Xt), Xt), want, 9);

    /* sin ||A x + b|| */
    double A[6] = {1, 2, -1, 0.5, 3, -2}, x[2] = {0.3, -0.7}, b[3] = {0.1, 0.2, -0.3};
    int64_t s32[2] = {3, 2}, s2[1] = {2}, s3[1] = {3};
    flx_tensor *At = flx_from_host(ctx, FLX_F64, 2, s32, A), *bt = flx_from_host(ctx, FLX_F64, 1, s3, b);
    flx_tensor *xt = leaf(ctx, 1, s2, x);
    flx_tensor *f2 = flx_sin(flx_norm(flx_add(flx_matmul(At, xt), bt), 2, 0, NULL, false));
    double u[3], r = 0, w2[2] = {0, 0};
    for (int i = 0; i < 3; i++) u[i] = A[i * 2] * x[0] + A[i * 2 + 1] * x[1] + b[i], r += u[i] * u[i];
    r = sqrt(r);
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < 3; i++) w2[j] += cos(r) * A[i * 2 + j] * u[i] / r;
    check("grad sin||Ax+b||", grad1(f2, xt), w2, 2);

    /* log-cosh regression and ridge on N = 5, d = 2 */
    double D[10] = {1, 0.5, -0.3, 1.2, 0.8, -0.6, 0.1, 0.9, -1, 0.4}, y[5] = {1, -0.5, 0.3, 0.8, -1.2};
    double w[2] = {0.2, -0.4}, lam = 0.3;
    int64_t s52[2] = {5, 2}, s5[1] = {5};
    flx_tensor *Dt = flx_from_host(ctx, FLX_F64, 2, s52, D), *yt = flx_from_host(ctx, FLX_F64, 1, s5, y);
    flx_tensor *wt = leaf(ctx, 1, s2, w);
    flx_tensor *res = flx_sub(flx_matmul(Dt, wt), yt);
    flx_tensor *f3 = flx_mean_all(flx_log(flx_cosh(res)));
    double w3[2] = {0, 0};
    for (int i = 0; i < 5; i++) {
        double e = D[i * 2] * w[0] + D[i * 2 + 1] * w[1] - y[i];
        for (int j = 0; j < 2; j++) w3[j] += D[i * 2 + j] * tanh(e) / 5;
    }
    check("grad mean log cosh(Xw - y)", grad1(f3, wt), w3, 2);

    /* ridge optimum: w* = (X^T X + lam I)^-1 X^T y, via flx_solve; the gradient vanishes there */
    flx_tensor *XtX = flx_add(flx_matmul(flx_transpose(Dt, 0, 1), Dt), flx_mul_scalar(flx_eye(ctx, FLX_F64, 2, 2), lam));
    flx_tensor *wstar = flx_solve(XtX, flx_matmul(flx_transpose(Dt, 0, 1), yt));
    double ws[2];
    flx_to_host(wstar, ws, sizeof ws);
    flx_tensor *wl = leaf(ctx, 1, s2, ws);
    flx_tensor *ridge = flx_add(flx_sum_all(flx_square(flx_sub(flx_matmul(Dt, wl), yt))),
                                flx_mul_scalar(flx_sum_all(flx_square(wl)), lam));
    double zero2[2] = {0, 0};
    check("ridge grad at (X^TX+lam I)^-1 X^Ty", grad1(ridge, wl), zero2, 2);

    /* nearest symmetric matrix by gradient descent on ||(Z + Z^T)/2 - A||_F^2 */
    double M[9] = {1, 2, 3, -1, 0.5, 4, 0, 2, -3}, Z[9] = {0};
    for (int it = 0; it < 200; it++) {
        flx_scope_begin();
        flx_tensor *Zt = leaf(ctx, 2, s33, Z), *Mt = flx_from_host(ctx, FLX_F64, 2, s33, M);
        flx_tensor *S = flx_mul_scalar(flx_add(Zt, flx_transpose(Zt, 0, 1)), 0.5);
        flx_tensor *L = flx_sum_all(flx_square(flx_sub(S, Mt)));
        double gz[9];
        if (flx_to_host(grad1(L, Zt), gz, sizeof gz) != FLX_OK) g_fail = 1;
        for (int i = 0; i < 9; i++) Z[i] -= 0.25 * gz[i];
        flx_scope_end(0, NULL);
    }
    double Ssym[9], half[9];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            Ssym[i * 3 + j] = 0.5 * (Z[i * 3 + j] + Z[j * 3 + i]);
            half[i * 3 + j] = 0.5 * (M[i * 3 + j] + M[j * 3 + i]);
        }
    flx_tensor *St = flx_from_host(ctx, FLX_F64, 2, s33, Ssym);
    check("nearest symmetric (GD) vs (A+A^T)/2", St, half, 9);

    /* x^T exp(x x^T) x with flx_expm */
    double xs[2] = {0.3, -0.4}, s = 0.25, gexp[2];
    for (int i = 0; i < 2; i++) gexp[i] = 2 * (1 + s) * exp(s) * xs[i];
    flx_tensor *xe = leaf(ctx, 1, s2, xs);
    flx_tensor *fe = flx_dot(xe, flx_matmul(flx_expm(flx_outer(xe, xe)), xe));
    check("grad x^T exp(xx^T) x", grad1(fe, xe), gexp, 2);

    /* tr(Q diag(e^lam) Q^T) with (lam, Q) = eigh(S) */
    double Sv[4] = {0.7, -0.4, -0.4, 0.1}, sm = 0.4, sr = sqrt(0.3 * 0.3 + 0.16), gtr[4];
    int64_t s22[2] = {2, 2};
    for (int i = 0; i < 4; i++)
        gtr[i] = exp(sm) * ((i % 3 == 0) * cosh(sr) + sinh(sr) / sr * (Sv[i] - (i % 3 == 0) * sm));
    flx_tensor *Se = leaf(ctx, 2, s22, Sv), *ev = NULL, *Q = NULL;
    flx_tensor *ftr = NULL;
    if (flx_eigh(Se, &ev, &Q) == FLX_OK)
        ftr = flx_trace(flx_matmul(flx_mul(Q, flx_exp(ev)), flx_transpose(Q, 0, 1)));
    check("grad tr(Q diag(e^lam) Q^T)", grad1(ftr, Se), gtr, 4);

    flx_scope_end(0, NULL);
    flx_ctx_destroy(ctx);
    printf(g_fail ? "SOME CHECKS FAILED\n" : "all checks passed\n");
    return g_fail;
}
