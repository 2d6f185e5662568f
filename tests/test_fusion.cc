// test_fusion.cc — elementwise fusion (runtime/core/fuse.c): chains of float elementwise ops
// run as one kernel. Values are checked against float64/float32 formulas computed here, fused
// results against the same graphs evaluated with fusion off (bit for bit on one backend), and
// the kernel/allocation counts show that intermediates were never materialised. A random-DAG
// sweep covers broadcasting, multi-use values, where, requested intermediates and programs that
// do not fit. CUDA variants compare the GPU's fused kernel with the CPU reference and with the
// GPU's unfused kernels; they skip without a GPU.
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

using FusionTest = CpuTest;

// Host data of a tensor as float (f32) — exact.
std::vector<float> f32(flx_tensor *t) {
    std::vector<float> v((size_t)flx_numel(t));
    EXPECT_EQ(flx_to_host(t, v.data(), v.size() * sizeof(float)), FLX_OK) << flx_last_error();
    return v;
}

TEST_F(FusionTest, BiasReluIsOneKernelWithNoIntermediate) {
    const int64_t R = 6, C = 7;
    std::vector<double> xv = rand_values(R * C, 1), bv = rand_values(C, 2);
    flx_tensor *x = make(ctx, FLX_F32, {R, C}, xv);
    flx_tensor *b = make(ctx, FLX_F32, {C}, bv);
    ASSERT_EQ(flx_eval(1, &x), FLX_OK);
    ASSERT_EQ(flx_eval(1, &b), FLX_OK);
    flx_tensor *y = flx_relu(flx_add(x, b));
    ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
    std::vector<float> got = f32(y);
    flx_ctx_stats st = ctx_stats(ctx);
    EXPECT_EQ(st.kernels, 1u);         // add + relu in one launch
    EXPECT_EQ(st.allocs, 1u);          // only y: the sum never had memory
    EXPECT_EQ(st.nodes_executed, 2u);
    EXPECT_EQ(st.nodes_fused, 2u);
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) {
            float s = (float)xv[r * C + c] + (float)bv[c];  // f32 add, then relu
            EXPECT_EQ(got[r * C + c], s > 0 ? s : 0.0f) << r << "," << c;
        }
}

TEST_F(FusionTest, SwitchTurnsFusionOffAndChecksArguments) {
    bool on = false;
    ASSERT_EQ(flx_get_fusion(ctx, &on), FLX_OK);
    EXPECT_TRUE(on);
    ASSERT_EQ(flx_set_fusion(ctx, false), FLX_OK);
    flx_tensor *x = make(ctx, FLX_F64, {5}, {1, -2, 3, -4, 5});
    ASSERT_EQ(flx_eval(1, &x), FLX_OK);
    flx_tensor *y = flx_exp(flx_relu(flx_neg(x)));
    ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
    EXPECT_TRUE(close(values(y), {1, std::exp(2.0), 1, std::exp(4.0), 1}, 0, 1e-15));
    EXPECT_EQ(ctx_stats(ctx).kernels, 3u);
    EXPECT_EQ(ctx_stats(ctx).nodes_fused, 0u);
    ASSERT_EQ(flx_get_fusion(ctx, &on), FLX_OK);
    EXPECT_FALSE(on);
    ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
    EXPECT_EQ(flx_set_fusion(nullptr, true), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(flx_last_error(), "flx_set_fusion"), nullptr);
    EXPECT_EQ(flx_get_fusion(nullptr, &on), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_get_fusion(ctx, nullptr), FLX_ERR_INVALID_ARGUMENT);
    flx_clear_error();
}

// ---- fused == unfused, bit for bit ---------------------------------------------------------
using Build = std::function<std::vector<flx_tensor *>(flx_ctx *)>;

// Evaluates build(ctx) with fusion on and off; every output must have identical bytes. Returns
// the kernels launched with fusion on and off (inputs realised first, not counted).
std::pair<uint64_t, uint64_t> expect_same_fused(flx_ctx *ctx, const Build &build) {
    uint64_t kernels[2] = {0, 0};
    std::vector<std::vector<unsigned char>> res[2];
    for (int pass = 0; pass < 2; pass++) {
        EXPECT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
        EXPECT_EQ(flx_scope_begin(), FLX_OK);
        std::vector<flx_tensor *> outs = build(ctx);
        for (flx_tensor *o : outs) EXPECT_NE(o, nullptr) << flx_last_error();
        EXPECT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
        EXPECT_EQ(flx_eval((int32_t)outs.size(), outs.data()), FLX_OK) << flx_last_error();
        kernels[pass] = ctx_stats(ctx).kernels;
        for (flx_tensor *o : outs) res[pass].push_back(raw_bits(o));
        EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    EXPECT_EQ(flx_set_fusion(ctx, true), FLX_OK);
    EXPECT_EQ(res[0].size(), res[1].size());
    for (size_t k = 0; k < res[0].size() && k < res[1].size(); k++)
        EXPECT_TRUE(res[0][k] == res[1][k]) << "output " << k << " differs with fusion on/off";
    return {kernels[0], kernels[1]};
}

// Source tensors made from host data and realised, so kernel counts see only the chain.
flx_tensor *src(flx_ctx *ctx, flx_dtype dt, const Shape &s, uint64_t seed, double lo = -2,
                double hi = 2) {
    flx_tensor *t = rand_tensor(ctx, dt, s, seed, lo, hi);
    EXPECT_EQ(flx_eval(1, &t), FLX_OK);
    return t;
}

TEST_F(FusionTest, TypicalChainsMatchUnfusedBitForBit) {
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        // gelu(x + b) * s + r: bias, activation, scale, residual
        auto k = expect_same_fused(ctx, [&](flx_ctx *c) {
            flx_tensor *x = src(c, dt, {8, 16}, 1), *b = src(c, dt, {16}, 2);
            flx_tensor *s = src(c, dt, {16}, 3), *r = src(c, dt, {8, 16}, 4);
            return std::vector<flx_tensor *>{flx_add(flx_mul(flx_gelu(flx_add(x, b)), s), r)};
        });
        EXPECT_EQ(k.first, 1u);
        EXPECT_EQ(k.second, 4u);
        // diamond: x * sigmoid(x) (silu), x used twice inside the kernel
        k = expect_same_fused(ctx, [&](flx_ctx *c) {
            flx_tensor *x = src(c, dt, {33}, 5);
            flx_tensor *h = flx_affine(x, 1.5, -0.25);
            return std::vector<flx_tensor *>{flx_mul(h, flx_sigmoid(h))};
        });
        EXPECT_EQ(k.first, 1u);
        // where with a boolean condition computed outside (compares are not fused)
        k = expect_same_fused(ctx, [&](flx_ctx *c) {
            flx_tensor *a = src(c, dt, {4, 3, 5}, 6), *b = src(c, dt, {3, 5}, 7);
            flx_tensor *cond = flx_gt(a, b);
            return std::vector<flx_tensor *>{
                flx_where(cond, flx_mul_scalar(a, 2.0), flx_exp(flx_clamp(b, -1, 1)))};
        });
        // gt; exp(clamp(b)) at b's smaller shape (computed once, then broadcast); the rest
        EXPECT_EQ(k.first, 3u);
        EXPECT_EQ(k.second, 5u);
        // scalars (0-d) and column vectors broadcast into the group's shape
        k = expect_same_fused(ctx, [&](flx_ctx *c) {
            flx_tensor *x = src(c, dt, {5, 6}, 8), *col = src(c, dt, {5, 1}, 9);
            flx_tensor *sc = flx_scalar(c, dt, 0.75);
            return std::vector<flx_tensor *>{
                flx_softplus(flx_sub(flx_div(x, flx_add_scalar(flx_square(col), 1.0)), sc))};
        });
        // square(col) + 1 at (5, 1) is computed once; the scalar's fill is a kernel of its own
        EXPECT_LE(k.first, 3u);
        EXPECT_GE(k.second, 5u);
        // relu backward as autodiff builds it: g * step(x)
        k = expect_same_fused(ctx, [&](flx_ctx *c) {
            flx_tensor *x = src(c, dt, {7, 9}, 10);
            flx_set_requires_grad(x, true);
            flx_tensor *w = src(c, dt, {7, 9}, 11);
            flx_tensor *loss = flx_sum_all(flx_mul(flx_relu(x), w));
            flx_tensor *g = nullptr;
            EXPECT_EQ(flx_grad_of(1, &loss, nullptr, 1, &x, false, &g), FLX_OK);
            return std::vector<flx_tensor *>{g};
        });
        EXPECT_LT(k.first, k.second);
        // an empty tensor
        expect_same_fused(ctx, [&](flx_ctx *c) {
            flx_tensor *x = src(c, dt, {0, 3}, 12);
            return std::vector<flx_tensor *>{flx_exp(flx_neg(x))};
        });
    }
}

TEST_F(FusionTest, LongChainsAndManyInputsSplitIntoPrograms) {
    // 100 links: several programs of at most 16 members; every intermediate but the group
    // roots stays out of memory.
    auto k = expect_same_fused(ctx, [&](flx_ctx *c) {
        flx_tensor *y = src(c, FLX_F32, {64}, 20);
        for (int i = 0; i < 100; i++) y = (i % 3 == 0) ? flx_tanh(y) : flx_affine(y, 1.01, 0.01);
        return std::vector<flx_tensor *>{y};
    });
    EXPECT_LE(k.first, 7u);
    EXPECT_EQ(k.second, 100u);
    // a sum of 20 distinct inputs: more than a program takes (FLX_FUSED_MAX_IN)
    k = expect_same_fused(ctx, [&](flx_ctx *c) {
        flx_tensor *acc = src(c, FLX_F64, {3, 4}, 30);
        for (int i = 0; i < 19; i++) acc = flx_add(acc, src(c, FLX_F64, {4}, 31 + i));
        return std::vector<flx_tensor *>{acc};
    });
    EXPECT_LT(k.first, k.second);
    // a balanced tree of 16 inputs needs many live values at once
    expect_same_fused(ctx, [&](flx_ctx *c) {
        std::vector<flx_tensor *> lv;
        for (int i = 0; i < 16; i++) lv.push_back(flx_sin(src(c, FLX_F32, {10}, 60 + i)));
        while (lv.size() > 1) {
            std::vector<flx_tensor *> nx;
            for (size_t i = 0; i + 1 < lv.size(); i += 2) nx.push_back(flx_mul(lv[i], lv[i + 1]));
            lv = nx;
        }
        return lv;
    });
}

TEST_F(FusionTest, RequestedAndSharedIntermediatesAreMaterialised) {
    flx_tensor *x = src(ctx, FLX_F64, {4}, 40);
    std::vector<double> xv = values(x);
    flx_tensor *h = flx_exp(x);           // requested with y: must be computed and kept
    flx_tensor *u = flx_mul_scalar(x, 3); // read by y and by z (z outside the group)
    flx_tensor *y = flx_add(flx_neg(h), u);
    flx_tensor *z = flx_sum_all(u);
    flx_tensor *outs[3] = {y, h, z};
    ASSERT_EQ(flx_eval(3, outs), FLX_OK) << flx_last_error();
    EXPECT_TRUE(flx_is_realized(h));
    std::vector<double> ey, eh;
    double ez = 0;
    for (double v : xv) {
        eh.push_back(std::exp(v));
        ey.push_back(-std::exp(v) + 3 * v);
        ez += 3 * v;
    }
    EXPECT_TRUE(close(values(y), ey, 1e-15, 1e-15));
    EXPECT_TRUE(close(values(h), eh, 1e-15, 1e-15));
    EXPECT_TRUE(close(values(z), {ez}, 1e-14, 1e-14));
    // an intermediate computed only inside a kernel is recomputed when read later
    flx_tensor *a = flx_sin(x);
    flx_tensor *b = flx_square(a);
    ASSERT_EQ(flx_eval(1, &b), FLX_OK);
    EXPECT_FALSE(flx_is_realized(a));
    std::vector<double> ea;
    for (double v : xv) ea.push_back(std::sin(v));
    EXPECT_TRUE(close(values(a), ea, 0, 0));
}

TEST_F(FusionTest, StaleInputOfAnInteriorNodeIsRejected) {
    flx_tensor *w = make(ctx, FLX_F64, {3}, {1, 2, 3});
    flx_tensor *x = make(ctx, FLX_F64, {3}, {1, 1, 1});
    flx_tensor *y = flx_relu(flx_mul(w, x));  // mul is interior, reads w
    ASSERT_EQ(flx_assign(w, make(ctx, FLX_F64, {3}, {4, 5, 6})), FLX_OK);
    EXPECT_EQ(flx_eval(1, &y), FLX_ERR_STATE);
    EXPECT_NE(std::strstr(flx_last_error(), "changed in place"), nullptr) << flx_last_error();
    flx_clear_error();
}

// ---- random DAGs -------------------------------------------------------------------------------
// A random program over a few broadcast-compatible inputs: unary, binary and where ops on
// earlier values (so values are shared), sometimes requesting an intermediate too.
std::vector<flx_tensor *> random_dag(flx_ctx *c, flx_dtype dt, uint64_t seed) {
    std::mt19937_64 rng(seed);
    auto pick = [&](size_t n) { return (size_t)(rng() % n); };
    static const std::vector<Shape> shapes = {{3, 4, 5}, {4, 5}, {5}, {}, {3, 1, 5}, {1, 4, 1}, {3, 4, 5}};
    std::vector<flx_tensor *> vals;
    int n_in = 2 + (int)pick(4);
    for (int i = 0; i < n_in; i++) vals.push_back(src(c, dt, shapes[pick(shapes.size())], seed * 100 + i));
    vals.push_back(src(c, dt, {3, 4, 5}, seed * 100 + 99));
    int n_ops = 3 + (int)pick(30);
    std::vector<flx_tensor *> outs;
    for (int k = 0; k < n_ops; k++) {
        flx_tensor *a = vals[pick(vals.size())], *b = vals[pick(vals.size())];
        flx_tensor *r = nullptr;
        switch (pick(17)) {
        case 0: r = flx_neg(a); break;
        case 1: r = flx_tanh(a); break;
        case 2: r = flx_sigmoid(a); break;
        case 3: r = flx_relu(a); break;
        case 4: r = flx_gelu(a); break;
        case 5: r = flx_affine(a, 0.5, 0.25); break;
        case 6: r = flx_clamp(a, -0.5, 0.7); break;
        case 7: r = flx_sqrt(flx_abs(a)); break;
        case 8: r = flx_add(a, b); break;
        case 9: r = flx_sub(a, b); break;
        case 10: r = flx_mul(a, b); break;
        case 11: r = flx_div(a, flx_add_scalar(flx_square(b), 0.5)); break;
        case 12: r = flx_maximum(a, b); break;
        case 13: r = flx_minimum(a, b); break;
        case 14: r = flx_where(flx_gt(a, b), a, flx_sin(b)); break;
        case 15: r = flx_leaky_relu(flx_elu(a, 0.3), 0.1); break;
        default: r = flx_pow(flx_add_scalar(flx_abs(a), 0.1), flx_clamp(b, -1, 1)); break;
        }
        vals.push_back(r);
        if (pick(8) == 0) outs.push_back(r);  // requested intermediate
    }
    outs.push_back(vals.back());
    return outs;
}

TEST_F(FusionTest, RandomDagsMatchUnfusedBitForBit) {
    uint64_t fused_kernels = 0, plain_kernels = 0;
    for (uint64_t seed = 1; seed <= 150; seed++) {
        auto k = expect_same_fused(ctx, [&](flx_ctx *c) {
            return random_dag(c, seed % 2 ? FLX_F32 : FLX_F64, seed);
        });
        fused_kernels += k.first;
        plain_kernels += k.second;
        if (HasFailure()) {
            ADD_FAILURE() << "seed " << seed;
            break;
        }
    }
    EXPECT_LT(fused_kernels, plain_kernels);  // the sweep did exercise fusion
}

// Plans fuse the same way (runtime/core/plan.c calls the same planner): a plan's outputs equal the
// unfused eager values bit for bit, run after run, and fused members take no arena space.
TEST_F(FusionTest, PlansOfRandomDagsMatchUnfusedEager) {
    uint64_t fused_nodes = 0;
    for (uint64_t seed = 1; seed <= 40 && !HasFailure(); seed++) {
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_dtype dt = seed % 2 ? FLX_F32 : FLX_F64;
        std::vector<flx_tensor *> outs = random_dag(ctx, dt, seed);
        flx_plan *plan = flx_plan_compile((int32_t)outs.size(), outs.data(), 0, nullptr, nullptr);
        ASSERT_NE(plan, nullptr) << flx_last_error();
        ASSERT_EQ(flx_set_fusion(ctx, false), FLX_OK);
        ASSERT_EQ(flx_eval((int32_t)outs.size(), outs.data()), FLX_OK);
        ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
        for (int run = 0; run < 2; run++) {
            ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
            ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
            fused_nodes += ctx_stats(ctx).nodes_fused;
            for (size_t k = 0; k < outs.size(); k++) {
                flx_tensor *o = flx_plan_output(plan, (int32_t)k);
                EXPECT_TRUE(raw_bits(o) == raw_bits(outs[k])) << "seed " << seed << " output " << k;
            }
        }
        flx_plan_destroy(plan);
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    EXPECT_GT(fused_nodes, 0u);
}

TEST_F(FusionTest, FusedPlanNeedsLessMemoryAndFewerKernels) {
    flx_plan_info info[2];
    uint64_t kernels[2];
    for (int pass = 0; pass < 2; pass++) {
        ASSERT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *x = src(ctx, FLX_F32, {64, 256}, 1), *b = src(ctx, FLX_F32, {256}, 2);
        flx_tensor *r = src(ctx, FLX_F32, {64, 256}, 3);
        flx_tensor *y = flx_add(flx_mul_scalar(flx_gelu(flx_add(x, b)), 0.5), r);
        flx_plan *plan = flx_plan_compile(1, &y, 1, &x, nullptr);
        ASSERT_NE(plan, nullptr) << flx_last_error();
        ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK);
        kernels[pass] = ctx_stats(ctx).kernels;
        ASSERT_EQ(flx_plan_get_info(plan, &info[pass]), FLX_OK);
        flx_plan_destroy(plan);
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
    EXPECT_EQ(kernels[0], 1u);
    EXPECT_GT(kernels[1], 1u);
    EXPECT_LT(info[0].arena_bytes, info[1].arena_bytes);
}

// ---- CUDA ----------------------------------------------------------------------------------------
using FusionCuda = CudaCpuTest;
// The GPU's fused kernels against the CPU reference (f64: 1e-12 relative; f32: a few ulps of
// the transcendental functions) and against the GPU's own unfused kernels (bit for bit).
TEST_F(FusionCuda, RandomDagsMatchCpuAndUnfusedGpu) {
    uint64_t fused_kernels = 0, plain_kernels = 0;
    for (uint64_t seed = 1; seed <= 100 && !::testing::Test::HasFailure(); seed++) {
        flx_dtype dt = seed % 2 ? FLX_F32 : FLX_F64;
        auto k = expect_same_fused(gpu, [&](flx_ctx *c) { return random_dag(c, dt, seed); });
        fused_kernels += k.first;
        plain_kernels += k.second;
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        std::vector<flx_tensor *> g = random_dag(gpu, dt, seed), h = random_dag(cpu, dt, seed);
        ASSERT_EQ(g.size(), h.size());
        for (size_t i = 0; i < g.size(); i++) {
            double tol = dt == FLX_F32 ? 2e-5 : 1e-12;
            EXPECT_TRUE(close(values(g[i]), values(h[i]), tol, tol)) << "seed " << seed << " output " << i;
        }
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    EXPECT_LT(fused_kernels, plain_kernels);
}

TEST_F(FusionCuda, LargeBroadcastChainUsesVectorPathsCorrectly) {
    // odd sizes: a tail that is not a multiple of the 4-element vector, and an offset view
    for (int64_t cols : {1024, 1027}) {
        std::vector<flx_tensor *> out;
        for (flx_ctx *c : {gpu, cpu}) {
            flx_tensor *x = rand_tensor(c, FLX_F32, {257, cols}, 1);
            flx_tensor *b = rand_tensor(c, FLX_F32, {cols}, 2);
            flx_tensor *r = rand_tensor(c, FLX_F32, {257, cols}, 3);
            out.push_back(flx_add(flx_mul_scalar(flx_gelu(flx_add(x, b)), 0.5), r));
        }
        EXPECT_TRUE(close(values(out[0]), values(out[1]), 2e-6, 2e-6)) << cols;
    }
}

// Strided and broadcast inputs of a fused chain over 3-d spaces with odd extents (each dim's
// 32-bit fast division in the index math, extents past 2^16 so quotients use the high bits),
// one input a permuted view (non-contiguous), f32 and f64, against the CPU.
TEST_F(FusionCuda, StridedBroadcastIndexMathMatchesCpu) {
    const std::vector<Shape> shapes = {{3, 37, 129}, {2, 70001, 3}, {5, 7, 65537}, {1, 1, 1}};
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        double tol = dt == FLX_F32 ? 2e-5 : 1e-12;
        for (const Shape &s : shapes) {
            std::vector<flx_tensor *> out;
            for (flx_ctx *c : {gpu, cpu}) {
                flx_tensor *x = rand_tensor(c, dt, s, 1);
                flx_tensor *b = rand_tensor(c, dt, {s[1], 1}, 2);         // broadcast over 0 and 2
                flx_tensor *r = rand_tensor(c, dt, {s[2], s[1], s[0]}, 3); // permuted to s
                int32_t perm[3] = {2, 1, 0};
                flx_tensor *rp = flx_permute(r, perm);
                out.push_back(flx_mul(flx_gelu(flx_add(x, b)), flx_add_scalar(rp, 0.25)));
            }
            ASSERT_TRUE(out[0] && out[1]) << flx_last_error();
            EXPECT_TRUE(close(values(out[0]), values(out[1]), tol, tol))
                << flx_dtype_name(dt) << " " << s[0] << "x" << s[1] << "x" << s[2];
        }
    }
}

// Every launch form of the fused kernel (rank buckets of 2, 4 and 8 dims, programs of up to 8
// and of more than 8 instructions, kernels/elementwise.cu) against the CPU: each rank keeps all
// its dims after coalescing (one input is a reversed permutation, one broadcasts over every
// other dim), f32 and f64.
TEST_F(FusionCuda, EveryRankAndProgramLengthMatchesCpu) {
    const int64_t ext[8] = {3, 2, 5, 2, 3, 2, 3, 2};
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        const double tol = dt == FLX_F32 ? 2e-5 : 1e-12;
        for (int rank = 1; rank <= 8; rank++) {
            Shape s(ext, ext + rank), rev(s.rbegin(), s.rend()), bs = s;
            for (int d = 1; d < rank; d += 2) bs[d] = 1;
            std::vector<int32_t> perm(rank);
            for (int d = 0; d < rank; d++) perm[d] = rank - 1 - d;
            for (bool longer : {false, true}) {
                std::vector<flx_tensor *> out;
                for (flx_ctx *c : {gpu, cpu}) {
                    flx_tensor *x = rand_tensor(c, dt, s, 1);
                    flx_tensor *b = rand_tensor(c, dt, bs, 2);
                    flx_tensor *rp = flx_permute(rand_tensor(c, dt, rev, 3), perm.data());
                    flx_tensor *y = flx_mul(flx_gelu(flx_add(x, b)), flx_add_scalar(rp, 0.25)); /* 7 instructions */
                    for (int k = 0; longer && k < 4; k++) y = flx_tanh(flx_add(flx_mul_scalar(y, 0.5), b));
                    out.push_back(y);
                }
                ASSERT_TRUE(out[0] && out[1]) << flx_last_error();
                EXPECT_TRUE(close(values(out[0]), values(out[1]), tol, tol))
                    << flx_dtype_name(dt) << " rank " << rank << (longer ? " long" : " short");
            }
        }
    }
}

}  // namespace
