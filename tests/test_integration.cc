// test_integration.cc — version and run-time feature queries of fluxion.h.
#include <cstdio>
#include <cstring>
#include <string>

#include "testing.h"

namespace {

TEST(Integration, VersionMacrosMatchRuntimeVersion) {
    char want[64];
    std::snprintf(want, sizeof want, "%d.%d.%d", FLX_VERSION_MAJOR, FLX_VERSION_MINOR,
                  FLX_VERSION_PATCH);
    ASSERT_NE(flx_version(), nullptr);
    EXPECT_STREQ(flx_version(), want);
}

TEST(Integration, CudaDeviceInfoRejectsNullOut) {
    EXPECT_EQ(flx_cuda_device_info(0, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(flx_last_error()).find("flx_cuda_device_info"), std::string::npos);
    flx_clear_error();
}

TEST(Integration, CudaDeviceInfoOutOfRangeOrUnsupported) {
    flx_cuda_device_props p;
    std::memset(&p, 0x5a, sizeof p);
    int32_t n = flx_cuda_device_count();
    flx_status want = flx_has_cuda() ? FLX_ERR_DEVICE : FLX_ERR_UNSUPPORTED;
    for (int32_t bad : {-1, n, n + 7}) {
        SCOPED_TRACE(bad);
        EXPECT_EQ(flx_cuda_device_info(bad, &p), want);
        EXPECT_NE(std::string(flx_last_error()).find("flx_cuda_device_info"), std::string::npos)
            << flx_last_error();
        EXPECT_EQ(p.name[0], '\0');  // zeroed on error
        EXPECT_EQ(p.total_memory, 0u);
        flx_clear_error();
    }
    if (!flx_has_cuda()) EXPECT_EQ(n, 0);
}

TEST(Integration, CudaDeviceInfoDescribesEveryDevice) {
    int32_t n = flx_cuda_device_count();
    if (n == 0) {
        const char *req = std::getenv("FLX_REQUIRE_GPU");
        if (req && std::string(req) == "1") FAIL() << "GPU required but flx_cuda_device_count() == 0";
        GTEST_SKIP() << "no CUDA GPU: flx_cuda_device_count() == 0 (has_cuda "
                     << flx_has_cuda() << ")";
    }
    for (int32_t i = 0; i < n; i++) {
        flx_cuda_device_props p;
        ASSERT_EQ(flx_cuda_device_info(i, &p), FLX_OK) << flx_last_error();
        EXPECT_GT(std::strlen(p.name), 0u);
        EXPECT_LT(std::strlen(p.name), sizeof p.name);
        EXPECT_GE(p.major, 3);
        EXPECT_GE(p.minor, 0);
        EXPECT_GT(p.total_memory, (uint64_t)1 << 28);
        EXPECT_GT(p.multiprocessors, 0);
        std::printf("device %d: %s, sm_%d%d, %.1f GiB, %d SMs\n", i, p.name, p.major, p.minor,
                    (double)p.total_memory / (1 << 30), p.multiprocessors);
    }
}

}  // namespace
