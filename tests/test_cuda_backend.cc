// test_cuda_backend.cc — the CUDA backend's host side, on a GPU (each test skips with the reason
// where none is usable): an index error's message names its position; the
// context's memory comes from a pool of its own (the device's default pool, which PyTorch or
// CuPy may use, is left alone); the caller's current device is restored; uploads through pinned
// staging let the caller reuse its buffer at once and do not wait for earlier work; index_add's
// workspace comes from the context's allocator; plans report why they are not captured.
#include "testing.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#ifdef FLX_TESTS_WITH_CUDART
#include <cuda_runtime.h>
#endif

using namespace flxt;

namespace {

bool has(const std::string &needle) {
    return std::string(flx_last_error()).find(needle) != std::string::npos;
}

}  // namespace

using CudaBackend = flxt::CudaCpuTest;

// One bad index: its position and bound are exact on the GPU too (the index check visits each
// position once).
TEST_F(CudaBackend, OutOfRangeIndexNamesPositionAndBound) {
    flx_ctx *g = gpu;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *x = rand_tensor(g, FLX_F32, {3, 4}, 1);
    flx_tensor *y = flx_index_select(x, 0, make(g, FLX_I32, {3}, {0, 7, 2}));
    std::vector<float> yv(12);
    EXPECT_EQ(flx_to_host(y, yv.data(), yv.size() * sizeof(float)), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("index 7 at position 1 of the index tensor is outside [0, 3)")) << flx_last_error();
    flx_clear_error();
    EXPECT_EQ(flx_ctx_synchronize(g), FLX_OK) << flx_last_error();
    flx_scope_end(0, nullptr);
}

// Uploads from a buffer the caller overwrites right after each call: every run sees the data of
// its own call. No host wait per upload (the staging slots absorb a few runs in flight).
TEST_F(CudaBackend, PlanInputFromReusedHostBufferWithoutWaiting) {
    flx_ctx *g = gpu;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    const int64_t n = 1 << 16;
    std::vector<float> host((size_t)n, 0.0f);
    flx_tensor *x = make(g, FLX_F32, {n}, std::vector<double>((size_t)n, 0.0));
    flx_tensor *y = flx_sum_all(flx_mul_scalar(x, 2.0));
    ASSERT_NE(y, nullptr) << flx_last_error();
    flx_plan *p = flx_plan_compile(1, &y, 1, &x, nullptr);
    ASSERT_NE(p, nullptr) << flx_last_error();
    flx_ctx_stats before, after;
    for (int run = 0; run < 16; run++) {
        for (int64_t i = 0; i < n; i++) host[(size_t)i] = (float)(run + 1);
        ASSERT_EQ(flx_ctx_get_stats(g, &before), FLX_OK);
        ASSERT_EQ(flx_plan_set_input_host(p, 0, host.data(), host.size() * sizeof(float)), FLX_OK)
            << flx_last_error();
        ASSERT_EQ(flx_ctx_get_stats(g, &after), FLX_OK);
        EXPECT_EQ(after.syncs, before.syncs) << "an upload waited for the device";
        std::fill(host.begin(), host.end(), -1.0f);  // reused at once: must not leak into the run
        ASSERT_EQ(flx_plan_run(p, 0, nullptr), FLX_OK) << flx_last_error();
        flx_tensor *o = flx_plan_output(p, 0);
        float v = 0;
        ASSERT_EQ(flx_to_host(o, &v, sizeof v), FLX_OK) << flx_last_error();
        EXPECT_EQ(v, 2.0f * (float)(run + 1) * (float)n) << "run " << run;
    }
    // Many runs queued back to back (more than the staging slots), no read in between: the last
    // run sees the last upload.
    for (int run = 0; run < 11; run++) {
        std::fill(host.begin(), host.end(), (float)(100 + run));
        ASSERT_EQ(flx_plan_set_input_host(p, 0, host.data(), host.size() * sizeof(float)), FLX_OK)
            << flx_last_error();
        std::fill(host.begin(), host.end(), -1.0f);
        ASSERT_EQ(flx_plan_run(p, 0, nullptr), FLX_OK) << flx_last_error();
    }
    float last = 0;
    ASSERT_EQ(flx_to_host(flx_plan_output(p, 0), &last, sizeof last), FLX_OK) << flx_last_error();
    EXPECT_EQ(last, 2.0f * 110.0f * (float)n);
    flx_plan_destroy(p);
    flx_scope_end(0, nullptr);
}

// An upload larger than one staging slot goes in chunks; all bytes arrive.
TEST_F(CudaBackend, LargeUploadInChunks) {
    flx_ctx *g = gpu;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    const int64_t n = (int64_t)5 << 20;  // 40 MiB of f64: five slots' worth
    std::vector<double> v((size_t)n);
    for (int64_t i = 0; i < n; i++) v[(size_t)i] = (double)i * 0.5 - 7.0;
    flx_tensor *t = flx_from_host(g, FLX_F64, 1, &n, v.data());
    ASSERT_NE(t, nullptr) << flx_last_error();
    std::vector<double> expect = v;
    std::fill(v.begin(), v.end(), 0.0);
    std::vector<double> back((size_t)n);
    ASSERT_EQ(flx_to_host(t, back.data(), back.size() * sizeof(double)), FLX_OK) << flx_last_error();
    EXPECT_TRUE(back == expect);
    flx_scope_end(0, nullptr);
}

// index_add with many indices takes the sorted path, whose workspace is an allocation of the
// context (counted in the stats): the same graph with few indices (the scan, no workspace)
// allocates exactly one buffer less. Both match the CPU.
TEST_F(CudaBackend, IndexAddWorkspaceComesFromTheAllocator) {
    flx_ctx *g = gpu;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    const int64_t n_src = 50, inner = 3;
    uint64_t gpu_allocs[2] = {0, 0};
    const int64_t sizes[2] = {20, 200};
    for (int c = 0; c < 2; c++) {
        const int64_t n_idx = sizes[c];
        std::vector<double> iv((size_t)n_idx);
        for (int64_t j = 0; j < n_idx; j++) iv[(size_t)j] = (double)((j * 7) % n_src);
        std::vector<double> results[2];
        flx_ctx *ctxs[2] = {g, cpu};
        for (int k = 0; k < 2; k++) {
            flx_tensor *x = rand_tensor(ctxs[k], FLX_F64, {n_src, inner}, 4);
            ASSERT_EQ(flx_set_requires_grad(x, true), FLX_OK);
            flx_tensor *y = flx_index_select(x, 0, make(ctxs[k], FLX_I64, {n_idx}, iv));
            flx_tensor *w = rand_tensor(ctxs[k], FLX_F64, {n_idx, inner}, 5);
            flx_tensor *loss = flx_sum_all(flx_mul(y, w));
            flx_tensor *gx = nullptr;
            ASSERT_EQ(flx_grad_of(1, &loss, nullptr, 1, &x, false, &gx), FLX_OK) << flx_last_error();
            flx_ctx_stats s0, s1;
            ASSERT_EQ(flx_ctx_get_stats(ctxs[k], &s0), FLX_OK);
            results[k] = values(gx);
            ASSERT_EQ(flx_ctx_get_stats(ctxs[k], &s1), FLX_OK);
            if (k == 0) gpu_allocs[c] = s1.allocs - s0.allocs;
        }
        EXPECT_TRUE(close(results[0], results[1], 1e-12, 1e-12)) << "n_idx " << n_idx;
    }
    EXPECT_EQ(gpu_allocs[1], gpu_allocs[0] + 1);
    flx_scope_end(0, nullptr);
}

TEST_F(CudaBackend, PlanInfoCaptureState) {
    flx_ctx *g = gpu;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *x = rand_tensor(g, FLX_F32, {16}, 2);
    flx_tensor *y = flx_mul_scalar(flx_add(x, x), 0.5);
    flx_plan *p = flx_plan_compile(1, &y, 1, &x, nullptr);
    ASSERT_NE(p, nullptr) << flx_last_error();
    flx_plan_info info;
    ASSERT_EQ(flx_plan_get_info(p, &info), FLX_OK);
    EXPECT_TRUE(info.captured);
    EXPECT_EQ(info.capture_state, FLX_PLAN_CAPTURED);
    EXPECT_STREQ(info.capture_reason, "");
    flx_plan_destroy(p);
    // eigh goes through cuSOLVER: captured, or not with the failing call named.
    flx_tensor *S = make(g, FLX_F64, {3, 3}, {2, 1, 0, 1, 2, 1, 0, 1, 2});
    flx_tensor *w = nullptr, *v = nullptr;
    ASSERT_EQ(flx_eigh(S, &w, &v), FLX_OK) << flx_last_error();
    p = flx_plan_compile(1, &w, 1, &S, nullptr);
    ASSERT_NE(p, nullptr) << flx_last_error();
    ASSERT_EQ(flx_plan_get_info(p, &info), FLX_OK);
    if (info.captured) {
        EXPECT_EQ(info.capture_state, FLX_PLAN_CAPTURED);
    } else {
        EXPECT_EQ(info.capture_state, FLX_PLAN_NOT_CAPTURED_FAILED);
        EXPECT_NE(std::strstr(info.capture_reason, "capture failed: "), nullptr) << info.capture_reason;
    }
    std::printf("eigh plan: captured %d, reason \"%s\"\n", (int)info.captured, info.capture_reason);
    flx_plan_destroy(p);
    flx_scope_end(0, nullptr);
}

#ifdef FLX_TESTS_WITH_CUDART
// The device's default pool keeps its release threshold and holds none of fluxion's memory, not
// even for a moment: its high watermark (reset first) never rises above what was in use before,
// through ops that take scratch (a reduction split over blocks, a softmax over a long strided
// axis split over the GPU) as well as plain allocations.
TEST_F(CudaBackend, DefaultMemoryPoolIsLeftAlone) {
    flx_ctx *g = gpu;
    cudaMemPool_t def = nullptr;
    ASSERT_EQ(cudaDeviceGetDefaultMemPool(&def, 0), cudaSuccess);
    uint64_t threshold = 0, used = 0, high = 0, zero = 0;
    ASSERT_EQ(cudaMemPoolGetAttribute(def, cudaMemPoolAttrReleaseThreshold, &threshold), cudaSuccess);
    EXPECT_EQ(threshold, 0u) << "the default pool's release threshold was changed";
    ASSERT_EQ(cudaMemPoolGetAttribute(def, cudaMemPoolAttrUsedMemCurrent, &used), cudaSuccess);
    ASSERT_EQ(cudaMemPoolSetAttribute(def, cudaMemPoolAttrUsedMemHigh, &zero), cudaSuccess);
    uint64_t used_before = used;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *t = rand_tensor(g, FLX_F32, {1 << 20}, 1);
    flx_tensor *cols = rand_tensor(g, FLX_F32, {1 << 16, 8}, 2); // 8 columns of 65536: split
    flx_tensor *outs[3] = {t, flx_sum_all(t), flx_softmax(cols, 0, 1.0)};
    ASSERT_EQ(flx_eval(3, outs), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_ctx_synchronize(g), FLX_OK);
    ASSERT_EQ(cudaMemPoolGetAttribute(def, cudaMemPoolAttrUsedMemCurrent, &used), cudaSuccess);
    EXPECT_EQ(used, used_before) << "fluxion holds memory of the device's default pool";
    ASSERT_EQ(cudaMemPoolGetAttribute(def, cudaMemPoolAttrUsedMemHigh, &high), cudaSuccess);
    EXPECT_LE(high, used_before) << "fluxion allocated from the device's default pool";
    flx_scope_end(0, nullptr);
}

// A thread whose current device is another one gets it back after every call. Needs 2 GPUs.
TEST_F(CudaBackend, CallerCurrentDeviceIsRestored) {
    flx_ctx *g = gpu;
    int n = 0;
    ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
    if (n < 2) GTEST_SKIP() << "needs two CUDA devices";
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *t = flx_add(rand_tensor(g, FLX_F32, {1000}, 1), rand_tensor(g, FLX_F32, {1000}, 2));
    std::vector<float> out(1000);
    ASSERT_EQ(flx_to_host(t, out.data(), out.size() * sizeof(float)), FLX_OK) << flx_last_error();
    int cur = -1;
    ASSERT_EQ(cudaGetDevice(&cur), cudaSuccess);
    EXPECT_EQ(cur, 1);
    flx_scope_end(0, nullptr);
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
}
#endif
