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
 *   fused bias-gelu-res: y = gelu(x + b) * s + r, x and r (2^14, 2^12), b and s (2^12)
 *               broadcast, as four public ops (the evaluator decides what to fuse): fwd, and
 *               the VJP wrt x given an upstream cotangent                     bytes 3N / 3N
 *               (the minimal fused kernels: x, r in, y out / x, g in, gx out; see bench_fused)
 *   MLP 784-1024-1024-10 SGD train step, batch 128 and 8192, and the Fashion-MNIST CNN step
 *   (examples/fashion_mnist.c: 2 x [conv 3x3 + batch norm + ReLU + max-pool 2], dense 128, 10;
 *   SGD momentum 0.9) at batch 128 and 1024: eager (record, flx_backward, flx_optim_step),
 *   plan without capture, plan captured as a CUDA graph; the note gives samples/s
 * Not covered: every workload of the issue-6 list is here. Deviation: host clocks around
 * flx_ctx_synchronize stand in for CUDA events (the public API has none); with back-to-back
 * repetitions the difference is one host wait per trial. --smoke only checks that every code path
 * runs on the CPU (its timings mean nothing).
 * Estimated wall time on an H100 (an estimate from sizes, not a measurement): under a minute for
 * a full run, --quick about half. Largest items: det/inv/solve 4096^2 (9 runs of ~10-50 ms each),
 * the train steps (about 1,800 CNN and 1,800 MLP steps at 0.2-10 ms), the 2^28 elementwise set
 * and the fused chain (~400 kernels moving 0.8-3 GiB each, ~0.3-1 ms), plus context start-up and
 * ~6 GiB of input initialisation. bench_torch.py adds PyTorch's side (torch.compile dominates).
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

/* ---- fused elementwise chain: y = gelu(x + b) * s + r ------------------------------------------
 * x, r (rows, cols); b, s (cols) broadcast over rows. Written as four public ops; whether they
 * run as one kernel is the evaluator's business. Bytes counted are those of the minimal fused
 * kernel (b and s, 2 cols floats, are negligible and not counted):
 *   fwd  read x, r; write y                                  3N floats
 *   vjp  gx = g * s * gelu'(x + b) for an upstream cotangent g, built from the primal x each
 *        repetition and evaluated alone (y is not computed): read x, g; write gx. r does not
 *        enter the derivative, so it is not read.                                     3N floats
 * Unfused, the forward moves 2 + 2 + 2 + 3 = 9N (four kernels), the VJP about as much. */
typedef struct fz { flx_tensor *x, *xl, *b, *s, *r, *g; int vjp; } fz;
static flx_tensor *fz_chain(const fz *f, flx_tensor *x) {
    return flx_add(flx_mul(flx_gelu(flx_add(x, f->b)), f->s), f->r);
}
static int fz_rep(void *p, int rep) {
    (void)rep;
    fz *f = (fz *)p;
    flx_scope_begin();
    flx_tensor *r = NULL;
    flx_status st = FLX_OK;
    if (!f->vjp) {
        r = fz_chain(f, f->x);
    } else {
        flx_tensor *y = fz_chain(f, f->xl);
        st = y ? flx_grad_of(1, &y, &f->g, 1, &f->xl, false, &r) : FLX_ERR_INVALID_ARGUMENT;
    }
    if (st == FLX_OK) st = r ? flx_eval(1, &r) : FLX_ERR_INVALID_ARGUMENT;
    flx_scope_end(0, NULL);
    return st == FLX_OK ? 0 : -1;
}

static void bench_fused(int64_t rows, int64_t cols, int reps, int trials) {
    int64_t n = rows * cols;
    int lg = 0;
    while (((int64_t)1 << (lg + 1)) <= n) lg++;
    char names[2][64];
    snprintf(names[0], sizeof names[0], "fused bias-gelu-res fwd 2^%d f32", lg);
    snprintf(names[1], sizeof names[1], "fused bias-gelu-res vjp 2^%d f32", lg);
    if (!selected(names[0]) && !selected(names[1])) return;
    flx_scope_begin();
    int64_t sh[2] = {rows, cols};
    fz f = {flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 31), flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 32),
            flx_normal(g_ctx, FLX_F32, 1, &cols, 0, 1, 33), flx_normal(g_ctx, FLX_F32, 1, &cols, 1, 0.5, 34),
            flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 35), flx_normal(g_ctx, FLX_F32, 2, sh, 0, 1, 36), 0};
    if (f.xl) flx_set_requires_grad(f.xl, true);
    flx_tensor *k[6] = {f.x, f.xl, f.b, f.s, f.r, f.g};
    if (!f.x || !f.xl || !f.b || !f.s || !f.r || !f.g || flx_eval(6, k) != FLX_OK) {
        report("fused setup", -1, 0, 0, NULL);
        flx_scope_end(0, NULL);
        return;
    }
    for (int m = 0; m < 2; m++) {
        if (!selected(names[m])) continue;
        f.vjp = m;
        report(names[m], time_it(fz_rep, &f, reps, trials), 3.0 * (double)n * 4, 0,
               m ? "bytes 3N: x, g in; gx out" : "bytes 3N: x, r in; y out");
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

/* ---- train steps: shared eager / plan / plan+graph scaffolding ------------------------------
 * A model is its parameters, its state leaves (batch-norm running statistics, updated by
 * assignment every step), LU_SETS rotating input batches and a loss builder. Optimiser: SGD with
 * optional momentum (PyTorch's rule: b = mu b + g, b = g at the first step; p -= lr b).
 *   eager       record the step, evaluate the new state with the tensors the builder asks for,
 *               flx_backward, assign the state, then (after the scope has released the step's
 *               views) flx_optim_step + zero_grad: the fused device-side optimiser.
 *   plan        the same step as one compiled plan: loss, its gradients, the same fused
 *               optimiser stepped inside the run (flx_plan_options.optims), the new batch-norm
 *               statistics written back by the plan's assignments; no capture.
 *   plan+graph  that plan captured as one CUDA graph. */
#define TS_MAX_P 12
#define TS_MAX_S 4
#define TS_MAX_EARLY 4
typedef struct train_step train_step;
/* Builds one step's loss from a batch. For a model with state, also the lazy new values
 * new_state[0..n_state) and up to TS_MAX_EARLY tensors early[0..*n_early) to compute together
 * with them before the backward pass (so the backward pass reuses them). */
typedef flx_tensor *(*ts_loss_fn)(const train_step *m, flx_tensor *x, flx_tensor *y,
                                  flx_tensor **new_state, flx_tensor **early, int *n_early);
struct train_step {
    const char *label;           /* "mlp", "cnn"                                 */
    int64_t batch;
    int n_p, n_state;
    flx_tensor *p[TS_MAX_P], *state[TS_MAX_S];
    flx_tensor *x[LU_SETS], *y[LU_SETS];
    ts_loss_fn loss;
    double lr, momentum;
    flx_optim *opt;
    flx_plan *plan;
};

/* Parameters and state are sources (as_source); parameters require grad. Batches: x (batch,
 * features) standard normal, labels uniform in [0, 10). Returns 0 or -1. */
static int ts_add_param(train_step *m, flx_tensor *init) {
    flx_tensor *t = as_source(init);
    if (!t || m->n_p >= TS_MAX_P || flx_set_requires_grad(t, true) != FLX_OK) return -1;
    m->p[m->n_p++] = t;
    return 0;
}

static int ts_add_state(train_step *m, flx_tensor *init) {
    flx_tensor *t = as_source(init);
    if (!t || m->n_state >= TS_MAX_S) return -1;
    m->state[m->n_state++] = t;
    return 0;
}

static int ts_make_batches(train_step *m, int64_t features) {
    for (int k = 0; k < LU_SETS; k++) {
        int64_t xs[2] = {m->batch, features};
        m->x[k] = as_source(flx_normal(g_ctx, FLX_F32, 2, xs, 0, 1, 200 + k));
        m->y[k] = as_source(flx_cast(flx_uniform(g_ctx, FLX_F32, 1, &m->batch, 0, 9.99, 300 + k), FLX_I64));
        if (!m->x[k] || !m->y[k]) return -1;
    }
    return 0;
}

static int ts_eager_rep(void *q, int rep) {
    train_step *m = (train_step *)q;
    flx_scope_begin();
    flx_tensor *ns[TS_MAX_S] = {0}, *ev[TS_MAX_EARLY + TS_MAX_S] = {0};
    int n_early = 0;
    flx_tensor *loss = m->loss(m, m->x[rep % LU_SETS], m->y[rep % LU_SETS], ns, ev, &n_early);
    flx_status st = loss ? FLX_OK : FLX_ERR_INVALID_ARGUMENT;
    if (st == FLX_OK && m->n_state > 0) {
        for (int i = 0; i < m->n_state; i++) ev[n_early + i] = ns[i];
        st = flx_eval(n_early + m->n_state, ev);
    }
    if (st == FLX_OK) st = flx_backward(loss);
    for (int i = 0; i < m->n_state && st == FLX_OK; i++) st = flx_assign(m->state[i], ns[i]);
    flx_scope_end(0, NULL);
    if (st == FLX_OK) st = flx_optim_step(m->opt);
    if (st == FLX_OK) st = flx_optim_zero_grad(m->opt);
    return st == FLX_OK ? 0 : -1;
}

static int ts_plan_rep(void *q, int rep) {
    train_step *m = (train_step *)q;
    flx_tensor *in[2] = {m->x[rep % LU_SETS], m->y[rep % LU_SETS]};
    return flx_plan_run(m->plan, 2, in) == FLX_OK ? 0 : -1;
}

/* Compiles the whole step (forward, backward, the fused optimiser update, state) as a plan:
 * loss as output 0, the optimiser stepped inside every run (options.optims; the plan builds the
 * gradients of output 0 for the parameters that have a .grad, hence the one flx_backward here),
 * the new batch-norm statistics written back by assignments. NULL on error. */
static flx_plan *ts_compile(train_step *m, bool capture) {
    flx_tensor *ns[TS_MAX_S] = {0}, *early[TS_MAX_EARLY] = {0};
    int n_early = 0;
    flx_tensor *loss = m->loss(m, m->x[0], m->y[0], ns, early, &n_early);
    flx_status st = loss ? flx_backward(loss) : FLX_ERR_INVALID_ARGUMENT;
    if (st != FLX_OK) return NULL;
    flx_plan_options o = flx_plan_default_options();
    o.capture = capture ? FLX_PLAN_CAPTURE_ON : FLX_PLAN_CAPTURE_OFF;
    o.n_assign = m->n_state;
    o.assign_dst = m->state;
    o.assign_src = ns;
    o.n_optim = 1;
    o.optims = &m->opt;
    flx_tensor *ins[2] = {m->x[0], m->y[0]};
    return flx_plan_compile(1, &loss, 2, ins, &o);
}

/* Times a train step eagerly, as a plan and as a captured plan (each selectable by name);
 * targets[0..3) are the target notes of the three modes (NULL: none). Consumes nothing: the
 * caller owns m's tensors (in its scope). */
static void bench_train_step(train_step *m, int reps, int trials, const char *const targets[3]) {
    static const char *modes[3] = {"eager", "plan", "plan+graph"};
    char name[64], note[160];
    for (int mode = 0; mode < 3; mode++) {
        snprintf(name, sizeof name, "%s step b%lld %s", m->label, (long long)m->batch, modes[mode]);
        if (!selected(name)) continue;
        flx_scope_begin();
        double t = -1;
        flx_plan_info info = {0};
        flx_optim_config cfg = flx_optim_defaults(FLX_OPTIM_SGD);
        cfg.lr = m->lr;
        cfg.momentum = m->momentum;
        m->opt = flx_optim_create(g_ctx, FLX_OPTIM_SGD, m->n_p, m->p, &cfg);
        if (m->opt && mode == 0) {
            t = time_it(ts_eager_rep, m, reps, trials);
        } else if (m->opt) {
            m->plan = ts_compile(m, mode == 2);
            if (m->plan) {
                flx_plan_get_info(m->plan, &info);
                t = time_it(ts_plan_rep, m, reps, trials);
            }
        }
        const char *tg = targets ? targets[mode] : NULL;
        if (t > 0) snprintf(note, sizeof note, "%.0f samples/s%s%s", (double)m->batch / t, tg ? "; " : "", tg ? tg : "");
        else snprintf(note, sizeof note, "%s", tg ? tg : "");
        report(name, t, 0, 0, note);
        if (m->plan && mode == 2 && !info.captured) printf("  (note: the backend did not capture this plan)\n");
        flx_plan_destroy(m->plan);
        m->plan = NULL;
        flx_optim_zero_grad(m->opt);
        flx_optim_destroy(m->opt);
        m->opt = NULL;
        flx_scope_end(0, NULL);
    }
}

/* ---- MLP 784-1024-1024-10, plain SGD lr 1e-3 ------------------------------------------------- */
static flx_tensor *mlp_loss(const train_step *m, flx_tensor *x, flx_tensor *y, flx_tensor **ns,
                            flx_tensor **early, int *n_early) {
    (void)ns, (void)early;
    *n_early = 0;
    flx_tensor *const *p = m->p;
    flx_tensor *h = flx_relu(flx_add(flx_matmul(x, p[0]), p[1]));
    h = flx_relu(flx_add(flx_matmul(h, p[2]), p[3]));
    flx_tensor *logits = flx_add(flx_matmul(h, p[4]), p[5]);
    return flx_cross_entropy(logits, y, FLX_REDUCTION_MEAN, -100);
}

static void bench_mlp(int64_t batch, int reps, int trials) {
    static const int64_t dims[4] = {784, 1024, 1024, 10};
    flx_scope_begin();
    train_step m;
    memset(&m, 0, sizeof m);
    m.label = "mlp";
    m.batch = batch;
    m.loss = mlp_loss;
    m.lr = 1e-3;
    int bad = 0;
    for (int l = 0; l < 3 && !bad; l++) {
        int64_t ws[2] = {dims[l], dims[l + 1]};
        bad |= ts_add_param(&m, flx_init_kaiming_uniform(g_ctx, FLX_F32, 2, ws, FLX_FAN_IN, 1.0, 100 + l));
        bad |= ts_add_param(&m, flx_zeros(g_ctx, FLX_F32, 1, &dims[l + 1]));
    }
    if (bad || ts_make_batches(&m, 784)) {
        report("mlp setup", -1, 0, 0, NULL);
    } else {
        static const char *small[3] = {NULL, NULL, ">= 2x torch eager, >= 1x torch.compile"};
        static const char *large[3] = {NULL, NULL, ">= 1.0x torch eager"};
        bench_train_step(&m, reps, trials, batch <= 128 ? small : large);
    }
    flx_scope_end(0, NULL);
}

/* ---- Fashion-MNIST CNN (examples/fashion_mnist.c --model cnn), SGD momentum 0.9 lr 1e-2 ------
 * x (B, 784) viewed as (B, 1, 28, 28); 2 x [conv 3x3 pad 1 (32, then 64 channels) + batch norm
 * (training, momentum 0.1, eps 1e-5) + ReLU + max-pool 2]; dense 64*7*7 -> 128, ReLU; dense
 * 128 -> 10; cross-entropy. Parameters in the example's order and PyTorch layouts (conv (O, C, 3,
 * 3), linear (out, in)); the example trains with Adam, the benchmark with SGD momentum (the same
 * optimiser on the PyTorch side, and the MLP's). */
#define CNN_C1 32
#define CNN_C2 64
static flx_tensor *cnn_loss(const train_step *m, flx_tensor *x, flx_tensor *y, flx_tensor **ns,
                            flx_tensor **early, int *n_early) {
    const int64_t img[4] = {-1, 1, 28, 28}, k2[2] = {2, 2}, pad1[2] = {1, 1}, flat[2] = {-1, CNN_C2 * 49};
    flx_tensor *const *p = m->p;
    flx_tensor *h = flx_reshape(x, 4, img);
    for (int l = 0; l < 2; l++) {
        flx_tensor *c = flx_conv2d(h, p[4 * l], p[4 * l + 1], NULL, pad1, NULL);
        early[l] = c; /* as the example: conv outputs computed with the new statistics */
        flx_tensor *b = flx_batch_norm(c, p[4 * l + 2], p[4 * l + 3], m->state[2 * l], m->state[2 * l + 1],
                                       true, 0.1, 1e-5, &ns[2 * l], &ns[2 * l + 1]);
        h = flx_max_pool2d(flx_relu(b), k2, NULL, NULL, NULL);
    }
    *n_early = 2;
    h = flx_relu(flx_linear(flx_reshape(h, 2, flat), p[8], p[9]));
    return flx_cross_entropy(flx_linear(h, p[10], p[11]), y, FLX_REDUCTION_MEAN, -100);
}

static void bench_cnn(int64_t batch, int reps, int trials) {
    flx_scope_begin();
    train_step m;
    memset(&m, 0, sizeof m);
    m.label = "cnn";
    m.batch = batch;
    m.loss = cnn_loss;
    m.lr = 1e-2;
    m.momentum = 0.9;
    const int64_t c1 = CNN_C1, c2 = CNN_C2;
    const int64_t w1[4] = {c1, 1, 3, 3}, w2[4] = {c2, c1, 3, 3}, f1[2] = {128, c2 * 49}, f2[2] = {10, 128};
    const int64_t *cs[2] = {&c1, &c2}, *ws[2] = {w1, w2};
    const int64_t fan[2] = {9, c1 * 9};
    int bad = 0;
    for (int l = 0; l < 2; l++) {
        bad |= ts_add_param(&m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 4, ws[l], fan[l], 400 + 2 * l));
        bad |= ts_add_param(&m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 1, ws[l], fan[l], 401 + 2 * l));
        bad |= ts_add_param(&m, flx_ones(g_ctx, FLX_F32, 1, cs[l]));
        bad |= ts_add_param(&m, flx_zeros(g_ctx, FLX_F32, 1, cs[l]));
        bad |= ts_add_state(&m, flx_zeros(g_ctx, FLX_F32, 1, cs[l]));
        bad |= ts_add_state(&m, flx_ones(g_ctx, FLX_F32, 1, cs[l]));
    }
    bad |= ts_add_param(&m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 2, f1, f1[1], 410));
    bad |= ts_add_param(&m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 1, f1, f1[1], 411));
    bad |= ts_add_param(&m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 2, f2, 128, 412));
    bad |= ts_add_param(&m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 1, f2, 128, 413));
    if (bad || ts_make_batches(&m, 784))
        report("cnn setup", -1, 0, 0, NULL);
    else
        bench_train_step(&m, reps, trials, NULL);
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
        bench_fused(16, 256, r, tr);
        bench_softmax(64, 100, r, tr);
        bench_matmul(64, r, tr);
        bench_lu(100, 8, r, tr);
        bench_lu(1, 32, r, tr);
        bench_mlp(8, r, tr);
        bench_cnn(4, r, tr);
    } else {
        bench_fused((int64_t)1 << 14, (int64_t)1 << 12, r, tr);
        bench_softmax(32768, 1024, r, tr);
        bench_softmax(4096, 32768, r, tr);
        bench_matmul(4096, g_quick ? 5 : 10, tr);
        bench_lu(100000, 8, r, tr);
        bench_lu(1, 4096, 2, 3);
        bench_mlp(128, g_quick ? 50 : 100, tr);
        bench_mlp(8192, g_quick ? 10 : 20, tr);
        bench_cnn(128, g_quick ? 50 : 100, tr);
        bench_cnn(1024, g_quick ? 10 : 20, tr);
    }
    flx_status ds = flx_ctx_destroy(g_ctx);
    if (ds != FLX_OK) fprintf(stderr, "flx_ctx_destroy: %s\n", flx_last_error());
    return g_failures ? 1 : 0;
}
