// test_shape.cc — shape and indexing ops: values against plain index arithmetic, 0-d and empty
// tensors, VJPs by central differences (also second order, which runs the internal pad /
// strided slice / index_add rules), JVPs, and bad inputs.
#include "testing.h"

#include <string>

using flxt::Shape;

namespace {

std::vector<int64_t> strides_of(const Shape &s) {
    std::vector<int64_t> st(s.size());
    int64_t k = 1;
    for (int i = (int)s.size() - 1; i >= 0; i--) {
        st[i] = k;
        k *= s[i];
    }
    return st;
}

// Unravels a flat row-major index.
std::vector<int64_t> unravel(size_t i, const Shape &s) {
    std::vector<int64_t> idx(s.size());
    for (int d = (int)s.size() - 1; d >= 0; d--) {
        idx[d] = (int64_t)(i % (size_t)s[d]);
        i /= (size_t)s[d];
    }
    return idx;
}

// Central-difference check of fn at x, and a JVP check.
void check_grads(const flxt::Fn &fn, const std::vector<flx_tensor *> &xs, const char *what) {
    EXPECT_EQ(flxt::gradcheck(fn, xs), FLX_OK) << what << ": " << flx_last_error();
    flx_clear_error();
    EXPECT_TRUE(flxt::jvp_check(fn, xs)) << what;
    flx_clear_error();
}

// fn's gradient <ones-weighted sum of fn(x)^2> as a function of x, built with create_graph, so a
// gradcheck of it runs the VJP rules of the VJP rules.
flx_tensor *grad_of_square_sum(flx_tensor *x, const std::function<flx_tensor *(flx_tensor *)> &f) {
    int depth = 0;
    while (!flx_grad_enabled()) {
        flx_no_grad_end();
        depth++;
    }
    flx_tensor *x0 = x;
    if (!flx_requires_grad(x0)) {
        x0 = flx_add_scalar(x, 0.0);
        flx_set_requires_grad(x0, true);
    }
    flx_tensor *y = flx_sum_all(flx_mul(flx_square(f(x0)), flx_add_scalar(f(x0), 2.0)));
    flx_tensor *g = nullptr;
    if (flx_grad_of(1, &y, nullptr, 1, &x0, true, &g) != FLX_OK) g = nullptr;
    for (int i = 0; i < depth; i++) flx_no_grad_begin();
    return g;
}

class ShapeTest : public flxt::CpuTest {};

}  // namespace

// ---- reshape, squeeze, unsqueeze -------------------------------------------------------------
TEST_F(ShapeTest, ReshapeValuesAndInference) {
    std::vector<double> xv = flxt::rand_values(24, 1);
    flx_tensor *x = flxt::make(ctx, FLX_F64, {2, 3, 4}, xv);
    int64_t s1[2] = {6, -1};
    flx_tensor *y = flx_reshape(x, 2, s1);
    ASSERT_NE(y, nullptr) << flx_last_error();
    EXPECT_EQ(flxt::shape_of(y), (Shape{6, 4}));
    EXPECT_EQ(flxt::values(y), xv);
    int64_t s2[3] = {-1, 2, 2};
    EXPECT_EQ(flxt::shape_of(flx_reshape(y, 3, s2)), (Shape{6, 2, 2}));
    // 0-d <-> (1) <-> (1, 1)
    flx_tensor *z = flx_scalar(ctx, FLX_F64, 3.5);
    int64_t one[2] = {1, 1};
    flx_tensor *z2 = flx_reshape(z, 2, one);
    EXPECT_EQ(flxt::shape_of(z2), (Shape{1, 1}));
    EXPECT_EQ(flx_ndim(flx_reshape(z2, 0, nullptr)), 0);
    EXPECT_EQ(flxt::values(flx_reshape(z2, 0, nullptr)), std::vector<double>{3.5});
    int64_t m1[1] = {-1};
    EXPECT_EQ(flxt::shape_of(flx_reshape(z, 1, m1)), (Shape{1}));
    // empty
    flx_tensor *e = flx_zeros(ctx, FLX_F32, 2, std::vector<int64_t>{0, 3}.data());
    int64_t e2[3] = {3, 0, 5};
    EXPECT_EQ(flxt::shape_of(flx_reshape(e, 3, e2)), (Shape{3, 0, 5}));
    int64_t e5[2] = {3, 1};
    EXPECT_TRUE(flxt::fails_with(flx_reshape(e, 2, e5), FLX_ERR_SHAPE, "flx_reshape"));
    int64_t e3[2] = {3, 0};
    EXPECT_EQ(flxt::shape_of(flx_reshape(e, 2, e3)), (Shape{3, 0}));
    int64_t e4[2] = {0, -1};
    EXPECT_TRUE(flxt::fails_with(flx_reshape(e, 2, e4), FLX_ERR_SHAPE, "ambiguous"));
    // ints and bools reshape fine
    flx_tensor *b = flxt::make(ctx, FLX_BOOL, {2, 2}, {1, 0, 0, 1});
    int64_t four[1] = {4};
    EXPECT_EQ(flxt::values(flx_reshape(b, 1, four)), (std::vector<double>{1, 0, 0, 1}));
    flx_tensor *i = flxt::make(ctx, FLX_I64, {4}, {1, 2, 3, 4});
    int64_t tt[2] = {2, 2};
    EXPECT_EQ(flx_dtype_of(flx_reshape(i, 2, tt)), FLX_I64);
}

TEST_F(ShapeTest, ReshapeSharesBuffer) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {4, 5}, 2);
    flx_ctx_stats before, after;
    ASSERT_EQ(flx_ctx_get_stats(ctx, &before), FLX_OK);
    int64_t s[1] = {20};
    flx_tensor *y = flx_reshape(x, 1, s);
    ASSERT_EQ(flx_eval(1, &y), FLX_OK);
    ASSERT_EQ(flx_ctx_get_stats(ctx, &after), FLX_OK);
    EXPECT_EQ(after.allocs, before.allocs);
    EXPECT_EQ(after.kernels, before.kernels);
}

TEST_F(ShapeTest, ReshapeErrors) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {2, 3}, 3);
    int64_t s1[2] = {4, 2};
    EXPECT_TRUE(flxt::fails_with(flx_reshape(x, 2, s1), FLX_ERR_SHAPE, "(2, 3)"));
    int64_t s2[2] = {-1, -1};
    EXPECT_TRUE(flxt::fails_with(flx_reshape(x, 2, s2), FLX_ERR_SHAPE, "-1"));
    int64_t s3[2] = {4, -1};
    EXPECT_TRUE(flxt::fails_with(flx_reshape(x, 2, s3), FLX_ERR_SHAPE, "(4, -1)"));
    int64_t s4[2] = {-2, -3};
    EXPECT_TRUE(flxt::fails_with(flx_reshape(x, 2, s4), FLX_ERR_SHAPE, "flx_reshape"));
    EXPECT_TRUE(flxt::fails_with(flx_reshape(x, 9, s1), FLX_ERR_SHAPE, "rank"));
    EXPECT_TRUE(flxt::fails_with(flx_reshape(x, 2, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(flxt::fails_with(flx_reshape(nullptr, 2, s1), FLX_ERR_INVALID_ARGUMENT, "NULL"));
}

TEST_F(ShapeTest, SqueezeUnsqueeze) {
    std::vector<double> xv = flxt::rand_values(6, 4);
    flx_tensor *x = flxt::make(ctx, FLX_F64, {2, 1, 3}, xv);
    flx_tensor *s = flx_squeeze(x, 1);
    EXPECT_EQ(flxt::shape_of(s), (Shape{2, 3}));
    EXPECT_EQ(flxt::values(s), xv);
    EXPECT_EQ(flxt::shape_of(flx_squeeze(x, -2)), (Shape{2, 3}));
    EXPECT_EQ(flxt::shape_of(flx_unsqueeze(s, 0)), (Shape{1, 2, 3}));
    EXPECT_EQ(flxt::shape_of(flx_unsqueeze(s, 2)), (Shape{2, 3, 1}));
    EXPECT_EQ(flxt::shape_of(flx_unsqueeze(s, -1)), (Shape{2, 3, 1}));
    EXPECT_EQ(flxt::shape_of(flx_unsqueeze(s, -3)), (Shape{1, 2, 3}));
    EXPECT_EQ(flxt::values(flx_unsqueeze(s, 1)), xv);
    flx_tensor *z = flx_scalar(ctx, FLX_F64, 1.0);
    EXPECT_EQ(flxt::shape_of(flx_unsqueeze(z, 0)), (Shape{1}));
    EXPECT_EQ(flx_ndim(flx_squeeze(flx_unsqueeze(z, -1), 0)), 0);
    EXPECT_TRUE(flxt::fails_with(flx_squeeze(x, 0), FLX_ERR_SHAPE, "size 2"));
    EXPECT_TRUE(flxt::fails_with(flx_squeeze(x, 3), FLX_ERR_INVALID_ARGUMENT, "flx_squeeze"));
    EXPECT_TRUE(flxt::fails_with(flx_unsqueeze(s, 3), FLX_ERR_INVALID_ARGUMENT, "flx_unsqueeze"));
    EXPECT_TRUE(flxt::fails_with(flx_unsqueeze(s, -4), FLX_ERR_INVALID_ARGUMENT, "flx_unsqueeze"));
    std::vector<int64_t> eight(8, 1);
    flx_tensor *r8 = flx_ones(ctx, FLX_F64, 8, eight.data());
    EXPECT_TRUE(flxt::fails_with(flx_unsqueeze(r8, 0), FLX_ERR_SHAPE, "flx_unsqueeze"));
    flx_tensor *g = flxt::rand_tensor(ctx, FLX_F64, {3, 1, 2}, 5);
    check_grads([](const std::vector<flx_tensor *> &in) {
        int64_t s6[2] = {2, -1};
        return flx_unsqueeze(flx_reshape(flx_squeeze(in[0], 1), 2, s6), 1);
    }, {g}, "reshape/squeeze/unsqueeze");
}

// ---- permute, transpose ----------------------------------------------------------------------
TEST_F(ShapeTest, PermuteValues) {
    Shape s = {2, 3, 4};
    std::vector<double> xv = flxt::rand_values(24, 6);
    flx_tensor *x = flxt::make(ctx, FLX_F64, s, xv);
    std::vector<std::vector<int32_t>> perms = {{0, 1, 2}, {2, 0, 1}, {1, 2, 0}, {2, 1, 0}, {0, -1, 1}};
    auto xst = strides_of(s);
    for (const auto &p : perms) {
        flx_tensor *y = flx_permute(x, p.data());
        ASSERT_NE(y, nullptr) << flx_last_error();
        Shape ys;
        std::vector<int32_t> pn;
        for (int32_t a : p) pn.push_back(a < 0 ? a + 3 : a);
        for (int32_t a : pn) ys.push_back(s[a]);
        EXPECT_EQ(flxt::shape_of(y), ys);
        std::vector<double> want(24);
        for (size_t i = 0; i < 24; i++) {
            auto idx = unravel(i, ys);
            int64_t off = 0;
            for (int d = 0; d < 3; d++) off += idx[d] * xst[pn[d]];
            want[i] = xv[off];
        }
        EXPECT_EQ(flxt::values(y), want);
    }
    // transpose of a matrix
    flx_tensor *m = flxt::make(ctx, FLX_I32, {2, 3}, {1, 2, 3, 4, 5, 6});
    flx_tensor *mt = flx_transpose(m, 0, -1);
    EXPECT_EQ(flxt::shape_of(mt), (Shape{3, 2}));
    EXPECT_EQ(flxt::values(mt), (std::vector<double>{1, 4, 2, 5, 3, 6}));
    EXPECT_EQ(flxt::values(flx_transpose(m, 1, 1)), (std::vector<double>{1, 2, 3, 4, 5, 6}));
    // 0-d and empty
    flx_tensor *z = flx_scalar(ctx, FLX_F64, 2.0);
    EXPECT_EQ(flxt::values(flx_permute(z, nullptr)), std::vector<double>{2.0});
    flx_tensor *e = flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{0, 3}.data());
    EXPECT_EQ(flxt::shape_of(flx_transpose(e, 0, 1)), (Shape{3, 0}));
    EXPECT_TRUE(flxt::values(flx_transpose(e, 0, 1)).empty());
}

TEST_F(ShapeTest, PermuteGradAndErrors) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {2, 3, 4}, 7);
    check_grads([](const std::vector<flx_tensor *> &in) {
        int32_t p[3] = {2, 0, 1};
        return flx_permute(in[0], p);
    }, {x}, "permute");
    check_grads([](const std::vector<flx_tensor *> &in) { return flx_transpose(in[0], 0, 2); },
                {x}, "transpose");
    int32_t dup[3] = {0, 0, 1}, oor[3] = {0, 1, 3};
    EXPECT_TRUE(flxt::fails_with(flx_permute(x, dup), FLX_ERR_INVALID_ARGUMENT, "(0, 0, 1)"));
    EXPECT_TRUE(flxt::fails_with(flx_permute(x, oor), FLX_ERR_INVALID_ARGUMENT, "permutation"));
    EXPECT_TRUE(flxt::fails_with(flx_permute(x, nullptr), FLX_ERR_INVALID_ARGUMENT, "perm"));
    EXPECT_TRUE(flxt::fails_with(flx_transpose(x, 0, 3), FLX_ERR_INVALID_ARGUMENT, "flx_transpose"));
    EXPECT_TRUE(flxt::fails_with(flx_transpose(nullptr, 0, 1), FLX_ERR_INVALID_ARGUMENT, "NULL"));
}

// ---- broadcast -----------------------------------------------------------------------------
TEST_F(ShapeTest, BroadcastTo) {
    struct C {
        Shape from, to;
    };
    std::vector<C> cases = {{{3}, {2, 3}},       {{2, 1}, {2, 4}},    {{}, {2, 2}},
                            {{1, 3}, {0, 3}},    {{2, 1, 3}, {4, 2, 5, 3}}, {{3}, {3}},
                            {{1}, {}} /* invalid: rank drops */};
    uint64_t seed = 10;
    for (const C &c : cases) {
        std::vector<double> xv = flxt::rand_values((size_t)flxt::numel_of(c.from), seed++);
        flx_tensor *x = flxt::make(ctx, FLX_F64, c.from, xv);
        flx_tensor *y = flx_broadcast_to(x, (int32_t)c.to.size(), c.to.data());
        if (c.to.size() < c.from.size()) {
            EXPECT_TRUE(flxt::fails_with(y, FLX_ERR_SHAPE, "flx_broadcast_to"));
            continue;
        }
        ASSERT_NE(y, nullptr) << flx_last_error();
        EXPECT_EQ(flxt::shape_of(y), c.to);
        std::vector<double> want((size_t)flxt::numel_of(c.to));
        auto xst = strides_of(c.from);
        size_t lead = c.to.size() - c.from.size();
        for (size_t i = 0; i < want.size(); i++) {
            auto idx = unravel(i, c.to);
            int64_t off = 0;
            for (size_t d = 0; d < c.from.size(); d++)
                off += (c.from[d] == 1 ? 0 : idx[d + lead]) * xst[d];
            want[i] = xv[off];
        }
        EXPECT_EQ(flxt::values(y), want);
    }
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {2, 1, 3}, 11);
    check_grads([](const std::vector<flx_tensor *> &in) {
        int64_t to[4] = {2, 2, 4, 3};
        return flx_broadcast_to(in[0], 4, to);
    }, {x}, "broadcast_to");
    int64_t bad[2] = {2, 4};
    EXPECT_TRUE(flxt::fails_with(flx_broadcast_to(x, 2, bad), FLX_ERR_SHAPE, "(2, 1, 3)"));
    int64_t bad2[3] = {2, 5, 4};
    EXPECT_TRUE(flxt::fails_with(flx_broadcast_to(x, 3, bad2), FLX_ERR_SHAPE, "(2, 5, 4)"));
    int64_t neg[3] = {2, -1, 3};
    EXPECT_TRUE(flxt::fails_with(flx_broadcast_to(x, 3, neg), FLX_ERR_SHAPE, "flx_broadcast_to"));
}

// ---- slice ------------------------------------------------------------------------------------
static std::vector<int64_t> py_slice(int64_t n, int64_t start, int64_t stop, int64_t step) {
    auto fix = [n](int64_t v) {
        if (v < 0) v += n;
        if (v < 0) v = 0;
        if (v > n) v = n;
        return v;
    };
    std::vector<int64_t> r;
    for (int64_t i = fix(start); i < fix(stop); i += step) r.push_back(i);
    return r;
}

TEST_F(ShapeTest, SliceValues) {
    Shape s = {4, 7};
    std::vector<double> xv = flxt::rand_values(28, 12);
    flx_tensor *x = flxt::make(ctx, FLX_F64, s, xv);
    struct C {
        int32_t axis;
        int64_t start, stop, step;
    };
    std::vector<C> cases = {{1, 0, 7, 1},   {1, 1, 5, 1},    {1, 1, 6, 2},        {1, -3, 100, 1},
                            {1, -100, 3, 2}, {1, 5, 2, 1},   {1, 0, 7, 3},        {-1, 6, 7, 10},
                            {0, 1, 3, 1},    {0, -1, 4, 1},  {-2, 0, 4, 2},       {0, 4, 10, 1},
                            {1, INT64_MIN, INT64_MAX, 4}};
    for (const C &c : cases) {
        flx_tensor *y = flx_slice(x, c.axis, c.start, c.stop, c.step);
        ASSERT_NE(y, nullptr) << flx_last_error();
        int32_t a = c.axis < 0 ? c.axis + 2 : c.axis;
        auto sel = py_slice(s[a], c.start, c.stop, c.step);
        Shape ys = s;
        ys[a] = (int64_t)sel.size();
        EXPECT_EQ(flxt::shape_of(y), ys) << c.start << ":" << c.stop << ":" << c.step;
        std::vector<double> want;
        for (size_t i = 0; i < (size_t)flxt::numel_of(ys); i++) {
            auto idx = unravel(i, ys);
            idx[a] = sel[idx[a]];
            want.push_back(xv[idx[0] * 7 + idx[1]]);
        }
        EXPECT_EQ(flxt::values(y), want) << c.start << ":" << c.stop << ":" << c.step;
    }
    // slices of slices, ints
    flx_tensor *r = flxt::make(ctx, FLX_I64, {10}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    flx_tensor *rr = flx_slice(flx_slice(r, 0, 1, 10, 2), 0, 1, -1, 2);
    EXPECT_EQ(flxt::values(rr), (std::vector<double>{3, 7}));
    EXPECT_TRUE(flxt::fails_with(flx_slice(x, 0, 0, 2, 0), FLX_ERR_INVALID_ARGUMENT, "step"));
    EXPECT_TRUE(flxt::fails_with(flx_slice(x, 0, 2, 0, -1), FLX_ERR_INVALID_ARGUMENT, "flx_slice"));
    EXPECT_TRUE(flxt::fails_with(flx_slice(x, 2, 0, 1, 1), FLX_ERR_INVALID_ARGUMENT, "flx_slice"));
    EXPECT_TRUE(flxt::fails_with(flx_slice(flx_scalar(ctx, FLX_F64, 1), 0, 0, 1, 1),
                                 FLX_ERR_INVALID_ARGUMENT, "flx_slice"));
}

TEST_F(ShapeTest, SliceGrad) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {5, 7}, 13);
    check_grads([](const std::vector<flx_tensor *> &in) {
        return flx_slice(flx_slice(in[0], 1, 1, 7, 3), 0, -4, 5, 2);
    }, {x}, "slice step");
    check_grads([](const std::vector<flx_tensor *> &in) { return flx_slice(in[0], 1, 3, 3, 1); },
                {x}, "empty slice");
    check_grads([](const std::vector<flx_tensor *> &in) {
        return flx_slice(in[0], 1, 2, 7, INT64_MAX);  // one element, a huge step
    }, {x}, "huge step");
    // second order: the VJP of the internal pad (a strided slice) and of that slice (a pad)
    flxt::Fn fn2 = [](const std::vector<flx_tensor *> &in) {
        return grad_of_square_sum(in[0], [](flx_tensor *t) {
            return flx_slice(flx_slice(t, 1, 1, 7, 3), 0, 0, 5, 2);
        });
    };
    EXPECT_EQ(flxt::gradcheck(fn2, {x}), FLX_OK) << flx_last_error();
}

// ---- pad -------------------------------------------------------------------------------------
TEST_F(ShapeTest, PadValues) {
    Shape s = {2, 3};
    std::vector<double> xv = flxt::rand_values(6, 14);
    flx_tensor *x = flxt::make(ctx, FLX_F64, s, xv);
    int64_t pads[4] = {1, 2, 0, 3};
    flx_tensor *y = flx_pad(x, pads, -5.0);
    ASSERT_NE(y, nullptr) << flx_last_error();
    EXPECT_EQ(flxt::shape_of(y), (Shape{5, 6}));
    std::vector<double> want(30, -5.0);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) want[(i + 1) * 6 + j] = xv[i * 3 + j];
    EXPECT_EQ(flxt::values(y), want);
    // 0-d: no pads
    EXPECT_EQ(flxt::values(flx_pad(flx_scalar(ctx, FLX_F64, 4), nullptr, 1.0)), std::vector<double>{4});
    // empty input: all padding
    flx_tensor *e = flx_zeros(ctx, FLX_I32, 1, std::vector<int64_t>{0}.data());
    int64_t p1[2] = {2, 1};
    EXPECT_EQ(flxt::values(flx_pad(e, p1, 7)), (std::vector<double>{7, 7, 7}));
    // ints, -inf for floats
    flx_tensor *xi = flxt::make(ctx, FLX_I64, {2}, {5, 6});
    EXPECT_EQ(flxt::values(flx_pad(xi, p1, -1)), (std::vector<double>{-1, -1, 5, 6, -1}));
    flx_tensor *xf = flxt::make(ctx, FLX_F32, {1}, {2});
    auto vf = flxt::values(flx_pad(xf, p1, -INFINITY));
    ASSERT_EQ(vf.size(), 4u);
    EXPECT_TRUE(std::isinf(vf[0]) && vf[2] == 2 && std::isinf(vf[3]));
    int64_t negp[4] = {0, -1, 0, 0};
    EXPECT_TRUE(flxt::fails_with(flx_pad(x, negp, 0), FLX_ERR_INVALID_ARGUMENT, "flx_pad"));
    EXPECT_TRUE(flxt::fails_with(flx_pad(x, nullptr, 0), FLX_ERR_INVALID_ARGUMENT, "pads"));
    EXPECT_TRUE(flxt::fails_with(flx_pad(xi, p1, NAN), FLX_ERR_INVALID_ARGUMENT, "flx_pad"));
    EXPECT_TRUE(flxt::fails_with(flx_pad(nullptr, p1, 0), FLX_ERR_INVALID_ARGUMENT, "NULL"));
}

TEST_F(ShapeTest, PadGrad) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {3, 2, 2}, 15);
    check_grads([](const std::vector<flx_tensor *> &in) {
        int64_t p[6] = {1, 0, 2, 1, 0, 3};
        return flx_pad(in[0], p, 0.5);
    }, {x}, "pad");
    flxt::Fn fn2 = [](const std::vector<flx_tensor *> &in) {
        return grad_of_square_sum(in[0], [](flx_tensor *t) {
            int64_t p[6] = {0, 1, 1, 1, 2, 0};
            return flx_pad(t, p, 1.0);
        });
    };
    EXPECT_EQ(flxt::gradcheck(fn2, {x}), FLX_OK) << flx_last_error();
}

// ---- concat, stack -----------------------------------------------------------------------------
TEST_F(ShapeTest, ConcatValues) {
    std::vector<double> av = flxt::rand_values(6, 16), bv = flxt::rand_values(4, 17);
    flx_tensor *a = flxt::make(ctx, FLX_F64, {2, 3}, av);
    flx_tensor *b = flxt::make(ctx, FLX_F64, {2, 2}, bv);
    flx_tensor *e = flx_zeros(ctx, FLX_F64, 2, std::vector<int64_t>{2, 0}.data());
    flx_tensor *xs[3] = {a, e, b};
    flx_tensor *c = flx_concat(3, xs, -1);
    ASSERT_NE(c, nullptr) << flx_last_error();
    EXPECT_EQ(flxt::shape_of(c), (Shape{2, 5}));
    std::vector<double> want;
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 3; j++) want.push_back(av[i * 3 + j]);
        for (int j = 0; j < 2; j++) want.push_back(bv[i * 2 + j]);
    }
    EXPECT_EQ(flxt::values(c), want);
    flx_tensor *ys[2] = {a, a};
    flx_tensor *c0 = flx_concat(2, ys, 0);
    EXPECT_EQ(flxt::shape_of(c0), (Shape{4, 3}));
    std::vector<double> w0 = av;
    w0.insert(w0.end(), av.begin(), av.end());
    EXPECT_EQ(flxt::values(c0), w0);
    EXPECT_EQ(flxt::values(flx_concat(1, &a, 1)), av);
    // bools
    flx_tensor *t1 = flxt::make(ctx, FLX_BOOL, {1}, {1}), *t2 = flxt::make(ctx, FLX_BOOL, {2}, {0, 1});
    flx_tensor *bs[2] = {t1, t2};
    EXPECT_EQ(flxt::values(flx_concat(2, bs, 0)), (std::vector<double>{1, 0, 1}));
    // errors
    flx_tensor *f = flx_zeros(ctx, FLX_F32, 2, std::vector<int64_t>{2, 3}.data());
    flx_tensor *bad1[2] = {a, f};
    EXPECT_TRUE(flxt::fails_with(flx_concat(2, bad1, 0), FLX_ERR_DTYPE, "f32"));
    flx_tensor *bad2[2] = {a, b};
    EXPECT_TRUE(flxt::fails_with(flx_concat(2, bad2, 0), FLX_ERR_SHAPE, "(2, 2)"));
    flx_tensor *v = flx_zeros(ctx, FLX_F64, 1, std::vector<int64_t>{3}.data());
    flx_tensor *bad3[2] = {a, v};
    EXPECT_TRUE(flxt::fails_with(flx_concat(2, bad3, 0), FLX_ERR_SHAPE, "flx_concat"));
    EXPECT_TRUE(flxt::fails_with(flx_concat(0, xs, 0), FLX_ERR_INVALID_ARGUMENT, "flx_concat"));
    EXPECT_TRUE(flxt::fails_with(flx_concat(2, ys, 2), FLX_ERR_INVALID_ARGUMENT, "flx_concat"));
    flx_tensor *z = flx_scalar(ctx, FLX_F64, 1);
    EXPECT_TRUE(flxt::fails_with(flx_concat(1, &z, 0), FLX_ERR_INVALID_ARGUMENT, "flx_concat"));
    flx_tensor *withnull[2] = {a, nullptr};
    EXPECT_TRUE(flxt::fails_with(flx_concat(2, withnull, 0), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *o = flx_zeros(other, FLX_F64, 2, std::vector<int64_t>{2, 3}.data());
    flx_tensor *mixed[2] = {a, o};
    EXPECT_TRUE(flxt::fails_with(flx_concat(2, mixed, 0), FLX_ERR_DEVICE, "flx_concat"));
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK);
}

TEST_F(ShapeTest, ConcatStackGrad) {
    flx_tensor *a = flxt::rand_tensor(ctx, FLX_F64, {2, 3}, 18);
    flx_tensor *b = flxt::rand_tensor(ctx, FLX_F64, {2, 1}, 19);
    flx_tensor *c = flxt::rand_tensor(ctx, FLX_F64, {2, 2}, 20);
    check_grads([](const std::vector<flx_tensor *> &in) { return flx_concat(3, in.data(), 1); },
                {a, b, c}, "concat");
    flx_tensor *d = flxt::rand_tensor(ctx, FLX_F64, {2, 3}, 21);
    check_grads([](const std::vector<flx_tensor *> &in) { return flx_stack(2, in.data(), 1); },
                {a, d}, "stack");
    // one input constant: only the other gets a gradient
    flx_tensor *k = flxt::rand_tensor(ctx, FLX_F64, {2, 3}, 22);
    check_grads([k](const std::vector<flx_tensor *> &in) {
        flx_tensor *xs[3] = {k, in[0], k};
        return flx_concat(3, xs, 0);
    }, {a}, "concat with constants");
}

TEST_F(ShapeTest, ManyInputs) {
    // more inputs than the rules' small on-stack arrays hold
    std::vector<flx_tensor *> xs;
    std::vector<double> want;
    for (int i = 0; i < 20; i++) {
        std::vector<double> v = flxt::rand_values(2, 40 + i);
        want.insert(want.end(), v.begin(), v.end());
        xs.push_back(flxt::make(ctx, FLX_F64, {2}, v));
    }
    flx_tensor *s = flx_stack((int32_t)xs.size(), xs.data(), 0);
    EXPECT_EQ(flxt::shape_of(s), (Shape{20, 2}));
    EXPECT_EQ(flxt::values(s), want);
    check_grads([](const std::vector<flx_tensor *> &in) {
        return flx_stack((int32_t)in.size(), in.data(), -1);
    }, xs, "stack of 20");
    check_grads([](const std::vector<flx_tensor *> &in) {
        return flx_concat((int32_t)in.size(), in.data(), 0);
    }, xs, "concat of 20");
}

TEST_F(ShapeTest, StackValues) {
    std::vector<double> av = {1, 2, 3, 4, 5, 6}, bv = {7, 8, 9, 10, 11, 12};
    flx_tensor *a = flxt::make(ctx, FLX_F64, {2, 3}, av), *b = flxt::make(ctx, FLX_F64, {2, 3}, bv);
    flx_tensor *xs[2] = {a, b};
    flx_tensor *s0 = flx_stack(2, xs, 0);
    EXPECT_EQ(flxt::shape_of(s0), (Shape{2, 2, 3}));
    EXPECT_EQ(flxt::values(s0), (std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
    flx_tensor *s1 = flx_stack(2, xs, 1);
    EXPECT_EQ(flxt::shape_of(s1), (Shape{2, 2, 3}));
    EXPECT_EQ(flxt::values(s1), (std::vector<double>{1, 2, 3, 7, 8, 9, 4, 5, 6, 10, 11, 12}));
    flx_tensor *s2 = flx_stack(2, xs, -1);
    EXPECT_EQ(flxt::shape_of(s2), (Shape{2, 3, 2}));
    EXPECT_EQ(flxt::values(s2), (std::vector<double>{1, 7, 2, 8, 3, 9, 4, 10, 5, 11, 6, 12}));
    flx_tensor *z[3] = {flx_scalar(ctx, FLX_I32, 1), flx_scalar(ctx, FLX_I32, 2), flx_scalar(ctx, FLX_I32, 3)};
    EXPECT_EQ(flxt::values(flx_stack(3, z, 0)), (std::vector<double>{1, 2, 3}));
    flx_tensor *c = flxt::make(ctx, FLX_F64, {3, 2}, av);
    flx_tensor *bad[2] = {a, c};
    EXPECT_TRUE(flxt::fails_with(flx_stack(2, bad, 0), FLX_ERR_SHAPE, "(3, 2)"));
    EXPECT_TRUE(flxt::fails_with(flx_stack(2, xs, 3), FLX_ERR_INVALID_ARGUMENT, "flx_stack"));
    EXPECT_TRUE(flxt::fails_with(flx_stack(0, xs, 0), FLX_ERR_INVALID_ARGUMENT, "flx_stack"));
}

// ---- index_select, gather, one_hot -------------------------------------------------------------
TEST_F(ShapeTest, IndexSelectValues) {
    Shape s = {3, 4};
    std::vector<double> xv = flxt::rand_values(12, 23);
    flx_tensor *x = flxt::make(ctx, FLX_F64, s, xv);
    for (flx_dtype it : {FLX_I32, FLX_I64}) {
        std::vector<double> iv = {2, 0, 2, 1, 1};
        flx_tensor *idx = flxt::make(ctx, it, {5}, iv);
        flx_tensor *y0 = flx_index_select(x, 0, idx);
        ASSERT_NE(y0, nullptr) << flx_last_error();
        EXPECT_EQ(flxt::shape_of(y0), (Shape{5, 4}));
        std::vector<double> w0;
        for (int j = 0; j < 5; j++)
            for (int k = 0; k < 4; k++) w0.push_back(xv[(int)iv[j] * 4 + k]);
        EXPECT_EQ(flxt::values(y0), w0);
        flx_tensor *idx1 = flxt::make(ctx, it, {3}, {3, 3, 0});
        flx_tensor *y1 = flx_gather(x, -1, idx1);
        EXPECT_EQ(flxt::shape_of(y1), (Shape{3, 3}));
        std::vector<double> w1;
        for (int i = 0; i < 3; i++)
            for (int j : {3, 3, 0}) w1.push_back(xv[i * 4 + j]);
        EXPECT_EQ(flxt::values(y1), w1);
    }
    // 3-d along the middle axis, ints, empty index
    flx_tensor *t = flxt::make(ctx, FLX_I32, {2, 3, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
    flx_tensor *i2 = flxt::make(ctx, FLX_I64, {2}, {2, 0});
    EXPECT_EQ(flxt::values(flx_index_select(t, 1, i2)), (std::vector<double>{4, 5, 0, 1, 10, 11, 6, 7}));
    flx_tensor *ie = flx_zeros(ctx, FLX_I64, 1, std::vector<int64_t>{0}.data());
    EXPECT_EQ(flxt::shape_of(flx_index_select(t, 1, ie)), (Shape{2, 0, 2}));
    // out of range: read as 0, reported at the next synchronisation point
    flx_tensor *ibad = flxt::make(ctx, FLX_I64, {2}, {1, 7});
    flx_tensor *yb = flx_index_select(x, 0, ibad);
    ASSERT_NE(yb, nullptr);
    std::vector<double> host(8);
    EXPECT_EQ(flx_to_host(yb, host.data(), host.size() * sizeof(double)), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(host[4], 0.0);
    EXPECT_EQ(host[0], xv[4]);
    flx_clear_error();
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_OK);
    // errors
    flx_tensor *fidx = flxt::make(ctx, FLX_F64, {2}, {0, 1});
    EXPECT_TRUE(flxt::fails_with(flx_index_select(x, 0, fidx), FLX_ERR_DTYPE, "f64"));
    flx_tensor *idx2d = flxt::make(ctx, FLX_I64, {1, 2}, {0, 1});
    EXPECT_TRUE(flxt::fails_with(flx_gather(x, 0, idx2d), FLX_ERR_SHAPE, "flx_gather"));
    EXPECT_TRUE(flxt::fails_with(flx_index_select(x, 2, i2), FLX_ERR_INVALID_ARGUMENT, "flx_index_select"));
    EXPECT_TRUE(flxt::fails_with(flx_index_select(x, 0, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
}

TEST_F(ShapeTest, IndexSelectGrad) {
    flx_tensor *x = flxt::rand_tensor(ctx, FLX_F64, {3, 4, 2}, 24);
    flx_tensor *idx = flxt::make(ctx, FLX_I64, {6}, {3, 0, 3, 3, 1, 0});
    check_grads([idx](const std::vector<flx_tensor *> &in) { return flx_index_select(in[0], 1, idx); },
                {x}, "index_select");
    flx_tensor *idx32 = flxt::make(ctx, FLX_I32, {2}, {2, 2});
    check_grads([idx32](const std::vector<flx_tensor *> &in) { return flx_gather(in[0], 0, idx32); },
                {x}, "gather");
    // repeated indices accumulate: d/dx sum(index_select(x, 0, [1, 1, 0]))
    flx_tensor *v = flxt::make(ctx, FLX_F64, {3}, {1, 2, 3});
    ASSERT_EQ(flx_set_requires_grad(v, true), FLX_OK);
    flx_tensor *i3 = flxt::make(ctx, FLX_I32, {3}, {1, 1, 0});
    ASSERT_EQ(flx_backward(flx_sum_all(flx_index_select(v, 0, i3))), FLX_OK) << flx_last_error();
    EXPECT_EQ(flxt::values(flx_grad(v)), (std::vector<double>{1, 2, 0}));
    // second order runs the VJP of index_add (an index_select)
    flxt::Fn fn2 = [idx](const std::vector<flx_tensor *> &in) {
        return grad_of_square_sum(in[0], [idx](flx_tensor *t) { return flx_index_select(t, 1, idx); });
    };
    EXPECT_EQ(flxt::gradcheck(fn2, {x}), FLX_OK) << flx_last_error();
}

TEST_F(ShapeTest, OneHot) {
    flx_tensor *idx = flxt::make(ctx, FLX_I64, {2, 2}, {0, 3, 2, 5});
    flx_tensor *y = flx_one_hot(idx, 4, FLX_F32);
    ASSERT_NE(y, nullptr) << flx_last_error();
    EXPECT_EQ(flxt::shape_of(y), (Shape{2, 2, 4}));
    EXPECT_EQ(flx_dtype_of(y), FLX_F32);
    std::vector<double> want(16, 0.0);
    std::vector<int> iv = {0, 3, 2, 5};
    for (int i = 0; i < 4; i++)
        if (iv[i] < 4) want[i * 4 + iv[i]] = 1;  // 5 is out of range: a zero row
    EXPECT_EQ(flxt::values(y), want);
    flx_tensor *i32 = flxt::make(ctx, FLX_I32, {3}, {1, 0, 1});
    flx_tensor *y2 = flx_one_hot(i32, 2, FLX_I64);
    EXPECT_EQ(flx_dtype_of(y2), FLX_I64);
    EXPECT_EQ(flxt::values(y2), (std::vector<double>{0, 1, 1, 0, 0, 1}));
    flx_tensor *y0 = flx_one_hot(flx_scalar(ctx, FLX_I32, 2), 3, FLX_F64);
    EXPECT_EQ(flxt::shape_of(y0), (Shape{3}));
    EXPECT_EQ(flxt::values(y0), (std::vector<double>{0, 0, 1}));
    EXPECT_TRUE(flxt::fails_with(flx_one_hot(idx, 0, FLX_F32), FLX_ERR_INVALID_ARGUMENT, "num_classes"));
    flx_tensor *fi = flxt::make(ctx, FLX_F32, {2}, {0, 1});
    EXPECT_TRUE(flxt::fails_with(flx_one_hot(fi, 3, FLX_F32), FLX_ERR_DTYPE, "flx_one_hot"));
    EXPECT_TRUE(flxt::fails_with(flx_one_hot(idx, 3, FLX_BOOL), FLX_ERR_DTYPE, "flx_one_hot"));
    EXPECT_TRUE(flxt::fails_with(flx_one_hot(nullptr, 3, FLX_F32), FLX_ERR_INVALID_ARGUMENT, "NULL"));
}

TEST_F(ShapeTest, ComposedGradOutsideScope) {
    // composite ops must not leak their intermediates when called outside any scope
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    int64_t before = flx_live_tensors();
    flx_tensor *a = flx_ones(ctx, FLX_F64, 1, std::vector<int64_t>{3}.data());
    flx_tensor *xs[2] = {a, a};
    flx_tensor *s = flx_stack(2, xs, 0);
    flx_tensor *idx = flx_arange(ctx, FLX_I64, 0, 3, 1);
    flx_tensor *oh = flx_one_hot(idx, 3, FLX_F64);
    ASSERT_NE(s, nullptr);
    ASSERT_NE(oh, nullptr);
    EXPECT_EQ(flxt::values(oh), (std::vector<double>{1, 0, 0, 0, 1, 0, 0, 0, 1}));
    flx_release(s);
    flx_release(oh);
    flx_release(idx);
    flx_release(a);
    EXPECT_EQ(flx_live_tensors(), before);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
}
