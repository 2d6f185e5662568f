"""DLPack (both directions, versioned and legacy capsules), numpy and CUDA Array Interface.

Export (``Tensor.__dlpack__``): the tensor is computed, a C reference is taken for the capsule's
lifetime, and a ``DLManagedTensorVersioned`` (when the consumer passes ``max_version >= (1, 0)``)
or a legacy ``DLManagedTensor`` is built with ctypes. The capsule is named ``dltensor_versioned``
or ``dltensor``; a consumer renames it ``used_...`` and calls the deleter itself, otherwise the
capsule's destructor calls it.

Import (:func:`from_dlpack`): the producer's capsule is consumed (renamed ``used_...``) and its
memory wrapped without a copy by ``flx_from_blob``, whose deleter calls the producer's deleter
when the last fluxion tensor sharing the memory dies (after the CUDA stream is synchronised).

Streams (CUDA): as a consumer, fluxion passes its context's stream (``flx_ctx_stream``) to the
producer's ``__dlpack__(stream=...)``, so the producer orders its work before fluxion's. As a
producer, fluxion waits for its own stream (a host synchronisation) unless the consumer passes
``stream=-1``: that is the simplest correct way to make any consumer stream see finished data.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p
from typing import Any, Optional, Tuple

from . import _core, _lib
from ._core import Tensor, _ctx, _wrap, as_dtype
from ._lib import lib as _L, pyapi

# ---- DLPack structs -----------------------------------------------------------------------------------
kDLCPU, kDLCUDA, kDLCUDAHost, kDLCUDAManaged = 1, 2, 3, 13
kDLInt, kDLUInt, kDLFloat, kDLBfloat, kDLBool = 0, 1, 2, 4, 6
DLPACK_VERSION = (1, 0)
FLAG_READ_ONLY = 1 << 0
FLAG_IS_COPIED = 1 << 1


class DLDevice(Structure):
    _fields_ = [("device_type", c_int32), ("device_id", c_int32)]


class DLDataType(Structure):
    _fields_ = [("code", c_uint8), ("bits", c_uint8), ("lanes", c_uint16)]


class DLTensor(Structure):
    _fields_ = [
        ("data", c_void_p),
        ("device", DLDevice),
        ("ndim", c_int32),
        ("dtype", DLDataType),
        ("shape", POINTER(c_int64)),
        ("strides", POINTER(c_int64)),
        ("byte_offset", c_uint64),
    ]


class DLManagedTensor(Structure):
    pass


DELETER = ctypes.CFUNCTYPE(None, c_void_p)
DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", c_void_p),
    ("deleter", DELETER),
]


class DLPackVersion(Structure):
    _fields_ = [("major", c_uint32), ("minor", c_uint32)]


class DLManagedTensorVersioned(Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", c_void_p),
        ("deleter", DELETER),
        ("flags", c_uint64),
        ("dl_tensor", DLTensor),
    ]


NAME_LEGACY = b"dltensor"
NAME_VERSIONED = b"dltensor_versioned"
USED_LEGACY = b"used_dltensor"
USED_VERSIONED = b"used_dltensor_versioned"

# ---- export -----------------------------------------------------------------------------------------------
# address of the managed struct -> (struct, shape array, retained flx_tensor*)
_exports: dict = {}


def _export_deleter(addr: int) -> None:
    entry = _exports.pop(addr, None)
    if entry is not None and _core._alive:
        _L.flx_release(entry[2])


_EXPORT_DELETER = DELETER(_export_deleter)


def _capsule_destructor(cap: int) -> None:
    # Called by Python when the capsule dies. If nobody consumed it (name unchanged), we still
    # own the managed tensor and call its deleter.
    try:
        for name in (NAME_VERSIONED, NAME_LEGACY):
            if _lib.capsule_raw_isvalid(cap, name):
                addr = _lib.capsule_raw_getptr(cap, name)
                if addr:
                    _export_deleter(addr)
                return
    except Exception:
        pass


_CAPSULE_DESTRUCTOR = _lib.PyCapsule_Destructor(_capsule_destructor)


def _dl_device_of(t: Tensor) -> Tuple[int, int]:
    d = t.device
    return (kDLCPU, 0) if d.type == "cpu" else (kDLCUDA, d.index)


def to_dlpack(t: Tensor, stream: Any = None, max_version: Optional[Tuple[int, int]] = None,
              dl_device: Optional[Tuple[int, int]] = None, copy: Optional[bool] = None) -> Any:
    """The DLPack capsule of a tensor (see Tensor.__dlpack__)."""
    src = t
    here = _dl_device_of(t)
    if dl_device is not None and tuple(dl_device) != here:
        dev_type, dev_id = dl_device
        if copy is False:
            raise BufferError(f"fluxion: the tensor is on {t.device}; exporting to DLPack device "
                              f"{tuple(dl_device)} needs a copy (copy=False)")
        if dev_type == kDLCPU:
            target = "cpu"
        elif dev_type == kDLCUDA:
            target = _core.device("cuda", int(dev_id))
        else:
            raise BufferError(f"fluxion: cannot export to DLPack device type {dev_type}")
        src = _wrap(_L.flx_to_ctx(t._ptr, _ctx(target)))
        copied = True
    elif copy:
        src = _wrap(_L.flx_to_ctx(t._ptr, _L.flx_ctx_of(t._ptr)))
        copied = True
    else:
        copied = False
    data = src.data_ptr()  # computes it
    dev = _dl_device_of(src)
    if dev[0] == kDLCUDA:
        if stream is not None and stream != -1 and not isinstance(stream, int):
            raise TypeError(f"fluxion: stream must be an int or None, got {type(stream).__name__}")
        if stream != -1:
            _core._check(_L.flx_ctx_synchronize(_L.flx_ctx_of(src._ptr)))
    elif stream is not None and stream != -1:
        raise BufferError("fluxion: stream must be None for a CPU tensor")
    versioned = max_version is not None and tuple(max_version) >= (1, 0)
    shape = src.shape
    nd = len(shape)
    shape_arr = (c_int64 * max(nd, 1))(*shape)
    dt = src.dtype
    m: Any = DLManagedTensorVersioned() if versioned else DLManagedTensor()
    dl = m.dl_tensor
    dl.data = data
    dl.device = DLDevice(*dev)
    dl.ndim = nd
    dl.dtype = DLDataType(dt.dl_code, dt.dl_bits, 1)
    dl.shape = ctypes.cast(shape_arr, POINTER(c_int64))
    dl.strides = None  # compact row-major
    dl.byte_offset = 0
    m.manager_ctx = None
    m.deleter = _EXPORT_DELETER
    if versioned:
        m.version = DLPackVersion(*DLPACK_VERSION)
        m.flags = FLAG_IS_COPIED if copied else 0
    addr = ctypes.addressof(m)
    _exports[addr] = (m, shape_arr, _L.flx_retain(src._ptr))
    try:
        return pyapi.PyCapsule_New(addr, NAME_VERSIONED if versioned else NAME_LEGACY,
                                   _CAPSULE_DESTRUCTOR)
    except BaseException:
        _export_deleter(addr)
        raise


# ---- import -------------------------------------------------------------------------------------------------
# key -> (address of the producer's managed struct, versioned)
_imports: dict = {}
_import_next = [1]


def _call_producer_deleter(addr: int, versioned: bool) -> None:
    st = (DLManagedTensorVersioned if versioned else DLManagedTensor).from_address(addr)
    fn = ctypes.cast(st.deleter, c_void_p).value
    if fn:
        DELETER(fn)(addr)


def _blob_deleter(data: int, user: int) -> None:
    entry = _imports.pop(user, None)
    if entry is None or not _core._alive:
        return
    try:
        _call_producer_deleter(*entry)
    except Exception:
        pass


_BLOB_DELETER = _lib.BLOB_DELETER(_blob_deleter)


def _is_capsule(obj: Any) -> bool:
    return type(obj).__name__ == "PyCapsule"


def _dtype_from_dl(code: int, bits: int, lanes: int):
    if lanes != 1:
        raise ValueError(f"fluxion.from_dlpack: vector dtypes (lanes={lanes}) are not supported")
    table = {
        (kDLFloat, 32): _core.float32,
        (kDLFloat, 64): _core.float64,
        (kDLInt, 32): _core.int32,
        (kDLInt, 64): _core.int64,
        (kDLBool, 8): _core.bool_,
        (kDLFloat, 16): _core.float16,
        (kDLBfloat, 16): _core.bfloat16,
    }
    dt = table.get((code, bits))
    if dt is None:
        names = {kDLInt: "int", kDLUInt: "uint", kDLFloat: "float", kDLBfloat: "bfloat",
                 kDLBool: "bool"}
        raise ValueError(
            f"fluxion.from_dlpack: unsupported dtype {names.get(code, f'code {code}')}{bits} "
            "(fluxion takes float32, float64, float16, bfloat16, int32, int64, bool)")
    return dt


def _contiguous(shape, strides) -> bool:
    if not strides:
        return True
    expect = 1
    for s, st in zip(reversed(shape), reversed(strides)):
        if s != 1 and st != expect:
            return False
        expect *= s
    return True


def _consume(capsule: Any, device_hint: Optional[Any], copy: Optional[bool]) -> Tensor:
    if pyapi.PyCapsule_IsValid(capsule, NAME_VERSIONED):
        versioned, name, used = True, NAME_VERSIONED, USED_VERSIONED
    elif pyapi.PyCapsule_IsValid(capsule, NAME_LEGACY):
        versioned, name, used = False, NAME_LEGACY, USED_LEGACY
    else:
        cname = pyapi.PyCapsule_GetName(capsule)
        if cname in (USED_LEGACY, USED_VERSIONED):
            raise ValueError("fluxion.from_dlpack: this DLPack capsule was already consumed")
        raise ValueError(f"fluxion.from_dlpack: not a DLPack capsule (name {cname!r})")
    addr = pyapi.PyCapsule_GetPointer(capsule, name)
    st: Any = (DLManagedTensorVersioned if versioned else DLManagedTensor).from_address(addr)
    flags = 0
    if versioned:
        if st.version.major != 1:
            raise ValueError(
                f"fluxion.from_dlpack: DLPack version {st.version.major}.{st.version.minor} "
                "is not supported (major version 1 is)")
        flags = st.flags
    dl = st.dl_tensor
    nd = dl.ndim
    shape = tuple(dl.shape[i] for i in range(nd))
    strides = tuple(dl.strides[i] for i in range(nd)) if dl.strides else None
    dt = _dtype_from_dl(dl.dtype.code, dl.dtype.bits, dl.dtype.lanes)
    dev_type, dev_id = dl.device.device_type, dl.device.device_id
    if dev_type in (kDLCPU, kDLCUDAHost):
        dev = _core.device("cpu")
    elif dev_type in (kDLCUDA, kDLCUDAManaged):
        dev = _core.device("cuda", dev_id)
    else:
        raise ValueError(f"fluxion.from_dlpack: unsupported DLPack device type {dev_type}")
    data = (dl.data or 0) + dl.byte_offset
    contiguous = _contiguous(shape, strides)
    readonly = bool(flags & FLAG_READ_ONLY)
    need_copy = not contiguous or readonly or copy is True
    if need_copy and copy is False:
        why = "is not contiguous" if not contiguous else "is read-only"
        raise BufferError(f"fluxion.from_dlpack: the array {why}; a copy is needed (copy=False)")
    # Consume the capsule: from now on we call the producer's deleter.
    if pyapi.PyCapsule_SetName(capsule, used) != 0:
        raise RuntimeError("fluxion.from_dlpack: could not mark the capsule as consumed")
    key = _import_next[0]
    _import_next[0] += 1
    _imports[key] = (addr, versioned)
    ctx = _ctx(dev)
    if not need_copy:
        s = (c_int64 * max(nd, 1))(*shape)
        t = _wrap(_L.flx_from_blob(ctx, dt.code, nd, s, data or None, _BLOB_DELETER, key))
    else:
        try:
            t = _copy_strided(data, shape, strides, dt, dev, ctx)
        finally:
            _blob_deleter(0, key)
    if device_hint is not None and _core.device(device_hint) != dev:
        t = t.to(device_hint)
    return t


def _copy_strided(data: int, shape, strides, dt, dev, ctx) -> Tensor:
    import numpy as np

    if dev.type != "cpu":
        if _contiguous(shape, strides):
            s = (c_int64 * max(len(shape), 1))(*shape)
            view = _wrap(_L.flx_from_blob(ctx, dt.code, len(shape), s, data or None,
                                          _lib.BLOB_DELETER(), None))
            out = _wrap(_L.flx_to_ctx(view._ptr, ctx))
            out.eval()  # copied now: the producer's memory is handed back right after
            return out
        raise ValueError("fluxion.from_dlpack: non-contiguous CUDA arrays are not supported; "
                         "make the array contiguous first")
    itemsize = dt.itemsize
    if strides is None:
        byte_strides = None
    else:
        byte_strides = tuple(st * itemsize for st in strides)
    n = 1
    for s in shape:
        n *= s
    if n == 0:
        arr = np.empty(shape, dtype=np.dtype(dt.numpy_str))
    else:
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(shape, strides or ())) if strides else n
        lo = sum((s - 1) * st for s, st in zip(shape, strides or ()) if st < 0) if strides else 0
        base = (ctypes.c_char * (span * itemsize)).from_address(data + lo * itemsize)
        flat = np.frombuffer(base, dtype=np.dtype(dt.numpy_str))
        arr = np.lib.stride_tricks.as_strided(flat[-lo:] if lo else flat, shape=shape,
                                              strides=byte_strides)
        arr = np.ascontiguousarray(arr)
    s, nd = _core._i64(arr.shape)
    return _wrap(_L.flx_from_host(ctx, dt.code, nd, s, arr.ctypes.data))


def from_dlpack(obj: Any, device: Any = None, copy: Optional[bool] = None) -> Tensor:
    """A fluxion tensor sharing the memory of a DLPack producer (torch, cupy, jax, numpy, ...).

    obj has ``__dlpack__`` (the protocol; fluxion passes its CUDA stream so the producer's work
    is ordered first) or is a DLPack capsule. Zero-copy for contiguous arrays of float32,
    float64, int32, int64 or bool on the CPU or a CUDA device; non-contiguous or read-only
    arrays are copied (or rejected when copy=False). A consumed capsule raises ValueError.
    """
    if isinstance(obj, Tensor):
        return obj if not copy else _wrap(_L.flx_to_ctx(obj._ptr, _L.flx_ctx_of(obj._ptr)))
    if _is_capsule(obj):
        return _consume(obj, device, copy)
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(
            f"fluxion.from_dlpack: {type(obj).__name__} does not support DLPack (__dlpack__)")
    dev_type, dev_id = obj.__dlpack_device__() if hasattr(obj, "__dlpack_device__") else (kDLCPU, 0)
    stream = None
    if dev_type in (kDLCUDA, kDLCUDAManaged):
        ctx = _ctx(_core.device("cuda", int(dev_id)))
        s = _L.flx_ctx_stream(ctx)
        stream = int(s) if s else None
    kwargs: dict = {"stream": stream, "max_version": DLPACK_VERSION}
    if copy is not None:
        kwargs["copy"] = copy
    try:
        capsule = obj.__dlpack__(**kwargs)
    except TypeError:
        # A producer predating DLPack 1.0 keywords.
        capsule = obj.__dlpack__(stream=stream) if stream is not None else obj.__dlpack__()
    except BufferError:
        if copy is False:
            raise
        # e.g. numpy refusing to export a read-only array through a legacy capsule
        import numpy as np

        if isinstance(obj, np.ndarray):
            return _core.tensor(obj, device=device)
        raise
    return _consume(capsule, device, copy)


# ---- numpy -----------------------------------------------------------------------------------------------------
def asarray(obj: Any, dtype: Any = None, device: Any = None, copy: Optional[bool] = None) -> Tensor:
    """A tensor from obj, sharing memory where possible.

    numpy arrays that are C-contiguous, writeable and of a supported dtype are wrapped without
    a copy (through DLPack; the tensor keeps the array alive and sees later writes to it).
    Non-contiguous or read-only arrays are copied (copy=False raises instead); so are lists and
    numbers. DLPack producers (torch, cupy, ...) go through from_dlpack.
    """
    import numpy as np

    if isinstance(obj, Tensor):
        t = obj
        if device is not None and _core.device(device) != t.device:
            t = t.to(device)
        if dtype is not None and as_dtype(dtype) is not t.dtype:
            t = t.astype(dtype)
        elif copy:
            t = _wrap(_L.flx_to_ctx(t._ptr, _L.flx_ctx_of(t._ptr)))
        return t
    if isinstance(obj, np.ndarray):
        dt = as_dtype(obj.dtype) if dtype is None else as_dtype(dtype)
        zero_copy = (obj.flags.c_contiguous and obj.flags.writeable and not copy
                     and np.dtype(dt.numpy_str) == obj.dtype
                     and (obj.dtype.byteorder in ("=", "|", "<")))
        if not zero_copy:
            if copy is False:
                why = ("is not C-contiguous" if not obj.flags.c_contiguous else
                       "is read-only" if not obj.flags.writeable else
                       f"has dtype {obj.dtype}, not {dt.name}")
                raise ValueError(f"fluxion.asarray: the array {why}; a copy is needed (copy=False)")
            return _core.tensor(obj, dtype=dt, device=device)
        t = from_dlpack(obj)
        if device is not None and _core.device(device) != t.device:
            t = t.to(device)
        return t
    if hasattr(obj, "__dlpack__") and not isinstance(obj, (list, tuple)):
        t = from_dlpack(obj, copy=copy)
        if dtype is not None and as_dtype(dtype) is not t.dtype:
            t = t.astype(dtype)
        if device is not None and _core.device(device) != t.device:
            t = t.to(device)
        return t
    if copy is False:
        raise ValueError(f"fluxion.asarray: a {type(obj).__name__} cannot be used without a copy")
    return _core.tensor(obj, dtype=dtype, device=device)


def tensor_to_numpy(t: Tensor, dtype: Any = None, copy: Optional[bool] = None) -> Any:
    """numpy view of a CPU tensor (zero-copy, read-only, keeps t alive) or a copy."""
    import numpy as np

    if t.device.type == "cpu" and copy is not True:
        arr = np.from_dlpack(t)
        arr.flags.writeable = False  # fluxion buffers are immutable once computed
    else:
        if copy is False:
            raise ValueError("fluxion: a CUDA tensor cannot become a numpy array without a copy")
        arr = t.numpy()
    if dtype is not None and np.dtype(dtype) != arr.dtype:
        if copy is False:
            raise ValueError("fluxion: converting the dtype needs a copy")
        arr = arr.astype(dtype)
    return arr


# ---- CUDA Array Interface -------------------------------------------------------------------------------------
def cuda_array_interface(t: Tensor) -> dict:
    if t.device.type != "cuda":
        raise AttributeError("__cuda_array_interface__ is only defined for CUDA tensors")
    ptr = t.data_ptr()
    s = _L.flx_ctx_stream(_L.flx_ctx_of(t._ptr))
    if t.dtype.host is not t.dtype:
        raise AttributeError(f"__cuda_array_interface__ has no type string for {t.dtype.name}; "
                             "use DLPack")
    return {
        "shape": t.shape,
        "typestr": t.dtype.numpy_str,
        "data": (ptr, False),
        "version": 3,
        "strides": None,
        # The consumer must order its work after this stream (v3 semantics); None when unknown.
        "stream": int(s) if s else None,
    }
