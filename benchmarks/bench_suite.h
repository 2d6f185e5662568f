/* bench_suite.h — what the files of flx_bench_suite share: the context, the timing and reporting
 * helpers (bench_suite.c), the workload families (bench_kernels.c, bench_train.c,
 * bench_fmnist.c) and the train-step models that both the step timings and the time-to-accuracy
 * runs use. Public API only. */
#ifndef FLX_BENCH_SUITE_H
#define FLX_BENCH_SUITE_H

#include <stdbool.h>
#include <stdint.h>

#include "fluxion/fluxion.h"

/* ---- run state (bench_suite.c) ---------------------------------------------------------------- */
extern flx_ctx *g_ctx;
extern bool g_smoke, g_quick;
extern const char *g_data_dir; /* Fashion-MNIST folder (--data), or NULL: search */

/* One repetition of a workload: queues work (no host wait); returns 0 or -1. */
typedef int (*rep_fn)(void *state, int rep);

/* One repetition built as a graph: puts its results in r (a NULL r[0] is a failed build; the
 * non-NULL prefix of r is queued) and returns the status of the build. */
#define BENCH_MAX_OUT 2
typedef flx_status (*graph_fn)(void *state, int rep, flx_tensor *r[BENCH_MAX_OUT]);

/* True when the workload `name` (a name of the --list table) was selected (--only). */
bool bench_selected(const char *name);
/* Median seconds per repetition (warm-up, then trials x reps), negative on error. */
double bench_time(rep_fn f, void *st, int reps, int trials);
/* bench_time of a graph_fn: each repetition runs in a scope of its own and queues its results. */
double bench_time_graph(graph_fn f, void *st, int reps, int trials);
/* Reports workload `name` (must be a listed name) measured on `shape`: t seconds per repetition
 * (negative: failed, with flx_last_error), bytes moved per repetition (0 when not memory-bound),
 * flops (0: none) and a free note. Prints a human line and one machine line
 *   RESULT<TAB>name<TAB>shape<TAB>dtype<TAB>us<TAB>bytes<TAB>note */
void bench_report(const char *name, const char *shape, double t, double bytes, double flops,
                  const char *note);
/* Reports a workload that did not run (why: a short reason); it counts as a failure. */
void bench_report_missing(const char *name, const char *shape, const char *why);
/* A source tensor (made from data) holding t's value: plans take sources as inputs, and
 * optimisers take them as parameters. NULL on error. */
flx_tensor *bench_as_source(flx_tensor *t);

/* The VJP of y at x for the cotangent g (NULL: ones) into *out; a NULL y (a failed build) fails. */
static inline flx_status bench_vjp(flx_tensor *y, flx_tensor *g, flx_tensor *x, flx_tensor **out) {
    return y ? flx_grad_of(1, &y, g ? &g : NULL, 1, &x, false, out) : FLX_ERR_INVALID_ARGUMENT;
}
/* Ends a repetition that opened a scope: queues r[0..n) unless st already failed (a NULL r[0] is
 * a failed build), closes the scope; 0 or -1, as a rep_fn returns. */
static inline int bench_rep_end(flx_status st, int n, flx_tensor **r) {
    if (st == FLX_OK) st = r[0] ? flx_eval(n, r) : FLX_ERR_INVALID_ARGUMENT;
    flx_scope_end(0, NULL);
    return st == FLX_OK ? 0 : -1;
}

/* ---- kernel families (bench_kernels.c) ----------------------------------------------------------- */
void bench_elementwise(int64_t n, int reps, int trials);
void bench_fused(int64_t rows, int64_t cols, int reps, int trials);
/* tag: the listed shape (e.g. "32768x1024"); rows x cols: the measured one (smaller in --smoke). */
void bench_softmax(const char *tag, int64_t rows, int64_t cols, int axis, bool fwd_only, int reps,
                   int trials);
void bench_cross_entropy(const char *tag, int64_t rows, int64_t cols, int reps, int trials);
void bench_matmul(int64_t n, int reps, int trials);
void bench_lu(const char *tag, int64_t batch, int64_t n, flx_dtype dt, int reps, int trials);

/* ---- train steps (bench_train.c) ----------------------------------------------------------------- */
#define TS_SETS 4
#define TS_MAX_P 12
#define TS_MAX_S 4
#define TS_MAX_EARLY 4
typedef struct train_step train_step;
/* Builds logits from a batch x (batch, 784). training: batch norm on batch statistics, with the
 * lazy new running statistics in new_state[0..n_state) and up to TS_MAX_EARLY tensors
 * early[0..*n_early) to compute together with them before the backward pass; eval (training
 * false): running statistics, new_state and early untouched. */
typedef flx_tensor *(*ts_logits_fn)(const train_step *m, flx_tensor *x, bool training,
                                    flx_tensor **new_state, flx_tensor **early, int *n_early);
struct train_step {
    const char *name;      /* workload base name, e.g. "mlp 784-1024-1024-10 b128 sgd" */
    int64_t batch;
    int n_layers;          /* MLP: dense layers; CNN: 0                                  */
    int64_t dims[4];       /* MLP layer widths (n_layers + 1 of them)                   */
    int n_p, n_state;
    flx_tensor *p[TS_MAX_P], *state[TS_MAX_S];
    flx_tensor *x[TS_SETS], *y[TS_SETS];
    ts_logits_fn logits;
    flx_optim_kind kind;   /* FLX_OPTIM_SGD or FLX_OPTIM_ADAM                           */
    double lr, momentum;
    flx_optim *opt;
    flx_plan *plan;
};
/* Fills m with the parameters (and batch-norm state) of an MLP with widths dims[0..n_layers]
 * or of the Fashion-MNIST CNN (examples/fashion_mnist.c --model cnn). 0 or -1. */
int ts_init_mlp(train_step *m, int n_layers, const int64_t *dims, uint64_t seed);
int ts_init_cnn(train_step *m, uint64_t seed);
/* Creates m->opt (kind, lr, momentum) over m's parameters. 0 or -1. */
int ts_make_optim(train_step *m);
/* The whole step (forward, backward, the fused optimiser update, batch-norm state) as a plan
 * with inputs x, y (shapes of the batches given). NULL on error. */
flx_plan *ts_compile(train_step *m, flx_tensor *x, flx_tensor *y, bool capture);
/* Times m's step eager, as a plan and as a captured plan ("<name> eager|plan|plan+graph"). */
void bench_train_step(train_step *m, int reps, int trials);
/* The train-step workloads of the suite (full sizes, or tiny ones in --smoke). */
void bench_train_all(int trials);

/* ---- GPT-2 small training step (bench_gpt2.c) ------------------------------------------------------ */
/* The GPT-2 rows of the suite: bf16 eager and plan+graph, f32 plan+graph (tiny model in --smoke). */
void bench_gpt2_all(int trials);

/* ---- Fashion-MNIST time to accuracy (bench_fmnist.c) ---------------------------------------------- */
void bench_fmnist(void);

/* ---- host overhead on the suite's context (bench_suite.c) ---------------------------------------- */
void bench_host_overhead(int trials);

#endif
