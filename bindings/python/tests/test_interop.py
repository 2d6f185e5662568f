"""DLPack and numpy round trips on the CPU (zero-copy proven by writes), lifetime, errors."""
import gc
import sys

import numpy as np
import pytest

import fluxion as fx
from fluxion import _interop


def test_asarray_is_zero_copy_and_keeps_the_array_alive(no_leaks):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = fx.asarray(a)
    assert t.shape == (3, 4) and t.dtype is fx.float32
    assert t.data_ptr() == a.ctypes.data
    a[1, 2] = 100.0  # write through numpy, read through fluxion
    assert t[1, 2].item() == 100.0
    assert (t * 2).numpy()[1, 2] == 200.0
    ref = sys.getrefcount(a)
    del a
    gc.collect()
    np.testing.assert_allclose(t.numpy()[0], [0, 1, 2, 3])  # memory still valid
    del t
    assert ref > 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.bool_])
def test_round_trips_every_dtype(dtype, no_leaks):
    a = (np.arange(6) % 3).astype(dtype).reshape(2, 3)
    t = fx.asarray(a)
    assert t.dtype is fx.as_dtype(np.dtype(dtype))
    b = np.from_dlpack(t)
    np.testing.assert_array_equal(b, a)
    c = np.asarray(t)
    np.testing.assert_array_equal(c, a)
    np.testing.assert_array_equal(fx.from_dlpack(a).numpy(), a)


def test_numpy_from_fluxion_is_zero_copy(no_leaks):
    buf = np.zeros(4, dtype=np.float64)
    t = fx.asarray(buf)  # a fluxion tensor over external memory
    view = np.from_dlpack(t)  # numpy view of the same memory
    assert view.ctypes.data == buf.ctypes.data
    view[2] = 5.0  # write through numpy (the tensor was made from caller memory: allowed)
    assert t[2].item() == 5.0
    arr = np.asarray(t)  # __array__: zero-copy, read-only
    assert arr.ctypes.data == buf.ctypes.data and not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 1.0
    computed = fx.exp(t)
    e = np.asarray(computed)
    np.testing.assert_allclose(e, np.exp(buf))
    assert e.ctypes.data == computed.data_ptr()
    cp = np.array(computed, copy=True)
    assert cp.flags.writeable and cp.ctypes.data != computed.data_ptr()


def test_export_keeps_tensor_alive(no_leaks):
    t = fx.arange(5, dtype=fx.float64) * 2
    arr = np.from_dlpack(t)
    del t
    gc.collect()
    np.testing.assert_allclose(arr, [0, 2, 4, 6, 8])
    del arr
    gc.collect()


def test_versioned_and_legacy_capsules(no_leaks):
    t = fx.tensor([1.0, 2.0, 3.0])
    cv = t.__dlpack__(max_version=(1, 0))
    assert fx._lib.pyapi.PyCapsule_IsValid(cv, b"dltensor_versioned")
    cl = t.__dlpack__()
    assert fx._lib.pyapi.PyCapsule_IsValid(cl, b"dltensor")
    u = fx.from_dlpack(cv)
    np.testing.assert_allclose(u.numpy(), [1, 2, 3])
    assert fx._lib.pyapi.PyCapsule_IsValid(cv, b"used_dltensor_versioned")
    assert u.data_ptr() == t.data_ptr()  # fluxion -> fluxion, zero-copy
    with pytest.raises(ValueError, match="already consumed"):
        fx.from_dlpack(cv)
    w = fx.from_dlpack(cl)
    assert w.data_ptr() == t.data_ptr()
    with pytest.raises(ValueError, match="already consumed"):
        fx.from_dlpack(cl)
    # an unconsumed capsule releases its reference when collected
    c3 = t.__dlpack__(max_version=(1, 1))
    del c3
    gc.collect()
    assert t.__dlpack_device__() == (1, 0)


def test_numpy_capsule_consumed(no_leaks):
    a = np.ones(3)
    cap = a.__dlpack__()
    t = fx.from_dlpack(cap)
    a[0] = 9
    assert t[0].item() == 9
    with pytest.raises(ValueError, match="already consumed"):
        fx.from_dlpack(cap)


def test_non_contiguous_and_read_only_arrays_are_copied(no_leaks):
    a = np.arange(20, dtype=np.float64).reshape(4, 5)
    nc = a[:, ::2]
    t = fx.asarray(nc)
    np.testing.assert_array_equal(t.numpy(), nc)
    assert t.data_ptr() != nc.ctypes.data
    with pytest.raises(ValueError, match="not C-contiguous"):
        fx.asarray(nc, copy=False)
    tt = fx.from_dlpack(a.T)  # strided DLPack import: copied
    np.testing.assert_array_equal(tt.numpy(), a.T)
    with pytest.raises(BufferError):
        fx.from_dlpack(a.T, copy=False)
    ro = np.arange(3, dtype=np.float32)
    ro.flags.writeable = False
    t = fx.asarray(ro)
    np.testing.assert_array_equal(t.numpy(), ro)
    assert t.data_ptr() != ro.ctypes.data
    with pytest.raises(ValueError, match="read-only"):
        fx.asarray(ro, copy=False)
    t2 = fx.from_dlpack(ro)  # numpy exports it flagged read-only: copied
    np.testing.assert_array_equal(t2.numpy(), ro)


def test_unsupported_dtypes_and_types():
    with pytest.raises(ValueError, match="unsupported dtype"):
        fx.from_dlpack(np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="unsupported dtype"):
        fx.asarray(np.zeros(3, dtype=np.complex64))
    with pytest.raises(TypeError):
        fx.from_dlpack([1, 2, 3])
    with pytest.raises(ValueError, match="not a DLPack capsule"):
        import ctypes

        cap = fx._lib.pyapi.PyCapsule_New(ctypes.addressof(ctypes.c_int(1)), b"other",
                                          fx._lib.PyCapsule_Destructor())
        fx.from_dlpack(cap)


def test_bad_inputs_raise_python_exceptions():
    a = fx.ones(2, 3)
    with pytest.raises(ValueError, match="FLX_ERR_SHAPE"):
        a @ fx.ones(4, 2)
    with pytest.raises(ValueError):
        a + fx.ones(4)
    with pytest.raises(ValueError, match="FLX_ERR_DTYPE"):
        fx.exp(fx.tensor([1, 2]))
    assert (a + fx.ones(2, 3, dtype=fx.float64)).dtype == fx.float64  # promoted, as in PyTorch
    with pytest.raises(TypeError):
        a + "x"
    with pytest.raises(TypeError):
        fx.exp([1.0, 2.0])
    with pytest.raises(TypeError):
        a @ 3
    with pytest.raises(ValueError):
        a.reshape(5)
    with pytest.raises(ValueError):
        fx.sum(a, axis=5)
    with pytest.raises(ValueError):
        fx.zeros(-1)
    with pytest.raises(ValueError):
        fx.tensor([1.0]).astype("complex64")
    with pytest.raises(ValueError):
        fx.tensor([1, 2]).requires_grad = True
    with pytest.raises(RuntimeError):
        fx.ones(1, device="cuda:99")
    with pytest.raises(ValueError):
        bool(fx.ones(2))
    # the error state is cleared: a later good call works and a later error has its own text
    assert (a + 1).sum().item() == 12.0
    with pytest.raises(ValueError, match="matmul"):
        fx.ones(3) @ fx.ones(2)


def test_million_small_ops_do_not_leak():
    gc.collect()
    base = fx.live_tensors()
    x = fx.ones(4)
    acc = x
    for i in range(200_000):
        y = x + 1.0
        acc = y * 0.5 if i % 1000 else fx.ones(4)  # the graph is dropped every 1000 ops
    acc.eval()
    del x, y, acc
    gc.collect()
    assert fx.live_tensors() == base


def test_long_chain_is_freed_without_recursion():
    gc.collect()
    base = fx.live_tensors()
    x = fx.ones(2)
    for _ in range(50_000):
        x = x + 1.0
    assert x[0].item() == 50_001.0
    del x
    gc.collect()
    assert fx.live_tensors() == base
