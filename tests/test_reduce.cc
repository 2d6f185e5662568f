// test_reduce.cc — reductions: values against plain float64 loops, keepdims, negative axes, 0-d
// and empty tensors, VJPs by central differences (and tie sharing by hand), JVPs, bad inputs.
#include "testing.h"

#include <algorithm>
#include <limits>
#include <string>

using flxt::Shape;

namespace {

enum class R { Sum, Mean, Max, Min, Lse, Var0, Var1, Argmax };

const char *rname(R op) {
    switch (op) {
    case R::Sum: return "sum";
    case R::Mean: return "mean";
    case R::Max: return "max";
    case R::Min: return "min";
    case R::Lse: return "logsumexp";
    case R::Var0: return "var0";
    case R::Var1: return "var1";
    case R::Argmax: return "argmax";
    }
    return "?";
}

flx_tensor *apply(R op, flx_tensor *x, const std::vector<int32_t> &axes, bool keep) {
    int32_t n = (int32_t)axes.size();
    const int32_t *a = axes.empty() ? nullptr : axes.data();
    switch (op) {
    case R::Sum: return flx_sum(x, n, a, keep);
    case R::Mean: return flx_mean(x, n, a, keep);
    case R::Max: return flx_max(x, n, a, keep);
    case R::Min: return flx_min(x, n, a, keep);
    case R::Lse: return flx_logsumexp(x, n, a, keep);
    case R::Var0: return flx_var(x, n, a, keep, 0);
    case R::Var1: return flx_var(x, n, a, keep, 1);
    case R::Argmax: return flx_argmax(x, axes.at(0), keep);
    }
    return nullptr;
}

struct Ref {
    Shape shape;
    std::vector<double> v;
};

// Independent reference: groups the elements of x by their kept index, in row-major order.
Ref ref_reduce(R op, const Shape &s, const std::vector<double> &x, std::vector<int32_t> axes,
               bool keep) {
    int nd = (int)s.size();
    std::vector<bool> red(nd, axes.empty());
    for (int32_t a : axes) red[a < 0 ? a + nd : a] = true;
    Ref r;
    Shape kept;
    for (int d = 0; d < nd; d++) {
        if (red[d]) {
            if (keep) r.shape.push_back(1);
        } else {
            r.shape.push_back(s[d]);
            kept.push_back(s[d]);
        }
    }
    size_t nout = 1;
    for (int64_t k : kept) nout *= (size_t)k;
    std::vector<std::vector<double>> groups(nout);
    std::vector<int64_t> idx(nd, 0);
    for (size_t i = 0; i < x.size(); i++) {
        size_t o = 0;
        for (int d = 0; d < nd; d++)
            if (!red[d]) o = o * (size_t)s[d] + (size_t)idx[d];
        groups[o].push_back(x[i]);
        for (int d = nd - 1; d >= 0; d--) {
            if (++idx[d] < s[d]) break;
            idx[d] = 0;
        }
    }
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (auto &g : groups) {
        double n = (double)g.size(), acc = 0;
        switch (op) {
        case R::Sum:
            for (double v : g) acc += v;
            break;
        case R::Mean:
            for (double v : g) acc += v;
            acc = g.empty() ? nan : acc / n;
            break;
        case R::Max: acc = *std::max_element(g.begin(), g.end()); break;
        case R::Min: acc = *std::min_element(g.begin(), g.end()); break;
        case R::Lse: {
            double m = *std::max_element(g.begin(), g.end());
            for (double v : g) acc += std::exp(v - m);
            acc = m + std::log(acc);
            break;
        }
        case R::Var0:
        case R::Var1: {
            double mean = 0;
            for (double v : g) mean += v;
            mean /= n;
            for (double v : g) acc += (v - mean) * (v - mean);
            acc /= n - (op == R::Var1 ? 1 : 0);
            if (g.empty()) acc = nan;
            break;
        }
        case R::Argmax: acc = (double)(std::max_element(g.begin(), g.end()) - g.begin()); break;
        }
        r.v.push_back(acc);
    }
    return r;
}

struct Case {
    Shape shape;
    std::vector<int32_t> axes;
};

const std::vector<Case> kCases = {
    {{}, {}},           {{5}, {}},         {{5}, {0}},         {{5}, {-1}},
    {{2, 3}, {}},       {{2, 3}, {0}},     {{2, 3}, {1}},      {{2, 3}, {-1}},
    {{2, 3}, {0, 1}},   {{2, 3}, {-2}},    {{2, 3, 4}, {0, 2}}, {{2, 3, 4}, {-1, 0}},
    {{2, 3, 4}, {1}},   {{2, 3, 4}, {}},   {{2, 3, 4}, {2, 1}}, {{2, 1, 3}, {1}},
    {{3, 2, 2, 2}, {1, 3}},
};

class ReduceTest : public flxt::CpuTest {};

}  // namespace

TEST_F(ReduceTest, ValuesMatchReferenceF64) {
    const R ops[] = {R::Sum, R::Mean, R::Max, R::Min, R::Lse, R::Var0, R::Var1};
    uint64_t seed = 1;
    for (R op : ops)
        for (const Case &c : kCases)
            for (bool keep : {false, true}) {
                std::vector<double> xv = flxt::rand_values((size_t)flxt::numel_of(c.shape), seed++, -2, 2);
                flx_tensor *x = flxt::make(ctx, FLX_F64, c.shape, xv);
                flx_tensor *y = apply(op, x, c.axes, keep);
                ASSERT_NE(y, nullptr) << rname(op) << ": " << flx_last_error();
                Ref r = ref_reduce(op, c.shape, xv, c.axes, keep);
                EXPECT_EQ(flxt::shape_of(y), r.shape) << rname(op) << " case " << c.shape.size();
                EXPECT_EQ(flx_dtype_of(y), FLX_F64);
                EXPECT_TRUE(flxt::close(flxt::values(y), r.v, 1e-12, 1e-12))
                    << rname(op) << " keep " << keep;
            }
}

TEST_F(ReduceTest, ValuesF32) {
    const R ops[] = {R::Sum, R::Mean, R::Max, R::Min, R::Lse, R::Var1};
    for (R op : ops) {
        Shape s = {3, 4, 5};
        std::vector<double> xv = flxt::rand_values(60, 42, -3, 3);
        for (double &v : xv) v = (double)(float)v;
        flx_tensor *x = flxt::make(ctx, FLX_F32, s, xv);
        flx_tensor *y = apply(op, x, {0, -1}, false);
        ASSERT_NE(y, nullptr) << flx_last_error();
        EXPECT_EQ(flx_dtype_of(y), FLX_F32);
        Ref r = ref_reduce(op, s, xv, {0, -1}, false);
        EXPECT_TRUE(flxt::close(flxt::values(y), r.v, 1e-5, 1e-5)) << rname(op);
    }
}

TEST_F(ReduceTest, IntegerSumMaxMin) {
    std::vector<double> xv = {3, -7, 12, 5, 0, -1, 8, 8, 2, -9, 4, 1};
    for (flx_dtype dt : {FLX_I32, FLX_I64}) {
        flx_tensor *x = flxt::make(ctx, dt, {3, 4}, xv);
        for (R op : {R::Sum, R::Max, R::Min}) {
            for (std::vector<int32_t> axes : {std::vector<int32_t>{}, {0}, {-1}}) {
                flx_tensor *y = apply(op, x, axes, false);
                ASSERT_NE(y, nullptr) << flx_last_error();
                EXPECT_EQ(flx_dtype_of(y), dt);
                EXPECT_EQ(flxt::values(y), ref_reduce(op, {3, 4}, xv, axes, false).v) << rname(op);
            }
        }
        // int64 sums stay exact beyond 2^31
        if (dt == FLX_I64) {
            flx_tensor *big = flxt::make(ctx, FLX_I64, {3}, {3e9, 3e9, 1});
            EXPECT_EQ(flxt::values(flx_sum_all(big)), std::vector<double>{6000000001.0});
        }
    }
}

TEST_F(ReduceTest, SumAllMeanAll) {
    std::vector<double> xv = flxt::rand_values(24, 5);
    flx_tensor *x = flxt::make(ctx, FLX_F64, {2, 3, 4}, xv);
    flx_tensor *s = flx_sum_all(x), *m = flx_mean_all(x);
    ASSERT_NE(s, nullptr);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(flx_ndim(s), 0);
    EXPECT_EQ(flx_ndim(m), 0);
    double acc = 0;
    for (double v : xv) acc += v;
    EXPECT_TRUE(flxt::close(flxt::values(s), {acc}));
    EXPECT_TRUE(flxt::close(flxt::values(m), {acc / 24}));
    // 0-d input: identity
    flx_tensor *z = flx_scalar(ctx, FLX_F64, 2.5);
    EXPECT_EQ(flxt::values(flx_sum_all(z)), std::vector<double>{2.5});
    EXPECT_EQ(flxt::values(flx_mean_all(z)), std::vector<double>{2.5});
    EXPECT_TRUE(flxt::close(flxt::values(flx_var(z, 0, nullptr, false, 0)), {0.0}));
}

TEST_F(ReduceTest, EmptyReductions) {
    flx_tensor *x = flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{0, 3}.data());
    int32_t ax0 = 0, ax1 = 1;
    // over the empty axis: sum 0, mean/var NaN
    flx_tensor *s = flx_sum(x, 1, &ax0, false);
    EXPECT_EQ(flxt::shape_of(s), (Shape{3}));
    EXPECT_EQ(flxt::values(s), std::vector<double>(3, 0.0));
    const double nan = std::numeric_limits<double>::quiet_NaN();
    EXPECT_TRUE(flxt::close(flxt::values(flx_mean(x, 1, &ax0, true)), {nan, nan, nan}));
    EXPECT_TRUE(flxt::close(flxt::values(flx_var(x, 1, &ax0, false, 0)), {nan, nan, nan}));
    EXPECT_TRUE(flxt::close(flxt::values(flx_var(x, 1, &ax0, false, 1)), {nan, nan, nan}));
    EXPECT_TRUE(flxt::close(flxt::values(flx_sum_all(x)), {0.0}));
    EXPECT_TRUE(flxt::close(flxt::values(flx_mean_all(x)), {nan}));
    // over the non-empty axis: an empty result, no error
    flx_tensor *mx = flx_max(x, 1, &ax1, false);
    ASSERT_NE(mx, nullptr) << flx_last_error();
    EXPECT_EQ(flxt::shape_of(mx), (Shape{0}));
    EXPECT_TRUE(flxt::values(mx).empty());
    EXPECT_EQ(flxt::shape_of(flx_argmax(x, 1, true)), (Shape{0, 1}));
    // max/min/logsumexp/argmax of an empty set: errors at build time
    EXPECT_TRUE(flxt::fails_with(flx_max(x, 1, &ax0, false), FLX_ERR_SHAPE, "flx_max"));
    EXPECT_TRUE(flxt::fails_with(flx_min(x, 0, nullptr, false), FLX_ERR_SHAPE, "empty"));
    EXPECT_TRUE(flxt::fails_with(flx_logsumexp(x, 1, &ax0, true), FLX_ERR_SHAPE, "flx_logsumexp"));
    EXPECT_TRUE(flxt::fails_with(flx_argmax(x, 0, false), FLX_ERR_SHAPE, "flx_argmax"));
    // gradient of an empty sum/mean is an empty tensor
    flx_tensor *e = flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{0, 3}.data());
    ASSERT_EQ(flx_set_requires_grad(e, true), FLX_OK);
    ASSERT_EQ(flx_backward(flx_sum_all(flx_mean(e, 1, &ax1, false))), FLX_OK) << flx_last_error();
    flx_tensor *g = flx_grad(e);
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(flxt::shape_of(g), (Shape{0, 3}));
}

TEST_F(ReduceTest, VarCorrectionLargerThanCount) {
    flx_tensor *x = flxt::make(ctx, FLX_F64, {1}, {4.0});
    // N - correction = 0: 0 / 0
    EXPECT_TRUE(std::isnan(flxt::values(flx_var(x, 0, nullptr, false, 1))[0]));
    flx_tensor *y = flxt::make(ctx, FLX_F64, {3}, {1, 2, 4});
    // divisor max(0, N - correction) = 0: a positive sum over 0
    EXPECT_TRUE(std::isinf(flxt::values(flx_var(y, 0, nullptr, false, 5))[0]));
    EXPECT_TRUE(flxt::fails_with(flx_var(y, 0, nullptr, false, -1), FLX_ERR_INVALID_ARGUMENT,
                                 "correction"));
}

TEST_F(ReduceTest, Argmax) {
    // first maximum on ties
    std::vector<double> xv = {1, 5, 5, 2, 7, 0, 7, 7, -1, -2, -3, -1};
    flx_tensor *x = flxt::make(ctx, FLX_F64, {3, 4}, xv);
    flx_tensor *a1 = flx_argmax(x, 1, false);
    ASSERT_NE(a1, nullptr) << flx_last_error();
    EXPECT_EQ(flx_dtype_of(a1), FLX_I64);
    EXPECT_EQ(flxt::shape_of(a1), (Shape{3}));
    EXPECT_EQ(flxt::values(a1), (std::vector<double>{1, 0, 0}));
    flx_tensor *a0 = flx_argmax(x, -2, true);
    EXPECT_EQ(flxt::shape_of(a0), (Shape{1, 4}));
    EXPECT_EQ(flxt::values(a0), (std::vector<double>{1, 0, 1, 1}));
    // against the reference on random 3-d data along each axis
    std::vector<double> rv = flxt::rand_values(60, 9);
    flx_tensor *r = flxt::make(ctx, FLX_F32, {3, 4, 5}, rv);
    for (double &v : rv) v = (double)(float)v;
    for (int32_t ax : {0, 1, 2, -1}) {
        flx_tensor *am = flx_argmax(r, ax, false);
        EXPECT_EQ(flxt::values(am), ref_reduce(R::Argmax, {3, 4, 5}, rv, {ax}, false).v) << ax;
    }
    // integers, and no gradient
    flx_tensor *xi = flxt::make(ctx, FLX_I32, {4}, {3, 9, 2, 9});
    EXPECT_EQ(flxt::values(flx_argmax(xi, 0, false)), std::vector<double>{1});
    flx_tensor *leaf = flxt::make(ctx, FLX_F64, {4}, {3, 9, 2, 9});
    ASSERT_EQ(flx_set_requires_grad(leaf, true), FLX_OK);
    EXPECT_FALSE(flx_requires_grad(flx_argmax(leaf, 0, false)));
    EXPECT_TRUE(flxt::fails_with(flx_argmax(flx_scalar(ctx, FLX_F64, 1), 0, false),
                                 FLX_ERR_INVALID_ARGUMENT, "flx_argmax"));
    EXPECT_TRUE(flxt::fails_with(flx_argmax(x, 2, false), FLX_ERR_INVALID_ARGUMENT, "axis 2"));
}

TEST_F(ReduceTest, GradcheckAllOps) {
    const R ops[] = {R::Sum, R::Mean, R::Max, R::Min, R::Lse, R::Var0, R::Var1};
    const std::vector<Case> cases = {
        {{}, {}}, {{4}, {}}, {{3, 4}, {0}}, {{3, 4}, {-1}}, {{2, 3, 4}, {0, 2}}, {{2, 3, 2}, {}},
    };
    uint64_t seed = 100;
    for (R op : ops)
        for (const Case &c : cases)
            for (bool keep : {false, true}) {
                if (op == R::Var1 && c.shape.empty()) continue;  // N - 1 = 0: NaN
                // distinct values (no ties) for max/min
                flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, c.shape, seed++, -2, 2);
                std::vector<int32_t> axes = c.axes;
                flxt::Fn fn = [op, axes, keep](const std::vector<flx_tensor *> &in) {
                    return apply(op, in[0], axes, keep);
                };
                EXPECT_EQ(flxt::gradcheck(fn, {x}), FLX_OK)
                    << rname(op) << " rank " << c.shape.size() << ": " << flx_last_error();
                flx_clear_error();
            }
}

TEST_F(ReduceTest, GradcheckComposed) {
    // a normalisation layer: (x - mean) / sqrt(var + eps), then logsumexp of it
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {3, 5}, 77);
    flxt::Fn fn = [](const std::vector<flx_tensor *> &in) {
        int32_t ax = -1;
        flx_tensor *m = flx_mean(in[0], 1, &ax, true);
        flx_tensor *v = flx_var(in[0], 1, &ax, true, 0);
        flx_tensor *z = flx_div(flx_sub(in[0], m), flx_sqrt(flx_add_scalar(v, 1e-3)));
        return flx_logsumexp(z, 1, &ax, false);
    };
    EXPECT_EQ(flxt::gradcheck(fn, {x}), FLX_OK) << flx_last_error();
}

TEST_F(ReduceTest, SecondOrder) {
    // the gradient of logsumexp (softmax) and of var, differentiated again
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {2, 4}, 31);
    for (R op : {R::Lse, R::Var1, R::Max, R::Mean}) {
        flxt::Fn fn = [op](const std::vector<flx_tensor *> &in) -> flx_tensor * {
            int depth = 0;
            while (!flx_grad_enabled()) {
                flx_no_grad_end();
                depth++;
            }
            flx_tensor *x0 = in[0];
            if (!flx_requires_grad(x0)) {
                x0 = flx_add_scalar(in[0], 0.0);
                flx_set_requires_grad(x0, true);
            }
            flx_tensor *y = flx_sum_all(flx_square(apply(op, x0, {-1}, false)));
            flx_tensor *g = nullptr;
            if (flx_grad_of(1, &y, nullptr, 1, &x0, true, &g) != FLX_OK) g = nullptr;
            for (int i = 0; i < depth; i++) flx_no_grad_begin();
            return g;
        };
        EXPECT_EQ(flxt::gradcheck(fn, {x}), FLX_OK) << rname(op) << ": " << flx_last_error();
        flx_clear_error();
    }
}

TEST_F(ReduceTest, MaxMinTiesShareGradient) {
    flx_tensor *x = flxt::make(ctx, FLX_F64, {2, 4}, {1, 3, 3, 2, 5, 5, 5, -1});
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    int32_t ax = 1;
    ASSERT_EQ(flx_backward(flx_sum_all(flx_max(x, 1, &ax, false))), FLX_OK) << flx_last_error();
    EXPECT_TRUE(flxt::close(flxt::values(flx_grad(x)),
                            {0, 0.5, 0.5, 0, 1.0 / 3, 1.0 / 3, 1.0 / 3, 0}));
    flx_tensor *y = flxt::make(ctx, FLX_F64, {2, 3}, {2, 0, 0, 0, 7, 0});
    ASSERT_EQ(flx_set_requires_grad(y, true), FLX_OK);
    // min over all axes: four tied zeros, weighted by a cotangent of 8
    flx_tensor *loss = flx_mul_scalar(flx_min(y, 0, nullptr, false), 8.0);
    ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    EXPECT_TRUE(flxt::close(flxt::values(flx_grad(y)), {0, 2, 2, 2, 0, 2}));
    // keepdims along axis 0 with a tie in one column
    flx_tensor *z = flxt::make(ctx, FLX_F64, {2, 2}, {4, 1, 4, 0});
    ASSERT_EQ(flx_set_requires_grad(z, true), FLX_OK);
    int32_t a0 = 0;
    ASSERT_EQ(flx_backward(flx_sum_all(flx_max(z, 1, &a0, true))), FLX_OK);
    EXPECT_TRUE(flxt::close(flxt::values(flx_grad(z)), {0.5, 1, 0.5, 0}));
}

TEST_F(ReduceTest, Jvp) {
    const R ops[] = {R::Sum, R::Mean, R::Max, R::Min, R::Lse, R::Var0, R::Var1};
    uint64_t seed = 500;
    for (R op : ops)
        for (const Case &c : std::vector<Case>{{{}, {}}, {{3, 4}, {1}}, {{2, 3, 4}, {0, -1}}})
            for (bool keep : {false, true}) {
                flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, c.shape, seed++, -2, 2);
                std::vector<int32_t> axes = c.axes;
                flxt::Fn fn = [op, axes, keep](const std::vector<flx_tensor *> &in) {
                    return apply(op, in[0], axes, keep);
                };
                EXPECT_TRUE(flxt::jvp_check(fn, {x})) << rname(op);
            }
}

TEST_F(ReduceTest, BadInputs) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {2, 3, 4}, 3);
    int32_t bad[2] = {3, 0}, dup[2] = {1, -2}, neg[1] = {-4};
    EXPECT_TRUE(flxt::fails_with(flx_sum(x, 1, bad, false), FLX_ERR_INVALID_ARGUMENT, "flx_sum"));
    EXPECT_TRUE(flxt::fails_with(flx_mean(x, 1, neg, false), FLX_ERR_INVALID_ARGUMENT, "axis -4"));
    EXPECT_TRUE(flxt::fails_with(flx_max(x, 2, dup, false), FLX_ERR_INVALID_ARGUMENT, "twice"));
    EXPECT_TRUE(flxt::fails_with(flx_var(x, 2, bad, false, 0), FLX_ERR_INVALID_ARGUMENT,
                                 "(2, 3, 4)"));
    EXPECT_TRUE(flxt::fails_with(flx_sum(x, -1, nullptr, false), FLX_ERR_INVALID_ARGUMENT,
                                 "flx_sum"));
    EXPECT_TRUE(flxt::fails_with(flx_sum(x, 1, nullptr, false), FLX_ERR_INVALID_ARGUMENT,
                                 "flx_sum"));
    int32_t z = 0;
    EXPECT_TRUE(flxt::fails_with(flx_sum(flx_scalar(ctx, FLX_F64, 1), 1, &z, false),
                                 FLX_ERR_INVALID_ARGUMENT, "flx_sum"));
    // dtypes
    flx_tensor *xi = flxt::make(ctx, FLX_I32, {3}, {1, 2, 3});
    flx_tensor *xb = flxt::make(ctx, FLX_BOOL, {3}, {1, 0, 1});
    EXPECT_TRUE(flxt::fails_with(flx_mean(xi, 0, nullptr, false), FLX_ERR_DTYPE, "flx_mean"));
    EXPECT_TRUE(flxt::fails_with(flx_logsumexp(xi, 0, nullptr, false), FLX_ERR_DTYPE, "i32"));
    EXPECT_TRUE(flxt::fails_with(flx_var(xi, 0, nullptr, false, 0), FLX_ERR_DTYPE, "flx_var"));
    EXPECT_EQ(flx_dtype_of(flx_sum(xb, 0, nullptr, false)), FLX_I64);  // counts, as numpy
    EXPECT_TRUE(flxt::fails_with(flx_mean_all(xb), FLX_ERR_DTYPE, "flx_mean_all"));
    // NULL propagates and keeps the first error
    flx_tensor *bad_t = flx_sum(x, 1, bad, false);
    EXPECT_EQ(bad_t, nullptr);
    std::string first = flx_last_error();
    EXPECT_EQ(flx_mean(flx_max(bad_t, 0, nullptr, false), 0, nullptr, true), nullptr);
    EXPECT_EQ(flx_argmax(nullptr, 0, false), nullptr);
    EXPECT_EQ(flx_var(nullptr, 0, nullptr, false, -3), nullptr);
    EXPECT_EQ(flx_sum_all(nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(first, flx_last_error());
    flx_clear_error();
    EXPECT_TRUE(flxt::fails_with(flx_sum_all(nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
}

namespace {

using ReduceCuda = flxt::CudaCpuTest;

// GPU against the CPU at shapes that take the split (two-stage) CUDA paths: a full reduction of
// 2^22 elements (one output over many blocks), leading-axis reductions with the kept axis
// innermost (32-column tiles: 1000 and 5000 columns, a partial tile, one chunk or many), and
// NaN / tie placement across chunk boundaries for max, min and argmax (first NaN, first max).
// The variance takes the split path too (per-channel statistics of a batch norm: (N, C, H, W)
// over every axis but 1).
TEST_F(ReduceCuda, SplitPathsMatchCpu) {
    struct C {
        Shape shape;
        std::vector<int32_t> axes;
    };
    const C cases[] = {{{1 << 22}, {0}}, {{8192, 1000}, {0}}, {{100, 5000}, {0}},
                       {{2, 1 << 20}, {1}}, {{64, 3, 4099}, {0, 2}}, {{4096, 4096}, {}},
                       {{128, 32, 28, 28}, {0, 2, 3}}, {{128, 64, 14, 14}, {0, 2, 3}}};
    const R ops[] = {R::Sum, R::Mean, R::Max, R::Min, R::Argmax, R::Var0, R::Var1};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        double tol = dt == FLX_F64 ? 1e-12 : 1e-6;
        for (const C &c : cases) {
            size_t n = 1;
            for (int64_t d : c.shape) n *= (size_t)d;
            std::vector<double> v = flxt::rand_values(n, 41, -2, 2);
            flx_tensor *xc = flxt::make(cpu, dt, c.shape, v), *xg = flx_to_ctx(xc, gpu);
            ASSERT_TRUE(xc && xg) << flx_last_error();
            for (R op : ops) {
                if (op == R::Argmax && c.axes.size() != 1) continue;
                SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " " + rname(op) + " numel " + std::to_string(n));
                flx_tensor *rc = apply(op, xc, c.axes, false), *rg = apply(op, xg, c.axes, false);
                ASSERT_TRUE(rc && rg) << flx_last_error();
                bool exact = op == R::Max || op == R::Min || op == R::Argmax;
                EXPECT_TRUE(flxt::close(flxt::values(rg), flxt::values(rc), exact ? 0 : tol, exact ? 0 : tol));
            }
        }
    }
    // NaN and ties across chunks of a 2^22 vector: the first NaN / first maximum wins.
    const size_t n = (size_t)1 << 22;
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        std::vector<double> v = flxt::rand_values(n, 43, -1, 1);
        v[n / 2 + 1] = 5.0, v[n - 3] = 5.0;                  // tie for the maximum in two chunks
        flx_tensor *x = flxt::make(gpu, dt, {(int64_t)n}, v);
        EXPECT_EQ(flxt::values(flx_argmax(x, 0, false))[0], (double)(n / 2 + 1));
        EXPECT_EQ(flxt::values(flx_max(x, 0, nullptr, false))[0], 5.0);
        v[n - 7] = NAN, v[n / 3] = NAN;                      // two NaNs, the earlier one first
        x = flxt::make(gpu, dt, {(int64_t)n}, v);
        EXPECT_EQ(flxt::values(flx_argmax(x, 0, false))[0], (double)(n / 3));
        EXPECT_TRUE(std::isnan(flxt::values(flx_max(x, 0, nullptr, false))[0]));
        EXPECT_TRUE(std::isnan(flxt::values(flx_min(x, 0, nullptr, false))[0]));
        EXPECT_TRUE(std::isnan(flxt::values(flx_sum_all(x))[0]));
    }
}

}  // namespace

namespace {

// The split variance (chunk partials combined by Chan et al.'s formula) on data far from zero,
// where E[x^2] - E[x]^2 would lose every digit: against a float64 two-pass reference of the
// stored values, at counts no chunking divides evenly (primes), with a partial 32-column tile;
// and bit for bit equal run to run (a fixed combination order).
TEST_F(ReduceCuda, SplitVarianceOffsetUnevenAndDeterministic) {
    struct C {
        Shape shape;
        std::vector<int32_t> axes;
    };
    const C cases[] = {{{(1 << 20) + 7}, {0}}, {{262147}, {0}}, {{65537, 40}, {0}}, {{61, 3, 4099}, {0, 2}}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        for (const C &c : cases) {
            size_t n = 1;
            for (int64_t d : c.shape) n *= (size_t)d;
            std::vector<double> v = flxt::rand_values(n, 47, 1e6 - 1, 1e6 + 1);
            flx_tensor *xc = flxt::make(cpu, dt, c.shape, v), *xg = flx_to_ctx(xc, gpu);
            ASSERT_TRUE(xc && xg) << flx_last_error();
            std::vector<double> xs = flxt::values(xc);  // the stored (rounded) values
            // Reference: kept index and reduced index of each element (axes as listed above).
            std::vector<int64_t> kept(n);
            int64_t nk = 1;
            for (size_t d = 0; d < c.shape.size(); d++)
                if (std::find(c.axes.begin(), c.axes.end(), (int32_t)d) == c.axes.end()) nk *= c.shape[d];
            for (size_t i = 0; i < n; i++) {
                int64_t rest = (int64_t)i, k = 0, mul = 1;
                for (size_t d = c.shape.size(); d-- > 0;) {
                    int64_t id = rest % c.shape[d];
                    rest /= c.shape[d];
                    if (std::find(c.axes.begin(), c.axes.end(), (int32_t)d) == c.axes.end()) {
                        k += id * mul;
                        mul *= c.shape[d];
                    }
                }
                kept[i] = k;
            }
            const double cnt = (double)n / (double)nk;
            std::vector<double> mean(nk, 0.0), m2(nk, 0.0);
            for (size_t i = 0; i < n; i++) mean[kept[i]] += xs[i];
            for (double &m : mean) m /= cnt;
            for (size_t i = 0; i < n; i++) m2[kept[i]] += (xs[i] - mean[kept[i]]) * (xs[i] - mean[kept[i]]);
            for (int64_t ddof : {0, 1}) {
                SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " numel " + std::to_string(n) + " ddof " +
                             std::to_string(ddof));
                std::vector<double> want(nk);
                for (int64_t k = 0; k < nk; k++) want[k] = m2[k] / (cnt - (double)ddof);
                const int32_t na = (int32_t)c.axes.size();
                flx_tensor *a = flx_var(xg, na, c.axes.data(), false, ddof);
                flx_tensor *b = flx_var(xg, na, c.axes.data(), false, ddof);
                ASSERT_TRUE(a && b) << flx_last_error();
                EXPECT_TRUE(flxt::close(flxt::values(a), want, 0, dt == FLX_F64 ? 1e-9 : 2e-6));
                EXPECT_EQ(flxt::raw_bits(a), flxt::raw_bits(b));
            }
        }
    }
}

}  // namespace
