// test_higher_order.cc — Hessians of known functions against closed forms (x^T A x, log-sum-exp,
// logistic loss, ||Ax - b||^2), HVP (both modes) equal to Hessian times u, Jacobians by columns
// and by rows, third derivatives of a scalar polynomial, bad inputs, and the GPU against the CPU.
#include "testing.h"

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

using namespace flxt;

namespace {

class HigherOrder : public flxt::CpuTest {};

// Host matrix helpers (row-major).
using Mat = std::vector<double>;

// ---- functions as flx_fn callbacks ---------------------------------------------------------------
struct Data {
    flx_tensor *A = nullptr, *b = nullptr, *X = nullptr, *y = nullptr;
};

// x^T A x
flx_tensor *quad(int32_t, flx_tensor *const *in, void *u) {
    Data *d = (Data *)u;
    return flx_dot(in[0], flx_matmul(d->A, in[0]));
}
// log sum exp(x)
flx_tensor *lse(int32_t, flx_tensor *const *in, void *) { return flx_logsumexp(in[0], 0, nullptr, false); }
// sum softplus(-y * (X w)) (logistic loss, labels +-1)
flx_tensor *logistic(int32_t, flx_tensor *const *in, void *u) {
    Data *d = (Data *)u;
    return flx_sum_all(flx_softplus(flx_neg(flx_mul(d->y, flx_matmul(d->X, in[0])))));
}
// ||A x - b||^2
flx_tensor *least_squares(int32_t, flx_tensor *const *in, void *u) {
    Data *d = (Data *)u;
    return flx_sum_all(flx_square(flx_sub(flx_matmul(d->A, in[0]), d->b)));
}
// p(x) = sum(x^4 + 2 x^3 - x)
flx_tensor *poly(int32_t, flx_tensor *const *in, void *) {
    flx_tensor *x = in[0];
    return flx_sum_all(flx_sub(flx_add(flx_pow_scalar(x, 4), flx_mul_scalar(flx_pow_scalar(x, 3), 2)), x));
}
// two inputs: sum(x^2 * y) + sum(sin(y))
flx_tensor *two(int32_t, flx_tensor *const *in, void *) {
    return flx_add(flx_sum_all(flx_mul(flx_square(in[0]), in[1])), flx_sum_all(flx_sin(in[1])));
}
// softmax (vector -> vector)
flx_tensor *smax(int32_t, flx_tensor *const *in, void *) { return flx_softmax(in[0], 0, 1.0); }
// (3) -> (2, 2): a matrix-valued function
flx_tensor *matfn(int32_t, flx_tensor *const *in, void *) {
    flx_tensor *x = in[0];
    flx_tensor *o = flx_outer(flx_slice(x, 0, 0, 2, 1), flx_slice(x, 0, 1, 3, 1));
    return flx_mul(o, flx_sin(flx_sum_all(x)));
}

flx_tensor *hess(flx_fn f, void *u, flx_tensor *x) {
    flx_tensor *h = nullptr;
    EXPECT_EQ(flx_hessian(f, u, x, &h), FLX_OK) << flx_last_error();
    return h;
}

TEST_F(HigherOrder, HessianOfQuadraticFormIsAPlusAT) {
    const int n = 4;
    Mat A = rand_values(n * n, 3);
    Data d;
    d.A = make(ctx, FLX_F64, {n, n}, A);
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {n}, 4);
    flx_tensor *H = hess(quad, &d, x);
    ASSERT_NE(H, nullptr);
    EXPECT_EQ(flxt::shape_of(H), (Shape{n, n}));
    Mat e(n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) e[i * n + j] = A[i * n + j] + A[j * n + i];
    EXPECT_TRUE(close(values(H), e, 1e-13, 1e-13));
}

TEST_F(HigherOrder, HessianOfLogSumExpIsDiagPMinusPPT) {
    const int n = 5;
    Mat xv = rand_values(n, 5, -2, 2);
    flx_tensor *x = make(ctx, FLX_F64, {n}, xv);
    flx_tensor *H = hess(lse, nullptr, x);
    double m = 0;
    for (double v : xv) m += std::exp(v);
    Mat e(n * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double pi = std::exp(xv[i]) / m, pj = std::exp(xv[j]) / m;
            e[i * n + j] = (i == j ? pi : 0) - pi * pj;
        }
    EXPECT_TRUE(close(values(H), e, 1e-14, 1e-12));
    // the Jacobian of softmax is the same matrix (rows or columns)
    flx_tensor *J = nullptr;
    ASSERT_EQ(flx_jacobian(smax, nullptr, x, &J), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(J), e, 1e-14, 1e-12));
}

TEST_F(HigherOrder, HessianOfLogisticLossIsXTDX) {
    const int N = 7, D = 3;
    Mat X = rand_values(N * D, 7), w = rand_values(D, 8);
    Mat y(N);
    for (int i = 0; i < N; i++) y[i] = i % 3 ? 1.0 : -1.0;
    Data d;
    d.X = make(ctx, FLX_F64, {N, D}, X);
    d.y = make(ctx, FLX_F64, {N}, y);
    flx_tensor *H = hess(logistic, &d, make(ctx, FLX_F64, {D}, w));
    Mat e(D * D, 0.0);
    for (int i = 0; i < N; i++) {
        double z = 0;
        for (int k = 0; k < D; k++) z += X[i * D + k] * w[k];
        double s = 1 / (1 + std::exp(y[i] * z)); // sigma(-y z)
        for (int a = 0; a < D; a++)
            for (int b = 0; b < D; b++) e[a * D + b] += s * (1 - s) * X[i * D + a] * X[i * D + b];
    }
    EXPECT_TRUE(close(values(H), e, 1e-14, 1e-12));
}

TEST_F(HigherOrder, HessianOfLeastSquaresIsTwoATA) {
    const int M = 6, n = 3;
    Mat A = rand_values(M * n, 9), b = rand_values(M, 10);
    Data d;
    d.A = make(ctx, FLX_F64, {M, n}, A);
    d.b = make(ctx, FLX_F64, {M}, b);
    flx_tensor *H = hess(least_squares, &d, flxt::rand_tensor(ctx, FLX_F64, {n}, 11));
    Mat e(n * n, 0.0);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            for (int k = 0; k < M; k++) e[i * n + j] += 2 * A[k * n + i] * A[k * n + j];
    EXPECT_TRUE(close(values(H), e, 1e-13, 1e-13));
}

// H u from flx_hvp (both modes, with and without create_graph) equals the Hessian times u.
TEST_F(HigherOrder, HvpEqualsHessianTimesVector) {
    const int N = 7, D = 3;
    Data d;
    d.X = flxt::rand_tensor(ctx, FLX_F64, {N, D}, 12);
    d.y = make(ctx, FLX_F64, {N}, {1, -1, 1, 1, -1, -1, 1});
    flx_tensor *w = flxt::rand_tensor(ctx, FLX_F64, {D}, 13);
    Mat u = rand_values(D, 14);
    flx_tensor *ut = make(ctx, FLX_F64, {D}, u);
    Mat H = values(hess(logistic, &d, w));
    Mat e(D, 0.0);
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) e[i] += H[i * D + j] * u[j];
    for (flx_hvp_mode mode : {FLX_HVP_FORWARD_OVER_REVERSE, FLX_HVP_REVERSE_OVER_REVERSE}) {
        for (bool cg : {false, true}) {
            flx_tensor *hv = nullptr;
            ASSERT_EQ(flx_hvp(logistic, &d, 1, &w, &ut, mode, cg, &hv), FLX_OK) << flx_last_error();
            EXPECT_TRUE(close(values(hv), e, 1e-14, 1e-12)) << "mode " << mode << " cg " << cg;
        }
    }
    // two inputs: f = sum(x^2 y) + sum(sin y); H = [[2 diag(y), 2 diag(x)], [2 diag(x), -diag(sin y)]]
    Mat xv = rand_values(3, 15), yv = rand_values(3, 16), ux = rand_values(3, 17), uy = rand_values(3, 18);
    flx_tensor *in[2] = {make(ctx, FLX_F64, {3}, xv), make(ctx, FLX_F64, {3}, yv)};
    flx_tensor *us[2] = {make(ctx, FLX_F64, {3}, ux), make(ctx, FLX_F64, {3}, uy)};
    for (flx_hvp_mode mode : {FLX_HVP_FORWARD_OVER_REVERSE, FLX_HVP_REVERSE_OVER_REVERSE}) {
        flx_tensor *hv[2] = {nullptr, nullptr};
        ASSERT_EQ(flx_hvp(two, nullptr, 2, in, us, mode, false, hv), FLX_OK) << flx_last_error();
        Mat ex(3), ey(3);
        for (int i = 0; i < 3; i++) {
            ex[i] = 2 * yv[i] * ux[i] + 2 * xv[i] * uy[i];
            ey[i] = 2 * xv[i] * ux[i] - std::sin(yv[i]) * uy[i];
        }
        EXPECT_TRUE(close(values(hv[0]), ex, 1e-14, 1e-12));
        EXPECT_TRUE(close(values(hv[1]), ey, 1e-14, 1e-12));
        // a NULL direction is zero
        flx_tensor *u1[2] = {us[0], nullptr};
        ASSERT_EQ(flx_hvp(two, nullptr, 2, in, u1, mode, false, hv), FLX_OK) << flx_last_error();
        for (int i = 0; i < 3; i++) ex[i] = 2 * yv[i] * ux[i];
        EXPECT_TRUE(close(values(hv[0]), ex, 1e-14, 1e-12));
    }
}

// Third derivative of p(x) = x^4 + 2x^3 - x: p''' = 24 x + 12, by three nested gradients and by
// the gradient of an HVP (create_graph).
TEST_F(HigherOrder, ThirdDerivativeOfPolynomial) {
    Mat xv{-1.5, 0.3, 2.0};
    flx_tensor *x = make(ctx, FLX_F64, {3}, xv);
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    flx_tensor *p = poly(1, &x, nullptr);
    flx_tensor *g1 = nullptr, *g2 = nullptr, *g3 = nullptr;
    ASSERT_EQ(flx_grad_of(1, &p, nullptr, 1, &x, true, &g1), FLX_OK) << flx_last_error();
    flx_tensor *s1 = flx_sum_all(g1);
    ASSERT_EQ(flx_grad_of(1, &s1, nullptr, 1, &x, true, &g2), FLX_OK) << flx_last_error();
    flx_tensor *s2 = flx_sum_all(g2);
    ASSERT_EQ(flx_grad_of(1, &s2, nullptr, 1, &x, true, &g3), FLX_OK) << flx_last_error();
    Mat e1(3), e2(3), e3(3);
    for (int i = 0; i < 3; i++) {
        double t = xv[i];
        e1[i] = 4 * t * t * t + 6 * t * t - 1;
        e2[i] = 12 * t * t + 12 * t;
        e3[i] = 24 * t + 12;
    }
    EXPECT_TRUE(close(values(g1), e1, 1e-13, 1e-13));
    EXPECT_TRUE(close(values(g2), e2, 1e-13, 1e-13));
    EXPECT_TRUE(close(values(g3), e3, 1e-13, 1e-13));
    // d/dx <H(x) u, 1> with u = 1: the HVP keeps its graph (create_graph), both modes
    flx_tensor *ones = flx_ones(ctx, FLX_F64, 1, Shape{3}.data());
    for (flx_hvp_mode mode : {FLX_HVP_FORWARD_OVER_REVERSE, FLX_HVP_REVERSE_OVER_REVERSE}) {
        flx_tensor *hv = nullptr, *g = nullptr;
        ASSERT_EQ(flx_hvp(poly, nullptr, 1, &x, &ones, mode, true, &hv), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(hv), e2, 1e-13, 1e-13));
        flx_tensor *s = flx_sum_all(hv);
        ASSERT_EQ(flx_grad_of(1, &s, nullptr, 1, &x, false, &g), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(g), e3, 1e-13, 1e-13)) << "mode " << mode;
    }
    // a single-element polynomial through flx_hessian: 1x1 Hessian = p''
    flx_tensor *x1 = make(ctx, FLX_F64, {1}, {0.7});
    EXPECT_TRUE(close(values(hess(poly, nullptr, x1)), {12 * 0.49 + 12 * 0.7}, 1e-13, 1e-13));
}

TEST_F(HigherOrder, JacobianByColumnsAndByRows) {
    // (3) -> (2, 2): 3 inputs < 4 outputs: columns by JVPs
    Mat xv = rand_values(3, 19);
    flx_tensor *x = make(ctx, FLX_F64, {3}, xv);
    flx_tensor *J = nullptr;
    ASSERT_EQ(flx_jacobian(matfn, nullptr, x, &J), FLX_OK) << flx_last_error();
    EXPECT_EQ(flxt::shape_of(J), (Shape{2, 2, 3}));
    double S = xv[0] + xv[1] + xv[2], sn = std::sin(S), cs = std::cos(S);
    Mat e(12);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            for (int k = 0; k < 3; k++) {
                double o = xv[i] * xv[1 + j];
                double d = ((k == i) ? xv[1 + j] : 0) + ((k == 1 + j) ? xv[i] : 0);
                e[(i * 2 + j) * 3 + k] = d * sn + o * cs;
            }
    EXPECT_TRUE(close(values(J), e, 1e-14, 1e-12));
    // (4) -> 0-d: one VJP row; shape () + (4) = (4)
    flx_tensor *x4 = flxt::rand_tensor(ctx, FLX_F64, {4}, 20);
    flx_tensor *J2 = nullptr;
    ASSERT_EQ(flx_jacobian(poly, nullptr, x4, &J2), FLX_OK) << flx_last_error();
    EXPECT_EQ(flxt::shape_of(J2), (Shape{4}));
    Mat x4v = values(x4), e2(4);
    for (int i = 0; i < 4; i++) e2[i] = 4 * std::pow(x4v[i], 3) + 6 * x4v[i] * x4v[i] - 1;
    EXPECT_TRUE(close(values(J2), e2, 1e-13, 1e-13));
    // a function that ignores x has a zero Jacobian
    flx_tensor *J3 = nullptr;
    auto cst = [](int32_t, flx_tensor *const *in, void *) -> flx_tensor * {
        return flx_ones(flx_ctx_of(in[0]), FLX_F64, 1, Shape{2}.data());
    };
    ASSERT_EQ(flx_jacobian(cst, nullptr, x, &J3), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(J3), Mat(6, 0.0)));
}

TEST_F(HigherOrder, BadInputs) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {3}, 1);
    flx_tensor *u = flxt::rand_tensor(ctx, FLX_F64, {3}, 2);
    flx_tensor *u2 = flxt::rand_tensor(ctx, FLX_F64, {2}, 2);
    flx_tensor *out = nullptr;
    EXPECT_EQ(flx_hvp(nullptr, nullptr, 1, &x, &u, FLX_HVP_FORWARD_OVER_REVERSE, false, &out),
              FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_hvp(poly, nullptr, 1, &x, &u, FLX_HVP_FORWARD_OVER_REVERSE, false, nullptr),
              FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_hvp(poly, nullptr, 0, &x, &u, FLX_HVP_FORWARD_OVER_REVERSE, false, &out),
              FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_hvp(poly, nullptr, 1, &x, &u, (flx_hvp_mode)5, false, &out), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(flx_last_error()).find("mode"), std::string::npos);
    EXPECT_EQ(flx_hvp(poly, nullptr, 1, &x, &u2, FLX_HVP_FORWARD_OVER_REVERSE, false, &out), FLX_ERR_SHAPE);
    EXPECT_EQ(out, nullptr);
    flx_tensor *nul = nullptr;
    flx_clear_error(); // a NULL input keeps a pending error; start clean to see its own
    EXPECT_EQ(flx_hvp(poly, nullptr, 1, &nul, &u, FLX_HVP_FORWARD_OVER_REVERSE, false, &out),
              FLX_ERR_INVALID_ARGUMENT);
    // f not scalar
    EXPECT_EQ(flx_hvp(smax, nullptr, 1, &x, &u, FLX_HVP_FORWARD_OVER_REVERSE, false, &out), FLX_ERR_SHAPE);
    EXPECT_NE(std::string(flx_last_error()).find("one-element"), std::string::npos);
    EXPECT_EQ(flx_hessian(smax, nullptr, x, &out), FLX_ERR_SHAPE);
    // f returning NULL
    auto bad = [](int32_t, flx_tensor *const *, void *) -> flx_tensor * { return nullptr; };
    EXPECT_NE(flx_hessian(bad, nullptr, x, &out), FLX_OK);
    EXPECT_NE(flx_jacobian(bad, nullptr, x, &out), FLX_OK);
    EXPECT_EQ(flx_jacobian(nullptr, nullptr, x, &out), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_jacobian(smax, nullptr, nullptr, &out), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_jacobian(smax, nullptr, x, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_hessian(poly, nullptr, nullptr, &out), FLX_ERR_INVALID_ARGUMENT);
    flx_tensor *xi = make(ctx, FLX_I64, {3}, {1, 2, 3});
    EXPECT_EQ(flx_hessian(poly, nullptr, xi, &out), FLX_ERR_DTYPE);
    flx_clear_error();
}

using HigherOrderCuda = flxt::CudaCpuTest;

// ---- GPU against the CPU -----------------------------------------------------------------------
TEST_F(HigherOrderCuda, HessianAndHvpMatchCpu) {
    flx_scope_begin();
    const int N = 33, D = 5;
    Mat X = rand_values(N * D, 21), w = rand_values(D, 22), u = rand_values(D, 23);
    Mat y(N);
    for (int i = 0; i < N; i++) y[i] = i % 2 ? 1.0 : -1.0;
    std::vector<Mat> res;
    for (flx_ctx *c : {cpu, gpu}) {
        Data d;
        d.X = make(c, FLX_F64, {N, D}, X);
        d.y = make(c, FLX_F64, {N}, y);
        flx_tensor *wt = make(c, FLX_F64, {D}, w), *ut = make(c, FLX_F64, {D}, u);
        flx_tensor *H = nullptr, *hv = nullptr;
        ASSERT_EQ(flx_hessian(logistic, &d, wt, &H), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_hvp(logistic, &d, 1, &wt, &ut, FLX_HVP_FORWARD_OVER_REVERSE, false, &hv), FLX_OK);
        res.push_back(values(H));
        res.push_back(values(hv));
        // the Hessian-vector product through softmax on the GPU: building and evaluating makes no
        // host copies or waits beyond the final read
        if (c == gpu) {
            flx_tensor *z = make(c, FLX_F32, {4, 37}, rand_values(148, 24));
            flx_tensor *v = make(c, FLX_F32, {4, 37}, rand_values(148, 25));
            flx_eval(1, &v);
            flx_ctx_synchronize(c);
            flx_ctx_reset_stats(c);
            auto f = [](int32_t, flx_tensor *const *in, void *) -> flx_tensor * {
                return flx_sum_all(flx_square(flx_log_softmax(in[0], 1, 1.0)));
            };
            flx_tensor *h2 = nullptr;
            ASSERT_EQ(flx_hvp(f, nullptr, 1, &z, &v, FLX_HVP_FORWARD_OVER_REVERSE, false, &h2), FLX_OK)
                << flx_last_error();
            ASSERT_EQ(flx_eval(1, &h2), FLX_OK) << flx_last_error();
            flx_ctx_stats st;
            flx_ctx_get_stats(c, &st);
            EXPECT_EQ(st.d2h_copies, 0u);
            EXPECT_EQ(st.syncs, 0u);
        }
    }
    EXPECT_TRUE(close(res[2], res[0], 1e-12, 1e-10));
    EXPECT_TRUE(close(res[3], res[1], 1e-12, 1e-10));
    flx_scope_end(0, nullptr);
}

}  // namespace
