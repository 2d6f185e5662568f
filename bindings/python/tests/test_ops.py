"""Values and gradients against numpy float64 references for a broad op sample."""
import math

import numpy as np
import pytest

import fluxion as fx

rng = np.random.default_rng(0)


def r(*shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, size=shape)


def erf(x):
    return np.vectorize(math.erf)(x)


# name, fluxion fn, numpy fn, derivative (numpy), domain
UNARY = [
    ("neg", fx.neg, lambda x: -x, lambda x: -np.ones_like(x), (-2, 2)),
    ("abs", fx.abs, np.abs, np.sign, (0.1, 2)),
    ("square", fx.square, np.square, lambda x: 2 * x, (-2, 2)),
    ("sqrt", fx.sqrt, np.sqrt, lambda x: 0.5 / np.sqrt(x), (0.2, 3)),
    ("rsqrt", fx.rsqrt, lambda x: 1 / np.sqrt(x), lambda x: -0.5 * x ** -1.5, (0.2, 3)),
    ("reciprocal", fx.reciprocal, lambda x: 1 / x, lambda x: -1 / x ** 2, (0.3, 3)),
    ("exp", fx.exp, np.exp, np.exp, (-2, 2)),
    ("log", fx.log, np.log, lambda x: 1 / x, (0.2, 3)),
    ("log1p", fx.log1p, np.log1p, lambda x: 1 / (1 + x), (-0.5, 3)),
    ("sin", fx.sin, np.sin, np.cos, (-3, 3)),
    ("cos", fx.cos, np.cos, lambda x: -np.sin(x), (-3, 3)),
    ("tanh", fx.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2, (-2, 2)),
    ("sinh", fx.sinh, np.sinh, np.cosh, (-2, 2)),
    ("cosh", fx.cosh, np.cosh, np.sinh, (-2, 2)),
    ("erf", fx.erf, erf, lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x), (-2, 2)),
    ("sigmoid", fx.sigmoid, lambda x: 1 / (1 + np.exp(-x)),
     lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2, (-3, 3)),
    ("relu", fx.relu, lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0, (-2, 2)),
    ("softplus", fx.softplus, lambda x: np.log1p(np.exp(x)), lambda x: 1 / (1 + np.exp(-x)), (-3, 3)),
    ("gelu", fx.gelu, lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
     lambda x: 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
     (-2, 2)),
    ("pow3", lambda t: t ** 3, lambda x: x ** 3, lambda x: 3 * x ** 2, (-2, 2)),
    ("leaky_relu", lambda t: fx.leaky_relu(t, 0.1), lambda x: np.where(x > 0, x, 0.1 * x),
     lambda x: np.where(x > 0, 1.0, 0.1), (-2, 2)),
]


@pytest.mark.parametrize("case", UNARY, ids=[c[0] for c in UNARY])
def test_unary_values_and_gradients(case, no_leaks):
    name, f, ref, dref, (lo, hi) = case
    xv = r(3, 4, lo=lo, hi=hi)
    x = fx.tensor(xv, dtype=fx.float64, requires_grad=True)
    y = f(x)
    np.testing.assert_allclose(y.numpy(), ref(xv), rtol=1e-12, atol=1e-12)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), dref(xv), rtol=1e-10, atol=1e-12)


BINARY = [
    ("add", lambda a, b: a + b, lambda a, b: a + b, lambda a, b, g: (g, g)),
    ("sub", lambda a, b: a - b, lambda a, b: a - b, lambda a, b, g: (g, -g)),
    ("mul", lambda a, b: a * b, lambda a, b: a * b, lambda a, b, g: (g * b, g * a)),
    ("div", lambda a, b: a / b, lambda a, b: a / b, lambda a, b, g: (g / b, -g * a / b ** 2)),
    ("pow", lambda a, b: a ** b, lambda a, b: a ** b,
     lambda a, b, g: (g * b * a ** (b - 1), g * a ** b * np.log(a))),
    ("maximum", fx.maximum, np.maximum, lambda a, b, g: (g * (a >= b), g * (a < b))),
    ("minimum", fx.minimum, np.minimum, lambda a, b, g: (g * (a <= b), g * (a > b))),
]


@pytest.mark.parametrize("case", BINARY, ids=[c[0] for c in BINARY])
def test_binary_broadcasting_values_and_gradients(case, no_leaks):
    name, f, ref, dref = case
    av, bv = r(3, 4, lo=0.5, hi=2), r(4, lo=0.5, hi=2)
    a = fx.tensor(av, dtype=fx.float64, requires_grad=True)
    b = fx.tensor(bv, dtype=fx.float64, requires_grad=True)
    y = f(a, b)
    np.testing.assert_allclose(y.numpy(), ref(av, bv), rtol=1e-12)
    gv = r(3, 4)
    ga, gb = fx.grad_of(y, [a, b], fx.tensor(gv, dtype=fx.float64))
    ea, eb = dref(av, bv, gv)
    np.testing.assert_allclose(ga.numpy(), ea, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb.numpy(), eb.sum(axis=0), rtol=1e-10, atol=1e-12)


def test_reductions_and_shapes_against_numpy(no_leaks):
    xv = r(2, 3, 4)
    x = fx.tensor(xv, dtype=fx.float64)
    np.testing.assert_allclose(fx.sum(x).item(), xv.sum(), rtol=1e-12)
    np.testing.assert_allclose(fx.sum(x, axis=1).numpy(), xv.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(x.mean(axis=(0, 2), keepdims=True).numpy(),
                               xv.mean(axis=(0, 2), keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(x.max(axis=-1).numpy(), xv.max(axis=-1))
    np.testing.assert_allclose(x.min().item(), xv.min())
    np.testing.assert_allclose(fx.var(x, axis=2, correction=1).numpy(), xv.var(axis=2, ddof=1),
                               rtol=1e-12)
    np.testing.assert_allclose(fx.logsumexp(x, axis=1).numpy(),
                               np.log(np.exp(xv).sum(axis=1)), rtol=1e-12)
    np.testing.assert_array_equal(fx.argmax(x, axis=2).numpy(), xv.argmax(axis=2))
    np.testing.assert_allclose(x.reshape(6, 4).numpy(), xv.reshape(6, 4))
    np.testing.assert_allclose(x.reshape(-1).numpy(), xv.reshape(-1))
    np.testing.assert_allclose(x.permute(2, 0, 1).numpy(), xv.transpose(2, 0, 1))
    np.testing.assert_allclose(x.transpose(0, 2).numpy(), xv.swapaxes(0, 2))
    np.testing.assert_allclose(x.T.numpy(), xv.T)
    np.testing.assert_allclose(fx.concat([x, x], axis=1).numpy(), np.concatenate([xv, xv], 1))
    np.testing.assert_allclose(fx.stack([x, x], axis=0).numpy(), np.stack([xv, xv]))
    np.testing.assert_allclose(fx.unsqueeze(x, 1).numpy(), xv[:, None])
    np.testing.assert_allclose(fx.pad(x, [0, 0, 1, 2, 0, 1], 5.0).numpy(),
                               np.pad(xv, [(0, 0), (1, 2), (0, 1)], constant_values=5.0))
    np.testing.assert_allclose(fx.broadcast_to(fx.tensor(xv[0, 0], dtype=fx.float64), 2, 4).numpy(),
                               np.broadcast_to(xv[0, 0], (2, 4)))
    idx = fx.tensor(np.array([2, 0, 2]))
    np.testing.assert_allclose(fx.index_select(x, 1, idx).numpy(), xv[:, [2, 0, 2]])
    np.testing.assert_allclose(x[fx.tensor(np.array([1, 0]))].numpy(), xv[[1, 0]])
    oh = fx.one_hot(fx.tensor(np.array([0, 2, 1])), 3, dtype=fx.float64)
    np.testing.assert_array_equal(oh.numpy(), np.eye(3)[[0, 2, 1]])


def test_indexing_matches_numpy(no_leaks):
    xv = r(4, 5, 6)
    x = fx.tensor(xv, dtype=fx.float64)
    for key in [1, -1, (2, 3), (slice(1, 3),), (slice(None), 2), (Ellipsis, 1),
                (slice(None, None, 2), slice(1, None), -2), (None, 0), (1, slice(0, 10)),
                (slice(-3, -1),)]:
        np.testing.assert_allclose(x[key].numpy(), xv[key], err_msg=repr(key))
    with pytest.raises(IndexError):
        x[4]
    with pytest.raises(IndexError):
        x[0, 0, 0, 0]
    with pytest.raises(ValueError):
        x[::-1]
    with pytest.raises(TypeError):
        x["a"]


def test_indexing_is_differentiable(no_leaks):
    xv = r(3, 4)
    x = fx.tensor(xv, dtype=fx.float64, requires_grad=True)
    (x[1, 1:3] * 2).sum().backward()
    expect = np.zeros_like(xv)
    expect[1, 1:3] = 2
    np.testing.assert_array_equal(x.grad.numpy(), expect)


def test_linear_algebra(no_leaks):
    av, bv = r(2, 3, 4), r(4, 5)
    a, b = fx.tensor(av, dtype=fx.float64), fx.tensor(bv, dtype=fx.float64)
    np.testing.assert_allclose((a @ b).numpy(), av @ bv, rtol=1e-12)
    v, w = r(4), r(4)
    np.testing.assert_allclose(fx.dot(fx.tensor(v), fx.tensor(w)).item(), v @ w, rtol=1e-5)
    np.testing.assert_allclose(fx.outer(fx.tensor(v, dtype=fx.float64), fx.tensor(w, dtype=fx.float64)).numpy(), np.outer(v, w))
    m = r(4, 4)
    mt = fx.tensor(m, dtype=fx.float64)
    np.testing.assert_allclose(fx.trace(mt).item(), np.trace(m))
    np.testing.assert_allclose(fx.diagonal(mt).numpy(), np.diagonal(m))
    np.testing.assert_allclose(fx.diag(fx.tensor(v, dtype=fx.float64)).numpy(), np.diag(v))
    # gradient of sum(A @ B) wrt A is ones @ B^T
    A = fx.tensor(r(3, 4), dtype=fx.float64, requires_grad=True)
    (A @ b).sum().backward()
    np.testing.assert_allclose(A.grad.numpy(), np.ones((3, 5)) @ bv.T, rtol=1e-12)


def test_scalars_comparisons_where_and_creation(no_leaks):
    x = fx.tensor([1.0, -2.0, 3.0])
    np.testing.assert_allclose((2 - x).numpy(), [1, 4, -1])
    np.testing.assert_allclose((x / 2).numpy(), [0.5, -1, 1.5])
    np.testing.assert_allclose((1 / x).numpy(), [1, -0.5, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose((2 ** x).numpy(), [2, 0.25, 8], rtol=1e-6)
    np.testing.assert_array_equal((x > 0).numpy(), [True, False, True])
    np.testing.assert_array_equal((x == -2).numpy(), [False, True, False])
    assert (x >= 1).dtype is fx.bool_
    np.testing.assert_allclose(fx.where(x > 0, x, 0.0).numpy(), [1, 0, 3])
    np.testing.assert_allclose((-x).numpy(), [-1, 2, -3])
    np.testing.assert_allclose(abs(x).numpy(), [1, 2, 3])
    assert fx.zeros(2, 3).shape == (2, 3)
    assert fx.ones((4,), dtype="float64").dtype is fx.float64
    np.testing.assert_allclose(fx.full((2,), 7).numpy(), [7, 7])
    np.testing.assert_allclose(fx.eye(2, 3).numpy(), np.eye(2, 3))
    np.testing.assert_array_equal(fx.arange(5).numpy(), np.arange(5))
    assert fx.arange(5).dtype is fx.int64
    u = fx.rand(1000, seed=3)
    assert 0 <= u.min().item() and u.max().item() < 1
    assert abs(fx.randn(4000, seed=1).mean().item()) < 0.1
    assert fx.tensor([1, 2]).dtype is fx.int64
    assert fx.tensor([True]).dtype is fx.bool_
    assert fx.tensor(3.5).shape == ()
    assert fx.tensor(3.5).item() == 3.5
    assert int(fx.tensor(7)) == 7
    assert len(fx.zeros(5, 2)) == 5
    assert fx.zeros(5, 2).numel() == 10
    assert fx.zeros(1).device == "cpu"
    assert "shape=(2,)" in repr(fx.tensor([1.0, 2.0]))
    np.testing.assert_allclose(x.astype(fx.int32).numpy(), [1, -2, 3])
    np.testing.assert_allclose(fx.clamp(x, -1, 2).numpy(), [1, -1, 2])


def test_no_grad_and_requires_grad(no_leaks):
    x = fx.tensor([1.0, 2.0], requires_grad=True)
    assert x.requires_grad
    with fx.no_grad():
        assert not fx.is_grad_enabled()
        y = x * 2
    assert fx.is_grad_enabled()
    assert not y.requires_grad

    @fx.no_grad()
    def f(t):
        return t * 3

    assert not f(x).requires_grad
    z = (x * x).sum()
    z.backward()
    z2 = (x * x).sum()
    z2.backward()  # gradients accumulate
    np.testing.assert_allclose(x.grad.numpy(), [4, 8])
    x.zero_grad()
    assert x.grad is None
    x.requires_grad = False
    assert not x.requires_grad
    w = fx.tensor([1.0])
    assert w.grad is None
