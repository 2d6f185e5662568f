// test_nn.cc — neural-network blocks: linear, batch norm (training statistics, running
// statistics, eval), layer norm, dropout (mask reproducible and mean-preserving), embedding, the
// losses with their reductions, initialisers, L1/L2 penalties, and the recurrent cells unrolled
// over time (backprop through time against finite differences). Values against independent
// float64 loops, VJPs by gradcheck, JVPs by jvp_check, bad inputs; GPU against CPU where a GPU is.
#include <algorithm>
#include <cmath>

#include "testing.h"

using namespace flxt;

namespace {

using NnTest = CpuTest;

// ---- linear ---------------------------------------------------------------------------------------
TEST_F(NnTest, LinearValuesAndDerivatives) {
    const Shape xshapes[] = {{5, 3}, {2, 4, 3}, {3}};
    for (const Shape &xs : xshapes)
        for (bool bias : {true, false}) {
            auto xv = rand_values((size_t)numel_of(xs), 1), wv = rand_values(4 * 3, 2), bv = rand_values(4, 3);
            flx_tensor *x = make(ctx, FLX_F64, xs, xv), *W = make(ctx, FLX_F64, {4, 3}, wv);
            flx_tensor *b = bias ? make(ctx, FLX_F64, {4}, bv) : nullptr;
            flx_tensor *y = flx_linear(x, W, b);
            ASSERT_NE(y, nullptr) << flx_last_error();
            int64_t rows = numel_of(xs) / 3;
            std::vector<double> ref;
            for (int64_t r = 0; r < rows; r++)
                for (int64_t o = 0; o < 4; o++) {
                    double acc = bias ? bv[(size_t)o] : 0;
                    for (int64_t i = 0; i < 3; i++) acc += xv[(size_t)(r * 3 + i)] * wv[(size_t)(o * 3 + i)];
                    ref.push_back(acc);
                }
            Shape os = xs;
            os.back() = 4;
            EXPECT_EQ(shape_of(y), os);
            EXPECT_TRUE(close(values(y), ref, 1e-13, 1e-13));
            std::vector<flx_tensor *> in = {x, W};
            if (bias) in.push_back(b);
            auto fn = [bias](const std::vector<flx_tensor *> &v) {
                return flx_linear(v[0], v[1], bias ? v[2] : nullptr);
            };
            EXPECT_EQ(gradcheck(fn, in), FLX_OK) << flx_last_error();
            EXPECT_TRUE(jvp_check(fn, in));
        }
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {2, 3}, 1), *W = rand_tensor(ctx, FLX_F64, {4, 2}, 2);
    EXPECT_TRUE(fails_with(flx_linear(x, W, nullptr), FLX_ERR_SHAPE, "(out, in)"));
    flx_tensor *W2 = rand_tensor(ctx, FLX_F64, {4, 3}, 2), *b5 = rand_tensor(ctx, FLX_F64, {5}, 2);
    EXPECT_TRUE(fails_with(flx_linear(x, W2, b5), FLX_ERR_SHAPE, "b must be"));
    flx_tensor *Wf = rand_tensor(ctx, FLX_F32, {4, 3}, 2);
    EXPECT_TRUE(fails_with(flx_linear(x, Wf, nullptr), FLX_ERR_DTYPE, "dtypes differ"));
}

// ---- batch norm -----------------------------------------------------------------------------------
// Per-channel mean and biased variance over every axis but 1.
void ref_stats(const std::vector<double> &x, const Shape &s, std::vector<double> *mu,
               std::vector<double> *var) {
    int64_t N = s[0], C = s[1], R = numel_of(s) / (N * C);
    mu->assign((size_t)C, 0);
    var->assign((size_t)C, 0);
    for (int64_t c = 0; c < C; c++) {
        double m = 0, v = 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t r = 0; r < R; r++) m += x[(size_t)((n * C + c) * R + r)];
        m /= (double)(N * R);
        for (int64_t n = 0; n < N; n++)
            for (int64_t r = 0; r < R; r++) {
                double d = x[(size_t)((n * C + c) * R + r)] - m;
                v += d * d;
            }
        (*mu)[(size_t)c] = m;
        (*var)[(size_t)c] = v / (double)(N * R);
    }
}

// gamma (x - mu) / sqrt(var + eps) + beta per channel (axis 1).
std::vector<double> ref_normalise(const std::vector<double> &x, const Shape &s, const std::vector<double> &mu,
                                  const std::vector<double> &var, const std::vector<double> &gamma,
                                  const std::vector<double> &beta, double eps) {
    int64_t N = s[0], C = s[1], R = numel_of(s) / (N * C);
    std::vector<double> y(x.size());
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t r = 0; r < R; r++) {
                size_t i = (size_t)((n * C + c) * R + r);
                y[i] = gamma[(size_t)c] * (x[i] - mu[(size_t)c]) / std::sqrt(var[(size_t)c] + eps) + beta[(size_t)c];
            }
    return y;
}

TEST_F(NnTest, BatchNormTrainingStatsAndRunningUpdate) {
    const Shape shapes[] = {{4, 3}, {3, 2, 5, 3}, {2, 3, 7}};
    for (const Shape &s : shapes) {
        int64_t C = s[1], N = s[0], R = numel_of(s) / (N * C);
        auto xv = rand_values((size_t)numel_of(s), 5, -2, 3);
        auto gv = rand_values((size_t)C, 6, 0.5, 1.5), bv = rand_values((size_t)C, 7);
        auto rmv = rand_values((size_t)C, 8), rvv = rand_values((size_t)C, 9, 0.5, 2);
        flx_tensor *x = make(ctx, FLX_F64, s, xv), *gm = make(ctx, FLX_F64, {C}, gv);
        flx_tensor *bt = make(ctx, FLX_F64, {C}, bv);
        flx_tensor *rm = make(ctx, FLX_F64, {C}, rmv), *rv = make(ctx, FLX_F64, {C}, rvv);
        flx_tensor *nrm = nullptr, *nrv = nullptr;
        const double eps = 1e-5, mom = 0.1;
        flx_tensor *y = flx_batch_norm(x, gm, bt, rm, rv, true, mom, eps, &nrm, &nrv);
        ASSERT_NE(y, nullptr) << flx_last_error();
        ASSERT_NE(nrm, nullptr);
        ASSERT_NE(nrv, nullptr);
        std::vector<double> mu, var;
        ref_stats(xv, s, &mu, &var);
        EXPECT_TRUE(close(values(y), ref_normalise(xv, s, mu, var, gv, bv, eps), 1e-12, 1e-12));
        std::vector<double> erm, erv;
        double cnt = (double)(N * R);
        for (int64_t c = 0; c < C; c++) {
            erm.push_back((1 - mom) * rmv[(size_t)c] + mom * mu[(size_t)c]);
            erv.push_back((1 - mom) * rvv[(size_t)c] + mom * var[(size_t)c] * cnt / (cnt - 1));
        }
        EXPECT_TRUE(close(values(nrm), erm, 1e-13, 1e-13));
        EXPECT_TRUE(close(values(nrv), erv, 1e-13, 1e-13));
        EXPECT_FALSE(flx_requires_grad(nrm));
        // The caller assigns the new state; the running tensors are not changed in place before.
        EXPECT_TRUE(close(values(rm), rmv, 0, 0));
        ASSERT_EQ(flx_assign(rm, nrm), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_assign(rv, nrv), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(rm), erm, 1e-13, 1e-13));
        // Eval mode uses the running statistics.
        flx_tensor *ye = flx_batch_norm(x, gm, bt, rm, rv, false, mom, eps, &nrm, &nrv);
        ASSERT_NE(ye, nullptr) << flx_last_error();
        EXPECT_EQ(nrm, nullptr);
        EXPECT_TRUE(close(values(ye), ref_normalise(xv, s, erm, erv, gv, bv, eps), 1e-12, 1e-12));
    }
}

TEST_F(NnTest, BatchNormDerivatives) {
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {3, 2, 2, 3}, 11, -1, 2);
    flx_tensor *g = rand_tensor(ctx, FLX_F64, {2}, 12, 0.5, 1.5), *b = rand_tensor(ctx, FLX_F64, {2}, 13);
    flx_tensor *rm = rand_tensor(ctx, FLX_F64, {2}, 14), *rv = rand_tensor(ctx, FLX_F64, {2}, 15, 0.5, 1.5);
    for (bool training : {true, false}) {
        auto fn = [training, rm, rv](const std::vector<flx_tensor *> &in) {
            return flx_batch_norm(in[0], in[1], in[2], rm, rv, training, 0.1, 1e-3, nullptr, nullptr);
        };
        EXPECT_EQ(gradcheck(fn, {x, g, b}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(fn, {x, g, b}));
    }
    // No affine parameters; running statistics as differentiable inputs in eval mode.
    auto fe = [](const std::vector<flx_tensor *> &in) {
        return flx_batch_norm(in[0], nullptr, nullptr, in[1], in[2], false, 0.1, 1e-3, nullptr, nullptr);
    };
    EXPECT_EQ(gradcheck(fe, {x, rm, rv}), FLX_OK) << flx_last_error();
    // Bad inputs.
    EXPECT_TRUE(fails_with(flx_batch_norm(x, g, b, nullptr, nullptr, false, 0.1, 1e-5, nullptr, nullptr),
                           FLX_ERR_INVALID_ARGUMENT, "eval mode"));
    flx_tensor *g3 = rand_tensor(ctx, FLX_F64, {3}, 12);
    EXPECT_TRUE(fails_with(flx_batch_norm(x, g3, b, rm, rv, true, 0.1, 1e-5, nullptr, nullptr),
                           FLX_ERR_SHAPE, "gamma"));
    EXPECT_TRUE(fails_with(flx_batch_norm(x, g, b, rm, rv, true, 1.5, 1e-5, nullptr, nullptr),
                           FLX_ERR_INVALID_ARGUMENT, "momentum"));
    EXPECT_TRUE(fails_with(flx_batch_norm(x, g, b, rm, rv, true, 0.1, 0, nullptr, nullptr),
                           FLX_ERR_INVALID_ARGUMENT, "eps"));
    flx_tensor *one = rand_tensor(ctx, FLX_F64, {1, 2}, 1);
    EXPECT_TRUE(fails_with(flx_batch_norm(one, g, b, rm, rv, true, 0.1, 1e-5, nullptr, nullptr),
                           FLX_ERR_SHAPE, "more than one value"));
    flx_tensor *v1 = rand_tensor(ctx, FLX_F64, {5}, 1);
    EXPECT_TRUE(fails_with(flx_batch_norm(v1, g, b, rm, rv, true, 0.1, 1e-5, nullptr, nullptr),
                           FLX_ERR_SHAPE, "(N, C)"));
}

// Training mode is one node whose rules are closed forms (runtime/ops/batch_norm.c): every
// combination of affine parameters, shapes with and without spatial axes, against finite
// differences in float64 (VJP, JVP, the dot-product identity).
TEST_F(NnTest, BatchNormTrainingRulesEveryAffineCase) {
    const Shape shapes[] = {{5, 3}, {3, 2, 2, 3}, {2, 3, 4}};
    for (const Shape &s : shapes) {
        int64_t C = s[1];
        flx_tensor *x = rand_tensor(ctx, FLX_F64, s, 31, -1, 2);
        flx_tensor *g = rand_tensor(ctx, FLX_F64, {C}, 32, 0.5, 1.5), *b = rand_tensor(ctx, FLX_F64, {C}, 33);
        for (int affine = 0; affine < 4; affine++) {
            bool hg = affine & 1, hb = affine & 2;
            auto fn = [hg, hb](const std::vector<flx_tensor *> &in) {
                return flx_batch_norm(in[0], hg ? in[1] : nullptr, hb ? in[2] : nullptr, nullptr, nullptr, true,
                                      0.1, 1e-3, nullptr, nullptr);
            };
            EXPECT_EQ(gradcheck(fn, {x, g, b}), FLX_OK) << "affine " << affine << ": " << flx_last_error();
            EXPECT_TRUE(jvp_check(fn, {x, g, b})) << "affine " << affine;
        }
        // A tangent of beta alone (no x or gamma tangent) is dbeta broadcast over x.
        flx_tensor *dbeta = rand_tensor(ctx, FLX_F64, {C}, 34), *tan = nullptr;
        flx_tensor *in3[3] = {x, g, b}, *t3[3] = {nullptr, nullptr, dbeta};
        flx_tensor *y = flx_batch_norm(x, g, b, nullptr, nullptr, true, 0.1, 1e-3, nullptr, nullptr);
        ASSERT_EQ(flx_jvp(3, in3, t3, 1, &y, &tan), FLX_OK) << flx_last_error();
        std::vector<double> want, dv = values(dbeta);
        int64_t R = numel_of(s) / (s[0] * C);
        for (int64_t n = 0; n < s[0]; n++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t r = 0; r < R; r++) want.push_back(dv[(size_t)c]);
        EXPECT_EQ(shape_of(tan), s);
        EXPECT_TRUE(close(values(tan), want, 0, 0));
    }
}

// The smallest counts per channel: training with two values per channel (x̂ = ±1, the closed
// form's n = 2) and with the count spread over N and the spatial axes; eval mode (op by op) with
// a single value per channel, which training rejects. Finite differences in float64.
TEST_F(NnTest, BatchNormSmallestCountsPerChannel) {
    const Shape train_shapes[] = {{2, 3}, {1, 2, 2}, {1, 3, 1, 2}};
    for (const Shape &s : train_shapes) {
        SCOPED_TRACE(::testing::PrintToString(s));
        int64_t C = s[1];
        flx_tensor *x = rand_tensor(ctx, FLX_F64, s, 35, -1, 2);
        flx_tensor *g = rand_tensor(ctx, FLX_F64, {C}, 36, 0.5, 1.5), *b = rand_tensor(ctx, FLX_F64, {C}, 37);
        auto fn = [](const std::vector<flx_tensor *> &in) {
            return flx_batch_norm(in[0], in[1], in[2], nullptr, nullptr, true, 0.1, 1e-3, nullptr, nullptr);
        };
        EXPECT_EQ(gradcheck(fn, {x, g, b}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(fn, {x, g, b}));
    }
    const Shape eval_shapes[] = {{1, 3}, {1, 2, 1, 1}};
    for (const Shape &s : eval_shapes) {
        SCOPED_TRACE(::testing::PrintToString(s));
        int64_t C = s[1];
        flx_tensor *x = rand_tensor(ctx, FLX_F64, s, 38, -1, 2);
        flx_tensor *g = rand_tensor(ctx, FLX_F64, {C}, 39, 0.5, 1.5), *b = rand_tensor(ctx, FLX_F64, {C}, 40);
        flx_tensor *rm = rand_tensor(ctx, FLX_F64, {C}, 41), *rv = rand_tensor(ctx, FLX_F64, {C}, 42, 0.5, 1.5);
        auto fn = [](const std::vector<flx_tensor *> &in) {
            return flx_batch_norm(in[0], in[1], in[2], in[3], in[4], false, 0.1, 1e-3, nullptr, nullptr);
        };
        EXPECT_EQ(gradcheck(fn, {x, g, b, rm, rv}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(fn, {x, g, b, rm, rv}));
        EXPECT_TRUE(fails_with(flx_batch_norm(x, g, b, rm, rv, true, 0.1, 1e-3, nullptr, nullptr), FLX_ERR_SHAPE,
                               "more than one value"));
    }
}

// The rules are graphs of public ops over x, mu(x), rstd(x), gamma and beta, so they differentiate
// again: reverse-over-reverse and forward-over-reverse against finite differences.
TEST_F(NnTest, BatchNormTrainingSecondOrder) {
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {4, 2, 3}, 41, -1, 2);
    flx_tensor *g = rand_tensor(ctx, FLX_F64, {2}, 42, 0.5, 1.5), *b = rand_tensor(ctx, FLX_F64, {2}, 43);
    flx_tensor *u = rand_tensor(ctx, FLX_F64, {4, 2, 3}, 44);
    auto grads = [u](const std::vector<flx_tensor *> &in, flx_tensor **gr) {
        GradOn on;
        need_grad(in);
        flx_tensor *y = flx_batch_norm(in[0], in[1], in[2], nullptr, nullptr, true, 0.1, 1e-3, nullptr, nullptr);
        flx_tensor *l = flx_sum_all(flx_mul(flx_square(y), u));  // a nonlinear use of y
        flx_tensor *ins[3] = {in[0], in[1], in[2]};
        return flx_grad_of(1, &l, nullptr, 3, ins, true, gr);
    };
    auto fn = [grads](const std::vector<flx_tensor *> &in) -> flx_tensor * {
        flx_tensor *gr[3] = {nullptr, nullptr, nullptr};
        if (grads(in, gr) != FLX_OK) return nullptr;
        return flx_add(flx_add(flx_sum_all(flx_square(gr[0])), flx_sum_all(flx_mul(gr[1], gr[1]))),
                       flx_sum_all(flx_sin(gr[2])));
    };
    EXPECT_EQ(gradcheck(fn, {x, g, b}, 1e-5, 1e-6, 1e-5), FLX_OK) << flx_last_error();
    auto dx = [grads](const std::vector<flx_tensor *> &in) -> flx_tensor * {
        flx_tensor *gr[3] = {nullptr, nullptr, nullptr};
        return grads(in, gr) == FLX_OK ? gr[0] : nullptr;
    };
    EXPECT_TRUE(jvp_check(dx, {x, g, b}, 1e-5, 1e-6, 1e-5));
}

// The forward value is computed by the same ops as the formula written out, so the bits agree.
TEST_F(NnTest, BatchNormTrainingValueIsTheFormulaBitForBit) {
    for (flx_dtype dt : {FLX_F32, FLX_F64, FLX_F16}) {
        flx_tensor *x = rand_tensor(ctx, dt, {6, 3, 5}, 51, -2, 3);
        flx_tensor *g = rand_tensor(ctx, dt, {3}, 52, 0.5, 1.5), *b = rand_tensor(ctx, dt, {3}, 53);
        flx_tensor *y = flx_batch_norm(x, g, b, nullptr, nullptr, true, 0.1, 1e-5, nullptr, nullptr);
        flx_dtype cd = dt == FLX_F16 ? FLX_F32 : dt;
        flx_tensor *xc = flx_cast(x, cd);
        int32_t axes[2] = {0, 2};
        int64_t cs[3] = {1, 3, 1};
        flx_tensor *mu = flx_mean(xc, 2, axes, true), *var = flx_var(xc, 2, axes, true, 0);
        flx_tensor *r = flx_mul(flx_sub(xc, mu), flx_rsqrt(flx_add_scalar(var, 1e-5)));
        r = flx_add(flx_mul(r, flx_reshape(flx_cast(g, cd), 3, cs)), flx_reshape(flx_cast(b, cd), 3, cs));
        EXPECT_TRUE(close(values(y), values(flx_cast(r, dt)), 0, 0)) << "dtype " << dt;
    }
}

// A training batch norm with its backward: the forward is mean, var, the per-channel rstd and one
// kernel for y; the backward two per-channel reductions, the product they share and one kernel for
// dx (with the op-by-op rules of the formula the same evaluation took 19 kernels, a materialised
// broadcast and a second mean among them).
TEST_F(NnTest, BatchNormTrainingBackwardKernels) {
    flx_tensor *x = rand_tensor(ctx, FLX_F32, {8, 4, 6, 6}, 61), *u = rand_tensor(ctx, FLX_F32, {8, 4, 6, 6}, 62);
    flx_tensor *g = rand_tensor(ctx, FLX_F32, {4}, 63, 0.5, 1.5), *b = rand_tensor(ctx, FLX_F32, {4}, 64);
    flx_tensor *all[4] = {x, u, g, b};
    ASSERT_EQ(flx_eval(4, all), FLX_OK);
    for (flx_tensor *t : {x, g, b}) ASSERT_EQ(flx_set_requires_grad(t, true), FLX_OK);
    flx_tensor *y = flx_batch_norm(x, g, b, nullptr, nullptr, true, 0.1, 1e-5, nullptr, nullptr);
    flx_tensor *ins[3] = {x, g, b}, *gr[4] = {nullptr, nullptr, nullptr, y};
    ASSERT_EQ(flx_grad_of(1, &y, &u, 3, ins, false, gr), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
    ASSERT_EQ(flx_eval(4, gr), FLX_OK) << flx_last_error();
    flx_ctx_stats st{};
    ASSERT_EQ(flx_ctx_get_stats(ctx, &st), FLX_OK);
    EXPECT_LE(st.kernels, 8u);
    // Values against the float64 closed form.
    std::vector<double> xv = values(x), uv = values(u), gv = values(g);
    const int64_t N = 8, C = 4, R = 36;
    const double n = (double)(N * R);
    std::vector<double> dx(xv.size()), dg(C), db(C);
    for (int64_t c = 0; c < C; c++) {
        double m = 0, v = 0, s1 = 0, s2 = 0;
        for (int64_t i = 0; i < N; i++)
            for (int64_t r = 0; r < R; r++) m += xv[(size_t)((i * C + c) * R + r)];
        m /= n;
        for (int64_t i = 0; i < N; i++)
            for (int64_t r = 0; r < R; r++) v += std::pow(xv[(size_t)((i * C + c) * R + r)] - m, 2);
        double rs = 1 / std::sqrt(v / n + 1e-5);
        for (int64_t i = 0; i < N; i++)
            for (int64_t r = 0; r < R; r++) {
                size_t k = (size_t)((i * C + c) * R + r);
                s1 += uv[k];
                s2 += uv[k] * (xv[k] - m) * rs;
            }
        db[(size_t)c] = s1;
        dg[(size_t)c] = s2;
        for (int64_t i = 0; i < N; i++)
            for (int64_t r = 0; r < R; r++) {
                size_t k = (size_t)((i * C + c) * R + r);
                dx[k] = gv[(size_t)c] * rs * (n * uv[k] - s1 - (xv[k] - m) * rs * s2) / n;
            }
    }
    EXPECT_TRUE(close(values(gr[0]), dx, 2e-5, 2e-4));
    EXPECT_TRUE(close(values(gr[1]), dg, 2e-4, 2e-5));
    EXPECT_TRUE(close(values(gr[2]), db, 2e-4, 2e-5));
}

// Fusion passes through the batch-norm node: the normalised value and the ReLU after it are one
// kernel after the statistics (mean, var, rstd). Requesting the batch-norm output too keeps it
// materialised; every case gives the bits of fusion off.
TEST_F(NnTest, BatchNormFusesWithTheActivationAfterIt) {
    flx_tensor *x = rand_tensor(ctx, FLX_F32, {6, 4, 5, 5}, 71, -2, 3);
    flx_tensor *g = rand_tensor(ctx, FLX_F32, {4}, 72, 0.5, 1.5), *b = rand_tensor(ctx, FLX_F32, {4}, 73);
    flx_tensor *all[3] = {x, g, b};
    ASSERT_EQ(flx_eval(3, all), FLX_OK);
    struct Case {
        const char *name;
        bool keep_bn, relu;
        uint64_t kernels;
    };
    const Case cases[] = {{"bn + relu", false, true, 4}, {"bn alone", false, false, 4},
                          {"bn requested too", true, true, 5}};
    for (const Case &c : cases) {
        std::vector<double> got[2];
        uint64_t kernels[2] = {0, 0};
        for (int pass = 0; pass < 2; pass++) {
            ASSERT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
            flx_tensor *y = flx_batch_norm(x, g, b, nullptr, nullptr, true, 0.1, 1e-5, nullptr, nullptr);
            flx_tensor *r = c.relu ? flx_relu(y) : y;
            flx_tensor *ev[2] = {r, y};
            ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
            ASSERT_EQ(flx_eval(c.keep_bn ? 2 : 1, ev), FLX_OK) << flx_last_error();
            flx_ctx_stats st{};
            ASSERT_EQ(flx_ctx_get_stats(ctx, &st), FLX_OK);
            kernels[pass] = st.kernels;
            got[pass] = values(r);
            if (c.keep_bn) {
                std::vector<double> yv = values(y);
                got[pass].insert(got[pass].end(), yv.begin(), yv.end());
            }
        }
        ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
        EXPECT_TRUE(close(got[0], got[1], 0, 0)) << c.name;
        EXPECT_LE(kernels[0], c.kernels) << c.name;
    }
}

// ---- layer norm -----------------------------------------------------------------------------------
TEST_F(NnTest, LayerNormValuesAndDerivatives) {
    Shape s = {3, 2, 4};
    auto xv = rand_values(24, 21, -2, 2), gv = rand_values(8, 22, 0.5, 1.5), bv = rand_values(8, 23);
    flx_tensor *x = make(ctx, FLX_F64, s, xv), *g = make(ctx, FLX_F64, {2, 4}, gv), *b = make(ctx, FLX_F64, {2, 4}, bv);
    flx_tensor *y = flx_layer_norm(x, 2, g, b, 1e-5);
    ASSERT_NE(y, nullptr) << flx_last_error();
    std::vector<double> ref;
    for (int r = 0; r < 3; r++) {
        double m = 0, v = 0;
        for (int i = 0; i < 8; i++) m += xv[(size_t)(r * 8 + i)];
        m /= 8;
        for (int i = 0; i < 8; i++) v += (xv[(size_t)(r * 8 + i)] - m) * (xv[(size_t)(r * 8 + i)] - m);
        v /= 8;
        for (int i = 0; i < 8; i++)
            ref.push_back(gv[(size_t)i] * (xv[(size_t)(r * 8 + i)] - m) / std::sqrt(v + 1e-5) + bv[(size_t)i]);
    }
    EXPECT_TRUE(close(values(y), ref, 1e-12, 1e-12));
    auto fn = [](const std::vector<flx_tensor *> &in) { return flx_layer_norm(in[0], 2, in[1], in[2], 1e-3); };
    EXPECT_EQ(gradcheck(fn, {x, g, b}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(fn, {x, g, b}));
    auto f1 = [](const std::vector<flx_tensor *> &in) { return flx_layer_norm(in[0], 1, nullptr, nullptr, 1e-3); };
    EXPECT_EQ(gradcheck(f1, {x}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(fails_with(flx_layer_norm(x, 4, nullptr, nullptr, 1e-5), FLX_ERR_INVALID_ARGUMENT, "n_norm"));
    EXPECT_TRUE(fails_with(flx_layer_norm(x, 1, g, nullptr, 1e-5), FLX_ERR_SHAPE, "gamma"));
}

// ---- dropout --------------------------------------------------------------------------------------
TEST_F(NnTest, DropoutMaskReproducibleAndMeanPreserving) {
    Shape s = {200, 300};
    flx_tensor *x = flx_ones(ctx, FLX_F32, 2, s.data());
    flx_tensor *y1 = flx_dropout(x, 0.3, 1234, true), *y2 = flx_dropout(x, 0.3, 1234, true);
    flx_tensor *y3 = flx_dropout(x, 0.3, 99, true);
    ASSERT_NE(y1, nullptr) << flx_last_error();
    auto v1 = values(y1), v2 = values(y2), v3 = values(y3);
    EXPECT_EQ(v1, v2);
    EXPECT_NE(v1, v3);
    double mean = 0, kept = 0;
    for (double v : v1) {
        mean += v;
        EXPECT_TRUE(v == 0 || std::fabs(v - 1 / 0.7) < 1e-6) << v;
        kept += v != 0;
    }
    mean /= (double)v1.size();
    EXPECT_NEAR(mean, 1.0, 0.01);
    EXPECT_NEAR(kept / (double)v1.size(), 0.7, 0.01);
    // The mask is the f64 Philox uniform >= p, the same for f64 x.
    flx_tensor *m = flx_dropout_mask(ctx, 2, s.data(), 0.3, 1234);
    flx_tensor *u = flx_uniform(ctx, FLX_F64, 2, s.data(), 0, 1, 1234);
    auto mv = values(m), uv = values(u);
    for (size_t i = 0; i < mv.size(); i++) ASSERT_EQ(mv[i] != 0, uv[i] >= 0.3);
    for (size_t i = 0; i < mv.size(); i++) ASSERT_EQ(mv[i] != 0, v1[i] != 0);
    flx_tensor *xd = flx_ones(ctx, FLX_F64, 2, s.data());
    auto vd = values(flx_dropout(xd, 0.3, 1234, true));
    for (size_t i = 0; i < vd.size(); i++) ASSERT_EQ(vd[i] != 0, v1[i] != 0);
    // Eval mode and p = 0 are the identity.
    EXPECT_EQ(values(flx_dropout(x, 0.3, 1, false)), values(x));
    EXPECT_EQ(values(flx_dropout(x, 0.0, 1, true)), values(x));
    // Gradient: mask / (1 - p).
    flx_tensor *xs = rand_tensor(ctx, FLX_F64, {4, 5}, 3);
    auto fn = [](const std::vector<flx_tensor *> &in) { return flx_dropout(in[0], 0.4, 77, true); };
    EXPECT_EQ(gradcheck(fn, {xs}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(fn, {xs}));
    EXPECT_TRUE(fails_with(flx_dropout(x, 1.0, 1, true), FLX_ERR_INVALID_ARGUMENT, "p must be"));
    EXPECT_TRUE(fails_with(flx_dropout(x, -0.1, 1, true), FLX_ERR_INVALID_ARGUMENT, "p must be"));
}

// ---- embedding ------------------------------------------------------------------------------------
TEST_F(NnTest, EmbeddingLookupAndGradient) {
    auto wv = rand_values(5 * 3, 31);
    flx_tensor *W = make(ctx, FLX_F64, {5, 3}, wv);
    flx_tensor *idx = make(ctx, FLX_I64, {2, 3}, {4, 0, 4, 1, 2, 4});
    flx_tensor *y = flx_embedding(W, idx);
    ASSERT_NE(y, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(y), (Shape{2, 3, 3}));
    std::vector<double> ref;
    for (int r : {4, 0, 4, 1, 2, 4})
        for (int j = 0; j < 3; j++) ref.push_back(wv[(size_t)(r * 3 + j)]);
    EXPECT_TRUE(close(values(y), ref, 0, 0));
    auto fn = [idx](const std::vector<flx_tensor *> &in) { return flx_embedding(in[0], idx); };
    EXPECT_EQ(gradcheck(fn, {W}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(fn, {W}));
    flx_tensor *i32 = make(ctx, FLX_I32, {2}, {1, 3});
    EXPECT_TRUE(close(values(flx_embedding(W, i32)),
                      {wv[3], wv[4], wv[5], wv[9], wv[10], wv[11]}, 0, 0));
    flx_tensor *fidx = make(ctx, FLX_F64, {2}, {1, 3});
    EXPECT_TRUE(fails_with(flx_embedding(W, fidx), FLX_ERR_DTYPE, "i32 or i64"));
    EXPECT_TRUE(fails_with(flx_embedding(idx, idx), FLX_ERR_DTYPE, "flx_embedding"));
}

// ---- losses ---------------------------------------------------------------------------------------
TEST_F(NnTest, LossesValuesReductionsAndDerivatives) {
    Shape s = {3, 4};
    auto yv = rand_values(12, 41, -3, 3), tv = rand_values(12, 42, 0, 1), sv = rand_values(12, 43);
    for (double &v : sv) v = v >= 0 ? 1 : -1;
    flx_tensor *y = make(ctx, FLX_F64, s, yv), *t = make(ctx, FLX_F64, s, tv), *sg = make(ctx, FLX_F64, s, sv);
    struct L {
        const char *name;
        flx_tensor *(*f)(flx_tensor *, flx_tensor *, flx_reduction);
        double (*ref)(double, double);
        bool sign_target;
    };
    const L losses[] = {
        {"mse", flx_mse_loss, [](double a, double b) { return (a - b) * (a - b); }, false},
        {"bce", flx_bce_with_logits,
         [](double z, double b) { return std::log(1 + std::exp(z)) - z * b; }, false},
        {"logcosh", flx_log_cosh_loss, [](double a, double b) { return std::log(std::cosh(a - b)); }, false},
        {"hinge", flx_hinge_loss, [](double a, double b) { return std::max(0.0, 1 - a * b); }, true},
    };
    for (const L &l : losses) {
        flx_tensor *tt = l.sign_target ? sg : t;
        auto tvv = values(tt);
        std::vector<double> ref;
        double sum = 0;
        for (size_t i = 0; i < 12; i++) {
            ref.push_back(l.ref(yv[i], tvv[i]));
            sum += ref.back();
        }
        EXPECT_TRUE(close(values(l.f(y, tt, FLX_REDUCTION_NONE)), ref, 1e-12, 1e-12)) << l.name;
        EXPECT_TRUE(close(values(l.f(y, tt, FLX_REDUCTION_SUM)), {sum}, 1e-12, 1e-12)) << l.name;
        EXPECT_TRUE(close(values(l.f(y, tt, FLX_REDUCTION_MEAN)), {sum / 12}, 1e-12, 1e-12)) << l.name;
        EXPECT_EQ(flx_ndim(l.f(y, tt, FLX_REDUCTION_MEAN)), 0);
        auto fn = [&l](const std::vector<flx_tensor *> &in) { return l.f(in[0], in[1], FLX_REDUCTION_MEAN); };
        auto fnn = [&l](const std::vector<flx_tensor *> &in) { return l.f(in[0], in[1], FLX_REDUCTION_NONE); };
        if (l.sign_target) {
            // Keep away from the hinge kink: the fixed data has |1 - y t| > 1e-3.
            auto f1 = [&l, tt](const std::vector<flx_tensor *> &in) { return l.f(in[0], tt, FLX_REDUCTION_SUM); };
            EXPECT_EQ(gradcheck(f1, {y}), FLX_OK) << l.name << ": " << flx_last_error();
            EXPECT_TRUE(jvp_check(f1, {y})) << l.name;
        } else {
            EXPECT_EQ(gradcheck(fn, {y, tt}), FLX_OK) << l.name << ": " << flx_last_error();
            EXPECT_TRUE(jvp_check(fnn, {y, tt})) << l.name;
        }
    }
    // Stable at extremes: finite values and gradients.
    flx_tensor *big = make(ctx, FLX_F64, {4}, {800, -800, 1e4, -1e4});
    flx_tensor *zero = make(ctx, FLX_F64, {4}, {0, 1, 0, 1});
    const int64_t four[1] = {4};
    auto bce = values(flx_bce_with_logits(big, zero, FLX_REDUCTION_NONE));
    EXPECT_TRUE(close(bce, {800, 800, 1e4, 1e4}, 1e-9, 1e-12));
    auto lc = values(flx_log_cosh_loss(big, flx_zeros(ctx, FLX_F64, 1, four), FLX_REDUCTION_NONE));
    EXPECT_TRUE(close(lc, {800 - std::log(2.0), 800 - std::log(2.0), 1e4 - std::log(2.0), 1e4 - std::log(2.0)}, 1e-9, 1e-12));
    flx_tensor *bf = make(ctx, FLX_F32, {2}, {100, -100});
    flx_tensor *bz = make(ctx, FLX_F32, {2}, {0, 0});
    auto lcf = values(flx_log_cosh_loss(bf, bz, FLX_REDUCTION_NONE));
    EXPECT_TRUE(close(lcf, {100 - std::log(2.0), 100 - std::log(2.0)}, 1e-4, 1e-6));
    // Bad inputs.
    flx_tensor *y2 = rand_tensor(ctx, FLX_F64, {4, 3}, 1);
    EXPECT_TRUE(fails_with(flx_mse_loss(y, y2, FLX_REDUCTION_MEAN), FLX_ERR_SHAPE, "one shape"));
    EXPECT_TRUE(fails_with(flx_mse_loss(y, t, (flx_reduction)7), FLX_ERR_INVALID_ARGUMENT, "reduction"));
    flx_tensor *tf = rand_tensor(ctx, FLX_F32, s, 1);
    EXPECT_TRUE(fails_with(flx_bce_with_logits(y, tf, FLX_REDUCTION_SUM), FLX_ERR_DTYPE, "dtypes differ"));
    EXPECT_TRUE(fails_with(flx_hinge_loss(nullptr, t, FLX_REDUCTION_SUM), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    flx_clear_error();
}

// ---- initialisers and penalties -------------------------------------------------------------------
TEST_F(NnTest, InitialisersBoundsAndMoments) {
    Shape s = {64, 32, 3, 3}; // fan_in 288, fan_out 576
    double fi = 288, fo = 576;
    auto stats = [](const std::vector<double> &v, double *mn, double *mx, double *sd) {
        double m = 0, q = 0;
        *mn = 1e300;
        *mx = -1e300;
        for (double x : v) {
            m += x;
            *mn = std::min(*mn, x);
            *mx = std::max(*mx, x);
        }
        m /= (double)v.size();
        for (double x : v) q += (x - m) * (x - m);
        *sd = std::sqrt(q / (double)v.size());
    };
    double mn, mx, sd;
    double a = std::sqrt(6.0 / (fi + fo));
    stats(values(flx_init_xavier_uniform(ctx, FLX_F64, 4, s.data(), 1.0, 1)), &mn, &mx, &sd);
    EXPECT_GE(mn, -a);
    EXPECT_LT(mx, a);
    EXPECT_NEAR(sd, a / std::sqrt(3.0), 0.02 * a);
    stats(values(flx_init_xavier_normal(ctx, FLX_F64, 4, s.data(), 2.0, 2)), &mn, &mx, &sd);
    EXPECT_NEAR(sd, 2.0 * std::sqrt(2.0 / (fi + fo)), 0.02 * sd);
    a = FLX_GAIN_RELU * std::sqrt(3.0 / fi);
    stats(values(flx_init_kaiming_uniform(ctx, FLX_F32, 4, s.data(), FLX_FAN_IN, FLX_GAIN_RELU, 3)), &mn, &mx, &sd);
    EXPECT_GE(mn, -a);
    EXPECT_LT(mx, a);
    EXPECT_NEAR(sd, a / std::sqrt(3.0), 0.02 * a);
    stats(values(flx_init_kaiming_normal(ctx, FLX_F64, 4, s.data(), FLX_FAN_OUT, FLX_GAIN_RELU, 4)), &mn, &mx, &sd);
    EXPECT_NEAR(sd, FLX_GAIN_RELU / std::sqrt(fo), 0.02 * sd);
    Shape l = {10, 50};
    stats(values(flx_init_uniform_fan_in(ctx, FLX_F64, 2, l.data(), 50, 5)), &mn, &mx, &sd);
    EXPECT_GE(mn, -1 / std::sqrt(50.0));
    EXPECT_LT(mx, 1 / std::sqrt(50.0));
    // Reproducible for a seed, different across seeds.
    EXPECT_EQ(values(flx_init_kaiming_normal(ctx, FLX_F64, 2, l.data(), FLX_FAN_IN, 1.0, 9)),
              values(flx_init_kaiming_normal(ctx, FLX_F64, 2, l.data(), FLX_FAN_IN, 1.0, 9)));
    EXPECT_TRUE(fails_with(flx_init_xavier_uniform(ctx, FLX_F64, 0, nullptr, 1.0, 1), FLX_ERR_SHAPE, "rank"));
    Shape z = {0, 4};
    EXPECT_TRUE(fails_with(flx_init_xavier_uniform(ctx, FLX_F64, 2, z.data(), 1.0, 1), FLX_ERR_SHAPE, "zero fan"));
    EXPECT_TRUE(fails_with(flx_init_kaiming_uniform(ctx, FLX_F64, 2, l.data(), (flx_fan_mode)5, 1.0, 1),
                           FLX_ERR_INVALID_ARGUMENT, "mode"));
    EXPECT_TRUE(fails_with(flx_init_uniform_fan_in(ctx, FLX_F64, 2, l.data(), 0, 1), FLX_ERR_INVALID_ARGUMENT, "fan_in"));
    EXPECT_TRUE(fails_with(flx_init_xavier_normal(ctx, FLX_I32, 2, l.data(), 1.0, 1), FLX_ERR_DTYPE, ""));
}

TEST_F(NnTest, Penalties) {
    auto av = rand_values(6, 51), bv = rand_values(4, 52);
    flx_tensor *a = make(ctx, FLX_F64, {2, 3}, av), *b = make(ctx, FLX_F64, {4}, bv);
    flx_tensor *ps[2] = {a, b};
    double l2 = 0, l1 = 0;
    for (double v : av) l2 += v * v, l1 += std::fabs(v);
    for (double v : bv) l2 += v * v, l1 += std::fabs(v);
    EXPECT_TRUE(close(values(flx_l2_penalty(2, ps, 0.3)), {0.15 * l2}, 1e-14, 1e-14));
    EXPECT_TRUE(close(values(flx_l1_penalty(2, ps, 0.3)), {0.3 * l1}, 1e-14, 1e-14));
    auto f2 = [](const std::vector<flx_tensor *> &in) { return flx_l2_penalty(2, in.data(), 0.7); };
    auto f1 = [](const std::vector<flx_tensor *> &in) { return flx_l1_penalty(2, in.data(), 0.7); };
    EXPECT_EQ(gradcheck(f2, {a, b}), FLX_OK) << flx_last_error();
    EXPECT_EQ(gradcheck(f1, {a, b}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(f2, {a, b}));
    EXPECT_TRUE(fails_with(flx_l2_penalty(0, ps, 0.1), FLX_ERR_INVALID_ARGUMENT, "at least one"));
    flx_tensor *c = rand_tensor(ctx, FLX_F32, {2}, 1);
    flx_tensor *mix[2] = {a, c};
    EXPECT_TRUE(fails_with(flx_l1_penalty(2, mix, 0.1), FLX_ERR_DTYPE, "dtypes"));
}

// ---- recurrent cells --------------------------------------------------------------------------------
double sigm(double v) { return 1 / (1 + std::exp(-v)); }

TEST_F(NnTest, RnnAndGruCellValues) {
    const int B = 2, I = 3, H = 4;
    auto xv = rand_values(B * I, 61), hv = rand_values(B * H, 62);
    for (int gates : {1, 3}) {
        auto wi = rand_values((size_t)(gates * H * I), 63), wh = rand_values((size_t)(gates * H * H), 64);
        auto bi = rand_values((size_t)(gates * H), 65), bh = rand_values((size_t)(gates * H), 66);
        flx_tensor *x = make(ctx, FLX_F64, {B, I}, xv), *h = make(ctx, FLX_F64, {B, H}, hv);
        flx_tensor *Wi = make(ctx, FLX_F64, {gates * H, I}, wi), *Wh = make(ctx, FLX_F64, {gates * H, H}, wh);
        flx_tensor *Bi = make(ctx, FLX_F64, {gates * H}, bi), *Bh = make(ctx, FLX_F64, {gates * H}, bh);
        flx_tensor *y = gates == 1 ? flx_rnn_cell(x, h, Wi, Wh, Bi, Bh) : flx_gru_cell(x, h, Wi, Wh, Bi, Bh);
        ASSERT_NE(y, nullptr) << flx_last_error();
        std::vector<double> ref;
        for (int b = 0; b < B; b++) {
            std::vector<double> gi((size_t)(gates * H)), gh((size_t)(gates * H));
            for (int r = 0; r < gates * H; r++) {
                double s1 = bi[(size_t)r], s2 = bh[(size_t)r];
                for (int i = 0; i < I; i++) s1 += wi[(size_t)(r * I + i)] * xv[(size_t)(b * I + i)];
                for (int i = 0; i < H; i++) s2 += wh[(size_t)(r * H + i)] * hv[(size_t)(b * H + i)];
                gi[(size_t)r] = s1;
                gh[(size_t)r] = s2;
            }
            for (int j = 0; j < H; j++) {
                if (gates == 1) {
                    ref.push_back(std::tanh(gi[(size_t)j] + gh[(size_t)j]));
                } else {
                    double r = sigm(gi[(size_t)j] + gh[(size_t)j]);
                    double z = sigm(gi[(size_t)(H + j)] + gh[(size_t)(H + j)]);
                    double n = std::tanh(gi[(size_t)(2 * H + j)] + r * gh[(size_t)(2 * H + j)]);
                    ref.push_back((1 - z) * n + z * hv[(size_t)(b * H + j)]);
                }
            }
        }
        EXPECT_TRUE(close(values(y), ref, 1e-13, 1e-13)) << "gates " << gates;
    }
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {2, 3}, 1), *h = rand_tensor(ctx, FLX_F64, {2, 4}, 2);
    flx_tensor *W = rand_tensor(ctx, FLX_F64, {4, 3}, 3), *U = rand_tensor(ctx, FLX_F64, {4, 4}, 4);
    EXPECT_TRUE(fails_with(flx_gru_cell(x, h, W, U, nullptr, nullptr), FLX_ERR_SHAPE, "W_ih (3 H, I)"));
    EXPECT_TRUE(fails_with(flx_rnn_cell(x, h, U, U, nullptr, nullptr), FLX_ERR_SHAPE, "W_ih"));
    EXPECT_TRUE(fails_with(flx_rnn_cell(x, nullptr, W, U, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    flx_clear_error();
}

// Backprop through time: a sequence of T steps with shared weights, loss = sum of h_T^2 plus the
// mean of the hidden states; gradients w.r.t. every weight, the inputs and h0 against finite
// differences, and forward mode with the dot-product test.
TEST_F(NnTest, RecurrentBackpropThroughTime) {
    const int T = 4, B = 2, I = 3, H = 3;
    for (int gates : {1, 3}) {
        flx_tensor *xs = rand_tensor(ctx, FLX_F64, {T, B, I}, 71);
        flx_tensor *h0 = rand_tensor(ctx, FLX_F64, {B, H}, 72);
        flx_tensor *Wi = rand_tensor(ctx, FLX_F64, {gates * H, I}, 73, -0.8, 0.8);
        flx_tensor *Wh = rand_tensor(ctx, FLX_F64, {gates * H, H}, 74, -0.8, 0.8);
        flx_tensor *bi = rand_tensor(ctx, FLX_F64, {gates * H}, 75), *bh = rand_tensor(ctx, FLX_F64, {gates * H}, 76);
        auto fn = [gates](const std::vector<flx_tensor *> &in) -> flx_tensor * {
            flx_tensor *h = in[1], *acc = nullptr;
            for (int t = 0; t < T; t++) {
                flx_tensor *xt = flx_squeeze(flx_slice(in[0], 0, t, t + 1, 1), 0);
                h = gates == 1 ? flx_rnn_cell(xt, h, in[2], in[3], in[4], in[5])
                               : flx_gru_cell(xt, h, in[2], in[3], in[4], in[5]);
                flx_tensor *m = flx_mean_all(h);
                acc = acc ? flx_add(acc, m) : m;
            }
            return flx_add(acc, flx_sum_all(flx_square(h)));
        };
        EXPECT_EQ(gradcheck(fn, {xs, h0, Wi, Wh, bi, bh}), FLX_OK) << "gates " << gates << ": " << flx_last_error();
        EXPECT_TRUE(jvp_check(fn, {xs, h0, Wi, Wh, bi, bh})) << "gates " << gates;
    }
}

// ---- GPU against CPU ------------------------------------------------------------------------------
using NnCuda = CudaCpuTest;

TEST_F(NnCuda, MatchesCpu) {
    flx_ctx *g = gpu;
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        double tol = dt == FLX_F32 ? 3e-5 : 1e-11;
        Shape xs = {5, 3, 9, 7};
        flx_tensor *xc = rand_tensor(cpu, dt, xs, 1), *xg = flx_to_ctx(xc, g);
        flx_tensor *gc = rand_tensor(cpu, dt, {3}, 2), *gg = flx_to_ctx(gc, g);
        flx_tensor *bc = rand_tensor(cpu, dt, {3}, 3), *bg = flx_to_ctx(bc, g);
        flx_tensor *rmc = rand_tensor(cpu, dt, {3}, 4), *rmg = flx_to_ctx(rmc, g);
        flx_tensor *rvc = rand_tensor(cpu, dt, {3}, 5, 0.5, 1.5), *rvg = flx_to_ctx(rvc, g);
        flx_tensor *nc = nullptr, *ng = nullptr, *vc = nullptr, *vg = nullptr;
        EXPECT_TRUE(close(values(flx_batch_norm(xg, gg, bg, rmg, rvg, true, 0.1, 1e-5, &ng, &vg)),
                          values(flx_batch_norm(xc, gc, bc, rmc, rvc, true, 0.1, 1e-5, &nc, &vc)), tol, tol));
        EXPECT_TRUE(close(values(ng), values(nc), tol, tol));
        EXPECT_TRUE(close(values(vg), values(vc), tol, tol));
        EXPECT_TRUE(close(values(flx_layer_norm(xg, 2, nullptr, nullptr, 1e-5)),
                          values(flx_layer_norm(xc, 2, nullptr, nullptr, 1e-5)), tol, tol));
        // Dropout: the identical mask on both backends for a seed.
        EXPECT_TRUE(close(values(flx_dropout(xg, 0.3, 42, true)), values(flx_dropout(xc, 0.3, 42, true)), 0, 0));
        int64_t k[2] = {2, 2};
        EXPECT_TRUE(close(values(flx_avg_pool2d(xg, k, nullptr, nullptr)),
                          values(flx_avg_pool2d(xc, k, nullptr, nullptr)), tol, tol));
        flx_tensor *tc = rand_tensor(cpu, dt, xs, 6, 0, 1), *tg = flx_to_ctx(tc, g);
        EXPECT_TRUE(close(values(flx_bce_with_logits(xg, tg, FLX_REDUCTION_NONE)),
                          values(flx_bce_with_logits(xc, tc, FLX_REDUCTION_NONE)), tol, tol));
        EXPECT_TRUE(close(values(flx_log_cosh_loss(xg, tg, FLX_REDUCTION_MEAN)),
                          values(flx_log_cosh_loss(xc, tc, FLX_REDUCTION_MEAN)), tol, tol));
    }
}

// The training rules on the GPU (reductions, the fused dx kernel) against the CPU reference.
TEST_F(NnCuda, BatchNormTrainingGradientsMatchCpu) {
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        double tol = dt == FLX_F32 ? 1e-4 : 1e-10;
        Shape xs = {16, 5, 9, 7};
        std::vector<double> got[2][4];
        for (int k = 0; k < 2; k++) {
            auto on = [&](flx_tensor *t) { return k == 0 ? t : flx_to_ctx(t, gpu); };
            flx_tensor *x = on(rand_tensor(cpu, dt, xs, 81, -1, 3)), *u = on(rand_tensor(cpu, dt, xs, 82));
            flx_tensor *g = on(rand_tensor(cpu, dt, {5}, 83, 0.5, 1.5)), *b = on(rand_tensor(cpu, dt, {5}, 84));
            flx_tensor *all[4] = {x, u, g, b};
            ASSERT_EQ(flx_eval(4, all), FLX_OK) << flx_last_error();
            for (flx_tensor *t : {x, g, b}) ASSERT_EQ(flx_set_requires_grad(t, true), FLX_OK);
            flx_tensor *y = flx_batch_norm(x, g, b, nullptr, nullptr, true, 0.1, 1e-5, nullptr, nullptr);
            flx_tensor *ins[3] = {x, g, b}, *gr[3] = {nullptr, nullptr, nullptr};
            ASSERT_EQ(flx_grad_of(1, &y, &u, 3, ins, false, gr), FLX_OK) << flx_last_error();
            flx_tensor *tan = nullptr, *t3[3] = {u, nullptr, nullptr};
            ASSERT_EQ(flx_jvp(3, ins, t3, 1, &y, &tan), FLX_OK) << flx_last_error();
            got[k][0] = values(gr[0]);
            got[k][1] = values(gr[1]);
            got[k][2] = values(gr[2]);
            got[k][3] = values(tan);
        }
        for (int j = 0; j < 4; j++) EXPECT_TRUE(close(got[1][j], got[0][j], tol, tol)) << "dtype " << dt << " part " << j;
    }
}

}  // namespace
