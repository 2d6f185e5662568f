// test_linalg.cc — matmul (NumPy semantics, batch broadcasting, vector cases), dot, outer,
// trace, diag and diagonal on the CPU backend: values against plain float64 loops, reverse and
// forward derivatives, second derivatives, and bad input.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "testing.h"

using namespace flxt;

namespace {

using LinalgTest = CpuTest;

// NumPy matmul in float64 loops. Returns the values; *out gets the result shape.
std::vector<double> ref_matmul(const std::vector<double> &a, Shape as, const std::vector<double> &b,
                               Shape bs, Shape *out) {
    bool va = as.size() == 1, vb = bs.size() == 1;
    if (va) as = {1, as[0]};
    if (vb) bs = {bs[0], 1};
    int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
    EXPECT_EQ(k, bs[bs.size() - 2]);
    Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
    size_t nb = std::max(ab.size(), bb.size());
    while (ab.size() < nb) ab.insert(ab.begin(), 1);
    while (bb.size() < nb) bb.insert(bb.begin(), 1);
    Shape ob(nb);
    for (size_t d = 0; d < nb; d++) ob[d] = ab[d] == 1 ? bb[d] : ab[d];
    int64_t nbatch = numel_of(ob);
    std::vector<double> c((size_t)(nbatch * m * n), 0.0);
    for (int64_t bi = 0; bi < nbatch; bi++) {
        // Unravel bi over ob, then ravel over ab / bb with broadcasting.
        int64_t rem = bi, ia = 0, ib = 0, sa = 1, sb = 1;
        for (size_t d = nb; d-- > 0;) {
            int64_t idx = rem % ob[d];
            rem /= ob[d];
            ia += (ab[d] == 1 ? 0 : idx) * sa;
            ib += (bb[d] == 1 ? 0 : idx) * sb;
            sa *= ab[d];
            sb *= bb[d];
        }
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t p = 0; p < k; p++)
                    s += a[(size_t)(ia * m * k + i * k + p)] * b[(size_t)(ib * k * n + p * n + j)];
                c[(size_t)(bi * m * n + i * n + j)] = s;
            }
    }
    Shape os = ob;
    if (!va) os.push_back(m);
    if (!vb) os.push_back(n);
    *out = os;
    return c;
}

struct MatmulCase {
    Shape a, b;
};

std::vector<MatmulCase> matmul_cases() {
    return {
        {{3, 4}, {4, 5}},             // plain 2-d
        {{1, 1}, {1, 1}},             // 1x1
        {{2, 1, 3, 4}, {5, 4, 2}},    // batch broadcast (2,1) x (5) -> (2,5)
        {{2, 3, 4}, {2, 4, 5}},       // equal batches
        {{1, 3, 4}, {6, 4, 2}},       // a's single matrix shared
        {{6, 3, 4}, {4, 2}},          // b's single matrix shared
        {{3, 1, 2, 4}, {1, 5, 4, 3}}, // both broadcast: materialised
        {{4}, {4, 3}},                // 1-d left: row vector
        {{2, 3}, {3}},                // 1-d right: column vector
        {{4}, {4}},                   // vector . vector -> 0-d
        {{2, 3, 4}, {4}},             // batched matrix @ vector
        {{4}, {2, 4, 3}},             // vector @ batched matrix
        {{3, 0}, {0, 2}},             // k = 0: zeros
        {{0}, {0}},                   // empty dot: 0
        {{0, 3, 4}, {4, 2}},          // empty batch
        {{2, 0, 4}, {4, 3}},          // m = 0
    };
}

std::string shape_str(const Shape &s) {
    std::string r = "(";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + ")";
}

TEST_F(LinalgTest, MatmulValuesMatchLoops) {
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        uint64_t seed = 1;
        for (const MatmulCase &c : matmul_cases()) {
            SCOPED_TRACE(shape_str(c.a) + " @ " + shape_str(c.b) + " " + flx_dtype_name(dt));
            std::vector<double> av = rand_values((size_t)numel_of(c.a), seed++);
            std::vector<double> bv = rand_values((size_t)numel_of(c.b), seed++);
            if (dt == FLX_F32) {  // compare against the same rounded inputs
                for (double &x : av) x = (float)x;
                for (double &x : bv) x = (float)x;
            }
            Shape os;
            std::vector<double> want = ref_matmul(av, c.a, bv, c.b, &os);
            flx_tensor *r = flx_matmul(make(ctx, dt, c.a, av), make(ctx, dt, c.b, bv));
            ASSERT_NE(r, nullptr) << flx_last_error();
            EXPECT_EQ(shape_of(r), os);
            EXPECT_EQ(flx_dtype_of(r), dt);
            double tol = dt == FLX_F64 ? 1e-12 : 1e-5;
            EXPECT_TRUE(close(values(r), want, tol, tol));
        }
    }
}

TEST_F(LinalgTest, MatmulKZeroGivesZeros) {
    Shape a{2, 3, 0}, b{0, 4};
    flx_tensor *r = flx_matmul(make(ctx, FLX_F32, a, {}), make(ctx, FLX_F32, b, {}));
    ASSERT_NE(r, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(r), (Shape{2, 3, 4}));
    EXPECT_TRUE(close(values(r), std::vector<double>(24, 0.0)));
}

TEST_F(LinalgTest, MatmulOneByOne) {
    flx_tensor *r = flx_matmul(make(ctx, FLX_F64, {1, 1}, {3}), make(ctx, FLX_F64, {1, 1}, {-2.5}));
    ASSERT_NE(r, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(r), (Shape{1, 1}));
    EXPECT_TRUE(close(values(r), {-7.5}));
}

TEST_F(LinalgTest, DotOuterTraceValues) {
    flx_tensor *a = make(ctx, FLX_F64, {3}, {1, 2, 3});
    flx_tensor *b = make(ctx, FLX_F64, {3}, {4, -5, 6});
    flx_tensor *d = flx_dot(a, b);
    ASSERT_NE(d, nullptr) << flx_last_error();
    EXPECT_EQ(flx_ndim(d), 0);
    EXPECT_TRUE(close(values(d), {4 - 10 + 18}));

    flx_tensor *c = make(ctx, FLX_F64, {2}, {2, -1});
    flx_tensor *o = flx_outer(a, c);
    ASSERT_NE(o, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(o), (Shape{3, 2}));
    EXPECT_TRUE(close(values(o), {2, -1, 4, -2, 6, -3}));

    flx_tensor *m = make(ctx, FLX_F32, {2, 3}, {1, 2, 3, 4, 5, 6});
    flx_tensor *t = flx_trace(m);
    ASSERT_NE(t, nullptr) << flx_last_error();
    EXPECT_EQ(flx_ndim(t), 0);
    EXPECT_EQ(flx_dtype_of(t), FLX_F32);
    EXPECT_TRUE(close(values(t), {1 + 5}));

    flx_tensor *sq = rand_tensor(ctx, FLX_F64, {4, 4}, 3);
    std::vector<double> sv = values(sq);
    EXPECT_TRUE(close(values(flx_trace(sq)), {sv[0] + sv[5] + sv[10] + sv[15]}, 1e-14, 1e-14));

    // Empty cases: dot of empty vectors and trace of an empty matrix are 0.
    flx_tensor *e = make(ctx, FLX_F64, {0}, {});
    EXPECT_TRUE(close(values(flx_dot(e, e)), {0}));
    EXPECT_TRUE(close(values(flx_trace(make(ctx, FLX_F64, {0, 3}, {}))), {0}));
    flx_tensor *eo = flx_outer(e, a);
    ASSERT_NE(eo, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(eo), (Shape{0, 3}));
}

TEST_F(LinalgTest, DiagAndDiagonalValues) {
    flx_tensor *v = make(ctx, FLX_F64, {3}, {1, 2, 3});
    flx_tensor *d = flx_diag(v);
    ASSERT_NE(d, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(d), (Shape{3, 3}));
    EXPECT_TRUE(close(values(d), {1, 0, 0, 0, 2, 0, 0, 0, 3}));

    for (Shape s : {Shape{3, 5}, Shape{5, 3}, Shape{4, 4}, Shape{1, 6}, Shape{0, 2}}) {
        SCOPED_TRACE(shape_str(s));
        for (flx_dtype dt : {FLX_F32, FLX_F64}) {
            std::vector<double> mv = rand_values((size_t)numel_of(s), 9);
            for (double &x : mv) x = (float)x;
            flx_tensor *dg = flx_diagonal(make(ctx, dt, s, mv));
            ASSERT_NE(dg, nullptr) << flx_last_error();
            int64_t len = std::min(s[0], s[1]);
            EXPECT_EQ(shape_of(dg), (Shape{len}));
            std::vector<double> want;
            for (int64_t i = 0; i < len; i++) want.push_back(mv[(size_t)(i * s[1] + i)]);
            EXPECT_TRUE(close(values(dg), want));
        }
    }
    flx_tensor *e = flx_diag(make(ctx, FLX_F32, {0}, {}));
    ASSERT_NE(e, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(e), (Shape{0, 0}));
    EXPECT_EQ(values(e).size(), 0u);
    // diag(diagonal(diag(v))) round trip, f32.
    flx_tensor *v32 = make(ctx, FLX_F32, {4}, {1.5, -2, 0, 7});
    EXPECT_TRUE(close(values(flx_diagonal(flx_diag(v32))), {1.5, -2, 0, 7}));
}

// ---- derivatives --------------------------------------------------------------------------
TEST_F(LinalgTest, MatmulGradcheck) {
    uint64_t seed = 100;
    for (const MatmulCase &c : matmul_cases()) {
        SCOPED_TRACE(shape_str(c.a) + " @ " + shape_str(c.b));
        flx_tensor *a = rand_tensor(ctx, FLX_F64, c.a, seed++);
        flx_tensor *b = rand_tensor(ctx, FLX_F64, c.b, seed++);
        Fn f = [](auto in) { return flx_matmul(in[0], in[1]); };
        EXPECT_EQ(gradcheck(f, {a, b}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(f, {a, b}));
    }
}

TEST_F(LinalgTest, MatmulSameOperandTwice) {
    flx_tensor *a = rand_tensor(ctx, FLX_F64, {3, 3}, 5);
    Fn f = [](auto in) { return flx_matmul(in[0], in[0]); };
    EXPECT_EQ(gradcheck(f, {a}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(f, {a}));
}

TEST_F(LinalgTest, MatmulGradValues) {
    // d sum(A B) / dA = 1 B^T, / dB = A^T 1 with A broadcast over the batch of B.
    flx_tensor *a = rand_tensor(ctx, FLX_F64, {2, 3}, 21);
    flx_tensor *b = rand_tensor(ctx, FLX_F64, {4, 3, 5}, 22);
    ASSERT_EQ(flx_set_requires_grad(a, true), FLX_OK);
    ASSERT_EQ(flx_set_requires_grad(b, true), FLX_OK);
    ASSERT_EQ(flx_backward(flx_sum_all(flx_matmul(a, b))), FLX_OK) << flx_last_error();
    std::vector<double> av = values(a), bv = values(b);
    std::vector<double> ga(6, 0.0), gb(60, 0.0);
    for (int bt = 0; bt < 4; bt++)
        for (int i = 0; i < 2; i++)
            for (int p = 0; p < 3; p++)
                for (int j = 0; j < 5; j++) {
                    ga[i * 3 + p] += bv[bt * 15 + p * 5 + j];
                    gb[bt * 15 + p * 5 + j] += av[i * 3 + p];
                }
    flx_tensor *gat = flx_grad(a), *gbt = flx_grad(b);
    ASSERT_NE(gat, nullptr);
    ASSERT_NE(gbt, nullptr);
    EXPECT_EQ(shape_of(gat), (Shape{2, 3}));
    EXPECT_EQ(shape_of(gbt), (Shape{4, 3, 5}));
    EXPECT_TRUE(close(values(gat), ga, 1e-12, 1e-12));
    EXPECT_TRUE(close(values(gbt), gb, 1e-12, 1e-12));
}

// flx_grad_of needs inputs that require grad and grad mode on; the finite-difference points
// of gradcheck and jvp_check are plain constants, evaluated in no-grad mode. GradOn leaves
// no-grad mode for its lifetime, and need_grad marks the inputs (a no-op for tracked ones).

TEST_F(LinalgTest, MatmulSecondOrder) {
    // f(A, B) = d/dA sum((A B)^2), itself differentiated: exercises the transposed products.
    Fn f = [](auto in) -> flx_tensor * {
        flx_tensor *a = in[0], *b = in[1];
        GradOn on;
        need_grad(in);
        flx_tensor *y = flx_sum_all(flx_square(flx_matmul(a, b)));
        flx_tensor *g[2] = {nullptr, nullptr};
        flx_tensor *xs[2] = {a, b};
        if (flx_grad_of(1, &y, nullptr, 2, xs, true, g) != FLX_OK) return nullptr;
        return flx_add(flx_sum_all(flx_mul(g[0], g[0])), flx_sum_all(flx_sin(g[1])));
    };
    flx_tensor *a = rand_tensor(ctx, FLX_F64, {2, 3, 4}, 31);
    flx_tensor *b = rand_tensor(ctx, FLX_F64, {4, 2}, 32);
    EXPECT_EQ(gradcheck(f, {a, b}, 1e-6, 1e-6, 1e-5), FLX_OK) << flx_last_error();
    EXPECT_TRUE(jvp_check(f, {a, b}, 1e-6, 1e-6, 1e-5));
}

TEST_F(LinalgTest, OtherOpsGradcheck) {
    flx_tensor *u = rand_tensor(ctx, FLX_F64, {4}, 41);
    flx_tensor *v = rand_tensor(ctx, FLX_F64, {4}, 42);
    flx_tensor *w = rand_tensor(ctx, FLX_F64, {3}, 43);
    flx_tensor *sq = rand_tensor(ctx, FLX_F64, {3, 3}, 44);
    flx_tensor *wide = rand_tensor(ctx, FLX_F64, {2, 5}, 45);
    flx_tensor *tall = rand_tensor(ctx, FLX_F64, {5, 2}, 46);
    std::vector<FnCase> cases = {
        {"dot", [](auto in) { return flx_dot(in[0], in[1]); }, {u, v}},
        {"outer", [](auto in) { return flx_outer(in[0], in[1]); }, {u, w}},
        {"trace square", [](auto in) { return flx_trace(in[0]); }, {sq}},
        {"trace wide", [](auto in) { return flx_trace(in[0]); }, {wide}},
        {"trace tall", [](auto in) { return flx_trace(in[0]); }, {tall}},
        {"diag", [](auto in) { return flx_diag(in[0]); }, {w}},
        {"diagonal square", [](auto in) { return flx_diagonal(in[0]); }, {sq}},
        {"diagonal wide", [](auto in) { return flx_diagonal(in[0]); }, {wide}},
        {"diagonal tall", [](auto in) { return flx_diagonal(in[0]); }, {tall}},
        {"diag of diagonal", [](auto in) { return flx_diag(flx_diagonal(in[0])); }, {wide}},
        {"nonlinear mix",
         [](auto in) {
             return flx_matmul(flx_diag(flx_tanh(in[0])), flx_matmul(in[1], flx_diag(in[0])));
         },
         {v, rand_tensor(ctx, FLX_F64, {2, 4, 4}, 47)}},
    };
    check_derivatives(cases);
    // Second order through diag/diagonal.
    Fn h = [](auto in) -> flx_tensor * {
        flx_tensor *x = in[0];
        GradOn on;
        need_grad(in);
        flx_tensor *y = flx_sum_all(flx_square(flx_diagonal(flx_matmul(x, x))));
        flx_tensor *g = nullptr;
        if (flx_grad_of(1, &y, nullptr, 1, &x, true, &g) != FLX_OK) return nullptr;
        return flx_diagonal(g);
    };
    EXPECT_EQ(gradcheck(h, {sq}, 1e-6, 1e-6, 1e-5), FLX_OK) << flx_last_error();
}

// ---- bad input ---------------------------------------------------------------------------
TEST_F(LinalgTest, NullPropagates) {
    flx_tensor *m = rand_tensor(ctx, FLX_F32, {2, 2}, 1);
    flx_tensor *v = rand_tensor(ctx, FLX_F32, {2}, 2);
    EXPECT_TRUE(fails_with(flx_matmul(nullptr, m), FLX_ERR_INVALID_ARGUMENT, "flx_matmul"));
    EXPECT_TRUE(fails_with(flx_matmul(m, nullptr), FLX_ERR_INVALID_ARGUMENT, "flx_matmul"));
    EXPECT_TRUE(fails_with(flx_dot(nullptr, v), FLX_ERR_INVALID_ARGUMENT, "flx_dot"));
    EXPECT_TRUE(fails_with(flx_outer(v, nullptr), FLX_ERR_INVALID_ARGUMENT, "flx_outer"));
    EXPECT_TRUE(fails_with(flx_trace(nullptr), FLX_ERR_INVALID_ARGUMENT, "flx_trace"));
    EXPECT_TRUE(fails_with(flx_diag(nullptr), FLX_ERR_INVALID_ARGUMENT, "flx_diag"));
    EXPECT_TRUE(fails_with(flx_diagonal(nullptr), FLX_ERR_INVALID_ARGUMENT, "flx_diagonal"));
    // The first error of a chain is kept.
    flx_tensor *r = flx_trace(flx_diag(flx_matmul(m, rand_tensor(ctx, FLX_F32, {3, 2}, 3))));
    EXPECT_TRUE(fails_with(r, FLX_ERR_SHAPE, "inner dimensions"));
}

TEST_F(LinalgTest, MatmulBadShapes) {
    flx_tensor *s = flx_scalar(ctx, FLX_F32, 2.0);
    flx_tensor *m23 = rand_tensor(ctx, FLX_F32, {2, 3}, 1);
    flx_tensor *m24 = rand_tensor(ctx, FLX_F32, {2, 4}, 2);
    flx_tensor *v4 = rand_tensor(ctx, FLX_F32, {4}, 3);
    EXPECT_TRUE(fails_with(flx_matmul(s, m23), FLX_ERR_SHAPE, "rank"));
    EXPECT_TRUE(fails_with(flx_matmul(m23, s), FLX_ERR_SHAPE, "(2, 3) f32"));
    EXPECT_TRUE(fails_with(flx_matmul(m23, m24), FLX_ERR_SHAPE, "inner dimensions"));
    EXPECT_TRUE(fails_with(flx_matmul(m23, v4), FLX_ERR_SHAPE, "(4) f32"));
    EXPECT_TRUE(fails_with(flx_matmul(v4, m23), FLX_ERR_SHAPE, "inner dimensions"));
    flx_tensor *b1 = rand_tensor(ctx, FLX_F32, {2, 2, 3}, 4);
    flx_tensor *b2 = rand_tensor(ctx, FLX_F32, {3, 3, 2}, 5);
    EXPECT_TRUE(fails_with(flx_matmul(b1, b2), FLX_ERR_SHAPE, "batch dims"));
}

TEST_F(LinalgTest, BadDtypes) {
    flx_tensor *f32 = rand_tensor(ctx, FLX_F32, {2, 2}, 1);
    flx_tensor *f64 = rand_tensor(ctx, FLX_F64, {2, 2}, 2);
    flx_tensor *i32 = make(ctx, FLX_I32, {2, 2}, {1, 2, 3, 4});
    flx_tensor *i64v = make(ctx, FLX_I64, {2}, {1, 2});
    flx_tensor *bv = make(ctx, FLX_BOOL, {2}, {1, 0});
    EXPECT_TRUE(fails_with(flx_matmul(f32, f64), FLX_ERR_DTYPE, "f64"));
    EXPECT_TRUE(fails_with(flx_matmul(i32, i32), FLX_ERR_DTYPE, "i32"));
    EXPECT_TRUE(fails_with(flx_dot(i64v, i64v), FLX_ERR_DTYPE, "flx_dot"));
    EXPECT_TRUE(fails_with(flx_outer(bv, bv), FLX_ERR_DTYPE, "bool"));
    EXPECT_TRUE(fails_with(flx_trace(i32), FLX_ERR_DTYPE, "flx_trace"));
    EXPECT_TRUE(fails_with(flx_diag(i64v), FLX_ERR_DTYPE, "flx_diag"));
    EXPECT_TRUE(fails_with(flx_diagonal(i32), FLX_ERR_DTYPE, "flx_diagonal"));
    flx_tensor *v32 = rand_tensor(ctx, FLX_F32, {2}, 3);
    flx_tensor *v64 = rand_tensor(ctx, FLX_F64, {2}, 4);
    EXPECT_TRUE(fails_with(flx_dot(v32, v64), FLX_ERR_DTYPE, "dtypes differ"));
    EXPECT_TRUE(fails_with(flx_outer(v64, v32), FLX_ERR_DTYPE, "dtypes differ"));
}

TEST_F(LinalgTest, OtherOpsBadShapes) {
    flx_tensor *v3 = rand_tensor(ctx, FLX_F64, {3}, 1);
    flx_tensor *v4 = rand_tensor(ctx, FLX_F64, {4}, 2);
    flx_tensor *m = rand_tensor(ctx, FLX_F64, {3, 4}, 3);
    flx_tensor *t3 = rand_tensor(ctx, FLX_F64, {2, 2, 2}, 4);
    flx_tensor *s = flx_scalar(ctx, FLX_F64, 1.0);
    EXPECT_TRUE(fails_with(flx_dot(v3, v4), FLX_ERR_SHAPE, "lengths differ"));
    EXPECT_TRUE(fails_with(flx_dot(m, v4), FLX_ERR_SHAPE, "1-d"));
    EXPECT_TRUE(fails_with(flx_dot(v4, s), FLX_ERR_SHAPE, "1-d"));
    EXPECT_TRUE(fails_with(flx_outer(m, v4), FLX_ERR_SHAPE, "flx_outer"));
    EXPECT_TRUE(fails_with(flx_trace(v3), FLX_ERR_SHAPE, "2-d"));
    EXPECT_TRUE(fails_with(flx_trace(t3), FLX_ERR_SHAPE, "(2, 2, 2)"));
    EXPECT_TRUE(fails_with(flx_diag(m), FLX_ERR_SHAPE, "1-d"));
    EXPECT_TRUE(fails_with(flx_diag(s), FLX_ERR_SHAPE, "flx_diag"));
    EXPECT_TRUE(fails_with(flx_diagonal(v3), FLX_ERR_SHAPE, "2-d"));
    EXPECT_TRUE(fails_with(flx_diagonal(t3), FLX_ERR_SHAPE, "flx_diagonal"));
}

TEST_F(LinalgTest, DifferentContextsRejected) {
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr) << flx_last_error();
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *a = rand_tensor(ctx, FLX_F64, {2, 2}, 1);
    flx_tensor *b = rand_tensor(other, FLX_F64, {2, 2}, 2);
    EXPECT_TRUE(fails_with(flx_matmul(a, b), FLX_ERR_DEVICE, "flx_matmul"));
    flx_tensor *u = rand_tensor(other, FLX_F64, {2}, 3);
    flx_tensor *v = rand_tensor(ctx, FLX_F64, {2}, 4);
    EXPECT_TRUE(fails_with(flx_dot(u, v), FLX_ERR_DEVICE, "flx_dot"));
    EXPECT_TRUE(fails_with(flx_outer(u, v), FLX_ERR_DEVICE, "flx_outer"));
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK) << flx_last_error();
}

TEST_F(LinalgTest, NoLeaksOutsideScopes) {
    // Composite ops (1-d matmul, outer, trace) must not leave intermediates to the caller.
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);  // leave the fixture's scope for a moment
    int64_t before = flx_live_tensors();
    const int64_t sv[1] = {3}, sm[2] = {3, 3}, sb[3] = {2, 3, 3};
    flx_tensor *v = flx_ones(ctx, FLX_F64, 1, sv);
    flx_tensor *m = flx_ones(ctx, FLX_F64, 2, sm);
    flx_tensor *b = flx_ones(ctx, FLX_F64, 3, sb);
    flx_tensor *r1 = flx_matmul(v, m);
    flx_tensor *r2 = flx_outer(v, v);
    flx_tensor *r3 = flx_trace(m);
    flx_tensor *r4 = flx_matmul(b, v);
    ASSERT_TRUE(r1 && r2 && r3 && r4) << flx_last_error();
    double t;
    ASSERT_EQ(flx_item(r3, &t), FLX_OK);
    EXPECT_EQ(t, 3.0);
    for (flx_tensor *x : {r1, r2, r3, r4, v, m, b}) flx_release(x);
    EXPECT_EQ(flx_live_tensors(), before);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
}

}  // namespace
