// test_attention.cc — flx_attention against a float64 host loop and against the naive
// softmax(s q k^T + mask) v composed from fluxion's primitive ops (matmul, softmax), causal with
// S == T, S < T and S > T (rows that see no key), Dv != D, empty sizes; the VJP by gradcheck and
// against the composition's gradient, the JVP by central differences and the dot-product test,
// second derivatives (the VJP and JVP of the gradient and of the JVP nodes) by gradcheck, HVPs
// in both modes against finite differences of gradients; bad inputs; the GPU against the CPU.
#include "testing.h"

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace {

using namespace flxt;

class Attention : public flxt::CpuTest {};

struct Cfg {
    int64_t B, H, S, T, D, Dv;
    bool causal;
    double scale; // 0: 1/sqrt(D)
};

std::string name(const Cfg &c) {
    return "B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " S" + std::to_string(c.S) +
           " T" + std::to_string(c.T) + " D" + std::to_string(c.D) + " Dv" + std::to_string(c.Dv) +
           (c.causal ? " causal" : "") + " scale " + std::to_string(c.scale);
}

double eff_scale(const Cfg &c) { return c.scale > 0 ? c.scale : (c.D > 0 ? 1.0 / std::sqrt((double)c.D) : 1.0); }

// Float64 reference: o (B, H, S, Dv), straight from the definition (two passes over each row).
std::vector<double> ref_attention(const Cfg &c, const std::vector<double> &q,
                                  const std::vector<double> &k, const std::vector<double> &v) {
    std::vector<double> o((size_t)(c.B * c.H * c.S * c.Dv), 0.0);
    const double s = eff_scale(c);
    for (int64_t bh = 0; bh < c.B * c.H; bh++)
        for (int64_t i = 0; i < c.S; i++) {
            std::vector<double> z;
            for (int64_t j = 0; j < c.T; j++) {
                if (c.causal && j > i + (c.T - c.S)) break;
                double acc = 0;
                for (int64_t d = 0; d < c.D; d++)
                    acc += q[(size_t)((bh * c.S + i) * c.D + d)] * k[(size_t)((bh * c.T + j) * c.D + d)];
                z.push_back(s * acc);
            }
            if (z.empty()) continue; // a row that sees no key: 0
            double m = z[0];
            for (double x : z) m = std::max(m, x);
            double l = 0;
            for (double x : z) l += std::exp(x - m);
            for (size_t j = 0; j < z.size(); j++)
                for (int64_t d = 0; d < c.Dv; d++)
                    o[(size_t)((bh * c.S + i) * c.Dv + d)] +=
                        std::exp(z[j] - m) / l * v[(size_t)((bh * c.T + (int64_t)j) * c.Dv + d)];
        }
    return o;
}

// The naive composition from primitive ops: softmax(s q k^T + M) v, with M = -1e30 off the
// causal mask, and rows that see no key zeroed by a row mask (their softmax is meaningless).
flx_tensor *composed(const Cfg &c, flx_tensor *q, flx_tensor *k, flx_tensor *v) {
    flx_ctx *ctx = flx_ctx_of(q);
    flx_dtype dt = flx_dtype_of(q);
    flx_tensor *z = flx_mul_scalar(flx_matmul(q, flx_transpose(k, 2, 3)), eff_scale(c));
    if (!c.causal) return flx_matmul(flx_softmax(z, 3, 1.0), v);
    std::vector<double> M((size_t)(c.S * c.T)), R((size_t)c.S);
    for (int64_t i = 0; i < c.S; i++) {
        R[(size_t)i] = i + (c.T - c.S) >= 0 ? 1.0 : 0.0;
        for (int64_t j = 0; j < c.T; j++) M[(size_t)(i * c.T + j)] = j <= i + (c.T - c.S) ? 0.0 : -1e30;
    }
    flx_tensor *p = flx_softmax(flx_add(z, make(ctx, dt, {c.S, c.T}, M)), 3, 1.0);
    return flx_matmul(flx_mul(p, make(ctx, dt, {c.S, 1}, R)), v);
}

struct Inputs {
    flx_tensor *q, *k, *v;
    std::vector<double> qv, kv, vv;
};

Inputs inputs(flx_ctx *ctx, flx_dtype dt, const Cfg &c, uint64_t seed, double lo = -1.0, double hi = 1.0) {
    Inputs in;
    in.qv = rand_values((size_t)(c.B * c.H * c.S * c.D), seed, lo, hi);
    in.kv = rand_values((size_t)(c.B * c.H * c.T * c.D), seed + 1, lo, hi);
    in.vv = rand_values((size_t)(c.B * c.H * c.T * c.Dv), seed + 2, lo, hi);
    in.q = make(ctx, dt, {c.B, c.H, c.S, c.D}, in.qv);
    in.k = make(ctx, dt, {c.B, c.H, c.T, c.D}, in.kv);
    in.v = make(ctx, dt, {c.B, c.H, c.T, c.Dv}, in.vv);
    return in;
}

const std::vector<Cfg> &configs() {
    static const std::vector<Cfg> cs = {
        {2, 3, 5, 5, 4, 4, false, 0},   {2, 3, 5, 5, 4, 4, true, 0},
        {1, 2, 3, 6, 4, 2, true, 0.7},  // S < T: every row sees more than its own prefix
        {1, 2, 7, 4, 3, 5, true, 0},    // S > T: rows 0..2 see no key (output 0)
        {1, 2, 4, 6, 5, 3, false, 1.3}, // S != T, Dv != D
        {2, 1, 1, 1, 1, 1, false, 0},   {1, 1, 3, 3, 2, 2, true, 2.0},
    };
    return cs;
}

// ---- values -----------------------------------------------------------------------------------
TEST_F(Attention, ValuesMatchFloat64LoopAndComposition) {
    for (const Cfg &c : configs()) {
        for (flx_dtype dt : {FLX_F64, FLX_F32}) {
            for (bool grad : {false, true}) { // no-grad: o alone; grad: o and the logsumexp
                Inputs in = inputs(ctx, dt, c, 100);
                if (grad) flxt::need_grad({in.q, in.k, in.v});
                flx_tensor *o = flx_attention(in.q, in.k, in.v, c.causal, c.scale);
                ASSERT_NE(o, nullptr) << flx_last_error() << " " << name(c);
                EXPECT_EQ(flxt::shape_of(o), (Shape{c.B, c.H, c.S, c.Dv}));
                std::vector<double> want = ref_attention(c, in.qv, in.kv, in.vv);
                const double tol = dt == FLX_F64 ? 1e-13 : 2e-6;
                EXPECT_TRUE(close(values(o), want, tol, tol)) << name(c) << " " << flx_dtype_name(dt);
                flx_tensor *n = composed(c, in.q, in.k, in.v);
                ASSERT_NE(n, nullptr) << flx_last_error();
                EXPECT_TRUE(close(values(o), values(n), tol, tol)) << name(c);
            }
        }
    }
}

TEST_F(Attention, RowsThatSeeNoKeyAreZero) {
    Cfg c{1, 1, 5, 2, 3, 2, true, 0}; // rows 0..2 see nothing, row 3 sees key 0, row 4 keys 0..1
    Inputs in = inputs(ctx, FLX_F64, c, 7);
    std::vector<double> o = values(flx_attention(in.q, in.k, in.v, true, 0));
    for (int i = 0; i < 3 * 2; i++) EXPECT_EQ(o[(size_t)i], 0.0);
    EXPECT_DOUBLE_EQ(o[6], in.vv[0]); // row 3 sees only key 0: o = v_0
    EXPECT_DOUBLE_EQ(o[7], in.vv[1]);
    // T == 0: every row is empty, causal or not
    for (bool causal : {false, true}) {
        flx_tensor *q = make(ctx, FLX_F64, {1, 2, 3, 4}, rand_values(24, 1));
        flx_tensor *k = flx_zeros(ctx, FLX_F64, 4, Shape{1, 2, 0, 4}.data());
        flx_tensor *v = flx_zeros(ctx, FLX_F64, 4, Shape{1, 2, 0, 5}.data());
        flx_tensor *r = flx_attention(q, k, v, causal, 0);
        ASSERT_NE(r, nullptr) << flx_last_error();
        EXPECT_EQ(flxt::shape_of(r), (Shape{1, 2, 3, 5}));
        EXPECT_TRUE(close(values(r), std::vector<double>(30, 0.0)));
    }
}

TEST_F(Attention, EmptyShapesAndZeroHeadDim) {
    for (Cfg c : {Cfg{0, 2, 3, 3, 4, 4, false, 0}, Cfg{1, 2, 0, 3, 4, 4, true, 0},
                  Cfg{1, 2, 3, 3, 4, 0, false, 0}, Cfg{1, 2, 3, 4, 0, 2, true, 0}}) {
        Inputs in = inputs(ctx, FLX_F64, c, 3);
        flxt::need_grad({in.q, in.k, in.v});
        flx_tensor *o = flx_attention(in.q, in.k, in.v, c.causal, 0);
        ASSERT_NE(o, nullptr) << flx_last_error() << " " << name(c);
        EXPECT_EQ(flxt::shape_of(o), (Shape{c.B, c.H, c.S, c.Dv}));
        EXPECT_TRUE(close(values(o), ref_attention(c, in.qv, in.kv, in.vv))) << name(c);
        // gradients have the inputs' shapes and equal the composition's (D == 0: uniform weights,
        // so v still gets a gradient; an empty output: zeros)
        flx_tensor *X[3] = {in.q, in.k, in.v}, *g[3], *gn[3];
        flx_tensor *w = make(ctx, FLX_F64, flxt::shape_of(o), rand_values((size_t)flx_numel(o), 4));
        flx_tensor *n = composed(c, in.q, in.k, in.v);
        ASSERT_EQ(flx_grad_of(1, &o, &w, 3, X, false, g), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_grad_of(1, &n, &w, 3, X, false, gn), FLX_OK) << flx_last_error();
        for (int i = 0; i < 3; i++) {
            EXPECT_EQ(flxt::shape_of(g[i]), flxt::shape_of(X[i]));
            EXPECT_TRUE(close(values(g[i]), values(gn[i]), 1e-13, 1e-12)) << name(c) << " input " << i;
            if (flx_numel(o) == 0)
                for (double x : values(g[i])) EXPECT_EQ(x, 0.0) << name(c);
        }
    }
}

// Large logits: the online softmax must not overflow (s q.k ~ 4e3 in f32).
TEST_F(Attention, LargeScoresAreStable) {
    Cfg c{1, 2, 6, 6, 8, 3, true, 0};
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        Inputs in = inputs(ctx, dt, c, 41, -40, 40);
        std::vector<double> o = values(flx_attention(in.q, in.k, in.v, true, 0));
        for (double x : o) EXPECT_TRUE(std::isfinite(x));
        EXPECT_TRUE(close(o, ref_attention(c, in.qv, in.kv, in.vv), 1e-3, dt == FLX_F64 ? 1e-12 : 1e-5));
    }
}

// f16 and bf16 on the CPU: inputs are exact halves, the kernel computes in double, so the output
// is the float64 result rounded once (|err| <= u |o|, u = 2^-11 for f16, 2^-8 for bf16). The
// gradients come from the rounded output and the f32 logsumexp, so they carry a few more
// roundings: bounded by 8 u relative to the largest reference entry. The JVP is computed in
// double from exact inputs and rounded once.
TEST_F(Attention, HalfPrecisionRoundsOnce) {
    for (flx_dtype dt : {FLX_F16, FLX_BF16}) {
        const double u = dt == FLX_F16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
        for (const Cfg &c : configs()) {
            Inputs in = inputs(ctx, dt, c, 150);
            std::vector<double> qv = values(in.q), kv = values(in.k), vv = values(in.v); // exact halves
            std::vector<double> want = ref_attention(c, qv, kv, vv);
            for (bool grad : {false, true}) {
                if (grad) flxt::need_grad({in.q, in.k, in.v});
                flx_tensor *o = flx_attention(in.q, in.k, in.v, c.causal, c.scale);
                ASSERT_NE(o, nullptr) << flx_last_error();
                EXPECT_EQ(flx_dtype_of(o), dt);
                std::vector<double> got = values(o);
                for (size_t i = 0; i < got.size(); i++)
                    EXPECT_LE(std::fabs(got[i] - want[i]), u * std::fabs(want[i]) + 1e-300)
                        << name(c) << " " << flx_dtype_name(dt) << " entry " << i;
            }
            // gradients of <w, o> against float64 ones at the same (exact) inputs
            flx_tensor *X[3] = {in.q, in.k, in.v}, *g[3], *gr[3];
            std::vector<double> wv = rand_values((size_t)(c.B * c.H * c.S * c.Dv), 17);
            flx_tensor *o = flx_attention(in.q, in.k, in.v, c.causal, c.scale);
            flx_tensor *w = make(ctx, dt, {c.B, c.H, c.S, c.Dv}, wv);
            ASSERT_EQ(flx_grad_of(1, &o, &w, 3, X, false, g), FLX_OK) << flx_last_error();
            flx_tensor *X64[3] = {make(ctx, FLX_F64, flxt::shape_of(in.q), qv),
                                  make(ctx, FLX_F64, flxt::shape_of(in.k), kv),
                                  make(ctx, FLX_F64, flxt::shape_of(in.v), vv)};
            flxt::need_grad({X64[0], X64[1], X64[2]});
            flx_tensor *o64 = flx_attention(X64[0], X64[1], X64[2], c.causal, c.scale);
            flx_tensor *w64 = make(ctx, FLX_F64, {c.B, c.H, c.S, c.Dv}, values(w));
            ASSERT_EQ(flx_grad_of(1, &o64, &w64, 3, X64, false, gr), FLX_OK) << flx_last_error();
            for (int i = 0; i < 3; i++) {
                EXPECT_EQ(flx_dtype_of(g[i]), dt);
                std::vector<double> ref = values(gr[i]);
                double mx = 0;
                for (double x : ref) mx = std::max(mx, std::fabs(x));
                EXPECT_TRUE(close(values(g[i]), ref, 8 * u * mx, 0)) << name(c) << " " << flx_dtype_name(dt) << " input " << i;
            }
            // the JVP along exact half tangents against the float64 one
            Inputs t = inputs(ctx, dt, c, 160);
            flx_tensor *T[3] = {t.q, t.k, t.v}, *T64[3], *to = nullptr, *to64 = nullptr;
            for (int i = 0; i < 3; i++) T64[i] = make(ctx, FLX_F64, flxt::shape_of(T[i]), values(T[i]));
            ASSERT_EQ(flx_jvp(3, X, T, 1, &o, &to), FLX_OK) << flx_last_error();
            ASSERT_EQ(flx_jvp(3, X64, T64, 1, &o64, &to64), FLX_OK) << flx_last_error();
            EXPECT_EQ(flx_dtype_of(to), dt);
            std::vector<double> ref = values(to64);
            double mx = 0;
            for (double x : ref) mx = std::max(mx, std::fabs(x));
            EXPECT_TRUE(close(values(to), ref, u * mx, u)) << name(c) << " " << flx_dtype_name(dt) << " jvp";
        }
    }
}

// ---- first derivatives --------------------------------------------------------------------------
flxt::Fn attn_fn(const Cfg &c) {
    return [c](const std::vector<flx_tensor *> &x) { return flx_attention(x[0], x[1], x[2], c.causal, c.scale); };
}

TEST_F(Attention, VjpByGradcheckAndAgainstComposition) {
    for (const Cfg &c : configs()) {
        Inputs in = inputs(ctx, FLX_F64, c, 200);
        EXPECT_EQ(flxt::gradcheck(attn_fn(c), {in.q, in.k, in.v}), FLX_OK) << flx_last_error() << " " << name(c);
        // gradients of <w, o> equal those of the composition
        flxt::need_grad({in.q, in.k, in.v});
        flx_tensor *w = make(ctx, FLX_F64, {c.B, c.H, c.S, c.Dv}, rand_values((size_t)(c.B * c.H * c.S * c.Dv), 9));
        flx_tensor *X[3] = {in.q, in.k, in.v}, *ga[3], *gb[3];
        flx_tensor *o = flx_attention(in.q, in.k, in.v, c.causal, c.scale), *n = composed(c, in.q, in.k, in.v);
        ASSERT_EQ(flx_grad_of(1, &o, &w, 3, X, false, ga), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_grad_of(1, &n, &w, 3, X, false, gb), FLX_OK) << flx_last_error();
        for (int i = 0; i < 3; i++) EXPECT_TRUE(close(values(ga[i]), values(gb[i]), 1e-12, 1e-10)) << name(c) << " input " << i;
    }
}

TEST_F(Attention, GradientsWhenOnlySomeInputsRequireGrad) {
    Cfg c{1, 2, 4, 5, 3, 2, true, 0};
    for (int which = 0; which < 3; which++) {
        Inputs in = inputs(ctx, FLX_F64, c, 300);
        flx_tensor *X[3] = {in.q, in.k, in.v};
        flxt::need_grad({X[which]});
        flx_tensor *o = flx_attention(in.q, in.k, in.v, true, 0);
        flx_tensor *loss = flx_sum_all(flx_square(o)), *g = nullptr, *gn = nullptr;
        ASSERT_EQ(flx_grad_of(1, &loss, nullptr, 1, &X[which], false, &g), FLX_OK) << flx_last_error();
        flx_tensor *ln = flx_sum_all(flx_square(composed(c, in.q, in.k, in.v)));
        ASSERT_EQ(flx_grad_of(1, &ln, nullptr, 1, &X[which], false, &gn), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(g), values(gn), 1e-12, 1e-10)) << "input " << which;
    }
}

// Self-attention with one tensor as q, k and v: the three gradients add up.
TEST_F(Attention, SameTensorAsQueryKeyAndValue) {
    Cfg c{1, 2, 4, 4, 3, 3, true, 0};
    flx_tensor *x = make(ctx, FLX_F64, {1, 2, 4, 3}, rand_values(24, 5));
    auto f = [c](const std::vector<flx_tensor *> &in) { return flx_attention(in[0], in[0], in[0], c.causal, 0); };
    EXPECT_EQ(flxt::gradcheck(f, {x}), FLX_OK) << flx_last_error();
    EXPECT_TRUE(flxt::jvp_check(f, {x}));
}

TEST_F(Attention, JvpByCentralDifferencesAndDotProductTest) {
    for (const Cfg &c : configs()) {
        Inputs in = inputs(ctx, FLX_F64, c, 400);
        EXPECT_TRUE(flxt::jvp_check(attn_fn(c), {in.q, in.k, in.v})) << name(c);
    }
}

TEST_F(Attention, JvpMatchesCompositionWithSomeTangentsZero) {
    Cfg c{2, 1, 5, 4, 3, 2, true, 0};
    Inputs in = inputs(ctx, FLX_F64, c, 500);
    flx_tensor *X[3] = {in.q, in.k, in.v};
    flx_tensor *o = flx_attention(in.q, in.k, in.v, true, 0), *n = composed(c, in.q, in.k, in.v);
    for (int mask = 1; mask < 8; mask++) {
        flx_tensor *t[3];
        for (int i = 0; i < 3; i++)
            t[i] = (mask >> i) & 1 ? make(ctx, FLX_F64, flxt::shape_of(X[i]), rand_values((size_t)flx_numel(X[i]), 60 + i)) : nullptr;
        flx_tensor *ta = nullptr, *tb = nullptr;
        ASSERT_EQ(flx_jvp(3, X, t, 1, &o, &ta), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_jvp(3, X, t, 1, &n, &tb), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(ta), values(tb), 1e-12, 1e-10)) << "tangent mask " << mask;
    }
}

// ---- second derivatives -------------------------------------------------------------------------
// dq, dk, dv of <g, attention(q, k, v)> as one flat vector, differentiable (create_graph).
flx_tensor *grads_flat(const Cfg &c, const std::vector<flx_tensor *> &x, bool compose) {
    flxt::GradOn on;
    flxt::need_grad(x);
    flx_tensor *o = compose ? composed(c, x[0], x[1], x[2]) : flx_attention(x[0], x[1], x[2], c.causal, c.scale);
    flx_tensor *g[3];
    if (!o || flx_grad_of(1, &o, &x[3], 3, x.data(), true, g) != FLX_OK) return nullptr;
    int64_t m1 = -1;
    flx_tensor *parts[3] = {flx_reshape(g[0], 1, &m1), flx_reshape(g[1], 1, &m1), flx_reshape(g[2], 1, &m1)};
    return flx_concat(3, parts, 0);
}

// J(q, k, v) t as a function of (q, k, v, tq, tk, tv).
flx_tensor *jvp_of(const Cfg &c, const std::vector<flx_tensor *> &x, bool compose) {
    flx_tensor *o = compose ? composed(c, x[0], x[1], x[2]) : flx_attention(x[0], x[1], x[2], c.causal, c.scale);
    flx_tensor *t = nullptr;
    if (!o || flx_jvp(3, x.data(), x.data() + 3, 1, &o, &t) != FLX_OK) return nullptr;
    return t;
}

std::vector<Cfg> second_order_configs() {
    return {{1, 2, 4, 4, 3, 3, true, 0}, {1, 1, 5, 3, 2, 3, true, 0.8}, {2, 1, 3, 4, 3, 2, false, 0}};
}

// The VJP (gradcheck) and JVP (jvp_check) of the gradient nodes, in every argument.
TEST_F(Attention, SecondOrderThroughTheGradient) {
    for (const Cfg &c : second_order_configs()) {
        Inputs in = inputs(ctx, FLX_F64, c, 600);
        flx_tensor *g = make(ctx, FLX_F64, {c.B, c.H, c.S, c.Dv}, rand_values((size_t)(c.B * c.H * c.S * c.Dv), 61));
        auto f = [c](const std::vector<flx_tensor *> &x) { return grads_flat(c, x, false); };
        EXPECT_EQ(flxt::gradcheck(f, {in.q, in.k, in.v, g}, 1e-6, 1e-7, 1e-5), FLX_OK) << flx_last_error() << " " << name(c);
        EXPECT_TRUE(flxt::jvp_check(f, {in.q, in.k, in.v, g}, 1e-6, 1e-7, 1e-5)) << name(c);
        // and the same values as the composition's gradient
        EXPECT_TRUE(close(values(grads_flat(c, {in.q, in.k, in.v, g}, false)),
                          values(grads_flat(c, {in.q, in.k, in.v, g}, true)), 1e-12, 1e-10));
    }
}

// The VJP and JVP of the JVP node, in every argument (tangents included).
TEST_F(Attention, SecondOrderThroughTheJvp) {
    for (const Cfg &c : second_order_configs()) {
        Inputs in = inputs(ctx, FLX_F64, c, 700);
        Inputs t = inputs(ctx, FLX_F64, c, 710);
        auto f = [c](const std::vector<flx_tensor *> &x) { return jvp_of(c, x, false); };
        std::vector<flx_tensor *> all = {in.q, in.k, in.v, t.q, t.k, t.v};
        EXPECT_EQ(flxt::gradcheck(f, all, 1e-6, 1e-7, 1e-5), FLX_OK) << flx_last_error() << " " << name(c);
        EXPECT_TRUE(flxt::jvp_check(f, all, 1e-6, 1e-7, 1e-5)) << name(c);
        EXPECT_TRUE(close(values(jvp_of(c, all, false)), values(jvp_of(c, all, true)), 1e-12, 1e-10));
    }
}

struct HvpData {
    Cfg c;
    flx_tensor *w;
    bool compose;
};

// A scalar loss with a non-trivial Hessian: sum(w o + o^2 / 2).
flx_tensor *hvp_loss(int32_t, flx_tensor *const *in, void *user) {
    HvpData *d = (HvpData *)user;
    flx_tensor *o = d->compose ? composed(d->c, in[0], in[1], in[2])
                               : flx_attention(in[0], in[1], in[2], d->c.causal, d->c.scale);
    return flx_sum_all(flx_add(flx_mul(d->w, o), flx_mul_scalar(flx_square(o), 0.5)));
}

// H u by both modes equals the central difference of gradients (grad(x + e u) - grad(x - e u)) / 2e
// and the composition's H u.
TEST_F(Attention, HvpMatchesFiniteDifferencesOfGradients) {
    for (const Cfg &c : second_order_configs()) {
        Inputs in = inputs(ctx, FLX_F64, c, 800);
        Inputs u = inputs(ctx, FLX_F64, c, 810);
        HvpData d{c, make(ctx, FLX_F64, {c.B, c.H, c.S, c.Dv}, rand_values((size_t)(c.B * c.H * c.S * c.Dv), 82)), false};
        flx_tensor *X[3] = {in.q, in.k, in.v}, *U[3] = {u.q, u.k, u.v};
        // finite differences of the (fused) gradient
        const double eps = 1e-5;
        std::vector<std::vector<double>> fd(3);
        for (double sgn : {1.0, -1.0}) {
            std::vector<flx_tensor *> xs;
            const std::vector<double> *xv[3] = {&in.qv, &in.kv, &in.vv}, *uv[3] = {&u.qv, &u.kv, &u.vv};
            for (int i = 0; i < 3; i++) {
                std::vector<double> p(*xv[i]);
                for (size_t j = 0; j < p.size(); j++) p[j] += sgn * eps * (*uv[i])[j];
                xs.push_back(make(ctx, FLX_F64, flxt::shape_of(X[i]), p));
            }
            flxt::need_grad(xs);
            flx_tensor *L = hvp_loss(3, xs.data(), &d), *g[3];
            ASSERT_EQ(flx_grad_of(1, &L, nullptr, 3, xs.data(), false, g), FLX_OK) << flx_last_error();
            for (int i = 0; i < 3; i++) {
                std::vector<double> gv = values(g[i]);
                if (fd[i].empty()) fd[i].assign(gv.size(), 0.0);
                for (size_t j = 0; j < gv.size(); j++) fd[i][j] += sgn * gv[j] / (2 * eps);
            }
        }
        HvpData dc = d;
        dc.compose = true;
        flx_tensor *hc[3];
        ASSERT_EQ(flx_hvp(hvp_loss, &dc, 3, X, U, FLX_HVP_REVERSE_OVER_REVERSE, false, hc), FLX_OK) << flx_last_error();
        for (flx_hvp_mode mode : {FLX_HVP_FORWARD_OVER_REVERSE, FLX_HVP_REVERSE_OVER_REVERSE}) {
            flx_tensor *hv[3];
            ASSERT_EQ(flx_hvp(hvp_loss, &d, 3, X, U, mode, false, hv), FLX_OK) << flx_last_error();
            for (int i = 0; i < 3; i++) {
                EXPECT_TRUE(close(values(hv[i]), fd[i], 1e-7, 1e-6)) << name(c) << " mode " << mode << " input " << i;
                EXPECT_TRUE(close(values(hv[i]), values(hc[i]), 1e-12, 1e-10)) << name(c) << " mode " << mode << " input " << i;
            }
        }
    }
}

// A third derivative: gradcheck of the forward-over-reverse HVP (with create_graph).
TEST_F(Attention, ThirdOrderByGradcheckOfHvp) {
    Cfg c{1, 1, 3, 3, 2, 2, true, 0};
    Inputs in = inputs(ctx, FLX_F64, c, 900);
    Inputs u = inputs(ctx, FLX_F64, c, 910);
    static HvpData d;
    d = HvpData{c, make(ctx, FLX_F64, {1, 1, 3, 2}, rand_values(6, 92)), false};
    flx_tensor *U[3] = {u.q, u.k, u.v};
    auto f = [U](const std::vector<flx_tensor *> &x) -> flx_tensor * {
        flxt::GradOn on;
        flxt::need_grad(x);
        flx_tensor *hv[3];
        if (flx_hvp(hvp_loss, &d, 3, x.data(), U, FLX_HVP_FORWARD_OVER_REVERSE, true, hv) != FLX_OK) return nullptr;
        int64_t m1 = -1;
        flx_tensor *parts[3] = {flx_reshape(hv[0], 1, &m1), flx_reshape(hv[1], 1, &m1), flx_reshape(hv[2], 1, &m1)};
        return flx_concat(3, parts, 0);
    };
    EXPECT_EQ(flxt::gradcheck(f, {in.q, in.k, in.v}, 1e-5, 1e-6, 1e-5), FLX_OK) << flx_last_error();
}

// ---- plans: a compiled forward + backward replays with new data --------------------------------
TEST_F(Attention, PlanReplaysForwardAndBackward) {
    Cfg c{1, 2, 5, 5, 4, 3, true, 0};
    Inputs in = inputs(ctx, FLX_F64, c, 1000);
    flxt::need_grad({in.q, in.k, in.v});
    flx_tensor *X[3] = {in.q, in.k, in.v}, *g[3];
    flx_tensor *loss = flx_sum_all(flx_square(flx_attention(in.q, in.k, in.v, true, 0)));
    ASSERT_EQ(flx_grad_of(1, &loss, nullptr, 3, X, false, g), FLX_OK) << flx_last_error();
    flx_tensor *outs[4] = {loss, g[0], g[1], g[2]};
    flx_plan *plan = flx_plan_compile(4, outs, 3, X, nullptr);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    for (uint64_t seed : {1000u, 1100u}) {
        Inputs nx = inputs(ctx, FLX_F64, c, seed);
        const std::vector<double> *hv[3] = {&nx.qv, &nx.kv, &nx.vv};
        for (int i = 0; i < 3; i++)
            ASSERT_EQ(flx_plan_set_input_host(plan, i, hv[i]->data(), hv[i]->size() * sizeof(double)), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        std::vector<double> o = ref_attention(c, nx.qv, nx.kv, nx.vv);
        double want = 0;
        for (double x : o) want += x * x;
        EXPECT_NEAR(values(flx_plan_output(plan, 0))[0], want, 1e-12);
        flxt::need_grad({nx.q, nx.k, nx.v});
        flx_tensor *Y[3] = {nx.q, nx.k, nx.v}, *gn[3];
        flx_tensor *ln = flx_sum_all(flx_square(composed(c, nx.q, nx.k, nx.v)));
        ASSERT_EQ(flx_grad_of(1, &ln, nullptr, 3, Y, false, gn), FLX_OK) << flx_last_error();
        for (int i = 0; i < 3; i++)
            EXPECT_TRUE(close(values(flx_plan_output(plan, 1 + i)), values(gn[i]), 1e-12, 1e-10)) << "seed " << seed;
    }
    flx_plan_destroy(plan);
}

// ---- bad inputs -----------------------------------------------------------------------------------
TEST_F(Attention, BadInputs) {
    flx_tensor *q = make(ctx, FLX_F32, {1, 2, 3, 4}, rand_values(24, 1));
    flx_tensor *k = make(ctx, FLX_F32, {1, 2, 5, 4}, rand_values(40, 2));
    flx_tensor *v = make(ctx, FLX_F32, {1, 2, 5, 6}, rand_values(60, 3));
    ASSERT_NE(flx_attention(q, k, v, false, 0), nullptr) << flx_last_error();
    // NULL propagates (first error kept)
    EXPECT_TRUE(flxt::fails_with(flx_attention(nullptr, k, v, false, 0), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, nullptr, v, false, 0), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, k, nullptr, true, 0), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    // ranks
    flx_tensor *q3 = make(ctx, FLX_F32, {2, 3, 4}, rand_values(24, 1));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q3, k, v, false, 0), FLX_ERR_SHAPE, "(batch, heads, seq, dim)"));
    flx_tensor *k5 = make(ctx, FLX_F32, {1, 1, 2, 5, 4}, rand_values(40, 2));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, k5, v, false, 0), FLX_ERR_SHAPE, "(batch, heads, seq, dim)"));
    // sizes that do not fit
    flx_tensor *kD = make(ctx, FLX_F32, {1, 2, 5, 3}, rand_values(30, 2));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, kD, v, false, 0), FLX_ERR_SHAPE, "do not fit"));
    flx_tensor *vT = make(ctx, FLX_F32, {1, 2, 4, 6}, rand_values(48, 3));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, k, vT, false, 0), FLX_ERR_SHAPE, "do not fit"));
    flx_tensor *kH = make(ctx, FLX_F32, {1, 3, 5, 4}, rand_values(60, 2));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, kH, v, false, 0), FLX_ERR_SHAPE, "do not fit"));
    flx_tensor *vB = make(ctx, FLX_F32, {2, 2, 5, 6}, rand_values(120, 3));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, k, vB, false, 0), FLX_ERR_SHAPE, "do not fit"));
    // dtypes
    flx_tensor *k64 = make(ctx, FLX_F64, {1, 2, 5, 4}, rand_values(40, 2));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, k64, v, false, 0), FLX_ERR_DTYPE, "one dtype"));
    flx_tensor *qi = make(ctx, FLX_I32, {1, 2, 3, 4}, std::vector<double>(24, 1.0));
    EXPECT_TRUE(flxt::fails_with(flx_attention(qi, k, v, false, 0), FLX_ERR_DTYPE, "floating point"));
    // scale
    for (double s : {-1.0, (double)NAN, (double)INFINITY, -(double)INFINITY})
        EXPECT_TRUE(flxt::fails_with(flx_attention(q, k, v, false, s), FLX_ERR_INVALID_ARGUMENT, "scale"));
    // two contexts
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    flx_scope_begin();
    flx_tensor *ko = make(other, FLX_F32, {1, 2, 5, 4}, rand_values(40, 2));
    EXPECT_TRUE(flxt::fails_with(flx_attention(q, ko, v, false, 0), FLX_ERR_DEVICE, "context"));
    flx_scope_end(0, nullptr);
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK);
}

// ---- GPU against the CPU ------------------------------------------------------------------------
// Value, gradients (flx_grad_of) and JVP (flx_jvp) on both contexts from the same data. f32: the
// GPU accumulates in f32, the CPU in double, so the bound is relative to the largest reference
// entry. bf16: both round the stored output to bf16 (8 significant bits), the GPU's f32
// accumulation differs from the CPU's double, so the bound is 2^-7 relative plus rounding slack.
void gpu_matches_cpu(flx_ctx *gpu, flx_dtype dt, double rtol) {
    flx_ctx *cpu = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(cpu, nullptr);
    flx_scope_begin();
    const std::vector<Cfg> cs = {
        {2, 3, 17, 17, 64, 64, true, 0}, {1, 4, 130, 130, 64, 64, true, 0},
        {2, 2, 65, 200, 128, 128, true, 0}, {1, 2, 200, 65, 64, 64, true, 0}, // S > T: empty rows
        {1, 3, 33, 47, 40, 24, false, 0.3}, {1, 1, 1, 1, 64, 64, true, 0},
        {3, 2, 257, 257, 128, 128, false, 0},
    };
    for (const Cfg &c : cs) {
        std::vector<std::vector<double>> res[2];
        for (int side = 0; side < 2; side++) {
            flx_ctx *x = side ? gpu : cpu;
            Inputs in = inputs(x, dt, c, 1234);
            Inputs t = inputs(x, dt, c, 4321);
            flxt::need_grad({in.q, in.k, in.v});
            flx_tensor *X[3] = {in.q, in.k, in.v}, *T[3] = {t.q, t.k, t.v}, *g[3], *to = nullptr;
            flx_tensor *o = flx_attention(in.q, in.k, in.v, c.causal, c.scale);
            flx_tensor *w = make(x, dt, {c.B, c.H, c.S, c.Dv}, rand_values((size_t)(c.B * c.H * c.S * c.Dv), 77));
            ASSERT_EQ(flx_grad_of(1, &o, &w, 3, X, false, g), FLX_OK) << flx_last_error();
            ASSERT_EQ(flx_jvp(3, X, T, 1, &o, &to), FLX_OK) << flx_last_error();
            for (flx_tensor *r : {o, g[0], g[1], g[2], to}) res[side].push_back(values(r));
        }
        const char *what[5] = {"o", "dq", "dk", "dv", "jvp"};
        for (int r = 0; r < 5; r++) {
            double mx = 0;
            for (double x : res[0][(size_t)r]) mx = std::max(mx, std::fabs(x));
            EXPECT_TRUE(close(res[1][(size_t)r], res[0][(size_t)r], rtol * (mx + 1e-30), rtol))
                << name(c) << " " << what[r] << " " << flx_dtype_name(dt);
        }
    }
    flx_scope_end(0, nullptr);
    EXPECT_EQ(flx_ctx_destroy(cpu), FLX_OK);
}

using AttentionCuda = flxt::CudaCpuTest;

TEST_F(AttentionCuda, F32MatchesCpu) {
    gpu_matches_cpu(gpu, FLX_F32, 2e-5);
}

TEST_F(AttentionCuda, Bf16MatchesCpu) {
    gpu_matches_cpu(gpu, FLX_BF16, 1.0 / 64);
}

// The backward of attention on the GPU queues device work only: no host copies, no waits.
TEST_F(AttentionCuda, BackwardMakesNoHostCopiesOrSyncs) {
    flx_scope_begin();
    Cfg c{2, 4, 128, 128, 64, 64, true, 0};
    Inputs in = inputs(gpu, FLX_F32, c, 5);
    flxt::need_grad({in.q, in.k, in.v});
    flx_tensor *X[3] = {in.q, in.k, in.v}, *g[3];
    flx_eval(3, X);
    flx_ctx_synchronize(gpu);
    flx_ctx_reset_stats(gpu);
    flx_tensor *loss = flx_sum_all(flx_square(flx_attention(in.q, in.k, in.v, true, 0)));
    ASSERT_EQ(flx_grad_of(1, &loss, nullptr, 3, X, false, g), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_eval(3, g), FLX_OK) << flx_last_error();
    flx_ctx_stats st;
    ASSERT_EQ(flx_ctx_get_stats(gpu, &st), FLX_OK);
    EXPECT_EQ(st.d2h_copies, 0u);
    EXPECT_EQ(st.syncs, 0u);
    flx_scope_end(0, nullptr);
}

}  // namespace
