"""Tensor, dtypes and devices over the fluxion C API (ctypes, with the C extension fluxion._fast
for the hot path when it is built). Errors are in _errors.py, indexing in _indexing.py, the op
functions in _ops.py and the autodiff transforms in _autodiff.py; this module re-exports the
first three, so the package's modules find everything here.

Ownership: every :class:`Tensor` owns exactly one C reference and drops it in ``__del__``. Python
never opens a C scope, so every pointer a C function returns is owned by the caller, i.e. by the
Tensor that wraps it. The one exception is code that runs inside a C callback (the forward, VJP
and JVP of :func:`custom_fn`): the runtime has a scope open there that owns the returned pointers,
so tensors made inside a callback take a reference of their own (``flx_retain``).
"""

from __future__ import annotations

import atexit
import builtins as _b
import ctypes
import os
from ctypes import byref, c_double, c_int32, c_int64, c_void_p
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

from . import _lib
from ._lib import lib as _L

# The compiled hot path (src/_fast.c, abi3), when it was built; FLUXION_NO_EXTENSION=1 forces
# the pure-ctypes path (the same results, slower calls).
def _load_fast() -> Any:
    """The extension from the package, else from the build tree of the loaded library
    (<build>/python/fluxion/, where CMake puts it): a development tree run with FLUXION_LIBRARY
    then gets the C path too. None when neither has it."""
    try:
        from . import _fast as mod

        return mod
    except ImportError:
        pass
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(_lib.library_path).resolve().parent / "python" / "fluxion" / "_fast.abi3.so"
    if not path.is_file():
        return None
    try:
        loader = importlib.machinery.ExtensionFileLoader(__package__ + "._fast", str(path))
        spec = importlib.util.spec_from_file_location(__package__ + "._fast", str(path), loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
    except ImportError:
        return None
    sys.modules[__package__ + "._fast"] = mod
    return mod


_fast: Any = None
if os.environ.get("FLUXION_NO_EXTENSION", "") in ("", "0"):
    _fast = _load_fast()

# ---- errors (fluxion/_errors.py) ---------------------------------------------------------------
from ._errors import (FLX_OK, _ERR_CALLBACK, _STATUS_NAMES, FluxionError, _ShapeError,  # noqa: E402,F401
                      _TLS, _call_cb, _check, _exception_for, _raise_last, _record_exc, _tls)

_cb_active = 0  # callbacks running on any thread (fast path: 0)


# ---- dtypes ----------------------------------------------------------------------------------------
class DType:
    """A fluxion element type (``fluxion.float32``, ``float64``, ``float16``, ``bfloat16``,
    ``int32``, ``int64``, ``bool_``).

    numpy_str is the numpy type of the element's bytes; ``host`` the dtype numpy arrays hold its
    values in: the dtype itself, except bfloat16 (numpy has none), whose values travel as float32
    (exact both ways: every bfloat16 is a float32), converted by the library."""

    __slots__ = ("code", "name", "itemsize", "numpy_str", "dl_code", "dl_bits", "is_float", "host")

    def __init__(self, code: int, name: str, itemsize: int, numpy_str: str, dl_code: int,
                 is_float: bool, host: Optional["DType"] = None) -> None:
        self.code = code
        self.name = name
        self.itemsize = itemsize
        self.numpy_str = numpy_str
        self.dl_code = dl_code
        self.dl_bits = itemsize * 8
        self.is_float = is_float
        self.host = self if host is None else host

    def __repr__(self) -> str:
        return f"fluxion.{self.name}"

    def __reduce__(self) -> str:
        return self.name


float32 = DType(0, "float32", 4, "<f4", 2, True)
float64 = DType(1, "float64", 8, "<f8", 2, True)
int32 = DType(2, "int32", 4, "<i4", 0, False)
int64 = DType(3, "int64", 8, "<i8", 0, False)
bool_ = DType(4, "bool_", 1, "|b1", 6, False)
float16 = DType(5, "float16", 2, "<f2", 2, True)
bfloat16 = DType(6, "bfloat16", 2, "<u2", 4, True, host=float32)  # bytes: the raw bit patterns
_DTYPES = {d.code: d for d in (float32, float64, int32, int64, bool_, float16, bfloat16)}
_DTYPE_NAMES = {
    "float32": float32, "f32": float32, "float": float32,
    "float64": float64, "f64": float64, "double": float64,
    "float16": float16, "f16": float16, "half": float16,
    "bfloat16": bfloat16, "bf16": bfloat16,
    "int32": int32, "i32": int32,
    "int64": int64, "i64": int64, "int": int64, "long": int64,
    "bool": bool_, "bool_": bool_,
}

DTypeLike = Union[DType, str, Any]


def as_dtype(dt: DTypeLike) -> DType:
    """Converts a DType, a name ('float32', 'f32', ...), a numpy dtype or a Python type."""
    if isinstance(dt, DType):
        return dt
    if dt is float:
        return float32
    if dt is int:
        return int64
    if dt is bool:
        return bool_
    name = getattr(dt, "name", None) if not isinstance(dt, str) else dt
    if name is None:
        try:
            import numpy as np

            name = np.dtype(dt).name
        except Exception:
            name = None
    if isinstance(name, str) and name in _DTYPE_NAMES:
        return _DTYPE_NAMES[name]
    raise ValueError(f"fluxion: unsupported dtype {dt!r} (float32, float64, float16, bfloat16, "
                     "int32, int64, bool)")


# ---- devices and contexts -----------------------------------------------------------------------
class device:
    """A device: ``device('cpu')``, ``device('cuda')``, ``device('cuda:1')``."""

    __slots__ = ("type", "index")

    def __init__(self, spec: Union[str, "device"] = "cpu", index: Optional[int] = None) -> None:
        if isinstance(spec, device):
            self.type, self.index = spec.type, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"fluxion: device must be a str or fluxion.device, got {type(spec).__name__}")
        t, _, i = spec.partition(":")
        if t not in ("cpu", "cuda"):
            raise ValueError(f"fluxion: unknown device {spec!r} (use 'cpu' or 'cuda[:N]')")
        self.type = t
        if i:
            index = int(i)
        self.index = 0 if t == "cpu" else (index or 0)

    def __repr__(self) -> str:
        return f"device({str(self)!r})"

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"cuda:{self.index}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            other = device(other)
        return isinstance(other, device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))


DeviceLike = Union[str, device, None]
_contexts: dict = {}


def _ctx(dev: DeviceLike) -> int:
    """The process-wide context of a device (created on first use, never destroyed)."""
    d = device(dev) if dev is not None else device("cpu")
    key = (d.type, d.index)
    c = _contexts.get(key)
    if c is None:
        spec = _lib.Device(0 if d.type == "cpu" else 1, d.index)
        c = _L.flx_ctx_create(spec)
        if not c:
            _raise_last()
        _contexts[key] = c
    return c


def _device_of_ctx(c: int) -> device:
    d = _L.flx_ctx_device(c)
    return device("cpu") if d.type == 0 else device("cuda", d.index)


def has_cuda() -> bool:
    """True when the library was built with the CUDA backend."""
    return bool(_L.flx_has_cuda())


def cuda_device_count() -> int:
    """Number of usable CUDA devices (0 without a GPU or CUDA support)."""
    return int(_L.flx_cuda_device_count())


def live_tensors() -> int:
    """Number of C tensor objects alive in the process (handles and graph nodes)."""
    return int(_L.flx_live_tensors())


def synchronize(dev: DeviceLike = None) -> None:
    """Waits for the device's queued work and reports device-side errors."""
    _check(_L.flx_ctx_synchronize(_ctx(dev)))


# ---- lifetime -----------------------------------------------------------------------------------------
_alive = True


def _at_exit() -> None:
    # After this, releases are skipped: the process is ending and C callbacks into a half torn
    # down interpreter must not run.
    global _alive
    _alive = False
    if _fast is not None:
        _fast.shutdown()


atexit.register(_at_exit)

_release = _L.flx_release
_retain = _L.flx_retain


def _wrap(p: Optional[int]) -> "Tensor":
    """Wraps a pointer returned by a C function (NULL raises the pending error)."""
    if not p:
        _raise_last()
    t = _new(Tensor)
    t._ptr = p
    if _cb_active and _tls.depth:
        _retain(p)  # a C scope owns p: take a reference of our own
    return t


def _borrow(p: int) -> "Tensor":
    """Wraps a borrowed pointer (given to a callback): takes a reference."""
    t = _new(Tensor)
    t._ptr = _retain(p)
    return t


_new = object.__new__

Scalar = Union[int, float, bool]
ShapeLike = Union[int, Sequence[int]]


def _shape_arg(shape: Sequence[Any]) -> Tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    try:
        return tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"fluxion: shape must be a sequence of ints, got {shape!r}") from None


def _i64(vals: Sequence[int]):
    n = len(vals)
    return (c_int64 * _b.max(n, 1))(*vals), n


def _i32(vals: Sequence[int]):
    n = len(vals)
    return (c_int32 * _b.max(n, 1))(*vals), n


def _ptrs(ts: Sequence["Tensor"]):
    n = len(ts)
    arr = (c_void_p * _b.max(n, 1))()
    for i, t in enumerate(ts):
        arr[i] = _p(t)
    return arr, n


def _p(x: Any) -> int:
    try:
        return x._ptr
    except AttributeError:
        raise TypeError(f"fluxion: expected a fluxion.Tensor, got {type(x).__name__}") from None


_NO_AXES = _i32(())  # read-only: C never writes an axes list


def _axes(axis: Union[None, int, Sequence[int]]):
    if axis is None:
        return _NO_AXES
    if isinstance(axis, int):
        return _i32((axis,))
    return _i32(tuple(int(a) for a in axis))


# ---- Tensor ------------------------------------------------------------------------------------------
class Tensor:
    """A fluxion tensor: a reference-counted handle to a lazily computed graph node.

    Ops record graph nodes; values are computed when data is needed (``numpy()``, ``item()``,
    ``backward()``, ``eval()``, DLPack export). Make tensors with :func:`tensor`,
    :func:`asarray`, :func:`from_dlpack`, :func:`zeros`, :func:`randn`, ... .
    """

    __slots__ = ("_ptr", "__weakref__")
    __array_priority__ = 1000  # numpy defers binary operators to Tensor

    def __init__(self, data: Any = None, dtype: Optional[DTypeLike] = None,
                 device: DeviceLike = None, requires_grad: bool = False) -> None:
        if data is None:
            raise TypeError("fluxion.Tensor(data): use fluxion.tensor(data) or a creation function")
        t = tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        self._ptr = _retain(t._ptr)

    def __del__(self, _rel=_release) -> None:
        p = getattr(self, "_ptr", None)
        if p and _alive:
            try:
                _rel(p)
            except Exception:
                pass

    # -- metadata --
    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return _L.flx_ndim(self._ptr)

    @property
    def shape(self) -> Tuple[int, ...]:
        """The shape as a tuple of ints."""
        n = _L.flx_ndim(self._ptr)
        s = _L.flx_shape(self._ptr)
        return tuple(s[i] for i in range(n))

    @property
    def dtype(self) -> DType:
        """Element type."""
        return _DTYPES[_L.flx_dtype_of(self._ptr)]

    @property
    def device(self) -> device:
        """The device the tensor lives on."""
        return _device_of_ctx(_L.flx_ctx_of(self._ptr))

    @property
    def is_realized(self) -> bool:
        """True when the tensor's data is present (computed and not freed)."""
        return bool(_L.flx_is_realized(self._ptr))

    def numel(self) -> int:
        """Number of elements."""
        return _L.flx_numel(self._ptr)

    @property
    def size(self) -> int:
        """Number of elements (numpy spelling)."""
        return _L.flx_numel(self._ptr)

    @property
    def nbytes(self) -> int:
        return self.numel() * self.dtype.itemsize

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self) -> Iterator["Tensor"]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        try:
            vals = self.numpy()
            body = repr(vals.tolist()) if vals.size <= 64 else f"<{vals.size} values>"
        except Exception as e:  # never fail in repr
            body = f"<unavailable: {e}>"
        extra = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device.type == "cpu" else f", device='{self.device}'"
        return f"fluxion.Tensor({body}, shape={self.shape}, dtype={self.dtype.name}{dev}{extra})"

    __hash__ = object.__hash__

    # -- data access --
    def eval(self) -> "Tensor":
        """Computes the tensor now (and keeps its data); returns self."""
        arr, n = _ptrs((self,))
        _check(_L.flx_eval(1, arr))
        return self

    def numpy(self, dtype: Optional[DTypeLike] = None) -> Any:
        """A numpy copy of the values (any device), converted to dtype on the way out when given
        (flx_cast's rules, on the host). bfloat16 values come as float32 (exact)."""
        import numpy as np

        dt = (self.dtype if dtype is None else as_dtype(dtype)).host
        out = np.empty(self.shape, dtype=np.dtype(dt.numpy_str))
        if dt is self.dtype:
            _check(_L.flx_to_host(self._ptr, out.ctypes.data, out.nbytes))
        else:
            _check(_L.flx_to_host_as(self._ptr, dt.code, out.ctypes.data, out.nbytes))
        return out

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def item(self) -> Union[float, int, bool]:
        """The single element as a Python number."""
        v = c_double()
        _check(_L.flx_item(self._ptr, byref(v)))
        dt = self.dtype
        if dt is bool_:
            return bool(v.value)
        if not dt.is_float:
            return int(v.value)
        return v.value

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.is_float:
            raise TypeError("only integer tensors can be used as an index")
        return int(self.item())

    def __bool__(self) -> bool:
        if self.numel() != 1:
            raise ValueError(
                "the truth value of a tensor with more than one element is ambiguous")
        return bool(self.item())

    def data_ptr(self) -> int:
        """Address of the computed buffer (device address on CUDA); see flx_data_ptr."""
        p = c_void_p()
        _check(_L.flx_data_ptr(self._ptr, byref(p)))
        return p.value or 0

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> Any:
        from ._interop import tensor_to_numpy

        return tensor_to_numpy(self, dtype=dtype, copy=copy)

    def __dlpack__(self, stream: Any = None, max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Optional[Tuple[int, int]] = None, copy: Optional[bool] = None) -> Any:
        """Exports the tensor as a DLPack capsule (versioned when max_version >= (1, 0))."""
        from ._interop import to_dlpack

        return to_dlpack(self, stream=stream, max_version=max_version, dl_device=dl_device,
                         copy=copy)

    def __dlpack_device__(self) -> Tuple[int, int]:
        d = self.device
        return (1, 0) if d.type == "cpu" else (2, d.index)

    @property
    def __cuda_array_interface__(self) -> dict:
        """CUDA Array Interface v3 (CUDA tensors only)."""
        from ._interop import cuda_array_interface

        return cuda_array_interface(self)

    # -- conversion --
    def to(self, target: Union[DeviceLike, DTypeLike] = None, dtype: Optional[DTypeLike] = None) -> "Tensor":
        """Moves to a device (``t.to('cuda')``) and/or converts the dtype."""
        t = self
        if isinstance(target, (DType,)) or (target is not None and not isinstance(target, (str, device))):
            dtype, target = target, None
        elif isinstance(target, str) and target in _DTYPE_NAMES:
            dtype, target = target, None
        if target is not None and device(target) != self.device:
            t = _wrap(_L.flx_to_ctx(t._ptr, _ctx(target)))
        if dtype is not None:
            t = t.astype(dtype)
        return t

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self, index: int = 0) -> "Tensor":
        return self.to(device("cuda", index))

    def astype(self, dtype: DTypeLike) -> "Tensor":
        """Converts elements to dtype (float -> int truncates toward zero)."""
        return _wrap(_L.flx_cast(self._ptr, as_dtype(dtype).code))

    # -- autodiff --
    @property
    def requires_grad(self) -> bool:
        """Whether gradients flow to this tensor. Setting True makes it a leaf that collects
        ``.grad`` (computing and detaching an op result first)."""
        return bool(_L.flx_requires_grad(self._ptr))

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        _check(_L.flx_set_requires_grad(self._ptr, bool(value)))

    def requires_grad_(self, value: bool = True) -> "Tensor":
        self.requires_grad = value
        return self

    @property
    def grad(self) -> Optional["Tensor"]:
        """The accumulated gradient of a leaf, or None."""
        p = _L.flx_grad(self._ptr)
        if not p:
            if _L.flx_last_status() != FLX_OK:
                _raise_last()
            return None
        return _wrap(p)

    @grad.setter
    def grad(self, value: None) -> None:
        if value is not None:
            raise ValueError("fluxion: .grad can only be reset to None (use zero_grad())")
        _check(_L.flx_zero_grad(self._ptr))

    def zero_grad(self) -> None:
        """Forgets the accumulated gradient."""
        _check(_L.flx_zero_grad(self._ptr))

    def backward(self) -> None:
        """Adds d self / d leaf to ``.grad`` of every leaf that requires grad (self has one
        element). Inside :func:`fluxion.compile` it also names the step's loss."""
        from ._compile import _record_backward

        _record_backward(self)
        _call_cb(_L.flx_backward, self._ptr)

    def detach(self) -> "Tensor":
        """Same value, no gradient history."""
        return _wrap(_L.flx_detach(self._ptr))

    def assign(self, src: "Tensor") -> None:
        """In-place update of a leaf: takes src's value (same shape, dtype and device)."""
        _check(_L.flx_assign(self._ptr, _p(src)))

    # -- indexing --
    def __getitem__(self, key: Any) -> "Tensor":
        return _getitem(self, key)

    # -- operators --
    def __neg__(self) -> "Tensor":
        return _wrap(_L.flx_neg(self._ptr))

    def __pos__(self) -> "Tensor":
        return self

    def __abs__(self) -> "Tensor":
        return _wrap(_L.flx_abs(self._ptr))

    def _with_scalar(self, o: Any, tensor_fn: Any, scalar_fn: Any, value: Any) -> "Tensor":
        """self (op) o: Tensor operands go to tensor_fn; a Python number takes the one-node
        scalar_fn(self, value(o)) path when self is a float tensor, else a scalar tensor."""
        if isinstance(o, Tensor):
            return _wrap(tensor_fn(self._ptr, o._ptr))
        if isinstance(o, (int, float)):
            p = scalar_fn(self._ptr, value(o))
            if p:
                return _wrap(p)
            _L.flx_clear_error()  # not a float tensor: fall back to a scalar tensor
        return _binary(tensor_fn, self, o)

    def __add__(self, o: Any) -> "Tensor":
        return self._with_scalar(o, _L.flx_add, _L.flx_add_scalar, float)

    def __radd__(self, o: Any) -> "Tensor":
        return self.__add__(o)

    def __sub__(self, o: Any) -> "Tensor":
        return self._with_scalar(o, _L.flx_sub, _L.flx_add_scalar, lambda v: -float(v))

    def __rsub__(self, o: Any) -> "Tensor":
        if isinstance(o, (int, float)) and self.dtype.is_float:
            return _wrap(_L.flx_affine(self._ptr, -1.0, float(o)))
        return _binary(_L.flx_sub, o, self)

    def __mul__(self, o: Any) -> "Tensor":
        return self._with_scalar(o, _L.flx_mul, _L.flx_mul_scalar, float)

    def __rmul__(self, o: Any) -> "Tensor":
        return self.__mul__(o)

    def __truediv__(self, o: Any) -> "Tensor":
        return _binary(_L.flx_div, self, o)

    def __rtruediv__(self, o: Any) -> "Tensor":
        return _binary(_L.flx_div, o, self)

    def __pow__(self, o: Any) -> "Tensor":
        if isinstance(o, (int, float)) and not isinstance(o, bool):
            if o == 2:
                return _wrap(_L.flx_square(self._ptr))
            return _wrap(_L.flx_pow_scalar(self._ptr, float(o)))
        return _binary(_L.flx_pow, self, o)

    def __rpow__(self, o: Any) -> "Tensor":
        return _binary(_L.flx_pow, o, self)

    def __matmul__(self, o: Any) -> "Tensor":
        return _wrap(_L.flx_matmul(self._ptr, _p(o)))

    def __rmatmul__(self, o: Any) -> "Tensor":
        return _wrap(_L.flx_matmul(_p(o), self._ptr))

    def __eq__(self, o: Any) -> "Tensor":  # type: ignore[override]
        return _binary(_L.flx_eq, self, o)

    def __ne__(self, o: Any) -> "Tensor":  # type: ignore[override]
        return _binary(_L.flx_ne, self, o)

    def __lt__(self, o: Any) -> "Tensor":
        return _binary(_L.flx_lt, self, o)

    def __le__(self, o: Any) -> "Tensor":
        return _binary(_L.flx_le, self, o)

    def __gt__(self, o: Any) -> "Tensor":
        return _binary(_L.flx_gt, self, o)

    def __ge__(self, o: Any) -> "Tensor":
        return _binary(_L.flx_ge, self, o)

    @property
    def T(self) -> "Tensor":
        """Reversed axes (transpose of a matrix)."""
        n = self.ndim
        if n < 2:
            return self
        return permute(self, tuple(range(n - 1, -1, -1)))

    @property
    def mT(self) -> "Tensor":
        """Transpose of the last two axes."""
        return _wrap(_L.flx_transpose(self._ptr, -2, -1))


_FAST_SLOTS = ("__add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ "
               "__matmul__ __rmatmul__ __pow__ __rpow__ __neg__ __abs__ __pos__ __eq__ __ne__ "
               "__lt__ __le__ __gt__ __ge__ __del__").split()

if _fast is not None:
    # The same class on the C handle type: its number and comparison slots (and dealloc) are C;
    # the Python operator methods above serve as the fallbacks of the cases C hands back.
    _PyTensor = Tensor
    _ns = {k: v for k, v in _PyTensor.__dict__.items()
           if k not in _FAST_SLOTS and k not in ("_ptr", "__weakref__", "__dict__", "__slots__")}
    _ns["__slots__"] = ("__weakref__",)
    Tensor = type("Tensor", (_fast.TensorBase,), _ns)  # type: ignore[misc]
    Tensor.__module__ = "fluxion"
    Tensor.__qualname__ = "Tensor"

    def _fb(fwd: str, rev: str) -> Callable[[Any, Any], Any]:
        f, r = getattr(_PyTensor, fwd), getattr(_PyTensor, rev)
        return lambda a, b: f(a, b) if isinstance(a, Tensor) else r(b, a)

    _FALLBACKS = {
        "add": _fb("__add__", "__radd__"), "sub": _fb("__sub__", "__rsub__"),
        "mul": _fb("__mul__", "__rmul__"), "div": _fb("__truediv__", "__rtruediv__"),
        "matmul": _fb("__matmul__", "__rmatmul__"), "pow": _fb("__pow__", "__rpow__"),
        "eq": _PyTensor.__eq__, "ne": _PyTensor.__ne__, "lt": _PyTensor.__lt__,
        "le": _PyTensor.__le__, "gt": _PyTensor.__gt__, "ge": _PyTensor.__ge__,
        "neg": _PyTensor.__neg__, "abs": _PyTensor.__abs__,
    }

    def _addr(name: str) -> int:
        return ctypes.cast(getattr(_L, "flx_" + name), c_void_p).value

    _fast.bind({**{n: _addr(n) for n in _FALLBACKS},
                **{n: _addr(n) for n in ("add_scalar", "mul_scalar", "affine", "release",
                                         "clear_error")}},
               _FALLBACKS, _raise_last, Tensor)

    _fast_wrap = _fast.wrap

    def _wrap(p: Optional[int]) -> "Tensor":  # noqa: F811 - the C form of the function above
        """Wraps a pointer returned by a C function (NULL raises the pending error)."""
        if _cb_active and _tls.depth:
            if not p:
                _raise_last()
            t = _new(Tensor)
            t._ptr = _retain(p)  # a C scope owns p: take a reference of our own
            return t
        return _fast_wrap(p)


def _as_operand(x: Any, like: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (bool, int, float)):
        dt = like.dtype
        if isinstance(x, float) and not dt.is_float:
            dt = float32
        return _wrap(_L.flx_scalar(_L.flx_ctx_of(like._ptr), dt.code, float(x)))
    raise TypeError(
        f"fluxion: unsupported operand type {type(x).__name__} (use a Tensor or a Python number)")


def _binary(fn: Callable, a: Any, b: Any) -> Tensor:
    if isinstance(a, Tensor):
        b = _as_operand(b, a)
    elif isinstance(b, Tensor):
        a = _as_operand(a, b)
    else:
        raise TypeError("fluxion: at least one operand must be a Tensor")
    return _wrap(fn(a._ptr, b._ptr))


# ---- C callbacks into Python ---------------------------------------------------------------
def _enter_cb() -> None:
    global _cb_active
    _cb_active += 1
    _tls.depth += 1
    if _fast is not None:
        _fast.enter_callback()  # the C fast path then defers to _wrap (which retains)


def _leave_cb() -> None:
    global _cb_active
    _cb_active -= 1
    _tls.depth -= 1
    if _fast is not None:
        _fast.leave_callback()


def _callback(failed: Optional[int] = None) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorates the Python side of a C callback: the callback depth is counted around it, and an
    exception is recorded (re-raised once the C call returns) instead of unwinding through C; the
    callback then returns ``failed``, or the callback error status when None."""
    def deco(fn: Callable[..., int]) -> Callable[..., int]:
        def tramp(*args: Any) -> int:
            _enter_cb()
            try:
                return fn(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised after the C call returns
                status = _record_exc(e)
                return status if failed is None else failed
            finally:
                _leave_cb()

        tramp.__name__ = tramp.__qualname__ = fn.__name__
        return tramp

    return deco


def _as_result(r: Any, what: str) -> int:
    if not isinstance(r, Tensor):
        raise TypeError(f"fluxion.custom_fn: {what} must return a Tensor, got {type(r).__name__}")
    _tls.keep.append(r)  # alive until the C call returns (the runtime borrows it)
    return r._ptr


# Indexing (_indexing.py) and the op functions (creation, ops, reductions, shapes: _ops.py) need
# the Tensor class above; they are imported here, where the Tensor methods and the other modules
# of the package look them up.
from ._indexing import _getitem  # noqa: E402,F401
from ._ops import *  # noqa: E402,F401,F403
