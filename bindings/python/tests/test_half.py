"""float16 and bfloat16 in the Python package: names, numpy in and out (bfloat16 through float32,
exact), arithmetic rounded once, promotion, gradients in the parameter's dtype."""
import numpy as np
import pytest

import fluxion as fx


def bf16_round(x):
    """float32 values rounded to bfloat16 (nearest, ties to even), from the bit patterns."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return r.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("name,dt", [("f16", fx.float16), ("float16", fx.float16), ("half", fx.float16),
                                     ("bf16", fx.bfloat16), ("bfloat16", fx.bfloat16)])
def test_names(name, dt):
    assert fx.as_dtype(name) is dt
    assert fx.zeros((2,), dtype=name).dtype is dt


def test_float16_numpy_round_trip_is_exact():
    bits = np.arange(0, 65536, dtype=np.uint16)
    vals = bits.view(np.float16)
    finite = vals[np.isfinite(vals)]
    t = fx.tensor(finite)
    assert t.dtype is fx.float16
    back = t.numpy()
    assert back.dtype == np.float16
    assert np.array_equal(back.view(np.uint16), finite.view(np.uint16))
    assert np.array_equal(t.numpy(dtype="f64"), finite.astype(np.float64))


def test_bfloat16_through_float32():
    x = np.array([0.1, 1.0 / 3, -2.5, 3e38, 1e-40, 1 + 2 ** -8], dtype=np.float32)
    t = fx.tensor(x, dtype="bf16")
    assert t.dtype is fx.bfloat16
    out = t.numpy()
    assert out.dtype == np.float32
    assert np.array_equal(out, bf16_round(x))  # 1 + 2^-8 is a tie: to even, 1.0
    assert out[-1] == 1.0
    assert t[2].item() == -2.5


def test_arithmetic_rounds_once_and_promotes():
    a = np.array([1.0, 3.0, 1e-3], dtype=np.float32)
    b = np.array([3.0, 7.0, 5.0], dtype=np.float32)
    ta, tb = fx.tensor(a, dtype="bf16"), fx.tensor(b, dtype="bf16")
    q = ta / tb
    assert q.dtype is fx.bfloat16
    exact = bf16_round(a).astype(np.float64) / bf16_round(b).astype(np.float64)
    assert np.array_equal(q.numpy(), bf16_round(exact.astype(np.float32)))
    assert (ta + fx.tensor(a, dtype="f16")).dtype is fx.float32
    assert (ta + fx.tensor(a)).dtype is fx.float32
    assert (fx.tensor(a, dtype="f16") * 2).dtype is fx.float16


def test_gradient_has_the_parameter_dtype():
    w = fx.tensor(np.array([0.5, -1.0, 2.0], dtype=np.float32), dtype="bf16", requires_grad=True)
    loss = (w * w).sum()
    loss.backward()
    assert w.grad.dtype is fx.bfloat16
    assert np.array_equal(w.grad.numpy(), np.array([1.0, -2.0, 4.0], dtype=np.float32))


def test_linalg_refuses_halves():
    a = fx.tensor(np.eye(2, dtype=np.float32), dtype="bf16")
    with pytest.raises(ValueError, match="linear algebra"):
        fx.linalg.det(a)


def test_float16_dlpack_and_asarray():
    x = np.array([1.5, -0.25, 65504.0], dtype=np.float16)
    t = fx.from_dlpack(x)
    assert t.dtype is fx.float16
    assert np.array_equal(t.numpy(), x)
    assert fx.asarray(x).dtype is fx.float16
