// test_views.cc — every op on a transposed, stepped or broadcast view equals the same op on a
// contiguous copy of the view's values, in value, VJP and JVP, BITWISE.
//
// Why bitwise is the right bar: fluxion's views (permute, slice with a step, broadcast_to) are
// nodes that materialise a contiguous buffer before any consumer runs, so the consumer sees the
// same bits in the same layout either way and runs the same kernel in the same order. A
// difference of any size would mean a kernel reads a view's strides itself (and could read
// them wrong). The gradient with respect to the view is compared the same way (the view's own
// VJP, the scatter back into the base, is tested in the shape suites).
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "testing.h"

using flxt::CpuTest;
using flxt::make;
using flxt::values;

namespace {

using Op = std::function<flx_tensor *(flx_tensor *)>;

struct NamedOp {
    const char *name;
    Op f;
};

::testing::AssertionResult bitwise(const std::vector<double> &a, const std::vector<double> &b) {
    if (a.size() != b.size())
        return ::testing::AssertionFailure() << "sizes " << a.size() << " and " << b.size();
    for (size_t i = 0; i < a.size(); i++)
        if (std::memcmp(&a[i], &b[i], sizeof(double)) != 0 && !(std::isnan(a[i]) && std::isnan(b[i])))
            return ::testing::AssertionFailure()
                   << "element " << i << ": " << a[i] << " vs " << b[i] << " (diff " << a[i] - b[i] << ")";
    return ::testing::AssertionSuccess();
}

// The ops under test, each mapping a (4, 4) tensor to a tensor. Operands other than the view are
// contiguous constants made from `ctx`.
std::vector<NamedOp> ops_4x4(flx_ctx *ctx, flx_dtype dt) {
    flx_tensor *M = flxt::rand_tensor(ctx, dt, {4, 4}, 91);
    flx_tensor *row = flxt::rand_tensor(ctx, dt, {4}, 92);
    flx_tensor *I3 = flx_mul_scalar(flx_eye(ctx, dt, 4, 4), 3.0);
    flx_tensor *idx = make(ctx, FLX_I64, {3}, {2, 0, 3});
    flx_tensor *lab = make(ctx, FLX_I64, {4}, {1, 0, 3, 2});
    static const int32_t ax0 = 0, ax1 = 1;
    static const int32_t perm[2] = {1, 0};
    static const int64_t pads[4] = {1, 0, 0, 2};
    static const int64_t flat = 16;
    return {
        {"exp", [](flx_tensor *v) { return flx_exp(v); }},
        {"tanh", [](flx_tensor *v) { return flx_tanh(v); }},
        {"relu", [](flx_tensor *v) { return flx_relu(v); }},
        {"sqrt_abs", [](flx_tensor *v) { return flx_sqrt(flx_add_scalar(flx_abs(v), 0.5)); }},
        {"sigmoid", [](flx_tensor *v) { return flx_sigmoid(v); }},
        {"gelu", [](flx_tensor *v) { return flx_gelu(v); }},
        {"add", [M](flx_tensor *v) { return flx_add(v, M); }},
        {"mul_row", [row](flx_tensor *v) { return flx_mul(v, row); }},
        {"div", [M](flx_tensor *v) { return flx_div(M, flx_add_scalar(flx_square(v), 1.0)); }},
        {"maximum", [M](flx_tensor *v) { return flx_maximum(v, M); }},
        {"self_mul", [](flx_tensor *v) { return flx_mul(v, v); }},
        {"sum0", [](flx_tensor *v) { return flx_sum(v, 1, &ax0, false); }},
        {"sum1", [](flx_tensor *v) { return flx_sum(v, 1, &ax1, true); }},
        {"mean_all", [](flx_tensor *v) { return flx_mean_all(v); }},
        {"max1", [](flx_tensor *v) { return flx_max(v, 1, &ax1, false); }},
        {"min0", [](flx_tensor *v) { return flx_min(v, 1, &ax0, false); }},
        {"var0", [](flx_tensor *v) { return flx_var(v, 1, &ax0, false, 1); }},
        {"logsumexp1", [](flx_tensor *v) { return flx_logsumexp(v, 1, &ax1, false); }},
        {"argmax", [](flx_tensor *v) { return flx_argmax(v, 1, false); }},
        {"softmax", [](flx_tensor *v) { return flx_softmax(v, -1, 1.0); }},
        {"log_softmax0", [](flx_tensor *v) { return flx_log_softmax(v, 0, 0.5); }},
        {"cross_entropy", [lab](flx_tensor *v) {
             return flx_cross_entropy(v, lab, FLX_REDUCTION_NONE, -100);
         }},
        {"layer_norm", [](flx_tensor *v) { return flx_layer_norm(v, 1, nullptr, nullptr, 1e-5); }},
        {"layer_norm_all", [](flx_tensor *v) { return flx_layer_norm(v, 2, nullptr, nullptr, 1e-5); }},
        {"matmul_vM", [M](flx_tensor *v) { return flx_matmul(v, M); }},
        {"matmul_Mv", [M](flx_tensor *v) { return flx_matmul(M, v); }},
        {"matmul_vv", [](flx_tensor *v) { return flx_matmul(v, v); }},
        {"reshape", [](flx_tensor *v) { return flx_reshape(v, 1, &flat); }},
        {"permute", [](flx_tensor *v) { return flx_permute(v, perm); }},
        {"slice", [](flx_tensor *v) { return flx_slice(v, 1, 1, 4, 2); }},
        {"pad", [](flx_tensor *v) { return flx_pad(v, pads, 0.5); }},
        {"concat", [M](flx_tensor *v) {
             flx_tensor *xs[2] = {v, M};
             return flx_concat(2, xs, 1);
         }},
        {"index_select", [idx](flx_tensor *v) { return flx_index_select(v, 0, idx); }},
        {"diagonal", [](flx_tensor *v) { return flx_diagonal(v); }},
        {"det", [I3](flx_tensor *v) { return flx_det(flx_add(v, I3)); }},
        {"inv", [I3](flx_tensor *v) { return flx_inv(flx_add(v, I3)); }},
        {"solve", [I3, M](flx_tensor *v) { return flx_solve(flx_add(v, I3), M); }},
        {"expm", [](flx_tensor *v) { return flx_expm(v); }},
        {"eigh_w", [](flx_tensor *v) {
             flx_tensor *w = nullptr;
             flx_eigh(v, &w, nullptr);
             return w;
         }},
    };
}

// The views: each a (4, 4) tensor computed from a base that requires grad.
struct View {
    const char *name;
    flxt::Shape base;
    std::function<flx_tensor *(flx_tensor *)> make;
};

std::vector<View> views() {
    static const int64_t s44[2] = {4, 4};
    return {
        {"transposed", {4, 4}, [](flx_tensor *b) { return flx_transpose(b, 0, 1); }},
        {"rows_step2", {8, 4}, [](flx_tensor *b) { return flx_slice(b, 0, 0, 8, 2); }},
        {"cols_step2_offset1", {4, 9}, [](flx_tensor *b) { return flx_slice(b, 1, 1, 9, 2); }},
        {"transposed_stepped", {4, 8},
         [](flx_tensor *b) { return flx_transpose(flx_slice(b, 1, 0, 8, 2), 0, 1); }},
        {"broadcast_rows", {1, 4}, [](flx_tensor *b) { return flx_broadcast_to(b, 2, s44); }},
        {"broadcast_cols", {4, 1}, [](flx_tensor *b) { return flx_broadcast_to(b, 2, s44); }},
    };
}

}  // namespace

TEST_F(CpuTest, ViewsEqualContiguousCopiesBitwise) {
    for (flx_dtype dt : {FLX_F64, FLX_F32}) {
        for (const View &vw : views()) {
            for (const NamedOp &op : ops_4x4(ctx, dt)) {
                SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " " + vw.name + " " + op.name);
                ASSERT_EQ(flx_scope_begin(), FLX_OK);
                flx_tensor *base = flxt::rand_tensor(ctx, dt, vw.base, 17);
                ASSERT_EQ(flx_set_requires_grad(base, true), FLX_OK);
                flx_tensor *v = vw.make(base);
                ASSERT_NE(v, nullptr) << flx_last_error();
                std::vector<double> vv = values(v);
                // The contiguous copy: a fresh leaf holding the view's values.
                flx_tensor *c = make(ctx, dt, {4, 4}, vv);
                ASSERT_EQ(flx_set_requires_grad(c, true), FLX_OK);
                flx_tensor *yv = op.f(v), *yc = op.f(c);
                ASSERT_NE(yv, nullptr) << flx_last_error();
                ASSERT_NE(yc, nullptr) << flx_last_error();
                EXPECT_TRUE(bitwise(values(yv), values(yc))) << "value";
                if (flx_requires_grad(yv)) {
                    // VJP with respect to the view itself and to the copy, same cotangent.
                    flx_tensor *u = flxt::rand_tensor(ctx, dt, flxt::shape_of(yv), 5);
                    flx_tensor *gv = nullptr, *gc = nullptr;
                    ASSERT_EQ(flx_grad_of(1, &yv, &u, 1, &v, false, &gv), FLX_OK) << flx_last_error();
                    ASSERT_EQ(flx_grad_of(1, &yc, &u, 1, &c, false, &gc), FLX_OK) << flx_last_error();
                    EXPECT_TRUE(bitwise(values(gv), values(gc))) << "VJP";
                    // JVP along one tangent.
                    flx_tensor *t = flxt::rand_tensor(ctx, dt, {4, 4}, 6);
                    flx_tensor *tv = nullptr, *tc = nullptr;
                    ASSERT_EQ(flx_jvp(1, &v, &t, 1, &yv, &tv), FLX_OK) << flx_last_error();
                    ASSERT_EQ(flx_jvp(1, &c, &t, 1, &yc, &tc), FLX_OK) << flx_last_error();
                    EXPECT_TRUE(bitwise(values(tv), values(tc))) << "JVP";
                }
                ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
            }
        }
    }
}

// layer_norm on a [::2] view against a float64 reference computed here with the two-pass
// variance in long double: fluxion's error is a few ulps. (A reference that computes the
// variance in one pass, E[x^2] - E[x]^2, as jax.nn.standardize does, differs from both at the
// 1e-12 level for rows whose mean is large against their spread: that is the reference's
// cancellation, not a property of the view.)
TEST_F(CpuTest, ViewsLayerNormOnSteppedViewMatchesLongDoubleReference) {
    std::vector<double> base = flxt::rand_values(8 * 6, 23, 99.0, 101.0);  // mean >> spread
    flx_tensor *b = make(ctx, FLX_F64, {8, 6}, base);
    flx_tensor *v = flx_slice(b, 0, 0, 8, 2);  // rows 0, 2, 4, 6
    std::vector<double> got = values(flx_layer_norm(v, 1, nullptr, nullptr, 1e-5));
    std::vector<double> want;
    for (int r = 0; r < 8; r += 2) {
        long double mu = 0, var = 0;
        for (int j = 0; j < 6; j++) mu += base[r * 6 + j];
        mu /= 6;
        for (int j = 0; j < 6; j++) var += (base[r * 6 + j] - mu) * (base[r * 6 + j] - mu);
        var /= 6;
        for (int j = 0; j < 6; j++)
            want.push_back((double)((base[r * 6 + j] - mu) / sqrtl(var + 1e-5L)));
    }
    EXPECT_TRUE(flxt::close(got, want, 1e-13, 1e-13));
}
