"""Tensor indexing (Tensor.__getitem__): ints, slices, None, an ellipsis and 1-d integer tensors,
as views and gathers built from the C API's slice, squeeze, unsqueeze and index_select."""

from __future__ import annotations

import builtins as _b
from typing import Any

from ._core import Tensor, _L, _wrap, int32, int64


def _getitem(x: Tensor, key: Any) -> Tensor:
    if isinstance(key, Tensor):
        if key.dtype in (int32, int64) and key.ndim == 1:
            return _wrap(_L.flx_index_select(x._ptr, 0, key._ptr))
        raise TypeError("fluxion: tensor indices must be 1-d int32/int64 tensors")
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        if _b.sum(1 for k in key if k is Ellipsis) > 1:
            raise IndexError("fluxion: an index can only have one ellipsis")
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        fill = x.ndim - (len(key) - 1 - _b.sum(1 for k in key if k is None))
        key = key[:i] + (_b.slice(None),) * _b.max(fill, 0) + key[i + 1:]
    n_axes = _b.sum(1 for k in key if k is not None)
    if n_axes > x.ndim:
        raise IndexError(f"fluxion: too many indices ({n_axes}) for a tensor of rank {x.ndim}")
    t = x
    axis = 0
    squeeze = []
    for k in key:
        if k is None:
            t = _wrap(_L.flx_unsqueeze(t._ptr, axis))
            axis += 1
            continue
        if isinstance(k, bool) or not isinstance(k, (int, _b.slice)) and not hasattr(k, "__index__"):
            raise TypeError(
                f"fluxion: unsupported index {k!r} (ints, slices, None, ... and 1-d int tensors)")
        dim = t.shape[axis]
        if isinstance(k, _b.slice):
            start, stop, step = k.start, k.stop, k.step
            step = 1 if step is None else int(step)
            if step <= 0:
                raise ValueError("fluxion: slice step must be positive")
            start = 0 if start is None else int(start)
            stop = dim if stop is None else int(stop)
            if (start, stop, step) != (0, dim, 1):
                t = _wrap(_L.flx_slice(t._ptr, axis, start, stop, step))
        else:
            i = int(k.__index__())
            if i < -dim or i >= dim:
                raise IndexError(f"fluxion: index {i} is out of range for axis {axis} of size {dim}")
            if i < 0:
                i += dim
            t = _wrap(_L.flx_slice(t._ptr, axis, i, i + 1, 1))
            squeeze.append(axis)
        axis += 1
    for a in reversed(squeeze):
        t = _wrap(_L.flx_squeeze(t._ptr, a))
    return t
