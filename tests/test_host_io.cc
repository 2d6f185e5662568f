// test_host_io.cc — dtype conversion on the way to and from the host (flx_to_host_as,
// flx_from_host_as) and the optimiser state in one file (flx_optim_save / flx_optim_load).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <unistd.h>
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

class HostIo : public CpuTest {};

::testing::AssertionResult fails(flx_status got, flx_status want, const char *needle) {
    if (got != want)
        return ::testing::AssertionFailure() << "status " << flx_status_string(got) << ", expected "
                                             << flx_status_string(want) << " (" << flx_last_error() << ")";
    if (!std::strstr(flx_last_error(), needle))
        return ::testing::AssertionFailure()
               << "message \"" << flx_last_error() << "\" does not mention \"" << needle << "\"";
    flx_clear_error();
    return ::testing::AssertionSuccess();
}

std::string temp_path(const char *tag) {
    return std::string(::testing::TempDir()) + "flx_host_io_" + tag + "_" +
           std::to_string(static_cast<long>(getpid())) + ".safetensors";
}

TEST_F(HostIo, ToHostAsConvertsWithCastRules) {
    // f64 -> i32: truncation toward zero, saturation, NaN -> 0 (flx_cast's rules, written out).
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::vector<double> v = {2.9, -2.9, 1e12, -1e12, nan, 0.0};
    flx_tensor *t = make(ctx, FLX_F64, {6}, v);
    std::vector<int32_t> got(6, 7);
    ASSERT_EQ(flx_to_host_as(t, FLX_I32, got.data(), got.size() * sizeof(int32_t)), FLX_OK)
        << flx_last_error();
    EXPECT_EQ(got, (std::vector<int32_t>{2, -2, 2147483647, -2147483647 - 1, 0, 0}));
    // f64 -> f32 rounds to nearest; -> bool is x != 0 (NaN != 0).
    std::vector<float> f(6);
    ASSERT_EQ(flx_to_host_as(t, FLX_F32, f.data(), f.size() * sizeof(float)), FLX_OK);
    EXPECT_EQ(f[0], 2.9f);
    EXPECT_EQ(f[2], 1e12f);
    EXPECT_TRUE(std::isnan(f[4]));
    std::vector<uint8_t> b(6);
    ASSERT_EQ(flx_to_host_as(t, FLX_BOOL, b.data(), b.size()), FLX_OK);
    EXPECT_EQ(b, (std::vector<uint8_t>{1, 1, 1, 1, 1, 0}));
    // A lazy f32 result read as f64: every f32 is exactly a double.
    flx_tensor *y = flx_mul_scalar(make(ctx, FLX_F32, {3}, {0.1, 0.2, 0.3}), 3.0);
    std::vector<double> d(3);
    ASSERT_EQ(flx_to_host_as(y, FLX_F64, d.data(), d.size() * sizeof(double)), FLX_OK);
    for (int i = 0; i < 3; i++) EXPECT_EQ(d[i], static_cast<double>(3.0f * static_cast<float>(0.1 * (i + 1))));
    // Large i64 values survive i64 -> i64 exactly (same dtype: a plain copy).
    const int64_t big = (int64_t(1) << 53) + 1, s1[1] = {1};
    flx_tensor *bi = flx_from_host(ctx, FLX_I64, 1, s1, &big);
    int64_t back = 0;
    ASSERT_EQ(flx_to_host_as(bi, FLX_I64, &back, sizeof back), FLX_OK);
    EXPECT_EQ(back, big);
    // i64 -> i32 in the integer path (no detour through double).
    int32_t small = 0;
    flx_tensor *three = flx_from_host(ctx, FLX_I64, 1, s1, std::vector<int64_t>{3}.data());
    ASSERT_EQ(flx_to_host_as(three, FLX_I32, &small, sizeof small), FLX_OK);
    EXPECT_EQ(small, 3);
}

TEST_F(HostIo, FromHostAsConvertsWithCastRules) {
    const int64_t s[1] = {4};
    const int32_t iv[4] = {1, -2, 3, 2000000000};
    flx_tensor *t = flx_from_host_as(ctx, FLX_F32, 1, s, FLX_I32, iv);
    ASSERT_NE(t, nullptr) << flx_last_error();
    EXPECT_EQ(flx_dtype_of(t), FLX_F32);
    std::vector<float> f(4);
    ASSERT_EQ(flx_to_host(t, f.data(), f.size() * sizeof(float)), FLX_OK);
    EXPECT_EQ(f, (std::vector<float>{1.f, -2.f, 3.f, 2e9f}));
    // The result is a leaf made from data: it can require grad and be a plan input.
    EXPECT_EQ(flx_set_requires_grad(t, true), FLX_OK) << flx_last_error();
    const double dv[4] = {-0.5, 0.0, 7.9, -1e300};
    flx_tensor *i = flx_from_host_as(ctx, FLX_I64, 1, s, FLX_F64, dv);
    ASSERT_NE(i, nullptr) << flx_last_error();
    std::vector<int64_t> iv2(4);
    ASSERT_EQ(flx_to_host(i, iv2.data(), iv2.size() * sizeof(int64_t)), FLX_OK);
    EXPECT_EQ(iv2, (std::vector<int64_t>{0, 0, 7, std::numeric_limits<int64_t>::min()}));
    // Same dtype: flx_from_host. 0-d and empty shapes work.
    flx_tensor *z = flx_from_host_as(ctx, FLX_F64, 0, nullptr, FLX_I32, iv);
    double zv = 0;
    ASSERT_EQ(flx_item(z, &zv), FLX_OK);
    EXPECT_EQ(zv, 1.0);
    const int64_t e[1] = {0};
    EXPECT_NE(flx_from_host_as(ctx, FLX_F32, 1, e, FLX_I64, nullptr), nullptr) << flx_last_error();
}

TEST_F(HostIo, ConversionsRejectBadInput) {
    flx_tensor *t = make(ctx, FLX_F32, {2}, {1, 2});
    double d[2];
    EXPECT_TRUE(fails(flx_to_host_as(nullptr, FLX_F64, d, sizeof d), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(fails(flx_to_host_as(t, FLX_F64, nullptr, sizeof d), FLX_ERR_INVALID_ARGUMENT, "dst is NULL"));
    EXPECT_TRUE(fails(flx_to_host_as(t, FLX_F64, d, sizeof d - 1), FLX_ERR_INVALID_ARGUMENT, "needs 16"));
    EXPECT_TRUE(fails(flx_to_host_as(t, static_cast<flx_dtype>(99), d, sizeof d), FLX_ERR_DTYPE,
                      "unsupported"));
    const int64_t s[1] = {2};
    const int32_t iv[2] = {1, 2};
    EXPECT_TRUE(fails_with(flx_from_host_as(nullptr, FLX_F32, 1, s, FLX_I32, iv),
                           FLX_ERR_INVALID_ARGUMENT, "ctx is NULL"));
    EXPECT_TRUE(fails_with(flx_from_host_as(ctx, FLX_F32, 1, s, FLX_I32, nullptr),
                           FLX_ERR_INVALID_ARGUMENT, "data is NULL"));
    EXPECT_TRUE(fails_with(flx_from_host_as(ctx, FLX_F32, 1, s, FLX_DTYPE_COUNT, iv), FLX_ERR_DTYPE,
                           "invalid"));
    EXPECT_TRUE(fails_with(flx_from_host_as(ctx, FLX_DTYPE_COUNT, 1, s, FLX_I32, iv), FLX_ERR_DTYPE,
                           "invalid"));
    EXPECT_TRUE(fails_with(flx_from_host_as(ctx, FLX_F32, -1, s, FLX_I32, iv), FLX_ERR_SHAPE, "bad shape"));
}

// ---- optimiser state in one file ----------------------------------------------------------------
struct Model {
    flx_tensor *w, *b;
};

Model make_model(flx_ctx *ctx, uint64_t seed) {
    Model m{rand_tensor(ctx, FLX_F64, {3, 2}, seed), rand_tensor(ctx, FLX_F64, {2}, seed + 1)};
    EXPECT_EQ(flx_set_requires_grad(m.w, true), FLX_OK);
    EXPECT_EQ(flx_set_requires_grad(m.b, true), FLX_OK);
    return m;
}

void train_step(flx_ctx *ctx, Model &m, flx_optim *opt, int s) {
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *x = rand_tensor(ctx, FLX_F64, {4, 3}, 100 + s);
    flx_tensor *loss = flx_mean_all(flx_square(flx_tanh(flx_add(flx_matmul(x, m.w), m.b))));
    ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_optim_step(opt), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_optim_zero_grad(opt), FLX_OK);
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
}

TEST_F(HostIo, OptimiserSaveLoadResumesExactly) {
    for (flx_optim_kind kind : {FLX_OPTIM_ADAM, FLX_OPTIM_RMSPROP, FLX_OPTIM_MOMENTUM}) {
        const std::string path = temp_path("resume");
        // Reference: 5 uninterrupted steps.
        Model a = make_model(ctx, 1);
        flx_optim *oa = flx_optim_create(ctx, kind, 2, &a.w, nullptr);
        ASSERT_NE(oa, nullptr) << flx_last_error();
        ASSERT_EQ(flx_optim_set_lr(oa, 0.03), FLX_OK);
        for (int s = 0; s < 3; s++) train_step(ctx, a, oa, s);
        // Save after 3 steps: parameters (safetensors) and optimiser state (one call).
        ASSERT_EQ(flx_optim_save(oa, path.c_str()), FLX_OK) << flx_last_error();
        std::vector<double> w3 = values(a.w), b3 = values(a.b);
        for (int s = 3; s < 5; s++) train_step(ctx, a, oa, s);
        // Resume: a fresh model with the saved parameters and a fresh optimiser (default lr).
        Model r = make_model(ctx, 50);
        ASSERT_EQ(flx_assign(r.w, make(ctx, FLX_F64, {3, 2}, w3)), FLX_OK);
        ASSERT_EQ(flx_assign(r.b, make(ctx, FLX_F64, {2}, b3)), FLX_OK);
        flx_optim *orr = flx_optim_create(ctx, kind, 2, &r.w, nullptr);
        ASSERT_NE(orr, nullptr);
        ASSERT_EQ(flx_optim_load(orr, path.c_str()), FLX_OK) << flx_last_error();
        double lr = 0, step = 0;
        ASSERT_EQ(flx_optim_get_hparam(orr, FLX_HP_LR, &lr), FLX_OK);
        ASSERT_EQ(flx_optim_get_hparam(orr, FLX_HP_STEP, &step), FLX_OK);
        EXPECT_EQ(lr, 0.03);
        EXPECT_EQ(step, 3.0);
        for (int s = 3; s < 5; s++) train_step(ctx, r, orr, s);
        // Bit-identical to the uninterrupted run.
        EXPECT_EQ(values(r.w), values(a.w)) << "kind " << kind;
        EXPECT_EQ(values(r.b), values(a.b)) << "kind " << kind;
        for (int32_t i = 0; i < 2; i++)
            for (int32_t sl = 0; sl < flx_optim_state_count(oa); sl++)
                EXPECT_EQ(values(flx_optim_get_state(orr, i, sl)), values(flx_optim_get_state(oa, i, sl)));
        flx_optim_destroy(oa);
        flx_optim_destroy(orr);
        std::remove(path.c_str());
    }
}

TEST_F(HostIo, OptimiserLoadRejectsMismatchesAndLeavesStateUnchanged) {
    const std::string path = temp_path("bad");
    Model a = make_model(ctx, 1);
    flx_optim *adam = flx_optim_create(ctx, FLX_OPTIM_ADAM, 2, &a.w, nullptr);
    ASSERT_NE(adam, nullptr);
    train_step(ctx, a, adam, 0);
    ASSERT_EQ(flx_optim_save(adam, path.c_str()), FLX_OK) << flx_last_error();

    EXPECT_TRUE(fails(flx_optim_save(nullptr, path.c_str()), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(fails(flx_optim_save(adam, nullptr), FLX_ERR_INVALID_ARGUMENT, "path is NULL"));
    EXPECT_TRUE(fails(flx_optim_load(nullptr, path.c_str()), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(fails(flx_optim_load(adam, nullptr), FLX_ERR_INVALID_ARGUMENT, "path is NULL"));
    EXPECT_TRUE(fails(flx_optim_load(adam, "/nonexistent/dir/x.safetensors"),
                      FLX_ERR_INVALID_ARGUMENT, "/nonexistent/dir/x.safetensors"));

    // Another kind.
    Model m2 = make_model(ctx, 7);
    flx_optim *rms = flx_optim_create(ctx, FLX_OPTIM_RMSPROP, 2, &m2.w, nullptr);
    ASSERT_NE(rms, nullptr);
    EXPECT_TRUE(fails(flx_optim_load(rms, path.c_str()), FLX_ERR_STATE, "adam optimiser state, not rmsprop"));
    // Another parameter count.
    flx_optim *one = flx_optim_create(ctx, FLX_OPTIM_ADAM, 1, &m2.w, nullptr);
    ASSERT_NE(one, nullptr);
    EXPECT_TRUE(fails(flx_optim_load(one, path.c_str()), FLX_ERR_SHAPE, "state for 2 parameters"));
    // Other shapes: parameters swapped. The optimiser's state is untouched by the failed load.
    train_step(ctx, m2, rms, 0);
    flx_tensor *swapped[2] = {m2.b, m2.w};
    flx_optim *sw = flx_optim_create(ctx, FLX_OPTIM_ADAM, 2, swapped, nullptr);
    ASSERT_NE(sw, nullptr);
    ASSERT_EQ(flx_optim_set_lr(sw, 0.5), FLX_OK);
    EXPECT_TRUE(fails(flx_optim_load(sw, path.c_str()), FLX_ERR_SHAPE, "state.0.0"));
    double lr = 0;
    ASSERT_EQ(flx_optim_get_hparam(sw, FLX_HP_LR, &lr), FLX_OK);
    EXPECT_EQ(lr, 0.5) << "a failed load changed the hyperparameters";
    // A plain safetensors file that is not optimiser state.
    const std::string plain = temp_path("plain");
    const char *name = "w";
    ASSERT_EQ(flx_save_safetensors(plain.c_str(), 1, &name, &a.w, 0, nullptr, nullptr), FLX_OK);
    EXPECT_TRUE(fails(flx_optim_load(adam, plain.c_str()), FLX_ERR_STATE, "no optimiser state"));
    // SGD with momentum state into SGD without momentum.
    flx_optim *mom = flx_optim_create(ctx, FLX_OPTIM_MOMENTUM, 2, &m2.w, nullptr);
    ASSERT_NE(mom, nullptr);
    const std::string mpath = temp_path("mom");
    ASSERT_EQ(flx_optim_save(mom, mpath.c_str()), FLX_OK);
    flx_optim *sgd = flx_optim_create(ctx, FLX_OPTIM_SGD, 2, &m2.w, nullptr);
    ASSERT_NE(sgd, nullptr);
    EXPECT_TRUE(fails(flx_optim_load(sgd, mpath.c_str()), FLX_ERR_STATE, "momentum"));
    for (flx_optim *o : {adam, rms, one, sw, mom, sgd}) flx_optim_destroy(o);
    std::remove(path.c_str());
    std::remove(plain.c_str());
    std::remove(mpath.c_str());
}

}  // namespace
