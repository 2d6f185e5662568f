"""Loading libfluxion and declaring the C API for ctypes.

The library is searched for in this order:

1. ``FLUXION_LIBRARY`` (a path to ``libfluxion.so``), when set;
2. ``libfluxion.so`` shipped inside this package (``pip install`` builds and copies it here).

The library is opened with :class:`ctypes.PyDLL`, which keeps the GIL held during each call.
fluxion requires that one context (and its tensors) be used by one thread at a time; holding the
GIL makes every Python thread respect that without a lock, and saves the GIL release/reacquire
that :class:`ctypes.CDLL` does on every call (part of the per-op overhead).
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint64,
    c_void_p,
)
from pathlib import Path

__all__ = ["lib", "library_path", "Device", "CTX_STATS"]


def _find_library() -> str:
    env = os.environ.get("FLUXION_LIBRARY")
    if env:
        if not Path(env).is_file():
            raise ImportError(f"FLUXION_LIBRARY={env!r} is not a file")
        return env
    here = Path(__file__).resolve().parent
    for name in ("libfluxion.so", "libfluxion.dylib", "fluxion.dll"):
        p = here / name
        if p.is_file():
            return str(p)
    raise ImportError(
        "fluxion: libfluxion.so was not found in the package directory "
        f"({here}); reinstall with `pip install ./bindings/python` or set FLUXION_LIBRARY "
        "to the path of a built libfluxion.so"
    )


library_path = _find_library()
lib = ctypes.PyDLL(library_path)


class Device(Structure):
    _fields_ = [("type", c_int), ("index", c_int32)]


class CTX_STATS(Structure):
    _fields_ = [
        (n, c_uint64)
        for n in (
            "h2d_copies",
            "d2h_copies",
            "syncs",
            "kernels",
            "allocs",
            "frees",
            "bytes_in_use",
            "peak_bytes",
            "nodes_executed",
            "nodes_fused",
        )
    ]


T = c_void_p  # flx_tensor*
C = c_void_p  # flx_ctx*
P_T = POINTER(c_void_p)
P_I64 = POINTER(c_int64)
P_I32 = POINTER(c_int32)

# Callback types of the interop API (include/fluxion/fluxion.h).
BLOB_DELETER = ctypes.CFUNCTYPE(None, c_void_p, c_void_p)
CUSTOM_FWD = ctypes.CFUNCTYPE(c_int, c_int32, P_T, P_T, c_void_p)
CUSTOM_VJP = ctypes.CFUNCTYPE(c_int, c_int32, P_T, c_void_p, c_void_p, P_T, c_void_p)
CUSTOM_JVP = ctypes.CFUNCTYPE(c_int, c_int32, P_T, P_T, c_void_p, P_T, c_void_p)
DESTROY = ctypes.CFUNCTYPE(None, c_void_p)

_UNARY = (
    "neg abs sign square sqrt rsqrt reciprocal exp log log1p sin cos tanh cosh sinh erf sigmoid "
    "relu gelu softplus detach sum_all mean_all trace diag diagonal"
).split()
_BINARY = "add sub mul div pow maximum minimum eq ne lt le gt ge matmul dot outer".split()

# name: (restype, argtypes). Entries whose symbol is missing from an older library are skipped
# (the Python function then raises NotImplementedError).
_PROTOS = {
    "flx_last_status": (c_int, []),
    "flx_last_error": (c_char_p, []),
    "flx_clear_error": (None, []),
    "flx_status_string": (c_char_p, [c_int]),
    "flx_dtype_size": (c_size_t, [c_int]),
    "flx_dtype_name": (c_char_p, [c_int]),
    "flx_has_cuda": (c_bool, []),
    "flx_cuda_device_count": (c_int32, []),
    "flx_version": (c_char_p, []),
    "flx_ctx_create": (C, [Device]),
    "flx_ctx_destroy": (c_int, [C]),
    "flx_ctx_device": (Device, [C]),
    "flx_ctx_synchronize": (c_int, [C]),
    "flx_ctx_get_stats": (c_int, [C, POINTER(CTX_STATS)]),
    "flx_ctx_reset_stats": (c_int, [C]),
    "flx_retain": (T, [T]),
    "flx_release": (None, [T]),
    "flx_live_tensors": (c_int64, []),
    "flx_ndim": (c_int32, [T]),
    "flx_shape": (P_I64, [T]),
    "flx_numel": (c_int64, [T]),
    "flx_dtype_of": (c_int, [T]),
    "flx_ctx_of": (C, [T]),
    "flx_is_realized": (c_bool, [T]),
    "flx_zeros": (T, [C, c_int, c_int32, P_I64]),
    "flx_ones": (T, [C, c_int, c_int32, P_I64]),
    "flx_full": (T, [C, c_int, c_int32, P_I64, c_double]),
    "flx_scalar": (T, [C, c_int, c_double]),
    "flx_eye": (T, [C, c_int, c_int64, c_int64]),
    "flx_arange": (T, [C, c_int, c_double, c_double, c_double]),
    "flx_uniform": (T, [C, c_int, c_int32, P_I64, c_double, c_double, c_uint64]),
    "flx_normal": (T, [C, c_int, c_int32, P_I64, c_double, c_double, c_uint64]),
    "flx_from_host": (T, [C, c_int, c_int32, P_I64, c_void_p]),
    "flx_to_host": (c_int, [T, c_void_p, c_size_t]),
    "flx_item": (c_int, [T, POINTER(c_double)]),
    "flx_to_ctx": (T, [T, C]),
    "flx_cast": (T, [T, c_int]),
    "flx_eval": (c_int, [c_int32, P_T]),
    "flx_assign": (c_int, [T, T]),
    "flx_leaky_relu": (T, [T, c_double]),
    "flx_elu": (T, [T, c_double]),
    "flx_pow_scalar": (T, [T, c_double]),
    "flx_clamp": (T, [T, c_double, c_double]),
    "flx_affine": (T, [T, c_double, c_double]),
    "flx_mul_scalar": (T, [T, c_double]),
    "flx_add_scalar": (T, [T, c_double]),
    "flx_where": (T, [T, T, T]),
    "flx_sum": (T, [T, c_int32, P_I32, c_bool]),
    "flx_mean": (T, [T, c_int32, P_I32, c_bool]),
    "flx_max": (T, [T, c_int32, P_I32, c_bool]),
    "flx_min": (T, [T, c_int32, P_I32, c_bool]),
    "flx_logsumexp": (T, [T, c_int32, P_I32, c_bool]),
    "flx_var": (T, [T, c_int32, P_I32, c_bool, c_int32]),
    "flx_argmax": (T, [T, c_int32, c_bool]),
    "flx_reshape": (T, [T, c_int32, P_I64]),
    "flx_permute": (T, [T, P_I32]),
    "flx_transpose": (T, [T, c_int32, c_int32]),
    "flx_broadcast_to": (T, [T, c_int32, P_I64]),
    "flx_slice": (T, [T, c_int32, c_int64, c_int64, c_int64]),
    "flx_concat": (T, [c_int32, P_T, c_int32]),
    "flx_stack": (T, [c_int32, P_T, c_int32]),
    "flx_squeeze": (T, [T, c_int32]),
    "flx_unsqueeze": (T, [T, c_int32]),
    "flx_index_select": (T, [T, c_int32, T]),
    "flx_gather": (T, [T, c_int32, T]),
    "flx_one_hot": (T, [T, c_int64, c_int]),
    "flx_pad": (T, [T, P_I64, c_double]),
    "flx_set_requires_grad": (c_int, [T, c_bool]),
    "flx_requires_grad": (c_bool, [T]),
    "flx_grad": (T, [T]),
    "flx_zero_grad": (c_int, [T]),
    "flx_backward": (c_int, [T]),
    "flx_grad_of": (c_int, [c_int32, P_T, P_T, c_int32, P_T, c_bool, P_T]),
    "flx_jvp": (c_int, [c_int32, P_T, P_T, c_int32, P_T, P_T]),
    "flx_no_grad_begin": (None, []),
    "flx_no_grad_end": (None, []),
    "flx_grad_enabled": (c_bool, []),
    # interop
    "flx_data_ptr": (c_int, [T, POINTER(c_void_p)]),
    "flx_from_blob": (T, [C, c_int, c_int32, P_I64, c_void_p, BLOB_DELETER, c_void_p]),
    "flx_ctx_stream": (c_void_p, [C]),
    "flx_custom_fn": (
        c_int,
        [c_int32, P_T, CUSTOM_FWD, CUSTOM_VJP, CUSTOM_JVP, c_void_p, DESTROY, P_T],
    ),
    # optional families (present in newer libraries)
    "flx_softmax": (T, [T, c_int32, c_double]),
    "flx_log_softmax": (T, [T, c_int32, c_double]),
    "flx_cross_entropy": (T, [T, T, c_int, c_int64]),
    "flx_mse_loss": (T, [T, T, c_int]),
}
for _n in _UNARY:
    _PROTOS["flx_" + _n] = (T, [T])
for _n in _BINARY:
    _PROTOS["flx_" + _n] = (T, [T, T])

missing: list[str] = []
for _name, (_res, _args) in _PROTOS.items():
    try:
        _f = getattr(lib, _name)
    except AttributeError:
        missing.append(_name)
        continue
    _f.restype = _res
    _f.argtypes = _args

_REQUIRED = ("flx_data_ptr", "flx_from_blob", "flx_custom_fn", "flx_release", "flx_add")
for _name in _REQUIRED:
    if _name in missing:
        raise ImportError(
            f"fluxion: {library_path} lacks {_name}; it is older than these bindings. "
            "Rebuild the C library (pip install ./bindings/python) or point FLUXION_LIBRARY "
            "at a current build."
        )


def has(name: str) -> bool:
    """True when the loaded library exports flx_<name>."""
    return ("flx_" + name) not in missing and ("flx_" + name) in _PROTOS


# ---- Python C API used for DLPack capsules -----------------------------------------------------
pyapi = ctypes.pythonapi
PyCapsule_Destructor = ctypes.CFUNCTYPE(None, c_void_p)
pyapi.PyCapsule_New.restype = ctypes.py_object
pyapi.PyCapsule_New.argtypes = [c_void_p, c_char_p, PyCapsule_Destructor]
pyapi.PyCapsule_IsValid.restype = c_int
pyapi.PyCapsule_IsValid.argtypes = [ctypes.py_object, c_char_p]
pyapi.PyCapsule_GetPointer.restype = c_void_p
pyapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, c_char_p]
pyapi.PyCapsule_SetName.restype = c_int
pyapi.PyCapsule_SetName.argtypes = [ctypes.py_object, c_char_p]
pyapi.PyCapsule_GetName.restype = c_char_p
pyapi.PyCapsule_GetName.argtypes = [ctypes.py_object]
# Raw-pointer variants, for use inside a capsule destructor (which gets a PyObject*).
_raw_isvalid = ctypes.PYFUNCTYPE(c_int, c_void_p, c_char_p)(("PyCapsule_IsValid", pyapi))
_raw_getptr = ctypes.PYFUNCTYPE(c_void_p, c_void_p, c_char_p)(("PyCapsule_GetPointer", pyapi))
capsule_raw_isvalid = _raw_isvalid
capsule_raw_getptr = _raw_getptr
