#define _POSIX_C_SOURCE 199309L /* clock_gettime under strict C11 */
/* linalg_bench.c — issue 4: det / inv / solve and their backward on the GPU, for a batch of
 * 10^5 8x8 matrices and one 4096x4096 matrix, f32 and f64. Each workload is built, evaluated
 * (queued) and waited for with flx_ctx_synchronize; the median of the timed repeats after
 * warm-up is printed in microseconds. Report only (not a timed test). Without a GPU it prints
 * why and exits 0. Compare with benchmarks/linalg_torch.py on the same GPU (same workloads). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fluxion/fluxion.h"

#include "bench_util.h"

enum { W_DET, W_INV, W_SOLVE, W_DET_BWD, W_INV_BWD, W_SOLVE_BWD };
static const char *names[] = {"det", "inv", "solve (1 rhs)", "det fwd+bwd", "inv fwd+bwd",
                              "solve fwd+bwd"};

/* One run of workload w on A (and rhs b); returns FLX_OK after the device is idle. */
static flx_status run_once(flx_ctx *ctx, int w, flx_tensor *A, flx_tensor *b) {
    flx_scope_begin();
    flx_tensor *out = NULL;
    if (w == W_DET) out = flx_det(A);
    else if (w == W_INV) out = flx_inv(A);
    else if (w == W_SOLVE) out = flx_solve(A, b);
    else {
        flx_tensor *y = w == W_DET_BWD ? flx_det(A) : w == W_INV_BWD ? flx_inv(A) : flx_solve(A, b);
        flx_tensor *L = flx_sum_all(y);
        if (L && flx_grad_of(1, &L, NULL, 1, &A, false, &out) != FLX_OK) out = NULL;
    }
    flx_status s = out ? flx_eval(1, &out) : flx_last_status();
    if (s == FLX_OK) s = flx_ctx_synchronize(ctx);
    flx_scope_end(0, NULL);
    return s;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    if (!flx_has_cuda() || flx_cuda_device_count() == 0) {
        printf("linalg_bench: skipped (no CUDA GPU: %s)\n",
               flx_has_cuda() ? "no usable device" : "built without the CUDA backend");
        return 0;
    }
    flx_ctx *ctx = flx_ctx_create(flx_device_cuda(0));
    if (!ctx) return fprintf(stderr, "linalg_bench: %s\n", flx_last_error()), 1;
    struct { int64_t batch, n; } shapes[] = {{100000, 8}, {1, 4096}};
    printf("%-16s %-12s %-4s %12s\n", "workload", "shape", "dt", "median us");
    for (int si = 0; si < 2; si++)
        for (int d = 0; d < 2; d++) {
            flx_dtype dt = d ? FLX_F64 : FLX_F32;
            int64_t B = shapes[si].batch, n = shapes[si].n;
            int64_t sa[3] = {B, n, n}, sb[2] = {B, n};
            flx_scope_begin();
            /* well conditioned: I * n^0.5 + randn */
            flx_tensor *R = flx_randn(ctx, dt, 3, sa, 1);
            flx_tensor *A = flx_add(R, flx_mul_scalar(flx_eye(ctx, dt, n, n), 4.0 * (n > 64 ? 64 : n)));
            flx_tensor *b = flx_randn(ctx, dt, 2, sb, 2);
            if (!A || !b || flx_eval(1, &A) != FLX_OK) return fprintf(stderr, "%s\n", flx_last_error()), 1;
            flx_set_requires_grad(A, true);
            for (int w = 0; w <= W_SOLVE_BWD; w++) {
                int r = n > 1000 ? (reps < 5 ? reps : 5) : reps;
                double *t = calloc((size_t)r, sizeof *t);
                flx_status s = run_once(ctx, w, A, b); /* warm-up */
                for (int i = 0; i < r && s == FLX_OK; i++) {
                    double t0 = now_s();
                    s = run_once(ctx, w, A, b);
                    t[i] = (now_s() - t0) * 1e6;
                }
                char shape[32];
                snprintf(shape, sizeof shape, "%lldx%lld^2", (long long)B, (long long)n);
                if (s != FLX_OK) printf("%-16s %-12s %-4s failed: %s\n", names[w], shape, flx_dtype_name(dt), flx_last_error());
                else {
                    printf("%-16s %-12s %-4s %12.1f\n", names[w], shape, flx_dtype_name(dt), median_of(t, r));
                }
                free(t);
                flx_clear_error();
            }
            flx_scope_end(0, NULL);
        }
    flx_ctx_destroy(ctx);
    return 0;
}
