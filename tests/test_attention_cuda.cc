// test_attention_cuda.cc — the CUDA attention kernels (kernels/attention.cu, attention_tc.cu)
// against the CPU reference, at the shapes where the kernels change behaviour: the tensor-core
// path (bf16/f16, D == Dv in {64, 128}) at tile edges (63/64/65 rows, one key, one query),
// causal with S < T and S > T (rows that see no key), long sequences (many key tiles, heaviest
// tiles scheduled first), large scores (the running max moves between tiles); the generic path
// (f32, f64, and halves at other head dims or D != Dv) over head dims 1..256; gradients and
// tangents for a subset of the inputs (the kernels' NULL operands); empty sizes.
// Values, gradients (flx_grad_of) and the JVP (flx_jvp) of each case run on both contexts from the
// same inputs; every result is compared entrywise within rtol times the largest reference entry.
#include "testing.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace {

using flxt::close;
using flxt::rand_values;
using flxt::Shape;

struct Case {
    int64_t B, H, S, T, D, Dv;
    bool causal;
    double scale; // 0: 1/sqrt(D)
    double lo = -1, hi = 1; // input range
};

std::string name(const Case &c) {
    return "B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " S" + std::to_string(c.S) +
           " T" + std::to_string(c.T) + " D" + std::to_string(c.D) + " Dv" + std::to_string(c.Dv) +
           (c.causal ? " causal" : "") + " scale " + std::to_string(c.scale);
}

// Which derivatives a run takes: gradients for q and/or (k, v) (the others do not require grad,
// so the backward node is asked for no dq, or no dk and dv), tangents for any of q, k, v (the
// others NULL, i.e. zero).
enum { kGradQ = 1, kGradKV = 2, kTanQ = 4, kTanK = 8, kTanV = 16, kAll = 31 };

// Tensors through the host conversion (works for f16/bf16 too: rounded once on the way in).
// (Empty tensors: a one-element buffer, as the host functions take no NULL data.)
flx_tensor *mk(flx_ctx *x, flx_dtype dt, const Shape &sh, const std::vector<double> &v) {
    const double none = 0;
    return flx_from_host_as(x, dt, (int32_t)sh.size(), sh.data(), FLX_F64, v.empty() ? &none : v.data());
}
std::vector<double> get(flx_tensor *t) {
    if (!t) {
        ADD_FAILURE() << "NULL result: " << flx_last_error();
        return {};
    }
    std::vector<double> v((size_t)flx_numel(t));
    if (v.empty()) return v;
    flx_status st = flx_to_host_as(t, FLX_F64, v.data(), v.size() * sizeof(double));
    if (st != FLX_OK) ADD_FAILURE() << "flx_to_host_as: " << flx_last_error();
    return v;
}

// o, then dq, dk, dv (when asked), then the JVP (when a tangent is given).
std::vector<std::vector<double>> run(flx_ctx *x, flx_dtype dt, const Case &c, int what) {
    std::vector<std::vector<double>> res;
    const Shape qs{c.B, c.H, c.S, c.D}, ks{c.B, c.H, c.T, c.D}, vs{c.B, c.H, c.T, c.Dv}, os{c.B, c.H, c.S, c.Dv};
    auto n = [](const Shape &s) { return (size_t)(s[0] * s[1] * s[2] * s[3]); };
    const std::vector<double> qv = rand_values(n(qs), 11, c.lo, c.hi), kv = rand_values(n(ks), 12, c.lo, c.hi),
                              vv = rand_values(n(vs), 13, c.lo, c.hi), wv = rand_values(n(os), 14);
    flx_scope_begin();
    // reverse mode
    {
        flx_tensor *q = mk(x, dt, qs, qv), *k = mk(x, dt, ks, kv), *v = mk(x, dt, vs, vv);
        std::vector<flx_tensor *> X;
        if (what & kGradQ) X.push_back(q);
        if (what & kGradKV) X.insert(X.end(), {k, v});
        flxt::need_grad(X);
        flx_tensor *o = flx_attention(q, k, v, c.causal, c.scale);
        res.push_back(get(o));
        if (!X.empty()) {
            flx_tensor *w = mk(x, dt, os, wv), *g[3] = {nullptr, nullptr, nullptr};
            EXPECT_EQ(flx_grad_of(1, &o, &w, (int32_t)X.size(), X.data(), false, g), FLX_OK) << flx_last_error();
            for (size_t i = 0; i < X.size(); i++) res.push_back(get(g[i]));
        }
    }
    // forward mode
    if (what & (kTanQ | kTanK | kTanV)) {
        flx_tensor *q = mk(x, dt, qs, qv), *k = mk(x, dt, ks, kv), *v = mk(x, dt, vs, vv);
        flxt::need_grad({q, k, v});
        flx_tensor *X[3] = {q, k, v};
        flx_tensor *T[3] = {(what & kTanQ) ? mk(x, dt, qs, rand_values(n(qs), 21)) : nullptr,
                            (what & kTanK) ? mk(x, dt, ks, rand_values(n(ks), 22)) : nullptr,
                            (what & kTanV) ? mk(x, dt, vs, rand_values(n(vs), 23)) : nullptr};
        flx_tensor *o = flx_attention(q, k, v, c.causal, c.scale), *to = nullptr;
        EXPECT_EQ(flx_jvp(3, X, T, 1, &o, &to), FLX_OK) << flx_last_error();
        res.push_back(get(to));
    }
    flx_scope_end(0, nullptr);
    return res;
}

// The GPU against the CPU for each case; rtol is relative to the largest reference entry of each
// result (attention's outputs are averages: entrywise relative errors near zeros mean nothing).
void check(flx_ctx *gpu, flx_dtype dt, const std::vector<Case> &cases, double rtol, int what = kAll) {
    flx_ctx *cpu = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(cpu, nullptr);
    for (const Case &c : cases) {
        std::vector<std::vector<double>> want = run(cpu, dt, c, what), got = run(gpu, dt, c, what);
        ASSERT_EQ(want.size(), got.size()) << name(c);
        for (size_t r = 0; r < want.size(); r++) {
            double mx = 0;
            for (double v : want[r]) mx = std::max(mx, std::fabs(v));
            EXPECT_TRUE(close(got[r], want[r], rtol * mx + 1e-30, rtol))
                << name(c) << ", result " << r << " (o, grads, jvp), " << flx_dtype_name(dt) << ", what " << what;
        }
    }
    EXPECT_EQ(flx_ctx_destroy(cpu), FLX_OK);
}

// bf16: 8 significant bits, P and dS rounded to bf16 before their products (as FlashAttention),
// outputs rounded once on both sides: a few 2^-9 relative, so 2^-6 of the largest entry. f16: 11
// bits, 2^-8.
constexpr double kRtolBf16 = 1.0 / 64, kRtolF16 = 1.0 / 256;

using AttentionCudaKernels = flxt::CudaCpuTest;

TEST_F(AttentionCudaKernels, TensorCoreTileEdges) {
    std::vector<Case> cases;
    const int64_t st[][2] = {{63, 63}, {64, 64}, {65, 65}, {1, 129}, {129, 1}, {127, 200}, {200, 127}, {64, 192}, {130, 64}};
    for (int64_t D : {64, 128})
        for (const auto &s : st)
            for (bool causal : {false, true}) cases.push_back({1, 2, s[0], s[1], D, D, causal, 0});
    check(gpu, FLX_BF16, cases, kRtolBf16);
    check(gpu, FLX_F16, cases, kRtolF16);
}

TEST_F(AttentionCudaKernels, TensorCoreLongSequences) {
    std::vector<Case> cases;
    for (int64_t D : {64, 128}) {
        cases.push_back({1, 2, 1024, 1024, D, D, true, 0});
        cases.push_back({1, 1, 512, 2048, D, D, true, 0});  // S < T: the diagonal shifts right
        cases.push_back({1, 1, 2048, 512, D, D, true, 0});  // S > T: 1536 rows see no key
        cases.push_back({2, 1, 777, 1000, D, D, false, 0});
    }
    check(gpu, FLX_BF16, cases, kRtolBf16);
}

// Scores up to |s q.k| ~ 500: the running max jumps between key tiles, so the rescaling of the
// partial sums (and of the JVP's extra sums) is exercised; softmax rows are nearly one-hot.
TEST_F(AttentionCudaKernels, LargeScoresRescale) {
    std::vector<Case> cases;
    for (bool causal : {false, true}) {
        cases.push_back({1, 2, 300, 300, 64, 64, causal, 2.0, -2, 2});
        cases.push_back({1, 1, 200, 333, 128, 128, causal, 1.0, -2, 2});
    }
    check(gpu, FLX_BF16, cases, kRtolBf16);
    check(gpu, FLX_F32, cases, 1e-4);
}

// The generic path: every head dim, D != Dv, f32, f64 and halves outside {64, 128}.
TEST_F(AttentionCudaKernels, GenericHeadDims) {
    std::vector<Case> cases;
    const int64_t dims[][2] = {{1, 1}, {3, 5}, {33, 31}, {64, 128}, {100, 100}, {256, 256}};
    const int64_t st[][2] = {{1, 1}, {31, 33}, {70, 40}, {40, 70}};
    for (const auto &d : dims)
        for (const auto &s : st)
            for (bool causal : {false, true}) cases.push_back({2, 2, s[0], s[1], d[0], d[1], causal, 0.4});
    check(gpu, FLX_F32, cases, 2e-5);
    check(gpu, FLX_F64, cases, 1e-11);
    check(gpu, FLX_BF16, cases, kRtolBf16);
    // and the f32 / f64 path at the tensor-core head dims
    std::vector<Case> tc = {{1, 3, 129, 70, 64, 64, true, 0}, {1, 2, 65, 130, 128, 128, false, 0}};
    check(gpu, FLX_F32, tc, 2e-5);
    check(gpu, FLX_F64, tc, 1e-11);
}

// Gradients for q alone and for k, v alone (the backward kernels skip the other pass), tangents
// for one input at a time (the other tangents NULL).
TEST_F(AttentionCudaKernels, PartialDerivatives) {
    const std::vector<Case> cases = {{1, 2, 100, 150, 64, 64, true, 0}, {2, 1, 70, 70, 128, 128, false, 0}};
    const std::vector<Case> generic = {{1, 2, 100, 150, 48, 40, true, 0}};
    for (int what : std::vector<int>{kGradQ, kGradKV, kTanQ, kTanK, kTanV, kTanQ | kTanV}) {
        check(gpu, FLX_BF16, cases, kRtolBf16, what);
        check(gpu, FLX_F32, cases, 2e-5, what);
        check(gpu, FLX_F32, generic, 2e-5, what);
    }
}

// Empty sizes: no keys (outputs 0, dq 0), no queries (dk, dv 0), and rows that see no key.
TEST_F(AttentionCudaKernels, EmptyAndDeadRows) {
    const std::vector<Case> cases = {{1, 2, 5, 0, 64, 64, false, 0}, {1, 2, 0, 5, 64, 64, false, 0},
                                     {1, 2, 90, 20, 64, 64, true, 0}, {1, 1, 70, 3, 128, 128, true, 0},
                                     {1, 2, 9, 0, 7, 5, true, 0}};
    check(gpu, FLX_BF16, cases, kRtolBf16);
    check(gpu, FLX_F32, cases, 2e-5);
}

}  // namespace
