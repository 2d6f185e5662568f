// test_conv.cc — sliding-window layers: conv2d, im2col/col2im, max_pool2d (values,
// indices, argmax-routed gradient), avg_pool2d. Values against independent float64 loops at odd
// sizes with stride/padding/dilation, VJPs by gradcheck, JVPs by jvp_check, second derivatives,
// bad inputs, and GPU against CPU (skipped with the reason when no GPU is present).
#include <algorithm>
#include <cmath>
#include <limits>

#include "testing.h"

using namespace flxt;

namespace {

using ConvTest = CpuTest;

// flx_grad_of needs inputs that require grad and grad mode on; the finite-difference points of
// gradcheck and jvp_check are constants evaluated in no-grad mode (pattern of test_linalg.cc).

struct Win {
    int64_t k[2], s[2], p[2], d[2];
};

int64_t olen(int64_t L, int64_t k, int64_t s, int64_t p, int64_t d) {
    return (L + 2 * p - d * (k - 1) - 1) / s + 1;
}

// y[n,o,i,j] = b[o] + sum w[o,c,ki,kj] x[n,c,i s - p + ki d, j s - p + kj d].
std::vector<double> ref_conv(const std::vector<double> &x, const Shape &xs,
                             const std::vector<double> &w, const Shape &ws,
                             const std::vector<double> *b, const Win &g, Shape *os) {
    int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3], O = ws[0], KH = ws[2], KW = ws[3];
    int64_t OH = olen(H, KH, g.s[0], g.p[0], g.d[0]), OW = olen(W, KW, g.s[1], g.p[1], g.d[1]);
    *os = {N, O, OH, OW};
    std::vector<double> y((size_t)(N * O * OH * OW));
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < OH; i++)
                for (int64_t j = 0; j < OW; j++) {
                    double acc = b ? (*b)[(size_t)o] : 0.0;
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t ki = 0; ki < KH; ki++)
                            for (int64_t kj = 0; kj < KW; kj++) {
                                int64_t h = i * g.s[0] - g.p[0] + ki * g.d[0];
                                int64_t ww = j * g.s[1] - g.p[1] + kj * g.d[1];
                                if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
                                acc += w[(size_t)(((o * C + c) * KH + ki) * KW + kj)] *
                                       x[(size_t)(((n * C + c) * H + h) * W + ww)];
                            }
                    y[(size_t)(((n * O + o) * OH + i) * OW + j)] = acc;
                }
    return y;
}

// Max (or average with zero padding counted) pooling; idx gets the first argmax (flat).
std::vector<double> ref_pool(const std::vector<double> &x, const Shape &xs, const Win &g, bool avg,
                             Shape *os, std::vector<double> *idx) {
    int64_t NC = xs[0] * xs[1], H = xs[2], W = xs[3];
    int64_t OH = olen(H, g.k[0], g.s[0], g.p[0], g.d[0]), OW = olen(W, g.k[1], g.s[1], g.p[1], g.d[1]);
    *os = {xs[0], xs[1], OH, OW};
    std::vector<double> y;
    if (idx) idx->clear();
    for (int64_t nc = 0; nc < NC; nc++)
        for (int64_t i = 0; i < OH; i++)
            for (int64_t j = 0; j < OW; j++) {
                double best = -std::numeric_limits<double>::infinity(), sum = 0;
                int64_t arg = -1;
                for (int64_t ki = 0; ki < g.k[0]; ki++)
                    for (int64_t kj = 0; kj < g.k[1]; kj++) {
                        int64_t h = i * g.s[0] - g.p[0] + ki * g.d[0];
                        int64_t w = j * g.s[1] - g.p[1] + kj * g.d[1];
                        if (h < 0 || h >= H || w < 0 || w >= W) continue;
                        int64_t p = (nc * H + h) * W + w;
                        sum += x[(size_t)p];
                        if (arg < 0 || x[(size_t)p] > best) {
                            best = x[(size_t)p];
                            arg = p;
                        }
                    }
                y.push_back(avg ? sum / (double)(g.k[0] * g.k[1]) : best);
                if (idx) idx->push_back((double)arg);
            }
    return y;
}

std::vector<Win> windows() {
    return {
        {{3, 3}, {1, 1}, {0, 0}, {1, 1}},
        {{3, 2}, {2, 1}, {1, 0}, {1, 2}},
        {{2, 3}, {1, 2}, {1, 1}, {2, 1}},
        {{1, 1}, {3, 2}, {0, 0}, {1, 1}},
        {{3, 3}, {2, 2}, {1, 1}, {2, 2}},
    };
}

TEST_F(ConvTest, Conv2dValuesOddSizes) {
    const Shape shapes[] = {{2, 3, 7, 5}, {1, 1, 9, 8}, {3, 2, 6, 11}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        uint64_t seed = 1;
        for (const Shape &xs : shapes)
            for (const Win &g : windows()) {
                for (bool bias : {true, false}) {
                    Shape ws = {4, xs[1], g.k[0], g.k[1]};
                    auto xv = rand_values(1 * (size_t)(xs[0] * xs[1] * xs[2] * xs[3]), seed++);
                    auto wv = rand_values((size_t)(ws[0] * ws[1] * ws[2] * ws[3]), seed++);
                    auto bv = rand_values(4, seed++);
                    flx_tensor *x = make(ctx, dt, xs, xv), *w = make(ctx, dt, ws, wv);
                    flx_tensor *b = bias ? make(ctx, dt, {4}, bv) : nullptr;
                    flx_tensor *y = flx_conv2d(x, w, b, g.s, g.p, g.d);
                    ASSERT_NE(y, nullptr) << flx_last_error();
                    Shape os;
                    auto ref = ref_conv(xv, xs, wv, ws, bias ? &bv : nullptr, g, &os);
                    EXPECT_EQ(shape_of(y), os);
                    double tol = dt == FLX_F64 ? 1e-12 : 1e-5;
                    EXPECT_TRUE(close(values(y), ref, tol, tol))
                        << "k " << g.k[0] << "x" << g.k[1] << " s " << g.s[0] << "," << g.s[1]
                        << " p " << g.p[0] << "," << g.p[1] << " d " << g.d[0] << "," << g.d[1];
                }
            }
    }
}

TEST_F(ConvTest, Conv2dDefaultsAndGradcheck) {
    for (const Win &g : windows()) {
        Shape xs = {2, 2, 6, 5}, ws = {3, 2, g.k[0], g.k[1]};
        flx_tensor *x = rand_tensor(ctx, FLX_F64, xs, 3);
        flx_tensor *w = rand_tensor(ctx, FLX_F64, ws, 4);
        flx_tensor *b = rand_tensor(ctx, FLX_F64, {3}, 5);
        Win gg = g;
        auto fn = [gg](const std::vector<flx_tensor *> &in) {
            return flx_conv2d(in[0], in[1], in[2], gg.s, gg.p, gg.d);
        };
        EXPECT_EQ(gradcheck(fn, {x, w, b}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(fn, {x, w, b}));
    }
    // Defaults: stride 1, padding 0, dilation 1.
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {1, 2, 5, 4}, 8);
    flx_tensor *w = rand_tensor(ctx, FLX_F64, {2, 2, 2, 3}, 9);
    int64_t one[2] = {1, 1}, zero[2] = {0, 0};
    EXPECT_TRUE(close(values(flx_conv2d(x, w, nullptr, nullptr, nullptr, nullptr)),
                      values(flx_conv2d(x, w, nullptr, one, zero, one))));
}

TEST_F(ConvTest, Conv2dSecondOrder) {
    // d/dx <v, grad_w <u, conv(x, w)>> through col2im/im2col: reverse-over-reverse gradcheck.
    int64_t s[2] = {2, 1}, p[2] = {1, 1}, d[2] = {1, 2};
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {2, 2, 5, 6}, 21);
    flx_tensor *w = rand_tensor(ctx, FLX_F64, {2, 2, 3, 2}, 22);
    auto fn = [&](const std::vector<flx_tensor *> &in) -> flx_tensor * {
        GradOn on;
        need_grad(in);
        flx_tensor *y = flx_conv2d(in[0], in[1], nullptr, s, p, d);
        flx_tensor *l = flx_sum_all(flx_square(y));
        flx_tensor *g[2] = {nullptr, nullptr};
        flx_tensor *ins[2] = {in[0], in[1]};
        if (flx_grad_of(1, &l, nullptr, 2, ins, true, g) != FLX_OK) return nullptr;
        return flx_add(flx_sum_all(flx_square(g[0])), flx_sum_all(flx_square(g[1])));
    };
    EXPECT_EQ(gradcheck(fn, {x, w}, 1e-5, 1e-6, 1e-5), FLX_OK) << flx_last_error();
}

TEST_F(ConvTest, Im2colCol2imAreTransposes) {
    for (const Win &g : windows()) {
        Shape xs = {2, 3, 7, 6};
        flx_tensor *x = rand_tensor(ctx, FLX_F64, xs, 31);
        flx_tensor *cols = flx_im2col(x, g.k, g.s, g.p, g.d);
        ASSERT_NE(cols, nullptr) << flx_last_error();
        int64_t OH = olen(7, g.k[0], g.s[0], g.p[0], g.d[0]), OW = olen(6, g.k[1], g.s[1], g.p[1], g.d[1]);
        EXPECT_EQ(shape_of(cols), (Shape{2, 3 * g.k[0] * g.k[1], OH * OW}));
        flx_tensor *c = rand_tensor(ctx, FLX_F64, shape_of(cols), 32);
        int64_t hw[2] = {7, 6};
        flx_tensor *xi = flx_col2im(c, hw, g.k, g.s, g.p, g.d);
        ASSERT_NE(xi, nullptr) << flx_last_error();
        // <im2col(x), c> == <x, col2im(c)>
        double lhs = 0, rhs = 0;
        auto a = values(cols), cv = values(c), xv = values(x), bv = values(xi);
        for (size_t i = 0; i < a.size(); i++) lhs += a[i] * cv[i];
        for (size_t i = 0; i < xv.size(); i++) rhs += xv[i] * bv[i];
        EXPECT_NEAR(lhs, rhs, 1e-10);
        Win gg = g;
        auto f1 = [gg](const std::vector<flx_tensor *> &in) { return flx_im2col(in[0], gg.k, gg.s, gg.p, gg.d); };
        auto f2 = [gg, hw](const std::vector<flx_tensor *> &in) {
            return flx_col2im(in[0], hw, gg.k, gg.s, gg.p, gg.d);
        };
        EXPECT_EQ(gradcheck(f1, {x}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(f1, {x}));
        EXPECT_EQ(gradcheck(f2, {c}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(f2, {c}));
    }
}

TEST_F(ConvTest, MaxPoolValuesIndicesAndGradient) {
    std::vector<Win> ws = {
        {{2, 2}, {2, 2}, {0, 0}, {1, 1}},
        {{3, 3}, {2, 2}, {1, 1}, {1, 1}},
        {{3, 2}, {1, 2}, {1, 1}, {2, 1}},
        {{2, 3}, {3, 1}, {1, 0}, {1, 2}},
    };
    for (flx_dtype dt : {FLX_F64, FLX_F32})
        for (const Win &g : ws) {
            Shape xs = {2, 3, 7, 9};
            auto xv = rand_values(2 * 3 * 7 * 9, 41); // distinct values: no ties
            flx_tensor *x = make(ctx, dt, xs, xv);
            if (dt == FLX_F64) flx_set_requires_grad(x, true);
            flx_tensor *y = flx_max_pool2d(x, g.k, g.s, g.p, g.d);
            ASSERT_NE(y, nullptr) << flx_last_error();
            Shape os;
            std::vector<double> idx;
            auto ref = ref_pool(xv, xs, g, false, &os, &idx);
            EXPECT_EQ(shape_of(y), os);
            double tol = dt == FLX_F64 ? 0 : 1e-7;
            EXPECT_TRUE(close(values(y), ref, tol, tol));
            flx_tensor *ix = flx_max_pool2d_indices(x, g.k, g.s, g.p, g.d);
            ASSERT_NE(ix, nullptr) << flx_last_error();
            EXPECT_EQ(flx_dtype_of(ix), FLX_I64);
            EXPECT_TRUE(close(values(ix), idx, 0, 0));
            if (dt != FLX_F64) continue;
            // The gradient routes each window's cotangent to its argmax.
            flx_tensor *u = rand_tensor(ctx, FLX_F64, os, 42);
            flx_tensor *l = flx_sum_all(flx_mul(y, u));
            flx_tensor *gx = nullptr;
            ASSERT_EQ(flx_grad_of(1, &l, nullptr, 1, &x, false, &gx), FLX_OK) << flx_last_error();
            std::vector<double> expect(xv.size(), 0.0), uv = values(u);
            for (size_t o = 0; o < idx.size(); o++) expect[(size_t)idx[o]] += uv[o];
            EXPECT_TRUE(close(values(gx), expect, 1e-14, 1e-14));
            Win gg = g;
            auto fn = [gg](const std::vector<flx_tensor *> &in) {
                return flx_max_pool2d(in[0], gg.k, gg.s, gg.p, gg.d);
            };
            EXPECT_EQ(gradcheck(fn, {x}), FLX_OK) << flx_last_error();
            EXPECT_TRUE(jvp_check(fn, {x}));
            // Second order through MAXPOOL_BACKWARD (linear in g): d/dx of sum(grad^2 * x).
            auto f2 = [gg](const std::vector<flx_tensor *> &in) -> flx_tensor * {
                GradOn on;
                need_grad(in);
                flx_tensor *yy = flx_max_pool2d(in[0], gg.k, gg.s, gg.p, gg.d);
                flx_tensor *l2 = flx_sum_all(flx_square(yy));
                flx_tensor *gi = nullptr;
                flx_tensor *x0 = in[0];
                if (flx_grad_of(1, &l2, nullptr, 1, &x0, true, &gi) != FLX_OK) return nullptr;
                return flx_mul(gi, in[0]);
            };
            EXPECT_EQ(gradcheck(f2, {x}), FLX_OK) << flx_last_error();
            EXPECT_TRUE(jvp_check(f2, {x}));
        }
}

// Max-pool's gradient routes by the pooled input: one kernel finds each window's argmax again and
// scatters, with no index tensor written and read back; same values as routing by the indices.
TEST_F(ConvTest, MaxPoolBackwardIsOneKernel) {
    flx_tensor *x = rand_tensor(ctx, FLX_F32, {3, 4, 9, 8}, 91);
    ASSERT_EQ(flx_eval(1, &x), FLX_OK);
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    int64_t k[2] = {2, 2};
    flx_tensor *y = flx_max_pool2d(x, k, nullptr, nullptr, nullptr);
    flx_tensor *u = rand_tensor(ctx, FLX_F32, shape_of(y), 92);
    ASSERT_EQ(flx_eval(1, &u), FLX_OK);
    flx_tensor *gx = nullptr;
    ASSERT_EQ(flx_grad_of(1, &y, &u, 1, &x, false, &gx), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
    ASSERT_EQ(flx_eval(1, &gx), FLX_OK) << flx_last_error();
    flx_ctx_stats st{};
    ASSERT_EQ(flx_ctx_get_stats(ctx, &st), FLX_OK);
    EXPECT_EQ(st.kernels, 1u);
    // Second order through the scatter (linear in the routed cotangent, piecewise constant in x).
    flx_tensor *xd = rand_tensor(ctx, FLX_F64, {2, 3, 5, 6}, 93);
    flx_tensor *ud = rand_tensor(ctx, FLX_F64, {2, 3, 2, 3}, 94);
    auto fn = [ud](const std::vector<flx_tensor *> &in) -> flx_tensor * {
        GradOn on;
        need_grad(in);
        int64_t k2[2] = {2, 2};
        flx_tensor *yy = flx_max_pool2d(in[0], k2, nullptr, nullptr, nullptr);
        flx_tensor *l = flx_sum_all(flx_mul(flx_square(yy), ud)), *g = nullptr;
        if (flx_grad_of(1, &l, nullptr, 1, &in[0], true, &g) != FLX_OK) return nullptr;
        return flx_sum_all(flx_square(g));
    };
    EXPECT_EQ(gradcheck(fn, {xd}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(fn, {xd}));
    // The same scatter through the indices: u's entries placed at the windows' first maxima.
    std::vector<double> idx = values(flx_max_pool2d_indices(x, k, nullptr, nullptr, nullptr)), uv = values(u);
    std::vector<double> want((size_t)flx_numel(x), 0.0);
    for (size_t o = 0; o < idx.size(); o++) want[(size_t)idx[o]] += uv[o];
    EXPECT_TRUE(close(values(gx), want, 0, 0));
}

TEST_F(ConvTest, MaxPoolDefaultsAndTies) {
    // stride defaults to the kernel; ties go to the first tap.
    flx_tensor *x = make(ctx, FLX_F64, {1, 1, 2, 4}, {1, 1, 0, 2, 1, 0, 2, 2});
    flx_set_requires_grad(x, true);
    int64_t k[2] = {2, 2};
    flx_tensor *y = flx_max_pool2d(x, k, nullptr, nullptr, nullptr);
    ASSERT_NE(y, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(y), (Shape{1, 1, 1, 2}));
    EXPECT_TRUE(close(values(y), {1, 2}));
    EXPECT_TRUE(close(values(flx_max_pool2d_indices(x, k, nullptr, nullptr, nullptr)), {0, 3}));
    flx_tensor *l = flx_sum_all(y), *gx = nullptr;
    ASSERT_EQ(flx_grad_of(1, &l, nullptr, 1, &x, false, &gx), FLX_OK);
    EXPECT_TRUE(close(values(gx), {1, 0, 0, 1, 0, 0, 0, 0}));
}

TEST_F(ConvTest, AvgPoolValuesAndDerivatives) {
    std::vector<Win> ws = {
        {{2, 2}, {2, 2}, {0, 0}, {1, 1}},
        {{3, 3}, {2, 1}, {1, 1}, {1, 1}},
        {{3, 2}, {1, 2}, {1, 0}, {1, 1}},
    };
    for (const Win &g : ws) {
        Shape xs = {2, 2, 7, 5};
        auto xv = rand_values(2 * 2 * 7 * 5, 51);
        flx_tensor *x = make(ctx, FLX_F64, xs, xv);
        flx_tensor *y = flx_avg_pool2d(x, g.k, g.s, g.p);
        ASSERT_NE(y, nullptr) << flx_last_error();
        Shape os;
        auto ref = ref_pool(xv, xs, g, true, &os, nullptr);
        EXPECT_EQ(shape_of(y), os);
        EXPECT_TRUE(close(values(y), ref, 1e-14, 1e-14));
        Win gg = g;
        auto fn = [gg](const std::vector<flx_tensor *> &in) { return flx_avg_pool2d(in[0], gg.k, gg.s, gg.p); };
        EXPECT_EQ(gradcheck(fn, {x}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(fn, {x}));
    }
}

TEST_F(ConvTest, BadInputs) {
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {1, 2, 5, 5}, 1);
    flx_tensor *w = rand_tensor(ctx, FLX_F64, {3, 2, 3, 3}, 2);
    flx_tensor *w3 = rand_tensor(ctx, FLX_F64, {3, 3, 3, 3}, 2);
    flx_tensor *wf = rand_tensor(ctx, FLX_F32, {3, 2, 3, 3}, 2);
    flx_tensor *b2 = rand_tensor(ctx, FLX_F64, {2}, 3);
    flx_tensor *x3 = rand_tensor(ctx, FLX_F64, {2, 5, 5}, 1);
    int64_t k3[2] = {3, 3}, k9[2] = {9, 9}, zero[2] = {0, 0}, neg[2] = {-1, 0}, big[2] = {2, 2};
    EXPECT_TRUE(fails_with(flx_conv2d(nullptr, w, nullptr, nullptr, nullptr, nullptr),
                           FLX_ERR_INVALID_ARGUMENT, "NULL"));
    flx_clear_error();
    EXPECT_TRUE(fails_with(flx_conv2d(x3, w, nullptr, nullptr, nullptr, nullptr), FLX_ERR_SHAPE, "4-d"));
    EXPECT_TRUE(fails_with(flx_conv2d(x, w3, nullptr, nullptr, nullptr, nullptr), FLX_ERR_SHAPE, "in_channels"));
    EXPECT_TRUE(fails_with(flx_conv2d(x, wf, nullptr, nullptr, nullptr, nullptr), FLX_ERR_DTYPE, "dtypes"));
    EXPECT_TRUE(fails_with(flx_conv2d(x, w, b2, nullptr, nullptr, nullptr), FLX_ERR_SHAPE, "bias"));
    EXPECT_TRUE(fails_with(flx_conv2d(x, w, nullptr, zero, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT, "stride"));
    EXPECT_TRUE(fails_with(flx_conv2d(x, w, nullptr, nullptr, neg, nullptr), FLX_ERR_INVALID_ARGUMENT, "padding"));
    EXPECT_TRUE(fails_with(flx_max_pool2d(x, k9, nullptr, nullptr, nullptr), FLX_ERR_SHAPE, "larger"));
    EXPECT_TRUE(fails_with(flx_max_pool2d(x, nullptr, nullptr, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT, "kernel"));
    EXPECT_TRUE(fails_with(flx_max_pool2d(x, k3, nullptr, big, nullptr), FLX_ERR_INVALID_ARGUMENT, "half"));
    EXPECT_TRUE(fails_with(flx_avg_pool2d(x, k3, nullptr, big), FLX_ERR_INVALID_ARGUMENT, "half"));
    int64_t hw[2] = {5, 5};
    EXPECT_TRUE(fails_with(flx_col2im(x3, hw, k3, nullptr, nullptr, nullptr), FLX_ERR_SHAPE, "does not match"));
    // Two contexts.
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    const int64_t wos[4] = {3, 2, 3, 3};
    flx_tensor *wo = flx_zeros(other, FLX_F64, 4, wos);
    EXPECT_TRUE(fails_with(flx_conv2d(x, wo, nullptr, nullptr, nullptr, nullptr), FLX_ERR_DEVICE, "context"));
    flx_scope_end(0, nullptr);
    flx_scope_begin();
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK);
}

// ---- GPU against CPU ----------------------------------------------------------------------------
using ConvCuda = CudaCpuTest;

TEST_F(ConvCuda, MatchesCpu) {
    flx_ctx *g = gpu;
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        double tol = dt == FLX_F32 ? 2e-5 : 1e-12;
        for (const Win &w : windows()) {
            Shape xs = {3, 5, 33, 17}, ws = {7, 5, w.k[0], w.k[1]};
            flx_tensor *xc = rand_tensor(cpu, dt, xs, 61), *wc = rand_tensor(cpu, dt, ws, 62);
            flx_tensor *bc = rand_tensor(cpu, dt, {7}, 63);
            flx_tensor *xg = flx_to_ctx(xc, g), *wg = flx_to_ctx(wc, g), *bg = flx_to_ctx(bc, g);
            flx_set_requires_grad(xc, true);
            flx_set_requires_grad(xg, true);
            EXPECT_TRUE(close(values(flx_conv2d(xg, wg, bg, w.s, w.p, w.d)),
                              values(flx_conv2d(xc, wc, bc, w.s, w.p, w.d)), tol, tol));
            int64_t hw[2] = {33, 17};
            flx_tensor *cc = flx_im2col(xc, w.k, w.s, w.p, w.d);
            EXPECT_TRUE(close(values(flx_im2col(xg, w.k, w.s, w.p, w.d)), values(cc), 0, 0));
            flx_tensor *cg2 = flx_to_ctx(cc, g);
            EXPECT_TRUE(close(values(flx_col2im(cg2, hw, w.k, w.s, w.p, w.d)),
                              values(flx_col2im(cc, hw, w.k, w.s, w.p, w.d)), tol, tol));
            if (2 * w.p[0] <= w.k[0] && 2 * w.p[1] <= w.k[1]) {
                EXPECT_TRUE(close(values(flx_max_pool2d(xg, w.k, w.s, w.p, w.d)),
                                  values(flx_max_pool2d(xc, w.k, w.s, w.p, w.d)), 0, 0));
                EXPECT_TRUE(close(values(flx_max_pool2d_indices(xg, w.k, w.s, w.p, w.d)),
                                  values(flx_max_pool2d_indices(xc, w.k, w.s, w.p, w.d)), 0, 0));
                // Backward on the device: same gradient, no host copies or syncs.
                flx_tensor *ug = rand_tensor(g, dt, shape_of(flx_max_pool2d(xc, w.k, w.s, w.p, w.d)), 64);
                flx_tensor *uc = flx_to_ctx(ug, cpu);
                flx_tensor *gx[2] = {nullptr, nullptr};
                flx_tensor *lg = flx_sum_all(flx_mul(flx_max_pool2d(xg, w.k, w.s, w.p, w.d), ug));
                flx_tensor *lc = flx_sum_all(flx_mul(flx_max_pool2d(xc, w.k, w.s, w.p, w.d), uc));
                flx_eval(1, &ug);
                flx_ctx_reset_stats(g);
                ASSERT_EQ(flx_grad_of(1, &lg, nullptr, 1, &xg, false, &gx[0]), FLX_OK);
                ASSERT_EQ(flx_eval(1, &gx[0]), FLX_OK) << flx_last_error();
                flx_ctx_stats st;
                flx_ctx_get_stats(g, &st);
                EXPECT_EQ(st.d2h_copies, 0u);
                EXPECT_EQ(st.syncs, 0u);
                ASSERT_EQ(flx_grad_of(1, &lc, nullptr, 1, &xc, false, &gx[1]), FLX_OK);
                EXPECT_TRUE(close(values(gx[0]), values(gx[1]), tol, tol));
            }
        }
    }
}

// The CNN's layers (3x3 pad 1 convolution, 2x2 pooling) at the benchmark's sizes: the kernels' 32-bit
// index paths (every dividend below 2^31) against the CPU, forward and backward.
TEST_F(ConvCuda, CnnLayersMatchCpu) {
    const Shape shapes[] = {{128, 1, 28, 28}, {128, 32, 14, 14}, {3, 5, 7, 9}};
    int64_t k3[2] = {3, 3}, p1[2] = {1, 1}, k2[2] = {2, 2};
    for (const Shape &xs : shapes) {
        flx_tensor *xc = rand_tensor(cpu, FLX_F32, xs, 71), *xg = flx_to_ctx(xc, gpu);
        flx_tensor *cc = flx_im2col(xc, k3, nullptr, p1, nullptr), *cg = flx_im2col(xg, k3, nullptr, p1, nullptr);
        EXPECT_TRUE(close(values(cg), values(cc), 0, 0));
        int64_t hw[2] = {xs[2], xs[3]};
        flx_tensor *uc = rand_tensor(cpu, FLX_F32, shape_of(cc), 72), *ug = flx_to_ctx(uc, gpu);
        EXPECT_TRUE(close(values(flx_col2im(ug, hw, k3, nullptr, p1, nullptr)),
                          values(flx_col2im(uc, hw, k3, nullptr, p1, nullptr)), 1e-5, 1e-5));
        flx_tensor *pc = flx_max_pool2d(xc, k2, nullptr, nullptr, nullptr);
        EXPECT_TRUE(close(values(flx_max_pool2d(xg, k2, nullptr, nullptr, nullptr)), values(pc), 0, 0));
        EXPECT_TRUE(close(values(flx_max_pool2d_indices(xg, k2, nullptr, nullptr, nullptr)),
                          values(flx_max_pool2d_indices(xc, k2, nullptr, nullptr, nullptr)), 0, 0));
        flx_tensor *vc = rand_tensor(cpu, FLX_F32, shape_of(pc), 73), *vg = flx_to_ctx(vc, gpu);
        flx_set_requires_grad(xc, true);
        flx_set_requires_grad(xg, true);
        flx_tensor *lc = flx_sum_all(flx_mul(flx_max_pool2d(xc, k2, nullptr, nullptr, nullptr), vc));
        flx_tensor *lg = flx_sum_all(flx_mul(flx_max_pool2d(xg, k2, nullptr, nullptr, nullptr), vg));
        flx_tensor *gc = nullptr, *gg = nullptr;
        ASSERT_EQ(flx_grad_of(1, &lc, nullptr, 1, &xc, false, &gc), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_grad_of(1, &lg, nullptr, 1, &xg, false, &gg), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(gg), values(gc), 0, 0));
    }
}


// The max-pool backward finds each window's argmax again on the device: on inputs full of ties
// (values on a coarse grid) and with NaNs, overlapping and dilated windows included, its gradient
// is u scattered to the first maximum (NaN first) that the CPU's argmax indices give, exactly.
TEST_F(ConvCuda, MaxPoolBackwardTiesAndNanMatchCpuIndices) {
    struct W {
        int64_t k[2], s[2], p[2], d[2];
    };
    const W wins[] = {{{2, 2}, {2, 2}, {0, 0}, {1, 1}}, {{3, 3}, {1, 1}, {1, 1}, {1, 1}},
                      {{3, 2}, {2, 1}, {1, 0}, {2, 1}}};
    const Shape xs = {2, 3, 11, 9};
    for (flx_dtype dt : {FLX_F32, FLX_F64, FLX_F16}) {
        std::vector<double> v = rand_values((size_t)(2 * 3 * 11 * 9), 81, 0, 3);
        for (double &e : v) e = std::floor(e) * 0.5;  // three values: ties in most windows
        v[7] = NAN, v[100] = NAN, v[101] = NAN, v[450] = NAN;
        flx_tensor *xc = make(cpu, dt, xs, v), *xg = flx_to_ctx(xc, gpu);
        ASSERT_TRUE(xc && xg) << flx_last_error();
        ASSERT_EQ(flx_set_requires_grad(xg, true), FLX_OK);
        for (const W &w : wins) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " kernel " + std::to_string(w.k[0]) + "x" +
                         std::to_string(w.k[1]));
            std::vector<double> idx = values(flx_max_pool2d_indices(xc, w.k, w.s, w.p, w.d));
            flx_tensor *yg = flx_max_pool2d(xg, w.k, w.s, w.p, w.d);
            ASSERT_NE(yg, nullptr) << flx_last_error();
            flx_tensor *ug = rand_tensor(gpu, dt, shape_of(yg), 82);
            std::vector<double> uv = values(ug), want(v.size(), 0.0);
            for (size_t o = 0; o < idx.size(); o++)
                if (idx[o] >= 0) want[(size_t)idx[o]] += uv[o];
            flx_tensor *gx = nullptr;
            ASSERT_EQ(flx_grad_of(1, &yg, &ug, 1, &xg, false, &gx), FLX_OK) << flx_last_error();
            // The routed sums (up to 9 entries of magnitude < 1) accumulate in f32 or f64 and
            // round once on store: f16 within half a unit of its last place, f32 within a few.
            double tol = dt == FLX_F16 ? 2e-3 : 1e-6;
            EXPECT_TRUE(close(values(gx), want, tol, tol));
            EXPECT_TRUE(close(values(flx_max_pool2d_indices(xg, w.k, w.s, w.p, w.d)), idx, 0, 0));
        }
    }
}

}  // namespace
