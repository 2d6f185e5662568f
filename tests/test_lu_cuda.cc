// test_lu_cuda.cc — the CUDA small-matrix solve kernels (kernels/lu_small.cu) against the CPU
// reference, along every code path of the staged register kernel (n <= 8) and its neighbours
// (the block kernel for 9 <= n <= 16): straight from A (forward only: no packed factors) and from
// the packed factors (a gradient flows), plain and transposed (the VJP solves with A^-T), with one
// right-hand side, a few, and more than one shared-memory chunk holds; batches that do not fill
// the last block (f32 blocks of 128 matrices, f64 of 64); inverses (the identity generated in the
// kernel); and singular matrices, whose error word and info must match the CPU's.
#include "testing.h"

#include <cmath>
#include <string>
#include <vector>

namespace {

using flxt::close;
using flxt::rand_values;
using flxt::values;

using LuSolveCuda = flxt::CudaCpuTest;

// Diagonally dominant (batch, n, n) values: A = 2 I + R / n, R uniform in [-1, 1).
std::vector<double> dominant(int64_t batch, int64_t n, uint64_t seed) {
    std::vector<double> a = rand_values((size_t)(batch * n * n), seed);
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) {
                double &v = a[(size_t)((b * n + i) * n + j)];
                v = v / (double)n + (i == j ? 2.0 : 0.0);
            }
    return a;
}

std::string trace(flx_dtype dt, int64_t batch, int64_t n, int64_t k) {
    return std::string(flx_dtype_name(dt)) + " batch " + std::to_string(batch) + " n " +
           std::to_string(n) + " k " + std::to_string(k);
}

// flx_solve and its gradient with respect to A and B (through sin, so the cotangent is not
// uniform): the packed factors, a plain solve forward and a transposed one backward.
flx_tensor *solve_grads(flx_tensor *A, flx_tensor *B) {
    flx_set_requires_grad(A, true);
    flx_set_requires_grad(B, true);
    flx_tensor *in[2] = {A, B}, *g[2] = {nullptr, nullptr};
    flx_tensor *x = flx_solve(A, B), *loss = flx_sum_all(flx_sin(x));
    if (flx_grad_of(1, &loss, nullptr, 2, in, false, g) != FLX_OK) return nullptr;
    int32_t axes[1] = {-1};
    flx_tensor *gb = flx_sum(g[1], 1, axes, true); // (batch, n, 1)
    flx_tensor *parts[3] = {x, g[0], gb};
    return flx_concat(3, parts, -1);
}

TEST_F(LuSolveCuda, SmallSolvePathsMatchCpu) {
    const int64_t batches[] = {1, 131};
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        const double tol = dt == FLX_F64 ? 1e-10 : 1e-3;
        for (int64_t n = 1; n <= 16; n++)
            for (int64_t batch : batches)
                for (int64_t k : {1, 3, 20}) { // 20: more columns than one chunk at every n <= 8
                    SCOPED_TRACE(trace(dt, batch, n, k));
                    flx_tensor *Ac = flxt::make(cpu, dt, {batch, n, n}, dominant(batch, n, 100 + n));
                    flx_tensor *Bc = flxt::rand_tensor(cpu, dt, {batch, n, k}, 200 + k);
                    flx_tensor *vc = flxt::rand_tensor(cpu, dt, {batch, n}, 300 + n);
                    flx_tensor *Ag = flx_to_ctx(Ac, gpu), *Bg = flx_to_ctx(Bc, gpu), *vg = flx_to_ctx(vc, gpu);
                    ASSERT_TRUE(Ac && Bc && vc && Ag && Bg && vg) << flx_last_error();
                    auto both = [&](const char *what, flx_tensor *rc, flx_tensor *rg) {
                        SCOPED_TRACE(what);
                        ASSERT_TRUE(rc && rg) << flx_last_error();
                        EXPECT_TRUE(close(values(rg), values(rc), tol, tol));
                    };
                    // Forward only: straight from A.
                    both("solve", flx_solve(Ac, Bc), flx_solve(Ag, Bg));
                    both("solve vector", flx_solve(Ac, vc), flx_solve(Ag, vg));
                    if (k == 1) both("inv", flx_inv(Ac), flx_inv(Ag));
                    // From the packed factors: values and gradients (transposed solves).
                    both("solve + grads", solve_grads(Ac, Bc), solve_grads(Ag, Bg));
                    if (k == 1) {
                        flx_tensor *ic = nullptr, *ig = nullptr;
                        both("inv_ex", flx_inv_ex(Ac, &ic), flx_inv_ex(Ag, &ig));
                        both("info", ic, ig);
                    }
                }
    }
    EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_OK) << flx_last_error();
}

// Singular matrices (a zero column) among nonsingular ones, in the first and in a later,
// partial block: flx_solve raises the singular error word at the next synchronisation point on
// both paths (straight from A, and from the factors), and flx_solve_ex's info matches the CPU's.
TEST_F(LuSolveCuda, SingularMatricesRaiseTheErrorWord) {
    for (flx_dtype dt : {FLX_F32, FLX_F64})
        for (int64_t n : {1, 2, 5, 8, 12}) {
            const int64_t batch = 131;
            SCOPED_TRACE(trace(dt, batch, n, 2));
            std::vector<double> a = dominant(batch, n, 500 + n);
            for (int64_t b : {(int64_t)5, (int64_t)130}) {
                const int64_t zc = (b + 1) % n;
                for (int64_t i = 0; i < n; i++) a[(size_t)((b * n + i) * n + zc)] = 0.0;
            }
            flx_tensor *Ac = flxt::make(cpu, dt, {batch, n, n}, a), *Ag = flx_to_ctx(Ac, gpu);
            flx_tensor *Bc = flxt::rand_tensor(cpu, dt, {batch, n, 2}, 600), *Bg = flx_to_ctx(Bc, gpu);
            ASSERT_TRUE(Ac && Ag && Bc && Bg) << flx_last_error();
            for (bool grad : {false, true}) {
                SCOPED_TRACE(grad ? "from the factors" : "straight from A");
                flx_set_requires_grad(Ag, grad);
                flx_tensor *x = flx_solve(Ag, Bg);
                ASSERT_NE(x, nullptr) << flx_last_error();
                EXPECT_EQ(flx_eval(1, &x), FLX_OK);
                EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_ERR_NUMERIC);
                EXPECT_NE(std::string(flx_last_error()).find("singular"), std::string::npos) << flx_last_error();
                flx_clear_error();
                EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_OK) << "the error word was not cleared";
            }
            flx_tensor *ic = nullptr, *ig = nullptr;
            ASSERT_NE(flx_solve_ex(Ac, Bc, &ic), nullptr) << flx_last_error();
            ASSERT_NE(flx_solve_ex(Ag, Bg, &ig), nullptr) << flx_last_error();
            std::vector<double> info = values(ig);
            EXPECT_TRUE(close(info, values(ic), 0, 0));
            EXPECT_GT(info[5], 0);
            EXPECT_GT(info[130], 0);
            EXPECT_EQ(info[0], 0);
        }
}

}  // namespace
