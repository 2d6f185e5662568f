// test_regressions.cc — bugs found in review, each pinned by a test that failed before its fix.
#include <cmath>
#include <limits>

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

// flx_pow's partials at a = 0 were 0 * inf = NaN; PyTorch's limits: d/da = 0 where b == 0,
// d/db = 0 where a == 0 and b >= 0. Values by hand: a^b = [1, 0, 8, 0], d/da = b a^(b-1) =
// [0, 2*0 = 0, 3*4 = 12, 0.5 * 0^-0.5 = inf], d/db = a^b ln a = [0, 0, 8 ln 2, 0].
TEST_F(Regression, PowGradientAtZeroBase) {
    flx_tensor *a = make(ctx, FLX_F64, {4}, {0, 0, 2, 0});
    flx_tensor *b = make(ctx, FLX_F64, {4}, {0, 2, 3, 0.5});
    need_grad({a, b});
    flx_tensor *y = flx_sum_all(flx_pow(a, b));
    flx_tensor *in[2] = {a, b}, *g[2] = {nullptr, nullptr};
    ASSERT_EQ(flx_grad_of(1, &y, nullptr, 2, in, false, g), FLX_OK) << flx_last_error();
    const double inf = std::numeric_limits<double>::infinity();
    EXPECT_TRUE(close(values(g[0]), {0, 0, 12, inf}, 1e-15, 1e-15));
    EXPECT_TRUE(close(values(g[1]), {0, 0, 8 * std::log(2.0), 0}, 1e-15, 1e-15));
    // away from 0 the rule is unchanged: finite differences agree
    flx_tensor *p = make(ctx, FLX_F64, {3}, {0.5, 1.5, 2.5});
    flx_tensor *q = make(ctx, FLX_F64, {3}, {-1.5, 0.0, 2.0});
    EXPECT_EQ(gradcheck([](const std::vector<flx_tensor *> &v) { return flx_pow(v[0], v[1]); }, {p, q}),
              FLX_OK) << flx_last_error();
}

// flx_arange with a count beyond int64 converted a huge double to int64 (undefined behaviour).
TEST_F(Regression, ArangeWithAnAstronomicalCountIsRejected) {
    EXPECT_TRUE(fails_with(flx_arange(ctx, FLX_F64, 0, 1e300, 1), FLX_ERR_INVALID_ARGUMENT,
                           "more than a tensor can hold"));
    EXPECT_TRUE(fails_with(flx_arange(ctx, FLX_F32, 0, 1, 1e-300), FLX_ERR_INVALID_ARGUMENT,
                           "flx_arange"));
    flx_clear_error();
}

// Float -> integer casts of NaN, infinities and out-of-range values were plain C casts on the
// CPU (undefined behaviour) and saturating conversions on the GPU. Both now truncate toward
// zero, saturate to the integer's range and map NaN to 0.
TEST_F(Regression, FloatToIntegerCastsSaturate) {
    const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
    std::vector<double> v = {nan, inf, -inf, 1e300, -1e300, 3e9, -3e9, 2.9, -2.9, 0.0};
    flx_tensor *x = make(ctx, FLX_F64, {(int64_t)v.size()}, v);
    const double i32max = 2147483647.0, i32min = -2147483648.0;
    const double i64max = 9223372036854775807.0, i64min = -9223372036854775808.0;
    EXPECT_TRUE(close(values(flx_cast(x, FLX_I32)),
                      {0, i32max, i32min, i32max, i32min, i32max, i32min, 2, -2, 0}, 0, 0));
    EXPECT_TRUE(close(values(flx_cast(x, FLX_I64)),
                      {0, i64max, i64min, i64max, i64min, 3e9, -3e9, 2, -2, 0}, 0, 0));
    flx_tensor *f = make(ctx, FLX_F32, {(int64_t)v.size()}, v);
    EXPECT_TRUE(close(values(flx_cast(f, FLX_I32)),
                      {0, i32max, i32min, i32max, i32min, i32max, i32min, 2, -2, 0}, 0, 0));
}

using RegressionCuda = CudaCpuTest;

TEST_F(RegressionCuda, FloatToIntegerCastsMatchCpu) {
    const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
    std::vector<double> v = {nan, inf, -inf, 1e300, -1e300, 3e9, -3e9, 2.9, -2.9, 0.0};
    for (flx_dtype src : {FLX_F32, FLX_F64})
        for (flx_dtype dst : {FLX_I32, FLX_I64, FLX_BOOL}) {
            flx_tensor *g = flx_cast(make(gpu, src, {(int64_t)v.size()}, v), dst);
            flx_tensor *c = flx_cast(make(cpu, src, {(int64_t)v.size()}, v), dst);
            EXPECT_TRUE(close(values(g), values(c), 0, 0)) << src << " -> " << dst;
        }
}

// The CPU matmul takes CBLAS dgemm when one was found; some BLAS skip multiplications by zero,
// which would turn 0 * inf into 0. A product large enough for the BLAS path keeps IEEE NaN:
// A[3][5] = inf and row 5 of B all zeros make row 3 of A B NaN, while row 2 stays finite.
TEST_F(Regression, CpuMatmulKeepsZeroTimesInfinityNaN) {
    const int64_t n = 40;
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        std::vector<double> a = rand_values(n * n, 1), b = rand_values(n * n, 2);
        a[3 * n + 5] = std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < n; j++) b[5 * n + j] = 0.0;
        std::vector<double> c = values(flx_matmul(make(ctx, dt, {n, n}, a), make(ctx, dt, {n, n}, b)));
        for (int64_t j = 0; j < n; j++) {
            EXPECT_TRUE(std::isnan(c[3 * n + j])) << j;
            EXPECT_TRUE(std::isfinite(c[2 * n + j])) << j;
        }
        // the finite rows agree with a float64 reference
        for (int64_t j = 0; j < n; j++) {
            double r = 0;
            for (int64_t k = 0; k < n; k++) {
                double x = dt == FLX_F32 ? (double)(float)a[2 * n + k] : a[2 * n + k];
                double y = dt == FLX_F32 ? (double)(float)b[k * n + j] : b[k * n + j];
                r += x * y;
            }
            EXPECT_NEAR(c[2 * n + j], r, dt == FLX_F32 ? 1e-5 : 1e-12);
        }
    }
}
