// test_core.cc — creation, elementwise unary/binary ops, autodiff, forward mode, scopes, the
// evaluator's memory planning and error handling, all on the CPU reference backend.
#include <cmath>
#include <cstring>

#include "testing.h"
#include "../kernels/philox.h"  // header-only: the stream the fills draw from

using namespace flxt;

namespace {

using D1 = double (*)(double);

struct UnaryCase {
    const char *name;
    std::function<flx_tensor *(flx_tensor *)> op;
    std::function<double(double)> ref;
    double lo, hi;       // input domain for values and derivatives
    bool smooth = true;  // false: kinks at 0, avoid them in finite differences
};

double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
double sigmoid_ref(double x) { return 1 / (1 + std::exp(-x)); }

std::vector<UnaryCase> unary_cases() {
    return {
        {"neg", flx_neg, [](double x) { return -x; }, -2, 2},
        {"abs", flx_abs, [](double x) { return std::fabs(x); }, -2, 2, false},
        {"square", flx_square, [](double x) { return x * x; }, -2, 2},
        {"sqrt", flx_sqrt, [](double x) { return std::sqrt(x); }, 0.2, 3},
        {"rsqrt", flx_rsqrt, [](double x) { return 1 / std::sqrt(x); }, 0.2, 3},
        {"reciprocal", flx_reciprocal, [](double x) { return 1 / x; }, 0.3, 3},
        {"exp", flx_exp, [](double x) { return std::exp(x); }, -2, 2},
        {"log", flx_log, [](double x) { return std::log(x); }, 0.2, 3},
        {"log1p", flx_log1p, [](double x) { return std::log1p(x); }, -0.5, 3},
        {"sin", flx_sin, [](double x) { return std::sin(x); }, -3, 3},
        {"cos", flx_cos, [](double x) { return std::cos(x); }, -3, 3},
        {"tanh", flx_tanh, [](double x) { return std::tanh(x); }, -2, 2},
        {"cosh", flx_cosh, [](double x) { return std::cosh(x); }, -2, 2},
        {"sinh", flx_sinh, [](double x) { return std::sinh(x); }, -2, 2},
        {"erf", flx_erf, [](double x) { return std::erf(x); }, -2, 2},
        {"sigmoid", flx_sigmoid, sigmoid_ref, -4, 4},
        {"relu", flx_relu, [](double x) { return x > 0 ? x : 0; }, -2, 2, false},
        {"leaky_relu", [](flx_tensor *x) { return flx_leaky_relu(x, 0.1); },
         [](double x) { return x > 0 ? x : 0.1 * x; }, -2, 2, false},
        {"elu", [](flx_tensor *x) { return flx_elu(x, 0.7); },
         [](double x) { return x > 0 ? x : 0.7 * (std::exp(x) - 1); }, -2, 2, false},
        {"gelu", flx_gelu, gelu_ref, -3, 3},
        {"softplus", flx_softplus, [](double x) { return std::log(1 + std::exp(x)); }, -4, 4},
        {"pow_scalar", [](flx_tensor *x) { return flx_pow_scalar(x, 2.5); },
         [](double x) { return std::pow(x, 2.5); }, 0.2, 2},
        {"clamp", [](flx_tensor *x) { return flx_clamp(x, -0.5, 0.7); },
         [](double x) { return std::min(0.7, std::max(-0.5, x)); }, -2, 2, false},
        {"affine", [](flx_tensor *x) { return flx_affine(x, -1.5, 0.25); },
         [](double x) { return -1.5 * x + 0.25; }, -2, 2},
    };
}

// Inputs in [lo, hi) kept away from 0 (and the clamp bounds) for functions with kinks.
std::vector<double> domain_values(const UnaryCase &c, size_t n, uint64_t seed) {
    std::vector<double> v = rand_values(n, seed, c.lo, c.hi);
    if (!c.smooth)
        for (double &x : v)
            for (double k : {0.0, -0.5, 0.7})
                if (std::fabs(x - k) < 0.05) x = k + 0.1;
    return v;
}

}  // namespace

class Core : public CpuTest {};

// ---- creation ---------------------------------------------------------------------------------
TEST_F(Core, CreationValues) {
    Shape s{2, 3};
    EXPECT_TRUE(close(values(flx_zeros(ctx, FLX_F32, 2, s.data())), std::vector<double>(6, 0.0)));
    EXPECT_TRUE(close(values(flx_ones(ctx, FLX_I64, 2, s.data())), std::vector<double>(6, 1.0)));
    EXPECT_TRUE(close(values(flx_full(ctx, FLX_F64, 2, s.data(), -2.5)), std::vector<double>(6, -2.5)));
    flx_tensor *sc = flx_scalar(ctx, FLX_F64, 3.25);
    EXPECT_EQ(flx_ndim(sc), 0);
    EXPECT_TRUE(close(values(sc), {3.25}));
    EXPECT_TRUE(close(values(flx_eye(ctx, FLX_F32, 2, 3)), {1, 0, 0, 0, 1, 0}));
    EXPECT_TRUE(close(values(flx_arange(ctx, FLX_F64, 1, 2, 0.25)), {1, 1.25, 1.5, 1.75}));
    EXPECT_TRUE(close(values(flx_arange(ctx, FLX_I32, 5, 0, -2)), {5, 3, 1}));
    EXPECT_EQ(flx_numel(flx_arange(ctx, FLX_F32, 0, 0, 1)), 0);
    Shape e{0, 4};
    EXPECT_EQ(values(flx_zeros(ctx, FLX_F32, 2, e.data())).size(), 0u);
}

TEST_F(Core, FromHostRoundTripEveryDtype) {
    Shape s{3};
    for (flx_dtype dt : {FLX_F32, FLX_F64, FLX_I32, FLX_I64, FLX_BOOL}) {
        std::vector<double> v = dt == FLX_BOOL ? std::vector<double>{1, 0, 1} : std::vector<double>{-3, 0, 7};
        EXPECT_TRUE(close(values(make(ctx, dt, s, v)), v)) << flx_dtype_name(dt);
    }
}

TEST_F(Core, RandomIsSeededAndDistributed) {
    Shape s{200000};
    std::vector<double> u = values(flx_uniform(ctx, FLX_F64, 1, s.data(), -1, 3, 42));
    std::vector<double> u2 = values(flx_uniform(ctx, FLX_F64, 1, s.data(), -1, 3, 42));
    std::vector<double> u3 = values(flx_uniform(ctx, FLX_F64, 1, s.data(), -1, 3, 43));
    EXPECT_EQ(u, u2);
    EXPECT_NE(u, u3);
    double mean = 0, lo = 1e9, hi = -1e9;
    for (double x : u) {
        mean += x / (double)u.size();
        lo = std::min(lo, x);
        hi = std::max(hi, x);
    }
    EXPECT_GE(lo, -1.0);
    EXPECT_LT(hi, 3.0);
    EXPECT_NEAR(mean, 1.0, 0.02);  // 4/sqrt(12)/sqrt(2e5) ~ 0.0026 standard error
    std::vector<double> z = values(flx_normal(ctx, FLX_F32, 1, s.data(), 2.0, 0.5, 9));
    double m = 0, v = 0;
    for (double x : z) m += x / (double)z.size();
    for (double x : z) v += (x - m) * (x - m) / (double)z.size();
    EXPECT_NEAR(m, 2.0, 0.01);
    EXPECT_NEAR(std::sqrt(v), 0.5, 0.01);
    // f32 and f64 uniforms of one seed agree to f32 rounding (same counter stream)
    std::vector<double> a = values(flx_uniform(ctx, FLX_F32, 1, s.data(), 0, 1, 5));
    std::vector<double> b = values(flx_uniform(ctx, FLX_F64, 1, s.data(), 0, 1, 5));
    EXPECT_TRUE(close(a, b, 1e-6, 0));
}

TEST_F(Core, UniformF32StaysBelowHiAtTheLargestDraw) {
    // Seed 39075 draws the largest 24-bit uniform, u = 1 - 2^-24, at element 3 (checked below
    // on the Philox stream itself). Mapped to [2, 3), 2 + u = 3 - 2^-24 lies within half a
    // float spacing (2^-22 below 3) of 3, so a plain f32 rounding would give hi itself.
    const uint64_t seed = 39075;
    ASSERT_EQ(flx_philox4x32_10(0, 0, seed).v[3] >> 8, 0xFFFFFFu);
    ASSERT_EQ((float)(2.0 + (1.0 - std::ldexp(1.0, -24))), 3.0f);
    Shape s{4};
    std::vector<double> u = values(flx_uniform(ctx, FLX_F32, 1, s.data(), 2, 3, seed));
    ASSERT_EQ(u.size(), 4u);
    EXPECT_EQ(u[3], (double)std::nextafter(3.0f, 0.0f));  // the largest float below hi
    for (double x : u) {
        EXPECT_GE(x, 2.0);
        EXPECT_LT(x, 3.0);
    }
}

TEST_F(Core, CreationRejectsBadInput) {
    Shape s{2, -1};
    EXPECT_TRUE(fails_with(flx_zeros(nullptr, FLX_F32, 1, s.data()), FLX_ERR_INVALID_ARGUMENT, "ctx"));
    EXPECT_TRUE(fails_with(flx_zeros(ctx, FLX_F32, 2, s.data()), FLX_ERR_SHAPE, "negative"));
    EXPECT_TRUE(fails_with(flx_zeros(ctx, FLX_F32, 2, nullptr), FLX_ERR_SHAPE, nullptr));
    EXPECT_TRUE(fails_with(flx_zeros(ctx, FLX_F32, 9, s.data()), FLX_ERR_SHAPE, "rank"));
    EXPECT_TRUE(fails_with(flx_zeros(ctx, (flx_dtype)99, 1, s.data()), FLX_ERR_DTYPE, "dtype"));
    EXPECT_TRUE(fails_with(flx_arange(ctx, FLX_F32, 0, 1, 0), FLX_ERR_INVALID_ARGUMENT, "step"));
    EXPECT_TRUE(fails_with(flx_uniform(ctx, FLX_F32, 1, s.data(), 2, 1, 0), FLX_ERR_INVALID_ARGUMENT, "lo"));
    EXPECT_TRUE(fails_with(flx_randn(ctx, FLX_I32, 1, s.data(), 0), FLX_ERR_DTYPE, "f32"));
    EXPECT_TRUE(fails_with(flx_from_host(ctx, FLX_F32, 1, s.data(), nullptr), FLX_ERR_INVALID_ARGUMENT, "data"));
    EXPECT_TRUE(fails_with(flx_eye(ctx, FLX_F32, -1, 2), FLX_ERR_SHAPE, "eye"));
    flx_tensor *t = make(ctx, FLX_F32, {2}, {1, 2});
    float small[1];
    EXPECT_EQ(flx_to_host(t, small, sizeof small), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_to_host(nullptr, small, sizeof small), FLX_ERR_INVALID_ARGUMENT);
    double d;
    EXPECT_EQ(flx_item(t, &d), FLX_ERR_SHAPE);
    flx_clear_error();
}

TEST_F(Core, CastConverts) {
    flx_tensor *x = make(ctx, FLX_F64, {5}, {-1.7, -0.2, 0, 0.5, 2.9});
    EXPECT_TRUE(close(values(flx_cast(x, FLX_I32)), {-1, 0, 0, 0, 2}));
    EXPECT_TRUE(close(values(flx_cast(x, FLX_BOOL)), {1, 1, 0, 1, 1}));
    EXPECT_TRUE(close(values(flx_cast(flx_cast(x, FLX_F32), FLX_F64)), {-1.7, -0.2, 0, 0.5, 2.9}, 1e-6, 1e-6));
    flx_tensor *big = make(ctx, FLX_I64, {1}, {(double)(1ll << 40)});
    EXPECT_TRUE(close(values(flx_cast(big, FLX_F64)), {(double)(1ll << 40)}));
    EXPECT_TRUE(fails_with(flx_cast(x, FLX_DTYPE_COUNT), FLX_ERR_DTYPE, "invalid"));
    EXPECT_TRUE(gradcheck([](auto in) { return flx_cast(flx_cast(in[0], FLX_F32), FLX_F64); },
                          {make(ctx, FLX_F64, {3}, {0.5, 1, 2})}, 1e-3, 1e-4, 1e-3) == FLX_OK)
        << flx_last_error();
}

// ---- unary ------------------------------------------------------------------------------------
TEST_F(Core, UnaryValuesF64AndF32) {
    for (const UnaryCase &c : unary_cases()) {
        std::vector<double> xv = domain_values(c, 37, 3);
        std::vector<double> ref(xv.size());
        for (size_t i = 0; i < xv.size(); i++) ref[i] = c.ref(xv[i]);
        EXPECT_TRUE(close(values(c.op(make(ctx, FLX_F64, {37}, xv))), ref, 1e-14, 1e-13)) << c.name;
        std::vector<double> xf(xv.size()), reff(xv.size());
        for (size_t i = 0; i < xv.size(); i++) {
            xf[i] = (float)xv[i];
            reff[i] = c.ref(xf[i]);
        }
        EXPECT_TRUE(close(values(c.op(make(ctx, FLX_F32, {37}, xf))), reff, 1e-6, 1e-6)) << c.name;
    }
}

TEST_F(Core, UnaryGradientsJvpAndDotProduct) {
    for (const UnaryCase &c : unary_cases()) {
        flx_tensor *x = make(ctx, FLX_F64, {3, 4}, domain_values(c, 12, 5));
        Fn f = [&](auto in) { return c.op(in[0]); };
        EXPECT_EQ(gradcheck(f, {x}), FLX_OK) << c.name << ": " << flx_last_error();
        EXPECT_TRUE(jvp_check(f, {x})) << c.name;
    }
}

TEST_F(Core, UnaryStableAtExtremes) {
    flx_tensor *x = make(ctx, FLX_F32, {4}, {-1e4, -80, 80, 1e4});
    EXPECT_TRUE(close(values(flx_sigmoid(x)), {0, sigmoid_ref(-80), 1, 1}, 1e-30, 1e-6));
    EXPECT_TRUE(close(values(flx_softplus(x)), {0, std::log1p(std::exp(-80.0)), 80, 1e4}, 1e-30, 1e-6));
    flx_tensor *s = make(ctx, FLX_F64, {3}, {-2, 0, 3});
    EXPECT_TRUE(close(values(flx_sign(s)), {-1, 0, 1}));
}

TEST_F(Core, SecondAndThirdDerivatives) {
    // f = x^3 sin x: check f'' and f''' against closed forms through nested create_graph grads.
    flx_tensor *x = make(ctx, FLX_F64, {1}, {0.7});
    flx_set_requires_grad(x, true);
    flx_tensor *f = flx_sum_all(flx_mul(flx_pow_scalar(x, 3), flx_sin(x)));
    flx_tensor *g1, *g2, *g3;
    ASSERT_EQ(flx_grad_of(1, &f, nullptr, 1, &x, true, &g1), FLX_OK) << flx_last_error();
    flx_tensor *s1 = flx_sum_all(g1);
    ASSERT_EQ(flx_grad_of(1, &s1, nullptr, 1, &x, true, &g2), FLX_OK) << flx_last_error();
    flx_tensor *s2 = flx_sum_all(g2);
    ASSERT_EQ(flx_grad_of(1, &s2, nullptr, 1, &x, false, &g3), FLX_OK) << flx_last_error();
    double v = 0.7, s = std::sin(v), c = std::cos(v);
    double d1 = 3 * v * v * s + v * v * v * c;
    double d2 = 6 * v * s + 6 * v * v * c - v * v * v * s;
    double d3 = 6 * s + 18 * v * c - 9 * v * v * s - v * v * v * c;
    EXPECT_TRUE(close(values(g1), {d1}, 1e-12, 1e-12));
    EXPECT_TRUE(close(values(g2), {d2}, 1e-12, 1e-12));
    EXPECT_TRUE(close(values(g3), {d3}, 1e-12, 1e-12));
}

TEST_F(Core, UnaryRejectsBadInput) {
    EXPECT_TRUE(fails_with(flx_exp(nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    flx_tensor *i = make(ctx, FLX_I32, {2}, {1, 2});
    EXPECT_TRUE(fails_with(flx_exp(i), FLX_ERR_DTYPE, "i32"));
    flx_tensor *x = make(ctx, FLX_F32, {2}, {1, 2});
    EXPECT_TRUE(fails_with(flx_clamp(x, 1, 0), FLX_ERR_INVALID_ARGUMENT, "lo"));
    EXPECT_TRUE(fails_with(flx_pow_scalar(x, NAN), FLX_ERR_INVALID_ARGUMENT, "finite"));
    // a NULL in a chain keeps the first error
    flx_tensor *bad = flx_exp(i);
    EXPECT_EQ(flx_tanh(flx_sin(bad)), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DTYPE);
    EXPECT_NE(std::strstr(flx_last_error(), "i32"), nullptr) << flx_last_error();
    flx_clear_error();
}

// ---- binary -------------------------------------------------------------------------------------
struct BinaryCase {
    const char *name;
    flx_tensor *(*op)(flx_tensor *, flx_tensor *);
    std::function<double(double, double)> ref;
};

static std::vector<BinaryCase> binary_cases() {
    return {{"add", flx_add, [](double a, double b) { return a + b; }},
            {"sub", flx_sub, [](double a, double b) { return a - b; }},
            {"mul", flx_mul, [](double a, double b) { return a * b; }},
            {"div", flx_div, [](double a, double b) { return a / b; }},
            {"pow", flx_pow, [](double a, double b) { return std::pow(a, b); }},
            {"maximum", flx_maximum, [](double a, double b) { return a >= b ? a : b; }},
            {"minimum", flx_minimum, [](double a, double b) { return a <= b ? a : b; }}};
}

// Reference broadcast of a (2,1,3) and b (4,1) to (2,4,3).
static std::vector<double> bcast_ref(const std::vector<double> &a, const std::vector<double> &b,
                                     const std::function<double(double, double)> &f) {
    std::vector<double> out;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 3; k++) out.push_back(f(a[i * 3 + k], b[j]));
    return out;
}

TEST_F(Core, BinaryValuesWithBroadcasting) {
    std::vector<double> av = rand_values(6, 1, 0.5, 2), bv = rand_values(4, 2, 0.5, 2);
    for (const BinaryCase &c : binary_cases()) {
        flx_tensor *a = make(ctx, FLX_F64, {2, 1, 3}, av), *b = make(ctx, FLX_F64, {4, 1}, bv);
        flx_tensor *y = c.op(a, b);
        ASSERT_NE(y, nullptr) << flx_last_error();
        EXPECT_EQ(shape_of(y), (Shape{2, 4, 3})) << c.name;
        EXPECT_TRUE(close(values(y), bcast_ref(av, bv, c.ref), 1e-14, 1e-14)) << c.name;
    }
    // 0-d with anything, and empty broadcasting
    flx_tensor *s = flx_scalar(ctx, FLX_F32, 2);
    EXPECT_TRUE(close(values(flx_mul(s, make(ctx, FLX_F32, {3}, {1, 2, 3}))), {2, 4, 6}));
    Shape e{0, 3};
    flx_tensor *empty = flx_zeros(ctx, FLX_F32, 2, e.data());
    EXPECT_EQ(shape_of(flx_add(empty, make(ctx, FLX_F32, {1, 3}, {1, 2, 3}))), (Shape{0, 3}));
}

TEST_F(Core, BinaryIntegerArithmeticAndComparisons) {
    flx_tensor *a = make(ctx, FLX_I64, {4}, {-3, 0, 5, 7}), *b = make(ctx, FLX_I64, {4}, {2, 0, 5, -1});
    EXPECT_TRUE(close(values(flx_add(a, b)), {-1, 0, 10, 6}));
    EXPECT_TRUE(close(values(flx_mul(a, b)), {-6, 0, 25, -7}));
    EXPECT_TRUE(close(values(flx_maximum(a, b)), {2, 0, 5, 7}));
    EXPECT_TRUE(close(values(flx_eq(a, b)), {0, 1, 1, 0}));
    EXPECT_TRUE(close(values(flx_ne(a, b)), {1, 0, 0, 1}));
    EXPECT_TRUE(close(values(flx_lt(a, b)), {1, 0, 0, 0}));
    EXPECT_TRUE(close(values(flx_le(a, b)), {1, 1, 1, 0}));
    EXPECT_TRUE(close(values(flx_gt(a, b)), {0, 0, 0, 1}));
    EXPECT_TRUE(close(values(flx_ge(a, b)), {0, 1, 1, 1}));
    EXPECT_EQ(flx_dtype_of(flx_lt(a, b)), FLX_BOOL);
    EXPECT_TRUE(fails_with(flx_div(a, b), FLX_ERR_DTYPE, "i64"));
    flx_tensor *m = make(ctx, FLX_BOOL, {2}, {1, 0});
    EXPECT_TRUE(fails_with(flx_add(m, m), FLX_ERR_DTYPE, "bool"));
}

TEST_F(Core, BinaryGradientsJvpAndDotProduct) {
    for (const BinaryCase &c : binary_cases()) {
        flx_tensor *a = make(ctx, FLX_F64, {2, 1, 3}, rand_values(6, 3, 0.5, 2));
        flx_tensor *b = make(ctx, FLX_F64, {4, 1}, rand_values(4, 4, 0.5, 2));
        Fn f = [&](auto in) { return c.op(in[0], in[1]); };
        EXPECT_EQ(gradcheck(f, {a, b}), FLX_OK) << c.name << ": " << flx_last_error();
        EXPECT_TRUE(jvp_check(f, {a, b})) << c.name;
    }
}

TEST_F(Core, MaximumTiesSendGradientToA) {
    flx_tensor *a = make(ctx, FLX_F64, {2}, {1, 2}), *b = make(ctx, FLX_F64, {2}, {1, 3});
    flx_set_requires_grad(a, true);
    flx_set_requires_grad(b, true);
    ASSERT_EQ(flx_backward(flx_sum_all(flx_maximum(a, b))), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(a)), {1, 0}));
    EXPECT_TRUE(close(values(flx_grad(b)), {0, 1}));
}

TEST_F(Core, WhereValuesAndGradients) {
    flx_tensor *c = make(ctx, FLX_BOOL, {3, 1}, {1, 0, 1});
    std::vector<double> av = rand_values(4, 8), bv = rand_values(3, 9);
    flx_tensor *a = make(ctx, FLX_F64, {4}, av), *b = make(ctx, FLX_F64, {3, 1}, bv);
    std::vector<double> ref;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) ref.push_back(i != 1 ? av[j] : bv[i]);
    EXPECT_TRUE(close(values(flx_where(c, a, b)), ref));
    Fn f = [&](auto in) { return flx_where(c, in[0], in[1]); };
    EXPECT_EQ(gradcheck(f, {a, b}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(f, {a, b}));
    EXPECT_TRUE(fails_with(flx_where(a, a, b), FLX_ERR_DTYPE, "bool"));
}

TEST_F(Core, BinaryRejectsBadInput) {
    flx_tensor *a = make(ctx, FLX_F32, {2, 3}, rand_values(6, 1));
    flx_tensor *b = make(ctx, FLX_F32, {4}, rand_values(4, 1));
    flx_tensor *d = make(ctx, FLX_F64, {2, 3}, rand_values(6, 1));
    EXPECT_TRUE(fails_with(flx_add(a, b), FLX_ERR_SHAPE, "(2, 3)"));
    EXPECT_EQ(flx_dtype_of(flx_add(a, d)), FLX_F64);  // promoted (test_hostile.cc has the rule)
    EXPECT_TRUE(fails_with(flx_add(a, nullptr), FLX_ERR_INVALID_ARGUMENT, "input 1"));
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *o = make(other, FLX_F32, {2, 3}, rand_values(6, 1));
    EXPECT_TRUE(fails_with(flx_add(a, o), FLX_ERR_DEVICE, "context"));
    flx_tensor *moved = flx_to_ctx(o, ctx);
    EXPECT_TRUE(close(values(flx_sub(a, moved)), values(flx_sub(a, a))));
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK) << flx_last_error();
}

// ---- autodiff --------------------------------------------------------------------------------------
TEST_F(Core, BackwardAccumulatesAndZeroGradForgets) {
    flx_tensor *x = make(ctx, FLX_F64, {3}, {1, 2, 3});
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    flx_tensor *loss = flx_sum_all(flx_mul(x, x));  // grad 2x
    ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(x)), {2, 4, 6}));
    ASSERT_EQ(flx_backward(loss), FLX_OK);
    EXPECT_TRUE(close(values(flx_grad(x)), {4, 8, 12}));
    double l;
    ASSERT_EQ(flx_item(loss, &l), FLX_OK);
    EXPECT_EQ(l, 14);
    flx_zero_grad(x);
    EXPECT_EQ(flx_grad(x), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_OK);
}

TEST_F(Core, BackwardErrors) {
    flx_tensor *x = make(ctx, FLX_F64, {3}, {1, 2, 3});
    EXPECT_EQ(flx_backward(flx_sum_all(x)), FLX_ERR_NOT_DIFFERENTIABLE);
    flx_set_requires_grad(x, true);
    EXPECT_EQ(flx_backward(flx_exp(x)), FLX_ERR_SHAPE);
    flx_clear_error();
    EXPECT_EQ(flx_backward(nullptr), FLX_ERR_INVALID_ARGUMENT);
    flx_tensor *i = make(ctx, FLX_I32, {1}, {1});
    EXPECT_EQ(flx_set_requires_grad(i, true), FLX_ERR_DTYPE);
    flx_tensor *g;
    flx_tensor *y = flx_sum_all(x);
    flx_tensor *z = make(ctx, FLX_F64, {1}, {1});
    EXPECT_EQ(flx_grad_of(1, &y, nullptr, 1, &z, false, &g), FLX_ERR_NOT_DIFFERENTIABLE);
    flx_clear_error();
}

TEST_F(Core, DetachAndNoGradStopGradients) {
    flx_tensor *x = make(ctx, FLX_F64, {2}, {1, 2});
    flx_set_requires_grad(x, true);
    flx_tensor *y = flx_add(flx_mul(x, flx_detach(x)), x);  // d/dx = detach(x) + 1
    ASSERT_EQ(flx_backward(flx_sum_all(y)), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(x)), {2, 3}));
    flx_no_grad_begin();
    EXPECT_FALSE(flx_grad_enabled());
    EXPECT_FALSE(flx_requires_grad(flx_mul(x, x)));
    flx_no_grad_end();
    EXPECT_TRUE(flx_requires_grad(flx_mul(x, x)));
}

TEST_F(Core, GradOfWithCotangentsAndUnreachedInputs) {
    flx_tensor *x = make(ctx, FLX_F64, {3}, {1, 2, 3}), *w = make(ctx, FLX_F64, {3}, {4, 5, 6});
    flx_set_requires_grad(x, true);
    flx_set_requires_grad(w, true);
    flx_tensor *y = flx_mul(x, x);
    flx_tensor *u = make(ctx, FLX_F64, {3}, {1, -1, 0.5});
    flx_tensor *ins[2] = {x, w}, *g[2];
    ASSERT_EQ(flx_grad_of(1, &y, &u, 2, ins, false, g), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(g[0]), {2, -4, 3}));
    EXPECT_TRUE(close(values(g[1]), {0, 0, 0}));
    EXPECT_FALSE(flx_requires_grad(g[0]));
}

TEST_F(Core, LogisticModelGradientMatchesHandDerivation) {
    // z = w.x + b, y = sigmoid(z), L = 1/2 (y - t)^2 + lambda/2 w.w
    std::vector<double> wv{0.3, -0.2, 0.5}, xv{1.0, 2.0, -1.5};
    double bv = 0.1, t = 1.0, lam = 0.01;
    flx_tensor *w = make(ctx, FLX_F64, {3}, wv), *x = make(ctx, FLX_F64, {3}, xv);
    flx_tensor *b = make(ctx, FLX_F64, {}, {bv});
    for (flx_tensor *p : {w, x, b}) flx_set_requires_grad(p, true);
    flx_tensor *z = flx_add(flx_sum_all(flx_mul(w, x)), b);
    flx_tensor *y = flx_sigmoid(z);
    flx_tensor *L = flx_add(flx_mul_scalar(flx_square(flx_add_scalar(y, -t)), 0.5),
                            flx_mul_scalar(flx_sum_all(flx_square(w)), lam / 2));
    ASSERT_EQ(flx_backward(L), FLX_OK) << flx_last_error();
    double zz = bv;
    for (int i = 0; i < 3; i++) zz += wv[i] * xv[i];
    double yy = sigmoid_ref(zz), dz = (yy - t) * yy * (1 - yy);
    std::vector<double> gw(3), gx(3);
    for (int i = 0; i < 3; i++) {
        gw[i] = dz * xv[i] + lam * wv[i];
        gx[i] = dz * wv[i];
    }
    EXPECT_TRUE(close(values(flx_grad(w)), gw, 1e-14, 1e-12));
    EXPECT_TRUE(close(values(flx_grad(x)), gx, 1e-14, 1e-12));
    EXPECT_TRUE(close(values(flx_grad(b)), {dz}, 1e-14, 1e-12));
    // forward mode along e_w0 gives dL/dw0
    flx_tensor *ins[3] = {w, x, b};
    flx_tensor *tans[3] = {make(ctx, FLX_F64, {3}, {1, 0, 0}), nullptr, nullptr};
    flx_tensor *dL;
    ASSERT_EQ(flx_jvp(3, ins, tans, 1, &L, &dL), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(dL), {gw[0]}, 1e-14, 1e-12));
}

TEST_F(Core, HessianVectorProductForwardOverReverse) {
    // f = sum(x^2 * exp(x)) has diagonal Hessian (2 + 4x + x^2) e^x
    std::vector<double> xv{-0.5, 0.2, 1.0}, uv{1, 2, -1};
    flx_tensor *x = make(ctx, FLX_F64, {3}, xv), *u = make(ctx, FLX_F64, {3}, uv);
    flx_set_requires_grad(x, true);
    flx_tensor *f = flx_sum_all(flx_mul(flx_square(x), flx_exp(x)));
    flx_tensor *g, *hu;
    ASSERT_EQ(flx_grad_of(1, &f, nullptr, 1, &x, true, &g), FLX_OK);
    ASSERT_EQ(flx_jvp(1, &x, &u, 1, &g, &hu), FLX_OK) << flx_last_error();
    std::vector<double> ref(3);
    for (int i = 0; i < 3; i++) ref[i] = (2 + 4 * xv[i] + xv[i] * xv[i]) * std::exp(xv[i]) * uv[i];
    EXPECT_TRUE(close(values(hu), ref, 1e-13, 1e-12));
    // reverse over reverse: grad of <grad f, u>
    flx_tensor *gu = flx_sum_all(flx_mul(g, u)), *hu2;
    ASSERT_EQ(flx_grad_of(1, &gu, nullptr, 1, &x, false, &hu2), FLX_OK);
    EXPECT_TRUE(close(values(hu2), ref, 1e-13, 1e-12));
}

TEST_F(Core, GradcheckDetectsAWrongGradient) {
    // A function whose gradient is right passes; the report names the worst entry otherwise.
    flx_tensor *x = make(ctx, FLX_F64, {3}, {0.1, 0.2, 0.3});
    flx_gradcheck_report rep;
    EXPECT_EQ(flx_gradcheck([](int32_t, flx_tensor *const *in, void *) { return flx_sin(in[0]); },
                            nullptr, 1, &x, 1e-6, 1e-8, 1e-6, 1, &rep),
              FLX_OK);
    EXPECT_LT(rep.max_abs_err, 1e-8);
    // detach hides the dependence from autodiff: numeric and analytic gradients now differ
    EXPECT_EQ(flx_gradcheck([](int32_t, flx_tensor *const *in, void *) { return flx_exp(flx_detach(in[0])); },
                            nullptr, 1, &x, 1e-6, 1e-8, 1e-6, 1, &rep),
              FLX_ERR_NUMERIC);
    EXPECT_NE(std::strstr(flx_last_error(), "entry"), nullptr);
    flx_tensor *f = make(ctx, FLX_F32, {1}, {1});
    EXPECT_EQ(flx_gradcheck([](int32_t, flx_tensor *const *in, void *) { return in[0]; }, nullptr, 1, &f,
                            1e-6, 1e-8, 1e-6, 1, nullptr),
              FLX_ERR_DTYPE);
    EXPECT_EQ(flx_gradcheck(nullptr, nullptr, 1, &x, 1e-6, 1e-8, 1e-6, 1, nullptr), FLX_ERR_INVALID_ARGUMENT);
    flx_clear_error();
}

// ---- evaluator, memory and scopes ----------------------------------------------------------------
TEST_F(Core, LongChainRunsInBoundedMemory) {
    const int n = 20000;
    Shape s{1024};
    flx_tensor *x = flx_full(ctx, FLX_F64, 1, s.data(), 0.0);
    flx_tensor *y = x;
    for (int i = 0; i < n; i++) y = flx_add_scalar(y, 1e-3);
    flx_ctx_reset_stats(ctx);
    std::vector<double> v = values(y);
    flx_ctx_stats st;
    flx_ctx_get_stats(ctx, &st);
    ASSERT_EQ(v.size(), 1024u);
    EXPECT_NEAR(v[0], n * 1e-3, 1e-9);
    EXPECT_EQ(st.nodes_executed, (uint64_t)n + 1);
    // last-use planning: at most three 8 KiB buffers live at once, not 20001
    EXPECT_LE(st.peak_bytes, 3u * 1024 * 8 + 4096);
}

TEST_F(Core, FreedIntermediateIsRecomputedWhenRead) {
    flx_tensor *x = make(ctx, FLX_F64, {2}, {1, 2});
    flx_tensor *h = flx_exp(x);
    flx_tensor *y = flx_sum_all(h);
    ASSERT_EQ(flx_eval(1, &y), FLX_OK);
    EXPECT_FALSE(flx_is_realized(h));  // freed after its last use
    EXPECT_TRUE(close(values(h), {std::exp(1.0), std::exp(2.0)}, 1e-15, 1e-15));
    EXPECT_TRUE(flx_is_realized(h));
}

TEST_F(Core, AssignUpdatesLeafAndRejectsStaleGraph) {
    flx_tensor *w = make(ctx, FLX_F64, {2}, {1, 2});
    flx_set_requires_grad(w, true);
    flx_tensor *y = flx_mul_scalar(w, 3);
    ASSERT_EQ(flx_assign(w, make(ctx, FLX_F64, {2}, {5, 6})), FLX_OK);
    EXPECT_TRUE(close(values(w), {5, 6}));
    EXPECT_TRUE(flx_requires_grad(w));
    EXPECT_EQ(flx_eval(1, &y), FLX_ERR_STATE);  // recorded before the assignment
    flx_clear_error();
    EXPECT_TRUE(close(values(flx_mul_scalar(w, 3)), {15, 18}));
    EXPECT_EQ(flx_assign(y, w), FLX_ERR_STATE);  // not a leaf
    EXPECT_EQ(flx_assign(w, make(ctx, FLX_F64, {3}, {1, 2, 3})), FLX_ERR_SHAPE);
    flx_clear_error();
}

TEST_F(Core, ScopesReleaseAllButKept) {
    int64_t before = flx_live_tensors();
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *a = make(ctx, FLX_F64, {2}, {1, 2});
    flx_tensor *b = flx_exp(flx_mul(a, a));
    ASSERT_EQ(flx_scope_end(1, &b), FLX_OK);
    // b lives on in the test's scope (with its graph), everything else went
    EXPECT_TRUE(close(values(b), {std::exp(1.0), std::exp(4.0)}, 1e-15, 1e-15));
    EXPECT_GT(flx_live_tensors(), before);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);   // closes the fixture's scope
    EXPECT_EQ(flx_live_tensors(), live_before);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_ERR_STATE);
    flx_clear_error();
    ASSERT_EQ(flx_scope_begin(), FLX_OK);  // reopen for TearDown
}

TEST_F(Core, ContextDestroyRefusesWhileTensorsLive) {
    flx_ctx *c2 = flx_ctx_create(flx_device_cpu());
    flx_tensor *t = flx_zeros(c2, FLX_F32, 0, nullptr);
    EXPECT_EQ(flx_ctx_destroy(c2), FLX_ERR_STATE);
    EXPECT_NE(std::strstr(flx_last_error(), "alive"), nullptr);
    flx_clear_error();
    ASSERT_EQ(flx_scope_end(1, &t), FLX_OK);  // hand t to the caller (outermost)
    flx_release(t);                           // the caller's reference
    EXPECT_EQ(flx_ctx_destroy(c2), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
}

TEST_F(Core, DeviceQueriesNeverFail) {
    EXPECT_GE(flx_cuda_device_count(), 0);
    if (flx_cuda_device_count() == 0) {
        EXPECT_EQ(flx_ctx_create(flx_device_cuda(0)), nullptr);
        EXPECT_TRUE(flx_last_status() == FLX_ERR_DEVICE || flx_last_status() == FLX_ERR_UNSUPPORTED);
        flx_clear_error();
    }
    EXPECT_EQ(flx_ctx_create(flx_device_cuda(-1)), nullptr);
    flx_clear_error();
    EXPECT_STREQ(flx_version(), "0.1.0");
    EXPECT_STREQ(flx_dtype_name(FLX_BF16), "bf16");
    EXPECT_EQ(flx_dtype_size(FLX_F64), 8u);
}

// ---- eager record and dispatch ------------------------------------------------------------------
// Small buffers go back to a per-context cache and are handed out again: a block must never be
// reused while a tensor (or a shared view of it) still reads it, and the statistics count the
// tensors' bytes, not the cache's.
TEST_F(Core, EagerLoopReusesBuffersWithoutMixingValues) {
    flx_ctx_stats st0;
    ASSERT_EQ(flx_ctx_get_stats(ctx, &st0), FLX_OK);
    flx_tensor *acc = make(ctx, FLX_F64, {3}, {0, 0, 0});
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    std::vector<flx_tensor *> kept;  // every 7th result stays alive while the loop goes on
    for (int i = 0; i < 200; i++) {
        flx_tensor *step = make(ctx, FLX_F64, {3}, {(double)i, 2.0 * i, -1.0 * i});
        flx_tensor *y = flx_add(acc, step);
        ASSERT_EQ(flx_eval(1, &y), FLX_OK) << flx_last_error();
        if (i % 7 == 0) kept.push_back(flx_reshape(y, 2, Shape{1, 3}.data()));  // shares y's block
    }
    for (size_t k = 0; k < kept.size(); k++) {
        double i = 7.0 * (double)k;
        EXPECT_TRUE(close(values(kept[k]), {i, 2 * i, -i})) << "result " << k;
    }
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    flx_ctx_stats st;
    ASSERT_EQ(flx_ctx_get_stats(ctx, &st), FLX_OK);
    EXPECT_EQ(st.bytes_in_use, st0.bytes_in_use + 3 * sizeof(double));  // acc only
    EXPECT_EQ(st.allocs - st0.allocs, st.frees - st0.frees + 1);
}

// A lone node whose inputs hold data runs without a schedule: its checks must still hold.
TEST_F(Core, EagerLoneNodeStillRejectsAChangedInput) {
    flx_tensor *w = make(ctx, FLX_F32, {2}, {1, 2});
    flx_tensor *y = flx_add(w, w);
    ASSERT_EQ(flx_assign(w, make(ctx, FLX_F32, {2}, {3, 4})), FLX_OK);
    EXPECT_EQ(flx_eval(1, &y), FLX_ERR_STATE);
    EXPECT_NE(std::strstr(flx_last_error(), "changed in place"), nullptr) << flx_last_error();
    flx_clear_error();
    EXPECT_FALSE(flx_is_realized(y));
    EXPECT_TRUE(close(values(flx_add(w, w)), {6, 8}));
}
