/*
 * bench_train.c — training-step workloads of flx_bench_suite, each eager, as a plan, and as a
 * plan captured into one CUDA graph, and the models the Fashion-MNIST time-to-accuracy runs
 * (bench_fmnist.c) share with them.
 *
 * A model is its parameters, its state leaves (batch-norm running statistics, assigned every
 * step), TS_SETS rotating input batches and a logits builder; the loss is the mean cross-entropy.
 *   eager       record the step, evaluate the new state together with the tensors the builder
 *               asks for, flx_backward, assign the state, then (after the scope has released the
 *               step's views) flx_optim_step + zero_grad: the fused device-side optimiser.
 *   plan        the same step as one compiled plan: loss, gradients, the same fused optimiser
 *               stepped inside the run (flx_plan_options.optims), the new statistics written
 *               back by the plan's assignments; no capture.
 *   plan+graph  that plan captured as one CUDA graph.
 * Models: MLP 784-1024-1024-10 (SGD lr 1e-3, or Adam 1e-3) at batch 128 and 8192, MLP
 * 784-256-128-10 (Adam) at 128, and the Fashion-MNIST CNN of examples/fashion_mnist.c (2 x [conv
 * 3x3 pad 1 (32, 64 channels) + batch norm + ReLU + max-pool 2], dense 3136-128, 10; Adam 1e-3) at
 * 128. Batches: x standard normal, labels uniform in [0, 10).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <string.h>

#include "bench_suite.h"

static int ts_add_param(train_step *m, flx_tensor *init) {
    flx_tensor *t = bench_as_source(init);
    if (!t || m->n_p >= TS_MAX_P || flx_set_requires_grad(t, true) != FLX_OK) return -1;
    m->p[m->n_p++] = t;
    return 0;
}

static int ts_add_state(train_step *m, flx_tensor *init) {
    flx_tensor *t = bench_as_source(init);
    if (!t || m->n_state >= TS_MAX_S) return -1;
    m->state[m->n_state++] = t;
    return 0;
}

static int ts_make_batches(train_step *m, uint64_t seed) {
    for (int k = 0; k < TS_SETS; k++) {
        int64_t xs[2] = {m->batch, 784};
        m->x[k] = bench_as_source(flx_normal(g_ctx, FLX_F32, 2, xs, 0, 1, seed + (uint64_t)k));
        m->y[k] = bench_as_source(
            flx_cast(flx_uniform(g_ctx, FLX_F32, 1, &m->batch, 0, 9.99, seed + 100 + (uint64_t)k), FLX_I64));
        if (!m->x[k] || !m->y[k]) return -1;
    }
    return 0;
}

/* ---- MLP: dense + ReLU layers, the last without ReLU ------------------------------------------ */
static flx_tensor *mlp_logits(const train_step *m, flx_tensor *x, bool training, flx_tensor **ns,
                              flx_tensor **early, int *n_early) {
    (void)training, (void)ns, (void)early;
    *n_early = 0;
    flx_tensor *h = x;
    for (int l = 0; l < m->n_layers; l++) {
        h = flx_add(flx_matmul(h, m->p[2 * l]), m->p[2 * l + 1]);
        if (l + 1 < m->n_layers) h = flx_relu(h);
    }
    return h;
}

int ts_init_mlp(train_step *m, int n_layers, const int64_t *dims, uint64_t seed) {
    m->logits = mlp_logits;
    m->n_layers = n_layers;
    int bad = 0;
    for (int l = 0; l < n_layers && !bad; l++) {
        int64_t ws[2] = {dims[l], dims[l + 1]};
        m->dims[l] = dims[l];
        bad |= ts_add_param(m, flx_init_kaiming_uniform(g_ctx, FLX_F32, 2, ws, FLX_FAN_IN, 1.0, seed + (uint64_t)l));
        bad |= ts_add_param(m, flx_zeros(g_ctx, FLX_F32, 1, &dims[l + 1]));
    }
    m->dims[n_layers] = dims[n_layers];
    return bad || ts_make_batches(m, seed + 200) ? -1 : 0;
}

/* ---- the Fashion-MNIST CNN (parameters in the example's order and PyTorch layouts) ------------- */
#define CNN_C1 32
#define CNN_C2 64
static flx_tensor *cnn_logits(const train_step *m, flx_tensor *x, bool training, flx_tensor **ns,
                              flx_tensor **early, int *n_early) {
    const int64_t img[4] = {-1, 1, 28, 28}, k2[2] = {2, 2}, pad1[2] = {1, 1}, flat[2] = {-1, CNN_C2 * 49};
    flx_tensor *const *p = m->p;
    flx_tensor *h = flx_reshape(x, 4, img);
    for (int l = 0; l < 2; l++) {
        flx_tensor *c = flx_conv2d(h, p[4 * l], p[4 * l + 1], NULL, pad1, NULL);
        if (training) early[l] = c; /* as the example: conv outputs computed with the statistics */
        flx_tensor *b = flx_batch_norm(c, p[4 * l + 2], p[4 * l + 3], m->state[2 * l], m->state[2 * l + 1],
                                       training, 0.1, 1e-5, training ? &ns[2 * l] : NULL,
                                       training ? &ns[2 * l + 1] : NULL);
        h = flx_max_pool2d(flx_relu(b), k2, NULL, NULL, NULL);
    }
    if (training) *n_early = 2;
    h = flx_relu(flx_linear(flx_reshape(h, 2, flat), p[8], p[9]));
    return flx_linear(h, p[10], p[11]);
}

int ts_init_cnn(train_step *m, uint64_t seed) {
    m->logits = cnn_logits;
    const int64_t c1 = CNN_C1, c2 = CNN_C2;
    const int64_t w1[4] = {c1, 1, 3, 3}, w2[4] = {c2, c1, 3, 3}, f1[2] = {128, c2 * 49}, f2[2] = {10, 128};
    const int64_t *cs[2] = {&c1, &c2}, *ws[2] = {w1, w2};
    const int64_t fan[2] = {9, c1 * 9};
    int bad = 0;
    for (int l = 0; l < 2; l++) {
        uint64_t s = seed + 2 * (uint64_t)l;
        bad |= ts_add_param(m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 4, ws[l], fan[l], s));
        bad |= ts_add_param(m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 1, ws[l], fan[l], s + 1));
        bad |= ts_add_param(m, flx_ones(g_ctx, FLX_F32, 1, cs[l]));
        bad |= ts_add_param(m, flx_zeros(g_ctx, FLX_F32, 1, cs[l]));
        bad |= ts_add_state(m, flx_zeros(g_ctx, FLX_F32, 1, cs[l]));
        bad |= ts_add_state(m, flx_ones(g_ctx, FLX_F32, 1, cs[l]));
    }
    bad |= ts_add_param(m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 2, f1, f1[1], seed + 10));
    bad |= ts_add_param(m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 1, f1, f1[1], seed + 11));
    bad |= ts_add_param(m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 2, f2, 128, seed + 12));
    bad |= ts_add_param(m, flx_init_uniform_fan_in(g_ctx, FLX_F32, 1, f2, 128, seed + 13));
    return bad || ts_make_batches(m, seed + 200) ? -1 : 0;
}

int ts_make_optim(train_step *m) {
    flx_optim_config cfg = flx_optim_defaults(m->kind);
    cfg.lr = m->lr;
    if (m->kind != FLX_OPTIM_ADAM) cfg.momentum = m->momentum;
    m->opt = flx_optim_create(g_ctx, m->kind, m->n_p, m->p, &cfg);
    return m->opt ? 0 : -1;
}

static flx_tensor *ts_loss(const train_step *m, flx_tensor *x, flx_tensor *y, flx_tensor **ns,
                           flx_tensor **early, int *n_early) {
    flx_tensor *logits = m->logits(m, x, true, ns, early, n_early);
    return flx_cross_entropy(logits, y, FLX_REDUCTION_MEAN, -100);
}

static int ts_eager_rep(void *q, int rep) {
    train_step *m = (train_step *)q;
    flx_scope_begin();
    flx_tensor *ns[TS_MAX_S] = {0}, *ev[TS_MAX_EARLY + TS_MAX_S] = {0};
    int n_early = 0;
    flx_tensor *loss = ts_loss(m, m->x[rep % TS_SETS], m->y[rep % TS_SETS], ns, ev, &n_early);
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
    flx_tensor *in[2] = {m->x[rep % TS_SETS], m->y[rep % TS_SETS]};
    return flx_plan_run(m->plan, 2, in) == FLX_OK ? 0 : -1;
}

/* The plan builds the gradients of output 0 for the parameters that have a .grad, hence the one
 * flx_backward here (its values are never used). */
flx_plan *ts_compile(train_step *m, flx_tensor *x, flx_tensor *y, bool capture) {
    flx_tensor *ns[TS_MAX_S] = {0}, *early[TS_MAX_EARLY] = {0};
    int n_early = 0;
    flx_tensor *loss = ts_loss(m, x, y, ns, early, &n_early);
    flx_status st = loss ? flx_backward(loss) : FLX_ERR_INVALID_ARGUMENT;
    if (st != FLX_OK) return NULL;
    flx_plan_options o = flx_plan_default_options();
    o.capture = capture ? FLX_PLAN_CAPTURE_ON : FLX_PLAN_CAPTURE_OFF;
    o.n_assign = m->n_state;
    o.assign_dst = m->state;
    o.assign_src = ns;
    o.n_optim = 1;
    o.optims = &m->opt;
    flx_tensor *ins[2] = {x, y};
    return flx_plan_compile(1, &loss, 2, ins, &o);
}

void bench_train_step(train_step *m, int reps, int trials) {
    static const char *modes[3] = {"eager", "plan", "plan+graph"};
    char name[96], shape[32], note[160];
    snprintf(shape, sizeof shape, "%lldx784", (long long)m->batch);
    for (int mode = 0; mode < 3; mode++) {
        snprintf(name, sizeof name, "%s %s", m->name, modes[mode]);
        if (!bench_selected(name)) continue;
        flx_scope_begin();
        double t = -1;
        flx_plan_info info = {0};
        if (ts_make_optim(m) == 0 && mode == 0) {
            t = bench_time(ts_eager_rep, m, reps, trials);
        } else if (m->opt) {
            m->plan = ts_compile(m, m->x[0], m->y[0], mode == 2);
            if (m->plan) {
                flx_plan_get_info(m->plan, &info);
                t = bench_time(ts_plan_rep, m, reps, trials);
            }
        }
        snprintf(note, sizeof note, "%.0f samples/s%s", t > 0 ? (double)m->batch / t : 0.0,
                 m->plan && mode == 2 && !info.captured && !g_smoke ? "; NOT captured" : "");
        bench_report(name, shape, t, 0, 0, note);
        flx_plan_destroy(m->plan);
        m->plan = NULL;
        flx_optim_zero_grad(m->opt);
        flx_optim_destroy(m->opt);
        m->opt = NULL;
        flx_scope_end(0, NULL);
    }
}

/* One train-step workload family: the three modes of `name` for a model built by init. */
static void train_family(const char *name, int64_t batch, bool cnn, int n_layers, const int64_t *dims,
                         flx_optim_kind kind, double lr, int reps, int trials) {
    char probe[96];
    bool any = false;
    static const char *modes[3] = {" eager", " plan", " plan+graph"};
    for (int k = 0; k < 3; k++) {
        snprintf(probe, sizeof probe, "%s%s", name, modes[k]);
        any |= bench_selected(probe);
    }
    if (!any) return;
    flx_scope_begin();
    train_step m;
    memset(&m, 0, sizeof m);
    m.name = name;
    m.batch = batch;
    m.kind = kind;
    m.lr = lr;
    int rc = cnn ? ts_init_cnn(&m, 400) : ts_init_mlp(&m, n_layers, dims, 100);
    if (rc == 0) {
        bench_train_step(&m, reps, trials);
    } else {
        char shape[32];
        snprintf(shape, sizeof shape, "%lldx784", (long long)batch);
        for (int k = 0; k < 3; k++) {
            snprintf(probe, sizeof probe, "%s%s", name, modes[k]);
            if (bench_selected(probe)) bench_report(probe, shape, -1, 0, 0, NULL);
        }
    }
    flx_scope_end(0, NULL);
}

void bench_train_all(int trials) {
    static const int64_t big[4] = {784, 1024, 1024, 10}, small[4] = {784, 256, 128, 10};
    int64_t b128 = g_smoke ? 8 : 128, b8192 = g_smoke ? 16 : 8192;
    int r128 = g_smoke ? 2 : (g_quick ? 50 : 100), r8192 = g_smoke ? 2 : (g_quick ? 10 : 20);
    train_family("mlp 784-1024-1024-10 b128 sgd", b128, false, 3, big, FLX_OPTIM_SGD, 1e-3, r128, trials);
    train_family("mlp 784-1024-1024-10 b128 adam", b128, false, 3, big, FLX_OPTIM_ADAM, 1e-3, r128, trials);
    train_family("mlp 784-1024-1024-10 b8192 sgd", b8192, false, 3, big, FLX_OPTIM_SGD, 1e-3, r8192, trials);
    train_family("mlp 784-1024-1024-10 b8192 adam", b8192, false, 3, big, FLX_OPTIM_ADAM, 1e-3, r8192, trials);
    train_family("mlp 784-256-128-10 b128 adam", b128, false, 3, small, FLX_OPTIM_ADAM, 1e-3, r128, trials);
    train_family("cnn b128 adam", g_smoke ? 4 : 128, true, 0, NULL, FLX_OPTIM_ADAM, 1e-3, r128, trials);
}
