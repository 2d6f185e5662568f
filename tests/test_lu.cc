// test_lu.cc — the LU family: det, slogdet, logdet, inv, solve and the _ex forms on
// the CPU backend against the float64 references of lu_testing.h (Gauss-Jordan with full pivoting
// and cofactor expansion, independent of the runtime's partial-pivoting LU); VJP by gradcheck, JVP
// and the dot-product test; second derivatives of logdet against the closed form; singular,
// nearly singular, non-square, empty and batch-mismatched input; GPU against CPU.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "lu_testing.h"
#include "testing.h"

using namespace flxt;
using namespace flxt::lu;

namespace {

using LuTest = CpuTest;

flx_tensor *zeros(flx_ctx *c, flx_dtype dt, Shape s) { return flx_zeros(c, dt, (int32_t)s.size(), s.data()); }


// ---- values -----------------------------------------------------------------------------------
struct Case {
    int64_t batch, n;
};
const Case kCases[] = {{1, 1}, {1, 2}, {1, 3}, {1, 7}, {1, 32}, {1, 100}, {1000, 4}, {3, 5}};

TEST_F(LuTest, DetInvSolveValuesF64AndF32) {
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        double tol = dt == FLX_F64 ? 1e-10 : 2e-4;
        for (const Case &c : kCases) {
            int64_t n = c.n, B = c.batch;
            Mat a = wellcond(B, n, (uint64_t)(100 + n + B));
            Shape s = B == 1 ? Shape{n, n} : Shape{B, n, n};
            Shape sb = B == 1 ? Shape{} : Shape{B};
            flx_tensor *A = make(ctx, dt, s, a);
            Mat rhs = rand_values((size_t)(B * n * 2), 5);
            Shape sr = s;
            sr.back() = 2;
            flx_tensor *R = make(ctx, dt, sr, rhs);
            Shape sv = sb;
            sv.push_back(n);
            Mat rv = rand_values((size_t)(B * n), 6);
            flx_tensor *V = make(ctx, dt, sv, rv);
            flx_tensor *det = flx_det(A), *ld = flx_logdet(A), *inv = flx_inv(A);
            flx_tensor *X = flx_solve(A, R), *x = flx_solve(A, V);
            flx_tensor *sg = nullptr, *la = nullptr;
            ASSERT_EQ(flx_slogdet(A, &sg, &la), FLX_OK) << flx_last_error();
            ASSERT_TRUE(det && ld && inv && X && x) << flx_last_error();
            EXPECT_EQ(shape_of(det), sb);
            EXPECT_EQ(shape_of(inv), s);
            EXPECT_EQ(shape_of(X), sr);
            EXPECT_EQ(shape_of(x), sv);
            Mat edet, eld, esg, ela, einv, eX, ex;
            for (int64_t b = 0; b < B; b++) {
                Mat iv;
                double d = ref_det_inv(sub(a, (size_t)(b * n * n), (size_t)(n * n)), n, &iv);
                edet.push_back(d);
                eld.push_back(d > 0 ? std::log(d) : NAN);
                esg.push_back(d > 0 ? 1.0 : -1.0);
                ela.push_back(std::log(std::fabs(d)));
                einv.insert(einv.end(), iv.begin(), iv.end());
                Mat xb = matmul(iv, sub(rhs, (size_t)(b * n * 2), (size_t)(n * 2)), n, n, 2);
                eX.insert(eX.end(), xb.begin(), xb.end());
                Mat vb = matmul(iv, sub(rv, (size_t)(b * n), (size_t)n), n, n, 1);
                ex.insert(ex.end(), vb.begin(), vb.end());
            }
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " batch " + std::to_string(B) + " n " +
                         std::to_string(n));
            EXPECT_TRUE(close(values(det), edet, tol, tol));
            EXPECT_TRUE(close(values(ld), eld, tol, tol));
            EXPECT_TRUE(close(values(sg), esg, 0, 0));
            EXPECT_TRUE(close(values(la), ela, tol, tol));
            EXPECT_TRUE(close(values(inv), einv, tol, tol));
            EXPECT_TRUE(close(values(X), eX, tol, tol));
            EXPECT_TRUE(close(values(x), ex, tol, tol));
        }
    }
}

TEST_F(LuTest, PivotingNeededAndZeroLeadingEntry) {
    // [[0, 1], [1, 0]]: det -1, inverse itself; [[0, 2, 1], [1, 0, 0], [0, 0, 3]]: det -6.
    flx_tensor *p = make(ctx, FLX_F64, {2, 2}, {0, 1, 1, 0});
    EXPECT_TRUE(close(values(flx_det(p)), {-1.0}));
    EXPECT_TRUE(close(values(flx_inv(p)), {0, 1, 1, 0}));
    flx_tensor *q = make(ctx, FLX_F64, {3, 3}, {0, 2, 1, 1, 0, 0, 0, 0, 3});
    EXPECT_TRUE(close(values(flx_det(q)), {-6.0}));
    flx_tensor *s = nullptr, *l = nullptr;
    ASSERT_EQ(flx_slogdet(q, &s, &l), FLX_OK);
    EXPECT_TRUE(close(values(s), {-1.0}));
    EXPECT_TRUE(close(values(l), {std::log(6.0)}));
    EXPECT_TRUE(std::isnan(values(flx_logdet(q))[0]));
}

// [[NaN, 0, ...], [1, 0, ...], ...] with I below: the NaN column is the first pivot and its
// multipliers are NaN, but the zero entries of U's first row skip the update, so the next pivot
// is an exact 0 (column 1 is zero).
Mat nan_beside_zero_pivot(int64_t n) {
    Mat a((size_t)(n * n), 0.0);
    for (int64_t i = 2; i < n; i++) a[(size_t)(i * n + i)] = 1.0;
    a[0] = NAN;       // A(0, 0)
    a[(size_t)n] = 1; // A(1, 0)
    return a;
}

// det, log det and slogdet's sign and log|det| of the one matrix A are all NaN.
void expect_det_forms_nan(flx_tensor *A) {
    flx_tensor *s = nullptr, *l = nullptr;
    ASSERT_EQ(flx_slogdet(A, &s, &l), FLX_OK) << flx_last_error();
    for (flx_tensor *v : {flx_det(A), flx_logdet(A), s, l}) {
        ASSERT_NE(v, nullptr) << flx_last_error();
        std::vector<double> d = values(v);
        ASSERT_EQ(d.size(), 1u);
        EXPECT_TRUE(std::isnan(d[0])) << d[0];
    }
}

// A NaN on U's diagonal wins over an exact zero pivot, as it does in the CUDA kernels (and in
// IEEE arithmetic: det [[NaN, 0], [1, 0]] = NaN 0 - 0 1): every det form is NaN, from A directly
// and (n = 9, a gradient flowing) from the packed factors.
TEST_F(LuTest, NanOnTheDiagonalWinsOverAZeroPivot) {
    for (flx_dtype dt : {FLX_F64, FLX_F32})
        for (int64_t n : {2, 9})
            for (bool grad : {false, true}) {
                SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " n " + std::to_string(n) +
                             (grad ? " with grad" : ""));
                flx_tensor *A = make(ctx, dt, {n, n}, nan_beside_zero_pivot(n));
                if (grad) ASSERT_EQ(flx_set_requires_grad(A, true), FLX_OK);
                expect_det_forms_nan(A);
            }
}

// ---- derivatives --------------------------------------------------------------------------------
TEST_F(LuTest, GradcheckAndJvp) {
    Mat a3 = wellcond(1, 3, 21), ab = wellcond(2, 4, 22);
    flx_tensor *A = make(ctx, FLX_F64, {3, 3}, a3);
    flx_tensor *Ab = make(ctx, FLX_F64, {2, 4, 4}, ab);
    flx_tensor *B = rand_tensor(ctx, FLX_F64, {3, 2}, 23);
    flx_tensor *Bb = rand_tensor(ctx, FLX_F64, {2, 4}, 24);
    std::vector<FnCase> cases = {
        {"det", [](auto in) { return flx_det(in[0]); }, {A}},
        {"det batched", [](auto in) { return flx_det(in[0]); }, {Ab}},
        {"logdet", [](auto in) { return flx_logdet(in[0]); }, {A}},
        {"logabsdet batched",
         [](auto in) {
             flx_tensor *s = nullptr, *l = nullptr;
             return flx_slogdet(in[0], &s, &l) == FLX_OK ? l : nullptr;
         },
         {Ab}},
        {"inv", [](auto in) { return flx_inv(in[0]); }, {A}},
        {"inv batched", [](auto in) { return flx_inv(in[0]); }, {Ab}},
        {"solve matrix", [](auto in) { return flx_solve(in[0], in[1]); }, {A, B}},
        {"solve vector batched", [](auto in) { return flx_solve(in[0], in[1]); }, {Ab, Bb}},
    };
    check_derivatives(cases);
}

TEST_F(LuTest, SecondDerivativesThroughRules) {
    Mat a3 = wellcond(1, 3, 31);
    flx_tensor *A = make(ctx, FLX_F64, {3, 3}, a3);
    flx_tensor *B = rand_tensor(ctx, FLX_F64, {3, 2}, 32);
    // Gradients of det, logdet, inv and solve, differentiated again (reverse and forward).
    std::vector<Fn> fs = {
        [](auto in) -> flx_tensor * {
            GradOn on;
            need_grad(in);
            flx_tensor *y = flx_det(in[0]), *g = nullptr;
            if (flx_grad_of(1, &y, nullptr, 1, &in[0], true, &g) != FLX_OK) return nullptr;
            return flx_sin(g);
        },
        [](auto in) -> flx_tensor * {
            GradOn on;
            need_grad(in);
            flx_tensor *y = flx_sum_all(flx_square(flx_inv(in[0]))), *g = nullptr;
            if (flx_grad_of(1, &y, nullptr, 1, &in[0], true, &g) != FLX_OK) return nullptr;
            return g;
        },
        [](auto in) -> flx_tensor * {
            GradOn on;
            need_grad(in);
            flx_tensor *y = flx_sum_all(flx_sin(flx_solve(in[0], in[1]))), *g[2] = {nullptr, nullptr};
            flx_tensor *xs[2] = {in[0], in[1]};
            if (flx_grad_of(1, &y, nullptr, 2, xs, true, g) != FLX_OK) return nullptr;
            return flx_add(flx_sum_all(flx_square(g[0])), flx_sum_all(flx_square(g[1])));
        },
    };
    for (size_t i = 0; i < fs.size(); i++) {
        SCOPED_TRACE(i);
        std::vector<flx_tensor *> in = {A};
        if (i == 2) in.push_back(B);
        EXPECT_EQ(gradcheck(fs[i], in, 1e-6, 1e-6, 1e-5), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(fs[i], in, 1e-6, 1e-6, 1e-5));
    }
}

TEST_F(LuTest, LogdetHessianMatchesClosedForm) {
    // d/dA <A^-T, V> = -(A^-1 V A^-1)^T, for every entry of A free.
    int64_t n = 4;
    Mat a = wellcond(1, n, 41), v = rand_values((size_t)(n * n), 42);
    flx_tensor *A = make(ctx, FLX_F64, {n, n}, a);
    flx_tensor *V = make(ctx, FLX_F64, {n, n}, v);
    ASSERT_EQ(flx_set_requires_grad(A, true), FLX_OK);
    flx_tensor *y = flx_logdet(A), *g = nullptr, *h = nullptr;
    ASSERT_EQ(flx_grad_of(1, &y, nullptr, 1, &A, true, &g), FLX_OK) << flx_last_error();
    flx_tensor *gv = flx_sum_all(flx_mul(g, V));
    ASSERT_EQ(flx_grad_of(1, &gv, nullptr, 1, &A, false, &h), FLX_OK) << flx_last_error();
    Mat inv;
    ref_det_inv(a, n, &inv);
    Mat e = transpose(matmul(matmul(inv, v, n, n, n), inv, n, n, n), n);
    for (double &x : e) x = -x;
    EXPECT_TRUE(close(values(g), transpose(inv, n), 1e-12, 1e-10));
    EXPECT_TRUE(close(values(h), e, 1e-12, 1e-10));
    // Forward over reverse gives the same Hessian-vector product.
    flx_tensor *hj = nullptr;
    flx_tensor *A2 = make(ctx, FLX_F64, {n, n}, a);
    ASSERT_EQ(flx_set_requires_grad(A2, true), FLX_OK);
    flx_tensor *y2 = flx_logdet(A2), *g2 = nullptr;
    ASSERT_EQ(flx_grad_of(1, &y2, nullptr, 1, &A2, true, &g2), FLX_OK);
    ASSERT_EQ(flx_jvp(1, &A2, &V, 1, &g2, &hj), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(hj), e, 1e-12, 1e-10));  // the Hessian is symmetric
}

// ---- singular and ill-conditioned input ---------------------------------------------------------
TEST_F(LuTest, DetGradientAtSingularMatrixIsCofactor) {
    struct S {
        int64_t n;
        Mat a;
    };
    std::vector<S> cases = {
        {2, {1, 2, 2, 4}},                           // rank 1, exact zero pivot at the end
        {3, {1, 2, 3, 4, 5, 6, 7, 8, 9}},            // rank 2 (zero pivot may be inexact)
        {3, {0, 0, 0, 1, 2, 3, 4, 5, 6}},            // zero first row
        {3, {0, 1, 2, 0, 3, 4, 0, 5, 7}},            // zero first column: zero pivot at step 0
        {4, {1, 2, 3, 4, 2, 4, 6, 8, 0, 1, 1, 0, 5, 0, 1, 2}},  // rows 0, 1 dependent
        {3, {1, 1, 1, 1, 1, 1, 1, 1, 1}},            // rank 1: cofactor matrix is 0
    };
    for (auto &c : cases) {
        SCOPED_TRACE(c.n);
        flx_tensor *A = make(ctx, FLX_F64, {c.n, c.n}, c.a);
        ASSERT_EQ(flx_set_requires_grad(A, true), FLX_OK);
        flx_tensor *d = flx_det(A), *g = nullptr;
        ASSERT_EQ(flx_grad_of(1, &d, nullptr, 1, &A, false, &g), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(d), {0.0}, 1e-12, 0));
        Mat cof = ref_cofactor(c.a, c.n);
        std::vector<double> got = values(g);
        for (double x : got) EXPECT_TRUE(std::isfinite(x));
        EXPECT_TRUE(close(got, cof, 1e-12, 1e-12));
        // inv reports the singular matrix at the synchronisation point ...
        flx_tensor *inv = flx_inv(A);
        ASSERT_NE(inv, nullptr);
        std::vector<double> buf((size_t)(c.n * c.n));
        flx_status st = flx_to_host(inv, buf.data(), buf.size() * sizeof(double));
        if (c.n != 3 || c.a[0] != 1 || c.a[1] != 2) {  // (1..9) need not give an exact zero pivot
            EXPECT_EQ(st, FLX_ERR_NUMERIC);
            EXPECT_NE(std::string(flx_last_error()).find("singular"), std::string::npos);
        }
        flx_clear_error();
        // ... and the _ex form returns info instead.
        flx_tensor *info = nullptr;
        flx_tensor *inv2 = flx_inv_ex(A, &info);
        ASSERT_TRUE(inv2 && info) << flx_last_error();
        EXPECT_EQ(flx_dtype_of(info), FLX_I32);
        std::vector<double> iv = values(info);
        ASSERT_EQ(iv.size(), 1u);
        if (c.n != 3 || c.a[0] != 1 || c.a[1] != 2) EXPECT_GT(iv[0], 0);
        EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_OK) << flx_last_error();
    }
}

TEST_F(LuTest, CofactorOfNonsingularIsDetTimesInverseTranspose) {
    for (int64_t n : {1, 2, 5}) {
        Mat a = wellcond(1, n, (uint64_t)(50 + n));
        flx_tensor *A = make(ctx, FLX_F64, {n, n}, a);
        ASSERT_EQ(flx_set_requires_grad(A, true), FLX_OK);
        flx_tensor *d = flx_det(A), *g = nullptr;
        ASSERT_EQ(flx_grad_of(1, &d, nullptr, 1, &A, false, &g), FLX_OK);
        EXPECT_TRUE(close(values(g), ref_cofactor(a, n), 1e-12, 1e-10));
    }
}

TEST_F(LuTest, SolveExInfoPerMatrixAndNearlySingular) {
    // Batch of two: the second is singular; info names it, the first solves normally.
    flx_tensor *A = make(ctx, FLX_F64, {2, 2, 2}, {2, 1, 1, 3, 1, 2, 2, 4});
    flx_tensor *b = make(ctx, FLX_F64, {2, 2}, {1, 2, 1, 1});
    flx_tensor *info = nullptr;
    flx_tensor *x = flx_solve_ex(A, b, &info);
    ASSERT_TRUE(x && info) << flx_last_error();
    EXPECT_TRUE(close(values(info), {0, 2}));
    std::vector<double> xv = values(x);
    EXPECT_NEAR(xv[0], 0.2, 1e-14);
    EXPECT_NEAR(xv[1], 0.6, 1e-14);
    // flx_solve on the same input reports at the next synchronisation point.
    flx_tensor *y = flx_solve(A, b);
    ASSERT_NE(y, nullptr);
    EXPECT_EQ(flx_eval(1, &y), FLX_OK);
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_ERR_NUMERIC);
    EXPECT_NE(std::string(flx_last_error()).find("singular"), std::string::npos);
    flx_clear_error();
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_OK);  // the word was cleared
    // Nearly singular (condition ~1e10): no error, accurate in f64 to ~cond * eps.
    double e = 1e-10;
    flx_tensor *N = make(ctx, FLX_F64, {2, 2}, {1, 1, 1, 1 + e});
    flx_tensor *rhs = make(ctx, FLX_F64, {2}, {2, 2 + e});
    EXPECT_TRUE(close(values(flx_solve(N, rhs)), {1, 1}, 1e-5, 0));
    EXPECT_TRUE(close(values(flx_det(N)), {e}, 0, 1e-5));
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_OK);
}

// ---- shapes and bad input -------------------------------------------------------------------------
TEST_F(LuTest, EmptyInputs) {
    flx_tensor *z = zeros(ctx, FLX_F64, {0, 0});
    EXPECT_TRUE(close(values(flx_det(z)), {1.0}));
    EXPECT_TRUE(close(values(flx_logdet(z)), {0.0}));
    EXPECT_EQ(shape_of(flx_inv(z)), (Shape{0, 0}));
    flx_tensor *e = zeros(ctx, FLX_F64, {0, 3, 3});
    EXPECT_EQ(shape_of(flx_det(e)), (Shape{0}));
    EXPECT_EQ(values(flx_det(e)).size(), 0u);
    EXPECT_EQ(shape_of(flx_inv(e)), (Shape{0, 3, 3}));
    flx_tensor *be = zeros(ctx, FLX_F64, {0, 3, 2});
    EXPECT_EQ(shape_of(flx_solve(e, be)), (Shape{0, 3, 2}));
    flx_tensor *k0 = zeros(ctx, FLX_F64, {3, 0});
    flx_tensor *I = flx_eye(ctx, FLX_F64, 3, 3);
    EXPECT_EQ(shape_of(flx_solve(I, k0)), (Shape{3, 0}));
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_OK);
}

TEST_F(LuTest, BadInputRejectedAtBuildTime) {
    flx_tensor *rect = zeros(ctx, FLX_F64, {2, 3});
    flx_tensor *vec = zeros(ctx, FLX_F64, {3});
    flx_tensor *A = flx_eye(ctx, FLX_F64, 3, 3);
    flx_tensor *A32 = flx_eye(ctx, FLX_F32, 3, 3);
    flx_tensor *Ai = zeros(ctx, FLX_I32, {3, 3});
    flx_tensor *Ab = zeros(ctx, FLX_F64, {2, 3, 3});
    flx_tensor *Bb = zeros(ctx, FLX_F64, {4, 3, 1});
    EXPECT_TRUE(fails_with(flx_det(rect), FLX_ERR_SHAPE, "square"));
    EXPECT_TRUE(fails_with(flx_inv(rect), FLX_ERR_SHAPE, "flx_inv"));
    EXPECT_TRUE(fails_with(flx_logdet(vec), FLX_ERR_SHAPE, "rank >= 2"));
    EXPECT_TRUE(fails_with(flx_det(Ai), FLX_ERR_DTYPE, "flx_det"));
    EXPECT_TRUE(fails_with(flx_det(nullptr), FLX_ERR_INVALID_ARGUMENT, "flx_det"));
    EXPECT_TRUE(fails_with(flx_solve(A, nullptr), FLX_ERR_INVALID_ARGUMENT, "flx_solve"));
    EXPECT_TRUE(fails_with(flx_solve(A, rect), FLX_ERR_SHAPE, "flx_solve"));
    EXPECT_TRUE(fails_with(flx_solve(A, zeros(ctx, FLX_F64, {4})), FLX_ERR_SHAPE,
                           "(4)"));
    EXPECT_TRUE(fails_with(flx_solve(Ab, Bb), FLX_ERR_SHAPE, "batch dims"));
    EXPECT_TRUE(fails_with(flx_solve(A32, vec), FLX_ERR_DTYPE, "dtypes differ"));
    EXPECT_TRUE(fails_with(flx_inv_ex(A, nullptr), FLX_ERR_INVALID_ARGUMENT, "info"));
    flx_tensor *s = nullptr;
    EXPECT_EQ(flx_slogdet(A, &s, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_slogdet(rect, &s, &s), FLX_ERR_SHAPE);
    EXPECT_EQ(s, nullptr);
    flx_clear_error();
    // Tensors of two contexts.
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *v2 = zeros(other, FLX_F64, {3});
    EXPECT_TRUE(fails_with(flx_solve(A, v2), FLX_ERR_DEVICE, "flx_solve"));
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK);
}

// An inverse is one identity solve (after one factor when a gradient flows to an A above 8 x 8;
// up to 8 x 8 it factorises in registers either way, and a derivative builds the factors it
// needs): no identity tensor is filled, broadcast or read (the solve kernels generate it), on its
// own and inside the logdet gradient (A^-T; up to n = 8 the gradient kernel forms it in registers).
TEST_F(LuTest, InverseBuildsNoIdentityTensor) {
    for (int64_t n : {5, 9}) {
        SCOPED_TRACE(n);
        const int64_t B = 3;
        Mat a = wellcond(B, n, 21);
        flx_tensor *A = make(ctx, FLX_F64, {B, n, n}, a);
        ASSERT_EQ(flx_eval(1, &A), FLX_OK);
        for (bool grad : {false, true}) {
            flx_set_requires_grad(A, grad);
            flx_tensor *X = flx_inv(A);
            EXPECT_EQ(kernels_to_eval(ctx, X), grad && n > 8 ? 2u : 1u);
            std::vector<double> got = values(X);
            for (int64_t b = 0; b < B; b++) {
                Mat inv;
                ref_det_inv(sub(a, (size_t)(b * n * n), (size_t)(n * n)), n, &inv);
                EXPECT_TRUE(close(sub(got, (size_t)(b * n * n), (size_t)(n * n)), inv, 1e-12, 1e-10));
            }
        }
        // d logdet / dA = A^-T.
        flx_set_requires_grad(A, true);
        flx_tensor *ld = flx_sum_all(flx_logdet(flx_mul_scalar(A, 1.0))), *g = nullptr;
        ASSERT_EQ(flx_grad_of(1, &ld, nullptr, 1, &A, false, &g), FLX_OK) << flx_last_error();
        std::vector<double> gv = values(g);
        for (int64_t b = 0; b < B; b++) {
            Mat inv;
            ref_det_inv(sub(a, (size_t)(b * n * n), (size_t)(n * n)), n, &inv);
            EXPECT_TRUE(close(sub(gv, (size_t)(b * n * n), (size_t)(n * n)), transpose(inv, n), 1e-12, 1e-10));
        }
    }
}

// det / logdet of an A no gradient flows to: one kernel, no packed factors; a JVP asked later
// still gets <cof(A), dA> (the factors are built then).
TEST_F(LuTest, ForwardOnlyDetIsOneKernel) {
    for (int64_t n : {3, 9}) {
        const int64_t B = 4;
        Mat a = wellcond(B, n, 23);
        flx_tensor *A = make(ctx, FLX_F64, {B, n, n}, a);
        ASSERT_EQ(flx_eval(1, &A), FLX_OK);
        flx_tensor *d = flx_det(A);
        EXPECT_EQ(kernels_to_eval(ctx, d), 1u) << "n " << n;
        std::vector<double> dv = values(d), ldv = values(flx_logdet(A));
        Mat V = rand_values((size_t)(B * n * n), 29);
        flx_tensor *Vt = make(ctx, FLX_F64, {B, n, n}, V), *t = nullptr;
        ASSERT_EQ(flx_jvp(1, &A, &Vt, 1, &d, &t), FLX_OK) << flx_last_error();
        std::vector<double> tv = values(t);
        for (int64_t b = 0; b < B; b++) {
            Mat m = sub(a, (size_t)(b * n * n), (size_t)(n * n));
            double e = ref_det_inv(m, n, nullptr);
            EXPECT_NEAR(dv[(size_t)b], e, 1e-12 * std::fabs(e) + 1e-14);
            EXPECT_TRUE(std::isnan(ldv[(size_t)b]) == (e < 0)) << b;
            if (e > 0) EXPECT_NEAR(ldv[(size_t)b], std::log(e), 1e-12);
            Mat c = ref_cofactor(m, n);
            double et = 0;
            for (int64_t q = 0; q < n * n; q++) et += c[(size_t)q] * V[(size_t)(b * n * n + q)];
            EXPECT_NEAR(tv[(size_t)b], et, 1e-10 * (1 + std::fabs(et)));
        }
    }
}

// solve of inputs no gradient flows to: one kernel straight from A (no packed factors), the
// same values as through the factors; a JVP asked later builds the factors (dX = -A^-1 dA X).
TEST_F(LuTest, ForwardOnlySolveIsOneKernel) {
    for (int64_t n : {3, 9}) {
        const int64_t B = 4, k = 2;
        Mat a = wellcond(B, n, 41);
        Mat bv = rand_values((size_t)(B * n * k), 43), V = rand_values((size_t)(B * n * n), 47);
        flx_tensor *A = make(ctx, FLX_F64, {B, n, n}, a), *Bt = make(ctx, FLX_F64, {B, n, k}, bv);
        flx_tensor *Vt = make(ctx, FLX_F64, {B, n, n}, V), *t = nullptr;
        ASSERT_EQ(flx_eval(1, &A), FLX_OK);
        ASSERT_EQ(flx_eval(1, &Bt), FLX_OK);
        flx_tensor *X = flx_solve(A, Bt);
        EXPECT_EQ(kernels_to_eval(ctx, X), 1u) << "n " << n;
        ASSERT_EQ(flx_jvp(1, &A, &Vt, 1, &X, &t), FLX_OK) << flx_last_error();
        std::vector<double> xv = values(X), tv = values(t);
        for (int64_t b = 0; b < B; b++) {
            Mat inv;
            ref_det_inv(sub(a, (size_t)(b * n * n), (size_t)(n * n)), n, &inv);
            Mat x = matmul(inv, sub(bv, (size_t)(b * n * k), (size_t)(n * k)), n, n, k);
            Mat dx = matmul(inv, matmul(sub(V, (size_t)(b * n * n), (size_t)(n * n)), x, n, n, k), n, n, k);
            for (double &v : dx) v = -v;
            EXPECT_TRUE(close(sub(xv, (size_t)(b * n * k), (size_t)(n * k)), x, 1e-12, 1e-10)) << b;
            EXPECT_TRUE(close(sub(tv, (size_t)(b * n * k), (size_t)(n * k)), dx, 1e-12, 1e-10)) << b;
        }
    }
}

// ---- GPU against CPU --------------------------------------------------------------------------------
using LuCuda = CudaCpuTest;

TEST_F(LuCuda, MatchesCpu) {
    const Case cases[] = {{1, 1}, {1, 2}, {1, 3}, {1, 7}, {1, 8}, {1, 9}, {1, 32}, {1, 100},
                          {1000, 4}, {37, 8}, {50, 13}, {3, 300}, {0, 4}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        double tol = dt == FLX_F64 ? 1e-9 : 1e-3;
        for (const Case &c : cases) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " batch " + std::to_string(c.batch) +
                         " n " + std::to_string(c.n));
            Mat a = wellcond(c.batch, c.n, (uint64_t)(7 + c.n));
            Shape s = {c.batch, c.n, c.n};
            flx_tensor *Ac = make(cpu, dt, s, a), *Ag = flx_to_ctx(Ac, gpu);
            flx_tensor *Bc = rand_tensor(cpu, dt, {c.batch, c.n, 3}, 9), *Bg = flx_to_ctx(Bc, gpu);
            flx_tensor *vc = rand_tensor(cpu, dt, {c.batch, c.n}, 10), *vg = flx_to_ctx(vc, gpu);
            auto both = [&](std::function<flx_tensor *(flx_tensor *, flx_tensor *, flx_tensor *)> f) {
                flx_tensor *rc = f(Ac, Bc, vc), *rg = f(Ag, Bg, vg);
                ASSERT_TRUE(rc && rg) << flx_last_error();
                EXPECT_TRUE(close(values(rg), values(rc), tol, tol));
            };
            both([](flx_tensor *A, flx_tensor *, flx_tensor *) { return flx_det(A); });
            both([](flx_tensor *A, flx_tensor *, flx_tensor *) { return flx_logdet(A); });
            both([](flx_tensor *A, flx_tensor *, flx_tensor *) { return flx_inv(A); });
            both([](flx_tensor *A, flx_tensor *B, flx_tensor *) { return flx_solve(A, B); });
            both([](flx_tensor *A, flx_tensor *, flx_tensor *v) { return flx_solve(A, v); });
            both([](flx_tensor *A, flx_tensor *, flx_tensor *) -> flx_tensor * {
                flx_set_requires_grad(A, true);
                flx_tensor *g = nullptr, *d = flx_sum_all(flx_det(A));
                if (flx_grad_of(1, &d, nullptr, 1, &A, false, &g) != FLX_OK) return nullptr;
                return g;
            });
            both([](flx_tensor *A, flx_tensor *B, flx_tensor *) -> flx_tensor * {
                flx_set_requires_grad(A, true);
                flx_tensor *g = nullptr, *d = flx_sum_all(flx_sin(flx_solve(A, B)));
                if (flx_grad_of(1, &d, nullptr, 1, &A, false, &g) != FLX_OK) return nullptr;
                return g;
            });
        }
    }
    // Singular input on the GPU: cofactor gradient, the error at sync, info from _ex.
    Mat sing = {1, 2, 3, 2, 4, 6, 0, 1, 1};
    flx_tensor *Sg = make(gpu, FLX_F64, {3, 3}, sing);
    flx_set_requires_grad(Sg, true);
    flx_tensor *d = flx_det(Sg), *g = nullptr;
    ASSERT_EQ(flx_grad_of(1, &d, nullptr, 1, &Sg, false, &g), FLX_OK);
    EXPECT_TRUE(close(values(g), ref_cofactor(sing, 3), 1e-12, 1e-12));
    flx_tensor *inv = flx_inv(Sg);
    EXPECT_EQ(flx_eval(1, &inv), FLX_OK);
    EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_ERR_NUMERIC);
    flx_clear_error();
    flx_tensor *info = nullptr;
    ASSERT_NE(flx_inv_ex(Sg, &info), nullptr);
    EXPECT_GT(values(info)[0], 0);
}

// Every GPU path of the family beside the CPU reference: the register kernels (n <= 8), the
// shared-memory block kernels (9 <= n <= 64, batches that do not fill a wave, solves with more
// right-hand sides than one shared-memory chunk holds) and cuSOLVER (n = 65); values, VJP
// (cofactor, transposed and plain solves) and JVP, on contiguous and transposed input.
TEST_F(LuCuda, BlockPathsMatchCpu) {
    const Case cases[] = {{129, 8}, {3, 9}, {1, 9}, {37, 33}, {2, 64}, {129, 64}, {3, 65}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        double tol = dt == FLX_F64 ? 1e-9 : 2e-3;
        for (const Case &c : cases) {
            for (bool transposed : {false, true}) {
                SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " batch " + std::to_string(c.batch) +
                             " n " + std::to_string(c.n) + (transposed ? " transposed" : ""));
                Mat a = wellcond(c.batch, c.n, (uint64_t)(31 + c.n));
                Shape s = {c.batch, c.n, c.n};
                flx_tensor *Ac = make(cpu, dt, s, a), *Ag = flx_to_ctx(Ac, gpu);
                if (transposed) Ac = flx_transpose(Ac, -2, -1), Ag = flx_transpose(Ag, -2, -1);
                // 40 right-hand sides: more than one chunk of k_solve_block in f64 at n = 64.
                flx_tensor *Bc = rand_tensor(cpu, dt, {c.batch, c.n, 40}, 9), *Bg = flx_to_ctx(Bc, gpu);
                flx_tensor *Vc = rand_tensor(cpu, dt, s, 12), *Vg = flx_to_ctx(Vc, gpu);
                ASSERT_TRUE(Ac && Ag && Bc && Bg && Vc && Vg) << flx_last_error();
                using F = std::function<flx_tensor *(flx_tensor *, flx_tensor *, flx_tensor *)>;
                auto both = [&](const char *what, const F &f) {
                    SCOPED_TRACE(what);
                    flx_tensor *rc = f(Ac, Bc, Vc), *rg = f(Ag, Bg, Vg);
                    ASSERT_TRUE(rc && rg) << flx_last_error();
                    EXPECT_TRUE(close(values(rg), values(rc), tol, tol));
                };
                // det / logdet of an A without grad: straight from A, no packed factors.
                both("det", [](flx_tensor *A, flx_tensor *, flx_tensor *) { return flx_det(A); });
                both("logdet", [](flx_tensor *A, flx_tensor *, flx_tensor *) { return flx_logdet(A); });
                both("slogdet", [](flx_tensor *A, flx_tensor *, flx_tensor *) {
                    flx_tensor *sg = nullptr, *la = nullptr;
                    return flx_slogdet(A, &sg, &la) == FLX_OK ? flx_mul(sg, la) : nullptr;
                });
                both("inv", [](flx_tensor *A, flx_tensor *, flx_tensor *) { return flx_inv(A); });
                both("solve", [](flx_tensor *A, flx_tensor *B, flx_tensor *) { return flx_solve(A, B); });
                both("det vjp", [](flx_tensor *A, flx_tensor *, flx_tensor *) -> flx_tensor * {
                    flx_set_requires_grad(A, true);
                    flx_tensor *g = nullptr, *d = flx_sum_all(flx_det(A));
                    if (flx_grad_of(1, &d, nullptr, 1, &A, false, &g) != FLX_OK) return nullptr;
                    return g;
                });
                both("slogdet vjp", [](flx_tensor *A, flx_tensor *, flx_tensor *) -> flx_tensor * {
                    flx_set_requires_grad(A, true);
                    flx_tensor *sg = nullptr, *la = nullptr, *g = nullptr;
                    if (flx_slogdet(A, &sg, &la) != FLX_OK) return nullptr;
                    flx_tensor *d = flx_sum_all(la);
                    if (flx_grad_of(1, &d, nullptr, 1, &A, false, &g) != FLX_OK) return nullptr;
                    return g;
                });
                both("solve vjp", [](flx_tensor *A, flx_tensor *B, flx_tensor *) -> flx_tensor * {
                    flx_set_requires_grad(A, true);
                    flx_tensor *g = nullptr, *d = flx_sum_all(flx_sin(flx_solve(A, B)));
                    if (flx_grad_of(1, &d, nullptr, 1, &A, false, &g) != FLX_OK) return nullptr;
                    return g;
                });
                both("inv jvp", [](flx_tensor *A, flx_tensor *, flx_tensor *V) -> flx_tensor * {
                    flx_tensor *y = flx_inv(A), *t = nullptr;
                    if (!y || flx_jvp(1, &A, &V, 1, &y, &t) != FLX_OK) return nullptr;
                    return t;
                });
            }
        }
    }
}

// Exactly singular matrices (a zero column: an exact zero pivot at that step) on the block path
// (9x9, batched 33x33) and cuSOLVER's (100x100, batched 65x65): det is 0, the division-free
// cofactor gradient is finite and matches the CPU's (no 0 * inf = NaN left in the factors), and
// info names the same pivot.
TEST_F(LuCuda, SingularMatricesKeepTheFactorContract) {
    const Case cases[] = {{1, 9}, {5, 33}, {1, 100}, {3, 65}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        double tol = dt == FLX_F64 ? 1e-9 : 2e-3;
        for (const Case &c : cases) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " batch " + std::to_string(c.batch) +
                         " n " + std::to_string(c.n));
            int64_t n = c.n;
            Mat a = wellcond(c.batch, n, (uint64_t)(77 + n));
            for (int64_t b = 0; b < c.batch; b++) {  // matrix b: column (3 + 5 b) % n is zero
                int64_t zc = (3 + 5 * b) % n;
                for (int64_t i = 0; i < n; i++) a[(size_t)(b * n * n + i * n + zc)] = 0.0;
            }
            Shape s = {c.batch, n, n};
            flx_tensor *Ac = make(cpu, dt, s, a), *Ag = flx_to_ctx(Ac, gpu);
            ASSERT_TRUE(Ac && Ag) << flx_last_error();
            std::vector<double> dg = values(flx_det(Ag));
            for (double d : dg) EXPECT_EQ(d, 0.0);
            flx_tensor *ic = nullptr, *ig = nullptr;
            ASSERT_NE(flx_inv_ex(Ac, &ic), nullptr);
            ASSERT_NE(flx_inv_ex(Ag, &ig), nullptr);
            EXPECT_TRUE(close(values(ig), values(ic), 0, 0)) << "info";
            flx_tensor *gs[2] = {nullptr, nullptr};
            flx_tensor *As[2] = {Ac, Ag};
            for (int k = 0; k < 2; k++) {
                flx_set_requires_grad(As[k], true);
                flx_tensor *d = flx_sum_all(flx_det(As[k]));
                ASSERT_EQ(flx_grad_of(1, &d, nullptr, 1, &As[k], false, &gs[k]), FLX_OK) << flx_last_error();
            }
            std::vector<double> vg = values(gs[1]), vc = values(gs[0]);
            size_t nonfinite = 0;
            for (double v : vg) nonfinite += std::isfinite(v) ? 0 : 1;
            EXPECT_EQ(nonfinite, 0u) << "cofactor gradient holds NaN/inf";
            EXPECT_TRUE(close(vg, vc, tol, tol));
        }
    }
}

// The pivot search takes the first NaN of a column as pivot, so a NaN reaches det even where a
// NaN-blind search would meet an exact zero pivot and drop the column (column 0 is zero except
// one NaN): register (n = 4), block (n = 9, 33) paths.
TEST_F(LuCuda, NanPivotReachesDet) {
    for (flx_dtype dt : {FLX_F64, FLX_F32})
        for (int64_t n : {4, 9, 33}) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " n " + std::to_string(n));
            Mat a = wellcond(1, n, 5);
            for (int64_t i = 0; i < n; i++) a[(size_t)(i * n)] = 0.0;
            a[(size_t)((n - 1) * n)] = NAN;
            flx_tensor *A = make(gpu, dt, {n, n}, a);
            std::vector<double> d = values(flx_det(A));
            ASSERT_EQ(d.size(), 1u);
            EXPECT_TRUE(std::isnan(d[0])) << d[0];
        }
}

// LuTest.NanOnTheDiagonalWinsOverAZeroPivot's matrices on every GPU path (registers, block,
// cuSOLVER with its singular fix-up): every det form NaN, as on the CPU.
TEST_F(LuCuda, NanBesideAZeroPivotMatchesCpu) {
    for (flx_dtype dt : {FLX_F64, FLX_F32})
        for (int64_t n : {2, 9, 70}) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " n " + std::to_string(n));
            expect_det_forms_nan(make(gpu, dt, {n, n}, nan_beside_zero_pivot(n)));
        }
}

// Equal as the CPU and GPU LUs must be on A holding infs: NaN where the other has NaN, the same
// infinity where it has one, finite values to rounding.
::testing::AssertionResult same_nonfinite(const std::vector<double> &got, const std::vector<double> &want,
                                          double tol) {
    if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes differ";
    for (size_t i = 0; i < got.size(); i++) {
        double g = got[i], w = want[i];
        bool ok = std::isnan(w) ? std::isnan(g)
                  : std::isinf(w) ? g == w
                                  : std::isfinite(g) && std::fabs(g - w) <= tol * (1 + std::fabs(w));
        if (!ok) return ::testing::AssertionFailure() << "element " << i << ": " << g << ", CPU " << w;
    }
    return ::testing::AssertionSuccess();
}

// Matrices holding infs (and zero columns beside them) factorise as on the CPU on every LU path:
// a zero pivot leaves its column uneliminated and a zero in the pivot row skips its column, so no
// 0 * inf turns into a NaN that the CPU does not have. det forms, inv_ex and solve_ex with their
// info, registers (n <= 8) and block (n = 9).
TEST_F(LuCuda, InfEntriesFactoriseAsOnTheCpu) {
    const int64_t batch = 40;
    for (flx_dtype dt : {FLX_F64, FLX_F32})
        for (int64_t n : {2, 3, 5, 8, 9}) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " n " + std::to_string(n));
            const double tol = dt == FLX_F64 ? 1e-10 : 1e-4;
            Mat a = rand_values((size_t)(batch * n * n), 70 + (uint64_t)n);
            for (int64_t b = 0; b < batch; b++) {
                double *m = &a[(size_t)(b * n * n)];
                for (int64_t i = 0; i < n; i++) m[i * n + i] += 3; // finite part well conditioned
                const int64_t p = (b * 7) % (n * n), q = (b * 5 + 3) % (n * n);
                switch (b % 4) {
                case 0: m[p] = INFINITY; break;
                case 1: m[p] = -INFINITY, m[q] = 0; break;
                case 2: // a zero first column (an exact zero pivot) and an inf in the first row
                    for (int64_t i = 0; i < n; i++) m[i * n] = 0;
                    m[n - 1] = INFINITY;
                    break;
                default: break; // finite
                }
            }
            flx_tensor *Ac = make(cpu, dt, {batch, n, n}, a), *Ag = make(gpu, dt, {batch, n, n}, a);
            flx_tensor *Bc = rand_tensor(cpu, dt, {batch, n, 2}, 71), *Bg = flx_to_ctx(Bc, gpu);
            ASSERT_TRUE(Ac && Ag && Bc && Bg) << flx_last_error();
            flx_tensor *sc = nullptr, *lc = nullptr, *sg = nullptr, *lg = nullptr;
            ASSERT_EQ(flx_slogdet(Ac, &sc, &lc), FLX_OK) << flx_last_error();
            ASSERT_EQ(flx_slogdet(Ag, &sg, &lg), FLX_OK) << flx_last_error();
            EXPECT_TRUE(same_nonfinite(values(flx_det(Ag)), values(flx_det(Ac)), tol)) << "det";
            EXPECT_TRUE(same_nonfinite(values(flx_logdet(Ag)), values(flx_logdet(Ac)), tol)) << "logdet";
            EXPECT_TRUE(same_nonfinite(values(sg), values(sc), tol)) << "sign";
            EXPECT_TRUE(same_nonfinite(values(lg), values(lc), tol)) << "log|det|";
            flx_tensor *ic = nullptr, *ig = nullptr, *jc = nullptr, *jg = nullptr;
            flx_tensor *vc = flx_inv_ex(Ac, &ic), *vg = flx_inv_ex(Ag, &ig);
            flx_tensor *xc = flx_solve_ex(Ac, Bc, &jc), *xg = flx_solve_ex(Ag, Bg, &jg);
            ASSERT_TRUE(vc && vg && xc && xg && ic && ig && jc && jg) << flx_last_error();
            EXPECT_TRUE(same_nonfinite(values(vg), values(vc), tol)) << "inv_ex";
            EXPECT_TRUE(same_nonfinite(values(xg), values(xc), tol)) << "solve_ex";
            EXPECT_EQ(values(ig), values(ic));
            EXPECT_EQ(values(jg), values(jc));
        }
    EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_OK) << flx_last_error();
}

}  // namespace

namespace {

using NormTest = CpuTest;

TEST_F(NormTest, ValuesAgainstFloat64) {
    Mat v = rand_values(24, 61);
    flx_tensor *x = make(ctx, FLX_F64, {2, 3, 4}, v);
    int32_t last[1] = {-1}, mat[2] = {-2, -1};
    // per row of the last axis
    std::vector<double> e1, e2, einf, e3;
    for (int r = 0; r < 6; r++) {
        double s1 = 0, s2 = 0, m = 0, s3 = 0;
        for (int j = 0; j < 4; j++) {
            double a = std::fabs(v[(size_t)(r * 4 + j)]);
            s1 += a, s2 += a * a, m = std::max(m, a), s3 += a * a * a;
        }
        e1.push_back(s1), e2.push_back(std::sqrt(s2)), einf.push_back(m), e3.push_back(std::cbrt(s3));
    }
    EXPECT_TRUE(close(values(flx_norm(x, 1, 1, last, false)), e1));
    EXPECT_TRUE(close(values(flx_norm(x, 2, 1, last, false)), e2));
    EXPECT_TRUE(close(values(flx_norm(x, INFINITY, 1, last, false)), einf));
    EXPECT_TRUE(close(values(flx_norm(x, 3, 1, last, false)), e3));
    std::vector<double> fro;
    for (int b = 0; b < 2; b++) {
        double s = 0;
        for (int j = 0; j < 12; j++) s += v[(size_t)(b * 12 + j)] * v[(size_t)(b * 12 + j)];
        fro.push_back(std::sqrt(s));
    }
    flx_tensor *f = flx_norm(x, 2, 2, mat, true);
    EXPECT_EQ(shape_of(f), (Shape{2, 1, 1}));
    EXPECT_TRUE(close(values(f), fro));
    double all = 0;
    for (double a : v) all += a * a;
    EXPECT_TRUE(close(values(flx_norm(x, 2, 0, nullptr, false)), {std::sqrt(all)}));
    flx_tensor *e = zeros(ctx, FLX_F64, {0});
    EXPECT_TRUE(close(values(flx_norm(e, INFINITY, 0, nullptr, false)), {0.0}));
    EXPECT_TRUE(fails_with(flx_norm(x, 0.5, 0, nullptr, false), FLX_ERR_INVALID_ARGUMENT, "p must"));
    int32_t bad[1] = {5};
    EXPECT_TRUE(fails_with(flx_norm(x, 2, 1, bad, false), FLX_ERR_INVALID_ARGUMENT, "flx_norm"));
    flx_clear_error();
    EXPECT_TRUE(fails_with(flx_norm(nullptr, 2, 0, nullptr, false), FLX_ERR_INVALID_ARGUMENT, "flx_norm"));
}

TEST_F(NormTest, GradientsIncludingZeroSubgradient) {
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {3, 4}, 62, 0.2, 1.0);
    int32_t last[1] = {-1};
    for (double p : {1.0, 2.0, 3.0, (double)INFINITY}) {
        SCOPED_TRACE(p);
        Fn f = [p, last](auto in) { return flx_norm(in[0], p, 1, last, false); };
        EXPECT_EQ(gradcheck(f, {x}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(f, {x}));
        // At zero: gradient 0, finite second derivative.
        flx_tensor *z = zeros(ctx, FLX_F64, {2, 3});
        ASSERT_EQ(flx_set_requires_grad(z, true), FLX_OK);
        flx_tensor *n = flx_sum_all(flx_norm(z, p, 1, last, false)), *g = nullptr;
        ASSERT_EQ(flx_grad_of(1, &n, nullptr, 1, &z, true, &g), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(g), std::vector<double>(6, 0.0), 0, 0));
        flx_tensor *gg = flx_sum_all(flx_square(g)), *h = nullptr;
        ASSERT_EQ(flx_grad_of(1, &gg, nullptr, 1, &z, false, &h), FLX_OK) << flx_last_error();
        for (double v : values(h)) EXPECT_TRUE(std::isfinite(v));
        flx_tensor *t = nullptr, *one = make(ctx, FLX_F64, {2, 3}, std::vector<double>(6, 1.0));
        flx_tensor *nz = flx_norm(z, p, 1, last, false);
        ASSERT_EQ(flx_jvp(1, &z, &one, 1, &nz, &t), FLX_OK);
        for (double v : values(t)) EXPECT_TRUE(std::isfinite(v));
    }
}

}  // namespace
