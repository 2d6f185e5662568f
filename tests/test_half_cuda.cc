// test_half_cuda.cc — the CUDA backend's f16 and bf16 kernels checked against the CPU backend.
//
// Every test starts with FLX_REQUIRE_CUDA(g) (skipped without a GPU, a failure under
// FLX_REQUIRE_GPU=1) and runs each computation in bf16 and in f16 on the GPU and on the CPU from
// the same input bits (flx_from_host_as from doubles: the host rounds them, neither backend does).
//
// Bounds, and why they hold:
//   - The CPU computes every 16-bit op in double and rounds once; the GPU loads into f32, computes
//     in f32 and rounds once. f32 has 24 significand bits >= 2p + 2 for both formats (p = 8, 11),
//     so + - * / max min (and compares, casts, copies, where, gathers, max-pool) give the same
//     correctly rounded bits: 0 ulp. A transcendental formula (exp, tanh, gelu, pow ...) is within
//     a few f32 ulps (~2^-21 relative) of exact before the final rounding, far less than half an
//     ulp of either format (2^-9, 2^-12), so both backends round the same value except when the
//     exact result lies within that distance of a rounding boundary: then they differ by 1 ulp.
//     Hence 1 ulp for single-rounding ops.
//   - Reductions accumulate in double on both backends (sum, mean, var, max, logsumexp): they
//     differ only by the summation order (~n 2^-53 relative) before one rounding: 1 ulp.
//   - softmax / log_softmax / cross-entropy accumulate in f32 on the GPU (sums of n terms: at most
//     n 2^-24 relative, 2^-14 for n <= 1024, 2^-10 at n = 2^14) and in double on the CPU; with the
//     rows used here (entries in [-3, 3], so no entry dominates) the f32 error stays below half an
//     ulp of bf16 and within one ulp of f16 for the long rows: 1 ulp (2 for f16 rows past 4096).
//     log_softmax's (z - m) - log s loses to cancellation near 0: an absolute 2^-20 as well.
//   - matmul (cuBLAS, f32 accumulation on tensor cores) against the CPU's double accumulation:
//     both results are the exact sum S_ij rounded once after errors of at most K 2^-24 sum|a||b|
//     (GPU) and K 2^-53 (CPU), so |gpu - cpu| <= 2u |c| + 2 K 2^-24 (|A||B|)_ij, u = 2^-p.
//   - Composite ops (layer norm, batch norm: ~6 rounded intermediates, each 1 ulp apart at most
//     and passed on with condition ~1): 8 ulps of max(1, |y|).
// The fused elementwise kernel rounds after every instruction exactly like the unfused kernels,
// so on the GPU fused == unfused bit for bit (checked).
#include "testing.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

using flxt::rand_values;
using flxt::Shape;

using Build = std::function<flx_tensor *(flx_ctx *)>;

const flx_dtype kHalves[] = {FLX_BF16, FLX_F16};

size_t count(const Shape &s) {
    size_t n = 1;
    for (int64_t d : s) n *= (size_t)d;
    return n;
}

// Unit roundoff u = 2^-p of a 16-bit format (p significand bits, the implicit one included).
double unit(flx_dtype dt) { return dt == FLX_BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11); }

bool is_nan16(uint16_t b, flx_dtype dt) {
    return dt == FLX_BF16 ? ((b & 0x7f80) == 0x7f80 && (b & 0x007f))
                          : ((b & 0x7c00) == 0x7c00 && (b & 0x03ff));
}

// Sign-magnitude bits as an integer line on which neighbouring values differ by 1 (+0 == -0).
int64_t ordered(uint16_t b) {
    const int64_t m = b & 0x7fff;
    return (b & 0x8000) ? -m : m;
}

// A tensor of dtype dt from doubles, rounded on the host (the same bits on both contexts).
flx_tensor *in(flx_ctx *c, flx_dtype dt, const Shape &s, const std::vector<double> &v) {
    return flx_from_host_as(c, dt, (int32_t)s.size(), s.data(), FLX_F64, v.data());
}

flx_tensor *in_rand(flx_ctx *c, flx_dtype dt, const Shape &s, uint64_t seed, double lo = -3,
                    double hi = 3) {
    return in(c, dt, s, rand_values(count(s), seed, lo, hi));
}

// The results of one build on both contexts: doubles, and the raw bits of 16-bit results.
struct Both {
    flx_dtype dt = FLX_F32;
    std::vector<double> gv, cv;
    std::vector<uint16_t> gb, cb;
};

std::vector<double> as_f64(flx_tensor *t) {
    std::vector<double> v((size_t)flx_numel(t));
    if (flx_to_host_as(t, FLX_F64, v.data(), v.size() * sizeof(double) + 0) != FLX_OK)
        ADD_FAILURE() << "flx_to_host_as: " << flx_last_error();
    return v;
}

std::vector<uint16_t> bits(flx_tensor *t) {
    std::vector<uint16_t> b((size_t)flx_numel(t));
    if (flx_to_host(t, b.data(), b.size() * sizeof(uint16_t)) != FLX_OK)
        ADD_FAILURE() << "flx_to_host: " << flx_last_error();
    return b;
}

// Builds on the CPU and on the GPU (inside a scope), checks shape and dtype agree, reads both.
::testing::AssertionResult run_both(flx_ctx *g, flx_ctx *c, const Build &b, Both *r) {
    ::testing::AssertionResult res = ::testing::AssertionSuccess();
    flx_scope_begin();
    flx_tensor *tc = b(c);
    flx_tensor *tg = tc ? b(g) : nullptr;
    if (!tc || !tg) {
        res = ::testing::AssertionFailure() << (tc ? "GPU" : "CPU") << " build failed: " << flx_last_error();
    } else if (flxt::shape_of(tg) != flxt::shape_of(tc) || flx_dtype_of(tg) != flx_dtype_of(tc)) {
        res = ::testing::AssertionFailure() << "GPU and CPU results differ in shape or dtype ("
                                            << flx_dtype_name(flx_dtype_of(tg)) << " vs "
                                            << flx_dtype_name(flx_dtype_of(tc)) << ")";
    } else {
        r->dt = flx_dtype_of(tg);
        r->gv = as_f64(tg);
        r->cv = as_f64(tc);
        if (r->dt == FLX_F16 || r->dt == FLX_BF16) {
            r->gb = bits(tg);
            r->cb = bits(tc);
        }
    }
    flx_clear_error();
    flx_scope_end(0, nullptr);
    return res;
}

// Every 16-bit element within max_ulp of the CPU's (or within abs_slack); NaNs must match.
// Non-16-bit results (bool, i64) must be equal.
::testing::AssertionResult within(flx_ctx *g, flx_ctx *c, const Build &b, int max_ulp,
                                  double abs_slack = 0) {
    Both r;
    ::testing::AssertionResult ok = run_both(g, c, b, &r);
    if (!ok) return ok;
    if (r.gv.size() != r.cv.size()) return ::testing::AssertionFailure() << "sizes differ";
    int64_t worst = 0;
    for (size_t i = 0; i < r.gv.size(); i++) {
        if (r.gb.empty()) {
            if (!(r.gv[i] == r.cv[i] || (std::isnan(r.gv[i]) && std::isnan(r.cv[i]))))
                return ::testing::AssertionFailure() << "element " << i << ": GPU " << r.gv[i]
                                                     << " != CPU " << r.cv[i];
            continue;
        }
        const bool gn = is_nan16(r.gb[i], r.dt), cn = is_nan16(r.cb[i], r.dt);
        if (gn || cn) {
            if (gn != cn)
                return ::testing::AssertionFailure() << "element " << i << ": GPU " << r.gv[i]
                                                     << ", CPU " << r.cv[i] << " (NaN mismatch)";
            continue;
        }
        const int64_t d = std::llabs(ordered(r.gb[i]) - ordered(r.cb[i]));
        if (d > max_ulp && std::fabs(r.gv[i] - r.cv[i]) > abs_slack)
            return ::testing::AssertionFailure()
                   << flx_dtype_name(r.dt) << " element " << i << ": GPU " << r.gv[i] << " vs CPU "
                   << r.cv[i] << ": " << d << " ulp apart (bound " << max_ulp << ", slack "
                   << abs_slack << ")";
        if (d > worst) worst = d;
    }
    return ::testing::AssertionSuccess() << "worst " << worst << " ulp";
}

// |gpu - cpu| <= tol(i) for every element (NaNs must match).
::testing::AssertionResult bounded(flx_ctx *g, flx_ctx *c, const Build &b,
                                   const std::function<double(size_t)> &tol) {
    Both r;
    ::testing::AssertionResult ok = run_both(g, c, b, &r);
    if (!ok) return ok;
    for (size_t i = 0; i < r.gv.size(); i++) {
        if (std::isnan(r.gv[i]) || std::isnan(r.cv[i])) {
            if (std::isnan(r.gv[i]) != std::isnan(r.cv[i]))
                return ::testing::AssertionFailure() << "element " << i << ": NaN mismatch";
            continue;
        }
        if (!(std::fabs(r.gv[i] - r.cv[i]) <= tol(i)))
            return ::testing::AssertionFailure() << flx_dtype_name(r.dt) << " element " << i
                                                 << ": GPU " << r.gv[i] << " vs CPU " << r.cv[i]
                                                 << " (bound " << tol(i) << ")";
    }
    return ::testing::AssertionSuccess();
}

class HalfCudaTest : public ::testing::Test {
  protected:
    void SetUp() override {
        flx_clear_error();
        live_before = flx_live_tensors();
        cpu = flx_ctx_create(flx_device_cpu());
        ASSERT_NE(cpu, nullptr) << flx_last_error();
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
    }
    void TearDown() override {
        EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        EXPECT_EQ(flx_live_tensors(), live_before) << "tensors leaked by this test";
        if (flx_live_tensors() == live_before) EXPECT_EQ(flx_ctx_destroy(cpu), FLX_OK) << flx_last_error();
    }
    flx_ctx *cpu = nullptr;
    int64_t live_before = 0;
};

// Sizes that take the vectorised path (multiples of 8 halves), its tail, and the scalar path.
const int64_t kLens[] = {1, 7, 8, 1000, 4099, 65536 + 5};

// ---- creation and conversion ------------------------------------------------------------------
TEST_F(HalfCudaTest, FillAndCast) {
    FLX_REQUIRE_CUDA(g);
    const Shape s = {37, 29};
    for (flx_dtype dt : kHalves) {
        SCOPED_TRACE(flx_dtype_name(dt));
        // fill: one rounding from double on both backends
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_full(c, dt, 2, s.data(), 0.1); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_arange(c, dt, -3.0, 3.0, 0.013); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_eye(c, dt, 9, 13); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_uniform(c, dt, 2, s.data(), -2, 5, 3); }, 0));
        // normal: the Philox transform's double math may differ in its last bits between backends
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_randn(c, dt, 2, s.data(), 4); }, 1));
        // casts from and to every dtype (values with ties, big integers, overflow, specials)
        std::vector<double> v = rand_values(count(s), 5, -7e4, 7e4);
        const double sp[] = {0.0, -0.0, INFINITY, -INFINITY, NAN, 1.0 + 1.0 / 512, 65504, 65520,
                             3.4e38, -1e-8, 257, 2049};
        for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++) v[i * 13] = sp[i];
        for (flx_dtype from : {FLX_F64, FLX_F32, FLX_I32, FLX_I64, FLX_BOOL, FLX_F16, FLX_BF16}) {
            SCOPED_TRACE(flx_dtype_name(from));
            std::vector<double> w = v;
            if (from == FLX_I32 || from == FLX_I64)
                for (double &x : w) x = std::isfinite(x) ? std::trunc(x) : 0;
            if (from == FLX_BOOL)
                for (double &x : w) x = x > 0;
            EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_cast(in(c, from, s, w), dt); }, 0));
            EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_cast(in(c, dt, s, w), from); }, 0));
        }
    }
}

// ---- elementwise ------------------------------------------------------------------------------
TEST_F(HalfCudaTest, Unary) {
    FLX_REQUIRE_CUDA(g);
    typedef flx_tensor *(*U)(flx_tensor *);
    struct Case {
        const char *name;
        U f;
        double lo, hi;
    };
    const Case cases[] = {
        {"neg", flx_neg, -5, 5},          {"abs", flx_abs, -5, 5},
        {"square", flx_square, -50, 50},  {"sqrt", flx_sqrt, 0, 100},
        {"rsqrt", flx_rsqrt, 0.01, 100},  {"reciprocal", flx_reciprocal, 0.01, 100},
        {"exp", flx_exp, -10, 10},        {"log", flx_log, 1e-3, 1e3},
        {"log1p", flx_log1p, -0.9, 10},   {"sin", flx_sin, -6, 6},
        {"cos", flx_cos, -6, 6},          {"tanh", flx_tanh, -4, 4},
        {"sinh", flx_sinh, -4, 4},        {"cosh", flx_cosh, -4, 4},
        {"erf", flx_erf, -3, 3},          {"sigmoid", flx_sigmoid, -8, 8},
        {"relu", flx_relu, -2, 2},        {"gelu", flx_gelu, -3, 3},
        {"softplus", flx_softplus, -8, 8}, {"sign", flx_sign, -1, 1},
    };
    for (flx_dtype dt : kHalves) {
        for (const Case &k : cases) {
            for (int64_t n : kLens) {
                SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " " + k.name + " n=" + std::to_string(n));
                const int exact = k.f == flx_neg || k.f == flx_abs || k.f == flx_square ||
                                  k.f == flx_sqrt || k.f == flx_reciprocal || k.f == flx_relu ||
                                  k.f == flx_sign;
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return k.f(in_rand(c, dt, {n}, 11 + n, k.lo, k.hi)); },
                                   exact ? 0 : 1));
            }
        }
        SCOPED_TRACE(flx_dtype_name(dt));
        // parametrised ops
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_affine(in_rand(c, dt, {4099}, 2), 0.37, -1.5); }, 1));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_pow_scalar(in_rand(c, dt, {4099}, 3, 0, 4), 2.5); }, 1));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_clamp(in_rand(c, dt, {4099}, 4), -1, 0.5); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_leaky_relu(in_rand(c, dt, {4099}, 5), 0.1); }, 1));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_elu(in_rand(c, dt, {4099}, 6), 1.0); }, 1));
        // specials pass through (NaN stays NaN, inf behaves)
        std::vector<double> sp = {NAN, INFINITY, -INFINITY, 0.0, -0.0, 1e-7, 7e4, -7e4};
        for (U f : {flx_exp, flx_tanh, flx_relu, flx_sigmoid, flx_gelu})
            EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return f(in(c, dt, {8}, sp)); }, 1));
    }
}

TEST_F(HalfCudaTest, BinaryAndWhere) {
    FLX_REQUIRE_CUDA(g);
    typedef flx_tensor *(*B)(flx_tensor *, flx_tensor *);
    const B exact[] = {flx_add, flx_sub, flx_mul, flx_div, flx_maximum, flx_minimum,
                       flx_eq, flx_ne, flx_lt, flx_le, flx_gt, flx_ge};
    // contiguous (vectorised and tail), broadcast rows/columns, a transposed operand
    const std::vector<std::pair<Shape, Shape>> shapes = {
        {{4099}, {4099}}, {{65541}, {65541}}, {{33, 70}, {70}}, {{33, 70}, {33, 1}}, {{1}, {1000}}};
    for (flx_dtype dt : kHalves) {
        for (const auto &sh : shapes) {
            for (B f : exact) {
                SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " shape " + std::to_string(count(sh.first)));
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) {
                    return f(in_rand(c, dt, sh.first, 21, -4, 4), in_rand(c, dt, sh.second, 22, 0.25, 4));
                }, 0));
            }
            EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) {
                return flx_pow(in_rand(c, dt, sh.first, 23, 0.1, 3), in_rand(c, dt, sh.second, 24, -2, 2));
            }, 1));
        }
        SCOPED_TRACE(flx_dtype_name(dt));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) {
            flx_tensor *a = flx_transpose(in_rand(c, dt, {70, 33}, 25), 0, 1);
            return flx_add(a, in_rand(c, dt, {33, 70}, 26));
        }, 0));
        // ties of the rounding: 1 + 2^-p exactly halfway products and sums
        std::vector<double> a = {1.0, 1.0 + 2 * unit(dt), 3.0, 0.5, -1.0, 65504, 1e-5, NAN};
        std::vector<double> b = {unit(dt), unit(dt), unit(dt) * 3, 1.0 + 2 * unit(dt), unit(dt), 65504, 1e-5, 1};
        for (B f : {flx_add, flx_sub, flx_mul, flx_div})
            EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return f(in(c, dt, {8}, a), in(c, dt, {8}, b)); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) {
            flx_tensor *x = in_rand(c, dt, {33, 70}, 27);
            return flx_where(flx_gt(x, flx_zeros(c, dt, 0, nullptr)), x, in_rand(c, dt, {70}, 28));
        }, 0));
    }
}

// Fused chains round after every instruction, as the unfused kernels do: on the GPU the fused
// and unfused results are the same bits; against the CPU, 1 ulp per transcendental step (gelu).
TEST_F(HalfCudaTest, FusedEqualsUnfused) {
    FLX_REQUIRE_CUDA(g);
    bool was = true;
    ASSERT_EQ(flx_get_fusion(g, &was), FLX_OK);
    for (flx_dtype dt : kHalves) {
        SCOPED_TRACE(flx_dtype_name(dt));
        const Build chain = [&](flx_ctx *c) {
            flx_tensor *x = in_rand(c, dt, {257, 129}, 31), *w = in_rand(c, dt, {129}, 32);
            flx_tensor *b = in_rand(c, dt, {257, 1}, 33);
            return flx_mul(flx_gelu(flx_add(flx_mul(x, w), b)), flx_sigmoid(x));
        };
        std::vector<uint16_t> fused, plain;
        for (bool on : {true, false}) {
            ASSERT_EQ(flx_set_fusion(g, on), FLX_OK);
            flx_scope_begin();
            flx_tensor *t = chain(g);
            ASSERT_NE(t, nullptr) << flx_last_error();
            (on ? fused : plain) = bits(t);
            flx_scope_end(0, nullptr);
        }
        EXPECT_EQ(fused, plain);
        ASSERT_EQ(flx_set_fusion(g, true), FLX_OK);
        EXPECT_TRUE(within(g, cpu, chain, 3));
    }
    ASSERT_EQ(flx_set_fusion(g, was), FLX_OK);
}

// ---- data movement ----------------------------------------------------------------------------
TEST_F(HalfCudaTest, CopiesAndEmbedding) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kHalves) {
        SCOPED_TRACE(flx_dtype_name(dt));
        const int32_t perm[] = {2, 0, 1};
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_permute(in_rand(c, dt, {5, 17, 33}, 41), perm); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_slice(in_rand(c, dt, {40, 33}, 42), 1, 3, 30, 2); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) {
            flx_tensor *xs[] = {in_rand(c, dt, {7, 5}, 43), in_rand(c, dt, {7, 9}, 44)};
            return flx_concat(2, xs, 1);
        }, 0));
        // embedding: a gather (exact) and its gradient, rows summed in f32 (GPU) / double (CPU)
        // and rounded once: |diff| <= 2u |sum| + n 2^-24 sum|g| with n the repeats of a row
        const int64_t V = 50, D = 24, N = 700;
        std::vector<double> idx(N);
        for (int64_t i = 0; i < N; i++) idx[(size_t)i] = (double)((i * 7 + i / 9) % V);
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) {
            return flx_embedding(in_rand(c, dt, {V, D}, 45), in(c, FLX_I64, {N}, idx));
        }, 0));
        std::vector<double> gout = rand_values((size_t)(N * D), 46, -1, 1);
        // (each row sums at most 28 cotangent rows of entries in [-1, 1])
        EXPECT_TRUE(bounded(g, cpu, [&](flx_ctx *c) -> flx_tensor * {
            flx_tensor *w = in_rand(c, dt, {V, D}, 45);
            flx_set_requires_grad(w, true);
            flx_tensor *y = flx_embedding(w, in(c, FLX_I64, {N}, idx));
            flx_tensor *cot = in(c, dt, {N, D}, gout), *gw = nullptr;
            if (flx_grad_of(1, &y, &cot, 1, &w, false, &gw) != FLX_OK) return nullptr;
            return gw;
        }, [&](size_t) { return 2 * unit(dt) * 28 + 28 * std::ldexp(1.0, -24) * 28; }));
    }
}

// ---- reductions -------------------------------------------------------------------------------
TEST_F(HalfCudaTest, Reductions) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kHalves) {
        // rows and columns, short and long extents (warp, block and split-over-blocks paths)
        for (const Shape &s : std::vector<Shape>{{1000}, {3, 100000}, {5000, 7}, {64, 33, 9}}) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " numel " + std::to_string(count(s)));
            for (int32_t ax = 0; ax < (int32_t)s.size(); ax++) {
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_sum(in_rand(c, dt, s, 51), 1, &ax, false); }, 1));
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_mean(in_rand(c, dt, s, 52), 1, &ax, true); }, 1));
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_max(in_rand(c, dt, s, 53), 1, &ax, false); }, 0));
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_argmax(in_rand(c, dt, s, 54), ax, false); }, 0));
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_var(in_rand(c, dt, s, 55), 1, &ax, false, 1); }, 1));
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_logsumexp(in_rand(c, dt, s, 56), 1, &ax, false); }, 1));
            }
            EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_sum_all(in_rand(c, dt, s, 57)); }, 1));
        }
    }
}

// ---- softmax family ---------------------------------------------------------------------------
TEST_F(HalfCudaTest, SoftmaxForwardAndDerivatives) {
    FLX_REQUIRE_CUDA(g);
    // row lengths for every mapping: lane groups, a warp, a block, a cluster (> 16384), strided
    const std::vector<std::pair<Shape, int32_t>> cases = {
        {{300, 5}, 1}, {{200, 100}, 1}, {{64, 1000}, 1}, {{8, 6000}, 1}, {{2, 40000}, 1},
        {{700, 6}, 0}, {{3000, 4}, 0}};
    for (flx_dtype dt : kHalves) {
        for (const auto &k : cases) {
            const Shape s = k.first;
            const int32_t ax = k.second;
            const int64_t n = s[(size_t)ax];
            const int ulp = (dt == FLX_F16 && n > 4096) ? 2 : 1;
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " n=" + std::to_string(n) + " axis " + std::to_string(ax));
            EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_softmax(in_rand(c, dt, s, 61), ax, 1.0); }, ulp));
            EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_log_softmax(in_rand(c, dt, s, 62), ax, 0.7); },
                               ulp, std::ldexp(1.0, -20) * 8));
            // VJPs (softmax: s y (v - <y, v>); log_softmax: s (v - e^y sum v)): the same bounds
            // plus an absolute one, since the results cancel towards 0
            for (int log : {0, 1}) {
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) -> flx_tensor * {
                    flx_tensor *x = in_rand(c, dt, s, 63);
                    flx_set_requires_grad(x, true);
                    flx_tensor *y = log ? flx_log_softmax(x, ax, 1.0) : flx_softmax(x, ax, 1.0);
                    flx_tensor *cot = in_rand(c, dt, s, 64, -1, 1), *gx = nullptr;
                    if (flx_grad_of(1, &y, &cot, 1, &x, false, &gx) != FLX_OK) return nullptr;
                    return gx;
                }, ulp + 1, 4 * unit(dt) / (double)n + std::ldexp(1.0, -18)));
                // JVP
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) -> flx_tensor * {
                    flx_tensor *x = in_rand(c, dt, s, 65);
                    flx_tensor *y = log ? flx_log_softmax(x, ax, 1.0) : flx_softmax(x, ax, 1.0);
                    flx_tensor *t = in_rand(c, dt, s, 66, -1, 1), *ty = nullptr;
                    if (flx_jvp(1, &x, &t, 1, &y, &ty) != FLX_OK) return nullptr;
                    return ty;
                }, ulp + 1, 4 * unit(dt) / (double)n + std::ldexp(1.0, -18)));
            }
        }
    }
}

TEST_F(HalfCudaTest, CrossEntropy) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kHalves) {
        for (int64_t C : {10, 1000, 20000}) {
            const int64_t N = 300;
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " C=" + std::to_string(C));
            std::vector<double> lab(N);
            for (int64_t i = 0; i < N; i++) lab[(size_t)i] = i % 17 == 0 ? -100 : (double)((i * 31) % C);
            for (flx_reduction red : {FLX_REDUCTION_MEAN, FLX_REDUCTION_SUM, FLX_REDUCTION_NONE}) {
                // the per-row losses are f32 statistics on both backends, rounded once to dt
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) {
                    return flx_cross_entropy(in_rand(c, dt, {N, C}, 71), in(c, FLX_I64, {N}, lab), red, -100);
                }, 1, red == FLX_REDUCTION_NONE ? 0 : 4 * unit(dt)));
                // the fused gradient (softmax - onehot) / count
                EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) -> flx_tensor * {
                    flx_tensor *x = in_rand(c, dt, {N, C}, 72);
                    flx_set_requires_grad(x, true);
                    flx_tensor *L = flx_cross_entropy(x, in(c, FLX_I64, {N}, lab), red, -100), *gx = nullptr;
                    flx_tensor *cot = red == FLX_REDUCTION_NONE ? in_rand(c, dt, {N}, 73, -1, 1) : nullptr;
                    if (flx_grad_of(1, &L, cot ? &cot : nullptr, 1, &x, false, &gx) != FLX_OK) return nullptr;
                    return gx;
                }, 1, std::ldexp(1.0, -24)));
            }
        }
    }
}

// ---- composites: layer norm, batch norm -------------------------------------------------------
TEST_F(HalfCudaTest, Norms) {
    FLX_REQUIRE_CUDA(g);
    for (flx_dtype dt : kHalves) {
        SCOPED_TRACE(flx_dtype_name(dt));
        const double u = unit(dt);
        auto tol = [&](size_t) { return 16 * u * 4; }; // 8 ulps of max(1, |y|), |y| <= 4 here
        EXPECT_TRUE(bounded(g, cpu, [&](flx_ctx *c) {
            return flx_layer_norm(in_rand(c, dt, {64, 768}, 81), 1, in_rand(c, dt, {768}, 82, 0.5, 1.5),
                                  in_rand(c, dt, {768}, 83, -0.5, 0.5), 1e-5);
        }, tol));
        EXPECT_TRUE(bounded(g, cpu, [&](flx_ctx *c) {
            return flx_batch_norm(in_rand(c, dt, {32, 16, 5, 5}, 84), in_rand(c, dt, {16}, 85, 0.5, 1.5),
                                  in_rand(c, dt, {16}, 86, -0.5, 0.5), nullptr, nullptr, true, 0.1, 1e-5,
                                  nullptr, nullptr);
        }, tol));
    }
}

// ---- matmul -----------------------------------------------------------------------------------
// |gpu - cpu| <= 2u |c| + 2 K 2^-24 (|A||B|)_ij (f32 accumulation against double, both rounded
// once); |c| <= (|A||B|)_ij, so the bound is taken as (2u + 2K 2^-24) (|A||B|)_ij.
TEST_F(HalfCudaTest, Matmul) {
    FLX_REQUIRE_CUDA(g);
    struct Case {
        int64_t batch, m, k, n;
        bool ta, tb;
    };
    const Case cases[] = {{1, 64, 64, 64, false, false},  {1, 33, 1000, 17, false, false},
                          {1, 128, 768, 256, true, false}, {1, 100, 300, 50, false, true},
                          {4, 31, 77, 45, false, false},   {3, 16, 4096, 8, true, true}};
    for (flx_dtype dt : kHalves) {
        for (const Case &k : cases) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " b" + std::to_string(k.batch) + " m" +
                         std::to_string(k.m) + " k" + std::to_string(k.k) + " n" + std::to_string(k.n));
            const Shape sa = k.ta ? Shape{k.batch, k.k, k.m} : Shape{k.batch, k.m, k.k};
            const Shape sb = k.tb ? Shape{k.batch, k.n, k.k} : Shape{k.batch, k.k, k.n};
            // |A||B| on the host from the values as rounded to dt (read back from the CPU tensors)
            std::vector<double> av, bv;
            {
                flx_scope_begin();
                av = as_f64(in_rand(cpu, dt, sa, 91));
                bv = as_f64(in_rand(cpu, dt, sb, 92));
                flx_scope_end(0, nullptr);
            }
            std::vector<double> mag((size_t)(k.batch * k.m * k.n), 0.0);
            for (int64_t b = 0; b < k.batch; b++)
                for (int64_t i = 0; i < k.m; i++)
                    for (int64_t j = 0; j < k.n; j++) {
                        double s = 0;
                        for (int64_t p = 0; p < k.k; p++) {
                            double x = k.ta ? av[(size_t)((b * k.k + p) * k.m + i)] : av[(size_t)((b * k.m + i) * k.k + p)];
                            double y = k.tb ? bv[(size_t)((b * k.n + j) * k.k + p)] : bv[(size_t)((b * k.k + p) * k.n + j)];
                            s += std::fabs(x * y);
                        }
                        mag[(size_t)((b * k.m + i) * k.n + j)] = s;
                    }
            const double f = 2 * unit(dt) + 2 * (double)k.k * std::ldexp(1.0, -24);
            EXPECT_TRUE(bounded(g, cpu, [&](flx_ctx *c) {
                flx_tensor *a = in_rand(c, dt, sa, 91), *b = in_rand(c, dt, sb, 92);
                if (k.ta) a = flx_transpose(a, 1, 2);
                if (k.tb) b = flx_transpose(b, 1, 2);
                return flx_matmul(a, b);
            }, [&](size_t i) { return f * mag[i]; }));
        }
        // a broadcast operand (one matrix for every batch) and the gradients of both operands
        SCOPED_TRACE(flx_dtype_name(dt));
        EXPECT_TRUE(bounded(g, cpu, [&](flx_ctx *c) -> flx_tensor * {
            flx_tensor *a = in_rand(c, dt, {6, 40, 96}, 93, -1, 1), *w = in_rand(c, dt, {96, 24}, 94, -1, 1);
            flx_set_requires_grad(w, true);
            flx_tensor *y = flx_matmul(a, w), *cot = in_rand(c, dt, {6, 40, 24}, 95, -1, 1), *gw = nullptr;
            if (flx_grad_of(1, &y, &cot, 1, &w, false, &gw) != FLX_OK) return nullptr;
            return gw; // K = 240 products of magnitude <= 1 per entry
        }, [&](size_t) { return (2 * unit(dt) + 2 * 240 * std::ldexp(1.0, -24)) * 240; }));
    }
}

// ---- convolution and pooling ------------------------------------------------------------------
TEST_F(HalfCudaTest, ConvAndPool) {
    FLX_REQUIRE_CUDA(g);
    const int64_t st[] = {2, 1}, pad[] = {1, 2}, dil[] = {1, 2}, ker[] = {3, 3};
    for (flx_dtype dt : kHalves) {
        SCOPED_TRACE(flx_dtype_name(dt));
        // im2col is a copy; col2im sums at most KH KW = 9 entries (f32 on the GPU): 1 ulp plus
        // 9 2^-24 of the summands' magnitude (<= 3 each)
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_im2col(in_rand(c, dt, {2, 3, 11, 13}, 101), ker, st, pad, dil); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) -> flx_tensor * {
            flx_tensor *x = in_rand(c, dt, {2, 3, 11, 13}, 102);
            flx_tensor *cols = flx_im2col(x, ker, st, pad, dil);
            if (!cols) return nullptr;
            const int64_t hw[] = {11, 13};
            return flx_col2im(flx_affine(cols, 1.0, 0.0), hw, ker, st, pad, dil);
        }, 1, 27 * std::ldexp(1.0, -24)));
        // conv2d = im2col + matmul + bias: the matmul bound with K = C KH KW = 27 and entries
        // <= 3 and 1 (|A||B| <= 81), then one more rounding of the bias add (2u |y|, |y| <= 82)
        const double f = (2 * unit(dt) + 2 * 27 * std::ldexp(1.0, -24)) * 81 + 2 * unit(dt) * 82;
        EXPECT_TRUE(bounded(g, cpu, [&](flx_ctx *c) {
            return flx_conv2d(in_rand(c, dt, {2, 3, 11, 13}, 103), in_rand(c, dt, {5, 3, 3, 3}, 104, -1, 1),
                              in_rand(c, dt, {5}, 105, -1, 1), st, pad, dil);
        }, [&](size_t) { return f; }));
        // max-pool picks stored values (exact), its indices are integers, its gradient a gather
        const int64_t pk[] = {3, 3}, ps[] = {2, 2}, pp[] = {1, 1};
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_max_pool2d(in_rand(c, dt, {2, 4, 15, 14}, 106), pk, ps, pp, nullptr); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) { return flx_max_pool2d_indices(in_rand(c, dt, {2, 4, 15, 14}, 106), pk, ps, pp, nullptr); }, 0));
        EXPECT_TRUE(within(g, cpu, [&](flx_ctx *c) -> flx_tensor * {
            flx_tensor *x = in_rand(c, dt, {2, 4, 15, 14}, 107);
            flx_set_requires_grad(x, true);
            flx_tensor *y = flx_max_pool2d(x, pk, ps, pp, nullptr);
            if (!y) return nullptr;
            const int64_t ys[] = {2, 4, 8, 7};
            flx_tensor *cot = in_rand(c, dt, Shape(ys, ys + 4), 108, -1, 1), *gx = nullptr;
            if (flx_grad_of(1, &y, &cot, 1, &x, false, &gx) != FLX_OK) return nullptr;
            return gx;
        }, 1));
    }
}

}  // namespace
