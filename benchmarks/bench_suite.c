/*
 * bench_suite.c — the issue-6 benchmark suite (GPU): every workload of the issue timed on one
 * CUDA context, memory-bound kernels reported as a fraction of the same GPU's device-to-device
 * copy bandwidth measured in the same run. Public API only (no CUDA headers): host clocks around
 * flx_ctx_synchronize after back-to-back repetitions (launches are asynchronous), after a
 * warm-up; each figure is the median of several trials. Workloads small enough to sit in L2
 * rotate through several input sets.
 *
 * Workloads (f32):
 *   copy        D2D copy of 2^28 floats (flx_to_ctx to the same context)     bytes 2N
 *   add, mul    2^28 + 2^28 -> 2^28                                           bytes 3N
 *   gelu        2^28 -> 2^28                                                  bytes 2N
 *   softmax fwd / vjp / jvp at 32768x1024 and 4096x32768                       bytes 2N / 3N / 3N
 *   matmul      4096^3                                                        TFLOP/s
 *   det, inv, solve (one rhs): batched 10^5 x 8x8, fwd and fwd+bwd (det, inv); single 4096^2
 *   MLP 784-1024-1024-10 SGD train step, batch 128 and 8192: eager (record, flx_backward,
 *   flx_optim_step), plan without capture, plan captured as a CUDA graph
 * Not covered yet: the Fashion-MNIST CNN step (listed as missing in the output).
 *
 * Output: a human table on stdout, and one machine-readable line per workload
 *   RESULT<TAB>name<TAB>median_us<TAB>fraction_of_copy (or -)<TAB>note
 * which benchmarks/bench_torch.py parses. Without a GPU it prints why and exits 0 (a tiny CPU
 * smoke run of the same code paths with --smoke).
 * Usage: flx_bench_suite [--smoke] [--quick] [--only SUBSTRING]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fluxion/fluxion.h"

#include "bench_util.h"

static flx_ctx *g_ctx;
static bool g_smoke, g_quick;
static const char *g_only;
static double g_copy_gbs;
static int g_failures;

/* One repetition of a workload: queues work (no host wait); returns 0 or -1. */
typedef int (*rep_fn)(void *state, int rep);

/* Median seconds per repetition (warm-up 3, then trials x reps), negative on error. */
static double time_it(rep_fn f, void *st, int reps, int trials) {
    double samples[16];
    if (trials > 16) trials = 16;
    for (int i = 0; i < 3; i++)
        if (f(st, i) != 0) return -1;
    if (flx_ctx_synchronize(g_ctx) != FLX_OK) return -1;
    int rep = 0;
    for (int t = 0; t < trials; t++) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++)
            if (f(st, rep++) != 0) return -1;
        if (flx_ctx_synchronize(g_ctx) != FLX_OK) return -1;
        samples[t] = (now_s() - t0) / reps;
    }
    qsort(samples, (size_t)trials, sizeof *samples, cmp_double);
    return samples[trials / 2];
}

static bool selected(const char *name) { return !g_only || strstr(name, g_only); }

/* Prints a result; bytes > 0 gives GB/s and the fraction of copy bandwidth, flops > 0 TFLOP/s. */
static void report(const char *name, double t, double bytes, double flops, const char *target) {
    if (t < 0) {
        printf("  %-34s FAILED: %s\n", name, flx_last_error());
        printf("RESULT\t%s\tnan\t-\tfailed\n", name);
        g_failures++;
        flx_clear_error();
        return;
    }
    char extra[96] = "";
    char frac[32] = "-";
    if (bytes > 0) {
        double gbs = bytes / t / 1e9;
        if (g_copy_gbs > 0) snprintf(frac, sizeof frac, "%.3f", gbs / g_copy_gbs);
        snprintf(extra, sizeof extra, "%8.1f GB/s  %s of copy", gbs, frac);
    } else if (flops > 0) {
        snprintf(extra, sizeof extra, "%8.2f TFLOP/s", flops / t / 1e12);
    }
    printf("  %-34s %11.1f us  %-34s %s\n", name, t * 1e6, extra, target ? target : "");
    printf("RESULT\t%s\t%.3f\t%s\t%s\n", name, t * 1e6, frac, target ? target : "");
    fflush(stdout);
}

/* ---- elementwise and copy ----------------------------------------------------------------- */
typedef struct ew { flx_tensor *a, *b; int op; } ew;
static int ew_rep(void *p, int rep) {
    (void)rep;
    ew *s = (ew *)p;
    flx_scope_begin();
    flx_tensor *r = NULL;
    switch (s->op) {
    case 0: r = flx_to_ctx(s->a, g_ctx); break;
    case 1: r = flx_add(s->a, s->b); break;
    case 2: r = flx_mul(s->a, s->b); break;
    default: r = flx_gelu(s->a); break;
    }
    flx_status st = r ? flx_eval(1, &r) : FLX_ERR_INVALID_ARGUMENT;
    flx_scope_end(0, NULL);
    return st == FLX_OK ? 0 : -1;
}

static void bench_elementwise(int64_t n, int reps, int trials) {
    flx_scope_begin();
    ew s = {flx_normal(g_ctx, FLX_F32, 1, &n, 0, 1, 1), flx_normal(g_ctx, FLX_F32, 1, &n, 0, 1, 2), 0};
    flx_tensor *k[2] = {s.a, s.b};
    if (!s.a || !s.b || flx_eval(2, k) != FLX_OK) {
        report("elementwise setup", -1, 0, 0, NULL);
        flx_scope_end(0, NULL);
        return;
    }
    double N = (double)n * 4;
    int lg = 0;
    while (((int64_t)1 << (lg + 1)) <= n) lg++;
    static const char *ops[4] = {"copy d2d", "add", "mul", "gelu"};
    char names[4][48];
    for (int i = 0; i < 4; i++) snprintf(names[i], sizeof names[i], "%s 2^%d f32", ops[i], lg);
    static const double traffic[4] = {2, 3, 3, 2};
    for (int op = 0; op < 4; op++) {
        if (op > 0 && !selected(names[op])) continue;
        s.op = op;
        double t = time_it(ew_rep, &s, reps, trials);
        if (op == 0 && t > 0) g_copy_gbs = traffic[0] * N / t / 1e9;
        report(names[op], t, traffic[op] * N, 0, op == 0 ? "(reference)" : ">= 0.93 of copy");
    }
    flx_scope_end(0, NULL);
}

/* ---- softmax family ------------------------------------------------------------------------ */
typedef struct smx { flx_tensor *x, *xl, *y, *g; int mode; } smx;
static int smx_rep(void *p, int rep) {
    (void)rep;
    smx *s = (smx *)p;
    flx_scope_begin();
    flx_tensor *r = NULL;
    flx_status st = FLX_OK;
    if (s->mode == 0) r = flx_softmax(s->x, -1, 1.0);
    else if (s->mode == 1) st = flx_grad_of(1, &s->y, &s->g, 1, &s->xl, false, &r);
    else st = flx_jvp(1, &s->xl, &s->g, 1, &s->y, &r);
    if (st == FLX_OK) st = r ? flx_eval(1, &r) : FLX_ERR_INVALID_ARGUMENT;
    flx_scope_end(0, NULL);
    return st == FLX_OK ? 0 : -1;
}

static void bench_softmax(int64_t rows, int64_t cols, int reps, int trials) {
    flx_scope_begin();
    int64_t sh[2] = {rows, cols};
    smx s = {flx_normal(g_ctx, FLX_F32, 2, sh, 0, 3, 1), flx_normal(g_ctx, FLX_F32, 2, sh, 0, 3, 2),
             NULL, flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 3), 0};
    if (s.xl) flx_set_requires_grad(s.xl, true);
    s.y = flx_softmax(s.xl, -1, 1.0);
    flx_tensor *k[4] = {s.x, s.xl, s.y, s.g};
    char name[64];
    if (!s.x || !s.y || !s.g || flx_eval(4, k) != FLX_OK) {
        report("softmax setup", -1, 0, 0, NULL);
        flx_scope_end(0, NULL);
        return;
    }
    static const char *modes[3] = {"fwd", "vjp", "jvp"};
    static const double traffic[3] = {2, 3, 3};
    for (int m = 0; m < 3; m++) {
        snprintf(name, sizeof name, "softmax %s %lldx%lld", modes[m], (long long)rows, (long long)cols);
        if (!selected(name)) continue;
        s.mode = m;
        report(name, time_it(smx_rep, &s, reps, trials), traffic[m] * rows * cols * 4.0, 0,
               ">= 0.85 of copy");
    }
    flx_scope_end(0, NULL);
}

/* ---- matmul --------------------------------------------------------------------------------- */
typedef struct mm { flx_tensor *a, *b; } mm;
static int mm_rep(void *p, int rep) {
    (void)rep;
    mm *s = (mm *)p;
    flx_scope_begin();
    flx_tensor *r = flx_matmul(s->a, s->b);
    flx_status st = r ? flx_eval(1, &r) : FLX_ERR_INVALID_ARGUMENT;
    flx_scope_end(0, NULL);
    return st == FLX_OK ? 0 : -1;
}

static void bench_matmul(int64_t n, int reps, int trials) {
    char name[64];
    snprintf(name, sizeof name, "matmul %lld^3 f32", (long long)n);
    if (!selected(name)) return;
    flx_scope_begin();
    int64_t sh[2] = {n, n};
    mm s = {flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 1), flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 2)};
    report(name, time_it(mm_rep, &s, reps, trials), 0, 2.0 * n * n * n, "strict f32 (no TF32)");
    flx_scope_end(0, NULL);
}

/* ---- det / inv / solve ------------------------------------------------------------------------ */
#define LU_SETS 4
typedef struct lu { flx_tensor *a[LU_SETS], *b[LU_SETS], *gd, *gi; int mode; } lu;
static int lu_rep(void *p, int rep) {
    lu *s = (lu *)p;
    flx_tensor *a = s->a[rep % LU_SETS], *b = s->b[rep % LU_SETS];
    flx_scope_begin();
    flx_tensor *r = NULL;
    flx_status st = FLX_OK;
    switch (s->mode) {
    case 0: r = flx_det(a); break;
    case 1: r = flx_inv(a); break;
    case 2: r = flx_solve(a, b); break;
    case 3: {
        flx_tensor *d = flx_det(a);
        st = d ? flx_grad_of(1, &d, &s->gd, 1, &a, false, &r) : FLX_ERR_INVALID_ARGUMENT;
        break;
    }
    default: {
        flx_tensor *v = flx_inv(a);
        st = v ? flx_grad_of(1, &v, &s->gi, 1, &a, false, &r) : FLX_ERR_INVALID_ARGUMENT;
        break;
    }
    }
    if (st == FLX_OK) st = r ? flx_eval(1, &r) : FLX_ERR_INVALID_ARGUMENT;
    flx_scope_end(0, NULL);
    return st == FLX_OK ? 0 : -1;
}

static void bench_lu(int64_t batch, int64_t n, int reps, int trials) {
    flx_scope_begin();
    lu s;
    memset(&s, 0, sizeof s);
    int nd = batch > 1 ? 3 : 2;
    int64_t sh[3] = {batch, n, n}, shb[3] = {batch, n, 1};
    int64_t *ps = batch > 1 ? sh : sh + 1, *pb = batch > 1 ? shb : shb + 1;
    for (int k = 0; k < LU_SETS; k++) {
        /* well conditioned: I * n + noise */
        flx_tensor *eye = flx_mul_scalar(flx_eye(g_ctx, FLX_F32, n, n), (double)n);
        s.a[k] = flx_add(flx_normal(g_ctx, FLX_F32, nd, ps, 0, 1, 10 + k), eye);
        s.b[k] = flx_normal(g_ctx, FLX_F32, nd, pb, 0, 1, 20 + k);
        if (s.a[k]) {
            flx_eval(1, &s.a[k]);
            s.a[k] = flx_detach(s.a[k]);
            flx_set_requires_grad(s.a[k], true);
        }
        if (batch == 1 && k == 0) break; /* a single large matrix does not fit in L2 anyway */
    }
    if (batch == 1)
        for (int k = 1; k < LU_SETS; k++) s.a[k] = s.a[0], s.b[k] = s.b[0];
    s.gd = flx_ones(g_ctx, FLX_F32, nd - 2, sh);
    s.gi = flx_ones(g_ctx, FLX_F32, nd, ps);
    static const char *modes[5] = {"det", "inv", "solve", "det fwd+bwd", "inv fwd+bwd"};
    char name[64];
    for (int m = 0; m < 5; m++) {
        if (batch == 1 && m >= 3) break;
        if (batch > 1)
            snprintf(name, sizeof name, "%s %lldx%lldx%lld", modes[m], (long long)batch, (long long)n,
                     (long long)n);
        else
            snprintf(name, sizeof name, "%s %lld^2", modes[m], (long long)n);
        if (!selected(name)) continue;
        s.mode = m;
        report(name, time_it(lu_rep, &s, reps, trials), 0, 0, ">= 1.0x torch");
    }
    flx_scope_end(0, NULL);
}

/* A source tensor (made from data) holding t's value: plans take sources as inputs, and
 * optimisers take them as parameters. NULL on error. */
static flx_tensor *as_source(flx_tensor *t) {
    if (!t) return NULL;
    size_t nb = (size_t)flx_numel(t) * flx_dtype_size(flx_dtype_of(t));
    void *h = malloc(nb ? nb : 1);
    flx_tensor *r = NULL;
    if (h && flx_to_host(t, h, nb) == FLX_OK)
        r = flx_from_host(g_ctx, flx_dtype_of(t), flx_ndim(t), flx_shape(t), h);
    free(h);
    return r;
}

/* ---- MLP train step ---------------------------------------------------------------------------- */
typedef struct mlp {
    flx_tensor *p[6];
    flx_tensor *x[LU_SETS], *y[LU_SETS];
    flx_optim *opt;
    flx_plan *plan;
} mlp;

static flx_tensor *mlp_loss(flx_tensor *const *p, flx_tensor *x, flx_tensor *y) {
    flx_tensor *h = flx_relu(flx_add(flx_matmul(x, p[0]), p[1]));
    h = flx_relu(flx_add(flx_matmul(h, p[2]), p[3]));
    flx_tensor *logits = flx_add(flx_matmul(h, p[4]), p[5]);
    return flx_cross_entropy(logits, y, FLX_REDUCTION_MEAN, -100);
}

static int mlp_eager_rep(void *q, int rep) {
    mlp *s = (mlp *)q;
    flx_scope_begin();
    flx_tensor *loss = mlp_loss(s->p, s->x[rep % LU_SETS], s->y[rep % LU_SETS]);
    flx_status st = loss ? flx_backward(loss) : FLX_ERR_INVALID_ARGUMENT;
    if (st == FLX_OK) st = flx_optim_step(s->opt);
    if (st == FLX_OK) st = flx_optim_zero_grad(s->opt);
    flx_scope_end(0, NULL);
    return st == FLX_OK ? 0 : -1;
}

static int mlp_plan_rep(void *q, int rep) {
    mlp *s = (mlp *)q;
    flx_tensor *in[2] = {s->x[rep % LU_SETS], s->y[rep % LU_SETS]};
    return flx_plan_run(s->plan, 2, in) == FLX_OK ? 0 : -1;
}

static void bench_mlp(int64_t batch, int reps, int trials) {
    static const int64_t dims[4] = {784, 1024, 1024, 10};
    char name[64];
    flx_scope_begin();
    mlp s;
    memset(&s, 0, sizeof s);
    for (int l = 0; l < 3; l++) {
        int64_t ws[2] = {dims[l], dims[l + 1]};
        s.p[2 * l] = as_source(flx_init_kaiming_uniform(g_ctx, FLX_F32, 2, ws, FLX_FAN_IN, 1.0, 100 + l));
        s.p[2 * l + 1] = as_source(flx_zeros(g_ctx, FLX_F32, 1, &dims[l + 1]));
    }
    for (int i = 0; i < 6; i++)
        if (s.p[i]) flx_set_requires_grad(s.p[i], true);
    for (int k = 0; k < LU_SETS; k++) {
        int64_t xs[2] = {batch, 784};
        s.x[k] = as_source(flx_uniform(g_ctx, FLX_F32, 2, xs, 0, 1, 200 + k));
        s.y[k] = as_source(flx_cast(flx_uniform(g_ctx, FLX_F32, 1, &batch, 0, 9.99, 300 + k), FLX_I64));
    }
    flx_optim_config cfg = flx_optim_defaults(FLX_OPTIM_SGD);
    cfg.lr = 1e-3;
    s.opt = flx_optim_create(g_ctx, FLX_OPTIM_SGD, 6, s.p, &cfg);
    if (!s.opt) {
        report("mlp setup", -1, 0, 0, NULL);
        flx_scope_end(0, NULL);
        return;
    }
    snprintf(name, sizeof name, "mlp step b%lld eager", (long long)batch);
    if (selected(name)) report(name, time_it(mlp_eager_rep, &s, reps, trials), 0, 0, NULL);
    flx_optim_destroy(s.opt);
    s.opt = NULL;
    for (int cap = 0; cap < 2; cap++) {
        snprintf(name, sizeof name, "mlp step b%lld plan%s", (long long)batch, cap ? "+graph" : "");
        if (!selected(name)) continue;
        flx_scope_begin();
        flx_tensor *xin = s.x[0], *yin = s.y[0];
        flx_tensor *loss = mlp_loss(s.p, xin, yin);
        flx_tensor *g[6] = {0}, *nv[6] = {0};
        flx_status st = loss ? flx_grad_of(1, &loss, NULL, 6, s.p, false, g) : FLX_ERR_INVALID_ARGUMENT;
        for (int i = 0; i < 6 && st == FLX_OK; i++) nv[i] = flx_sub(s.p[i], flx_mul_scalar(g[i], 1e-3));
        flx_plan_options o = flx_plan_default_options();
        o.capture = cap ? FLX_PLAN_CAPTURE_ON : FLX_PLAN_CAPTURE_OFF;
        o.n_assign = 6;
        o.assign_dst = s.p;
        o.assign_src = nv;
        flx_tensor *ins[2] = {xin, yin};
        s.plan = st == FLX_OK ? flx_plan_compile(1, &loss, 2, ins, &o) : NULL;
        if (!s.plan) {
            report(name, -1, 0, 0, NULL);
        } else {
            flx_plan_info info;
            flx_plan_get_info(s.plan, &info);
            report(name, time_it(mlp_plan_rep, &s, reps, trials), 0, 0,
                   batch <= 128 ? (cap ? ">= 2x torch eager, >= 1x torch.compile" : NULL)
                                : (cap ? ">= 1.0x torch eager" : NULL));
            if (cap && !info.captured) printf("  (note: the backend did not capture this plan)\n");
        }
        flx_plan_destroy(s.plan);
        s.plan = NULL;
        flx_scope_end(0, NULL);
    }
    flx_scope_end(0, NULL);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--smoke")) g_smoke = true;
        else if (!strcmp(argv[i], "--quick")) g_quick = true;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) g_only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--smoke] [--quick] [--only SUBSTRING]\n", argv[0]);
            return 2;
        }
    }
    bool gpu = flx_has_cuda() && flx_cuda_device_count() > 0;
    if (!gpu && !g_smoke) {
        printf("flx_bench_suite: skipped: no CUDA GPU (%s); --smoke runs tiny sizes on the CPU to "
               "check the code paths (timings there mean nothing)\n",
               flx_has_cuda() ? "no usable device" : "built without the CUDA backend");
        printf("SKIP\tno CUDA GPU\n");
        return 0;
    }
    g_ctx = flx_ctx_create(gpu && !g_smoke ? flx_device_cuda(0) : flx_device_cpu());
    if (!g_ctx) {
        fprintf(stderr, "flx_ctx_create failed: %s\n", flx_last_error());
        return 1;
    }
    if (gpu && !g_smoke) {
        flx_cuda_device_props pr;
        if (flx_cuda_device_info(0, &pr) == FLX_OK)
            printf("flx_bench_suite: %s (sm_%d%d, %d SMs), fluxion %s, strict f32\n", pr.name,
                   pr.major, pr.minor, pr.multiprocessors, flx_version());
    } else {
        printf("flx_bench_suite: CPU smoke run (tiny sizes; timings mean nothing)\n");
    }
    int r = g_smoke ? 2 : (g_quick ? 10 : 20), tr = g_smoke ? 1 : (g_quick ? 3 : 5);
    printf("  %-34s %14s  %-34s %s\n", "workload", "median", "rate", "target");
    bench_elementwise(g_smoke ? 4096 : (int64_t)1 << 28, r, tr);
    if (g_smoke) {
        bench_softmax(64, 100, r, tr);
        bench_matmul(64, r, tr);
        bench_lu(100, 8, r, tr);
        bench_lu(1, 32, r, tr);
        bench_mlp(8, r, tr);
    } else {
        bench_softmax(32768, 1024, r, tr);
        bench_softmax(4096, 32768, r, tr);
        bench_matmul(4096, g_quick ? 5 : 10, tr);
        bench_lu(100000, 8, r, tr);
        bench_lu(1, 4096, 2, 3);
        bench_mlp(128, g_quick ? 50 : 100, tr);
        bench_mlp(8192, g_quick ? 10 : 20, tr);
    }
    printf("  %-34s not implemented in this suite yet\n", "fashion-mnist cnn step");
    printf("RESULT\tfashion-mnist cnn step\tnan\t-\tmissing\n");
    flx_status ds = flx_ctx_destroy(g_ctx);
    if (ds != FLX_OK) fprintf(stderr, "flx_ctx_destroy: %s\n", flx_last_error());
    return g_failures ? 1 : 0;
}
