"""fluxion.distributed in one process (a world of one): every collective is the identity, its
gradient passes through, the data-parallel helpers keep one rank's gradients, bad input raises.
The two-rank checks run in C (tests/dist_mpi_test.cc under mpirun)."""
import numpy as np
import pytest

import fluxion as fx
from fluxion import distributed as dist


def test_world_of_one_collectives_are_the_identity():
    x = fx.tensor(np.arange(6.0).reshape(3, 2))
    with dist.Communicator("cpu") as comm:
        assert (comm.rank, comm.size) == (0, 1)
        for op in ("sum", "avg", "max", "min"):
            np.testing.assert_array_equal(np.asarray(comm.all_reduce(x, op)), np.asarray(x))
        np.testing.assert_array_equal(np.asarray(comm.broadcast(x, 0)), np.asarray(x))
        np.testing.assert_array_equal(np.asarray(comm.all_gather(x)), np.asarray(x))
        np.testing.assert_array_equal(np.asarray(comm.reduce_scatter(x, "avg")), np.asarray(x))


def test_gradient_passes_through_an_all_reduce():
    x = fx.tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
    with dist.Communicator("cpu") as comm:
        y = fx.sum(fx.sin(comm.all_reduce(x, "sum")))
        y.backward()
        np.testing.assert_allclose(np.asarray(x.grad), np.cos([0.5, -1.0, 2.0]), rtol=1e-15)
        comm.average_gradients([x])
        np.testing.assert_allclose(np.asarray(x.grad), np.cos([0.5, -1.0, 2.0]), rtol=1e-15)
        comm.broadcast_parameters([x])


def test_bad_input_raises():
    comm = dist.Communicator("cpu")
    x = fx.tensor(np.ones(4))
    with pytest.raises(ValueError):
        comm.all_reduce(x, "product")
    with pytest.raises(Exception, match="root"):
        comm.broadcast(x, 3)
    with pytest.raises(Exception, match="SUM or"):
        comm.reduce_scatter(x, "max")
    comm.close()
    with pytest.raises(RuntimeError, match="closed"):
        comm.all_reduce(x)
    assert isinstance(dist.has_mpi(), bool) and isinstance(dist.has_nccl(), bool)


def test_sharded_optimizer_of_one_rank_equals_the_plain_one():
    comm = dist.Communicator("cpu")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 2))
    a = fx.tensor(w0, requires_grad=True)
    b = fx.tensor(w0, requires_grad=True)
    z = dist.ShardedOptimizer(comm, fx.optim.Adam, [a], lr=0.1)
    o = fx.optim.Adam([b], lr=0.1)
    z.lr = 0.05
    o.lr = 0.05
    assert abs(z.lr - 0.05) < 1e-15
    for _ in range(3):
        for p, opt in ((a, z), (b, o)):
            fx.sum(fx.sin(p)).backward()
            opt.step()
            opt.zero_grad()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_overlapped_backward_equals_backward_then_average():
    rng = np.random.default_rng(1)
    w0, b0, x0 = rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal((5, 4))
    with dist.Communicator("cpu") as comm:
        ref = [fx.tensor(w0, requires_grad=True), fx.tensor(b0, requires_grad=True)]
        ovl = [fx.tensor(w0, requires_grad=True), fx.tensor(b0, requires_grad=True)]

        def loss(p):
            return fx.mean(fx.square(fx.tanh(fx.matmul(fx.tensor(x0), p[0]) + p[1])))

        loss(ref).backward()
        comm.average_gradients(ref)
        # With fusion on, the bias gradient joins the weight-gradient GEMM: both buckets' gradients
        # come from one kernel and no backward work is left to overlap with the first one.
        was = fx.get_fusion()
        fx.set_fusion(False)
        try:
            before = comm.stats()
            comm.backward(loss(ovl), ovl, bucket_bytes=1)
            after = comm.stats()
        finally:
            fx.set_fusion(was)
        assert after["overlapped"] - before["overlapped"] == 2
        assert after["started_early"] - before["started_early"] == 1
        for a, b in zip(ref, ovl):
            np.testing.assert_allclose(np.asarray(b.grad), np.asarray(a.grad), rtol=1e-15, atol=1e-15)
        # an independent reference: the gradient of the mean loss written out in numpy
        h = np.tanh(x0 @ w0 + b0)
        d = 2 * h * (1 - h * h) / h.size
        np.testing.assert_allclose(np.asarray(ovl[0].grad), x0.T @ d, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(ovl[1].grad), d.sum(0), rtol=1e-12)


def test_timeout_setting():
    with dist.Communicator("cpu") as comm:
        comm.timeout = 2.5
        assert comm.timeout == 2.5
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="seconds"):
                comm.timeout = bad
        with pytest.raises(Exception, match="one element"):
            comm.backward(fx.tensor(np.ones(3), requires_grad=True), [])
    assert fx._core._exception_for(11, "late").__class__ is TimeoutError
