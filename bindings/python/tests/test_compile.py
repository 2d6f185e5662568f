"""fluxion.compile: a traced training step replayed as a C plan gives the eager results, rebinds
inputs per call, and recompiles (or refuses) on a new signature."""
import numpy as np
import pytest

import fluxion as fx
from conftest import train_step
from fluxion import _capi, nn, optim
from fluxion.nn import functional as F

rng = np.random.default_rng(11)


def data(n=16):
    x = rng.standard_normal((n, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, y


def make(seed, opt_cls=optim.SGD, **kw):
    fx.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 8, dtype=fx.float64), nn.Tanh(), nn.Linear(8, 2, dtype=fx.float64))
    return m, opt_cls(m.parameters(), **kw)


@pytest.mark.parametrize("opt_cls,kw", [(optim.SGD, dict(lr=0.1, momentum=0.9)),
                                        (optim.Adam, dict(lr=0.01))], ids=["sgd", "adam"])
def test_compiled_training_matches_eager(opt_cls, kw):
    batches = [data() for _ in range(5)]
    m1, o1 = make(1, opt_cls, **kw)
    eager = []
    for x, y in batches:
        eager.append(train_step(m1, o1, fx.tensor(x), fx.tensor(y)).item())

    m2, o2 = make(1, opt_cls, **kw)
    step = fx.compile(lambda x, y: train_step(m2, o2, x, y))

    got = []
    for i, (x, y) in enumerate(batches):
        # tensors and numpy arrays both bind by copy
        args = (fx.tensor(x), fx.tensor(y)) if i % 2 else (x, y)
        got.append(step(*args).item())
    assert step.compiles == 1
    assert step.info()["runs"] == 5 and step.info()["n_optim"] == 1
    info = step.info()
    if not info["captured"]:  # says why, in words
        assert isinstance(info["capture_reason"], str) and info["capture_reason"]
        assert info["capture_state"] != _capi.FLX_PLAN_CAPTURED
    np.testing.assert_allclose(got, eager, rtol=1e-12)
    for a, b in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-14)


def test_compiled_step_with_loss_scaling_matches_eager():
    # A batch with an inf input skips the step in both (the scale backs off on the device).
    batches = [data() for _ in range(4)]
    batches[1][0][3, 2] = np.inf
    kw = dict(lr=0.01, loss_scaling=True, init_scale=1024.0, growth_interval=2)
    m1, o1 = make(2, optim.Adam, **kw)
    for x, y in batches:
        train_step(m1, o1, fx.tensor(x), fx.tensor(y))
    m2, o2 = make(2, optim.Adam, **kw)
    step = fx.compile(lambda x, y: train_step(m2, o2, x, y))
    for x, y in batches:
        step(x, y)
    assert step.compiles == 1
    assert o1.skipped_steps == o2.skipped_steps == 1
    assert o1.loss_scale == o2.loss_scale == 1024.0  # halved once, then grown after 2 clean steps
    assert o1.step_count == o2.step_count == 3
    for a, b in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-14)


def test_outputs_keep_their_values_across_runs():
    m, _ = make(2)

    @fx.compile
    def fwd(x):
        return m(x).sum(), m(x) * 2

    x1, x2 = data(4)[0], data(4)[0]
    s1, y1 = fwd(x1)
    s2, y2 = fwd(x2)
    with fx.no_grad():
        r1 = m(fx.tensor(x1)).numpy()
        r2 = m(fx.tensor(x2)).numpy()
    np.testing.assert_allclose(s1.item(), r1.sum(), rtol=1e-12)
    np.testing.assert_allclose(y1.numpy(), 2 * r1, rtol=1e-12)
    np.testing.assert_allclose(y2.numpy(), 2 * r2, rtol=1e-12)
    assert not y1.requires_grad


def test_shape_change_recompiles_or_raises():
    m, o = make(3, lr=0.05)

    def body(x, y):
        return train_step(m, o, x, y)

    step = fx.compile(body)
    x, y = data(16)
    step(x, y)
    step(x[:7], y[:7])
    assert step.compiles == 2
    step(x[:7], y[:7])
    assert step.compiles == 2
    strict = fx.compile(recompile=False)(body)
    strict(x, y)
    with pytest.raises(ValueError, match="compiled for"):
        strict(x[:3], y[:3])


def test_compiled_batch_norm_updates_running_stats_like_eager():
    x = rng.standard_normal((8, 3))
    bn1 = nn.BatchNorm1d(3, dtype=fx.float64)
    bn2 = nn.BatchNorm1d(3, dtype=fx.float64)
    for _ in range(3):
        bn1(fx.tensor(x)).eval()
    step = fx.compile(lambda v: bn2(v))
    for _ in range(3):
        step(x)
    np.testing.assert_allclose(bn2.running_mean.numpy(), bn1.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn2.running_var.numpy(), bn1.running_var.numpy(), rtol=1e-12)


def test_load_state_dict_between_runs_recompiles():
    m, o = make(4, lr=0.1)
    step = fx.compile(lambda x, y: train_step(m, o, x, y))

    x, y = data()
    step(x, y)
    m.load_state_dict({k: v.numpy() * 0 for k, v in m.state_dict().items()})
    loss = step(x, y).item()  # parameters got new buffers: the plan is compiled again
    assert loss == pytest.approx(np.log(2), rel=1e-12)  # all-zero model: uniform logits
    assert step.compiles == 2


def test_compile_misuse_is_reported():
    m, o = make(5)

    def no_backward(x):
        o.step()
        return m(x).sum()

    with pytest.raises(ValueError, match="backward"):
        fx.compile(no_backward)(data()[0])
    with pytest.raises(TypeError):
        fx.compile(lambda x: 3)(data()[0])
    with pytest.raises(ValueError, match="capture"):
        fx.compile(lambda x: x, capture="sometimes")


def test_fashion_mnist_example_trains(tmp_path):
    import importlib.util
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    data = os.environ.get("FLX_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
    if not os.path.isdir(data):
        pytest.skip(f"no Fashion-MNIST data at {data}")
    spec = importlib.util.spec_from_file_location(
        "fashion_mnist_example", os.path.join(here, "..", "examples", "fashion_mnist.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ck = tmp_path / "fm.safetensors"
    rc = mod.main(["--device", "cpu", "--epochs", "1", "--train-limit", "1024", "--test-limit",
                   "500", "--min-accuracy", "0.55", "--checkpoint", str(ck)])
    assert rc == 0
    state, meta = fx.load(ck, metadata=True)
    assert meta["model"] == "mlp" and "model.0.weight" in state and "optim.hparam.step" in state
    assert state["optim.hparam.step"].item() == 8


def test_readme_training_loop_runs(tmp_path):
    import pathlib
    import re

    readme = pathlib.Path(__file__).resolve().parents[3] / "README.md"
    if not readme.is_file():
        pytest.skip("not run from a source checkout")
    m = re.search(r"\n( *)```python\n(.*?)\n *```", readme.read_text(), re.S)
    assert m, "README.md has no Python example"
    ind = len(m.group(1))
    code = "\n".join(line[ind:] for line in m.group(2).splitlines())
    assert "fx.compile" in code and "loss.backward()" in code and "opt.step()" in code
    code = code.replace("range(100)", "range(3)").replace('"model.safetensors"',
                                                          repr(str(tmp_path / "m.safetensors")))
    ns: dict = {}
    exec(compile(code, str(readme), "exec"), ns)
    assert ns["train_step"].compiles == 1 and np.isfinite(ns["loss"].item())
    assert "0.weight" in fx.load(tmp_path / "m.safetensors")


def test_dropout_draws_a_new_mask_every_call():
    """A compiled step replays its graph, but not its random numbers: each call draws a new
    dropout mask, as eager calls do (the plan advances the Philox stream on the device)."""
    drop = nn.Dropout(0.5)
    drop.train()

    @fx.compile
    def step(x):
        return drop(x)

    x = np.ones((4, 64))
    outs = [step(x).numpy() for _ in range(4)]
    assert step.compiles == 1
    for y in outs:
        assert set(np.unique(y)) <= {0.0, 2.0}
        assert 0.35 < (y != 0).mean() < 0.65
    for a, b in zip(outs, outs[1:]):
        assert ((a != 0) != (b != 0)).mean() > 0.25, "a compiled replay repeated the dropout mask"
