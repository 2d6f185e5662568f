// fluxion.hpp — header-only C++17 interface over the C API of fluxion.h.
//
// Everything here is a thin, inline layer: the C library does the work, this file gives it
// owning types and exceptions.
//
//   flx::context ctx = flx::context::cpu();                 // or flx::context::cuda(0)
//   flx::tensor W = ctx.randn({3, 2}, FLX_F32, /*seed*/ 1);
//   W.set_requires_grad(true);
//   flx::tensor x = ctx.uniform({4, 3}, -1.0, 1.0, FLX_F32, 2);
//   flx::tensor loss = flx::mean_all(flx::square(flx::tanh(flx::matmul(x, W))));
//   loss.backward();
//   std::vector<float> g = W.grad().to_vector<float>();
//
// Ownership
//   - flx::tensor holds one reference of its own: copying retains, destruction releases, moving
//     transfers. The reference is never one that a C scope (flx_scope_begin) owns: when a result
//     is created inside a scope, the wrapper takes an extra reference (flx_retain) and the scope
//     keeps and later releases its own. So a tensor may outlive the scope it was made in, and
//     a scope may end before or after the wrappers made in it, in any order.
//   - flx::tensor::wrap adopts a reference returned by a C call made by the caller (the same
//     rule applies, so wrap the result right away, with the same scopes open as at the call);
//     .get() lends the raw handle for C calls without giving up ownership.
//   - flx::context, flx::optimizer, flx::plan and flx::checkpoint are move-only owners of their
//     C objects. A context must outlive its tensors (flx_ctx_destroy refuses while tensors are
//     alive): declare it before them. Its destructor cannot report that; call close() to learn it.
//
// Errors
//   A C call that returns NULL (where a result was due) or a status other than FLX_OK throws
//   flx::error, which carries the status (status()) and fluxion's message (what()). The
//   per-thread C error state is cleared when the exception is made, so the next call starts
//   clean. Destructors never throw.
//
// Threads: the C rules hold (one context and its tensors on one thread at a time).
#ifndef FLUXION_HPP
#define FLUXION_HPP

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fluxion/fluxion.h"

namespace flx {

// ---- errors -------------------------------------------------------------------------------------
class error : public std::runtime_error {
public:
    error(flx_status status, const std::string &message)
        : std::runtime_error(std::string(flx_status_string(status)) + ": " + message),
          status_(status) {}
    flx_status status() const noexcept { return status_; }

private:
    flx_status status_;
};

namespace detail {
// Turns the thread's C error state into an exception (and clears it).
[[noreturn]] inline void raise(const char *what) {
    flx_status st = flx_last_status();
    std::string msg = flx_last_error();
    flx_clear_error();
    if (st == FLX_OK) st = FLX_ERR_INVALID_ARGUMENT;
    if (msg.empty()) msg = std::string(what) + " failed";
    throw error(st, msg);
}
inline void check(flx_status st, const char *what) {
    if (st != FLX_OK) raise(what);
}
// The one owner of a C object that Destroy frees (NULL-safe): move-only, so the wrappers built on
// it (optimizer, plan, checkpoint) are too. Converts to the raw handle for C calls.
template <typename T, void (*Destroy)(T *)> class unique_handle {
public:
    unique_handle() noexcept = default;
    unique_handle(const unique_handle &) = delete;
    unique_handle &operator=(const unique_handle &) = delete;
    unique_handle(unique_handle &&o) noexcept : p_(o.p_) { o.p_ = nullptr; }
    unique_handle &operator=(unique_handle &&o) noexcept {
        if (this != &o) reset(std::exchange(o.p_, nullptr));
        return *this;
    }
    ~unique_handle() { Destroy(p_); }
    void reset(T *p) noexcept {
        Destroy(p_);
        p_ = p;
    }
    operator T *() const noexcept { return p_; }

private:
    T *p_ = nullptr;
};
// A reference returned by the C API becomes one the caller alone owns (see "Ownership").
inline flx_tensor *own(flx_tensor *t, const char *what) {
    if (!t) raise(what);
    if (flx_scope_depth() > 0) flx_retain(t);
    return t;
}
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr flx_dtype value = FLX_F32; };
template <> struct dtype_of<double> { static constexpr flx_dtype value = FLX_F64; };
template <> struct dtype_of<int32_t> { static constexpr flx_dtype value = FLX_I32; };
template <> struct dtype_of<int64_t> { static constexpr flx_dtype value = FLX_I64; };
template <> struct dtype_of<bool> { static constexpr flx_dtype value = FLX_BOOL; };
template <> struct dtype_of<uint8_t> { static constexpr flx_dtype value = FLX_BOOL; };
}  // namespace detail

// The fluxion dtype of a C++ element type: float, double, int32_t, int64_t, bool / uint8_t.
template <typename T> inline constexpr flx_dtype dtype_v = detail::dtype_of<T>::value;

// A shape: written {2, 3} at call sites (an empty {} is a 0-d shape).
using dims = std::vector<int64_t>;

class context;

// ---- tensor -------------------------------------------------------------------------------------
class tensor {
public:
    tensor() noexcept = default;  // empty: no handle (operations on it throw)
    tensor(const tensor &o) noexcept : t_(flx_retain(o.t_)) {}
    tensor(tensor &&o) noexcept : t_(o.t_) { o.t_ = nullptr; }
    tensor &operator=(const tensor &o) noexcept {
        if (this != &o) {
            flx_tensor *old = t_;
            t_ = flx_retain(o.t_);
            flx_release(old);
        }
        return *this;
    }
    tensor &operator=(tensor &&o) noexcept {
        if (this != &o) {
            flx_release(t_);
            t_ = o.t_;
            o.t_ = nullptr;
        }
        return *this;
    }
    ~tensor() { flx_release(t_); }

    // Adopts a new reference returned by a C function (throws flx::error if t is NULL).
    static tensor wrap(flx_tensor *t, const char *what = "fluxion call") {
        return tensor(detail::own(t, what));
    }
    // Takes an extra reference to a handle the caller keeps owning (NULL gives an empty tensor).
    static tensor borrow(flx_tensor *t) noexcept { return tensor(flx_retain(t)); }

    flx_tensor *get() const noexcept { return t_; }
    // Gives up ownership: the caller must flx_release the returned handle.
    flx_tensor *release() noexcept {
        flx_tensor *t = t_;
        t_ = nullptr;
        return t;
    }
    explicit operator bool() const noexcept { return t_ != nullptr; }

    int32_t ndim() const { return flx_ndim(valid()); }
    int64_t numel() const { return flx_numel(valid()); }
    int64_t dim(int32_t axis) const {
        int64_t d = flx_dim(valid(), axis);
        if (d < 0) detail::raise("flx_dim");
        return d;
    }
    dims shape() const {
        const int64_t *s = flx_shape(valid());
        return dims(s, s + flx_ndim(t_));
    }
    flx_dtype dtype() const { return flx_dtype_of(valid()); }
    bool is_realized() const noexcept { return flx_is_realized(t_); }

    // The data, converted to T (flx_to_host_as: any dtype to any element type).
    template <typename T> std::vector<T> to_vector() const {
        static_assert(!std::is_same<T, bool>::value, "use uint8_t for bool data");
        std::vector<T> v(static_cast<size_t>(numel()));
        detail::check(flx_to_host_as(t_, dtype_v<T>, v.data(), v.size() * sizeof(T)),
                      "flx_to_host_as");
        return v;
    }
    double item() const {
        double v = 0;
        detail::check(flx_item(valid(), &v), "flx_item");
        return v;
    }
    const tensor &eval() const {
        flx_tensor *t = valid();
        detail::check(flx_eval(1, &t), "flx_eval");
        return *this;
    }
    void assign(const tensor &src) { detail::check(flx_assign(valid(), src.t_), "flx_assign"); }

    // Autodiff.
    tensor &set_requires_grad(bool on = true) {
        detail::check(flx_set_requires_grad(valid(), on), "flx_set_requires_grad");
        return *this;
    }
    bool requires_grad() const noexcept { return flx_requires_grad(t_); }
    // The accumulated gradient, or an empty tensor when there is none yet.
    tensor grad() const {
        flx_tensor *g = flx_grad(valid());
        if (!g) {
            if (flx_last_status() != FLX_OK) detail::raise("flx_grad");
            return tensor();
        }
        return wrap(g, "flx_grad");
    }
    void zero_grad() { detail::check(flx_zero_grad(valid()), "flx_zero_grad"); }
    void backward() const { detail::check(flx_backward(valid()), "flx_backward"); }
    tensor detach() const { return wrap(flx_detach(t_), "flx_detach"); }

    // Shape, dtype and reductions as members, for chaining.
    tensor cast(flx_dtype dt) const { return wrap(flx_cast(t_, dt), "flx_cast"); }
    tensor reshape(const dims &shape) const {
        return wrap(flx_reshape(t_, static_cast<int32_t>(shape.size()), shape.data()),
                    "flx_reshape");
    }
    tensor transpose(int32_t a0 = -2, int32_t a1 = -1) const {
        return wrap(flx_transpose(t_, a0, a1), "flx_transpose");
    }
    tensor sum(const std::vector<int32_t> &axes, bool keepdims = false) const {
        return wrap(flx_sum(t_, static_cast<int32_t>(axes.size()), axes.data(), keepdims),
                    "flx_sum");
    }
    tensor mean(const std::vector<int32_t> &axes, bool keepdims = false) const {
        return wrap(flx_mean(t_, static_cast<int32_t>(axes.size()), axes.data(), keepdims),
                    "flx_mean");
    }
    tensor sum() const { return wrap(flx_sum_all(t_), "flx_sum_all"); }
    tensor mean() const { return wrap(flx_mean_all(t_), "flx_mean_all"); }

private:
    explicit tensor(flx_tensor *t) noexcept : t_(t) {}
    flx_tensor *valid() const {
        if (!t_) throw error(FLX_ERR_INVALID_ARGUMENT, "empty flx::tensor");
        return t_;
    }
    flx_tensor *t_ = nullptr;
};

// ---- context ------------------------------------------------------------------------------------
class context {
public:
    explicit context(flx_device dev) : c_(flx_ctx_create(dev)) {
        if (!c_) detail::raise("flx_ctx_create");
    }
    static context cpu() { return context(flx_device_cpu()); }
    static context cuda(int32_t index = 0) { return context(flx_device_cuda(index)); }
    // The first CUDA device when one is usable, else the CPU.
    static context best() {
        return context(flx_cuda_device_count() > 0 ? flx_device_cuda(0) : flx_device_cpu());
    }
    context(const context &) = delete;
    context &operator=(const context &) = delete;
    context(context &&o) noexcept : c_(o.c_) { o.c_ = nullptr; }
    context &operator=(context &&o) noexcept {
        if (this != &o) {
            destroy_quietly();
            c_ = o.c_;
            o.c_ = nullptr;
        }
        return *this;
    }
    ~context() { destroy_quietly(); }
    // Destroys the context now; throws FLX_ERR_STATE (and keeps it) while tensors are alive.
    void close() {
        if (c_) detail::check(flx_ctx_destroy(c_), "flx_ctx_destroy");
        c_ = nullptr;
    }

    flx_ctx *get() const noexcept { return c_; }
    flx_device device() const { return flx_ctx_device(c_); }
    void synchronize() { detail::check(flx_ctx_synchronize(c_), "flx_ctx_synchronize"); }

    // Creation (dtype defaults to f32).
    tensor zeros(const dims &s, flx_dtype dt = FLX_F32) const {
        return tensor::wrap(flx_zeros(c_, dt, nd(s), s.data()), "flx_zeros");
    }
    tensor ones(const dims &s, flx_dtype dt = FLX_F32) const {
        return tensor::wrap(flx_ones(c_, dt, nd(s), s.data()), "flx_ones");
    }
    tensor full(const dims &s, double value, flx_dtype dt = FLX_F32) const {
        return tensor::wrap(flx_full(c_, dt, nd(s), s.data(), value), "flx_full");
    }
    tensor scalar(double value, flx_dtype dt = FLX_F32) const {
        return tensor::wrap(flx_scalar(c_, dt, value), "flx_scalar");
    }
    tensor eye(int64_t n, flx_dtype dt = FLX_F32) const {
        return tensor::wrap(flx_eye(c_, dt, n, n), "flx_eye");
    }
    tensor arange(double start, double stop, double step = 1, flx_dtype dt = FLX_F32) const {
        return tensor::wrap(flx_arange(c_, dt, start, stop, step), "flx_arange");
    }
    tensor uniform(const dims &s, double lo, double hi, flx_dtype dt = FLX_F32,
                   uint64_t seed = 0) const {
        return tensor::wrap(flx_uniform(c_, dt, nd(s), s.data(), lo, hi, seed), "flx_uniform");
    }
    tensor randn(const dims &s, flx_dtype dt = FLX_F32, uint64_t seed = 0) const {
        return tensor::wrap(flx_randn(c_, dt, nd(s), s.data(), seed), "flx_randn");
    }
    // A tensor of dtype dt from host data of element type T (converted when they differ; the
    // number of elements must equal the shape's).
    template <typename T>
    tensor from_vector(const std::vector<T> &data, const dims &s,
                       flx_dtype dt = dtype_v<T>) const {
        static_assert(!std::is_same<T, bool>::value, "use uint8_t for bool data");
        int64_t n = 1;
        for (int64_t d : s) n *= d;
        if (n != static_cast<int64_t>(data.size()))
            throw error(FLX_ERR_SHAPE, "from_vector: " + std::to_string(data.size()) +
                                           " values for a shape of " + std::to_string(n) +
                                           " elements");
        return tensor::wrap(flx_from_host_as(c_, dt, nd(s), s.data(), dtype_v<T>, data.data()),
                            "flx_from_host_as");
    }
    template <typename T>
    tensor from_vector(std::initializer_list<T> data, const dims &s,
                       flx_dtype dt = dtype_v<T>) const {
        return from_vector(std::vector<T>(data), s, dt);
    }

private:
    static int32_t nd(const dims &s) { return static_cast<int32_t>(s.size()); }
    void destroy_quietly() noexcept {
        if (c_ && flx_ctx_destroy(c_) != FLX_OK) flx_clear_error();  // tensors still alive: leak
        c_ = nullptr;
    }
    flx_ctx *c_ = nullptr;
};

// ---- scope and no-grad guards -------------------------------------------------------------------
// A C scope for the lifetime of the guard (flx_scope_begin / flx_scope_end): releases the
// scope's references to everything made inside. flx::tensor objects keep their own references.
class scope {
public:
    scope() { detail::check(flx_scope_begin(), "flx_scope_begin"); }
    scope(const scope &) = delete;
    scope &operator=(const scope &) = delete;
    ~scope() {
        if (open_ && flx_scope_end(0, nullptr) != FLX_OK) flx_clear_error();
    }
    // Ends the scope early (throws on a C-level imbalance).
    void close() {
        if (!open_) return;
        open_ = false;
        detail::check(flx_scope_end(0, nullptr), "flx_scope_end");
    }

private:
    bool open_ = true;
};

class no_grad {
public:
    no_grad() noexcept { flx_no_grad_begin(); }
    no_grad(const no_grad &) = delete;
    no_grad &operator=(const no_grad &) = delete;
    ~no_grad() { flx_no_grad_end(); }
};

// ---- ops ----------------------------------------------------------------------------------------
#define FLX_HPP_UNARY(NAME)                                                                     \
    inline tensor NAME(const tensor &x) { return tensor::wrap(flx_##NAME(x.get()), "flx_" #NAME); }
FLX_HPP_UNARY(neg)
FLX_HPP_UNARY(abs)
FLX_HPP_UNARY(sign)
FLX_HPP_UNARY(square)
FLX_HPP_UNARY(sqrt)
FLX_HPP_UNARY(rsqrt)
FLX_HPP_UNARY(reciprocal)
FLX_HPP_UNARY(exp)
FLX_HPP_UNARY(log)
FLX_HPP_UNARY(log1p)
FLX_HPP_UNARY(sin)
FLX_HPP_UNARY(cos)
FLX_HPP_UNARY(tanh)
FLX_HPP_UNARY(cosh)
FLX_HPP_UNARY(sinh)
FLX_HPP_UNARY(erf)
FLX_HPP_UNARY(sigmoid)
FLX_HPP_UNARY(relu)
FLX_HPP_UNARY(gelu)
FLX_HPP_UNARY(softplus)
FLX_HPP_UNARY(sum_all)
FLX_HPP_UNARY(mean_all)
FLX_HPP_UNARY(det)
FLX_HPP_UNARY(logdet)
FLX_HPP_UNARY(inv)
FLX_HPP_UNARY(expm)
FLX_HPP_UNARY(trace)
#undef FLX_HPP_UNARY

#define FLX_HPP_BINARY(NAME)                                                                    \
    inline tensor NAME(const tensor &a, const tensor &b) {                                      \
        return tensor::wrap(flx_##NAME(a.get(), b.get()), "flx_" #NAME);                        \
    }
FLX_HPP_BINARY(add)
FLX_HPP_BINARY(sub)
FLX_HPP_BINARY(mul)
FLX_HPP_BINARY(div)
FLX_HPP_BINARY(pow)
FLX_HPP_BINARY(maximum)
FLX_HPP_BINARY(minimum)
FLX_HPP_BINARY(eq)
FLX_HPP_BINARY(ne)
FLX_HPP_BINARY(lt)
FLX_HPP_BINARY(le)
FLX_HPP_BINARY(gt)
FLX_HPP_BINARY(ge)
FLX_HPP_BINARY(matmul)
FLX_HPP_BINARY(dot)
FLX_HPP_BINARY(outer)
FLX_HPP_BINARY(solve)
#undef FLX_HPP_BINARY

inline tensor pow(const tensor &x, double p) {
    return tensor::wrap(flx_pow_scalar(x.get(), p), "flx_pow_scalar");
}
inline tensor clamp(const tensor &x, double lo, double hi) {
    return tensor::wrap(flx_clamp(x.get(), lo, hi), "flx_clamp");
}
inline tensor where(const tensor &c, const tensor &a, const tensor &b) {
    return tensor::wrap(flx_where(c.get(), a.get(), b.get()), "flx_where");
}
inline tensor softmax(const tensor &x, int32_t axis = -1, double temperature = 1) {
    return tensor::wrap(flx_softmax(x.get(), axis, temperature), "flx_softmax");
}
inline tensor log_softmax(const tensor &x, int32_t axis = -1, double temperature = 1) {
    return tensor::wrap(flx_log_softmax(x.get(), axis, temperature), "flx_log_softmax");
}
inline tensor cross_entropy(const tensor &logits, const tensor &labels,
                            flx_reduction red = FLX_REDUCTION_MEAN, int64_t ignore_index = -100) {
    return tensor::wrap(flx_cross_entropy(logits.get(), labels.get(), red, ignore_index),
                        "flx_cross_entropy");
}
inline tensor mse_loss(const tensor &y, const tensor &t, flx_reduction red = FLX_REDUCTION_MEAN) {
    return tensor::wrap(flx_mse_loss(y.get(), t.get(), red), "flx_mse_loss");
}
// y = x W^T + b (b may be an empty tensor).
inline tensor linear(const tensor &x, const tensor &W, const tensor &b = tensor()) {
    return tensor::wrap(flx_linear(x.get(), W.get(), b.get()), "flx_linear");
}

// Operators: elementwise with broadcasting; a double operand is a scalar of the tensor's dtype.
inline tensor operator+(const tensor &a, const tensor &b) { return add(a, b); }
inline tensor operator-(const tensor &a, const tensor &b) { return sub(a, b); }
inline tensor operator*(const tensor &a, const tensor &b) { return mul(a, b); }
inline tensor operator/(const tensor &a, const tensor &b) { return div(a, b); }
inline tensor operator-(const tensor &a) { return neg(a); }
inline tensor operator+(const tensor &a, double s) {
    return tensor::wrap(flx_add_scalar(a.get(), s), "flx_add_scalar");
}
inline tensor operator+(double s, const tensor &a) { return a + s; }
inline tensor operator-(const tensor &a, double s) { return a + (-s); }
inline tensor operator-(double s, const tensor &a) {
    return tensor::wrap(flx_affine(a.get(), -1.0, s), "flx_affine");
}
inline tensor operator*(const tensor &a, double s) {
    return tensor::wrap(flx_mul_scalar(a.get(), s), "flx_mul_scalar");
}
inline tensor operator*(double s, const tensor &a) { return a * s; }
namespace detail {
// A 0-d tensor of a's dtype and context: x / s is a true division (not x * (1/s), which can
// differ in the last bit).
inline tensor scalar_like(const tensor &a, double s) {
    return tensor::wrap(flx_scalar(flx_ctx_of(a.get()), flx_dtype_of(a.get()), s), "flx_scalar");
}
}  // namespace detail
inline tensor operator/(const tensor &a, double s) {
    if (!a) return div(a, a);  // throws: empty tensor
    return div(a, detail::scalar_like(a, s));
}
inline tensor operator/(double s, const tensor &a) {
    if (!a) return div(a, a);
    return div(detail::scalar_like(a, s), a);
}
inline tensor &operator+=(tensor &a, const tensor &b) { return a = a + b; }
inline tensor &operator-=(tensor &a, const tensor &b) { return a = a - b; }
inline tensor &operator*=(tensor &a, const tensor &b) { return a = a * b; }
inline tensor &operator/=(tensor &a, const tensor &b) { return a = a / b; }

// Gradients of outputs with respect to inputs as new (lazy) tensors (flx_grad_of; scalar
// outputs, cotangents of ones).
inline std::vector<tensor> grad_of(const std::vector<tensor> &outputs,
                                   const std::vector<tensor> &inputs, bool create_graph = false) {
    std::vector<flx_tensor *> out, in, g(inputs.size(), nullptr);
    for (const tensor &t : outputs) out.push_back(t.get());
    for (const tensor &t : inputs) in.push_back(t.get());
    detail::check(flx_grad_of(static_cast<int32_t>(out.size()), out.data(), nullptr,
                              static_cast<int32_t>(in.size()), in.data(), create_graph, g.data()),
                  "flx_grad_of");
    std::vector<tensor> r;
    for (flx_tensor *t : g) r.push_back(tensor::wrap(t, "flx_grad_of"));
    return r;
}

// ---- optimiser ----------------------------------------------------------------------------------
class optimizer {
public:
    optimizer(const context &ctx, flx_optim_kind kind, const std::vector<tensor> &params,
              const flx_optim_config *cfg = nullptr) {
        std::vector<flx_tensor *> p;
        for (const tensor &t : params) p.push_back(t.get());
        o_.reset(flx_optim_create(ctx.get(), kind, static_cast<int32_t>(p.size()), p.data(), cfg));
        if (!o_) detail::raise("flx_optim_create");
    }
    optimizer(const context &ctx, flx_optim_kind kind, const std::vector<tensor> &params,
              const flx_optim_config &cfg)
        : optimizer(ctx, kind, params, &cfg) {}
    flx_optim *get() const noexcept { return o_; }
    void step() { detail::check(flx_optim_step(o_), "flx_optim_step"); }
    void zero_grad() { detail::check(flx_optim_zero_grad(o_), "flx_optim_zero_grad"); }
    void set_lr(double lr) { detail::check(flx_optim_set_lr(o_, lr), "flx_optim_set_lr"); }
    double hparam(flx_optim_hparam which) const {
        double v = 0;
        detail::check(flx_optim_get_hparam(o_, which, &v), "flx_optim_get_hparam");
        return v;
    }
    double lr() const { return hparam(FLX_HP_LR); }
    // Dynamic loss scaling (cfg.loss_scaling): loss * the current scale, for backward; the scale
    // and the count of skipped steps (both wait for the device).
    tensor scale_loss(const tensor &loss) const {
        return tensor::wrap(flx_optim_scale_loss(o_, loss.get()), "flx_optim_scale_loss");
    }
    double loss_scale() const {
        double v = 0;
        detail::check(flx_optim_loss_scale(o_, &v), "flx_optim_loss_scale");
        return v;
    }
    int64_t skipped_steps() const {
        int64_t v = 0;
        detail::check(flx_optim_skipped_steps(o_, &v), "flx_optim_skipped_steps");
        return v;
    }
    // The whole state (moments, master copies, step count, hyperparameters, loss scaler) in one
    // safetensors file.
    void save(const std::string &path) const {
        detail::check(flx_optim_save(o_, path.c_str()), "flx_optim_save");
    }
    void load(const std::string &path) {
        detail::check(flx_optim_load(o_, path.c_str()), "flx_optim_load");
    }

private:
    detail::unique_handle<flx_optim, flx_optim_destroy> o_;
};

// ---- plan ---------------------------------------------------------------------------------------
struct plan_options {
    flx_plan_capture capture = FLX_PLAN_CAPTURE_DEFAULT;
    std::vector<std::pair<tensor, tensor>> assign;  // (leaf, value) written after every run
    std::vector<const optimizer *> optimizers;      // stepped by every run; output 0 is the loss
};

class plan {
public:
    plan(const std::vector<tensor> &outputs, const std::vector<tensor> &inputs,
         const plan_options &opts = plan_options()) {
        std::vector<flx_tensor *> out, in, dst, src;
        std::vector<flx_optim *> opt;
        for (const tensor &t : outputs) out.push_back(t.get());
        for (const tensor &t : inputs) in.push_back(t.get());
        for (const auto &a : opts.assign) {
            dst.push_back(a.first.get());
            src.push_back(a.second.get());
        }
        for (const optimizer *o : opts.optimizers) opt.push_back(o ? o->get() : nullptr);
        flx_plan_options o = flx_plan_default_options();
        o.capture = opts.capture;
        o.n_assign = static_cast<int32_t>(dst.size());
        o.assign_dst = dst.data();
        o.assign_src = src.data();
        o.n_optim = static_cast<int32_t>(opt.size());
        o.optims = opt.data();
        p_.reset(flx_plan_compile(static_cast<int32_t>(out.size()), out.data(),
                                  static_cast<int32_t>(in.size()), in.data(), &o));
        if (!p_) detail::raise("flx_plan_compile");
    }
    flx_plan *get() const noexcept { return p_; }
    // Replays the plan; inputs as at compile time (empty: keep every bound input; an empty
    // tensor in the list keeps that input).
    void run(const std::vector<tensor> &inputs = {}) {
        std::vector<flx_tensor *> in;
        for (const tensor &t : inputs) in.push_back(t.get());
        detail::check(flx_plan_run(p_, static_cast<int32_t>(in.size()),
                                   in.empty() ? nullptr : in.data()),
                      "flx_plan_run");
    }
    template <typename T> void set_input(int32_t k, const std::vector<T> &data) {
        detail::check(flx_plan_set_input_host(p_, k, data.data(), data.size() * sizeof(T)),
                      "flx_plan_set_input_host");
    }
    void set_input(int32_t k, const tensor &t) {
        detail::check(flx_plan_set_input(p_, k, t.get()), "flx_plan_set_input");
    }
    tensor output(int32_t k) const { return tensor::wrap(flx_plan_output(p_, k), "flx_plan_output"); }
    flx_plan_info info() const {
        flx_plan_info i{};
        detail::check(flx_plan_get_info(p_, &i), "flx_plan_get_info");
        return i;
    }

private:
    detail::unique_handle<flx_plan, flx_plan_destroy> p_;
};

// ---- checkpoints (safetensors) ------------------------------------------------------------------
inline void save_safetensors(
    const std::string &path, const std::vector<std::pair<std::string, tensor>> &named,
    const std::vector<std::pair<std::string, std::string>> &metadata = {}) {
    std::vector<const char *> names, keys, values;
    std::vector<flx_tensor *> ts;
    for (const auto &n : named) {
        names.push_back(n.first.c_str());
        ts.push_back(n.second.get());
    }
    for (const auto &m : metadata) {
        keys.push_back(m.first.c_str());
        values.push_back(m.second.c_str());
    }
    detail::check(flx_save_safetensors(path.c_str(), static_cast<int32_t>(ts.size()), names.data(),
                                       ts.data(), static_cast<int32_t>(keys.size()), keys.data(),
                                       values.data()),
                  "flx_save_safetensors");
}

class checkpoint {
public:
    checkpoint(const context &ctx, const std::string &path) {
        c_.reset(flx_load_safetensors(ctx.get(), path.c_str()));
        if (!c_) detail::raise("flx_load_safetensors");
    }

    flx_checkpoint *get() const noexcept { return c_; }
    int32_t size() const noexcept { return flx_checkpoint_count(c_); }
    std::string name(int32_t i) const {
        const char *n = flx_checkpoint_name(c_, i);
        if (!n) throw error(FLX_ERR_INVALID_ARGUMENT, "checkpoint index out of range");
        return n;
    }
    tensor operator[](int32_t i) const {
        return tensor::wrap(flx_checkpoint_tensor(c_, i), "flx_checkpoint_tensor");
    }
    tensor operator[](const std::string &name) const {
        return tensor::wrap(flx_checkpoint_find(c_, name.c_str()), "flx_checkpoint_find");
    }
    // Metadata value, or def when the key is absent.
    std::string metadata(const std::string &key, const std::string &def = "") const {
        const char *v = flx_checkpoint_metadata(c_, key.c_str());
        return v ? v : def;
    }

private:
    detail::unique_handle<flx_checkpoint, flx_checkpoint_destroy> c_;
};

}  // namespace flx

#endif  // FLUXION_HPP
