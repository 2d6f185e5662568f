// test_softmax.cc — the softmax family: softmax / log_softmax values against float64
// formulas at many row lengths, axes, dtypes and extreme inputs; VJP (gradcheck) and JVP
// (jvp_check: central differences + dot-product test) of softmax, log_softmax and
// cross-entropy; second order through the dedicated backward ops; bad inputs; and the CUDA
// kernels against the CPU reference (skipped without a GPU).
#include "testing.h"

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

using namespace flxt;

namespace {

class Softmax : public flxt::CpuTest {};

// flx_grad_of inside a checked function needs grad mode on and inputs that require grad; the
// finite-difference points of gradcheck/jvp_check are constants evaluated in no-grad mode
// (the pattern of test_linalg.cc / test_conv.cc).
// d<w, f(x)>/dx with create_graph, for any x (a constant becomes a leaf first).
flx_tensor *grad_inside(flx_tensor *x, const std::function<flx_tensor *(flx_tensor *)> &f) {
    flxt::GradOn on;
    if (!flx_requires_grad(x)) flx_set_requires_grad(x, true);
    flx_tensor *L = f(x);
    flx_tensor *g = nullptr;
    if (!L || flx_grad_of(1, &L, nullptr, 1, &x, true, &g) != FLX_OK) return nullptr;
    return g;
}

size_t count(const Shape &s) {
    size_t n = 1;
    for (int64_t d : s) n *= (size_t)d;
    return n;
}

// Float64 reference: softmax(s x) or log_softmax(s x) along axis of shape.
std::vector<double> ref_softmax(const std::vector<double> &x, const Shape &shape, int axis,
                                double s, bool lg) {
    int64_t outer = 1, inner = 1, n = shape[(size_t)axis];
    for (int d = 0; d < axis; d++) outer *= shape[(size_t)d];
    for (size_t d = (size_t)axis + 1; d < shape.size(); d++) inner *= shape[d];
    std::vector<double> y(x.size());
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            auto at = [&](int64_t j) { return (size_t)((o * n + j) * inner + i); };
            double m = -INFINITY;
            for (int64_t j = 0; j < n; j++) m = std::fmax(m, s * x[at(j)]);
            double sum = 0;
            for (int64_t j = 0; j < n; j++) sum += std::exp(s * x[at(j)] - m);
            for (int64_t j = 0; j < n; j++)
                y[at(j)] = lg ? s * x[at(j)] - m - std::log(sum) : std::exp(s * x[at(j)] - m) / sum;
        }
    return y;
}

// Per-row cross-entropy reference for (N, C) logits.
std::vector<double> ref_ce_rows(const std::vector<double> &x, int64_t N, int64_t C,
                                const std::vector<double> &lab, int64_t ignore) {
    std::vector<double> l((size_t)N);
    for (int64_t r = 0; r < N; r++) {
        int64_t y = (int64_t)lab[(size_t)r];
        if (y == ignore) { l[(size_t)r] = 0; continue; }
        double m = -INFINITY, sum = 0;
        for (int64_t c = 0; c < C; c++) m = std::fmax(m, x[(size_t)(r * C + c)]);
        for (int64_t c = 0; c < C; c++) sum += std::exp(x[(size_t)(r * C + c)] - m);
        l[(size_t)r] = m + std::log(sum) - x[(size_t)(r * C + y)];
    }
    return l;
}

TEST_F(Softmax, ValuesAtManyRowLengthsBothDtypes) {
    for (int64_t n : {1, 2, 31, 32, 33, 1023, 1025, 65537}) {
        int64_t rows = n > 2000 ? 2 : 5;
        Shape sh{rows, n};
        std::vector<double> xv = rand_values(count(sh), 100 + (uint64_t)n, -6, 6);
        for (flx_dtype dt : {FLX_F32, FLX_F64}) {
            for (bool lg : {false, true}) {
                flx_tensor *x = make(ctx, dt, sh, xv);
                std::vector<double> xr = values(x);  // as rounded to dt
                flx_tensor *y = lg ? flx_log_softmax(x, -1, 0.7) : flx_softmax(x, -1, 0.7);
                ASSERT_NE(y, nullptr) << flx_last_error();
                EXPECT_EQ(flxt::shape_of(y), sh);
                double tol = dt == FLX_F32 ? 2e-6 : 1e-13;
                EXPECT_TRUE(close(values(y), ref_softmax(xr, sh, 1, 1 / 0.7, lg), lg ? tol * 10 : tol,
                                  dt == FLX_F32 ? 1e-5 : 1e-12))
                    << "n " << n << " " << flx_dtype_name(dt) << (lg ? " log" : "");
            }
        }
    }
}

TEST_F(Softmax, ValuesAlongFirstMiddleLastAxes) {
    Shape sh{3, 5, 7};
    std::vector<double> xv = rand_values(count(sh), 5, -3, 3);
    for (int axis : {0, 1, 2, -1, -3}) {
        int ax = axis < 0 ? axis + 3 : axis;
        for (bool lg : {false, true}) {
            flx_tensor *x = make(ctx, FLX_F64, sh, xv);
            flx_tensor *y = lg ? flx_log_softmax(x, axis, 1.0) : flx_softmax(x, axis, 1.0);
            EXPECT_TRUE(close(values(y), ref_softmax(xv, sh, ax, 1.0, lg), 1e-14, 1e-12))
                << "axis " << axis << (lg ? " log" : "");
        }
    }
    // empty tensors pass through
    flx_tensor *e = flx_zeros(ctx, FLX_F32, 2, Shape{0, 4}.data());
    flx_tensor *ye = flx_softmax(e, 1, 1.0);
    ASSERT_NE(ye, nullptr);
    EXPECT_EQ(flxt::shape_of(ye), (Shape{0, 4}));
    EXPECT_TRUE(values(ye).empty());
}

TEST_F(Softmax, LargeLogitsDoNotOverflowInF32) {
    std::vector<double> xv{1e4, -1e4, 9999.0, 0.0, -1e4, -1e4, 1e4, 1e4};
    Shape sh{2, 4};
    flx_tensor *x = make(ctx, FLX_F32, sh, xv);
    std::vector<double> y = values(flx_softmax(x, 1, 1.0));
    std::vector<double> ly = values(flx_log_softmax(x, 1, 1.0));
    EXPECT_TRUE(close(y, ref_softmax(xv, sh, 1, 1.0, false), 1e-6, 1e-5));
    EXPECT_TRUE(close(ly, ref_softmax(xv, sh, 1, 1.0, true), 1e-3, 1e-6));
    for (double v : y) EXPECT_TRUE(std::isfinite(v));
    for (double v : ly) EXPECT_FALSE(std::isnan(v));
}

TEST_F(Softmax, NegativeInfinityEntriesAndAllInfRows) {
    const double ninf = -std::numeric_limits<double>::infinity();
    std::vector<double> xv{0.0, ninf, 1.0, ninf,   // some -inf: probability 0
                           ninf, ninf, ninf, ninf}; // all -inf: NaN (documented)
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        flx_tensor *x = make(ctx, dt, Shape{2, 4}, xv);
        std::vector<double> y = values(flx_softmax(x, 1, 1.0));
        std::vector<double> ly = values(flx_log_softmax(x, 1, 2.0));
        double e = std::exp(1.0);
        EXPECT_NEAR(y[0], 1 / (1 + e), 1e-6);
        EXPECT_EQ(y[1], 0.0);
        EXPECT_NEAR(y[2], e / (1 + e), 1e-6);
        EXPECT_EQ(y[3], 0.0);
        EXPECT_EQ(ly[1], ninf);
        EXPECT_NEAR(ly[0], -std::log(1 + std::exp(0.5)), 1e-6);
        for (int k = 4; k < 8; k++) {
            EXPECT_TRUE(std::isnan(y[(size_t)k])) << k;
            EXPECT_TRUE(std::isnan(ly[(size_t)k])) << k;
        }
    }
}

// log_softmax and cross-entropy form (x - max) - log sum exp(x - max): the rounding of
// max + log sum at |x| ~ 1e16 would lose the whole result, at 1e8 about 1e-8 of it.
TEST_F(Softmax, LogSoftmaxAndCrossEntropyKeepPrecisionForHugeLogits) {
    const double ln2 = std::log(2.0);
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        flx_tensor *x = make(ctx, dt, Shape{1, 2}, {1e16, 1e16});
        std::vector<double> y = values(flx_log_softmax(x, 1, 1.0));
        ASSERT_EQ(y.size(), 2u);
        double tol = dt == FLX_F32 ? 1e-7 : 1e-15;
        EXPECT_NEAR(y[0], -ln2, tol) << flx_dtype_name(dt);
        EXPECT_NEAR(y[1], -ln2, tol) << flx_dtype_name(dt);
        flx_tensor *L = make(ctx, FLX_I64, Shape{1}, {1});
        std::vector<double> ce = values(flx_cross_entropy(x, L, FLX_REDUCTION_NONE, -100));
        ASSERT_EQ(ce.size(), 1u);
        EXPECT_NEAR(ce[0], ln2, tol) << flx_dtype_name(dt);
    }
    // |x| ~ 1e8 in f64 against a long double reference: relative error below 1e-15
    const int64_t N = 4, C = 9;
    std::vector<double> xv = rand_values((size_t)(N * C), 77, -3, 3);
    for (size_t k = 0; k < xv.size(); k++) xv[k] += k < (size_t)(2 * C) ? 1e8 : -1e8;
    std::vector<double> lab{0, 3, 8, 5};
    flx_tensor *x = make(ctx, FLX_F64, Shape{N, C}, xv);
    std::vector<double> y = values(flx_log_softmax(x, 1, 1.0));
    std::vector<double> ce =
        values(flx_cross_entropy(x, make(ctx, FLX_I64, Shape{N}, lab), FLX_REDUCTION_NONE, -100));
    ASSERT_EQ(y.size(), xv.size());
    ASSERT_EQ(ce.size(), (size_t)N);
    for (int64_t r = 0; r < N; r++) {
        long double m = -INFINITY, s = 0;
        for (int64_t c = 0; c < C; c++) m = std::max(m, (long double)xv[(size_t)(r * C + c)]);
        for (int64_t c = 0; c < C; c++) s += std::exp((long double)xv[(size_t)(r * C + c)] - m);
        for (int64_t c = 0; c < C; c++) {
            long double ref = ((long double)xv[(size_t)(r * C + c)] - m) - std::log(s);
            double got = y[(size_t)(r * C + c)];
            EXPECT_LE(std::fabs((double)((got - ref) / ref)), 1e-15) << "row " << r << " col " << c;
        }
        long double cref = std::log(s) - ((long double)xv[(size_t)(r * C + (int64_t)lab[(size_t)r])] - m);
        EXPECT_LE(std::fabs((double)((ce[(size_t)r] - cref) / cref)), 1e-15) << "row " << r;
    }
}

// Loss and gradient of cross-entropy take one pass over the logits: a plan of both holds the
// fused node, the loss read from it and the gradient aliasing it (2 kernels, no chain).
TEST_F(Softmax, CrossEntropyLossAndGradientArePlannedAsOnePass) {
    const int64_t N = 7, C = 5;
    std::vector<double> xv = rand_values((size_t)(N * C), 91, -2, 2);
    std::vector<double> lab{1, -100, 4, 0, 2, -100, 3};
    for (flx_reduction red : {FLX_REDUCTION_MEAN, FLX_REDUCTION_SUM}) {
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *x = make(ctx, FLX_F64, Shape{N, C}, xv);
        flx_tensor *L = make(ctx, FLX_I64, Shape{N}, lab);
        flx_eval(1, &L);
        flx_set_requires_grad(x, true);
        flx_tensor *loss = nullptr, *g = nullptr;
        {
            flxt::GradOn on;
            loss = flx_cross_entropy(x, L, red, -100);
            ASSERT_EQ(flx_grad_of(1, &loss, nullptr, 1, &x, false, &g), FLX_OK) << flx_last_error();
        }
        flx_tensor *outs[2] = {loss, g};
        flx_plan *plan = flx_plan_compile(2, outs, 0, nullptr, nullptr);
        ASSERT_NE(plan, nullptr) << flx_last_error();
        flx_plan_info info;
        ASSERT_EQ(flx_plan_get_info(plan, &info), FLX_OK);
        EXPECT_EQ(info.n_nodes, 3) << "reduction " << red;
        flx_ctx_stats a, b;
        ASSERT_EQ(flx_ctx_get_stats(ctx, &a), FLX_OK);
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_ctx_get_stats(ctx, &b), FLX_OK);
        EXPECT_EQ(b.kernels - a.kernels, 2u) << "reduction " << red;
        // values: the loss and (softmax - onehot) (/ 4 rows that count for the mean)
        std::vector<double> rows = ref_ce_rows(xv, N, C, lab, -100);
        double total = 0;
        for (double r : rows) total += r;
        double cnt = red == FLX_REDUCTION_MEAN ? 5 : 1;
        EXPECT_NEAR(values(flx_plan_output(plan, 0))[0], total / cnt, 1e-13);
        std::vector<double> gv = values(flx_plan_output(plan, 1));
        std::vector<double> p = ref_softmax(xv, Shape{N, C}, 1, 1.0, false);
        ASSERT_EQ(gv.size(), (size_t)(N * C));
        for (int64_t r = 0; r < N; r++)
            for (int64_t c = 0; c < C; c++) {
                double e = lab[(size_t)r] == -100 ? 0 : (p[(size_t)(r * C + c)] - (c == lab[(size_t)r])) / cnt;
                EXPECT_NEAR(gv[(size_t)(r * C + c)], e, 1e-15) << r << " " << c;
            }
        flx_plan_destroy(plan);
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
}

// In the plan of an MLP training step, cross-entropy adds exactly its one pass: the step's plan
// has 3 nodes (packed pass, loss, gradient alias) and 2 kernels more than the plan of the same
// network's logits and parameter gradients for a gradient of the logits given as an input.
TEST_F(Softmax, MlpStepPlanHasOneCrossEntropyPass) {
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F32, Shape{12, 8}, 3);
    flx_tensor *L = make(ctx, FLX_I64, Shape{12}, {0, 1, 2, 1, 0, 2, 2, 1, -100, 0, 1, 2});
    flx_tensor *p[4] = {flxt::rand_tensor(ctx, FLX_F32, Shape{8, 16}, 4, -0.5, 0.5),
                        flxt::rand_tensor(ctx, FLX_F32, Shape{16}, 5, -0.1, 0.1),
                        flxt::rand_tensor(ctx, FLX_F32, Shape{16, 3}, 6, -0.5, 0.5),
                        flxt::rand_tensor(ctx, FLX_F32, Shape{3}, 7, -0.1, 0.1)};
    flx_eval(1, &x);
    flx_eval(1, &L);
    for (flx_tensor *t : p) ASSERT_EQ(flx_set_requires_grad(t, true), FLX_OK);
    flxt::GradOn on;
    auto logits_of = [&]() {
        flx_tensor *h = flx_relu(flx_add(flx_matmul(x, p[0]), p[1]));
        return flx_add(flx_matmul(h, p[2]), p[3]);
    };
    auto plan_cost = [&](int32_t n_out, flx_tensor **outs, int32_t n_in, flx_tensor **ins,
                         int32_t *nodes, uint64_t *kernels) {
        flx_plan *plan = flx_plan_compile(n_out, outs, n_in, ins, nullptr);
        ASSERT_NE(plan, nullptr) << flx_last_error();
        flx_plan_info info;
        ASSERT_EQ(flx_plan_get_info(plan, &info), FLX_OK);
        *nodes = info.n_nodes;
        flx_ctx_stats a, b;
        ASSERT_EQ(flx_ctx_get_stats(ctx, &a), FLX_OK);
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_ctx_get_stats(ctx, &b), FLX_OK);
        *kernels = b.kernels - a.kernels;
        flx_plan_destroy(plan);
    };
    // the training step: loss and the four gradients
    flx_tensor *step[5] = {flx_cross_entropy(logits_of(), L, FLX_REDUCTION_MEAN, -100)};
    ASSERT_EQ(flx_grad_of(1, step, nullptr, 4, p, false, step + 1), FLX_OK) << flx_last_error();
    // the same network with the logits' gradient as a plan input
    flx_tensor *G = flxt::rand_tensor(ctx, FLX_F32, Shape{12, 3}, 8);
    flx_eval(1, &G);
    flx_tensor *net[5] = {logits_of()};
    ASSERT_EQ(flx_grad_of(1, net, &G, 4, p, false, net + 1), FLX_OK) << flx_last_error();
    int32_t n_step = 0, n_net = 0;
    uint64_t k_step = 0, k_net = 0;
    plan_cost(5, step, 0, nullptr, &n_step, &k_step);
    plan_cost(5, net, 1, &G, &n_net, &k_net);
    EXPECT_EQ(n_step, n_net + 3);
    EXPECT_EQ(k_step, k_net + 2);
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
}

// A cotangent other than a graph constant takes the general backward kernel; a constant other
// than 1 scales the fused gradient. Both agree with the formula.
TEST_F(Softmax, CrossEntropyGradientWithGivenCotangents) {
    const int64_t N = 5, C = 4;
    std::vector<double> xv = rand_values((size_t)(N * C), 93, -2, 2);
    std::vector<double> lab{3, 0, -100, 1, 1};
    std::vector<double> p = ref_softmax(xv, Shape{N, C}, 1, 1.0, false);
    std::vector<double> gr = rand_values((size_t)N, 94, -1, 1);
    for (int kind = 0; kind < 3; kind++) {
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *x = make(ctx, FLX_F64, Shape{N, C}, xv);
        flx_set_requires_grad(x, true);
        flx_tensor *L = make(ctx, FLX_I32, Shape{N}, lab);
        flxt::GradOn on;
        flx_tensor *loss = flx_cross_entropy(x, L, kind == 2 ? FLX_REDUCTION_NONE : FLX_REDUCTION_MEAN, -100);
        flx_tensor *ct = kind == 0 ? flx_scalar(ctx, FLX_F64, 2.5)
                       : kind == 1 ? make(ctx, FLX_F64, Shape{}, {-1.5})
                                   : make(ctx, FLX_F64, Shape{N}, gr);
        flx_tensor *g = nullptr;
        ASSERT_EQ(flx_grad_of(1, &loss, &ct, 1, &x, false, &g), FLX_OK) << flx_last_error();
        std::vector<double> gv = values(g);
        for (int64_t r = 0; r < N; r++)
            for (int64_t c = 0; c < C; c++) {
                double w = kind == 0 ? 2.5 / 4 : kind == 1 ? -1.5 / 4 : gr[(size_t)r];
                double e = lab[(size_t)r] == -100 ? 0 : (p[(size_t)(r * C + c)] - (c == lab[(size_t)r])) * w;
                EXPECT_NEAR(gv[(size_t)(r * C + c)], e, 1e-15) << "kind " << kind << " " << r << " " << c;
            }
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
}

// ---- derivatives -------------------------------------------------------------------------------
TEST_F(Softmax, GradcheckAndJvpCheck) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, Shape{3, 4, 5}, 21, -2, 2);
    for (int axis : {0, 1, 2}) {
        for (bool lg : {false, true}) {
            flxt::Fn fn = [=](const std::vector<flx_tensor *> &in) {
                return lg ? flx_log_softmax(in[0], axis, 0.8) : flx_softmax(in[0], axis, 0.8);
            };
            EXPECT_EQ(flxt::gradcheck(fn, {x}), FLX_OK) << flx_last_error() << " axis " << axis;
            EXPECT_TRUE(flxt::jvp_check(fn, {x})) << "axis " << axis << (lg ? " log" : "");
        }
    }
}

// The dedicated backward ops have rules: gradients of gradients, and JVPs of gradients.
TEST_F(Softmax, SecondOrderThroughBackwardOps) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, Shape{2, 6}, 31, -1.5, 1.5);
    flx_tensor *w = flxt::rand_tensor(ctx, FLX_F64, Shape{2, 6}, 32, -1, 1);
    for (bool lg : {false, true}) {
        // fn(x) = d/dx sum(w * sin(softmax(x))) — goes through SOFTMAX_BWD, and its VJP/JVP
        // rules are checked by differentiating fn again.
        flxt::Fn fn = [=](const std::vector<flx_tensor *> &in) -> flx_tensor * {
            return grad_inside(in[0], [&](flx_tensor *xx) {
                flx_tensor *y = lg ? flx_log_softmax(xx, 1, 1.3) : flx_softmax(xx, 1, 1.3);
                return flx_sum_all(flx_mul(w, flx_sin(y)));
            });
        };
        EXPECT_EQ(flxt::gradcheck(fn, {x}, 1e-6, 1e-6, 1e-5), FLX_OK) << flx_last_error();
        EXPECT_TRUE(flxt::jvp_check(fn, {x}, 1e-6, 1e-6, 1e-5)) << (lg ? "log" : "");
        // and a third order: the gradient of <fn(x), w>
        flxt::Fn fn3 = [=](const std::vector<flx_tensor *> &in) -> flx_tensor * {
            return grad_inside(in[0], [&](flx_tensor *xx) {
                return flx_sum_all(flx_mul(fn({xx}), w));
            });
        };
        EXPECT_EQ(flxt::gradcheck(fn3, {x}, 1e-5, 1e-5, 1e-4), FLX_OK) << flx_last_error();
    }
}

TEST_F(Softmax, CrossEntropyValues) {
    const int64_t N = 6, C = 5;
    std::vector<double> xv = rand_values((size_t)(N * C), 41, -3, 3);
    std::vector<double> lab{0, 4, -100, 2, 3, -100};
    std::vector<double> rows = ref_ce_rows(xv, N, C, lab, -100);
    double sum = 0;
    for (double r : rows) sum += r;
    for (flx_dtype ldt : {FLX_I32, FLX_I64}) {
        for (flx_dtype dt : {FLX_F32, FLX_F64}) {
            double tol = dt == FLX_F32 ? 1e-5 : 1e-13;
            flx_tensor *x = make(ctx, dt, Shape{N, C}, xv);
            std::vector<double> xr = values(x);
            std::vector<double> rr = ref_ce_rows(xr, N, C, lab, -100);
            flx_tensor *L = make(ctx, ldt, Shape{N}, lab);
            flx_tensor *none = flx_cross_entropy(x, L, FLX_REDUCTION_NONE, -100);
            ASSERT_NE(none, nullptr) << flx_last_error();
            EXPECT_EQ(flxt::shape_of(none), Shape{N});
            EXPECT_TRUE(close(values(none), rr, tol, tol));
            double s = 0;
            for (double r : rr) s += r;
            EXPECT_TRUE(close(values(flx_cross_entropy(x, L, FLX_REDUCTION_SUM, -100)), {s}, tol, tol));
            EXPECT_TRUE(close(values(flx_cross_entropy(x, L, FLX_REDUCTION_MEAN, -100)), {s / 4}, tol, tol));
        }
    }
    (void)sum;
    // an ignore_index inside [0, C) ignores that class's rows
    flx_tensor *x = make(ctx, FLX_F64, Shape{N, C}, xv);
    std::vector<double> lab2{0, 4, 1, 2, 0, 1};
    std::vector<double> r2 = ref_ce_rows(xv, N, C, lab2, 0);
    double s2 = 0;
    for (double r : r2) s2 += r;
    flx_tensor *L2 = make(ctx, FLX_I64, Shape{N}, lab2);
    EXPECT_TRUE(close(values(flx_cross_entropy(x, L2, FLX_REDUCTION_MEAN, 0)), {s2 / 4}, 1e-13, 1e-13));
    // every row ignored: mean is 0/0 = NaN, sum 0
    flx_tensor *L3 = make(ctx, FLX_I64, Shape{N}, std::vector<double>((size_t)N, -1));
    EXPECT_TRUE(std::isnan(values(flx_cross_entropy(x, L3, FLX_REDUCTION_MEAN, -1))[0]));
    EXPECT_EQ(values(flx_cross_entropy(x, L3, FLX_REDUCTION_SUM, -1))[0], 0.0);
}

TEST_F(Softmax, CrossEntropyLargeLogitsAndExtraAxes) {
    std::vector<double> xv{1e4, -1e4, 0, 5e3, 1e4, -1e4};
    flx_tensor *x = make(ctx, FLX_F32, Shape{2, 3}, xv);
    flx_tensor *L = make(ctx, FLX_I32, Shape{2}, {1, 0});
    std::vector<double> r = values(flx_cross_entropy(x, L, FLX_REDUCTION_NONE, -100));
    EXPECT_TRUE(close(r, {2e4, 5e3}, 1e-2, 1e-6));
    // (N, C, d) logits with (N, d) labels: class axis 1
    Shape sh{2, 3, 4};
    std::vector<double> v3 = rand_values(count(sh), 51, -2, 2);
    std::vector<double> l3{0, 1, 2, -100, 2, 2, 1, 0};
    flx_tensor *x3 = make(ctx, FLX_F64, sh, v3);
    flx_tensor *lab3 = make(ctx, FLX_I64, Shape{2, 4}, l3);
    flx_tensor *r3 = flx_cross_entropy(x3, lab3, FLX_REDUCTION_NONE, -100);
    ASSERT_NE(r3, nullptr) << flx_last_error();
    EXPECT_EQ(flxt::shape_of(r3), (Shape{2, 4}));
    std::vector<double> rv = values(r3);
    for (int64_t nn = 0; nn < 2; nn++)
        for (int64_t d = 0; d < 4; d++) {
            std::vector<double> row(3);
            for (int64_t c = 0; c < 3; c++) row[(size_t)c] = v3[(size_t)((nn * 3 + c) * 4 + d)];
            double ref = ref_ce_rows(row, 1, 3, {l3[(size_t)(nn * 4 + d)]}, -100)[0];
            EXPECT_NEAR(rv[(size_t)(nn * 4 + d)], ref, 1e-13);
        }
}

TEST_F(Softmax, CrossEntropyLabelOutOfRangeIsReported) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, Shape{2, 3}, 3);
    flx_tensor *L = make(ctx, FLX_I64, Shape{2}, {1, 7});
    flx_tensor *r = flx_cross_entropy(x, L, FLX_REDUCTION_NONE, -100);
    ASSERT_NE(r, nullptr);
    std::vector<double> buf(2);
    EXPECT_EQ(flx_to_host(r, buf.data(), sizeof(double) * 2), FLX_ERR_INVALID_ARGUMENT);
    flx_clear_error();
}

TEST_F(Softmax, CrossEntropyGradcheckJvpAndSecondOrder) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, Shape{5, 4}, 61, -2, 2);
    flx_tensor *L = make(ctx, FLX_I64, Shape{5}, {3, -100, 0, 1, 3});
    for (flx_reduction red : {FLX_REDUCTION_MEAN, FLX_REDUCTION_SUM, FLX_REDUCTION_NONE}) {
        flxt::Fn fn = [=](const std::vector<flx_tensor *> &in) {
            return flx_cross_entropy(in[0], L, red, -100);
        };
        EXPECT_EQ(flxt::gradcheck(fn, {x}), FLX_OK) << flx_last_error() << " red " << red;
        EXPECT_TRUE(flxt::jvp_check(fn, {x})) << "red " << red;
        // second order: differentiate the gradient (CROSS_ENTROPY_BWD's rules)
        flxt::Fn g = [=](const std::vector<flx_tensor *> &in) -> flx_tensor * {
            return grad_inside(in[0], [&](flx_tensor *xx) { return flx_sum_all(flx_square(fn({xx}))); });
        };
        EXPECT_EQ(flxt::gradcheck(g, {x}, 1e-6, 1e-6, 1e-5), FLX_OK) << flx_last_error();
        EXPECT_TRUE(flxt::jvp_check(g, {x}, 1e-6, 1e-6, 1e-5)) << "second order, red " << red;
    }
    // the gradient of the mean matches (softmax - onehot) / count by formula
    std::vector<double> xv = values(x);
    flx_tensor *xl = make(ctx, FLX_F64, Shape{5, 4}, xv);
    flx_set_requires_grad(xl, true);
    flx_tensor *loss = flx_cross_entropy(xl, L, FLX_REDUCTION_MEAN, -100);
    ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    std::vector<double> gv = values(flx_grad(xl));
    std::vector<double> p = ref_softmax(xv, Shape{5, 4}, 1, 1.0, false);
    std::vector<double> lab{3, -100, 0, 1, 3};
    for (int r = 0; r < 5; r++)
        for (int c = 0; c < 4; c++) {
            double e = lab[(size_t)r] == -100 ? 0 : (p[(size_t)(r * 4 + c)] - (c == lab[(size_t)r])) / 4;
            EXPECT_NEAR(gv[(size_t)(r * 4 + c)], e, 1e-14);
        }
}

TEST_F(Softmax, BadInputs) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F32, Shape{2, 3}, 1);
    EXPECT_TRUE(flxt::fails_with(flx_softmax(nullptr, 0, 1.0), FLX_ERR_INVALID_ARGUMENT, nullptr));
    EXPECT_TRUE(flxt::fails_with(flx_softmax(x, 2, 1.0), FLX_ERR_INVALID_ARGUMENT, "flx_softmax"));
    EXPECT_TRUE(flxt::fails_with(flx_log_softmax(x, -3, 1.0), FLX_ERR_INVALID_ARGUMENT, "flx_log_softmax"));
    EXPECT_TRUE(flxt::fails_with(flx_softmax(x, 1, 0.0), FLX_ERR_INVALID_ARGUMENT, "temperature"));
    EXPECT_TRUE(flxt::fails_with(flx_softmax(x, 1, -1.0), FLX_ERR_INVALID_ARGUMENT, "temperature"));
    EXPECT_TRUE(flxt::fails_with(flx_softmax(x, 1, INFINITY), FLX_ERR_INVALID_ARGUMENT, "temperature"));
    EXPECT_TRUE(flxt::fails_with(flx_softmax(x, 1, NAN), FLX_ERR_INVALID_ARGUMENT, "temperature"));
    EXPECT_TRUE(flxt::fails_with(flx_softmax(flx_scalar(ctx, FLX_F32, 1), 0, 1.0),
                                 FLX_ERR_INVALID_ARGUMENT, "0-d"));
    flx_tensor *xi = make(ctx, FLX_I32, Shape{2}, {1, 2});
    EXPECT_TRUE(flxt::fails_with(flx_softmax(xi, 0, 1.0), FLX_ERR_DTYPE, "flx_softmax"));
    // cross-entropy
    flx_tensor *L = make(ctx, FLX_I64, Shape{2}, {0, 1});
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(nullptr, L, FLX_REDUCTION_MEAN, -100),
                                 FLX_ERR_INVALID_ARGUMENT, nullptr));
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(x, nullptr, FLX_REDUCTION_MEAN, -100),
                                 FLX_ERR_INVALID_ARGUMENT, nullptr));
    flx_tensor *Lf = make(ctx, FLX_F32, Shape{2}, {0, 1});
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(x, Lf, FLX_REDUCTION_MEAN, -100), FLX_ERR_DTYPE, "labels"));
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(xi, L, FLX_REDUCTION_MEAN, -100), FLX_ERR_DTYPE, nullptr));
    flx_tensor *L3 = make(ctx, FLX_I64, Shape{3}, {0, 1, 2});
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(x, L3, FLX_REDUCTION_MEAN, -100), FLX_ERR_SHAPE, "(3)"));
    flx_tensor *x1 = flxt::rand_tensor(ctx, FLX_F32, Shape{2}, 1);
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(x1, L, FLX_REDUCTION_MEAN, -100), FLX_ERR_SHAPE, nullptr));
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(x, L, (flx_reduction)7, -100), FLX_ERR_INVALID_ARGUMENT,
                                 "reduction"));
    flx_tensor *x0 = flx_zeros(ctx, FLX_F32, 2, Shape{2, 0}.data());
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(x0, L, FLX_REDUCTION_MEAN, -100), FLX_ERR_SHAPE, "classes"));
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    flx_scope_begin();
    flx_tensor *Lo = make(other, FLX_I64, Shape{2}, {0, 1});
    EXPECT_TRUE(flxt::fails_with(flx_cross_entropy(x, Lo, FLX_REDUCTION_MEAN, -100), FLX_ERR_DEVICE, nullptr));
    flx_scope_end(0, nullptr);
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK);
}

// ---- GPU against the CPU reference --------------------------------------------------------------
using Build = std::function<flx_tensor *(flx_ctx *)>;

::testing::AssertionResult same(flx_ctx *g, flx_ctx *c, const Build &b, double atol, double rtol) {
    ::testing::AssertionResult r = ::testing::AssertionSuccess();
    flx_scope_begin();
    flx_tensor *tc = b(c);
    flx_tensor *tg = tc ? b(g) : nullptr;
    if (!tc || !tg) {
        r = ::testing::AssertionFailure() << "build failed: " << flx_last_error();
    } else if (flxt::shape_of(tg) != flxt::shape_of(tc)) {
        r = ::testing::AssertionFailure() << "shapes differ";
    } else {
        r = close(values(tg), values(tc), atol, rtol);
    }
    flx_clear_error();
    flx_scope_end(0, nullptr);
    return r;
}

using SoftmaxCuda = CudaCpuTest;

TEST_F(SoftmaxCuda, MatchesCpuAtManyShapesAxesAndModes) {
    // Row lengths at the edges of every path (elements per thread at most 16 f32 / 8 f64, half
    // for the modes that read v): lane groups (<= 32), a warp (<= 32 V), a block of 64..1024
    // threads (<= 1024 V), clusters of 2..16 blocks with partial and uneven slices, the shared
    // memory stash (2^20) and, for f64, the streamed remainder past it; strided axes with one
    // thread per column and split over the GPU (few columns), and empty tensors.
    const std::vector<Shape> shapes{{7, 1},      {5, 2},       {9, 31},       {9, 32},      {3, 33},
                                    {4, 129},    {4, 257},     {4, 513},      {4, 1023},    {3, 1025},
                                    {3, 2049},   {3, 4097},    {2, 8192},     {2, 8193},    {2, 16384},
                                    {2, 16385},  {2, 32768},   {2, 50001},    {2, 65537},   {1, 1 << 20},
                                    {1, 4500001}, {40, 17},    {3, 5, 7},     {2, 3000, 3}, {0, 5},
                                    {6, 4096},   {2, 20000},   {5000, 70},    {64, 3000},   {1 << 20, 8},
                                    {20, 200000}};
    for (const Shape &sh : shapes) {
        std::vector<double> xv = rand_values(count(sh), 7 + count(sh), -8, 8);
        std::vector<double> vv = rand_values(count(sh), 8 + count(sh), -1, 1);
        for (flx_dtype dt : {FLX_F32, FLX_F64}) {
            for (int axis = 0; axis < (int)sh.size(); axis++) {
                // big tensors: only the axis they are here for (the strided ones: axis 0)
                const bool strided_big = sh == Shape{5000, 70} || sh == Shape{64, 3000} ||
                                         sh == Shape{1 << 20, 8} || sh == Shape{20, 200000};
                if (count(sh) > 70000 && (strided_big ? axis != 0 : axis != (int)sh.size() - 1)) continue;
                double at = dt == FLX_F32 ? 2e-6 : 1e-13, rt = dt == FLX_F32 ? 2e-5 : 1e-11;
                for (int mode = 0; mode < 5; mode++) {
                    Build b = [&](flx_ctx *c) -> flx_tensor * {
                        flx_tensor *x = make(c, dt, sh, xv);
                        flx_tensor *v = make(c, dt, sh, vv);
                        flx_tensor *y = flx_softmax(x, axis, 0.9);
                        flx_tensor *ly = flx_log_softmax(x, axis, 0.9);
                        flx_set_requires_grad(x, true);
                        switch (mode) {
                        case 0: return y;
                        case 1: return ly;
                        case 2: { // softmax VJP
                            flx_tensor *yy = flx_softmax(x, axis, 0.9), *g = nullptr;
                            flx_grad_of(1, &yy, &v, 1, &x, false, &g);
                            return g;
                        }
                        case 3: { // log_softmax VJP
                            flx_tensor *yy = flx_log_softmax(x, axis, 0.9), *g = nullptr;
                            flx_grad_of(1, &yy, &v, 1, &x, false, &g);
                            return g;
                        }
                        default: { // log_softmax JVP
                            flx_tensor *yy = flx_log_softmax(x, axis, 0.9), *t = nullptr;
                            flx_jvp(1, &x, &v, 1, &yy, &t);
                            return t;
                        }
                        }
                    };
                    EXPECT_TRUE(same(gpu, cpu, b, mode == 1 ? 10 * at : at, rt))
                        << "shape (" << sh[0] << ", " << (sh.size() > 1 ? sh[1] : 0) << ", ...) axis "
                        << axis << " " << flx_dtype_name(dt) << " mode " << mode;
                }
            }
        }
    }
}

TEST_F(SoftmaxCuda, ExtremesAndCrossEntropyMatchCpu) {
    const double ninf = -std::numeric_limits<double>::infinity();
    for (int64_t n : {3, 40, 2000, 70000}) {
        std::vector<double> xv = rand_values((size_t)(2 * n), 3, -1e4, 1e4);
        for (int64_t j = 0; j < n; j += 3) xv[(size_t)j] = ninf;
        for (int64_t j = 0; j < n; j++) xv[(size_t)(n + j)] = ninf;  // row 2: all -inf -> NaN
        for (flx_dtype dt : {FLX_F32, FLX_F64}) {
            EXPECT_TRUE(same(gpu, cpu, [&](flx_ctx *c) { return flx_softmax(make(c, dt, {2, n}, xv), 1, 1.0); },
                             1e-6, 1e-5)) << n;
            EXPECT_TRUE(same(gpu, cpu, [&](flx_ctx *c) { return flx_log_softmax(make(c, dt, {2, n}, xv), 1, 1.0); },
                             1e-2, 1e-5)) << n;
        }
    }
    for (int64_t C : {1, 5, 32, 1000, 1025, 8192, 8193, 16385, 40000, 1 << 20}) {
        int64_t N = C > 5000 ? 3 : 37;
        std::vector<double> xv = rand_values((size_t)(N * C), 9, -5, 5);
        std::vector<double> lab((size_t)N);
        for (int64_t r = 0; r < N; r++) lab[(size_t)r] = r % 7 == 3 ? -100 : (double)((r * 13) % C);
        for (flx_dtype dt : {FLX_F32, FLX_F64}) {
            for (flx_reduction red : {FLX_REDUCTION_MEAN, FLX_REDUCTION_SUM, FLX_REDUCTION_NONE}) {
                Build fwd = [&](flx_ctx *c) {
                    return flx_cross_entropy(make(c, dt, {N, C}, xv), make(c, FLX_I32, {N}, lab), red, -100);
                };
                Build bwd = [&](flx_ctx *c) -> flx_tensor * {
                    flx_tensor *x = make(c, dt, {N, C}, xv), *g = nullptr;
                    flx_set_requires_grad(x, true);
                    flx_tensor *l = flx_sum_all(flx_cross_entropy(x, make(c, FLX_I64, {N}, lab), red, -100));
                    flx_grad_of(1, &l, nullptr, 1, &x, false, &g);
                    return g;
                };
                // a cotangent the graph does not fix: the separate backward kernel
                Build bwd_given = [&](flx_ctx *c) -> flx_tensor * {
                    flx_tensor *x = make(c, dt, {N, C}, xv), *g = nullptr;
                    flx_set_requires_grad(x, true);
                    flx_tensor *l = flx_cross_entropy(x, make(c, FLX_I32, {N}, lab), red, -100);
                    flx_tensor *ct = red == FLX_REDUCTION_NONE ? make(c, dt, {N}, rand_values((size_t)N, 5, -1, 1))
                                                               : make(c, dt, Shape{}, {0.75});
                    flx_grad_of(1, &l, &ct, 1, &x, false, &g);
                    return g;
                };
                // the loss and gradient from the one fused pass, read together
                Build both = [&](flx_ctx *c) -> flx_tensor * {
                    flx_tensor *x = make(c, dt, {N, C}, xv), *g = nullptr;
                    flx_set_requires_grad(x, true);
                    flx_tensor *l = flx_sum_all(flx_cross_entropy(x, make(c, FLX_I64, {N}, lab), red, -100));
                    flx_grad_of(1, &l, nullptr, 1, &x, false, &g);
                    int64_t flat[1] = {-1};
                    flx_tensor *parts[2] = {flx_reshape(l, 1, flat), flx_reshape(g, 1, flat)};
                    return flx_concat(2, parts, 0);
                };
                double tol = dt == FLX_F32 ? 1e-5 : 1e-12;
                EXPECT_TRUE(same(gpu, cpu, fwd, tol, tol)) << "C " << C;
                EXPECT_TRUE(same(gpu, cpu, bwd, tol, tol)) << "C " << C;
                EXPECT_TRUE(same(gpu, cpu, bwd_given, tol, tol)) << "C " << C;
                EXPECT_TRUE(same(gpu, cpu, both, tol, tol)) << "C " << C;
            }
        }
    }
    // no rows: the count is 0, the mean 0/0 = NaN, the sum 0
    for (flx_reduction red : {FLX_REDUCTION_MEAN, FLX_REDUCTION_SUM}) {
        flx_scope_begin();
        flx_tensor *l = flx_cross_entropy(make(gpu, FLX_F32, Shape{0, 4}, {}), make(gpu, FLX_I64, Shape{0}, {}), red, -100);
        std::vector<double> v = values(l);
        ASSERT_EQ(v.size(), 1u);
        if (red == FLX_REDUCTION_MEAN) EXPECT_TRUE(std::isnan(v[0]));
        else EXPECT_EQ(v[0], 0.0);
        flx_scope_end(0, nullptr);
    }
    // an out-of-range label is reported by the fused kernel too
    {
        flx_scope_begin();
        flx_tensor *x = make(gpu, FLX_F64, {2, 3}, rand_values(6, 3));
        flx_tensor *l = flx_cross_entropy(x, make(gpu, FLX_I64, {2}, {1, 7}), FLX_REDUCTION_NONE, -100);
        std::vector<double> buf(2);
        EXPECT_EQ(flx_to_host(l, buf.data(), sizeof(double) * 2), FLX_ERR_INVALID_ARGUMENT);
        flx_clear_error();
        flx_scope_end(0, nullptr);
    }
    // the backward of the loss is device work only: no host copies or waits
    flx_scope_begin();
    flx_tensor *x = make(gpu, FLX_F32, {64, 100}, rand_values(6400, 4));
    flx_set_requires_grad(x, true);
    flx_tensor *lab = make(gpu, FLX_I64, {64}, std::vector<double>(64, 3));
    flx_eval(1, &lab);
    flx_tensor *loss = flx_cross_entropy(flx_log_softmax(flx_softmax(x, 1, 1.0), 1, 1.0), lab,
                                         FLX_REDUCTION_MEAN, -100);
    flx_ctx_synchronize(gpu);
    flx_ctx_reset_stats(gpu);
    ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    flx_ctx_stats st;
    flx_ctx_get_stats(gpu, &st);
    EXPECT_EQ(st.h2d_copies, 0u);
    EXPECT_EQ(st.d2h_copies, 0u);
    EXPECT_EQ(st.syncs, 0u);
}

}  // namespace
