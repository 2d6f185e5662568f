// test_attention_qkv.cc — flx_attention on q, k, v that are views of one fused projection: read
// in place (no copies), with values and derivatives of every order equal to the copying path
// (the same views evaluated into tensors of their own first), on the CPU and on CUDA.
#include <cmath>
#include <functional>
#include <vector>

#include "testing.h"

namespace {

using flxt::close;
using flxt::Shape;
using flxt::values;

class AttentionQkv : public flxt::CpuTest {};
using AttentionQkvCuda = flxt::CudaCpuTest;

// The three views of X that attention reads: q, k, v (B, H, T, D) each.
using Heads = std::function<void(flx_tensor *X, flx_tensor **qkv)>;

// GPT-2's layout: X (B T, 3 C), q = columns [0, C), k [C, 2C), v [2C, 3C), each (B, T, H, D)
// permuted to (B, H, T, D).
Heads gpt2_heads(int64_t B, int64_t T, int64_t H, int64_t D) {
    return [=](flx_tensor *X, flx_tensor **r) {
        const int64_t C = H * D, s4[4] = {B, T, H, D};
        const int32_t perm[4] = {0, 2, 1, 3};
        for (int i = 0; i < 3; i++)
            r[i] = flx_permute(flx_reshape(flx_slice(X, 1, i * C, (i + 1) * C, 1), 4, s4), perm);
    };
}

// X (3, B, H, T, D) with k first, then v, then q: the order of the parts is free.
Heads stacked_heads(int64_t B, int64_t T, int64_t H, int64_t D) {
    return [=](flx_tensor *X, flx_tensor **r) {
        const int64_t s4[4] = {B, H, T, D};
        const int at[3] = {2, 0, 1};
        for (int i = 0; i < 3; i++) r[i] = flx_reshape(flx_slice(X, 0, at[i], at[i] + 1, 1), 4, s4);
    };
}

struct Result {
    std::vector<double> o, grad, hvp, jvp, fwd_over_rev, inference;
    uint64_t backward_kernels = 0;
};

// o = attention(views of X); the gradient of <w, o> in X, its kernel count, and the HVP
// d/dX <grad, u>. copy: the views are evaluated into tensors first, so attention reads copies.
Result run(flx_ctx *ctx, const Heads &heads, const Shape &xs, const Shape &os, bool causal, bool copy,
        flx_dtype dt) {
    Result r;
    EXPECT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *X = flxt::rand_tensor(ctx, dt, xs, 7, -1, 1);
    flx_tensor *w = flxt::rand_tensor(ctx, dt, os, 8, -1, 1);
    flx_tensor *u = flxt::rand_tensor(ctx, dt, xs, 9, -1, 1);
    EXPECT_EQ(flx_set_requires_grad(X, true), FLX_OK);
    flx_tensor *q[3];
    heads(X, q);
    if (copy) EXPECT_EQ(flx_eval(3, q), FLX_OK) << flx_last_error();
    flx_tensor *o = flx_attention(q[0], q[1], q[2], causal, 0.0);
    EXPECT_EQ(flx_eval(1, &o), FLX_OK) << flx_last_error();
    flx_tensor *loss = flx_sum_all(flx_mul(o, w)), *g = nullptr;
    EXPECT_EQ(flx_eval(1, &loss), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_grad_of(1, &loss, nullptr, 1, &X, true, &g), FLX_OK) << flx_last_error();
    flx_ctx_stats st0{}, st1{};
    flx_ctx_get_stats(ctx, &st0);
    EXPECT_EQ(flx_eval(1, &g), FLX_OK) << flx_last_error();
    flx_ctx_get_stats(ctx, &st1);
    r.backward_kernels = st1.kernels - st0.kernels;
    flx_tensor *gu = flx_sum_all(flx_mul(g, u)), *h = nullptr;
    EXPECT_EQ(flx_grad_of(1, &gu, nullptr, 1, &X, false, &h), FLX_OK) << flx_last_error();
    flx_tensor *to = nullptr;
    EXPECT_EQ(flx_jvp(1, &X, &u, 1, &o, &to), FLX_OK) << flx_last_error();
    flx_tensor *tg = nullptr; /* forward over reverse: the HVP again, through the JVP rules */
    EXPECT_EQ(flx_jvp(1, &X, &u, 1, &g, &tg), FLX_OK) << flx_last_error();
    // without a gradient to follow: the forward-only node
    flx_no_grad_begin();
    flx_tensor *p[3];
    heads(X, p);
    if (copy) EXPECT_EQ(flx_eval(3, p), FLX_OK) << flx_last_error();
    flx_tensor *oi = flx_attention(p[0], p[1], p[2], causal, 0.0);
    flx_no_grad_end();
    r.o = values(o);
    r.grad = values(g);
    r.hvp = values(h);
    r.jvp = values(to);
    r.fwd_over_rev = values(tg);
    r.inference = values(oi);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    return r;
}

void expect_same(const Result &a, const Result &b, double tol) {
    EXPECT_TRUE(close(a.o, b.o, tol, tol));
    EXPECT_TRUE(close(a.grad, b.grad, tol, tol));
    EXPECT_TRUE(close(a.hvp, b.hvp, tol, tol));
    EXPECT_TRUE(close(a.jvp, b.jvp, tol, tol));
    EXPECT_TRUE(close(a.fwd_over_rev, b.fwd_over_rev, tol, tol));
    EXPECT_TRUE(close(a.fwd_over_rev, a.hvp, tol, tol)); /* the Hessian is symmetric */
    EXPECT_TRUE(close(a.inference, b.o, tol, tol));
    EXPECT_TRUE(close(b.inference, b.o, tol, tol));
}

TEST_F(AttentionQkv, FusedProjectionViewsReadInPlace) {
    const int64_t B = 2, T = 5, H = 3, D = 4;
    for (bool causal : {true, false}) {
        SCOPED_TRACE(causal ? "causal" : "full");
        Result in_place = run(ctx, gpt2_heads(B, T, H, D), {B * T, 3 * H * D}, {B, H, T, D}, causal, false, FLX_F64);
        Result copied = run(ctx, gpt2_heads(B, T, H, D), {B * T, 3 * H * D}, {B, H, T, D}, causal, true, FLX_F64);
        expect_same(in_place, copied, 1e-12);
        // The copying backward adds the views' adjoints: 3 permutes, 3 pads, 2 sums and the
        // dk/dv read-outs; in place, the one BWD kernel writes X's gradient.
        EXPECT_LE(in_place.backward_kernels + 8, copied.backward_kernels)
            << in_place.backward_kernels << " vs " << copied.backward_kernels;
        Result stacked = run(ctx, stacked_heads(B, T, H, D), {3, B, H, T, D}, {B, H, T, D}, causal, false, FLX_F64);
        Result stacked_copy = run(ctx, stacked_heads(B, T, H, D), {3, B, H, T, D}, {B, H, T, D}, causal, true, FLX_F64);
        expect_same(stacked, stacked_copy, 1e-12);
        EXPECT_LT(stacked.backward_kernels, stacked_copy.backward_kernels);
    }
}

// Views that do not tile one tensor (two of three columns blocks, or overlapping) take the
// copying path, with the same values.
TEST_F(AttentionQkv, PartialOrOverlappingViewsStillWork) {
    const int64_t B = 1, T = 3, H = 2, D = 2, C = H * D;
    Heads overlap = [=](flx_tensor *X, flx_tensor **r) {
        const int64_t s4[4] = {B, T, H, D};
        const int32_t perm[4] = {0, 2, 1, 3};
        for (int i = 0; i < 3; i++) /* q and v are the same columns */
            r[i] = flx_permute(flx_reshape(flx_slice(X, 1, (i % 2) * C, (i % 2 + 1) * C, 1), 4, s4), perm);
    };
    Result a = run(ctx, overlap, {B * T, 3 * C}, {B, H, T, D}, true, false, FLX_F64);
    Result b = run(ctx, overlap, {B * T, 3 * C}, {B, H, T, D}, true, true, FLX_F64);
    expect_same(a, b, 1e-12);
}

TEST_F(AttentionQkvCuda, FusedProjectionViewsMatchCpu) {
    const int64_t B = 2, T = 70, H = 2, D = 64;
    for (flx_dtype dt : {FLX_F32, FLX_BF16}) {
        SCOPED_TRACE(flx_dtype_name(dt));
        Result g = run(gpu, gpt2_heads(B, T, H, D), {B * T, 3 * H * D}, {B, H, T, D}, true, false, dt);
        Result c = run(cpu, gpt2_heads(B, T, H, D), {B * T, 3 * H * D}, {B, H, T, D}, true, true, dt);
        double tol = dt == FLX_F32 ? 1e-4 : 5e-2;
        EXPECT_TRUE(close(g.o, c.o, tol, tol));
        EXPECT_TRUE(close(g.grad, c.grad, tol, tol));
    }
}

}  // namespace
