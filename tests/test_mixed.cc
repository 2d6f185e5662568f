// test_mixed.cc — mixed-precision training: f16/bf16 parameters stepped through f32 master
// copies, against the float64 reference (optim_reference.h) with the documented roundings
// applied here (master and state to f32 after each step, the parameter to the half from the
// master); dynamic loss scaling (skips on inf/NaN, backoff, growth, inside a plan, f16
// overflow, its state read and restored alone); master copies in checkpoints and after
// flx_assign; bad input; GPU against CPU.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "optim_reference.h"
#include "testing.h"

using namespace flxt;

namespace {

using MixedTest = CpuTest;
using Vals = std::vector<std::vector<double>>;

// ---- the half formats, written here independently of the runtime ----------------------------
// bf16: the top half of an f32, rounded to nearest even.
uint16_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float bf16_value(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
// f16: the compiler's IEEE binary16 (_Float16 conversions round to nearest even).
uint16_t f16_bits(float f) {
    _Float16 h = (_Float16)f;
    uint16_t b;
    memcpy(&b, &h, 2);
    return b;
}
float f16_value(uint16_t b) {
    _Float16 h;
    memcpy(&h, &b, 2);
    return (float)h;
}
uint16_t half_bits(flx_dtype dt, float f) { return dt == FLX_BF16 ? bf16_bits(f) : f16_bits(f); }
float half_value(flx_dtype dt, uint16_t b) { return dt == FLX_BF16 ? bf16_value(b) : f16_value(b); }
// The half nearest an f32 value.
double to_half(flx_dtype dt, float f) { return half_value(dt, half_bits(dt, f)); }

flx_tensor *make_half(flx_ctx *ctx, flx_dtype dt, const Shape &shape, const std::vector<double> &v) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); i++) b[i] = half_bits(dt, (float)v[i]);
    flx_tensor *t = flx_from_host(ctx, dt, (int32_t)shape.size(), shape.data(), b.data());
    EXPECT_NE(t, nullptr) << flx_last_error();
    return t;
}

// Raw values of an f16/bf16 or f32 tensor, decoded here.
std::vector<double> raw_values(flx_tensor *t) {
    std::vector<double> out;
    if (!t) {
        ADD_FAILURE() << "raw_values: NULL tensor: " << flx_last_error();
        return out;
    }
    size_t n = (size_t)flx_numel(t);
    flx_dtype dt = flx_dtype_of(t);
    if (dt == FLX_F32) {
        std::vector<float> f(n);
        EXPECT_EQ(flx_to_host(t, f.data(), n * 4), FLX_OK) << flx_last_error();
        out.assign(f.begin(), f.end());
        return out;
    }
    std::vector<uint16_t> b(n);
    EXPECT_EQ(flx_to_host(t, b.data(), n * 2), FLX_OK) << flx_last_error();
    for (uint16_t x : b) out.push_back(half_value(dt, x));
    return out;
}

// Values rounded to the half (so f32 and the half hold them exactly).
std::vector<double> half_rand(flx_dtype dt, size_t n, uint64_t seed, double lo, double hi) {
    std::vector<double> v = rand_values(n, seed, lo, hi);
    for (double &x : v) x = to_half(dt, (float)x);
    return v;
}

size_t numel_of(const Shape &s) {
    size_t n = 1;
    for (int64_t d : s) n *= (size_t)d;
    return n;
}

// kind's defaults with learning rate lr and loss scaling from init_scale, growing after
// `interval` clean steps.
flx_optim_config scaling_config(flx_optim_kind kind, double lr, double init_scale, int32_t interval) {
    flx_optim_config c = flx_optim_defaults(kind);
    c.lr = lr;
    c.loss_scaling = true;
    c.init_scale = init_scale;
    c.growth_interval = interval;
    return c;
}

// ---- a mixed-precision run and its reference ------------------------------------------------
// Parameters w0 (half values) and per-step gradients G[step][tensor] (half values, so f32 and
// the half hold them exactly). The loss sum_j sum(f32(p_j) * G_j) gives p_j the gradient G_j,
// cast back to the half exactly.
struct Problem {
    flx_dtype dt;
    std::vector<Shape> shapes;
    Vals w0;
    std::vector<Vals> G;
};

Problem make_problem(flx_dtype dt, int steps, uint64_t seed) {
    Problem pr;
    pr.dt = dt;
    pr.shapes = {{5, 7}, {4097}}; // the second spans two CUDA chunks
    for (size_t j = 0; j < pr.shapes.size(); j++)
        pr.w0.push_back(half_rand(dt, numel_of(pr.shapes[j]), seed + j, -1, 1));
    for (int s = 0; s < steps; s++) {
        Vals g;
        for (size_t j = 0; j < pr.shapes.size(); j++)
            g.push_back(half_rand(dt, numel_of(pr.shapes[j]), seed + 100 * (s + 1) + j, -1, 1));
        pr.G.push_back(g);
    }
    return pr;
}

// One training step on ctx: loss = sum_j sum(f32(p_j) * G_j), optionally scaled by the
// optimiser, backward, step, zero_grad.
void train_step(flx_ctx *ctx, flx_optim *opt, const std::vector<flx_tensor *> &ps,
                const std::vector<Shape> &shapes, const Vals &G, bool scaled) {
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *loss = nullptr;
    for (size_t j = 0; j < ps.size(); j++) {
        flx_tensor *term = flx_sum_all(flx_mul(flx_cast(ps[j], FLX_F32), make(ctx, FLX_F32, shapes[j], G[j])));
        loss = loss ? flx_add(loss, term) : term;
    }
    if (scaled) loss = flx_optim_scale_loss(opt, loss);
    EXPECT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_optim_step(opt), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_optim_zero_grad(opt), FLX_OK);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
}

struct HalfResult {
    Vals params, masters;
};

// Runs the optimiser over the problem's steps on ctx; the parameters and master copies after.
HalfResult run_half(flx_ctx *ctx, const Problem &pr, flx_optim_kind kind, const flx_optim_config &cfg) {
    HalfResult r;
    EXPECT_EQ(flx_scope_begin(), FLX_OK);
    std::vector<flx_tensor *> ps;
    for (size_t j = 0; j < pr.shapes.size(); j++) {
        ps.push_back(make_half(ctx, pr.dt, pr.shapes[j], pr.w0[j]));
        EXPECT_EQ(flx_set_requires_grad(ps.back(), true), FLX_OK);
    }
    flx_optim *opt = flx_optim_create(ctx, kind, (int32_t)ps.size(), ps.data(), &cfg);
    EXPECT_NE(opt, nullptr) << flx_last_error();
    if (opt) {
        for (const Vals &g : pr.G) train_step(ctx, opt, ps, pr.shapes, g, cfg.loss_scaling);
        int32_t last = flx_optim_state_count(opt) - 1;
        for (size_t j = 0; j < ps.size(); j++) {
            r.params.push_back(raw_values(ps[j]));
            flx_tensor *m = flx_optim_get_state(opt, (int32_t)j, last);
            EXPECT_EQ(flx_dtype_of(m), FLX_F32);
            r.masters.push_back(raw_values(m));
        }
        flx_optim_destroy(opt);
    }
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    return r;
}

// The reference: the float64 rule on the master, then master and state rounded to f32 and the
// parameter to the half, step by step.
HalfResult reference_half(const Problem &pr, flx_optim_kind kind, const flx_optim_config &cfg) {
    Ref ref{kind, cfg, {}, {}, {}, 0};
    Vals w = pr.w0;
    ref.init(w);
    auto to_f32 = [](Vals &v) {
        for (auto &x : v)
            for (double &e : x) e = (double)(float)e;
    };
    for (const Vals &g : pr.G) {
        ref.step(w, g);
        to_f32(w);
        to_f32(ref.s0);
        to_f32(ref.s1);
        to_f32(ref.s2);
    }
    HalfResult r;
    r.masters = w;
    r.params = w;
    for (auto &x : r.params)
        for (double &e : x) e = to_half(pr.dt, (float)e);
    return r;
}

// Elements that differ (exact comparison), with the first one described.
::testing::AssertionResult same_values(const Vals &got, const Vals &want) {
    if (got.size() != want.size()) return ::testing::AssertionFailure() << "tensor count differs";
    size_t bad = 0;
    std::string first;
    for (size_t j = 0; j < got.size(); j++) {
        if (got[j].size() != want[j].size())
            return ::testing::AssertionFailure() << "tensor " << j << " size differs";
        for (size_t i = 0; i < got[j].size(); i++)
            if (got[j][i] != want[j][i] && !(std::isnan(got[j][i]) && std::isnan(want[j][i]))) {
                if (bad++ == 0) {
                    char buf[160];
                    snprintf(buf, sizeof buf, "tensor %zu element %zu: got %.9g, want %.9g", j, i,
                             got[j][i], want[j][i]);
                    first = buf;
                }
            }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << bad << " elements differ; first: " << first;
}

TEST_F(MixedTest, HalfParametersMatchF32MasterReference) {
    for (flx_dtype dt : {FLX_BF16, FLX_F16}) {
        Problem pr = make_problem(dt, 4, dt == FLX_BF16 ? 10 : 20);
        for (const Variant &v : variants()) {
            SCOPED_TRACE(std::string(v.name) + (dt == FLX_BF16 ? " bf16" : " f16"));
            HalfResult got = run_half(ctx, pr, v.kind, v.cfg);
            HalfResult want = reference_half(pr, v.kind, v.cfg);
            EXPECT_TRUE(same_values(got.masters, want.masters));
            EXPECT_TRUE(same_values(got.params, want.params));
        }
    }
}

// Updates below the half's resolution accumulate in the master: bf16 1.0 with steps of 2^-10
// (an eighth of bf16's spacing just below 1) moves once the master has travelled far enough;
// a bf16 parameter updated in place would stay at 1.0 forever.
TEST_F(MixedTest, UpdatesBelowHalfResolutionAccumulate) {
    const int64_t one = 1;
    flx_tensor *p = make_half(ctx, FLX_BF16, {1}, {1.0});
    ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
    flx_optim_config c = flx_optim_defaults(FLX_OPTIM_SGD);
    c.lr = std::ldexp(1.0, -10);
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &p, &c);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    // Master after k steps: 1 - k 2^-10; the parameter is its nearest bf16 (ties to even).
    const double want[4] = {1.0, 1.0, 255.0 / 256, 255.0 / 256};
    for (int k = 0; k < 4; k++) {
        train_step(ctx, opt, {p}, {{one}}, {{1.0}}, false);
        EXPECT_EQ(raw_values(p)[0], want[k]) << "step " << k + 1;
        EXPECT_EQ(raw_values(flx_optim_get_state(opt, 0, 0))[0], 1.0 - (k + 1) * std::ldexp(1.0, -10));
    }
    flx_optim_destroy(opt);
}

// flx_assign to a parameter reseeds its master at the next step: the value the user set wins.
TEST_F(MixedTest, AssignedParameterReseedsMaster) {
    flx_tensor *p = make_half(ctx, FLX_BF16, {3}, {0.5, -0.25, 1.0});
    ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
    flx_optim_config c = flx_optim_defaults(FLX_OPTIM_SGD);
    c.lr = 0.375;
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &p, &c);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    train_step(ctx, opt, {p}, {{3}}, {{0.01171875, 0.5, -0.5}}, false);
    ASSERT_EQ(flx_assign(p, make_half(ctx, FLX_BF16, {3}, {2.0, 3.0, -4.0})), FLX_OK);
    train_step(ctx, opt, {p}, {{3}}, {{1.0, -1.0, 0.5}}, false);
    std::vector<double> want = {2.0 - 0.375, 3.0 + 0.375, -4.0 - 0.1875};
    EXPECT_EQ(raw_values(flx_optim_get_state(opt, 0, 0)), want);
    for (double &x : want) x = to_half(FLX_BF16, (float)x);
    EXPECT_EQ(raw_values(p), want);
    flx_optim_destroy(opt);
}

TEST_F(MixedTest, MasterAndScalerSurviveCheckpoint) {
    const flx_dtype dt = FLX_BF16;
    Problem pr = make_problem(dt, 4, 30);
    flx_optim_config c = scaling_config(FLX_OPTIM_ADAMW, 0.01, 256, 2);
    std::vector<flx_tensor *> pa, pb;
    for (size_t j = 0; j < pr.shapes.size(); j++) {
        pa.push_back(make_half(ctx, dt, pr.shapes[j], pr.w0[j]));
        ASSERT_EQ(flx_set_requires_grad(pa.back(), true), FLX_OK);
    }
    flx_optim *a = flx_optim_create(ctx, FLX_OPTIM_ADAMW, 2, pa.data(), &c);
    ASSERT_NE(a, nullptr) << flx_last_error();
    EXPECT_EQ(flx_optim_state_count(a), 3); // m, v, master
    for (int s = 0; s < 3; s++) train_step(ctx, a, pa, pr.shapes, pr.G[s], true);
    std::string path = ::testing::TempDir() + "flx_mixed_ckpt.safetensors";
    ASSERT_EQ(flx_optim_save(a, path.c_str()), FLX_OK) << flx_last_error();
    // B: fresh parameters holding A's current (rounded) values, then A's state from the file.
    for (size_t j = 0; j < pa.size(); j++) {
        pb.push_back(make_half(ctx, dt, pr.shapes[j], raw_values(pa[j])));
        ASSERT_EQ(flx_set_requires_grad(pb.back(), true), FLX_OK);
    }
    flx_optim *b = flx_optim_create(ctx, FLX_OPTIM_ADAMW, 2, pb.data(), &c);
    ASSERT_NE(b, nullptr) << flx_last_error();
    ASSERT_EQ(flx_optim_load(b, path.c_str()), FLX_OK) << flx_last_error();
    double sa = 0, sb = 0;
    EXPECT_EQ(flx_optim_loss_scale(a, &sa), FLX_OK);
    EXPECT_EQ(flx_optim_loss_scale(b, &sb), FLX_OK);
    EXPECT_EQ(sa, 512.0); // grown once after two clean steps
    EXPECT_EQ(sb, sa);
    for (int k = 0; k < 3; k++)
        EXPECT_EQ(raw_values(flx_optim_get_state(a, 1, k)), raw_values(flx_optim_get_state(b, 1, k)));
    // One more step each (the tracker carried over: both grow the scale now).
    train_step(ctx, a, pa, pr.shapes, pr.G[3], true);
    train_step(ctx, b, pb, pr.shapes, pr.G[3], true);
    for (size_t j = 0; j < pa.size(); j++) {
        EXPECT_EQ(raw_values(pa[j]), raw_values(pb[j]));
        EXPECT_EQ(raw_values(flx_optim_get_state(a, (int32_t)j, 2)),
                  raw_values(flx_optim_get_state(b, (int32_t)j, 2)));
    }
    EXPECT_EQ(flx_optim_loss_scale(b, &sb), FLX_OK);
    EXPECT_EQ(sb, 1024.0);
    // The file does not fit an optimiser without loss scaling, nor one without masters.
    flx_optim_config plain = c;
    plain.loss_scaling = false;
    flx_optim *d = flx_optim_create(ctx, FLX_OPTIM_ADAMW, 2, pb.data(), &plain);
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(flx_optim_load(d, path.c_str()), FLX_ERR_STATE);
    flx_optim_destroy(d);
    std::vector<flx_tensor *> pf;
    for (size_t j = 0; j < pr.shapes.size(); j++) pf.push_back(make(ctx, FLX_F32, pr.shapes[j], pr.w0[j]));
    flx_optim *f = flx_optim_create(ctx, FLX_OPTIM_ADAMW, 2, pf.data(), &c);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(flx_optim_load(f, path.c_str()), FLX_ERR_STATE) << flx_last_error();
    flx_optim_destroy(f);
    flx_optim_destroy(a);
    flx_optim_destroy(b);
    std::remove(path.c_str());
}

// ---- loss scaling ----------------------------------------------------------------------------
// Adam over one f32 parameter with loss sum(p * x), scaled: x with an inf or a NaN skips the
// step; the reference steps on the clean ones only.
TEST_F(MixedTest, ScalerSkipsInfAndNanSteps) {
    std::vector<double> w0 = rand_values(6, 41);
    flx_tensor *p = make(ctx, FLX_F32, {6}, w0);
    ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
    flx_optim_config c = scaling_config(FLX_OPTIM_ADAM, 0.01, 1024, 2000);
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_ADAM, 1, &p, &c);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    const double inf = INFINITY, nan = NAN;
    std::vector<std::vector<double>> xs = {rand_values(6, 42), rand_values(6, 43),
                                           rand_values(6, 44), rand_values(6, 45)};
    xs[1][2] = inf;
    xs[2][4] = nan;
    for (auto &x : xs)
        for (double &e : x) e = (double)(float)e;
    const double want_scale[4] = {1024, 512, 256, 256};
    const int64_t want_skipped[4] = {0, 1, 2, 2};
    const double want_step[4] = {1, 1, 1, 2};
    Ref ref{FLX_OPTIM_ADAM, c, {}, {}, {}, 0};
    Vals w = {raw_values(p)};
    ref.init(w);
    for (int s = 0; s < 4; s++) {
        SCOPED_TRACE("step " + std::to_string(s + 1));
        std::vector<double> before = raw_values(p);
        std::vector<double> m_before = raw_values(flx_optim_get_state(opt, 0, 0));
        train_step(ctx, opt, {p}, {{6}}, {xs[s]}, true);
        double scale = 0, step = 0;
        int64_t skipped = -1;
        EXPECT_EQ(flx_optim_loss_scale(opt, &scale), FLX_OK);
        EXPECT_EQ(flx_optim_skipped_steps(opt, &skipped), FLX_OK);
        EXPECT_EQ(flx_optim_get_hparam(opt, FLX_HP_STEP, &step), FLX_OK);
        EXPECT_EQ(scale, want_scale[s]);
        EXPECT_EQ(skipped, want_skipped[s]);
        EXPECT_EQ(step, want_step[s]);
        if (s == 1 || s == 2) { // skipped: parameter and moments exactly as before
            EXPECT_EQ(raw_values(p), before);
            EXPECT_EQ(raw_values(flx_optim_get_state(opt, 0, 0)), m_before);
        } else {
            ref.step(w, {xs[s]});
            EXPECT_TRUE(close(raw_values(p), w[0], 1e-6, 1e-5));
        }
    }
    flx_optim_destroy(opt);
}

// growth_interval clean steps in a row double the scale; an inf halves it and restarts the count.
TEST_F(MixedTest, ScalerGrowsAfterCleanSteps) {
    flx_tensor *p = make(ctx, FLX_F32, {2}, {0.5, -0.5});
    ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
    flx_optim_config c = scaling_config(FLX_OPTIM_SGD, 0.125, 8, 3);
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &p, &c);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    const bool bad[9] = {false, false, false, false, false, true, false, false, false};
    const double want[9] = {8, 8, 16, 16, 16, 8, 8, 8, 16};
    for (int s = 0; s < 9; s++) {
        train_step(ctx, opt, {p}, {{2}}, {{bad[s] ? INFINITY : 1.0, 1.0}}, true);
        double scale = 0;
        EXPECT_EQ(flx_optim_loss_scale(opt, &scale), FLX_OK);
        EXPECT_EQ(scale, want[s]) << "step " << s + 1;
    }
    int64_t skipped = 0;
    double step = 0;
    EXPECT_EQ(flx_optim_skipped_steps(opt, &skipped), FLX_OK);
    EXPECT_EQ(flx_optim_get_hparam(opt, FLX_HP_STEP, &step), FLX_OK);
    EXPECT_EQ(skipped, 1);
    EXPECT_EQ(step, 8.0);
    EXPECT_EQ(raw_values(p), (std::vector<double>{0.5 - 8 * 0.125, -0.5 - 8 * 0.125}));
    flx_optim_destroy(opt);
}

// The scaler's state read and written alone (flx_optim_get_scaler / set_scaler): SGD from scale
// 8, growing after 3 clean steps. Steps clean, clean, inf, clean leave scale 4 (halved by the
// inf), tracker 1 (one clean step since) and 1 skipped. A second optimiser given that state grows
// its scale after two more clean steps, exactly like the first; a fresh one would not.
TEST_F(MixedTest, ScalerStateGetAndSetResumeExactly) {
    flx_optim_config c = scaling_config(FLX_OPTIM_SGD, 0.125, 8, 3);
    flx_tensor *pa = make(ctx, FLX_F32, {2}, {0.5, -0.5});
    ASSERT_EQ(flx_set_requires_grad(pa, true), FLX_OK);
    flx_optim *a = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &pa, &c);
    ASSERT_NE(a, nullptr) << flx_last_error();
    double scale = 0;
    int64_t tracker = -1, skipped = -1;
    EXPECT_EQ(flx_optim_get_scaler(a, &scale, &tracker, &skipped), FLX_OK) << flx_last_error();
    EXPECT_EQ(scale, 8.0);
    EXPECT_EQ(tracker, 0);
    EXPECT_EQ(skipped, 0);
    for (bool bad : {false, false, true, false})
        train_step(ctx, a, {pa}, {{2}}, {{bad ? INFINITY : 1.0, 1.0}}, true);
    EXPECT_EQ(flx_optim_get_scaler(a, &scale, &tracker, &skipped), FLX_OK) << flx_last_error();
    EXPECT_EQ(scale, 4.0);
    EXPECT_EQ(tracker, 1);
    EXPECT_EQ(skipped, 1);

    flx_tensor *pb = make(ctx, FLX_F32, {2}, raw_values(pa));
    ASSERT_EQ(flx_set_requires_grad(pb, true), FLX_OK);
    flx_optim *b = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &pb, &c);
    ASSERT_NE(b, nullptr) << flx_last_error();
    ASSERT_EQ(flx_optim_set_scaler(b, 4.0, 1, 1), FLX_OK) << flx_last_error();
    double sb = 0;
    int64_t tb = -1, kb = -1;
    EXPECT_EQ(flx_optim_get_scaler(b, &sb, &tb, &kb), FLX_OK);
    EXPECT_EQ(sb, 4.0);
    EXPECT_EQ(tb, 1);
    EXPECT_EQ(kb, 1);
    for (int s = 0; s < 2; s++) {
        train_step(ctx, a, {pa}, {{2}}, {{1.0, 1.0}}, true);
        train_step(ctx, b, {pb}, {{2}}, {{1.0, 1.0}}, true);
    }
    EXPECT_EQ(flx_optim_get_scaler(b, &sb, &tb, &kb), FLX_OK);
    EXPECT_EQ(sb, 8.0); // three clean steps in a row: grown
    EXPECT_EQ(tb, 0);
    EXPECT_EQ(kb, 1);
    EXPECT_EQ(flx_optim_loss_scale(a, &scale), FLX_OK);
    EXPECT_EQ(scale, 8.0);
    EXPECT_EQ(raw_values(pa), raw_values(pb));

    // Bad input: NULL outputs or optimiser, values out of range (nothing changes), and an
    // optimiser without loss scaling (reads 1, 0, 0; refuses a write).
    EXPECT_EQ(flx_optim_get_scaler(b, nullptr, &tb, &kb), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_get_scaler(b, &sb, nullptr, &kb), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_get_scaler(b, &sb, &tb, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_get_scaler(nullptr, &sb, &tb, &kb), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_set_scaler(nullptr, 1.0, 0, 0), FLX_ERR_INVALID_ARGUMENT);
    const double bad_scale[4] = {0.0, -2.0, 1e39, NAN};
    for (double v : bad_scale) EXPECT_EQ(flx_optim_set_scaler(b, v, 0, 0), FLX_ERR_INVALID_ARGUMENT) << v;
    EXPECT_EQ(flx_optim_set_scaler(b, 2.0, -1, 0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_set_scaler(b, 2.0, 0, -1), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_set_scaler(b, 2.0, (int64_t)1 << 60, 0), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_get_scaler(b, &sb, &tb, &kb), FLX_OK);
    EXPECT_EQ(sb, 8.0);
    EXPECT_EQ(tb, 0);
    EXPECT_EQ(kb, 1);
    flx_optim_config plain = c;
    plain.loss_scaling = false;
    flx_optim *d = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &pb, &plain);
    ASSERT_NE(d, nullptr) << flx_last_error();
    EXPECT_EQ(flx_optim_get_scaler(d, &sb, &tb, &kb), FLX_OK);
    EXPECT_EQ(sb, 1.0);
    EXPECT_EQ(tb, 0);
    EXPECT_EQ(kb, 0);
    EXPECT_EQ(flx_optim_set_scaler(d, 2.0, 0, 0), FLX_ERR_STATE);
    flx_clear_error();
    flx_optim_destroy(d);
    flx_optim_destroy(a);
    flx_optim_destroy(b);
}

// f16's range: at scale 65536 a gradient of 1 overflows to inf in f16, so the first step is
// skipped and the scale backs off to 32768, where the gradients fit; bf16 (f32's range) does not
// overflow at all.
TEST_F(MixedTest, ScalerBacksOffWhenF16GradientsOverflow) {
    for (flx_dtype dt : {FLX_F16, FLX_BF16}) {
        SCOPED_TRACE(dt == FLX_F16 ? "f16" : "bf16");
        std::vector<double> w0 = {0.5, -0.75, 0.25, 1.5};
        flx_tensor *p = make_half(ctx, dt, {4}, w0);
        ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
        flx_optim_config c = scaling_config(FLX_OPTIM_SGD, 0.01, 65536, 2000);
        flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &p, &c);
        ASSERT_NE(opt, nullptr) << flx_last_error();
        const std::vector<double> g = {1.0, 0.5, -0.25, 0.125};
        std::vector<double> master = w0;
        for (int s = 0; s < 2; s++) {
            train_step(ctx, opt, {p}, {{4}}, {g}, true);
            if (dt == FLX_BF16 || s == 1)
                for (size_t i = 0; i < 4; i++) master[i] = (double)(float)(master[i] - 0.01 * g[i]);
        }
        double scale = 0;
        int64_t skipped = -1;
        EXPECT_EQ(flx_optim_loss_scale(opt, &scale), FLX_OK);
        EXPECT_EQ(flx_optim_skipped_steps(opt, &skipped), FLX_OK);
        EXPECT_EQ(scale, dt == FLX_F16 ? 32768.0 : 65536.0);
        EXPECT_EQ(skipped, dt == FLX_F16 ? 1 : 0);
        EXPECT_EQ(raw_values(flx_optim_get_state(opt, 0, 0)), master);
        std::vector<double> want = master;
        for (double &x : want) x = to_half(dt, (float)x);
        EXPECT_EQ(raw_values(p), want);
        flx_optim_destroy(opt);
    }
}

// A plan whose output 0 is the scaled loss: each run scales by the current scale (read on the
// device), skips on inf, and its parameters follow the reference over the clean runs.
TEST_F(MixedTest, ScalerInsidePlanReplay) {
    std::vector<double> w0 = rand_values(5, 51);
    for (double &e : w0) e = (double)(float)e;
    flx_tensor *p = make(ctx, FLX_F32, {5}, w0);
    ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
    flx_optim_config c = scaling_config(FLX_OPTIM_MOMENTUM, 0.05, 64, 2);
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_MOMENTUM, 1, &p, &c);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    flx_tensor *x = make(ctx, FLX_F32, {5}, std::vector<double>(5, 1.0));
    flx_tensor *loss = flx_optim_scale_loss(opt, flx_sum_all(flx_mul(p, x)));
    ASSERT_NE(loss, nullptr) << flx_last_error();
    flx_plan_options o = flx_plan_default_options();
    o.n_optim = 1;
    o.optims = &opt;
    flx_plan *plan = flx_plan_compile(1, &loss, 1, &x, &o);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    flx_tensor *out = flx_plan_output(plan, 0);
    std::vector<std::vector<double>> xs;
    for (int s = 0; s < 6; s++) {
        std::vector<double> v = rand_values(5, 60 + s);
        for (double &e : v) e = (double)(float)e;
        xs.push_back(v);
    }
    xs[2][3] = INFINITY;
    const double want_scale_used[6] = {64, 64, 128, 64, 64, 128}; // the scale each run applies
    Ref ref{FLX_OPTIM_MOMENTUM, c, {}, {}, {}, 0};
    Vals w = {w0};
    ref.init(w);
    for (int s = 0; s < 6; s++) {
        SCOPED_TRACE("run " + std::to_string(s + 1));
        std::vector<double> pv = raw_values(p);
        ASSERT_EQ(flx_plan_set_input_host(plan, 0, std::vector<float>(xs[s].begin(), xs[s].end()).data(),
                                          5 * sizeof(float)), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        double l = 0, dot = 0;
        for (int i = 0; i < 5; i++) dot += pv[i] * xs[s][i];
        EXPECT_EQ(flx_item(out, &l), FLX_OK);
        if (s != 2) {
            EXPECT_NEAR(l, want_scale_used[s] * dot, 1e-5 * want_scale_used[s]);
            ref.step(w, {xs[s]});
        } else {
            EXPECT_EQ(raw_values(p), pv); // skipped
        }
        EXPECT_TRUE(close(raw_values(p), w[0], 1e-6, 1e-5));
    }
    int64_t skipped = 0;
    EXPECT_EQ(flx_optim_skipped_steps(opt, &skipped), FLX_OK);
    EXPECT_EQ(skipped, 1);
    flx_plan_destroy(plan);
    flx_optim_destroy(opt);
}

TEST_F(MixedTest, WithoutScalingTheLossIsUnchanged) {
    flx_tensor *p = make(ctx, FLX_F32, {2}, {1.0, 2.0});
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &p, nullptr);
    ASSERT_NE(opt, nullptr);
    flx_tensor *l = flx_optim_scale_loss(opt, flx_sum_all(p));
    ASSERT_NE(l, nullptr) << flx_last_error();
    EXPECT_EQ(values(l), std::vector<double>{3.0});
    double scale = 0;
    int64_t skipped = -1;
    EXPECT_EQ(flx_optim_loss_scale(opt, &scale), FLX_OK);
    EXPECT_EQ(flx_optim_skipped_steps(opt, &skipped), FLX_OK);
    EXPECT_EQ(scale, 1.0);
    EXPECT_EQ(skipped, 0);
    flx_optim_config d = flx_optim_defaults(FLX_OPTIM_ADAM);
    EXPECT_FALSE(d.loss_scaling);
    EXPECT_EQ(d.init_scale, 65536.0);
    EXPECT_EQ(d.growth_factor, 2.0);
    EXPECT_EQ(d.backoff_factor, 0.5);
    EXPECT_EQ(d.growth_interval, 2000);
    flx_optim_destroy(opt);
}

TEST_F(MixedTest, BadInput) {
    flx_tensor *h = make_half(ctx, FLX_BF16, {3}, {1, 2, 3});
    flx_tensor *f = make(ctx, FLX_F32, {3}, {1, 2, 3});
    flx_tensor *mixed[2] = {h, f};
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_ADAM, 2, mixed, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DTYPE);
    flx_tensor *i32 = make(ctx, FLX_I32, {3}, {1, 2, 3});
    EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_ADAM, 1, &i32, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DTYPE);
    // Loss-scaling fields out of range.
    for (int k = 0; k < 6; k++) {
        flx_optim_config c = flx_optim_defaults(FLX_OPTIM_ADAM);
        c.loss_scaling = true;
        switch (k) {
        case 0: c.init_scale = 0; break;
        case 1: c.init_scale = 1e39; break; // not finite in f32
        case 2: c.growth_factor = 1; break;
        case 3: c.backoff_factor = 1; break;
        case 4: c.backoff_factor = 0; break;
        default: c.growth_interval = 0; break;
        }
        EXPECT_EQ(flx_optim_create(ctx, FLX_OPTIM_ADAM, 1, &h, &c), nullptr) << "case " << k;
        EXPECT_EQ(flx_last_status(), FLX_ERR_INVALID_ARGUMENT) << "case " << k;
    }
    flx_optim_config c = flx_optim_defaults(FLX_OPTIM_ADAM);
    c.loss_scaling = true;
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_ADAM, 1, &h, &c);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    EXPECT_TRUE(fails_with(flx_optim_scale_loss(nullptr, f), FLX_ERR_INVALID_ARGUMENT, "optimiser"));
    EXPECT_EQ(flx_optim_scale_loss(opt, nullptr), nullptr);
    EXPECT_NE(flx_last_status(), FLX_OK);
    EXPECT_TRUE(fails_with(flx_optim_scale_loss(opt, i32), FLX_ERR_DTYPE, "float"));
    double d = 0;
    int64_t n = 0;
    EXPECT_EQ(flx_optim_loss_scale(opt, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_loss_scale(nullptr, &d), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_skipped_steps(opt, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_optim_skipped_steps(nullptr, &n), FLX_ERR_INVALID_ARGUMENT);
    // The master slot is f32: an f64 or bf16 value is a dtype error, another shape a shape error.
    EXPECT_EQ(flx_optim_state_count(opt), 3);
    EXPECT_EQ(flx_optim_set_state(opt, 0, 2, make(ctx, FLX_F64, {3}, {1, 2, 3})), FLX_ERR_DTYPE);
    EXPECT_EQ(flx_optim_set_state(opt, 0, 2, h), FLX_ERR_DTYPE);
    EXPECT_EQ(flx_optim_set_state(opt, 0, 2, make(ctx, FLX_F32, {2}, {1, 2})), FLX_ERR_SHAPE);
    EXPECT_EQ(flx_optim_set_state(opt, 0, 2, f), FLX_OK) << flx_last_error();
    flx_optim_destroy(opt);
    // Another context's loss.
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_optim *o2 = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &f, &c);
    ASSERT_NE(o2, nullptr) << flx_last_error();
    EXPECT_TRUE(fails_with(flx_optim_scale_loss(o2, make(other, FLX_F32, {1}, {1})), FLX_ERR_DEVICE,
                           "context"));
    flx_optim_destroy(o2);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    // The sharded optimiser takes neither halves nor loss scaling (one-rank communicator).
    flx_comm *comm = flx_comm_create(ctx);
    ASSERT_NE(comm, nullptr) << flx_last_error();
    EXPECT_EQ(flx_sharded_optim_create(comm, FLX_OPTIM_ADAM, 1, &h, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DTYPE);
    EXPECT_EQ(flx_sharded_optim_create(comm, FLX_OPTIM_ADAM, 1, &f, &c), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_INVALID_ARGUMENT);
    flx_comm_destroy(comm);
    flx_clear_error();
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK) << flx_last_error();
}

// ---- GPU against CPU --------------------------------------------------------------------------
// Both backends run the same float64 formulas; CUDA's pow may differ from the C library's in the
// last bit, so a master may differ by an f32 ulp and a parameter by a half ulp.
using MixedCuda = CudaCpuTest;

TEST_F(MixedCuda, HalfParametersMatchCpu) {
    flx_ctx *cuda = gpu;
    for (flx_dtype dt : {FLX_BF16, FLX_F16}) {
        Problem pr = make_problem(dt, 3, 70);
        for (const Variant &v : variants()) {
            SCOPED_TRACE(std::string(v.name) + (dt == FLX_BF16 ? " bf16" : " f16"));
            flx_optim_config c = v.cfg;
            c.loss_scaling = true;
            HalfResult g = run_half(cuda, pr, v.kind, c);
            HalfResult w = run_half(cpu, pr, v.kind, c);
            const double half_ulp = dt == FLX_BF16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -10);
            for (size_t j = 0; j < w.params.size(); j++) {
                EXPECT_TRUE(close(g.masters[j], w.masters[j], 1e-30, std::ldexp(1.0, -23)));
                EXPECT_TRUE(close(g.params[j], w.params[j], 1e-30, half_ulp));
            }
        }
    }
}

// The scaler inside a captured plan on the GPU: an inf run is skipped and the scale moves, all
// on the device, and the parameters equal the CPU plan's.
TEST_F(MixedCuda, ScalerInCapturedPlanMatchesCpu) {
    flx_ctx *cuda = gpu;
    std::vector<double> res[2];
    double scales[2] = {0, 0};
    flx_ctx *ctxs[2] = {cuda, cpu};
    for (int k = 0; k < 2; k++) {
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *p = make_half(ctxs[k], FLX_BF16, {3000}, half_rand(FLX_BF16, 3000, 80, -1, 1));
        ASSERT_EQ(flx_set_requires_grad(p, true), FLX_OK);
        flx_optim_config c = scaling_config(FLX_OPTIM_ADAMW, 1e-3, 65536, 2);
        flx_optim *opt = flx_optim_create(ctxs[k], FLX_OPTIM_ADAMW, 1, &p, &c);
        ASSERT_NE(opt, nullptr) << flx_last_error();
        flx_tensor *x = make(ctxs[k], FLX_F32, {3000}, std::vector<double>(3000, 0.5));
        flx_tensor *loss = flx_optim_scale_loss(opt, flx_sum_all(flx_mul(flx_cast(p, FLX_F32), x)));
        flx_plan_options o = flx_plan_default_options();
        o.capture = k == 0 ? FLX_PLAN_CAPTURE_ON : FLX_PLAN_CAPTURE_OFF;
        o.n_optim = 1;
        o.optims = &opt;
        flx_plan *plan = flx_plan_compile(1, &loss, 1, &x, &o);
        ASSERT_NE(plan, nullptr) << flx_last_error();
        for (int s = 0; s < 5; s++) {
            std::vector<float> xv(3000);
            for (int i = 0; i < 3000; i++) xv[i] = (float)half_rand(FLX_BF16, 1, 90 + 7 * s + i, -1, 1)[0];
            if (s == 2) xv[1234] = NAN;
            ASSERT_EQ(flx_plan_set_input_host(plan, 0, xv.data(), xv.size() * 4), FLX_OK);
            ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        }
        res[k] = raw_values(p);
        EXPECT_EQ(flx_optim_loss_scale(opt, &scales[k]), FLX_OK);
        flx_plan_destroy(plan);
        flx_optim_destroy(opt);
        EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    EXPECT_EQ(scales[0], scales[1]);
    EXPECT_TRUE(close(res[0], res[1], 1e-30, std::ldexp(1.0, -7)));
}

}  // namespace
