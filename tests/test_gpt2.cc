// test_gpt2.cc — the GPT-2 model of examples/gpt2_model.h (shared with the example and the
// benchmark) on the tiny configuration: its loss against an independent float64 host
// implementation of GPT-2, gradients against central finite differences (f64), the AdamW step as
// a plan equal to the same steps run eagerly, learning a repeating pattern, bad input, and a CUDA
// run against the CPU oracle step for step (f32 and bf16; skipped without a GPU).
#include <algorithm>
#include <cmath>
#include <vector>

#include "gpt2_model.h"
#include "testing.h"

namespace {

using flxt::values;

struct Batch {
    flx_tensor *tokens = nullptr, *targets = nullptr;
    std::vector<int64_t> tok, tgt;
};

// Row b of the stream is the cycle (b + 5 t) mod period: the next token follows from the current.
Batch pattern_batch(flx_ctx *ctx, int64_t B, int64_t T, int64_t period) {
    Batch d;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            d.tok.push_back((b + 5 * t) % period);
            d.tgt.push_back((b + 5 * (t + 1)) % period);
        }
    const int64_t shape[2] = {B, T};
    d.tokens = flx_from_host(ctx, FLX_I64, 2, shape, d.tok.data());
    d.targets = flx_from_host(ctx, FLX_I64, 2, shape, d.tgt.data());
    return d;
}

// ---- an independent float64 GPT-2 forward on the host ----------------------------------------
using Vec = std::vector<double>;

// y (n, out) = x (n, in) W^T (W (out, in)) + b
Vec linear(const Vec &x, int64_t n, int64_t in, const Vec &W, const Vec *b, int64_t out) {
    Vec y((size_t)(n * out));
    for (int64_t r = 0; r < n; r++)
        for (int64_t o = 0; o < out; o++) {
            double s = b ? (*b)[(size_t)o] : 0.0;
            for (int64_t i = 0; i < in; i++) s += x[(size_t)(r * in + i)] * W[(size_t)(o * in + i)];
            y[(size_t)(r * out + o)] = s;
        }
    return y;
}

Vec layer_norm(const Vec &x, int64_t n, int64_t C, const Vec &g, const Vec &b) {
    Vec y(x.size());
    for (int64_t r = 0; r < n; r++) {
        double mu = 0, var = 0;
        for (int64_t c = 0; c < C; c++) mu += x[(size_t)(r * C + c)];
        mu /= (double)C;
        for (int64_t c = 0; c < C; c++) var += (x[(size_t)(r * C + c)] - mu) * (x[(size_t)(r * C + c)] - mu);
        var /= (double)C;
        for (int64_t c = 0; c < C; c++)
            y[(size_t)(r * C + c)] =
                g[(size_t)c] * (x[(size_t)(r * C + c)] - mu) / std::sqrt(var + 1e-5) + b[(size_t)c];
    }
    return y;
}

double reference_loss(const gpt2_config &c, const std::vector<Vec> &P, const Batch &d, int64_t B, int64_t T) {
    const int64_t C = c.channels, H = c.n_head, D = C / H, N = B * T, V = c.padded_vocab;
    Vec x((size_t)(N * C));
    for (int64_t r = 0; r < N; r++)
        for (int64_t k = 0; k < C; k++)
            x[(size_t)(r * C + k)] = P[0][(size_t)(d.tok[(size_t)r] * C + k)] + P[1][(size_t)((r % T) * C + k)];
    for (int32_t l = 0; l < c.n_layer; l++) {
        const Vec *p = &P[(size_t)gpt2_param_index(l, 0)];
        Vec a = layer_norm(x, N, C, p[GPT2_LN1_W], p[GPT2_LN1_B]);
        Vec qkv = linear(a, N, C, p[GPT2_QKV_W], &p[GPT2_QKV_B], 3 * C);
        Vec y((size_t)(N * C), 0.0);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < T; i++) {
                    Vec s((size_t)(i + 1));
                    double mx = -INFINITY, z = 0;
                    for (int64_t j = 0; j <= i; j++) {
                        double dot = 0;
                        for (int64_t e = 0; e < D; e++)
                            dot += qkv[(size_t)((b * T + i) * 3 * C + h * D + e)] *
                                   qkv[(size_t)((b * T + j) * 3 * C + C + h * D + e)];
                        s[(size_t)j] = dot / std::sqrt((double)D);
                        mx = std::max(mx, s[(size_t)j]);
                    }
                    for (int64_t j = 0; j <= i; j++) z += std::exp(s[(size_t)j] - mx);
                    for (int64_t j = 0; j <= i; j++)
                        for (int64_t e = 0; e < D; e++)
                            y[(size_t)((b * T + i) * C + h * D + e)] +=
                                std::exp(s[(size_t)j] - mx) / z * qkv[(size_t)((b * T + j) * 3 * C + 2 * C + h * D + e)];
                }
        Vec o = linear(y, N, C, p[GPT2_PROJ_W], &p[GPT2_PROJ_B], C);
        for (size_t k = 0; k < x.size(); k++) x[k] += o[k];
        Vec m = layer_norm(x, N, C, p[GPT2_LN2_W], p[GPT2_LN2_B]);
        Vec f = linear(m, N, C, p[GPT2_FC_W], &p[GPT2_FC_B], 4 * C);
        for (double &v : f) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
        o = linear(f, N, 4 * C, p[GPT2_FCPROJ_W], &p[GPT2_FCPROJ_B], C);
        for (size_t k = 0; k < x.size(); k++) x[k] += o[k];
    }
    size_t n = P.size();
    x = layer_norm(x, N, C, P[n - 2], P[n - 1]);
    Vec logits = linear(x, N, C, P[0], nullptr, V);
    double loss = 0;
    for (int64_t r = 0; r < N; r++) {
        double mx = -INFINITY, z = 0;
        for (int64_t v = 0; v < V; v++) mx = std::max(mx, logits[(size_t)(r * V + v)]);
        for (int64_t v = 0; v < V; v++) z += std::exp(logits[(size_t)(r * V + v)] - mx);
        loss += mx + std::log(z) - logits[(size_t)(r * V + d.tgt[(size_t)r])];
    }
    return loss / (double)N;
}

std::vector<Vec> host_params(const gpt2_model &m) {
    std::vector<Vec> P;
    for (int32_t i = 0; i < m.n_params; i++) P.push_back(values(m.params[i]));
    return P;
}

double item(flx_tensor *t) {
    double v = NAN;
    EXPECT_EQ(flx_item(t, &v), FLX_OK) << flx_last_error();
    return v;
}

class Gpt2Test : public flxt::CpuTest {};

TEST_F(Gpt2Test, ConfigAndParameterCount) {
    gpt2_config s = gpt2_config_small(FLX_BF16);
    EXPECT_EQ(gpt2_config_check(&s), FLX_OK);
    // GPT-2 small with the vocabulary padded to 50304 (124,439,808 with 50257 rows).
    EXPECT_EQ(gpt2_n_weights(&s), 124475904);
    s.padded_vocab = s.vocab;
    EXPECT_EQ(gpt2_n_weights(&s), 124439808);
    gpt2_config t = gpt2_config_tiny(FLX_F64);
    EXPECT_EQ(gpt2_n_tensors(&t), 2 + 12 * 2 + 2);
    // 6 N + 12 L T C per token
    EXPECT_DOUBLE_EQ(gpt2_flops_per_token(&t, 16), 6.0 * (double)gpt2_n_weights(&t) + 12.0 * 2 * 16 * 32);
}

TEST_F(Gpt2Test, LossMatchesFloat64HostReference) {
    gpt2_config c = gpt2_config_tiny(FLX_F64);
    gpt2_model m;
    ASSERT_EQ(gpt2_init(&m, ctx, &c, 11, nullptr), FLX_OK) << gpt2_error();
    // larger weights than the initialisation so every layer matters to the loss
    for (int32_t i = 0; i < m.n_params; i++) {
        int64_t s[2];
        int32_t nd = gpt2_param_shape(&c, i, s);
        flx_tensor *noise = flxt::rand_tensor(ctx, FLX_F64, flxt::Shape(s, s + nd), 100 + i, -0.3, 0.3);
        flx_tensor *r = flx_add(m.params[i], noise);
        ASSERT_EQ(flx_assign(m.params[i], r), FLX_OK) << flx_last_error();
    }
    const int64_t B = 2, T = 11; // T < max_seq: positions are a prefix of wpe
    Batch d = pattern_batch(ctx, B, T, 13);
    double want = reference_loss(c, host_params(m), d, B, T);
    flx_tensor *loss = gpt2_loss(&c, m.params, d.tokens, d.targets);
    ASSERT_NE(loss, nullptr) << gpt2_error();
    EXPECT_NEAR(item(loss), want, 1e-11 * std::fabs(want)) << "host reference " << want;
    // logits have the documented shape
    flx_tensor *lg = gpt2_logits(&c, m.params, d.tokens);
    ASSERT_NE(lg, nullptr);
    EXPECT_EQ(flxt::shape_of(lg), (flxt::Shape{B, T, c.padded_vocab}));
    gpt2_destroy(&m);
}

TEST_F(Gpt2Test, GradientsMatchFiniteDifferences) {
    gpt2_config c = gpt2_config_tiny(FLX_F64);
    gpt2_model m;
    ASSERT_EQ(gpt2_init(&m, ctx, &c, 5, nullptr), FLX_OK) << gpt2_error();
    const int64_t B = 2, T = 8;
    Batch d = pattern_batch(ctx, B, T, 13);
    const int32_t n = m.n_params;
    // one parameter of each kind, across both layers
    const std::vector<int32_t> pick = {0, 1, gpt2_param_index(0, GPT2_QKV_W), gpt2_param_index(1, GPT2_QKV_B),
                                       gpt2_param_index(0, GPT2_PROJ_W), gpt2_param_index(1, GPT2_LN1_W),
                                       gpt2_param_index(0, GPT2_LN2_B), gpt2_param_index(1, GPT2_FC_W),
                                       gpt2_param_index(0, GPT2_FCPROJ_W), gpt2_param_index(1, GPT2_FCPROJ_B),
                                       n - 2, n - 1};
    std::vector<flx_tensor *> ins;
    for (int32_t i : pick) ins.push_back(m.params[i]);
    std::vector<flx_tensor *> g(ins.size());
    flx_tensor *loss = gpt2_loss(&c, m.params, d.tokens, d.targets);
    ASSERT_EQ(flx_grad_of(1, &loss, nullptr, (int32_t)ins.size(), ins.data(), false, g.data()), FLX_OK)
        << flx_last_error();
    const double eps = 1e-5;
    int checked = 0;
    for (size_t k = 0; k < pick.size(); k++) {
        std::vector<double> p0 = values(ins[k]), gk = values(g[k]);
        const flxt::Shape shape = flxt::shape_of(ins[k]);
        for (size_t e : {(size_t)1, p0.size() / 2 + 3, p0.size() - 2}) {
            double f[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                std::vector<double> q = p0;
                q[e] += sgn ? -eps : eps;
                std::vector<flx_tensor *> P(m.params, m.params + n);
                P[(size_t)pick[k]] = flx_from_host(ctx, FLX_F64, (int32_t)shape.size(), shape.data(), q.data());
                f[sgn] = item(gpt2_loss(&c, P.data(), d.tokens, d.targets));
            }
            double fd = (f[0] - f[1]) / (2 * eps);
            EXPECT_NEAR(gk[e], fd, 1e-8 + 1e-6 * std::fabs(fd)) << "parameter " << pick[k] << " entry " << e;
            checked++;
        }
    }
    EXPECT_EQ(checked, 36);
    gpt2_destroy(&m);
}

// The same AdamW steps eagerly (record, flx_backward, flx_optim_step) and as one compiled plan per
// step: equal losses step for step and equal parameters after.
TEST_F(Gpt2Test, PlanStepsEqualEagerSteps) {
    gpt2_config c = gpt2_config_tiny(FLX_F64);
    gpt2_adamw hp = gpt2_adamw_defaults();
    hp.lr = 3e-3;
    gpt2_model a, b;
    ASSERT_EQ(gpt2_init(&a, ctx, &c, 21, &hp), FLX_OK) << gpt2_error();
    ASSERT_EQ(gpt2_init(&b, ctx, &c, 21, &hp), FLX_OK) << gpt2_error();
    Batch d = pattern_batch(ctx, 3, 16, 13);
    double ref0 = reference_loss(c, host_params(a), d, 3, 16);
    flx_plan *plan = gpt2_compile_step(&b, d.tokens, d.targets, FLX_PLAN_CAPTURE_DEFAULT);
    ASSERT_NE(plan, nullptr) << gpt2_error();
    flx_tensor *out = flx_plan_output(plan, 0);
    for (int s = 0; s < 4; s++) {
        double le = NAN;
        ASSERT_EQ(gpt2_step_eager(&a, d.tokens, d.targets, &le), FLX_OK) << gpt2_error();
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        double lp = item(out);
        EXPECT_NEAR(lp, le, 1e-12 * std::fabs(le)) << "step " << s;
        if (s == 0) EXPECT_NEAR(le, ref0, 1e-11 * ref0);
    }
    for (int32_t i = 0; i < a.n_params; i++)
        EXPECT_TRUE(flxt::close(values(b.params[i]), values(a.params[i]), 1e-12, 1e-10)) << "parameter " << i;
    // the parameters moved: weight decay and updates acted on both groups
    gpt2_model fresh;
    ASSERT_EQ(gpt2_init(&fresh, ctx, &c, 21, &hp), FLX_OK);
    EXPECT_FALSE(flxt::close(values(a.params[0]), values(fresh.params[0]), 1e-6, 0));
    EXPECT_FALSE(flxt::close(values(a.params[a.n_params - 1]), values(fresh.params[a.n_params - 1]), 1e-6, 0));
    flx_plan_destroy(plan);
    gpt2_destroy(&fresh);
    gpt2_destroy(&a);
    gpt2_destroy(&b);
}

TEST_F(Gpt2Test, LearnsARepeatingPattern) {
    gpt2_config c = gpt2_config_tiny(FLX_F32);
    gpt2_adamw hp = gpt2_adamw_defaults();
    hp.lr = 1e-2;
    gpt2_model m;
    ASSERT_EQ(gpt2_init(&m, ctx, &c, 3, &hp), FLX_OK) << gpt2_error();
    Batch d = pattern_batch(ctx, 8, 16, 13);
    flx_plan *plan = gpt2_compile_step(&m, d.tokens, d.targets, FLX_PLAN_CAPTURE_DEFAULT);
    ASSERT_NE(plan, nullptr) << gpt2_error();
    flx_tensor *out = flx_plan_output(plan, 0);
    std::vector<double> losses;
    for (int s = 0; s < 40; s++) {
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        losses.push_back(item(out));
    }
    // small initial logits: the first loss is close to ln(vocab), the uniform guess
    EXPECT_NEAR(losses[0], std::log(64.0), 0.05);
    EXPECT_LT(losses.back(), 0.5) << "after 40 steps";
    EXPECT_LT(losses[39], losses[20]);
    EXPECT_LT(losses[20], losses[0]);
    flx_plan_destroy(plan);
    gpt2_destroy(&m);
}

// bf16 parameters and activations with f32 masters in AdamW, on the CPU (every stored value
// rounded to bf16, to nearest even): the first loss agrees with the f32 model of the same seed
// to bf16's precision (8 bits: 2^-8 relative per rounding; 2e-2 allows for the accumulation of a
// few dozen roundings through the network), the plan equals the eager steps exactly (the same
// kernels on the same backend), and the model learns the pattern.
TEST_F(Gpt2Test, Bf16TrainsLikeF32) {
    gpt2_adamw hp = gpt2_adamw_defaults();
    hp.lr = 1e-2;
    gpt2_config c16 = gpt2_config_tiny(FLX_BF16), c32 = gpt2_config_tiny(FLX_F32);
    gpt2_model a, b, f;
    ASSERT_EQ(gpt2_init(&a, ctx, &c16, 3, &hp), FLX_OK) << gpt2_error();
    ASSERT_EQ(gpt2_init(&b, ctx, &c16, 3, &hp), FLX_OK) << gpt2_error();
    ASSERT_EQ(gpt2_init(&f, ctx, &c32, 3, &hp), FLX_OK) << gpt2_error();
    EXPECT_EQ(flx_dtype_of(a.params[0]), FLX_BF16);
    Batch d = pattern_batch(ctx, 4, 16, 13);
    flx_plan *plan = gpt2_compile_step(&b, d.tokens, d.targets, FLX_PLAN_CAPTURE_DEFAULT);
    ASSERT_NE(plan, nullptr) << gpt2_error();
    flx_tensor *out = flx_plan_output(plan, 0);
    double l32 = NAN;
    ASSERT_EQ(gpt2_step_eager(&f, d.tokens, d.targets, &l32), FLX_OK) << gpt2_error();
    std::vector<double> losses;
    for (int s = 0; s < 20; s++) {
        double le = NAN;
        ASSERT_EQ(gpt2_step_eager(&a, d.tokens, d.targets, &le), FLX_OK) << gpt2_error();
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        EXPECT_EQ(item(out), le) << "step " << s;
        losses.push_back(le);
    }
    EXPECT_NEAR(losses[0], l32, 2e-2 * l32);
    EXPECT_LT(losses.back(), 1.0) << "after 20 bf16 steps";
    for (int32_t i = 0; i < a.n_params; i++)
        EXPECT_TRUE(flxt::close(values(b.params[i]), values(a.params[i]), 0, 0)) << "parameter " << i;
    flx_plan_destroy(plan);
    gpt2_destroy(&a);
    gpt2_destroy(&b);
    gpt2_destroy(&f);
}

TEST_F(Gpt2Test, SyntheticBatchIsShiftedStream) {
    gpt2_config c = gpt2_config_tiny(FLX_F32);
    flx_tensor *x = nullptr, *y = nullptr;
    ASSERT_EQ(gpt2_synthetic_batch(ctx, &c, 3, 10, 42, &x, &y), FLX_OK) << gpt2_error();
    std::vector<double> xv = values(x), yv = values(y);
    for (int64_t b = 0; b < 3; b++)
        for (int64_t t = 0; t + 1 < 10; t++) EXPECT_EQ(yv[(size_t)(b * 10 + t)], xv[(size_t)(b * 10 + t + 1)]);
    for (double v : xv) EXPECT_TRUE(v >= 0 && v < 64);
    // splitmix64 from seed 42: the first id (the PyTorch peer of the benchmark draws the same)
    uint64_t z = 42 + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    EXPECT_EQ(xv[0], (double)(z % 64));
}

TEST_F(Gpt2Test, RejectsBadInput) {
    gpt2_config c = gpt2_config_tiny(FLX_F64);
    gpt2_config bad = c;
    bad.channels = 30; // not a multiple of 4 heads
    bad.n_head = 4;
    EXPECT_EQ(gpt2_config_check(&bad), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(gpt2_error()).find("multiple"), std::string::npos);
    bad = c;
    bad.padded_vocab = c.vocab - 1;
    EXPECT_EQ(gpt2_config_check(&bad), FLX_ERR_INVALID_ARGUMENT);
    bad = c;
    bad.dtype = FLX_I32;
    EXPECT_EQ(gpt2_config_check(&bad), FLX_ERR_DTYPE);
    bad.dtype = FLX_F16; // would need loss scaling
    EXPECT_EQ(gpt2_config_check(&bad), FLX_ERR_DTYPE);
    EXPECT_EQ(gpt2_config_check(nullptr), FLX_ERR_INVALID_ARGUMENT);
    gpt2_model m;
    EXPECT_EQ(gpt2_init(&m, nullptr, &c, 1, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(gpt2_init(nullptr, ctx, &c, 1, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(gpt2_init(&m, ctx, &bad, 1, nullptr), FLX_ERR_DTYPE);
    ASSERT_EQ(gpt2_init(&m, ctx, &c, 1, nullptr), FLX_OK) << gpt2_error();
    Batch d = pattern_batch(ctx, 2, 8, 13);
    EXPECT_EQ(gpt2_loss(&c, m.params, nullptr, d.targets), nullptr);
    EXPECT_EQ(gpt2_loss(&c, m.params, d.tokens, nullptr), nullptr);
    EXPECT_EQ(gpt2_loss(&c, nullptr, d.tokens, d.targets), nullptr);
    Batch longer = pattern_batch(ctx, 1, 17, 13); // T > max_seq
    EXPECT_EQ(gpt2_loss(&c, m.params, longer.tokens, longer.targets), nullptr);
    EXPECT_NE(std::string(gpt2_error()).find("max_seq"), std::string::npos);
    flx_tensor *ftok = flx_cast(d.tokens, FLX_F64);
    EXPECT_EQ(gpt2_loss(&c, m.params, ftok, d.targets), nullptr);
    EXPECT_NE(std::string(gpt2_error()).find("i32 or i64"), std::string::npos);
    gpt2_config f32 = gpt2_config_tiny(FLX_F32); // parameters of another dtype than the config's
    EXPECT_EQ(gpt2_loss(&f32, m.params, d.tokens, d.targets), nullptr);
    EXPECT_NE(std::string(gpt2_error()).find("f64"), std::string::npos);
    Batch mism = pattern_batch(ctx, 2, 7, 13);
    EXPECT_EQ(gpt2_loss(&c, m.params, d.tokens, mism.targets), nullptr);
    flx_tensor *x = nullptr, *y = nullptr;
    EXPECT_EQ(gpt2_synthetic_batch(ctx, &c, 0, 8, 1, &x, &y), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(gpt2_synthetic_batch(ctx, &c, 1, 17, 1, &x, &y), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(gpt2_step_eager(nullptr, d.tokens, d.targets, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(gpt2_compile_step(nullptr, d.tokens, d.targets, 0), nullptr);
    gpt2_destroy(&m);
    gpt2_destroy(&m); // idempotent
}

// GPU steps against the CPU oracle, step for step: the same model (one seed), the same batch,
// three AdamW steps as a captured plan on the GPU and a plan on the CPU.
// f32: losses within 1e-4 relative (accumulation order of the GEMMs and reductions), parameters
// within 2e-3 absolute (an Adam step moves an entry by up to lr = 1e-3 whatever the gradient's
// size, so a near-zero gradient whose sign differs between devices may differ by 2 lr per step).
// bf16 (f32 masters in AdamW): every op rounds to bf16 (8 bits) on both devices but in its own
// order of accumulation: losses within 3e-2 relative, parameters within 1.5e-2 absolute (one bf16
// ulp of a layer-norm gain near 1 is 7.8e-3, plus the Adam bound).
class Gpt2Cuda : public flxt::CudaCpuTest {};

TEST_F(Gpt2Cuda, StepsMatchCpuOracle) {
    int64_t live = flx_live_tensors();
    for (flx_dtype dt : {FLX_F32, FLX_BF16}) {
        SCOPED_TRACE(flx_dtype_name(dt));
        const bool half = dt == FLX_BF16;
        gpt2_config c = gpt2_config_tiny(dt);
        gpt2_adamw hp = gpt2_adamw_defaults();
        hp.lr = 1e-3;
        std::vector<double> loss[2];
        std::vector<std::vector<double>> params[2];
        flx_ctx *ctxs[2] = {cpu, gpu};
        for (int k = 0; k < 2; k++) {
            ASSERT_EQ(flx_scope_begin(), FLX_OK);
            gpt2_model m;
            ASSERT_EQ(gpt2_init(&m, ctxs[k], &c, 77, &hp), FLX_OK) << gpt2_error();
            Batch d = pattern_batch(ctxs[k], 4, 16, 13);
            flx_plan *plan = gpt2_compile_step(&m, d.tokens, d.targets, FLX_PLAN_CAPTURE_DEFAULT);
            ASSERT_NE(plan, nullptr) << gpt2_error();
            flx_tensor *out = flx_plan_output(plan, 0);
            for (int s = 0; s < 3; s++) {
                ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
                loss[k].push_back(item(out));
            }
            for (int32_t i = 0; i < m.n_params; i++) params[k].push_back(values(m.params[i]));
            if (k == 1) {
                flx_plan_info info;
                ASSERT_EQ(flx_plan_get_info(plan, &info), FLX_OK);
                EXPECT_TRUE(info.captured) << info.capture_reason;
            }
            flx_plan_destroy(plan);
            gpt2_destroy(&m);
            ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        }
        for (int s = 0; s < 3; s++)
            EXPECT_NEAR(loss[1][(size_t)s], loss[0][(size_t)s], (half ? 3e-2 : 1e-4) * std::fabs(loss[0][(size_t)s]))
                << "step " << s;
        for (size_t i = 0; i < params[0].size(); i++)
            EXPECT_TRUE(flxt::close(params[1][i], params[0][i], half ? 1.5e-2 : 2e-3, 0)) << "parameter " << i;
    }
    EXPECT_EQ(flx_live_tensors(), live);
}

}  // namespace
