"""Errors of the C API as Python exceptions, and the per-thread state of C calls that run Python
callbacks (the first exception a callback raised, the results it handed back to C).

A failing C call leaves a status and a message on its thread; _raise_last turns them into the
exception that fits (ValueError for bad arguments, shapes and dtypes, MemoryError,
TimeoutError for a collective the other ranks did not join, FluxionError otherwise). An
exception raised inside a callback is recorded here and re-raised when the C call that ran the
callback returns (_call_cb), since it cannot cross the C frames in between.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from ._lib import lib as _L

# ---- errors ---------------------------------------------------------------------------------------
FLX_OK = 0
_STATUS_NAMES = {
    1: "FLX_ERR_INVALID_ARGUMENT",
    2: "FLX_ERR_SHAPE",
    3: "FLX_ERR_DTYPE",
    4: "FLX_ERR_DEVICE",
    5: "FLX_ERR_OUT_OF_MEMORY",
    6: "FLX_ERR_BACKEND",
    7: "FLX_ERR_NOT_DIFFERENTIABLE",
    8: "FLX_ERR_UNSUPPORTED",
    9: "FLX_ERR_STATE",
    10: "FLX_ERR_NUMERIC",
    11: "FLX_ERR_TIMEOUT",
}


class FluxionError(RuntimeError):
    """A fluxion error that is neither a shape/dtype/argument error nor out-of-memory."""

    status: int = 0


class _ShapeError(ValueError):
    status: int = 0


def _exception_for(status: int, msg: str) -> BaseException:
    raw = _L.flx_status_string(status)
    name = raw.decode() if raw else _STATUS_NAMES.get(status, f"status {status}")
    text = f"{msg} [{name}]" if msg else name
    if status in (1, 2, 3):
        e: BaseException = ValueError(text)
    elif status == 5:
        e = MemoryError(text)
    elif status == 11:
        e = TimeoutError(text)
    else:
        e = FluxionError(text)
    try:
        e.status = status  # type: ignore[attr-defined]
    except Exception:
        pass
    return e


class _TLS(threading.local):
    def __init__(self) -> None:
        self.depth = 0  # nesting of C callbacks running on this thread
        self.exc: Optional[BaseException] = None  # first exception raised in a callback
        self.keep: list = []  # tensors handed back to C by callbacks, kept until the call returns


_tls = _TLS()


def _raise_last(default_status: int = 1) -> None:
    """Raises the pending C error (and clears it), or a callback's exception."""
    status = _L.flx_last_status()
    raw = _L.flx_last_error()
    msg = raw.decode("utf-8", "replace") if raw else ""
    _L.flx_clear_error()
    exc = _tls.exc
    if exc is not None and _tls.depth == 0:
        _tls.exc = None
        raise exc
    raise _exception_for(status or default_status, msg)


def _check(status: int) -> None:
    if status != FLX_OK:
        _raise_last(status)


# ---- callbacks into C ------------------------------------------------------------------------------
def _call_cb(fn: Callable, *args: Any) -> None:
    """Calls a C function that may run Python callbacks; raises their exception or the C error."""
    outer = _tls.depth == 0
    try:
        status = fn(*args)
    finally:
        if outer:
            _tls.keep.clear()
    if status != FLX_OK:
        _raise_last(status)
    elif outer and _tls.exc is not None:
        exc, _tls.exc = _tls.exc, None
        raise exc


_ERR_CALLBACK = 1  # FLX_ERR_INVALID_ARGUMENT


def _record_exc(e: BaseException) -> int:
    if _tls.exc is None:
        _tls.exc = e
    return _ERR_CALLBACK
