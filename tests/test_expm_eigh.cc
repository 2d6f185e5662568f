// test_expm_eigh.cc — flx_expm and flx_eigh on the CPU backend against float64
// references written here: expm by a scaled Taylor series with squaring and by closed forms
// (diagonal, nilpotent, rotation generators, the rank-one xx^T); eigh on matrices built as
// Q diag(d) Q^T with Householder Q (known spectrum) and by the identities S V = V diag(w),
// V^T V = I. VJP by gradcheck, JVP and the dot-product test, second derivatives through the
// rules; bad inputs; GPU against CPU (skips without a GPU).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "testing.h"

using namespace flxt;

namespace {

using ExpmTest = CpuTest;
using EighTest = CpuTest;


using Mat = std::vector<double>;  // row-major n x n

Mat mm(const Mat &a, const Mat &b, int64_t n) {
    Mat c((size_t)(n * n), 0.0);
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < n; k++)
            for (int64_t j = 0; j < n; j++) c[(size_t)(i * n + j)] += a[(size_t)(i * n + k)] * b[(size_t)(k * n + j)];
    return c;
}

// exp(A) in double: scale to ||A||_1 <= 1/4, Taylor series to 40 terms, square back.
Mat ref_expm(Mat a, int64_t n) {
    double nrm = 0;
    for (int64_t j = 0; j < n; j++) {
        double c = 0;
        for (int64_t i = 0; i < n; i++) c += std::fabs(a[(size_t)(i * n + j)]);
        nrm = std::max(nrm, c);
    }
    int s = 0;
    while (nrm > 0.25) {
        nrm /= 2;
        s++;
    }
    for (double &x : a) x = std::ldexp(x, -s);
    Mat r((size_t)(n * n), 0.0), term((size_t)(n * n), 0.0);
    for (int64_t i = 0; i < n; i++) r[(size_t)(i * n + i)] = term[(size_t)(i * n + i)] = 1.0;
    for (int k = 1; k <= 40; k++) {
        term = mm(term, a, n);
        for (double &x : term) x /= k;
        for (size_t i = 0; i < r.size(); i++) r[i] += term[i];
    }
    for (int i = 0; i < s; i++) r = mm(r, r, n);
    return r;
}

Mat batched_ref_expm(const Mat &a, int64_t batch, int64_t n) {
    Mat out;
    for (int64_t b = 0; b < batch; b++) {
        Mat m(a.begin() + b * n * n, a.begin() + (b + 1) * n * n);
        Mat e = ref_expm(m, n);
        out.insert(out.end(), e.begin(), e.end());
    }
    return out;
}

double max_abs(const Mat &a) {
    double m = 0;
    for (double x : a) m = std::max(m, std::fabs(x));
    return m;
}

// Q diag(d) Q^T with Q = I - 2 u u^T / u^T u (orthogonal, symmetric).
Mat qdq(const std::vector<double> &d, uint64_t seed, Mat *Q = nullptr) {
    int64_t n = (int64_t)d.size();
    std::vector<double> u = rand_values((size_t)n, seed);
    double uu = 0;
    for (double x : u) uu += x * x;
    Mat q((size_t)(n * n));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) q[(size_t)(i * n + j)] = (i == j) - 2 * u[(size_t)i] * u[(size_t)j] / uu;
    Mat a((size_t)(n * n), 0.0);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            for (int64_t k = 0; k < n; k++) a[(size_t)(i * n + j)] += q[(size_t)(i * n + k)] * d[(size_t)k] * q[(size_t)(j * n + k)];
    if (Q) *Q = q;
    return a;
}

// Random matrix scaled to have entries in [-scale, scale).
// The number of n x n matrices in a (..., n, n) shape.
int64_t batch_of(const Shape &s) {
    int64_t batch = 1;
    for (size_t i = 0; i + 2 < s.size(); i++) batch *= s[i];
    return batch;
}

std::string stack_name(flx_dtype dt, int64_t batch, int64_t n) {
    return std::string(flx_dtype_name(dt)) + " " + std::to_string(batch) + "x" + std::to_string(n);
}

Mat randm(int64_t count, uint64_t seed, double scale) {
    Mat r = rand_values((size_t)count, seed);
    for (double &x : r) x *= scale;
    return r;
}

}  // namespace

// ---- expm values -----------------------------------------------------------------------------
TEST_F(ExpmTest, MatchesTaylorReference) {
    struct Case {
        Shape shape;
        double scale;
    };
    const Case cases[] = {{{1, 1}, 0.5},  {{2, 2}, 0.01},   {{3, 3}, 0.3},  {{3, 3}, 2.0},
                          {{7, 7}, 1.0},  {{7, 7}, 6.0},    {{32, 32}, 0.2}, {{32, 32}, 1.0},
                          {{5, 4, 4}, 1.5}, {{2, 3, 3, 3}, 0.7}, {{4, 2, 2}, 20.0}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        for (const Case &c : cases) {
            int64_t n = c.shape.back(), batch = 1;
            for (size_t i = 0; i + 2 < c.shape.size(); i++) batch *= c.shape[i];
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " n " + std::to_string(n) + " batch " +
                         std::to_string(batch) + " scale " + std::to_string(c.scale));
            Mat a = randm(batch * n * n, (uint64_t)(100 + n + batch), c.scale / std::sqrt((double)n));
            Mat e = batched_ref_expm(a, batch, n);
            flx_tensor *y = flx_expm(make(ctx, dt, c.shape, a));
            ASSERT_NE(y, nullptr) << flx_last_error();
            EXPECT_EQ(shape_of(y), c.shape);
            double tol = dt == FLX_F64 ? 1e-12 : 2e-5;
            EXPECT_TRUE(close(values(y), e, tol * max_abs(e), tol));
        }
    }
}

TEST_F(ExpmTest, ClosedForms) {
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        double tol = dt == FLX_F64 ? 1e-13 : 1e-5;
        // diagonal
        Mat d = {0.5, 0, 0, 0, -2.0, 0, 0, 0, 3.0};
        EXPECT_TRUE(close(values(flx_expm(make(ctx, dt, {3, 3}, d))),
                          {std::exp(0.5), 0, 0, 0, std::exp(-2.0), 0, 0, 0, std::exp(3.0)}, tol * 20, tol));
        // nilpotent: exp(N) = I + N + N^2/2
        Mat N = {0, 2, -3, 0, 0, 4, 0, 0, 0};
        EXPECT_TRUE(close(values(flx_expm(make(ctx, dt, {3, 3}, N))), {1, 2, -3 + 4.0, 0, 1, 4, 0, 0, 1},
                          tol * 10, tol));
        // rotation generators, one per batch entry, several angles (including many turns)
        std::vector<double> ts = {0.1, 1.0, -2.5, 10.0, 31.0};
        Mat g, r;
        for (double t : ts) {
            Mat gi = {0, -t, t, 0}, ri = {std::cos(t), -std::sin(t), std::sin(t), std::cos(t)};
            g.insert(g.end(), gi.begin(), gi.end());
            r.insert(r.end(), ri.begin(), ri.end());
        }
        EXPECT_TRUE(close(values(flx_expm(make(ctx, dt, {(int64_t)ts.size(), 2, 2}, g))), r,
                          dt == FLX_F64 ? 1e-12 : 2e-4, 0));
        // 3-d rotation about a unit axis: Rodrigues
        double ax[3] = {1 / std::sqrt(3.0), 1 / std::sqrt(3.0), -1 / std::sqrt(3.0)}, th = 1.3;
        Mat K = {0, -ax[2], ax[1], ax[2], 0, -ax[0], -ax[1], ax[0], 0};
        Mat K2 = mm(K, K, 3), R(9), thK(9);
        for (int i = 0; i < 9; i++) {
            R[(size_t)i] = (i % 4 == 0) + std::sin(th) * K[(size_t)i] + (1 - std::cos(th)) * K2[(size_t)i];
            thK[(size_t)i] = th * K[(size_t)i];
        }
        EXPECT_TRUE(close(values(flx_expm(make(ctx, dt, {3, 3}, thK))), R, tol * 10, 0));
        // zero matrix -> I; 1x1 -> exp
        EXPECT_TRUE(close(values(flx_expm(flx_zeros(ctx, dt, 2, std::vector<int64_t>{4, 4}.data()))),
                          values(flx_eye(ctx, FLX_F64, 4, 4)), 0, 0));
        EXPECT_TRUE(close(values(flx_expm(make(ctx, dt, {1, 1}, {-7.5}))), {std::exp(-7.5)}, 0, tol));
    }
}

TEST_F(ExpmTest, EmptyAndBadInputs) {
    flx_tensor *e = flx_expm(flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{0, 0}.data()));
    ASSERT_NE(e, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(e), (Shape{0, 0}));
    flx_tensor *eb = flx_expm(flx_zeros(ctx, FLX_F32, 3, std::vector<int64_t>{0, 3, 3}.data()));
    ASSERT_NE(eb, nullptr) << flx_last_error();
    EXPECT_EQ(values(eb).size(), 0u);
    EXPECT_TRUE(fails_with(flx_expm(nullptr), FLX_ERR_INVALID_ARGUMENT, "flx_expm"));
    EXPECT_TRUE(fails_with(flx_expm(flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{2, 3}.data())),
                           FLX_ERR_SHAPE, "square"));
    EXPECT_TRUE(fails_with(flx_expm(flx_zeros(ctx, FLX_F64, 1, std::vector<int64_t>{3}.data())),
                           FLX_ERR_SHAPE, "rank >= 2"));
    EXPECT_TRUE(fails_with(flx_expm(flx_zeros(ctx, FLX_I32, 2, std::vector<int64_t>{2, 2}.data())),
                           FLX_ERR_DTYPE, "flx_expm"));
    // non-finite input: NaN values, no abort
    flx_tensor *y = flx_expm(make(ctx, FLX_F64, {2, 2}, {NAN, 0, 0, 1}));
    ASSERT_NE(y, nullptr) << flx_last_error();
    std::vector<double> v = values(y);
    EXPECT_TRUE(std::isnan(v[0]));
    flx_clear_error();
}

// ---- expm derivatives -------------------------------------------------------------------------
TEST_F(ExpmTest, Gradients) {
    flx_tensor *A = make(ctx, FLX_F64, {3, 3}, randm(9, 1, 0.4));
    flx_tensor *Abig = make(ctx, FLX_F64, {3, 3}, randm(9, 2, 3.0));  // m = 13 with squarings
    flx_tensor *Ab = make(ctx, FLX_F64, {2, 4, 4}, randm(32, 3, 0.6));
    flx_tensor *A1 = make(ctx, FLX_F64, {1, 1}, {0.7});
    flx_tensor *C = make(ctx, FLX_F64, {3, 3}, randm(9, 4, 1.0));
    std::vector<FnCase> cases = {
        {"expm", [](auto in) { return flx_expm(in[0]); }, {A}},
        {"expm large norm", [](auto in) { return flx_expm(in[0]); }, {Abig}},
        {"expm batched", [](auto in) { return flx_expm(in[0]); }, {Ab}},
        {"expm 1x1", [](auto in) { return flx_expm(in[0]); }, {A1}},
        {"sin(expm(A) C)", [](auto in) { return flx_sin(flx_matmul(flx_expm(in[0]), in[1])); }, {A, C}},
    };
    check_derivatives(cases, 1e-6, 1e-6, 1e-5);
}

TEST_F(ExpmTest, SecondDerivativesThroughRules) {
    flx_tensor *A = make(ctx, FLX_F64, {3, 3}, randm(9, 5, 0.8));
    std::vector<Fn> fs = {
        [](auto in) -> flx_tensor * {  // reverse over reverse
            GradOn on;
            need_grad(in);
            flx_tensor *y = flx_sum_all(flx_sin(flx_expm(in[0]))), *g = nullptr;
            if (flx_grad_of(1, &y, nullptr, 1, &in[0], true, &g) != FLX_OK) return nullptr;
            return g;
        },
        [c = ctx](auto in) -> flx_tensor * {  // reverse of forward
            GradOn on;
            flx_tensor *y = flx_expm(in[0]), *jt = nullptr;
            flx_tensor *t = flx_sin(flx_arange(c, FLX_F64, 0.0, 9.0, 1.0));
            t = flx_reshape(t, 2, std::vector<int64_t>{3, 3}.data());
            if (flx_jvp(1, &in[0], &t, 1, &y, &jt) != FLX_OK) return nullptr;
            return jt;
        },
    };
    for (size_t i = 0; i < fs.size(); i++) {
        SCOPED_TRACE(i);
        EXPECT_EQ(gradcheck(fs[i], {A}, 1e-6, 1e-6, 1e-5), FLX_OK) << flx_last_error();
    }
    EXPECT_TRUE(jvp_check(fs[0], {A}, 1e-6, 1e-6, 1e-5));
}

TEST_F(ExpmTest, RankOneClosedForm) {
    // f(x) = x^T exp(x x^T) x = s e^s (s = |x|^2), grad = 2 (1 + s) e^s x.
    std::vector<double> xv = {0.3, -0.5, 0.8, 0.1};
    flx_tensor *x = make(ctx, FLX_F64, {4}, xv);
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    flx_tensor *X = flx_outer(x, x);
    flx_tensor *f = flx_dot(x, flx_matmul(flx_expm(X), x));
    flx_tensor *g = nullptr;
    ASSERT_EQ(flx_grad_of(1, &f, nullptr, 1, &x, false, &g), FLX_OK) << flx_last_error();
    double s = 0;
    for (double v : xv) s += v * v;
    std::vector<double> e;
    for (double v : xv) e.push_back(2 * (1 + s) * std::exp(s) * v);
    EXPECT_TRUE(close(values(f), {s * std::exp(s)}, 1e-13, 1e-13));
    EXPECT_TRUE(close(values(g), e, 1e-13, 1e-12));
}

// ---- eigh values ------------------------------------------------------------------------------
namespace {
// Checks S V = V diag(w), V^T V = I, ascending w, against a known spectrum when given.
void check_eigh(flx_tensor *w, flx_tensor *v, const Mat &S, int64_t batch, int64_t n,
                const std::vector<double> *spec, double tol) {
    std::vector<double> wv = values(w), vv = values(v);
    ASSERT_EQ(wv.size(), (size_t)(batch * n));
    ASSERT_EQ(vv.size(), (size_t)(batch * n * n));
    for (int64_t b = 0; b < batch; b++) {
        const double *V = vv.data() + b * n * n, *W = wv.data() + b * n, *A = S.data() + b * n * n;
        double scale = 1;
        for (int64_t i = 0; i < n; i++) scale = std::max(scale, std::fabs(W[i]));
        for (int64_t j = 0; j + 1 < n; j++) EXPECT_LE(W[j], W[j + 1]);
        double res = 0, orth = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) {
                double av = 0, vtv = 0;
                for (int64_t k = 0; k < n; k++) {
                    av += A[i * n + k] * V[k * n + j];
                    vtv += V[k * n + i] * V[k * n + j];
                }
                res = std::max(res, std::fabs(av - V[i * n + j] * W[j]));
                orth = std::max(orth, std::fabs(vtv - (i == j)));
            }
        EXPECT_LE(res, tol * scale * n) << "batch " << b;
        EXPECT_LE(orth, tol * n) << "batch " << b;
        for (int64_t j = 0; j < n; j++) {  // sign convention: largest-magnitude entry positive
            int64_t best = 0;
            for (int64_t i = 0; i < n; i++)
                if (std::fabs(V[i * n + j]) > std::fabs(V[best * n + j])) best = i;
            EXPECT_GT(V[best * n + j], 0.0);
        }
        if (spec) {
            std::vector<double> sd(spec->begin() + b * n, spec->begin() + (b + 1) * n);
            std::sort(sd.begin(), sd.end());
            for (int64_t j = 0; j < n; j++) EXPECT_NEAR(W[j], sd[(size_t)j], tol * scale * 4);
        }
    }
}
}  // namespace

TEST_F(EighTest, KnownSpectrum) {
    const Shape shapes[] = {{1, 1}, {2, 2}, {3, 3}, {7, 7}, {32, 32}, {6, 4, 4}, {2, 3, 5, 5}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        double tol = dt == FLX_F64 ? 1e-13 : 3e-6;
        for (const Shape &s : shapes) {
            const int64_t n = s.back(), batch = batch_of(s);
            SCOPED_TRACE(stack_name(dt, batch, n));
            Mat S;
            std::vector<double> spec;
            for (int64_t b = 0; b < batch; b++) {
                std::vector<double> d = rand_values((size_t)n, (uint64_t)(50 + b + n), -3.0, 3.0);
                Mat a = qdq(d, (uint64_t)(70 + b + n));
                if (dt == FLX_F32)  // the matrix the kernel sees
                    for (double &x : a) x = (double)(float)x;
                S.insert(S.end(), a.begin(), a.end());
                spec.insert(spec.end(), d.begin(), d.end());
            }
            flx_tensor *w = nullptr, *v = nullptr;
            ASSERT_EQ(flx_eigh(make(ctx, dt, s, S), &w, &v), FLX_OK) << flx_last_error();
            Shape ws(s.begin(), s.end() - 1);
            EXPECT_EQ(shape_of(w), ws);
            EXPECT_EQ(shape_of(v), s);
            check_eigh(w, v, S, batch, n, &spec, tol);
        }
    }
}

TEST_F(EighTest, SymmetricPartAndSpecialCases) {
    // Non-symmetric input: eigh of (A + A^T)/2.
    int64_t n = 5;
    Mat a = rand_values((size_t)(n * n), 91), S((size_t)(n * n));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) S[(size_t)(i * n + j)] = 0.5 * (a[(size_t)(i * n + j)] + a[(size_t)(j * n + i)]);
    flx_tensor *w = nullptr, *v = nullptr;
    ASSERT_EQ(flx_eigh(make(ctx, FLX_F64, {n, n}, a), &w, &v), FLX_OK);
    check_eigh(w, v, S, 1, n, nullptr, 1e-13);
    // diagonal, repeated eigenvalues (values still fine), w only / v only
    Mat d = {2, 0, 0, 0, -1, 0, 0, 0, 2};
    flx_tensor *w2 = nullptr;
    ASSERT_EQ(flx_eigh(make(ctx, FLX_F64, {3, 3}, d), &w2, nullptr), FLX_OK);
    EXPECT_TRUE(close(values(w2), {-1, 2, 2}, 1e-15, 0));
    flx_tensor *v2 = nullptr;
    ASSERT_EQ(flx_eigh(make(ctx, FLX_F64, {3, 3}, d), nullptr, &v2), FLX_OK);
    check_eigh(w2, v2, d, 1, 3, nullptr, 1e-14);
    // 2x2 closed form: [[a, b], [b, c]]
    double aa = 1.5, bb = -0.7, cc = -0.2, m = (aa + cc) / 2, r = std::hypot((aa - cc) / 2, bb);
    flx_tensor *w3 = nullptr;
    ASSERT_EQ(flx_eigh(make(ctx, FLX_F64, {2, 2}, {aa, bb, bb, cc}), &w3, nullptr), FLX_OK);
    EXPECT_TRUE(close(values(w3), {m - r, m + r}, 1e-15, 1e-15));
    // empty
    flx_tensor *we = nullptr, *ve = nullptr;
    ASSERT_EQ(flx_eigh(flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{0, 0}.data()), &we, &ve), FLX_OK);
    EXPECT_EQ(shape_of(we), (Shape{0}));
    EXPECT_EQ(shape_of(ve), (Shape{0, 0}));
    ASSERT_EQ(flx_eigh(flx_zeros(ctx, FLX_F32, 3, std::vector<int64_t>{0, 3, 3}.data()), &we, &ve), FLX_OK);
    EXPECT_EQ(shape_of(we), (Shape{0, 3}));
}

TEST_F(EighTest, BadInputs) {
    flx_tensor *w = nullptr, *v = nullptr;
    EXPECT_EQ(flx_eigh(nullptr, &w, &v), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(w, nullptr);
    flx_clear_error();
    flx_tensor *A = flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{3, 3}.data());
    EXPECT_EQ(flx_eigh(A, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(flx_last_error()).find("both NULL"), std::string::npos);
    flx_clear_error();
    EXPECT_EQ(flx_eigh(flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{3, 2}.data()), &w, &v), FLX_ERR_SHAPE);
    EXPECT_NE(std::string(flx_last_error()).find("square"), std::string::npos);
    flx_clear_error();
    EXPECT_EQ(flx_eigh(flx_zeros(ctx, FLX_F64, 1, std::vector<int64_t>{3}.data()), &w, &v), FLX_ERR_SHAPE);
    flx_clear_error();
    EXPECT_EQ(flx_eigh(flx_zeros(ctx, FLX_I64, 2, std::vector<int64_t>{3, 3}.data()), &w, &v), FLX_ERR_DTYPE);
    EXPECT_NE(std::string(flx_last_error()).find("flx_eigh"), std::string::npos);
    flx_clear_error();
    // non-finite input: reported at the synchronisation point, no abort
    ASSERT_EQ(flx_eigh(make(ctx, FLX_F64, {2, 2}, {1, NAN, NAN, 1}), &w, &v), FLX_OK);
    EXPECT_EQ(flx_eval(1, &w), FLX_OK);
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_ERR_NUMERIC);
    EXPECT_NE(std::string(flx_last_error()).find("flx_eigh"), std::string::npos);
    flx_clear_error();
}

// ---- eigh derivatives -------------------------------------------------------------------------
namespace {
flx_tensor *eig_w(flx_tensor *a) {
    flx_tensor *w = nullptr;
    return flx_eigh(a, &w, nullptr) == FLX_OK ? w : nullptr;
}
flx_tensor *eig_v(flx_tensor *a) {
    flx_tensor *v = nullptr;
    return flx_eigh(a, nullptr, &v) == FLX_OK ? v : nullptr;
}
// V diag(f(w)) V^T with f = sin (sign-invariant in V)
flx_tensor *eig_fun(flx_tensor *a) {
    flx_tensor *w = nullptr, *v = nullptr;
    if (flx_eigh(a, &w, &v) != FLX_OK) return nullptr;
    return flx_matmul(flx_mul(v, flx_unsqueeze(flx_sin(w), -2)), flx_transpose(v, -2, -1));
}
flx_tensor *symm(flx_tensor *a) { return flx_mul_scalar(flx_add(a, flx_transpose(a, -2, -1)), 0.5); }
}  // namespace

TEST_F(EighTest, Gradients) {
    // Random (non-symmetric) inputs: the convention differentiates A -> eigh((A + A^T)/2).
    flx_tensor *A = make(ctx, FLX_F64, {4, 4}, randm(16, 21, 1.0));
    flx_tensor *Ab = make(ctx, FLX_F64, {3, 3, 3}, randm(27, 22, 1.0));
    flx_tensor *C = make(ctx, FLX_F64, {4, 4}, randm(16, 23, 1.0));
    std::vector<FnCase> cases = {
        {"sum w^2", [](auto in) { return flx_sum_all(flx_square(eig_w(in[0]))); }, {A}},
        {"w", [](auto in) { return eig_w(in[0]); }, {A}},
        {"w batched", [](auto in) { return eig_w(in[0]); }, {Ab}},
        {"w of explicit symmetric part", [](auto in) { return eig_w(symm(in[0])); }, {A}},
        {"V diag(sin w) V^T", [](auto in) { return eig_fun(in[0]); }, {A}},
        {"V diag(sin w) V^T batched", [](auto in) { return eig_fun(symm(in[0])); }, {Ab}},
        {"<V o V, C>", [](auto in) { flx_tensor *v = eig_v(in[0]); return flx_sum_all(flx_mul(flx_mul(v, v), in[1])); }, {A, C}},
        {"V (sign convention)", [](auto in) { return eig_v(in[0]); }, {A}},
    };
    check_derivatives(cases, 1e-6, 1e-6, 1e-5);
}

TEST_F(EighTest, GradientClosedFormAndSecondOrder) {
    // d tr(f(S)) = f'(S): for f = exp, grad of sum(exp(w)) is V diag(exp w) V^T = expm(S).
    int64_t n = 4;
    Mat s = qdq({-1.0, 0.2, 0.9, 1.7}, 5);
    flx_tensor *S = make(ctx, FLX_F64, {n, n}, s);
    ASSERT_EQ(flx_set_requires_grad(S, true), FLX_OK);
    flx_tensor *y = flx_sum_all(flx_exp(eig_w(S))), *g = nullptr;
    ASSERT_EQ(flx_grad_of(1, &y, nullptr, 1, &S, false, &g), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(g), ref_expm(s, n), 1e-12, 1e-12));
    // second order through the rules
    flx_tensor *A = make(ctx, FLX_F64, {3, 3}, randm(9, 31, 1.0));
    Fn f = [](auto in) -> flx_tensor * {
        GradOn on;
        need_grad(in);
        flx_tensor *l = flx_sum_all(flx_sin(eig_fun(in[0]))), *gg = nullptr;
        if (flx_grad_of(1, &l, nullptr, 1, &in[0], true, &gg) != FLX_OK) return nullptr;
        return gg;
    };
    EXPECT_EQ(gradcheck(f, {A}, 1e-6, 1e-6, 1e-5), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(f, {A}, 1e-6, 1e-6, 1e-5));
}

// The evaluated gradient of sum(sin(f(X))) at X, a copy of A on ctx; *backward_syncs (if given):
// the host waits of the backward pass alone. NULL on error.
flx_tensor *grad_sum_sin(flx_ctx *ctx, flx_tensor *A, flx_tensor *(*f)(flx_tensor *), uint64_t *backward_syncs) {
    flx_tensor *X = flx_to_ctx(A, ctx), *g = nullptr;
    if (!X || flx_set_requires_grad(X, true) != FLX_OK) return nullptr;
    flx_tensor *l = flx_sum_all(flx_sin(f(X)));
    flx_ctx_stats st0{}, st1{};
    if (!l || flx_eval(1, &l) != FLX_OK || flx_ctx_get_stats(ctx, &st0) != FLX_OK) return nullptr;
    if (flx_grad_of(1, &l, nullptr, 1, &X, false, &g) != FLX_OK || flx_eval(1, &g) != FLX_OK) return nullptr;
    if (flx_ctx_get_stats(ctx, &st1) != FLX_OK) return nullptr;
    if (backward_syncs) *backward_syncs = st1.syncs - st0.syncs;
    return g;
}

// ---- GPU against CPU ----------------------------------------------------------------------------
using ExpmEighCuda = CudaCpuTest;

TEST_F(ExpmEighCuda, MatchesCpu) {
    const Shape shapes[] = {{1, 1}, {2, 2}, {3, 3}, {7, 7}, {32, 32}, {33, 33}, {100, 100},
                            {1000, 4, 4}, {5, 40, 40}, {0, 3, 3}};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        double tol = dt == FLX_F64 ? 1e-9 : 2e-3;
        for (const Shape &s : shapes) {
            const int64_t n = s.back(), batch = batch_of(s);
            SCOPED_TRACE(stack_name(dt, batch, n));
            Mat a = randm(batch * n * n, (uint64_t)(5 + n), 1.0 / std::sqrt((double)std::max<int64_t>(n, 1)));
            flx_tensor *Ac = make(cpu, dt, s, a), *Ag = flx_to_ctx(Ac, gpu);
            flx_tensor *ec = flx_expm(Ac), *eg = flx_expm(Ag);
            ASSERT_TRUE(ec && eg) << flx_last_error();
            EXPECT_TRUE(close(values(eg), values(ec), tol, tol));
            flx_tensor *fc = eig_fun(Ac), *fg = eig_fun(Ag);  // sign-free comparison
            ASSERT_TRUE(fc && fg) << flx_last_error();
            EXPECT_TRUE(close(values(fg), values(fc), tol, tol));
            flx_tensor *wc = eig_w(Ac), *wg = eig_w(Ag);
            EXPECT_TRUE(close(values(wg), values(wc), tol, tol));
            // gradients on the device, against the CPU's; the rules of eigh and expm reuse the
            // forward's results, so the backward pass makes no host read
            flx_tensor *(*const fns[])(flx_tensor *) = {eig_fun, flx_expm};
            for (auto f : fns) {
                uint64_t syncs = 1;
                flx_tensor *gg = grad_sum_sin(gpu, Ac, f, &syncs), *gc = grad_sum_sin(cpu, Ac, f, nullptr);
                ASSERT_TRUE(gg && gc) << flx_last_error();
                EXPECT_EQ(syncs, 0u);
                EXPECT_TRUE(close(values(gg), values(gc), tol * 10, tol * 10));
            }
        }
    }
}

// The GPU path flags non-finite input like the CPU reference: NaN outputs and FLX_ERR_NUMERIC at
// the next synchronisation point (both solver paths: batched Jacobi and per-matrix syevd).
TEST_F(ExpmEighCuda, NonFiniteInputIsReported) {
    for (int64_t batch : {1, 3}) {
        std::vector<double> a(batch * 4, 0.0);
        for (int64_t b = 0; b < batch; b++) a[b * 4] = a[b * 4 + 3] = 1.0;
        a[(batch - 1) * 4 + 1] = a[(batch - 1) * 4 + 2] = NAN;  // the last matrix only
        flx_tensor *w = nullptr, *v = nullptr;
        ASSERT_EQ(flx_eigh(make(gpu, FLX_F64, {batch, 2, 2}, a), &w, &v), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_eval(1, &w), FLX_OK);
        EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_ERR_NUMERIC) << "batch " << batch;
        flx_clear_error();
        std::vector<double> wv = values(w);
        EXPECT_TRUE(std::isnan(wv[(batch - 1) * 2]) && std::isnan(wv[(batch - 1) * 2 + 1]));
        if (batch > 1) EXPECT_TRUE(close({wv[0], wv[1]}, {1.0, 1.0}, 1e-12, 1e-12));
    }
}
