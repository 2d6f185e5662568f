"""fluxion.linalg against numpy/scipy (float64), gradients by flx_gradcheck and finite
differences; reductions over axis=() (numpy: reduce nothing)."""
import math

import numpy as np
import pytest

import fluxion as fx
from fluxion import linalg as LA

rng = np.random.default_rng(7)


def t64(a, requires_grad=False):
    return fx.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def well_conditioned(*batch, n=4):
    a = rng.standard_normal(batch + (n, n))
    return a + n * np.eye(n)


def test_det_inv_solve_logdet_batched(no_leaks):
    a = well_conditioned(2, 3)
    b = rng.standard_normal((2, 3, 4, 2))
    np.testing.assert_allclose(LA.det(t64(a)).numpy(), np.linalg.det(a), rtol=1e-12)
    np.testing.assert_allclose(LA.inv(t64(a)).numpy(), np.linalg.inv(a), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(LA.solve(t64(a), t64(b)).numpy(), np.linalg.solve(a, b),
                               rtol=1e-10, atol=1e-12)
    s, l = LA.slogdet(t64(a))
    rs, rl = np.linalg.slogdet(a)
    np.testing.assert_array_equal(s.numpy(), rs)
    np.testing.assert_allclose(l.numpy(), rl, rtol=1e-12)
    pos = a[rs > 0]
    np.testing.assert_allclose(LA.logdet(t64(pos)).numpy(), np.log(np.linalg.det(pos)), rtol=1e-12)


def test_solve_vector_rhs():
    a = well_conditioned(3)
    b = rng.standard_normal((3, 4))
    want = np.stack([np.linalg.solve(a[i], b[i]) for i in range(3)])
    np.testing.assert_allclose(LA.solve(t64(a), t64(b)).numpy(), want, rtol=1e-10)


def test_inv_ex_reports_singular_without_raising():
    a = np.stack([np.eye(3), np.zeros((3, 3))])
    x, info = LA.inv_ex(t64(a))
    assert info.numpy().tolist()[0] == 0 and info.numpy().tolist()[1] > 0
    y, info2 = LA.solve_ex(t64(a), t64(np.ones((2, 3))))
    assert info2.numpy().tolist()[1] > 0


def test_singular_inv_raises():
    with pytest.raises(fx.FluxionError, match="NUMERIC"):
        LA.inv(t64(np.zeros((2, 2)))).numpy()


def test_eigh_matches_numpy():
    m = rng.standard_normal((2, 5, 5))
    s = (m + np.swapaxes(m, -1, -2)) / 2
    w, v = LA.eigh(t64(s))
    rw, rv = np.linalg.eigh(s)
    np.testing.assert_allclose(w.numpy(), rw, rtol=1e-10, atol=1e-12)
    # eigenvectors up to sign: compare |V^T V_ref| with the identity
    overlap = np.abs(np.swapaxes(v.numpy(), -1, -2) @ rv)
    np.testing.assert_allclose(overlap, np.broadcast_to(np.eye(5), overlap.shape), atol=1e-9)
    np.testing.assert_allclose(LA.eigvalsh(t64(s)).numpy(), rw, rtol=1e-10, atol=1e-12)


def test_expm_matches_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a = rng.standard_normal((3, 4, 4))
    want = np.stack([scipy_linalg.expm(m) for m in a])
    np.testing.assert_allclose(LA.expm(t64(a)).numpy(), want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("fn", [
    lambda a: LA.det(a),
    lambda a: LA.inv(a),
    lambda a: LA.slogdet(a)[1],
    lambda a: LA.solve(a, fx.ones(4, 2, dtype=fx.float64)),
    lambda a: LA.expm(a * 0.3),
    lambda a: LA.eigvalsh(a),
    lambda a: LA.norm(a, 2),
    lambda a: LA.norm(a, "nuc"),
    lambda a: LA.norm(a, 1) + LA.norm(a, -math.inf),
], ids=["det", "inv", "slogdet", "solve", "expm", "eigvalsh", "spectral", "nuclear", "ord1_neginf"])
def test_linalg_gradients_by_gradcheck(fn, no_leaks):
    a = well_conditioned(n=4)
    assert fx.gradcheck(fn, [a], eps=1e-6, atol=1e-6, rtol=1e-5)


MATRIX_ORDS = [None, "fro", "nuc", 1, -1, 2, -2, math.inf, -math.inf]


@pytest.mark.parametrize("ord", MATRIX_ORDS, ids=[str(o) for o in MATRIX_ORDS])
def test_matrix_norm_ords_match_numpy(ord):
    a = rng.standard_normal((4, 3))
    np.testing.assert_allclose(LA.norm(t64(a), ord).item(), np.linalg.norm(a, ord), rtol=1e-10)
    # batched over a leading axis, matrix axes given, keepdims
    b = rng.standard_normal((4, 2, 3))
    got = LA.norm(t64(b), ord, axis=(0, 2), keepdims=True)
    want = np.linalg.norm(b, ord, axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_spectral_norm_is_not_frobenius():
    a = np.array([[3.0, 0.0], [0.0, 4.0]])
    assert LA.norm(t64(a), 2).item() == pytest.approx(4.0, rel=1e-12)
    assert LA.norm(t64(a)).item() == pytest.approx(5.0, rel=1e-12)


VECTOR_ORDS = [None, 1, 2, 3, 0.5, 0, -1, math.inf, -math.inf]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("ord", VECTOR_ORDS, ids=[str(o) for o in VECTOR_ORDS])
def test_vector_norm_ords_match_numpy(ord):
    x = rng.standard_normal((3, 5))
    x[0, 1] = 0.0
    np.testing.assert_allclose(LA.norm(t64(x), ord, axis=1).numpy(),
                               np.linalg.norm(x, ord, axis=1), rtol=1e-10)
    np.testing.assert_allclose(LA.norm(t64(x[1]), ord).item(), np.linalg.norm(x[1], ord),
                               rtol=1e-10)


def test_norm_rejects_bad_ord_and_axes():
    a = t64(np.ones((2, 2)))
    with pytest.raises(ValueError, match="ord"):
        LA.norm(a, 3)
    with pytest.raises(ValueError):
        LA.norm(a, "bogus")
    with pytest.raises(ValueError):
        LA.norm(t64(np.ones((2, 2, 2))), 2)
    with pytest.raises(ValueError):
        LA.norm(a, "fro", axis=(0, 0))


def test_norm_of_flattened_any_rank():
    x = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(LA.norm(t64(x)).item(), np.linalg.norm(x), rtol=1e-12)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "logsumexp", "var"])
def test_reductions_over_empty_axes_reduce_nothing(name, no_leaks):
    x = rng.standard_normal((2, 3))
    y = getattr(fx, name)(t64(x), axis=())
    ref = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "var": np.var,
           "logsumexp": lambda v, axis: np.log(np.exp(v))}[name](x, axis=())
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-15)
    # gradient of sum(f(x, axis=())) is that of an elementwise identity (0 for var)
    xt = t64(x, requires_grad=True)
    getattr(fx, name)(xt, axis=()).sum().backward()
    want = np.zeros_like(x) if name == "var" else np.ones_like(x)
    np.testing.assert_allclose(xt.grad.numpy(), want, atol=1e-12)
    # axis=None still reduces every axis
    assert getattr(fx, name)(t64(x)).shape == ()


def test_vector_norm_over_empty_axes_is_abs():
    x = rng.standard_normal((2, 3))
    np.testing.assert_allclose(LA.vector_norm(t64(x), 2, axis=()).numpy(), np.abs(x))
