// test_optim.cc — the fused optimisers: first steps on a 1-d quadratic against values
// worked out by hand from each formula; several steps on a random multi-tensor model against a
// plain reference implementation written here; chunking past one launch; device-side
// hyperparameters; state export/import; buffer immutability; bad input; GPU against CPU.
#include <cmath>
#include <cstring>
#include <vector>

#include "optim_reference.h"
#include "testing.h"

using namespace flxt;

namespace {

using OptimTest = CpuTest;

// One step on f(p) = p^2 (gradient 2p) from the current value; returns the new value.
double quad_step(flx_ctx *ctx, flx_optim *opt, flx_tensor *p) {
    (void)ctx;
    EXPECT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *loss = flx_sum_all(flx_square(p));
    EXPECT_NE(loss, nullptr) << flx_last_error();
    EXPECT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_optim_step(opt), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_optim_zero_grad(opt), FLX_OK);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    return values(p)[0];
}

struct QuadCase {
    flx_optim_kind kind;
    flx_optim_config cfg;
    std::vector<double> expected;  // p after steps 1, 2, 3 from p0 = 1
};

// Worked by hand from the formulas in fluxion.h, g = 2p, p0 = 1.
std::vector<QuadCase> quad_cases() {
    std::vector<QuadCase> cs;
    flx_optim_config c;
    // SGD lr 0.1: p <- p - 0.1 * 2p = 0.8 p.
    c = flx_optim_defaults(FLX_OPTIM_SGD);
    c.lr = 0.1;
    cs.push_back({FLX_OPTIM_SGD, c, {0.8, 0.64, 0.512}});
    // SGD + weight decay 0.5: g = 2p + 0.5p = 2.5p, p <- 0.75 p.
    c.weight_decay = 0.5;
    cs.push_back({FLX_OPTIM_SGD, c, {0.75, 0.5625, 0.421875}});
    // Momentum 0.9, lr 0.1: b1 = 2, p1 = 0.8; g2 = 1.6, b2 = 1.8 + 1.6 = 3.4, p2 = 0.8 - 0.34 =
    // 0.46; g3 = 0.92, b3 = 3.06 + 0.92 = 3.98, p3 = 0.46 - 0.398 = 0.062.
    c = flx_optim_defaults(FLX_OPTIM_MOMENTUM);
    c.lr = 0.1;
    cs.push_back({FLX_OPTIM_MOMENTUM, c, {0.8, 0.46, 0.062}});
    // Momentum 0.9, dampening 0.5: b1 = 2 (first step undamped), p1 = 0.8; g2 = 1.6,
    // b2 = 1.8 + 0.8 = 2.6, p2 = 0.54; g3 = 1.08, b3 = 2.34 + 0.54 = 2.88, p3 = 0.252.
    c.dampening = 0.5;
    cs.push_back({FLX_OPTIM_MOMENTUM, c, {0.8, 0.54, 0.252}});
    // Nesterov 0.9, lr 0.1: b1 = 2, d = 2 + 1.8 = 3.8, p1 = 0.62; g2 = 1.24, b2 = 1.8 + 1.24 =
    // 3.04, d = 1.24 + 2.736 = 3.976, p2 = 0.2224; g3 = 0.4448, b3 = 2.736 + 0.4448 = 3.1808,
    // d = 0.4448 + 2.86272 = 3.30752, p3 = 0.2224 - 0.330752 = -0.108352.
    c = flx_optim_defaults(FLX_OPTIM_NESTEROV);
    c.lr = 0.1;
    cs.push_back({FLX_OPTIM_NESTEROV, c, {0.62, 0.2224, -0.108352}});
    // Adagrad lr 0.1, eps 0: s1 = 4, p1 = 1 - 0.1 * 2 / 2 = 0.9; g2 = 1.8, s2 = 4 + 3.24 = 7.24,
    // p2 = 0.9 - 0.18 / sqrt(7.24); p3 likewise.
    c = flx_optim_defaults(FLX_OPTIM_ADAGRAD);
    c.lr = 0.1;
    c.eps = 0;
    {
        double p1 = 0.9, s2 = 4 + 1.8 * 1.8, p2 = p1 - 0.1 * 1.8 / std::sqrt(s2);
        double g3 = 2 * p2, s3 = s2 + g3 * g3, p3 = p2 - 0.1 * g3 / std::sqrt(s3);
        cs.push_back({FLX_OPTIM_ADAGRAD, c, {p1, p2, p3}});
        // lr_decay 1: clr_t = 0.1 / t.
        flx_optim_config d = c;
        d.lr_decay = 1;
        double q2 = p1 - 0.05 * 1.8 / std::sqrt(s2);
        double h3 = 2 * q2, r3 = s2 + h3 * h3, q3 = q2 - (0.1 / 3) * h3 / std::sqrt(r3);
        cs.push_back({FLX_OPTIM_ADAGRAD, d, {p1, q2, q3}});
    }
    // RMSprop lr 0.01, alpha 0.99, eps 0: v1 = 0.01 * 4 = 0.04, p1 = 1 - 0.01 * 2 / 0.2 = 0.9.
    c = flx_optim_defaults(FLX_OPTIM_RMSPROP);
    c.eps = 0;
    {
        double p1 = 0.9, g2 = 1.8, v2 = 0.99 * 0.04 + 0.01 * g2 * g2;
        double p2 = p1 - 0.01 * g2 / std::sqrt(v2);
        double g3 = 2 * p2, v3 = 0.99 * v2 + 0.01 * g3 * g3, p3 = p2 - 0.01 * g3 / std::sqrt(v3);
        cs.push_back({FLX_OPTIM_RMSPROP, c, {p1, p2, p3}});
        // centered: a1 = 0.02, d1 = sqrt(0.04 - 0.0004) = sqrt(0.0396)
        flx_optim_config d = c;
        d.centered = true;
        double q1 = 1 - 0.01 * 2 / std::sqrt(0.0396);
        double h2 = 2 * q1, w2 = 0.99 * 0.04 + 0.01 * h2 * h2, a2 = 0.99 * 0.02 + 0.01 * h2;
        double q2 = q1 - 0.01 * h2 / std::sqrt(w2 - a2 * a2);
        double h3 = 2 * q2, w3 = 0.99 * w2 + 0.01 * h3 * h3, a3 = 0.99 * a2 + 0.01 * h3;
        double q3 = q2 - 0.01 * h3 / std::sqrt(w3 - a3 * a3);
        cs.push_back({FLX_OPTIM_RMSPROP, d, {q1, q2, q3}});
        // momentum 0.5: b1 = 2 / 0.2 = 10, p1 = 1 - 0.1 = 0.9 ...
        flx_optim_config e = c;
        e.momentum = 0.5;
        double r1 = 0.9, b1 = 10, k2 = 2 * r1, u2 = 0.99 * 0.04 + 0.01 * k2 * k2;
        double b2 = 0.5 * b1 + k2 / std::sqrt(u2), r2 = r1 - 0.01 * b2;
        double k3 = 2 * r2, u3 = 0.99 * u2 + 0.01 * k3 * k3;
        double b3 = 0.5 * b2 + k3 / std::sqrt(u3), r3 = r2 - 0.01 * b3;
        cs.push_back({FLX_OPTIM_RMSPROP, e, {r1, r2, r3}});
    }
    // Adam lr 0.1, eps 0: the first step is lr * sign(g): p1 = 0.9. Then with m, v:
    c = flx_optim_defaults(FLX_OPTIM_ADAM);
    c.lr = 0.1;
    c.eps = 0;
    {
        double m = 0.1 * 2, v = 0.001 * 4, p = 0.9;
        std::vector<double> e = {0.9};
        for (int t = 2; t <= 3; t++) {
            double g = 2 * p;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            double mh = m / (1 - std::pow(0.9, t)), vh = v / (1 - std::pow(0.999, t));
            p -= 0.1 * mh / std::sqrt(vh);
            e.push_back(p);
        }
        cs.push_back({FLX_OPTIM_ADAM, c, e});
        // Adam with L2 weight decay 1: g = 3p; the first step is still lr * sign: 0.9.
        flx_optim_config d = c;
        d.weight_decay = 1;
        m = 0.1 * 3, v = 0.001 * 9, p = 0.9;
        e = {0.9};
        for (int t = 2; t <= 3; t++) {
            double g = 3 * p;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            p -= 0.1 * (m / (1 - std::pow(0.9, t))) / std::sqrt(v / (1 - std::pow(0.999, t)));
            e.push_back(p);
        }
        cs.push_back({FLX_OPTIM_ADAM, d, e});
    }
    // AdamW lr 0.1, weight decay 0.5, eps 0: p <- p (1 - 0.05) then the Adam step with g = 2 p_old:
    // p1 = 0.95 - 0.1 = 0.85.
    c = flx_optim_defaults(FLX_OPTIM_ADAMW);
    c.lr = 0.1;
    c.eps = 0;
    c.weight_decay = 0.5;
    {
        double m = 0.2, v = 0.004, p = 0.85;
        std::vector<double> e = {0.85};
        for (int t = 2; t <= 3; t++) {
            double g = 2 * p;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            p = p * 0.95 - 0.1 * (m / (1 - std::pow(0.9, t))) / std::sqrt(v / (1 - std::pow(0.999, t)));
            e.push_back(p);
        }
        cs.push_back({FLX_OPTIM_ADAMW, c, e});
    }
    return cs;
}

TEST_F(OptimTest, QuadraticFirstStepsMatchHandComputation) {
    int idx = 0;
    for (const QuadCase &qc : quad_cases()) {
        SCOPED_TRACE("case " + std::to_string(idx++));
        flx_tensor *p = make(ctx, FLX_F64, {1}, {1.0});
        ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
        flx_optim *opt = flx_optim_create(ctx, qc.kind, 1, &p, &qc.cfg);
        ASSERT_NE(opt, nullptr) << flx_last_error();
        for (size_t s = 0; s < qc.expected.size(); s++) {
            double got = quad_step(ctx, opt, p);
            EXPECT_NEAR(got, qc.expected[s], 1e-12) << "step " << s + 1;
        }
        double step = -1;
        EXPECT_EQ(flx_optim_get_hparam(opt, FLX_HP_STEP, &step), FLX_OK);
        EXPECT_EQ(step, 3.0);
        flx_optim_destroy(opt);
    }
}

// Model: params w_j with loss sum_j sum(c_j * w_j + 0.5 * d_j * w_j^2): gradient c_j + d_j w_j.
struct Model {
    std::vector<Shape> shapes;
    std::vector<std::vector<double>> w, c, d;
};

Model make_model(int n_tensors, uint64_t seed) {
    Model m;
    for (int j = 0; j < n_tensors; j++) {
        Shape s;
        switch (j % 4) {
        case 0: s = {5, 7}; break;
        case 1: s = {7}; break;
        case 2: s = {3, 4, 2}; break;
        default: s = {4097}; break;  // more than one CUDA chunk
        }
        size_t n = 1;
        for (auto k : s) n *= (size_t)k;
        m.shapes.push_back(s);
        m.w.push_back(rand_values(n, seed + 3 * j));
        m.c.push_back(rand_values(n, seed + 3 * j + 1));
        m.d.push_back(rand_values(n, seed + 3 * j + 2, 0.5, 2.0));
    }
    return m;
}

// The model's tensors on ctx: parameters p_j (requiring grad) and the coefficients of the loss
// sum_j sum(c_j p_j + d_j p_j^2 / 2).
struct Quadratic {
    std::vector<flx_tensor *> ps, cs, ds;
    Quadratic(flx_ctx *ctx, flx_dtype dt, const Model &m) {
        for (size_t j = 0; j < m.w.size(); j++) {
            ps.push_back(make(ctx, dt, m.shapes[j], m.w[j]));
            cs.push_back(make(ctx, dt, m.shapes[j], m.c[j]));
            ds.push_back(make(ctx, dt, m.shapes[j], m.d[j]));
            EXPECT_EQ(flx_set_requires_grad(ps.back(), true), FLX_OK);
        }
    }
    flx_tensor *loss() const {
        flx_tensor *loss = nullptr;
        for (size_t j = 0; j < ps.size(); j++) {
            flx_tensor *term = flx_sum_all(flx_add(
                flx_mul(cs[j], ps[j]), flx_mul_scalar(flx_mul(ds[j], flx_square(ps[j])), 0.5)));
            loss = loss ? flx_add(loss, term) : term;
        }
        return loss;
    }
};

// `steps` steps of opt on q's loss; lr_at (optional) sets the learning rate before each step.
void train(flx_optim *opt, const Quadratic &q, int steps, const std::vector<double> &lr_at = {}) {
    for (int s = 0; s < steps; s++) {
        if (!lr_at.empty()) EXPECT_EQ(flx_optim_set_lr(opt, lr_at[s]), FLX_OK) << flx_last_error();
        flx_scope_begin();
        EXPECT_EQ(flx_backward(q.loss()), FLX_OK) << flx_last_error();
        EXPECT_EQ(flx_optim_step(opt), FLX_OK) << flx_last_error();
        EXPECT_EQ(flx_optim_zero_grad(opt), FLX_OK);
        flx_scope_end(0, nullptr);
    }
}

// Runs `steps` steps of the optimiser on ctx; returns the final parameters. lr_at (optional)
// sets the learning rate before each step.
std::vector<std::vector<double>> run_fluxion(flx_ctx *ctx, flx_dtype dt, const Model &m,
                                             flx_optim_kind kind, const flx_optim_config &cfg,
                                             int steps, const std::vector<double> &lr_at = {}) {
    EXPECT_EQ(flx_scope_begin(), FLX_OK);
    Quadratic q(ctx, dt, m);
    flx_optim *opt = flx_optim_create(ctx, kind, (int32_t)q.ps.size(), q.ps.data(), &cfg);
    EXPECT_NE(opt, nullptr) << flx_last_error();
    std::vector<std::vector<double>> out;
    if (!opt) {
        flx_scope_end(0, nullptr);
        return out;
    }
    train(opt, q, steps, lr_at);
    for (auto p : q.ps) out.push_back(values(p));
    flx_optim_destroy(opt);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    return out;
}

std::vector<std::vector<double>> run_reference(const Model &m, flx_optim_kind kind,
                                               const flx_optim_config &cfg, int steps,
                                               const std::vector<double> &lr_at = {}) {
    Ref r{kind, cfg, {}, {}, {}, 0};
    std::vector<std::vector<double>> w = m.w;
    r.init(w);
    for (int s = 0; s < steps; s++) {
        if (!lr_at.empty()) r.c.lr = lr_at[s];
        std::vector<std::vector<double>> g = w;
        for (size_t j = 0; j < w.size(); j++)
            for (size_t i = 0; i < w[j].size(); i++) g[j][i] = m.c[j][i] + m.d[j][i] * w[j][i];
        r.step(w, g);
    }
    return w;
}

::testing::AssertionResult all_close(const std::vector<std::vector<double>> &a,
                                     const std::vector<std::vector<double>> &b, double atol,
                                     double rtol) {
    if (a.size() != b.size()) return ::testing::AssertionFailure() << "tensor count differs";
    for (size_t j = 0; j < a.size(); j++) {
        auto r = close(a[j], b[j], atol, rtol);
        if (!r) return r << " (tensor " << j << ")";
    }
    return ::testing::AssertionSuccess();
}

// Every optimiser variant, `steps` steps on a random model in dt, against the float64 reference.
void expect_variants_match_reference(flx_ctx *ctx, flx_dtype dt, uint64_t seed, int steps, double atol,
                                     double rtol) {
    Model m = make_model(4, seed);
    for (const Variant &v : variants()) {
        SCOPED_TRACE(v.name);
        auto got = run_fluxion(ctx, dt, m, v.kind, v.cfg, steps);
        auto want = run_reference(m, v.kind, v.cfg, steps);
        EXPECT_TRUE(all_close(got, want, atol, rtol));
    }
}

TEST_F(OptimTest, RandomModelMatchesReferenceF64) {
    expect_variants_match_reference(ctx, FLX_F64, 100, 6, 1e-12, 1e-10);
}

TEST_F(OptimTest, RandomModelMatchesReferenceF32) {
    expect_variants_match_reference(ctx, FLX_F32, 200, 4, 2e-5, 1e-4);
}

// More tensors than one launch holds: every chunk sees the same step count.
TEST_F(OptimTest, ManyTensorsChunkedWithOneStepCount) {
    Model m = make_model(FLX_OPTIM_MAX_TENSORS_PER_LAUNCH + 7, 300);
    flx_optim_config c = flx_optim_defaults(FLX_OPTIM_ADAM);
    c.lr = 0.02;
    auto got = run_fluxion(ctx, FLX_F64, m, FLX_OPTIM_ADAM, c, 3);
    auto want = run_reference(m, FLX_OPTIM_ADAM, c, 3);
    EXPECT_TRUE(all_close(got, want, 1e-12, 1e-10));
}

// The learning rate lives on the device and can change between steps (a schedule).
TEST_F(OptimTest, LearningRateScheduleThroughDeviceHyperparameters) {
    Model m = make_model(3, 400);
    std::vector<double> lrs = {0.1, 0.05, 0.025, 0.0125};
    for (flx_optim_kind k : {FLX_OPTIM_MOMENTUM, FLX_OPTIM_ADAMW}) {
        flx_optim_config c = flx_optim_defaults(k);
        auto got = run_fluxion(ctx, FLX_F64, m, k, c, 4, lrs);
        auto want = run_reference(m, k, c, 4, lrs);
        EXPECT_TRUE(all_close(got, want, 1e-12, 1e-10)) << "kind " << k;
    }
}

TEST_F(OptimTest, HyperparametersReadBackAndValidated) {
    flx_tensor *p = make(ctx, FLX_F32, {3}, {1, 2, 3});
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_ADAM, 1, &p, nullptr);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    double v = 0;
    EXPECT_EQ(flx_optim_get_hparam(opt, FLX_HP_LR, &v), FLX_OK);
    EXPECT_EQ(v, 1e-3);
    EXPECT_EQ(flx_optim_get_hparam(opt, FLX_HP_BETA2, &v), FLX_OK);
    EXPECT_EQ(v, 0.999);
    EXPECT_EQ(flx_optim_set_lr(opt, 0.5), FLX_OK);
    EXPECT_EQ(flx_optim_get_hparam(opt, FLX_HP_LR, &v), FLX_OK);
    EXPECT_EQ(v, 0.5);
    EXPECT_EQ(flx_optim_set_lr(opt, -1), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(flx_last_error()).find("lr"), std::string::npos);
    EXPECT_EQ(flx_optim_set_lr(opt, NAN), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_set_hparam(opt, FLX_HP_BETA1, 1.0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_set_hparam(opt, FLX_HP_STEP, 1.5), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_set_hparam(opt, (flx_optim_hparam)99, 1.0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_set_hparam(opt, FLX_HP_MOMENTUM, 0.9), FLX_ERR_STATE);
    EXPECT_EQ(flx_optim_get_hparam(opt, FLX_HP_LR, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_state_count(opt), 2);
    EXPECT_EQ(flx_optim_get_state(opt, 0, 2), nullptr);
    EXPECT_EQ(flx_optim_get_state(opt, 1, 0), nullptr);
    // No gradient yet: a step updates nothing and does not count.
    EXPECT_EQ(flx_optim_step(opt), FLX_OK);
    EXPECT_EQ(flx_optim_get_hparam(opt, FLX_HP_STEP, &v), FLX_OK);
    EXPECT_EQ(v, 0.0);
    EXPECT_TRUE(close(values(p), {1, 2, 3}, 0, 0));
    flx_optim_destroy(opt);
    flx_optim_destroy(nullptr);
}

TEST_F(OptimTest, BadInputIsRejected) {
    flx_tensor *p = make(ctx, FLX_F32, {2}, {1, 2});
    flx_tensor *q = make(ctx, FLX_F64, {2}, {1, 2});
    flx_tensor *i = make(ctx, FLX_I32, {2}, {1, 2});
    flx_tensor *op = flx_add(p, p);
    flx_tensor *pp[2] = {p, p};
    flx_tensor *pq[2] = {p, q};
    EXPECT_EQ(flx_optim_create(nullptr, FLX_OPTIM_SGD, 1, &p, nullptr), nullptr);
    EXPECT_EQ(flx_optim_create(ctx, (flx_optim_kind)42, 1, &p, nullptr), nullptr);
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_SGD, 0, &p, nullptr), nullptr);
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_SGD, 1, nullptr, nullptr), nullptr);
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &i, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DTYPE);
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &op, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_SGD, 2, pp, nullptr), nullptr);
    EXPECT_NE(std::string(flx_last_error()).find("repeats"), std::string::npos);
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_SGD, 2, pq, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DTYPE);
    flx_tensor *null_param = nullptr;
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &null_param, nullptr), nullptr);
    flx_optim_config c = flx_optim_defaults(FLX_OPTIM_SGD);
    c.nesterov = true;  // without momentum
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &p, &c), nullptr);
    EXPECT_NE(std::string(flx_last_error()).find("nesterov"), std::string::npos);
    c = flx_optim_defaults(FLX_OPTIM_ADAM);
    c.beta2 = 1.5;
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_ADAM, 1, &p, &c), nullptr);
    EXPECT_NE(std::string(flx_last_error()).find("beta2"), std::string::npos);
    c = flx_optim_defaults(FLX_OPTIM_ADAGRAD);
    c.initial_accumulator = -1;
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_ADAGRAD, 1, &p, &c), nullptr);
    // NULL optimiser
    EXPECT_EQ(flx_optim_step(nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_zero_grad(nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_set_lr(nullptr, 0.1), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_state_count(nullptr), -1);
    EXPECT_EQ(flx_optim_get_state(nullptr, 0, 0), nullptr);
    EXPECT_EQ(flx_optim_set_state(nullptr, 0, 0, p), FLX_ERR_INVALID_ARGUMENT);
    flx_clear_error();
}

// The optimiser never writes a buffer that another tensor shares (buffer immutability).
TEST_F(OptimTest, AliasesOfParametersKeepTheirValues) {
    flx_tensor *p = make(ctx, FLX_F64, {2, 2}, {1, 2, 3, 4});
    ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
    flx_optim_config c = flx_optim_defaults(FLX_OPTIM_SGD);
    c.lr = 0.5;
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &p, &c);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    flx_tensor *view = flx_reshape(p, 1, (const int64_t[]){4});
    flx_tensor *det = flx_detach(p);
    ASSERT_EQ(flx_eval(1, &view), FLX_OK);
    ASSERT_EQ(flx_eval(1, &det), FLX_OK);
    flx_tensor *stale = flx_mul_scalar(p, 2.0);  // recorded before the step, not run
    ASSERT_EQ(flx_backward(flx_sum_all(p)), FLX_OK);  // gradient 1 everywhere
    ASSERT_EQ(flx_optim_step(opt), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(p), {0.5, 1.5, 2.5, 3.5}, 0, 0));
    EXPECT_TRUE(close(values(view), {1, 2, 3, 4}, 0, 0));
    EXPECT_TRUE(close(values(det), {1, 2, 3, 4}, 0, 0));
    double buf[4];
    EXPECT_EQ(flx_to_host(stale, buf, sizeof buf), FLX_ERR_STATE);
    // flx_assign into a parameter shares the source's buffer: the next step must not write it.
    flx_tensor *src = make(ctx, FLX_F64, {2, 2}, {10, 20, 30, 40});
    ASSERT_EQ(flx_assign(p, src), FLX_OK);
    ASSERT_EQ(flx_optim_step(opt), FLX_OK);  // the old gradient is still there
    EXPECT_TRUE(close(values(p), {9.5, 19.5, 29.5, 39.5}, 0, 0));
    EXPECT_TRUE(close(values(src), {10, 20, 30, 40}, 0, 0));
    flx_optim_destroy(opt);
    flx_clear_error();
}

// Exporting the state and the step count and loading them into a fresh optimiser continues the
// run exactly (what a checkpoint resume does).
TEST_F(OptimTest, StateRoundTripResumesExactly) {
    Model m = make_model(3, 500);
    flx_optim_config c = flx_optim_defaults(FLX_OPTIM_ADAM);
    c.lr = 0.05;
    auto want = run_fluxion(ctx, FLX_F64, m, FLX_OPTIM_ADAM, c, 5);
    // 3 steps, export, 2 more steps in a new optimiser.
    Quadratic q(ctx, FLX_F64, m);
    std::vector<flx_tensor *> &ps = q.ps;
    flx_optim *a = flx_optim_create(ctx, FLX_OPTIM_ADAM, 3, ps.data(), &c);
    ASSERT_NE(a, nullptr);
    train(a, q, 3);
    std::vector<flx_tensor *> saved;
    for (int j = 0; j < 3; j++)
        for (int s = 0; s < flx_optim_state_count(a); s++) saved.push_back(flx_optim_get_state(a, j, s));
    double step = 0;
    ASSERT_EQ(flx_optim_get_hparam(a, FLX_HP_STEP, &step), FLX_OK);
    EXPECT_EQ(step, 3.0);
    flx_optim_destroy(a);
    flx_optim *b = flx_optim_create(ctx, FLX_OPTIM_ADAM, 3, ps.data(), &c);
    ASSERT_NE(b, nullptr);
    size_t k = 0;
    for (int j = 0; j < 3; j++)
        for (int s = 0; s < flx_optim_state_count(b); s++)
            ASSERT_EQ(flx_optim_set_state(b, j, s, saved[k++]), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_optim_set_hparam(b, FLX_HP_STEP, step), FLX_OK);
    EXPECT_EQ(flx_optim_set_state(b, 0, 0, ps[1]), FLX_ERR_SHAPE);
    train(b, q, 2);
    std::vector<std::vector<double>> got;
    for (auto p : ps) got.push_back(values(p));
    EXPECT_TRUE(all_close(got, want, 0, 0));
    flx_optim_destroy(b);
    flx_clear_error();
}

// ---- GPU against CPU ----------------------------------------------------------------------
using OptimCuda = CudaCpuTest;

TEST_F(OptimCuda, MatchesCpuForEveryOptimiser) {
    flx_ctx *cuda = gpu;
    int64_t live = flx_live_tensors();
    Model m = make_model(FLX_OPTIM_MAX_TENSORS_PER_LAUNCH + 5, 600);
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        for (const Variant &v : variants()) {
            SCOPED_TRACE(std::string(v.name) + " " + flx_dtype_name(dt));
            auto g = run_fluxion(cuda, dt, m, v.kind, v.cfg, 4, {0.01, 0.02, 0.01, 0.005});
            auto c = run_fluxion(cpu, dt, m, v.kind, v.cfg, 4, {0.01, 0.02, 0.01, 0.005});
            EXPECT_TRUE(all_close(g, c, dt == FLX_F64 ? 1e-12 : 1e-5, dt == FLX_F64 ? 1e-10 : 1e-4));
        }
    }
    EXPECT_EQ(flx_live_tensors(), live);
}

}  // namespace
