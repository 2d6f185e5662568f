// test_doc_claims.cc — statements of README.md, docs/integration.md and fluxion.h checked against
// behaviour: the determinant of exactly singular integer matrices, and the log level that reports
// a context that could not be created.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <unistd.h>

#include "testing.h"

using namespace flxt;

namespace {

class DocClaims : public CpuTest {};

TEST_F(DocClaims, DetOfSingularIntegerMatrices) {
    // A zero pivot: det is exactly 0 and slogdet's sign is 0 (f32 and f64).
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        flx_tensor *a = make(ctx, dt, {3, 3}, {1, 2, 3, 2, 4, 6, 1, 1, 1});
        EXPECT_EQ(values(flx_det(a))[0], 0.0);
        flx_tensor *sign = nullptr, *lad = nullptr;
        ASSERT_EQ(flx_slogdet(a, &sign, &lad), FLX_OK);
        EXPECT_EQ(values(sign)[0], 0.0);
        EXPECT_EQ(values(lad)[0], -INFINITY);
    }
    // Singular only in exact arithmetic: rounding leaves a tiny value, as in LAPACK and NumPy
    // (the header says so; it does not promise 0).
    flx_tensor *b = make(ctx, FLX_F64, {3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
    double d = values(flx_det(b))[0];
    EXPECT_LT(std::fabs(d), 1e-14);
    EXPECT_NE(d, 0.0);
}

// A CUDA context that cannot be created is reported on stderr at level error, as
// docs/integration.md says. The level is read once per process, so without FLX_LOG_LEVEL=error
// (as CTest's doc_claims.log_level_error sets it) the test runs itself in a child process that has
// it, rather than skip: a GPU run counts skips.
TEST_F(DocClaims, LogLevelErrorReportsAFailedCudaContext) {
    const char *lvl = std::getenv("FLX_LOG_LEVEL");
    if (!lvl || std::string(lvl) != "error") {
        char self[4096];
        const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        ASSERT_GT(n, 0);
        self[n] = '\0';
        const std::string cmd = std::string("FLX_LOG_LEVEL=error '") + self +
                                "' --gtest_filter=DocClaims.LogLevelErrorReportsAFailedCudaContext 2>&1";
        FILE *p = popen(cmd.c_str(), "r");
        ASSERT_NE(p, nullptr);
        std::string out;
        char buf[512];
        while (std::fgets(buf, sizeof buf, p)) out += buf;
        const int rc = pclose(p);
        EXPECT_EQ(rc, 0) << out;
        EXPECT_NE(out.find("[  PASSED  ] 1 test"), std::string::npos) << out;
        return;
    }
    ::testing::internal::CaptureStderr();
    flx_ctx *c = flx_ctx_create(flx_device_cuda(1000));
    std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(c, nullptr);
    EXPECT_NE(flx_last_status(), FLX_OK);
    EXPECT_NE(err.find("fluxion[error]: flx_ctx_create"), std::string::npos) << err;
    flx_clear_error();
    // A successful creation is info, not error: nothing is printed at this level.
    ::testing::internal::CaptureStderr();
    flx_ctx *ok = flx_ctx_create(flx_device_cpu());
    err = ::testing::internal::GetCapturedStderr();
    ASSERT_NE(ok, nullptr);
    EXPECT_EQ(err, "");
    EXPECT_EQ(flx_ctx_destroy(ok), FLX_OK);
}

}  // namespace
