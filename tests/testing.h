// testing.h — helpers shared by the GoogleTest suites: contexts, host conversion, closeness
// checks, gradcheck over C++ lambdas, and a fixture that fails on leaked tensors.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "fluxion/fluxion.h"

namespace flxt {

using Shape = std::vector<int64_t>;
using Fn = std::function<flx_tensor *(const std::vector<flx_tensor *> &)>;

// Number of elements of a shape (1 for a scalar).
inline int64_t numel_of(const Shape &s) {
    int64_t n = 1;
    for (int64_t v : s) n *= v;
    return n;
}
// Tensor from host values (converted to dt).
flx_tensor *make(flx_ctx *ctx, flx_dtype dt, const Shape &shape, const std::vector<double> &v);
// Deterministic pseudo-random values in [lo, hi).
std::vector<double> rand_values(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0);
flx_tensor *rand_tensor(flx_ctx *ctx, flx_dtype dt, const Shape &shape, uint64_t seed,
                        double lo = -1.0, double hi = 1.0);
// Host copy of a tensor's values as doubles (any dtype); fails the test on error.
std::vector<double> values(flx_tensor *t);
Shape shape_of(const flx_tensor *t);
// Element-wise closeness: |a - e| <= atol + rtol |e|, NaNs must match.
::testing::AssertionResult close(const std::vector<double> &actual,
                                 const std::vector<double> &expected, double atol = 1e-12,
                                 double rtol = 1e-12);
// flx_gradcheck over a lambda (inputs must be f64).
flx_status gradcheck(const Fn &fn, const std::vector<flx_tensor *> &inputs, double eps = 1e-6,
                     double atol = 1e-7, double rtol = 1e-6, uint64_t seed = 7);
// Forward mode check of fn at inputs (f64): for random tangents v, flx_jvp must match the
// central difference (fn(x + eps v) - fn(x - eps v)) / (2 eps) entrywise, and for a random
// cotangent u the dot-product identity <u, J v> = <J^T u, v> must hold (VJP from flx_grad_of).
::testing::AssertionResult jvp_check(const Fn &fn, const std::vector<flx_tensor *> &inputs,
                                     double eps = 1e-6, double atol = 1e-7, double rtol = 1e-6,
                                     uint64_t seed = 11);
// One row of a derivative table: a named function of tensors and the (f64) inputs to check it at.
struct FnCase {
    const char *name;
    Fn f;
    std::vector<flx_tensor *> in;
};
// gradcheck and jvp_check, with the same tolerances, at every row (each traced by its name).
void check_derivatives(const std::vector<FnCase> &cases, double eps = 1e-6, double atol = 1e-7,
                       double rtol = 1e-6);
// Grad mode on for the lifetime of the object, whatever the caller's mode (gradcheck and
// jvp_check evaluate their finite-difference points in no-grad mode; functions that take
// gradients inside, for second-order checks, need it back on).
struct GradOn {
    int depth = 0;
    GradOn() {
        while (!flx_grad_enabled()) {
            flx_no_grad_end();
            depth++;
        }
    }
    ~GradOn() {
        for (int i = 0; i < depth; i++) flx_no_grad_begin();
    }
};
// Marks inputs as requiring grad (a no-op for those that already do).
inline void need_grad(const std::vector<flx_tensor *> &in) {
    for (flx_tensor *t : in)
        if (!flx_requires_grad(t)) flx_set_requires_grad(t, true);
}

// Expects a NULL result with the given status, and that the message names `needle`.
::testing::AssertionResult fails_with(flx_tensor *t, flx_status status, const char *needle);

// flx_plan_get_info of p (a failure is reported, and the info is then all zero).
flx_plan_info plan_info(flx_plan *p);
// flx_ctx_get_stats of ctx (a failure is reported, and the stats are then all zero).
flx_ctx_stats ctx_stats(flx_ctx *ctx);
// The stored bytes of t (flx_to_host): equal vectors mean bit-identical values, NaNs and signed
// zeros included.
std::vector<unsigned char> raw_bits(flx_tensor *t);

// A CUDA context on device 0, or nullptr when no GPU is usable (the caller skips).
flx_ctx *cuda_ctx_or_null(std::string *why);

// Runs body on a CUDA context inside a tensor scope; without a GPU the test is skipped (or fails
// under FLX_REQUIRE_GPU=1) as with FLX_REQUIRE_CUDA.
void on_cuda(const std::function<void(flx_ctx *)> &body);

// Fixture: a CPU context, a scope around each test, and a leak check at the end.
class CpuTest : public ::testing::Test {
  protected:
    void SetUp() override;
    void TearDown() override;
    flx_ctx *ctx = nullptr;
    int64_t live_before = 0;
};

// Fixture of the GPU tests checked against the CPU reference: skipped without a GPU (a failure
// under FLX_REQUIRE_GPU=1, as FLX_REQUIRE_CUDA); gpu is the shared CUDA context, cpu a CPU context
// of the test's own, the test body runs inside one tensor scope, and a leak fails the test. The
// shared context's fusion and math mode are put back as they were after each test.
class CudaCpuTest : public ::testing::Test {
  protected:
    void SetUp() override;
    void TearDown() override;
    flx_ctx *gpu = nullptr, *cpu = nullptr;
    int64_t live_before = 0;

  private:
    bool scoped_ = false;
    bool gpu_fusion_ = true;
    int32_t gpu_math_ = FLX_MATH_STRICT;
};

// CpuTest plus a communicator over the process's world (one rank without a launcher).
class CommTest : public CpuTest {
  protected:
    void SetUp() override;
    void TearDown() override;
    flx_comm *comm = nullptr;
    int rank = 0, size = 0;
};

// What rank r contributes to a collective in the tests: n smooth values, distinct across ranks.
std::vector<double> rank_values(int r, size_t n);

// The all-reductions of rank_values(r, n) over ranks 0..size-1, each value first rounded to dt
// (F32 or F64: the dtype every rank uploads it in), in float64.
struct RankReduction {
    std::vector<double> sum, avg, max, min;
};
RankReduction reduce_rank_values(int size, size_t n, flx_dtype dt);

}  // namespace flxt

// Skips a CUDA test with the reason when no GPU is present, unless FLX_REQUIRE_GPU=1 makes
// that a failure (so a GPU run cannot pass by skipping).
#define FLX_REQUIRE_CUDA(ctxvar)                                                  \
    std::string flx_why_;                                                         \
    flx_ctx *ctxvar = flxt::cuda_ctx_or_null(&flx_why_);                          \
    if (!ctxvar) {                                                                \
        const char *req_ = std::getenv("FLX_REQUIRE_GPU");                        \
        if (req_ && std::string(req_) == "1") FAIL() << "GPU required: " << flx_why_; \
        GTEST_SKIP() << "no CUDA GPU: " << flx_why_;                              \
    }
