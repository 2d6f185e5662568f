"""fluxion.optim: each optimiser's updates against a float64 numpy implementation of PyTorch's
rules; hyperparameters, schedules, state_dict round trips."""
import math

import numpy as np
import pytest

import fluxion as fx
from fluxion import optim

rng = np.random.default_rng(5)
TARGET = rng.standard_normal((3, 2))


def grad_of_loss(p):
    # loss = sum((p - T)^2 * w) with fixed weights: gradient 2 w (p - T)
    return 2 * np.arange(1, 7).reshape(3, 2) * (p - TARGET)


def train(p, opt, steps):
    """steps of opt on the loss sum(w * (p - TARGET)^2), w = 1..6 (grad_of_loss); p's values."""
    w = fx.tensor(np.arange(1, 7, dtype=np.float64).reshape(3, 2))
    t = fx.tensor(TARGET)
    for _ in range(steps):
        opt.zero_grad()
        (((p - t) ** 2) * w).sum().backward()
        opt.step()
    return p.numpy()


def run_fluxion(make, steps=4, p0=None):
    p = fx.tensor(p0.copy(), dtype=fx.float64, requires_grad=True)
    opt = make([p])
    return train(p, opt, steps), opt


def ref_sgd(p, steps, lr, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False):
    b = None
    for _ in range(steps):
        g = grad_of_loss(p) + wd * p
        if momentum:
            b = g.copy() if b is None else momentum * b + (1 - dampening) * g
            g = g + momentum * b if nesterov else b
        p = p - lr * g
    return p


def ref_adagrad(p, steps, lr, lr_decay=0.0, wd=0.0, init=0.0, eps=1e-10):
    s = np.full_like(p, init)
    for t in range(1, steps + 1):
        g = grad_of_loss(p) + wd * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g
        p = p - clr * g / (np.sqrt(s) + eps)
    return p


def ref_rmsprop(p, steps, lr, alpha=0.99, eps=1e-8, wd=0.0, momentum=0.0, centered=False):
    v = np.zeros_like(p)
    a = np.zeros_like(p)
    b = np.zeros_like(p)
    for _ in range(steps):
        g = grad_of_loss(p) + wd * p
        v = alpha * v + (1 - alpha) * g * g
        if centered:
            a = alpha * a + (1 - alpha) * g
            d = np.sqrt(v - a * a) + eps
        else:
            d = np.sqrt(v) + eps
        if momentum > 0:
            b = momentum * b + g / d
            p = p - lr * b
        else:
            p = p - lr * g / d
    return p


def ref_adam(p, steps, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t in range(1, steps + 1):
        g = grad_of_loss(p)  # the gradient at the parameters before the step
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - (lr / (1 - b1 ** t)) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return p


CASES = [
    ("sgd", lambda ps: optim.SGD(ps, lr=0.01), lambda p: ref_sgd(p, 4, 0.01)),
    ("sgd_momentum_wd", lambda ps: optim.SGD(ps, lr=0.01, momentum=0.8, dampening=0.1, weight_decay=0.1),
     lambda p: ref_sgd(p, 4, 0.01, 0.8, 0.1, 0.1)),
    ("momentum", lambda ps: optim.Momentum(ps, lr=0.01), lambda p: ref_sgd(p, 4, 0.01, 0.9)),
    ("nesterov", lambda ps: optim.Nesterov(ps, lr=0.01), lambda p: ref_sgd(p, 4, 0.01, 0.9, nesterov=True)),
    ("adagrad", lambda ps: optim.Adagrad(ps, lr=0.1, lr_decay=0.01, weight_decay=0.05,
                                         initial_accumulator_value=0.1),
     lambda p: ref_adagrad(p, 4, 0.1, 0.01, 0.05, 0.1)),
    ("rmsprop", lambda ps: optim.RMSprop(ps, lr=0.01), lambda p: ref_rmsprop(p, 4, 0.01)),
    ("rmsprop_centered_momentum", lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
     lambda p: ref_rmsprop(p, 4, 0.01, momentum=0.5, centered=True)),
    ("adam", lambda ps: optim.Adam(ps, lr=0.05, weight_decay=0.01),
     lambda p: ref_adam(p, 4, 0.05, wd=0.01)),
    ("adamw", lambda ps: optim.AdamW(ps, lr=0.05, betas=(0.8, 0.99)),
     lambda p: ref_adam(p, 4, 0.05, 0.8, 0.99, wd=1e-2, decoupled=True)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_optimiser_matches_reference(case, no_leaks):
    _, make, ref = case
    p0 = rng.standard_normal((3, 2))
    got, _ = run_fluxion(make, 4, p0)
    np.testing.assert_allclose(got, ref(p0), rtol=1e-12, atol=1e-14)


def test_hyperparameters_and_bad_arguments():
    p = fx.tensor(np.zeros(3), requires_grad=True)
    opt = optim.Adam([p], lr=0.01, betas=(0.8, 0.9))
    assert opt.lr == pytest.approx(0.01)
    assert opt.get_hparam("beta1") == pytest.approx(0.8)
    opt.lr = 0.5
    assert opt.lr == pytest.approx(0.5)
    assert opt.step_count == 0
    with pytest.raises(ValueError):
        optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(3)])
    with pytest.raises(ValueError):
        optim.Adam([p], betas=(1.5, 0.9))


def test_schedules():
    p = fx.tensor(np.zeros(2), requires_grad=True)
    opt = optim.SGD([p], lr=1.0)
    s = optim.lr_scheduler.StepLR(opt, 2, 0.5)
    lrs = []
    for _ in range(5):
        lrs.append(opt.lr)
        s.step()
    assert lrs == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    opt2 = optim.SGD([p], lr=2.0)
    c = optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=4, eta_min=0.0)
    got = []
    for _ in range(5):
        got.append(opt2.lr)
        c.step()
    assert got == pytest.approx([2 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)])
    opt3 = optim.SGD([p], lr=1.0)
    e = optim.lr_scheduler.ExponentialLR(opt3, 0.9)
    e.step()
    e.step()
    assert opt3.lr == pytest.approx(0.81)
    opt4 = optim.SGD([p], lr=1.0)
    m = optim.lr_scheduler.MultiStepLR(opt4, [1, 3], 0.1)
    vals = []
    for _ in range(4):
        vals.append(opt4.lr)
        m.step()
    assert vals == pytest.approx([1, 0.1, 0.1, 0.01])
    opt5 = optim.SGD([p], lr=1.0)
    w = optim.lr_scheduler.LinearWarmup(opt5, 4, 0.2)
    assert opt5.lr == pytest.approx(0.2)
    for _ in range(6):
        w.step()
    assert opt5.lr == pytest.approx(1.0)
    opt6 = optim.SGD([p], lr=1.0)
    optim.lr_scheduler.LambdaLR(opt6, lambda ep: 1 / (ep + 1)).step()
    assert opt6.lr == pytest.approx(0.5)


def test_state_dict_resume_is_exact(tmp_path):
    p0 = rng.standard_normal((3, 2))
    straight, _ = run_fluxion(lambda ps: optim.Adam(ps, lr=0.05), 6, p0)
    half, opt = run_fluxion(lambda ps: optim.Adam(ps, lr=0.05), 3, p0)
    path = tmp_path / "ck.safetensors"
    fx.save(path, {"p": fx.tensor(half), **{"optim." + k: v for k, v in opt.state_dict().items()}})
    loaded = fx.load(path)
    p = loaded["p"].astype(fx.float64)
    p = fx.tensor(p.numpy(), requires_grad=True)
    opt2 = optim.Adam([p], lr=0.01)
    opt2.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("optim.")})
    assert opt2.lr == pytest.approx(0.05) and opt2.step_count == 3
    np.testing.assert_array_equal(train(p, opt2, 3), straight)


def test_optimiser_save_and_load_files(tmp_path):
    p0 = rng.standard_normal((3, 2))
    straight, _ = run_fluxion(lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5), 4, p0)
    half, opt = run_fluxion(lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5), 2, p0)
    opt.save(tmp_path / "opt.safetensors")
    p = fx.tensor(half, requires_grad=True)
    opt2 = optim.RMSprop([p], lr=0.01, momentum=0.5)
    opt2.load(tmp_path / "opt.safetensors")
    np.testing.assert_array_equal(train(p, opt2, 2), straight)
    with pytest.raises(fx.FluxionError):
        optim.Adam([fx.tensor(half, requires_grad=True)]).load(tmp_path / "opt.safetensors")


def test_loss_scaling_skips_inf_steps_and_moves_the_scale():
    # SGD lr 0.5 on loss sum(p * x): a clean step moves p by -0.5 x; an inf in x skips the step,
    # halves the scale and counts it; growth_interval clean steps double the scale.
    p = fx.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    opt = optim.SGD([p], lr=0.5, loss_scaling=True, init_scale=16.0, growth_interval=2)
    assert opt.loss_scale == 16.0 and opt.skipped_steps == 0
    xs = [[1.0, 2.0], [np.inf, 1.0], [0.5, 0.25], [1.0, 1.0]]
    want_scale = [16.0, 8.0, 8.0, 16.0]
    want_p = np.array([1.0, 2.0])
    for x, ws in zip(xs, want_scale):
        opt.zero_grad()
        loss = (p * fx.tensor(np.array(x, dtype=np.float32))).sum()
        opt.scale_loss(loss).backward()
        opt.step()
        if np.all(np.isfinite(x)):
            want_p = want_p - 0.5 * np.array(x)
        assert opt.loss_scale == ws
        np.testing.assert_array_equal(p.numpy(), want_p.astype(np.float32))
    assert opt.skipped_steps == 1 and opt.step_count == 3
    with pytest.raises(TypeError):
        optim.Adam([p], loss_scale=True)  # misspelt option
    with pytest.raises(ValueError, match="backoff_factor"):
        optim.Adam([p], loss_scaling=True, backoff_factor=2.0)


def test_without_loss_scaling_scale_loss_is_the_loss():
    p = fx.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = optim.Adam([p])
    loss = p.sum()
    assert opt.scale_loss(loss).item() == 3.0 and opt.loss_scale == 1.0 and opt.skipped_steps == 0


def _half_scaled_step(p, opt, x):
    opt.zero_grad()
    loss = (p.astype(fx.float32) * fx.tensor(x)).sum()
    opt.scale_loss(loss).backward()
    opt.step()


def test_state_dict_carries_masters_and_loss_scaler(tmp_path):
    # float16 parameters under Adam with loss scaling from 2^17, growing after 3 clean steps.
    # Every x has an entry of 0.8: at scale 2^17 the f16 gradient overflows (0.8 * 131072 >
    # 65504) and the step is skipped; at 2^16 every |x| <= 0.9 fits. Six steps: skip (2^16),
    # 3 clean (grown to 2^17), skip (2^16), clean: scale 2^16, tracker 1, 2 skipped.
    g = np.random.default_rng(11)
    w0 = g.uniform(-1, 1, (4, 3)).astype(np.float16)
    xs = []
    for _ in range(10):
        x = g.uniform(-0.9, 0.9, (4, 3)).astype(np.float32)
        x[0, 0] = 0.8
        xs.append(x)
    kw = dict(lr=1e-3, loss_scaling=True, init_scale=2.0 ** 17, growth_interval=3)
    p = fx.tensor(w0, requires_grad=True)
    opt = optim.Adam([p], **kw)
    for x in xs[:6]:
        _half_scaled_step(p, opt, x)
    assert (opt.loss_scale, opt.growth_tracker, opt.skipped_steps) == (2.0 ** 16, 1, 2)
    sd = opt.state_dict()
    master = sd["state.0.2"].numpy()
    assert sd["state.0.2"].dtype is fx.float32
    # the master holds bits below f16's resolution: the parameter alone cannot resume
    assert np.any(master != master.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(sd["loss_scaler"].numpy(), [2.0 ** 16, 1, 2])

    path = tmp_path / "half.safetensors"
    fx.save(path, {"p": p, **{"optim." + k: v for k, v in sd.items()}})
    ck = fx.load(path)
    p2 = fx.tensor(ck["p"].numpy(), requires_grad=True)
    assert p2.dtype is fx.float16
    opt2 = optim.Adam([p2], **kw)
    opt2.load_state_dict({k[6:]: v for k, v in ck.items() if k.startswith("optim.")})
    assert (opt2.loss_scale, opt2.growth_tracker, opt2.skipped_steps) == (2.0 ** 16, 1, 2)
    np.testing.assert_array_equal(opt2.state_dict()["state.0.2"].numpy(), master)
    # Four more steps each: clean, clean (grown to 2^17), skip (2^16), clean.
    for x in xs[6:]:
        _half_scaled_step(p, opt, x)
        _half_scaled_step(p2, opt2, x)
    assert (opt2.loss_scale, opt2.growth_tracker, opt2.skipped_steps) == (2.0 ** 16, 1, 3)
    assert (opt.loss_scale, opt.growth_tracker, opt.skipped_steps) == (2.0 ** 16, 1, 3)
    assert opt2.step_count == opt.step_count == 7  # ten steps, three skipped
    np.testing.assert_array_equal(p2.numpy(), p.numpy())
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(opt2.state_dict()[k].numpy(), v.numpy(), err_msg=k)


def test_loss_scaler_state_must_match_the_optimiser():
    p = fx.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    scaled = optim.SGD([p], lr=0.1, loss_scaling=True, init_scale=8.0)
    plain = optim.SGD([p], lr=0.1)
    assert "loss_scaler" not in plain.state_dict()
    with pytest.raises(ValueError, match="saved with loss scaling; this optimiser was created without"):
        plain.load_state_dict(scaled.state_dict())
    with pytest.raises(ValueError, match="saved without loss scaling; this optimiser was created with"):
        scaled.load_state_dict(plain.state_dict())
    sd = scaled.state_dict()
    for bad in ([8.0, 1.0], [8.0, -1.0, 0.0], [8.0, 0.5, 0.0]):
        sd["loss_scaler"] = np.array(bad)
        with pytest.raises(ValueError, match="loss_scaler"):
            scaled.load_state_dict(sd)
    sd["loss_scaler"] = np.array([0.0, 0.0, 0.0])  # the C library checks the scale
    with pytest.raises(ValueError, match="scale"):
        scaled.load_state_dict(sd)
    sd["loss_scaler"] = np.array([4.0, 2.0, 5.0])
    scaled.load_state_dict(sd)
    assert (scaled.loss_scale, scaled.growth_tracker, scaled.skipped_steps) == (4.0, 2, 5)
