/*
 * bench_suite.c — fluxion's GPU benchmark suite: every workload of the performance goals
 * (../shared/PERFORMANCE.md, as a table in benchmarks/goals.json) timed on one CUDA context, with
 * the device-to-device copy measured first in the same run so that every memory-bound row can be
 * stated as a fraction of it. tools/gpu-check runs it beside benchmarks/bench_torch.py (PyTorch
 * eager and whole-step CUDA graphs on the same GPU) and turns both into summary.json.
 *
 *   flx_bench_suite --list            every workload name, one per line (name<TAB>shape<TAB>dtype);
 *                                     no GPU needed (CI runs it)
 *   flx_bench_suite [--quick] [--only SUBSTRING] [--data DIR]
 *                                     the GPU run; without a GPU it says so and exits 0
 *   flx_bench_suite --smoke           every workload at tiny sizes on the CPU, under the same
 *                                     names: checks the code paths and that the run reports
 *                                     exactly the listed workloads (timings mean nothing)
 *
 * Output: a human line per workload and one machine line
 *   RESULT<TAB>name<TAB>shape<TAB>dtype<TAB>us<TAB>bytes<TAB>note
 * (us "nan" when the workload failed or could not run; bytes 0 when not memory-bound), and at
 * the end "DONE<TAB>listed<TAB>reported<TAB>failed". A listed workload that was selected but not
 * reported, or failed, makes the exit status 1.
 *
 * Timing: host clocks around flx_ctx_synchronize after back-to-back repetitions and a warm-up
 * (the public API has no events; with many repetitions per trial the difference is one host wait
 * per trial), median of the trials. Families: bench_kernels.c (elementwise, fused chain, softmax,
 * cross-entropy, matmul, LU), bench_train.c (train steps), bench_gpt2.c (the GPT-2 small training
 * step), bench_fmnist.c (time to accuracy);
 * the host overhead on the CUDA context is here.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_suite.h"
#include "bench_util.h"

flx_ctx *g_ctx;
bool g_smoke, g_quick;
const char *g_data_dir;
static const char *g_only;
static int g_failures;

/* The workloads, in run order: name (unique; the key of goals.json and of bench_torch.py),
 * listed shape, dtype. Train steps come in three modes each, listed by the macro below. */
typedef struct workload { const char *name, *shape, *dtype; } workload;
#define STEP3(base, shape) \
    {base " eager", shape, "f32"}, {base " plan", shape, "f32"}, {base " plan+graph", shape, "f32"}
static const workload k_list[] = {
    {"copy 2^28 f32", "268435456", "f32"},
    {"add 2^28 f32", "268435456", "f32"},
    {"mul 2^28 f32", "268435456", "f32"},
    {"tanh 2^28 f32", "268435456", "f32"},
    {"gelu 2^28 f32", "268435456", "f32"},
    {"relu vjp 2^28 f32", "268435456", "f32"},
    {"fused bias-gelu-res fwd 2^26 f32", "16384x4096", "f32"},
    {"fused bias-gelu-res vjp 2^26 f32", "16384x4096", "f32"},
    {"softmax fwd 32768x1024 f32", "32768x1024", "f32"},
    {"softmax vjp 32768x1024 f32", "32768x1024", "f32"},
    {"softmax jvp 32768x1024 f32", "32768x1024", "f32"},
    {"softmax fwd 4096x32768 f32", "4096x32768", "f32"},
    {"softmax vjp 4096x32768 f32", "4096x32768", "f32"},
    {"softmax jvp 4096x32768 f32", "4096x32768", "f32"},
    {"softmax fwd 64x1048576 f32", "64x1048576", "f32"},
    {"softmax vjp 64x1048576 f32", "64x1048576", "f32"},
    {"softmax jvp 64x1048576 f32", "64x1048576", "f32"},
    {"softmax fwd 262144x128 f32", "262144x128", "f32"},
    {"softmax fwd axis0 1024x32768 f32", "1024x32768", "f32"},
    {"softmax vjp axis0 1024x32768 f32", "1024x32768", "f32"},
    {"softmax jvp axis0 1024x32768 f32", "1024x32768", "f32"},
    {"softmax fwd axis0 1048576x64 f32", "1048576x64", "f32"},
    {"softmax vjp axis0 1048576x64 f32", "1048576x64", "f32"},
    {"softmax jvp axis0 1048576x64 f32", "1048576x64", "f32"},
    {"cross-entropy fwd+bwd 32768x1024 f32", "32768x1024", "f32"},
    {"matmul 4096^3 f32", "4096x4096x4096", "f32"},
    {"det 100000x8x8 f32", "100000x8x8", "f32"},
    {"inv 100000x8x8 f32", "100000x8x8", "f32"},
    {"solve 100000x8x8 f32", "100000x8x8", "f32"},
    {"det fwd+bwd 100000x8x8 f32", "100000x8x8", "f32"},
    {"inv fwd+bwd 100000x8x8 f32", "100000x8x8", "f32"},
    {"det 4096^2 f32", "4096x4096", "f32"},
    {"inv 4096^2 f32", "4096x4096", "f32"},
    {"solve 4096^2 f32", "4096x4096", "f32"},
    {"det 4096^2 f64", "4096x4096", "f64"},
    {"inv 4096^2 f64", "4096x4096", "f64"},
    {"solve 4096^2 f64", "4096x4096", "f64"},
    STEP3("mlp 784-1024-1024-10 b128 sgd", "128x784"),
    STEP3("mlp 784-1024-1024-10 b128 adam", "128x784"),
    STEP3("mlp 784-1024-1024-10 b8192 sgd", "8192x784"),
    STEP3("mlp 784-1024-1024-10 b8192 adam", "8192x784"),
    STEP3("mlp 784-256-128-10 b128 adam", "128x784"),
    STEP3("cnn b128 adam", "128x1x28x28"),
    {"gpt2-small train step 8x1024 bf16 eager", "8x1024", "bf16"},
    {"gpt2-small train step 8x1024 bf16 plan+graph", "8x1024", "bf16"},
    {"gpt2-small train step 8x1024 f32 plan+graph", "8x1024", "f32"},
    {"host record+dispatch per op cuda", "4", "f32"},
    {"host plan replay cuda", "128x784", "f32"},
    {"host plan replay per node cuda", "128x784", "f32"},
    {"fashion-mnist mlp time to 0.88", "60000x784", "f32"},
    {"fashion-mnist cnn time to 0.915", "60000x784", "f32"},
};
#define N_LIST ((int)(sizeof k_list / sizeof k_list[0]))
static bool g_reported[N_LIST];

static int list_index(const char *name) {
    for (int i = 0; i < N_LIST; i++)
        if (!strcmp(k_list[i].name, name)) return i;
    return -1;
}

bool bench_selected(const char *name) { return !g_only || strstr(name, g_only); }

double bench_time(rep_fn f, void *st, int reps, int trials) {
    double samples[16];
    if (trials > 16) trials = 16;
    if (trials < 1) trials = 1;
    for (int i = 0; i < 3; i++)
        if (f(st, i) != 0) return -1;
    if (flx_ctx_synchronize(g_ctx) != FLX_OK) return -1;
    int rep = 0;
    for (int t = 0; t < trials; t++) {
        double t0 = ex_now_s();
        for (int i = 0; i < reps; i++)
            if (f(st, rep++) != 0) return -1;
        if (flx_ctx_synchronize(g_ctx) != FLX_OK) return -1;
        samples[t] = (ex_now_s() - t0) / reps;
    }
    return median_of(samples, trials);
}

typedef struct graph_rep {
    graph_fn f;
    void *st;
} graph_rep;

static int run_graph_rep(void *p, int rep) {
    const graph_rep *g = (const graph_rep *)p;
    flx_tensor *r[BENCH_MAX_OUT] = {NULL};
    flx_scope_begin();
    flx_status st = g->f(g->st, rep, r);
    int n = 1;
    while (n < BENCH_MAX_OUT && r[n]) n++;
    return bench_rep_end(st, n, r);
}

double bench_time_graph(graph_fn f, void *st, int reps, int trials) {
    graph_rep g = {f, st};
    return bench_time(run_graph_rep, &g, reps, trials);
}

/* Marks name reported; an unlisted name is a bug of the suite and counts as a failure. */
static const workload *mark(const char *name) {
    int i = list_index(name);
    if (i < 0) {
        fprintf(stderr, "flx_bench_suite: internal error: workload '%s' is not listed\n", name);
        g_failures++;
        return NULL;
    }
    g_reported[i] = true;
    return &k_list[i];
}

static void clean_note(char *s) {
    for (; *s; s++)
        if (*s == '\t' || *s == '\n') *s = ' ';
}

void bench_report_missing(const char *name, const char *shape, const char *why) {
    const workload *w = mark(name);
    char note[256];
    snprintf(note, sizeof note, "%s", why);
    clean_note(note);
    printf("  %-40s NOT RUN: %s\n", name, note);
    printf("RESULT\t%s\t%s\t%s\tnan\t0\t%s\n", name, shape, w ? w->dtype : "?", note);
    fflush(stdout);
    g_failures++;
}

void bench_report(const char *name, const char *shape, double t, double bytes, double flops,
                  const char *note) {
    if (t < 0) {
        char why[256];
        snprintf(why, sizeof why, "failed: %s", flx_last_error());
        flx_clear_error();
        bench_report_missing(name, shape, why);
        return;
    }
    const workload *w = mark(name);
    char extra[64] = "";
    if (bytes > 0) snprintf(extra, sizeof extra, "%8.1f GB/s", bytes / t / 1e9);
    else if (flops > 0) snprintf(extra, sizeof extra, "%8.2f TFLOP/s", flops / t / 1e12);
    char n2[256];
    snprintf(n2, sizeof n2, "%s", note ? note : "");
    clean_note(n2);
    printf("  %-40s %12.1f us  %-16s %s\n", name, t * 1e6, extra, n2);
    printf("RESULT\t%s\t%s\t%s\t%.3f\t%.0f\t%s\n", name, shape, w ? w->dtype : "?", t * 1e6, bytes, n2);
    fflush(stdout);
}

flx_tensor *bench_as_source(flx_tensor *t) {
    if (!t) return NULL;
    size_t nb = (size_t)flx_numel(t) * flx_dtype_size(flx_dtype_of(t));
    void *h = malloc(nb ? nb : 1);
    flx_tensor *r = NULL;
    if (h && flx_to_host(t, h, nb) == FLX_OK)
        r = flx_from_host(g_ctx, flx_dtype_of(t), flx_ndim(t), flx_shape(t), h);
    free(h);
    return r;
}

/* ---- host overhead on the suite's context ----------------------------------------------------
 * Host time only: each trial queues a batch of operations (few enough that the launch queue never
 * fills, so the host never waits for the GPU inside the timed loop), then waits untimed.
 *   record+dispatch  flx_add of two 4-element tensors, flx_eval, flx_release: record a node,
 *                    plan it, launch one kernel, drop it                       goal <= 1 us/op
 *   plan replay      flx_plan_run of a small captured training step (MLP 784-256-128-10 b128,
 *                    Adam, inputs kept): the host side of one graph launch    goal <= 10 us
 *   ... per node     the same time over the plan's nodes (flx_plan_info.n_nodes): what a
 *                    replay costs per op of the step                         goal <= 1 us/op  */
static double host_loop(int what, flx_tensor *a, flx_tensor *b, flx_plan *plan, int n, int trials) {
    double s[16];
    if (trials > 16) trials = 16;
    for (int t = -1; t < trials; t++) { /* t = -1: warm-up */
        double t0 = ex_now_s();
        for (int i = 0; i < n; i++) {
            if (what == 0) {
                flx_tensor *c = flx_add(a, b);
                flx_status st = c ? flx_eval(1, &c) : FLX_ERR_INVALID_ARGUMENT;
                flx_release(c);
                if (st != FLX_OK) return -1;
            } else if (flx_plan_run(plan, 0, NULL) != FLX_OK) {
                return -1;
            }
        }
        double dt = ex_now_s() - t0;
        if (flx_ctx_synchronize(g_ctx) != FLX_OK) return -1;
        if (t >= 0) s[t] = dt / n;
    }
    return median_of(s, trials);
}

void bench_host_overhead(int trials) {
    const char *n_rec = "host record+dispatch per op cuda", *n_plan = "host plan replay cuda";
    const char *n_node = "host plan replay per node cuda";
    if (bench_selected(n_rec)) { /* outside any scope: the loop releases what it makes */
        const int64_t four = 4;
        const float ha[4] = {1, 2, 3, 4};
        flx_tensor *a = flx_from_host(g_ctx, FLX_F32, 1, &four, ha);
        flx_tensor *b = flx_from_host(g_ctx, FLX_F32, 1, &four, ha);
        double t = a && b ? host_loop(0, a, b, NULL, g_smoke ? 50 : 500, trials) : -1;
        bench_report(n_rec, "4", t, 0, 0, "host time per op, GPU work not waited for");
        flx_release(a);
        flx_release(b);
    }
    if (!bench_selected(n_plan) && !bench_selected(n_node)) return;
    flx_scope_begin();
    train_step m;
    memset(&m, 0, sizeof m);
    static const int64_t dims[4] = {784, 256, 128, 10};
    m.name = "host plan replay";
    m.batch = g_smoke ? 8 : 128;
    m.kind = FLX_OPTIM_ADAM;
    m.lr = 1e-3;
    double t = -1;
    flx_plan_info info;
    memset(&info, 0, sizeof info);
    if (ts_init_mlp(&m, 3, dims, 900) == 0 && ts_make_optim(&m) == 0) {
        m.plan = ts_compile(&m, m.x[0], m.y[0], true);
        if (m.plan && flx_plan_get_info(m.plan, &info) == FLX_OK)
            t = host_loop(1, NULL, NULL, m.plan, g_smoke ? 10 : 100, trials);
    }
    char shape[32], note[128];
    snprintf(shape, sizeof shape, "%lldx784", (long long)m.batch);
    if (bench_selected(n_plan))
        bench_report(n_plan, shape, t, 0, 0, "host time per flx_plan_run (MLP 784-256-128-10 Adam step)");
    if (bench_selected(n_node)) {
        snprintf(note, sizeof note, "host time per flx_plan_run over its %d nodes (%s)",
                 (int)info.n_nodes, info.captured ? "one graph launch" : "queued op by op");
        bench_report(n_node, shape, t > 0 && info.n_nodes > 0 ? t / info.n_nodes : -1, 0, 0, note);
    }
    flx_plan_destroy(m.plan);
    flx_optim_destroy(m.opt);
    flx_scope_end(0, NULL);
}

static int usage(const char *argv0) {
    fprintf(stderr, "usage: %s [--list] [--smoke] [--quick] [--only SUBSTRING] [--data DIR]\n", argv0);
    return 2;
}

int main(int argc, char **argv) {
    bool list = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--list")) list = true;
        else if (!strcmp(argv[i], "--smoke")) g_smoke = true;
        else if (!strcmp(argv[i], "--quick")) g_quick = true;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) g_only = argv[++i];
        else if (!strcmp(argv[i], "--data") && i + 1 < argc) g_data_dir = argv[++i];
        else return usage(argv[0]);
    }
    if (list) {
        for (int i = 0; i < N_LIST; i++) printf("%s\t%s\t%s\n", k_list[i].name, k_list[i].shape, k_list[i].dtype);
        return 0;
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
    double t0 = ex_now_s();
    bench_elementwise(g_smoke ? 4096 : (int64_t)1 << 28, r, tr);
    bench_fused(g_smoke ? 16 : (int64_t)1 << 14, g_smoke ? 256 : (int64_t)1 << 12, r, tr);
    /* Axis 0: many columns (each block a tile of them, a chunk per block), and few columns of
     * 2^20 positions (each column cut into chunks over the whole GPU, partials combined). */
    static const struct { const char *tag; int64_t rows, cols; int axis; bool fwd_only; } sm[] = {
        {"32768x1024", 32768, 1024, -1, false}, {"4096x32768", 4096, 32768, -1, false},
        {"64x1048576", 64, (int64_t)1 << 20, -1, false}, {"262144x128", 262144, 128, -1, true},
        {"axis0 1024x32768", 1024, 32768, 0, false}, {"axis0 1048576x64", (int64_t)1 << 20, 64, 0, false}};
    for (size_t i = 0; i < sizeof sm / sizeof sm[0]; i++)
        bench_softmax(sm[i].tag, g_smoke ? 8 : sm[i].rows, g_smoke ? 64 : sm[i].cols, sm[i].axis,
                      sm[i].fwd_only, r, tr);
    bench_cross_entropy("32768x1024", g_smoke ? 8 : 32768, g_smoke ? 64 : 1024, r, tr);
    bench_matmul(g_smoke ? 64 : 4096, g_quick || g_smoke ? 5 : 10, tr);
    bench_lu("100000x8x8", g_smoke ? 100 : 100000, 8, FLX_F32, r, tr);
    bench_lu("4096^2", 1, g_smoke ? 32 : 4096, FLX_F32, 2, 3);
    bench_lu("4096^2", 1, g_smoke ? 32 : 4096, FLX_F64, 2, 3);
    bench_train_all(tr);
    bench_gpt2_all(tr);
    bench_host_overhead(g_smoke ? 1 : 5);
    bench_fmnist();
    int listed = 0, reported = 0;
    for (int i = 0; i < N_LIST; i++) {
        if (!bench_selected(k_list[i].name)) continue;
        listed++;
        if (g_reported[i]) reported++;
        else {
            fprintf(stderr, "flx_bench_suite: listed workload '%s' was not run\n", k_list[i].name);
            g_failures++;
        }
    }
    printf("DONE\t%d\t%d\t%d\n", listed, reported, g_failures);
    printf("flx_bench_suite: %d of %d selected workloads reported, %d failures, %.1f s\n", reported,
           listed, g_failures, ex_now_s() - t0);
    flx_status ds = flx_ctx_destroy(g_ctx);
    if (ds != FLX_OK) fprintf(stderr, "flx_ctx_destroy: %s\n", flx_last_error());
    return g_failures ? 1 : 0;
}
