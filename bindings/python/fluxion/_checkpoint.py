"""fluxion.save / fluxion.load: the C library's safetensors checkpoints (crash-safe writes,
checked reads), readable by the ``safetensors`` package and PyTorch."""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from ctypes import c_char_p
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from . import _core
from ._core import Tensor, _check, _L, _ptrs, _wrap

__all__ = ["save", "load"]

PathLike = Union[str, "os.PathLike[str]"]


def _strs(vals):
    return (c_char_p * max(len(vals), 1))(*[v.encode("utf-8") for v in vals])


def save(path: PathLike, tensors: Mapping[str, Any], metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes named tensors (a dict; arrays are converted) and string metadata to path.

    Model and optimiser state round-trip by prefixing their state dicts::

        fluxion.save("ck.safetensors", {**{"model." + k: v for k, v in model.state_dict().items()},
                                        **{"optim." + k: v for k, v in opt.state_dict().items()}})
    """
    if not isinstance(tensors, Mapping):
        raise TypeError("fluxion.save: tensors must be a mapping of name -> Tensor")
    names = [str(k) for k in tensors]
    ts = [v if isinstance(v, Tensor) else _core.tensor(v) for v in tensors.values()]
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"fluxion.save: metadata must map str to str, got {k!r}: {type(v).__name__}")
    arr, n = _ptrs(ts)
    keys = list(meta)
    _check(_L.flx_save_safetensors(os.fsencode(path), n, _strs(names), arr, len(keys),
                                   _strs(keys), _strs([meta[k] for k in keys])))


def _metadata_keys(path: PathLike) -> list:
    """Keys of the file's __metadata__ (the C API looks values up by key; the keys come from
    the JSON header, which the C loader has already validated)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return list(header.get("__metadata__", {}) or {})


def load(path: PathLike, device: Any = None, *, metadata: bool = False
         ) -> Union["OrderedDict[str, Tensor]", Tuple["OrderedDict[str, Tensor]", Dict[str, str]]]:
    """Reads every tensor of a safetensors file onto device (default CPU), in the file's
    order; with metadata=True returns (tensors, metadata)."""
    ck = _L.flx_load_safetensors(_core._ctx(device), os.fsencode(path))
    if not ck:
        _core._raise_last()
    try:
        out: "OrderedDict[str, Tensor]" = OrderedDict()
        for i in range(_L.flx_checkpoint_count(ck)):
            name = _L.flx_checkpoint_name(ck, i).decode("utf-8")
            out[name] = _wrap(_L.flx_checkpoint_tensor(ck, i))
        if not metadata:
            return out
        meta = {}
        for k in _metadata_keys(path):
            v = _L.flx_checkpoint_metadata(ck, k.encode("utf-8"))
            if v is not None:
                meta[k] = v.decode("utf-8")
        return out, meta
    finally:
        _L.flx_checkpoint_destroy(ck)


def load_tensor(path: PathLike, name: str, device: Any = None) -> Tensor:
    """One tensor of a checkpoint by name (KeyError-like ValueError when absent)."""
    ck = _L.flx_load_safetensors(_core._ctx(device), os.fsencode(path))
    if not ck:
        _core._raise_last()
    try:
        return _wrap(_L.flx_checkpoint_find(ck, name.encode("utf-8")))
    finally:
        _L.flx_checkpoint_destroy(ck)
