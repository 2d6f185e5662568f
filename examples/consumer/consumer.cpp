// consumer.cpp — a tiny C++17 program using an installed fluxion (issue 9; built by tools/test
// against a temporary install prefix, through CMake and through pkg-config).
//
// Computes the gradient of f(x) = sum(x^3 + sin x) at x = (0.5, -1, 2, 3) with flx_backward and
// prints it on one line, "grad: g0 g1 g2 g3"; the closed form is 3 x^2 + cos x. Runs on the GPU
// when fluxion was built with CUDA and one is usable, on the CPU otherwise (and says which);
// --cpu forces the CPU. Exits 1 on any error or if the gradient is off the closed form.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fluxion/fluxion.h>

namespace {

// Throws with fluxion's message when a call failed.
void check(bool ok, const char *what) {
    if (!ok)
        throw std::runtime_error(std::string(what) + ": " + flx_status_string(flx_last_status()) +
                                 ": " + flx_last_error());
}

struct CtxDeleter {
    void operator()(flx_ctx *c) const { flx_ctx_destroy(c); }
};
struct TensorDeleter {
    void operator()(flx_tensor *t) const { flx_release(t); }
};
using Ctx = std::unique_ptr<flx_ctx, CtxDeleter>;
using Tensor = std::unique_ptr<flx_tensor, TensorDeleter>;

std::vector<double> gradient(flx_ctx *ctx, const std::vector<double> &xv) {
    const int64_t shape[1] = {static_cast<int64_t>(xv.size())};
    std::vector<double> g(xv.size());
    Tensor x(flx_from_host(ctx, FLX_F64, 1, shape, xv.data()));
    check(x && flx_set_requires_grad(x.get(), true) == FLX_OK, "input");
    {
        // Intermediates of the expression are owned by a scope (released at its end).
        check(flx_scope_begin() == FLX_OK, "flx_scope_begin");
        flx_tensor *f = flx_sum_all(flx_add(flx_pow_scalar(x.get(), 3.0), flx_sin(x.get())));
        bool ok = f && flx_backward(f) == FLX_OK;
        flx_scope_end(0, nullptr);
        check(ok, "f(x) and backward");
    }
    Tensor gx(flx_grad(x.get()));
    check(gx && flx_to_host(gx.get(), g.data(), g.size() * sizeof(double)) == FLX_OK, "grad");
    return g;
}

}  // namespace

int main(int argc, char **argv) {
    const bool force_cpu = argc > 1 && std::strcmp(argv[1], "--cpu") == 0;
    std::printf("fluxion %s (header %d.%d.%d), CUDA backend: %s, CUDA devices: %d\n",
                flx_version(), FLX_VERSION_MAJOR, FLX_VERSION_MINOR, FLX_VERSION_PATCH,
                flx_has_cuda() ? "yes" : "no", static_cast<int>(flx_cuda_device_count()));
    try {
        flx_device dev = flx_device_cpu();
        flx_cuda_device_props props{};
        if (!force_cpu && flx_cuda_device_info(0, &props) == FLX_OK) {
            dev = flx_device_cuda(0);
            std::printf("device: cuda:0 (%s, sm_%d%d)\n", props.name, props.major, props.minor);
        } else {
            std::printf("device: cpu (%s)\n", force_cpu ? "--cpu" : flx_last_error());
            flx_clear_error();
        }
        const std::vector<double> xv{0.5, -1.0, 2.0, 3.0};
        std::vector<double> g;
        {
            Ctx ctx(flx_ctx_create(dev));
            check(ctx != nullptr, "flx_ctx_create");
            g = gradient(ctx.get(), xv);
        }
        std::printf("grad:");
        for (double v : g) std::printf(" %.17g", v);
        std::printf("\n");
        for (size_t i = 0; i < xv.size(); i++) {
            const double want = 3 * xv[i] * xv[i] + std::cos(xv[i]);
            if (!(std::fabs(g[i] - want) <= 1e-12 * (1 + std::fabs(want)))) {
                std::fprintf(stderr, "grad[%zu] = %.17g, closed form %.17g\n", i, g[i], want);
                return 1;
            }
        }
        std::printf("OK: matches 3 x^2 + cos x\n");
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
