"""CUDA round trips with torch, cupy and jax, gradients against torch.autograd, linalg and a
compiled training step against the CPU (skipped without a GPU, or without torch/cupy/jax; with
FLX_REQUIRE_GPU=1 a missing GPU fails them)."""
import os

import numpy as np
import pytest

import fluxion as fx
from conftest import requires_cuda, train_step

pytestmark = requires_cuda

try:
    import torch  # noqa: F811
    HAVE_TORCH = torch.cuda.is_available()
except Exception:  # pragma: no cover
    torch = None
    HAVE_TORCH = False
try:
    import cupy  # noqa: F401
    HAVE_CUPY = True
except Exception:
    cupy = None
    HAVE_CUPY = False

# jax would otherwise take 75% of the GPU's memory at its first use, beside fluxion's pool
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
try:
    import jax
    import jax.numpy as jnp
    JAX_GPU = next((d for d in jax.devices() if d.platform == "gpu"), None)
except Exception:
    jax = jnp = JAX_GPU = None

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch with CUDA is not installed")
needs_cupy = pytest.mark.skipif(not HAVE_CUPY, reason="CuPy is not installed")
needs_jax = pytest.mark.skipif(JAX_GPU is None, reason="jax with a CUDA device is not installed")


def test_cuda_tensor_basics():
    x = fx.tensor([1.0, 2.0, 3.0], device="cuda")
    assert x.device == "cuda:0"
    assert x.__dlpack_device__() == (2, 0)
    np.testing.assert_allclose((x * x).sum().item(), 14.0)
    cai = x.__cuda_array_interface__
    assert cai["shape"] == (3,) and cai["typestr"] == "<f4" and cai["data"][0] == x.data_ptr()
    np.testing.assert_allclose(x.cpu().numpy(), [1, 2, 3])
    np.testing.assert_allclose(np.asarray(x), [1, 2, 3])  # copies to the host


@needs_torch
def test_torch_round_trip_zero_copy():
    a = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    t = fx.from_dlpack(a)
    assert t.device == "cuda:0" and t.shape == (2, 3)
    assert t.data_ptr() == a.data_ptr()
    a[1, 1] = 42.0  # write through torch, read through fluxion
    torch.cuda.synchronize()
    assert t[1, 1].item() == 42.0
    b = torch.from_dlpack(fx.from_dlpack(a) * 2)
    torch.testing.assert_close(b, a * 2)
    src = fx.tensor(np.zeros(4, dtype=np.float64), device="cuda")
    view = torch.from_dlpack(src)
    assert view.data_ptr() == src.data_ptr()
    c = torch.as_tensor(fx.tensor([1.0, 2.0], device="cuda"), device="cuda")  # CUDA array interface
    torch.testing.assert_close(c, torch.tensor([1.0, 2.0], device="cuda"))


@needs_cupy
def test_cupy_round_trip_zero_copy():
    a = cupy.arange(8, dtype=cupy.float64)
    t = fx.from_dlpack(a)
    assert t.data_ptr() == a.data.ptr
    a[3] = -1.0
    cupy.cuda.Device().synchronize()
    assert t[3].item() == -1.0
    b = cupy.from_dlpack(t * 3)
    cupy.testing.assert_allclose(b, a * 3)
    c = cupy.asarray(t)  # __cuda_array_interface__
    assert c.data.ptr == t.data_ptr()


@needs_jax
def test_jax_round_trip():
    a = jax.device_put(jnp.arange(6, dtype=jnp.float32).reshape(2, 3), JAX_GPU)
    a.block_until_ready()
    t = fx.from_dlpack(a)  # zero-copy: fluxion reads jax's buffer
    assert t.device == "cuda:0" and t.shape == (2, 3)
    assert t.data_ptr() == a.unsafe_buffer_pointer()
    np.testing.assert_array_equal((t * 2).numpy(), np.arange(6, dtype=np.float32).reshape(2, 3) * 2)
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    b = jnp.from_dlpack(fx.tensor(x, device="cuda") + 1)  # a computed fluxion tensor into jax
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(b), x + 1, rtol=1e-7)
    back = fx.from_dlpack(jnp.sin(b))
    np.testing.assert_allclose(back.numpy(), np.sin(x + 1), rtol=1e-6)


OPS = [
    ("tanh_matmul", lambda m, a, b: m.tanh(a @ b).sum()),
    ("exp_div", lambda m, a, b: m.exp(a).sum() / (b * b + 1.0).sum()),
    ("sigmoid_mul", lambda m, a, b: (m.sigmoid(a) * a).mean() + (b ** 3).sum()),
    ("softplus_log", lambda m, a, b: m.log((a * a) + 1.0).sum() + m.sqrt(b * b + 1.0).sum()),
    ("max_sub", lambda m, a, b: (a - a.max()).sum() + m.maximum(b, b * 0.5).sum()),
]


@needs_torch
@pytest.mark.parametrize("case", OPS, ids=[c[0] for c in OPS])
def test_gradients_match_torch_autograd(case):
    _, f = case
    rng = np.random.default_rng(3)
    av, bv = rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, (4, 5))
    ta = torch.tensor(av, device="cuda", requires_grad=True)
    tb = torch.tensor(bv, device="cuda", requires_grad=True)
    f(torch, ta, tb).backward()
    a = fx.tensor(av, dtype=fx.float64, device="cuda", requires_grad=True)
    b = fx.tensor(bv, dtype=fx.float64, device="cuda", requires_grad=True)
    f(fx, a, b).backward()
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.cpu().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.cpu().numpy(), rtol=1e-10, atol=1e-12)


def test_linalg_on_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 5, 5)) + 5 * np.eye(5)
    s = (a + np.swapaxes(a, -1, -2)) / 2
    for fn in (fx.linalg.det, fx.linalg.inv, fx.linalg.expm, fx.linalg.eigvalsh,
               lambda m: fx.linalg.norm(m, 2, axis=(-2, -1)), lambda m: fx.linalg.slogdet(m)[1]):
        got = fn(fx.tensor(s, device="cuda")).numpy()
        want = fn(fx.tensor(s)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


def test_compiled_training_step_on_cuda_matches_cpu():
    from fluxion import nn, optim

    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    results = {}
    for dev in ("cpu", "cuda"):
        fx.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, device=dev), nn.BatchNorm2d(4, device=dev),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3, device=dev))
        # SGD: its update is linear in the gradient, so f32 rounding differences stay small
        # (Adam's normalisation would magnify them where a gradient is near 0)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = fx.compile(device=dev)(lambda xb, yb: train_step(model, opt, xb, yb))

        losses = [step(x, y).item() for _ in range(4)]
        if dev == "cuda":
            assert step.info()["captured"]  # one CUDA graph launch per step
        results[dev] = (losses, [p.numpy() for p in model.parameters()])
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(results["cuda"][1], results["cpu"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
