/* expm.c — the matrix exponential (issue 4): flx_expm(A), batched over leading dims, f32/f64.
 *
 * Value: scaling and squaring with a diagonal Pade approximant r_m = q_m(A)^-1 p_m(A) (Higham,
 * "The scaling and squaring method for the matrix exponential revisited", SIMAX 2005), built from
 * public ops: matmul for the powers, flx_solve for q_m^-1 p_m, matmul for the squarings.
 *   f64: m = the smallest of {3, 5, 7, 9} with b <= theta_m, else m = 13 with
 *        s = ceil(log2(b / theta_13)) squarings (Higham's double-precision thetas);
 *   f32: m in {3, 5} likewise, else m = 7 with s = ceil(log2(b / theta_7)) (single-precision
 *        thetas from the same analysis).
 * b bounds ||A||_1 from above: b = max(||A||_1, ||A||_inf), the max over the batch (one s and one
 * m for every matrix, so the graph has a fixed shape; a smaller matrix in the batch just gets a few
 * extra squarings, which costs little accuracy). The max with ||A||_inf makes b valid for A^T too,
 * which the VJP needs.
 *
 * The scaling is data-dependent, and the graph is built on the host, so flx_expm reads b ON THE
 * HOST when it is built: one evaluation of A (if not computed yet) and a device->host read of one
 * scalar. That is a synchronisation on CUDA, once per flx_expm call (documented in fluxion.h).
 * The rules never read anything: a forward EXPM node stores its b (attrs.expm.bound) and the
 * block matrices of its rules get b + 1 (see frechet()), so backward and forward mode stay
 * device-only. A fixed conservative scaling was the alternative; it would cost ~log2(max norm)
 * squarings on every call, or lose accuracy for large norms, so the read was preferred.
 * Non-finite entries: b is NaN/inf and the value is NaN (s = 0 is used; nothing aborts).
 *
 * Node: EXPM(Y, A) where Y is the Pade value computed from detach(A) with grad recording off, and
 * the node aliases Y's buffer (FLX_OPF_ALIAS). Input 0 carries no derivative; input 1 (A) carries
 * the exact Frechet derivative L(A, E) = upper-right n x n block of expm([[A, E], [0, A]])
 * (Mathias 1996):
 *   JVP:  dY = L(A, dA);     VJP: gA = L(A^T, G)  (the adjoint of L(A, .) is L(A^T, .)).
 * The block matrices are made with flx_concat and read back with flx_slice, and their exponential
 * is another EXPM node, so the rules differentiate again to any order. Since L(X, E) is linear in
 * E, E is first divided by c = sum|E| (per matrix, detached; 1 where E == 0) and the block's result
 * multiplied back by c: exact, and it bounds the block's norm by b + 1 without reading E. */
#include <math.h>
#include <string.h>

#include "internal.h"

static flx_tensor *mT(flx_tensor *x) { return flx_transpose(x, -2, -1); }

/* ---- Pade approximant ------------------------------------------------------------------------ */
static const double b3[] = {120., 60., 12., 1.};
static const double b5[] = {30240., 15120., 3360., 420., 30., 1.};
static const double b7[] = {17297280., 8648640., 1995840., 277200., 25200., 1512., 56., 1.};
static const double b9[] = {17643225600., 8821612800., 2075673600., 302702400., 30270240.,
                            2162160.,     110880.,     3960.,       90.,        1.};
static const double b13[] = {64764752532480000., 32382376266240000., 7771770303897600.,
                             1187353796428800.,  129060195264000.,   10559470521600.,
                             670442572800.,      33522128640.,       1323241920.,
                             40840800.,          960960.,            16380.,
                             182.,               1.};

/* Higham 2005, Table 2.3 (double) and the single-precision values of the same analysis. */
static const double theta_d[] = {1.495585217958292e-2, 2.539398330063230e-1, 9.504178996162932e-1,
                                 2.097847961257068e0, 5.371920351148152e0};
static const double theta_s[] = {4.258730016922831e-1, 1.880152677804762e0, 3.925724783138660e0};

/* Picks the degree m and the number of squarings s for the bound b. */
static void choose(flx_dtype dt, double b, int *m, int *s) {
    *s = 0;
    if (!isfinite(b)) { /* NaN / inf input: the value is NaN anyway; keep the graph small */
        *m = dt == FLX_F64 ? 13 : 7;
        return;
    }
    if (dt == FLX_F64) {
        static const int ms[] = {3, 5, 7, 9};
        for (int i = 0; i < 4; i++)
            if (b <= theta_d[i]) { *m = ms[i]; return; }
        *m = 13;
        double t = ceil(log2(b / theta_d[4]));
        *s = t > 0 ? (int)t : 0;
    } else {
        static const int ms[] = {3, 5};
        for (int i = 0; i < 2; i++)
            if (b <= theta_s[i]) { *m = ms[i]; return; }
        *m = 7;
        double t = ceil(log2(b / theta_s[2]));
        *s = t > 0 ? (int)t : 0;
    }
}

/* sum_k c[k] X_k (+ c0 I), skipping NULL terms. */
static flx_tensor *lincomb(int k, flx_tensor *const *xs, const double *c, flx_tensor *I, double c0) {
    flx_tensor *r = I ? flx_mul_scalar(I, c0) : NULL;
    for (int i = 0; i < k; i++) {
        flx_tensor *t = flx_mul_scalar(xs[i], c[i]);
        r = r ? flx_add(r, t) : t;
    }
    return r;
}

/* The Pade value (no history wanted: the caller turns grad recording off). */
static flx_tensor *pade_value(flx_tensor *A, double bound) {
    int m, s;
    choose(A->dtype, bound, &m, &s);
    int64_t n = A->shape[A->ndim - 1];
    flx_tensor *I = flx_eye(A->ctx, A->dtype, n, n);
    flx_tensor *X = s ? flx_mul_scalar(A, ldexp(1.0, -s)) : A;
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
        const double *b = m == 3 ? b3 : m == 5 ? b5 : m == 7 ? b7 : b9;
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
    for (int i = 0; i < s; i++) R = flx_matmul(R, R);
    return R;
}

/* EXPM(Y, A) with the bound b; a private scope keeps only the node. */
static flx_tensor *expm_build(flx_tensor *A, double bound) {
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *x = flx_detach(A);
    flx_no_grad_begin();
    flx_tensor *Y = x ? pade_value(x, bound) : NULL;
    flx_no_grad_end();
    flx_tensor *r = NULL;
    if (Y) {
        flx_tensor *in[2] = {Y, A};
        flx_attrs at = {.u.expm.bound = bound};
        r = flx_adopt(flx_node_new(A->ctx, FLX_OP_EXPM, A->dtype, A->ndim, A->shape, 2, in, &at));
    }
    return flx_scope_return(r);
}

/* L(X, E) = upper-right block of expm([[X, E], [0, X]]), with max(||X||_1, ||X||_inf) <= bound. */
static flx_tensor *frechet(flx_tensor *X, flx_tensor *E, double bound) {
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
    flx_tensor *R = M ? expm_build(M, bound + 1.0) : NULL;
    flx_tensor *UR = flx_slice(flx_slice(R, -2, 0, n, 1), -1, n, 2 * n, 1);
    return flx_mul(UR, c);
}

/* ---- rules --------------------------------------------------------------------------------- */
static flx_status vjp_expm(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *A = y->in[1];
    if (!A->requires_grad) return FLX_OK;
    gin[1] = frechet(mT(A), g, y->attrs.u.expm.bound);
    return flx_rule_status(gin[1]);
}

static flx_status jvp_expm(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[1]) return FLX_OK;
    *tout = frechet(y->in[1], tin[1], y->attrs.u.expm.bound);
    return flx_rule_status(*tout);
}

void flx_ops_register_expm(flx_op_def *t) {
    t[FLX_OP_EXPM] = (flx_op_def){"expm", NULL, vjp_expm, jvp_expm, FLX_OPF_ALIAS};
}

/* ---- public ---------------------------------------------------------------------------------- */
/* max(||A||_1, ||A||_inf) over the batch, read on the host (evaluates A; a sync on CUDA). */
static flx_status host_bound(flx_tensor *A, double *out) {
    *out = 0.0;
    if (flx_scope_begin() != FLX_OK) return flx_last_status();
    flx_no_grad_begin();
    flx_tensor *a = flx_abs(flx_detach(A));
    int32_t ax0 = -2, ax1 = -1;
    flx_tensor *c1 = flx_max(flx_sum(a, 1, &ax0, false), 0, NULL, false);
    flx_tensor *ci = flx_max(flx_sum(a, 1, &ax1, false), 0, NULL, false);
    flx_tensor *b = flx_maximum(c1, ci);
    flx_no_grad_end();
    flx_status st = b ? flx_item(b, out) : flx_last_status();
    flx_scope_end(0, NULL);
    return st;
}

flx_tensor *flx_expm(flx_tensor *a) {
    static const char *op = "flx_expm";
    if (!flx_check_square(op, a)) return NULL;
    if (a->numel == 0) return flx_mul_scalar(a, 1.0); /* empty: nothing to compute */
    double b;
    if (host_bound(a, &b) != FLX_OK) return NULL;
    return expm_build(a, b);
}
