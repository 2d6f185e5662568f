"""fluxion.distributed: communicators and collectives over the C API (MPI between CPU
contexts, NCCL between GPUs; a world of one process without a launcher). Collectives are lazy,
differentiable ops like any other. See docs/distributed.md.

    comm = fluxion.distributed.Communicator("cpu")      # under mpirun -np N: N ranks
    y = comm.all_reduce(x, "avg")
    comm.broadcast_parameters(model.parameters())       # every rank starts equal
    loss.backward(); comm.average_gradients(model.parameters()); opt.step()
    comm.backward(loss, model.parameters()); opt.step()   # the same, communication overlapped

A collective that another rank never joins raises TimeoutError (fluxion's FLX_ERR_TIMEOUT) after
comm.timeout seconds (FLX_COMM_TIMEOUT_S, default 600); the communicator is then failed and every
rank should close it and create a new one.
"""
from __future__ import annotations

from ctypes import byref, c_double
from typing import Any, Iterable

from . import _capi, _core
from ._core import Tensor, _check, _ctx, _p, _ptrs, _raise_last, _wrap
from ._lib import lib as _L

_OPS = {"sum": 0, "avg": 1, "mean": 1, "max": 2, "min": 3}


def _op(op: str) -> int:
    try:
        return _OPS[op.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"fluxion.distributed: op must be one of {sorted(_OPS)}, got {op!r}") from None


def has_mpi() -> bool:
    """True when this build talks MPI (CPU contexts)."""
    return bool(_L.flx_has_mpi())


def has_nccl() -> bool:
    """True when this build talks NCCL (CUDA contexts)."""
    return bool(_L.flx_has_nccl())


class Communicator:
    """The job's world for one device (the default device when None)."""

    def __init__(self, device: Any = None) -> None:
        self._h = _L.flx_comm_create(_ctx(device))
        if not self._h:
            _raise_last()

    rank = property(lambda self: int(_L.flx_comm_rank(self._h)), doc="This process's rank, 0 .. size-1.")
    size = property(lambda self: int(_L.flx_comm_size(self._h)), doc="Number of ranks in the job.")

    def _live(self) -> int:
        if not self._h:
            raise RuntimeError("fluxion.distributed: the communicator is closed")
        return self._h

    def all_reduce(self, x: Tensor, op: str = "sum") -> Tensor:
        return _wrap(_L.flx_comm_all_reduce(self._live(), _p(x), _op(op)))

    def broadcast(self, x: Tensor, root: int = 0) -> Tensor:
        return _wrap(_L.flx_comm_broadcast(self._live(), _p(x), int(root)))

    def all_gather(self, x: Tensor) -> Tensor:
        return _wrap(_L.flx_comm_all_gather(self._live(), _p(x)))

    def reduce_scatter(self, x: Tensor, op: str = "sum") -> Tensor:
        return _wrap(_L.flx_comm_reduce_scatter(self._live(), _p(x), _op(op)))

    def broadcast_parameters(self, params: Iterable[Tensor], root: int = 0) -> None:
        arr, n = _ptrs(list(params))
        _check(_L.flx_comm_broadcast_params(self._live(), n, arr, int(root)))

    def average_gradients(self, params: Iterable[Tensor], bucket_bytes: int = 0) -> None:
        arr, n = _ptrs(list(params))
        _check(_L.flx_comm_average_grads(self._live(), n, arr, int(bucket_bytes)))

    def backward(self, loss: Tensor, params: Iterable[Tensor], bucket_bytes: int = 0) -> None:
        """loss.backward() and average_gradients(params) in one evaluation, each bucket's
        all-reduce starting as soon as its gradients exist (overlapping the rest of backward).
        Every parameter gets a .grad (zeros where the loss does not reach it)."""
        arr, n = _ptrs(list(params))
        _check(_L.flx_comm_backward(self._live(), _p(loss), n, arr, int(bucket_bytes)))

    @property
    def timeout(self) -> float:
        """Seconds one collective waits for the other ranks before raising TimeoutError."""
        v = c_double()
        _check(_L.flx_comm_get_timeout(self._live(), byref(v)))
        return v.value

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        _check(_L.flx_comm_set_timeout(self._live(), float(seconds)))

    def stats(self) -> dict:
        """This rank's counters: collectives, bytes, overlapped, started_early."""
        st = _capi.flx_comm_stats()
        _check(_L.flx_comm_get_stats(self._live(), byref(st)))
        return {name: int(getattr(st, name)) for name, _ in st._fields_}

    def close(self) -> None:
        if self._h:
            _L.flx_comm_destroy(self._h)
            self._h = None

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class ShardedOptimizer:
    """ZeRO stage 1: `optimizer` (a class of fluxion.optim, e.g. fluxion.optim.Adam) over params,
    its state split over the ranks of comm. step() reduce-scatters the averaged gradients, updates
    this rank's shard and all-gathers the parameters: the same parameters as every rank running
    the plain optimizer on averaged gradients, with 1/size of the state memory."""

    def __init__(self, comm: Communicator, optimizer: Any, params: Iterable[Tensor], **hp: Any) -> None:
        from ctypes import byref

        self._h = None
        self.comm = comm
        self.params = list(params)
        from .optim import _config

        cfg = _config(optimizer.kind, hp, "fluxion.distributed.ShardedOptimizer")
        arr, n = _ptrs(self.params)
        self._h = _L.flx_sharded_optim_create(comm._live(), optimizer.kind, n, arr, byref(cfg))
        if not self._h:
            _raise_last()

    def step(self) -> None:
        _check(_L.flx_sharded_optim_step(self._h))

    def zero_grad(self) -> None:
        _check(_L.flx_sharded_optim_zero_grad(self._h))

    @property
    def lr(self) -> float:
        from ctypes import byref, c_double

        v = c_double()
        _check(_L.flx_optim_get_hparam(_L.flx_sharded_optim_shard(self._h), 0, byref(v)))
        return v.value

    @lr.setter
    def lr(self, value: float) -> None:
        _check(_L.flx_optim_set_lr(_L.flx_sharded_optim_shard(self._h), float(value)))

    def __del__(self) -> None:
        if getattr(self, "_h", None) and _core._alive:
            _L.flx_sharded_optim_destroy(self._h)
            self._h = None


__all__ = ["Communicator", "ShardedOptimizer", "has_mpi", "has_nccl"]
