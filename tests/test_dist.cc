// test_dist.cc — communicators and collectives in one process (a world of one): values, VJP
// and JVP of every collective, the data-parallel helpers, and bad input. The two-rank checks
// over MPI are in dist_mpi_test.cc (run by ctest through mpirun).
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "testing.h"

using namespace flxt;

namespace {

using DistTest = CommTest;

TEST_F(DistTest, WorldOfOneWithoutALauncher) {
    EXPECT_EQ(flx_comm_rank(comm), 0);
    EXPECT_EQ(flx_comm_size(comm), 1);
    EXPECT_EQ(flx_comm_rank(nullptr), -1);
    EXPECT_EQ(flx_comm_size(nullptr), -1);
}

TEST_F(DistTest, CollectivesOfOneRankAreTheIdentity) {
    std::vector<double> v = rand_values(12, 3);
    flx_tensor *x = make(ctx, FLX_F64, {4, 3}, v);
    for (flx_comm_op op : {FLX_COMM_SUM, FLX_COMM_AVG, FLX_COMM_MAX, FLX_COMM_MIN})
        EXPECT_TRUE(close(values(flx_comm_all_reduce(comm, x, op)), v)) << op;
    EXPECT_TRUE(close(values(flx_comm_broadcast(comm, x, 0)), v));
    flx_tensor *g = flx_comm_all_gather(comm, x);
    EXPECT_EQ(shape_of(g), (Shape{4, 3}));
    EXPECT_TRUE(close(values(g), v));
    EXPECT_TRUE(close(values(flx_comm_reduce_scatter(comm, x, FLX_COMM_AVG)), v));
    flx_tensor *xi = make(ctx, FLX_I64, {3}, {1, -2, 7});
    EXPECT_TRUE(close(values(flx_comm_all_reduce(comm, xi, FLX_COMM_MAX)), {1, -2, 7}));
}

TEST_F(DistTest, DerivativesOfLinearCollectives) {
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {2, 3}, 5);
    std::vector<Fn> fns = {
        [&](const std::vector<flx_tensor *> &in) { return flx_sin(flx_comm_all_reduce(comm, in[0], FLX_COMM_SUM)); },
        [&](const std::vector<flx_tensor *> &in) { return flx_square(flx_comm_all_reduce(comm, in[0], FLX_COMM_AVG)); },
        [&](const std::vector<flx_tensor *> &in) { return flx_tanh(flx_comm_broadcast(comm, in[0], 0)); },
        [&](const std::vector<flx_tensor *> &in) { return flx_exp(flx_comm_all_gather(comm, in[0])); },
        [&](const std::vector<flx_tensor *> &in) { return flx_cos(flx_comm_reduce_scatter(comm, in[0], FLX_COMM_AVG)); },
    };
    for (size_t i = 0; i < fns.size(); i++) {
        EXPECT_EQ(gradcheck(fns[i], {x}), FLX_OK) << "collective " << i << ": " << flx_last_error();
        EXPECT_TRUE(jvp_check(fns[i], {x})) << "collective " << i;
    }
}

TEST_F(DistTest, MaxAllReduceHasNoGradient) {
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {3}, 2);
    flx_set_requires_grad(x, true);
    flx_tensor *y = flx_sum_all(flx_comm_all_reduce(comm, x, FLX_COMM_MAX));
    EXPECT_EQ(flx_backward(y), FLX_ERR_NOT_DIFFERENTIABLE);
    EXPECT_NE(std::string(flx_last_error()).find("max/min"), std::string::npos) << flx_last_error();
    flx_clear_error();
}

TEST_F(DistTest, CollectiveAfterDestroyIsAStateError) {
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {3}, 2);
    flx_tensor *y = flx_comm_all_reduce(comm, x, FLX_COMM_SUM);
    ASSERT_NE(y, nullptr);
    flx_comm_destroy(comm);
    comm = nullptr;
    EXPECT_EQ(flx_eval(1, &y), FLX_ERR_STATE);
    EXPECT_NE(std::string(flx_last_error()).find("destroyed"), std::string::npos) << flx_last_error();
    flx_clear_error();
}

TEST_F(DistTest, AverageGradsKeepsTheGradientsOfOneRank) {
    flx_tensor *w = rand_tensor(ctx, FLX_F64, {3, 2}, 1), *b = rand_tensor(ctx, FLX_F32, {2}, 2);
    flx_tensor *unused = rand_tensor(ctx, FLX_F64, {5}, 3);
    for (flx_tensor *t : {w, b, unused}) flx_set_requires_grad(t, true);
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {4, 3}, 4);
    flx_tensor *loss = flx_add(flx_sum_all(flx_square(flx_matmul(x, w))),
                               flx_sum_all(flx_cast(flx_exp(b), FLX_F64)));
    ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    std::vector<double> gw = values(flx_grad(w)), gb = values(flx_grad(b));
    flx_tensor *params[] = {w, b, unused};
    // a bucket of 8 bytes forces one bucket per gradient, and the f32/f64 mix splits them too
    for (size_t bucket : {(size_t)0, (size_t)8}) {
        ASSERT_EQ(flx_comm_average_grads(comm, 3, params, bucket), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(flx_grad(w)), gw));
        EXPECT_TRUE(close(values(flx_grad(b)), gb));
        EXPECT_EQ(flx_grad(unused), nullptr);
    }
    ASSERT_EQ(flx_comm_broadcast_params(comm, 3, params, 0), FLX_OK) << flx_last_error();
}

// A 3-layer tanh MLP of six parameters (w1 b1 w2 b2 w3 b3) and its mean squared loss on x.
std::vector<flx_tensor *> mlp_params(flx_ctx *ctx, uint64_t seed) {
    std::vector<flx_tensor *> p = {
        rand_tensor(ctx, FLX_F64, {4, 6}, seed + 1, -0.5, 0.5), rand_tensor(ctx, FLX_F64, {6}, seed + 2),
        rand_tensor(ctx, FLX_F64, {6, 5}, seed + 3, -0.5, 0.5), rand_tensor(ctx, FLX_F64, {5}, seed + 4),
        rand_tensor(ctx, FLX_F64, {5, 2}, seed + 5, -0.5, 0.5), rand_tensor(ctx, FLX_F64, {2}, seed + 6)};
    for (flx_tensor *t : p) flx_set_requires_grad(t, true);
    return p;
}

flx_tensor *mlp_loss(const std::vector<flx_tensor *> &p, flx_tensor *x) {
    flx_tensor *h = x;
    for (size_t l = 0; l < 3; l++) {
        h = flx_add(flx_matmul(h, p[2 * l]), p[2 * l + 1]);
        if (l < 2) h = flx_tanh(h);
    }
    return flx_mean_all(flx_square(h));
}

// flx_comm_backward is flx_backward + flx_comm_average_grads in one evaluation: the same
// gradients (accumulating onto existing ones), and with one gradient per bucket every bucket but
// the last starts before the backward kernels of the layers below it. A bucket counts as started
// early when backward kernels ran since the previous bucket started: with fusion off each of the
// six gradients after the first has kernels of its own; with fusion on a layer's weight and bias
// gradients come from one kernel (the bias gradient joins the weight-gradient GEMM), so only the
// first bucket of layers 2 and 1 and the unused parameter's zeros count.
TEST_F(DistTest, OverlappedBackwardEqualsBackwardThenAverage) {
    std::vector<flx_tensor *> a = mlp_params(ctx, 10), b = mlp_params(ctx, 10);
    flx_tensor *unused_a = rand_tensor(ctx, FLX_F64, {3}, 7), *unused_b = rand_tensor(ctx, FLX_F64, {3}, 7);
    flx_set_requires_grad(unused_a, true);
    flx_set_requires_grad(unused_b, true);
    a.push_back(unused_a);
    b.push_back(unused_b);
    for (int round = 0; round < 2; round++) {  // the second round accumulates onto the first's
        ASSERT_EQ(flx_set_fusion(ctx, round == 0), FLX_OK);
        flx_tensor *x = rand_tensor(ctx, FLX_F64, {8, 4}, 20 + (uint64_t)round);
        flx_tensor *la = mlp_loss(a, x), *lb = mlp_loss(b, x);
        ASSERT_EQ(flx_backward(la), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_comm_average_grads(comm, 7, a.data(), 1), FLX_OK) << flx_last_error();
        flx_comm_stats before{}, after{};
        ASSERT_EQ(flx_comm_get_stats(comm, &before), FLX_OK);
        ASSERT_EQ(flx_comm_backward(comm, lb, 7, b.data(), 1), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_comm_get_stats(comm, &after), FLX_OK);
        EXPECT_EQ(after.overlapped - before.overlapped, 7u);
        EXPECT_EQ(after.started_early - before.started_early, round == 0 ? 3u : 6u)
            << "a bucket started after all of backward (fusion " << (round == 0) << ")";
        EXPECT_TRUE(close(values(lb), values(la), 0, 0));
        for (size_t i = 0; i < 6; i++)
            EXPECT_TRUE(close(values(flx_grad(b[i])), values(flx_grad(a[i])), 1e-15, 1e-15)) << "round " << round << " parameter " << i;
        // a parameter the loss does not reach gets zeros, so every rank reduces the same buckets
        EXPECT_EQ(flx_grad(unused_a), nullptr);
        EXPECT_TRUE(close(values(flx_grad(unused_b)), {0, 0, 0}, 0, 0));
    }
    ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
    // one bucket for everything: it can only start once backward is done
    flx_comm_stats before{}, after{};
    ASSERT_EQ(flx_comm_get_stats(comm, &before), FLX_OK);
    ASSERT_EQ(flx_comm_backward(comm, mlp_loss(b, rand_tensor(ctx, FLX_F64, {8, 4}, 30)), 7, b.data(), 0), FLX_OK)
        << flx_last_error();
    ASSERT_EQ(flx_comm_get_stats(comm, &after), FLX_OK);
    EXPECT_EQ(after.overlapped - before.overlapped, 1u);
    EXPECT_EQ(after.started_early - before.started_early, 0u);
    EXPECT_EQ(after.collectives - before.collectives, 1u);
    EXPECT_EQ(after.bytes - before.bytes, (uint64_t)(24 + 6 + 30 + 5 + 10 + 2 + 3) * 8);
}

TEST_F(DistTest, TimeoutSettingsAndBadInput) {
    double t = 0;
    ASSERT_EQ(flx_comm_get_timeout(comm, &t), FLX_OK);
    if (!std::getenv("FLX_COMM_TIMEOUT_S")) EXPECT_EQ(t, 600.0);
    EXPECT_EQ(flx_comm_set_timeout(comm, 2.5), FLX_OK);
    ASSERT_EQ(flx_comm_get_timeout(comm, &t), FLX_OK);
    EXPECT_EQ(t, 2.5);
    for (double bad : {0.0, -1.0, (double)NAN, (double)INFINITY}) {
        EXPECT_EQ(flx_comm_set_timeout(comm, bad), FLX_ERR_INVALID_ARGUMENT) << bad;
        EXPECT_NE(std::string(flx_last_error()).find("seconds"), std::string::npos) << flx_last_error();
    }
    EXPECT_EQ(flx_comm_set_timeout(nullptr, 1.0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_comm_get_timeout(nullptr, &t), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_comm_get_timeout(comm, nullptr), FLX_ERR_INVALID_ARGUMENT);
    flx_comm_stats st;
    EXPECT_EQ(flx_comm_get_stats(nullptr, &st), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_comm_get_stats(comm, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_STREQ(flx_status_string(FLX_ERR_TIMEOUT), "FLX_ERR_TIMEOUT");
    // the environment sets the default of new communicators; junk is ignored
    const char *saved = std::getenv("FLX_COMM_TIMEOUT_S");
    std::string keep = saved ? saved : "";
    for (auto c : {std::make_pair("7.5", 7.5), std::make_pair("junk", 600.0), std::make_pair("-3", 600.0)}) {
        setenv("FLX_COMM_TIMEOUT_S", c.first, 1);
        flx_comm *other = flx_comm_create(ctx);
        ASSERT_NE(other, nullptr) << flx_last_error();
        ASSERT_EQ(flx_comm_get_timeout(other, &t), FLX_OK);
        EXPECT_EQ(t, c.second) << c.first;
        flx_comm_destroy(other);
    }
    if (saved) setenv("FLX_COMM_TIMEOUT_S", keep.c_str(), 1);
    else unsetenv("FLX_COMM_TIMEOUT_S");
    // flx_comm_backward's arguments
    std::vector<flx_tensor *> p = mlp_params(ctx, 1);
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {3, 4}, 2), *loss = mlp_loss(p, x);
    EXPECT_EQ(flx_comm_backward(nullptr, loss, 6, p.data(), 0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_comm_backward(comm, nullptr, 6, p.data(), 0), FLX_ERR_INVALID_ARGUMENT);
    flx_clear_error();
    EXPECT_EQ(flx_comm_backward(comm, loss, 6, nullptr, 0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_comm_backward(comm, loss, -1, p.data(), 0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_comm_backward(comm, flx_square(x), 6, p.data(), 0), FLX_ERR_SHAPE);
    flx_tensor *plain = rand_tensor(ctx, FLX_F64, {4, 6}, 3);  // does not require grad
    flx_tensor *q[] = {plain};
    EXPECT_EQ(flx_comm_backward(comm, loss, 1, q, 0), FLX_ERR_NOT_DIFFERENTIABLE);
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    flx_scope_begin();
    flx_tensor *far = flx_sum_all(flx_zeros(other, FLX_F64, 1, (const int64_t[]){2}));
    EXPECT_EQ(flx_comm_backward(comm, far, 6, p.data(), 0), FLX_ERR_DEVICE);
    flx_scope_end(0, nullptr);
    flx_ctx_destroy(other);
    for (flx_tensor *t2 : p) EXPECT_EQ(flx_grad(t2), nullptr) << "a refused call left a gradient";
    flx_clear_error();
}

// In a world of one, the sharded optimiser's shard is everything: its steps must equal a plain
// optimiser's on the same gradients, bit for bit (the update is the same elementwise formula).
TEST_F(DistTest, ShardedOptimiserOfOneRankEqualsThePlainOne) {
    std::vector<flx_tensor *> a, b;
    for (int k = 0; k < 2; k++) {
        std::vector<flx_tensor *> &p = k ? b : a;
        p = {rand_tensor(ctx, FLX_F64, {3, 2}, 1), rand_tensor(ctx, FLX_F64, {5}, 2), rand_tensor(ctx, FLX_F64, {1}, 3)};
        for (flx_tensor *t : p) flx_set_requires_grad(t, true);
    }
    flx_sharded_optim *z = flx_sharded_optim_create(comm, FLX_OPTIM_ADAMW, 3, a.data(), nullptr);
    flx_optim *o = flx_optim_create(ctx, FLX_OPTIM_ADAMW, 3, b.data(), nullptr);
    ASSERT_TRUE(z && o) << flx_last_error();
    EXPECT_NE(flx_sharded_optim_shard(z), nullptr);
    for (int step = 0; step < 3; step++) {
        flx_tensor *x = rand_tensor(ctx, FLX_F64, {4, 3}, 10 + (uint64_t)step);
        for (int k = 0; k < 2; k++) {
            std::vector<flx_tensor *> &p = k ? b : a;
            flx_tensor *h = flx_tanh(flx_matmul(x, p[0]));
            // a's third parameter gets no gradient, which the sharded step treats as zeros; b's gets
            // an explicit zero gradient (flx_optim_step would skip a NULL one)
            flx_tensor *loss = flx_add(flx_sum_all(flx_square(h)), flx_sum_all(flx_sin(p[1])));
            if (k) loss = flx_add(loss, flx_mul_scalar(flx_sum_all(p[2]), 0.0));
            ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
        }
        ASSERT_EQ(flx_sharded_optim_step(z), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_optim_step(o), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_sharded_optim_zero_grad(z), FLX_OK);
        ASSERT_EQ(flx_optim_zero_grad(o), FLX_OK);
    }
    for (int i = 0; i < 3; i++) EXPECT_TRUE(close(values(a[(size_t)i]), values(b[(size_t)i]), 0, 0)) << i;
    flx_sharded_optim_destroy(z);
    flx_optim_destroy(o);
}

TEST_F(DistTest, BadInputIsRejected) {
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {4, 3}, 1);
    EXPECT_TRUE(fails_with(flx_comm_all_reduce(nullptr, x, FLX_COMM_SUM), FLX_ERR_INVALID_ARGUMENT, "comm is NULL"));
    flx_clear_error();
    EXPECT_TRUE(fails_with(flx_comm_all_reduce(comm, nullptr, FLX_COMM_SUM), FLX_ERR_INVALID_ARGUMENT, "flx_comm_all_reduce"));
    flx_clear_error();
    EXPECT_TRUE(fails_with(flx_comm_all_reduce(comm, x, (flx_comm_op)9), FLX_ERR_INVALID_ARGUMENT, "reduce op"));
    EXPECT_TRUE(fails_with(flx_comm_broadcast(comm, x, 1), FLX_ERR_INVALID_ARGUMENT, "root 1"));
    EXPECT_TRUE(fails_with(flx_comm_broadcast(comm, x, -1), FLX_ERR_INVALID_ARGUMENT, "root -1"));
    EXPECT_TRUE(fails_with(flx_comm_reduce_scatter(comm, x, FLX_COMM_MAX), FLX_ERR_INVALID_ARGUMENT, "SUM or"));
    EXPECT_TRUE(fails_with(flx_comm_all_gather(comm, flx_scalar(ctx, FLX_F64, 1.0)), FLX_ERR_SHAPE, "axis"));
    flx_tensor *bits = flx_gt(x, flx_scalar(ctx, FLX_F64, 0.0));
    EXPECT_TRUE(fails_with(flx_comm_all_reduce(comm, bits, FLX_COMM_SUM), FLX_ERR_DTYPE, "f32, f64"));
    flx_tensor *xi = make(ctx, FLX_I32, {2}, {1, 2});
    EXPECT_TRUE(fails_with(flx_comm_all_reduce(comm, xi, FLX_COMM_AVG), FLX_ERR_DTYPE, "without AVG"));
    // half precision has no MPI type: refused, not sent as garbage
    flx_tensor *half = flx_cast(x, FLX_F16);
    if (half) {
        EXPECT_TRUE(fails_with(flx_comm_all_reduce(comm, half, FLX_COMM_SUM), FLX_ERR_DTYPE, "f32, f64"));
        flx_tensor *ph[] = {half};
        EXPECT_EQ(flx_comm_average_grads(comm, 1, ph, 0), FLX_ERR_DTYPE);
    }
    flx_clear_error();
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    flx_scope_begin();  // y dies with this scope, before its context
    flx_tensor *y = flx_zeros(other, FLX_F64, 1, (const int64_t[]){2});
    EXPECT_TRUE(fails_with(flx_comm_all_reduce(comm, y, FLX_COMM_SUM), FLX_ERR_DEVICE, "another context"));
    flx_tensor *params[] = {y};
    EXPECT_EQ(flx_comm_average_grads(comm, 1, params, 0), FLX_ERR_DEVICE);
    flx_scope_end(0, nullptr);
    flx_ctx_destroy(other);
    flx_tensor *pi[] = {xi};
    EXPECT_EQ(flx_comm_average_grads(comm, 1, pi, 0), FLX_ERR_DTYPE);
    EXPECT_EQ(flx_comm_average_grads(nullptr, 1, pi, 0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_comm_average_grads(comm, 1, nullptr, 0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_comm_average_grads(comm, -1, pi, 0), FLX_ERR_INVALID_ARGUMENT);
    flx_scope_begin();
    flx_tensor *gone = rand_tensor(ctx, FLX_F64, {2}, 9);
    flx_scope_end(0, nullptr);  // gone is a dead handle now
    flx_tensor *pg[] = {gone};
    EXPECT_EQ(flx_comm_average_grads(comm, 1, pg, 0), FLX_ERR_STATE);
    EXPECT_EQ(flx_comm_broadcast_params(comm, 1, pg, 0), FLX_ERR_STATE);
    flx_clear_error();
    flx_tensor *pn[] = {nullptr};
    EXPECT_EQ(flx_comm_broadcast_params(comm, 1, pn, 0), FLX_ERR_INVALID_ARGUMENT);
    flx_tensor *px[] = {x};
    EXPECT_EQ(flx_comm_broadcast_params(comm, 1, px, 3), FLX_ERR_INVALID_ARGUMENT);
    flx_tensor *f32 = rand_tensor(ctx, FLX_F32, {2}, 1), *f64 = rand_tensor(ctx, FLX_F64, {2}, 1);
    flx_tensor *mixed[] = {f64, f32}, *derived[] = {flx_exp(f64)};
    EXPECT_EQ(flx_sharded_optim_create(nullptr, FLX_OPTIM_SGD, 1, mixed, nullptr), nullptr);
    EXPECT_EQ(flx_sharded_optim_create(comm, FLX_OPTIM_SGD, 0, mixed, nullptr), nullptr);
    EXPECT_EQ(flx_sharded_optim_create(comm, FLX_OPTIM_SGD, 2, mixed, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DTYPE);
    EXPECT_EQ(flx_sharded_optim_create(comm, FLX_OPTIM_SGD, 1, derived, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    EXPECT_EQ(flx_sharded_optim_step(nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_sharded_optim_zero_grad(nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_sharded_optim_shard(nullptr), nullptr);
    flx_sharded_optim_destroy(nullptr);
    EXPECT_EQ(flx_comm_create(nullptr), nullptr);
    EXPECT_EQ(flx_comm_destroy(nullptr), FLX_OK);
    flx_clear_error();
}

TEST(DistLauncher, LauncherWorldNeedsMpi) {
    // started "by mpirun" with MPI compiled in, a one-process job is a world of one over MPI;
    // without MPI compiled in, it must refuse rather than silently run alone
    if (flx_has_mpi()) GTEST_SKIP() << "MPI is compiled in: dist_mpi_test covers launcher worlds";
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    flx_ctx *ctx = flx_ctx_create(flx_device_cpu());
    flx_comm *c = flx_comm_create(ctx);
    unsetenv("OMPI_COMM_WORLD_SIZE");
    EXPECT_EQ(c, nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_UNSUPPORTED);
    flx_clear_error();
    flx_ctx_destroy(ctx);
}

// torchrun-style environments: CPU contexts need mpirun, malformed values are named, a job of one
// is a world of one.
TEST(DistLauncher, TorchrunStyleEnvironment) {
    if (std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK"))
        GTEST_SKIP() << "running under an MPI launcher";
    flx_ctx *ctx = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(ctx, nullptr);
    struct Case { const char *rank, *size; flx_status want; } cases[] = {
        {"0", "2", FLX_ERR_UNSUPPORTED}, {"1", "2", FLX_ERR_UNSUPPORTED}, {"2", "2", FLX_ERR_INVALID_ARGUMENT},
        {"x", "2", FLX_ERR_INVALID_ARGUMENT}, {"0", "0", FLX_ERR_INVALID_ARGUMENT}, {"0", "1", FLX_OK}};
    for (const Case &c : cases) {
        setenv("RANK", c.rank, 1);
        setenv("WORLD_SIZE", c.size, 1);
        flx_comm *comm = flx_comm_create(ctx);
        EXPECT_EQ(comm ? FLX_OK : flx_last_status(), c.want) << "RANK=" << c.rank << " WORLD_SIZE=" << c.size
                                                             << ": " << flx_last_error();
        if (comm) EXPECT_EQ(flx_comm_size(comm), 1);
        flx_comm_destroy(comm);
        flx_clear_error();
    }
    unsetenv("RANK");
    unsetenv("WORLD_SIZE");
    flx_ctx_destroy(ctx);
}

using NcclTest = CudaCpuTest;

// NCCL on a CUDA context: without a launcher a CUDA communicator is a world of one over NCCL,
// so one GPU exercises the real transport: every collective against the closed forms.
TEST_F(NcclTest, CollectivesMatchTheCpu) {
    flx_ctx *cuda = gpu;
    flx_comm *c = flx_comm_create(cuda);
    ASSERT_NE(c, nullptr) << flx_last_error();
    EXPECT_TRUE(flx_has_nccl());
    int size = flx_comm_size(c), rank = flx_comm_rank(c);
    flx_scope_begin();
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        flx_tensor *x = make(cuda, dt, {4, 3}, rank_values(rank, 12));
        RankReduction want = reduce_rank_values(size, 12, dt);
        double tol = dt == FLX_F32 ? 1e-6 : 1e-14;
        EXPECT_TRUE(close(values(flx_comm_all_reduce(c, x, FLX_COMM_SUM)), want.sum, tol, tol));
        EXPECT_TRUE(close(values(flx_comm_all_reduce(c, x, FLX_COMM_MAX)), want.max, 0, 0));
        EXPECT_TRUE(close(values(flx_comm_broadcast(c, x, 0)), rank_values(0, 12), tol, tol));
        EXPECT_EQ(shape_of(flx_comm_all_gather(c, x)), (Shape{4 * size, 3}));
    }
    flx_tensor *x = make(cuda, FLX_F64, {2 * size, 3}, rank_values(rank, (size_t)(6 * size)));
    flx_set_requires_grad(x, true);
    flx_tensor *y = flx_comm_reduce_scatter(c, x, FLX_COMM_SUM);
    ASSERT_EQ(flx_backward(flx_sum_all(y)), FLX_OK) << flx_last_error();
    // d/dx of sum_r sum(y_r): every element of every rank's x counts once
    EXPECT_TRUE(close(values(flx_grad(x)), std::vector<double>((size_t)(6 * size), 1.0)));
    flx_scope_end(0, nullptr);
    flx_comm_destroy(c);
}

// The overlapped backward on NCCL: the bucket all-reduces run on the communicator's own stream,
// ordered by events against the context's stream; the gradients must equal the CPU's. Buckets
// started early count as in DistTest.OverlappedBackwardEqualsBackwardThenAverage: with fusion off
// each of the six gradients after the first has kernels of its own; with fusion on a layer's
// weight and bias gradients come from one kernel, so only the first bucket of layers 2 and 1
// counts.
TEST_F(NcclTest, OverlappedBackwardMatchesTheCpu) {
    flx_ctx *cuda = gpu;
    flx_comm *cc = flx_comm_create(cuda), *hc = flx_comm_create(cpu);
    ASSERT_TRUE(cc && hc) << flx_last_error();
    flx_scope_begin();
    std::vector<flx_tensor *> g = mlp_params(cuda, 40), h = mlp_params(cpu, 40);
    flx_tensor *xg = rand_tensor(cuda, FLX_F64, {8, 4}, 41), *xh = rand_tensor(cpu, FLX_F64, {8, 4}, 41);
    ASSERT_EQ(flx_comm_backward(cc, mlp_loss(g, xg), 6, g.data(), 1), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_comm_backward(hc, mlp_loss(h, xh), 6, h.data(), 1), FLX_OK) << flx_last_error();
    for (size_t i = 0; i < 6; i++)
        EXPECT_TRUE(close(values(flx_grad(g[i])), values(flx_grad(h[i])), 1e-12, 1e-10)) << "parameter " << i;
    flx_comm_stats st{};
    ASSERT_EQ(flx_comm_get_stats(cc, &st), FLX_OK);
    bool fusion = true;
    EXPECT_EQ(flx_get_fusion(cuda, &fusion), FLX_OK);
    EXPECT_EQ(st.overlapped, 6u);
    EXPECT_EQ(st.started_early, fusion ? 2u : 5u) << "fusion " << fusion;
    flx_scope_end(0, nullptr);
    flx_comm_destroy(cc);
    flx_comm_destroy(hc);
}

}  // namespace
