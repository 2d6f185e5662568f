/* lu.c — the LU family: det, slogdet, logdet, inv, solve and their _ex variants,
 * all batched over leading dimensions, with VJP and JVP rules.
 *
 * One LU_FACTOR node factorises A (partial pivoting, batched) into a packed row per matrix
 * holding the LU, the pivots and the info (layout: flx_lu_args in kernels/flx_kernels.h). It has
 * no gradient. Every consumer takes A itself as input 0 (so derivatives flow to A) and the packed
 * factors as input 1, which it only reads:
 *   LU_SOLVE(A, LU, B)  X = A^-1 B (A^-T B with attrs.lu.trans); attrs.lu.check reports a
 *                       singular matrix through the kernels' error record (FLX_KERR_SINGULAR).
 *   LU_DET(A, LU)       det / log|det| / sign / log det (attrs.lu.mode).
 *   LU_COFACTOR(A, LU)  adj(A)^T, computed without dividing by anything: the gradient of det,
 *                       finite and correct at singular A.
 * For n <= FLX_LU_REG_N the derivatives of det and log|det| skip the factors: one node
 *   LU_DET_GRAD(A [, g]) g cof(A) (attrs.lu.mode FLX_LU_DET_GRAD) or g A^-T (FLX_LU_LOGDET_GRAD),
 *                       g per matrix (absent: 1), one kernel that reads A (and g) once and
 *                       writes only the gradient; det and slogdet of such A are then
 *                       forward-only forms too, so a det forward + backward reads A twice and
 *                       stores nothing else.
 * The rules reuse the forward factors (a solve with the saved LU, never an explicit inverse
 * unless the result is one) and are built from these ops and public ones, so they differentiate
 * again:
 *   d X      = A^-1 (dB - dA X)               (solve; inv is solve with B = I)
 *   d det    = <cof(A), dA>                   (cof(A) = det A^-T, division-free)
 *   d logdet = <A^-T, dA> = tr(A^-1 dA)
 *   d cof    = tr(A^-1 dA) cof - A^-T dA^T cof    (valid for nonsingular A)
 *   d A^-T   = -A^-T dA^T A^-T
 * Second derivatives of det at an exactly singular matrix go through solves and are not finite:
 * the first derivative is exact there, higher ones need a nonsingular point.
 *
 * Forward-only forms: det, solve and inverse of inputs no gradient flows to, and of any A with
 * n <= FLX_LU_REG_N, take A in place of the factors (LU_DET(A), LU_SOLVE(A, B), LU_SOLVE(A) for
 * the inverse); their kernels factorise on the fly and write no packed factors. A rule that
 * needs the factors later builds them. */
#include <string.h>

#include "internal.h"

/* ---- helpers ------------------------------------------------------------------------------ */
static int64_t batch_of(const flx_tensor *A) { return flx_shape_numel(A->ndim - 2, A->shape); }
static int64_t n_of(const flx_tensor *A) { return A->shape[A->ndim - 1]; }

static flx_tensor *lu_node(flx_op op, flx_tensor *A, int32_t n_in, flx_tensor **in, int32_t ndim,
                           const int64_t *shape, int32_t mode, int32_t trans, int32_t check) {
    flx_attrs at = {.u.lu.mode = mode, .u.lu.trans = trans, .u.lu.check = check};
    return flx_adopt(flx_node_new(A->ctx, op, A->dtype, ndim, shape, n_in, in, &at));
}

/* Packed factors of a square (checked) A: shape (..., n*n + n + 1). */
static flx_tensor *factor_node(flx_tensor *A) {
    int64_t n = n_of(A), shape[FLX_MAX_DIMS];
    memcpy(shape, A->shape, sizeof(int64_t) * (size_t)(A->ndim - 2));
    shape[A->ndim - 2] = n * n + n + 1;
    return lu_node(FLX_OP_LU_FACTOR, A, 1, &A, A->ndim - 1, shape, FLX_LU_FACTOR, 0, 0);
}

/* X = A^-1 B (A^-T B when trans); B (..., n, k) with A's batch dims. */
static flx_tensor *solve_node(flx_tensor *A, flx_tensor *LU, flx_tensor *B, int32_t trans,
                              int32_t check) {
    flx_tensor *in[3] = {A, LU, B};
    if (!flx_check_inputs("flx_solve", 3, in)) return NULL;
    return lu_node(FLX_OP_LU_SOLVE, A, 3, in, B->ndim, B->shape, FLX_LU_SOLVE, trans, check);
}

/* A^-1 (A^-T when trans): a solve node without B, whose kernels generate the identity (no
 * identity tensor is built, broadcast or read). */
static flx_tensor *inverse_node(flx_tensor *A, flx_tensor *LU, int32_t trans, int32_t check) {
    flx_tensor *in[2] = {A, LU};
    if (!flx_check_inputs("flx_inv", 2, in)) return NULL;
    return lu_node(FLX_OP_LU_SOLVE, A, 2, in, A->ndim, A->shape, FLX_LU_SOLVE, trans, check);
}

/* Whether consumer y holds packed factors as input 1 (not a forward-only form): factors have
 * one axis less than A, a right-hand side as many. */
static bool has_lu(const flx_tensor *y) {
    return y->n_in > 1 && y->in[1]->ndim == y->in[0]->ndim - 1;
}

/* Input index of a solve node's right-hand side; absent (n_in <= index) for an inverse. */
static int32_t rhs_index(const flx_tensor *y) { return has_lu(y) ? 2 : 1; }

/* The right-hand side of a solve node: NULL for an inverse (the identity). */
static flx_tensor *solve_rhs(flx_tensor *y) {
    return y->n_in > rhs_index(y) ? y->in[rhs_index(y)] : NULL;
}

static flx_tensor *det_node(flx_tensor *A, flx_tensor *LU, int32_t mode) {
    flx_tensor *in[2] = {A, LU};
    if (!flx_check_inputs("flx_det", 2, in)) return NULL;
    return lu_node(FLX_OP_LU_DET, A, 2, in, A->ndim - 2, A->shape, mode, 0, 0);
}

/* det / logdet straight from A: one kernel that writes no packed factors, for an A no gradient
 * flows to (the factors are rebuilt if a JVP asks later). */
static flx_tensor *det_direct_node(flx_tensor *A, int32_t mode) {
    return lu_node(FLX_OP_LU_DET, A, 1, &A, A->ndim - 2, A->shape, mode, 0, 0);
}

/* Solve (B != NULL) or inverse straight from A, for inputs no gradient flows to: one kernel for
 * n <= 8, no packed factors stored. */
static flx_tensor *solve_direct_node(flx_tensor *A, flx_tensor *B, int32_t check) {
    flx_tensor *in[2] = {A, B};
    int32_t n_in = B ? 2 : 1;
    if (!flx_check_inputs(B ? "flx_solve" : "flx_inv", n_in, in)) return NULL;
    flx_tensor *shape_of = B ? B : A;
    return lu_node(FLX_OP_LU_SOLVE, A, n_in, in, shape_of->ndim, shape_of->shape, FLX_LU_SOLVE, 0, check);
}

static flx_tensor *cofactor_node(flx_tensor *A, flx_tensor *LU) {
    flx_tensor *in[2] = {A, LU};
    if (!flx_check_inputs("flx_det", 2, in)) return NULL;
    return lu_node(FLX_OP_LU_COFACTOR, A, 2, in, A->ndim, A->shape, FLX_LU_COFACTOR, 0, 0);
}

/* Whether A's det derivatives take the one-kernel LU_DET_GRAD form (registers on CUDA). */
static bool reg_sized(const flx_tensor *A) { return n_of(A) <= FLX_LU_REG_N; }

/* g F(A) per matrix (g NULL: F(A)), F = cof(A) for mode FLX_LU_DET_GRAD, A^-T for
 * FLX_LU_LOGDET_GRAD; A with reg_sized(A), g of A's batch shape. */
static flx_tensor *det_grad_node(flx_tensor *A, flx_tensor *g, int32_t mode) {
    if (g && g->dtype != A->dtype) g = flx_cast(g, A->dtype);
    flx_tensor *in[2] = {A, g};
    int32_t n_in = g ? 2 : 1;
    if (!flx_check_inputs("flx_det", n_in, in)) return NULL;
    return lu_node(FLX_OP_LU_DET_GRAD, A, n_in, in, A->ndim, A->shape, mode, 0, 0);
}

/* The LU input of a consumer node; a forward-only node gets its factors here, when a derivative
 * first asks for them. */
static flx_tensor *lu_in(flx_tensor *y) { return has_lu(y) ? y->in[1] : factor_node(y->in[0]); }

/* Batched matrix transpose (last two axes). */
static flx_tensor *mT(flx_tensor *x) { return flx_transpose(x, -2, -1); }

/* (...) -> (..., 1, 1) for broadcasting a per-matrix value over its matrix. */
static flx_tensor *per_matrix(flx_tensor *v) {
    if (!v) return NULL;
    int64_t shape[FLX_MAX_DIMS];
    memcpy(shape, v->shape, sizeof(int64_t) * (size_t)v->ndim);
    shape[v->ndim] = 1;
    shape[v->ndim + 1] = 1;
    return flx_reshape(v, v->ndim + 2, shape);
}

/* sum over the last two axes: (..., n, n) -> (...). */
static flx_tensor *sum_mat(flx_tensor *x, bool keepdims) {
    int32_t axes[2] = {-2, -1};
    return flx_sum(x, 2, axes, keepdims);
}

/* Identity broadcast to A's shape (a constant). */
static flx_tensor *eye_like(flx_tensor *A) {
    int64_t n = n_of(A);
    flx_tensor *I = flx_eye(A->ctx, A->dtype, n, n);
    if (!I || A->ndim == 2) return I;
    return flx_broadcast_to(I, A->ndim, A->shape);
}

/* A^-T from the saved factors (the value the logdet rules need). */
static flx_tensor *inv_t(flx_tensor *A, flx_tensor *LU) { return inverse_node(A, LU, 1, 0); }

/* ---- exec ----------------------------------------------------------------------------------- */
static flx_status exec_lu(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    const flx_tensor *A = t->in[0];
    flx_lu_args a = {
        .mode = t->attrs.u.lu.mode, .dtype = t->dtype, .batch = batch_of(A), .n = n_of(A),
        .trans = t->attrs.u.lu.trans, .check = t->attrs.u.lu.check, .err = flx_kerr_site(t),
        .out = out
    };
    if (t->op == FLX_OP_LU_FACTOR || !has_lu(t)) a.a = in[0]; /* factor, or forward-only */
    else a.lu = in[1];
    if (t->op == FLX_OP_LU_SOLVE) {
        a.b = t->n_in > rhs_index(t) ? in[rhs_index(t)] : NULL; /* NULL: the identity */
        a.k = t->shape[t->ndim - 1];
    }
    return flx_kernel_lu(t->ctx, &a);
}

static flx_status exec_det_grad(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    const flx_tensor *A = t->in[0];
    flx_lu_args a = {
        .mode = t->attrs.u.lu.mode, .dtype = t->dtype, .batch = batch_of(A), .n = n_of(A),
        .a = in[0], .b = t->n_in > 1 ? in[1] : NULL, .err = flx_kerr_site(t), .out = out
    };
    return flx_kernel_lu(t->ctx, &a);
}

/* ---- rules ------------------------------------------------------------------------------------ */
/* X = A^-1 B: gB = A^-T g, gA = -gB X^T.   X = A^-T B: gB = A^-1 g, gA = -X gB^T. */
static flx_status vjp_solve(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *A = y->in[0], *B = solve_rhs(y);
    int32_t tr = y->attrs.u.lu.trans;
    bool gradB = B && B->requires_grad;
    if (!A->requires_grad && !gradB) return FLX_OK;
    flx_tensor *gB = solve_node(A, lu_in(y), g, !tr, 0);
    if (!gB) return flx_last_status();
    if (gradB) gin[rhs_index(y)] = gB;
    if (A->requires_grad) {
        flx_tensor *p = tr ? flx_matmul(y, mT(gB)) : flx_matmul(gB, mT(y));
        gin[0] = flx_neg(p);
        if (!gin[0]) return flx_last_status();
    }
    return FLX_OK;
}

static flx_status jvp_solve(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    flx_tensor *A = y->in[0];
    flx_tensor *rhs = y->n_in > rhs_index(y) ? tin[rhs_index(y)] : NULL;
    if (!tin[0] && !rhs) return FLX_OK;
    if (tin[0]) {
        flx_tensor *dA = y->attrs.u.lu.trans ? mT(tin[0]) : tin[0];
        flx_tensor *p = flx_matmul(dA, y);
        rhs = rhs ? flx_sub(rhs, p) : flx_neg(p);
    }
    if (!rhs) return flx_last_status();
    *tout = solve_node(A, lu_in(y), rhs, y->attrs.u.lu.trans, 0);
    return flx_rule_status(*tout);
}

/* The LU_DET_GRAD mode of a det node's derivative: cof(A) for det, A^-T for log|det| / logdet. */
static int32_t grad_mode(const flx_tensor *y) {
    return y->attrs.u.lu.mode == FLX_LU_DET ? FLX_LU_DET_GRAD : FLX_LU_LOGDET_GRAD;
}

/* The factor F with d out = <F, dA> per matrix: cof(A) for det, A^-T for log|det| / logdet. */
static flx_tensor *det_factor(flx_tensor *y) {
    flx_tensor *A = y->in[0];
    if (reg_sized(A)) return det_grad_node(A, NULL, grad_mode(y));
    return y->attrs.u.lu.mode == FLX_LU_DET ? cofactor_node(A, lu_in(y)) : inv_t(A, lu_in(y));
}

static flx_status vjp_det(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *A = y->in[0];
    if (y->attrs.u.lu.mode == FLX_LU_SIGN || !A->requires_grad) return FLX_OK;
    gin[0] = reg_sized(A) ? det_grad_node(A, g, grad_mode(y)) : flx_mul(per_matrix(g), det_factor(y));
    return flx_rule_status(gin[0]);
}

static flx_status jvp_det(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (y->attrs.u.lu.mode == FLX_LU_SIGN || !tin[0]) return FLX_OK;
    *tout = sum_mat(flx_mul(det_factor(y), tin[0]), false);
    return flx_rule_status(*tout);
}

/* C = cof(A) with A's factors LU: the VJP for the cotangent G, transpose(A^-1 (<G, C> I - G C^T)),
 * and the JVP for the tangent dA, tr(A^-1 dA) C - A^-T dA^T C. */
static flx_tensor *cofactor_vjp(flx_tensor *A, flx_tensor *LU, flx_tensor *C, flx_tensor *G) {
    flx_tensor *s = sum_mat(flx_mul(G, C), true);
    flx_tensor *M = flx_sub(flx_mul(s, eye_like(A)), flx_matmul(G, mT(C)));
    flx_tensor *X = M && LU ? solve_node(A, LU, M, 0, 0) : NULL;
    return X ? mT(X) : NULL;
}

static flx_tensor *cofactor_jvp(flx_tensor *A, flx_tensor *LU, flx_tensor *C, flx_tensor *dA) {
    flx_tensor *tr = sum_mat(flx_mul(inv_t(A, LU), dA), true);
    flx_tensor *R = flx_matmul(mT(dA), C);
    flx_tensor *S = R && LU ? solve_node(A, LU, R, 1, 0) : NULL;
    return flx_sub(flx_mul(tr, C), S);
}

/* X = A^-T: d X = -X dA^T X. The map V -> -X V^T X is its own adjoint (the Hessian of log|det|
 * is symmetric), so it gives both the JVP for the tangent V and the VJP for the cotangent V. */
static flx_tensor *inv_t_deriv(flx_tensor *X, flx_tensor *V) {
    return flx_neg(flx_matmul(X, flx_matmul(mT(V), X)));
}

static flx_status vjp_cofactor(flx_tensor *y, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *A = y->in[0];
    if (!A->requires_grad) return FLX_OK;
    gin[0] = cofactor_vjp(A, lu_in(y), y, g);
    return flx_rule_status(gin[0]);
}

static flx_status jvp_cofactor(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[0]) return FLX_OK;
    *tout = cofactor_jvp(y->in[0], lu_in(y), y, tin[0]);
    return flx_rule_status(*tout);
}

/* y = g F(A), F = cof or A^-T: gA = VJP of F for g G, gg = <G, F>;  dy = g dF + dg F. The factors
 * and F itself (y when g is absent) are rebuilt from A here: the forward kept neither. */
static flx_tensor *det_grad_unscaled(flx_tensor *y) {
    return y->n_in > 1 ? det_grad_node(y->in[0], NULL, y->attrs.u.lu.mode) : y;
}

static flx_status vjp_det_grad(flx_tensor *y, flx_tensor *G, flx_tensor **gin) {
    flx_tensor *A = y->in[0], *g = y->n_in > 1 ? y->in[1] : NULL;
    bool gradA = A->requires_grad, gradg = g && g->requires_grad;
    if (!gradA && !gradg) return FLX_OK;
    flx_tensor *F = det_grad_unscaled(y);
    if (gradg) {
        gin[1] = sum_mat(flx_mul(G, F), false);
        if (!gin[1]) return flx_last_status();
    }
    if (gradA) {
        flx_tensor *H = g ? flx_mul(per_matrix(g), G) : G;
        gin[0] = y->attrs.u.lu.mode == FLX_LU_DET_GRAD ? cofactor_vjp(A, factor_node(A), F, H)
                                                       : inv_t_deriv(F, H);
        if (!gin[0]) return flx_last_status();
    }
    return FLX_OK;
}

static flx_status jvp_det_grad(flx_tensor *y, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    flx_tensor *A = y->in[0], *g = y->n_in > 1 ? y->in[1] : NULL;
    flx_tensor *dA = tin[0], *dg = g ? tin[1] : NULL;
    if (!dA && !dg) return FLX_OK;
    flx_tensor *F = det_grad_unscaled(y), *r = NULL;
    if (dA) {
        flx_tensor *dF = y->attrs.u.lu.mode == FLX_LU_DET_GRAD
                             ? cofactor_jvp(A, factor_node(A), F, dA)
                             : inv_t_deriv(F, dA);
        r = g ? flx_mul(per_matrix(g), dF) : dF;
    }
    if (dg) {
        flx_tensor *t = flx_mul(per_matrix(dg), F);
        r = dA ? flx_add(r, t) : t;
    }
    *tout = r;
    return flx_rule_status(*tout);
}

void flx_ops_register_lu(flx_op_def *t) {
    t[FLX_OP_LU_FACTOR] = (flx_op_def){"lu_factor", exec_lu, NULL, flx_jvp_zero, FLX_OPF_NONDIFF};
    t[FLX_OP_LU_SOLVE] = (flx_op_def){"lu_solve", exec_lu, vjp_solve, jvp_solve, 0};
    t[FLX_OP_LU_DET] = (flx_op_def){"lu_det", exec_lu, vjp_det, jvp_det, 0};
    t[FLX_OP_LU_COFACTOR] = (flx_op_def){"lu_cofactor", exec_lu, vjp_cofactor, jvp_cofactor, 0};
    t[FLX_OP_LU_DET_GRAD] = (flx_op_def){"lu_det_grad", exec_det_grad, vjp_det_grad, jvp_det_grad, 0};
}

/* ---- public ------------------------------------------------------------------------------------ */
static flx_tensor *det_public(const char *op, flx_tensor *a, int32_t mode) {
    if (!flx_check_square(op, a)) return NULL;
    /* Small A: the derivatives take LU_DET_GRAD, which needs no factors. */
    if (!a->requires_grad || !flx_grad_enabled() || reg_sized(a)) return det_direct_node(a, mode);
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *lu = factor_node(a);
    return flx_scope_return(lu ? det_node(a, lu, mode) : NULL);
}

flx_tensor *flx_det(flx_tensor *a) { return det_public("flx_det", a, FLX_LU_DET); }
flx_tensor *flx_logdet(flx_tensor *a) { return det_public("flx_logdet", a, FLX_LU_LOGDET); }

flx_status flx_slogdet(flx_tensor *a, flx_tensor **sign, flx_tensor **logabsdet) {
    static const char *op = "flx_slogdet";
    if (sign) *sign = NULL;
    if (logabsdet) *logabsdet = NULL;
    if (!sign || !logabsdet)
        return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: sign and logabsdet must not be NULL", op);
    if (!flx_check_square(op, a)) return flx_last_status();
    if (flx_scope_begin() != FLX_OK) return flx_last_status();
    flx_tensor *s = NULL, *l = NULL;
    if (reg_sized(a)) { /* two register kernels on A beat storing and reading back the factors */
        s = det_direct_node(a, FLX_LU_SIGN);
        l = det_direct_node(a, FLX_LU_LOGABS);
    } else {
        flx_tensor *lu = factor_node(a);
        s = lu ? det_node(a, lu, FLX_LU_SIGN) : NULL;
        l = lu ? det_node(a, lu, FLX_LU_LOGABS) : NULL;
    }
    flx_tensor *keep[2] = {s, l};
    bool ok = s && l;
    flx_scope_end(ok ? 2 : 0, keep);
    if (!ok) return flx_last_status();
    *sign = s;
    *logabsdet = l;
    return FLX_OK;
}

/* Per-matrix info (i32, batch shape) of packed factors: 0, or k when U(k-1, k-1) == 0. */
static flx_tensor *info_of(flx_tensor *lu) {
    int64_t P = lu->shape[lu->ndim - 1];
    flx_tensor *s = flx_slice(lu, -1, P - 1, P, 1);
    return flx_cast(flx_squeeze(s, -1), FLX_I32);
}

/* Shared by inv/solve and their _ex forms: check == !info. */
static flx_tensor *solve_public(const char *op, flx_tensor *a, flx_tensor *b, bool is_inv,
                                flx_tensor **info) {
    if (info) *info = NULL;
    if (!flx_check_square(op, a)) return NULL;
    bool vec = false;
    if (!is_inv) {
        flx_tensor *in[2] = {a, b};
        if (!flx_check_inputs(op, 2, in)) return NULL;
        if (b->dtype != a->dtype) {
            flx_set_error(FLX_ERR_DTYPE, "%s: dtypes differ: A %s and B %s (cast one with flx_cast)",
                          op, flx_describe(a), flx_describe(b));
            return NULL;
        }
        int32_t nb = a->ndim - 2;
        vec = b->ndim == a->ndim - 1 &&
              memcmp(b->shape, a->shape, sizeof(int64_t) * (size_t)(a->ndim - 1)) == 0;
        bool mat = b->ndim == a->ndim &&
                   memcmp(b->shape, a->shape, sizeof(int64_t) * (size_t)nb) == 0 &&
                   b->shape[nb] == a->shape[nb];
        if (!vec && !mat) {
            flx_set_error(FLX_ERR_SHAPE,
                          "%s: B must be (..., n) or (..., n, k) with A's batch dims: A %s, B %s "
                          "(batch dims must match exactly; broadcast them first)",
                          op, flx_describe(a), flx_describe(b));
            return NULL;
        }
    }
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *B = is_inv ? NULL : (vec ? flx_unsqueeze(b, -1) : b);
    /* Straight from A, no packed factors, unless info is asked for: when no gradient can flow,
     * and for small A always (one register kernel; a derivative builds the factors it needs). */
    bool direct = !info && (reg_sized(a) || !flx_grad_enabled() ||
                            (!a->requires_grad && !(b && b->requires_grad)));
    flx_tensor *lu = direct ? NULL : factor_node(a);
    flx_tensor *x = direct ? ((is_inv || B) ? solve_direct_node(a, B, 1) : NULL)
                  : !lu ? NULL
                  : is_inv ? inverse_node(a, lu, 0, info ? 0 : 1)
                  : B ? solve_node(a, lu, B, 0, info ? 0 : 1) : NULL;
    if (x && vec) x = flx_squeeze(x, -1);
    flx_tensor *inf = (x && info) ? info_of(lu) : NULL;
    flx_tensor *keep[2] = {x, inf};
    bool ok = x && (!info || inf);
    flx_scope_end(ok ? (info ? 2 : 1) : 0, keep);
    if (!ok) return NULL;
    if (info) *info = inf;
    return x;
}

flx_tensor *flx_inv(flx_tensor *a) { return solve_public("flx_inv", a, NULL, true, NULL); }
flx_tensor *flx_solve(flx_tensor *a, flx_tensor *b) {
    return solve_public("flx_solve", a, b, false, NULL);
}

flx_tensor *flx_inv_ex(flx_tensor *a, flx_tensor **info) {
    if (!info) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_inv_ex: info must not be NULL");
        return NULL;
    }
    return solve_public("flx_inv_ex", a, NULL, true, info);
}

flx_tensor *flx_solve_ex(flx_tensor *a, flx_tensor *b, flx_tensor **info) {
    if (!info) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "flx_solve_ex: info must not be NULL");
        return NULL;
    }
    return solve_public("flx_solve_ex", a, b, false, info);
}
