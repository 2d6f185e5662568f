"""gradcheck / jacobian / hessian through Python callables, and the runtime queries (stats,
math mode, fusion, device properties, version)."""
import numpy as np
import pytest

import fluxion as fx
from fluxion import _capi

rng = np.random.default_rng(8)


def test_jacobian_and_hessian_against_closed_forms(no_leaks):
    x = rng.standard_normal(3)
    a = rng.standard_normal((2, 3))
    at = fx.tensor(a)
    jac = fx.jacobian(lambda v: fx.tanh(at @ v), fx.tensor(x)).numpy()
    np.testing.assert_allclose(jac, (1 - np.tanh(a @ x) ** 2)[:, None] * a, rtol=1e-12)
    hess = fx.hessian(lambda v: (v ** 3).sum() + (v[0] * v[1]), fx.tensor(x)).numpy()
    want = np.diag(6 * x)
    want[0, 1] = want[1, 0] = 1.0
    np.testing.assert_allclose(hess, want, rtol=1e-12, atol=1e-14)


def test_gradcheck_detects_a_wrong_vjp():
    @fx.custom_fn
    def f(x):
        return x * x

    @f.defvjp
    def _(inputs, out, g):
        return g * inputs[0] * 3  # wrong: d(x^2) = 2x

    xs = [rng.uniform(0.5, 1.5, (2, 2))]
    assert fx.gradcheck(lambda x: x * x, xs)
    assert fx.gradcheck(f, xs, raise_exception=False) is False
    with pytest.raises(ValueError, match="gradcheck failed"):
        fx.gradcheck(f, xs)


def test_gradcheck_reraises_exceptions_of_fn():
    def bad(x):
        raise KeyError("inside fn")

    with pytest.raises(KeyError, match="inside fn"):
        fx.gradcheck(bad, [np.ones(2)])


def test_runtime_queries():
    assert fx.version() == f"{_capi.FLX_VERSION_MAJOR}.{_capi.FLX_VERSION_MINOR}.{_capi.FLX_VERSION_PATCH}"
    fx.reset_stats()
    a = fx.ones(4) + 1
    a.eval()
    assert a.is_realized
    st = fx.stats()
    assert st["nodes_executed"] >= 1 and set(st) >= {"kernels", "allocs", "peak_bytes"}
    assert fx.get_math_mode() == "strict"
    fx.set_math_mode("tf32")
    assert fx.get_math_mode() == "tf32"
    fx.set_math_mode("strict")
    with pytest.raises(ValueError):
        fx.set_math_mode("fast")
    was = fx.get_fusion()
    fx.set_fusion(not was)
    assert fx.get_fusion() is (not was)
    fx.set_fusion(was)
    if fx.cuda_device_count() == 0:
        with pytest.raises((ValueError, fx.FluxionError)):
            fx.cuda_device_info(0)
    else:
        info = fx.cuda_device_info(0)
        assert info["major"] >= 1 and info["total_memory"] > 0 and info["name"]
