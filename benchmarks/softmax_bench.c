/*
 * softmax_bench.c — achieved bandwidth of the softmax family's kernels (issue 3), reported as a
 * fraction of the same GPU's measured device-to-device copy bandwidth (report only; target
 * >= 0.85 of copy). Public API only: no CUDA headers, so kernels are timed from the host with
 * flx_ctx_synchronize + clock_gettime around many back-to-back repetitions after a warm-up
 * (launches are asynchronous, so the host's graph building overlaps the GPU's work), and each
 * figure is the median of several such trials.
 *
 * Workloads, f32, at (32768 x 1024) and (4096 x 32768):
 *   copy      flx_to_ctx(x, same context) = cudaMemcpyAsync D2D     bytes 2 N
 *   fwd       softmax(x) along the last axis                          bytes 2 N (read x, write y)
 *   vjp       softmax's VJP kernel y (g - <y, g>) from a computed y    bytes 3 N (y, g, out)
 *   jvp       softmax's JVP kernel (the same kernel, tangent t)        bytes 3 N
 *   lsm-vjp   log_softmax's VJP kernel                                 bytes 3 N
 *   ce        cross-entropy fwd + bwd (mean, i64 labels)               bytes 3 N (x read by the
 *             forward, x read + grad written by the backward; labels and per-row values ignored)
 * N = rows * cols * 4 bytes. GB/s = bytes / time; ratio = GB/s / copy GB/s.
 *
 * Without a GPU (or built without CUDA) it says so and runs a small smoke test on the CPU
 * (timings there mean nothing). Usage: flx_bench_softmax [repetitions (default 50)] [trials (5)]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "fluxion/fluxion.h"

#include "bench_util.h"

typedef enum { W_COPY, W_FWD, W_VJP, W_JVP, W_LSM_VJP, W_CE, W_COUNT } workload;
static const char *const names[W_COUNT] = {"copy", "fwd", "vjp", "jvp", "lsm-vjp", "ce fwd+bwd"};
static const double traffic[W_COUNT] = {2, 2, 3, 3, 3, 3};

typedef struct inputs {
    flx_ctx *ctx;
    flx_tensor *x, *xl, *y, *ly, *g, *labels;
} inputs;

/* Queues one repetition of workload w (a fresh scope; results evaluated, not read back). */
static int one(const inputs *in, workload w) {
    if (flx_scope_begin() != FLX_OK) return -1;
    flx_tensor *r[2] = {NULL, NULL};
    int n = 1;
    flx_status s = FLX_OK;
    switch (w) {
    case W_COPY: r[0] = flx_to_ctx(in->x, in->ctx); break;
    case W_FWD: r[0] = flx_softmax(in->x, -1, 1.0); break;
    case W_VJP: s = flx_grad_of(1, &in->y, &in->g, 1, &in->xl, false, &r[0]); break;
    case W_JVP: s = flx_jvp(1, &in->xl, &in->g, 1, &in->y, &r[0]); break;
    case W_LSM_VJP: s = flx_grad_of(1, &in->ly, &in->g, 1, &in->xl, false, &r[0]); break;
    case W_CE:
        r[0] = flx_cross_entropy(in->xl, in->labels, FLX_REDUCTION_MEAN, -100);
        if (r[0]) s = flx_grad_of(1, &r[0], NULL, 1, &in->xl, false, &r[1]);
        n = 2;
        break;
    default: break;
    }
    if (s == FLX_OK && r[0]) s = flx_eval(n, r);
    flx_scope_end(0, NULL);
    return (s == FLX_OK && r[0]) ? 0 : -1;
}

/* Median seconds per repetition, or a negative value on error. */
static double time_workload(const inputs *in, workload w, int reps, int trials) {
    double samples[32];
    if (trials > 32) trials = 32;
    for (int i = 0; i < 3; i++)
        if (one(in, w) != 0) return -1; /* warm-up: pools, caches, lazy module loading */
    if (flx_ctx_synchronize(in->ctx) != FLX_OK) return -1;
    for (int t = 0; t < trials; t++) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++)
            if (one(in, w) != 0) return -1;
        if (flx_ctx_synchronize(in->ctx) != FLX_OK) return -1;
        samples[t] = (now_s() - t0) / reps;
    }
    qsort(samples, (size_t)trials, sizeof *samples, cmp_double);
    return samples[trials / 2];
}

static int bench_shape(flx_ctx *ctx, int64_t rows, int64_t cols, int reps, int trials) {
    int64_t shape[2] = {rows, cols};
    inputs in = {ctx, NULL, NULL, NULL, NULL, NULL, NULL};
    int rc = 0;
    flx_scope_begin();
    in.x = flx_normal(ctx, FLX_F32, 2, shape, 0.0, 3.0, 1);
    in.xl = flx_normal(ctx, FLX_F32, 2, shape, 0.0, 3.0, 1);
    in.g = flx_normal(ctx, FLX_F32, 2, shape, 0.0, 1.0, 2);
    /* labels: floor(uniform [0, cols)) as i64 */
    in.labels = flx_cast(flx_uniform(ctx, FLX_F32, 1, shape, 0.0, (double)cols - 0.5, 3), FLX_I64);
    if (!in.x || !in.xl || !in.g || !in.labels || flx_set_requires_grad(in.xl, true) != FLX_OK) {
        fprintf(stderr, "setup failed: %s\n", flx_last_error());
        flx_scope_end(0, NULL);
        return 1;
    }
    in.y = flx_softmax(in.xl, -1, 1.0);
    in.ly = flx_log_softmax(in.xl, -1, 1.0);
    flx_tensor *keep[6] = {in.x, in.xl, in.g, in.labels, in.y, in.ly};
    if (!in.y || !in.ly || flx_eval(6, keep) != FLX_OK) {
        fprintf(stderr, "setup failed: %s\n", flx_last_error());
        flx_scope_end(0, NULL);
        return 1;
    }
    double nbytes = (double)rows * (double)cols * 4.0;
    double copy_gbs = 0;
    printf("\n%lld x %lld f32 (%.1f MB per tensor), median of %d trials x %d repetitions\n",
           (long long)rows, (long long)cols, nbytes / 1e6, trials, reps);
    printf("  %-12s %10s %10s %8s\n", "kernel", "time us", "GB/s", "of copy");
    for (int w = 0; w < W_COUNT; w++) {
        double t = time_workload(&in, (workload)w, reps, trials);
        if (t < 0) {
            printf("  %-12s failed: %s\n", names[w], flx_last_error());
            rc = 1;
            continue;
        }
        double gbs = traffic[w] * nbytes / t / 1e9;
        if (w == W_COPY) copy_gbs = gbs;
        printf("  %-12s %10.1f %10.1f %8.3f%s\n", names[w], t * 1e6, gbs,
               copy_gbs > 0 ? gbs / copy_gbs : 0.0,
               (w != W_COPY && copy_gbs > 0 && gbs / copy_gbs < 0.85) ? "  (below 0.85 target)" : "");
    }
    flx_scope_end(0, NULL);
    return rc;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 50;
    int trials = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1) reps = 1;
    if (trials < 1) trials = 1;
    if (!flx_has_cuda() || flx_cuda_device_count() == 0) {
        printf("flx_bench_softmax: no CUDA GPU (%s): the bandwidth figures need one; running a small "
               "CPU smoke test instead (its timings mean nothing)\n",
               flx_has_cuda() ? "no usable device" : "built without the CUDA backend");
        flx_ctx *ctx = flx_ctx_create(flx_device_cpu());
        if (!ctx) return 1;
        int rc = bench_shape(ctx, 64, 100, 2, 1);
        flx_ctx_destroy(ctx);
        return rc;
    }
    flx_ctx *ctx = flx_ctx_create(flx_device_cuda(0));
    if (!ctx) {
        fprintf(stderr, "flx_ctx_create(cuda:0) failed: %s\n", flx_last_error());
        return 1;
    }
    printf("flx_bench_softmax: CUDA device 0; target >= 0.85 of the measured D2D copy bandwidth\n");
    int rc = bench_shape(ctx, 32768, 1024, reps, trials);
    rc |= bench_shape(ctx, 4096, 32768, reps, trials);
    flx_ctx_destroy(ctx);
    return rc;
}
