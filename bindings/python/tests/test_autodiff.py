"""Functional transforms, finite-difference gradchecks through Python callables, custom
functions with Python VJP/JVP."""
import numpy as np
import pytest

import fluxion as fx

rng = np.random.default_rng(1)


def t64(a, requires_grad=False):
    return fx.tensor(np.asarray(a, dtype=np.float64), dtype=fx.float64, requires_grad=requires_grad)


def numeric_grad(f, xs, eps=1e-6):
    """Central differences of a scalar f over every entry of every input (float64 numpy)."""
    out = []
    for j, x in enumerate(xs):
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            xp = [v.copy() for v in xs]
            xm = [v.copy() for v in xs]
            xp[j][i] += eps
            xm[j][i] -= eps
            with fx.no_grad():
                fp = f(*[t64(v) for v in xp]).item()
                fm = f(*[t64(v) for v in xm]).item()
            g[i] = (fp - fm) / (2 * eps)
        out.append(g)
    return out


def gradcheck(f, xs, atol=1e-7, rtol=1e-6):
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    ana = fx.grad(f, argnums=tuple(range(len(xs))))(*[t64(x) for x in xs])
    num = numeric_grad(f, xs)
    for a, n in zip(ana, num):
        np.testing.assert_allclose(a.numpy(), n, atol=atol, rtol=rtol)


# The same gradient problems as the C suite's gradcheck, as Python callables.
PROBLEMS = [
    ("tanh_matmul", lambda a, b: fx.tanh(a @ b).sum(), [(3, 4), (4, 2)]),
    ("softplus_mul", lambda a, b: (fx.softplus(a) * b).mean(), [(2, 3), (3,)]),
    ("log_sum_exp", lambda a: fx.logsumexp(a, axis=1).sum(), [(3, 5)]),
    ("var_sqrt", lambda a: fx.sqrt(fx.var(a, axis=0) + 1.0).sum(), [(4, 3)]),
    ("div_pow", lambda a, b: (a / (b * b + 1.0)).sum() ** 2, [(2, 2), (2, 2)]),
    ("slice_concat", lambda a: fx.concat([a[:, 1:], a[:, :1] * 3], axis=1).sin().sum(), [(3, 4)]),
    ("max_min", lambda a: fx.max(a, axis=1).sum() - fx.min(a, axis=0).sum(), [(3, 4)]),
    ("where_sigmoid", lambda a: fx.where(a > 0, fx.sigmoid(a), a * a).sum(), [(2, 5)]),
    ("trace_outer", lambda a, b: fx.trace(fx.outer(a, b)) + fx.dot(a, b) ** 2, [(4,), (4,)]),
    ("permute_reshape", lambda a: (a.permute(1, 0, 2).reshape(3, -1) ** 2).sum(), [(2, 3, 2)]),
]


@pytest.mark.parametrize("prob", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_gradcheck_python_callables(prob, no_leaks):
    _, f, shapes = prob
    xs = [rng.uniform(-1, 1, s) for s in shapes]
    if prob[0] == "max_min":
        xs = [np.arange(12, dtype=np.float64).reshape(3, 4) * 0.37 % 1.1]
    gradcheck(f, xs)


def test_grad_value_and_grad_argnums(no_leaks):
    f = lambda x, y: (x * x * y).sum()
    x, y = t64([1.0, 2.0]), t64([3.0, 4.0])
    np.testing.assert_allclose(fx.grad(f)(x, y).numpy(), [6, 16])
    gx, gy = fx.grad(f, argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gy.numpy(), [1, 4])
    v, g = fx.value_and_grad(f, argnums=1)(x, y)
    assert v.item() == 19.0 and not v.requires_grad
    np.testing.assert_allclose(g.numpy(), [1, 4])
    # inputs untouched
    assert not x.requires_grad and x.grad is None


def test_nested_grad_and_hvp(no_leaks):
    f = lambda x: (x ** 3).sum()
    x = t64([1.0, -2.0, 0.5])
    np.testing.assert_allclose(fx.grad(lambda z: fx.grad(f)(z).sum())(x).numpy(), 6 * x.numpy())
    v = t64([1.0, 0.0, 2.0])
    val, hv = fx.hvp(f, x, v)
    assert val.item() == pytest.approx(1 - 8 + 0.125)
    np.testing.assert_allclose(hv.numpy(), 6 * x.numpy() * v.numpy())
    # hvp of a quadratic form equals (A + A^T) v
    A = rng.uniform(-1, 1, (3, 3))
    At = t64(A)
    q = lambda z: (z * (At @ z)).sum()
    _, hv = fx.hvp(q, t64([0.3, 0.1, -0.2]), t64([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(hv.numpy(), (A + A.T) @ [1, 2, 3], rtol=1e-12)
    # jvp of grad == hvp (forward over reverse composed by hand)
    _, hv2 = fx.jvp(fx.grad(q), (t64([0.3, 0.1, -0.2]),), (t64([1.0, 2.0, 3.0]),))
    np.testing.assert_allclose(hv2.numpy(), (A + A.T) @ [1, 2, 3], rtol=1e-12)


def test_vjp_and_jvp_against_jacobian(no_leaks):
    W = rng.uniform(-1, 1, (3, 4))
    f = lambda x: fx.tanh(t64(W) @ x)
    xv = rng.uniform(-1, 1, 4)
    J = (1 - np.tanh(W @ xv) ** 2)[:, None] * W
    out, vjp_fn = fx.vjp(f, t64(xv))
    np.testing.assert_allclose(out.numpy(), np.tanh(W @ xv))
    u = rng.uniform(-1, 1, 3)
    (g,) = vjp_fn(t64(u))
    np.testing.assert_allclose(g.numpy(), J.T @ u, rtol=1e-12)
    t = rng.uniform(-1, 1, 4)
    out, tan = fx.jvp(f, (t64(xv),), (t64(t),))
    np.testing.assert_allclose(tan.numpy(), J @ t, rtol=1e-12)


def test_custom_function_square_matches_builtin(no_leaks):
    calls = {"fwd": 0, "vjp": 0, "jvp": 0}

    def fwd(x):
        calls["fwd"] += 1
        assert not x.requires_grad and not fx.is_grad_enabled()
        return x * x

    def vjp(inputs, out, g):
        calls["vjp"] += 1
        return g * 2 * inputs[0]

    def jvp(inputs, tangents, out):
        calls["jvp"] += 1
        return tangents[0] * 2 * inputs[0]

    sq = fx.custom_fn(fwd, vjp, jvp)
    xv = rng.uniform(-1, 1, (2, 3))
    y = sq(t64(xv))
    np.testing.assert_allclose(y.numpy(), xv ** 2)
    gradcheck(lambda x: fx.sin(sq(x)).sum(), [xv])
    x = t64(xv)
    np.testing.assert_allclose(fx.grad(lambda z: sq(z).sum())(x).numpy(),
                               fx.grad(lambda z: fx.square(z).sum())(x).numpy())
    tv = rng.uniform(-1, 1, (2, 3))
    _, t1 = fx.jvp(lambda z: sq(z), (x,), (t64(tv),))
    np.testing.assert_allclose(t1.numpy(), 2 * xv * tv)
    # second order through the Python VJP (it is made of ops)
    _, hv = fx.hvp(lambda z: (sq(z) * z).sum(), x, t64(np.ones((2, 3))))
    np.testing.assert_allclose(hv.numpy(), 6 * xv)
    assert calls["vjp"] > 0 and calls["jvp"] > 0


def test_custom_function_two_inputs_decorator_and_lifetime(no_leaks):
    @fx.custom_fn
    def mulsum(a, b):
        return (a * b).sum()

    @mulsum.defvjp
    def _(inputs, out, g):
        a, b = inputs
        return g * b, None  # no gradient for b

    a = t64([1.0, 2.0], requires_grad=True)
    b = t64([3.0, 4.0], requires_grad=True)
    mulsum(a, b).backward()
    np.testing.assert_allclose(a.grad.numpy(), [3, 4])
    assert b.grad is None or np.all(b.grad.numpy() == 0)
    import gc

    del a, b
    gc.collect()
    assert fx._autodiff.custom_vjp_count() == 0  # callables dropped with their nodes


def test_custom_function_errors(no_leaks):
    bad = fx.custom_fn(lambda x: 1.0)
    with pytest.raises(TypeError, match="must return a Tensor"):
        bad(t64([1.0]))

    def boom(x):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        fx.custom_fn(boom)(t64([1.0]))

    novjp = fx.custom_fn(lambda x: x * 2)
    x = t64([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="no VJP"):
        novjp(x).sum().backward()

    wrong = fx.custom_fn(lambda x: x * 2, vjp=lambda ins, out, g: g.sum())
    with pytest.raises(ValueError, match="VJP callback returned"):
        wrong(t64([1.0, 2.0], requires_grad=True)).sum().backward()

    def raising_vjp(ins, out, g):
        raise ZeroDivisionError("in vjp")

    r = fx.custom_fn(lambda x: x * 2, vjp=raising_vjp)
    with pytest.raises(ZeroDivisionError):
        r(t64([1.0], requires_grad=True)).sum().backward()
    assert fx._autodiff.custom_vjp_count() >= 0


def test_grad_errors():
    with pytest.raises(ValueError, match="one element"):
        fx.grad(lambda x: x * 2)(t64([1.0, 2.0]))
    with pytest.raises(TypeError):
        fx.grad(lambda x: 3.0)(t64([1.0]))
    with pytest.raises(TypeError):
        fx.grad(lambda x: x)(1.0)
    x = t64([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError):
        (x * 2).backward()  # more than one element


def test_example_train_mlp_learns():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "train_mlp.py"
    spec = importlib.util.spec_from_file_location("train_mlp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    first, last, acc = mod.main(["--steps", "60"])
    assert last < 0.8 * first
    assert acc > 0.6
