// optim_reference.h — a plain reference implementation of the fused optimisers, written here
// from the update rules in fluxion.h (float64, one element at a time), for test_optim.cc and
// test_mixed.cc (Ref.step: w holds each parameter's values, grads its gradient at this step),
// and the configurations both run (variants).
#pragma once

#include <cmath>
#include <vector>

#include "fluxion/fluxion.h"

namespace flxt {

struct Ref {
    flx_optim_kind kind;
    flx_optim_config c;
    std::vector<std::vector<double>> s0, s1, s2;
    int t = 0;
    void init(const std::vector<std::vector<double>> &w) {
        for (auto &x : w) {
            double a0 = kind == FLX_OPTIM_ADAGRAD ? c.initial_accumulator : 0.0;
            s0.push_back(std::vector<double>(x.size(), a0));
            s1.push_back(std::vector<double>(x.size(), 0.0));
            s2.push_back(std::vector<double>(x.size(), 0.0));
        }
    }
    void step(std::vector<std::vector<double>> &w, const std::vector<std::vector<double>> &grads) {
        t++;
        for (size_t j = 0; j < w.size(); j++)
            for (size_t i = 0; i < w[j].size(); i++) {
                double &p = w[j][i];
                double g = grads[j][i];
                switch (kind) {
                case FLX_OPTIM_SGD:
                case FLX_OPTIM_MOMENTUM:
                case FLX_OPTIM_NESTEROV: {
                    g += c.weight_decay * p;
                    if (c.momentum != 0) {
                        double &b = s0[j][i];
                        b = t == 1 ? g : c.momentum * b + (1 - c.dampening) * g;
                        g = c.nesterov ? g + c.momentum * b : b;
                    }
                    p -= c.lr * g;
                    break;
                }
                case FLX_OPTIM_ADAGRAD: {
                    g += c.weight_decay * p;
                    double clr = c.lr / (1 + (t - 1) * c.lr_decay);
                    s0[j][i] += g * g;
                    p -= clr * g / (std::sqrt(s0[j][i]) + c.eps);
                    break;
                }
                case FLX_OPTIM_RMSPROP: {
                    g += c.weight_decay * p;
                    double &v = s0[j][i];
                    v = c.alpha * v + (1 - c.alpha) * g * g;
                    double avg;
                    if (c.centered) {
                        double &a = s2[j][i];
                        a = c.alpha * a + (1 - c.alpha) * g;
                        avg = std::sqrt(v - a * a) + c.eps;
                    } else {
                        avg = std::sqrt(v) + c.eps;
                    }
                    if (c.momentum > 0) {
                        double &b = s1[j][i];
                        b = c.momentum * b + g / avg;
                        p -= c.lr * b;
                    } else {
                        p -= c.lr * g / avg;
                    }
                    break;
                }
                case FLX_OPTIM_ADAM:
                case FLX_OPTIM_ADAMW: {
                    if (kind == FLX_OPTIM_ADAMW) p *= 1 - c.lr * c.weight_decay;
                    else g += c.weight_decay * p;
                    double &m = s0[j][i], &v = s1[j][i];
                    m = c.beta1 * m + (1 - c.beta1) * g;
                    v = c.beta2 * v + (1 - c.beta2) * g * g;
                    double mh = m / (1 - std::pow(c.beta1, t)), vh = v / (1 - std::pow(c.beta2, t));
                    p -= c.lr * mh / (std::sqrt(vh) + c.eps);
                    break;
                }
                default: break;
                }
            }
    }
};

// The optimiser configurations the suites run: every kind, with the options that add state
// slots or terms.
struct Variant {
    const char *name;
    flx_optim_kind kind;
    flx_optim_config cfg;
};

inline std::vector<Variant> variants() {
    std::vector<Variant> v;
    auto add = [&](const char *name, flx_optim_kind k, void (*tweak)(flx_optim_config &)) {
        flx_optim_config c = flx_optim_defaults(k);
        if (tweak) tweak(c);
        v.push_back({name, k, c});
    };
    add("sgd", FLX_OPTIM_SGD, [](flx_optim_config &c) { c.lr = 0.05; c.weight_decay = 0.1; });
    add("momentum", FLX_OPTIM_MOMENTUM, [](flx_optim_config &c) { c.lr = 0.05; c.dampening = 0.2; });
    add("nesterov", FLX_OPTIM_NESTEROV, [](flx_optim_config &c) { c.lr = 0.05; c.weight_decay = 0.01; });
    add("adagrad", FLX_OPTIM_ADAGRAD,
        [](flx_optim_config &c) { c.lr = 0.1; c.lr_decay = 0.1; c.initial_accumulator = 0.5; c.weight_decay = 0.1; });
    add("rmsprop", FLX_OPTIM_RMSPROP, nullptr);
    add("rmsprop-centered-momentum", FLX_OPTIM_RMSPROP,
        [](flx_optim_config &c) { c.centered = true; c.momentum = 0.8; c.weight_decay = 0.05; });
    add("adam", FLX_OPTIM_ADAM, [](flx_optim_config &c) { c.lr = 0.01; });
    add("adam-l2", FLX_OPTIM_ADAM, [](flx_optim_config &c) { c.lr = 0.01; c.weight_decay = 0.1; });
    add("adamw", FLX_OPTIM_ADAMW, [](flx_optim_config &c) { c.lr = 0.01; c.weight_decay = 0.1; });
    return v;
}

}  // namespace flxt
