// test_plan.cc — compiled plans: a plan's outputs equal the eager evaluator's bit for
// bit; 1,000 replays of an SGD step with assignments give the same parameters as 1,000 eager
// steps; capture on and off agree; the memory plan reuses space and a run allocates nothing;
// bad input gives clear errors. GPU variants (CudaPlan.*) skip without a GPU. Also the math
// mode switch, and optimisers stepped inside the plan (SGD-momentum and Adam, f32 and f64: N plan
// runs == N eager backward + flx_optim_step, bit for bit, LR changes included).
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

using PlanTest = CpuTest;

// Raw bytes of a tensor's data (bit-for-bit comparisons).
std::vector<unsigned char> bytes(flx_tensor *t) {
    std::vector<unsigned char> b((size_t)flx_numel(t) * flx_dtype_size(flx_dtype_of(t)));
    EXPECT_EQ(flx_to_host(t, b.data(), b.size()), FLX_OK) << flx_last_error();
    return b;
}

using Builder = std::function<std::vector<flx_tensor *>(const std::vector<flx_tensor *> &)>;

// Runs p once, then ten times more, expecting those ten to neither wait for the device nor
// allocate (a captured plan); returns the kernels they queued.
uint64_t quiet_runs(flx_ctx *gpu, flx_plan *p) {
    flx_ctx_stats a{}, b{};
    EXPECT_EQ(flx_plan_run(p, 0, nullptr), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_ctx_get_stats(gpu, &a), FLX_OK);
    for (int i = 0; i < 10; i++) EXPECT_EQ(flx_plan_run(p, 0, nullptr), FLX_OK) << flx_last_error();
    EXPECT_EQ(flx_ctx_get_stats(gpu, &b), FLX_OK);
    EXPECT_EQ(b.syncs, a.syncs) << "a run waited for the device";
    EXPECT_EQ(b.allocs, a.allocs) << "a run allocated";
    return b.kernels - a.kernels;
}

// For each of `batches` (input lists): the eager outputs of build(batch) and the plan's outputs
// after a run with that batch must match bit for bit.
void expect_plan_matches(flx_ctx *ctx, const Builder &build,
                         const std::vector<std::vector<flx_tensor *>> &batches, int capture) {
    (void)ctx;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    const std::vector<flx_tensor *> &in0 = batches[0];
    std::vector<flx_tensor *> outs = build(in0);
    for (flx_tensor *o : outs) ASSERT_NE(o, nullptr) << flx_last_error();
    flx_plan_options opt = flx_plan_default_options();
    opt.capture = capture;
    flx_plan *plan = flx_plan_compile((int32_t)outs.size(), outs.data(), (int32_t)in0.size(),
                                      in0.data(), &opt);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    for (size_t b = 0; b < batches.size(); b++) {
        ASSERT_EQ(flx_plan_run(plan, (int32_t)batches[b].size(), batches[b].data()), FLX_OK)
            << flx_last_error();
        std::vector<flx_tensor *> eager = build(batches[b]);
        ASSERT_EQ(flx_eval((int32_t)eager.size(), eager.data()), FLX_OK) << flx_last_error();
        for (size_t k = 0; k < outs.size(); k++) {
            flx_tensor *h = flx_plan_output(plan, (int32_t)k);
            ASSERT_NE(h, nullptr) << flx_last_error();
            EXPECT_EQ(shape_of(h), shape_of(eager[k]));
            EXPECT_TRUE(bytes(h) == bytes(eager[k])) << "batch " << b << " output " << k;
        }
    }
    flx_plan_destroy(plan);
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
}

// ---- graphs ----------------------------------------------------------------------------------
// Eager work between replays of a plan: small eager buffers come from the context's cache of
// released blocks, which must never hand out memory a plan (or its captured graph) uses, nor a
// block still read by an earlier kernel. Every value is checked against host arithmetic.
void eager_between_replays(flx_ctx *c) {
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    flx_tensor *x = make(c, FLX_F32, {4}, {1, 2, 3, 4});
    flx_tensor *y = flx_mul_scalar(flx_add_scalar(x, 1.0), 2.0);
    flx_tensor *outs[2] = {y, flx_sum_all(y)};
    flx_plan *p = flx_plan_compile(2, outs, 1, &x, nullptr);
    ASSERT_NE(p, nullptr) << flx_last_error();
    for (int r = 0; r < 20; r++) {
        std::vector<double> in = {1.0 * r, r + 1.0, r + 2.0, r - 3.0};
        flx_tensor *xr = make(c, FLX_F32, {4}, in);
        ASSERT_EQ(flx_plan_run(p, 1, &xr), FLX_OK) << flx_last_error();
        for (int k = 0; k < 5; k++) {  // made and dropped: their blocks cycle through the cache
            std::vector<double> want(4);
            for (int i = 0; i < 4; i++) want[i] = in[i] * k + 0.5;
            EXPECT_TRUE(close(values(flx_add_scalar(flx_mul_scalar(xr, k), 0.5)), want)) << r << " " << k;
        }
        std::vector<double> wy(4);
        double wz = 0;
        for (int i = 0; i < 4; i++) wz += wy[i] = (in[i] + 1) * 2;
        EXPECT_TRUE(close(values(flx_plan_output(p, 0)), wy)) << "run " << r;
        EXPECT_TRUE(close(values(flx_plan_output(p, 1)), {wz})) << "run " << r;
    }
    flx_plan_destroy(p);
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
}

TEST_F(PlanTest, EagerOpsBetweenReplaysKeepTheirValues) { eager_between_replays(ctx); }

TEST_F(PlanTest, MatmulReductionsAliasesMatchEager) {
    flx_tensor *w = rand_tensor(ctx, FLX_F32, {8, 5}, 3);
    flx_tensor *b = rand_tensor(ctx, FLX_F32, {5}, 4);
    Builder build = [&](const std::vector<flx_tensor *> &in) {
        flx_tensor *x = in[0];
        flx_tensor *h = flx_tanh(flx_add(flx_matmul(x, w), b));          // (6, 5)
        const int32_t ax1[1] = {1}, ax0[1] = {0};
        flx_tensor *s = flx_sum(h, 1, ax1, false);                      // (6)
        flx_tensor *m = flx_max(h, 1, ax0, true);                       // (1, 5)
        const int64_t rs[2] = {5, 6};
        flx_tensor *r = flx_reshape(flx_transpose(h, 0, 1), 2, rs);     // alias of a permute
        flx_tensor *mm = flx_matmul(r, h);                              // (5, 5)
        flx_tensor *v = flx_var(h, 1, ax0, false, 1);
        return std::vector<flx_tensor *>{s, m, mm, flx_mean_all(mm), v, flx_exp(s)};
    };
    std::vector<std::vector<flx_tensor *>> batches;
    for (int i = 0; i < 3; i++) batches.push_back({rand_tensor(ctx, FLX_F32, {6, 8}, 100 + i)});
    expect_plan_matches(ctx, build, batches, FLX_PLAN_CAPTURE_DEFAULT);
    expect_plan_matches(ctx, build, batches, FLX_PLAN_CAPTURE_OFF);
}

TEST_F(PlanTest, SoftmaxCrossEntropyAndGradientsMatchEager) {
    flx_tensor *w = rand_tensor(ctx, FLX_F64, {7, 4}, 5);
    ASSERT_EQ(flx_set_requires_grad(w, true), FLX_OK);
    Builder build = [&](const std::vector<flx_tensor *> &in) {
        flx_tensor *logits = flx_matmul(in[0], w);
        flx_tensor *sm = flx_softmax(logits, -1, 1.0);
        flx_tensor *lsm = flx_log_softmax(logits, 0, 2.0);
        flx_tensor *loss = flx_cross_entropy(logits, in[1], FLX_REDUCTION_MEAN, -100);
        flx_tensor *g = nullptr;
        EXPECT_EQ(flx_grad_of(1, &loss, nullptr, 1, &w, false, &g), FLX_OK) << flx_last_error();
        return std::vector<flx_tensor *>{sm, lsm, loss, g};
    };
    std::vector<std::vector<flx_tensor *>> batches;
    for (int i = 0; i < 3; i++) {
        std::vector<int64_t> lab(9);
        for (int j = 0; j < 9; j++) lab[j] = (j * 7 + i) % 4;
        const int64_t ls[1] = {9};
        batches.push_back({rand_tensor(ctx, FLX_F64, {9, 7}, 200 + i),
                           flx_from_host(ctx, FLX_I64, 1, ls, lab.data())});
    }
    expect_plan_matches(ctx, build, batches, FLX_PLAN_CAPTURE_DEFAULT);
}

TEST_F(PlanTest, OutputsThatAreSourcesOrInputsAreCopied) {
    flx_tensor *c = rand_tensor(ctx, FLX_F32, {3}, 9);
    Builder build = [&](const std::vector<flx_tensor *> &in) {
        const int64_t s[2] = {2, 2};
        return std::vector<flx_tensor *>{in[0], flx_reshape(in[0], 2, s), c, flx_add(in[0], in[0])};
    };
    std::vector<std::vector<flx_tensor *>> batches;
    for (int i = 0; i < 2; i++) batches.push_back({rand_tensor(ctx, FLX_F32, {4}, 300 + i)});
    expect_plan_matches(ctx, build, batches, FLX_PLAN_CAPTURE_DEFAULT);
}

// A run computes into the plan's own arena at addresses fixed at compile: the graph it was
// compiled from keeps its values (an intermediate evaluated before, and the output evaluated
// eagerly after, still see the original input), whatever the runs bound.
TEST_F(PlanTest, RunsLeaveTheGraphAlone) {
    flx_tensor *x = make(ctx, FLX_F64, {3}, {0.5, -1.0, 2.0});
    flx_tensor *y = flx_mul_scalar(flx_exp(x), 2.0);
    flx_tensor *z = flx_add_scalar(flx_sin(y), 1.0);
    ASSERT_EQ(flx_eval(1, &y), FLX_OK) << flx_last_error();
    flx_plan *plan = flx_plan_compile(1, &z, 1, &x, nullptr);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    const double x0[3] = {0.5, -1.0, 2.0}, x1[3] = {1.5, 0.25, -3.0};
    for (int run = 0; run < 2; run++) {
        ASSERT_EQ(flx_plan_set_input_host(plan, 0, x1, sizeof x1), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
        std::vector<double> want(3);
        for (int i = 0; i < 3; i++) want[i] = std::sin(2.0 * std::exp(x1[i])) + 1.0;
        flx_tensor *out = flx_plan_output(plan, 0);
        EXPECT_TRUE(close(values(out), want, 1e-14, 1e-14));
    }
    std::vector<double> want_y(3), want_z(3);
    for (int i = 0; i < 3; i++) {
        want_y[i] = 2.0 * std::exp(x0[i]);
        want_z[i] = std::sin(want_y[i]) + 1.0;
    }
    EXPECT_TRUE(close(values(y), want_y, 1e-14, 1e-14));
    EXPECT_TRUE(close(values(z), want_z, 1e-14, 1e-14));
    flx_plan_destroy(plan);
}

TEST_F(PlanTest, InputsKeepTheirDataAndHostBinding) {
    flx_tensor *x = make(ctx, FLX_F32, {3}, {1, 2, 3});
    flx_tensor *y = make(ctx, FLX_F32, {3}, {10, 20, 30});
    flx_tensor *z = flx_mul(x, y);
    flx_plan *plan = flx_plan_compile(1, &z, 2, std::vector<flx_tensor *>{x, y}.data(), nullptr);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
    flx_tensor *out = flx_plan_output(plan, 0);
    EXPECT_TRUE(close(values(out), {10, 40, 90}));
    float nx[3] = {2, 2, 2};
    ASSERT_EQ(flx_plan_set_input_host(plan, 0, nx, sizeof nx), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK);
    EXPECT_TRUE(close(values(out), {20, 40, 60}));
    flx_tensor *ny = make(ctx, FLX_F32, {3}, {1, 1, 1});
    flx_tensor *list[2] = {nullptr, ny};  // keep x, replace y
    ASSERT_EQ(flx_plan_run(plan, 2, list), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(out), {2, 2, 2}));
    // The compiled input tensors themselves were not changed.
    EXPECT_TRUE(close(values(x), {1, 2, 3}));
    flx_plan_info info = plan_info(plan);
    EXPECT_EQ(info.runs, 3u);
    EXPECT_EQ(info.n_inputs, 2);
    EXPECT_FALSE(info.captured);  // CPU: capture is a no-op
    flx_plan_destroy(plan);
}

// ---- training: 1,000 plan replays == 1,000 eager steps ---------------------------------------
struct Mlp {
    flx_tensor *p[4];
};

Mlp make_mlp(flx_ctx *ctx, flx_dtype dt) {
    Mlp m;
    m.p[0] = rand_tensor(ctx, dt, {8, 16}, 11, -0.6, 0.6);
    m.p[1] = rand_tensor(ctx, dt, {16}, 12, -0.1, 0.1);
    m.p[2] = rand_tensor(ctx, dt, {16, 3}, 13, -0.6, 0.6);
    m.p[3] = rand_tensor(ctx, dt, {3}, 14, -0.1, 0.1);
    for (flx_tensor *t : m.p) EXPECT_EQ(flx_set_requires_grad(t, true), FLX_OK);
    return m;
}

flx_tensor *mlp_loss(const Mlp &m, flx_tensor *x, flx_tensor *labels) {
    flx_tensor *h = flx_relu(flx_add(flx_matmul(x, m.p[0]), m.p[1]));
    flx_tensor *logits = flx_add(flx_matmul(h, m.p[2]), m.p[3]);
    return flx_cross_entropy(logits, labels, FLX_REDUCTION_MEAN, -100);
}

// new_p = p - lr * grad, for every parameter
std::vector<flx_tensor *> sgd_values(const Mlp &m, flx_tensor *loss, double lr) {
    flx_tensor *g[4] = {};
    EXPECT_EQ(flx_grad_of(1, &loss, nullptr, 4, m.p, false, g), FLX_OK) << flx_last_error();
    std::vector<flx_tensor *> nv;
    for (int i = 0; i < 4; i++) nv.push_back(flx_sub(m.p[i], flx_mul_scalar(g[i], lr)));
    return nv;
}

struct Batches {
    std::vector<flx_tensor *> x, y;
};

Batches make_batches(flx_ctx *ctx, flx_dtype dt, int n) {
    Batches b;
    for (int i = 0; i < n; i++) {
        b.x.push_back(rand_tensor(ctx, dt, {12, 8}, 500 + i));
        std::vector<int64_t> lab(12);
        std::vector<double> xv = values(b.x.back());
        for (int r = 0; r < 12; r++) lab[r] = (xv[r * 8] + xv[r * 8 + 1] > 0) + (xv[r * 8 + 2] > 0.5);
        const int64_t ls[1] = {12};
        b.y.push_back(flx_from_host(ctx, FLX_I64, 1, ls, lab.data()));
    }
    return b;
}

void train_compare(flx_ctx *ctx, int steps, int capture) {
    const flx_dtype dt = FLX_F32;
    const double lr = 0.05;
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    Batches data = make_batches(ctx, dt, 4);
    // Eager: record, grad_of, evaluate the new values, assign.
    Mlp e = make_mlp(ctx, dt);
    double eager_loss = 0;
    for (int s = 0; s < steps; s++) {
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *loss = mlp_loss(e, data.x[s % 4], data.y[s % 4]);
        std::vector<flx_tensor *> nv = sgd_values(e, loss, lr);
        nv.push_back(loss);
        ASSERT_EQ(flx_eval(5, nv.data()), FLX_OK) << flx_last_error();
        if (s == steps - 1) ASSERT_EQ(flx_item(loss, &eager_loss), FLX_OK);
        for (int i = 0; i < 4; i++) ASSERT_EQ(flx_assign(e.p[i], nv[i]), FLX_OK) << flx_last_error();
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    // Plan: the same step recorded once, with assignments p_i := new_p_i.
    Mlp m = make_mlp(ctx, dt);
    flx_tensor *xin = flx_from_host(ctx, dt, 2, flx_shape(data.x[0]), std::vector<float>(96, 0).data());
    const int64_t ls[1] = {12};
    flx_tensor *yin = flx_from_host(ctx, FLX_I64, 1, ls, std::vector<int64_t>(12, 0).data());
    flx_tensor *loss = mlp_loss(m, xin, yin);
    std::vector<flx_tensor *> nv = sgd_values(m, loss, lr);
    flx_plan_options opt = flx_plan_default_options();
    opt.capture = capture;
    opt.n_assign = 4;
    opt.assign_dst = m.p;
    opt.assign_src = nv.data();
    flx_tensor *ins[2] = {xin, yin};
    flx_plan *plan = flx_plan_compile(1, &loss, 2, ins, &opt);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    flx_ctx_stats st0, st1;
    for (int s = 0; s < steps; s++) {
        flx_tensor *batch[2] = {data.x[s % 4], data.y[s % 4]};
        ASSERT_EQ(flx_plan_run(plan, 2, batch), FLX_OK) << flx_last_error();
        if (s == 1) ASSERT_EQ(flx_ctx_get_stats(ctx, &st0), FLX_OK);
    }
    ASSERT_EQ(flx_ctx_get_stats(ctx, &st1), FLX_OK);
    EXPECT_EQ(st1.allocs, st0.allocs) << "a plan run allocated memory";
    flx_tensor *pl = flx_plan_output(plan, 0);
    double plan_loss = 0;
    ASSERT_EQ(flx_item(pl, &plan_loss), FLX_OK);
    EXPECT_EQ(plan_loss, eager_loss);
    for (int i = 0; i < 4; i++) EXPECT_TRUE(bytes(m.p[i]) == bytes(e.p[i])) << "parameter " << i;
    Mlp fresh = make_mlp(ctx, dt);  // training did move the parameters
    for (int i = 0; i < 4; i++) EXPECT_FALSE(bytes(m.p[i]) == bytes(fresh.p[i])) << "parameter " << i;
    // The old step graph read the parameters before the plan changed them: it must not run.
    EXPECT_NE(flx_eval(1, &nv[0]), FLX_OK);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    flx_clear_error();
    flx_plan_destroy(plan);
    // The leaves keep their trained values after the plan is gone.
    for (int i = 0; i < 4; i++) EXPECT_TRUE(bytes(m.p[i]) == bytes(e.p[i])) << "parameter " << i;
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
}

TEST_F(PlanTest, ThousandSgdReplaysEqualThousandEagerSteps) {
    train_compare(ctx, 1000, FLX_PLAN_CAPTURE_DEFAULT);
}

TEST_F(PlanTest, CaptureOffAndOnAgree) {
    // On the CPU backend capture is a no-op; both must equal eager and each other.
    train_compare(ctx, 50, FLX_PLAN_CAPTURE_OFF);
    train_compare(ctx, 50, FLX_PLAN_CAPTURE_ON);
}

TEST_F(PlanTest, AssignmentsReadEveryValueBeforeWriting) {
    // p := q and q := p swap (values outside the arena are staged first).
    flx_tensor *p = make(ctx, FLX_F32, {2}, {1, 2});
    flx_tensor *q = make(ctx, FLX_F32, {2}, {5, 6});
    flx_tensor *sum = flx_add(p, q);
    flx_tensor *dst[2] = {p, q}, *src[2] = {q, p};
    flx_plan_options opt = flx_plan_default_options();
    opt.n_assign = 2;
    opt.assign_dst = dst;
    opt.assign_src = src;
    flx_plan *plan = flx_plan_compile(1, &sum, 0, nullptr, &opt);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(p), {5, 6}));
    EXPECT_TRUE(close(values(q), {1, 2}));
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK);
    EXPECT_TRUE(close(values(p), {1, 2}));
    flx_plan_destroy(plan);
}

TEST_F(PlanTest, OutputHandlesAreRefreshedButSharersKeepTheirValue) {
    flx_tensor *x = make(ctx, FLX_F32, {2}, {1, 2});
    flx_tensor *y = flx_mul_scalar(x, 3);
    flx_plan *plan = flx_plan_compile(1, &y, 1, &x, nullptr);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK);
    flx_tensor *h = flx_plan_output(plan, 0);
    flx_tensor *kept = make(ctx, FLX_F32, {2}, {0, 0});
    ASSERT_EQ(flx_assign(kept, h), FLX_OK);  // shares the output's buffer
    flx_tensor *lazy = flx_add_scalar(h, 1);  // recorded from the current value, not run
    ASSERT_EQ(flx_plan_set_input_host(plan, 0, std::vector<float>{10, 20}.data(), 8), FLX_OK);
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
    EXPECT_TRUE(close(values(h), {30, 60}));
    EXPECT_TRUE(close(values(kept), {3, 6}));
    EXPECT_NE(flx_eval(1, &lazy), FLX_OK);
    EXPECT_EQ(flx_last_status(), FLX_ERR_STATE);
    flx_clear_error();
    flx_plan_destroy(plan);
    // The handle outlives the plan with its last data.
    EXPECT_TRUE(close(values(h), {30, 60}));
}

// ---- memory ----------------------------------------------------------------------------------
TEST_F(PlanTest, MemoryPlanReusesSpaceAndRunsAllocateNothing) {
    flx_tensor *x = rand_tensor(ctx, FLX_F32, {64, 64}, 21);
    flx_tensor *h = x;
    for (int i = 0; i < 20; i++) h = flx_tanh(flx_add_scalar(flx_mul_scalar(h, 0.9), 0.01));
    flx_tensor *out = flx_sum_all(h);
    flx_plan *plan = flx_plan_compile(1, &out, 1, &x, nullptr);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    flx_plan_info info = plan_info(plan);
    EXPECT_EQ(info.n_nodes, 61);
    EXPECT_LT(info.arena_bytes, info.unplanned_bytes);
    // 60 intermediates of 16 KiB: a chain needs about two of them live at once, plus the input.
    EXPECT_LE(info.arena_bytes, 4u * 64 * 64 * 4);
    flx_ctx_stats a, b;
    ASSERT_EQ(flx_ctx_get_stats(ctx, &a), FLX_OK);
    for (int i = 0; i < 5; i++) ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK);
    ASSERT_EQ(flx_ctx_get_stats(ctx, &b), FLX_OK);
    EXPECT_EQ(b.allocs, a.allocs);
    EXPECT_EQ(b.bytes_in_use, a.bytes_in_use);
    EXPECT_EQ(b.nodes_executed - a.nodes_executed, 5u * 61);
    flx_tensor *o = flx_plan_output(plan, 0);
    ASSERT_EQ(flx_eval(1, &out), FLX_OK);
    EXPECT_TRUE(bytes(o) == bytes(out));
    flx_plan_destroy(plan);
}

// ---- bad input -------------------------------------------------------------------------------
::testing::AssertionResult fails(flx_status got, flx_status want, const char *needle) {
    if (got != want)
        return ::testing::AssertionFailure()
               << "status " << flx_status_string(got) << ", expected " << flx_status_string(want)
               << " (" << flx_last_error() << ")";
    std::string msg = flx_last_error();
    flx_clear_error();
    if (msg.find(needle) == std::string::npos)
        return ::testing::AssertionFailure() << "message '" << msg << "' lacks '" << needle << "'";
    return ::testing::AssertionSuccess();
}

flx_status compile_status(int32_t n_out, flx_tensor *const *outs, int32_t n_in,
                          flx_tensor *const *ins, const flx_plan_options *opt) {
    flx_clear_error();
    flx_plan *p = flx_plan_compile(n_out, outs, n_in, ins, opt);
    if (p) {
        flx_plan_destroy(p);
        return FLX_OK;
    }
    return flx_last_status();
}

TEST_F(PlanTest, BadInputsGiveClearErrors) {
    flx_tensor *x = make(ctx, FLX_F32, {2}, {1, 2});
    flx_tensor *w = make(ctx, FLX_F32, {2}, {3, 4});
    flx_tensor *y = flx_mul(x, w);
    flx_tensor *z = flx_exp(y);
    EXPECT_TRUE(fails(compile_status(0, &y, 1, &x, nullptr), FLX_ERR_INVALID_ARGUMENT, "output"));
    EXPECT_TRUE(fails(compile_status(1, nullptr, 1, &x, nullptr), FLX_ERR_INVALID_ARGUMENT, "output"));
    flx_tensor *null_out = nullptr;
    EXPECT_TRUE(fails(compile_status(1, &null_out, 1, &x, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(fails(compile_status(1, &z, 1, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT, "input"));
    // An op result is not a source input.
    EXPECT_TRUE(fails(compile_status(1, &z, 1, &y, nullptr), FLX_ERR_INVALID_ARGUMENT, "not a source"));
    flx_tensor *twice[2] = {x, x};
    EXPECT_TRUE(fails(compile_status(1, &z, 2, twice, nullptr), FLX_ERR_INVALID_ARGUMENT, "repeats"));
    flx_plan_options opt = flx_plan_default_options();
    opt.capture = 7;
    EXPECT_TRUE(fails(compile_status(1, &z, 1, &x, &opt), FLX_ERR_INVALID_ARGUMENT, "capture"));
    opt = flx_plan_default_options();
    opt.n_assign = 1;
    EXPECT_TRUE(fails(compile_status(1, &z, 1, &x, &opt), FLX_ERR_INVALID_ARGUMENT, "assignment"));
    opt.assign_dst = &y;  // not a leaf
    opt.assign_src = &z;
    EXPECT_TRUE(fails(compile_status(1, &z, 1, &x, &opt), FLX_ERR_STATE, "not a leaf"));
    flx_tensor *s = flx_sum_all(z);
    opt.assign_dst = &w;
    opt.assign_src = &s;  // shape differs
    EXPECT_TRUE(fails(compile_status(1, &z, 1, &x, &opt), FLX_ERR_SHAPE, "differ"));
    opt.assign_dst = &x;  // an input
    opt.assign_src = &z;
    EXPECT_TRUE(fails(compile_status(1, &z, 1, &x, &opt), FLX_ERR_INVALID_ARGUMENT, "input"));
    // Another context.
    flx_ctx *other = flx_ctx_create(flx_device_cpu());
    ASSERT_NE(other, nullptr);
    {
        flx_tensor *xo = make(other, FLX_F32, {2}, {1, 2});
        EXPECT_TRUE(fails(compile_status(1, &z, 1, &xo, nullptr), FLX_ERR_DEVICE, "context"));
        flx_tensor *moved = flx_to_ctx(xo, ctx);
        flx_tensor *zz = flx_add(moved, x);
        EXPECT_TRUE(fails(compile_status(1, &zz, 1, &x, nullptr), FLX_ERR_UNSUPPORTED, "to_ctx"));
    }
    // Run-time errors.
    flx_plan *plan = flx_plan_compile(1, &z, 1, &x, nullptr);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    EXPECT_TRUE(fails(flx_plan_run(nullptr, 0, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(fails(flx_plan_run(plan, 2, twice), FLX_ERR_INVALID_ARGUMENT, "takes 1 inputs"));
    flx_tensor *wrong_shape = make(ctx, FLX_F32, {3}, {1, 2, 3});
    EXPECT_TRUE(fails(flx_plan_run(plan, 1, &wrong_shape), FLX_ERR_SHAPE, "compiled for"));
    flx_tensor *wrong_dtype = make(ctx, FLX_F64, {2}, {1, 2});
    EXPECT_TRUE(fails(flx_plan_run(plan, 1, &wrong_dtype), FLX_ERR_DTYPE, "compiled for"));
    EXPECT_TRUE(fails(flx_plan_set_input(plan, 1, x), FLX_ERR_INVALID_ARGUMENT, "outside"));
    EXPECT_TRUE(fails(flx_plan_set_input(plan, 0, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    float host[2] = {1, 2};
    EXPECT_TRUE(fails(flx_plan_set_input_host(plan, 0, host, 4), FLX_ERR_SHAPE, "bytes"));
    EXPECT_TRUE(fails(flx_plan_set_input_host(plan, 0, nullptr, 8), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    flx_clear_error();
    EXPECT_EQ(flx_plan_output(plan, 1), nullptr);
    EXPECT_EQ(flx_last_status(), FLX_ERR_INVALID_ARGUMENT);
    flx_clear_error();
    EXPECT_EQ(flx_plan_output(nullptr, 0), nullptr);
    EXPECT_TRUE(fails(flx_plan_get_info(plan, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(fails(flx_plan_get_info(nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    // A source given a new buffer after compile: the plan refuses to run.
    ASSERT_EQ(flx_assign(w, make(ctx, FLX_F32, {2}, {7, 8})), FLX_OK);
    EXPECT_TRUE(fails(flx_plan_run(plan, 0, nullptr), FLX_ERR_STATE, "compile the plan again"));
    flx_plan_destroy(plan);
    flx_plan_destroy(nullptr);
    // A stale graph (a leaf it reads was assigned after recording) cannot be compiled.
    EXPECT_TRUE(fails(compile_status(1, &z, 1, &x, nullptr), FLX_ERR_STATE, "changed in place"));
    ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    ASSERT_EQ(flx_scope_begin(), FLX_OK);
    EXPECT_EQ(flx_ctx_destroy(other), FLX_OK) << flx_last_error();
}

// ---- optimisers inside the plan: forward, backward and update in one replay ----------
// The reference is always the eager loop: record the graph, flx_backward, flx_optim_step,
// flx_optim_zero_grad, one step per batch, with a second, identical model and optimiser.
using LrSchedule = std::function<double(int)>;  // empty: the optimiser's own LR throughout

flx_optim *make_optim(flx_ctx *ctx, const Mlp &m, flx_optim_kind kind) {
    flx_optim_config c = flx_optim_defaults(kind);
    if (kind == FLX_OPTIM_MOMENTUM) {
        c.lr = 0.05;
        c.weight_decay = 1e-3;
    } else if (kind == FLX_OPTIM_ADAM) {
        c.lr = 0.01;
    }
    flx_optim *o = flx_optim_create(ctx, kind, 4, m.p, &c);
    EXPECT_NE(o, nullptr) << flx_last_error();
    return o;
}

// Everything a training run leaves behind, as raw bytes (bit-for-bit comparisons).
struct TrainResult {
    std::vector<std::vector<unsigned char>> params, state;
    std::vector<double> losses;
    double step = -1;
};

void snapshot(flx_optim *opt, const Mlp &m, TrainResult *r) {
    for (flx_tensor *p : m.p) r->params.push_back(bytes(p));
    for (int32_t i = 0; i < 4; i++)
        for (int32_t s = 0; s < flx_optim_state_count(opt); s++) {
            flx_tensor *st = flx_optim_get_state(opt, i, s);
            ASSERT_NE(st, nullptr) << flx_last_error();
            r->state.push_back(bytes(st));
        }
    ASSERT_EQ(flx_optim_get_hparam(opt, FLX_HP_STEP, &r->step), FLX_OK) << flx_last_error();
}

TrainResult eager_train(flx_ctx *ctx, flx_dtype dt, flx_optim_kind kind, const Batches &data,
                        int steps, const LrSchedule &lr) {
    TrainResult r;
    Mlp e = make_mlp(ctx, dt);
    flx_optim *opt = make_optim(ctx, e, kind);
    for (int s = 0; s < steps; s++) {
        if (lr) EXPECT_EQ(flx_optim_set_lr(opt, lr(s)), FLX_OK) << flx_last_error();
        EXPECT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *loss = mlp_loss(e, data.x[s % 4], data.y[s % 4]);
        EXPECT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
        double l = 0;
        EXPECT_EQ(flx_item(loss, &l), FLX_OK);
        r.losses.push_back(l);
        EXPECT_EQ(flx_optim_step(opt), FLX_OK) << flx_last_error();
        EXPECT_EQ(flx_optim_zero_grad(opt), FLX_OK);
        EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
    snapshot(opt, e, &r);
    flx_optim_destroy(opt);
    return r;
}

// The same training as one plan: the step graph recorded once (optionally one flx_backward,
// which changes nothing: no step is taken and runs do not read .grad), then one plan run per
// batch.
// The plan inputs of the optimiser tests: a (12, 8) batch for the MLP and 12 labels `label`.
std::pair<flx_tensor *, flx_tensor *> mlp_inputs(flx_ctx *ctx, flx_dtype dt, int64_t label) {
    const int64_t ls[1] = {12};
    return {rand_tensor(ctx, dt, {12, 8}, 999),
            flx_from_host(ctx, FLX_I64, 1, ls, std::vector<int64_t>(12, label).data())};
}

// Plan options that step *opt at every run.
flx_plan_options stepping(flx_optim **opt) {
    flx_plan_options o = flx_plan_default_options();
    o.n_optim = 1;
    o.optims = opt;
    return o;
}

TrainResult plan_train(flx_ctx *ctx, flx_dtype dt, flx_optim_kind kind, const Batches &data,
                       int steps, const LrSchedule &lr, int capture, bool expect_captured,
                       bool backward_first = true) {
    TrainResult r;
    Mlp m = make_mlp(ctx, dt);
    flx_optim *opt = make_optim(ctx, m, kind);
    auto [xin, yin] = mlp_inputs(ctx, dt, 1);
    flx_tensor *loss = mlp_loss(m, xin, yin);
    if (backward_first) EXPECT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    flx_plan_options o = stepping(&opt);
    o.capture = capture;
    flx_tensor *ins[2] = {xin, yin};
    flx_plan *plan = flx_plan_compile(1, &loss, 2, ins, &o);
    EXPECT_NE(plan, nullptr) << flx_last_error();
    if (!plan) {
        flx_optim_destroy(opt);
        return r;
    }
    flx_plan_info info = plan_info(plan);
    EXPECT_EQ(info.n_optim, 1);
    EXPECT_EQ(info.captured, expect_captured);
    flx_tensor *out = flx_plan_output(plan, 0);
    flx_ctx_stats st0{}, st1{};
    for (int s = 0; s < steps; s++) {
        if (lr) EXPECT_EQ(flx_optim_set_lr(opt, lr(s)), FLX_OK) << flx_last_error();
        flx_tensor *batch[2] = {data.x[s % 4], data.y[s % 4]};
        EXPECT_EQ(flx_plan_run(plan, 2, batch), FLX_OK) << flx_last_error();
        double l = 0;
        EXPECT_EQ(flx_item(out, &l), FLX_OK);
        r.losses.push_back(l);
        if (s == 1) EXPECT_EQ(flx_ctx_get_stats(ctx, &st0), FLX_OK);
    }
    EXPECT_EQ(flx_ctx_get_stats(ctx, &st1), FLX_OK);
    EXPECT_EQ(st1.allocs, st0.allocs) << "a plan run allocated memory";
    snapshot(opt, m, &r);
    flx_plan_destroy(plan);
    flx_optim_destroy(opt);
    return r;
}

void expect_same_training(const TrainResult &plan, const TrainResult &eager, const char *what) {
    ASSERT_EQ(plan.params.size(), eager.params.size()) << what;
    for (size_t i = 0; i < eager.params.size(); i++)
        EXPECT_TRUE(plan.params[i] == eager.params[i]) << what << ": parameter " << i;
    ASSERT_EQ(plan.state.size(), eager.state.size()) << what;
    for (size_t i = 0; i < eager.state.size(); i++)
        EXPECT_TRUE(plan.state[i] == eager.state[i]) << what << ": state " << i;
    EXPECT_EQ(plan.step, eager.step) << what;
    ASSERT_EQ(plan.losses.size(), eager.losses.size()) << what;
    for (size_t s = 0; s < eager.losses.size(); s++)
        EXPECT_EQ(plan.losses[s], eager.losses[s]) << what << ": loss of step " << s;
}

void optim_plan_cases(flx_ctx *ctx, int steps, const LrSchedule &lr, int capture, bool captured) {
    for (flx_dtype dt : {FLX_F32, FLX_F64})
        for (flx_optim_kind kind : {FLX_OPTIM_MOMENTUM, FLX_OPTIM_ADAM}) {
            ASSERT_EQ(flx_scope_begin(), FLX_OK);
            Batches data = make_batches(ctx, dt, 4);
            TrainResult e = eager_train(ctx, dt, kind, data, steps, lr);
            TrainResult p = plan_train(ctx, dt, kind, data, steps, lr, capture, captured);
            std::string what = std::string(dt == FLX_F32 ? "f32 " : "f64 ") +
                               (kind == FLX_OPTIM_ADAM ? "adam" : "momentum");
            expect_same_training(p, e, what.c_str());
            EXPECT_EQ(e.step, (double)steps);
            // Training moved the parameters (the comparison is not between two no-ops).
            Mlp fresh = make_mlp(ctx, dt);
            for (int i = 0; i < 4; i++) EXPECT_FALSE(bytes(fresh.p[i]) == e.params[i]) << what;
            ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        }
}

TEST_F(PlanTest, OptimiserInPlanEqualsEagerSteps) {
    optim_plan_cases(ctx, 50, nullptr, FLX_PLAN_CAPTURE_DEFAULT, false);
}

TEST_F(PlanTest, OptimiserPlanNeedsNoBackwardFirst) {
    // The plan builds the gradients itself: compiled straight from the recorded loss, it trains
    // exactly as the eager loop does.
    for (flx_optim_kind kind : {FLX_OPTIM_MOMENTUM, FLX_OPTIM_ADAM}) {
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        Batches data = make_batches(ctx, FLX_F64, 4);
        TrainResult e = eager_train(ctx, FLX_F64, kind, data, 12, nullptr);
        TrainResult p = plan_train(ctx, FLX_F64, kind, data, 12, nullptr,
                                   FLX_PLAN_CAPTURE_DEFAULT, false, /*backward_first*/ false);
        expect_same_training(p, e, kind == FLX_OPTIM_ADAM ? "adam, no backward" : "momentum, no backward");
        EXPECT_EQ(p.step, 12.0);
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    }
}

TEST_F(PlanTest, OptimiserLearningRateChangesBetweenRunsTakeEffect) {
    // Warm-up then decay: the LR lives in the optimiser's device memory, read by every run.
    LrSchedule lr = [](int s) { return s < 10 ? 0.002 * (s + 1) : 0.02 * std::pow(0.9, s - 10); };
    optim_plan_cases(ctx, 50, lr, FLX_PLAN_CAPTURE_DEFAULT, false);
    // The schedule matters: without it the same plan training ends elsewhere.
    Batches data = make_batches(ctx, FLX_F64, 4);
    TrainResult with =
        plan_train(ctx, FLX_F64, FLX_OPTIM_ADAM, data, 20, lr, FLX_PLAN_CAPTURE_OFF, false);
    TrainResult without = plan_train(ctx, FLX_F64, FLX_OPTIM_ADAM, data, 20, nullptr,
                                     FLX_PLAN_CAPTURE_OFF, false);
    EXPECT_FALSE(with.params[0] == without.params[0]);
}

TEST_F(PlanTest, OptimiserRunsAfterOutputsAndAssignmentValuesAreRead) {
    // Outputs (here a parameter itself) and assignment values (an EMA of a parameter) see the
    // parameters from before the run's update, like "evaluate, flx_optim_step, flx_assign".
    const int steps = 6;
    Batches data = make_batches(ctx, FLX_F64, 4);
    std::vector<std::vector<unsigned char>> eager_p0, eager_ema;
    {
        Mlp e = make_mlp(ctx, FLX_F64);
        flx_optim *opt = make_optim(ctx, e, FLX_OPTIM_MOMENTUM);
        flx_tensor *ema = flx_detach(flx_mul_scalar(e.p[2], 1.0));
        ASSERT_EQ(flx_eval(1, &ema), FLX_OK);
        flx_tensor *ema_leaf = make(ctx, FLX_F64, {16, 3}, std::vector<double>(48, 0));
        ASSERT_EQ(flx_assign(ema_leaf, ema), FLX_OK);
        for (int s = 0; s < steps; s++) {
            ASSERT_EQ(flx_scope_begin(), FLX_OK);
            flx_tensor *loss = mlp_loss(e, data.x[s % 4], data.y[s % 4]);
            flx_tensor *nv = flx_add(flx_mul_scalar(ema_leaf, 0.5), flx_mul_scalar(e.p[2], 0.5));
            ASSERT_EQ(flx_backward(loss), FLX_OK);
            ASSERT_EQ(flx_eval(1, &nv), FLX_OK);
            eager_p0.push_back(bytes(e.p[0]));
            ASSERT_EQ(flx_optim_step(opt), FLX_OK);
            ASSERT_EQ(flx_assign(ema_leaf, nv), FLX_OK);
            ASSERT_EQ(flx_optim_zero_grad(opt), FLX_OK);
            eager_ema.push_back(bytes(ema_leaf));
            ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        }
        flx_optim_destroy(opt);
    }
    Mlp m = make_mlp(ctx, FLX_F64);
    flx_optim *opt = make_optim(ctx, m, FLX_OPTIM_MOMENTUM);
    flx_tensor *ema_leaf = make(ctx, FLX_F64, {16, 3}, std::vector<double>(48, 0));
    flx_tensor *ema0 = flx_detach(flx_mul_scalar(m.p[2], 1.0));
    ASSERT_EQ(flx_assign(ema_leaf, ema0), FLX_OK);
    auto [xin, yin] = mlp_inputs(ctx, FLX_F64, 0);
    flx_tensor *loss = mlp_loss(m, xin, yin);
    ASSERT_EQ(flx_backward(loss), FLX_OK);
    flx_tensor *nv = flx_add(flx_mul_scalar(ema_leaf, 0.5), flx_mul_scalar(m.p[2], 0.5));
    flx_tensor *outs[2] = {loss, m.p[0]};
    flx_plan_options o = stepping(&opt);
    o.n_assign = 1;
    o.assign_dst = &ema_leaf;
    o.assign_src = &nv;
    flx_tensor *ins[2] = {xin, yin};
    flx_plan *plan = flx_plan_compile(2, outs, 2, ins, &o);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    flx_tensor *p0_out = flx_plan_output(plan, 1);
    for (int s = 0; s < steps; s++) {
        flx_tensor *batch[2] = {data.x[s % 4], data.y[s % 4]};
        ASSERT_EQ(flx_plan_run(plan, 2, batch), FLX_OK) << flx_last_error();
        EXPECT_TRUE(bytes(p0_out) == eager_p0[s]) << "output of step " << s;
        EXPECT_TRUE(bytes(ema_leaf) == eager_ema[s]) << "assigned leaf after step " << s;
    }
    EXPECT_FALSE(bytes(p0_out) == bytes(m.p[0]));  // the parameter itself moved on
    flx_plan_destroy(plan);
    flx_optim_destroy(opt);
}

TEST_F(PlanTest, PlanKeepsItsOptimiserAlive) {
    Batches data = make_batches(ctx, FLX_F32, 4);
    for (int i = 1; i < 4; i++) data.x[i] = data.x[0], data.y[i] = data.y[0];  // batch 0 only
    TrainResult e = eager_train(ctx, FLX_F32, FLX_OPTIM_ADAM, data, 3, nullptr);
    Mlp m = make_mlp(ctx, FLX_F32);
    flx_optim *opt = make_optim(ctx, m, FLX_OPTIM_ADAM);
    flx_tensor *xin = rand_tensor(ctx, FLX_F32, {12, 8}, 999);
    flx_tensor *loss = mlp_loss(m, xin, data.y[0]);  // labels: an external source
    ASSERT_EQ(flx_backward(loss), FLX_OK);
    flx_plan_options o = stepping(&opt);
    flx_plan *plan = flx_plan_compile(1, &loss, 1, &xin, &o);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    flx_optim_destroy(opt);  // the plan still holds it
    for (int s = 0; s < 3; s++) ASSERT_EQ(flx_plan_run(plan, 1, &data.x[0]), FLX_OK) << flx_last_error();
    for (int i = 0; i < 4; i++) EXPECT_TRUE(bytes(m.p[i]) == e.params[i]) << "parameter " << i;
    flx_plan_destroy(plan);  // releases the optimiser; the fixture checks that nothing leaked
}

// A compile that fails leaves no tensor and no device memory behind.
flx_status compile_status_no_leak(flx_ctx *ctx, int32_t n_out, flx_tensor *const *outs,
                                  int32_t n_in, flx_tensor *const *ins,
                                  const flx_plan_options *opt) {
    int64_t live = flx_live_tensors();
    flx_ctx_stats a{}, b{};
    EXPECT_EQ(flx_ctx_get_stats(ctx, &a), FLX_OK);
    flx_status s = compile_status(n_out, outs, n_in, ins, opt);  // the error stays set
    EXPECT_EQ(flx_live_tensors(), live) << "a failed compile leaked tensors";
    EXPECT_EQ(flx_ctx_get_stats(ctx, &b), FLX_OK);
    EXPECT_EQ(b.bytes_in_use, a.bytes_in_use) << "a failed compile leaked memory";
    return s;
}

TEST_F(PlanTest, OptimiserBadInputsGiveClearErrors) {
    Mlp m = make_mlp(ctx, FLX_F32);
    flx_optim *opt = make_optim(ctx, m, FLX_OPTIM_MOMENTUM);
    auto [xin, yin] = mlp_inputs(ctx, FLX_F32, 0);
    flx_tensor *loss = mlp_loss(m, xin, yin);
    flx_tensor *ins[2] = {xin, yin};
    flx_plan_options o = stepping(&opt);
    auto compile = [&](int32_t n_out, flx_tensor *const *outs, int32_t n_in, flx_tensor *const *in) {
        return compile_status_no_leak(ctx, n_out, outs, n_in, in, &o);
    };
    // A loss that depends on none of the optimiser's parameters.
    flx_tensor *other = make(ctx, FLX_F32, {3}, {1, 2, 3});
    ASSERT_EQ(flx_set_requires_grad(other, true), FLX_OK);
    flx_tensor *unrelated = flx_sum_all(flx_square(other));
    EXPECT_TRUE(fails(compile(1, &unrelated, 2, ins), FLX_ERR_STATE, "depends on none of the 4 parameters"));
    ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
    o.optims = nullptr;
    EXPECT_TRUE(fails(compile(1, &loss, 2, ins), FLX_ERR_INVALID_ARGUMENT, "optimiser list"));
    o.n_optim = -1;
    o.optims = &opt;
    EXPECT_TRUE(fails(compile(1, &loss, 2, ins), FLX_ERR_INVALID_ARGUMENT, "optimiser list"));
    flx_optim *null_opt = nullptr;
    o.n_optim = 1;
    o.optims = &null_opt;
    EXPECT_TRUE(fails(compile(1, &loss, 2, ins), FLX_ERR_INVALID_ARGUMENT, "optimiser 0 is NULL"));
    flx_optim *twice[2] = {opt, opt};
    o.n_optim = 2;
    o.optims = twice;
    EXPECT_TRUE(fails(compile(1, &loss, 2, ins), FLX_ERR_INVALID_ARGUMENT,
                      "optimiser 1 repeats optimiser 0"));
    o.n_optim = 1;
    o.optims = &opt;
    // A parameter that is also a plan input, or an assignment destination.
    flx_tensor *ins3[3] = {xin, yin, m.p[1]};
    EXPECT_TRUE(fails(compile(1, &loss, 3, ins3), FLX_ERR_INVALID_ARGUMENT, "is input 2 of the plan"));
    flx_tensor *half = flx_mul_scalar(m.p[3], 0.5);
    o.n_assign = 1;
    o.assign_dst = &m.p[3];
    o.assign_src = &half;
    EXPECT_TRUE(fails(compile(1, &loss, 2, ins), FLX_ERR_INVALID_ARGUMENT,
                      "destination of assignment 0"));
    o.n_assign = 0;
    o.assign_dst = o.assign_src = nullptr;
    // Output 0 is the loss: one element, depending on the parameters.
    flx_tensor *wide[2] = {flx_mul_scalar(m.p[1], 2.0), loss};
    EXPECT_TRUE(fails(compile(2, wide, 2, ins), FLX_ERR_SHAPE, "output 0 is the loss"));
    flx_tensor *no_grad = flx_sum_all(xin);
    EXPECT_TRUE(fails(compile(1, &no_grad, 2, ins), FLX_ERR_NOT_DIFFERENTIABLE, "requires grad"));
    // Parameters 2 and 3 have a .grad, but this loss does not use them.
    flx_tensor *first_layer = flx_sum_all(flx_relu(flx_add(flx_matmul(xin, m.p[0]), m.p[1])));
    EXPECT_TRUE(fails(compile(1, &first_layer, 2, ins), FLX_ERR_STATE, "does not depend on it"));
    // Another context.
    {
        flx_ctx *other = flx_ctx_create(flx_device_cpu());
        ASSERT_NE(other, nullptr);
        ASSERT_EQ(flx_scope_begin(), FLX_OK);
        flx_tensor *po = rand_tensor(other, FLX_F32, {3}, 5);
        flx_optim *oo = flx_optim_create(other, FLX_OPTIM_SGD, 1, &po, nullptr);
        ASSERT_NE(oo, nullptr) << flx_last_error();
        o.optims = &oo;
        EXPECT_TRUE(fails(compile(1, &loss, 2, ins), FLX_ERR_DEVICE, "another context"));
        o.optims = &opt;
        flx_optim_destroy(oo);
        ASSERT_EQ(flx_scope_end(0, nullptr), FLX_OK);
        EXPECT_EQ(flx_ctx_destroy(other), FLX_OK) << flx_last_error();
    }
    // A failure after the gradients were built (a stale graph among the outputs): nothing leaks,
    // and the optimiser is not left held (the fixture's leak check sees its parameters).
    flx_tensor *w = make(ctx, FLX_F32, {2}, {1, 2});
    flx_tensor *stale = flx_exp(w);
    ASSERT_EQ(flx_assign(w, make(ctx, FLX_F32, {2}, {3, 4})), FLX_OK);
    flx_tensor *outs[2] = {loss, stale};
    EXPECT_TRUE(fails(compile(2, outs, 2, ins), FLX_ERR_STATE, "changed in place"));
    // And the good compile still works after all that.
    EXPECT_EQ(compile(1, &loss, 2, ins), FLX_OK) << flx_last_error();
    flx_optim_destroy(opt);
}

TEST_F(PlanTest, OptimiserParameterWithNewOrSharedBufferFailsTheRun) {
    Mlp m = make_mlp(ctx, FLX_F32);
    flx_optim *opt = make_optim(ctx, m, FLX_OPTIM_ADAM);
    auto [xin, yin] = mlp_inputs(ctx, FLX_F32, 0);
    flx_tensor *loss = mlp_loss(m, xin, yin);
    ASSERT_EQ(flx_backward(loss), FLX_OK);
    flx_plan_options o = stepping(&opt);
    flx_tensor *ins[2] = {xin, yin};
    flx_plan *plan = flx_plan_compile(1, &loss, 2, ins, &o);
    ASSERT_NE(plan, nullptr) << flx_last_error();
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();
    // Something shares parameter 1's buffer: writing it in place would change that tensor too.
    flx_tensor *sharer = make(ctx, FLX_F32, {16}, std::vector<double>(16, 0));
    ASSERT_EQ(flx_assign(sharer, m.p[1]), FLX_OK);
    std::vector<unsigned char> shared_value = bytes(sharer);
    EXPECT_TRUE(fails(flx_plan_run(plan, 0, nullptr), FLX_ERR_STATE, "shares its buffer"));
    EXPECT_TRUE(bytes(sharer) == shared_value);
    ASSERT_EQ(flx_assign(sharer, make(ctx, FLX_F32, {16}, std::vector<double>(16, 1))), FLX_OK);
    ASSERT_EQ(flx_plan_run(plan, 0, nullptr), FLX_OK) << flx_last_error();  // released: fine again
    // A parameter given a new buffer: the plan would update memory nobody reads any more.
    std::vector<unsigned char> before = bytes(m.p[0]);
    ASSERT_EQ(flx_assign(m.p[2], rand_tensor(ctx, FLX_F32, {16, 3}, 77)), FLX_OK);
    EXPECT_TRUE(fails(flx_plan_run(plan, 0, nullptr), FLX_ERR_STATE, "compile the plan again"));
    EXPECT_TRUE(bytes(m.p[0]) == before) << "a failed run changed a parameter";
    flx_plan_destroy(plan);
    flx_optim_destroy(opt);
}

// ---- math mode -------------------------------------------------------------------------------
TEST_F(PlanTest, MathModeIsExplicitAndValidated) {
    int32_t mode = -1;
    ASSERT_EQ(flx_get_math_mode(ctx, &mode), FLX_OK);
    EXPECT_EQ(mode, FLX_MATH_STRICT);
    EXPECT_TRUE(fails(flx_set_math_mode(nullptr, FLX_MATH_TF32), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(fails(flx_set_math_mode(ctx, 2), FLX_ERR_INVALID_ARGUMENT, "unknown mode"));
    EXPECT_TRUE(fails(flx_set_math_mode(ctx, -1), FLX_ERR_INVALID_ARGUMENT, "unknown mode"));
    EXPECT_TRUE(fails(flx_get_math_mode(ctx, nullptr), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    EXPECT_TRUE(fails(flx_get_math_mode(nullptr, &mode), FLX_ERR_INVALID_ARGUMENT, "NULL"));
    ASSERT_EQ(flx_set_math_mode(ctx, FLX_MATH_STRICT | FLX_MATH_TF32), FLX_OK);  // CPU: ignored
    ASSERT_EQ(flx_get_math_mode(ctx, &mode), FLX_OK);
    EXPECT_EQ(mode, FLX_MATH_TF32);
    // CPU results do not change.
    flx_tensor *a = rand_tensor(ctx, FLX_F32, {5, 5}, 1);
    std::vector<unsigned char> tf = bytes(flx_matmul(a, a));
    ASSERT_EQ(flx_set_math_mode(ctx, FLX_MATH_STRICT), FLX_OK);
    EXPECT_TRUE(tf == bytes(flx_matmul(a, a)));
}

// ---- CUDA (skips without a GPU) --------------------------------------------------------------
// The shared CUDA context, never destroyed here: later tests of the process use it too.
using CudaPlan = CudaCpuTest;

TEST_F(CudaPlan, CapturedAndUncapturedEqualEager) {
    flx_tensor *w = rand_tensor(gpu, FLX_F32, {64, 32}, 3);
    Builder build = [&](const std::vector<flx_tensor *> &in) {
        flx_tensor *h = flx_gelu(flx_matmul(in[0], w));
        flx_tensor *sm = flx_softmax(h, -1, 1.0);
        const int64_t rs[1] = {128 * 32};
        return std::vector<flx_tensor *>{sm, flx_sum_all(flx_reshape(h, 1, rs))};
    };
    std::vector<std::vector<flx_tensor *>> batches;
    for (int i = 0; i < 3; i++) batches.push_back({rand_tensor(gpu, FLX_F32, {128, 64}, 40 + i)});
    expect_plan_matches(gpu, build, batches, FLX_PLAN_CAPTURE_ON);
    expect_plan_matches(gpu, build, batches, FLX_PLAN_CAPTURE_OFF);
    {
        std::vector<flx_tensor *> outs = build(batches[0]);
        flx_plan *p = flx_plan_compile(2, outs.data(), 1, batches[0].data(), nullptr);
        ASSERT_NE(p, nullptr) << flx_last_error();
        EXPECT_TRUE(plan_info(p).captured) << "default capture is on for CUDA";
        quiet_runs(gpu, p);
        flx_plan_destroy(p);
    }
}

TEST_F(CudaPlan, EagerOpsBetweenCapturedReplaysKeepTheirValues) {
    eager_between_replays(gpu);
}

TEST_F(CudaPlan, CapturedTrainingEqualsEager) {
    train_compare(gpu, 300, FLX_PLAN_CAPTURE_ON);
    train_compare(gpu, 300, FLX_PLAN_CAPTURE_OFF);
}

TEST_F(CudaPlan, OptimiserInCapturedPlanEqualsEager) {
    LrSchedule lr = [](int s) { return s < 10 ? 0.002 * (s + 1) : 0.02 * std::pow(0.9, s - 10); };
    optim_plan_cases(gpu, 50, lr, FLX_PLAN_CAPTURE_ON, true);
    optim_plan_cases(gpu, 50, nullptr, FLX_PLAN_CAPTURE_OFF, false);
    {
        // Forward, backward and the fused update: one graph launch per run, no host wait, no
        // allocation.
        Batches data = make_batches(gpu, FLX_F32, 4);
        Mlp m = make_mlp(gpu, FLX_F32);
        flx_optim *opt = make_optim(gpu, m, FLX_OPTIM_ADAM);
        flx_tensor *loss = mlp_loss(m, data.x[0], data.y[0]);
        ASSERT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
        flx_plan_options o = stepping(&opt);
        flx_tensor *ins[2] = {data.x[0], data.y[0]};
        flx_plan *p = flx_plan_compile(1, &loss, 2, ins, &o);
        ASSERT_NE(p, nullptr) << flx_last_error();
        flx_plan_info info = plan_info(p);
        EXPECT_TRUE(info.captured);
        EXPECT_EQ(info.n_optim, 1);
        EXPECT_EQ(quiet_runs(gpu, p), 10u) << "a run is more than one launch";
        double step = 0;
        ASSERT_EQ(flx_optim_get_hparam(opt, FLX_HP_STEP, &step), FLX_OK);
        EXPECT_EQ(step, 11.0);  // the step count advances on the device, inside the graph
        flx_plan_destroy(p);
        flx_optim_destroy(opt);
    }
}

TEST_F(CudaPlan, MathModeSwitchesTf32) {
    ASSERT_EQ(flx_set_math_mode(gpu, FLX_MATH_TF32), FLX_OK) << flx_last_error();
    ASSERT_EQ(flx_set_math_mode(gpu, FLX_MATH_STRICT), FLX_OK) << flx_last_error();
    EXPECT_TRUE(fails(flx_set_math_mode(gpu, 4), FLX_ERR_INVALID_ARGUMENT, "unknown mode"));
}


}  // namespace
