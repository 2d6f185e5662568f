// cpp_header_test.cc — include/fluxion/fluxion.hpp, the C++17 RAII layer: ownership with and
// without scopes (the sanitizer build proves there is no double release), operators against
// float64 references, gradients against closed forms, errors as flx::error, optimiser, plan and
// checkpoint wrappers. Built as its own binary with -Wall -Wextra -pedantic -Werror.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <type_traits>
#include <unistd.h>
#include <vector>

#include "fluxion/fluxion.hpp"

namespace {

class Cpp : public ::testing::Test {
protected:
    void SetUp() override {
        flx_clear_error();
        live_before = flx_live_tensors();
    }
    void TearDown() override {
        EXPECT_EQ(flx_scope_depth(), 0) << "a scope was left open";
        EXPECT_EQ(flx_live_tensors(), live_before) << "tensors leaked";
        EXPECT_EQ(flx_last_status(), FLX_OK) << "error state left set: " << flx_last_error();
    }
    int64_t live_before = 0;
};

std::string temp_path(const char *tag) {
    return std::string(::testing::TempDir()) + "flx_cpp_" + tag + "_" +
           std::to_string(static_cast<long>(getpid())) + ".safetensors";
}

TEST_F(Cpp, CopyRetainsAndDestructorReleases) {
    flx::context ctx = flx::context::cpu();
    const int64_t base = flx_live_tensors();
    {
        flx::tensor a = ctx.from_vector<double>({1, 2, 3}, {3});
        EXPECT_EQ(flx_live_tensors(), base + 1);
        flx::tensor b = a;  // retain: same object
        EXPECT_EQ(b.get(), a.get());
        EXPECT_EQ(flx_live_tensors(), base + 1);
        flx::tensor c = std::move(a);
        EXPECT_FALSE(a);
        a = b;
        b = flx::tensor();
        EXPECT_EQ(c.to_vector<double>(), (std::vector<double>{1, 2, 3}));
        EXPECT_EQ(a.to_vector<double>(), (std::vector<double>{1, 2, 3}));
        flx::tensor &alias = a;
        a = alias;  // self-assignment keeps it
        EXPECT_EQ(a.numel(), 3);
    }
    EXPECT_EQ(flx_live_tensors(), base);
}

TEST_F(Cpp, TensorsAreSafeWithScopesInEveryOrder) {
    flx::context ctx = flx::context::cpu();
    const int64_t base = flx_live_tensors();
    flx::tensor outlives;
    {
        flx::scope s;  // the scope owns its own reference to everything made inside
        flx::tensor x = ctx.from_vector<double>({1, -2, 3}, {3});
        flx::tensor y = flx::relu(x) * 2.0;
        // A C result adopted while the scope is open: the scope keeps its reference, the wrapper
        // takes its own, and releasing the wrapper early is harmless.
        flx::tensor z = flx::tensor::wrap(flx_add_scalar(y.get(), 1.0));
        { flx::tensor early = flx::exp(z); }
        outlives = y + z;  // survives the scope's end
    }  // the wrappers release their references first, then the scope its own
    EXPECT_EQ(outlives.to_vector<double>(), (std::vector<double>{2 + 3, 0 + 1, 6 + 7}));
    {
        // Wrappers destroyed after the scope ended.
        flx::tensor late;
        {
            flx::scope s;
            late = ctx.ones({2}, FLX_F64) + 1.0;
            s.close();
            EXPECT_EQ(late.to_vector<double>(), (std::vector<double>{2, 2}));
        }
        // Nested scopes, and a tensor that crosses both.
        flx::scope outer;
        flx::tensor kept;
        {
            flx::scope inner;
            kept = ctx.full({2}, 4.0, FLX_F64);
        }
        outer.close();
        EXPECT_EQ(kept.to_vector<double>(), (std::vector<double>{4, 4}));
    }
    outlives = flx::tensor();
    EXPECT_EQ(flx_live_tensors(), base);
    // wrap() outside a scope takes over the C call's reference (no extra retain).
    flx_tensor *raw = flx_ones(ctx.get(), FLX_F32, 0, nullptr);
    { flx::tensor w = flx::tensor::wrap(raw); }
    EXPECT_EQ(flx_live_tensors(), base);
    // borrow() takes an extra reference and leaves the caller's.
    raw = flx_ones(ctx.get(), FLX_F32, 0, nullptr);
    { flx::tensor w = flx::tensor::borrow(raw); }
    EXPECT_EQ(flx_live_tensors(), base + 1);
    flx_release(raw);
    EXPECT_EQ(flx_live_tensors(), base);
    // release() hands the reference to the caller.
    flx::tensor r = ctx.zeros({1});
    raw = r.release();
    EXPECT_FALSE(r);
    flx_release(raw);
    EXPECT_EQ(flx_live_tensors(), base);
}

TEST_F(Cpp, OperatorsMatchFloat64References) {
    flx::context ctx = flx::context::cpu();
    const std::vector<double> av = {0.5, -1.25, 3.0, 7.5, -0.1, 2.0};
    const std::vector<double> bv = {2.0, 0.75, -4.0, 1.5, 0.3, -3.0};
    flx::tensor a = ctx.from_vector(av, {2, 3});
    flx::tensor b = ctx.from_vector(bv, {2, 3});
    flx::tensor row = ctx.from_vector<double>({1, 2, 3}, {3});  // broadcasts over rows
    flx::tensor e = -(a + b) * 3.0 - a / b + 2.0 / (b * b) - row + (1.5 - a) / 7.0;
    std::vector<double> got = e.to_vector<double>();
    ASSERT_EQ(e.shape(), (flx::dims{2, 3}));
    for (size_t i = 0; i < av.size(); i++) {
        const double x = av[i], y = bv[i], r = static_cast<double>(i % 3 + 1);
        const double want = -(x + y) * 3.0 - x / y + 2.0 / (y * y) - r + (1.5 - x) / 7.0;
        EXPECT_NEAR(got[i], want, 1e-14 * (1 + std::fabs(want))) << i;
    }
    // Division by a scalar is a true division, bit for bit x / 3 (not x * (1/3)).
    std::vector<double> q = (a / 3.0).to_vector<double>();
    for (size_t i = 0; i < av.size(); i++) EXPECT_EQ(q[i], av[i] / 3.0);
    // f32 stays f32 with scalars.
    flx::tensor f = ctx.from_vector<float>({1.f, 2.f}, {2});
    EXPECT_EQ((f * 0.5 + 1.0).dtype(), FLX_F32);
    EXPECT_EQ((f / 3.0).to_vector<float>(), (std::vector<float>{1.f / 3.f, 2.f / 3.f}));
    // Compound assignment, matmul, reductions.
    flx::tensor m = ctx.from_vector<double>({1, 2, 3, 4}, {2, 2});
    m += m;
    EXPECT_EQ(flx::matmul(m, m).to_vector<double>(), (std::vector<double>{28, 40, 60, 88}));
    EXPECT_EQ(m.sum({0}).to_vector<double>(), (std::vector<double>{8, 12}));
    EXPECT_EQ(m.sum().item(), 20.0);
    EXPECT_EQ(m.reshape({4}).transpose(0, 0).shape(), (flx::dims{4}));
}

TEST_F(Cpp, GradientsMatchClosedForms) {
    flx::context ctx = flx::context::cpu();
    const std::vector<double> xv = {0.5, -1.0, 2.0, 3.0};
    flx::tensor x = ctx.from_vector(xv, {4});
    x.set_requires_grad();
    EXPECT_FALSE(x.grad());  // none yet: an empty tensor, no error
    flx::tensor f = (flx::pow(x, 3.0) + flx::sin(x)).sum();
    f.backward();
    std::vector<double> g = x.grad().to_vector<double>();
    for (size_t i = 0; i < xv.size(); i++)
        EXPECT_NEAR(g[i], 3 * xv[i] * xv[i] + std::cos(xv[i]), 1e-13);
    // Second order through grad_of: d/dx sum(d f / dx) = 6 x - sin x.
    flx::tensor h = flx::grad_of({f}, {x}, /*create_graph*/ true)[0];
    std::vector<double> h2 = flx::grad_of({h.sum()}, {x})[0].to_vector<double>();
    for (size_t i = 0; i < xv.size(); i++) EXPECT_NEAR(h2[i], 6 * xv[i] - std::sin(xv[i]), 1e-13);
    x.zero_grad();
    EXPECT_FALSE(x.grad());
}

TEST_F(Cpp, ErrorsAreExceptionsWithStatusAndMessage) {
    flx::context ctx = flx::context::cpu();
    flx::tensor a = ctx.zeros({2, 3});
    flx::tensor b = ctx.zeros({4, 5});
    try {
        flx::tensor c = flx::matmul(a, b);
        FAIL() << "no exception";
    } catch (const flx::error &e) {
        EXPECT_EQ(e.status(), FLX_ERR_SHAPE);
        EXPECT_NE(std::string(e.what()).find("flx_matmul"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("FLX_ERR_SHAPE"), std::string::npos) << e.what();
    }
    EXPECT_EQ(flx_last_status(), FLX_OK) << "the exception clears the C error state";
    // The next error carries its own message, not the first one's.
    try {
        (void)(a + ctx.zeros({4, 1, 7}));
        FAIL() << "no exception";
    } catch (const flx::error &e) {
        EXPECT_EQ(e.status(), FLX_ERR_SHAPE) << e.what();
        EXPECT_NE(std::string(e.what()).find("flx_add"), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find("flx_matmul"), std::string::npos) << e.what();
    }
    EXPECT_THROW((void)flx::exp(flx::tensor()), flx::error);
    EXPECT_THROW((void)flx::tensor().numel(), flx::error);
    EXPECT_THROW((void)(flx::tensor() / 2.0), flx::error);
    EXPECT_THROW((void)ctx.from_vector<double>({1, 2, 3}, {2}), flx::error);
    EXPECT_THROW((void)a.item(), flx::error);  // 6 elements
    EXPECT_THROW(flx::context(flx_device_cuda(99)), flx::error);
    try {
        (void)a.dim(5);
        FAIL() << "no exception";
    } catch (const flx::error &e) {
        EXPECT_EQ(e.status(), FLX_ERR_INVALID_ARGUMENT);
    }
    flx_clear_error();
    // A context cannot close while its tensors live; it can once they are gone.
    flx::context other = flx::context::cpu();
    {
        flx::tensor t = other.ones({1});
        try {
            other.close();
            FAIL() << "no exception";
        } catch (const flx::error &e) {
            EXPECT_EQ(e.status(), FLX_ERR_STATE) << e.what();
        }
    }
    EXPECT_NO_THROW(other.close());
    EXPECT_EQ(other.get(), nullptr);
}

TEST_F(Cpp, DtypeConversionsOnTheWayInAndOut) {
    flx::context ctx = flx::context::cpu();
    flx::tensor t = ctx.from_vector<int32_t>({1, -2, 3}, {3}, FLX_F64);
    EXPECT_EQ(t.dtype(), FLX_F64);
    EXPECT_EQ(t.to_vector<double>(), (std::vector<double>{1, -2, 3}));
    flx::tensor f = ctx.from_vector<double>({2.7, -2.7, std::numeric_limits<double>::quiet_NaN()}, {3});
    EXPECT_EQ(f.to_vector<int32_t>(), (std::vector<int32_t>{2, -2, 0}));
    EXPECT_EQ(f.to_vector<uint8_t>(), (std::vector<uint8_t>{1, 1, 1}));
    EXPECT_EQ(flx::gt(f, ctx.scalar(0, FLX_F64)).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 0}));
}

TEST_F(Cpp, OptimizerPlanAndCheckpoint) {
    flx::context ctx = flx::context::cpu();
    const std::string path = temp_path("ck"), opath = temp_path("opt");
    {
        // Minimise sum((w - target)^2) / 2 by SGD: w <- w - lr (w - target).
        flx::tensor target = ctx.from_vector<double>({1, -1, 2}, {3});
        flx::tensor w = ctx.zeros({3}, FLX_F64);
        w.set_requires_grad();
        flx_optim_config cfg = flx_optim_defaults(FLX_OPTIM_SGD);
        cfg.lr = 0.25;
        flx::optimizer opt(ctx, FLX_OPTIM_SGD, {w}, cfg);
        EXPECT_EQ(opt.lr(), 0.25);
        std::vector<double> ref = {0, 0, 0};
        const std::vector<double> tv = {1, -1, 2};
        for (int s = 0; s < 3; s++) {
            flx::scope step;
            flx::tensor d = w - target;
            (flx::square(d).sum() * 0.5).backward();
            opt.step();
            opt.zero_grad();
            for (int i = 0; i < 3; i++) ref[static_cast<size_t>(i)] -= 0.25 * (ref[static_cast<size_t>(i)] - tv[static_cast<size_t>(i)]);
        }
        EXPECT_EQ(w.to_vector<double>(), ref);
        // The same update as a plan (no flx_backward needed first): the input is the target.
        flx::tensor tin = ctx.from_vector<double>({1, -1, 2}, {3});
        flx::tensor loss = flx::square(w - tin).sum() * 0.5;
        flx::plan_options po;
        po.optimizers.push_back(&opt);
        flx::plan p({loss}, {tin}, po);
        p.run();
        for (size_t i = 0; i < 3; i++) ref[i] -= 0.25 * (ref[i] - tv[i]);
        EXPECT_EQ(w.to_vector<double>(), ref);
        p.set_input(0, std::vector<double>{0, 0, 0});
        p.run();
        for (size_t i = 0; i < 3; i++) ref[i] -= 0.25 * ref[i];
        EXPECT_EQ(w.to_vector<double>(), ref);
        EXPECT_EQ(p.info().runs, 2u);
        EXPECT_EQ(p.output(0).numel(), 1);
        EXPECT_THROW(p.set_input(0, std::vector<double>{1}), flx::error);
        // Optimiser state and a checkpoint round trip.
        opt.save(opath);
        flx::save_safetensors(path, {{"w", w}, {"target", target}}, {{"epoch", "3"}});
        flx::checkpoint ck(ctx, path);
        EXPECT_EQ(ck.size(), 2);
        EXPECT_EQ(ck["w"].to_vector<double>(), ref);
        EXPECT_EQ(ck.metadata("epoch"), "3");
        EXPECT_EQ(ck.metadata("missing", "none"), "none");
        EXPECT_THROW((void)ck["nope"], flx::error);
        EXPECT_THROW((void)ck.name(7), flx::error);
        flx::optimizer again(ctx, FLX_OPTIM_SGD, {w});
        again.load(opath);
        EXPECT_EQ(again.lr(), 0.25);
        EXPECT_EQ(again.hparam(FLX_HP_STEP), 5.0);
        flx::optimizer adam(ctx, FLX_OPTIM_ADAM, {w});
        try {
            adam.load(opath);
            FAIL() << "no exception";
        } catch (const flx::error &e) {
            EXPECT_EQ(e.status(), FLX_ERR_STATE) << e.what();
        }
        EXPECT_THROW(flx::checkpoint(ctx, "/nonexistent/x.safetensors"), flx::error);
    }
    std::remove(path.c_str());
    std::remove(opath.c_str());
}

static_assert(!std::is_copy_constructible<flx::optimizer>::value && !std::is_copy_assignable<flx::plan>::value &&
                  !std::is_copy_constructible<flx::checkpoint>::value,
              "C-object owners are move-only");
static_assert(std::is_nothrow_move_constructible<flx::optimizer>::value &&
                  std::is_nothrow_move_assignable<flx::plan>::value &&
                  std::is_nothrow_move_assignable<flx::checkpoint>::value,
              "moving an owner cannot throw");

// Moving transfers the one C handle (the moved-from owner is empty and frees nothing); move
// assignment frees the target's previous object (the sanitizer build catches a double free).
TEST_F(Cpp, OwnersMoveTheirHandle) {
    flx::context ctx = flx::context::cpu();
    const std::string path = temp_path("mv");
    {
        flx::tensor w = ctx.zeros({2}, FLX_F64);
        w.set_requires_grad();
        flx_optim_config cfg = flx_optim_defaults(FLX_OPTIM_SGD);
        cfg.lr = 0.5;
        flx::optimizer a(ctx, FLX_OPTIM_SGD, {w}, cfg);
        flx_optim *raw = a.get();
        flx::optimizer b(std::move(a));
        EXPECT_EQ(b.get(), raw);
        EXPECT_EQ(a.get(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is the point
        flx::optimizer c(ctx, FLX_OPTIM_ADAM, {w});
        c = std::move(b);
        EXPECT_EQ(c.get(), raw);
        EXPECT_EQ(c.lr(), 0.5);

        flx::tensor x = ctx.from_vector<double>({1, 2}, {2});
        flx::tensor loss = (w * x).sum();
        flx::plan_options po;
        po.optimizers.push_back(&c);
        flx::plan p({loss}, {x}, po);
        flx_plan *praw = p.get();
        flx::plan q(std::move(p));
        EXPECT_EQ(q.get(), praw);
        EXPECT_EQ(p.get(), nullptr);  // NOLINT(bugprone-use-after-move)
        q.run();  // w <- w - 0.5 x
        EXPECT_EQ(w.to_vector<double>(), (std::vector<double>{-0.5, -1.0}));

        flx::save_safetensors(path, {{"w", w}});
        flx::checkpoint ck(ctx, path), other(ctx, path);
        flx_checkpoint *craw = ck.get();
        other = std::move(ck);
        EXPECT_EQ(other.get(), craw);
        EXPECT_EQ(ck.get(), nullptr);  // NOLINT(bugprone-use-after-move)
        EXPECT_EQ(other["w"].to_vector<double>(), (std::vector<double>{-0.5, -1.0}));
    }
    std::remove(path.c_str());
}

TEST_F(Cpp, NoGradGuard) {
    flx::context ctx = flx::context::cpu();
    flx::tensor x = ctx.ones({2}, FLX_F64);
    x.set_requires_grad();
    {
        flx::no_grad ng;
        EXPECT_FALSE(flx_grad_enabled());
        EXPECT_FALSE((x * 2.0).requires_grad());
    }
    EXPECT_TRUE(flx_grad_enabled());
    EXPECT_TRUE((x * 2.0).requires_grad());
}

}  // namespace
