// test_cuda.cc — the CUDA backend checked against the CPU reference through the public API.
//
// Every Cuda* test starts with FLX_REQUIRE_CUDA(g): without a usable GPU it is skipped with the
// reason (or fails when FLX_REQUIRE_GPU=1, so a GPU run cannot pass by skipping). Each check
// builds the same computation from the same host data on a CUDA context and on a CPU context
// and compares the results elementwise (NaNs must match).
//
// Tolerances: f64 results agree to ~1e-12 (the GPU's double math functions are within 1-2 ulp
// of glibc's); f32 unary/pow results are computed in f32 on the GPU but in double on the CPU,
// so they agree to a few f32 ulps; fills, casts, + - * /, compares, where, copies, index ops
// and reductions (double accumulation on both) agree exactly or to the last f32 rounding.
#include "testing.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

using namespace flxt;

namespace {

using Build = std::function<flx_tensor *(flx_ctx *)>;

size_t count(const Shape &s) {
    size_t n = 1;
    for (int64_t d : s) n *= (size_t)d;
    return n;
}

std::string shape_str(const Shape &s) {
    std::string r = "(";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + ")";
}

const char *dname(flx_dtype dt) { return flx_dtype_name(dt); }

// Runs b on the GPU and the CPU context inside a scope and compares shape, dtype and values.
::testing::AssertionResult same(flx_ctx *g, flx_ctx *c, const Build &b, double atol, double rtol) {
    ::testing::AssertionResult r = ::testing::AssertionSuccess();
    flx_scope_begin();
    flx_tensor *tc = b(c);
    if (!tc) {
        r = ::testing::AssertionFailure() << "CPU build failed: " << flx_last_error();
    } else {
        flx_tensor *tg = b(g);
        if (!tg) {
            r = ::testing::AssertionFailure() << "GPU build failed: " << flx_last_error();
        } else if (flxt::shape_of(tg) != flxt::shape_of(tc)) {
            r = ::testing::AssertionFailure() << "shape " << shape_str(flxt::shape_of(tg))
                                              << " != CPU " << shape_str(flxt::shape_of(tc));
        } else if (flx_dtype_of(tg) != flx_dtype_of(tc)) {
            r = ::testing::AssertionFailure() << "dtype " << dname(flx_dtype_of(tg)) << " != CPU "
                                              << dname(flx_dtype_of(tc));
        } else if (flx_ctx_of(tg) != g) {
            r = ::testing::AssertionFailure() << "GPU result lives on another context";
        } else {
            std::vector<double> vg = values(tg), vc = values(tc);
            r = close(vg, vc, atol, rtol);
        }
    }
    flx_clear_error();
    flx_scope_end(0, nullptr);
    return r;
}

// Tolerances by dtype for results computed with transcendental functions.
double tol_a(flx_dtype dt) { return dt == FLX_F32 ? 2e-6 : 1e-13; }
double tol_r(flx_dtype dt) { return dt == FLX_F32 ? 1e-5 : 1e-12; }

const std::vector<Shape> &shapes() {
    static const std::vector<Shape> s = {{},     {0},        {1},       {31},         {32},
                                         {33},   {1023},     {1025},    {65537},      {3, 0, 5},
                                         {7, 13}, {2, 3, 5, 7}, {5, 1, 33}, {3, 17, 1, 9}};
    return s;
}

const flx_dtype kFloat[] = {FLX_F32, FLX_F64};
const flx_dtype kAll[] = {FLX_F32, FLX_F64, FLX_I32, FLX_I64, FLX_BOOL};

// Values in [lo, hi) with special values mixed in at fixed positions when `special`.
std::vector<double> data(size_t n, uint64_t seed, double lo, double hi, bool special = false) {
    std::vector<double> v = rand_values(n, seed, lo, hi);
    if (special) {
        const double sp[] = {0.0, -0.0, INFINITY, -INFINITY, NAN, 1.0, -1.0};
        for (size_t i = 0; i < n && i < 7; i++) v[(i * 7919) % n] = sp[i];
    }
    return v;
}

using CudaTest = CudaCpuTest;

// ---- contexts, transfers, stats -------------------------------------------------------------
TEST_F(CudaTest, ContextAndDevice) {
    FLX_REQUIRE_CUDA(g);
    EXPECT_TRUE(flx_has_cuda());
    EXPECT_GE(flx_cuda_device_count(), 1);
    EXPECT_EQ(flx_ctx_device(g).type, FLX_DEVICE_CUDA);
    EXPECT_EQ(flx_ctx_synchronize(g), FLX_OK) << flx_last_error();
    // A device that does not exist is refused cleanly.
    flx_ctx *bad = flx_ctx_create(flx_device_cuda(flx_cuda_device_count() + 7));
    EXPECT_EQ(bad, nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DEVICE);
    flx_clear_error();
}

TEST_F(CudaTest, RoundTripAndStats) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kAll) {
        for (const Shape &s : shapes()) {
            std::vector<double> v = data(count(s), 3, -50, 50);
            if (dt == FLX_BOOL)
                for (double &x : v) x = x > 0;
            if (dt == FLX_I32 || dt == FLX_I64)
                for (double &x : v) x = std::trunc(x);
            // An exact round trip returns the stored f32 values, not the doubles they came from.
            if (dt == FLX_F32)
                for (double &x : v) x = (double)(float)x;
            flx_ctx_reset_stats(g);
            flx_tensor *t = make(g, dt, s, v);
            ASSERT_NE(t, nullptr) << flx_last_error();
            flx_ctx_stats st;
            ASSERT_EQ(flx_ctx_get_stats(g, &st), FLX_OK);
            if (count(s)) EXPECT_EQ(st.h2d_copies, 1u);
            std::vector<double> back = values(t);
            ASSERT_EQ(flx_ctx_get_stats(g, &st), FLX_OK);
            EXPECT_GE(st.d2h_copies, count(s) ? 1u : 0u);
            EXPECT_GE(st.syncs, 1u);
            EXPECT_TRUE(close(back, v, 0, 0)) << dname(dt) << " " << shape_str(s);
            // GPU -> CPU -> GPU through flx_to_ctx.
            flx_tensor *onc = flx_to_ctx(t, cpu);
            flx_tensor *ong = flx_to_ctx(onc, g);
            EXPECT_TRUE(close(values(onc), v, 0, 0));
            EXPECT_TRUE(close(values(ong), v, 0, 0));
        }
    }
}

// ---- creation ---------------------------------------------------------------------------------
TEST_F(CudaTest, CreationOps) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kAll) {
        for (const Shape &s : shapes()) {
            int nd = (int)s.size();
            const int64_t *sp = s.data();
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_zeros(c, dt, nd, sp); }, 0, 0))
                << "zeros " << dname(dt) << shape_str(s);
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_ones(c, dt, nd, sp); }, 0, 0))
                << "ones " << dname(dt) << shape_str(s);
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_full(c, dt, nd, sp, -3.75); }, 0, 0))
                << "full " << dname(dt) << shape_str(s);
        }
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_scalar(c, dt, 2.5); }, 0, 0))
            << "scalar " << dname(dt);
        for (int64_t n : {0, 1, 5, 33}) {
            for (int64_t m : {0, 1, 4, 33}) {
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_eye(c, dt, n, m); }, 0, 0))
                    << "eye " << dname(dt) << " " << n << "x" << m;
            }
        }
        if (dt == FLX_BOOL) continue;
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_arange(c, dt, 0, 1025, 1); }, 0, 0))
            << "arange " << dname(dt);
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_arange(c, dt, 10, -7, -3); }, 0, 0))
            << "arange down " << dname(dt);
        if (dt == FLX_F32 || dt == FLX_F64)
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_arange(c, dt, -1.5, 2.0, 0.1); }, 0, 0))
                << "arange frac " << dname(dt);
    }
}

TEST_F(CudaTest, RandomStreamsMatchCpu) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kFloat) {
        double rt = dt == FLX_F32 ? 1e-6 : 1e-12;
        for (const Shape &s : shapes()) {
            int nd = (int)s.size();
            const int64_t *sp = s.data();
            for (uint64_t seed : {0ull, 42ull, 0x123456789abcdefull}) {
                EXPECT_TRUE(same(g, cpu,
                                 [&](flx_ctx *c) { return flx_uniform(c, dt, nd, sp, -2, 3, seed); },
                                 1e-12, rt))
                    << "uniform " << dname(dt) << shape_str(s) << " seed " << seed;
                EXPECT_TRUE(same(g, cpu,
                                 [&](flx_ctx *c) { return flx_normal(c, dt, nd, sp, 0.5, 2, seed); },
                                 1e-12, rt))
                    << "normal " << dname(dt) << shape_str(s) << " seed " << seed;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_randn(c, dt, nd, sp, seed); },
                                 1e-12, rt))
                    << "randn " << dname(dt) << shape_str(s) << " seed " << seed;
            }
        }
        // Uniform never reaches hi, and spans the range.
        Shape big = {65537};
        flx_tensor *u = flx_uniform(g, dt, 1, big.data(), 1.0, 1.0000001, 9);
        std::vector<double> uv = values(u);
        ASSERT_EQ(uv.size(), 65537u);
        for (double x : uv) {
            ASSERT_GE(x, 1.0);
            ASSERT_LT(x, 1.0000001); /* f32: only 1 lies in range (the next float is above hi) */
        }
        // Seed 39075 draws u = 1 - 2^-24 at element 3; on [2, 3) that rounds to 3 in f32 unless
        // the kernel steps it below hi (the CPU reference does, Core.UniformF32StaysBelowHi...).
        Shape four = {4};
        std::vector<double> top = values(flx_uniform(g, dt, 1, four.data(), 2, 3, 39075));
        ASSERT_EQ(top.size(), 4u);
        EXPECT_LT(top[3], 3.0) << dname(dt);
        if (dt == FLX_F32) EXPECT_EQ(top[3], (double)std::nextafter(3.0f, 0.0f));
        flx_tensor *w = flx_uniform(g, dt, 1, big.data(), 0, 1, 11);
        std::vector<double> wv = values(w);
        double mn = 1, mx = 0, mean = 0;
        for (double x : wv) {
            mn = std::min(mn, x);
            mx = std::max(mx, x);
            mean += x / wv.size();
        }
        EXPECT_GE(mn, 0.0);
        EXPECT_LT(mx, 1.0);
        EXPECT_NEAR(mean, 0.5, 0.01);
    }
}

// ---- unary ----------------------------------------------------------------------------------
struct UnaryCase {
    const char *name;
    std::function<flx_tensor *(flx_tensor *)> f;
    double lo, hi; // input range
};

const std::vector<UnaryCase> &unary_cases() {
    static const std::vector<UnaryCase> c = {
        {"neg", flx_neg, -3, 3},
        {"abs", flx_abs, -3, 3},
        {"sign", flx_sign, -3, 3},
        {"square", flx_square, -3, 3},
        {"sqrt", flx_sqrt, 0.01, 9},
        {"rsqrt", flx_rsqrt, 0.01, 9},
        {"reciprocal", flx_reciprocal, 0.1, 4},
        {"exp", flx_exp, -10, 10},
        {"log", flx_log, 0.01, 100},
        {"log1p", flx_log1p, -0.9, 5},
        {"sin", flx_sin, -6, 6},
        {"cos", flx_cos, -6, 6},
        {"tanh", flx_tanh, -5, 5},
        {"cosh", flx_cosh, -5, 5},
        {"sinh", flx_sinh, -5, 5},
        {"erf", flx_erf, -3, 3},
        {"sigmoid", flx_sigmoid, -20, 20},
        {"relu", flx_relu, -3, 3},
        {"leaky_relu", [](flx_tensor *x) { return flx_leaky_relu(x, 0.1); }, -3, 3},
        {"elu", [](flx_tensor *x) { return flx_elu(x, 1.5); }, -3, 3},
        {"gelu", flx_gelu, -3, 3},
        {"softplus", flx_softplus, -30, 30},
        {"pow_scalar", [](flx_tensor *x) { return flx_pow_scalar(x, 2.5); }, 0.01, 3},
        {"pow_scalar_int", [](flx_tensor *x) { return flx_pow_scalar(x, 3.0); }, -3, 3},
        {"clamp", [](flx_tensor *x) { return flx_clamp(x, -0.5, 0.75); }, -3, 3},
        {"affine", [](flx_tensor *x) { return flx_affine(x, -1.25, 0.5); }, -3, 3},
        {"mul_scalar", [](flx_tensor *x) { return flx_mul_scalar(x, 3.5); }, -3, 3},
        {"add_scalar", [](flx_tensor *x) { return flx_add_scalar(x, -0.25); }, -3, 3},
    };
    return c;
}

TEST_F(CudaTest, UnaryOps) {
    FLX_REQUIRE_CUDA(g);
    for (const UnaryCase &uc : unary_cases()) {
        for (flx_dtype dt : kFloat) {
            for (const Shape &s : shapes()) {
                std::vector<double> v = data(count(s), 17, uc.lo, uc.hi);
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return uc.f(make(c, dt, s, v)); },
                                 tol_a(dt), tol_r(dt)))
                    << uc.name << " " << dname(dt) << shape_str(s);
            }
            // Special values (NaN, +-inf, +-0) on a 1025-element vector.
            Shape s = {1025};
            std::vector<double> v = data(1025, 23, uc.lo, uc.hi, true);
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return uc.f(make(c, dt, s, v)); }, tol_a(dt),
                             tol_r(dt)))
                << uc.name << " special values " << dname(dt);
        }
    }
}

TEST_F(CudaTest, UnaryMisalignedViewsAndChains) {
    FLX_REQUIRE_CUDA(g);
    // A slice makes a new (aligned) buffer, but odd lengths exercise the vector tail; a chain of
    // ops exercises buffer reuse through the pool.
    for (flx_dtype dt : kFloat) {
        for (int64_t n : {1, 3, 5, 7, 1021, 65539}) {
            Shape s = {n};
            std::vector<double> v = data((size_t)n, 5, -2, 2);
            EXPECT_TRUE(same(g, cpu,
                             [&](flx_ctx *c) {
                                 flx_tensor *x = make(c, dt, s, v);
                                 flx_tensor *y = flx_tanh(flx_affine(flx_exp(flx_neg(x)), 0.5, -1));
                                 return flx_sigmoid(flx_mul(y, flx_sin(x)));
                             },
                             tol_a(dt) * 4, tol_r(dt) * 4))
                << dname(dt) << " n " << n;
        }
    }
}

// ---- binary -----------------------------------------------------------------------------------
struct BinCase {
    const char *name;
    flx_tensor *(*f)(flx_tensor *, flx_tensor *);
    bool ints;    // also for i32/i64
    bool compare; // bool result
};

const std::vector<BinCase> &bin_cases() {
    static const std::vector<BinCase> c = {
        {"add", flx_add, true, false},       {"sub", flx_sub, true, false},
        {"mul", flx_mul, true, false},       {"div", flx_div, false, false},
        {"pow", flx_pow, false, false},      {"maximum", flx_maximum, true, false},
        {"minimum", flx_minimum, true, false}, {"eq", flx_eq, true, true},
        {"ne", flx_ne, true, true},          {"lt", flx_lt, true, true},
        {"le", flx_le, true, true},          {"gt", flx_gt, true, true},
        {"ge", flx_ge, true, true},
    };
    return c;
}

// Pairs of broadcast-compatible shapes.
const std::vector<std::pair<Shape, Shape>> &bin_shapes() {
    static const std::vector<std::pair<Shape, Shape>> p = {
        {{}, {}},
        {{0}, {0}},
        {{1}, {1}},
        {{33}, {33}},
        {{1025}, {1025}},
        {{65537}, {65537}},
        {{}, {1023}},
        {{1023}, {}},
        {{7, 13}, {13}},
        {{7, 1}, {1, 13}},
        {{2, 3, 1, 5}, {3, 4, 1}},
        {{0, 3}, {3}},
        {{5, 1, 33}, {5, 32, 1}},
        {{2, 1, 3, 1, 5}, {1, 4, 3, 6, 1}},
    };
    return p;
}

std::vector<double> int_data(size_t n, uint64_t seed, double lo, double hi) {
    std::vector<double> v = rand_values(n, seed, lo, hi);
    for (double &x : v) x = std::floor(x);
    return v;
}

TEST_F(CudaTest, BinaryOpsWithBroadcasting) {
    FLX_REQUIRE_CUDA(g);
    const flx_dtype dts[] = {FLX_F32, FLX_F64, FLX_I32, FLX_I64};
    for (const BinCase &bc : bin_cases()) {
        for (flx_dtype dt : dts) {
            bool is_int = dt == FLX_I32 || dt == FLX_I64;
            if (is_int && !bc.ints) continue;
            for (const auto &sh : bin_shapes()) {
                const Shape &sa = sh.first, &sb = sh.second;
                std::vector<double> a, b;
                if (is_int) {
                    a = int_data(count(sa), 1, -20, 20);
                    b = int_data(count(sb), 2, -20, 20);
                } else if (std::string(bc.name) == "pow") {
                    a = data(count(sa), 1, 0.1, 3);
                    b = data(count(sb), 2, -2, 2);
                } else {
                    a = data(count(sa), 1, -3, 3);
                    b = data(count(sb), 2, 0.5, 3);
                    // equal elements for the compares and ties
                    for (size_t i = 0; i < a.size() && i < b.size(); i += 3) b[i] = a[i];
                }
                double at = std::string(bc.name) == "pow" ? tol_a(dt) : 0;
                double rt = std::string(bc.name) == "pow" ? tol_r(dt) : 0;
                EXPECT_TRUE(same(g, cpu,
                                 [&](flx_ctx *c) { return bc.f(make(c, dt, sa, a), make(c, dt, sb, b)); },
                                 at, rt))
                    << bc.name << " " << dname(dt) << " " << shape_str(sa) << " with " << shape_str(sb);
            }
        }
        // NaN and infinities for float dtypes (maximum/minimum/compare semantics).
        for (flx_dtype dt : kFloat) {
            Shape s = {1025};
            std::vector<double> a = data(1025, 3, -3, 3, true), b = data(1025, 4, -3, 3, true);
            for (size_t i = 0; i < 1025; i += 5) b[i] = a[(i * 13) % 1025];
            bool pw = std::string(bc.name) == "pow";
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return bc.f(make(c, dt, s, a), make(c, dt, s, b)); },
                             pw ? tol_a(dt) : 0, pw ? tol_r(dt) : 0))
                << bc.name << " special values " << dname(dt);
        }
    }
}

TEST_F(CudaTest, IntegerArithmeticWraps) {
    FLX_REQUIRE_CUDA(g);
    Shape s = {6};
    std::vector<double> a = {2147483647.0, -2147483648.0, 65536, -7, 0, 123456};
    std::vector<double> b = {1, -1, 65536, 3, -5, -654321};
    for (flx_dtype dt : {FLX_I32, FLX_I64}) {
        for (auto f : {flx_add, flx_sub, flx_mul, flx_maximum, flx_minimum}) {
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return f(make(c, dt, s, a), make(c, dt, s, b)); }, 0, 0))
                << dname(dt);
        }
    }
}

TEST_F(CudaTest, Where) {
    FLX_REQUIRE_CUDA(g);
    const std::vector<std::array<Shape, 3>> cases = {
        {Shape{}, Shape{}, Shape{}},
        {Shape{1025}, Shape{1025}, Shape{1025}},
        {Shape{7, 13}, Shape{13}, Shape{7, 1}},
        {Shape{7, 1}, Shape{}, Shape{1, 13}},
        {Shape{0, 4}, Shape{4}, Shape{1}},
        {Shape{2, 1, 3}, Shape{5, 1}, Shape{1, 1, 1}},
        {Shape{65537}, Shape{}, Shape{65537}},
    };
    for (flx_dtype dt : kAll) {
        for (const auto &cs : cases) {
            std::vector<double> cv = int_data(count(cs[0]), 9, 0, 2);
            std::vector<double> av = int_data(count(cs[1]), 10, -50, 50);
            std::vector<double> bv = int_data(count(cs[2]), 11, -50, 50);
            if (dt == FLX_BOOL) {
                for (double &x : av) x = x > 0;
                for (double &x : bv) x = x > 0;
            }
            EXPECT_TRUE(same(g, cpu,
                             [&](flx_ctx *c) {
                                 return flx_where(make(c, FLX_BOOL, cs[0], cv), make(c, dt, cs[1], av),
                                                  make(c, dt, cs[2], bv));
                             },
                             0, 0))
                << "where " << dname(dt) << " " << shape_str(cs[0]) << shape_str(cs[1]) << shape_str(cs[2]);
        }
    }
}

TEST_F(CudaTest, CastAllPairs) {
    FLX_REQUIRE_CUDA(g);
    std::vector<double> fv = {0, -0.0, 1, -1, 0.5, -0.5, 1.9999, -1.9999, 2.5, 123456.75, -98765.25,
                              16777217, 3e9, -3e9, 1e-30, 7};
    std::vector<double> iv = {0, 1, -1, 2, 255, 256, -129, 2147483647.0, -2147483648.0, 123456789,
                              -5, 7, 9, 100000, 3, 42};
    std::vector<double> i64v = iv;
    i64v[8] = 9007199254740993.0; // above 2^53: goes through int64 for integer pairs
    i64v[9] = -4611686018427387904.0;
    for (flx_dtype from : kAll) {
        for (flx_dtype to : kAll) {
            std::vector<double> v;
            switch (from) {
            case FLX_F32:
            case FLX_F64: v = fv; break;
            case FLX_I32: v = iv; break;
            case FLX_I64: v = i64v; break;
            default: v = int_data(16, 5, 0, 2); break;
            }
            // float -> int of out-of-range values is undefined in C; keep them in range there.
            if ((from == FLX_F32 || from == FLX_F64) && to == FLX_I32)
                for (double &x : v)
                    if (std::fabs(x) > 2e9) x = 0;
            for (size_t n : {(size_t)16, (size_t)1025}) {
                std::vector<double> vv(n);
                for (size_t i = 0; i < n; i++) vv[i] = v[i % v.size()];
                Shape s = {(int64_t)n};
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_cast(make(c, from, s, vv), to); }, 0, 0))
                    << "cast " << dname(from) << " -> " << dname(to) << " n " << n;
            }
        }
    }
}

// ---- reductions ---------------------------------------------------------------------------------
struct RedCase {
    Shape shape;
    std::vector<int32_t> axes; // empty: all axes
};

const std::vector<RedCase> &red_cases() {
    static const std::vector<RedCase> c = {
        {{}, {}},
        {{1}, {}},
        {{31}, {0}},
        {{32}, {}},
        {{33}, {-1}},
        {{1023}, {}},
        {{1025}, {0}},
        {{65537}, {}},
        {{7, 13}, {0}},
        {{7, 13}, {1}},
        {{7, 13}, {0, 1}},
        {{2, 3, 5, 7}, {1, 3}},
        {{2, 3, 5, 7}, {0, 2}},
        {{2, 3, 5, 7}, {-1}},
        {{5, 1, 33}, {1}},
        {{3, 1025}, {1}},
        {{1025, 3}, {0}},
        {{1000, 1000}, {1}},   // many outputs, moderate extents: a warp per output
        {{2, 300000}, {1}},    // few outputs, long extents: a block per output
        {{20, 40000}, {0}},    // outer-axis reduction with many outputs: a thread per output
        {{3, 4, 40000}, {0, 2}},
        {{4, 0, 3}, {0}},      // nonempty reduced axes
    };
    return c;
}

TEST_F(CudaTest, Reductions) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kFloat) {
        double rt = dt == FLX_F32 ? 1e-6 : 1e-12, at = dt == FLX_F32 ? 1e-6 : 1e-12;
        for (const RedCase &rc : red_cases()) {
            std::vector<double> v = data(count(rc.shape), 31, -2, 2);
            int32_t na = (int32_t)rc.axes.size();
            const int32_t *ax = rc.axes.data();
            std::string what = std::string(dname(dt)) + " " + shape_str(rc.shape) + " axes " +
                               std::to_string(na);
            for (bool keep : {false, true}) {
                auto mk = [&](flx_ctx *c) { return make(c, dt, rc.shape, v); };
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_sum(mk(c), na, ax, keep); }, at, rt))
                    << "sum " << what;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_mean(mk(c), na, ax, keep); }, at, rt))
                    << "mean " << what;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_var(mk(c), na, ax, keep, 0); }, at, rt))
                    << "var " << what;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_var(mk(c), na, ax, keep, 1); }, at, rt))
                    << "var unbiased " << what;
                if (count(rc.shape) == 0) continue;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_max(mk(c), na, ax, keep); }, 0, 0))
                    << "max " << what;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_min(mk(c), na, ax, keep); }, 0, 0))
                    << "min " << what;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_logsumexp(mk(c), na, ax, keep); }, at, rt))
                    << "logsumexp " << what;
                if (rc.shape.size() >= 1) {
                    int32_t axis = rc.axes.empty() ? 0 : rc.axes[0];
                    EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_argmax(mk(c), axis, keep); }, 0, 0))
                        << "argmax axis " << axis << " " << what;
                }
            }
        }
        // sum of an empty tensor is 0
        Shape e = {0, 5};
        int32_t ax0 = 0;
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_sum(flx_zeros(c, dt, 2, e.data()), 1, &ax0, false); }, 0, 0));
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_sum_all(flx_zeros(c, dt, 2, e.data())); }, 0, 0));
    }
}

TEST_F(CudaTest, ReductionsNanTiesAndInfinities) {
    FLX_REQUIRE_CUDA(g);
    const std::vector<std::vector<double>> rows = {
        {1, 3, 3, 2},                      // tie: first max
        {1, NAN, 5, NAN},                  // NaN is the max, first NaN wins
        {-INFINITY, -INFINITY, -INFINITY, -INFINITY},
        {INFINITY, 1, INFINITY, 0},
        {-0.0, 0.0, -0.0, 0.0},
        {0.0, -0.0, 0.0, -0.0},
        {2, 2, 2, 2},
        {-1, -5, NAN, -7},
    };
    for (flx_dtype dt : kFloat) {
        for (int64_t reps : {1, 40, 3000}) { // short and long extents (other kernel mappings)
            for (const auto &r : rows) {
                std::vector<double> v;
                for (int64_t k = 0; k < reps; k++) v.insert(v.end(), r.begin(), r.end());
                Shape s = {2, (int64_t)v.size()};
                std::vector<double> v2 = v;
                v2.insert(v2.end(), v.begin(), v.end());
                int32_t ax = 1;
                auto mk = [&](flx_ctx *c) { return make(c, dt, s, v2); };
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_max(mk(c), 1, &ax, false); }, 0, 0))
                    << "max row " << r[0] << "," << r[1] << " reps " << reps;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_min(mk(c), 1, &ax, false); }, 0, 0))
                    << "min row " << r[0] << "," << r[1] << " reps " << reps;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_argmax(mk(c), 1, false); }, 0, 0))
                    << "argmax row " << r[0] << "," << r[1] << " reps " << reps;
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_logsumexp(mk(c), 1, &ax, false); },
                                 tol_a(dt), tol_r(dt)))
                    << "logsumexp row " << r[0] << "," << r[1] << " reps " << reps;
                // signbit of a max/min of zeros must match too
                flx_scope_begin();
                std::vector<double> gm = values(flx_max(make(g, dt, s, v2), 1, &ax, false));
                std::vector<double> cm = values(flx_max(make(cpu, dt, s, v2), 1, &ax, false));
                ASSERT_EQ(gm.size(), cm.size());
                for (size_t i = 0; i < gm.size(); i++)
                    EXPECT_EQ(std::signbit(gm[i]), std::signbit(cm[i]));
                flx_scope_end(0, nullptr);
            }
        }
    }
}

TEST_F(CudaTest, ReductionsAreDeterministic) {
    FLX_REQUIRE_CUDA(g);
    for (Shape s : {Shape{65537}, Shape{2, 300000}, Shape{1000, 1000}}) {
        std::vector<double> v = data(count(s), 77, -1, 1);
        flx_tensor *x = make(g, FLX_F32, s, v);
        int32_t ax = (int32_t)s.size() - 1;
        std::vector<double> first = values(flx_sum(x, 1, &ax, false));
        for (int rep = 0; rep < 5; rep++) {
            std::vector<double> again = values(flx_sum(x, 1, &ax, false));
            ASSERT_EQ(first.size(), again.size());
            EXPECT_EQ(0, std::memcmp(first.data(), again.data(), first.size() * sizeof(double)))
                << "sum changed between runs " << shape_str(s);
        }
    }
}

// ---- shape and indexing -------------------------------------------------------------------------
TEST_F(CudaTest, ShapeOps) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kAll) {
        Shape s4 = {2, 3, 5, 7};
        std::vector<double> v4 = int_data(count(s4), 41, -100, 100);
        if (dt == FLX_BOOL)
            for (double &x : v4) x = x > 0;
        auto x4 = [&](flx_ctx *c) { return make(c, dt, s4, v4); };
        std::string d = dname(dt);
        const int32_t perms[][4] = {{0, 1, 2, 3}, {3, 2, 1, 0}, {1, 0, 3, 2}, {0, 2, 3, 1}, {2, 0, 1, 3}};
        for (const auto &p : perms)
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_permute(x4(c), p); }, 0, 0))
                << "permute " << d << " " << p[0] << p[1] << p[2] << p[3];
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_transpose(x4(c), 1, -1); }, 0, 0)) << d;
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_slice(x4(c), 3, 1, 6, 2); }, 0, 0)) << d;
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_slice(x4(c), 1, -2, 100, 1); }, 0, 0)) << d;
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_slice(x4(c), 0, 1, 1, 1); }, 0, 0)) << d;
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_slice(flx_permute(x4(c), perms[1]), 2, 0, 3, 2); }, 0, 0))
            << d;
        Shape bs = {4, 2, 3, 5, 7};
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_broadcast_to(x4(c), 5, bs.data()); }, 0, 0)) << d;
        Shape rs = {6, -1};
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_reshape(x4(c), 2, rs.data()); }, 0, 0)) << d;
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_unsqueeze(x4(c), 2); }, 0, 0)) << d;
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_squeeze(flx_unsqueeze(x4(c), -1), -1); }, 0, 0)) << d;
        for (int32_t axis : {0, 1, 3}) {
            EXPECT_TRUE(same(g, cpu,
                             [&](flx_ctx *c) {
                                 flx_tensor *a = x4(c);
                                 flx_tensor *b = flx_slice(a, axis, 1, 2, 1);
                                 flx_tensor *xs[] = {a, b, a};
                                 return flx_concat(3, xs, axis);
                             },
                             0, 0))
                << "concat axis " << axis << " " << d;
            EXPECT_TRUE(same(g, cpu,
                             [&](flx_ctx *c) {
                                 flx_tensor *a = x4(c);
                                 flx_tensor *xs[] = {a, a};
                                 return flx_stack(2, xs, axis);
                             },
                             0, 0))
                << "stack axis " << axis << " " << d;
        }
        const int64_t pads[8] = {1, 0, 0, 2, 3, 1, 0, 0};
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_pad(x4(c), pads, dt == FLX_BOOL ? 1 : -9); }, 0, 0))
            << "pad " << d;
        // index_select with i32/i64 indices, repeats, along every axis
        for (flx_dtype it : {FLX_I32, FLX_I64}) {
            for (int32_t axis : {0, 1, 2, 3}) {
                int64_t n = s4[(size_t)axis];
                std::vector<double> iv;
                for (int64_t j = 0; j < 2 * n + 3; j++) iv.push_back((double)((j * 5 + 1) % n));
                Shape is = {(int64_t)iv.size()};
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_index_select(x4(c), axis, make(c, it, is, iv)); }, 0, 0))
                    << "index_select axis " << axis << " " << d << " idx " << dname(it);
            }
            std::vector<double> none;
            Shape es = {0};
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_index_select(x4(c), 1, make(c, it, es, none)); }, 0, 0));
        }
    }
    // one_hot, diag, diagonal, trace
    for (flx_dtype it : {FLX_I32, FLX_I64}) {
        Shape s = {33};
        std::vector<double> iv = int_data(33, 3, 0, 10);
        for (flx_dtype dt : {FLX_F32, FLX_F64, FLX_I32, FLX_I64})
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_one_hot(make(c, it, s, iv), 10, dt); }, 0, 0));
    }
    for (flx_dtype dt : kFloat) {
        for (int64_t n : {1, 5, 33}) {
            Shape s = {n};
            std::vector<double> v = data((size_t)n, 8, -1, 1);
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_diag(make(c, dt, s, v)); }, 0, 0));
        }
        for (Shape s : {Shape{1, 1}, Shape{5, 7}, Shape{33, 4}, Shape{64, 64}}) {
            std::vector<double> v = data(count(s), 9, -1, 1);
            EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_diagonal(make(c, dt, s, v)); }, 0, 0));
            if (s[0] == s[1])
                EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_trace(make(c, dt, s, v)); }, 1e-12, 1e-6));
        }
    }
}

TEST_F(CudaTest, IndexOutOfRangeReportedAtSync) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype it : {FLX_I32, FLX_I64}) {
        Shape xs = {3, 4};
        std::vector<double> xv = data(12, 1, -1, 1);
        flx_tensor *x = make(g, FLX_F32, xs, xv);
        Shape is = {3};
        flx_tensor *idx = make(g, it, is, {0, 7, -1});
        flx_tensor *y = flx_index_select(x, 0, idx);
        ASSERT_NE(y, nullptr) << flx_last_error();
        std::vector<float> out(12);
        EXPECT_EQ(flx_to_host(y, out.data(), out.size() * sizeof(float)), FLX_ERR_INVALID_ARGUMENT);
        EXPECT_NE(std::strstr(flx_last_error(), "is outside [0, 3)"), nullptr) << flx_last_error();
        flx_clear_error();
        // The error was consumed: the context works and reports nothing more.
        EXPECT_EQ(flx_ctx_synchronize(g), FLX_OK) << flx_last_error();
        flx_tensor *ok = flx_index_select(x, 0, make(g, it, is, {2, 0, 1}));
        EXPECT_EQ(flx_to_host(ok, out.data(), out.size() * sizeof(float)), FLX_OK) << flx_last_error();
        EXPECT_EQ(out[0], (float)xv[8]);
    }
}

// ---- linear algebra ---------------------------------------------------------------------------
TEST_F(CudaTest, Matmul) {
    FLX_REQUIRE_CUDA(g);
    const std::vector<std::pair<Shape, Shape>> cases = {
        {{1, 1}, {1, 1}},       {{33, 17}, {17, 65}},     {{3, 0}, {0, 4}},  {{0, 5}, {5, 3}},
        {{4, 5}, {5, 0}},       {{64, 64}, {64, 64}},     {{1, 1000}, {1000, 1}},
        {{4, 5, 6}, {4, 6, 7}}, {{5, 6}, {3, 6, 7}},      {{3, 5, 6}, {6, 7}},
        {{2, 1, 5, 6}, {3, 6, 7}}, {{6}, {6, 7}},         {{5, 6}, {6}},     {{6}, {6}},
        {{2, 3, 0}, {2, 0, 4}}, {{129, 31}, {31, 257}},
    };
    for (flx_dtype dt : kFloat) {
        for (const auto &cs : cases) {
            std::vector<double> a = data(count(cs.first), 51, -1, 1), b = data(count(cs.second), 52, -1, 1);
            int64_t k = cs.first.back();
            double at = dt == FLX_F32 ? 1e-5 * (double)(k + 1) : 1e-12 * (double)(k + 1);
            double rt = dt == FLX_F32 ? 1e-5 : 1e-12;
            EXPECT_TRUE(same(g, cpu,
                             [&](flx_ctx *c) { return flx_matmul(make(c, dt, cs.first, a), make(c, dt, cs.second, b)); },
                             at, rt))
                << "matmul " << dname(dt) << " " << shape_str(cs.first) << " @ " << shape_str(cs.second);
            // Transposed operands (views made by the shape ops feed the matmul).
            if (cs.first.size() == 2 && cs.second.size() == 2) {
                EXPECT_TRUE(same(g, cpu,
                                 [&](flx_ctx *c) {
                                     flx_tensor *at_ = flx_transpose(make(c, dt, cs.first, a), 0, 1);
                                     flx_tensor *bt_ = flx_transpose(make(c, dt, cs.second, b), 0, 1);
                                     return flx_matmul(bt_, at_);
                                 },
                                 at, rt))
                    << "matmul^T " << dname(dt) << " " << shape_str(cs.first);
            }
        }
        Shape v = {1025};
        std::vector<double> a = data(1025, 1, -1, 1), b = data(1025, 2, -1, 1);
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_dot(make(c, dt, v, a), make(c, dt, v, b)); },
                         dt == FLX_F32 ? 1e-3 : 1e-11, dt == FLX_F32 ? 1e-4 : 1e-11));
        Shape u = {33};
        std::vector<double> a2 = data(33, 3, -1, 1);
        EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_outer(make(c, dt, u, a2), make(c, dt, v, b)); },
                         dt == FLX_F32 ? 1e-6 : 1e-14, dt == FLX_F32 ? 1e-6 : 1e-14));
    }
}

// ---- autodiff -----------------------------------------------------------------------------------
// A composite function touching most families: matmul, broadcasting binary ops, unary ops,
// reductions, shape ops, index_select (its gradient is an index ADD) and where.
flx_tensor *composite(flx_tensor *x, flx_tensor *w, flx_tensor *b, flx_tensor *idx) {
    flx_tensor *h = flx_tanh(flx_add(flx_matmul(x, w), b));                 // (n, 7)
    flx_tensor *hs = flx_index_select(h, 0, idx);                           // (m, 7)
    int32_t ax1 = 1;
    flx_tensor *l = flx_logsumexp(hs, 1, &ax1, false);                      // (m)
    flx_tensor *sq = flx_mean_all(flx_square(flx_slice(x, 1, 1, 5, 2)));    // ()
    flx_tensor *mx = flx_max(flx_sigmoid(h), 1, &ax1, true);                // (n, 1)
    flx_tensor *wh = flx_where(flx_gt(h, mx), h, flx_mul_scalar(h, 0.5));   // (n, 7)
    flx_tensor *v = flx_var(wh, 0, nullptr, false, 1);
    const int32_t perm[2] = {1, 0};
    flx_tensor *t = flx_sum_all(flx_mul(flx_permute(w, perm), flx_permute(w, perm)));
    return flx_add(flx_add(flx_sum_all(l), flx_mul(sq, v)), flx_mul_scalar(t, 0.01));
}

struct Problem {
    Shape xs{40, 6}, ws{6, 7}, bs{7}, is{100};
    std::vector<double> xv, wv, bv, iv;
    Problem() {
        xv = rand_values(240, 1, -1, 1);
        wv = rand_values(42, 2, -1, 1);
        bv = rand_values(7, 3, -0.5, 0.5);
        for (int j = 0; j < 100; j++) iv.push_back((double)((j * 37 + 11) % 40)); // repeats: > 32 ids
    }
};

TEST_F(CudaTest, GradientsOfCompositeMatchCpu) {
    FLX_REQUIRE_CUDA(g);
    Problem p;
    for (flx_dtype dt : kFloat) {
        std::vector<std::vector<double>> grads[2];
        std::vector<double> loss[2];
        flx_ctx *ctxs[2] = {g, cpu};
        for (int side = 0; side < 2; side++) {
            flx_ctx *c = ctxs[side];
            flx_tensor *x = make(c, dt, p.xs, p.xv), *w = make(c, dt, p.ws, p.wv), *b = make(c, dt, p.bs, p.bv);
            flx_tensor *idx = make(c, FLX_I64, p.is, p.iv);
            flx_tensor *in[3] = {x, w, b};
            for (flx_tensor *t : in) ASSERT_EQ(flx_set_requires_grad(t, true), FLX_OK) << flx_last_error();
            flx_tensor *y = composite(x, w, b, idx);
            ASSERT_NE(y, nullptr) << flx_last_error();
            flx_tensor *gr[3] = {nullptr, nullptr, nullptr};
            ASSERT_EQ(flx_grad_of(1, &y, nullptr, 3, in, false, gr), FLX_OK) << flx_last_error();
            loss[side] = values(y);
            for (int i = 0; i < 3; i++) grads[side].push_back(values(gr[i]));
        }
        double at = dt == FLX_F32 ? 1e-4 : 1e-10, rt = dt == FLX_F32 ? 1e-4 : 1e-10;
        EXPECT_TRUE(close(loss[0], loss[1], at, rt)) << "loss " << dname(dt);
        for (int i = 0; i < 3; i++) EXPECT_TRUE(close(grads[0][i], grads[1][i], at, rt)) << "grad " << i << " " << dname(dt);
    }
}

TEST_F(CudaTest, BackwardIsDeviceOnly) {
    FLX_REQUIRE_CUDA(g);
    Problem p;
    Shape hid = {6, 7};
    flx_tensor *x = make(g, FLX_F32, p.xs, p.xv);
    flx_tensor *w = flx_normal(g, FLX_F32, 2, hid.data(), 0, 0.5, 5);
    flx_tensor *b = make(g, FLX_F32, p.bs, p.bv);
    flx_tensor *idx = make(g, FLX_I64, p.is, p.iv);
    ASSERT_EQ(flx_set_requires_grad(w, true), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_set_requires_grad(b, true), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK) << flx_last_error();
    flx_tensor *loss = composite(x, w, b, idx);
    ASSERT_NE(loss, nullptr) << flx_last_error();
    ASSERT_EQ(flx_ctx_reset_stats(g), FLX_OK);
    ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    flx_ctx_stats st;
    ASSERT_EQ(flx_ctx_get_stats(g, &st), FLX_OK);
    EXPECT_EQ(st.h2d_copies, 0u) << "backward copied host -> device";
    EXPECT_EQ(st.d2h_copies, 0u) << "backward copied device -> host";
    EXPECT_EQ(st.syncs, 0u) << "backward waited on the device";
    EXPECT_GT(st.kernels, 0u);
    // The gradients are right: the same on the CPU.
    std::vector<double> wv = values(w);
    flx_tensor *xc = make(cpu, FLX_F32, p.xs, p.xv), *wc = make(cpu, FLX_F32, hid, wv);
    flx_tensor *bc = make(cpu, FLX_F32, p.bs, p.bv), *ic = make(cpu, FLX_I64, p.is, p.iv);
    flx_set_requires_grad(wc, true);
    flx_set_requires_grad(bc, true);
    flx_set_requires_grad(xc, true);
    ASSERT_EQ(flx_backward(composite(xc, wc, bc, ic)), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(w)), values(flx_grad(wc)), 1e-4, 1e-4));
    EXPECT_TRUE(close(values(flx_grad(b)), values(flx_grad(bc)), 1e-4, 1e-4));
    EXPECT_TRUE(close(values(flx_grad(x)), values(flx_grad(xc)), 1e-4, 1e-4));
}

TEST_F(CudaTest, IndexAddIsDeterministicAndExact) {
    FLX_REQUIRE_CUDA(g);
    // The gradient of index_select is an index ADD; with many repeated indices the GPU sums each
    // row's contributions in ascending order like the CPU, so results are bitwise identical.
    for (flx_dtype dt : kFloat) {
        for (int64_t nidx : {5, 33, 1000, 70000}) {
            Shape xs = {37, 9}, is = {nidx}, gs = {nidx, 9};
            std::vector<double> iv;
            for (int64_t j = 0; j < nidx; j++) iv.push_back((double)((j * 7 + j / 3) % 37));
            std::vector<double> gv = data(count(gs), 13, -1, 1);
            std::vector<double> res[2];
            flx_ctx *ctxs[2] = {g, cpu};
            for (int side = 0; side < 2; side++) {
                flx_tensor *x = make(ctxs[side], dt, xs, data(count(xs), 12, -1, 1));
                ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK) << flx_last_error();
                flx_tensor *idx = make(ctxs[side], FLX_I32, is, iv);
                flx_tensor *y = flx_index_select(x, 0, idx);
                flx_tensor *cot = make(ctxs[side], dt, gs, gv);
                flx_tensor *gx = nullptr;
                ASSERT_EQ(flx_grad_of(1, &y, &cot, 1, &x, false, &gx), FLX_OK) << flx_last_error();
                res[side] = values(gx);
            }
            EXPECT_TRUE(close(res[0], res[1], 0, 0)) << dname(dt) << " n_idx " << nidx;
        }
    }
}

// ---- failure handling ------------------------------------------------------------------------------
TEST_F(CudaTest, OutOfMemoryIsReportedAndRecoverable) {
    FLX_REQUIRE_CUDA(g);
    Shape huge = {(int64_t)1 << 43}; // 2^45 bytes of f32
    flx_tensor *t = flx_zeros(g, FLX_F32, 1, huge.data());
    ASSERT_NE(t, nullptr) << flx_last_error();
    EXPECT_EQ(flx_eval(1, &t), FLX_ERR_OUT_OF_MEMORY) << flx_last_error();
    EXPECT_EQ(flx_last_status(), FLX_ERR_OUT_OF_MEMORY);
    flx_clear_error();
    // The context still works.
    Shape s = {1025};
    std::vector<double> v = data(1025, 2, -1, 1);
    EXPECT_TRUE(same(g, cpu, [&](flx_ctx *c) { return flx_exp(make(c, FLX_F64, s, v)); }, 1e-13, 1e-12));
    EXPECT_EQ(flx_ctx_synchronize(g), FLX_OK) << flx_last_error();
}

TEST_F(CudaTest, MixingContextsIsRefused) {
    FLX_REQUIRE_CUDA(g);
    Shape s = {3};
    flx_tensor *a = make(g, FLX_F32, s, {1, 2, 3});
    flx_tensor *b = make(cpu, FLX_F32, s, {1, 2, 3});
    EXPECT_TRUE(flxt::fails_with(flx_add(a, b), FLX_ERR_DEVICE, nullptr));
}

} // namespace

// Runs everywhere: a CUDA build on a machine without a GPU must report no devices cleanly.
TEST(NoGpu, MissingCudaDeviceIsRefusedCleanly) {
    flx_clear_error();
    int32_t n = flx_cuda_device_count();
    EXPECT_GE(n, 0);
    EXPECT_EQ(flx_last_status(), FLX_OK) << flx_last_error();
    // Device n is one past the last: device 0 without a GPU, so the check runs (and cannot pass by
    // skipping) on GPU machines too, where FLX_REQUIRE_GPU runs expect no skips.
    flx_ctx *c = flx_ctx_create(flx_device_cuda(n));
    EXPECT_EQ(c, nullptr);
    EXPECT_EQ(flx_last_status(), flx_has_cuda() ? FLX_ERR_DEVICE : FLX_ERR_UNSUPPORTED) << flx_last_error();
    flx_clear_error();
    EXPECT_EQ(flx_cuda_device_count(), n);
}
