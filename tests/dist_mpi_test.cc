// dist_mpi_test.cc — collectives between two or more processes over MPI (CPU contexts), run by
// ctest as `mpirun -np 2 flx_dist_mpi_tests`: values against closed forms, the dot-product test
// <u, J v> = <J^T u, v> summed over the ranks for every linear collective, a gradient through an
// all-reduce, and data-parallel training that must reach the parameters of one process training
// on the combined batch.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "testing.h"

using namespace flxt;

namespace {

class MpiTest : public CommTest {
  protected:
    void SetUp() override {
        CommTest::SetUp();
        ASSERT_GE(size, 2) << "run under mpirun -np 2 (or more)";
    }
    // Sum of a scalar over the ranks (the all-reduce itself is checked by AllReduceValues).
    double global_sum(double v) {
        return values(flx_comm_all_reduce(comm, flx_scalar(ctx, FLX_F64, v), FLX_COMM_SUM))[0];
    }
};

TEST_F(MpiTest, AllReduceValues) {
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        flx_tensor *x = make(ctx, dt, {5}, rank_values(rank, 5));
        RankReduction want = reduce_rank_values(size, 5, dt);
        double tol = dt == FLX_F32 ? 1e-6 : 1e-14;
        EXPECT_TRUE(close(values(flx_comm_all_reduce(comm, x, FLX_COMM_SUM)), want.sum, tol, tol));
        EXPECT_TRUE(close(values(flx_comm_all_reduce(comm, x, FLX_COMM_AVG)), want.avg, tol, tol));
        EXPECT_TRUE(close(values(flx_comm_all_reduce(comm, x, FLX_COMM_MAX)), want.max, 0, 0));
        EXPECT_TRUE(close(values(flx_comm_all_reduce(comm, x, FLX_COMM_MIN)), want.min, 0, 0));
    }
    flx_tensor *xi = make(ctx, FLX_I64, {2}, {(double)rank, 10.0 * rank});
    double s = size * (size - 1) / 2.0;
    EXPECT_TRUE(close(values(flx_comm_all_reduce(comm, xi, FLX_COMM_SUM)), {s, 10 * s}, 0, 0));
}

TEST_F(MpiTest, BroadcastGatherScatterValues) {
    int root = size - 1;
    flx_tensor *x = make(ctx, FLX_F64, {2, 3}, rank_values(rank, 6));
    EXPECT_TRUE(close(values(flx_comm_broadcast(comm, x, root)), rank_values(root, 6)));
    std::vector<double> all;
    for (int r = 0; r < size; r++) {
        std::vector<double> v = rank_values(r, 6);
        all.insert(all.end(), v.begin(), v.end());
    }
    flx_tensor *g = flx_comm_all_gather(comm, x);
    EXPECT_EQ(shape_of(g), (Shape{2 * size, 3}));
    EXPECT_TRUE(close(values(g), all));
    // reduce-scatter of (size*2, 3): rank r keeps rows [2r, 2r+2) of the sum over ranks
    flx_tensor *big = make(ctx, FLX_F64, {2 * size, 3}, rank_values(rank, (size_t)(6 * size)));
    std::vector<double> want(6, 0.0);
    for (int r = 0; r < size; r++) {
        std::vector<double> v = rank_values(r, (size_t)(6 * size));
        for (int i = 0; i < 6; i++) want[i] += v[(size_t)(6 * rank + i)];
    }
    EXPECT_TRUE(close(values(flx_comm_reduce_scatter(comm, big, FLX_COMM_SUM)), want, 1e-14, 1e-14));
    for (double &w : want) w /= size;
    EXPECT_TRUE(close(values(flx_comm_reduce_scatter(comm, big, FLX_COMM_AVG)), want, 1e-14, 1e-14));
}

// <u, J v> = <J^T u, v> with both sides summed over the ranks: J v by forward mode, J^T u by
// reverse mode, for each linear collective. Each side is an independent code path (the JVP rule
// applies the collective, the VJP rule its adjoint).
TEST_F(MpiTest, DotProductTestAcrossRanks) {
    for (int kind = 0; kind < 5; kind++) {
        Shape xs = kind == 4 ? Shape{2 * size, 3} : Shape{2, 3};
        flx_tensor *x = make(ctx, FLX_F64, xs, rank_values(rank, (size_t)(xs[0] * 3)));
        flx_set_requires_grad(x, true);
        auto apply = [&](flx_tensor *t) -> flx_tensor * {
            switch (kind) {
            case 0: return flx_comm_all_reduce(comm, t, FLX_COMM_SUM);
            case 1: return flx_comm_all_reduce(comm, t, FLX_COMM_AVG);
            case 2: return flx_comm_broadcast(comm, t, 1);
            case 3: return flx_comm_all_gather(comm, t);
            default: return flx_comm_reduce_scatter(comm, t, FLX_COMM_AVG);
            }
        };
        flx_tensor *y = apply(x);
        ASSERT_NE(y, nullptr) << flx_last_error();
        flx_tensor *v = rand_tensor(ctx, FLX_F64, xs, 100 + (uint64_t)rank);
        flx_tensor *u = rand_tensor(ctx, FLX_F64, shape_of(y), 200 + (uint64_t)rank);
        flx_tensor *jv = nullptr, *jtu = nullptr;
        ASSERT_EQ(flx_jvp(1, &x, &v, 1, &y, &jv), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_grad_of(1, &y, &u, 1, &x, false, &jtu), FLX_OK) << flx_last_error();
        std::vector<double> a = values(jv), b = values(u), c = values(jtu), d = values(v);
        double lhs = 0, rhs = 0;
        for (size_t i = 0; i < a.size(); i++) lhs += a[i] * b[i];
        for (size_t i = 0; i < c.size(); i++) rhs += c[i] * d[i];
        double L = global_sum(lhs), R = global_sum(rhs);
        EXPECT_NEAR(L, R, 1e-12 * (1 + std::fabs(L))) << "collective kind " << kind;
        EXPECT_GT(std::fabs(L), 1e-3) << "a vacuous test: kind " << kind;
    }
}

// loss_r = sum(sin(all_reduce_sum(x))) on every rank; the total loss sum_r loss_r has gradient
// size * cos(y) with respect to each rank's x (each rank's loss sees every x).
TEST_F(MpiTest, GradientThroughAllReduce) {
    flx_tensor *x = make(ctx, FLX_F64, {4}, rank_values(rank, 4));
    flx_set_requires_grad(x, true);
    flx_tensor *y = flx_comm_all_reduce(comm, x, FLX_COMM_SUM);
    ASSERT_EQ(flx_backward(flx_sum_all(flx_sin(y))), FLX_OK) << flx_last_error();
    std::vector<double> yv = values(y), want(4);
    for (int i = 0; i < 4; i++) want[i] = size * std::cos(yv[i]);
    EXPECT_TRUE(close(values(flx_grad(x)), want, 1e-14, 1e-14));
}

// Rank 1 skips a collective: rank 0 gets FLX_ERR_TIMEOUT after its timeout (naming the
// collective, its sequence number and the rank), later collectives on that communicator fail at
// once, and a new communicator created on every rank works: nobody hangs or aborts.
TEST_F(MpiTest, MissedCollectiveTimesOutOnTheWaitingRank) {
    ASSERT_EQ(flx_comm_set_timeout(comm, 1.0), FLX_OK);
    flx_tensor *x = make(ctx, FLX_F64, {3}, rank_values(rank, 3));
    // collective #1 is joined by everyone
    EXPECT_EQ(values(flx_comm_all_reduce(comm, x, FLX_COMM_MAX)).size(), 3u);
    if (rank == 0) {
        flx_tensor *y = flx_comm_all_reduce(comm, x, FLX_COMM_SUM);  // #2: rank 1 never comes
        auto t0 = std::chrono::steady_clock::now();
        EXPECT_EQ(flx_eval(1, &y), FLX_ERR_TIMEOUT);
        double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::string msg = flx_last_error();
        EXPECT_NE(msg.find("flx_comm_all_reduce"), std::string::npos) << msg;
        EXPECT_NE(msg.find("#2"), std::string::npos) << msg;
        EXPECT_NE(msg.find("rank 0 of"), std::string::npos) << msg;
        EXPECT_GE(waited, 0.9);
        EXPECT_LT(waited, 30.0);
        flx_clear_error();
        flx_tensor *z = flx_comm_broadcast(comm, x, 0);
        EXPECT_EQ(flx_eval(1, &z), FLX_ERR_STATE);
        EXPECT_NE(std::string(flx_last_error()).find("failed earlier"), std::string::npos) << flx_last_error();
        flx_clear_error();
    }
    flx_comm_destroy(comm);
    comm = flx_comm_create(ctx);  // every rank, rank 1 waiting here for rank 0
    ASSERT_NE(comm, nullptr) << flx_last_error();
    double s = 0;
    for (int r = 0; r < size; r++) s += r;
    EXPECT_TRUE(close(values(flx_comm_all_reduce(comm, flx_scalar(ctx, FLX_F64, rank), FLX_COMM_SUM)), {s}, 0, 0));
}

// flx_comm_backward over two ranks: the gradients of flx_backward + flx_comm_average_grads, and
// every bucket but the last started before the rest of backward. A layer's weight and bias
// gradients come from one kernel (the bias gradient joins the weight-gradient GEMM), so of the
// four buckets only layer 1's first starts after backward work done since the previous start.
TEST_F(MpiTest, OverlappedBackwardEqualsBackwardThenAverage) {
    std::vector<flx_tensor *> a, b;
    for (int k = 0; k < 2; k++) {
        std::vector<flx_tensor *> &p = k ? b : a;
        p = {rand_tensor(ctx, FLX_F64, {5, 8}, 1), rand_tensor(ctx, FLX_F64, {8}, 2),
             rand_tensor(ctx, FLX_F64, {8, 3}, 3), rand_tensor(ctx, FLX_F64, {3}, 4)};
        for (flx_tensor *t : p) flx_set_requires_grad(t, true);
    }
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {6, 5}, 10 + (uint64_t)rank);
    auto loss = [&](const std::vector<flx_tensor *> &p) {
        flx_tensor *h = flx_tanh(flx_add(flx_matmul(x, p[0]), p[1]));
        return flx_mean_all(flx_square(flx_add(flx_matmul(h, p[2]), p[3])));
    };
    ASSERT_EQ(flx_backward(loss(a)), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_comm_average_grads(comm, 4, a.data(), 1), FLX_OK) << flx_last_error();
    flx_comm_stats before{}, after{};
    ASSERT_EQ(flx_comm_get_stats(comm, &before), FLX_OK);
    ASSERT_EQ(flx_comm_backward(comm, loss(b), 4, b.data(), 1), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_comm_get_stats(comm, &after), FLX_OK);
    EXPECT_EQ(after.overlapped - before.overlapped, 4u);
    EXPECT_EQ(after.started_early - before.started_early, 1u);
    for (int i = 0; i < 4; i++) {
        std::vector<double> ga = values(flx_grad(a[(size_t)i]));
        EXPECT_TRUE(close(values(flx_grad(b[(size_t)i])), ga, 1e-15, 1e-15)) << "parameter " << i;
        // the two ranks' data differ, so a local gradient would differ from the mean
        EXPECT_TRUE(close(values(flx_comm_broadcast(comm, flx_grad(b[(size_t)i]), 0)), ga, 0, 0)) << i;
    }
}

// A 5-8-3 tanh MLP trained with Adam: each rank takes its share of every global batch and
// averages gradients over the ranks; each rank also trains a reference copy on the whole batch in
// one process. Both start from rank 0's initial parameters (the data-parallel copy gets them by
// flx_comm_broadcast_params from its own rank's random start).
enum class Dp { Plain, Sharded, Overlapped };
void data_parallel_case(flx_ctx *ctx, flx_comm *comm, int rank, int size, Dp mode);

TEST_F(MpiTest, DataParallelMatchesTheCombinedBatch) { data_parallel_case(ctx, comm, rank, size, Dp::Plain); }

// ZeRO-1: the same training with the optimiser state sharded over the ranks.
TEST_F(MpiTest, ShardedOptimiserMatchesTheCombinedBatch) { data_parallel_case(ctx, comm, rank, size, Dp::Sharded); }

// The gradient all-reduce overlapped with backward (flx_comm_backward, one bucket per gradient).
TEST_F(MpiTest, OverlappedBackwardMatchesTheCombinedBatch) {
    data_parallel_case(ctx, comm, rank, size, Dp::Overlapped);
}

void data_parallel_case(flx_ctx *ctx, flx_comm *comm, int rank, int size, Dp mode) {
    const bool sharded = mode == Dp::Sharded;
    const int64_t local = 3, global = local * size, steps = 5;
    auto init = [&](uint64_t seed, std::vector<flx_tensor *> &p) {
        p = {rand_tensor(ctx, FLX_F64, {5, 8}, seed + 1, -0.5, 0.5), rand_tensor(ctx, FLX_F64, {8}, seed + 2),
             rand_tensor(ctx, FLX_F64, {8, 3}, seed + 3, -0.5, 0.5), rand_tensor(ctx, FLX_F64, {3}, seed + 4)};
        for (flx_tensor *t : p) flx_set_requires_grad(t, true);
    };
    auto loss_of = [&](const std::vector<flx_tensor *> &p, flx_tensor *x, flx_tensor *t) {
        flx_tensor *h = flx_tanh(flx_add(flx_matmul(x, p[0]), p[1]));
        flx_tensor *o = flx_add(flx_matmul(h, p[2]), p[3]);
        return flx_div(flx_sum_all(flx_square(flx_sub(o, t))), flx_scalar(ctx, FLX_F64, (double)flx_dim(x, 0)));
    };
    std::vector<flx_tensor *> dp, ref;
    init(1000 + 10 * (uint64_t)rank, dp);
    init(1000, ref);
    ASSERT_EQ(flx_comm_broadcast_params(comm, 4, dp.data(), 0), FLX_OK) << flx_last_error();
    std::vector<std::vector<double>> start;
    for (int i = 0; i < 4; i++) {
        start.push_back(values(ref[i]));
        EXPECT_TRUE(close(values(dp[i]), start[i], 0, 0)) << "broadcast " << i;
    }
    flx_optim *o_dp = sharded ? nullptr : flx_optim_create(ctx, FLX_OPTIM_ADAM, 4, dp.data(), nullptr);
    flx_sharded_optim *z_dp = sharded ? flx_sharded_optim_create(comm, FLX_OPTIM_ADAM, 4, dp.data(), nullptr) : nullptr;
    flx_optim *o_ref = flx_optim_create(ctx, FLX_OPTIM_ADAM, 4, ref.data(), nullptr);
    ASSERT_TRUE((o_dp || z_dp) && o_ref) << flx_last_error();
    for (int64_t s = 0; s < steps; s++) {
        flx_scope_begin();
        flx_tensor *xg = rand_tensor(ctx, FLX_F64, {global, 5}, 50 + (uint64_t)s);
        flx_tensor *tg = rand_tensor(ctx, FLX_F64, {global, 3}, 80 + (uint64_t)s);
        flx_tensor *xl = flx_slice(xg, 0, rank * local, (rank + 1) * local, 1);
        flx_tensor *tl = flx_slice(tg, 0, rank * local, (rank + 1) * local, 1);
        ASSERT_EQ(sharded ? flx_sharded_optim_zero_grad(z_dp) : flx_optim_zero_grad(o_dp), FLX_OK);
        ASSERT_EQ(flx_optim_zero_grad(o_ref), FLX_OK);
        if (mode == Dp::Overlapped) {
            ASSERT_EQ(flx_comm_backward(comm, loss_of(dp, xl, tl), 4, dp.data(), 1), FLX_OK) << flx_last_error();
            ASSERT_EQ(flx_optim_step(o_dp), FLX_OK) << flx_last_error();
        } else if (sharded) {
            ASSERT_EQ(flx_backward(loss_of(dp, xl, tl)), FLX_OK) << flx_last_error();
            ASSERT_EQ(flx_sharded_optim_step(z_dp), FLX_OK) << flx_last_error();
        } else {
            ASSERT_EQ(flx_backward(loss_of(dp, xl, tl)), FLX_OK) << flx_last_error();
            ASSERT_EQ(flx_comm_average_grads(comm, 4, dp.data(), 64), FLX_OK) << flx_last_error();
            ASSERT_EQ(flx_optim_step(o_dp), FLX_OK) << flx_last_error();
        }
        ASSERT_EQ(flx_backward(loss_of(ref, xg, tg)), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_optim_step(o_ref), FLX_OK) << flx_last_error();
        flx_scope_end(0, nullptr);
    }
    for (int i = 0; i < 4; i++) {
        std::vector<double> a = values(dp[i]), b = values(ref[i]);
        EXPECT_TRUE(close(a, b, 1e-12, 1e-10)) << "parameter " << i;
        EXPECT_FALSE(close(b, start[(size_t)i], 1e-6, 0)) << "parameter " << i << " did not move";
    }
    flx_optim_destroy(o_dp);
    flx_sharded_optim_destroy(z_dp);
    flx_optim_destroy(o_ref);
}

}  // namespace
