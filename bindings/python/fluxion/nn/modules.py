"""Modules (PyTorch style) over the C API's layers: parameters(), train()/eval(), state_dict()."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .. import _core
from .._core import Tensor
from . import functional as F
from . import init

__all__ = [
    "Module", "Sequential", "ModuleList", "Identity", "Linear", "Conv2d", "MaxPool2d",
    "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "Dropout", "Embedding", "Flatten",
    "ReLU", "GELU", "Tanh", "Sigmoid", "Softplus", "LeakyReLU", "ELU", "Softmax", "LogSoftmax",
    "RNNCell", "GRUCell", "MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss", "LogCoshLoss",
    "HingeLoss", "manual_seed",
]

_seed = itertools.count(1)


def manual_seed(seed: int) -> None:
    """Restarts the counter that gives each new layer (and dropout call) its Philox seed, so a
    model built after manual_seed(s) is initialised identically every time."""
    global _seed
    _seed = itertools.count(int(seed))


def _next_seed() -> int:
    return next(_seed)


class Module:
    """Base class: assigning a Tensor that requires grad registers a parameter, a Module a
    submodule; register_buffer adds state that is saved but not trained (running statistics)."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError("fluxion.nn.Module: call super().__init__() first")
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        if isinstance(value, Module):
            self._modules[name] = value
        elif isinstance(value, Tensor) and value.requires_grad:
            self._parameters[name] = value
        elif isinstance(value, Tensor) and name in self.__dict__.get("_buffer_names", ()):
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for k in ("_parameters", "_buffers", "_modules"):
            if k in d and name in d[k]:
                return d[k][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_parameter(self, name: str, value: Optional[Tensor]) -> None:
        if value is None:
            object.__setattr__(self, name, None)
            return
        if not value.requires_grad:
            value.requires_grad = True
        setattr(self, name, value)

    def register_buffer(self, name: str, value: Tensor) -> None:
        names = self.__dict__.setdefault("_buffer_names", set())
        names.add(name)
        setattr(self, name, value)

    # -- traversal --
    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        yield prefix, self
        for n, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{n}" if prefix else n)

    def modules(self) -> Iterator["Module"]:
        return (m for _, m in self.named_modules())

    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Tensor]]:
        seen = set()
        for mp, m in self.named_modules(prefix):
            for n, p in m._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mp}.{n}" if mp else n), p

    def parameters(self) -> List[Tensor]:
        """The trainable leaves, in registration order (shared ones once)."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[Tuple[str, Tensor]]:
        for mp, m in self.named_modules():
            for n, b in m._buffers.items():
                yield (f"{mp}.{n}" if mp else n), b

    # -- modes --
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    # -- state --
    def state_dict(self) -> "OrderedDict[str, Tensor]":
        """Parameters and buffers by dotted name (the tensors themselves; save() copies)."""
        sd: "OrderedDict[str, Tensor]" = OrderedDict()
        for mp, m in self.named_modules():
            for n, t in itertools.chain(m._parameters.items(), m._buffers.items()):
                sd[f"{mp}.{n}" if mp else n] = t
        return sd

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        """Assigns every entry (a Tensor or an array) into the matching parameter or buffer."""
        own = self.state_dict()
        if strict:
            missing = [k for k in own if k not in state]
            extra = [k for k in state if k not in own]
            if missing or extra:
                raise KeyError(f"fluxion.nn.Module.load_state_dict: missing {missing}, "
                               f"unexpected {extra}")
        for k, t in own.items():
            if k not in state:
                continue
            v = state[k]
            if not isinstance(v, Tensor):
                v = _core.tensor(v, dtype=t.dtype, device=t.device)
            if tuple(v.shape) != tuple(t.shape):
                raise ValueError(f"fluxion.nn.Module.load_state_dict: {k} has shape {v.shape}, "
                                 f"the model's is {t.shape}")
            t.assign(v.to(t.device).astype(t.dtype) if v.dtype != t.dtype else v.to(t.device))

    # -- call --
    def forward(self, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.forward(*args, **kw)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for n, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({n}): {sub}")
        return ("\n".join(lines) + "\n)") if len(lines) > 1 else lines[0] + ")"


class ModuleList(Module):
    """Submodules registered under their index ("0", "1", ...)."""

    def __init__(self, mods: Sequence[Module] = ()) -> None:
        super().__init__()
        for m in mods:
            self.append(m)

    def append(self, m: Module) -> None:
        setattr(self, str(len(self._modules)), m)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Applies its modules in order."""

    def __init__(self, *mods: Module) -> None:
        super().__init__(mods)

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def _leaf(t: Tensor) -> Tensor:
    t.requires_grad = True
    return t


class Linear(Module):
    """y = x W^T + b with PyTorch's default init U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None,
                 device=None, seed: Optional[int] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        s = _next_seed() if seed is None else int(seed)
        self.weight = _leaf(init.uniform_fan_in((out_features, in_features), in_features, s,
                                                dtype, device))
        self.bias = (_leaf(init.uniform_fan_in((out_features,), in_features, s + 7919, dtype,
                                               device)) if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv2d(Module):
    """2-d convolution (groups 1), PyTorch's layout and default init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, dtype=None, device=None,
                 seed: Optional[int] = None) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        fan_in = in_channels * kh * kw
        s = _next_seed() if seed is None else int(seed)
        self.weight = _leaf(init.uniform_fan_in((out_channels, in_channels, kh, kw), fan_in, s,
                                                dtype, device))
        self.bias = (_leaf(init.uniform_fan_in((out_channels,), fan_in, s + 7919, dtype, device))
                     if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1) -> None:
        super().__init__()
        self.args = (kernel_size, stride, padding, dilation)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, *self.args)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.args = (kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, *self.args)


class _BatchNorm(Module):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype=None,
                 device=None) -> None:
        super().__init__()
        self.eps, self.momentum = float(eps), float(momentum)
        n = int(num_features)
        if affine:
            self.weight = _leaf(_core.ones(n, dtype=dtype, device=device))
            self.bias = _leaf(_core.zeros(n, dtype=dtype, device=device))
        else:
            self.weight = self.bias = None
        if track_running_stats:
            # made from data (not ops): leaves that flx_assign may update
            self.register_buffer("running_mean", _core.full_data(n, 0.0, dtype, device))
            self.register_buffer("running_var", _core.full_data(n, 1.0, dtype, device))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x: Tensor) -> Tensor:
        training = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training, self.momentum, self.eps)


class BatchNorm1d(_BatchNorm):
    """Batch norm of (N, C) or (N, C, L)."""


class BatchNorm2d(_BatchNorm):
    """Batch norm of (N, C, H, W)."""


class LayerNorm(Module):
    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 dtype=None, device=None) -> None:
        super().__init__()
        shp = (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shp, float(eps)
        if elementwise_affine:
            self.weight = _leaf(_core.ones(shp, dtype=dtype, device=device))
            self.bias = _leaf(_core.zeros(shp, dtype=dtype, device=device))
        else:
            self.weight = self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Inverted dropout; each call in training mode draws a fresh seed (a compiled step replays
    the mask of its trace)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return F.dropout(x, self.p, True, _next_seed())


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=None, device=None,
                 seed: Optional[int] = None) -> None:
        super().__init__()
        s = _next_seed() if seed is None else int(seed)
        self.weight = _leaf(_core.randn(num_embeddings, embedding_dim, seed=s, dtype=dtype,
                                        device=device))

    def forward(self, idx: Tensor) -> Tensor:
        return F.embedding(idx, self.weight)


class Flatten(Module):
    """Flattens every axis from start_dim on (default 1: keeps the batch axis)."""

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.start_dim = int(start_dim)

    def forward(self, x: Tensor) -> Tensor:
        return _core.reshape(x, tuple(x.shape[: self.start_dim]) + (-1,))


def _act(name: str, fn: Callable[..., Tensor], doc: str) -> type:
    def forward(self: Module, x: Tensor) -> Tensor:
        return fn(x, *self.args)

    def __init__(self: Module, *args: Any) -> None:
        Module.__init__(self)
        self.args = args

    return type(name, (Module,), {"forward": forward, "__init__": __init__, "__doc__": doc})


ReLU = _act("ReLU", _core.relu, "max(x, 0)")
GELU = _act("GELU", _core.gelu, "exact GELU")
Tanh = _act("Tanh", _core.tanh, "tanh")
Sigmoid = _act("Sigmoid", _core.sigmoid, "logistic sigmoid")
Softplus = _act("Softplus", _core.softplus, "log(1 + e^x)")
LeakyReLU = _act("LeakyReLU", _core.leaky_relu, "LeakyReLU(slope=0.01)")
ELU = _act("ELU", _core.elu, "ELU(alpha=1)")
Softmax = _act("Softmax", _core.softmax, "Softmax(axis=-1)")
LogSoftmax = _act("LogSoftmax", _core.log_softmax, "LogSoftmax(axis=-1)")


class RNNCell(Module):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype=None,
                 device=None, seed: Optional[int] = None) -> None:
        super().__init__()
        self._make(1, input_size, hidden_size, bias, dtype, device, seed)

    def _make(self, gates, i, h, bias, dtype, device, seed) -> None:
        s = _next_seed() if seed is None else int(seed)
        g = gates * h
        self.weight_ih = _leaf(init.uniform_fan_in((g, i), h, s, dtype, device))
        self.weight_hh = _leaf(init.uniform_fan_in((g, h), h, s + 1, dtype, device))
        self.bias_ih = _leaf(init.uniform_fan_in((g,), h, s + 2, dtype, device)) if bias else None
        self.bias_hh = _leaf(init.uniform_fan_in((g,), h, s + 3, dtype, device)) if bias else None

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return F.rnn_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class GRUCell(RNNCell):
    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype=None,
                 device=None, seed: Optional[int] = None) -> None:
        Module.__init__(self)
        self._make(3, input_size, hidden_size, bias, dtype, device, seed)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return F.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction


class MSELoss(_Loss):
    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return F.mse_loss(y, t, self.reduction)


class CrossEntropyLoss(_Loss):
    def __init__(self, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__(reduction)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, self.reduction, self.ignore_index)


class BCEWithLogitsLoss(_Loss):
    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(z, t, self.reduction)


class LogCoshLoss(_Loss):
    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return F.log_cosh_loss(y, t, self.reduction)


class HingeLoss(_Loss):
    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return F.hinge_loss(y, t, self.reduction)
