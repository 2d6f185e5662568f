// test_hostile.cc — hostile input and misuse: handles used wrongly (each case must be a clear
// FLX_ERR_STATE, never heap corruption: this file runs clean under ASan + UBSan), NaN that must
// stay visible, data-dependent graphs that must stay right for every plan input, status codes
// that fit the cause, and mixed-dtype arithmetic.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "testing.h"

using flxt::close;
using flxt::CpuTest;
using flxt::make;
using flxt::values;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// A CPU context without the fixture's scope (ownership at the outermost level: caller owns).
struct BareCtx {
    flx_ctx *ctx = nullptr;
    int64_t live_before = 0;
    BareCtx() {
        flx_clear_error();
        live_before = flx_live_tensors();
        ctx = flx_ctx_create(flx_device_cpu());
    }
    ~BareCtx() {
        EXPECT_EQ(flx_live_tensors(), live_before) << "tensors leaked";
        if (ctx) EXPECT_EQ(flx_ctx_destroy(ctx), FLX_OK) << flx_last_error();
    }
};

flx_tensor *host_vec(flx_ctx *ctx, const std::vector<double> &v) {
    int64_t n = (int64_t)v.size();
    return flx_from_host(ctx, FLX_F64, 1, &n, v.data());
}

bool message_has(const char *needle) { return std::strstr(flx_last_error(), needle) != nullptr; }

}  // namespace

// ---- handle misuse ---------------------------------------------------------------------------

TEST(HostileHandles, ReleasingAScopeOwnedTensorIsRefused) {
    BareCtx b;
    ASSERT_NE(b.ctx, nullptr);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *x = host_vec(b.ctx, {1, 2, 3});
    flx_tensor *y = flx_exp(x);
    ASSERT_NE(y, nullptr);
    // What a unique_ptr around a scope-owned tensor does: the scope must still own it.
    flx_clear_error();
    flx_release(y);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    EXPECT_TRUE(message_has("owned by an open scope")) << flx_last_error();
    // The tensor is intact and usable.
    EXPECT_TRUE(close(values(y), {std::exp(1.0), std::exp(2.0), std::exp(3.0)}));
    // A reference of the caller's own can be dropped.
    flx_tensor *mine = flx_retain(y);
    flx_clear_error();
    flx_release(mine);
    EXPECT_EQ(flx_last_status(), FLX_OK);
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
}

TEST(HostileHandles, ReleaseAfterTheScopeEndedIsReported) {
    BareCtx b;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *x = host_vec(b.ctx, {1, 2});
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);  // x is destroyed here
    flx_clear_error();
    flx_release(x);  // e.g. a unique_ptr that outlives the scope
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    EXPECT_TRUE(message_has("no longer exists")) << flx_last_error();
}

// Destroyed nodes are recycled for new tensors, but only after they have passed through the
// whole quarantine: a handle released a few thousand tensors ago is still reported, and a
// recycled node starts clean (no gradient, inputs or data of its former life).
TEST(HostileHandles, RecycledNodesKeepTheQuarantineAndStartClean) {
    BareCtx b;
    flx_tensor *w = host_vec(b.ctx, {1, 2});
    ASSERT_EQ(flx_set_requires_grad(w, true), FLX_OK);
    for (int i = 0; i < 12000; i++) {  // more than the quarantine and the spare list together
        flx_tensor *y = flx_mul(w, w);
        ASSERT_NE(y, nullptr) << flx_last_error();
        flx_release(y);
    }
    flx_tensor *x = host_vec(b.ctx, {1, 2});
    flx_release(x);
    for (int i = 0; i < 3000; i++) {
        flx_tensor *c = host_vec(b.ctx, {3, 4});
        ASSERT_NE(c, nullptr) << flx_last_error();
        ASSERT_NE(c, x) << "a quarantined node was handed out again after " << i << " tensors";
        EXPECT_FALSE(flx_requires_grad(c));
        EXPECT_EQ(flx_grad(c), nullptr);
        EXPECT_EQ(flx_ndim(c), 1);
        flx_release(c);
    }
    flx_clear_error();
    flx_release(x);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    EXPECT_TRUE(message_has("no longer exists")) << flx_last_error();
    flx_clear_error();
    flx_release(w);
}

TEST(HostileHandles, DoubleReleaseIsReported) {
    BareCtx b;
    flx_tensor *x = host_vec(b.ctx, {1, 2});
    ASSERT_NE(x, nullptr);
    flx_release(x);
    flx_clear_error();
    flx_release(x);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
}

TEST(HostileHandles, DoubleReleaseOfAGraphNodeIsReported) {
    BareCtx b;
    flx_tensor *x = host_vec(b.ctx, {1, 2});
    flx_tensor *y = flx_exp(x);
    flx_release(x);  // y still reads x: x lives on as a node, without a handle
    flx_clear_error();
    flx_release(x);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    EXPECT_TRUE(message_has("no reference left")) << flx_last_error();
    EXPECT_TRUE(close(values(y), {std::exp(1.0), std::exp(2.0)}));
    flx_release(y);
}

TEST(HostileHandles, UseAfterReleaseIsReported) {
    BareCtx b;
    flx_tensor *x = host_vec(b.ctx, {1, 2});
    flx_release(x);
    flx_clear_error();
    EXPECT_EQ(flx_add(x, x), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    double buf[2];
    flx_clear_error();
    EXPECT_EQ(flx_to_host(x, buf, sizeof buf), FLX_ERR_STATE);
    flx_clear_error();
    EXPECT_EQ(flx_ndim(x), -1);
    EXPECT_EQ(flx_numel(x), -1);
    EXPECT_EQ(flx_shape(x), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    EXPECT_EQ(flx_retain(x), nullptr);
    EXPECT_EQ(flx_backward(x), FLX_ERR_STATE);
    EXPECT_EQ(flx_set_requires_grad(x, true), FLX_ERR_STATE);
    EXPECT_EQ(flx_eval(1, &x), FLX_ERR_STATE);
    flx_clear_error();
    EXPECT_EQ(flx_optim_create(b.ctx, FLX_OPTIM_SGD, 1, &x, nullptr), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    void *ptr = nullptr;
    EXPECT_EQ(flx_data_ptr(x, &ptr), FLX_ERR_STATE);
    const char *name = "x";
    EXPECT_EQ(flx_save_safetensors("/nonexistent/never_written.safetensors", 1, &name, &x, 0,
                                   nullptr, nullptr),
              FLX_ERR_STATE);
}

TEST(HostileHandles, ForeignMemoryIsNotAHandle) {
    BareCtx b;
    alignas(64) static unsigned char junk[4096];  // zeros: no valid magic
    flx_tensor *fake = reinterpret_cast<flx_tensor *>(junk);
    flx_clear_error();
    EXPECT_EQ(flx_exp(fake), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    EXPECT_TRUE(message_has("not a fluxion tensor handle")) << flx_last_error();
    flx_clear_error();
    flx_release(fake);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
}

TEST(HostileHandles, TensorsOfAnotherContextAreRejected) {
    BareCtx b;
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    flx_tensor *x = host_vec(b.ctx, {1, 2});
    flx_tensor *y = host_vec(other, {3, 4});
    flx_clear_error();
    EXPECT_EQ(flx_add(x, y), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DEVICE);
    EXPECT_EQ(flx_assign(x, y), FLX_ERR_DEVICE);
    // A context with live tensors refuses to go away (its tensors would dangle).
    EXPECT_EQ(flx_ctx_destroy(other), FLX_ERR_STATE);
    flx_release(x);
    flx_release(y);
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK);
}

TEST(HostileHandles, KeptTensorMovesOwnershipAndStaysReleasable) {
    BareCtx b;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *x = host_vec(b.ctx, {5});
    ASSERT_EQ(flx_scope_end(1, &x), FLX_OK);  // now owned by the outer scope
    flx_clear_error();
    flx_release(x);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);  // still scope-owned
    ASSERT_EQ(flx_scope_end(1, &x), FLX_OK);      // now the caller's
    flx_clear_error();
    flx_release(x);
    EXPECT_EQ(flx_last_status(), FLX_OK);
}

TEST(HostileShapes, HugeShapeIsRejectedWithoutOverflow) {
    BareCtx b;
    const int64_t big = (int64_t)1 << 62;
    int64_t shape[2] = {big, big};
    flx_clear_error();
    EXPECT_EQ(flx_zeros(b.ctx, FLX_F32, 2, shape), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_SHAPE);
    double one = 1;
    flx_clear_error();
    EXPECT_EQ(flx_from_host(b.ctx, FLX_F64, 2, shape, &one), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_SHAPE);
    // An empty axis makes the product 0 even next to huge ones.
    int64_t empty[3] = {big, 0, big};
    flx_tensor *e = flx_zeros(b.ctx, FLX_F32, 3, empty);
    // Accepted or rejected, never UB; if accepted it has no elements.
    if (e) {
        EXPECT_EQ(flx_numel(e), 0);
        flx_release(e);
    }
}

// ---- clear errors -----------------------------------------------------------------------------

TEST_F(CpuTest, HostileStatusAssignDtypeMismatchIsDtype) {
    flx_tensor *d = make(ctx, FLX_F64, {2}, {1, 2});
    flx_tensor *s = make(ctx, FLX_F32, {2}, {1, 2});
    EXPECT_EQ(flx_assign(d, s), FLX_ERR_DTYPE) << flx_last_error();
    flx_tensor *s3 = make(ctx, FLX_F64, {3}, {1, 2, 3});
    EXPECT_EQ(flx_assign(d, s3), FLX_ERR_SHAPE) << flx_last_error();
}

TEST_F(CpuTest, HostileStatusJvpTangentDtypeIsDtype) {
    flx_tensor *x = make(ctx, FLX_F64, {2}, {1, 2});
    flx_tensor *y = flx_exp(x);
    flx_tensor *t = make(ctx, FLX_F32, {2}, {1, 1});
    flx_tensor *out = nullptr;
    EXPECT_EQ(flx_jvp(1, &x, &t, 1, &y, &out), FLX_ERR_DTYPE) << flx_last_error();
}

TEST(HostileStatus, CpuDeviceIndexOtherThanZeroIsRejected) {
    flx_clear_error();
    flx_device d = flx_device_cpu();
    d.index = 1;
    EXPECT_EQ(flx_ctx_create(d), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_DEVICE);
    d.index = -1;
    EXPECT_EQ(flx_ctx_create(d), nullptr);
}

TEST_F(CpuTest, HostileStaleNodeNamesTheOptimiserStep) {
    flx_tensor *w = make(ctx, FLX_F64, {2}, {1, 2});
    ASSERT_EQ(flx_set_requires_grad(w, true), FLX_OK);
    flx_optim_config c = flx_optim_defaults(FLX_OPTIM_SGD);
    c.lr = 0.1;
    flx_optim *o = flx_optim_create(ctx, FLX_OPTIM_SGD, 1, &w, &c);
    ASSERT_NE(o, nullptr) << flx_last_error();
    flx_tensor *y = flx_exp(w);  // recorded before the step, not run yet
    ASSERT_EQ(flx_backward(flx_sum_all(flx_square(w))), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_optim_step(o), FLX_OK) << flx_last_error();
    double buf[2];
    EXPECT_EQ(flx_to_host(y, buf, sizeof buf), FLX_ERR_STATE);
    EXPECT_TRUE(message_has("flx_optim_step")) << flx_last_error();
    flx_optim_destroy(o);
}

TEST_F(CpuTest, HostileStaleNodeNamesAssign) {
    flx_tensor *w = make(ctx, FLX_F64, {2}, {1, 2});
    flx_tensor *y = flx_exp(w);
    ASSERT_EQ(flx_assign(w, make(ctx, FLX_F64, {2}, {3, 4})), FLX_OK);
    double buf[2];
    EXPECT_EQ(flx_to_host(y, buf, sizeof buf), FLX_ERR_STATE);
    EXPECT_TRUE(message_has("flx_assign")) << flx_last_error();
}

// ---- NaN stays visible ------------------------------------------------------------------------

TEST_F(CpuTest, HostileNaNElementwise) {
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        flx_tensor *a = make(ctx, dt, {3}, {kNaN, 0.0, kNaN});
        flx_tensor *z = make(ctx, dt, {3}, {0.0, kNaN, -1.0});
        for (flx_tensor *r : {flx_maximum(a, z), flx_minimum(a, z), flx_maximum(z, a),
                              flx_minimum(z, a)}) {
            std::vector<double> v = values(r);
            for (double e : v) EXPECT_TRUE(std::isnan(e)) << "dtype " << flx_dtype_name(dt);
        }
        // A chain runs as one fused kernel (the interpreter expands the same formulas).
        flx_tensor *chain = flx_mul_scalar(flx_relu(flx_maximum(a, z)), 2.0);
        for (double e : values(chain)) EXPECT_TRUE(std::isnan(e)) << "fused, " << flx_dtype_name(dt);
        for (flx_tensor *r : {flx_relu(a), flx_sign(a), flx_clamp(a, -1, 1), flx_leaky_relu(a, 0.1),
                              flx_elu(a, 1.0)}) {
            std::vector<double> v = values(r);
            EXPECT_TRUE(std::isnan(v[0]) && std::isnan(v[2])) << "dtype " << flx_dtype_name(dt);
        }
    }
    // Non-NaN values unchanged: numpy's maximum / minimum / relu / sign.
    flx_tensor *a = make(ctx, FLX_F64, {4}, {-2, 0, 3, -0.5});
    flx_tensor *b = make(ctx, FLX_F64, {4}, {1, 0, 2, -1});
    EXPECT_TRUE(close(values(flx_maximum(a, b)), {1, 0, 3, -0.5}));
    EXPECT_TRUE(close(values(flx_minimum(a, b)), {-2, 0, 2, -1}));
    EXPECT_TRUE(close(values(flx_relu(a)), {0, 0, 3, 0}));
    EXPECT_TRUE(close(values(flx_sign(a)), {-1, 0, 1, -1}));
}

TEST_F(CpuTest, HostileNaNGradients) {
    flx_tensor *x = make(ctx, FLX_F64, {3}, {kNaN, 2.0, -1.0});
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    // relu: the NaN input gets a NaN gradient, the others the usual one.
    ASSERT_EQ(flx_backward(flx_sum_all(flx_relu(x))), FLX_OK) << flx_last_error();
    std::vector<double> g = values(flx_grad(x));
    EXPECT_TRUE(std::isnan(g[0]));
    EXPECT_EQ(g[1], 1.0);
    EXPECT_EQ(g[2], 0.0);
    // maximum: the gradient goes to the input the value came from.
    ASSERT_EQ(flx_zero_grad(x), FLX_OK);
    flx_tensor *y = make(ctx, FLX_F64, {3}, {0.0, kNaN, -3.0});
    ASSERT_EQ(flx_set_requires_grad(y, true), FLX_OK);
    ASSERT_EQ(flx_backward(flx_sum_all(flx_maximum(x, y))), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(flx_grad(x)), {1, 0, 1}));
    EXPECT_TRUE(close(values(flx_grad(y)), {0, 1, 0}));
}

TEST_F(CpuTest, HostileNaNReductions) {
    flx_tensor *x = make(ctx, FLX_F64, {2, 4}, {1, kNaN, 5, kNaN, 3, 2, 1, 0});
    int32_t ax = 1;
    std::vector<double> mx = values(flx_max(x, 1, &ax, false));
    std::vector<double> mn = values(flx_min(x, 1, &ax, false));
    EXPECT_TRUE(std::isnan(mx[0]) && std::isnan(mn[0]));
    EXPECT_EQ(mx[1], 3.0);
    EXPECT_EQ(mn[1], 0.0);
    EXPECT_TRUE(close(values(flx_argmax(x, 1, false)), {1, 0}));  // the first NaN
    double all;
    ASSERT_EQ(flx_item(flx_max(x, 0, nullptr, false), &all), FLX_OK);
    EXPECT_TRUE(std::isnan(all));
}

TEST_F(CpuTest, HostileNaNPooling) {
    // (1, 1, 2, 4): a NaN in the first 2x2 window only.
    flx_tensor *x = make(ctx, FLX_F64, {1, 1, 2, 4}, {1, kNaN, 5, 6, 3, 2, 7, 8});
    int64_t k[2] = {2, 2};
    std::vector<double> mp = values(flx_max_pool2d(x, k, nullptr, nullptr, nullptr));
    std::vector<double> ap = values(flx_avg_pool2d(x, k, nullptr, nullptr));
    ASSERT_EQ(mp.size(), 2u);
    EXPECT_TRUE(std::isnan(mp[0]));
    EXPECT_EQ(mp[1], 8.0);
    EXPECT_TRUE(std::isnan(ap[0]));
    EXPECT_EQ(ap[1], 6.5);
}

TEST_F(CpuTest, HostileNaNReachesLinalg) {
    // Column 0 is (0, NaN): without a NaN-aware pivot search the zero pivot is kept, the
    // column is declared singular and det comes out 0.
    flx_tensor *A = make(ctx, FLX_F64, {2, 2}, {0, 1, kNaN, 0});
    double d;
    ASSERT_EQ(flx_item(flx_det(A), &d), FLX_OK) << flx_last_error();
    EXPECT_TRUE(std::isnan(d));
    flx_tensor *info = nullptr;
    flx_tensor *inv = flx_inv_ex(A, &info);
    for (double v : values(inv)) EXPECT_TRUE(std::isnan(v));
    flx_tensor *bb = make(ctx, FLX_F64, {2, 1}, {1, 1});
    flx_tensor *sinfo = nullptr;
    flx_tensor *x = flx_solve_ex(A, bb, &sinfo);
    for (double v : values(x)) EXPECT_TRUE(std::isnan(v));
}

// ---- data-dependent graphs stay right for every plan input ------------------------------------

// exp([[3, 5], [-4, 2]]) in closed form: A = 2.5 I + B with B^2 = -19.75 I, so
// exp(A) = e^2.5 (cos(w) I + sin(w)/w B), w = sqrt(19.75).
static std::vector<double> expm_3_5_m4_2() {
    const double w = std::sqrt(19.75), e = std::exp(2.5), c = std::cos(w), s = std::sin(w) / w;
    return {e * (c + 0.5 * s), e * 5 * s, e * -4 * s, e * (c - 0.5 * s)};
}

TEST_F(CpuTest, HostileExpmPlanCompiledOnSmallNormRunsLargeNorm) {
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        flx_tensor *A = make(ctx, dt, {2, 2}, {0.01, 0.02, -0.01, 0.03});
        flx_tensor *E = flx_expm(A);
        ASSERT_NE(E, nullptr) << flx_last_error();
        flx_plan *plan = flx_plan_compile(1, &E, 1, &A, nullptr);
        ASSERT_NE(plan, nullptr) << flx_last_error();
        flx_tensor *big = make(ctx, dt, {2, 2}, {3, 5, -4, 2});
        ASSERT_EQ(flx_plan_run(plan, 1, &big), FLX_OK) << flx_last_error();
        flx_tensor *out = flx_plan_output(plan, 0);
        const double tol = dt == FLX_F64 ? 1e-12 : 2e-5;
        const double scale = 30.0;  // max |exp(A)| is about 25
        EXPECT_TRUE(close(values(out), expm_3_5_m4_2(), tol * scale, tol))
            << "dtype " << flx_dtype_name(dt);
        // And back to a small one.
        flx_tensor *small = make(ctx, dt, {2, 2}, {0, 0, 0, 0});
        ASSERT_EQ(flx_plan_run(plan, 1, &small), FLX_OK) << flx_last_error();
        EXPECT_TRUE(close(values(flx_plan_output(plan, 0)), {1, 0, 0, 1}, tol, tol));
        flx_plan_destroy(plan);
    }
}

TEST_F(CpuTest, HostileExpmBatchMixesNorms) {
    // One small and one large matrix in a batch: each gets its own squarings.
    flx_tensor *A = make(ctx, FLX_F64, {2, 2, 2}, {0, 0, 0, 0, 3, 5, -4, 2});
    std::vector<double> v = values(flx_expm(A));
    std::vector<double> want = {1, 0, 0, 1};
    for (double e : expm_3_5_m4_2()) want.push_back(e);
    EXPECT_TRUE(close(v, want, 3e-11, 1e-12));
}

TEST_F(CpuTest, HostileExpmBeyondTheSquaringLoopIsNaN) {
    flx_tensor *A = make(ctx, FLX_F64, {2, 2}, {0, 1e14, -1e14, 0});
    for (double e : values(flx_expm(A))) EXPECT_TRUE(std::isnan(e));
}

// Building a graph never reads data: no op waits for the device, copies to the host or runs a
// node while it is being recorded, so no op can freeze a data-dependent choice into a graph (a
// plan replays the graph on other data). Each op is built on a lazy input.
TEST_F(CpuTest, HostileNoOpReadsDataWhileBuilding) {
    flx_tensor *A0 = make(ctx, FLX_F64, {2, 3, 3}, std::vector<double>(18, 0.25));
    flx_tensor *v0 = make(ctx, FLX_F64, {2, 3}, std::vector<double>(6, 0.5));
    flx_tensor *img0 = make(ctx, FLX_F64, {1, 2, 4, 4}, std::vector<double>(32, 0.5));
    flx_tensor *lab = make(ctx, FLX_I64, {2}, {0, 2});
    ASSERT_EQ(flx_eval(1, &lab), FLX_OK);
    // Lazy inputs: an op over the data, not run yet.
    flx_tensor *A = flx_add_scalar(A0, 1.0);
    flx_tensor *v = flx_exp(v0);
    flx_tensor *img = flx_sin(img0);
    flx_ctx_stats before;
    ASSERT_EQ(flx_ctx_get_stats(ctx, &before), FLX_OK);
    int64_t k[2] = {2, 2};
    int32_t ax = -1;
    std::vector<flx_tensor *> built = {
        flx_expm(A), flx_det(A), flx_logdet(A), flx_inv(A), flx_solve(A, flx_unsqueeze(v, -1)),
        flx_matmul(A, A), flx_trace(flx_squeeze(flx_slice(A, 0, 0, 1, 1), 0)), flx_norm(A, 2.0, 0, nullptr, false),
        flx_softmax(v, -1, 1.0), flx_log_softmax(v, -1, 1.0), flx_layer_norm(v, 1, nullptr, nullptr, 1e-5),
        flx_cross_entropy(v, lab, FLX_REDUCTION_MEAN, -100),
        flx_max(v, 1, &ax, false), flx_argmax(v, -1, false), flx_logsumexp(v, 1, &ax, false),
        flx_var(v, 1, &ax, false, 1), flx_max_pool2d(img, k, nullptr, nullptr, nullptr),
        flx_avg_pool2d(img, k, nullptr, nullptr), flx_relu(v), flx_maximum(v, v),
        flx_where(flx_gt(v, v), v, v), flx_dropout(v, 0.5, 1, true),
        flx_batch_norm(v, nullptr, nullptr, nullptr, nullptr, true, 0.1, 1e-5, nullptr, nullptr)};
    flx_tensor *w = nullptr, *V = nullptr;
    ASSERT_EQ(flx_eigh(A, &w, &V), FLX_OK) << flx_last_error();
    flx_tensor *sg = nullptr, *la = nullptr;
    ASSERT_EQ(flx_slogdet(A, &sg, &la), FLX_OK) << flx_last_error();
    for (size_t i = 0; i < built.size(); i++) EXPECT_NE(built[i], nullptr) << i << ": " << flx_last_error();
    flx_ctx_stats after;
    ASSERT_EQ(flx_ctx_get_stats(ctx, &after), FLX_OK);
    EXPECT_EQ(after.nodes_executed, before.nodes_executed) << "an op ran nodes while being built";
    EXPECT_EQ(after.d2h_copies, before.d2h_copies) << "an op read data while being built";
    EXPECT_EQ(after.syncs, before.syncs) << "an op waited for the device while being built";
    EXPECT_EQ(after.kernels, before.kernels);
}

// ---- dtype promotion ---------------------------------------------------------------------------

TEST_F(CpuTest, HostilePromotionFollowsTorchRule) {
    flx_tensor *i = make(ctx, FLX_I64, {3}, {1, -2, 3});
    flx_tensor *f = make(ctx, FLX_F32, {3}, {0.5, 0.25, 2});
    flx_tensor *d = make(ctx, FLX_F64, {3}, {0.1, 0.2, 0.3});
    flx_tensor *bo = make(ctx, FLX_BOOL, {3}, {1, 0, 1});
    flx_tensor *i32 = make(ctx, FLX_I32, {3}, {4, 5, 6});
    flx_tensor *r1 = flx_mul(i, f);
    ASSERT_NE(r1, nullptr) << flx_last_error();
    EXPECT_EQ(flx_dtype_of(r1), FLX_F32);
    EXPECT_TRUE(close(values(r1), {0.5, -0.5, 6}));
    flx_tensor *r2 = flx_add(f, d);
    EXPECT_EQ(flx_dtype_of(r2), FLX_F64);
    EXPECT_TRUE(close(values(r2), {0.5 + 0.1, 0.25 + 0.2, 2 + 0.3}, 1e-15, 1e-15));
    flx_tensor *r3 = flx_mul(bo, d);
    EXPECT_EQ(flx_dtype_of(r3), FLX_F64);
    EXPECT_TRUE(close(values(r3), {0.1, 0, 0.3}));
    flx_tensor *r4 = flx_add(i32, i);
    EXPECT_EQ(flx_dtype_of(r4), FLX_I64);
    EXPECT_TRUE(close(values(r4), {5, 3, 9}));
    flx_tensor *r5 = flx_lt(i, f);  // comparisons promote too
    EXPECT_EQ(flx_dtype_of(r5), FLX_BOOL);
    EXPECT_TRUE(close(values(r5), {0, 1, 0}));
    flx_tensor *r6 = flx_add(bo, i32);
    EXPECT_EQ(flx_dtype_of(r6), FLX_I32);
    EXPECT_TRUE(close(values(r6), {5, 5, 7}));
}

TEST_F(CpuTest, HostilePromotionGradientFlowsThroughTheCast) {
    flx_tensor *x = make(ctx, FLX_F32, {2}, {1.5, -2});
    flx_tensor *y = make(ctx, FLX_F64, {2}, {0.25, 3});
    ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
    ASSERT_EQ(flx_set_requires_grad(y, true), FLX_OK);
    ASSERT_EQ(flx_backward(flx_sum_all(flx_mul(x, y))), FLX_OK) << flx_last_error();
    flx_tensor *gx = flx_grad(x), *gy = flx_grad(y);
    EXPECT_EQ(flx_dtype_of(gx), FLX_F32);
    EXPECT_EQ(flx_dtype_of(gy), FLX_F64);
    EXPECT_TRUE(close(values(gx), {0.25, 3}));
    EXPECT_TRUE(close(values(gy), {1.5, -2}));
}

TEST_F(CpuTest, HostileIntegerNegAbsAndBoolSum) {
    flx_tensor *i = make(ctx, FLX_I64, {4}, {3, -7, 0, -1});
    flx_tensor *n = flx_neg(i), *a = flx_abs(i);
    ASSERT_NE(n, nullptr) << flx_last_error();
    ASSERT_NE(a, nullptr) << flx_last_error();
    EXPECT_EQ(flx_dtype_of(n), FLX_I64);
    EXPECT_TRUE(close(values(n), {-3, 7, 0, 1}));
    EXPECT_TRUE(close(values(a), {3, 7, 0, 1}));
    // Exact beyond 2^53, where a detour through double would round.
    int64_t big = ((int64_t)1 << 60) + 1, one = 1;
    flx_tensor *bi = flx_from_host(ctx, FLX_I64, 1, &one, &big);
    int64_t got = 0;
    ASSERT_EQ(flx_to_host(flx_abs(flx_neg(bi)), &got, sizeof got), FLX_OK) << flx_last_error();
    EXPECT_EQ(got, big);
    flx_tensor *i32 = make(ctx, FLX_I32, {2}, {-5, 6});
    EXPECT_TRUE(close(values(flx_abs(i32)), {5, 6}));
    flx_tensor *b = make(ctx, FLX_BOOL, {2, 3}, {1, 0, 1, 1, 1, 0});
    flx_tensor *s = flx_sum_all(b);
    ASSERT_NE(s, nullptr) << flx_last_error();
    EXPECT_EQ(flx_dtype_of(s), FLX_I64);
    EXPECT_TRUE(close(values(s), {4}));
    int32_t ax = 1;
    EXPECT_TRUE(close(values(flx_sum(b, 1, &ax, false)), {2, 2}));
}

// ---- the GPU propagates NaN like the CPU reference -----------------------------------------------

using HostileCuda = flxt::CudaCpuTest;

TEST_F(HostileCuda, NaNPropagationMatchesCpu) {
    flx_ctx *g = gpu;
    const std::vector<double> xa = {kNaN, 0.0, 2.0, -1.0, kNaN, 3.0, -2.0, 0.5};
    const std::vector<double> xb = {0.0, kNaN, 1.0, -3.0, kNaN, 0.0, 4.0, kNaN};
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        auto run = [&](flx_ctx *c) {
            flx_tensor *a = make(c, dt, {2, 4}, xa), *b = make(c, dt, {2, 4}, xb);
            int32_t ax = 1;
            int64_t k[2] = {1, 2};
            flx_tensor *img = flx_reshape(a, 4, std::vector<int64_t>{1, 1, 2, 4}.data());
            std::vector<std::vector<double>> r;
            for (flx_tensor *t : {flx_maximum(a, b), flx_minimum(a, b), flx_relu(a), flx_sign(a),
                                  flx_max(a, 1, &ax, false), flx_min(b, 1, &ax, false),
                                  flx_argmax(a, 1, false),
                                  flx_max_pool2d(img, k, nullptr, nullptr, nullptr),
                                  flx_avg_pool2d(img, k, nullptr, nullptr)})
                r.push_back(values(t));
            return r;
        };
        std::vector<std::vector<double>> rg = run(g), rc = run(cpu);
        ASSERT_EQ(rg.size(), rc.size());
        for (size_t i = 0; i < rg.size(); i++)
            EXPECT_TRUE(close(rg[i], rc[i], 1e-6, 1e-6)) << "case " << i << " " << flx_dtype_name(dt);
    }
}
