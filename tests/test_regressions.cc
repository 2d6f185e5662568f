// test_regressions.cc — bugs found in review, each pinned by a test that failed before its fix.
#include <cmath>

#include "testing.h"

using namespace flxt;

class Regression : public CpuTest {};

// A leftover error on the thread (from unrelated code) must not make a rule whose derivative is
// zero (sign, step) look like a failure.
TEST_F(Regression, StaleErrorDoesNotBreakBackward) {
    flx_tensor *x = make(ctx, FLX_F64, {3}, {-1, 2, 3});
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    flx_tensor *loss = flx_sum_all(flx_mul(x, flx_sign(x)));
    EXPECT_EQ(flx_sqrt(nullptr), nullptr);  // leaves an error behind
    ASSERT_NE(flx_last_status(), FLX_OK);
    EXPECT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(x)), {-1, 1, 1}));
    flx_clear_error();
}

// A custom VJP that reads its input's data runs the evaluator in the middle of autodiff; the
// driver's bookkeeping must survive it (it used to drop the cotangent silently).
static flx_status twice_fwd(int32_t, flx_tensor *const *in, flx_tensor **out, void *) {
    *out = flx_mul_scalar(in[0], 2.0);
    return *out ? FLX_OK : flx_last_status();
}
static flx_status twice_vjp_reading(int32_t, flx_tensor *const *in, flx_tensor *, flx_tensor *g,
                                    flx_tensor **gi, void *) {
    double tmp[3];
    flx_status s = flx_to_host(in[0], tmp, sizeof tmp);  // e.g. a rule that inspects data
    if (s != FLX_OK) return s;
    gi[0] = flx_mul_scalar(g, 2.0);
    return gi[0] ? FLX_OK : flx_last_status();
}

TEST_F(Regression, CustomVjpThatReadsDataKeepsGradients) {
    flx_tensor *x = make(ctx, FLX_F64, {3}, {0, 1, 2});
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    flx_tensor *h = flx_exp(x);  // an intermediate the evaluator frees and recomputes
    flx_tensor *y = nullptr;
    ASSERT_EQ(flx_custom_fn(1, &h, twice_fwd, twice_vjp_reading, nullptr, nullptr, nullptr, &y),
              FLX_OK)
        << flx_last_error();
    ASSERT_EQ(flx_backward(flx_sum_all(y)), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(x)), {2, 2 * std::exp(1.0), 2 * std::exp(2.0)}, 1e-14, 1e-14));
}

// An optimiser step between plan runs updates the parameter in place; the plan must see the new
// values instead of failing because it holds the parameter's buffer.
TEST_F(Regression, OptimiserStepBetweenPlanRuns) {
    flx_tensor *w = make(ctx, FLX_F64, {3}, {1, 2, 3});
    flx_tensor *x = make(ctx, FLX_F64, {3}, {1, 1, 1});
    ASSERT_EQ(flx_set_requires_grad(w, true), FLX_OK);
    flx_optim_config cfg = flx_optim_defaults(FLX_OPTIM_SGD);
    cfg.lr = 0.5;
    flx_optim *opt = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &w, &cfg);
    ASSERT_NE(opt, nullptr) << flx_last_error();
    flx_tensor *y = flx_sum_all(flx_mul(w, x));
    flx_plan *plan = flx_plan_compile(1, &y, 1, &x, nullptr);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_plan_output(plan, 0)), {6}));
    ASSERT_EQ(flx_backward(flx_sum_all(flx_mul(w, x))), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_optim_step(opt), FLX_OK) << flx_last_error();  // w -= 0.5 * 1
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_plan_output(plan, 0)), {4.5}));
    flx_plan_destroy(plan);
    flx_optim_destroy(opt);
}
