// consumer.cpp — a tiny C++17 program using an installed fluxion through its C++ header
// fluxion/fluxion.hpp (built by tools/consumer-check against a temporary install prefix, through
// CMake and through pkg-config).
//
// Computes the gradient of f(x) = sum(x^3 + sin x) at x = (0.5, -1, 2, 3) with backward() and
// prints it on one line, "grad: g0 g1 g2 g3"; the closed form is 3 x^2 + cos x. Runs on the GPU
// when fluxion was built with CUDA and one is usable, on the CPU otherwise (and says which);
// --cpu forces the CPU. Exits 1 on any error (a flx::error carries fluxion's status and message)
// or if the gradient is off the closed form.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include <fluxion/fluxion.hpp>

int main(int argc, char **argv) {
    const bool force_cpu = argc > 1 && std::strcmp(argv[1], "--cpu") == 0;
    std::printf("fluxion %s (header %d.%d.%d), CUDA backend: %s, CUDA devices: %d\n",
                flx_version(), FLX_VERSION_MAJOR, FLX_VERSION_MINOR, FLX_VERSION_PATCH,
                flx_has_cuda() ? "yes" : "no", static_cast<int>(flx_cuda_device_count()));
    const std::vector<double> xv{0.5, -1.0, 2.0, 3.0};
    std::vector<double> g;
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
        flx::context ctx(dev);  // declared first: it outlives the tensors below
        flx::tensor x = ctx.from_vector(xv, {4});
        x.set_requires_grad();
        (flx::pow(x, 3.0) + flx::sin(x)).sum().backward();
        g = x.grad().to_vector<double>();
    } catch (const flx::error &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
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
    return 0;
}
