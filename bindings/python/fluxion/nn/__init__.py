"""fluxion.nn: layers, losses and initialisers of the C API as PyTorch-style modules
(:mod:`fluxion.nn.functional` holds the same as functions, :mod:`fluxion.nn.init` the
initialisers)."""

from . import functional, init
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _mods

__all__ = list(_mods) + ["functional", "init"]
