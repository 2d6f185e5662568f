"""Autodiff over Python callables: no-grad mode, grad_of / grad / value_and_grad / vjp / jvp /
hvp (JAX and torch.autograd style; transforms nest), and custom differentiable functions whose
forward, VJP and JVP are Python callables run by the C runtime (flx_custom_fn)."""

from __future__ import annotations

import ctypes
from ctypes import c_void_p
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from . import _lib
from ._core import (Tensor, _as_result, _borrow, _call_cb, _callback, _L, _p, _ptrs, _wrap,
                    zeros_like)


# ---- grad mode ---------------------------------------------------------------------------------------
class no_grad:
    """Context manager (and decorator): ops inside record no gradient history."""

    def __enter__(self) -> "no_grad":
        _L.flx_no_grad_begin()
        return self

    def __exit__(self, *exc: Any) -> None:
        _L.flx_no_grad_end()

    def __call__(self, fn: Callable) -> Callable:
        import functools

        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            with no_grad():
                return fn(*a, **k)

        return wrapper


def is_grad_enabled() -> bool:
    return bool(_L.flx_grad_enabled())


# ---- functional autodiff --------------------------------------------------------------------------
def grad_of(outputs: Union[Tensor, Sequence[Tensor]], inputs: Union[Tensor, Sequence[Tensor]],
            grad_outputs: Union[None, Tensor, Sequence[Optional[Tensor]]] = None,
            create_graph: bool = False) -> Tuple[Tensor, ...]:
    """Vector-Jacobian products (like torch.autograd.grad): d<grad_outputs, outputs>/d inputs.

    inputs must require grad; grad_outputs may be None for one-element outputs. Returns one
    tensor per input (zeros where an output does not depend on it).
    """
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    o, no = _ptrs(outs)
    i, ni = _ptrs(ins)
    c = None
    if grad_outputs is not None:
        gos = [grad_outputs] if isinstance(grad_outputs, Tensor) else list(grad_outputs)
        if len(gos) != no:
            raise ValueError(f"fluxion.grad_of: {len(gos)} grad_outputs for {no} outputs")
        c = (c_void_p * no)(*[(_p(g) if g is not None else None) for g in gos])
    res = (c_void_p * ni)()
    _call_cb(_L.flx_grad_of, no, o, c, ni, i, bool(create_graph), res)
    return tuple(_wrap(res[k]) for k in range(ni))


def _leaf(x: Any) -> Tuple[Tensor, bool]:
    """A tensor to differentiate with respect to: x itself when it already requires grad (so
    nested transforms stay connected), else a fresh leaf holding x's value."""
    if not isinstance(x, Tensor):
        raise TypeError(f"fluxion: expected Tensor arguments, got {type(x).__name__}")
    if x.requires_grad:
        return x, True
    t = _wrap(_L.flx_detach(x._ptr))
    t.requires_grad = True
    return t, False


def _leaves(xs: Sequence[Any]) -> Tuple[List[Tensor], bool]:
    """_leaf of each x, and whether any x already required grad (a transform nested in another)."""
    pairs = [_leaf(x) for x in xs]
    return [p[0] for p in pairs], any(p[1] for p in pairs)


def _flx_jvp(leaves: Sequence[Tensor], tangents: Sequence[Optional[Tensor]],
             outs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
    """flx_jvp: the tangent of each of outs along tangents (None: zero) at leaves."""
    i, ni = _ptrs(leaves)
    t = (c_void_p * ni)(*[(_p(v) if v is not None else None) for v in tangents])
    o, no = _ptrs(outs)
    res = (c_void_p * no)()
    _call_cb(_L.flx_jvp, ni, i, t, no, o, res)
    return tuple(_wrap(res[k]) for k in range(no))


def _argnums(argnums: Union[int, Sequence[int]], n: int) -> Tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not -n <= a < n:
            raise ValueError(f"fluxion.grad: argnum {a} is out of range for {n} arguments")
    return tuple(a % n for a in nums)


def value_and_grad(f: Callable[..., Tensor], argnums: Union[int, Sequence[int]] = 0,
                   create_graph: Optional[bool] = None) -> Callable[..., Tuple[Tensor, Any]]:
    """Like :func:`grad`, returning (f(*args), gradient)."""

    def wrapped(*args: Any) -> Tuple[Tensor, Any]:
        nums = _argnums(argnums, len(args))
        args = list(args)
        leaves = []
        nested = False
        for a in nums:
            leaf, was = _leaf(args[a])
            nested = nested or was
            args[a] = leaf
            leaves.append(leaf)
        out = f(*args)
        if not isinstance(out, Tensor):
            raise TypeError(f"fluxion.grad: f must return a Tensor, got {type(out).__name__}")
        if out.numel() != 1:
            raise ValueError(f"fluxion.grad: f must return one element, got shape {out.shape}")
        cg = (nested and is_grad_enabled()) if create_graph is None else create_graph
        if not out.requires_grad:
            gs = tuple(zeros_like(l) for l in leaves)
        else:
            gs = grad_of(out, leaves, create_graph=cg)
        g = gs[0] if isinstance(argnums, int) else gs
        return (out if nested else out.detach()), g

    return wrapped


def grad(f: Callable[..., Tensor], argnums: Union[int, Sequence[int]] = 0,
         create_graph: Optional[bool] = None) -> Callable[..., Any]:
    """The gradient of a scalar function (JAX style): ``grad(f)(x)`` is df/dx.

    argnums picks the differentiated arguments (an int gives one gradient, a sequence a tuple).
    Transforms nest (``grad(grad(f))``): an argument that already requires grad is used
    directly and the result is then itself differentiable (create_graph defaults to that).
    """
    vg = value_and_grad(f, argnums, create_graph)

    def wrapped(*args: Any) -> Any:
        return vg(*args)[1]

    wrapped.__doc__ = f"Gradient of {getattr(f, '__name__', 'f')}."
    return wrapped


def vjp(f: Callable[..., Any], *primals: Tensor) -> Tuple[Any, Callable[..., Tuple[Tensor, ...]]]:
    """(f(*primals), vjp_fn) where vjp_fn(cotangent) gives one cotangent per primal."""
    leaves = []
    nested = False
    for x in primals:
        leaf, was = _leaf(x)
        nested = nested or was
        leaves.append(leaf)
    out = f(*leaves)
    outs = [out] if isinstance(out, Tensor) else list(out)

    def vjp_fn(*cts: Any) -> Tuple[Tensor, ...]:
        if len(cts) == 1 and isinstance(cts[0], (list, tuple)):
            cts = tuple(cts[0])
        if len(cts) != len(outs):
            raise ValueError(f"fluxion.vjp: {len(cts)} cotangents for {len(outs)} outputs")
        pairs = [(o, c) for o, c in zip(outs, cts) if o.requires_grad]
        if not pairs:
            return tuple(zeros_like(l) for l in leaves)
        return grad_of([o for o, _ in pairs], leaves, [c for _, c in pairs],
                       create_graph=nested and is_grad_enabled())

    return out, vjp_fn


def jvp(f: Callable[..., Any], primals: Sequence[Tensor],
        tangents: Sequence[Optional[Tensor]]) -> Tuple[Any, Any]:
    """Forward mode (JAX style): (f(*primals), directional derivative along tangents)."""
    primals = tuple(primals)
    tangents = tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"fluxion.jvp: {len(tangents)} tangents for {len(primals)} primals")
    # Leaves requiring grad, so a reverse-mode transform inside f stays connected to them
    # (forward-over-reverse).
    leaves, nested = _leaves(primals)
    out = f(*leaves)
    outs = [out] if isinstance(out, Tensor) else list(out)
    tout = _flx_jvp(leaves, tangents, outs)
    if not nested:
        outs = [o_.detach() for o_ in outs]
        tout = tuple(v.detach() for v in tout)
    if isinstance(out, Tensor):
        return outs[0], tout[0]
    return tuple(outs), tout


def hvp(f: Callable[..., Tensor], primals: Union[Tensor, Sequence[Tensor]],
        tangents: Union[Tensor, Sequence[Tensor]]) -> Tuple[Tensor, Any]:
    """Hessian-vector product of a scalar function, forward over reverse:
    returns (f(*primals), H v) with H v = d/de grad f(x + e v) at e = 0."""
    single = isinstance(primals, Tensor)
    ps = (primals,) if single else tuple(primals)
    vs = (tangents,) if isinstance(tangents, Tensor) else tuple(tangents)
    if len(ps) != len(vs):
        raise ValueError(f"fluxion.hvp: {len(vs)} tangents for {len(ps)} primals")
    leaves, nested = _leaves(ps)
    out = f(*leaves)
    if not isinstance(out, Tensor) or out.numel() != 1:
        raise ValueError("fluxion.hvp: f must return a one-element Tensor")
    if not out.requires_grad:
        hv = tuple(zeros_like(l) for l in leaves)
    else:
        gs = grad_of(out, leaves, create_graph=True)
        hv = _flx_jvp(leaves, vs, gs)
    if not nested:
        out = out.detach()
        hv = tuple(v.detach() for v in hv)
    return out, (hv[0] if single else hv)


# ---- custom differentiable functions ------------------------------------------------------------
_custom_registry: dict = {}
_custom_next = [1]


@_callback()
def _fwd_tramp(n: int, inputs: Any, out: Any, user: int) -> int:
    fn = _custom_registry[user][0]
    xs = [_borrow(inputs[k]) for k in range(n)]
    out[0] = _as_result(fn(*xs), "forward")
    return 0


@_callback()
def _vjp_tramp(n: int, inputs: Any, output: int, g: int, grads_out: Any, user: int) -> int:
    fn = _custom_registry[user][1]
    xs = tuple(_borrow(inputs[k]) for k in range(n))
    r = fn(xs, _borrow(output), _borrow(g))
    rs = (r,) if (isinstance(r, Tensor) or r is None) and n == 1 else tuple(r)
    if len(rs) != n:
        raise ValueError(f"fluxion.custom_fn: vjp returned {len(rs)} gradients for {n} inputs")
    for k, gk in enumerate(rs):
        grads_out[k] = None if gk is None else _as_result(gk, "vjp")
    return 0


@_callback()
def _jvp_tramp(n: int, inputs: Any, tangents: Any, output: int, tout: Any, user: int) -> int:
    fn = _custom_registry[user][2]
    xs = tuple(_borrow(inputs[k]) for k in range(n))
    ts = tuple(_borrow(tangents[k]) for k in range(n))
    tout[0] = _as_result(fn(xs, ts, _borrow(output)), "jvp")
    return 0


def _destroy_tramp(user: int) -> None:
    try:
        _custom_registry.pop(user, None)
    except Exception:
        pass


# One set of C callbacks for the whole process (module globals: never collected while the
# library can call them); the per-function Python callables live in _custom_registry until the
# runtime calls destroy for the node.
_FWD_CB = _lib.CUSTOM_FWD(_fwd_tramp)
_VJP_CB = _lib.CUSTOM_VJP(_vjp_tramp)
_JVP_CB = _lib.CUSTOM_JVP(_jvp_tramp)
_DESTROY_CB = _lib.DESTROY(_destroy_tramp)
_NULL_VJP = ctypes.cast(None, _lib.CUSTOM_VJP)
_NULL_JVP = ctypes.cast(None, _lib.CUSTOM_JVP)


class custom_fn:
    """A differentiable function with user-defined derivatives.

    ``forward(*inputs) -> Tensor`` computes the value with fluxion ops (it runs once per call,
    on detached inputs, in no-grad mode). ``vjp(inputs, output, g)`` returns the cotangent of
    each input (a tuple, or a Tensor for one input; None for no gradient). ``jvp(inputs,
    tangents, output)`` returns the output's tangent. Build both from fluxion ops so they are
    differentiable in turn (higher-order derivatives). Use as a decorator::

        @fluxion.custom_fn
        def cube(x):
            return x * x * x

        @cube.defvjp
        def _(inputs, out, g):
            (x,) = inputs
            return g * 3 * x * x
    """

    def __init__(self, forward: Callable[..., Tensor], vjp: Optional[Callable] = None,
                 jvp: Optional[Callable] = None) -> None:
        self.forward = forward
        self.vjp = vjp
        self.jvp = jvp
        self.__doc__ = getattr(forward, "__doc__", None)
        self.__name__ = getattr(forward, "__name__", "custom_fn")

    def defvjp(self, fn: Callable) -> Callable:
        self.vjp = fn
        return fn

    def defjvp(self, fn: Callable) -> Callable:
        self.jvp = fn
        return fn

    def __call__(self, *inputs: Tensor) -> Tensor:
        if not inputs:
            raise ValueError("fluxion.custom_fn: needs at least one input tensor")
        arr, n = _ptrs(inputs)
        key = _custom_next[0]
        _custom_next[0] += 1
        _custom_registry[key] = (self.forward, self.vjp, self.jvp)
        out = (c_void_p * 1)()
        _call_cb(_L.flx_custom_fn, n, arr, _FWD_CB,
                 _VJP_CB if self.vjp is not None else _NULL_VJP,
                 _JVP_CB if self.jvp is not None else _NULL_JVP,
                 key, _DESTROY_CB, out)
        return _wrap(out[0])


def custom_vjp_count() -> int:
    """Number of custom-function nodes alive (their Python callables are held until then)."""
    return len(_custom_registry)
