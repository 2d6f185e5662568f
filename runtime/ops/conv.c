/* conv.c — sliding-window ops over NCHW planes (nn layers): IM2COL and its transpose
 * COL2IM, MAXPOOL (values), MAXPOOL_ARGMAX (i64 flat indices of the maxima, no gradient) and
 * MAXPOOL_BACKWARD (the scatter of a cotangent through those indices), plus the public layers
 * built on them: flx_conv2d (im2col + matmul), flx_max_pool2d, flx_avg_pool2d, flx_im2col and
 * flx_col2im. Kernels: runtime/cpu/conv.c and kernels/conv.cu (flx_conv_args).
 *
 * Rules. IM2COL and COL2IM are linear and each other's transpose: VJP of one is the other, JVP is
 * the op itself on the tangent. So conv2d's gradient is made of matmul, im2col and col2im, and
 * every order of derivative works. MAXPOOL routes through the argmax: its VJP is
 * MAXPOOL_BACKWARD(g, x), whose kernel finds each window's argmax again in x (one pass, no index
 * tensor written and read back; MAXPOOL_BACKWARD(g, indices) is the same op over a given argmax),
 * and its JVP gathers the tangent at argmax(x) (index_select of the flattened tangent).
 * MAXPOOL_BACKWARD is linear in g (its VJP is that gather, its JVP itself on the tangent) and
 * piecewise constant in x (no derivative flows to x). */
#include <math.h>
#include <string.h>

#include "internal.h"

/* ---- geometry ------------------------------------------------------------------------------ */
static int64_t out_len(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
    int64_t span = d * (k - 1) + 1;
    int64_t room = in + 2 * p - span;
    return room < 0 ? 0 : room / s + 1;
}

static void conv_args_from(const flx_attrs *at, int64_t N, int64_t C, int64_t H, int64_t W,
                           flx_conv_args *a) {
    memset(a, 0, sizeof *a);
    a->N = N;
    a->C = C;
    a->H = H;
    a->W = W;
    a->KH = at->u.conv.k[0];
    a->KW = at->u.conv.k[1];
    a->SH = at->u.conv.s[0];
    a->SW = at->u.conv.s[1];
    a->PH = at->u.conv.p[0];
    a->PW = at->u.conv.p[1];
    a->DH = at->u.conv.d[0];
    a->DW = at->u.conv.d[1];
    a->OH = out_len(H, a->KH, a->SH, a->PH, a->DH);
    a->OW = out_len(W, a->KW, a->SW, a->PW, a->DW);
}

/* Validates (kernel, stride, padding, dilation) given as 2-arrays (NULL: kernel required;
 * stride defaults to def_stride (NULL = kernel), padding to 0, dilation to 1) into attrs. */
static bool parse_window(const char *op, const int64_t *kernel, const int64_t *stride,
                         const int64_t *padding, const int64_t *dilation, bool stride_is_kernel,
                         flx_attrs *at) {
    memset(at, 0, sizeof *at);
    if (!kernel) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: kernel size is NULL", op);
        return false;
    }
    for (int i = 0; i < 2; i++) {
        at->u.conv.k[i] = kernel[i];
        at->u.conv.s[i] = stride ? stride[i] : (stride_is_kernel ? kernel[i] : 1);
        at->u.conv.p[i] = padding ? padding[i] : 0;
        at->u.conv.d[i] = dilation ? dilation[i] : 1;
        if (at->u.conv.k[i] < 1 || at->u.conv.s[i] < 1 || at->u.conv.p[i] < 0 ||
            at->u.conv.d[i] < 1) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                          "%s: need kernel >= 1, stride >= 1, padding >= 0, dilation >= 1; got "
                          "kernel (%lld, %lld), stride (%lld, %lld), padding (%lld, %lld), "
                          "dilation (%lld, %lld)",
                          op, (long long)kernel[0], (long long)kernel[1],
                          (long long)(stride ? stride[0] : 0), (long long)(stride ? stride[1] : 0),
                          (long long)at->u.conv.p[0], (long long)at->u.conv.p[1],
                          (long long)at->u.conv.d[0], (long long)at->u.conv.d[1]);
            return false;
        }
        if (at->u.conv.k[i] > (1 << 20) || at->u.conv.s[i] > (1 << 30) ||
            at->u.conv.p[i] > (1 << 30) || at->u.conv.d[i] > (1 << 20)) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: window arguments too large", op);
            return false;
        }
    }
    return true;
}

static bool check_nchw(const char *op, const char *what, const flx_tensor *x) {
    if (x->ndim != 4) {
        flx_set_error(FLX_ERR_SHAPE, "%s: %s must be 4-d (N, C, H, W), got %s", op, what,
                      flx_describe(x));
        return false;
    }
    return flx_check_float(op, x);
}

/* Output planes of a window over (H, W); false (error set) if the window does not fit. */
static bool window_fits(const char *op, const flx_tensor *x, const flx_attrs *at, int64_t *oh,
                        int64_t *ow) {
    int64_t H = x->shape[2], W = x->shape[3];
    *oh = out_len(H, at->u.conv.k[0], at->u.conv.s[0], at->u.conv.p[0], at->u.conv.d[0]);
    *ow = out_len(W, at->u.conv.k[1], at->u.conv.s[1], at->u.conv.p[1], at->u.conv.d[1]);
    if (*oh < 1 || *ow < 1) {
        flx_set_error(FLX_ERR_SHAPE,
                      "%s: window (kernel (%lld, %lld), dilation (%lld, %lld), padding (%lld, "
                      "%lld)) is larger than the padded input %s",
                      op, (long long)at->u.conv.k[0], (long long)at->u.conv.k[1],
                      (long long)at->u.conv.d[0], (long long)at->u.conv.d[1],
                      (long long)at->u.conv.p[0], (long long)at->u.conv.p[1], flx_describe(x));
        return false;
    }
    return true;
}

/* The window over x's (H, W) planes: parse_window, then window_fits. A pooling window (pool:
 * stride defaults to the kernel) must also have padding at most half the kernel. */
static bool window_over(const char *op, const flx_tensor *x, const int64_t *kernel,
                        const int64_t *stride, const int64_t *padding, const int64_t *dilation,
                        bool pool, flx_attrs *at, int64_t *oh, int64_t *ow) {
    if (!parse_window(op, kernel, stride, padding, dilation, pool, at)) return false;
    for (int i = 0; pool && i < 2; i++)
        if (2 * at->u.conv.p[i] > at->u.conv.k[i]) {
            flx_set_error(FLX_ERR_INVALID_ARGUMENT,
                          "%s: padding (%lld, %lld) must be at most half the kernel (%lld, %lld)",
                          op, (long long)at->u.conv.p[0], (long long)at->u.conv.p[1],
                          (long long)at->u.conv.k[0], (long long)at->u.conv.k[1]);
            return false;
        }
    return window_fits(op, x, at, oh, ow);
}

/* The arguments of a one-input window op (im2col, pooling): x a float NCHW tensor, the window. */
static bool window_input(const char *op, flx_tensor *x, const int64_t *kernel,
                         const int64_t *stride, const int64_t *padding, const int64_t *dilation,
                         bool pool, flx_attrs *at, int64_t *oh, int64_t *ow) {
    return flx_check_inputs(op, 1, &x) && check_nchw(op, "x", x) &&
           window_over(op, x, kernel, stride, padding, dilation, pool, at, oh, ow);
}

/* ---- internal builders (arguments already checked) ---------------------------------------- */
static flx_tensor *im2col_node(flx_tensor *x, const flx_attrs *at0) {
    flx_attrs at = *at0;
    at.u.conv.in_hw[0] = x->shape[2];
    at.u.conv.in_hw[1] = x->shape[3];
    flx_conv_args a;
    conv_args_from(&at, x->shape[0], x->shape[1], x->shape[2], x->shape[3], &a);
    int64_t shape[3] = {a.N, a.C * a.KH * a.KW, a.OH * a.OW};
    return flx_adopt(flx_node_new(x->ctx, FLX_OP_IM2COL, x->dtype, 3, shape, 1, &x, &at));
}

static flx_tensor *col2im_node(flx_tensor *cols, const flx_attrs *at) {
    int64_t K = at->u.conv.k[0] * at->u.conv.k[1];
    int64_t shape[4] = {cols->shape[0], cols->shape[1] / K, at->u.conv.in_hw[0], at->u.conv.in_hw[1]};
    return flx_adopt(flx_node_new(cols->ctx, FLX_OP_COL2IM, cols->dtype, 4, shape, 1, &cols, at));
}

static flx_tensor *maxpool_node(flx_op op, flx_tensor *x, const flx_attrs *at0) {
    flx_attrs at = *at0;
    at.u.conv.in_hw[0] = x->shape[2];
    at.u.conv.in_hw[1] = x->shape[3];
    flx_conv_args a;
    conv_args_from(&at, x->shape[0], x->shape[1], x->shape[2], x->shape[3], &a);
    int64_t shape[4] = {a.N, a.C, a.OH, a.OW};
    flx_dtype dt = op == FLX_OP_MAXPOOL_ARGMAX ? FLX_I64 : x->dtype;
    return flx_adopt(flx_node_new(x->ctx, op, dt, 4, shape, 1, &x, &at));
}

/* The max-pool backward of g; route: the i64 argmax indices, or the pooled input itself. */
static flx_tensor *maxpool_backward_node(flx_tensor *g, flx_tensor *route, const flx_attrs *at) {
    int64_t shape[4] = {g->shape[0], g->shape[1], at->u.conv.in_hw[0], at->u.conv.in_hw[1]};
    flx_tensor *in[2] = {g, route};
    return flx_adopt(flx_node_new(g->ctx, FLX_OP_MAXPOOL_BACKWARD, g->dtype, 4, shape, 2, in, at));
}

/* t gathered at the flat indices idx: out (shape of idx)[o] = t.flat[idx[o]]. */
static flx_tensor *gather_flat(flx_tensor *t, flx_tensor *idx) {
    int64_t n = t->numel, m = idx->numel;
    flx_tensor *tf = flx_reshape(t, 1, &n);
    flx_tensor *xf = flx_reshape(idx, 1, &m);
    flx_tensor *r = flx_index_select(tf, 0, xf);
    return r ? flx_reshape(r, idx->ndim, idx->shape) : NULL;
}

/* ---- exec ------------------------------------------------------------------------------------ */
static flx_status exec_conv(const flx_tensor *t, void *out, const void *const *in) {
    flx_conv_args a;
    const flx_tensor *x = t->in[0];
    switch (t->op) {
    case FLX_OP_IM2COL:
    case FLX_OP_MAXPOOL:
    case FLX_OP_MAXPOOL_ARGMAX:
        conv_args_from(&t->attrs, x->shape[0], x->shape[1], x->shape[2], x->shape[3], &a);
        a.mode = t->op == FLX_OP_IM2COL    ? FLX_CONV_IM2COL
                 : t->op == FLX_OP_MAXPOOL ? FLX_CONV_MAXPOOL
                                           : FLX_CONV_MAXPOOL_ARGMAX;
        a.dtype = x->dtype;
        a.in = in[0];
        a.out = out;
        break;
    case FLX_OP_COL2IM:
    case FLX_OP_MAXPOOL_BACKWARD:
        conv_args_from(&t->attrs, t->shape[0], t->shape[1], t->shape[2], t->shape[3], &a);
        a.mode = t->op == FLX_OP_COL2IM ? FLX_CONV_COL2IM : FLX_CONV_MAXPOOL_BACKWARD;
        a.dtype = t->dtype;
        a.in = in[0];
        if (t->op == FLX_OP_MAXPOOL_BACKWARD && t->in[1]->dtype == FLX_I64) a.idx = (const int64_t *)in[1];
        else if (t->op == FLX_OP_MAXPOOL_BACKWARD) a.x = in[1];
        a.out = out;
        break;
    default: return flx_set_error(FLX_ERR_STATE, "exec_conv: not a sliding-window op");
    }
    return t->numel ? flx_kernel_conv(t->ctx, &a) : FLX_OK;
}

/* ---- rules ------------------------------------------------------------------------------------ */
static flx_status vjp_im2col(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    gin[0] = col2im_node(g, &t->attrs);
    return flx_rule_status(gin[0]);
}
static flx_status vjp_col2im(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    gin[0] = im2col_node(g, &t->attrs);
    return flx_rule_status(gin[0]);
}
static flx_status vjp_maxpool(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    gin[0] = maxpool_backward_node(g, t->in[0], &t->attrs);
    return flx_rule_status(gin[0]);
}
static flx_status jvp_maxpool(flx_tensor *t, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[0]) return FLX_OK;
    flx_tensor *idx = maxpool_node(FLX_OP_MAXPOOL_ARGMAX, t->in[0], &t->attrs);
    *tout = idx ? gather_flat(tin[0], idx) : NULL;
    return flx_rule_status(*tout);
}
/* The argmax indices a MAXPOOL_BACKWARD node routes by. */
static flx_tensor *route_indices(flx_tensor *t) {
    flx_tensor *r = t->in[1];
    return r->dtype == FLX_I64 ? r : maxpool_node(FLX_OP_MAXPOOL_ARGMAX, r, &t->attrs);
}
static flx_status vjp_maxpool_backward(flx_tensor *t, flx_tensor *g, flx_tensor **gin) {
    flx_tensor *idx = route_indices(t);
    gin[0] = idx ? gather_flat(g, idx) : NULL;
    return flx_rule_status(gin[0]);
}
static flx_status jvp_maxpool_backward(flx_tensor *t, flx_tensor *const *tin, flx_tensor **tout) {
    *tout = NULL;
    if (!tin[0]) return FLX_OK;
    *tout = maxpool_backward_node(tin[0], t->in[1], &t->attrs);
    return flx_rule_status(*tout);
}
void flx_ops_register_conv(flx_op_def *t) {
    t[FLX_OP_IM2COL] = (flx_op_def){"im2col", exec_conv, vjp_im2col, flx_jvp_linear, 0};
    t[FLX_OP_COL2IM] = (flx_op_def){"col2im", exec_conv, vjp_col2im, flx_jvp_linear, 0};
    t[FLX_OP_MAXPOOL] = (flx_op_def){"max_pool2d", exec_conv, vjp_maxpool, jvp_maxpool, 0};
    t[FLX_OP_MAXPOOL_ARGMAX] =
        (flx_op_def){"max_pool2d_argmax", exec_conv, NULL, flx_jvp_zero, FLX_OPF_NONDIFF};
    t[FLX_OP_MAXPOOL_BACKWARD] = (flx_op_def){"max_pool2d_backward", exec_conv,
                                              vjp_maxpool_backward, jvp_maxpool_backward, 0};
}

/* ---- public ----------------------------------------------------------------------------------- */
flx_tensor *flx_im2col(flx_tensor *x, const int64_t *kernel, const int64_t *stride,
                       const int64_t *padding, const int64_t *dilation) {
    flx_attrs at;
    int64_t oh, ow;
    if (!window_input("flx_im2col", x, kernel, stride, padding, dilation, false, &at, &oh, &ow))
        return NULL;
    return im2col_node(x, &at);
}

flx_tensor *flx_col2im(flx_tensor *cols, const int64_t *image_hw, const int64_t *kernel,
                       const int64_t *stride, const int64_t *padding, const int64_t *dilation) {
    static const char *op = "flx_col2im";
    if (!flx_check_inputs(op, 1, &cols)) return NULL;
    if (!flx_check_float(op, cols)) return NULL;
    if (cols->ndim != 3) {
        flx_set_error(FLX_ERR_SHAPE, "%s: cols must be 3-d (N, C*KH*KW, OH*OW), got %s", op,
                      flx_describe(cols));
        return NULL;
    }
    if (!image_hw || image_hw[0] < 1 || image_hw[1] < 1) {
        flx_set_error(FLX_ERR_INVALID_ARGUMENT, "%s: image_hw must give a size >= 1 per axis", op);
        return NULL;
    }
    flx_attrs at;
    if (!parse_window(op, kernel, stride, padding, dilation, false, &at)) return NULL;
    int64_t K = at.u.conv.k[0] * at.u.conv.k[1];
    int64_t oh = out_len(image_hw[0], at.u.conv.k[0], at.u.conv.s[0], at.u.conv.p[0], at.u.conv.d[0]);
    int64_t ow = out_len(image_hw[1], at.u.conv.k[1], at.u.conv.s[1], at.u.conv.p[1], at.u.conv.d[1]);
    if (cols->shape[1] % K != 0 || cols->shape[2] != oh * ow || oh < 1 || ow < 1) {
        flx_set_error(FLX_ERR_SHAPE,
                      "%s: cols %s does not match image (%lld, %lld) with kernel (%lld, %lld): "
                      "need (N, C*%lld, %lld)",
                      op, flx_describe(cols), (long long)image_hw[0], (long long)image_hw[1],
                      (long long)at.u.conv.k[0], (long long)at.u.conv.k[1], (long long)K,
                      (long long)(oh * ow));
        return NULL;
    }
    at.u.conv.in_hw[0] = image_hw[0];
    at.u.conv.in_hw[1] = image_hw[1];
    return col2im_node(cols, &at);
}

flx_tensor *flx_conv2d(flx_tensor *x, flx_tensor *w, flx_tensor *b, const int64_t *stride,
                       const int64_t *padding, const int64_t *dilation) {
    static const char *op = "flx_conv2d";
    flx_tensor *in[3] = {x, w, b};
    if (!flx_check_inputs(op, b ? 3 : 2, in)) return NULL;
    if (!check_nchw(op, "x", x) || !check_nchw(op, "w", w)) return NULL;
    if (w->dtype != x->dtype || (b && b->dtype != x->dtype)) {
        flx_set_error(FLX_ERR_DTYPE, "%s: dtypes differ: x %s, w %s, b %s", op, flx_describe(x),
                      flx_describe(w), b ? flx_describe(b) : "none");
        return NULL;
    }
    int64_t O = w->shape[0], C = x->shape[1];
    if (w->shape[1] != C) {
        flx_set_error(FLX_ERR_SHAPE,
                      "%s: w %s must be (out_channels, in_channels = %lld, KH, KW) for x %s", op,
                      flx_describe(w), (long long)C, flx_describe(x));
        return NULL;
    }
    if (b && (b->ndim != 1 || b->shape[0] != O)) {
        flx_set_error(FLX_ERR_SHAPE, "%s: bias %s must be 1-d of length out_channels = %lld", op,
                      flx_describe(b), (long long)O);
        return NULL;
    }
    int64_t kernel[2] = {w->shape[2], w->shape[3]};
    flx_attrs at;
    int64_t oh, ow;
    if (!window_over(op, x, kernel, stride, padding, dilation, false, &at, &oh, &ow)) return NULL;
    if (flx_scope_begin() != FLX_OK) return NULL;
    int64_t N = x->shape[0];
    flx_tensor *cols = im2col_node(x, &at);                     /* (N, C K, L) */
    int64_t ws[2] = {O, C * kernel[0] * kernel[1]};
    flx_tensor *wm = flx_reshape(w, 2, ws);                     /* (O, C K)    */
    flx_tensor *y = flx_matmul(wm, cols);                       /* (N, O, L)   */
    int64_t ys[4] = {N, O, oh, ow};
    y = flx_reshape(y, 4, ys);
    if (b && y) {
        int64_t bs[4] = {1, O, 1, 1};
        y = flx_add(y, flx_reshape(b, 4, bs));
    }
    return flx_scope_return(y);
}

/* Validates a max-pool call into attrs (false with the error set). */
static bool maxpool_attrs(const char *op, flx_tensor *x, const int64_t *kernel, const int64_t *stride,
                          const int64_t *padding, const int64_t *dilation, flx_attrs *at) {
    int64_t oh, ow;
    if (!window_input(op, x, kernel, stride, padding, dilation, true, at, &oh, &ow)) return false;
    /* Every window must hold at least one input position (else it has no maximum). */
    for (int ax = 0; ax < 2; ax++) {
        int64_t n_out = ax == 0 ? oh : ow, len = x->shape[2 + ax];
        for (int64_t o = 0; o < n_out; o++) {
            bool any = false;
            for (int64_t k = 0; k < at->u.conv.k[ax] && !any; k++) {
                int64_t p = o * at->u.conv.s[ax] - at->u.conv.p[ax] + k * at->u.conv.d[ax];
                any = p >= 0 && p < len;
            }
            if (!any) {
                flx_set_error(FLX_ERR_SHAPE, "%s: window %lld along axis %d of %s lies entirely in the padding",
                              op, (long long)o, 2 + ax, flx_describe(x));
                return false;
            }
        }
    }
    return true;
}

flx_tensor *flx_max_pool2d(flx_tensor *x, const int64_t *kernel, const int64_t *stride,
                           const int64_t *padding, const int64_t *dilation) {
    flx_attrs at;
    if (!maxpool_attrs("flx_max_pool2d", x, kernel, stride, padding, dilation, &at)) return NULL;
    return maxpool_node(FLX_OP_MAXPOOL, x, &at);
}

flx_tensor *flx_max_pool2d_indices(flx_tensor *x, const int64_t *kernel, const int64_t *stride,
                                   const int64_t *padding, const int64_t *dilation) {
    flx_attrs at;
    if (!maxpool_attrs("flx_max_pool2d_indices", x, kernel, stride, padding, dilation, &at))
        return NULL;
    return maxpool_node(FLX_OP_MAXPOOL_ARGMAX, x, &at);
}

flx_tensor *flx_avg_pool2d(flx_tensor *x, const int64_t *kernel, const int64_t *stride,
                           const int64_t *padding) {
    flx_attrs at;
    int64_t oh, ow;
    if (!window_input("flx_avg_pool2d", x, kernel, stride, padding, NULL, true, &at, &oh, &ow))
        return NULL;
    if (flx_scope_begin() != FLX_OK) return NULL;
    int64_t N = x->shape[0], C = x->shape[1];
    int64_t s1[4] = {N * C, 1, x->shape[2], x->shape[3]};
    flx_tensor *xr = flx_reshape(x, 4, s1);
    flx_tensor *cols = xr ? im2col_node(xr, &at) : NULL; /* (N C, KH KW, L) */
    int32_t ax = 1;
    flx_tensor *m = flx_mean(cols, 1, &ax, false);     /* (N C, L) */
    int64_t s2[4] = {N, C, oh, ow};
    return flx_scope_return(flx_reshape(m, 4, s2));
}
