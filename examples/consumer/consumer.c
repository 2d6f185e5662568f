/* consumer.c — a tiny C11 program using an installed fluxion (built by tools/test
 * against a temporary install prefix, through CMake and through pkg-config).
 *
 * Computes the gradient of f(x) = sum(x^3 + sin x) at x = (0.5, -1, 2, 3) with flx_backward and
 * prints it on one line, "grad: g0 g1 g2 g3"; the closed form is 3 x^2 + cos x. Runs on the GPU
 * when fluxion was built with CUDA and one is usable, on the CPU otherwise (and says which);
 * --cpu forces the CPU. Exits 1 on any error or if the gradient is off the closed form. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <fluxion/fluxion.h>

#define N 4

int main(int argc, char **argv) {
    int force_cpu = argc > 1 && strcmp(argv[1], "--cpu") == 0;
    printf("fluxion %s (header %d.%d.%d), CUDA backend: %s, CUDA devices: %d\n", flx_version(),
           FLX_VERSION_MAJOR, FLX_VERSION_MINOR, FLX_VERSION_PATCH, flx_has_cuda() ? "yes" : "no",
           (int)flx_cuda_device_count());
    flx_device dev = flx_device_cpu();
    flx_cuda_device_props props;
    if (!force_cpu && flx_cuda_device_info(0, &props) == FLX_OK) {
        dev = flx_device_cuda(0);
        printf("device: cuda:0 (%s, sm_%d%d)\n", props.name, (int)props.major, (int)props.minor);
    } else {
        printf("device: cpu (%s)\n", force_cpu ? "--cpu" : flx_last_error());
        flx_clear_error();
    }
    flx_ctx *ctx = flx_ctx_create(dev);
    if (!ctx) {
        fprintf(stderr, "flx_ctx_create: %s\n", flx_last_error());
        return 1;
    }
    const double xv[N] = {0.5, -1.0, 2.0, 3.0};
    const int64_t shape[1] = {N};
    double g[N] = {0};
    int rc = 1;
    if (flx_scope_begin() == FLX_OK) {
        flx_tensor *x = flx_from_host(ctx, FLX_F64, 1, shape, xv);
        if (x && flx_set_requires_grad(x, true) == FLX_OK) {
            flx_tensor *f = flx_sum_all(flx_add(flx_pow_scalar(x, 3.0), flx_sin(x)));
            flx_tensor *gx = NULL;
            if (f && flx_backward(f) == FLX_OK && (gx = flx_grad(x)) != NULL &&
                flx_to_host(gx, g, sizeof g) == FLX_OK)
                rc = 0;
        }
        if (rc) fprintf(stderr, "error: %s: %s\n", flx_status_string(flx_last_status()), flx_last_error());
        flx_scope_end(0, NULL);
    }
    if (flx_ctx_destroy(ctx) != FLX_OK) {
        fprintf(stderr, "flx_ctx_destroy: %s\n", flx_last_error());
        rc = 1;
    }
    if (rc) return rc;
    printf("grad:");
    for (int i = 0; i < N; i++) printf(" %.17g", g[i]);
    printf("\n");
    for (int i = 0; i < N; i++) {
        double want = 3 * xv[i] * xv[i] + cos(xv[i]);
        if (!(fabs(g[i] - want) <= 1e-12 * (1 + fabs(want)))) {
            fprintf(stderr, "grad[%d] = %.17g, closed form %.17g\n", i, g[i], want);
            return 1;
        }
    }
    printf("OK: matches 3 x^2 + cos x\n");
    return 0;
}
