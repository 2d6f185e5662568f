/* eigh.c — symmetric eigendecomposition: flx_eigh(A, &w, &V), batched, f32/f64.
 *
 * flx_eigh builds S = (A + A^T)/2 with public ops (exactly A when A is symmetric) and one EIGH
 * node on S whose output packs [V | w] as (..., n, n+1); w and V are slices of it. The kernel
 * (CPU: cyclic Jacobi in double, runtime/cpu/eigh.c; CUDA: cuSOLVER, kernels/eigh.cu) returns
 * ascending eigenvalues and eigenvectors whose largest-magnitude entry is positive.
 *
 * Convention for derivatives: the function differentiated is A -> eigh((A + A^T)/2), every entry
 * of A free. The EIGH node's rules work on symmetric S (its tangents are symmetric, and its VJP
 * returns the symmetric part), and the chain through S = (A + A^T)/2 does the rest, so gradients
 * of A are symmetric and gradcheck holds for any A. With F_ij = 1/(w_j - w_i) (i != j), F_ii = 0:
 *   VJP  gS = sym(V (diag(gw) + F o (V^T gV)) V^T)
 *   JVP  K = V^T dS V,  dw = diag(K),  dV = V (F o K)
 * The rules are made of public ops on slices of the node's own output, so they differentiate
 * again. Repeated eigenvalues: F is infinite there (1/0 is never formed on the diagonal, which
 * uses a "double where"); the eigenvector derivative is unsupported (inf/NaN), as documented. */
#include <string.h>

#include "internal.h"

static flx_tensor *mT(flx_tensor *x) { return flx_transpose(x, -2, -1); }
static flx_tensor *sym(flx_tensor *x) { return flx_mul_scalar(flx_add(x, mT(x)), 0.5); }

/* V (..., n, n) and w (..., n) of a packed (..., n, n+1) tensor. */
static flx_tensor *V_of(flx_tensor *p, int64_t n) { return flx_slice(p, -1, 0, n, 1); }
static flx_tensor *w_of(flx_tensor *p, int64_t n) {
    return flx_squeeze(flx_slice(p, -1, n, n + 1, 1), -1);
}

/* Identity as a bool mask and as values (n, n). */
static flx_tensor *eye_of(flx_tensor *like, int64_t n) { return flx_eye(like->ctx, like->dtype, n, n); }

/* F_ij = 1/(w_j - w_i) off the diagonal, 0 on it: (..., n, n). */
static flx_tensor *f_matrix(flx_tensor *w, int64_t n) {
    flx_tensor *D = flx_sub(flx_unsqueeze(w, -2), flx_unsqueeze(w, -1));
    flx_tensor *I = eye_of(w, n);
    flx_tensor *zero = flx_scalar(w->ctx, w->dtype, 0.0), *one = flx_scalar(w->ctx, w->dtype, 1.0);
    flx_tensor *diag = flx_gt(I, zero);
    flx_tensor *safe = flx_where(diag, one, D);
    return flx_where(diag, zero, flx_reciprocal(safe));
}

static int64_t n_of(flx_tensor *y) { return y->shape[y->ndim - 2]; }

/* ---- exec --------------------------------------------------------------------------------------- */
static flx_status exec_eigh(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    const flx_tensor *A = t->in[0];
    flx_eigh_args a = {
        .dtype = t->dtype, .n = A->shape[A->ndim - 1],
        .batch = flx_shape_numel(A->ndim - 2, A->shape), .a = in[0], .out = out,
        .err = flx_kerr_site(t)
    };
    return flx_kernel_eigh(t->ctx, &a);
}

/* ---- rules ---------------------------------------------------------------------------------------- */
static flx_status vjp_eigh(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    if (!y->in[0]->requires_grad) return FLX_OK;
    int64_t n = n_of(y);
    flx_tensor *V = V_of(y, n), *w = w_of(y, n);
    flx_tensor *gV = flx_slice(g, -1, 0, n, 1), *gw = flx_slice(g, -1, n, n + 1, 1); /* (.., n, 1) */
    flx_tensor *inner = flx_add(flx_mul(f_matrix(w, n), flx_matmul(mT(V), gV)),
                                flx_mul(eye_of(y, n), mT(gw)));
    gin[0] = sym(flx_matmul(flx_matmul(V, inner), mT(V)));
    return flx_rule_status(gin[0]);
}

static flx_status jvp_eigh(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[0]) return FLX_OK;
    int64_t n = n_of(y);
    flx_tensor *V = V_of(y, n), *w = w_of(y, n);
    flx_tensor *K = flx_matmul(flx_matmul(mT(V), sym(tin[0])), V);
    int32_t last = -1;
    flx_tensor *dw = flx_sum(flx_mul(K, eye_of(y, n)), 1, &last, true); /* (..., n, 1) */
    flx_tensor *dV = flx_matmul(V, flx_mul(f_matrix(w, n), K));
    flx_tensor *parts[2] = {dV, dw};
    *tout = flx_concat(2, parts, -1);
    return flx_rule_status(*tout);
}

void flx_ops_register_eigh(flx_op_def *t) {
    t[FLX_OP_EIGH] = (flx_op_def){"eigh", exec_eigh, vjp_eigh, jvp_eigh, 0};
}

/* ---- public -------------------------------------------------------------------------------------- */
flx_status flx_eigh(flx_tensor *a, flx_tensor **w, flx_tensor **v) {
    static const char *op = "flx_eigh";
    if (w) *w = NULL;
    if (v) *v = NULL;
    if (!w && !v)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: w and v are both NULL (nothing to return)", op);
    if (!flx_check_square(op, a)) return flx_last_status();
    int64_t n = a->shape[a->ndim - 1];
    if (flx_scope_begin() != FLX_OK) return flx_last_status();
    flx_tensor *S = sym(a), *P = NULL;
    if (S) {
        int64_t shape[FLX_MAX_DIMS];
        memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
        shape[a->ndim - 1] = n + 1;
        P = flx_adopt(flx_node_new(a->ctx, FLX_OP_EIGH, a->dtype, a->ndim, shape, 1, &S, NULL));
    }
    flx_tensor *ww = (P && w) ? w_of(P, n) : NULL;
    flx_tensor *vv = (P && v) ? V_of(P, n) : NULL;
    bool ok = P && (!w || ww) && (!v || vv);
    flx_tensor *keep[2];
    int32_t k = 0;
    if (ok && ww) keep[k++] = ww;
    if (ok && vv) keep[k++] = vv;
    flx_scope_end(k, keep);
    if (!ok) return flx_last_status();
    if (w) *w = ww;
    if (v) *v = vv;
    return FLX_OK;
}
