// test_interop.cc — the interop C API (runtime/io/interop.c): flx_data_ptr, flx_from_blob
// (zero-copy, deleter), flx_ctx_stream and custom differentiable functions (flx_custom_fn).
#include <cstring>
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

using InteropTest = CpuTest;

struct Counter {
    int deleted = 0;
    void *last = nullptr;
};

void count_delete(void *data, void *user) {
    auto *c = static_cast<Counter *>(user);
    c->deleted++;
    c->last = data;
}

// ---- custom square: y = x^2 with user VJP (2 x g) and JVP (2 x t) -----------------------------
struct SquareStats {
    int fwd = 0, vjp = 0, jvp = 0, destroyed = 0;
};

flx_status sq_fwd(int32_t n, flx_tensor *const *in, flx_tensor **out, void *user) {
    static_cast<SquareStats *>(user)->fwd++;
    if (n != 1 || flx_requires_grad(in[0]) || flx_grad_enabled()) return FLX_ERR_STATE;
    *out = flx_mul(in[0], in[0]);
    return *out ? FLX_OK : flx_last_status();
}
flx_status sq_vjp(int32_t n, flx_tensor *const *in, flx_tensor *out, flx_tensor *g,
                  flx_tensor **gin, void *user) {
    (void)n;
    (void)out;
    static_cast<SquareStats *>(user)->vjp++;
    gin[0] = flx_mul(g, flx_mul_scalar(in[0], 2.0));
    return gin[0] ? FLX_OK : flx_last_status();
}
flx_status sq_jvp(int32_t n, flx_tensor *const *in, flx_tensor *const *tan, flx_tensor *out,
                  flx_tensor **tout, void *user) {
    (void)n;
    (void)out;
    static_cast<SquareStats *>(user)->jvp++;
    *tout = flx_mul(tan[0], flx_mul_scalar(in[0], 2.0));
    return *tout ? FLX_OK : flx_last_status();
}
void sq_destroy(void *user) { static_cast<SquareStats *>(user)->destroyed++; }

flx_tensor *custom_square(flx_tensor *x, SquareStats *st, bool with_rules = true) {
    flx_tensor *y = nullptr;
    flx_status s = flx_custom_fn(1, &x, sq_fwd, with_rules ? sq_vjp : nullptr,
                                 with_rules ? sq_jvp : nullptr, st, sq_destroy, &y);
    return s == FLX_OK ? y : nullptr;
}

}  // namespace

// ---- data pointers and blobs ---------------------------------------------------------------------
TEST_F(InteropTest, DataPtrComputesAndPointsAtTheValues) {
    flx_tensor *x = make(ctx, FLX_F64, {2, 3}, {1, 2, 3, 4, 5, 6});
    flx_tensor *y = flx_mul_scalar(x, 2.0);
    void *p = nullptr;
    ASSERT_EQ(flx_data_ptr(y, &p), FLX_OK) << flx_last_error();
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(flx_is_realized(y));
    const double *d = static_cast<const double *>(p);
    for (int i = 0; i < 6; i++) EXPECT_EQ(d[i], 2.0 * (i + 1));
    void *p2 = nullptr;
    ASSERT_EQ(flx_data_ptr(y, &p2), FLX_OK);
    EXPECT_EQ(p, p2);  // kept: not recomputed
}

TEST_F(InteropTest, DataPtrBadInputs) {
    void *p = reinterpret_cast<void *>(1);
    EXPECT_EQ(flx_data_ptr(nullptr, &p), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(p, nullptr);
    flx_clear_error();
    flx_tensor *x = make(ctx, FLX_F32, {2}, {1, 2});
    EXPECT_EQ(flx_data_ptr(x, nullptr), FLX_ERR_INVALID_ARGUMENT);
    flx_clear_error();
}

TEST_F(InteropTest, FromBlobIsZeroCopyAndCallsTheDeleterOnce) {
    std::vector<float> host = {1, 2, 3, 4, 5, 6};
    Counter c;
    int64_t shape[2] = {2, 3};
    flx_ctx_stats before{};
    ASSERT_EQ(flx_ctx_get_stats(ctx, &before), FLX_OK);
    flx_tensor *t = flx_from_blob(ctx, FLX_F32, 2, shape, host.data(), count_delete, &c);
    ASSERT_NE(t, nullptr) << flx_last_error();
    EXPECT_EQ(shape_of(t), (Shape{2, 3}));
    void *p = nullptr;
    ASSERT_EQ(flx_data_ptr(t, &p), FLX_OK);
    EXPECT_EQ(p, host.data());  // the same memory
    host[4] = 50;               // written through the host side, read through the tensor
    EXPECT_TRUE(close(values(t), {1, 2, 3, 4, 50, 6}));
    flx_tensor *s = flx_sum_all(t);
    double v = 0;
    ASSERT_EQ(flx_item(s, &v), FLX_OK);
    EXPECT_EQ(v, 66.0);
    // Buffer shared by a reshape: the deleter waits for the last user.
    flx_tensor *r = flx_retain(flx_reshape(t, 1, std::vector<int64_t>{6}.data()));
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(flx_eval(1, &r), FLX_OK);
    flx_ctx_stats after{};
    ASSERT_EQ(flx_ctx_get_stats(ctx, &after), FLX_OK);
    EXPECT_EQ(c.deleted, 0);
    // Not counted by the allocator (only the sum's scalar was allocated).
    EXPECT_LE(after.bytes_in_use - before.bytes_in_use, 16u);
    // Leave the fixture's scope now to see the deleter run.
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(c.deleted, 0);  // r still holds the buffer
    flx_release(r);
    EXPECT_EQ(c.deleted, 1);
    EXPECT_EQ(c.last, host.data());
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
}

TEST_F(InteropTest, FromBlobWithoutDeleterAndEmpty) {
    double host[3] = {1, 2, 3};
    flx_tensor *t = flx_from_blob(ctx, FLX_F64, 1, std::vector<int64_t>{3}.data(), host, nullptr, nullptr);
    ASSERT_NE(t, nullptr) << flx_last_error();
    EXPECT_TRUE(close(values(flx_mul_scalar(t, 2)), {2, 4, 6}));
    Counter c;
    flx_tensor *e = flx_from_blob(ctx, FLX_F32, 2, std::vector<int64_t>{0, 4}.data(), nullptr, count_delete, &c);
    ASSERT_NE(e, nullptr) << flx_last_error();
    EXPECT_EQ(flx_numel(e), 0);
    EXPECT_TRUE(close(values(flx_sum_all(e)), {0}));
    EXPECT_EQ(c.deleted, 0);
    // Leave the fixture's scope while c is alive: the deleter runs once, with the NULL given.
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(c.deleted, 1);
    EXPECT_EQ(c.last, nullptr);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
}

TEST_F(InteropTest, FromBlobBadInputsStillCallTheDeleter) {
    float host[4] = {0, 0, 0, 0};
    Counter c;
    struct Bad {
        bool no_ctx;
        flx_dtype dt;
        int64_t dim;
        bool no_data;
        flx_status status;
        const char *needle;
    };
    const Bad bad[] = {{true, FLX_F32, 4, false, FLX_ERR_INVALID_ARGUMENT, "ctx"},
                       {false, FLX_DTYPE_COUNT, 4, false, FLX_ERR_DTYPE, "dtype"},
                       {false, FLX_F32, -4, false, FLX_ERR_SHAPE, "negative"},
                       {false, FLX_F32, 4, true, FLX_ERR_INVALID_ARGUMENT, "NULL"}};
    for (int i = 0; i < 4; i++) {
        const Bad &b = bad[i];
        EXPECT_TRUE(fails_with(flx_from_blob(b.no_ctx ? nullptr : ctx, b.dt, 1, &b.dim, b.no_data ? nullptr : host,
                                             count_delete, &c),
                               b.status, b.needle))
            << "case " << i;
        EXPECT_EQ(c.deleted, i + 1) << "case " << i << ": the deleter runs once for a refused blob";
        flx_clear_error();
    }
}

TEST_F(InteropTest, FromBlobCanBecomeALeaf) {
    double host[3] = {1, 2, 3};
    flx_tensor *x = flx_from_blob(ctx, FLX_F64, 1, std::vector<int64_t>{3}.data(), host, nullptr, nullptr);
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    ASSERT_EQ(flx_backward(flx_sum_all(flx_square(x))), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(x)), {2, 4, 6}));
}

TEST_F(InteropTest, CtxStreamIsNullOnTheCpu) {
    EXPECT_EQ(flx_ctx_stream(ctx), nullptr);
    EXPECT_EQ(flx_ctx_stream(nullptr), nullptr);
}

// ---- custom functions ------------------------------------------------------------------------------
TEST_F(InteropTest, CustomSquareValueAndGradientsMatchSquare) {
    SquareStats st;
    {
        flx_tensor *x = rand_tensor(ctx, FLX_F64, {3, 4}, 5);
        flx_tensor *y = custom_square(x, &st);
        ASSERT_NE(y, nullptr) << flx_last_error();
        EXPECT_EQ(st.fwd, 1);
        EXPECT_TRUE(close(values(y), values(flx_square(x))));
        // Reverse and forward mode through the user's callbacks match the built-in rule.
        Fn f = [&](const std::vector<flx_tensor *> &in) { return custom_square(in[0], &st); };
        EXPECT_EQ(gradcheck(f, {x}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(f, {x}));
        EXPECT_GT(st.vjp, 0);
        EXPECT_GT(st.jvp, 0);
        // Composed with other ops, on both sides.
        Fn g = [&](const std::vector<flx_tensor *> &in) {
            return flx_sin(flx_matmul(custom_square(flx_tanh(in[0]), &st), in[1]));
        };
        flx_tensor *w = rand_tensor(ctx, FLX_F64, {4, 2}, 6);
        EXPECT_EQ(gradcheck(g, {x, w}), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(g, {x, w}));
        // Second order: the VJP callback is made of ops, so it differentiates again.
        {
            flx_tensor *xl = make(ctx, FLX_F64, {3}, {1, -2, 0.5});
            ASSERT_EQ(flx_set_requires_grad(xl, true), FLX_OK);
            flx_tensor *l = flx_sum_all(flx_mul(custom_square(xl, &st), xl));  // sum x^3
            flx_tensor *gx = nullptr, *g2 = nullptr;
            ASSERT_EQ(flx_grad_of(1, &l, nullptr, 1, &xl, true, &gx), FLX_OK) << flx_last_error();
            EXPECT_TRUE(close(values(gx), {3, 12, 0.75}));  // 3 x^2
            flx_tensor *sg = flx_sum_all(gx);
            ASSERT_EQ(flx_grad_of(1, &sg, nullptr, 1, &xl, false, &g2), FLX_OK) << flx_last_error();
            EXPECT_TRUE(close(values(g2), {6, -12, 3}));  // 6 x
        }
        // backward() into a leaf.
        flx_tensor *leaf = make(ctx, FLX_F64, {3}, {1, -2, 3});
        ASSERT_EQ(flx_set_requires_grad(leaf, true), FLX_OK);
        flx_tensor *loss = flx_sum_all(custom_square(leaf, &st));
        ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(flx_grad(leaf)), {2, -4, 6}));
        EXPECT_TRUE(close(values(loss), {14}));
    }
    // Every node is gone at the end of the fixture's scope; destroy runs once per node.
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(st.destroyed, st.fwd);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
}

TEST_F(InteropTest, CustomFunctionKeepsItsValueAndNeverRecomputes) {
    SquareStats st;
    flx_tensor *x = make(ctx, FLX_F32, {2}, {3, 4});
    flx_tensor *y = custom_square(x, &st);
    ASSERT_NE(y, nullptr) << flx_last_error();
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);  // y dies, its node too
    EXPECT_EQ(st.destroyed, 1);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    // A consumer of a dropped handle keeps the node (and its callbacks) alive.
    SquareStats st2;
    x = make(ctx, FLX_F32, {2}, {3, 4});
    flx_tensor *z = flx_retain(flx_add_scalar(custom_square(x, &st2), 1));
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(st2.destroyed, 0);
    EXPECT_TRUE(close(values(z), {10, 17}));
    EXPECT_EQ(st2.fwd, 1);
    flx_release(z);
    EXPECT_EQ(st2.destroyed, 1);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
}

TEST_F(InteropTest, CustomFunctionWithoutRulesIsNotDifferentiable) {
    static SquareStats st;  // outlives the fixture's scope, which destroys the nodes
    flx_tensor *x = make(ctx, FLX_F64, {2}, {1, 2});
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    flx_tensor *y = flx_sum_all(custom_square(x, &st, false));
    ASSERT_NE(y, nullptr);
    EXPECT_EQ(flx_backward(y), FLX_ERR_NOT_DIFFERENTIABLE);
    EXPECT_NE(std::strstr(flx_last_error(), "VJP"), nullptr) << flx_last_error();
    flx_clear_error();
    flx_tensor *t = flx_ones(ctx, FLX_F64, 1, std::vector<int64_t>{2}.data());
    flx_tensor *out = nullptr;
    EXPECT_EQ(flx_jvp(1, &x, &t, 1, &y, &out), FLX_ERR_NOT_DIFFERENTIABLE);
    flx_clear_error();
    // Without grad mode nothing is recorded for gradients.
    flx_no_grad_begin();
    flx_tensor *n = custom_square(x, &st);
    flx_no_grad_end();
    EXPECT_FALSE(flx_requires_grad(n));
}

namespace {
flx_status bad_fwd(int32_t, flx_tensor *const *, flx_tensor **out, void *) {
    *out = nullptr;
    return FLX_ERR_NUMERIC;
}
flx_status null_fwd(int32_t, flx_tensor *const *, flx_tensor **out, void *) {
    *out = nullptr;
    return FLX_OK;
}
flx_status wrong_vjp(int32_t, flx_tensor *const *in, flx_tensor *, flx_tensor *g, flx_tensor **gin,
                     void *) {
    gin[0] = flx_sum_all(g);  // wrong shape
    (void)in;
    return FLX_OK;
}
int g_destroyed = 0;
void count_destroy(void *) { g_destroyed++; }
}  // namespace

TEST_F(InteropTest, CustomFunctionBadInputs) {
    flx_tensor *x = make(ctx, FLX_F64, {2}, {1, 2});
    flx_tensor *out = reinterpret_cast<flx_tensor *>(1);
    g_destroyed = 0;
    EXPECT_EQ(flx_custom_fn(1, &x, nullptr, nullptr, nullptr, nullptr, count_destroy, &out),
              FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(out, nullptr);
    EXPECT_EQ(g_destroyed, 1);
    flx_clear_error();
    EXPECT_EQ(flx_custom_fn(0, &x, sq_fwd, nullptr, nullptr, nullptr, count_destroy, &out),
              FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(g_destroyed, 2);
    flx_clear_error();
    flx_tensor *nul = nullptr;
    EXPECT_EQ(flx_custom_fn(1, &nul, sq_fwd, nullptr, nullptr, nullptr, count_destroy, &out),
              FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(g_destroyed, 3);
    flx_clear_error();
    EXPECT_EQ(flx_custom_fn(1, &x, bad_fwd, nullptr, nullptr, nullptr, count_destroy, &out),
              FLX_ERR_NUMERIC);
    EXPECT_NE(std::strstr(flx_last_error(), "fwd"), nullptr) << flx_last_error();
    EXPECT_EQ(g_destroyed, 4);
    flx_clear_error();
    EXPECT_EQ(flx_custom_fn(1, &x, null_fwd, nullptr, nullptr, nullptr, count_destroy, &out),
              FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(g_destroyed, 5);
    flx_clear_error();
    EXPECT_EQ(flx_custom_fn(1, &x, sq_fwd, nullptr, nullptr, nullptr, count_destroy, nullptr),
              FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(g_destroyed, 6);
    flx_clear_error();
    // A VJP callback that returns the wrong shape is reported, not trusted.
    SquareStats st;
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    flx_tensor *y = nullptr;
    ASSERT_EQ(flx_custom_fn(1, &x, sq_fwd, wrong_vjp, nullptr, &st, nullptr, &y), FLX_OK);
    EXPECT_EQ(flx_backward(flx_sum_all(y)), FLX_ERR_SHAPE);
    EXPECT_NE(std::strstr(flx_last_error(), "VJP callback"), nullptr) << flx_last_error();
    flx_clear_error();
}
