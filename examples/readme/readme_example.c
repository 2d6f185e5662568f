#include <stdio.h>
#include "fluxion/fluxion.h"

int main(void) {
    flx_device dev = flx_cuda_device_count() > 0 ? flx_device_cuda(0) : flx_device_cpu();
    flx_ctx *ctx = flx_ctx_create(dev);   /* owns stream, allocator, RNG state */
    if (!ctx) return fprintf(stderr, "%s\n", flx_last_error()), 1;
    flx_scope_begin();                         /* owns every tensor made until flx_scope_end */
    flx_tensor *W = flx_randn(ctx, FLX_F32, 2, (int64_t[]){3, 2}, /*seed*/ 1);
    flx_tensor *x = flx_uniform(ctx, FLX_F32, 2, (int64_t[]){4, 3}, -1.0, 1.0, /*seed*/ 2);
    flx_set_requires_grad(W, true);            /* a leaf that collects .grad */
    flx_tensor *y = flx_tanh(flx_matmul(x, W));            /* lazy: nothing has run yet */
    flx_tensor *loss = flx_mean_all(flx_square(y));
    flx_status st = flx_backward(loss);        /* forward + backward, all on ctx's device */
    float g[6];
    double l = 0;
    if (st == FLX_OK) st = flx_to_host(flx_grad(W), g, sizeof g);      /* copy dL/dW to host */
    if (st == FLX_OK) st = flx_item(loss, &l);
    if (st == FLX_OK) printf("loss %.6f  dL/dW[0][0] %.6f\n", l, g[0]);
    else fprintf(stderr, "error: %s\n", flx_last_error());
    flx_scope_end(0, NULL);                    /* releases W, x, y, loss and the gradient */
    flx_ctx_destroy(ctx);
    return st == FLX_OK ? 0 : 1;
}
