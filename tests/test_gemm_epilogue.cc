// test_gemm_epilogue.cc — dense layers as one GEMM call with its epilogue (runtime/core/fuse_gemm.c,
// the gemm_ex kernel family): matmul [+ row bias] [relu] computed by one kernel-family call.
// CPU: the fused path gives the same bits as the same graphs with fusion off (forward, VJP, JVP,
// a compiled training step), values match a float64 reference, and the kernel and allocation
// counts show when the rule fires and when a needed intermediate stops it. CUDA (skipped without
// a GPU): cuBLASLt's epilogues against the CPU reference.
#include <cmath>
#include <functional>
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

using GemmEpilogueTest = CpuTest;

// A realised tensor (so that evaluating what reads it runs only the layer).
flx_tensor *src(flx_ctx *c, flx_dtype dt, const Shape &s, uint64_t seed) {
    flx_tensor *t = rand_tensor(c, dt, s, seed);
    EXPECT_EQ(flx_eval(1, &t), FLX_OK) << flx_last_error();
    return t;
}

// Stats of evaluating ts together, from a reset.
flx_ctx_stats eval_stats(flx_ctx *c, std::vector<flx_tensor *> ts) {
    EXPECT_EQ(flx_ctx_reset_stats(c), FLX_OK);
    EXPECT_EQ(flx_eval((int32_t)ts.size(), ts.data()), FLX_OK) << flx_last_error();
    return ctx_stats(c);
}

TEST_F(GemmEpilogueTest, DenseReluLayerIsOneCallWithNoIntermediate) {
    const int64_t B = 5, I = 7, O = 4;
    flx_tensor *x = src(ctx, FLX_F32, {B, I}, 1), *W = src(ctx, FLX_F32, {O, I}, 2);
    flx_tensor *b = src(ctx, FLX_F32, {O}, 3);
    flx_tensor *y = flx_relu(flx_linear(x, W, b));
    flx_ctx_stats st = eval_stats(ctx, {y});
    EXPECT_EQ(st.kernels, 1u);  // no W^T copy, product + bias + relu in one call
    EXPECT_EQ(st.allocs, 1u);   // only y
    EXPECT_EQ(st.nodes_executed, 3u);
    EXPECT_EQ(st.nodes_fused, 3u);
    // float64 reference: product rounded to f32, f32 bias added and rounded, relu
    std::vector<double> xv = values(x), wv = values(W), bv = values(b), got = values(y);
    std::vector<double> want(B * O);
    for (int64_t r = 0; r < B; r++)
        for (int64_t o = 0; o < O; o++) {
            double acc = 0;
            for (int64_t i = 0; i < I; i++) acc += xv[r * I + i] * wv[o * I + i];
            double z = (double)(float)((double)(float)acc + bv[o]);
            want[r * O + o] = z > 0 ? z : 0;
        }
    EXPECT_TRUE(close(got, want, 1e-6, 1e-6));
}

// An evaluation longer than the planner's on-stack scratch (16 positions): every layer of a deep
// stack is still one call, with the same bits as fusion off.
TEST_F(GemmEpilogueTest, DeepStackInOneEvaluationIsOneCallPerLayer) {
    const int64_t B = 3, F = 6;
    const int layers = 9; /* 27 scheduled nodes: matmul, add, relu per layer */
    std::vector<flx_tensor *> W, b;
    for (int l = 0; l < layers; l++) {
        W.push_back(src(ctx, FLX_F32, {F, F}, 10 + l));
        b.push_back(src(ctx, FLX_F32, {F}, 40 + l));
    }
    flx_tensor *x = src(ctx, FLX_F32, {B, F}, 1);
    std::vector<unsigned char> bits[2];
    for (int fused = 1; fused >= 0; fused--) {
        ASSERT_EQ(flx_set_fusion(ctx, fused != 0), FLX_OK);
        flx_tensor *h = x;
        for (int l = 0; l < layers; l++) h = flx_relu(flx_linear(h, W[l], b[l]));
        flx_ctx_stats st = eval_stats(ctx, {h});
        EXPECT_EQ(st.nodes_executed, 3u * layers);
        if (fused) {
            EXPECT_EQ(st.kernels, (uint64_t)layers);
            EXPECT_EQ(st.nodes_fused, 3u * layers);
        } else {
            EXPECT_EQ(st.kernels, 3u * layers);
        }
        bits[fused] = raw_bits(h);
    }
    ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
    EXPECT_EQ(bits[0], bits[1]);
}

// What stays materialised decides how far the chain reaches; each case is also compared with
// fusion off, bit for bit.
TEST_F(GemmEpilogueTest, NeededIntermediatesStopTheChain) {
    struct Case {
        const char *name;
        std::function<std::vector<flx_tensor *>(flx_tensor *, flx_tensor *, flx_tensor *)> f;
        uint64_t kernels, fused;
    };
    const std::vector<Case> cases = {
        // the pre-activation is requested: product + bias in one call, relu on its own
        {"pre-activation requested",
         [](flx_tensor *x, flx_tensor *W, flx_tensor *b) {
             flx_tensor *z = flx_add(flx_matmul(x, W), b);
             return std::vector<flx_tensor *>{z, flx_relu(z)};
         },
         2, 2},
        // the product is read twice: no group; the add + relu chain fuses elementwise
        {"product read twice",
         [](flx_tensor *x, flx_tensor *W, flx_tensor *b) {
             flx_tensor *p = flx_matmul(x, W);
             return std::vector<flx_tensor *>{flx_relu(flx_add(p, b)), flx_mul_scalar(p, 2.0)};
         },
         3, 2},
        // bias first, (1, n) bias
        {"bias (1, n) on the left",
         [](flx_tensor *x, flx_tensor *W, flx_tensor *b) {
             int64_t s[2] = {1, flx_shape(b)[0]};
             return std::vector<flx_tensor *>{flx_relu(flx_add(flx_reshape(b, 2, s), flx_matmul(x, W)))};
         },
         1, 3},  // the reshape of b is an alias, not a kernel
        // relu without a bias
        {"relu only",
         [](flx_tensor *x, flx_tensor *W, flx_tensor *) {
             return std::vector<flx_tensor *>{flx_relu(flx_matmul(x, W))};
         },
         1, 2},
        // bias without an activation, then something that is not relu
        {"bias then tanh",
         [](flx_tensor *x, flx_tensor *W, flx_tensor *b) {
             return std::vector<flx_tensor *>{flx_tanh(flx_add(flx_matmul(x, W), b))};
         },
         2, 2},
        // a full-matrix addend is not a bias (and the product is read twice): no group
        {"matrix addend",
         [](flx_tensor *x, flx_tensor *W, flx_tensor *) {
             flx_tensor *p = flx_matmul(x, W);
             return std::vector<flx_tensor *>{flx_relu(flx_add(p, flx_mul_scalar(flx_exp(p), 0.5)))};
         },
         2, 4},
    };
    for (flx_dtype dt : {FLX_F32, FLX_F64, FLX_F16, FLX_BF16}) {
        for (const Case &c : cases) {
            std::vector<std::vector<unsigned char>> bits[2];
            flx_ctx_stats st[2];
            for (int pass = 0; pass < 2; pass++) {
                ASSERT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
                ASSERT_EQ(flx_scope_begin(), FLX_OK);
                flx_tensor *x = src(ctx, dt, {9, 6}, 1), *W = src(ctx, dt, {6, 5}, 2);
                flx_tensor *b = src(ctx, dt, {5}, 3);
                std::vector<flx_tensor *> out = c.f(x, W, b);
                st[pass] = eval_stats(ctx, out);
                for (flx_tensor *t : out) bits[pass].push_back(raw_bits(t));
                ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
            }
            ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
            EXPECT_EQ(bits[0], bits[1]) << c.name << " " << flx_dtype_name(dt);
            EXPECT_EQ(st[0].kernels, c.kernels) << c.name << " " << flx_dtype_name(dt);
            EXPECT_EQ(st[0].nodes_fused, c.fused) << c.name << " " << flx_dtype_name(dt);
        }
    }
}

// x W^T + b for a batched x (..., in): the product's batches are the rows of one GEMM.
TEST_F(GemmEpilogueTest, BatchedInputIsOneCall) {
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        std::vector<unsigned char> bits[2];
        flx_ctx_stats st[2];
        for (int pass = 0; pass < 2; pass++) {
            ASSERT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
            ASSERT_EQ(flx_scope_begin(), FLX_OK);
            flx_tensor *x = src(ctx, dt, {3, 5, 7}, 11), *W = src(ctx, dt, {4, 7}, 12);
            flx_tensor *b = src(ctx, dt, {1, 1, 4}, 13);
            flx_tensor *y = flx_relu(flx_add(flx_linear(x, W, nullptr), b));
            st[pass] = eval_stats(ctx, {y});
            bits[pass] = raw_bits(y);
            ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        }
        ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
        EXPECT_EQ(bits[0], bits[1]) << flx_dtype_name(dt);
        EXPECT_EQ(st[0].kernels, 1u);
        EXPECT_EQ(st[1].kernels, 3u);
    }
}

// Value, VJP and JVP of dense layers with the rule on and off: the same bits.
TEST_F(GemmEpilogueTest, ForwardVjpJvpMatchUnfusedBitForBit) {
    for (flx_dtype dt : {FLX_F32, FLX_F64, FLX_BF16}) {
        std::vector<std::vector<unsigned char>> bits[2];
        for (int pass = 0; pass < 2; pass++) {
            ASSERT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
            ASSERT_EQ(flx_scope_begin(), FLX_OK);
            flx_tensor *x = src(ctx, dt, {13, 11}, 4), *W1 = src(ctx, dt, {8, 11}, 5);
            flx_tensor *b1 = src(ctx, dt, {8}, 6), *W2 = src(ctx, dt, {3, 8}, 7);
            flx_tensor *b2 = src(ctx, dt, {3}, 8);
            std::vector<flx_tensor *> in = {x, W1, b1, W2, b2};
            need_grad(in);
            auto f = [&](const std::vector<flx_tensor *> &v) {
                return flx_linear(flx_relu(flx_linear(v[0], v[1], v[2])), v[3], v[4]);
            };
            flx_tensor *y = f(in);
            flx_tensor *u = src(ctx, dt, {13, 3}, 9);
            std::vector<flx_tensor *> g(5);
            ASSERT_EQ(flx_grad_of(1, &y, &u, 5, in.data(), false, g.data()), FLX_OK) << flx_last_error();
            std::vector<flx_tensor *> tan;
            for (int i = 0; i < 5; i++) tan.push_back(src(ctx, dt, shape_of(in[i]), 20 + i));
            flx_tensor *ty = nullptr;
            ASSERT_EQ(flx_jvp(5, in.data(), tan.data(), 1, &y, &ty), FLX_OK) << flx_last_error();
            std::vector<flx_tensor *> all = {y, ty};
            all.insert(all.end(), g.begin(), g.end());
            ASSERT_EQ(flx_eval((int32_t)all.size(), all.data()), FLX_OK) << flx_last_error();
            for (flx_tensor *t : all) bits[pass].push_back(raw_bits(t));
            ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        }
        ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
        ASSERT_EQ(bits[0].size(), bits[1].size());
        for (size_t i = 0; i < bits[0].size(); i++)
            EXPECT_EQ(bits[0][i], bits[1][i]) << flx_dtype_name(dt) << " output " << i;
    }
}

// relu's derivative reads relu's output, so the pre-activation is dead after the forward and
// the whole layer stays one call inside a training step; the derivative is still right.
TEST_F(GemmEpilogueTest, ReluDerivativeFromOutputChecksOut) {
    flx_tensor *x = make(ctx, FLX_F64, {2, 3}, {0.5, -1.0, 2.0, 0.0, -0.25, 3.0});
    flx_tensor *W = make(ctx, FLX_F64, {3, 3}, {1, 0.5, -1, 2, -0.5, 0.25, -1, 1, 0.75});
    flx_tensor *b = make(ctx, FLX_F64, {3}, {0.1, -0.2, 0.3});
    check_derivatives({{"relu(linear)", [](const std::vector<flx_tensor *> &v) {
                            return flx_relu(flx_linear(v[0], v[1], v[2]));
                        }, {x, W, b}}});
    // at the kink and at NaN: relu'(0) = 0, NaN propagates
    flx_tensor *z = make(ctx, FLX_F64, {3}, {0.0, -0.0, NAN});
    need_grad({z});
    flx_tensor *y = flx_relu(z), *g = nullptr;
    flx_tensor *u = make(ctx, FLX_F64, {3}, {1, 1, 1});
    ASSERT_EQ(flx_grad_of(1, &y, &u, 1, &z, false, &g), FLX_OK) << flx_last_error();
    std::vector<double> gv = values(g);
    EXPECT_EQ(gv[0], 0.0);
    EXPECT_EQ(gv[1], 0.0);
    EXPECT_TRUE(std::isnan(gv[2]));
}

// A compiled MLP training step (784-64-32-10 at batch 16) with SGD and with Adam: fusion on and
// off give the same loss and parameters, bit for bit, after three steps, and the fused plan runs
// 13 kernels per step instead of 23: each dense layer's forward is one call, each backward's
// weight and bias gradients one call (test_gemm_bgrad.cc), and elementwise chains fuse.
TEST_F(GemmEpilogueTest, TrainingStepPlanMatchesUnfusedBitForBit) {
    for (flx_optim_kind kind : {FLX_OPTIM_SGD, FLX_OPTIM_ADAM}) {
        const char *name = kind == FLX_OPTIM_SGD ? "SGD" : "Adam";
        std::vector<std::vector<unsigned char>> bits[2];
        uint64_t kernels[2] = {0, 0};
        for (int pass = 0; pass < 2; pass++) {
            ASSERT_EQ(flx_set_fusion(ctx, pass == 0), FLX_OK);
            ASSERT_EQ(flx_scope_begin(), FLX_OK);
            const int64_t dims[4] = {784, 64, 32, 10};
            std::vector<flx_tensor *> params;
            for (int l = 0; l < 3; l++) {
                params.push_back(src(ctx, FLX_F32, {dims[l + 1], dims[l]}, 30 + l));
                params.push_back(src(ctx, FLX_F32, {dims[l + 1]}, 40 + l));
            }
            for (flx_tensor *p : params) flx_set_requires_grad(p, true);
            flx_tensor *x = src(ctx, FLX_F32, {16, 784}, 50);
            std::vector<double> lv(16);
            for (int i = 0; i < 16; i++) lv[i] = (double)((i * 7) % 10);
            flx_tensor *labels = make(ctx, FLX_I64, {16}, lv);
            flx_tensor *h = x;
            for (int l = 0; l < 3; l++) {
                h = flx_linear(h, params[2 * l], params[2 * l + 1]);
                if (l < 2) h = flx_relu(h);
            }
            flx_tensor *loss = flx_cross_entropy(h, labels, FLX_REDUCTION_MEAN, -100);
            ASSERT_NE(loss, nullptr) << flx_last_error();
            flx_optim *opt = flx_optim_create(ctx, kind, (int32_t)params.size(), params.data(), nullptr);
            ASSERT_NE(opt, nullptr) << flx_last_error();
            flx_plan_options o = flx_plan_default_options();
            o.n_optim = 1;
            o.optims = &opt;
            flx_plan *plan = flx_plan_compile(1, &loss, 1, &x, &o);
            ASSERT_NE(plan, nullptr) << flx_last_error();
            for (int step = 0; step < 3; step++) {
                ASSERT_EQ(flx_ctx_reset_stats(ctx), FLX_OK);
                ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
                kernels[pass] = ctx_stats(ctx).kernels;
                bits[pass].push_back(raw_bits(flx_plan_output(plan, 0)));
            }
            for (flx_tensor *p : params) bits[pass].push_back(raw_bits(p));
            flx_plan_destroy(plan);
            flx_optim_destroy(opt);
            ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        }
        ASSERT_EQ(flx_set_fusion(ctx, true), FLX_OK);
        ASSERT_EQ(bits[0].size(), bits[1].size());
        for (size_t i = 0; i < bits[0].size(); i++) EXPECT_EQ(bits[0][i], bits[1][i]) << name << " value " << i;
        EXPECT_EQ(kernels[0], 13u) << name;
        EXPECT_EQ(kernels[1], 23u) << name;
    }
}

TEST_F(GemmEpilogueTest, BadLinearInputsStillRejected) {
    flx_tensor *x = src(ctx, FLX_F32, {4, 3}, 1), *W = src(ctx, FLX_F32, {2, 5}, 2);
    EXPECT_TRUE(fails_with(flx_linear(x, W, nullptr), FLX_ERR_SHAPE, "flx_linear"));
    flx_tensor *Wd = src(ctx, FLX_F64, {2, 3}, 3);
    EXPECT_TRUE(fails_with(flx_linear(x, Wd, nullptr), FLX_ERR_DTYPE, "flx_linear"));
    EXPECT_TRUE(fails_with(flx_linear(nullptr, W, nullptr), FLX_ERR_INVALID_ARGUMENT, ""));
    // a 1-d x still works (the transposed copy path)
    flx_tensor *W3 = src(ctx, FLX_F32, {2, 3}, 4), *v = src(ctx, FLX_F32, {3}, 5);
    flx_tensor *y = flx_linear(v, W3, nullptr);
    ASSERT_NE(y, nullptr) << flx_last_error();
    std::vector<double> wv = values(W3), vv = values(v), got = values(y);
    for (int o = 0; o < 2; o++) {
        double acc = 0;
        for (int i = 0; i < 3; i++) acc += wv[o * 3 + i] * vv[i];
        EXPECT_NEAR(got[o], acc, 1e-6);
    }
}

// ---- CUDA ----------------------------------------------------------------------------------------
// cuBLASLt against the CPU reference. f32 strict: both sides accumulate k products (the CPU in
// double, the GPU in f32 in some order), so the GPU's error is at most about k * 2^-24 * sum |x w|;
// with k <= 1024 and entries in [-1, 1) that bounds the relative error of a typical output by a few
// 1e-5 — 1e-4 absolute and relative leaves room for cancellation. f64: the same argument with
// 2^-53 gives about 1e-13 typical; 1e-10 covers the worst-case bound k eps sum |x w| at k = 1024.
using GemmEpilogueCuda = CudaCpuTest;

std::vector<flx_tensor *> layer_outputs(flx_ctx *c, flx_dtype dt, int64_t m, int64_t k, int64_t n,
                                        bool bias, bool relu) {
    flx_tensor *x = rand_tensor(c, dt, {m, k}, 61), *W = rand_tensor(c, dt, {n, k}, 62);
    flx_tensor *b = bias ? rand_tensor(c, dt, {n}, 63) : nullptr;
    flx_tensor *y = flx_linear(x, W, b);
    if (relu) y = flx_relu(y);
    flx_tensor *xk = rand_tensor(c, dt, {k, m}, 64);
    flx_tensor *ta = flx_matmul(flx_transpose(xk, 0, 1), flx_transpose(W, 0, 1));  // copies, ta = tb = 0
    flx_tensor *y2 = bias ? flx_add(ta, b) : ta;
    if (relu) y2 = flx_relu(y2);
    return {y, y2};
}

TEST_F(GemmEpilogueCuda, EpiloguesMatchCpu) {
    struct Shp { int64_t m, k, n; };
    const std::vector<Shp> shapes = {{128, 784, 1024}, {128, 1024, 10}, {7, 13, 5}, {1, 1, 1}, {33, 65, 17}};
    for (flx_dtype dt : {FLX_F32, FLX_F64})
        for (const Shp &s : shapes)
            for (int v = 0; v < 4; v++) {
                bool bias = v & 1, relu = v & 2;
                if (!bias && !relu) continue;
                double tol = dt == FLX_F32 ? 1e-4 : 1e-10;
                std::vector<flx_tensor *> g = layer_outputs(gpu, dt, s.m, s.k, s.n, bias, relu);
                std::vector<flx_tensor *> h = layer_outputs(cpu, dt, s.m, s.k, s.n, bias, relu);
                for (size_t i = 0; i < g.size(); i++)
                    EXPECT_TRUE(close(values(g[i]), values(h[i]), tol, tol))
                        << flx_dtype_name(dt) << " " << s.m << "x" << s.k << "x" << s.n << " bias "
                        << bias << " relu " << relu << " output " << i;
            }
}

TEST_F(GemmEpilogueCuda, BatchedInputMatchesCpu) {
    std::vector<std::vector<double>> out;
    for (flx_ctx *c : {gpu, cpu}) {
        flx_tensor *x = rand_tensor(c, FLX_F32, {4, 33, 65}, 91), *W = rand_tensor(c, FLX_F32, {17, 65}, 92);
        flx_tensor *b = rand_tensor(c, FLX_F32, {17}, 93);
        out.push_back(values(flx_relu(flx_linear(x, W, b))));
    }
    EXPECT_TRUE(close(out[0], out[1], 1e-4, 1e-4));
}

// The GPU's fused layer against the GPU's unfused kernels: the same algorithm is not promised
// (cuBLASLt and cuBLAS may pick different kernels), so the bound is the f32 one above; relu's
// zeros must agree exactly where the pre-activation is clearly negative.
TEST_F(GemmEpilogueCuda, FusedMatchesUnfusedGpuAndPlanReplays) {
    for (int pass = 0; pass < 2; pass++) {
        ASSERT_EQ(flx_set_fusion(gpu, pass == 0), FLX_OK);
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *x = rand_tensor(gpu, FLX_F32, {128, 784}, 71);
        flx_tensor *W = rand_tensor(gpu, FLX_F32, {1024, 784}, 72);
        flx_tensor *b = rand_tensor(gpu, FLX_F32, {1024}, 73);
        ASSERT_EQ(flx_eval(1, &x), FLX_OK);
        flx_tensor *y = flx_relu(flx_linear(x, W, b));
        flx_plan *plan = flx_plan_compile(1, &y, 1, &x, nullptr);
        ASSERT_NE(plan, nullptr) << flx_last_error();
        flx_plan_info info;
        ASSERT_EQ(flx_plan_get_info(plan, &info), FLX_OK);
        EXPECT_TRUE(info.captured) << info.capture_reason;  // cuBLASLt calls are capturable
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        std::vector<double> first = values(flx_plan_output(plan, 0));
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        std::vector<double> second = values(flx_plan_output(plan, 0));
        EXPECT_EQ(first, second);  // a replay is deterministic
        std::vector<double> ref = values(flx_relu(flx_linear(flx_to_ctx(x, cpu), flx_to_ctx(W, cpu),
                                                             flx_to_ctx(b, cpu))));
        EXPECT_TRUE(close(first, ref, 1e-4, 1e-4)) << "pass " << pass;
        flx_plan_destroy(plan);
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    ASSERT_EQ(flx_set_fusion(gpu, true), FLX_OK);
}

// TF32 only when the context allows it: with FLX_MATH_TF32 the fused layer is still close at a
// TF32 tolerance (10-bit mantissa inputs: ~1e-3 relative per product, k = 784 random signs).
TEST_F(GemmEpilogueCuda, MathModeIsHonoured) {
    int32_t mode = 0;
    ASSERT_EQ(flx_get_math_mode(gpu, &mode), FLX_OK);
    ASSERT_EQ(flx_set_math_mode(gpu, FLX_MATH_TF32), FLX_OK);
    std::vector<double> g = values(flx_relu(flx_linear(rand_tensor(gpu, FLX_F32, {64, 784}, 81),
                                                       rand_tensor(gpu, FLX_F32, {256, 784}, 82),
                                                       rand_tensor(gpu, FLX_F32, {256}, 83))));
    ASSERT_EQ(flx_set_math_mode(gpu, mode), FLX_OK);
    std::vector<double> h = values(flx_relu(flx_linear(rand_tensor(cpu, FLX_F32, {64, 784}, 81),
                                                       rand_tensor(cpu, FLX_F32, {256, 784}, 82),
                                                       rand_tensor(cpu, FLX_F32, {256}, 83))));
    EXPECT_TRUE(close(g, h, 5e-2, 1e-2));
}

}  // namespace
