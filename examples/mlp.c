/*
 * mlp.c — a two-layer MLP trained with fluxion: 2 inputs -> 16 tanh -> 3 classes, softmax cross
 * entropy built from public ops, full-batch SGD. The data is generated: points in [-1, 1)^2
 * labelled by the 120-degree sector of their angle (three rays from the origin separate the
 * classes, so the hidden layer is needed).
 *
 * Usage: flx_example_mlp [--cpu | --cuda] [--steps N] [--every N] [--lr X] [--f64]
 *   Runs on the GPU when one is usable, else on the CPU; --cpu / --cuda, or the environment
 *   variable FLX_DEVICE=cpu|cuda, force the choice. Prints the loss every N steps (default 50)
 *   and the final accuracy; exits 1 on an error or when training did not reduce the loss.
 */
#define _POSIX_C_SOURCE 200809L /* example_util.h: clock_gettime */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "example_util.h"
#include "fluxion/fluxion.h"

#define N_POINTS 300
#define N_IN 2
#define N_HIDDEN 16
#define N_CLASSES 3

static const double kPi = 3.14159265358979323846;

/* Uniform in [lo, hi) from the top 53 bits of splitmix64, for data and initial weights. */
static double next_uniform(uint64_t *s, double lo, double hi) {
    return lo + (hi - lo) * (double)(ex_splitmix64(s) >> 11) / 9007199254740992.0;
}

/* Host values to a tensor of dtype dt. */
static flx_tensor *from_doubles(flx_ctx *ctx, flx_dtype dt, int32_t ndim, const int64_t *shape,
                                const double *v, int64_t n) {
    if (dt == FLX_F64) return flx_from_host(ctx, dt, ndim, shape, v);
    float *f = (float *)malloc((size_t)(n ? n : 1) * sizeof *f);
    if (!f) return NULL;
    for (int64_t i = 0; i < n; i++) f[i] = (float)v[i];
    flx_tensor *t = flx_from_host(ctx, dt, ndim, shape, f);
    free(f);
    return t;
}

typedef struct params {
    flx_tensor *w1, *b1, *w2, *b2;
} params;

static flx_tensor *forward(const params *p, flx_tensor *x) {
    flx_tensor *h = flx_tanh(flx_add(flx_matmul(x, p->w1), p->b1));
    return flx_add(flx_matmul(h, p->w2), p->b2);
}

/* mean over rows of logsumexp(logits) - <onehot, logits> */
static flx_tensor *cross_entropy(flx_tensor *logits, flx_tensor *onehot) {
    const int32_t ax[1] = {1};
    flx_tensor *lse = flx_logsumexp(logits, 1, ax, false);
    flx_tensor *picked = flx_sum(flx_mul(onehot, logits), 1, ax, false);
    return flx_mean_all(flx_sub(lse, picked));
}

static int usage(const char *prog) {
    fprintf(stderr, "usage: %s [--cpu | --cuda] [--steps N] [--every N] [--lr X] [--f64]\n", prog);
    return 2;
}

int main(int argc, char **argv) {
    int steps = 500, every = 50, want = -1; /* want: -1 auto, 0 cpu, 1 cuda */
    double lr = 0.5;
    flx_dtype dt = FLX_F32;
    const char *env = getenv("FLX_DEVICE");
    if (env && strcmp(env, "cpu") == 0) want = 0;
    if (env && strcmp(env, "cuda") == 0) want = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--cpu") == 0) want = 0;
        else if (strcmp(argv[i], "--cuda") == 0) want = 1;
        else if (strcmp(argv[i], "--f64") == 0) dt = FLX_F64;
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--every") == 0 && i + 1 < argc) every = atoi(argv[++i]);
        else if (strcmp(argv[i], "--lr") == 0 && i + 1 < argc) lr = atof(argv[++i]);
        else return usage(argv[0]);
    }
    if (steps < 1 || every < 1 || !(lr > 0)) return usage(argv[0]);
    if (want < 0) want = flx_cuda_device_count() > 0;

    flx_ctx *ctx = flx_ctx_create(want ? flx_device_cuda(0) : flx_device_cpu());
    if (!ctx) {
        fprintf(stderr, "mlp: cannot create a %s context: %s\n", want ? "CUDA" : "CPU",
                flx_last_error());
        return 1;
    }
    printf("mlp: %d points, %d -> %d tanh -> %d classes, %s on %s, lr %g, %d steps\n", N_POINTS,
           N_IN, N_HIDDEN, N_CLASSES, flx_dtype_name(dt), want ? "cuda:0" : "cpu", lr, steps);

    /* Data and initial weights on the host. */
    static double xh[N_POINTS * N_IN], yh[N_POINTS * N_CLASSES];
    static int label[N_POINTS];
    static double w1h[N_IN * N_HIDDEN], w2h[N_HIDDEN * N_CLASSES], zh[N_HIDDEN];
    uint64_t seed = 42;
    for (int i = 0; i < N_POINTS; i++) {
        double a = next_uniform(&seed, -1, 1), b = next_uniform(&seed, -1, 1);
        xh[i * N_IN] = a;
        xh[i * N_IN + 1] = b;
        int c = (int)((atan2(b, a) + kPi) / (2 * kPi / N_CLASSES));
        if (c >= N_CLASSES) c = N_CLASSES - 1;
        label[i] = c;
        for (int k = 0; k < N_CLASSES; k++) yh[i * N_CLASSES + k] = k == c;
    }
    for (int i = 0; i < N_IN * N_HIDDEN; i++) w1h[i] = next_uniform(&seed, -1.5, 1.5);
    for (int i = 0; i < N_HIDDEN * N_CLASSES; i++) w2h[i] = next_uniform(&seed, -0.5, 0.5);

    int rc = 0;
    flx_scope_begin();
    flx_tensor *x = from_doubles(ctx, dt, 2, (const int64_t[]){N_POINTS, N_IN}, xh, N_POINTS * N_IN);
    flx_tensor *y = from_doubles(ctx, dt, 2, (const int64_t[]){N_POINTS, N_CLASSES}, yh,
                                 N_POINTS * N_CLASSES);
    params p = {
        from_doubles(ctx, dt, 2, (const int64_t[]){N_IN, N_HIDDEN}, w1h, N_IN * N_HIDDEN),
        from_doubles(ctx, dt, 1, (const int64_t[]){N_HIDDEN}, zh, N_HIDDEN),
        from_doubles(ctx, dt, 2, (const int64_t[]){N_HIDDEN, N_CLASSES}, w2h, N_HIDDEN * N_CLASSES),
        from_doubles(ctx, dt, 1, (const int64_t[]){N_CLASSES}, zh, N_CLASSES),
    };
    flx_tensor *ps[4] = {p.w1, p.b1, p.w2, p.b2};
    flx_status st = (x && y && p.w1 && p.b1 && p.w2 && p.b2) ? FLX_OK : flx_last_status();
    for (int i = 0; i < 4 && st == FLX_OK; i++) st = flx_set_requires_grad(ps[i], true);

    double first = NAN, last = NAN;
    for (int step = 0; step < steps && st == FLX_OK; step++) {
        flx_scope_begin(); /* everything made by one step is released at its end */
        flx_tensor *loss = cross_entropy(forward(&p, x), y);
        st = loss ? flx_backward(loss) : flx_last_status();
        if (st == FLX_OK) st = flx_item(loss, &last);
        for (int i = 0; i < 4 && st == FLX_OK; i++) {
            flx_tensor *g = flx_grad(ps[i]);
            st = g ? flx_assign(ps[i], flx_sub(ps[i], flx_mul_scalar(g, lr))) : flx_last_status();
            if (st == FLX_OK) st = flx_zero_grad(ps[i]);
        }
        flx_scope_end(0, NULL);
        if (st != FLX_OK) break;
        if (step == 0) first = last;
        if (step % every == 0 || step == steps - 1)
            printf("step %5d  loss %.6f  live tensors %lld\n", step, last,
                   (long long)flx_live_tensors());
    }

    if (st == FLX_OK) {
        flx_no_grad_begin();
        flx_tensor *logits = forward(&p, x);
        flx_no_grad_end();
        static double out[N_POINTS * N_CLASSES];
        if (dt == FLX_F64) {
            st = flx_to_host(logits, out, sizeof out);
        } else {
            static float outf[N_POINTS * N_CLASSES];
            st = flx_to_host(logits, outf, sizeof outf);
            for (int i = 0; i < N_POINTS * N_CLASSES; i++) out[i] = outf[i];
        }
        if (st == FLX_OK) {
            int right = 0;
            for (int i = 0; i < N_POINTS; i++) {
                int best = 0;
                for (int k = 1; k < N_CLASSES; k++)
                    if (out[i * N_CLASSES + k] > out[i * N_CLASSES + best]) best = k;
                right += best == label[i];
            }
            printf("final loss %.6f (from %.6f), training accuracy %.1f%%\n", last, first,
                   100.0 * right / N_POINTS);
            if (!(last < first)) {
                fprintf(stderr, "mlp: the loss did not decrease\n");
                rc = 1;
            }
        }
    }
    if (st != FLX_OK) {
        fprintf(stderr, "mlp: error %s: %s\n", flx_status_string(st), flx_last_error());
        rc = 1;
    }
    flx_scope_end(0, NULL);
    if (flx_ctx_destroy(ctx) != FLX_OK) {
        fprintf(stderr, "mlp: %s\n", flx_last_error());
        rc = 1;
    }
    return rc;
}
