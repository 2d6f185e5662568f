// test_gemm_bgrad.cc — the backward's bias gradient inside the weight-gradient GEMM
// (runtime/core/fuse_gemm.c, gemm_ex's bgrad output): dW = dy^T x and db = sum(dy, 0) computed by
// one kernel-family call that writes two outputs.
// CPU: fused and unfused give the same bits (eager, plans; the compiled SGD and Adam training
// steps are in test_gemm_epilogue.cc), values match a float64 reference, and kernel counts show
// when the rule fires and when it must not (wrong axis, a mean, batched operands, an input
// computed between the two nodes). CUDA (skipped without a GPU): cuBLASLt's BGRAD epilogues
// against the CPU reference.
#include <functional>
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

using GemmBgradTest = CpuTest;

// Evaluates what build returns with fusion on (pass 0) and off (pass 1) in fresh scopes; returns
// the bits of each output per pass and the stats of each evaluation (with build_runs, of the
// build too: one that evaluates, such as flx_backward).
struct Passes {
    std::vector<std::vector<unsigned char>> bits[2];
    std::vector<std::vector<double>> vals[2];
    flx_ctx_stats st[2];
};
Passes both_ways(flx_ctx *ctx, const std::function<std::vector<flx_tensor *>()> &build,
                 bool build_runs = false) {
    Passes p;
    for (int pass = 0; pass < 2; pass++) {
        EXPECT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
        EXPECT_EQ(flx_scope_begin(), FLX_OK);
        if (build_runs) EXPECT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
        std::vector<flx_tensor *> out = build();
        if (!build_runs) EXPECT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
        EXPECT_EQ(flx_eval((int32_t)out.size(), out.data()), FLX_OK) << flx_last_error();
        p.st[pass] = ctx_stats(ctx);
        for (flx_tensor *t : out) p.bits[pass].push_back(raw_bits(t));
        for (flx_tensor *t : out) p.vals[pass].push_back(values(t));
        EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    EXPECT_EQ(flx_set_fusion(ctx, true), FLX_OK);
    return p;
}

// dW and db of y = x W^T + b for the cotangent u, as flx_grad_of builds them.
std::vector<flx_tensor *> linear_grads(flx_tensor *x, flx_tensor *W, flx_tensor *b, flx_tensor *u) {
    need_grad({W, b});
    flx_tensor *y = flx_linear(x, W, b);
    flx_tensor *in[2] = {W, b}, *g[2] = {nullptr, nullptr};
    EXPECT_EQ(flx_grad_of(1, &y, &u, 2, in, false, g), FLX_OK) << flx_last_error();
    return {g[0], g[1]};
}

TEST_F(GemmBgradTest, WeightAndBiasGradientsAreOneCall) {
    const int64_t B = 9, I = 7, O = 5;
    for (flx_dtype dt : {FLX_F32, FLX_F64, FLX_F16, FLX_BF16}) {
        std::vector<double> xv, uv;
        Passes p = both_ways(ctx, [&] {
            flx_tensor *x = rand_tensor(ctx, dt, {B, I}, 1), *W = rand_tensor(ctx, dt, {O, I}, 2);
            flx_tensor *b = rand_tensor(ctx, dt, {O}, 3), *u = rand_tensor(ctx, dt, {B, O}, 4);
            std::vector<flx_tensor *> g = linear_grads(x, W, b, u);
            xv = values(x), uv = values(u);
            return g;
        });
        EXPECT_EQ(p.bits[0], p.bits[1]) << flx_dtype_name(dt);
        EXPECT_EQ(p.st[0].kernels, 1u) << flx_dtype_name(dt);  // dW and db: one gemm_ex call
        EXPECT_EQ(p.st[1].kernels, 2u) << flx_dtype_name(dt);  // a matmul and a reduce
        EXPECT_EQ(p.st[0].nodes_fused, 2u) << flx_dtype_name(dt);
        EXPECT_EQ(p.st[0].allocs, p.st[1].allocs) << flx_dtype_name(dt);  // both outputs stored
        // float64 reference of the f32/f64 results (each output rounded once to the dtype)
        if (dt != FLX_F32 && dt != FLX_F64) continue;
        std::vector<double> want_w(O * I, 0.0), want_b(O, 0.0);
        for (int64_t r = 0; r < B; r++)
            for (int64_t o = 0; o < O; o++) {
                want_b[o] += uv[r * O + o];
                for (int64_t i = 0; i < I; i++) want_w[o * I + i] += uv[r * O + o] * xv[r * I + i];
            }
        double tol = dt == FLX_F32 ? 1e-6 : 1e-14;
        EXPECT_TRUE(close(p.vals[0][0], want_w, tol, tol)) << flx_dtype_name(dt);
        EXPECT_TRUE(close(p.vals[0][1], want_b, tol, tol)) << flx_dtype_name(dt);
    }
}

// Every operand and transpose the rule accepts, in both list orders (the sum before the product
// makes the sum the group's root), each bit-identical to the unfused kernels and one call.
TEST_F(GemmBgradTest, EveryOperandOrientationAndOrder) {
    struct Case {
        const char *name;
        // returns {product, sum}
        std::function<std::vector<flx_tensor *>(flx_ctx *)> f;
    };
    const int32_t ax0[1] = {0}, ax1[1] = {1};
    const std::vector<Case> cases = {
        // A = G transposed (dW = G^T x), sum over G's rows, kept dims
        {"A, ta", [&](flx_ctx *c) {
             // flx_matmul(flx_transpose(G, 0, 1), X) would copy G^T; the product that reads G
             // in place is a VJP's: d/dW of X W^T at the cotangent G
             flx_tensor *G = rand_tensor(c, FLX_F32, {6, 4}, 11), *X = rand_tensor(c, FLX_F32, {6, 3}, 12);
             flx_tensor *W = rand_tensor(c, FLX_F32, {4, 3}, 13);
             need_grad({W});
             flx_tensor *z = flx_linear(X, W, nullptr), *gw = nullptr;
             EXPECT_EQ(flx_grad_of(1, &z, &G, 1, &W, false, &gw), FLX_OK) << flx_last_error();
             return std::vector<flx_tensor *>{gw, flx_sum(G, 1, ax0, true)};
         }},
        // A = P untransposed (P X), sum over P's columns (the k axis), dims dropped
        {"A, no ta", [&](flx_ctx *c) {
             flx_tensor *P = rand_tensor(c, FLX_F32, {5, 6}, 21), *X = rand_tensor(c, FLX_F32, {6, 3}, 22);
             return std::vector<flx_tensor *>{flx_matmul(P, X), flx_sum(P, 1, ax1, false)};
         }},
        // B = Q untransposed (X Q), sum over Q's rows
        {"B, no tb", [&](flx_ctx *c) {
             flx_tensor *X = rand_tensor(c, FLX_F32, {5, 6}, 31), *Q = rand_tensor(c, FLX_F32, {6, 3}, 32);
             return std::vector<flx_tensor *>{flx_matmul(X, Q), flx_sum(Q, 1, ax0, false)};
         }},
        // B = W transposed (x W^T, flx_linear), sum over W's columns
        {"B, tb", [&](flx_ctx *c) {
             flx_tensor *X = rand_tensor(c, FLX_F32, {5, 6}, 41), *W = rand_tensor(c, FLX_F32, {3, 6}, 42);
             return std::vector<flx_tensor *>{flx_linear(X, W, nullptr), flx_sum(W, 1, ax1, true)};
         }},
    };
    for (const Case &c : cases)
        for (int order = 0; order < 2; order++) {
            Passes p = both_ways(ctx, [&] {
                std::vector<flx_tensor *> v = c.f(ctx);
                if (order) std::swap(v[0], v[1]);
                return v;
            });
            EXPECT_EQ(p.bits[0], p.bits[1]) << c.name << " order " << order;
            EXPECT_EQ(p.st[0].kernels, 1u) << c.name << " order " << order;
            EXPECT_EQ(p.st[1].kernels, 2u) << c.name << " order " << order;
        }
}

// Both values are stored, so readers of the product or of the sum elsewhere in the evaluation do
// not stop the group (unlike the forward chain's interior members).
TEST_F(GemmBgradTest, OtherReadersDoNotStopTheGroup) {
    const int32_t ax1[1] = {1};
    Passes p = both_ways(ctx, [&] {
        flx_tensor *X = rand_tensor(ctx, FLX_F64, {5, 6}, 45), *W = rand_tensor(ctx, FLX_F64, {3, 6}, 46);
        flx_tensor *y = flx_linear(X, W, nullptr), *s = flx_sum(W, 1, ax1, false);
        return std::vector<flx_tensor *>{flx_exp(y), flx_mul_scalar(y, 3.0), flx_sqrt(flx_abs(s)), s};
    });
    EXPECT_EQ(p.bits[0], p.bits[1]);
    EXPECT_EQ(p.st[0].kernels, 4u);  // gemm_ex, exp, mul, abs + sqrt fused
    EXPECT_EQ(p.st[1].kernels, 6u);
}

// Where the rule must not fire: the kernel count equals the unfused one, and the bits too.
TEST_F(GemmBgradTest, RuleDoesNotFireWhereItMustNot) {
    struct Case {
        const char *name;
        std::function<std::vector<flx_tensor *>(flx_ctx *)> f;
        uint64_t kernels;
    };
    const int32_t ax0[1] = {0}, ax1[1] = {1};
    const std::vector<Case> cases = {
        // the sum runs over the operand's other axis (not the product's k)
        {"wrong axis", [&](flx_ctx *c) {
             flx_tensor *P = rand_tensor(c, FLX_F32, {5, 6}, 51), *X = rand_tensor(c, FLX_F32, {6, 3}, 52);
             return std::vector<flx_tensor *>{flx_matmul(P, X), flx_sum(P, 1, ax0, false)};
         }, 2},
        // a mean is a sum with a scale
        {"mean", [&](flx_ctx *c) {
             flx_tensor *P = rand_tensor(c, FLX_F32, {5, 6}, 53), *X = rand_tensor(c, FLX_F32, {6, 3}, 54);
             return std::vector<flx_tensor *>{flx_matmul(P, X), flx_mean(P, 1, ax1, false)};
         }, 2},
        // a sum over both axes
        {"total sum", [&](flx_ctx *c) {
             flx_tensor *P = rand_tensor(c, FLX_F32, {5, 6}, 55), *X = rand_tensor(c, FLX_F32, {6, 3}, 56);
             return std::vector<flx_tensor *>{flx_matmul(P, X), flx_sum(P, 0, nullptr, false)};
         }, 2},
        // another dtype's sum (of a cast) is another operand
        {"sum of a cast", [&](flx_ctx *c) {
             flx_tensor *P = rand_tensor(c, FLX_F32, {5, 6}, 57), *X = rand_tensor(c, FLX_F32, {6, 3}, 58);
             return std::vector<flx_tensor *>{flx_matmul(P, X), flx_sum(flx_cast(P, FLX_F64), 1, ax1, false)};
         }, 3},
        // batched (3-d) dense layer: the weight gradient is a batched product, then summed
        {"batched x", [&](flx_ctx *c) {
             flx_tensor *x = rand_tensor(c, FLX_F32, {2, 4, 6}, 59), *W = rand_tensor(c, FLX_F32, {3, 6}, 60);
             flx_tensor *b = rand_tensor(c, FLX_F32, {3}, 61), *u = rand_tensor(c, FLX_F32, {2, 4, 3}, 62);
             return linear_grads(x, W, b, u);
         }, 3},
        // the sum comes first in the list and the product's other operand is computed after it:
        // the product cannot run at the sum's step
        {"operand computed between", [&](flx_ctx *c) {
             flx_tensor *X0 = rand_tensor(c, FLX_F32, {5, 6}, 63), *W = rand_tensor(c, FLX_F32, {3, 6}, 64);
             flx_tensor *s = flx_sum(W, 1, ax1, false);
             return std::vector<flx_tensor *>{s, flx_linear(flx_exp(X0), W, nullptr)};
         }, 3},
    };
    for (const Case &c : cases) {
        Passes p = both_ways(ctx, [&] { return c.f(ctx); });
        EXPECT_EQ(p.bits[0], p.bits[1]) << c.name;
        EXPECT_EQ(p.st[0].kernels, c.kernels) << c.name;
        EXPECT_EQ(p.st[1].kernels, c.kernels) << c.name;
    }
    // The same graph as the last case with the product first in the list does fuse.
    Passes p = both_ways(ctx, [&] {
        flx_tensor *X0 = rand_tensor(ctx, FLX_F32, {5, 6}, 63), *W = rand_tensor(ctx, FLX_F32, {3, 6}, 64);
        flx_tensor *y = flx_linear(flx_exp(X0), W, nullptr);
        return std::vector<flx_tensor *>{y, flx_sum(W, 1, ax1, false)};
    });
    EXPECT_EQ(p.bits[0], p.bits[1]);
    EXPECT_EQ(p.st[0].kernels, 2u);
    EXPECT_EQ(p.st[1].kernels, 3u);
}

// In a plan the second output's memory lives from the group's step to its last reader: read
// after other work (and reshaped, an alias), in either list order, it keeps its value while the
// plan's other buffers are reused.
TEST_F(GemmBgradTest, PlanStoresTheSecondOutputForItsReaders) {
    const int32_t ax0[1] = {0};
    for (int order = 0; order < 2; order++) {
        std::vector<std::vector<unsigned char>> bits[2];
        for (int pass = 0; pass < 2; pass++) {
            ASSERT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
            ASSERT_EQ(flx_scope_begin(), FLX_OK);
            flx_tensor *G = rand_tensor(ctx, FLX_F32, {16, 8}, 71), *X = rand_tensor(ctx, FLX_F32, {16, 12}, 72);
            flx_tensor *W = rand_tensor(ctx, FLX_F32, {8, 12}, 73);
            need_grad({W});
            flx_tensor *z = flx_linear(X, W, nullptr), *gw = nullptr;
            ASSERT_EQ(flx_grad_of(1, &z, &G, 1, &W, false, &gw), FLX_OK) << flx_last_error();
            flx_tensor *db = flx_sum(G, 1, ax0, true);
            // work between the group and the readers, big enough to want the freed memory
            flx_tensor *big = flx_tanh(flx_matmul(X, flx_transpose(X, 0, 1)));
            flx_tensor *r1 = flx_add(flx_mul_scalar(gw, 0.5), flx_sum(big, 0, nullptr, false));
            int64_t s8[1] = {8};
            flx_tensor *r2 = flx_mul(flx_reshape(db, 1, s8), flx_exp(flx_reshape(db, 1, s8)));
            flx_tensor *outs[2] = {order ? r2 : r1, order ? r1 : r2};
            flx_plan *plan = flx_plan_compile(2, outs, 1, &G, nullptr);
            ASSERT_NE(plan, nullptr) << flx_last_error();
            for (int run = 0; run < 2; run++) {
                flx_tensor *g2 = rand_tensor(ctx, FLX_F32, {16, 8}, 80 + (uint64_t)run);
                ASSERT_EQ(flx_plan_set_input(plan, 0, g2), FLX_OK) << flx_last_error();
                ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
                for (int k = 0; k < 2; k++) bits[pass].push_back(raw_bits(flx_plan_output(plan, k)));
            }
            flx_plan_destroy(plan);
            ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        }
        ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
        ASSERT_EQ(bits[0].size(), bits[1].size());
        for (size_t i = 0; i < bits[0].size(); i++) EXPECT_EQ(bits[0][i], bits[1][i]) << "order " << order << " value " << i;
    }
}

// Eager training: flx_backward's gradients with fusion on and off are the same bits.
TEST_F(GemmBgradTest, EagerBackwardMatchesUnfused) {
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        Passes p = both_ways(ctx, [&] {
            flx_tensor *x = rand_tensor(ctx, dt, {12, 10}, 91), *W1 = rand_tensor(ctx, dt, {8, 10}, 92);
            flx_tensor *b1 = rand_tensor(ctx, dt, {8}, 93), *W2 = rand_tensor(ctx, dt, {4, 8}, 94);
            flx_tensor *b2 = rand_tensor(ctx, dt, {4}, 95);
            std::vector<flx_tensor *> ps = {W1, b1, W2, b2};
            need_grad(ps);
            flx_tensor *y = flx_linear(flx_relu(flx_linear(x, W1, b1)), W2, b2);
            flx_tensor *loss = flx_sum(flx_mul(y, y), 0, nullptr, false);
            EXPECT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
            std::vector<flx_tensor *> g;
            for (flx_tensor *t : ps) g.push_back(flx_grad(t));
            return g;
        }, true);
        EXPECT_EQ(p.bits[0], p.bits[1]) << flx_dtype_name(dt);
        // the two layers' bias gradients join their weight gradients (and more fuses besides)
        EXPECT_LE(p.st[0].kernels + 2, p.st[1].kernels) << flx_dtype_name(dt);
    }
}

// ---- CUDA ----------------------------------------------------------------------------------------
// cuBLASLt's BGRADA/BGRADB epilogues (or, where it refuses, the unfused kernels) against the CPU.
// The sum and the product each accumulate k = batch terms in f32 on the GPU (double on the CPU),
// so with entries in [-1, 1) and k <= 1024 the error is a few 1e-5 of the typical magnitude:
// 1e-4 absolute and relative, as for the forward epilogues; f64 1e-10.
using GemmBgradCuda = CudaCpuTest;

struct Shp {
    int64_t B, I, O;
};

// On ctx: dW and db of y = x W^T + b (db from the A operand, dy), then dQ and db of y = x Q + b
// (dQ = x^T u, db from the B operand), for the cotangent u; the same seeds on every context.
void bgrad_outputs(flx_ctx *ctx, flx_dtype dt, const Shp &s, std::vector<std::vector<double>> *out) {
    flx_tensor *x = rand_tensor(ctx, dt, {s.B, s.I}, 101), *W = rand_tensor(ctx, dt, {s.O, s.I}, 102);
    flx_tensor *b = rand_tensor(ctx, dt, {s.O}, 103), *u = rand_tensor(ctx, dt, {s.B, s.O}, 104);
    for (flx_tensor *t : {x, W, b, u}) ASSERT_EQ(flx_eval(1, &t), FLX_OK) << flx_last_error();
    for (flx_tensor *g : linear_grads(x, W, b, u)) out->push_back(values(g));
    flx_tensor *Q = rand_tensor(ctx, dt, {s.I, s.O}, 105);
    need_grad({Q});
    flx_tensor *y = flx_add(flx_matmul(x, Q), b), *gq[2] = {nullptr, nullptr};
    flx_tensor *in[2] = {Q, b};
    ASSERT_EQ(flx_grad_of(1, &y, &u, 2, in, false, gq), FLX_OK) << flx_last_error();
    out->push_back(values(gq[0]));
    out->push_back(values(gq[1]));
}

TEST_F(GemmBgradCuda, BiasGradientsMatchCpu) {
    const std::vector<Shp> shapes = {{128, 784, 1024}, {128, 1024, 10}, {7, 13, 5}, {1, 1, 1}, {33, 65, 17}};
    for (flx_dtype dt : {FLX_F32, FLX_F64})
        for (const Shp &s : shapes) {
            std::vector<std::vector<double>> out[2];
            bgrad_outputs(gpu, dt, s, &out[0]);
            bgrad_outputs(cpu, dt, s, &out[1]);
            ASSERT_EQ(out[0].size(), out[1].size());
            double tol = dt == FLX_F32 ? 1e-4 : 1e-10;
            for (size_t i = 0; i < out[0].size(); i++)
                EXPECT_TRUE(close(out[0][i], out[1][i], tol, tol))
                    << flx_dtype_name(dt) << " " << s.B << "x" << s.I << "x" << s.O << " output " << i;
        }
}

// Half precision and TF32, where cuBLASLt's BGRAD epilogues are most likely to run rather than
// fall back: dW and db of both operand forms against the CPU. Tolerances: f16 / bf16 results are
// rounded to 11 / 8 significant bits on both sides after f32 / f64 accumulation, so they differ
// by at most a unit or two of the last place (2e-3 / 1.6e-2 relative); TF32 products carry 11
// bits, so the entries (sums of 128 products of magnitude <= 1, typically ~4) may differ by a few
// 1e-3 (2e-2 absolute), far below what a wrong operand, axis or orientation gives.
TEST_F(GemmBgradCuda, HalfPrecisionAndTf32MatchCpu) {
    struct Case {
        flx_dtype dt;
        int32_t math;
        double atol, rtol;
    };
    const Case cases[] = {{FLX_F16, FLX_MATH_STRICT, 2e-3, 2e-3},
                          {FLX_BF16, FLX_MATH_STRICT, 1.6e-2, 1.6e-2},
                          {FLX_F32, FLX_MATH_TF32, 2e-2, 2e-3}};
    const Shp shapes[] = {{128, 784, 1024}, {128, 1024, 10}, {33, 65, 17}};
    for (const Case &c : cases)
        for (const Shp &s : shapes) {
            std::vector<std::vector<double>> out[2];
            ASSERT_EQ(flx_set_math_mode(gpu, c.math), FLX_OK) << flx_last_error();
            bgrad_outputs(gpu, c.dt, s, &out[0]);
            ASSERT_EQ(flx_set_math_mode(gpu, FLX_MATH_STRICT), FLX_OK);
            bgrad_outputs(cpu, c.dt, s, &out[1]);
            ASSERT_EQ(out[0].size(), out[1].size());
            for (size_t i = 0; i < out[0].size(); i++)
                EXPECT_TRUE(close(out[0][i], out[1][i], c.atol, c.rtol))
                    << flx_dtype_name(c.dt) << " math " << c.math << " " << s.B << "x" << s.I << "x" << s.O
                    << " output " << i;
        }
}

// A captured training-step plan on the GPU: fused (BGRAD epilogues) and unfused GPU plans agree
// within the f32 bound after a step, replays are deterministic, and the plan is captured.
TEST_F(GemmBgradCuda, CapturedPlanMatchesUnfusedGpu) {
    std::vector<std::vector<double>> got[2];
    for (int pass = 0; pass < 2; pass++) {
        ASSERT_EQ(flx_set_fusion(gpu, pass == 0), FLX_OK);
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *x = rand_tensor(gpu, FLX_F32, {128, 784}, 111);
        flx_tensor *W = rand_tensor(gpu, FLX_F32, {1024, 784}, 112), *b = rand_tensor(gpu, FLX_F32, {1024}, 113);
        for (flx_tensor *t : {x, W, b}) ASSERT_EQ(flx_eval(1, &t), FLX_OK) << flx_last_error();
        need_grad({W, b});
        flx_tensor *y = flx_relu(flx_linear(x, W, b));
        flx_tensor *loss = flx_mean(flx_mul(y, y), 0, nullptr, false);
        flx_tensor *in[2] = {W, b}, *g[2] = {nullptr, nullptr};
        ASSERT_EQ(flx_grad_of(1, &loss, nullptr, 2, in, false, g), FLX_OK) << flx_last_error();
        flx_plan *plan = flx_plan_compile(2, g, 1, &x, nullptr);
        ASSERT_NE(plan, nullptr) << flx_last_error();
        EXPECT_TRUE(plan_info(plan).captured) << plan_info(plan).capture_reason;
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        std::vector<double> first = values(flx_plan_output(plan, 1));
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        for (int k = 0; k < 2; k++) got[pass].push_back(values(flx_plan_output(plan, k)));
        EXPECT_EQ(first, got[pass][1]);  // a replay is deterministic
        flx_plan_destroy(plan);
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    ASSERT_EQ(flx_set_fusion(gpu, true), FLX_OK);
    for (int k = 0; k < 2; k++) EXPECT_TRUE(close(got[0][k], got[1][k], 1e-4, 1e-4)) << "output " << k;
}

}  // namespace
