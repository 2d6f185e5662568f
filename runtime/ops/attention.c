/* attention.c — scaled dot-product attention, flx_attention(q, k, v, causal, scale), with fused
 * kernels for the value, the VJP and the JVP (kernels: runtime/cpu/attention.c, the reference,
 * and kernels/attention.cu; semantics: flx_attention_args in kernels/flx_kernels.h).
 *
 * Write f(X) = softmax(s q k^T + mask) v for X = (q, k, v). Rows (every q below is (B, H, S, D),
 * k (B, H, T, D), v (B, H, T, Dv)):
 *   ATTENTION (q, k, v)            o, forward only: what inference builds (no logsumexp kept).
 *   ATTENTION_FWD (q, k, v)        packed [o | lse]: the forward when a gradient may follow. No
 *                                  gradient flows through the node itself.
 *   ATTENTION_OUT (P, q, k, v)     o, aliasing P's leading elements (no copy); the user's tensor.
 *   ATTENTION_BWD (q, k, v, P, g)  packed [dq | dk | dv | delta] = J_f(X)^T g in one kernel call
 *                                  that recomputes the probabilities from lse. No gradient.
 *   ATTENTION_DQ (W, q, k, v, g)   dq, aliasing W's leading elements.
 *   ATTENTION_GRAD (W, q, k, v, g) dk or dv, copied out of W.
 *   ATTENTION_JVP (q, k, v, t...)  J_f(X) t in one fused pass (t: the tangents present).
 * When q, k, v are views of one tensor they tile (a fused QKV projection) the nodes take that
 * tensor instead and read it in place: see "q, k, v read in place" below.
 * Packed layouts put each part at a 256-byte-aligned byte offset (lse is in the stats dtype: f32
 * for f32/f16/bf16, f64 for f64), so kernels can use vector loads on every part.
 *
 * First derivatives are the fused nodes: VJP(o) = BWD, JVP(o) = JVP. Higher orders use that BWD
 * is linear in g and JVP linear in t, each the other's transpose, and that the Hessian of
 * phi_g(X) = <g, f(X)> is symmetric, so with BWD(X, g) = grad phi_g:
 *   VJP of BWD (cotangent h)       in g: J_f(X) h (a JVP node);   in X: S1(X, g, h)
 *   JVP of BWD (tangents tX, tg)   BWD(X, tg) + S1(X, g, tX)
 *   VJP of JVP (cotangent h)       in t: BWD(X, h);               in X: S1(X, h, t)
 *   JVP of JVP (tangents uX, ut)   JVP(X, ut) + S2(X, t, uX)
 * where S1(X, g, u) = d/de BWD(X + e u, g) and S2(X, t, u) = f''(X)[t, u] are compositions of
 * public ops (matmul, softmax, sums) written out below. They materialise the S x T probabilities,
 * as any second derivative of attention does here; first derivatives never do. Being made of ops
 * with rules, every order beyond works too. */
#include <math.h>
#include <string.h>

#include "internal.h"

/* ---- geometry and packed layouts ------------------------------------------------------------ */
typedef struct dims {
    int64_t B, H, S, T, D, Dv;
} dims;

static dims dims_of(const flx_tensor *q, const flx_tensor *k, const flx_tensor *v) {
    return (dims){q->shape[0], q->shape[1], q->shape[2], k->shape[2], q->shape[3], v->shape[3]};
}

/* Contiguous strides of a (B, H, R, C) tensor. */
static flx_attention_strides contig(const dims *d, int64_t R, int64_t C) {
    return (flx_attention_strides){d->H * R * C, R * C, C};
}

enum { PART_ALIGN = 256 };
static size_t align_up(size_t n) { return (n + PART_ALIGN - 1) / PART_ALIGN * PART_ALIGN; }

/* Elements of dtype dt that hold `bytes` bytes. */
static int64_t elems_for(size_t bytes, flx_dtype dt) {
    size_t es = flx_dtype_size(dt);
    return (int64_t)((bytes + es - 1) / es);
}

/* [o | lse]: the byte offset of lse and the packed length in elements. */
static int64_t fwd_layout(const dims *d, flx_dtype dt, size_t *lse_off) {
    size_t rows = (size_t)(d->B * d->H * d->S);
    *lse_off = align_up(rows * (size_t)d->Dv * flx_dtype_size(dt));
    return elems_for(*lse_off + rows * flx_dtype_size(flx_attention_stats_dtype(dt)), dt);
}

/* [dq | dk | dv | delta]: byte offsets of the parts (dq at 0; a part not wanted is empty). */
enum { WANT_DQ = 1, WANT_DKV = 2 };
static int64_t bwd_layout(const dims *d, flx_dtype dt, int32_t want, size_t off[4]) {
    size_t es = flx_dtype_size(dt), bh = (size_t)(d->B * d->H);
    size_t len[4] = {
        (want & WANT_DQ) ? bh * (size_t)(d->S * d->D) * es : 0,
        (want & WANT_DKV) ? bh * (size_t)(d->T * d->D) * es : 0,
        (want & WANT_DKV) ? bh * (size_t)(d->T * d->Dv) * es : 0,
        bh * (size_t)d->S * flx_dtype_size(flx_attention_stats_dtype(dt)),
    };
    size_t at = 0;
    for (int i = 0; i < 4; i++) {
        off[i] = at;
        at = i < 3 ? align_up(at + len[i]) : at + len[i];
    }
    return elems_for(at, dt);
}

/* [dX | delta] of a qkv BWD node over the tensor X: the byte offset of delta. */
static size_t qkv_bwd_delta(const flx_tensor *X, flx_dtype dt) {
    return align_up((size_t)X->numel * flx_dtype_size(dt));
}

/* The geometry of a node whose q, k, v are views of one tensor (attrs.attention.qkv). */
static dims qkv_dims(const flx_attrs *at) {
    const int64_t *v = at->u.attention.vdims;
    return (dims){v[0], v[1], v[2], v[2], v[3], v[3]};
}

/* Where q, k, v (or their gradients) sit in a qkv node's one tensor (or its gradient) at base. */
static void qkv_views(const flx_tensor *node, const void *base, char *views[3]) {
    const int64_t *off = node->attrs.u.attention.off, es = (int64_t)flx_dtype_size(node->dtype);
    for (int i = 0; i < 3; i++) views[i] = (char *)base + off[i] * es;
}

/* How many inputs q, k, v take: one tensor for a qkv node, else three. */
static int32_t qkv_inputs(const flx_tensor *node) { return node->attrs.u.attention.qkv ? 1 : 3; }

/* The kernel arguments common to every mode, with q, k, v read from in[0..2], or, for a qkv
 * node, in place from the one tensor in[0] (qkv_inputs: how many inputs that takes). */
static flx_attention_args base_args(const flx_tensor *node, const void *const *in, int32_t mode,
                                    dims *d) {
    const flx_attrs *at = &node->attrs;
    const bool qkv = at->u.attention.qkv != 0;
    *d = qkv ? qkv_dims(at) : dims_of(node->in[0], node->in[1], node->in[2]);
    flx_attention_args a = {
        .mode = mode, .dtype = node->dtype, .B = d->B, .H = d->H, .S = d->S, .T = d->T, .D = d->D,
        .Dv = d->Dv, .causal = at->u.attention.causal, .scale = at->u.attention.scale,
        .sq = contig(d, d->S, d->D), .sk = contig(d, d->T, d->D), .sv = contig(d, d->T, d->Dv),
    };
    if (qkv) {
        char *view[3];
        qkv_views(node, in[0], view);
        a.q = view[0], a.k = view[1], a.v = view[2];
        a.sq = a.sk = a.sv = at->u.attention.vs;
    } else {
        a.q = in[0];
        a.k = in[1];
        a.v = in[2];
    }
    return a;
}

/* ---- exec ----------------------------------------------------------------------------------- */
/* ATTENTION (o only) and ATTENTION_FWD (packed [o | lse]). */
static flx_status exec_fwd(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    dims d;
    flx_attention_args a = base_args(t, in, FLX_ATTENTION_FWD, &d);
    a.o = out;
    a.so = contig(&d, d.S, d.Dv);
    if (t->op == FLX_OP_ATTENTION_FWD) {
        size_t lse_off;
        fwd_layout(&d, t->dtype, &lse_off);
        a.lse = (char *)out + lse_off;
    }
    return flx_kernel_attention(t->ctx, &a);
}

static flx_status exec_bwd(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    dims d;
    flx_attention_args a = base_args(t, in, FLX_ATTENTION_BWD, &d);
    int32_t used = qkv_inputs(t);
    size_t lse_off, off[4];
    fwd_layout(&d, t->dtype, &lse_off);
    int32_t want = t->attrs.u.attention.want;
    a.o = (void *)in[used]; /* read only in BWD */
    a.so = contig(&d, d.S, d.Dv);
    a.lse = (char *)in[used] + lse_off;
    a.dout = in[used + 1];
    a.sdout = a.so;
    char *w = (char *)out;
    if (t->attrs.u.attention.qkv) {
        /* dq, dk, dv land where q, k, v sit in their tensor: together they are its gradient */
        char *view[3];
        qkv_views(t, w, view);
        a.dq = view[0], a.dk = view[1], a.dv = view[2];
        a.delta = w + qkv_bwd_delta(t->in[0], t->dtype);
    } else {
        bwd_layout(&d, t->dtype, want, off);
        a.dq = (want & WANT_DQ) ? w + off[0] : NULL;
        a.dk = (want & WANT_DKV) ? w + off[1] : NULL;
        a.dv = (want & WANT_DKV) ? w + off[2] : NULL;
        a.delta = w + off[3];
    }
    a.sdq = a.sq;
    a.sdk = a.sk;
    a.sdv = a.sv;
    return flx_kernel_attention(t->ctx, &a);
}

/* ATTENTION_GRAD: dk or dv copied out of the packed BWD result. */
static flx_status exec_grad(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    const flx_tensor *W = t->in[0];
    dims d = dims_of(W->in[0], W->in[1], W->in[2]);
    size_t off[4];
    bwd_layout(&d, t->dtype, W->attrs.u.attention.want, off);
    size_t es = flx_dtype_size(t->dtype);
    flx_copy_args a = {
        .elem_size = es, .ndim = 1, .shape = {t->numel},
        .in_off = (int64_t)(off[t->attrs.u.attention.part] / es), .in_strides = {1},
        .out_off = 0, .out_strides = {1}, .in = in[0], .out = out
    };
    return flx_kernel_copy(t->ctx, &a);
}

static flx_status exec_jvp(const flx_tensor *t, void *out, const void *const *in) {
    if (t->numel == 0) return FLX_OK;
    dims d;
    flx_attention_args a = base_args(t, in, FLX_ATTENTION_JVP, &d);
    const void *tan[3] = {NULL, NULL, NULL};
    for (int32_t i = 0, pos = 3; i < 3; i++)
        if (t->attrs.u.attention.tmask & (1 << i)) tan[i] = in[pos++];
    a.tq = tan[0];
    a.tk = tan[1];
    a.tv = tan[2];
    a.stq = a.sq;
    a.stk = a.sk;
    a.stv = a.sv;
    a.tout = out;
    a.stout = contig(&d, d.S, d.Dv);
    return flx_kernel_attention(t->ctx, &a);
}

/* ---- nodes ---------------------------------------------------------------------------------- */
/* Index of q among the inputs of an attention node (the packed input comes first, if any). */
static int32_t qpos(const flx_tensor *n) {
    return (n->op == FLX_OP_ATTENTION_OUT || n->op == FLX_OP_ATTENTION_DQ ||
            n->op == FLX_OP_ATTENTION_GRAD) ? 1 : 0;
}

static flx_tensor *fwd_node(flx_tensor *const *X, const flx_attrs *at) {
    dims d = dims_of(X[0], X[1], X[2]);
    size_t lse_off;
    int64_t n = fwd_layout(&d, X[0]->dtype, &lse_off);
    return flx_adopt(flx_node_new(X[0]->ctx, FLX_OP_ATTENTION_FWD, X[0]->dtype, 1, &n, 3, X, at));
}

static flx_tensor *out_node(flx_tensor *P, flx_tensor *const *X, const flx_attrs *at) {
    flx_tensor *in[4] = {P, X[0], X[1], X[2]};
    int64_t shape[4] = {X[0]->shape[0], X[0]->shape[1], X[0]->shape[2], X[2]->shape[3]};
    return flx_adopt(flx_node_new(X[0]->ctx, FLX_OP_ATTENTION_OUT, X[0]->dtype, 4, shape, 4, in, at));
}

/* J_f(X) t, t[i] NULL = zero; NULL when every t[i] is. */
static flx_tensor *jvp_node(flx_tensor *const *X, flx_tensor *const *t, const flx_attrs *src) {
    flx_attrs at = *src;
    flx_tensor *in[6] = {X[0], X[1], X[2]};
    int32_t n = 3;
    at.u.attention.tmask = 0;
    for (int32_t i = 0; i < 3; i++)
        if (t[i]) {
            at.u.attention.tmask |= 1 << i;
            in[n++] = t[i];
        }
    if (n == 3) return NULL;
    int64_t shape[4] = {X[0]->shape[0], X[0]->shape[1], X[0]->shape[2], X[2]->shape[3]};
    return flx_adopt(flx_node_new(X[0]->ctx, FLX_OP_ATTENTION_JVP, X[0]->dtype, 4, shape, n, in, &at));
}

/* J_f(X)^T g into r[0..2] (dq, dk, dv; NULL where want leaves it out), from the forward packed
 * node P (NULL: a new forward). False on failure. */
static bool grads_node(flx_tensor *const *X, flx_tensor *P, flx_tensor *g, int32_t want,
                       const flx_attrs *src, flx_tensor **r) {
    r[0] = r[1] = r[2] = NULL;
    flx_attrs at = *src; /* causal and scale; the other members are set where they matter */
    if (!P && !(P = fwd_node(X, &at))) return false;
    dims d = dims_of(X[0], X[1], X[2]);
    size_t off[4];
    at.u.attention.want = want;
    int64_t n = bwd_layout(&d, X[0]->dtype, want, off);
    flx_tensor *in[5] = {X[0], X[1], X[2], P, g};
    flx_tensor *W = flx_adopt(flx_node_new(X[0]->ctx, FLX_OP_ATTENTION_BWD, X[0]->dtype, 1, &n, 5, in, &at));
    if (!W) return false;
    flx_tensor *pin[5] = {W, X[0], X[1], X[2], g};
    for (int32_t p = 0; p < 3; p++) {
        if (!(want & (p == 0 ? WANT_DQ : WANT_DKV))) continue;
        flx_attrs pa = at;
        pa.u.attention.part = p;
        const flx_tensor *like = X[p == 2 ? 2 : p];
        r[p] = flx_adopt(flx_node_new(X[0]->ctx, p == 0 ? FLX_OP_ATTENTION_DQ : FLX_OP_ATTENTION_GRAD,
                                      X[0]->dtype, 4, like->shape, 5, pin, &pa));
        if (!r[p]) return false;
    }
    return true;
}

/* ---- compositions for second derivatives ---------------------------------------------------- */
/* NULL operands stand for zeros; c->ok turns false when an op on real operands fails. */
typedef struct cx {
    bool ok;
    flx_ctx *ctx;
    flx_dtype dt;
    double s;
    int32_t causal;
} cx;

static flx_tensor *chk(cx *c, flx_tensor *r) {
    if (!r) c->ok = false;
    return r;
}
static flx_tensor *mm(cx *c, flx_tensor *a, flx_tensor *b) { return a && b ? chk(c, flx_matmul(a, b)) : NULL; }
static flx_tensor *mT(cx *c, flx_tensor *x) { return x ? chk(c, flx_transpose(x, 2, 3)) : NULL; }
static flx_tensor *mul(cx *c, flx_tensor *a, flx_tensor *b) { return a && b ? chk(c, flx_mul(a, b)) : NULL; }
static flx_tensor *scal(cx *c, flx_tensor *x, double a) { return x ? chk(c, flx_mul_scalar(x, a)) : NULL; }
static flx_tensor *add(cx *c, flx_tensor *a, flx_tensor *b) {
    return !a ? b : !b ? a : chk(c, flx_add(a, b));
}
static flx_tensor *sub(cx *c, flx_tensor *a, flx_tensor *b) {
    return !b ? a : !a ? chk(c, flx_neg(b)) : chk(c, flx_sub(a, b));
}
/* Sum over keys, kept as size 1. */
static flx_tensor *rowsum(cx *c, flx_tensor *x) {
    int32_t ax = 3;
    return x ? chk(c, flx_sum(x, 1, &ax, true)) : NULL;
}
/* The softmax Jacobian at probabilities P applied to W: P o (W - rowsum(P o W)). */
static flx_tensor *sm_jvp(cx *c, flx_tensor *P, flx_tensor *W) {
    return W ? mul(c, P, sub(c, W, rowsum(c, mul(c, P, W)))) : NULL;
}

/* The probabilities p_ij (B, H, S, T): 0 off the causal mask and on dead rows. */
static flx_tensor *probs(cx *c, flx_tensor *q, flx_tensor *k) {
    flx_tensor *Z = scal(c, mm(c, q, mT(c, k)), c->s);
    if (!Z) return NULL;
    const int64_t S = q->shape[2], T = k->shape[2];
    flx_tensor *rowok = NULL;
    if (c->causal) {
        /* key j is kept when j - i <= T - S, and every key of a dead row (i < S - T) is kept too
         * (finite scores; the row is zeroed after the softmax) */
        int64_t cs[2] = {1, T}, rs[2] = {S, 1};
        flx_tensor *cols = flx_reshape(flx_arange(c->ctx, FLX_F64, 0, (double)T, 1), 2, cs);
        flx_tensor *rows = flx_reshape(flx_arange(c->ctx, FLX_F64, 0, (double)S, 1), 2, rs);
        flx_tensor *dead = flx_cast(flx_lt(rows, flx_scalar(c->ctx, FLX_F64, (double)(S - T))), FLX_F64);
        flx_tensor *valid = flx_cast(flx_le(flx_sub(cols, rows), flx_scalar(c->ctx, FLX_F64, (double)(T - S))),
                                     FLX_F64);
        flx_tensor *keep = flx_gt(flx_add(valid, dead), flx_scalar(c->ctx, FLX_F64, 0));
        flx_tensor *bias = flx_where(keep, flx_scalar(c->ctx, c->dt, 0), flx_scalar(c->ctx, c->dt, -INFINITY));
        Z = chk(c, flx_add(Z, bias));
        if (S > T) rowok = chk(c, flx_cast(flx_eq(dead, flx_scalar(c->ctx, FLX_F64, 0)), c->dt));
    }
    flx_tensor *P = Z ? chk(c, flx_softmax(Z, 3, 1.0)) : NULL;
    return rowok ? mul(c, P, rowok) : P;
}

/* Tangent of the scores along (tq, tk): s (tq k^T + q tk^T). */
static flx_tensor *score_tangent(cx *c, flx_tensor *q, flx_tensor *k, flx_tensor *tq, flx_tensor *tk) {
    return scal(c, add(c, mm(c, tq, mT(c, k)), mm(c, q, mT(c, tk))), c->s);
}

/* S1(X, g, u) = d/de BWD(X + e u, g) into r[0..2]. With dP = g v^T, dZ = P o (dP - rowsum(P o dP)):
 * BWD = (s dZ k, s dZ^T q, P^T g), and along u: Pu = sm_jvp(P, Zu), dPu = g uv^T,
 * dZu = Pu o (dP - rowsum(P o dP)) - P o rowsum(Pu o dP) + sm_jvp(P, dPu). */
static void s1(cx *c, flx_tensor *const *X, flx_tensor *g, flx_tensor *const *u, flx_tensor **r) {
    flx_tensor *q = X[0], *k = X[1], *v = X[2];
    flx_tensor *P = probs(c, q, k);
    flx_tensor *dP = mm(c, g, mT(c, v));
    flx_tensor *dPc = sub(c, dP, rowsum(c, mul(c, P, dP)));
    flx_tensor *dZ = mul(c, P, dPc);
    flx_tensor *Pu = sm_jvp(c, P, score_tangent(c, q, k, u[0], u[1]));
    flx_tensor *dZu = add(c, sub(c, mul(c, Pu, dPc), mul(c, P, rowsum(c, mul(c, Pu, dP)))),
                          sm_jvp(c, P, mm(c, g, mT(c, u[2]))));
    r[0] = scal(c, add(c, mm(c, dZu, k), mm(c, dZ, u[1])), c->s);
    r[1] = scal(c, add(c, mm(c, mT(c, dZu), q), mm(c, mT(c, dZ), u[0])), c->s);
    r[2] = mm(c, mT(c, Pu), g);
}

/* S2(X, t, u) = f''(X)[t, u] = Ptu v + Pt uv + Pu tv with Zt, Zu the score tangents,
 * Ztu = s (tq uk^T + uq tk^T), Pt = sm_jvp(P, Zt) and
 * Ptu = Pu o (Zt - rowsum(P o Zt)) + P o (Ztu - rowsum(Pu o Zt + P o Ztu)). */
static flx_tensor *s2(cx *c, flx_tensor *const *X, flx_tensor *const *t, flx_tensor *const *u) {
    flx_tensor *q = X[0], *k = X[1], *v = X[2];
    flx_tensor *P = probs(c, q, k);
    flx_tensor *Zt = score_tangent(c, q, k, t[0], t[1]), *Zu = score_tangent(c, q, k, u[0], u[1]);
    flx_tensor *Ztu = scal(c, add(c, mm(c, t[0], mT(c, u[1])), mm(c, u[0], mT(c, t[1]))), c->s);
    flx_tensor *Pt = sm_jvp(c, P, Zt), *Pu = sm_jvp(c, P, Zu);
    flx_tensor *Ptu = add(c, mul(c, Pu, sub(c, Zt, rowsum(c, mul(c, P, Zt)))),
                          mul(c, P, sub(c, Ztu, rowsum(c, add(c, mul(c, Pu, Zt), mul(c, P, Ztu))))));
    return add(c, add(c, mm(c, Ptu, v), mm(c, Pt, u[2])), mm(c, Pu, t[2]));
}

static cx cx_of(const flx_tensor *node, const flx_tensor *q) {
    return (cx){true, q->ctx, q->dtype, node->attrs.u.attention.scale, node->attrs.u.attention.causal};
}

static flx_status cx_status(const cx *c) {
    if (c->ok) return FLX_OK;
    flx_status s = flx_last_status();
    return s != FLX_OK ? s : flx_set_error(FLX_ERR_STATE, "attention: a derivative rule failed");
}

static bool any3(flx_tensor *const *t) { return t[0] || t[1] || t[2]; }

/* ---- q, k, v read in place from one tensor ---------------------------------------------------
 * When q, k and v are slices, reshapes and permutes (not yet run) of one tensor X that they tile
 * exactly -- the three heads of a fused QKV projection -- the nodes read X itself with strides
 * (attrs.attention.qkv), and the first-order VJP writes dq, dk, dv where q, k, v sit in X: that
 * buffer is X's gradient as it stands, with no permute, pad or sum. The tiling means: with the
 * three offsets in ascending order equally spaced (the first 0), the dimensions (B, H, seq, dim,
 * 3) with strides (vs.b, vs.h, vs.r, 1, spacing) are a permutation of a contiguous layout of
 * X's size. Derivative rules beyond the first-order VJP rebuild q, k, v from X with public ops
 * (split3) and map results back (merge3), so every order works as on separate tensors. The
 * nodes: ATTENTION (X), ATTENTION_FWD (X), ATTENTION_OUT (P, X), ATTENTION_BWD (X, P, g) packed
 * [dX | delta], ATTENTION_DQ part 3 (W, X, g) = dX aliasing W. */

/* The five dimensions (B, H, seq, dim, 3) of a qkv node as sizes and strides, and `order`, the
 * dimensions by decreasing stride (size-1 ones last): X's own contiguous layout. pos[j]: which
 * of q, k, v is the j-th along the 3 dimension. False when the attrs do not tile n elements. */
static bool qkv_layout(const flx_attrs *at, int64_t n, int64_t *size, int64_t *st, int32_t *order,
                       int32_t *pos) {
    const int64_t *o = at->u.attention.off;
    for (int32_t i = 0; i < 3; i++) pos[i] = i;
    for (int32_t i = 0; i < 3; i++) /* three elements: sort the positions by offset */
        for (int32_t j = i + 1; j < 3; j++)
            if (o[pos[j]] < o[pos[i]]) {
                int32_t t = pos[i];
                pos[i] = pos[j];
                pos[j] = t;
            }
    const int64_t gap = o[pos[1]] - o[pos[0]];
    if (o[pos[0]] != 0 || gap <= 0 || o[pos[2]] - o[pos[1]] != gap) return false;
    const int64_t *vd = at->u.attention.vdims;
    const flx_attention_strides *vs = &at->u.attention.vs;
    int64_t sz[5] = {vd[0], vd[1], vd[2], vd[3], 3}, sd[5] = {vs->b, vs->h, vs->r, 1, gap};
    int32_t m = 0;
    for (int32_t i = 0; i < 5; i++) /* dims of size > 1 by decreasing stride, then the rest */
        if (sz[i] > 1) order[m++] = i;
    for (int32_t i = 0; i < 5; i++)
        if (sz[i] <= 1) order[m++] = i;
    for (int32_t i = 0; i < 5; i++) {
        size[i] = sz[i];
        st[i] = sd[i];
    }
    int32_t big = 0;
    while (big < 5 && sz[order[big]] > 1) big++;
    for (int32_t i = 1; i < big; i++)
        for (int32_t j = i; j > 0 && sd[order[j]] > sd[order[j - 1]]; j--) {
            int32_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    int64_t want = 1;
    for (int32_t i = big - 1; i >= 0; i--) {
        if (sz[order[i]] <= 0 || sd[order[i]] != want) return false;
        want *= sz[order[i]];
    }
    return want == n;
}

/* Whether q, k, v are views of one tensor that they tile; then *X and the attrs are set. */
static bool find_qkv(flx_tensor *const *q3, flx_attrs *at, flx_tensor **X) {
    flx_view v[3];
    for (int32_t i = 0; i < 3; i++) {
        v[i] = flx_view_of(q3[i]);
        if (v[i].base == q3[i] || v[i].base != v[0].base || v[i].ndim != 4) return false;
        if (v[i].shape[3] > 1 && v[i].strides[3] != 1) return false;
        for (int32_t d = 0; d < 4; d++)
            if (v[i].shape[d] != v[0].shape[d] || (d < 3 && v[i].strides[d] != v[0].strides[d]))
                return false;
    }
    flx_attrs t = *at;
    t.u.attention.qkv = 1;
    for (int32_t d = 0; d < 4; d++) t.u.attention.vdims[d] = v[0].shape[d];
    t.u.attention.vs = (flx_attention_strides){v[0].strides[0], v[0].strides[1], v[0].strides[2]};
    for (int32_t i = 0; i < 3; i++) t.u.attention.off[i] = v[i].off;
    int64_t size[5], st[5];
    int32_t order[5], pos[3];
    if (!qkv_layout(&t, v[0].base->numel, size, st, order, pos)) return false;
    *at = t;
    *X = v[0].base;
    return true;
}

/* The attrs of the same attention on separate q, k, v. */
static flx_attrs plain_attrs(const flx_attrs *at) {
    flx_attrs p = *at;
    p.u.attention.qkv = 0;
    return p;
}

/* X's contiguous layout as (3, B, H, seq, dim): reshape to `order`, then permute. */
static flx_tensor *qkv_stacked(cx *c, const flx_attrs *at, flx_tensor *X, int32_t *order,
                               int32_t *pos, int64_t *size) {
    int64_t st[5], shp[5];
    qkv_layout(at, X->numel, size, st, order, pos);
    int32_t perm[5], want[5] = {4, 0, 1, 2, 3};
    for (int32_t i = 0; i < 5; i++) shp[i] = size[order[i]];
    for (int32_t i = 0; i < 5; i++)
        for (int32_t j = 0; j < 5; j++)
            if (order[j] == want[i]) perm[i] = j;
    return chk(c, flx_permute(chk(c, flx_reshape(X, 5, shp)), perm));
}

/* q, k, v of X (NULL X: NULLs), as ops with rules. */
static void split3(cx *c, const flx_attrs *at, flx_tensor *X, flx_tensor **r) {
    r[0] = r[1] = r[2] = NULL;
    if (!X || !c->ok) return;
    int64_t size[5];
    int32_t order[5], pos[3];
    flx_tensor *s = qkv_stacked(c, at, X, order, pos, size);
    for (int32_t j = 0; j < 3 && s; j++)
        r[pos[j]] = chk(c, flx_reshape(chk(c, flx_slice(s, 0, j, j + 1, 1)), 4, size));
}

/* The tensor of X's shape holding r[i] where q, k, v sit (NULL r[i]: zeros); NULL if all are. */
static flx_tensor *merge3(cx *c, const flx_attrs *at, flx_tensor *X, flx_tensor *const *r) {
    if (!any3(r) || !c->ok) return NULL;
    int64_t size[5], st[5];
    int32_t order[5], pos[3], perm[5], want[5] = {4, 0, 1, 2, 3};
    qkv_layout(at, X->numel, size, st, order, pos);
    flx_tensor *parts[3];
    for (int32_t j = 0; j < 3; j++)
        parts[j] = r[pos[j]] ? r[pos[j]] : chk(c, flx_zeros(c->ctx, c->dt, 4, size));
    flx_tensor *s = chk(c, flx_stack(3, parts, 0)); /* (3, B, H, seq, dim) */
    for (int32_t i = 0; i < 5; i++)
        for (int32_t j = 0; j < 5; j++)
            if (want[j] == order[i]) perm[i] = j;
    return chk(c, flx_reshape(chk(c, flx_permute(s, perm)), X->ndim, X->shape));
}

static flx_tensor *qkv_fwd_node(flx_tensor *X, const flx_attrs *at) {
    dims d = qkv_dims(at);
    size_t lse_off;
    int64_t n = fwd_layout(&d, X->dtype, &lse_off);
    return flx_adopt(flx_node_new(X->ctx, FLX_OP_ATTENTION_FWD, X->dtype, 1, &n, 1, &X, at));
}

/* X's gradient for the cotangent g of o: one BWD kernel writing into X's layout, read out by an
 * alias (ATTENTION_DQ, part 3). P: the forward packed node (NULL: a new forward). */
static flx_tensor *qkv_grad_node(flx_tensor *X, flx_tensor *P, flx_tensor *g, const flx_attrs *src) {
    flx_attrs at = *src;
    at.u.attention.want = WANT_DQ | WANT_DKV;
    if (!P && !(P = qkv_fwd_node(X, &at))) return NULL;
    dims d = qkv_dims(&at);
    size_t delta = qkv_bwd_delta(X, X->dtype);
    int64_t n = elems_for(delta + (size_t)(d.B * d.H * d.S) * flx_dtype_size(flx_attention_stats_dtype(X->dtype)),
                          X->dtype);
    flx_tensor *in[3] = {X, P, g};
    flx_tensor *W = flx_adopt(flx_node_new(X->ctx, FLX_OP_ATTENTION_BWD, X->dtype, 1, &n, 3, in, &at));
    if (!W) return NULL;
    at.u.attention.part = 3;
    flx_tensor *pin[3] = {W, X, g};
    return flx_adopt(flx_node_new(X->ctx, FLX_OP_ATTENTION_DQ, X->dtype, X->ndim, X->shape, 3, pin, &at));
}

/* Rules of the qkv nodes. ATTENTION and ATTENTION_OUT (X at input b): */
static flx_status qkv_vjp_out(flx_tensor *node, int32_t b, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *X = node->in[b];
    if (!X->requires_grad) return FLX_OK;
    gin[b] = qkv_grad_node(X, b ? node->in[0] : NULL, g, &node->attrs);
    return flx_rule_status(gin[b]);
}

static flx_status qkv_jvp_out(flx_tensor *node, int32_t b, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[b]) return FLX_OK;
    cx c = cx_of(node, node->in[b]);
    flx_attrs pa = plain_attrs(&node->attrs);
    flx_tensor *X[3], *t[3];
    split3(&c, &node->attrs, node->in[b], X);
    split3(&c, &node->attrs, tin[b], t);
    if (!c.ok) return cx_status(&c);
    *tout = jvp_node(X, t, &pa);
    return flx_rule_status(*tout);
}

/* The gradient node (ATTENTION_DQ, part 3; inputs W, X, g): h is a cotangent of X's shape. */
static flx_status qkv_vjp_grad(flx_tensor *node, flx_tensor *h, flx_tensor **gin) {
    flx_tensor *X = node->in[1], *g = node->in[2];
    cx c = cx_of(node, X);
    flx_attrs pa = plain_attrs(&node->attrs);
    flx_tensor *Xs[3], *u[3];
    split3(&c, &node->attrs, X, Xs);
    split3(&c, &node->attrs, h, u);
    if (!c.ok) return cx_status(&c);
    if (g->requires_grad && !(gin[2] = jvp_node(Xs, u, &pa))) return flx_rule_status(NULL);
    if (X->requires_grad) {
        flx_tensor *r[3];
        s1(&c, Xs, g, u, r);
        gin[1] = merge3(&c, &node->attrs, X, r);
        if (!c.ok) return cx_status(&c);
    }
    return FLX_OK;
}

static flx_status qkv_jvp_grad(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    flx_tensor *X = node->in[1], *g = node->in[2];
    cx c = cx_of(node, X);
    flx_attrs pa = plain_attrs(&node->attrs);
    flx_tensor *Xs[3], *r = NULL;
    *tout = NULL;
    split3(&c, &node->attrs, X, Xs);
    if (!c.ok) return cx_status(&c);
    if (tin[2]) {
        flx_tensor *gr[3];
        if (!grads_node(Xs, NULL, tin[2], WANT_DQ | WANT_DKV, &pa, gr)) return flx_rule_status(NULL);
        r = merge3(&c, &node->attrs, X, gr);
    }
    if (tin[1]) {
        flx_tensor *u[3], *sr[3];
        split3(&c, &node->attrs, tin[1], u);
        if (!c.ok) return cx_status(&c);
        s1(&c, Xs, g, u, sr);
        r = add(&c, r, merge3(&c, &node->attrs, X, sr));
    }
    if (!c.ok) return cx_status(&c);
    *tout = r;
    return FLX_OK;
}

/* ---- rules: the output (ATTENTION, ATTENTION_OUT) ------------------------------------------- */
static flx_status vjp_out(flx_tensor *node, flx_tensor *g, flx_tensor **gin) {
    int32_t b = qpos(node);
    if (node->attrs.u.attention.qkv) return qkv_vjp_out(node, b, g, gin);
    flx_tensor *const *X = node->in + b;
    int32_t want = (X[0]->requires_grad ? WANT_DQ : 0) |
                   (X[1]->requires_grad || X[2]->requires_grad ? WANT_DKV : 0);
    if (!want) return FLX_OK;
    flx_tensor *r[3];
    if (!grads_node(X, b ? node->in[0] : NULL, g, want, &node->attrs, r)) return flx_rule_status(NULL);
    for (int32_t i = 0; i < 3; i++) gin[b + i] = X[i]->requires_grad ? r[i] : NULL;
    return FLX_OK;
}

static flx_status jvp_out(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    int32_t b = qpos(node);
    if (node->attrs.u.attention.qkv) return qkv_jvp_out(node, b, tin, tout);
    *tout = NULL;
    if (!any3(tin + b)) return FLX_OK;
    *tout = jvp_node(node->in + b, tin + b, &node->attrs);
    return flx_rule_status(*tout);
}

/* ---- rules: dq, dk, dv (ATTENTION_DQ, ATTENTION_GRAD; inputs W, q, k, v, g) ----------------- */
static flx_status vjp_part(flx_tensor *node, flx_tensor *h, flx_tensor **gin) {
    if (node->attrs.u.attention.qkv) return qkv_vjp_grad(node, h, gin);
    flx_tensor *const *X = node->in + 1;
    flx_tensor *g = node->in[4];
    flx_tensor *u[3] = {NULL, NULL, NULL};
    u[node->attrs.u.attention.part] = h;
    if (g->requires_grad) {
        gin[4] = jvp_node(X, u, &node->attrs);
        if (!gin[4]) return flx_rule_status(NULL);
    }
    if (X[0]->requires_grad || X[1]->requires_grad || X[2]->requires_grad) {
        cx c = cx_of(node, X[0]);
        flx_tensor *r[3];
        s1(&c, X, g, u, r);
        if (!c.ok) return cx_status(&c);
        for (int32_t i = 0; i < 3; i++) gin[1 + i] = X[i]->requires_grad ? r[i] : NULL;
    }
    return FLX_OK;
}

static flx_status jvp_part(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    if (node->attrs.u.attention.qkv) return qkv_jvp_grad(node, tin, tout);
    flx_tensor *const *X = node->in + 1;
    flx_tensor *W = node->in[0];
    int32_t p = node->attrs.u.attention.part;
    cx c = cx_of(node, X[0]);
    flx_tensor *r = NULL;
    *tout = NULL;
    if (tin[4]) {
        flx_tensor *gr[3];
        if (!grads_node(X, W->in[3], tin[4], p == 0 ? WANT_DQ : WANT_DKV, &node->attrs, gr))
            return flx_rule_status(NULL);
        r = gr[p];
    }
    if (any3(tin + 1)) {
        flx_tensor *sr[3];
        s1(&c, X, node->in[4], tin + 1, sr);
        r = add(&c, r, sr[p]);
    }
    if (!c.ok) return cx_status(&c);
    *tout = r;
    return FLX_OK;
}

/* ---- rules: ATTENTION_JVP (q, k, v, tangents present) --------------------------------------- */
/* The tangents t[0..2] of a JVP node and their input positions (-1 when absent). */
static void tangents_of(const flx_tensor *node, flx_tensor **t, int32_t *pos) {
    for (int32_t i = 0, n = 3; i < 3; i++) {
        bool has = node->attrs.u.attention.tmask & (1 << i);
        pos[i] = has ? n++ : -1;
        t[i] = has ? node->in[pos[i]] : NULL;
    }
}

static flx_status vjp_jvp(flx_tensor *node, flx_tensor *h, flx_tensor **gin) {
    flx_tensor *const *X = node->in;
    flx_tensor *t[3];
    int32_t pos[3];
    tangents_of(node, t, pos);
    int32_t want = (t[0] && t[0]->requires_grad ? WANT_DQ : 0) |
                   ((t[1] && t[1]->requires_grad) || (t[2] && t[2]->requires_grad) ? WANT_DKV : 0);
    if (want) {
        flx_tensor *r[3];
        if (!grads_node(X, NULL, h, want, &node->attrs, r)) return flx_rule_status(NULL);
        for (int32_t i = 0; i < 3; i++)
            if (t[i] && t[i]->requires_grad) gin[pos[i]] = r[i];
    }
    if (X[0]->requires_grad || X[1]->requires_grad || X[2]->requires_grad) {
        cx c = cx_of(node, X[0]);
        flx_tensor *r[3];
        s1(&c, X, h, t, r);
        if (!c.ok) return cx_status(&c);
        for (int32_t i = 0; i < 3; i++) gin[i] = X[i]->requires_grad ? r[i] : NULL;
    }
    return FLX_OK;
}

static flx_status jvp_jvp(flx_tensor *node, flx_tensor *const *tin, flx_tensor **tout) {
    flx_tensor *const *X = node->in;
    flx_tensor *t[3], *ut[3];
    int32_t pos[3];
    tangents_of(node, t, pos);
    for (int32_t i = 0; i < 3; i++) ut[i] = pos[i] >= 0 ? tin[pos[i]] : NULL;
    cx c = cx_of(node, X[0]);
    flx_tensor *r = NULL;
    *tout = NULL;
    if (any3(ut) && !(r = jvp_node(X, ut, &node->attrs))) return flx_rule_status(NULL);
    if (any3(tin)) r = add(&c, r, s2(&c, X, t, tin));
    if (!c.ok) return cx_status(&c);
    *tout = r;
    return FLX_OK;
}

void flx_ops_register_attention(flx_op_def *t) {
    t[FLX_OP_ATTENTION] = (flx_op_def){"attention", exec_fwd, vjp_out, jvp_out, 0};
    t[FLX_OP_ATTENTION_FWD] =
        (flx_op_def){"attention_fwd", exec_fwd, NULL, flx_jvp_zero, FLX_OPF_NONDIFF};
    t[FLX_OP_ATTENTION_OUT] = (flx_op_def){"attention_out", NULL, vjp_out, jvp_out, FLX_OPF_ALIAS};
    t[FLX_OP_ATTENTION_BWD] =
        (flx_op_def){"attention_bwd", exec_bwd, NULL, flx_jvp_zero, FLX_OPF_NONDIFF};
    t[FLX_OP_ATTENTION_DQ] = (flx_op_def){"attention_dq", NULL, vjp_part, jvp_part, FLX_OPF_ALIAS};
    t[FLX_OP_ATTENTION_GRAD] = (flx_op_def){"attention_grad", exec_grad, vjp_part, jvp_part, 0};
    t[FLX_OP_ATTENTION_JVP] = (flx_op_def){"attention_jvp", exec_jvp, vjp_jvp, jvp_jvp, 0};
}

/* ---- public --------------------------------------------------------------------------------- */
flx_tensor *flx_attention(flx_tensor *q, flx_tensor *k, flx_tensor *v, bool causal, double scale) {
    static const char *fn = "flx_attention";
    flx_tensor *X[3] = {q, k, v};
    if (!flx_check_inputs(fn, 3, X)) return NULL;
    for (int32_t i = 0; i < 3; i++) {
        if (!flx_dtype_is_float(X[i]->dtype)) {
            flx_set_error(FLX_ERR_DTYPE, "%s: q, k and v must be floating point, got %s %s",
                          fn, i == 0 ? "q" : i == 1 ? "k" : "v", flx_describe(X[i]));
            return NULL;
        }
        if (X[i]->ndim != 4) {
            flx_set_error(FLX_ERR_SHAPE, "%s: q, k and v must be (batch, heads, seq, dim), got %s %s",
                          fn, i == 0 ? "q" : i == 1 ? "k" : "v", flx_describe(X[i]));
            return NULL;
        }
    }
    if (k->dtype != q->dtype || v->dtype != q->dtype) {
        flx_set_error(FLX_ERR_DTYPE, "%s: q %s, k %s and v %s must have one dtype", fn,
                      flx_describe(q), flx_describe(k), flx_describe(v));
        return NULL;
    }
    if (k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0] || k->shape[1] != q->shape[1] ||
        v->shape[1] != q->shape[1] || k->shape[3] != q->shape[3] || v->shape[2] != k->shape[2]) {
        flx_set_error(FLX_ERR_SHAPE,
                      "%s: q %s, k %s and v %s do not fit: want q (B, H, S, D), k (B, H, T, D), "
                      "v (B, H, T, Dv)",
                      fn, flx_describe(q), flx_describe(k), flx_describe(v));
        return NULL;
    }
    if (!(scale >= 0) || !isfinite(scale)) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                      "%s: scale must be finite and > 0, or 0 for 1/sqrt(D) (got %g)", fn, scale);
        return NULL;
    }
    const int64_t D = q->shape[3];
    flx_attrs at = {0};
    at.u.attention.causal = causal ? 1 : 0;
    at.u.attention.scale = scale > 0 ? scale : (D > 0 ? 1.0 / sqrt((double)D) : 1.0);
    const bool grad = flx_no_grad_depth() == 0 &&
                      (q->requires_grad || k->requires_grad || v->requires_grad);
    int64_t shape[4] = {q->shape[0], q->shape[1], q->shape[2], v->shape[3]};
    flx_tensor *QKV = NULL;
    if (find_qkv(X, &at, &QKV)) { /* read q, k, v in place; shape: the views' */
        if (!grad) return flx_adopt(flx_node_new(q->ctx, FLX_OP_ATTENTION, q->dtype, 4, shape, 1, &QKV, &at));
        if (flx_scope_begin() != FLX_OK) return NULL;
        flx_tensor *P = qkv_fwd_node(QKV, &at), *in[2] = {P, QKV};
        return flx_scope_return(
            P ? flx_adopt(flx_node_new(q->ctx, FLX_OP_ATTENTION_OUT, q->dtype, 4, shape, 2, in, &at)) : NULL);
    }
    if (!grad) return flx_adopt(flx_node_new(q->ctx, FLX_OP_ATTENTION, q->dtype, 4, shape, 3, X, &at));
    if (flx_scope_begin() != FLX_OK) return NULL;
    flx_tensor *P = fwd_node(X, &at);
    return flx_scope_return(P ? out_node(P, X, &at) : NULL);
}
