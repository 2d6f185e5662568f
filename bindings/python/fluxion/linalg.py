"""fluxion.linalg: numpy.linalg's names and semantics over the C API's LU family, eigh and expm.

Every function takes (..., n, n) stacks of matrices (batched like numpy), f32 or f64, and is
differentiable (reverse and forward mode, to any order where the C rules are).
"""

from __future__ import annotations

import builtins as _b
import math
from ctypes import c_void_p
from typing import NamedTuple, Sequence, Tuple, Union

from . import _core
from ._core import Tensor, _check, _i32, _L, _p, _wrap

__all__ = ["det", "slogdet", "logdet", "inv", "inv_ex", "solve", "solve_ex", "norm", "expm",
           "eigh", "eigvalsh", "matrix_norm", "vector_norm", "SlogdetResult", "EighResult"]


class SlogdetResult(NamedTuple):
    sign: Tensor
    logabsdet: Tensor


class EighResult(NamedTuple):
    eigenvalues: Tensor
    eigenvectors: Tensor


def det(a: Tensor) -> Tensor:
    """Determinant of (..., n, n); 0 for a singular matrix, whose gradient is the cofactor
    matrix."""
    return _wrap(_L.flx_det(_p(a)))


def logdet(a: Tensor) -> Tensor:
    """log det A (NaN where det < 0, -inf where det == 0); gradient A^-T."""
    return _wrap(_L.flx_logdet(_p(a)))


def slogdet(a: Tensor) -> SlogdetResult:
    """(sign, log|det|) like numpy.linalg.slogdet; sign has no gradient."""
    s, l = c_void_p(), c_void_p()
    _check(_L.flx_slogdet(_p(a), s, l))
    return SlogdetResult(_wrap(s.value), _wrap(l.value))


def inv(a: Tensor) -> Tensor:
    """A^-1. An exactly singular matrix raises at the next read (FLX_ERR_NUMERIC)."""
    return _wrap(_L.flx_inv(_p(a)))


def inv_ex(a: Tensor) -> Tuple[Tensor, Tensor]:
    """(A^-1, info) without the singularity report: info (int32, batch shape) is 0, or k > 0
    when the LU's pivot k-1 is exactly zero (torch.linalg.inv_ex)."""
    info = c_void_p()
    r = _L.flx_inv_ex(_p(a), info)
    return _wrap(r), _wrap(info.value)


def solve(a: Tensor, b: Tensor) -> Tensor:
    """X with A X = B: B (..., n) (one vector per matrix) or (..., n, k), A's batch dims."""
    return _wrap(_L.flx_solve(_p(a), _p(b)))


def solve_ex(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """(X, info) like :func:`inv_ex`."""
    info = c_void_p()
    r = _L.flx_solve_ex(_p(a), _p(b), info)
    return _wrap(r), _wrap(info.value)


def expm(a: Tensor) -> Tensor:
    """Matrix exponential of (..., n, n) (scaling and squaring, Pade; exact derivatives)."""
    return _wrap(_L.flx_expm(_p(a)))


def eigh(a: Tensor) -> EighResult:
    """(w, V) of the symmetric part (A + A^T)/2: w ascending, V orthonormal columns.

    numpy reads only the lower triangle (UPLO='L'); fluxion symmetrises instead, so the two agree
    on symmetric input, and gradients are symmetric. Eigenvector derivatives need distinct
    eigenvalues.
    """
    w, v = c_void_p(), c_void_p()
    _check(_L.flx_eigh(_p(a), w, v))
    return EighResult(_wrap(w.value), _wrap(v.value))


def eigvalsh(a: Tensor) -> Tensor:
    """Ascending eigenvalues of the symmetric part (no eigenvectors computed into the graph: the
    derivative is fine at repeated eigenvalues of a function symmetric in them)."""
    w = c_void_p()
    _check(_L.flx_eigh(_p(a), w, None))
    return _wrap(w.value)


# ---- norms ------------------------------------------------------------------------------------------
Ord = Union[None, int, float, str]


def _c_norm(x: Tensor, p: float, axes: Sequence[int], keepdims: bool) -> Tensor:
    arr, n = _i32(tuple(axes))
    return _wrap(_L.flx_norm(_p(x), float(p), n, arr, bool(keepdims)))


def vector_norm(x: Tensor, ord: Union[int, float] = 2, axis: Union[None, int, Sequence[int]] = None,
                keepdims: bool = False) -> Tensor:
    """Entrywise norm over axis (None: every axis), numpy/torch vector ``ord`` meaning:
    p >= 1 (inf: max |x|), -inf (min |x|), 0 (count of non-zeros), 0 < p < 1 and p < 0
    (sum |x|^p)^(1/p)."""
    axes: Tuple[int, ...]
    if axis is None:
        axes = tuple(range(x.ndim))
    elif isinstance(axis, int):
        axes = (axis,)
    else:
        axes = tuple(int(a) for a in axis)
    if len(axes) == 0:  # numpy: no axis reduced, the norm of one element is its magnitude
        return _core.abs(x)
    p = float(ord)
    if math.isnan(p):
        raise ValueError("fluxion.linalg.norm: ord must not be NaN")
    if p >= 1:
        return _c_norm(x, p, axes, keepdims)
    if p == -math.inf:
        return _core.min(_core.abs(x), axes, keepdims)
    if p == 0:
        return _core.sum(_core.cast(_core.ne(x, 0.0), x.dtype), axes, keepdims)
    # 0 < p < 1 or finite p < 0: not a norm, but numpy computes it
    return _core.sum(_core.abs(x) ** p, axes, keepdims) ** (1.0 / p)


def _matrix_axes(x: Tensor, axis: Sequence[int]) -> Tuple[int, int]:
    if len(axis) != 2:
        raise ValueError(f"fluxion.linalg.norm: a matrix norm needs 2 axes, got {tuple(axis)}")
    nd = x.ndim
    r, c = (int(a) + nd if int(a) < 0 else int(a) for a in axis)
    if not (0 <= r < nd and 0 <= c < nd) or r == c:
        raise ValueError(f"fluxion.linalg.norm: bad matrix axes {tuple(axis)} for rank {nd}")
    return r, c


def _to_last_two(x: Tensor, r: int, c: int) -> Tensor:
    nd = x.ndim
    perm = [a for a in range(nd) if a not in (r, c)] + [r, c]
    return x if perm == list(range(nd)) else _core.permute(x, perm)


def _restore(y: Tensor, x: Tensor, r: int, c: int, keepdims: bool) -> Tensor:
    """y has x's batch axes (x without r and c); keepdims puts size-1 axes back at r and c."""
    if not keepdims:
        return y
    for a in sorted((r, c)):
        y = _core.unsqueeze(y, a)
    return y


def _singular_values_sq(m: Tensor) -> Tensor:
    """Eigenvalues of the smaller Gram matrix of (..., p, q): the squared singular values,
    ascending, clamped at 0 (rounding can make tiny ones negative)."""
    p_, q_ = m.shape[-2], m.shape[-1]
    mt = _core.transpose(m, -2, -1)
    gram = (mt @ m) if q_ <= p_ else (m @ mt)
    return _core.clamp(eigvalsh(gram), 0.0, math.inf)


def matrix_norm(x: Tensor, ord: Ord = "fro", axis: Sequence[int] = (-2, -1),
                keepdims: bool = False) -> Tensor:
    """Matrix norm over two axes with numpy's ``ord``: 'fro', 'nuc', 1, -1, inf, -inf (max/min
    absolute column/row sum), 2 and -2 (largest/smallest singular value, from the eigenvalues of
    A^T A: their gradient needs that singular value to be simple)."""
    r, c = _matrix_axes(x, axis)
    if ord is None or ord == "fro":
        return _c_norm(x, 2.0, (r, c), keepdims)
    if ord == "nuc":
        m = _to_last_two(x, r, c)
        s = _core.sqrt(_singular_values_sq(m))
        return _restore(_core.sum(s, -1), x, r, c, keepdims)
    if isinstance(ord, str):
        raise ValueError(f"fluxion.linalg.norm: unknown matrix ord {ord!r}")
    o = float(ord)
    if o in (1.0, -1.0, math.inf, -math.inf):
        # 1: max over columns of the column sums (sum over rows); inf: max over rows.
        sum_axis, red_axis = (r, c) if abs(o) == 1.0 else (c, r)
        sums = _core.sum(_core.abs(x), sum_axis, keepdims=True)
        red = _core.max if o > 0 else _core.min
        y = red(sums, red_axis, keepdims=True)
        if not keepdims:
            y = _core.squeeze(_core.squeeze(y, _b.max(r, c)), _b.min(r, c))
        return y
    if o in (2.0, -2.0):
        m = _to_last_two(x, r, c)
        w = _singular_values_sq(m)
        n = w.shape[-1]
        k = n - 1 if o > 0 else 0
        s = _core.sqrt(_core.squeeze(_core.slice(w, -1, k, k + 1), -1))
        return _restore(s, x, r, c, keepdims)
    raise ValueError(f"fluxion.linalg.norm: invalid matrix ord {ord!r} "
                     "(use 'fro', 'nuc', 1, -1, 2, -2, inf or -inf)")


def norm(x: Tensor, ord: Ord = None, axis: Union[None, int, Sequence[int]] = None,
         keepdims: bool = False) -> Tensor:
    """numpy.linalg.norm: with axis None, a 1-d x takes a vector norm and a 2-d x a matrix norm
    (ord None: the 2-norm of the flattened x, any rank); an int axis is a vector norm, a pair of
    axes a matrix norm. On a matrix ``ord=2`` is the spectral norm (largest singular value),
    never the Frobenius norm."""
    if axis is None:
        if ord is None:
            return _c_norm(x, 2.0, tuple(range(x.ndim)), keepdims)
        if x.ndim == 1:
            return vector_norm(x, ord, 0, keepdims)
        if x.ndim == 2:
            return matrix_norm(x, ord, (0, 1), keepdims)
        raise ValueError(f"fluxion.linalg.norm: ord {ord!r} needs a 1-d or 2-d tensor or axis "
                         f"(got rank {x.ndim})")
    if isinstance(axis, int):
        return vector_norm(x, 2 if ord is None else ord, axis, keepdims)
    axis = tuple(int(a) for a in axis)
    if len(axis) == 1:
        return vector_norm(x, 2 if ord is None else ord, axis, keepdims)
    if len(axis) == 2:
        return matrix_norm(x, "fro" if ord is None else ord, axis, keepdims)
    if len(axis) == 0:
        return vector_norm(x, 2 if ord is None else ord, (), keepdims)
    raise ValueError(f"fluxion.linalg.norm: axis must be an int or 1 or 2 axes, got {axis}")
