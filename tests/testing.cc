#include "testing.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace flxt {

flx_tensor *make(flx_ctx *ctx, flx_dtype dt, const Shape &shape, const std::vector<double> &v) {
    size_t n = 1;
    for (int64_t s : shape) n *= (size_t)s;
    EXPECT_EQ(n, v.size()) << "make: value count does not match the shape";
    if (dt == FLX_F16 || dt == FLX_BF16) /* rounded to nearest even by the library's cast */
        return flx_from_host_as(ctx, dt, (int32_t)shape.size(), shape.data(), FLX_F64, v.data());
    std::vector<unsigned char> buf(n * flx_dtype_size(dt) + 1);
    for (size_t i = 0; i < n; i++) {
        switch (dt) {
        case FLX_F32: ((float *)buf.data())[i] = (float)v[i]; break;
        case FLX_F64: ((double *)buf.data())[i] = v[i]; break;
        case FLX_I32: ((int32_t *)buf.data())[i] = (int32_t)v[i]; break;
        case FLX_I64: ((int64_t *)buf.data())[i] = (int64_t)v[i]; break;
        case FLX_BOOL: buf[i] = v[i] != 0; break;
        default: break;
        }
    }
    return flx_from_host(ctx, dt, (int32_t)shape.size(), shape.data(), buf.data());
}

std::vector<double> rand_values(size_t n, uint64_t seed, double lo, double hi) {
    std::vector<double> v(n);
    uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 33;
        s *= 0xff51afd7ed558ccdull;
        s ^= s >> 33;
        s += 0x9e3779b97f4a7c15ull;
        v[i] = lo + (hi - lo) * (double)(s >> 11) / 9007199254740992.0;
    }
    return v;
}

flx_tensor *rand_tensor(flx_ctx *ctx, flx_dtype dt, const Shape &shape, uint64_t seed, double lo,
                        double hi) {
    size_t n = 1;
    for (int64_t s : shape) n *= (size_t)s;
    return make(ctx, dt, shape, rand_values(n, seed, lo, hi));
}

std::vector<double> values(flx_tensor *t) {
    if (!t) {
        ADD_FAILURE() << "values: NULL tensor: " << flx_last_error();
        return {};
    }
    int64_t n = flx_numel(t);
    flx_dtype dt = flx_dtype_of(t);
    if (dt == FLX_F16 || dt == FLX_BF16) { /* exact in double */
        std::vector<double> v((size_t)n);
        if (flx_to_host_as(t, FLX_F64, v.data(), v.size() * sizeof(double)) != FLX_OK) {
            ADD_FAILURE() << "flx_to_host_as failed: " << flx_last_error();
            return {};
        }
        return v;
    }
    std::vector<unsigned char> buf((size_t)n * flx_dtype_size(dt) + 8);
    flx_status s = flx_to_host(t, buf.data(), buf.size());
    if (s != FLX_OK) {
        ADD_FAILURE() << "flx_to_host failed: " << flx_last_error();
        return {};
    }
    std::vector<double> v((size_t)n);
    for (int64_t i = 0; i < n; i++) {
        switch (dt) {
        case FLX_F32: v[i] = ((float *)buf.data())[i]; break;
        case FLX_F64: v[i] = ((double *)buf.data())[i]; break;
        case FLX_I32: v[i] = ((int32_t *)buf.data())[i]; break;
        case FLX_I64: v[i] = (double)((int64_t *)buf.data())[i]; break;
        case FLX_BOOL: v[i] = buf[i]; break;
        default: break;
        }
    }
    return v;
}

Shape shape_of(const flx_tensor *t) {
    const int64_t *s = flx_shape(t);
    return s ? Shape(s, s + flx_ndim(t)) : Shape{};
}

::testing::AssertionResult close(const std::vector<double> &a, const std::vector<double> &e,
                                 double atol, double rtol) {
    if (a.size() != e.size())
        return ::testing::AssertionFailure() << "size " << a.size() << " != expected " << e.size();
    for (size_t i = 0; i < a.size(); i++) {
        bool ok = (std::isnan(a[i]) && std::isnan(e[i])) || (a[i] == e[i]) ||
                  std::fabs(a[i] - e[i]) <= atol + rtol * std::fabs(e[i]);
        if (!ok)
            return ::testing::AssertionFailure()
                   << "at " << i << ": got " << a[i] << ", expected " << e[i] << " (diff "
                   << std::fabs(a[i] - e[i]) << ")";
    }
    return ::testing::AssertionSuccess();
}

static flx_tensor *call_fn(int32_t n, flx_tensor *const *in, void *user) {
    const Fn &fn = *static_cast<const Fn *>(user);
    return fn(std::vector<flx_tensor *>(in, in + n));
}

flx_status gradcheck(const Fn &fn, const std::vector<flx_tensor *> &inputs, double eps,
                     double atol, double rtol, uint64_t seed) {
    return flx_gradcheck(call_fn, const_cast<Fn *>(&fn), (int32_t)inputs.size(), inputs.data(),
                         eps, atol, rtol, seed, nullptr);
}

::testing::AssertionResult jvp_check(const Fn &fn, const std::vector<flx_tensor *> &inputs,
                                     double eps, double atol, double rtol, uint64_t seed) {
    if (flx_scope_begin() != FLX_OK) return ::testing::AssertionFailure() << flx_last_error();
    ::testing::AssertionResult res = ::testing::AssertionSuccess();
    size_t n = inputs.size();
    std::vector<flx_tensor *> xs(n), vs(n), xp(n), xm(n);
    std::vector<std::vector<double>> xh(n), vh(n);
    for (size_t j = 0; j < n; j++) {
        xh[j] = values(inputs[j]);
        vh[j] = rand_values(xh[j].size(), seed + 31 * j);
        Shape sh = shape_of(inputs[j]);
        xs[j] = make(flx_ctx_of(inputs[j]), FLX_F64, sh, xh[j]);
        flx_set_requires_grad(xs[j], true);
        vs[j] = make(flx_ctx_of(inputs[j]), FLX_F64, sh, vh[j]);
        std::vector<double> p(xh[j]), m(xh[j]);
        for (size_t e = 0; e < p.size(); e++) {
            p[e] += eps * vh[j][e];
            m[e] -= eps * vh[j][e];
        }
        xp[j] = make(flx_ctx_of(inputs[j]), FLX_F64, sh, p);
        xm[j] = make(flx_ctx_of(inputs[j]), FLX_F64, sh, m);
    }
    flx_tensor *y = fn(xs);
    flx_tensor *jv = nullptr;
    if (!y || flx_jvp((int32_t)n, xs.data(), vs.data(), 1, &y, &jv) != FLX_OK || !jv) {
        res = ::testing::AssertionFailure() << "flx_jvp failed: " << flx_last_error();
    } else {
        std::vector<double> yp, ym, jvh = values(jv);
        flx_no_grad_begin();
        yp = values(fn(xp));
        ym = values(fn(xm));
        flx_no_grad_end();
        std::vector<double> num(jvh.size());
        for (size_t e = 0; e < num.size() && e < yp.size() && e < ym.size(); e++)
            num[e] = (yp[e] - ym[e]) / (2 * eps);
        res = close(jvh, num, atol, rtol);
        if (res && y && flx_requires_grad(y)) {
            std::vector<double> uh = rand_values(jvh.size(), seed + 7);
            flx_tensor *u = make(flx_ctx_of(y), FLX_F64, shape_of(y), uh);
            std::vector<flx_tensor *> g(n);
            if (flx_grad_of(1, &y, &u, (int32_t)n, xs.data(), false, g.data()) != FLX_OK) {
                res = ::testing::AssertionFailure() << "flx_grad_of failed: " << flx_last_error();
            } else {
                double lhs = 0, rhs = 0, scale = 0;
                for (size_t e = 0; e < jvh.size(); e++) lhs += uh[e] * jvh[e];
                for (size_t j = 0; j < n; j++) {
                    std::vector<double> gh = values(g[j]);
                    for (size_t e = 0; e < gh.size(); e++) {
                        rhs += gh[e] * vh[j][e];
                        scale += std::fabs(gh[e] * vh[j][e]);
                    }
                }
                if (std::fabs(lhs - rhs) > 1e-9 * (1 + scale))
                    res = ::testing::AssertionFailure()
                          << "dot-product test: <u, Jv> = " << lhs << " but <J^T u, v> = " << rhs;
            }
        }
    }
    flx_scope_end(0, nullptr);
    return res;
}

::testing::AssertionResult fails_with(flx_tensor *t, flx_status status, const char *needle) {
    if (t) return ::testing::AssertionFailure() << "expected NULL, got a tensor";
    if (flx_last_status() != status)
        return ::testing::AssertionFailure()
               << "status " << flx_status_string(flx_last_status()) << ", expected "
               << flx_status_string(status) << " (" << flx_last_error() << ")";
    if (needle && !std::strstr(flx_last_error(), needle))
        return ::testing::AssertionFailure()
               << "message \"" << flx_last_error() << "\" does not mention \"" << needle << "\"";
    flx_clear_error();
    return ::testing::AssertionSuccess();
}

flx_plan_info plan_info(flx_plan *p) {
    flx_plan_info info{};
    EXPECT_EQ(flx_plan_get_info(p, &info), FLX_OK) << flx_last_error();
    return info;
}

flx_ctx_stats ctx_stats(flx_ctx *ctx) {
    flx_ctx_stats s{};
    EXPECT_EQ(flx_ctx_get_stats(ctx, &s), FLX_OK) << flx_last_error();
    return s;
}

std::vector<unsigned char> raw_bits(flx_tensor *t) {
    std::vector<unsigned char> b((size_t)flx_numel(t) * flx_dtype_size(flx_dtype_of(t)));
    if (b.empty()) return b;
    EXPECT_EQ(flx_to_host(t, b.data(), b.size()), FLX_OK) << flx_last_error();
    return b;
}

flx_ctx *cuda_ctx_or_null(std::string *why) {
    static flx_ctx *ctx = nullptr;
    static bool tried = false;
    static std::string reason;
    if (!tried) {
        tried = true;
        if (!flx_has_cuda()) {
            reason = "this fluxion was built without the CUDA backend";
        } else if (flx_cuda_device_count() == 0) {
            reason = "no usable CUDA device (no GPU or no driver on this machine)";
        } else {
            ctx = flx_ctx_create(flx_device_cuda(0));
            if (!ctx) reason = std::string("flx_ctx_create failed: ") + flx_last_error();
        }
        flx_clear_error();
    }
    if (why) *why = reason;
    return ctx;
}

void check_derivatives(const std::vector<FnCase> &cases, double eps, double atol, double rtol) {
    for (const FnCase &c : cases) {
        SCOPED_TRACE(c.name);
        EXPECT_EQ(gradcheck(c.f, c.in, eps, atol, rtol), FLX_OK) << flx_last_error();
        EXPECT_TRUE(jvp_check(c.f, c.in, eps, atol, rtol));
    }
}

void on_cuda(const std::function<void(flx_ctx *)> &body) {
    FLX_REQUIRE_CUDA(g);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    body(g);
    flx_scope_end(0, nullptr);
}

void CpuTest::SetUp() {
    flx_clear_error();
    live_before = flx_live_tensors();
    ctx = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(ctx, nullptr) << flx_last_error();
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
}

void CpuTest::TearDown() {
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(flx_live_tensors(), live_before) << "tensors leaked by this test";
    if (flx_live_tensors() == live_before) EXPECT_EQ(flx_ctx_destroy(ctx), FLX_OK) << flx_last_error();
}

void CudaCpuTest::SetUp() {
    FLX_REQUIRE_CUDA(g);
    gpu = g;
    ASSERT_EQ(flx_get_fusion(gpu, &gpu_fusion_), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_get_math_mode(gpu, &gpu_math_), FLX_OK) << flx_last_error();
    flx_clear_error();
    live_before = flx_live_tensors();
    cpu = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(cpu, nullptr) << flx_last_error();
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    scoped_ = true;
}

void CudaCpuTest::TearDown() {
    if (!scoped_) return;
    // A test that switches the shared context's fusion or math mode and stops at a failed
    // assertion must not change what the later tests of the process run.
    EXPECT_EQ(flx_set_fusion(gpu, gpu_fusion_), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_set_math_mode(gpu, gpu_math_), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    EXPECT_EQ(flx_live_tensors(), live_before) << "tensors leaked by this test";
    if (flx_live_tensors() == live_before) EXPECT_EQ(flx_ctx_destroy(cpu), FLX_OK) << flx_last_error();
}

std::vector<double> rank_values(int r, size_t n) {
    std::vector<double> v(n);
    for (size_t i = 0; i < n; i++) v[i] = std::sin(1.0 + 0.7 * (double)i + 1.3 * r);
    return v;
}

RankReduction reduce_rank_values(int size, size_t n, flx_dtype dt) {
    RankReduction w{std::vector<double>(n, 0.0), {}, std::vector<double>(n, -HUGE_VAL),
                    std::vector<double>(n, HUGE_VAL)};
    for (int r = 0; r < size; r++) {
        std::vector<double> v = rank_values(r, n);
        for (size_t i = 0; i < n; i++) {
            double vi = dt == FLX_F32 ? (double)(float)v[i] : v[i];
            w.sum[i] += vi;
            w.max[i] = std::max(w.max[i], vi);
            w.min[i] = std::min(w.min[i], vi);
        }
    }
    w.avg = w.sum;
    for (double &a : w.avg) a /= size;
    return w;
}

void CommTest::SetUp() {
    CpuTest::SetUp();
    comm = flx_comm_create(ctx);
    ASSERT_NE(comm, nullptr) << flx_last_error();
    rank = flx_comm_rank(comm);
    size = flx_comm_size(comm);
}

void CommTest::TearDown() {
    flx_comm_destroy(comm);
    CpuTest::TearDown();
}

}  // namespace flxt
