/*
 * fashion_mnist_dp.c — data-parallel training of the Fashion-MNIST MLP (784-256-128-10, ReLU,
 * Adam, cross-entropy) over the ranks of a job.
 *
 * Every rank holds the whole model and takes its share of each global batch: rows
 * [rank * b, (rank + 1) * b) of it, b = global batch / world size. flx_comm_backward computes
 * the gradient of the mean loss over that share and averages it over the ranks in buckets, each
 * bucket's all-reduce starting as soon as backward has made its gradients (--no-overlap: plain
 * flx_backward + flx_comm_average_grads afterwards). With equal shares the averaged gradient is
 * the gradient of the mean loss over the global batch, so N ranks reach the parameters of one
 * process training on the combined batch, up to the rounding of the summation order.
 * --verify proves it: each rank also trains a reference copy of the model alone on every global
 * batch, and the run fails (exit 1) unless both end with the same test accuracy (to 0.5 %) and
 * parameters (to 2e-3 relative, float32).
 *
 * Launching (docs/distributed.md):
 *   mpirun -np 2 ./flx_example_fashion_mnist_dp                 CPU contexts, MPI
 *   mpirun -np 8 ./flx_example_fashion_mnist_dp --cuda          one GPU per rank (local rank)
 *   torchrun --nproc-per-node 8 ./flx_example_fashion_mnist_dp --cuda   NCCL, no MPI
 *   ./flx_example_fashion_mnist_dp                              a world of one process
 *
 * Usage: flx_example_fashion_mnist_dp [--epochs N] [--batch GLOBAL] [--lr X] [--seed N]
 *          [--train-limit N] [--test-limit N] [--bucket-bytes N] [--no-overlap] [--verify]
 *          [--cpu | --cuda] [--data DIR] [--min-accuracy X] [--skip-missing-data]
 * Exit status: 0, 1 on an error or a failed --verify, 3 below --min-accuracy, 77 when the data
 * is missing and --skip-missing-data was given.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "example_util.h"
#include "fashion_mnist.h"
#include "fluxion/fluxion.h"

#define DEFAULT_DATA_DIR "/usr/share/datasets/fashion-mnist"
#define N_PARAMS 6

static int g_rank;

static int fail_flx(const char *what) {
    fprintf(stderr, "fashion_mnist_dp: rank %d: %s: %s [%s]\n", g_rank, what, flx_last_error(),
            flx_status_string(flx_last_status()));
    return 1;
}

/* The local rank of the launcher (the GPU index of a CUDA context), 0 when there is none. */
static int local_rank(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return atoi(getenv(vars[i]));
    return 0;
}

typedef struct model {
    flx_tensor *p[N_PARAMS]; /* fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias */
    flx_optim *opt;
} model;

static int build_model(flx_ctx *ctx, model *m, uint64_t seed, double lr) {
    const int64_t dims[4] = {IMG, 256, 128, N_CLASSES};
    for (int l = 0; l < 3; l++) {
        const int64_t ws[2] = {dims[l + 1], dims[l]};
        m->p[2 * l] = flx_init_uniform_fan_in(ctx, FLX_F32, 2, ws, dims[l], seed + 2 * (uint64_t)l);
        m->p[2 * l + 1] = flx_init_uniform_fan_in(ctx, FLX_F32, 1, ws, dims[l], seed + 2 * (uint64_t)l + 1);
        if (!m->p[2 * l] || !m->p[2 * l + 1]) return fail_flx("initialising the model");
    }
    for (int i = 0; i < N_PARAMS; i++) flx_set_requires_grad(m->p[i], true);
    flx_optim_config oc = flx_optim_defaults(FLX_OPTIM_ADAM);
    oc.lr = lr;
    m->opt = flx_optim_create(ctx, FLX_OPTIM_ADAM, N_PARAMS, m->p, &oc);
    return m->opt ? 0 : fail_flx("flx_optim_create");
}

static flx_tensor *forward(const model *m, flx_tensor *x) {
    flx_tensor *h = flx_relu(flx_linear(x, m->p[0], m->p[1]));
    h = flx_relu(flx_linear(h, m->p[2], m->p[3]));
    return flx_linear(h, m->p[4], m->p[5]);
}

static int accuracy(const model *m, flx_tensor *X, flx_tensor *Y, int64_t n, double *acc) {
    double correct = 0;
    int rc = 0;
    flx_no_grad_begin();
    for (int64_t s = 0; s < n && rc == 0; s += 1000) {
        int64_t e = s + 1000 < n ? s + 1000 : n;
        flx_scope_begin();
        flx_tensor *yb = flx_slice(Y, 0, s, e, 1);
        flx_tensor *pred = flx_argmax(forward(m, flx_slice(X, 0, s, e, 1)), 1, false);
        double hv = 0;
        if (flx_item(flx_sum_all(flx_cast(flx_eq(pred, yb), FLX_I64)), &hv) != FLX_OK) rc = fail_flx("evaluation");
        correct += hv;
        flx_scope_end(0, NULL);
    }
    flx_no_grad_end();
    *acc = correct / (double)n;
    return rc;
}

/* One optimiser step of m on rows idx of (X, Y): data-parallel when comm is given. */
static flx_status step(model *m, flx_comm *comm, flx_tensor *X, flx_tensor *Y, flx_tensor *idx,
                       size_t bucket_bytes, int overlap, double *loss_out) {
    flx_scope_begin();
    flx_tensor *loss = flx_cross_entropy(forward(m, flx_index_select(X, 0, idx)), flx_index_select(Y, 0, idx),
                                         FLX_REDUCTION_MEAN, -100);
    flx_status s = loss ? FLX_OK : flx_last_status();
    if (s == FLX_OK && comm && overlap) {
        s = flx_comm_backward(comm, loss, N_PARAMS, m->p, bucket_bytes);
    } else if (s == FLX_OK) {
        s = flx_backward(loss);
        if (s == FLX_OK && comm) s = flx_comm_average_grads(comm, N_PARAMS, m->p, bucket_bytes);
    }
    if (s == FLX_OK && loss_out) s = flx_item(loss, loss_out);
    flx_scope_end(0, NULL);
    if (s == FLX_OK) s = flx_optim_step(m->opt);
    if (s == FLX_OK) s = flx_optim_zero_grad(m->opt);
    return s;
}

/* Largest |a - b| / (|b|_max + 1e-12) over the parameters. */
static double param_gap(const model *a, const model *b) {
    double worst = 0;
    for (int i = 0; i < N_PARAMS; i++) {
        int64_t n = flx_numel(a->p[i]);
        float *x = (float *)malloc((size_t)n * sizeof *x), *y = (float *)malloc((size_t)n * sizeof *y);
        if (x && y && flx_to_host(a->p[i], x, (size_t)n * sizeof *x) == FLX_OK &&
            flx_to_host(b->p[i], y, (size_t)n * sizeof *y) == FLX_OK) {
            double num = 0, den = 1e-12;
            for (int64_t k = 0; k < n; k++) {
                num = fmax(num, fabs((double)x[k] - (double)y[k]));
                den = fmax(den, fabs((double)y[k]));
            }
            worst = fmax(worst, num / den);
        } else {
            worst = INFINITY;
        }
        free(x);
        free(y);
    }
    return worst;
}

int main(int argc, char **argv) {
    int epochs = 1, overlap = 1, verify = 0, skip_missing = 0, want_cuda = 0;
    int64_t global = 128, train_limit = 0, test_limit = 0;
    double lr = 1e-3, min_acc = -1;
    uint64_t seed = 1;
    size_t bucket_bytes = (size_t)64 << 10; /* several buckets for this small model */
    const char *data = DEFAULT_DATA_DIR;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-overlap")) overlap = 0;
        else if (!strcmp(a, "--verify")) verify = 1;
        else if (!strcmp(a, "--skip-missing-data")) skip_missing = 1;
        else if (!strcmp(a, "--cuda")) want_cuda = 1;
        else if (!strcmp(a, "--cpu")) want_cuda = 0;
        else if (v && !strcmp(a, "--epochs")) epochs = atoi(argv[++i]);
        else if (v && !strcmp(a, "--batch")) global = atoll(argv[++i]);
        else if (v && !strcmp(a, "--lr")) lr = atof(argv[++i]);
        else if (v && !strcmp(a, "--seed")) seed = (uint64_t)atoll(argv[++i]);
        else if (v && !strcmp(a, "--train-limit")) train_limit = atoll(argv[++i]);
        else if (v && !strcmp(a, "--test-limit")) test_limit = atoll(argv[++i]);
        else if (v && !strcmp(a, "--bucket-bytes")) bucket_bytes = (size_t)atoll(argv[++i]);
        else if (v && !strcmp(a, "--min-accuracy")) min_acc = atof(argv[++i]);
        else if (v && !strcmp(a, "--data")) data = argv[++i];
        else {
            fprintf(stderr, "fashion_mnist_dp: unknown or incomplete argument %s (see the top of "
                            "examples/fashion_mnist_dp.c)\n", a);
            return 1;
        }
    }
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/train-images-idx3-ubyte.gz", data);
    if (access(probe, R_OK) != 0) {
        fprintf(stderr, "fashion_mnist_dp: no dataset at %s (apt-get install dataset-fashion-mnist)\n", data);
        return skip_missing ? 77 : 1;
    }
    flx_ctx *ctx = flx_ctx_create(want_cuda ? flx_device_cuda(local_rank()) : flx_device_cpu());
    if (!ctx) return fail_flx("flx_ctx_create");
    flx_comm *comm = flx_comm_create(ctx); /* the launcher's world, or a world of one */
    if (!comm) return fail_flx("flx_comm_create");
    int rank = flx_comm_rank(comm), size = flx_comm_size(comm);
    g_rank = rank;
    if (epochs < 1 || global < size || global % size != 0) {
        fprintf(stderr, "fashion_mnist_dp: --batch %lld must be a positive multiple of the %d ranks "
                        "(and --epochs >= 1)\n", (long long)global, size);
        return 1;
    }
    const int64_t local = global / size;
    dataset tr = {0}, te = {0};
    if (fm_load_split(data, "train", train_limit, &tr) || fm_load_split(data, "t10k", test_limit, &te)) return 1;
    const int64_t xs_tr[2] = {tr.n, IMG}, xs_te[2] = {te.n, IMG};
    flx_tensor *Xtr = flx_from_host(ctx, FLX_F32, 2, xs_tr, tr.x), *Ytr = flx_from_host(ctx, FLX_I64, 1, &tr.n, tr.y);
    flx_tensor *Xte = flx_from_host(ctx, FLX_F32, 2, xs_te, te.x), *Yte = flx_from_host(ctx, FLX_I64, 1, &te.n, te.y);
    free(tr.x);
    free(tr.y);
    free(te.x);
    free(te.y);
    if (!Xtr || !Ytr || !Xte || !Yte) return fail_flx("uploading the data");
    /* Every rank draws its own start; broadcasting rank 0's makes them equal (as a real job
     * whose ranks seed differently must). */
    model dp, ref;
    memset(&dp, 0, sizeof dp);
    memset(&ref, 0, sizeof ref);
    if (build_model(ctx, &dp, seed * 1000 + (uint64_t)rank, lr)) return 1;
    if (flx_comm_broadcast_params(comm, N_PARAMS, dp.p, 0) != FLX_OK) return fail_flx("flx_comm_broadcast_params");
    if (verify && build_model(ctx, &ref, seed * 1000, lr)) return 1;
    if (rank == 0)
        printf("fashion_mnist_dp: %d rank(s) on %s, global batch %lld (%lld per rank), %s, %lld "
               "training images\n", size, want_cuda ? "CUDA" : "CPU", (long long)global, (long long)local,
               overlap ? "all-reduce overlapped with backward" : "all-reduce after backward", (long long)tr.n);
    int64_t *perm = (int64_t *)malloc((size_t)tr.n * sizeof *perm);
    if (!perm) return 1;
    const int64_t steps = tr.n / global; /* whole global batches only: every rank gets a share */
    int rc = 0;
    double t0 = ex_now_s(), last_loss = NAN;
    for (int epoch = 0; epoch < epochs && rc == 0; epoch++) {
        uint64_t s = seed * 7919 + (uint64_t)epoch; /* the same permutation on every rank */
        for (int64_t i = 0; i < tr.n; i++) perm[i] = i;
        for (int64_t i = tr.n - 1; i > 0; i--) {
            int64_t j = (int64_t)(ex_splitmix64(&s) % (uint64_t)(i + 1)), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        flx_scope_begin();
        flx_tensor *P = flx_from_host(ctx, FLX_I64, 1, &tr.n, perm);
        if (!P) rc = fail_flx("the permutation");
        for (int64_t st = 0; st < steps && rc == 0; st++) {
            flx_scope_begin();
            int64_t g0 = st * global, l0 = g0 + rank * local;
            flx_tensor *mine = flx_slice(P, 0, l0, l0 + local, 1);
            double *lp = st + 1 == steps ? &last_loss : NULL;
            if (step(&dp, comm, Xtr, Ytr, mine, bucket_bytes, overlap, lp) != FLX_OK) rc = fail_flx("training step");
            if (rc == 0 && verify &&
                step(&ref, NULL, Xtr, Ytr, flx_slice(P, 0, g0, g0 + global, 1), 0, 0, NULL) != FLX_OK)
                rc = fail_flx("reference step");
            flx_scope_end(0, NULL);
        }
        flx_scope_end(0, NULL);
        double acc = 0;
        if (rc == 0) rc = accuracy(&dp, Xte, Yte, te.n, &acc);
        if (rc == 0 && rank == 0)
            printf("epoch %d: last local loss %.4f, test accuracy %.4f (%.1f s)\n", epoch + 1, last_loss, acc,
                   ex_now_s() - t0);
        if (rc == 0 && epoch + 1 == epochs && min_acc >= 0 && acc < min_acc) {
            if (rank == 0) printf("fashion_mnist_dp: test accuracy %.4f is below %.4f\n", acc, min_acc);
            rc = 3;
        }
    }
    if (rc == 0 && verify) {
        double a_dp = 0, a_ref = 0;
        rc = accuracy(&dp, Xte, Yte, te.n, &a_dp);
        if (rc == 0) rc = accuracy(&ref, Xte, Yte, te.n, &a_ref);
        double gap = param_gap(&dp, &ref);
        int ok = rc == 0 && fabs(a_dp - a_ref) <= 0.005 && gap <= 2e-3;
        printf("fashion_mnist_dp: rank %d: verify: data-parallel accuracy %.4f, one process on the "
               "combined batch %.4f, largest parameter difference %.2e relative: %s\n", rank, a_dp, a_ref, gap,
               ok ? "match" : "MISMATCH");
        if (!ok) rc = 1;
    }
    if (rank == 0 && rc == 0) {
        flx_comm_stats cs;
        if (flx_comm_get_stats(comm, &cs) == FLX_OK)
            printf("fashion_mnist_dp: rank 0 ran %llu collectives (%llu overlapped with backward, %llu "
                   "started before the rest of backward), %.1f MB sent\n", (unsigned long long)cs.collectives,
                   (unsigned long long)cs.overlapped, (unsigned long long)cs.started_early, (double)cs.bytes / 1e6);
    }
    free(perm);
    for (int i = 0; i < N_PARAMS; i++) {
        flx_release(dp.p[i]);
        flx_release(ref.p[i]);
    }
    flx_optim_destroy(dp.opt);
    flx_optim_destroy(ref.opt);
    flx_release(Xtr);
    flx_release(Ytr);
    flx_release(Xte);
    flx_release(Yte);
    flx_comm_destroy(comm);
    flx_ctx_destroy(ctx);
    return rc;
}
