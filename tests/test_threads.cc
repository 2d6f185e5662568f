// test_threads.cc — thread-safety rules of fluxion.h: distinct contexts may be used
// from distinct threads at once, and each gets exactly (bit for bit) the result it gets alone;
// error state, scopes and no-grad mode are per thread.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "testing.h"

namespace {

constexpr int kPoints = 96, kIn = 2, kHidden = 12, kClasses = 3;

// Deterministic data (splitmix64), made on the calling thread.
std::vector<double> det_values(size_t n, uint64_t seed, double lo, double hi) {
    std::vector<double> v(n);
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        v[i] = lo + (hi - lo) * (double)(z >> 11) / 9007199254740992.0;
    }
    return v;
}

struct TrainRun {
    bool ok = false;
    std::string error;
    std::vector<double> losses;    // per step
    std::vector<double> params;    // final w1, b1, w2, b2 (as doubles, exact for f32 and f64)
};

flx_tensor *from(flx_ctx *ctx, flx_dtype dt, std::vector<int64_t> shape, const std::vector<double> &v) {
    if (dt == FLX_F64) return flx_from_host(ctx, dt, (int32_t)shape.size(), shape.data(), v.data());
    std::vector<float> f(v.begin(), v.end());
    return flx_from_host(ctx, dt, (int32_t)shape.size(), shape.data(), f.data());
}

bool append_values(flx_tensor *t, flx_dtype dt, std::vector<double> *out) {
    int64_t n = flx_numel(t);
    if (n < 0) return false;
    if (dt == FLX_F64) {
        std::vector<double> v((size_t)n);
        if (flx_to_host(t, v.data(), v.size() * sizeof(double)) != FLX_OK) return false;
        out->insert(out->end(), v.begin(), v.end());
    } else {
        std::vector<float> v((size_t)n);
        if (flx_to_host(t, v.data(), v.size() * sizeof(float)) != FLX_OK) return false;
        out->insert(out->end(), v.begin(), v.end());
    }
    return true;
}

// Trains a 2-12-3 tanh MLP with softmax cross entropy by SGD on its own CPU context. Uses only
// the C API (no gtest macros), so it may run on any thread.
TrainRun train(flx_dtype dt, int steps, double lr) {
    TrainRun r;
    flx_ctx *ctx = flx_ctx_create(flx_device_cpu());
    if (!ctx) {
        r.error = flx_last_error();
        return r;
    }
    std::vector<double> xs = det_values(kPoints * kIn, 11, -1, 1), onehot;
    for (int i = 0; i < kPoints; i++) {
        int c = (int)((std::atan2(xs[2 * i + 1], xs[2 * i]) + M_PI) / (2 * M_PI / kClasses));
        if (c >= kClasses) c = kClasses - 1;
        for (int k = 0; k < kClasses; k++) onehot.push_back(k == c ? 1.0 : 0.0);
    }
    bool ok = flx_scope_begin() == FLX_OK;
    flx_tensor *x = from(ctx, dt, {kPoints, kIn}, xs);
    flx_tensor *y = from(ctx, dt, {kPoints, kClasses}, onehot);
    flx_tensor *p[4] = {from(ctx, dt, {kIn, kHidden}, det_values(kIn * kHidden, 1, -1.5, 1.5)),
                        from(ctx, dt, {kHidden}, std::vector<double>(kHidden, 0.0)),
                        from(ctx, dt, {kHidden, kClasses}, det_values(kHidden * kClasses, 2, -.5, .5)),
                        from(ctx, dt, {kClasses}, std::vector<double>(kClasses, 0.0))};
    ok = ok && x && y && p[0] && p[1] && p[2] && p[3];
    for (flx_tensor *t : p) ok = ok && flx_set_requires_grad(t, true) == FLX_OK;
    const int32_t ax[1] = {1};
    for (int step = 0; ok && step < steps; step++) {
        ok = flx_scope_begin() == FLX_OK;
        flx_tensor *h = flx_tanh(flx_add(flx_matmul(x, p[0]), p[1]));
        flx_tensor *logits = flx_add(flx_matmul(h, p[2]), p[3]);
        flx_tensor *loss = flx_mean_all(flx_sub(flx_logsumexp(logits, 1, ax, false),
                                                flx_sum(flx_mul(y, logits), 1, ax, false)));
        double l = NAN;
        ok = ok && loss && flx_backward(loss) == FLX_OK && flx_item(loss, &l) == FLX_OK;
        for (flx_tensor *t : p) {
            flx_tensor *g = ok ? flx_grad(t) : nullptr;
            ok = ok && g && flx_assign(t, flx_sub(t, flx_mul_scalar(g, lr))) == FLX_OK &&
                 flx_zero_grad(t) == FLX_OK;
        }
        r.losses.push_back(l);
        if (flx_scope_end(0, nullptr) != FLX_OK) ok = false;
    }
    for (flx_tensor *t : p) ok = ok && append_values(t, dt, &r.params);
    if (!ok) r.error = flx_last_error();
    if (flx_scope_end(0, nullptr) != FLX_OK) ok = false;
    if (flx_ctx_destroy(ctx) != FLX_OK) {
        ok = false;
        r.error += std::string(" / flx_ctx_destroy: ") + flx_last_error();
    }
    r.ok = ok;
    return r;
}

bool bit_identical(const std::vector<double> &a, const std::vector<double> &b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

TEST(Threads, TwoContextsTrainAtOnceAndMatchTheSingleThreadedRunBitForBit) {
    const int steps = 300;
    const int64_t live_before = flx_live_tensors();
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        SCOPED_TRACE(flx_dtype_name(dt));
        TrainRun alone = train(dt, steps, 0.5);
        ASSERT_TRUE(alone.ok) << alone.error;
        ASSERT_EQ(alone.losses.size(), (size_t)steps);
        // The model does learn (so equality below is not equality of two broken runs).
        EXPECT_LT(alone.losses.back(), alone.losses.front() / 3)
            << alone.losses.front() << " -> " << alone.losses.back();
        TrainRun a, b;
        std::thread ta([&] { a = train(dt, steps, 0.5); });
        std::thread tb([&] { b = train(dt, steps, 0.5); });
        ta.join();
        tb.join();
        ASSERT_TRUE(a.ok) << a.error;
        ASSERT_TRUE(b.ok) << b.error;
        EXPECT_TRUE(bit_identical(a.losses, alone.losses));
        EXPECT_TRUE(bit_identical(b.losses, alone.losses));
        EXPECT_TRUE(bit_identical(a.params, alone.params));
        EXPECT_TRUE(bit_identical(b.params, alone.params));
    }
    EXPECT_EQ(flx_live_tensors(), live_before);
}

TEST(Threads, FourThreadsMixedDtypesEachMatchItsOwnReference) {
    const int steps = 120;
    TrainRun ref64 = train(FLX_F64, steps, 0.3), ref32 = train(FLX_F32, steps, 0.3);
    ASSERT_TRUE(ref64.ok && ref32.ok) << ref64.error << ref32.error;
    TrainRun r[4];
    std::vector<std::thread> ts;
    for (int i = 0; i < 4; i++)
        ts.emplace_back([&r, i, steps] { r[i] = train(i % 2 ? FLX_F32 : FLX_F64, steps, 0.3); });
    for (auto &t : ts) t.join();
    for (int i = 0; i < 4; i++) {
        SCOPED_TRACE(i);
        ASSERT_TRUE(r[i].ok) << r[i].error;
        const TrainRun &ref = i % 2 ? ref32 : ref64;
        EXPECT_TRUE(bit_identical(r[i].losses, ref.losses));
        EXPECT_TRUE(bit_identical(r[i].params, ref.params));
    }
}

TEST(Threads, ErrorStateScopesAndNoGradArePerThread) {
    flx_clear_error();
    flx_no_grad_begin();  // this thread only
    ASSERT_FALSE(flx_grad_enabled());
    flx_status other_status = FLX_OK;
    bool other_grad_enabled = false;
    std::string other_msg;
    flx_status scope_end_other = FLX_OK;
    std::thread t([&] {
        other_grad_enabled = flx_grad_enabled();
        // Unbalanced scope end on a thread without scopes fails there...
        scope_end_other = flx_scope_end(0, nullptr);
        // ...and a bad call sets that thread's error only.
        EXPECT_EQ(flx_add(nullptr, nullptr), nullptr);
        other_status = flx_last_status();
        other_msg = flx_last_error();
    });
    t.join();
    flx_no_grad_end();
    EXPECT_TRUE(other_grad_enabled);
    EXPECT_NE(scope_end_other, FLX_OK);
    EXPECT_NE(other_status, FLX_OK);
    EXPECT_FALSE(other_msg.empty());
    EXPECT_EQ(flx_last_status(), FLX_OK) << flx_last_error();
    EXPECT_STREQ(flx_last_error(), "");
    EXPECT_TRUE(flx_grad_enabled());
}

}  // namespace
