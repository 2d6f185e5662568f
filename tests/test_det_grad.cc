// test_det_grad.cc — the derivatives of det, logdet and slogdet's log|det| on the CPU backend.
// Up to n = FLX_LU_REG_N (8) they take one LU_DET_GRAD node straight from A (g cof(A), or g A^-T);
// above it the factor-based path (n = 9 here). Values against the float64 references of
// lu_testing.h for n = 1..9 in f32 and f64, with no, one and two batch dimensions and a ragged
// batch; kernel counts; the exact adjugate at singular and nearly singular A; VJP, JVP and the
// dot-product test through the node and through its own rules (second and third derivatives, a
// cotangent that itself requires grad); Hessian-vector products against closed forms. The GPU
// kernels are checked against these CPU values in test_lu_cuda.cc.
#include <cmath>
#include <string>
#include <vector>

#include "lu_testing.h"
#include "testing.h"

using namespace flxt;
using namespace flxt::lu;

namespace {

using DetGrad = CpuTest;

constexpr int64_t kRegN = 8; // FLX_LU_REG_N: the largest n of the one-kernel form

Shape with_matrix(Shape batch, int64_t n) {
    batch.push_back(n);
    batch.push_back(n);
    return batch;
}

// Values as the dtype holds them (the references must see what the kernels see).
Mat rounded(Mat v, flx_dtype dt) {
    if (dt == FLX_F32)
        for (double &x : v) x = (double)(float)x;
    return v;
}

enum class Which { Det, Logdet, Logabs };

const char *name_of(Which w) { return w == Which::Det ? "det" : w == Which::Logdet ? "logdet" : "logabsdet"; }

flx_tensor *det_like(flx_tensor *A, Which w) {
    if (w == Which::Det) return flx_det(A);
    if (w == Which::Logdet) return flx_logdet(A);
    flx_tensor *s = nullptr, *l = nullptr;
    return flx_slogdet(A, &s, &l) == FLX_OK ? l : nullptr;
}

// The gradient of <W, f(A)> with respect to A (W of f's shape: one weight per matrix; NULL: ones).
flx_tensor *grad_with(flx_tensor *A, flx_tensor *W, Which w, bool create_graph = false) {
    GradOn on;
    if (!flx_requires_grad(A)) flx_set_requires_grad(A, true);
    flx_tensor *y = det_like(A, w), *g = nullptr;
    if (!y || flx_grad_of(1, &y, W ? &W : nullptr, 1, &A, create_graph, &g) != FLX_OK) return nullptr;
    return g;
}

// w_b cof(A_b) (det) or w_b A_b^-T (the log forms), per matrix, in float64.
Mat expected_grad(const Mat &a, const Mat &w, int64_t B, int64_t n, Which which) {
    Mat e;
    for (int64_t b = 0; b < B; b++) {
        Mat m = sub(a, (size_t)(b * n * n), (size_t)(n * n)), f;
        if (which == Which::Det) {
            f = ref_cofactor(m, n);
        } else {
            Mat inv;
            ref_det_inv(m, n, &inv);
            f = transpose(inv, n);
        }
        for (double &x : f) x *= w[(size_t)b];
        e.insert(e.end(), f.begin(), f.end());
    }
    return e;
}

// ---- values -----------------------------------------------------------------------------------
TEST_F(DetGrad, ValuesAgainstFloat64ForEverySmallNAndTheFallback) {
    const Shape batches[] = {{}, {5}, {2, 3}, {131}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        const double tol = dt == FLX_F64 ? 1e-11 : 2e-5;
        for (int64_t n = 1; n <= kRegN + 1; n++)
            for (const Shape &bs : batches) {
                const int64_t B = numel_of(bs);
                Mat a = rounded(wellcond(B, n, (uint64_t)(700 + n + B)), dt);
                Mat w = rounded(rand_values((size_t)B, (uint64_t)(800 + n), 0.5, 1.5), dt);
                for (Which which : {Which::Det, Which::Logdet, Which::Logabs}) {
                    SCOPED_TRACE(std::string(name_of(which)) + " " + flx_dtype_name(dt) + " n " +
                                 std::to_string(n) + " batch " + std::to_string(B) + " ndim " +
                                 std::to_string(bs.size() + 2));
                    Mat aw = a;
                    if (which == Which::Logdet) // log det needs det > 0: undo wellcond's negated rows
                        for (int64_t b = 1; b < B; b += 2)
                            for (int64_t j = 0; j < n; j++) aw[(size_t)(b * n * n + j)] *= -1;
                    flx_tensor *A = make(ctx, dt, with_matrix(bs, n), aw), *W = make(ctx, dt, bs, w);
                    flx_tensor *g = grad_with(A, W, which);
                    ASSERT_NE(g, nullptr) << flx_last_error();
                    EXPECT_EQ(shape_of(g), with_matrix(bs, n));
                    EXPECT_EQ(flx_dtype_of(g), dt);
                    EXPECT_TRUE(close(values(g), expected_grad(aw, w, B, n, which), tol, tol));
                }
            }
    }
}

// With no cotangent given, flx_backward seeds ones: the gradient is cof(A) itself.
TEST_F(DetGrad, BackwardOfASumOfDets) {
    const int64_t B = 7, n = 6;
    Mat a = wellcond(B, n, 31);
    flx_tensor *A = make(ctx, FLX_F64, {B, n, n}, a);
    ASSERT_EQ(flx_set_requires_grad(A, true), FLX_OK);
    ASSERT_EQ(flx_backward(flx_sum_all(flx_det(A))), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(A)), expected_grad(a, Mat((size_t)B, 1.0), B, n, Which::Det), 1e-12, 1e-10));
}

// ---- kernels --------------------------------------------------------------------------------------
// Up to n = 8: the forward is one kernel and the backward one more, neither storing factors;
// slogdet is two forward kernels. n = 9 factors once and works on the factors.
TEST_F(DetGrad, ForwardAndBackwardAreOneKernelEachUpToEight) {
    for (int64_t n : {1, 4, 8, 9}) {
        SCOPED_TRACE(n);
        const int64_t B = 6;
        flx_tensor *A = make(ctx, FLX_F64, {B, n, n}, wellcond(B, n, 37));
        flx_tensor *W = rand_tensor(ctx, FLX_F64, {B}, 38);
        ASSERT_EQ(flx_eval(1, &A), FLX_OK);
        ASSERT_EQ(flx_eval(1, &W), FLX_OK);
        ASSERT_EQ(flx_set_requires_grad(A, true), FLX_OK);
        for (Which which : {Which::Det, Which::Logabs}) {
            SCOPED_TRACE(name_of(which));
            flx_tensor *y = det_like(A, which), *g = nullptr;
            ASSERT_NE(y, nullptr) << flx_last_error();
            ASSERT_EQ(flx_grad_of(1, &y, &W, 1, &A, false, &g), FLX_OK) << flx_last_error();
            if (n <= kRegN) {
                EXPECT_EQ(kernels_to_eval(ctx, g), 1u) << "backward alone";
                EXPECT_EQ(kernels_to_eval(ctx, y), 1u) << "forward";
            } else {
                EXPECT_GE(kernels_to_eval(ctx, g), 3u) << "factor, cofactor or inverse, scale";
            }
        }
        flx_tensor *s = nullptr, *l = nullptr;
        ASSERT_EQ(flx_slogdet(A, &s, &l), FLX_OK);
        flx_tensor *both[2] = {s, l};
        ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
        ASSERT_EQ(flx_eval(2, both), FLX_OK);
        flx_ctx_stats st{};
        ASSERT_EQ(flx_ctx_get_stats(ctx, &st), FLX_OK);
        EXPECT_EQ(st.kernels, n <= kRegN ? 2u : 3u) << "slogdet";
    }
}

// ---- singular and nearly singular A ----------------------------------------------------------------
// Small-integer matrices made singular (a zero column gives an exact zero pivot; equal rows may
// leave a pivot of rounding size): the gradient of det must be the adjugate's transpose (finite),
// not det A^-T (NaN), to rounding relative to its largest entry.
Mat singular_case(int64_t n, int kind, uint64_t seed) {
    Mat r = rand_values((size_t)(n * n), seed, -2.0, 2.0);
    for (double &x : r) x = std::round(x);
    for (int64_t i = 0; i < n; i++) r[(size_t)(i * n + i)] += 5; // nonsingular before the damage
    if (kind == 0) // a zero column (a zero pivot wherever it lands)
        for (int64_t i = 0; i < n; i++) r[(size_t)(i * n + (seed % (uint64_t)n))] = 0;
    if (kind == 1 && n >= 2) // two equal rows: rank n - 1
        for (int64_t j = 0; j < n; j++) r[(size_t)((n - 1) * n + j)] = r[(size_t)j];
    if (kind == 2 && n >= 3) // rank n - 2: every cofactor is zero
        for (int64_t j = 0; j < n; j++) r[(size_t)((n - 1) * n + j)] = r[(size_t)((n - 2) * n + j)] = 0;
    if (kind == 3) // zero first column: a zero pivot at the first step
        for (int64_t i = 0; i < n; i++) r[(size_t)(i * n)] = 0;
    return r;
}

TEST_F(DetGrad, GradientAtSingularMatricesIsTheCofactorMatrix) {
    for (int64_t n = 1; n <= kRegN + 1; n++)
        for (int kind = 0; kind < 4; kind++) {
            if ((kind == 1 && n < 2) || (kind == 2 && n < 3)) continue; // no such damage
            SCOPED_TRACE("n " + std::to_string(n) + " kind " + std::to_string(kind));
            // A batch of three: the singular matrix between two nonsingular ones.
            Mat a = singular_case(n, kind, (uint64_t)(40 + n));
            Mat good = wellcond(2, n, (uint64_t)(60 + n));
            Mat all = sub(good, 0, (size_t)(n * n));
            all.insert(all.end(), a.begin(), a.end());
            all.insert(all.end(), good.begin() + n * n, good.end());
            Mat w = {1.5, -2.0, 0.25};
            flx_tensor *A = make(ctx, FLX_F64, {3, n, n}, all), *W = make(ctx, FLX_F64, {3}, w);
            flx_tensor *g = grad_with(A, W, Which::Det);
            ASSERT_NE(g, nullptr) << flx_last_error();
            std::vector<double> got = values(g);
            for (double x : got) EXPECT_TRUE(std::isfinite(x));
            Mat e = expected_grad(all, w, 3, n, Which::Det);
            double scale = 1;
            for (double x : e) scale = std::fmax(scale, std::fabs(x));
            EXPECT_TRUE(close(got, e, 1e-12 * scale, 1e-12));
            EXPECT_NEAR(values(flx_det(A))[1], 0.0, 1e-12 * scale);
        }
}

// Nearly singular (two rows equal but for one entry, off by e): the cofactor matrix stays accurate
// to rounding of its own size (a polynomial in A) at e = 1e-12; A^-T (of size 1 / e) to
// cond * eps at e = 1e-6.
TEST_F(DetGrad, NearlySingularMatrices) {
    for (int64_t n : {2, 5, 8}) {
        SCOPED_TRACE(n);
        for (double e : {1e-12, 1e-6}) {
            Mat a = singular_case(n, 1, (uint64_t)(90 + n));
            a[(size_t)(n * n - 1)] += e;
            flx_tensor *A = make(ctx, FLX_F64, {n, n}, a), *W = make(ctx, FLX_F64, {}, {1.0});
            Which which = e < 1e-9 ? Which::Det : Which::Logabs;
            flx_tensor *g = grad_with(A, W, which);
            ASSERT_NE(g, nullptr) << flx_last_error();
            Mat ref = expected_grad(a, {1.0}, 1, n, which);
            double scale = 0;
            for (double x : ref) scale = std::fmax(scale, std::fabs(x));
            EXPECT_TRUE(close(values(g), ref, (which == Which::Det ? 1e-12 : 1e-8) * scale, 0)) << name_of(which);
        }
    }
}

// ---- derivatives of the derivatives ---------------------------------------------------------------
TEST_F(DetGrad, GradcheckAndJvpThroughTheNodeAndItsRules) {
    std::vector<FnCase> cases;
    for (int64_t n : {1, 2, 5, 8, 9}) {
        flx_tensor *A = make(ctx, FLX_F64, {2, n, n}, wellcond(2, n, (uint64_t)(110 + n)));
        flx_tensor *A1 = make(ctx, FLX_F64, {n, n}, wellcond(1, n, (uint64_t)(120 + n)));
        flx_tensor *W = make(ctx, FLX_F64, {2}, {0.75, -1.25});
        const bool big = n > 4; // keep the finite differences of the largest cases few
        cases.push_back({"det", [](auto in) { return flx_det(in[0]); }, {A}});
        cases.push_back({"logabsdet", [](auto in) { return det_like(in[0], Which::Logabs); }, {A}});
        cases.push_back({"logdet", [](auto in) { return flx_logdet(in[0]); }, {A1}});
        // The gradient itself (the LU_DET_GRAD node) differentiated: its VJP and JVP rules.
        cases.push_back({"grad det", [](auto in) { return grad_with(in[0], nullptr, Which::Det, true); }, {A1}});
        cases.push_back({"grad logabsdet",
                         [](auto in) { return grad_with(in[0], nullptr, Which::Logabs, true); }, {A1}});
        if (big) continue;
        // A cotangent that requires grad: the node's second input.
        cases.push_back({"grad det, cotangent w",
                         [](auto in) { return grad_with(in[0], in[1], Which::Det, true); }, {A, W}});
        cases.push_back({"grad logabsdet, cotangent w",
                         [](auto in) { return grad_with(in[0], in[1], Which::Logabs, true); }, {A, W}});
        // Third order: the gradient of a function of the gradient, differentiated again.
        cases.push_back({"grad of sum sin grad det",
                         [](auto in) -> flx_tensor * {
                             GradOn on;
                             flx_tensor *g = grad_with(in[0], nullptr, Which::Det, true), *h = nullptr;
                             flx_tensor *s = flx_sum_all(flx_sin(g));
                             if (!s || flx_grad_of(1, &s, nullptr, 1, &in[0], true, &h) != FLX_OK) return nullptr;
                             return h;
                         },
                         {A1}});
    }
    check_derivatives(cases, 1e-6, 1e-6, 1e-5);
}

// Hessian-vector products of det at n = 4 and 8, reverse over reverse and forward over reverse,
// against the closed form d cof(A)[V] = tr(A^-1 V) cof(A) - A^-T V^T cof(A) in float64.
TEST_F(DetGrad, HessianVectorProductMatchesClosedForm) {
    for (int64_t n : {4, 8}) {
        SCOPED_TRACE(n);
        Mat a = wellcond(1, n, (uint64_t)(130 + n)), v = rand_values((size_t)(n * n), 131);
        Mat inv;
        double d = ref_det_inv(a, n, &inv);
        Mat c = transpose(inv, n);
        for (double &x : c) x *= d;
        double tr = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < n; k++) tr += inv[(size_t)(i * n + k)] * v[(size_t)(k * n + i)];
        Mat e = matmul(matmul(transpose(inv, n), transpose(v, n), n, n, n), c, n, n, n);
        for (size_t q = 0; q < e.size(); q++) e[q] = tr * c[q] - e[q];
        flx_tensor *A = make(ctx, FLX_F64, {n, n}, a), *V = make(ctx, FLX_F64, {n, n}, v);
        flx_tensor *g = grad_with(A, nullptr, Which::Det, true), *h = nullptr, *hj = nullptr;
        ASSERT_NE(g, nullptr) << flx_last_error();
        flx_tensor *gv = flx_sum_all(flx_mul(g, V));
        ASSERT_EQ(flx_grad_of(1, &gv, nullptr, 1, &A, false, &h), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_jvp(1, &A, &V, 1, &g, &hj), FLX_OK) << flx_last_error();
        double scale = 0;
        for (double x : e) scale = std::fmax(scale, std::fabs(x));
        // The Hessian of det is symmetric: <H V, .> from either side is d cof[V].
        EXPECT_TRUE(close(values(h), e, 1e-11 * scale, 1e-10));
        EXPECT_TRUE(close(values(hj), e, 1e-11 * scale, 1e-10));
    }
}

// ---- shapes -----------------------------------------------------------------------------------------
TEST_F(DetGrad, EmptyBatchesAndEmptyMatrices) {
    for (Shape s : {Shape{0, 3, 3}, Shape{2, 0, 0}, Shape{0, 0}}) {
        flx_tensor *A = flx_zeros(ctx, FLX_F64, (int32_t)s.size(), s.data());
        Shape bs(s.begin(), s.end() - 2);
        flx_tensor *W = flx_ones(ctx, FLX_F64, (int32_t)bs.size(), bs.data());
        for (Which which : {Which::Det, Which::Logabs}) {
            flx_tensor *g = grad_with(A, W, which);
            ASSERT_NE(g, nullptr) << flx_last_error();
            EXPECT_EQ(shape_of(g), s);
            EXPECT_EQ(values(g).size(), 0u);
        }
    }
}

}  // namespace
