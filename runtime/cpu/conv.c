/* conv.c — CPU reference kernels of the sliding-window family (flx_conv_args, semantics in
 * kernels/flx_kernels.h): im2col, its transpose col2im, max-pool values and argmax indices, and
 * the max-pool backward gather. Plain loops; float math in double, rounded to the dtype once per
 * output element; sums in a fixed order (taps ascending). */
#include <math.h>
#include <string.h>

#include "cpu_common.h"

/* Tap (ki, kj) of window (oh, ow) reads input row/column oh*S - P + ki*D. */
static void cpu_im2col(const flx_conv_args *a) {
    int64_t K = a->KH * a->KW, L = a->OH * a->OW;
    for (int64_t n = 0; n < a->N; n++)
        for (int64_t c = 0; c < a->C; c++)
            for (int64_t ki = 0; ki < a->KH; ki++)
                for (int64_t kj = 0; kj < a->KW; kj++) {
                    int64_t row = (n * a->C + c) * K + ki * a->KW + kj;
                    for (int64_t oh = 0; oh < a->OH; oh++) {
                        int64_t h = oh * a->SH - a->PH + ki * a->DH;
                        for (int64_t ow = 0; ow < a->OW; ow++) {
                            int64_t w = ow * a->SW - a->PW + kj * a->DW;
                            double v = 0;
                            if (h >= 0 && h < a->H && w >= 0 && w < a->W)
                                v = ldf(a->dtype, a->in, ((n * a->C + c) * a->H + h) * a->W + w);
                            stf(a->dtype, a->out, row * L + oh * a->OW + ow, v);
                        }
                    }
                }
}

/* Window index along one axis for input position p and tap k: (p + P - k D) / S when that is an
 * exact, in-range quotient; -1 otherwise. */
static inline int64_t win_of(int64_t p, int64_t k, int64_t S, int64_t P, int64_t D, int64_t O) {
    int64_t q = p + P - k * D;
    if (q < 0 || q % S != 0) return -1;
    q /= S;
    return q < O ? q : -1;
}

/* The flat index of the first maximum of window (oh, ow) of plane nc of x (NaN wins), -1 for a
 * window with no tap inside the input; its value in *best. */
static int64_t window_argmax(const flx_conv_args *a, const void *x, int64_t nc, int64_t oh, int64_t ow,
                             double *best_out) {
    double best = -INFINITY;
    int64_t arg = -1;
    for (int64_t ki = 0; ki < a->KH; ki++) {
        int64_t h = oh * a->SH - a->PH + ki * a->DH;
        if (h < 0 || h >= a->H) continue;
        for (int64_t kj = 0; kj < a->KW; kj++) {
            int64_t w = ow * a->SW - a->PW + kj * a->DW;
            if (w < 0 || w >= a->W) continue;
            int64_t p = (nc * a->H + h) * a->W + w;
            double v = ldf(a->dtype, x, p);
            bool take = arg < 0 || v > best || (isnan(v) && !isnan(best));
            if (take) {
                best = v;
                arg = p;
            }
        }
    }
    *best_out = best;
    return arg;
}

/* The transposes of a window read (col2im, the max-pool backward): each input position sums, taps
 * ascending, what every window tap that read it holds. col2im adds that tap's column entry;
 * the max-pool backward adds the window's gradient where the window's argmax (idx, or found again
 * in x) is this position. */
static void cpu_window_gather(const flx_conv_args *a, bool pool) {
    int64_t K = a->KH * a->KW, L = a->OH * a->OW;
    for (int64_t nc = 0; nc < a->N * a->C; nc++)
        for (int64_t h = 0; h < a->H; h++)
            for (int64_t w = 0; w < a->W; w++) {
                int64_t p = (nc * a->H + h) * a->W + w;
                double acc = 0;
                for (int64_t ki = 0; ki < a->KH; ki++) {
                    int64_t oh = win_of(h, ki, a->SH, a->PH, a->DH, a->OH);
                    if (oh < 0) continue;
                    for (int64_t kj = 0; kj < a->KW; kj++) {
                        int64_t ow = win_of(w, kj, a->SW, a->PW, a->DW, a->OW);
                        if (ow < 0) continue;
                        if (pool) {
                            int64_t o = (nc * a->OH + oh) * a->OW + ow;
                            double unused;
                            int64_t arg = a->idx ? a->idx[o] : window_argmax(a, a->x, nc, oh, ow, &unused);
                            if (arg == p) acc += ldf(a->dtype, a->in, o);
                        } else {
                            int64_t row = nc * K + ki * a->KW + kj;
                            acc += ldf(a->dtype, a->in, row * L + oh * a->OW + ow);
                        }
                    }
                }
                stf(a->dtype, a->out, p, acc);
            }
}

static void cpu_maxpool(const flx_conv_args *a, bool want_index) {
    for (int64_t nc = 0; nc < a->N * a->C; nc++)
        for (int64_t oh = 0; oh < a->OH; oh++)
            for (int64_t ow = 0; ow < a->OW; ow++) {
                double best;
                int64_t arg = window_argmax(a, a->in, nc, oh, ow, &best);
                int64_t o = (nc * a->OH + oh) * a->OW + ow;
                if (want_index)
                    ((int64_t *)a->out)[o] = arg;
                else
                    stf(a->dtype, a->out, o, best);
            }
}

flx_status flx_cpu_conv(flx_ctx *ctx, const flx_conv_args *a) {
    (void)ctx;
    if (!flx_dtype_is_float(a->dtype))
        return flx_set_error(FLX_ERR_DTYPE, "cpu conv kernel: dtype %s is not a float dtype",
                             flx_dtype_name(a->dtype));
    switch (a->mode) {
    case FLX_CONV_IM2COL: cpu_im2col(a); return FLX_OK;
    case FLX_CONV_COL2IM: cpu_window_gather(a, false); return FLX_OK;
    case FLX_CONV_MAXPOOL: cpu_maxpool(a, false); return FLX_OK;
    case FLX_CONV_MAXPOOL_ARGMAX: cpu_maxpool(a, true); return FLX_OK;
    case FLX_CONV_MAXPOOL_BACKWARD: cpu_window_gather(a, true); return FLX_OK;
    default: return flx_set_error(FLX_ERR_INVALID_ARGUMENT, "cpu conv kernel: bad mode %d", (int)a->mode);
    }
}
