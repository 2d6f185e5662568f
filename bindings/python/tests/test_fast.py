"""The compiled hot path (fluxion._fast, abi3) against the pure-ctypes path: the same values and
errors for tensor-tensor, tensor-number and reflected operators, module functions, and tensors
made inside C callbacks."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fluxion as fx
from fluxion import _core

needs_fast = pytest.mark.skipif(_core._fast is None, reason="fluxion._fast was not built or is disabled")

SCRIPT = r"""
import numpy as np, fluxion as fx, json
a = fx.tensor(np.array([[1.5, -2.0], [0.25, 3.0]]))
b = fx.tensor(np.array([[0.5, 4.0], [-1.0, 2.0]]))
i = fx.tensor(np.array([3, -4], dtype=np.int64))
out = {
  "ops": [v.numpy().tolist() for v in (a + b, a - b, a * b, a / b, a @ b, a ** b.abs(), -a, abs(a),
          a + 1, 1 + a, a - 2, 2 - a, a * 3, 3 * a, a / 4, 4 / a, a ** 2, 2 ** a, a ** 0.5 * 0 + 1,
          i + 1, 1 - i, i * 2, fx.exp(a), fx.maximum(a, b), fx.add(a, 1.0), fx.sub(2.0, a),
          a.exp(), a.maximum(b))],
  "cmp": [v.numpy().tolist() for v in (a == b, a != b, a < b, a <= 0.25, a > b, 1 >= a)],
  "fast": fx._core._fast is not None,
}
try:
    a + fx.ones(3, dtype="float64")
except ValueError as e:
    out["err"] = str(e).split(":")[0]
print(json.dumps(out))
"""


def _run(no_ext):
    env = dict(os.environ)
    if no_ext:
        env["FLUXION_NO_EXTENSION"] = "1"
    else:
        env.pop("FLUXION_NO_EXTENSION", None)
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    return json.loads(r.stdout)


@needs_fast
def test_fast_and_ctypes_paths_agree():
    fast, slow = _run(False), _run(True)
    assert fast["fast"] and not slow["fast"]
    assert fast["ops"] == slow["ops"]
    assert fast["cmp"] == slow["cmp"]
    assert fast["err"] == slow["err"] == "flx_add"


def test_operator_values_against_numpy(no_leaks):
    x = np.array([[1.5, -2.0], [0.25, 3.0]])
    y = np.array([[0.5, 4.0], [-1.0, 2.0]])
    a, b = fx.tensor(x), fx.tensor(y)
    for got, want in [(a + b, x + y), (a - 1, x - 1), (2 - a, 2 - x), (a * b, x * y),
                      (3 * a, 3 * x), (a / b, x / y), (a @ b, x @ y), (-a, -x), (abs(a), abs(x))]:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-15)
    assert (a < b).numpy().tolist() == (x < y).tolist()


def test_fast_ops_inside_custom_fn_callbacks(no_leaks):
    @fx.custom_fn
    def f(x):
        return x * x + x  # runs inside a C callback: tensors need references of their own

    @f.defvjp
    def _(inputs, out, g):
        (x,) = inputs
        return g * (x * 2 + 1)

    x = fx.tensor(np.array([1.0, 2.0]), requires_grad=True)
    f(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 5.0])


def test_fast_errors_and_types(no_leaks):
    a = fx.ones(2)
    with pytest.raises(ValueError, match="flx_add"):
        a + fx.ones(3)
    with pytest.raises(TypeError):
        fx.exp(np.ones(2))
    with pytest.raises(TypeError):
        a + "x"
    assert isinstance(fx.exp(a), fx.Tensor) and fx.exp.__doc__
    assert a.exp().__class__ is fx.Tensor
    import weakref

    w = weakref.ref(a)
    assert w() is a
