"""fluxion.optim: the C API's seven fused optimisers (SGD, SGD with momentum, Nesterov, Adagrad,
RMSprop, Adam, AdamW) with PyTorch's arguments, and learning-rate schedules
(:mod:`fluxion.optim.lr_scheduler`).

The state and the hyperparameters live in device memory: ``step()`` is one fused kernel launch
per group of parameters and setting ``lr`` queues a tiny device write, so a compiled step
(:func:`fluxion.compile`) keeps working while a schedule changes the rate.

Mixed precision: float16/bfloat16 parameters are updated through float32 master copies kept
by the optimiser (the last state slot). Every optimiser also takes dynamic loss scaling
(PyTorch's GradScaler, fused into the step) as keyword arguments: ``loss_scaling=True`` and
optionally ``init_scale`` (65536), ``growth_factor`` (2), ``backoff_factor`` (0.5) and
``growth_interval`` (2000); then ``opt.scale_loss(loss).backward()`` and ``opt.step()``, which
skips the update when a gradient is inf/NaN and adjusts the scale, all on the device.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from ctypes import byref, c_double, c_int64
from typing import Any, Dict, Iterable, List, Tuple

from .. import _capi, _core
from .._core import Tensor, _check, _L, _ptrs, _wrap
from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW",
           "lr_scheduler"]

# hyperparameter name -> flx_optim_hparam
_HP = OrderedDict([
    ("lr", _capi.FLX_HP_LR), ("momentum", _capi.FLX_HP_MOMENTUM),
    ("dampening", _capi.FLX_HP_DAMPENING), ("weight_decay", _capi.FLX_HP_WEIGHT_DECAY),
    ("beta1", _capi.FLX_HP_BETA1), ("beta2", _capi.FLX_HP_BETA2), ("eps", _capi.FLX_HP_EPS),
    ("alpha", _capi.FLX_HP_ALPHA), ("lr_decay", _capi.FLX_HP_LR_DECAY), ("step", _capi.FLX_HP_STEP),
])


def _config(kind: int, hp: Dict[str, Any], who: str) -> Any:
    """flx_optim_defaults(kind) with the given hyperparameters set (None keeps the default)."""
    cfg = _L.flx_optim_defaults(kind)
    for k, v in hp.items():
        if v is None:
            continue
        if not hasattr(cfg, k):
            raise TypeError(f"{who}: unknown argument {k!r}")
        setattr(cfg, k, v)
    return cfg


class Optimizer:
    """An flx_optim over a list of parameters (leaves requiring grad, one dtype and device)."""

    kind: int = _capi.FLX_OPTIM_SGD

    def __init__(self, params: Iterable[Tensor], **hp: Any) -> None:
        self._opt = None
        self.params: List[Tensor] = list(params)
        if not self.params:
            raise ValueError(f"fluxion.optim.{type(self).__name__}: got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Tensor):
                raise TypeError(f"fluxion.optim: parameters must be Tensors, got {type(p).__name__}")
        cfg = _config(self.kind, hp, f"fluxion.optim.{type(self).__name__}")
        arr, n = _ptrs(self.params)
        ctx = _L.flx_ctx_of(self.params[0]._ptr)
        opt = _L.flx_optim_create(ctx, self.kind, n, arr, byref(cfg))
        if not opt:
            _core._raise_last()
        self._opt = opt
        self.defaults = {k: getattr(cfg, k) for k, _ in cfg._fields_}
        self._scaling = bool(cfg.loss_scaling)

    def __del__(self, _destroy=_L.flx_optim_destroy) -> None:
        if getattr(self, "_opt", None) and _core._alive:
            _destroy(self._opt)
            self._opt = None

    def step(self) -> None:
        """One update of every parameter from its .grad. Inside :func:`fluxion.compile` the
        update is recorded into the compiled step instead."""
        from .._compile import _record_step

        if _record_step(self):
            return
        _check(_L.flx_optim_step(self._opt))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forgets every parameter's .grad."""
        _check(_L.flx_optim_zero_grad(self._opt))

    # -- hyperparameters --
    def get_hparam(self, name: str) -> float:
        v = c_double()
        _check(_L.flx_optim_get_hparam(self._opt, _HP[name], byref(v)))
        return v.value

    def set_hparam(self, name: str, value: float) -> None:
        if name == "lr":
            _check(_L.flx_optim_set_lr(self._opt, float(value)))
        else:
            _check(_L.flx_optim_set_hparam(self._opt, _HP[name], float(value)))

    @property
    def lr(self) -> float:
        """The learning rate (read from device memory; setting it needs no recompile)."""
        return self.get_hparam("lr")

    @lr.setter
    def lr(self, value: float) -> None:
        self.set_hparam("lr", value)

    @property
    def step_count(self) -> int:
        return int(self.get_hparam("step"))

    # -- dynamic loss scaling --
    def scale_loss(self, loss: Tensor) -> Tensor:
        """loss times the current loss scale (float32 at least; the loss itself without loss
        scaling): call backward() on this, then step(), which unscales the gradients."""
        return _wrap(_L.flx_optim_scale_loss(self._opt, loss._ptr))

    @property
    def loss_scale(self) -> float:
        """The current loss scale (1.0 without loss scaling); waits for the device."""
        v = c_double()
        _check(_L.flx_optim_loss_scale(self._opt, byref(v)))
        return v.value

    @property
    def skipped_steps(self) -> int:
        """Steps skipped so far for an inf/NaN gradient; waits for the device."""
        v = c_int64()
        _check(_L.flx_optim_skipped_steps(self._opt, byref(v)))
        return v.value

    @property
    def growth_tracker(self) -> int:
        """Clean steps since the loss scale last changed (0 without loss scaling); waits for
        the device."""
        return self._scaler()[1]

    def _scaler(self) -> Tuple[float, int, int]:
        scale, tracker, skipped = c_double(), c_int64(), c_int64()
        _check(_L.flx_optim_get_scaler(self._opt, byref(scale), byref(tracker), byref(skipped)))
        return scale.value, tracker.value, skipped.value

    # -- checkpoints --
    def state_dict(self) -> "OrderedDict[str, Tensor]":
        """Every state slot ('state.<param>.<slot>', float32 for half parameters, whose last
        slot is the float32 master copy), hyperparameter (0-d float64 tensors, the step count
        included) and, with loss scaling, 'loss_scaler' (float64 [scale, growth tracker,
        skipped steps], as in :meth:`save` files): a flat dict of tensors that
        :func:`fluxion.save` writes."""
        sd: "OrderedDict[str, Tensor]" = OrderedDict()
        dev = self.params[0].device
        for name in _HP:
            sd[f"hparam.{name}"] = _core.scalar(self.get_hparam(name), _core.float64, dev)
        slots = _L.flx_optim_state_count(self._opt)
        for i in range(len(self.params)):
            for s in range(slots):
                sd[f"state.{i}.{s}"] = _wrap(_L.flx_optim_get_state(self._opt, i, s))
        if self._scaling:
            sd["loss_scaler"] = _core.tensor([float(v) for v in self._scaler()],
                                             dtype=_core.float64, device=dev)
        return sd

    def save(self, path: Any) -> None:
        """The whole optimiser state (slots, hyperparameters, step count) in one safetensors
        file (flx_optim_save; the parameters are not in it)."""
        import os

        _check(_L.flx_optim_save(self._opt, os.fsencode(path)))

    def load(self, path: Any) -> None:
        """Restores a file written by :meth:`save` into an optimiser of the same kind over
        parameters of the same shapes (checked before anything changes)."""
        import os

        _check(_L.flx_optim_load(self._opt, os.fsencode(path)))

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` gave (tensors or arrays). The loss scaler's entry
        must be there exactly when this optimiser scales the loss (checked first)."""
        scaler = None
        if self._scaling != ("loss_scaler" in sd):
            have = "with" if "loss_scaler" in sd else "without"
            mine = "with" if self._scaling else "without"
            raise ValueError(f"fluxion.optim.load_state_dict: the state dict was saved {have} "
                             f"loss scaling; this optimiser was created {mine} it")
        if self._scaling:
            v = sd["loss_scaler"]
            vals = v.tolist() if isinstance(v, Tensor) else list(v)
            if len(vals) != 3:
                raise ValueError("fluxion.optim.load_state_dict: loss_scaler must hold 3 values "
                                 f"(scale, growth tracker, skipped steps), got {len(vals)}")
            counts = [float(x) for x in vals[1:]]
            if not all(math.isfinite(c) and c >= 0 and c == int(c) for c in counts):
                raise ValueError("fluxion.optim.load_state_dict: loss_scaler counts must be "
                                 f"whole numbers >= 0, got {counts}")
            scaler = (float(vals[0]), int(counts[0]), int(counts[1]))
        for name in _HP:
            k = f"hparam.{name}"
            if k in sd:
                v = sd[k]
                self.set_hparam(name, float(v.item() if isinstance(v, Tensor) else v))
        slots = _L.flx_optim_state_count(self._opt)
        for i, p in enumerate(self.params):
            for s in range(slots):
                k = f"state.{i}.{s}"
                if k not in sd:
                    raise KeyError(f"fluxion.optim.load_state_dict: missing {k}")
                v = sd[k]
                if not isinstance(v, Tensor):
                    half = p.dtype.name in ("float16", "bfloat16")
                    v = _core.tensor(v, dtype=_core.float32 if half else p.dtype, device=p.device)
                _check(_L.flx_optim_set_state(self._opt, i, s, v._ptr))
        if scaler is not None:
            _check(_L.flx_optim_set_scaler(self._opt, *scaler))


class SGD(Optimizer):
    """SGD with optional momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

    kind = _capi.FLX_OPTIM_SGD

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 **scaling: Any) -> None:
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, **scaling)


class Momentum(SGD):
    """SGD with momentum 0.9 (FLX_OPTIM_MOMENTUM)."""

    kind = _capi.FLX_OPTIM_MOMENTUM

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, momentum: float = 0.9,
                 dampening: float = 0.0, weight_decay: float = 0.0, **scaling: Any) -> None:
        super().__init__(params, lr, momentum, dampening, weight_decay, False, **scaling)


class Nesterov(SGD):
    """SGD with Nesterov momentum 0.9 (FLX_OPTIM_NESTEROV)."""

    kind = _capi.FLX_OPTIM_NESTEROV

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, momentum: float = 0.9,
                 weight_decay: float = 0.0, **scaling: Any) -> None:
        super().__init__(params, lr, momentum, 0.0, weight_decay, True, **scaling)


class Adagrad(Optimizer):
    kind = _capi.FLX_OPTIM_ADAGRAD

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, **scaling: Any) -> None:
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator=initial_accumulator_value, eps=eps, **scaling)


class RMSprop(Optimizer):
    kind = _capi.FLX_OPTIM_RMSPROP

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, **scaling: Any) -> None:
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, **scaling)


class Adam(Optimizer):
    kind = _capi.FLX_OPTIM_ADAM

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, **scaling: Any) -> None:
        super().__init__(params, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                         weight_decay=weight_decay, **scaling)


class AdamW(Adam):
    kind = _capi.FLX_OPTIM_ADAMW

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, **scaling: Any) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, **scaling)
