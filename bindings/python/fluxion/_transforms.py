"""Transforms that call a Python function from C (flx_fn): gradcheck, jacobian, hessian; and
the runtime's context queries (stats, math mode, fusion, device properties)."""

from __future__ import annotations

from ctypes import byref, c_bool, c_int32, c_void_p
from typing import Any, Callable, Dict, Sequence, Union

from . import _capi, _core, _lib
from ._core import Tensor, _borrow, _call_cb, _check, _ctx, _L, _ptrs, _wrap

__all__ = ["gradcheck", "jacobian", "hessian", "stats", "reset_stats", "set_math_mode",
           "get_math_mode", "set_fusion", "get_fusion", "cuda_device_info", "version"]

_fns: Dict[int, Callable[..., Any]] = {}
_next = [1]


@_core._callback(failed=0)  # flx_fn returns a tensor: NULL reports the failure
def _fn_tramp(n: int, inputs: Any, user: int) -> int:
    xs = [_borrow(inputs[k]) for k in range(n)]
    return _core._as_result(_fns[user](*xs), "fn")


_FN_CB = _lib.FN(_fn_tramp)


class _Registered:
    def __init__(self, f: Callable[..., Any]) -> None:
        self.key = _next[0]
        _next[0] += 1
        _fns[self.key] = f

    def __enter__(self) -> int:
        return self.key

    def __exit__(self, *exc: Any) -> None:
        _fns.pop(self.key, None)


def _f64(x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        return _core.tensor(x, dtype=_core.float64)
    return x if x.dtype is _core.float64 else x.astype(_core.float64)


def gradcheck(fn: Callable[..., Tensor], inputs: Union[Tensor, Sequence[Any]], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, seed: int = 0,
              raise_exception: bool = True) -> bool:
    """Central-difference check of fn's VJP at inputs (made float64), with a random cotangent
    (flx_gradcheck). True when every entry agrees within atol + rtol |numeric|; otherwise
    raises ValueError naming the worst entry (or returns False with raise_exception=False)."""
    xs = [_f64(x) for x in ((inputs,) if isinstance(inputs, Tensor) else inputs)]
    arr, n = _ptrs(xs)
    rep = _capi.flx_gradcheck_report()
    with _Registered(fn) as key:
        try:
            _call_cb(_L.flx_gradcheck, _FN_CB, key, n, arr, float(eps), float(atol), float(rtol),
                     int(seed), byref(rep))
        except _core.FluxionError as e:
            if getattr(e, "status", 0) != _capi.FLX_ERR_NUMERIC:
                raise
            if raise_exception:
                raise ValueError(f"fluxion.gradcheck failed: {e} (max abs err {rep.max_abs_err:.3g}, "
                                 f"max rel err {rep.max_rel_err:.3g}, input {rep.worst_input}, "
                                 f"index {rep.worst_index})") from None
            return False
    return True


def jacobian(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Full Jacobian of f at x: shape f(x).shape + x.shape (flx_jacobian: JVP columns or VJP
    rows, whichever is fewer)."""
    out = c_void_p()
    with _Registered(f) as key:
        _call_cb(_L.flx_jacobian, _FN_CB, key, x._ptr, byref(out))
    return _wrap(out.value)


def hessian(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Hessian of a scalar f at x: shape x.shape + x.shape (forward over reverse)."""
    out = c_void_p()
    with _Registered(f) as key:
        _call_cb(_L.flx_hessian, _FN_CB, key, x._ptr, byref(out))
    return _wrap(out.value)


# ---- runtime queries ------------------------------------------------------------------------------
def version() -> str:
    """The C library's version, "MAJOR.MINOR.PATCH"."""
    return _L.flx_version().decode()


def stats(device: Any = None) -> Dict[str, int]:
    """Counters of the device's context (copies, syncs, kernels, allocations, bytes, nodes)."""
    s = _capi.flx_ctx_stats()
    _check(_L.flx_ctx_get_stats(_ctx(device), byref(s)))
    return {k: int(getattr(s, k)) for k, _ in s._fields_}


def reset_stats(device: Any = None) -> None:
    _check(_L.flx_ctx_reset_stats(_ctx(device)))


_MATH = {"strict": _capi.FLX_MATH_STRICT, "tf32": _capi.FLX_MATH_TF32}


def set_math_mode(mode: str, device: Any = None) -> None:
    """'strict' (IEEE f32 GEMMs, the default) or 'tf32' (cuBLAS may use TF32 tensor cores)."""
    if mode not in _MATH:
        raise ValueError(f"fluxion.set_math_mode: mode must be 'strict' or 'tf32', got {mode!r}")
    _check(_L.flx_set_math_mode(_ctx(device), _MATH[mode]))


def get_math_mode(device: Any = None) -> str:
    m = c_int32()
    _check(_L.flx_get_math_mode(_ctx(device), byref(m)))
    return {v: k for k, v in _MATH.items()}.get(m.value, str(m.value))


def set_fusion(enabled: bool, device: Any = None) -> None:
    """Turns elementwise fusion on or off for the device's context (results are bit-identical)."""
    _check(_L.flx_set_fusion(_ctx(device), bool(enabled)))


def get_fusion(device: Any = None) -> bool:
    b = c_bool()
    _check(_L.flx_get_fusion(_ctx(device), byref(b)))
    return bool(b.value)


def cuda_device_info(index: int = 0) -> Dict[str, Any]:
    """Name, compute capability, memory and SM count of a CUDA device (ValueError/FluxionError
    without CUDA or such a device)."""
    p = _capi.flx_cuda_device_props()
    _check(_L.flx_cuda_device_info(int(index), byref(p)))
    return {"name": p.name.decode("utf-8", "replace"), "major": p.major, "minor": p.minor,
            "total_memory": int(p.total_memory), "multiprocessors": p.multiprocessors}
