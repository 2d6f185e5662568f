/*
 * host_overhead.c — host-side cost of the runtime on a CPU context (report only; exits 0 unless
 * the API itself fails).
 *
 *   build:    flx_add of two small realised tensors, no evaluation, then flx_release
 *             (recording a graph node and dropping it)                      target <= 0.25 us/op
 *   dispatch: the same plus flx_eval (plan, allocate, run the CPU kernel on 4 elements, free)
 *                                                                            target <= 1 us/op
 * (the C library's share of a Python `a + b`, whose goal is 0.5 us in all)
 *
 * Each figure is the median of several repeats of a timed loop. Usage:
 *   flx_bench_host_overhead [iterations-per-repeat (default 200000)] [repeats (default 7)]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "fluxion/fluxion.h"

#define TARGET_BUILD_US 0.25
#define TARGET_DISPATCH_US 1.0

#include "bench_util.h"

/* One timed loop; returns microseconds per iteration, or a negative value on an API error. */
static double time_loop(flx_tensor *a, flx_tensor *b, long iters, int dispatch) {
    double t0 = ex_now_s();
    for (long i = 0; i < iters; i++) {
        flx_tensor *c = flx_add(a, b);
        if (!c) return -1.0;
        if (dispatch && flx_eval(1, &c) != FLX_OK) {
            flx_release(c);
            return -1.0;
        }
        flx_release(c);
    }
    return (ex_now_s() - t0) * 1e6 / (double)iters;
}

static int run(const char *label, flx_tensor *a, flx_tensor *b, long iters, int repeats,
               int dispatch, double target, double *out) {
    double samples[64];
    if (time_loop(a, b, iters / 10 + 1, dispatch) < 0) goto fail; /* warm-up */
    for (int r = 0; r < repeats; r++) {
        samples[r] = time_loop(a, b, iters, dispatch);
        if (samples[r] < 0) goto fail;
    }
    *out = median_of(samples, repeats);
    printf("%-9s %8.3f us/op   target <= %.2f us   ratio %.2f   %s\n", label, *out, target,
           *out / target, *out <= target ? "(meets target)" : "(ABOVE target)");
    return 0;
fail:
    fprintf(stderr, "host_overhead: %s failed: %s\n", label, flx_last_error());
    return 1;
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 200000;
    int repeats = argc > 2 ? atoi(argv[2]) : 7;
    if (iters < 1) iters = 1;
    if (repeats < 1) repeats = 1;
    if (repeats > 64) repeats = 64;

    flx_ctx *ctx = flx_ctx_create(flx_device_cpu());
    if (!ctx) {
        fprintf(stderr, "host_overhead: %s\n", flx_last_error());
        return 1;
    }
    const int64_t shape[1] = {4};
    const float ha[4] = {1, 2, 3, 4}, hb[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
    flx_tensor *a = flx_from_host(ctx, FLX_F32, 1, shape, ha);
    flx_tensor *b = flx_from_host(ctx, FLX_F32, 1, shape, hb);
    int rc = 1;
    double build_us = 0, dispatch_us = 0;
    if (a && b) {
        printf("fluxion %s host overhead, CPU context, f32 (4) + (4), median of %d x %ld\n",
               flx_version(), repeats, iters);
        rc = run("build", a, b, iters, repeats, 0, TARGET_BUILD_US, &build_us);
        if (rc == 0)
            rc = run("dispatch", a, b, iters / 4 + 1, repeats, 1, TARGET_DISPATCH_US, &dispatch_us);
        if (rc == 0)
            printf("dispatch/build ratio %.1f (report only: targets are not enforced)\n",
                   dispatch_us / build_us);
    } else {
        fprintf(stderr, "host_overhead: %s\n", flx_last_error());
    }
    flx_release(a);
    flx_release(b);
    if (flx_ctx_destroy(ctx) != FLX_OK) {
        fprintf(stderr, "host_overhead: %s\n", flx_last_error());
        rc = 1;
    }
    return rc;
}
