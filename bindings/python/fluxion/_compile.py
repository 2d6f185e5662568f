"""fluxion.compile: trace a step function once into a C plan (flx_plan_compile) and replay it.

The first call with a given signature (shapes, dtypes and devices of the tensor arguments, and
the values of the other arguments) runs ``fn`` on plan inputs holding copies of the arguments'
values. What fn does is recorded: its ops form the plan's graph, ``loss.backward()`` runs as
usual (it picks the parameters the plan updates, as flx_plan_compile asks), ``optimizer.step()``
is not run but added to the plan (fused into the replay: on CUDA forward, backward and update are
one graph launch), and running statistics (batch norm) become plan assignments. Later calls bind
the new arguments by copy (``flx_plan_run``) and replay.

A call with another signature compiles again (``recompile=True``, the default: the previous plan
is dropped, since a parameter the plan updates can belong to one plan at a time) or raises
``ValueError`` (``recompile=False``).
"""

from __future__ import annotations

import functools
import threading
from ctypes import byref, c_void_p
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _capi, _core, _ops
from ._core import Tensor, _check, _L, _ptrs, _wrap

__all__ = ["compile", "Compiled"]


class _Trace:
    def __init__(self) -> None:
        self.optims: List[Any] = []
        self.losses: List[Tensor] = []
        self.assigns: List[Tuple[Tensor, Tensor]] = []


class _TLS(threading.local):
    trace: Optional[_Trace] = None


_tls = _TLS()


def _record_step(opt: Any) -> bool:
    """Called by Optimizer.step: True when a trace takes the step instead."""
    tr = _tls.trace
    if tr is None:
        return False
    if any(o is opt for o in tr.optims):
        raise ValueError("fluxion.compile: an optimiser is stepped twice in one step function")
    tr.optims.append(opt)
    return True


def _record_backward(loss: Tensor) -> None:
    tr = _tls.trace
    if tr is not None:
        tr.losses.append(loss)


def assign_after_step(dst: Tensor, src: Tensor) -> None:
    """dst := src (state such as running statistics): now when eager, at the end of every run
    inside a compiled step."""
    tr = _tls.trace
    if tr is None:
        dst.assign(src)
    else:
        tr.assigns.append((dst, src))


def _is_array(a: Any) -> bool:
    return hasattr(a, "__array_interface__") and hasattr(a, "dtype")


def _signature(args: Tuple[Any, ...], dev: Any) -> Tuple[Any, ...]:
    """Tensors and arrays alike: (shape, dtype, device), arrays going to dev."""
    sig = []
    for a in args:
        if isinstance(a, Tensor):
            sig.append(("T", a.shape, a.dtype.code, str(a.device)))
        elif _is_array(a):
            sig.append(("T", tuple(a.shape), _core.as_dtype(a.dtype).code, str(dev)))
        else:
            try:
                hash(a)
            except TypeError:
                raise TypeError(f"fluxion.compile: argument of type {type(a).__name__} is neither "
                                "a tensor, an array nor hashable") from None
            sig.append(("V", a))
    return tuple(sig)


def _flatten_out(out: Any) -> Tuple[List[Tensor], Callable[[List[Tensor]], Any]]:
    if out is None:
        return [], lambda ts: None
    if isinstance(out, Tensor):
        return [out], lambda ts: ts[0]
    if isinstance(out, (tuple, list)):
        if not all(isinstance(o, Tensor) for o in out):
            raise TypeError("fluxion.compile: the step must return a Tensor, a tuple/list of "
                            "Tensors, or None")
        kind = type(out)
        return list(out), lambda ts: kind(ts)
    raise TypeError(f"fluxion.compile: the step returned {type(out).__name__} "
                    "(return a Tensor, a tuple/list of Tensors, or None)")


class _Plan:
    """One compiled plan: its C handle, the argument slots that are plan inputs, the outputs."""

    def __init__(self, fn: Callable[..., Any], args: Tuple[Any, ...], capture: int,
                 dev: Any) -> None:
        self.ptr = None
        self.keep: List[Any] = []
        import numpy as np

        targs: List[Any] = []
        self.slots: List[int] = []  # argument index of plan input k
        inputs: List[Tensor] = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                # a source tensor holding a's value (a copy made from data, as plans need)
                t = _core.tensor(a.numpy(), dtype=a.dtype, device=a.device)
            elif _is_array(a):
                t = _core.tensor(np.ascontiguousarray(a), device=dev)
            else:
                targs.append(a)
                continue
            self.slots.append(i)
            inputs.append(t)
            targs.append(t)
        tr = _Trace()
        if _tls.trace is not None:
            raise RuntimeError("fluxion.compile: compiled steps do not nest")
        _tls.trace = tr
        try:
            out = fn(*targs)
        finally:
            _tls.trace = None
        outs, self.rebuild = _flatten_out(out)
        if tr.optims:
            if not tr.losses:
                raise ValueError("fluxion.compile: the step calls optimizer.step() without "
                                 "loss.backward()")
            if len(tr.losses) > 1:
                raise ValueError("fluxion.compile: one loss.backward() per compiled step")
            loss = tr.losses[0]
            plan_outs = [loss] + outs  # output 0 is the loss the optimisers minimise
            self.out_index = list(range(1, len(outs) + 1))
        else:
            plan_outs = outs
            self.out_index = list(range(len(outs)))
        opts = _capi.flx_plan_options()
        opts.capture = capture
        o_arr, n_o = _ptrs(plan_outs)
        i_arr, n_i = _ptrs(inputs)
        if tr.assigns:
            d_arr, n_a = _ptrs([d for d, _ in tr.assigns])
            s_arr, _ = _ptrs([s for _, s in tr.assigns])
            opts.n_assign, opts.assign_dst, opts.assign_src = n_a, d_arr, s_arr
            self.keep += [d_arr, s_arr]
        if tr.optims:
            op_arr = (c_void_p * len(tr.optims))(*[o._opt for o in tr.optims])
            opts.n_optim, opts.optims = len(tr.optims), op_arr
            self.keep.append(op_arr)
        self.keep += [tr.optims, inputs, plan_outs]
        p = _L.flx_plan_compile(n_o, o_arr, n_i, i_arr, byref(opts))
        if not p:
            _core._raise_last()
        self.ptr = p
        self.n_in = n_i
        self.n_out = n_o
        self.dtypes = [t.dtype for t in inputs]

    def run(self, args: Tuple[Any, ...]) -> Any:
        import numpy as np

        arr = (c_void_p * max(self.n_in, 1))()
        staged = []  # tensors made from host data, alive until the run has read them
        for k, i in enumerate(self.slots):
            a = args[i]
            if isinstance(a, Tensor):
                arr[k] = a._ptr
            elif self.dtypes[k].host is not self.dtypes[k]:  # bfloat16: converted by the library
                staged.append(_ops.tensor(a, dtype=self.dtypes[k]))
                arr[k] = staged[-1]._ptr
            else:
                a = np.ascontiguousarray(a, dtype=np.dtype(self.dtypes[k].numpy_str))
                _check(_L.flx_plan_set_input_host(self.ptr, k, a.ctypes.data, a.nbytes))
        _check(_L.flx_plan_run(self.ptr, self.n_in, arr))
        res = []
        for k in self.out_index:
            # a detached alias, realised now: it keeps this run's value when the next run
            # refreshes the plan's output
            t = _wrap(_L.flx_detach(_wrap(_L.flx_plan_output(self.ptr, k))._ptr))
            res.append(t)
        if res:
            _core.eval(res)
        return self.rebuild(res)

    def info(self) -> Dict[str, Any]:
        inf = _capi.flx_plan_info()
        _check(_L.flx_plan_get_info(self.ptr, byref(inf)))
        out = {k: getattr(inf, k) for k, _ in inf._fields_}
        out["capture_reason"] = out["capture_reason"].decode("utf-8", "replace")
        return out

    def __del__(self, _destroy=_L.flx_plan_destroy) -> None:
        if getattr(self, "ptr", None) and _core._alive:
            _destroy(self.ptr)
            self.ptr = None


_CAPTURE = {"default": _capi.FLX_PLAN_CAPTURE_DEFAULT, "off": _capi.FLX_PLAN_CAPTURE_OFF,
            "on": _capi.FLX_PLAN_CAPTURE_ON}


class Compiled:
    """A compiled step (see :func:`compile`): call it like fn."""

    def __init__(self, fn: Callable[..., Any], recompile: bool = True,
                 capture: str = "default", device: Any = None) -> None:
        if capture not in _CAPTURE:
            raise ValueError(f"fluxion.compile: capture must be one of {sorted(_CAPTURE)}")
        self.fn = fn
        self.recompile = recompile
        self.capture = _CAPTURE[capture]
        self._plan: Optional[_Plan] = None
        self._sig: Any = None
        self.compiles = 0
        self.device = _core.device(device) if device is not None else None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> Any:
        dev = self.device
        if dev is None:  # arrays go where the tensor arguments are (the CPU without any)
            dev = next((a.device for a in args if isinstance(a, Tensor)), _core.device("cpu"))
        sig = _signature(args, dev)
        if self._plan is None or sig != self._sig:
            if self._plan is not None and not self.recompile:
                raise ValueError(f"fluxion.compile: {getattr(self.fn, '__name__', 'step')} was "
                                 f"compiled for {self._sig}, called with {sig} "
                                 "(recompile=True compiles again)")
            self._plan = None  # drop the old plan first: its parameters move to the new one
            self._plan = _Plan(self.fn, args, self.capture, dev)
            self._sig = sig
            self.compiles += 1
        try:
            return self._plan.run(args)
        except _core.FluxionError as e:
            # A parameter got a new buffer since the compile (load_state_dict, assign): the
            # plan's captured addresses are stale. Compile again from the current graph.
            if getattr(e, "status", 0) != _capi.FLX_ERR_STATE or not self.recompile:
                raise
            self._plan = None
            self._plan = _Plan(self.fn, args, self.capture, dev)
            self.compiles += 1
            return self._plan.run(args)

    def info(self) -> Dict[str, Any]:
        """flx_plan_get_info of the current plan (nodes, arena bytes, runs, captured...)."""
        if self._plan is None:
            raise ValueError("fluxion.compile: not compiled yet (call it first)")
        return self._plan.info()


def compile(fn: Optional[Callable[..., Any]] = None, *, recompile: bool = True,
            capture: str = "default", device: Any = None) -> Any:  # noqa: A001
    """Compiles a step function into a replayable plan (``jax.jit`` / ``torch.compile`` style)::

        @fluxion.compile
        def predict(x):
            return fluxion.argmax(model(x), -1)

        for x in batches:               # Tensors or numpy arrays, bound by copy
            labels = predict(x)

    A whole training step compiles the same way: a function that calls ``opt.zero_grad()``,
    computes the loss, calls ``loss.backward()`` and ``opt.step()`` and returns the loss becomes
    one plan replay per call (``make_train_step`` in examples/fashion_mnist.py).

    Returns a :class:`Compiled` callable; usable as ``@compile`` or ``@compile(recompile=False)``.
    numpy arguments become plan inputs on ``device`` (default: the device of the tensor
    arguments, else the CPU) and are copied in from host memory at each call. ``capture``:
    'default', 'on' or 'off' (CUDA graph capture, flx_plan_capture).
    Outputs are fresh tensors per call (no gradient history). Python control flow in fn is
    frozen at the trace: branch on arguments that are part of the signature (non-tensor values)
    or compile one function per branch.
    """
    if fn is None:
        return lambda f: Compiled(f, recompile, capture, device)
    return Compiled(fn, recompile, capture, device)
