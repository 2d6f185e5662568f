// test_cnn_step.cc — the Fashion-MNIST CNN training step of the benchmarks (2 x [conv 3x3 pad 1 +
// batch norm + ReLU + max-pool 2], dense 3136-128 + ReLU, dense 128-10, cross-entropy, Adam) as
// one compiled plan. CPU: fused and unfused plans give the same bits, the kernels per step stay
// within the count the fused batch norm reaches, and the whole step's gradient (small channels,
// float64) matches finite differences. CUDA (skipped without a GPU): the plan against the CPU's.
#include <cmath>
#include <cstring>
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

using CnnStep = CpuTest;

flx_ctx_stats stats(flx_ctx *c) {
    flx_ctx_stats s{};
    EXPECT_EQ(flx_ctx_get_stats(c, &s), FLX_OK);
    return s;
}

// The exact values of t (bytewise, NaNs and signed zeros included).
std::vector<unsigned char> raw(flx_tensor *t) {
    std::vector<double> v = values(t);
    std::vector<unsigned char> b(v.size() * sizeof(double));
    if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
    return b;
}

// A realised leaf of host data (a plan reads it in place).
flx_tensor *leaf(flx_ctx *c, flx_dtype dt, const Shape &s, uint64_t seed, double lo, double hi) {
    return make(c, dt, s, rand_values((size_t)numel_of(s), seed, lo, hi));
}

struct Cnn {
    int64_t c1, c2, hidden;
    std::vector<flx_tensor *> p;      // w1 b1 g1 be1 w2 b2 g2 be2 W3 b3 W4 b4
    std::vector<flx_tensor *> state;  // running mean / var per batch norm
};

Cnn make_cnn(flx_ctx *c, flx_dtype dt, int64_t c1, int64_t c2, int64_t hidden) {
    Cnn m{c1, c2, hidden, {}, {}};
    const int64_t cin[2] = {1, c1}, cout[2] = {c1, c2};
    for (int l = 0; l < 2; l++) {
        double r = 1.0 / std::sqrt(9.0 * (double)cin[l]);
        m.p.push_back(leaf(c, dt, {cout[l], cin[l], 3, 3}, 10 + l, -r, r));
        m.p.push_back(leaf(c, dt, {cout[l]}, 20 + l, -r, r));
        m.p.push_back(leaf(c, dt, {cout[l]}, 30 + l, 0.8, 1.2));
        m.p.push_back(leaf(c, dt, {cout[l]}, 40 + l, -0.1, 0.1));
        m.state.push_back(leaf(c, dt, {cout[l]}, 50 + l, -0.1, 0.1));
        m.state.push_back(leaf(c, dt, {cout[l]}, 60 + l, 0.9, 1.1));
    }
    double r3 = 1.0 / std::sqrt((double)(c2 * 49)), r4 = 1.0 / std::sqrt((double)hidden);
    m.p.push_back(leaf(c, dt, {hidden, c2 * 49}, 70, -r3, r3));
    m.p.push_back(leaf(c, dt, {hidden}, 71, -r3, r3));
    m.p.push_back(leaf(c, dt, {10, hidden}, 72, -r4, r4));
    m.p.push_back(leaf(c, dt, {10}, 73, -r4, r4));
    for (flx_tensor *t : m.p) flx_set_requires_grad(t, true);
    return m;
}

// Mean cross-entropy of the model on x (N, 784); new running statistics in ns (4).
flx_tensor *cnn_loss(const Cnn &m, const std::vector<flx_tensor *> &p, flx_tensor *x, flx_tensor *labels,
                     flx_tensor **ns) {
    const int64_t img[4] = {-1, 1, 28, 28}, k2[2] = {2, 2}, pad1[2] = {1, 1}, flat[2] = {-1, m.c2 * 49};
    flx_tensor *h = flx_reshape(x, 4, img);
    for (int l = 0; l < 2; l++) {
        flx_tensor *c = flx_conv2d(h, p[4 * l], p[4 * l + 1], nullptr, pad1, nullptr);
        flx_tensor *b = flx_batch_norm(c, p[4 * l + 2], p[4 * l + 3], m.state[2 * l], m.state[2 * l + 1], true,
                                       0.1, 1e-5, ns ? &ns[2 * l] : nullptr, ns ? &ns[2 * l + 1] : nullptr);
        h = flx_max_pool2d(flx_relu(b), k2, nullptr, nullptr, nullptr);
    }
    h = flx_relu(flx_linear(flx_reshape(h, 2, flat), p[8], p[9]));
    return flx_cross_entropy(flx_linear(h, p[10], p[11]), labels, FLX_REDUCTION_MEAN, -100);
}

flx_tensor *labels_of(flx_ctx *c, int64_t n) {
    std::vector<double> lv((size_t)n);
    for (int64_t i = 0; i < n; i++) lv[(size_t)i] = (double)((i * 7 + 3) % 10);
    return make(c, FLX_I64, {n}, lv);
}

// Two runs of the step as a plan (Adam inside, running statistics assigned); the loss and every
// parameter and statistic after them, and the kernels of one run.
std::vector<std::vector<unsigned char>> run_step_plan(flx_ctx *c, uint64_t *kernels) {
    std::vector<std::vector<unsigned char>> out;
    EXPECT_EQ(flx_scope_begin(), FLX_OK);
    Cnn m = make_cnn(c, FLX_F32, 32, 64, 128);
    flx_tensor *x = leaf(c, FLX_F32, {4, 784}, 80, -1, 1), *labels = labels_of(c, 4);
    flx_tensor *ns[4] = {nullptr, nullptr, nullptr, nullptr};
    flx_tensor *loss = cnn_loss(m, m.p, x, labels, ns);
    EXPECT_NE(loss, nullptr) << flx_last_error();
    flx_optim_config cfg = flx_optim_defaults(FLX_OPTIM_ADAM);
    flx_optim *opt = flx_optim_create(c, FLX_OPTIM_ADAM, (int32_t)m.p.size(), m.p.data(), &cfg);
    EXPECT_NE(opt, nullptr) << flx_last_error();
    EXPECT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    flx_plan_options o = flx_plan_default_options();
    o.n_optim = 1;
    o.optims = &opt;
    o.n_assign = 4;
    o.assign_dst = m.state.data();
    o.assign_src = ns;
    flx_tensor *ins[2] = {x, labels};
    flx_plan *plan = flx_plan_compile(1, &loss, 2, ins, &o);
    EXPECT_NE(plan, nullptr) << flx_last_error();
    if (plan) {
        EXPECT_EQ(flx_ctx_reset_stats(c), FLX_OK);
        EXPECT_EQ(flx_plan_run(plan, 2, ins), FLX_OK) << flx_last_error();
        *kernels = stats(c).kernels;
        EXPECT_EQ(flx_plan_run(plan, 2, ins), FLX_OK) << flx_last_error();
        out.push_back(raw(flx_plan_output(plan, 0)));
        for (flx_tensor *t : m.p) out.push_back(raw(t));
        for (flx_tensor *t : m.state) out.push_back(raw(t));
    }
    flx_plan_destroy(plan);
    flx_optim_destroy(opt);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    return out;
}

TEST_F(CnnStep, PlanMatchesUnfusedBitForBitWithinTheKernelCount) {
    uint64_t kernels[2] = {0, 0};
    std::vector<std::vector<unsigned char>> bits[2];
    for (int pass = 0; pass < 2; pass++) {
        ASSERT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
        bits[pass] = run_step_plan(ctx, &kernels[pass]);
    }
    ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
    ASSERT_EQ(bits[0].size(), bits[1].size());
    ASSERT_FALSE(bits[0].empty());
    for (size_t i = 0; i < bits[0].size(); i++) EXPECT_EQ(bits[0][i], bits[1][i]) << "output " << i;
    // Per batch norm: mean, var, rstd, one kernel for the normalised value and the ReLU; backward
    // two reductions, their product and one kernel for dx. Per max-pool backward one kernel (the
    // argmax found again from the input). Kernel-family calls per run (the plan's input copies and
    // statistics write-backs are copies, not counted): 76 with the formula's op-by-op rules and an
    // argmax pass per pool, 52 now; 98 with fusion off.
    EXPECT_LE(kernels[0], 52u);
    EXPECT_LE(kernels[0] + 40, kernels[1]) << kernels[0] << " " << kernels[1];
}

// The whole step's gradient at small sizes in float64 against central differences (every
// parameter: the convolutions, both batch norms, the dense layers).
TEST_F(CnnStep, StepGradientMatchesFiniteDifferences) {
    Cnn m = make_cnn(ctx, FLX_F64, 2, 3, 5);
    flx_tensor *x = leaf(ctx, FLX_F64, {3, 784}, 90, -1, 1), *labels = labels_of(ctx, 3);
    auto fn = [&m, x, labels](const std::vector<flx_tensor *> &in) {
        return cnn_loss(m, in, x, labels, nullptr);
    };
    EXPECT_EQ(gradcheck(fn, m.p, 1e-6, 1e-7, 1e-5), FLX_OK) << flx_last_error();
}

// ---- GPU against CPU ------------------------------------------------------------------------------
using CnnStepCuda = CudaCpuTest;

TEST_F(CnnStepCuda, PlanMatchesCpu) {
    uint64_t k[2] = {0, 0};
    std::vector<std::vector<unsigned char>> bits[2] = {run_step_plan(cpu, &k[0]), run_step_plan(gpu, &k[1])};
    ASSERT_EQ(bits[0].size(), bits[1].size());
    ASSERT_FALSE(bits[0].empty());
    for (size_t i = 0; i < bits[0].size(); i++) {
        std::vector<double> a(bits[0][i].size() / sizeof(double)), b(a.size());
        std::memcpy(a.data(), bits[0][i].data(), bits[0][i].size());
        std::memcpy(b.data(), bits[1][i].data(), bits[1][i].size());
        EXPECT_TRUE(close(b, a, 1e-4, 1e-3)) << "output " << i;
    }
}

}  // namespace
