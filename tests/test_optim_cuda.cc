// test_optim_cuda.cc — the CUDA optimiser kernel's two access paths (kernels/optim.cu): a tensor's
// vector-aligned bulk is updated kVec = 4 elements per access, its last numel % 4 elements one
// at a time, and both must give bit-identical results. The same values sit at a vector position
// in one parameter and at a scalar (tail) position in another; after several steps of every rule
// and dtype (f16/bf16 through the f32 master) the parameters and every state slot must hold the
// same bits there. The found-inf pass of loss scaling must see an inf in the tail as well as in
// the bulk. (Agreement with the CPU reference: OptimCuda and MixedCuda.)
#include "optim_reference.h"
#include "testing.h"

#include <cmath>
#include <string>
#include <vector>

namespace {

using flxt::values;

// p7 = v[0..6]: vector step over 0..3, tail 4..6. p4 = {v4, v5, v6, v0}: one vector step.
// Position q of p7 and kTwin[q] of p4 hold the same value (q = 0, 4, 5, 6).
const int kQ[4] = {0, 4, 5, 6}, kTwin[4] = {3, 0, 1, 2};

std::vector<double> twin(const std::vector<double> &v7) { return {v7[4], v7[5], v7[6], v7[0]}; }

// loss = sum(p (c + d p / 2)) per parameter: gradient c + d p, elementwise.
flx_tensor *quadratic(flx_tensor *p, flx_tensor *c, flx_tensor *d) {
    return flx_sum_all(flx_mul(p, flx_add(c, flx_mul(flx_mul_scalar(p, 0.5), d))));
}

struct Outcome {
    std::vector<double> p7, p4;
    std::vector<std::vector<double>> s7, s4; // every state slot (the master last for halves)
};

// `steps` optimiser steps on a GPU context; c7[bad] is inf on step `bad_step` (-1: never).
Outcome train(flx_ctx *gpu, flx_dtype dt, const flxt::Variant &v, bool scaling, int steps, int bad, int bad_step) {
    Outcome r;
    EXPECT_EQ(flx_scope_begin(), FLX_OK);
    std::vector<double> w = flxt::rand_values(7, 1), c = flxt::rand_values(7, 2),
                        d = flxt::rand_values(7, 3, 0.5, 2.0);
    flx_tensor *ps[2] = {flxt::make(gpu, dt, {7}, w), flxt::make(gpu, dt, {4}, twin(w))};
    for (flx_tensor *p : ps) EXPECT_EQ(flx_set_requires_grad(p, true), FLX_OK) << flx_last_error();
    flx_optim_config cfg = v.cfg;
    cfg.loss_scaling = scaling;
    flx_optim *opt = flx_optim_create(gpu, v.kind, 2, ps, &cfg);
    EXPECT_NE(opt, nullptr) << flx_last_error();
    if (opt) {
        for (int s = 0; s < steps; s++) {
            std::vector<double> cs = c;
            if (s == bad_step) cs[(size_t)bad] = INFINITY;
            flx_tensor *loss = flx_add(quadratic(ps[0], flxt::make(gpu, dt, {7}, cs), flxt::make(gpu, dt, {7}, d)),
                                       quadratic(ps[1], flxt::make(gpu, dt, {4}, twin(cs)),
                                                 flxt::make(gpu, dt, {4}, twin(d))));
            if (scaling) loss = flx_optim_scale_loss(opt, loss);
            EXPECT_EQ(flx_backward(loss), FLX_OK) << flx_last_error();
            EXPECT_EQ(flx_optim_step(opt), FLX_OK) << flx_last_error();
            EXPECT_EQ(flx_optim_zero_grad(opt), FLX_OK);
        }
        r.p7 = values(ps[0]);
        r.p4 = values(ps[1]);
        for (int32_t s = 0; s < flx_optim_state_count(opt); s++) {
            r.s7.push_back(values(flx_optim_get_state(opt, 0, s)));
            r.s4.push_back(values(flx_optim_get_state(opt, 1, s)));
        }
        flx_optim_destroy(opt);
    }
    EXPECT_EQ(flx_scope_end(0, nullptr), FLX_OK);
    return r;
}

// The twin positions of p7 and p4 hold the same bits (NaN-free values compared exactly).
void expect_twins_equal(const std::vector<double> &a7, const std::vector<double> &a4, const char *what) {
    ASSERT_EQ(a7.size(), 7u) << what;
    ASSERT_EQ(a4.size(), 4u) << what;
    for (int q = 0; q < 4; q++)
        EXPECT_EQ(a7[(size_t)kQ[q]], a4[(size_t)kTwin[q]]) << what << ": element " << kQ[q];
}

using OptimCudaVector = flxt::CudaCpuTest;  // the shared CUDA context: never destroyed here

TEST_F(OptimCudaVector, TailAndVectorStepsAreBitIdentical) {
    for (flx_dtype dt : {FLX_F32, FLX_F64, FLX_F16, FLX_BF16})
        for (const flxt::Variant &v : flxt::variants()) {
            SCOPED_TRACE(std::string(v.name) + " " + flx_dtype_name(dt));
            Outcome r = train(gpu, dt, v, false, 3, 0, -1);
            expect_twins_equal(r.p7, r.p4, "parameter");
            for (size_t s = 0; s < r.s7.size(); s++)
                expect_twins_equal(r.s7[s], r.s4[s], ("state " + std::to_string(s)).c_str());
        }
}

// An inf gradient in the bulk (element 1) or in the tail (element 5) of p7 makes the found-inf
// pass skip the step: the parameters after the bad step equal those of a run that stops before it.
TEST_F(OptimCudaVector, FoundInfSeesBulkAndTail) {
    flxt::Variant v = flxt::variants()[0];
    for (const flxt::Variant &x : flxt::variants())
        if (std::string(x.name) == "adam") v = x;
    for (flx_dtype dt : {FLX_F32, FLX_BF16})
        for (int bad : {1, 5}) {
            SCOPED_TRACE(std::string(flx_dtype_name(dt)) + " inf at " + std::to_string(bad));
            Outcome before = train(gpu, dt, v, true, 2, bad, -1), skipped = train(gpu, dt, v, true, 3, bad, 2);
            EXPECT_EQ(skipped.p7, before.p7);
            EXPECT_EQ(skipped.p4, before.p4);
        }
}

}  // namespace
