import gc
import os

import pytest

import fluxion as fx


def _torch():
    try:
        import torch  # noqa: F401

        return torch
    except Exception:
        return None


def cuda_available():
    return fx.has_cuda() and fx.cuda_device_count() > 0


NO_CUDA = "no CUDA: fluxion built without the CUDA backend or no GPU present"
# FLX_REQUIRE_GPU=1 (tools/gpu-check), as for the C suite: a missing GPU fails the CUDA tests
# instead of skipping them.
REQUIRE_GPU = os.environ.get("FLX_REQUIRE_GPU", "") not in ("", "0")
if cuda_available() or not REQUIRE_GPU:
    requires_cuda = pytest.mark.skipif(not cuda_available(), reason=NO_CUDA)
else:
    requires_cuda = pytest.mark.usefixtures("_fail_without_cuda")


@pytest.fixture
def _fail_without_cuda():
    pytest.fail(NO_CUDA + " (FLX_REQUIRE_GPU=1)")


def train_step(model, opt, x, y):
    """One classifier training step, the body the compile tests run eagerly and trace: the loss.
    The backward runs on opt.scale_loss(loss), which is the loss itself without loss scaling."""
    from fluxion.nn import functional as F

    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    opt.scale_loss(loss).backward()
    opt.step()
    return loss


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves C tensors alive."""
    gc.collect()
    before = fx.live_tensors()
    yield
    gc.collect()
    assert fx.live_tensors() == before, "tensors leaked by this test"
