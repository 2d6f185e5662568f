// test_lu_cuda.cc — the CUDA small-matrix solve kernels (kernels/lu_small.cu) against the CPU
// reference, along every code path of the staged register kernel (n <= 8) and its neighbours
// (the block kernel for 9 <= n <= 16): straight from A (no packed factors: forward only, or any
// n <= 8) and from the packed factors (the _ex forms, a gradient through n > 8, the VJP's solves
// with A^-T), plain and transposed, with one right-hand side, a few, and more than one
// shared-memory chunk holds; batches that do not fill the last block (f32 blocks of 128
// matrices, f64 of 64); inverses (the identity generated in the kernel); and singular matrices,
// whose error word and info must match the CPU's. Then the det / log|det| gradient kernel (g cof(A)
// or g A^-T in registers, n <= 8) and the factor path above it: values, one kernel, exact
// cofactors at singular A, and second derivatives.
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

std::string mtrace(flx_dtype dt, int64_t batch, int64_t n) {
    return std::string(flx_dtype_name(dt)) + " batch " + std::to_string(batch) + " n " + std::to_string(n);
}

std::string trace(flx_dtype dt, int64_t batch, int64_t n, int64_t k) {
    return mtrace(dt, batch, n) + " k " + std::to_string(k);
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
                    // Values and gradients: the VJP solves with A^-T from packed factors.
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
// partial block: flx_solve raises the singular error word at the next synchronisation point with
// and without a gradient (straight from A; from the factors at n = 12 with one), and
// flx_solve_ex's info matches the CPU's.
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
                SCOPED_TRACE(grad ? "a gradient may flow (factors stored for n > 8)" : "no gradient");
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

// Two equal rows (random values): the register LU's multipliers are correctly rounded quotients,
// as the CPU's, so the second row cancels to the exact zero pivot the CPU finds (with
// x * (1 / x), which misses 1 for about one x in seven, most of these matrices would keep a pivot
// of rounding size): det is exactly 0, flx_solve raises the singular error word, and
// flx_solve_ex's info matches the CPU's.
TEST_F(LuSolveCuda, EqualRowsGiveAnExactZeroPivot) {
    for (flx_dtype dt : {FLX_F32, FLX_F64})
        for (int64_t n : {2, 3, 5, 8}) {
            const int64_t batch = 70;
            SCOPED_TRACE(mtrace(dt, batch, n));
            std::vector<double> a = dominant(batch, n, 800 + n);
            for (int64_t b = 0; b < batch; b++) {
                const int64_t r0 = b % n, r1 = (r0 + 1 + (b / n) % (n - 1)) % n; // r1 != r0
                for (int64_t j = 0; j < n; j++) a[(size_t)((b * n + r1) * n + j)] = a[(size_t)((b * n + r0) * n + j)];
            }
            flx_tensor *Ac = flxt::make(cpu, dt, {batch, n, n}, a), *Ag = flx_to_ctx(Ac, gpu);
            flx_tensor *Bc = flxt::rand_tensor(cpu, dt, {batch, n, 1}, 801), *Bg = flx_to_ctx(Bc, gpu);
            ASSERT_TRUE(Ac && Ag && Bc && Bg) << flx_last_error();
            EXPECT_EQ(values(flx_det(Ag)), std::vector<double>((size_t)batch, 0.0));
            flx_tensor *ic = nullptr, *ig = nullptr;
            ASSERT_NE(flx_solve_ex(Ac, Bc, &ic), nullptr) << flx_last_error();
            ASSERT_NE(flx_solve_ex(Ag, Bg, &ig), nullptr) << flx_last_error();
            std::vector<double> info = values(ig);
            EXPECT_EQ(info, values(ic));
            for (double v : info) EXPECT_GT(v, 0);
            flx_tensor *x = flx_solve(Ag, Bg);
            ASSERT_NE(x, nullptr) << flx_last_error();
            EXPECT_EQ(flx_eval(1, &x), FLX_OK);
            EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_ERR_NUMERIC);
            flx_clear_error();
            EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_OK) << "the error word was not cleared";
        }
}

// dominant() with the first row of every odd matrix negated: negative determinants too.
std::vector<double> signed_dominant(int64_t batch, int64_t n, uint64_t seed) {
    std::vector<double> a = dominant(batch, n, seed);
    for (int64_t b = 1; b < batch; b += 2)
        for (int64_t j = 0; j < n; j++) a[(size_t)(b * n * n + j)] *= -1;
    return a;
}

// The gradient of <W, f(A)> for f = det (0), log|det| (1), log det (2), flattened, followed by
// the values f(A).
flx_tensor *det_and_grad(flx_tensor *A, flx_tensor *W, int which) {
    flx_set_requires_grad(A, true);
    flx_tensor *y = nullptr, *s = nullptr, *g = nullptr;
    if (which == 0) y = flx_det(A);
    else if (which == 2) y = flx_logdet(A);
    else if (flx_slogdet(A, &s, &y) != FLX_OK) return nullptr;
    if (!y || flx_grad_of(1, &y, &W, 1, &A, false, &g) != FLX_OK) return nullptr;
    const int64_t ng = flx_numel(g), ny = flx_numel(y);
    flx_tensor *parts[2] = {flx_reshape(g, 1, &ng), flx_reshape(y, 1, &ny)};
    return flx_concat(2, parts, 0);
}

using DetGradCuda = flxt::CudaCpuTest;

// Every register instantiation (n = 1..8, f32 and f64), the factor path at n = 9, one matrix,
// a batch that ends in a partial block and one of several blocks: value and gradient of det,
// log|det| and log det against the CPU; the gradient alone is one kernel up to n = 8.
TEST_F(DetGradCuda, DetGradientsMatchCpu) {
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        const double tol = dt == FLX_F64 ? 1e-10 : 2e-4;
        for (int64_t n = 1; n <= 9; n++)
            for (int64_t batch : {(int64_t)1, (int64_t)131, (int64_t)300})
                for (int which : {0, 1, 2}) {
                    SCOPED_TRACE(mtrace(dt, batch, n) + (which == 0 ? " det" : which == 1 ? " log|det|" : " logdet"));
                    std::vector<double> a = which == 2 ? dominant(batch, n, 700 + n) : signed_dominant(batch, n, 700 + n);
                    flx_tensor *Ac = flxt::make(cpu, dt, {batch, n, n}, a);
                    flx_tensor *Wc = flxt::rand_tensor(cpu, dt, {batch}, 800 + n, 0.5, 1.5);
                    flx_tensor *Ag = flx_to_ctx(Ac, gpu), *Wg = flx_to_ctx(Wc, gpu);
                    ASSERT_TRUE(Ac && Wc && Ag && Wg) << flx_last_error();
                    flx_tensor *rc = det_and_grad(Ac, Wc, which), *rg = det_and_grad(Ag, Wg, which);
                    ASSERT_TRUE(rc && rg) << flx_last_error();
                    EXPECT_TRUE(close(values(rg), values(rc), tol, tol));
                    if (n <= 8) {
                        flx_tensor *A2 = flx_to_ctx(Ac, gpu), *g = nullptr;
                        flx_set_requires_grad(A2, true);
                        flx_tensor *y = which == 0 ? flx_det(A2) : flx_logdet(A2);
                        ASSERT_EQ(flx_grad_of(1, &y, &Wg, 1, &A2, false, &g), FLX_OK) << flx_last_error();
                        ASSERT_EQ(flx_eval(1, &A2), FLX_OK);
                        ASSERT_EQ(flx_ctx_reset_stats(gpu), FLX_OK);
                        ASSERT_EQ(flx_eval(1, &g), FLX_OK) << flx_last_error();
                        flx_ctx_stats st{};
                        ASSERT_EQ(flx_ctx_get_stats(gpu, &st), FLX_OK);
                        EXPECT_EQ(st.kernels, 1u);
                    }
                }
    }
    EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_OK) << flx_last_error();
}

// Singular matrices (a zero column, two equal rows, two zero rows) among nonsingular ones: the
// division-free kernel gives the CPU's adjugate, finite, in every block position.
TEST_F(DetGradCuda, CofactorsOfSingularMatricesMatchCpu) {
    for (flx_dtype dt : {FLX_F32, FLX_F64})
        for (int64_t n = 2; n <= 8; n++) {
            const int64_t batch = 131;
            SCOPED_TRACE(mtrace(dt, batch, n));
            std::vector<double> a = signed_dominant(batch, n, 900 + n);
            for (int64_t b : {(int64_t)0, (int64_t)64, (int64_t)130}) {
                double *m = &a[(size_t)(b * n * n)];
                for (int64_t i = 0; i < n; i++) {
                    if (b == 0) m[i * n + (n - 1) / 2] = 0;             // zero column
                    if (b == 64) m[(n - 1) * n + i] = m[i];              // equal rows
                    if (b == 130 && n > 2) m[i] = m[n + i] = 0;          // rank n - 2
                }
            }
            // Small integers: the f32 and f64 LUs meet the same exact zero pivots.
            for (double &x : a) x = std::round(4 * x);
            flx_tensor *Ac = flxt::make(cpu, dt, {batch, n, n}, a), *Ag = flx_to_ctx(Ac, gpu);
            flx_tensor *Wc = flxt::rand_tensor(cpu, dt, {batch}, 901), *Wg = flx_to_ctx(Wc, gpu);
            ASSERT_TRUE(Ac && Ag && Wc && Wg) << flx_last_error();
            flx_tensor *rc = det_and_grad(Ac, Wc, 0), *rg = det_and_grad(Ag, Wg, 0);
            ASSERT_TRUE(rc && rg) << flx_last_error();
            std::vector<double> vc = values(rc), vg = values(rg);
            double scale = 1;
            for (double x : vc) scale = std::fmax(scale, std::fabs(x));
            for (double x : vg) EXPECT_TRUE(std::isfinite(x));
            EXPECT_TRUE(close(vg, vc, (dt == FLX_F64 ? 1e-12 : 1e-5) * scale, 0));
        }
}

// Second derivatives run the node's rules on the GPU (factors, solves, the node without g):
// Hessian-vector products of det and log|det| against the CPU, reverse over reverse.
TEST_F(DetGradCuda, HessianVectorProductsMatchCpu) {
    for (int64_t n : {3, 8}) {
        const int64_t batch = 70;
        std::vector<double> a = signed_dominant(batch, n, 950 + n);
        for (int which : {0, 1}) {
            SCOPED_TRACE(mtrace(FLX_F64, batch, n) + (which == 0 ? " det" : " log|det|"));
            auto hvp = [&](flx_ctx *c) -> flx_tensor * {
                flx_tensor *A = flxt::make(c, FLX_F64, {batch, n, n}, a);
                flx_tensor *V = flxt::rand_tensor(c, FLX_F64, {batch, n, n}, 960);
                flx_set_requires_grad(A, true);
                flx_tensor *s = nullptr, *y = nullptr, *g = nullptr, *h = nullptr;
                if (which == 0) y = flx_det(A);
                else if (flx_slogdet(A, &s, &y) != FLX_OK) return nullptr;
                flx_tensor *L = flx_sum_all(y);
                if (flx_grad_of(1, &L, nullptr, 1, &A, true, &g) != FLX_OK) return nullptr;
                flx_tensor *gv = flx_sum_all(flx_mul(g, V));
                if (flx_grad_of(1, &gv, nullptr, 1, &A, false, &h) != FLX_OK) return nullptr;
                return h;
            };
            flx_tensor *hc = hvp(cpu), *hg = hvp(gpu);
            ASSERT_TRUE(hc && hg) << flx_last_error();
            EXPECT_TRUE(close(values(hg), values(hc), 1e-9, 1e-9));
        }
    }
}

// More matrices than one grid holds (grid_for caps it at 32 blocks per SM, of 128 f32 or 64 f64
// matrices each; 2^20 + 37 matrices outnumber that on GPUs of up to 256 SMs), so the slab loop of
// every small kernel runs again over shared memory its last pass used: det and its gradient,
// log|det|'s gradient, the inverse straight from A, and a solve with info from the packed
// factors, against the CPU.
TEST_F(DetGradCuda, BatchesBeyondOneGridMatchCpu) {
    const int64_t batch = ((int64_t)1 << 20) + 37;
    for (flx_dtype dt : {FLX_F32, FLX_F64}) {
        const int64_t n = dt == FLX_F32 ? 3 : 2;
        SCOPED_TRACE(mtrace(dt, batch, n));
        const double tol = dt == FLX_F64 ? 1e-10 : 2e-4;
        flx_tensor *Ac = flxt::make(cpu, dt, {batch, n, n}, signed_dominant(batch, n, 1000 + n));
        flx_tensor *Wc = flxt::rand_tensor(cpu, dt, {batch}, 1001, 0.5, 1.5);
        flx_tensor *Bc = flxt::rand_tensor(cpu, dt, {batch, n, 2}, 1002);
        flx_tensor *Ag = flx_to_ctx(Ac, gpu), *Wg = flx_to_ctx(Wc, gpu), *Bg = flx_to_ctx(Bc, gpu);
        ASSERT_TRUE(Ac && Wc && Bc && Ag && Wg && Bg) << flx_last_error();
        for (int which : {0, 1}) {
            SCOPED_TRACE(which == 0 ? "det" : "log|det|");
            flx_tensor *rc = det_and_grad(Ac, Wc, which), *rg = det_and_grad(Ag, Wg, which);
            ASSERT_TRUE(rc && rg) << flx_last_error();
            EXPECT_TRUE(close(values(rg), values(rc), tol, tol));
        }
        EXPECT_TRUE(close(values(flx_inv(Ag)), values(flx_inv(Ac)), tol, tol)) << "inv";
        flx_tensor *ic = nullptr, *ig = nullptr;
        flx_tensor *xc = flx_solve_ex(Ac, Bc, &ic), *xg = flx_solve_ex(Ag, Bg, &ig);
        ASSERT_TRUE(xc && xg && ic && ig) << flx_last_error();
        EXPECT_TRUE(close(values(xg), values(xc), tol, tol)) << "solve_ex";
        EXPECT_EQ(values(ig), values(ic));
    }
    EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_OK) << flx_last_error();
}

// Empty batches and 0 x 0 matrices: det 1 (log|det| and log det 0) per 0 x 0 matrix, empty
// gradients, and no launch of an empty grid (the context's error word stays clear).
TEST_F(DetGradCuda, EmptyBatchesAndEmptyMatrices) {
    for (flx_dtype dt : {FLX_F32, FLX_F64})
        for (flxt::Shape s : {flxt::Shape{0, 3, 3}, flxt::Shape{2, 0, 0}, flxt::Shape{0, 0}}) {
            flxt::Shape bs(s.begin(), s.end() - 2);
            const int64_t nb = flxt::numel_of(bs), n = s.back();
            for (int which : {0, 1, 2}) {
                SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " batch " + std::to_string(nb) + " n " +
                             std::to_string(n) + " which " + std::to_string(which));
                flx_tensor *A = flx_zeros(gpu, dt, (int32_t)s.size(), s.data());
                flx_tensor *W = flx_ones(gpu, dt, (int32_t)bs.size(), bs.data());
                flx_tensor *r = det_and_grad(A, W, which); // the empty gradient, then f(A)
                ASSERT_NE(r, nullptr) << flx_last_error();
                std::vector<double> want(n == 0 ? (size_t)nb : 0, which == 0 ? 1.0 : 0.0);
                EXPECT_EQ(values(r), want);
            }
        }
    EXPECT_EQ(flx_ctx_synchronize(gpu), FLX_OK) << flx_last_error();
}

}  // namespace
