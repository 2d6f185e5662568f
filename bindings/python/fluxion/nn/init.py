"""fluxion.nn.init: the C API's initialisers (counter-based Philox: the same values on every
backend for a seed). Each returns a new tensor of ``shape``; the ``*_`` forms assign the values
into an existing leaf (PyTorch's in-place spelling) and return it."""

from __future__ import annotations

from typing import Sequence

from .. import _capi, _core
from .._core import Tensor, _dt, _i64, _L, _wrap

__all__ = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
           "uniform_fan_in", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
           "kaiming_normal_", "calculate_gain", "GAIN_RELU"]

GAIN_RELU = _capi.FLX_GAIN_RELU  # sqrt(2)
_FAN = {"fan_in": 0, "fan_out": 1}


def calculate_gain(nonlinearity: str) -> float:
    """1 for linear/sigmoid, sqrt(2) for relu, 5/3 for tanh (torch.nn.init.calculate_gain)."""
    g = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "conv2d": 1.0, "relu": GAIN_RELU,
         "tanh": 5.0 / 3.0}
    if nonlinearity not in g:
        raise ValueError(f"fluxion.nn.init: unknown nonlinearity {nonlinearity!r}")
    return g[nonlinearity]


def _args(shape: Sequence[int], dtype, device):
    s, n = _i64(tuple(int(v) for v in shape))
    return _core._ctx(device), _dt(dtype).code, n, s


def _mode(mode: str) -> int:
    if mode not in _FAN:
        raise ValueError(f"fluxion.nn.init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return _FAN[mode]


def xavier_uniform(shape: Sequence[int], gain: float = 1.0, seed: int = 0, dtype=None,
                   device=None) -> Tensor:
    """U(-a, a), a = gain sqrt(6 / (fan_in + fan_out))."""
    return _wrap(_L.flx_init_xavier_uniform(*_args(shape, dtype, device), float(gain), int(seed)))


def xavier_normal(shape: Sequence[int], gain: float = 1.0, seed: int = 0, dtype=None,
                  device=None) -> Tensor:
    """N(0, std^2), std = gain sqrt(2 / (fan_in + fan_out))."""
    return _wrap(_L.flx_init_xavier_normal(*_args(shape, dtype, device), float(gain), int(seed)))


def kaiming_uniform(shape: Sequence[int], mode: str = "fan_in", gain: float = GAIN_RELU,
                    seed: int = 0, dtype=None, device=None) -> Tensor:
    """U(-a, a), a = gain sqrt(3 / fan)."""
    return _wrap(_L.flx_init_kaiming_uniform(*_args(shape, dtype, device), _mode(mode),
                                             float(gain), int(seed)))


def kaiming_normal(shape: Sequence[int], mode: str = "fan_in", gain: float = GAIN_RELU,
                   seed: int = 0, dtype=None, device=None) -> Tensor:
    """N(0, std^2), std = gain / sqrt(fan)."""
    return _wrap(_L.flx_init_kaiming_normal(*_args(shape, dtype, device), _mode(mode),
                                            float(gain), int(seed)))


def uniform_fan_in(shape: Sequence[int], fan_in: int, seed: int = 0, dtype=None,
                   device=None) -> Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's Linear/Conv default)."""
    return _wrap(_L.flx_init_uniform_fan_in(*_args(shape, dtype, device), int(fan_in), int(seed)))


def _into(t: Tensor, make, **kw) -> Tensor:
    t.assign(make(t.shape, dtype=t.dtype, device=t.device, **kw))
    return t


def xavier_uniform_(t: Tensor, gain: float = 1.0, seed: int = 0) -> Tensor:
    return _into(t, xavier_uniform, gain=gain, seed=seed)


def xavier_normal_(t: Tensor, gain: float = 1.0, seed: int = 0) -> Tensor:
    return _into(t, xavier_normal, gain=gain, seed=seed)


def kaiming_uniform_(t: Tensor, mode: str = "fan_in", gain: float = GAIN_RELU,
                     seed: int = 0) -> Tensor:
    return _into(t, kaiming_uniform, mode=mode, gain=gain, seed=seed)


def kaiming_normal_(t: Tensor, mode: str = "fan_in", gain: float = GAIN_RELU,
                    seed: int = 0) -> Tensor:
    return _into(t, kaiming_normal, mode=mode, gain=gain, seed=seed)
