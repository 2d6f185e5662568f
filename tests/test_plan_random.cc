// test_plan_random.cc — random numbers in compiled plans: every replay draws new values (a
// dropout mask that repeated each step would be no dropout), run 0 draws what eager evaluation
// of the same graph draws, and within one run forward and backward read the same mask. The GPU
// replays must draw exactly the CPU's numbers (one Philox stream per run on both backends).
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

constexpr int64_t kN = 256;

// y = dropout(x, 0.5) of x = ones, and g = d sum(y * c) / dx = mask * 2 * c (the backward's use
// of the same mask), as plan outputs; plus a normal draw.
struct RandomGraph {
    flx_tensor *y, *g, *z;
    std::vector<double> c;
};

RandomGraph build(flx_ctx *ctx) {
    RandomGraph r;
    flx_tensor *x = make(ctx, FLX_F64, {kN}, std::vector<double>(kN, 1.0));
    flx_set_requires_grad(x, true);
    r.c = rand_values(kN, 5, 0.5, 1.5);
    r.y = flx_dropout(x, 0.5, 7, true);
    flx_tensor *loss = flx_sum_all(flx_mul(r.y, make(ctx, FLX_F64, {kN}, r.c)));
    EXPECT_EQ(flx_grad_of(1, &loss, nullptr, 1, &x, false, &r.g), FLX_OK) << flx_last_error();
    r.z = flx_randn(ctx, FLX_F64, 1, &kN, 11);
    return r;
}

// The values of outputs 0..2 after each of `runs` replays.
std::vector<std::vector<std::vector<double>>> replay(flx_ctx *ctx, int runs) {
    RandomGraph r = build(ctx);
    flx_tensor *outs[] = {r.y, r.g, r.z};
    flx_plan *p = flx_plan_compile(3, outs, 0, nullptr, nullptr);
    EXPECT_NE(p, nullptr) << flx_last_error();
    std::vector<std::vector<std::vector<double>>> got;
    for (int k = 0; p && k < runs; k++) {
        EXPECT_EQ(flx_plan_run(p, 0, nullptr), FLX_OK) << flx_last_error();
        got.push_back({values(flx_plan_output(p, 0)), values(flx_plan_output(p, 1)), values(flx_plan_output(p, 2))});
    }
    flx_plan_destroy(p);
    return got;
}

size_t differing(const std::vector<double> &a, const std::vector<double> &b) {
    size_t n = 0;
    for (size_t i = 0; i < a.size(); i++) n += a[i] != b[i];
    return n;
}

class PlanRandomTest : public CpuTest {};

TEST_F(PlanRandomTest, EveryRunDrawsANewDropoutMask) {
    RandomGraph eager = build(ctx);
    std::vector<double> y0 = values(eager.y), z0 = values(eager.z);
    auto runs = replay(ctx, 4);
    ASSERT_EQ(runs.size(), 4u);
    EXPECT_TRUE(close(runs[0][0], y0, 0, 0)) << "run 0 must draw what eager evaluation draws";
    EXPECT_TRUE(close(runs[0][2], z0, 0, 0));
    RandomGraph again = build(ctx);
    for (size_t k = 0; k < runs.size(); k++) {
        const std::vector<double> &y = runs[k][0], &g = runs[k][1];
        size_t kept = 0;
        for (size_t i = 0; i < y.size(); i++) {
            ASSERT_TRUE(y[i] == 0.0 || y[i] == 2.0) << "run " << k << " entry " << i << ": " << y[i];
            kept += y[i] != 0.0;
            // backward reads this run's mask: d/dx of sum(mask * 2x * c) is mask * 2 * c
            EXPECT_EQ(g[i], y[i] * eager.c[i]) << "run " << k << " entry " << i;
        }
        EXPECT_GT(kept, (size_t)(0.35 * kN)) << "run " << k;
        EXPECT_LT(kept, (size_t)(0.65 * kN)) << "run " << k;
        if (k > 0) {
            // two independent masks of p = 0.5 differ in about half their entries
            EXPECT_GT(differing(y, runs[k - 1][0]), (size_t)(kN / 4)) << "run " << k << " repeated the mask";
            EXPECT_GT(differing(runs[k][2], runs[k - 1][2]), (size_t)(kN - 2)) << "run " << k;
        }
    }
    // eager evaluation is unchanged by plans: the same seed draws the same numbers
    EXPECT_TRUE(close(values(again.y), y0, 0, 0));
}

using PlanRandomCuda = CudaCpuTest;

TEST_F(PlanRandomCuda, ReplaysDrawTheCpuNumbers) {
    flx_ctx *cuda = gpu;
    flx_scope_begin();
    auto want = replay(cpu, 3);
    auto got = replay(cuda, 3);  // captured: the counter advances inside the graph
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < got.size(); k++)
        for (size_t o = 0; o < 3; o++)
            EXPECT_TRUE(close(got[k][o], want[k][o], 1e-12, 1e-12)) << "run " << k << " output " << o;
    flx_scope_end(0, nullptr);
}

}  // namespace
