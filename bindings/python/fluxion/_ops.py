"""fluxion's op functions over the C API: creation (zeros, tensor, randn, ...), elementwise
ops, reductions, shape and indexing ops, losses, and their Tensor methods. With the C
extension, the plain unary and binary ops are C functions (fluxion._fast) whose Python forms
here serve as fallbacks. Re-exported by _core (and so by the package)."""

from __future__ import annotations

import ctypes
import math
from ctypes import c_void_p
from typing import Any, Callable, Optional, Sequence, Union

from . import _lib
from ._core import (DType, DTypeLike, DeviceLike, Scalar, ShapeLike, Tensor, _as_operand, _axes, _binary,
                    _check, _ctx, _fast, _i32, _i64, _L, _p, _ptrs,
                    _shape_arg, _wrap, as_dtype, float32, int64)

__all__ = [
    '_FAST_BINARY',
    '_FAST_UNARY',
    '_REDUCTIONS',
    '_binfn',
    '_dt',
    '_finish',
    '_need',
    '_no_axes',
    '_reducer',
    '_unary',
    'abs',
    'add',
    'affine',
    'arange',
    'argmax',
    'broadcast_to',
    'cast',
    'clamp',
    'clip',
    'concat',
    'concatenate',
    'cos',
    'cosh',
    'cross_entropy',
    'detach',
    'diag',
    'diagonal',
    'div',
    'dot',
    'elu',
    'eq',
    'erf',
    'eval',
    'exp',
    'expand_dims',
    'eye',
    'full',
    'full_data',
    'gather',
    'ge',
    'gelu',
    'gt',
    'index_select',
    'le',
    'leaky_relu',
    'log',
    'log1p',
    'log_softmax',
    'logsumexp',
    'lt',
    'matmul',
    'max',
    'maximum',
    'mean',
    'min',
    'minimum',
    'mse_loss',
    'mul',
    'ne',
    'neg',
    'one_hot',
    'ones',
    'ones_like',
    'outer',
    'pad',
    'permute',
    'pow',
    'rand',
    'randn',
    'reciprocal',
    'relu',
    'reshape',
    'rsqrt',
    'scalar',
    'sigmoid',
    'sign',
    'sin',
    'sinh',
    'slice',
    'softmax',
    'softplus',
    'sqrt',
    'square',
    'squeeze',
    'stack',
    'std',
    'sub',
    'sum',
    'tanh',
    'tensor',
    'trace',
    'transpose',
    'unsqueeze',
    'var',
    'where',
    'zeros',
    'zeros_like',
]


# ---- creation --------------------------------------------------------------------------------------
def _dt(dtype: Optional[DTypeLike], default: DType = float32) -> DType:
    return default if dtype is None else as_dtype(dtype)


def _finish(t: Tensor, requires_grad: bool) -> Tensor:
    if requires_grad:
        t.requires_grad = True
    return t


def zeros(*shape: Any, dtype: Optional[DTypeLike] = None, device: DeviceLike = None,
          requires_grad: bool = False) -> Tensor:
    """A tensor of zeros (default float32 on the CPU)."""
    s, n = _i64(_shape_arg(shape))
    return _finish(_wrap(_L.flx_zeros(_ctx(device), _dt(dtype).code, n, s)), requires_grad)


def ones(*shape: Any, dtype: Optional[DTypeLike] = None, device: DeviceLike = None,
         requires_grad: bool = False) -> Tensor:
    """A tensor of ones."""
    s, n = _i64(_shape_arg(shape))
    return _finish(_wrap(_L.flx_ones(_ctx(device), _dt(dtype).code, n, s)), requires_grad)


def full(shape: ShapeLike, value: Scalar, dtype: Optional[DTypeLike] = None,
         device: DeviceLike = None, requires_grad: bool = False) -> Tensor:
    """A tensor filled with value."""
    s, n = _i64(_shape_arg((shape,) if isinstance(shape, int) else tuple(shape)))
    return _finish(_wrap(_L.flx_full(_ctx(device), _dt(dtype).code, n, s, float(value))),
                   requires_grad)


def full_data(shape: ShapeLike, value: Scalar, dtype: Optional[DTypeLike] = None,
              device: DeviceLike = None) -> Tensor:
    """Like :func:`full`, but a tensor made from data (a leaf that assign() and optimisers may
    update in place) rather than a lazy op result."""
    import numpy as np

    dt = _dt(dtype)
    return tensor(np.full(shape, value, dtype=np.dtype(dt.host.numpy_str)), dtype=dt, device=device)


def zeros_like(x: Tensor, dtype: Optional[DTypeLike] = None) -> Tensor:
    s, n = _i64(x.shape)
    return _wrap(_L.flx_zeros(_L.flx_ctx_of(x._ptr), _dt(dtype, x.dtype).code, n, s))


def ones_like(x: Tensor, dtype: Optional[DTypeLike] = None) -> Tensor:
    s, n = _i64(x.shape)
    return _wrap(_L.flx_ones(_L.flx_ctx_of(x._ptr), _dt(dtype, x.dtype).code, n, s))


def scalar(value: Scalar, dtype: Optional[DTypeLike] = None, device: DeviceLike = None) -> Tensor:
    """A 0-d tensor."""
    return _wrap(_L.flx_scalar(_ctx(device), _dt(dtype).code, float(value)))


def eye(n: int, m: Optional[int] = None, dtype: Optional[DTypeLike] = None,
        device: DeviceLike = None) -> Tensor:
    """n x m identity."""
    return _wrap(_L.flx_eye(_ctx(device), _dt(dtype).code, int(n), int(n if m is None else m)))


def arange(start: float, stop: Optional[float] = None, step: float = 1,
           dtype: Optional[DTypeLike] = None, device: DeviceLike = None) -> Tensor:
    """[start, start+step, ...) below stop; dtype defaults to int64 for int arguments."""
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        dtype = int64 if all(isinstance(v, int) for v in (start, stop, step)) else float32
    return _wrap(_L.flx_arange(_ctx(device), as_dtype(dtype).code, float(start), float(stop),
                               float(step)))


def rand(*shape: Any, low: float = 0.0, high: float = 1.0, seed: int = 0,
         dtype: Optional[DTypeLike] = None, device: DeviceLike = None,
         requires_grad: bool = False) -> Tensor:
    """Uniform [low, high) values from the counter-based generator (deterministic in seed)."""
    s, n = _i64(_shape_arg(shape))
    return _finish(_wrap(_L.flx_uniform(_ctx(device), _dt(dtype).code, n, s, low, high, seed)),
                   requires_grad)


def randn(*shape: Any, mean: float = 0.0, std: float = 1.0, seed: int = 0,
          dtype: Optional[DTypeLike] = None, device: DeviceLike = None,
          requires_grad: bool = False) -> Tensor:
    """Normal values (deterministic in seed)."""
    s, n = _i64(_shape_arg(shape))
    return _finish(_wrap(_L.flx_normal(_ctx(device), _dt(dtype).code, n, s, mean, std, seed)),
                   requires_grad)


def tensor(data: Any, dtype: Optional[DTypeLike] = None, device: DeviceLike = None,
           requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of data (nested lists, numbers, numpy arrays, tensors).

    Python floats become float32 and ints int64 unless dtype is given; numpy arrays keep their
    dtype. Use :func:`asarray` for a zero-copy view of a numpy array.
    """
    import numpy as np

    if isinstance(data, Tensor):
        t = data.detach().to(device if device is not None else data.device)
        if dtype is not None:
            t = t.astype(dtype)
        # A fresh node (a copy in value semantics: buffers are immutable).
        t = _wrap(_L.flx_detach(t._ptr))
        return _finish(t, requires_grad)
    if isinstance(data, np.ndarray):
        arr = data
    else:
        arr = np.asarray(data)
        if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.generic):
            arr = arr.astype(np.float32)
    if dtype is not None:
        dt = as_dtype(dtype)
    else:
        if arr.dtype == object:
            raise TypeError(f"fluxion: cannot make a tensor from {type(data).__name__}")
        dt = as_dtype(arr.dtype)
    try:
        host_dt = as_dtype(arr.dtype).host  # converted on the way in by the library, no numpy copy
    except ValueError:
        host_dt = dt.host
    arr = np.asarray(arr, dtype=np.dtype(host_dt.numpy_str), order="C")
    s, n = _i64(arr.shape)
    t = _wrap(_L.flx_from_host_as(_ctx(device), dt.code, n, s, host_dt.code, arr.ctypes.data))
    return _finish(t, requires_grad)


# ---- ops as functions -------------------------------------------------------------------------------
def _named(f: Callable[..., Tensor], name: str, doc: Optional[str]) -> Callable[..., Tensor]:
    """f, presented as the public op name (help(), tracebacks, the C fast path's fallback)."""
    f.__name__ = f.__qualname__ = name
    f.__doc__ = doc
    return f


def _unary(name: str, doc: str) -> Callable[[Tensor], Tensor]:
    cfn = getattr(_L, "flx_" + name)

    def f(x: Tensor) -> Tensor:
        return _wrap(cfn(_p(x)))

    return _named(f, name, doc)


neg = _unary("neg", "-x")
abs = _unary("abs", "|x| (derivative 0 at 0)")
sign = _unary("sign", "-1, 0 or 1 (zero gradient)")
square = _unary("square", "x * x")
sqrt = _unary("sqrt", "square root")
rsqrt = _unary("rsqrt", "1 / sqrt(x)")
reciprocal = _unary("reciprocal", "1 / x")
exp = _unary("exp", "e^x")
log = _unary("log", "natural logarithm")
log1p = _unary("log1p", "log(1 + x)")
sin = _unary("sin", "sine")
cos = _unary("cos", "cosine")
tanh = _unary("tanh", "hyperbolic tangent")
cosh = _unary("cosh", "hyperbolic cosine")
sinh = _unary("sinh", "hyperbolic sine")
erf = _unary("erf", "error function")
sigmoid = _unary("sigmoid", "1 / (1 + e^-x)")
relu = _unary("relu", "max(x, 0) (derivative 0 at 0)")
gelu = _unary("gelu", "exact GELU: x * Phi(x)")
softplus = _unary("softplus", "log(1 + e^x)")
detach = _unary("detach", "same value, no gradient history")
trace = _unary("trace", "sum of the main diagonal of a matrix")
diag = _unary("diag", "square matrix with v on the diagonal")
diagonal = _unary("diagonal", "main diagonal of a matrix")


def _binfn(name: str, doc: str) -> Callable[[Any, Any], Tensor]:
    cfn = getattr(_L, "flx_" + name)

    def f(a: Any, b: Any) -> Tensor:
        return _binary(cfn, a, b)

    return _named(f, name, doc)


add = _binfn("add", "a + b with broadcasting")
sub = _binfn("sub", "a - b with broadcasting")
mul = _binfn("mul", "a * b with broadcasting")
div = _binfn("div", "a / b with broadcasting")
maximum = _binfn("maximum", "elementwise max (gradient to a on ties)")
minimum = _binfn("minimum", "elementwise min (gradient to a on ties)")
eq = _binfn("eq", "a == b (bool)")
ne = _binfn("ne", "a != b (bool)")
lt = _binfn("lt", "a < b (bool)")
le = _binfn("le", "a <= b (bool)")
gt = _binfn("gt", "a > b (bool)")
ge = _binfn("ge", "a >= b (bool)")
dot = _binfn("dot", "1-d . 1-d -> 0-d")
outer = _binfn("outer", "(n), (m) -> (n, m)")


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """NumPy matmul semantics (batched, 1-d operands as vectors)."""
    return _wrap(_L.flx_matmul(_p(a), _p(b)))


def pow(x: Any, p: Any) -> Tensor:
    """x ** p (p a number or a tensor)."""
    if isinstance(x, Tensor):
        return x.__pow__(p)
    return _binary(_L.flx_pow, x, p)


def where(cond: Tensor, a: Any, b: Any) -> Tensor:
    """cond ? a : b with broadcasting (cond is bool)."""
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    if like is None:
        raise TypeError("fluxion.where: a or b must be a Tensor")
    a = _as_operand(a, like)
    b = _as_operand(b, like)
    return _wrap(_L.flx_where(_p(cond), a._ptr, b._ptr))


def leaky_relu(x: Tensor, slope: float = 0.01) -> Tensor:
    """x > 0 ? x : slope * x"""
    return _wrap(_L.flx_leaky_relu(_p(x), float(slope)))


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x > 0 ? x : alpha * (e^x - 1)"""
    return _wrap(_L.flx_elu(_p(x), float(alpha)))


def clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """min(max(x, lo), hi) (derivative 1 strictly inside)."""
    return _wrap(_L.flx_clamp(_p(x), float(lo), float(hi)))


clip = clamp


def affine(x: Tensor, a: float, b: float) -> Tensor:
    """a * x + b in one op."""
    return _wrap(_L.flx_affine(_p(x), float(a), float(b)))


def _reducer(name: str, doc: str) -> Callable[..., Tensor]:
    cfn = getattr(_L, "flx_" + name)

    def f(x: Tensor, axis: Union[None, int, Sequence[int]] = None, keepdims: bool = False) -> Tensor:
        a, n = _axes(axis)
        if n == 0 and axis is not None:
            return _no_axes(x)
        return _wrap(cfn(_p(x), n, a, bool(keepdims)))

    return _named(f, name, doc + " over axis (an int, a sequence, or None for all axes)")


sum = _reducer("sum", "sum")
mean = _reducer("mean", "mean")
max = _reducer("max", "maximum (gradient shared among ties)")
min = _reducer("min", "minimum (gradient shared among ties)")
logsumexp = _reducer("logsumexp", "log(sum(exp(x)))")


def _no_axes(x: Tensor) -> Tensor:
    """A reduction over the empty set of axes (numpy's axis=()) reduces nothing: each element is
    its own group. The C API reads 0 axes as "every axis", so this never reaches it; an identity
    reshape keeps the gradient path."""
    s, n = _i64(x.shape)
    return _wrap(_L.flx_reshape(_p(x), n, s))


def var(x: Tensor, axis: Union[None, int, Sequence[int]] = None, keepdims: bool = False,
        correction: int = 0) -> Tensor:
    """sum((x - mean)^2) / (N - correction)."""
    a, n = _axes(axis)
    if n == 0 and axis is not None:  # groups of one element: 0 / (1 - correction), as numpy
        d = square(sub(x, x))
        return d * (1.0 / (1 - correction)) if correction != 1 else d * math.nan
    return _wrap(_L.flx_var(_p(x), n, a, bool(keepdims), int(correction)))


def std(x: Tensor, axis: Union[None, int, Sequence[int]] = None, keepdims: bool = False,
        correction: int = 0) -> Tensor:
    """sqrt(var)."""
    return sqrt(var(x, axis, keepdims, correction))


def argmax(x: Tensor, axis: int = -1, keepdims: bool = False) -> Tensor:
    """Index (int64) of the first maximum along axis."""
    return _wrap(_L.flx_argmax(_p(x), int(axis), bool(keepdims)))


def reshape(x: Tensor, *shape: Any) -> Tensor:
    """Same elements, new shape (one entry may be -1)."""
    s, n = _i64(_shape_arg(shape))
    return _wrap(_L.flx_reshape(_p(x), n, s))


def permute(x: Tensor, *perm: Any) -> Tensor:
    """out.shape[i] = x.shape[perm[i]]."""
    p = _shape_arg(perm)
    if len(p) != x.ndim:
        raise ValueError(f"fluxion.permute: perm {p} does not have {x.ndim} entries")
    a, _ = _i32(p)
    return _wrap(_L.flx_permute(_p(x), a))


def transpose(x: Tensor, axis0: int = -2, axis1: int = -1) -> Tensor:
    """Swaps two axes."""
    return _wrap(_L.flx_transpose(_p(x), int(axis0), int(axis1)))


def broadcast_to(x: Tensor, *shape: Any) -> Tensor:
    """NumPy broadcasting of x to shape."""
    s, n = _i64(_shape_arg(shape))
    return _wrap(_L.flx_broadcast_to(_p(x), n, s))


def slice(x: Tensor, axis: int, start: int, stop: int, step: int = 1) -> Tensor:  # noqa: A001
    """Elements start, start+step, ... before stop along axis."""
    return _wrap(_L.flx_slice(_p(x), int(axis), int(start), int(stop), int(step)))


def concat(xs: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Joins tensors along an existing axis."""
    arr, n = _ptrs(list(xs))
    return _wrap(_L.flx_concat(n, arr, int(axis)))


concatenate = concat


def stack(xs: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Joins tensors along a new axis."""
    arr, n = _ptrs(list(xs))
    return _wrap(_L.flx_stack(n, arr, int(axis)))


def squeeze(x: Tensor, axis: int) -> Tensor:
    """Removes a size-1 axis."""
    return _wrap(_L.flx_squeeze(_p(x), int(axis)))


def unsqueeze(x: Tensor, axis: int) -> Tensor:
    """Inserts a size-1 axis at position axis of the result."""
    return _wrap(_L.flx_unsqueeze(_p(x), int(axis)))


expand_dims = unsqueeze


def index_select(x: Tensor, axis: int, index: Tensor) -> Tensor:
    """out[.., j, ..] = x[.., index[j], ..] (index: 1-d int32/int64)."""
    return _wrap(_L.flx_index_select(_p(x), int(axis), _p(index)))


def gather(x: Tensor, axis: int, index: Tensor) -> Tensor:
    """Alias of index_select."""
    return _wrap(_L.flx_gather(_p(x), int(axis), _p(index)))


def one_hot(index: Tensor, num_classes: int, dtype: Optional[DTypeLike] = None) -> Tensor:
    """out[..., c] = (index[...] == c)."""
    return _wrap(_L.flx_one_hot(_p(index), int(num_classes), _dt(dtype).code))


def pad(x: Tensor, pads: Sequence[int], value: float = 0.0) -> Tensor:
    """Constant padding; pads = (before_0, after_0, before_1, after_1, ...)."""
    p = tuple(int(v) for v in pads)
    if len(p) != 2 * x.ndim:
        raise ValueError(f"fluxion.pad: needs {2 * x.ndim} pad entries, got {len(p)}")
    a, _ = _i64(p)
    return _wrap(_L.flx_pad(_p(x), a, float(value)))


def cast(x: Tensor, dtype: DTypeLike) -> Tensor:
    """Converts elements to dtype."""
    return _wrap(_L.flx_cast(_p(x), as_dtype(dtype).code))


def _need(name: str) -> Callable:
    if not _lib.has(name):
        raise NotImplementedError(f"fluxion: the loaded library has no flx_{name}")
    return getattr(_L, "flx_" + name)


def softmax(x: Tensor, axis: int = -1, temperature: float = 1.0) -> Tensor:
    """softmax(x / temperature) along axis (needs a library with the softmax family)."""
    return _wrap(_need("softmax")(_p(x), int(axis), float(temperature)))


def log_softmax(x: Tensor, axis: int = -1, temperature: float = 1.0) -> Tensor:
    """log_softmax(x / temperature) along axis."""
    return _wrap(_need("log_softmax")(_p(x), int(axis), float(temperature)))


_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}


def cross_entropy(logits: Tensor, labels: Tensor, reduction: str = "mean",
                  ignore_index: int = -100) -> Tensor:
    """Softmax cross entropy of (N, C) logits against int labels."""
    return _wrap(_need("cross_entropy")(_p(logits), _p(labels), _REDUCTIONS[reduction],
                                        int(ignore_index)))


def mse_loss(y: Tensor, t: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error."""
    if _lib.has("mse_loss"):
        return _wrap(_L.flx_mse_loss(_p(y), _p(t), _REDUCTIONS[reduction]))
    d = square(sub(y, t))
    return {"mean": mean, "sum": sum}.get(reduction, lambda v: v)(d)


def eval(*ts: Tensor) -> None:  # noqa: A001
    """Computes several tensors in one evaluation (shared work runs once)."""
    if len(ts) == 1 and isinstance(ts[0], (list, tuple)):
        ts = tuple(ts[0])
    arr, n = _ptrs(ts)
    _check(_L.flx_eval(n, arr))


# ---- methods --------------------------------------------------------------------------------------------
for _name in (
    "abs sign square sqrt rsqrt reciprocal exp log log1p sin cos tanh cosh sinh erf sigmoid relu "
    "gelu softplus trace diag diagonal leaky_relu elu clamp clip affine sum mean max min "
    "logsumexp var std argmax permute transpose broadcast_to squeeze unsqueeze index_select "
    "gather pad cast maximum minimum matmul dot outer softmax log_softmax pow"
).split():
    setattr(Tensor, _name, globals()[_name])
Tensor.reshape = reshape  # type: ignore[attr-defined]
Tensor.view = reshape  # type: ignore[attr-defined]
Tensor.neg = neg  # type: ignore[attr-defined]
Tensor.add = add  # type: ignore[attr-defined]
Tensor.sub = sub  # type: ignore[attr-defined]
Tensor.mul = mul  # type: ignore[attr-defined]
Tensor.div = div  # type: ignore[attr-defined]
Tensor.flatten = lambda self: reshape(self, -1)  # type: ignore[attr-defined]

# Module-level unary and binary ops as C functions (the methods above stay Python functions,
# which bind to self). Non-tensor arguments and calls inside C callbacks go to the Python form.
_FAST_UNARY = ("neg abs sign square sqrt rsqrt reciprocal exp log log1p sin cos tanh cosh sinh "
               "erf sigmoid relu gelu softplus detach trace diag diagonal").split()
_FAST_BINARY = "add sub mul div maximum minimum eq ne lt le gt ge dot outer matmul".split()
if _fast is not None:
    for _names, _make in ((_FAST_UNARY, _fast.unary_fn), (_FAST_BINARY, _fast.binary_fn)):
        for _name in _names:
            _py = globals()[_name]
            globals()[_name] = _make(ctypes.cast(getattr(_L, "flx_" + _name), c_void_p).value,
                                     _name, _py, _py.__doc__ or "")

    def _method(f: Callable[..., Tensor], py: Callable[..., Tensor]) -> Callable[..., Tensor]:
        # a Python function binds to self; the C function does the work
        m = (lambda self: f(self)) if py.__code__.co_argcount == 1 else (lambda self, o: f(self, o))
        return _named(m, py.__name__, py.__doc__)

    for _name in _FAST_UNARY + _FAST_BINARY:
        _pym = Tensor.__dict__.get(_name)
        if _pym is not None and getattr(_pym, "__name__", None) == _name and hasattr(_pym, "__code__"):
            setattr(Tensor, _name, _method(globals()[_name], _pym))


