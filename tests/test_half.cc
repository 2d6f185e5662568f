// test_half.cc — f16 and bf16 on the host and the CPU backend. The reference for every bit is
// written here from the formats' definitions (a pattern's value from its sign, exponent and
// fraction fields; rounding to nearest even by scaling a double to an integer significand and
// nearbyint), never taken from the library. Checked: every one of the 65536 patterns of each
// format decodes and round-trips; ties, subnormals, overflow, inf and NaN round as IEEE says;
// casts between every pair of dtypes; promotion; every op family in f16 and bf16 against the
// f64 op on the same (rounded) inputs, rounded once (0 ulp for the ops that compute the f64
// formula and round once; stated bounds for the rest); VJP and JVP of representative ops;
// fusion; safetensors; and the inputs halves are refused for (linear algebra).
#include "testing.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

namespace {

using namespace flxt;

// ---- the reference: binary16 and bfloat16 from their definitions ----------------------------
struct Fmt {
    int p;     // significant bits, the hidden one included
    int emin;  // exponent of the smallest normal
    int emax;  // exponent of the largest finite
    int ebits; // exponent field width
};
const Fmt kF16{11, -14, 15, 5};
const Fmt kBF16{8, -126, 127, 8};
const Fmt &fmt_of(flx_dtype dt) { return dt == FLX_F16 ? kF16 : kBF16; }
const flx_dtype kHalves[2] = {FLX_F16, FLX_BF16};

// The value of a pattern: (-1)^s 2^(e - bias) 1.f for normal e, 2^emin 0.f for e = 0.
double decode(const Fmt &f, uint16_t b) {
    const int mbits = f.p - 1, emask = (1 << f.ebits) - 1;
    const int e = (b >> mbits) & emask, m = b & ((1 << mbits) - 1);
    double v;
    if (e == emask) v = m ? std::numeric_limits<double>::quiet_NaN() : INFINITY;
    else if (e == 0) v = std::ldexp((double)m, f.emin - mbits);
    else v = std::ldexp((double)(m + (1 << mbits)), e - ((1 << (f.ebits - 1)) - 1) - mbits);
    return (b & 0x8000) ? -v : v;
}

bool is_nan_pattern(const Fmt &f, uint16_t b) {
    const int mbits = f.p - 1, emask = (1 << f.ebits) - 1;
    return ((b >> mbits) & emask) == emask && (b & ((1 << mbits) - 1)) != 0;
}

// x rounded to the format, to nearest with ties to even (the default rounding mode of nearbyint):
// the significand at x's exponent (never below emin: subnormals share emin's spacing) is an
// exact scaling of x, rounded to an integer; beyond the largest finite value: +-inf.
double round_ref(const Fmt &f, double x) {
    if (std::isnan(x) || std::isinf(x) || x == 0) return x;
    int E;
    std::frexp(x, &E);
    const int e = std::max(E - 1, f.emin);
    const double r = std::nearbyint(std::ldexp(x, f.p - 1 - e));
    const double v = std::ldexp(r, e - (f.p - 1));
    const double maxv = std::ldexp(2.0 - std::ldexp(1.0, 1 - f.p), f.emax);
    return std::fabs(v) > maxv ? std::copysign(INFINITY, x) : v;
}

// Sorted finite values of the format (one zero) plus +-inf: the rank difference of two values is
// their distance in ulps.
const std::vector<double> &ladder(const Fmt &f) {
    static std::vector<double> lad[2];
    std::vector<double> &l = lad[&f == &kF16 ? 0 : 1];
    if (l.empty()) {
        for (uint32_t b = 0; b < 65536; b++) {
            double v = decode(f, (uint16_t)b);
            if (!std::isnan(v) && !(v == 0 && std::signbit(v))) l.push_back(v);
        }
        std::sort(l.begin(), l.end());
    }
    return l;
}

int64_t rank_of(const Fmt &f, double v) {
    const std::vector<double> &l = ladder(f);
    auto it = std::lower_bound(l.begin(), l.end(), v);
    return (it != l.end() && *it == v) ? it - l.begin() : -1;
}

// actual (values of a half tensor) within `ulps` of the exact results `exact` rounded to the format.
::testing::AssertionResult within_ulps(flx_dtype dt, const std::vector<double> &actual,
                                       const std::vector<double> &exact, int64_t ulps) {
    const Fmt &f = fmt_of(dt);
    if (actual.size() != exact.size())
        return ::testing::AssertionFailure() << "size " << actual.size() << " vs " << exact.size();
    for (size_t i = 0; i < actual.size(); i++) {
        const double e = round_ref(f, exact[i]), a = actual[i];
        if (std::isnan(e) || std::isnan(a)) {
            if (std::isnan(e) != std::isnan(a))
                return ::testing::AssertionFailure() << "[" << i << "] " << a << " vs " << e;
            continue;
        }
        const int64_t ra = rank_of(f, a), re = rank_of(f, e);
        if (ra < 0) return ::testing::AssertionFailure() << "[" << i << "] " << a << " is not a "
                                                         << flx_dtype_name(dt) << " value";
        if (std::llabs(ra - re) > ulps)
            return ::testing::AssertionFailure() << "[" << i << "] " << a << " vs " << e << " (exact "
                                                 << exact[i] << "): " << std::llabs(ra - re)
                                                 << " ulp > " << ulps;
    }
    return ::testing::AssertionSuccess();
}

std::vector<uint16_t> raw16(flx_tensor *t) {
    std::vector<uint16_t> r((size_t)flx_numel(t));
    EXPECT_EQ(flx_to_host(t, r.data(), r.size() * 2), FLX_OK) << flx_last_error();
    return r;
}

class Half : public flxt::CpuTest {};

// ---- conversions -----------------------------------------------------------------------------
TEST_F(Half, EveryPatternDecodesAndRoundTrips) {
    std::vector<uint16_t> all(65536);
    for (uint32_t b = 0; b < 65536; b++) all[b] = (uint16_t)b;
    const int64_t n = 65536;
    for (flx_dtype dt : kHalves) {
        const Fmt &f = fmt_of(dt);
        flx_tensor *t = flx_from_host(ctx, dt, 1, &n, all.data());
        std::vector<double> v = values(t);
        ASSERT_EQ(v.size(), all.size());
        std::vector<float> vf(all.size());
        ASSERT_EQ(flx_to_host_as(t, FLX_F32, vf.data(), vf.size() * 4), FLX_OK);
        for (uint32_t b = 0; b < 65536; b++) {
            const double want = decode(f, (uint16_t)b);
            if (std::isnan(want)) {
                ASSERT_TRUE(std::isnan(v[b]) && std::isnan(vf[b])) << flx_dtype_name(dt) << " " << b;
            } else {
                ASSERT_EQ(v[b], want) << flx_dtype_name(dt) << " pattern " << b;
                ASSERT_EQ(std::signbit(v[b]), std::signbit(want)) << b;
                ASSERT_EQ((double)vf[b], want) << flx_dtype_name(dt) << " pattern " << b << " via f32";
            }
        }
        // back from f64 and from f32: the same pattern (NaN: some NaN)
        for (flx_dtype host : {FLX_F64, FLX_F32}) {
            flx_tensor *back = host == FLX_F64 ? flx_from_host_as(ctx, dt, 1, &n, FLX_F64, v.data())
                                               : flx_from_host_as(ctx, dt, 1, &n, FLX_F32, vf.data());
            std::vector<uint16_t> r = raw16(back);
            for (uint32_t b = 0; b < 65536; b++) {
                if (is_nan_pattern(f, (uint16_t)b)) ASSERT_TRUE(is_nan_pattern(f, r[b])) << b;
                else ASSERT_EQ(r[b], b) << flx_dtype_name(dt) << " from " << flx_dtype_name(host);
            }
        }
    }
}

// Rounding to nearest even at every pair of neighbours: the midpoint (a tie), and one double
// step either side of it; subnormals, the largest finite value and overflow included.
TEST_F(Half, RoundsToNearestEvenEverywhere) {
    for (flx_dtype dt : kHalves) {
        const Fmt &f = fmt_of(dt);
        const std::vector<double> &l = ladder(f);
        std::vector<double> xs;
        for (size_t i = 0; i + 1 < l.size(); i++) {
            if (std::isinf(l[i]) || std::isinf(l[i + 1])) continue;
            const double mid = 0.5 * (l[i] + l[i + 1]); // exact in double
            xs.insert(xs.end(), {mid, std::nextafter(mid, -INFINITY), std::nextafter(mid, INFINITY)});
        }
        const double maxv = l[l.size() - 2], ulp = std::ldexp(1.0, f.emax - (f.p - 1));
        for (double s : {1.0, -1.0})
            xs.insert(xs.end(), {s * (maxv + ulp / 2), s * std::nextafter(maxv + ulp / 2, 0.0), s * 1e300,
                                 s * INFINITY, s * 0.0, s * 1e-300, s * std::ldexp(1.0, f.emin - f.p),
                                 s * std::nextafter(std::ldexp(1.0, f.emin - f.p), 1.0)});
        xs.push_back(std::numeric_limits<double>::quiet_NaN());
        for (double x : rand_values(20000, 5, -70000, 70000)) xs.push_back(x);
        for (double x : rand_values(20000, 6, -1, 1)) xs.push_back(std::ldexp(x, -10));
        const int64_t n = (int64_t)xs.size();
        std::vector<double> got = values(flx_from_host_as(ctx, dt, 1, &n, FLX_F64, xs.data()));
        ASSERT_EQ(got.size(), xs.size());
        size_t ties = 0;
        for (size_t i = 0; i < xs.size(); i++) {
            const double want = round_ref(f, xs[i]);
            if (std::isnan(want)) {
                ASSERT_TRUE(std::isnan(got[i]));
                continue;
            }
            ASSERT_EQ(got[i], want) << flx_dtype_name(dt) << " rounding " << xs[i];
            ASSERT_EQ(std::signbit(got[i]), std::signbit(want)) << xs[i];
            ties += i % 3 == 0 && i < 3 * (l.size() - 3);
        }
        EXPECT_GT(ties, 60000u);
        // f32 inputs round once (no detour that rounds twice)
        std::vector<float> fs;
        for (double x : rand_values(50000, 8, -3, 3)) fs.push_back((float)x);
        for (size_t i = 0; i + 1 < l.size() && fs.size() < 120000; i += 3)
            if (std::isfinite(l[i]) && std::isfinite(l[i + 1]) && std::fabs(l[i]) < 1e38)
                fs.push_back(std::nextafter((float)(0.5 * (l[i] + l[i + 1])), INFINITY));
        const int64_t nf = (int64_t)fs.size();
        std::vector<double> gf = values(flx_from_host_as(ctx, dt, 1, &nf, FLX_F32, fs.data()));
        for (size_t i = 0; i < fs.size(); i++) ASSERT_EQ(gf[i], round_ref(f, fs[i])) << fs[i];
    }
}

TEST_F(Half, ItemAndCreationAreExact) {
    const int64_t s[2] = {3, 4};
    for (flx_dtype dt : kHalves) {
        const Fmt &f = fmt_of(dt);
        double d = 0;
        ASSERT_EQ(flx_item(flx_scalar(ctx, dt, 0.1), &d), FLX_OK);
        EXPECT_EQ(d, round_ref(f, 0.1));
        EXPECT_TRUE(close(values(flx_full(ctx, dt, 2, s, 1.0 / 3)), std::vector<double>(12, round_ref(f, 1.0 / 3)), 0, 0));
        EXPECT_TRUE(close(values(flx_zeros(ctx, dt, 2, s)), std::vector<double>(12, 0.0), 0, 0));
        EXPECT_TRUE(close(values(flx_eye(ctx, dt, 2, 2)), {1, 0, 0, 1}, 0, 0));
        std::vector<double> ar;
        for (int i = 0; i < 7; i++) ar.push_back(round_ref(f, 0.3 + 0.7 * i));
        EXPECT_TRUE(close(values(flx_arange(ctx, dt, 0.3, 5.0, 0.7)), ar, 0, 0));
        // uniform draws stay in [lo, hi) although rounding to 8 bits would often reach hi
        const int64_t big = 200000;
        std::vector<double> u = values(flx_uniform(ctx, dt, 1, &big, 0.0, 1.0, 3));
        ASSERT_EQ((int64_t)u.size(), big);
        double mean = 0;
        for (double x : u) {
            ASSERT_TRUE(x >= 0 && x < 1) << x;
            ASSERT_EQ(x, round_ref(f, x));
            mean += x / (double)big;
        }
        EXPECT_NEAR(mean, 0.5, 0.01);
        std::vector<double> r = values(flx_randn(ctx, dt, 1, &big, 4));
        double m2 = 0;
        for (double x : r) m2 += x * x / (double)big;
        EXPECT_NEAR(m2, 1.0, 0.02);
        const int64_t w[2] = {64, 32};
        std::vector<double> k = values(flx_init_kaiming_uniform(ctx, dt, 2, w, FLX_FAN_IN, 1.0, 5));
        for (double x : k) ASSERT_EQ(x, round_ref(f, x));
    }
}

// ---- casts and promotion ---------------------------------------------------------------------
TEST_F(Half, CastsBetweenEveryPair) {
    const std::vector<double> src = {-70000.5, -2.75, -1.0, -0.4, 0.0, 0.4, 1.5, 2.5, 3.0, 255.5, 65504, 1e6};
    const flx_dtype all[] = {FLX_F32, FLX_F64, FLX_I32, FLX_I64, FLX_BOOL, FLX_F16, FLX_BF16};
    auto convert = [](flx_dtype dt, double v) -> double {
        switch (dt) {
        case FLX_F32: return (double)(float)v;
        case FLX_F64: return v;
        case FLX_I32: return std::isnan(v) ? 0.0 : std::trunc(std::min(std::max(v, -2147483648.0), 2147483647.0));
        case FLX_I64: return std::isnan(v) ? 0.0 : std::trunc(std::min(std::max(v, -0x1p63), 0x1p63));
        case FLX_BOOL: return v != 0;
        default: return round_ref(fmt_of(dt), v);
        }
    };
    for (flx_dtype from : all)
        for (flx_dtype to : all) {
            if (from != FLX_F16 && from != FLX_BF16 && to != FLX_F16 && to != FLX_BF16) continue;
            std::vector<double> in, want;
            for (double v : src) in.push_back(convert(from, v));
            for (double v : in) want.push_back(convert(to, v));
            flx_tensor *x = make(ctx, from, {(int64_t)in.size()}, in);
            EXPECT_TRUE(close(values(flx_cast(x, to)), want, 0, 0))
                << flx_dtype_name(from) << " -> " << flx_dtype_name(to);
        }
    // half -> int saturates; int -> half overflows to inf; NaN -> 0
    const double big[4] = {INFINITY, -INFINITY, std::numeric_limits<double>::quiet_NaN(), 3e38};
    flx_tensor *b = make(ctx, FLX_BF16, {4}, {big[0], big[1], big[2], big[3]});
    EXPECT_TRUE(close(values(flx_cast(b, FLX_I32)), {2147483647.0, -2147483648.0, 0, 2147483647.0}, 0, 0));
    flx_tensor *i = make(ctx, FLX_I64, {2}, {100000, -4000000000.0});
    EXPECT_TRUE(close(values(flx_cast(i, FLX_F16)), {INFINITY, -INFINITY}, 0, 0));
    EXPECT_TRUE(close(values(flx_cast(i, FLX_BF16)), {round_ref(kBF16, 1e5), round_ref(kBF16, -4e9)}, 0, 0));
}

TEST_F(Half, PromotesLikePyTorch) {
    const flx_dtype all[] = {FLX_BOOL, FLX_I32, FLX_I64, FLX_F16, FLX_BF16, FLX_F32, FLX_F64};
    // expected[a][b] for a + b (index order of `all`); bool + bool is refused
    const flx_dtype F16 = FLX_F16, B16 = FLX_BF16, F32 = FLX_F32, F64 = FLX_F64, I32 = FLX_I32, I64 = FLX_I64;
    const flx_dtype want[7][7] = {
        {FLX_DTYPE_COUNT, I32, I64, F16, B16, F32, F64}, {I32, I32, I64, F16, B16, F32, F64},
        {I64, I64, I64, F16, B16, F32, F64},             {F16, F16, F16, F16, F32, F32, F64},
        {B16, B16, B16, F32, B16, F32, F64},             {F32, F32, F32, F32, F32, F32, F64},
        {F64, F64, F64, F64, F64, F64, F64}};
    for (int a = 0; a < 7; a++)
        for (int b = 0; b < 7; b++) {
            flx_tensor *x = make(ctx, all[a], {2}, {1, 0});
            flx_tensor *y = make(ctx, all[b], {2}, {1, 1});
            flx_tensor *s = flx_add(x, y);
            if (want[a][b] == FLX_DTYPE_COUNT) {
                EXPECT_TRUE(flxt::fails_with(s, FLX_ERR_DTYPE, nullptr));
                continue;
            }
            ASSERT_TRUE(s) << flx_last_error();
            EXPECT_EQ(flx_dtype_of(s), want[a][b]) << flx_dtype_name(all[a]) << " + " << flx_dtype_name(all[b]);
            EXPECT_TRUE(close(values(s), {2, 1}, 0, 0));
            flx_tensor *c = flx_lt(x, y);
            EXPECT_EQ(flx_dtype_of(c), FLX_BOOL);
        }
    // f16 * bf16 in f32: 1 + 2^-10 (f16) times 1 + 2^-7 (bf16), exact in f32, neither half
    flx_tensor *p = flx_mul(make(ctx, FLX_F16, {1}, {1 + std::ldexp(1.0, -10)}),
                            make(ctx, FLX_BF16, {1}, {1 + std::ldexp(1.0, -7)}));
    EXPECT_TRUE(close(values(p), {(1 + std::ldexp(1.0, -10)) * (1 + std::ldexp(1.0, -7))}, 0, 0));
    // the gradient returns to each operand's own dtype
    flx_tensor *a = make(ctx, FLX_BF16, {3}, {1, 2, 3}), *w = make(ctx, FLX_F32, {3}, {0.5, 0.25, 2});
    flx_set_requires_grad(a, true);
    flx_tensor *L = flx_sum_all(flx_mul(a, w));
    flx_tensor *g = nullptr;
    ASSERT_EQ(flx_grad_of(1, &L, nullptr, 1, &a, false, &g), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_dtype_of(g), FLX_BF16);
    EXPECT_TRUE(close(values(g), {0.5, 0.25, 2}, 0, 0));
}

// ---- every op family: the f64 op on the same inputs, rounded -----------------------------------
using Fn = std::function<flx_tensor *(const std::vector<flx_tensor *> &)>;

struct OpCase {
    const char *name;
    Fn fn;
    std::vector<Shape> shapes;
    int64_t ulps; // bound against the f64 result rounded once
    double lo = -2, hi = 2;
};

// Runs fn on half inputs and on the same values as f64; compares.
void check_case(flx_ctx *ctx, flx_dtype dt, const OpCase &c, uint64_t seed) {
    std::vector<flx_tensor *> h, d;
    for (size_t i = 0; i < c.shapes.size(); i++) {
        h.push_back(flxt::rand_tensor(ctx, dt, c.shapes[i], seed + i, c.lo, c.hi));
        d.push_back(flx_cast(h.back(), FLX_F64));
    }
    flx_tensor *yh = c.fn(h), *yd = c.fn(d);
    ASSERT_TRUE(yh && yd) << c.name << " " << flx_dtype_name(dt) << ": " << flx_last_error();
    const flx_dtype ot = flx_dtype_of(yh);
    if (ot == FLX_BOOL || ot == FLX_I64 || ot == FLX_I32) {
        EXPECT_TRUE(close(values(yh), values(yd), 0, 0)) << c.name << " " << flx_dtype_name(dt);
        return;
    }
    EXPECT_EQ(ot, dt) << c.name;
    EXPECT_TRUE(within_ulps(dt, values(yh), values(yd), c.ulps)) << c.name << " " << flx_dtype_name(dt);
}

flx_tensor *labels_for(flx_ctx *ctx, int64_t n, int64_t classes) {
    std::vector<double> v;
    for (int64_t i = 0; i < n; i++) v.push_back((double)((i * 7 + 3) % classes));
    v[1] = -100; // one ignored row
    return make(ctx, FLX_I64, {n}, v);
}

TEST_F(Half, EveryOpFamilyMatchesF64RoundedOnce) {
    const int32_t ax1[1] = {1}, ax01[2] = {0, 1};
    const int64_t k2[2] = {2, 2}, s1[2] = {1, 1}, p1[2] = {1, 1};
    flx_ctx *c = ctx;
    std::vector<OpCase> cases = {
        // unary: each formula in double, rounded once
        {"neg", [](auto x) { return flx_neg(x[0]); }, {{5, 7}}, 0},
        {"abs", [](auto x) { return flx_abs(x[0]); }, {{5, 7}}, 0},
        {"sign", [](auto x) { return flx_sign(x[0]); }, {{5, 7}}, 0},
        {"square", [](auto x) { return flx_square(x[0]); }, {{5, 7}}, 0},
        {"sqrt", [](auto x) { return flx_sqrt(x[0]); }, {{5, 7}}, 0, 0.01, 9},
        {"rsqrt", [](auto x) { return flx_rsqrt(x[0]); }, {{5, 7}}, 0, 0.01, 9},
        {"reciprocal", [](auto x) { return flx_reciprocal(x[0]); }, {{5, 7}}, 0},
        {"exp", [](auto x) { return flx_exp(x[0]); }, {{5, 7}}, 0, -8, 8},
        {"log", [](auto x) { return flx_log(x[0]); }, {{5, 7}}, 0, 0.01, 9},
        {"log1p", [](auto x) { return flx_log1p(x[0]); }, {{5, 7}}, 0, -0.9, 9},
        {"sin", [](auto x) { return flx_sin(x[0]); }, {{5, 7}}, 0, -6, 6},
        {"cos", [](auto x) { return flx_cos(x[0]); }, {{5, 7}}, 0, -6, 6},
        {"tanh", [](auto x) { return flx_tanh(x[0]); }, {{5, 7}}, 0},
        {"cosh", [](auto x) { return flx_cosh(x[0]); }, {{5, 7}}, 0},
        {"sinh", [](auto x) { return flx_sinh(x[0]); }, {{5, 7}}, 0},
        {"erf", [](auto x) { return flx_erf(x[0]); }, {{5, 7}}, 0},
        {"sigmoid", [](auto x) { return flx_sigmoid(x[0]); }, {{5, 7}}, 0, -9, 9},
        {"relu", [](auto x) { return flx_relu(x[0]); }, {{5, 7}}, 0},
        {"leaky_relu", [](auto x) { return flx_leaky_relu(x[0], 0.1); }, {{5, 7}}, 0},
        {"elu", [](auto x) { return flx_elu(x[0], 1.0); }, {{5, 7}}, 0},
        {"gelu", [](auto x) { return flx_gelu(x[0]); }, {{5, 7}}, 0},
        {"softplus", [](auto x) { return flx_softplus(x[0]); }, {{5, 7}}, 0},
        {"pow_scalar", [](auto x) { return flx_pow_scalar(x[0], 1.7); }, {{5, 7}}, 0, 0, 4},
        {"clamp", [](auto x) { return flx_clamp(x[0], -0.5, 0.7); }, {{5, 7}}, 0},
        {"affine", [](auto x) { return flx_affine(x[0], 0.3, -1.1); }, {{5, 7}}, 0},
        // binary with broadcasting, comparisons, where
        {"add", [](auto x) { return flx_add(x[0], x[1]); }, {{4, 6}, {6}}, 0},
        {"sub", [](auto x) { return flx_sub(x[0], x[1]); }, {{4, 6}, {4, 1}}, 0},
        {"mul", [](auto x) { return flx_mul(x[0], x[1]); }, {{4, 6}, {4, 6}}, 0},
        {"div", [](auto x) { return flx_div(x[0], x[1]); }, {{4, 6}, {6}}, 0},
        {"pow", [](auto x) { return flx_pow(x[0], x[1]); }, {{4, 6}, {4, 6}}, 0, 0.1, 3},
        {"maximum", [](auto x) { return flx_maximum(x[0], x[1]); }, {{4, 6}, {4, 6}}, 0},
        {"minimum", [](auto x) { return flx_minimum(x[0], x[1]); }, {{4, 6}, {6}}, 0},
        {"lt", [](auto x) { return flx_lt(x[0], x[1]); }, {{4, 6}, {6}}, 0},
        {"eq", [](auto x) { return flx_eq(x[0], flx_maximum(x[0], x[1])); }, {{4, 6}, {4, 6}}, 0},
        {"where", [](auto x) { return flx_where(flx_gt(x[0], x[1]), x[0], x[2]); }, {{4, 6}, {6}, {4, 6}}, 0},
        // reductions (accumulated in double, rounded once)
        {"sum", [&](auto x) { return flx_sum(x[0], 1, ax1, false); }, {{6, 300}}, 0},
        {"sum_all", [](auto x) { return flx_sum_all(x[0]); }, {{30, 70}}, 0},
        {"mean", [&](auto x) { return flx_mean(x[0], 2, ax01, true); }, {{6, 50, 3}}, 0},
        {"max", [&](auto x) { return flx_max(x[0], 1, ax1, false); }, {{6, 50}}, 0},
        {"min", [&](auto x) { return flx_min(x[0], 1, ax1, false); }, {{6, 50}}, 0},
        {"var", [&](auto x) { return flx_var(x[0], 1, ax1, false, 1); }, {{6, 50}}, 0},
        {"logsumexp", [&](auto x) { return flx_logsumexp(x[0], 1, ax1, false); }, {{6, 50}}, 0},
        {"argmax", [](auto x) { return flx_argmax(x[0], 1, false); }, {{6, 50}}, 0},
        // softmax family (double inside, rounded once); cross-entropy: losses in f32, then rounded
        {"softmax", [](auto x) { return flx_softmax(x[0], -1, 1.0); }, {{5, 40}}, 0, -6, 6},
        {"log_softmax", [](auto x) { return flx_log_softmax(x[0], 0, 0.5); }, {{40, 5}}, 0, -6, 6},
        {"cross_entropy", [c](auto x) { return flx_cross_entropy(x[0], labels_for(c, 37, 11), FLX_REDUCTION_MEAN, -100); },
         {{37, 11}}, 1, -6, 6},
        {"cross_entropy_rows", [c](auto x) { return flx_cross_entropy(x[0], labels_for(c, 37, 11), FLX_REDUCTION_NONE, -100); },
         {{37, 11}}, 1, -6, 6},
        // matmul, conv, pooling: double accumulation, rounded once (conv: + bias rounds again)
        {"matmul", [](auto x) { return flx_matmul(x[0], x[1]); }, {{3, 17, 40}, {40, 9}}, 0},
        {"matmul_bt", [](auto x) { return flx_matmul(x[0], flx_transpose(x[1], 0, 1)); }, {{17, 40}, {9, 40}}, 0},
        {"conv2d", [&](auto x) { return flx_conv2d(x[0], x[1], nullptr, s1, p1, nullptr); }, {{2, 3, 7, 6}, {4, 3, 3, 3}}, 0},
        {"max_pool2d", [&](auto x) { return flx_max_pool2d(x[0], k2, k2, nullptr, nullptr); }, {{2, 3, 6, 6}}, 0},
        {"avg_pool2d", [&](auto x) { return flx_avg_pool2d(x[0], k2, k2, nullptr); }, {{2, 3, 6, 6}}, 1},
        // layers: norms compute in f32 (error far below half an ulp: at most 1 ulp after rounding)
        {"layer_norm", [](auto x) { return flx_layer_norm(x[0], 1, x[1], x[2], 1e-5); }, {{7, 64}, {64}, {64}}, 1},
        {"batch_norm", [](auto x) { return flx_batch_norm(x[0], x[1], x[2], nullptr, nullptr, true, 0.1, 1e-5, nullptr, nullptr); },
         {{16, 5, 3}, {5}, {5}}, 1},
        {"embedding", [c](auto x) { return flx_embedding(x[0], make(c, FLX_I32, {2, 3}, {4, 0, 9, 4, 4, 1})); }, {{10, 8}}, 0},
        {"dropout", [](auto x) { return flx_dropout(x[0], 0.25, 9, true); }, {{8, 33}}, 0},
        {"linear", [](auto x) { return flx_linear(x[0], x[1], nullptr); }, {{5, 24}, {7, 24}}, 0},
    };
    for (flx_dtype dt : kHalves)
        for (size_t i = 0; i < cases.size(); i++) check_case(ctx, dt, cases[i], 100 + 10 * i);
}

// Embedding's backward sums the rows of repeated indices: in double, rounded once.
TEST_F(Half, RepeatedIndicesAccumulateOnce) {
    for (flx_dtype dt : kHalves) {
        // 1 + 300 * 2^-9: each 2^-9 alone is below half an ulp of 1 in bf16 (lost if rounded per add)
        flx_tensor *w = make(ctx, dt, {2, 1}, {0, 0});
        flx_set_requires_grad(w, true);
        std::vector<double> idx(301, 1.0);
        flx_tensor *ix = make(ctx, FLX_I64, {301}, idx);
        std::vector<double> gv(301, std::ldexp(1.0, -9));
        gv[0] = 1;
        flx_tensor *y = flx_embedding(w, ix);
        flx_tensor *cot = make(ctx, dt, {301, 1}, gv), *g = nullptr;
        ASSERT_EQ(flx_grad_of(1, &y, &cot, 1, &w, false, &g), FLX_OK) << flx_last_error();
        EXPECT_EQ(flx_dtype_of(g), dt);
        EXPECT_TRUE(close(values(g), {0, round_ref(fmt_of(dt), 1 + 300 * std::ldexp(1.0, -9))}, 0, 0))
            << flx_dtype_name(dt);
    }
}

// The mean divides by the number of rows that count, which 8 or 11 bits cannot hold (257 is
// not a bf16 value, 70001 overflows f16): the count and the losses are kept in f32.
TEST_F(Half, CrossEntropyMeanCountsRowsExactly) {
    for (flx_dtype dt : kHalves) {
        const int64_t N = dt == FLX_F16 ? 70001 : 257, C = 2;
        std::vector<double> lab((size_t)N, 1.0);
        flx_tensor *x = flx_zeros(ctx, dt, 2, std::vector<int64_t>{N, C}.data());
        flx_set_requires_grad(x, true);
        flx_tensor *L = flx_cross_entropy(x, make(ctx, FLX_I64, {N}, lab), FLX_REDUCTION_MEAN, -100);
        double v = 0;
        ASSERT_EQ(flx_item(L, &v), FLX_OK) << flx_last_error();
        EXPECT_EQ(v, round_ref(fmt_of(dt), std::log(2.0))) << flx_dtype_name(dt);
        flx_tensor *g = nullptr;
        ASSERT_EQ(flx_grad_of(1, &L, nullptr, 1, &x, false, &g), FLX_OK) << flx_last_error();
        std::vector<double> gv = values(g);
        EXPECT_EQ(gv[0], round_ref(fmt_of(dt), 0.5 / (double)N)) << flx_dtype_name(dt);
        EXPECT_EQ(gv[1], round_ref(fmt_of(dt), -0.5 / (double)N)) << flx_dtype_name(dt);
    }
}

// ---- derivatives: gradients and tangents in the parameter's dtype, close to f64 ----------------
// A rule is a graph of half ops, each rounding: the bound is a few ulps of the largest entry
// (relative 4 * 2^-p of max |exact|), stated per dtype.
::testing::AssertionResult near_rounded(flx_dtype dt, const std::vector<double> &a, const std::vector<double> &e,
                                        double ulps) {
    double scale = 0;
    for (double v : e) scale = std::max(scale, std::fabs(v));
    const double tol = ulps * std::ldexp(1.0, 1 - fmt_of(dt).p) * scale;
    return close(a, e, tol, 0);
}

TEST_F(Half, VjpAndJvpOfRepresentativeOps) {
    const int32_t ax1[1] = {1};
    flx_ctx *c = ctx;
    struct D {
        const char *name;
        Fn fn;
        std::vector<Shape> shapes;
    };
    std::vector<D> ds = {
        {"tanh*x", [](auto x) { return flx_mul(flx_tanh(x[0]), x[1]); }, {{4, 9}, {9}}},
        {"gelu", [](auto x) { return flx_gelu(x[0]); }, {{4, 9}}},
        {"matmul", [](auto x) { return flx_matmul(x[0], x[1]); }, {{5, 12}, {12, 3}}},
        {"softmax", [](auto x) { return flx_softmax(x[0], 1, 1.0); }, {{4, 9}}},
        {"log_softmax", [](auto x) { return flx_log_softmax(x[0], 1, 1.0); }, {{4, 9}}},
        {"layer_norm", [](auto x) { return flx_layer_norm(x[0], 1, x[1], x[2], 1e-5); }, {{4, 16}, {16}, {16}}},
        // 7 x 5 logits: an odd gradient length, so the f32 losses after it sit behind a pad
        {"cross_entropy", [c](auto x) { return flx_cross_entropy(x[0], labels_for(c, 7, 5), FLX_REDUCTION_MEAN, -100); },
         {{7, 5}}},
        {"cross_entropy_sum", [c](auto x) { return flx_cross_entropy(x[0], labels_for(c, 7, 5), FLX_REDUCTION_SUM, -100); },
         {{7, 5}}},
        {"sum", [&](auto x) { return flx_sum(flx_square(x[0]), 1, ax1, false); }, {{4, 9}}},
        {"embedding", [c](auto x) { return flx_embedding(x[0], make(c, FLX_I32, {4}, {1, 3, 1, 0})); }, {{5, 6}}},
    };
    for (flx_dtype dt : kHalves)
        for (size_t k = 0; k < ds.size(); k++) {
            const D &d = ds[k];
            std::vector<flx_tensor *> h, f;
            for (size_t i = 0; i < d.shapes.size(); i++) {
                h.push_back(flxt::rand_tensor(ctx, dt, d.shapes[i], 40 + 3 * k + i));
                f.push_back(flx_cast(h.back(), FLX_F64));
                flx_set_requires_grad(h.back(), true);
                flx_set_requires_grad(f.back(), true);
            }
            flx_tensor *yh = d.fn(h), *yf = d.fn(f);
            ASSERT_TRUE(yh && yf) << d.name << ": " << flx_last_error();
            // VJP with a half cotangent (the same values in f64)
            flx_tensor *uh = flxt::rand_tensor(ctx, dt, flxt::shape_of(yh), 77 + k);
            flx_tensor *uf = flx_cast(uh, FLX_F64);
            std::vector<flx_tensor *> gh(h.size()), gf(f.size());
            ASSERT_EQ(flx_grad_of(1, &yh, &uh, (int32_t)h.size(), h.data(), false, gh.data()), FLX_OK)
                << d.name << ": " << flx_last_error();
            ASSERT_EQ(flx_grad_of(1, &yf, &uf, (int32_t)f.size(), f.data(), false, gf.data()), FLX_OK);
            for (size_t i = 0; i < h.size(); i++) {
                EXPECT_EQ(flx_dtype_of(gh[i]), dt) << d.name;
                EXPECT_TRUE(near_rounded(dt, values(gh[i]), values(gf[i]), 4))
                    << d.name << " VJP input " << i << " " << flx_dtype_name(dt);
            }
            // JVP with half tangents
            std::vector<flx_tensor *> th, tf;
            for (size_t i = 0; i < h.size(); i++) {
                th.push_back(flxt::rand_tensor(ctx, dt, d.shapes[i], 90 + 3 * k + i));
                tf.push_back(flx_cast(th.back(), FLX_F64));
            }
            flx_tensor *jh = nullptr, *jf = nullptr;
            ASSERT_EQ(flx_jvp((int32_t)h.size(), h.data(), th.data(), 1, &yh, &jh), FLX_OK)
                << d.name << ": " << flx_last_error();
            ASSERT_EQ(flx_jvp((int32_t)f.size(), f.data(), tf.data(), 1, &yf, &jf), FLX_OK);
            EXPECT_EQ(flx_dtype_of(jh), dt) << d.name;
            EXPECT_TRUE(near_rounded(dt, values(jh), values(jf), 4)) << d.name << " JVP " << flx_dtype_name(dt);
        }
}

TEST_F(Half, SecondOrderThroughHalves) {
    // Hessian-vector product of sum(x^3): 6 x u, through the rules of the rules
    flx_tensor *x = make(ctx, FLX_BF16, {4}, {0.5, -1, 1.5, 2});
    flx_tensor *u = make(ctx, FLX_BF16, {4}, {1, 0.25, -2, 0.5});
    flx_set_requires_grad(x, true);
    flx_tensor *hv = nullptr;
    flx_tensor *L = flx_sum_all(flx_pow_scalar(x, 3.0)), *g = nullptr;
    ASSERT_EQ(flx_grad_of(1, &L, nullptr, 1, &x, true, &g), FLX_OK) << flx_last_error();
    flx_tensor *gu = flx_sum_all(flx_mul(g, u));
    ASSERT_EQ(flx_grad_of(1, &gu, nullptr, 1, &x, false, &hv), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_dtype_of(hv), FLX_BF16);
    EXPECT_TRUE(close(values(hv), {3, -1.5, -18, 6}, 0, 0));
}

TEST_F(Half, BatchNormRunningStatsKeepTheDtype) {
    for (flx_dtype dt : kHalves) {
        flx_tensor *x = flxt::rand_tensor(ctx, dt, {8, 3}, 5, -2, 2);
        flx_tensor *rm = make(ctx, dt, {3}, {0, 0.5, 1}), *rv = make(ctx, dt, {3}, {1, 1, 2});
        flx_tensor *nm = nullptr, *nv = nullptr;
        flx_tensor *y = flx_batch_norm(x, nullptr, nullptr, rm, rv, true, 0.1, 1e-5, &nm, &nv);
        ASSERT_TRUE(y && nm && nv) << flx_last_error();
        EXPECT_EQ(flx_dtype_of(y), dt);
        EXPECT_EQ(flx_dtype_of(nm), dt);
        EXPECT_EQ(flx_dtype_of(nv), dt);
        // the same update from the f64 values, rounded once (the stats are computed in f32)
        flx_tensor *xd = flx_cast(x, FLX_F64), *rmd = flx_cast(rm, FLX_F64), *rvd = flx_cast(rv, FLX_F64);
        flx_tensor *nmd = nullptr, *nvd = nullptr;
        flx_tensor *yd = flx_batch_norm(xd, nullptr, nullptr, rmd, rvd, true, 0.1, 1e-5, &nmd, &nvd);
        ASSERT_TRUE(yd && nmd && nvd) << flx_last_error();
        EXPECT_TRUE(within_ulps(dt, values(nm), values(nmd), 1)) << flx_dtype_name(dt);
        EXPECT_TRUE(within_ulps(dt, values(nv), values(nvd), 1)) << flx_dtype_name(dt);
        EXPECT_TRUE(within_ulps(dt, values(y), values(yd), 1)) << flx_dtype_name(dt);
    }
}

// ---- fusion: fused and unfused half chains give the same bits ------------------------------------
TEST_F(Half, FusedChainsRoundEveryStepLikeUnfused) {
    for (flx_dtype dt : kHalves) {
        std::vector<uint16_t> r[2];
        for (int fuse = 0; fuse < 2; fuse++) {
            ASSERT_EQ(flx_set_fusion(ctx, fuse == 1), FLX_OK);
            flx_tensor *x = flxt::rand_tensor(ctx, dt, {33, 65}, 1);
            flx_tensor *b = flxt::rand_tensor(ctx, dt, {65}, 2);
            flx_tensor *m = flx_gt(x, b);
            flx_tensor *y = flx_where(m, flx_gelu(flx_add(x, b)), flx_mul_scalar(flx_tanh(x), 0.3));
            y = flx_sub(flx_exp(flx_mul(y, y)), b);
            r[fuse] = raw16(y);
        }
        EXPECT_EQ(r[0], r[1]) << flx_dtype_name(dt);
    }
    ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
}

// ---- safetensors -----------------------------------------------------------------------------------
TEST_F(Half, SafetensorsRoundTrip) {
    const std::string path = ::testing::TempDir() + "flx_half_roundtrip.safetensors";
    std::vector<uint16_t> bits = {0x0000, 0x8000, 0x3c00, 0x7bff, 0x7c00, 0x0001, 0xfe01, 0x1234};
    const int64_t n = (int64_t)bits.size();
    flx_tensor *a = flx_from_host(ctx, FLX_F16, 1, &n, bits.data());
    flx_tensor *b = flx_from_host(ctx, FLX_BF16, 1, &n, bits.data());
    const char *names[2] = {"h", "b"};
    flx_tensor *ts[2] = {a, b};
    ASSERT_EQ(flx_save_safetensors(path.c_str(), 2, names, ts, 0, nullptr, nullptr), FLX_OK) << flx_last_error();
    std::ifstream in(path, std::ios::binary);
    std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(file.find("\"dtype\":\"F16\""), std::string::npos);
    EXPECT_NE(file.find("\"dtype\":\"BF16\""), std::string::npos);
    flx_checkpoint *ck = flx_load_safetensors(ctx, path.c_str());
    ASSERT_TRUE(ck) << flx_last_error();
    flx_tensor *la = flx_checkpoint_find(ck, "h"), *lb = flx_checkpoint_find(ck, "b");
    EXPECT_EQ(flx_dtype_of(la), FLX_F16);
    EXPECT_EQ(flx_dtype_of(lb), FLX_BF16);
    EXPECT_EQ(raw16(la), bits);
    EXPECT_EQ(raw16(lb), bits);
    flx_checkpoint_destroy(ck);
    std::remove(path.c_str());
}

// ---- refused inputs ------------------------------------------------------------------------------
TEST_F(Half, LinearAlgebraRefusesHalves) {
    for (flx_dtype dt : kHalves) {
        flx_tensor *A = make(ctx, dt, {2, 2}, {2, 1, 1, 3});
        flx_tensor *B = make(ctx, dt, {2, 1}, {1, 1});
        EXPECT_TRUE(flxt::fails_with(flx_det(A), FLX_ERR_DTYPE, "linear algebra takes f32 or f64"));
        EXPECT_TRUE(flxt::fails_with(flx_logdet(A), FLX_ERR_DTYPE, flx_dtype_name(dt)));
        EXPECT_TRUE(flxt::fails_with(flx_inv(A), FLX_ERR_DTYPE, "flx_inv"));
        EXPECT_TRUE(flxt::fails_with(flx_solve(A, B), FLX_ERR_DTYPE, "flx_solve"));
        EXPECT_TRUE(flxt::fails_with(flx_expm(A), FLX_ERR_DTYPE, "flx_expm"));
        flx_tensor *w = nullptr, *v = nullptr, *sg = nullptr, *ld = nullptr;
        EXPECT_EQ(flx_eigh(A, &w, &v), FLX_ERR_DTYPE);
        EXPECT_EQ(flx_slogdet(A, &sg, &ld), FLX_ERR_DTYPE);
        flx_clear_error();
        // what works: cast first
        double d = 0;
        ASSERT_EQ(flx_item(flx_det(flx_cast(A, FLX_F32)), &d), FLX_OK);
        EXPECT_EQ(d, 5.0);
    }
    // mixed halves in ops that need one dtype
    flx_tensor *h = make(ctx, FLX_F16, {2, 2}, {1, 2, 3, 4}), *b = make(ctx, FLX_BF16, {2, 2}, {1, 2, 3, 4});
    EXPECT_TRUE(flxt::fails_with(flx_matmul(h, b), FLX_ERR_DTYPE, "bf16"));
    EXPECT_TRUE(flxt::fails_with(flx_layer_norm(h, 1, b, nullptr, 1e-5), FLX_ERR_DTYPE, "gamma"));
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(h, make(ctx, FLX_F16, {2}, {0, 1}), FLX_REDUCTION_MEAN, -1),
                                 FLX_ERR_DTYPE, "labels"));
}

} // namespace
