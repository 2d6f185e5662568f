/* expm.c — the matrix exponential: flx_expm(A), batched over leading dims, f32/f64.
 *
 * Value: scaling and squaring with the diagonal Pade approximant r_m = q_m(A)^-1 p_m(A) (Higham,
 * "The scaling and squaring method for the matrix exponential revisited", SIMAX 2005), built from
 * public ops: matmul for the powers, flx_solve for q_m^-1 p_m, matmul for the squarings.
 *   f64: m = 13 with s = ceil(log2(b / theta_13)) squarings (Higham's double-precision theta);
 *   f32: m = 7 with s = ceil(log2(b / theta_7)) (single-precision theta, same analysis),
 * where b = max(||A||_1, ||A||_inf) of each matrix (the max with ||A||_inf makes b valid for A^T
 * too, which the VJP needs).
 *
 * Every choice is made ON THE DEVICE, per matrix, so one graph is right for every input it is
 * ever run on (a plan compiled on a small matrix stays exact on a large one) and building never
 * reads data. Squaring i happens iff s > i, i.e. iff b > theta 2^i: a comparison on the device
 * gives a mask q_i per matrix; the scale 2^-s is a product of exact halvings selected by the
 * q_i, and the squarings are a fixed loop of S_max steps R = where(q_i, R R, R). The degree is
 * the largest one (the smaller degrees of Higham's algorithm only save work for small norms and
 * need a data-dependent graph). The cost is S_max matmuls per call whatever the norm; a matrix
 * with b > theta 2^S_max (f64: ~5.9e12, f32: ~6.6e7, where the result has lost all accuracy to
 * rounding anyway) gives NaN instead of a silently wrong value. Non-finite entries give NaN.
 *
 * Node: EXPM(Y, A) where Y is the Pade value computed from detach(A) with grad recording off, and
 * the node aliases Y's buffer (FLX_OPF_ALIAS). Input 0 carries no derivative; input 1 (A) carries
 * the exact Frechet derivative L(A, E) = upper-right n x n block of expm([[A, E], [0, A]])
 * (Mathias 1996):
 *   JVP:  dY = L(A, dA);     VJP: gA = L(A^T, G)  (the adjoint of L(A, .) is L(A^T, .)).
 * The block matrices are made with flx_concat and read back with flx_slice, and their exponential
 * is another EXPM node, so the rules differentiate again to any order. Since L(X, E) is linear in
 * E, E is first divided by c = sum|E| (per matrix, detached; 1 where E == 0) and the block's result
 * multiplied back by c: exact, and it keeps the block's norm within b + 1. */
#include <math.h>
#include <string.h>

#include "internal.h"

static flx_tensor *mT(flx_tensor *x) { return flx_transpose(x, -2, -1); }

/* ---- Pade approximant ------------------------------------------------------------------------ */
static const double b7[] = {17297280., 8648640., 1995840., 277200., 25200., 1512., 56., 1.};
static const double b13[] = {64764752532480000., 32382376266240000., 7771770303897600.,
                             1187353796428800.,  129060195264000.,   10559470521600.,
                             670442572800.,      33522128640.,       1323241920.,
                             40840800.,          960960.,            16380.,
                             182.,               1.};

/* Higham 2005, Table 2.3: theta_13 (double); theta_7 of the same analysis in single precision. */
static const double theta13_d = 5.371920351148152e0;
static const double theta7_s = 3.925724783138660e0;

/* Squaring steps of the fixed loop: theta 2^S_max bounds the norms handled (see the top). */
enum { EXPM_SQUARINGS_F64 = 40, EXPM_SQUARINGS_F32 = 24 };

/* sum_k c[k] X_k (+ c0 I), skipping NULL terms. */
static flx_tensor *lincomb(int k, flx_tensor *const *xs, const double *c, flx_tensor *I, double c0) {
    flx_tensor *r = I ? flx_mul_scalar(I, c0) : NULL;
    for (int i = 0; i < k; i++) {
        flx_tensor *t = flx_mul_scalar(xs[i], c[i]);
        r = r ? flx_add(r, t) : t;
    }
    return r;
}

/* max(||A||_1, ||A||_inf) of each matrix, shape (..., 1, 1). */
static flx_tensor *norm_bound(flx_tensor *A) {
    flx_tensor *a = flx_abs(A);
    int32_t rows = -2, cols = -1;
    flx_tensor *c1 = flx_max(flx_sum(a, 1, &rows, true), 1, &cols, true);
    flx_tensor *ci = flx_max(flx_sum(a, 1, &cols, true), 1, &rows, true);
    return flx_maximum(c1, ci);
}

/* The Pade value (no history wanted: the caller turns grad recording off). */
static flx_tensor *pade_value(flx_tensor *A) {
    const bool f64 = A->dtype == FLX_F64;
    const int m = f64 ? 13 : 7;
    const int S = f64 ? EXPM_SQUARINGS_F64 : EXPM_SQUARINGS_F32;
    const double theta = f64 ? theta13_d : theta7_s;
    flx_tensor *bnd = norm_bound(A);
    flx_tensor *q[EXPM_SQUARINGS_F64]; /* q[i]: squaring i happens (bnd > theta 2^i), per matrix */
    flx_tensor *scale = flx_ones(A->ctx, A->dtype, 0, NULL);
    for (int i = 0; i < S; i++) {
        q[i] = flx_gt(bnd, flx_scalar(A->ctx, A->dtype, ldexp(theta, i)));
        scale = flx_where(q[i], flx_mul_scalar(scale, 0.5), scale); /* exact halvings */
    }
    A = flx_mul(A, scale);
    int64_t n = A->shape[A->ndim - 1];
    flx_tensor *I = flx_eye(A->ctx, A->dtype, n, n);
    flx_tensor *X = A;
    flx_tensor *X2 = flx_matmul(X, X);
    flx_tensor *U = NULL, *V = NULL;
    if (m == 13) {
        flx_tensor *X4 = flx_matmul(X2, X2), *X6 = flx_matmul(X4, X2);
        const double *b = b13;
        flx_tensor *t3[3] = {X6, X4, X2};
        double cu[3] = {b[13], b[11], b[9]}, cu2[3] = {b[7], b[5], b[3]};
        double cv[3] = {b[12], b[10], b[8]}, cv2[3] = {b[6], b[4], b[2]};
        flx_tensor *u = flx_add(flx_matmul(X6, lincomb(3, t3, cu, NULL, 0)), lincomb(3, t3, cu2, I, b[1]));
        U = flx_matmul(X, u);
        V = flx_add(flx_matmul(X6, lincomb(3, t3, cv, NULL, 0)), lincomb(3, t3, cv2, I, b[0]));
    } else {
        const double *b = b7;
        flx_tensor *pw[4] = {X2, NULL, NULL, NULL}; /* X^2, X^4, X^6, X^8 */
        for (int i = 1; i < (m - 1) / 2; i++) pw[i] = flx_matmul(pw[i - 1], X2);
        int k = (m - 1) / 2;
        double cu[4], cv[4];
        for (int i = 0; i < k; i++) {
            cu[i] = b[2 * i + 3];
            cv[i] = b[2 * i + 2];
        }
        U = flx_matmul(X, lincomb(k, pw, cu, I, b[1]));
        V = lincomb(k, pw, cv, I, b[0]);
    }
    flx_tensor *R = flx_solve(flx_sub(V, U), flx_add(V, U));
    for (int i = 0; i < S; i++) R = flx_where(q[i], flx_matmul(R, R), R);
    /* Beyond the loop's reach the scaled matrix is outside the approximant's range: NaN. */
    flx_tensor *nan = flx_scalar(A->ctx, A->dtype, NAN);
    return flx_where(flx_gt(bnd, flx_scalar(A->ctx, A->dtype, ldexp(theta, S))), nan, R);
}

/* EXPM(Y, A); a private scope keeps only the node. */
static flx_tensor *expm_build(flx_tensor *A) {
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *x = flx_detach(A);
    flx_no_grad_begin();
    flx_tensor *Y = x ? pade_value(x) : NULL;
    flx_no_grad_end();
    flx_tensor *r = NULL;
    if (Y) {
        flx_tensor *in[2] = {Y, A};
        r = flx_adopt(flx_node_new(A->ctx, FLX_OP_EXPM, A->dtype, A->ndim, A->shape, 2, in, NULL));
    }
    return flx_scope_return(r);
}

/* L(X, E) = upper-right block of expm([[X, E], [0, X]]). */
static flx_tensor *frechet(flx_tensor *X, flx_tensor *E) {
    int64_t n = X->shape[X->ndim - 1];
    int32_t axes[2] = {-2, -1};
    flx_tensor *c = flx_detach(flx_sum(flx_abs(E), 2, axes, true));
    flx_tensor *zero = flx_scalar(X->ctx, X->dtype, 0.0), *one = flx_scalar(X->ctx, X->dtype, 1.0);
    c = flx_where(flx_gt(c, zero), c, one);
    flx_tensor *En = flx_div(E, c);
    flx_tensor *Z = flx_zeros(X->ctx, X->dtype, X->ndim, X->shape);
    flx_tensor *top[2] = {X, En}, *bot[2] = {Z, X};
    flx_tensor *rows[2] = {flx_concat(2, top, -1), flx_concat(2, bot, -1)};
    flx_tensor *M = flx_concat(2, rows, -2);
    flx_tensor *R = M ? expm_build(M) : NULL;
    flx_tensor *UR = flx_slice(flx_slice(R, -2, 0, n, 1), -1, n, 2 * n, 1);
    return flx_mul(UR, c);
}

/* ---- rules --------------------------------------------------------------------------------- */
static flx_status vjp_expm(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *A = y->in[1];
    if (!A->requires_grad) return FLX_OK;
    gin[1] = frechet(mT(A), g);
    return flx_rule_status(gin[1]);
}

static flx_status jvp_expm(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[1]) return FLX_OK;
    *tout = frechet(y->in[1], tin[1]);
    return flx_rule_status(*tout);
}

void flx_ops_register_expm(flx_op_def *t) {
    t[FLX_OP_EXPM] = (flx_op_def){"expm", NULL, vjp_expm, jvp_expm, FLX_OPF_ALIAS};
}

/* ---- public ---------------------------------------------------------------------------------- */
flx_tensor *flx_expm(flx_tensor *a) {
    static const char *op = "flx_expm";
    if (!flx_check_square(op, a)) return NULL;
    if (a->numel == 0) return flx_mul_scalar(a, 1.0); /* empty: nothing to compute */
    return expm_build(a);
}
