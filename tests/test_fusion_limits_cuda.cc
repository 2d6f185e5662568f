// test_fusion_limits_cuda.cc — the fused elementwise kernel (kernels/elementwise.cu) on both sides
// of its 32-bit limit: just under 2^31 elements it runs on the compact parameter block (32-bit
// sizes, FastDiv index math up to its largest dividends), from 2^31 elements on on the full
// flx_fused_args block (64-bit index math). The program is y = relu(r + c) over an R x C index
// space, r (R, 1) and c (1, C) broadcast (both read through strides, one of them 0 per axis);
// small integers keep every value exact in f32, so rows at the start and at the end of y are
// checked against the formula. y alone is 8 GB: the test skips when the GPU cannot hold it.
#include "testing.h"

#include <algorithm>
#include <string>
#include <vector>

namespace {

using flxt::values;

using FusionLimitsCuda = flxt::CudaCpuTest;

TEST_F(FusionLimitsCuda, CompactAndFullParameterBlocksIndexEveryElement) {
    const int64_t C = 1024;
    bool fusion = false;
    ASSERT_EQ(flx_get_fusion(gpu, &fusion), FLX_OK);
    if (!fusion) GTEST_SKIP() << "fusion is off on the CUDA context (FLX_FUSION=0)";
    // n = 2^31 - 1024 (compact block) and n = 2^31 + 1024 (full block).
    for (int64_t R : {((int64_t)1 << 21) - 1, ((int64_t)1 << 21) + 1}) {
        SCOPED_TRACE("R " + std::to_string(R) + " x C " + std::to_string(C));
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        std::vector<double> rv((size_t)R), cv((size_t)C);
        for (int64_t i = 0; i < R; i++) rv[(size_t)i] = (double)(i % 13) - 6;
        for (int64_t j = 0; j < C; j++) cv[(size_t)j] = (double)(j % 11) - 5;
        flx_tensor *r = flxt::make(gpu, FLX_F32, {R, 1}, rv), *c = flxt::make(gpu, FLX_F32, {1, C}, cv);
        flx_tensor *y = flx_relu(flx_add(r, c));
        ASSERT_TRUE(r && c && y) << flx_last_error();
        ASSERT_EQ(flx_eval(1, &r), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_eval(1, &c), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_ctx_reset_stats(gpu), FLX_OK);
        flx_status s = flx_eval(1, &y);
        if (s == FLX_ERR_OUT_OF_MEMORY) {
            std::string why = flx_last_error();
            flx_clear_error();
            EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
            GTEST_SKIP() << "the GPU cannot hold the 8 GB result: " << why;
        }
        ASSERT_EQ(s, FLX_OK) << flx_last_error();
        EXPECT_EQ(flxt::ctx_stats(gpu).kernels, 1u) << "add + relu must run as one fused kernel";
        for (int64_t r0 : {(int64_t)0, R - 3}) {
            flx_tensor *rows = flx_slice(y, 0, r0, r0 + 3, 1);
            ASSERT_NE(rows, nullptr) << flx_last_error();
            std::vector<double> want;
            for (int64_t i = r0; i < r0 + 3; i++)
                for (int64_t j = 0; j < C; j++) want.push_back(std::max(0.0, rv[(size_t)i] + cv[(size_t)j]));
            EXPECT_EQ(values(rows), want) << "rows " << r0 << " .. " << r0 + 2;
        }
        EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
}

}  // namespace
