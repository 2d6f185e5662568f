// test_device_errors.cc — errors that kernels report late through the context's error record
// (kernels/flx_kerr.h): the message names the public call, the offending value and its bound;
// two different errors in one synchronisation window report the first one (program order) and
// list the other; the record is cleared once reported. Also the plan's capture state and reason.
// The shared checks run on the GPU too (DeviceErrorsCuda, skipped without one).
#include "testing.h"

#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../kernels/flx_kerr.h"  // header-only: the raise helper shared by every kernel

using namespace flxt;

namespace {

class DeviceErrorsTest : public CpuTest {};

bool has(const std::string &needle) {
    return std::string(flx_last_error()).find(needle) != std::string::npos;
}

// Logits (8, 10) with row 7's label 12 (outside [0, 10)), the others valid.
flx_tensor *bad_label_loss(flx_ctx *ctx, flx_dtype label_dt) {
    flx_tensor *logits = rand_tensor(ctx, FLX_F64, {8, 10}, 3);
    flx_tensor *labels = make(ctx, label_dt, {8}, {0, 1, 2, 3, 4, 5, 6, 12});
    return flx_cross_entropy(logits, labels, FLX_REDUCTION_NONE, -100);
}

// A batch of three 2x2 matrices whose matrix 1 is exactly singular (zero second pivot).
flx_tensor *singular_solve(flx_ctx *ctx) {
    flx_tensor *A = make(ctx, FLX_F64, {3, 2, 2}, {2, 1, 1, 3, 1, 2, 2, 4, 4, 1, 1, 2});
    flx_tensor *b = make(ctx, FLX_F64, {3, 2}, {1, 2, 1, 1, 3, 1});
    return flx_solve(A, b);
}

}  // namespace

static void label_message(flx_ctx *ctx) {
    for (flx_dtype dt : {FLX_I32, FLX_I64}) {
        flx_tensor *loss = bad_label_loss(ctx, dt);
        ASSERT_NE(loss, nullptr) << flx_last_error();
        std::vector<double> out(8);
        EXPECT_EQ(flx_to_host(loss, out.data(), out.size() * sizeof(double)),
                  FLX_ERR_INVALID_ARGUMENT);
        EXPECT_TRUE(has("flx_cross_entropy: label 12 of row 7 is outside [0, 10)")) << flx_last_error();
        flx_clear_error();
        // Reported once: the record was cleared.
        EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_OK) << flx_last_error();
    }
}

TEST_F(DeviceErrorsTest, OutOfRangeLabelNamesOpLabelRowAndBound) { label_message(ctx); }

TEST(DeviceErrorsCuda, OutOfRangeLabelNamesOpLabelRowAndBound) {
    on_cuda(label_message);
}

TEST_F(DeviceErrorsTest, GradientOfOutOfRangeLabelIsReportedToo) {
    flx_tensor *logits = rand_tensor(ctx, FLX_F64, {4, 3}, 5);
    ASSERT_EQ(flx_set_requires_grad(logits, true), FLX_OK);
    flx_tensor *labels = make(ctx, FLX_I64, {4}, {0, -5, 2, 1});
    flx_tensor *loss = flx_cross_entropy(logits, labels, FLX_REDUCTION_SUM, -100);
    flx_tensor *g = nullptr;
    ASSERT_EQ(flx_grad_of(1, &loss, nullptr, 1, &logits, false, &g), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_eval(1, &g), FLX_OK);
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_ERR_INVALID_ARGUMENT);
    // The forward kernel ran first: it is the one named.
    EXPECT_TRUE(has("flx_cross_entropy: label -5 of row 1 is outside [0, 3)")) << flx_last_error();
    flx_clear_error();
}

TEST_F(DeviceErrorsTest, OutOfRangeIndexSaysSoWithPositionAndBound) {
    flx_tensor *x = rand_tensor(ctx, FLX_F32, {3, 4}, 1);
    flx_tensor *idx = make(ctx, FLX_I64, {3}, {0, 7, -1});
    flx_tensor *y = flx_index_select(x, 0, idx);
    ASSERT_NE(y, nullptr) << flx_last_error();
    std::vector<float> out(12);
    EXPECT_EQ(flx_to_host(y, out.data(), out.size() * sizeof(float)), FLX_ERR_INVALID_ARGUMENT);
    // The first offending position (the CPU visits them in order), not "read as 0".
    EXPECT_TRUE(has("flx_index_select")) << flx_last_error();
    EXPECT_TRUE(has("index 7 at position 1 of the index tensor is outside [0, 3)")) << flx_last_error();
    EXPECT_FALSE(has("read as 0")) << flx_last_error();
    flx_clear_error();
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_OK) << flx_last_error();
}

TEST_F(DeviceErrorsTest, SingularMatrixNamesItsBatchIndex) {
    flx_tensor *x = singular_solve(ctx);
    ASSERT_NE(x, nullptr) << flx_last_error();
    EXPECT_EQ(flx_eval(1, &x), FLX_OK);
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_ERR_NUMERIC);
    EXPECT_TRUE(has("flx_solve/flx_inv: matrix 1 of the batch is singular")) << flx_last_error();
    EXPECT_TRUE(has("U(1, 1)")) << flx_last_error();
    flx_clear_error();
}

TEST_F(DeviceErrorsTest, EighNonConvergenceNamesItsBatchIndex) {
    flx_tensor *S = make(ctx, FLX_F64, {2, 2, 2}, {2, 1, 1, 2, 1, NAN, NAN, 1});
    flx_tensor *w = nullptr, *v = nullptr;
    ASSERT_EQ(flx_eigh(S, &w, &v), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_eval(1, &w), FLX_OK);
    EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_ERR_NUMERIC);
    EXPECT_TRUE(has("flx_eigh: the eigensolver did not converge on matrix 1 of the batch"))
        << flx_last_error();
    flx_clear_error();
}

// Two different errors between two synchronisation points: the one raised first (in program
// order) is reported, whichever it is, and the other kind is listed after it. On CUDA too:
// kernels on one stream run in order, so the first raise claims the payload.
static void two_errors_in_one_window(flx_ctx *ctx) {
    for (int order = 0; order < 2; order++) {
        SCOPED_TRACE(order);
        flx_tensor *loss = bad_label_loss(ctx, FLX_I64);
        flx_tensor *x = singular_solve(ctx);
        ASSERT_TRUE(loss && x) << flx_last_error();
        flx_tensor *first = order == 0 ? loss : x, *second = order == 0 ? x : loss;
        ASSERT_EQ(flx_eval(1, &first), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_eval(1, &second), FLX_OK) << flx_last_error();
        flx_status st = flx_ctx_synchronize(ctx);
        if (order == 0) {
            EXPECT_EQ(st, FLX_ERR_INVALID_ARGUMENT);
            EXPECT_TRUE(has("flx_cross_entropy: label 12 of row 7 is outside [0, 10)")) << flx_last_error();
            EXPECT_TRUE(has("also raised in the same window: a singular matrix")) << flx_last_error();
        } else {
            EXPECT_EQ(st, FLX_ERR_NUMERIC);
            EXPECT_TRUE(has("matrix 1 of the batch is singular")) << flx_last_error();
            EXPECT_TRUE(has("also raised in the same window: an index out of range")) << flx_last_error();
        }
        flx_clear_error();
        EXPECT_EQ(flx_ctx_synchronize(ctx), FLX_OK) << flx_last_error();
    }
}

TEST_F(DeviceErrorsTest, TwoErrorsInOneWindowReportTheFirstAndListTheOther) {
    two_errors_in_one_window(ctx);
}

TEST(DeviceErrorsCuda, TwoErrorsInOneWindowReportTheFirstAndListTheOther) {
    on_cuda(two_errors_in_one_window);
}

// Two raises of one kind: the first (lowest row on the CPU) carries the payload.
TEST_F(DeviceErrorsTest, FirstOfSeveralBadLabelsIsReported) {
    flx_tensor *logits = rand_tensor(ctx, FLX_F32, {5, 4}, 9);
    flx_tensor *labels = make(ctx, FLX_I32, {5}, {0, 9, 1, 4, -100});
    flx_tensor *loss = flx_cross_entropy(logits, labels, FLX_REDUCTION_NONE, -100);
    ASSERT_NE(loss, nullptr) << flx_last_error();
    std::vector<float> out(5);
    EXPECT_EQ(flx_to_host(loss, out.data(), out.size() * sizeof(float)), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("label 9 of row 1 is outside [0, 4)")) << flx_last_error();
    flx_clear_error();
}

// Many threads raising at once (as GPU threads do): every kind is recorded, and the payload is
// one raise's fields, whole (never fields of two raises mixed).
TEST(DeviceErrorRecord, ConcurrentRaisesKeepOnePayloadWhole) {
    for (int trial = 0; trial < 20; trial++) {
        flx_kerr_record rec;
        std::memset(&rec, 0, sizeof rec);
        std::vector<std::thread> threads;
        for (int t = 0; t < 8; t++)
            threads.emplace_back([&rec, t] {
                flx_kerr site = {&rec, 100 + t};
                int32_t kind = t % 2 ? FLX_KERR_SINGULAR : FLX_KERR_INDEX_RANGE;
                for (int64_t i = 0; i < 2000; i++)
                    flx_kerr_raise(site, kind, t * 1000000 + i, t, t + 1, t * 1000000 + i);
            });
        for (auto &th : threads) th.join();
        EXPECT_EQ(rec.kinds, (1u << FLX_KERR_INDEX_RANGE) | (1u << FLX_KERR_SINGULAR));
        EXPECT_EQ(rec.claimed, 1u);
        int t = rec.op - 100;
        ASSERT_TRUE(t >= 0 && t < 8) << rec.op;
        EXPECT_EQ(rec.kind, t % 2 ? FLX_KERR_SINGULAR : FLX_KERR_INDEX_RANGE);
        EXPECT_EQ(rec.lo, t);
        EXPECT_EQ(rec.hi, t + 1);
        EXPECT_EQ(rec.value, rec.row);
        EXPECT_EQ(rec.value / 1000000, t);
    }
}

// Kernel arguments zeroed by memset (no record): raising is a no-op, not a crash.
TEST(DeviceErrorRecord, NullSiteRecordsNothing) {
    flx_kerr site = {nullptr, 0};
    flx_kerr_raise(site, FLX_KERR_INDEX_RANGE, 1, 0, 1, 0);
    SUCCEED();
}

// ---- plan capture state -------------------------------------------------------------------------
TEST_F(DeviceErrorsTest, PlanInfoSaysWhyNotCaptured) {
    flx_tensor *x = make(ctx, FLX_F32, {4}, {1, 2, 3, 4});
    flx_tensor *y = flx_mul_scalar(flx_add(x, x), 0.5);
    ASSERT_NE(y, nullptr) << flx_last_error();
    for (int32_t mode : {FLX_PLAN_CAPTURE_DEFAULT, FLX_PLAN_CAPTURE_OFF, FLX_PLAN_CAPTURE_ON}) {
        SCOPED_TRACE(mode);
        flx_plan_options o = flx_plan_default_options();
        o.capture = mode;
        flx_plan *p = flx_plan_compile(1, &y, 1, &x, &o);
        ASSERT_NE(p, nullptr) << flx_last_error();
        flx_plan_info info;
        std::memset(&info, 0x5a, sizeof info);
        ASSERT_EQ(flx_plan_get_info(p, &info), FLX_OK);
        EXPECT_FALSE(info.captured);
        ASSERT_NE(std::memchr(info.capture_reason, 0, sizeof info.capture_reason), nullptr);
        if (mode == FLX_PLAN_CAPTURE_OFF) {
            EXPECT_EQ(info.capture_state, FLX_PLAN_NOT_CAPTURED_DISABLED);
            EXPECT_NE(std::strstr(info.capture_reason, "capture disabled"), nullptr) << info.capture_reason;
        } else {
            EXPECT_EQ(info.capture_state, FLX_PLAN_NOT_CAPTURED_UNSUPPORTED);
            EXPECT_NE(std::strstr(info.capture_reason, "cpu backend has no graph capture"), nullptr)
                << info.capture_reason;
        }
        flx_plan_destroy(p);
    }
}
