"""fluxion.nn: layers, losses and initialisers against numpy float64 references; gradients by
gradcheck; Module bookkeeping (parameters, train/eval, state_dict)."""
import math

import numpy as np
import pytest

import fluxion as fx
from fluxion import nn
from fluxion.nn import functional as F

rng = np.random.default_rng(3)


def t64(a, requires_grad=False):
    return fx.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def conv_ref(x, w, b, stride, pad, dil):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride: i * stride + dil * (kh - 1) + 1: dil,
                       j * stride: j * stride + dil * (kw - 1) + 1: dil]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return y + b[None, :, None, None]


def test_linear_and_conv2d_values(no_leaks):
    x = rng.standard_normal((5, 3))
    lin = nn.Linear(3, 4, dtype=fx.float64, seed=1)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert np.all(np.abs(w) <= 1 / math.sqrt(3)) and w.shape == (4, 3)
    np.testing.assert_allclose(lin(t64(x)).numpy(), x @ w.T + b, rtol=1e-12)
    xi = rng.standard_normal((2, 3, 7, 6))
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, dtype=fx.float64)
    want = conv_ref(xi, conv.weight.numpy(), conv.bias.numpy(), 2, 1, 1)
    np.testing.assert_allclose(conv(t64(xi)).numpy(), want, rtol=1e-11, atol=1e-12)
    wd = rng.standard_normal((2, 3, 2, 2))
    got = F.conv2d(t64(xi), t64(wd), None, stride=1, padding=0, dilation=2)
    np.testing.assert_allclose(got.numpy(), conv_ref(xi, wd, np.zeros(2), 1, 0, 2), rtol=1e-11)


def test_pooling_values():
    x = rng.standard_normal((2, 3, 6, 6))
    ref_max = x.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))
    ref_avg = x.reshape(2, 3, 3, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(nn.MaxPool2d(2)(t64(x)).numpy(), ref_max)
    np.testing.assert_allclose(nn.AvgPool2d(2)(t64(x)).numpy(), ref_avg, rtol=1e-12)
    y, idx = F.max_pool2d(t64(x), 2, return_indices=True)
    np.testing.assert_allclose(x.reshape(-1)[idx.numpy().reshape(-1)], ref_max.reshape(-1))


def test_im2col_col2im_are_transposes():
    x = rng.standard_normal((1, 2, 5, 5))
    cols = F.im2col(t64(x), 3, padding=1)
    assert cols.shape == (1, 18, 25)
    c = rng.standard_normal(cols.shape)
    back = F.col2im(t64(c), (5, 5), 3, padding=1)
    # <im2col(x), c> == <x, col2im(c)>
    assert float((cols.numpy() * c).sum()) == pytest.approx(float((x * back.numpy()).sum()), rel=1e-12)


def test_batch_norm_train_updates_running_stats_and_eval_uses_them():
    x = rng.standard_normal((8, 3, 2, 2)) * 2 + 1
    bn = nn.BatchNorm2d(3, momentum=0.1, dtype=fx.float64)
    y = bn(t64(x)).numpy()
    mu = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    ref = (x - mu[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)
    n = x.size / 3
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mu, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-12)
    bn.eval()
    assert not bn.training
    rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
    ye = bn(t64(x)).numpy()
    np.testing.assert_allclose(ye, (x - rm[None, :, None, None]) /
                               np.sqrt(rv[None, :, None, None] + 1e-5), rtol=1e-10)
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    assert len(bn.parameters()) == 2


def test_layer_norm_dropout_embedding():
    x = rng.standard_normal((4, 5))
    ln = nn.LayerNorm(5, dtype=fx.float64)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln(t64(x)).numpy(), ref, rtol=1e-10)
    y = F.dropout(t64(x), 0.25, True, seed=11).numpy()
    mask = F.dropout_mask((4, 5), 0.25, seed=11).numpy()
    np.testing.assert_allclose(y, np.where(mask, x / 0.75, 0.0), rtol=1e-12)
    d = nn.Dropout(0.5)
    d.eval()
    np.testing.assert_array_equal(d(t64(x)).numpy(), x)
    emb = nn.Embedding(10, 3, dtype=fx.float64)
    idx = fx.tensor(np.array([[1, 9], [0, 1]], dtype=np.int64))
    np.testing.assert_array_equal(emb(idx).numpy(), emb.weight.numpy()[idx.numpy()])


def test_losses_against_numpy():
    y = rng.standard_normal((6, 4))
    t = rng.standard_normal((6, 4))
    s = np.sign(rng.standard_normal((6, 4)))
    p = rng.uniform(0, 1, (6, 4))
    np.testing.assert_allclose(nn.MSELoss()(t64(y), t64(t)).item(), ((y - t) ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(nn.LogCoshLoss("sum")(t64(y), t64(t)).item(),
                               np.log(np.cosh(y - t)).sum(), rtol=1e-12)
    np.testing.assert_allclose(nn.HingeLoss("none")(t64(y), t64(s)).numpy(),
                               np.maximum(0, 1 - y * s), rtol=1e-12)
    np.testing.assert_allclose(nn.BCEWithLogitsLoss()(t64(y), t64(p)).item(),
                               np.mean(np.log1p(np.exp(y)) - y * p), rtol=1e-12)
    labels = np.array([0, 3, 1, 2, 2, 0])
    lse = np.log(np.exp(y).sum(1))
    np.testing.assert_allclose(
        nn.CrossEntropyLoss()(t64(y), fx.tensor(labels)).item(),
        np.mean(lse - y[np.arange(6), labels]), rtol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        F.hinge_loss(t64(y), t64(s), "avg")


def test_penalties_and_cells():
    a, b = rng.standard_normal((2, 3)), rng.standard_normal(4)
    assert F.l2_penalty([t64(a), t64(b)], 0.5).item() == pytest.approx(
        0.25 * ((a ** 2).sum() + (b ** 2).sum()), rel=1e-12)
    assert F.l1_penalty([t64(a), t64(b)], 0.5).item() == pytest.approx(
        0.5 * (np.abs(a).sum() + np.abs(b).sum()), rel=1e-12)
    x, h = rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
    cell = nn.RNNCell(3, 4, dtype=fx.float64)
    wi, wh, bi, bh = (p.numpy() for p in cell.parameters())
    np.testing.assert_allclose(cell(t64(x), t64(h)).numpy(),
                               np.tanh(x @ wi.T + bi + h @ wh.T + bh), rtol=1e-12)
    g = nn.GRUCell(3, 4, dtype=fx.float64)
    wi, wh, bi, bh = (p.numpy() for p in g.parameters())
    gi, gh = x @ wi.T + bi, h @ wh.T + bh
    sig = lambda v: 1 / (1 + np.exp(-v))
    r, z = sig(gi[:, :4] + gh[:, :4]), sig(gi[:, 4:8] + gh[:, 4:8])
    nn_ = np.tanh(gi[:, 8:] + r * gh[:, 8:])
    np.testing.assert_allclose(g(t64(x), t64(h)).numpy(), (1 - z) * nn_ + z * h, rtol=1e-12)


def sdpa_ref(q, k, v, causal, scale):
    s, t = q.shape[2], k.shape[2]
    z = scale * q @ np.swapaxes(k, 2, 3)
    if causal:
        keep = np.arange(t)[None, :] <= np.arange(s)[:, None] + (t - s)
        z = np.where(keep, z, -np.inf)
    m = z.max(axis=3, keepdims=True)
    e = np.exp(z - np.where(np.isfinite(m), m, 0))
    den = e.sum(axis=3, keepdims=True)
    p = np.divide(e, den, out=np.zeros_like(e), where=den > 0)  # rows that see no key: 0
    return p @ v


@pytest.mark.parametrize("s,t,causal,scale", [(5, 5, False, None), (5, 5, True, None),
                                              (3, 6, True, 0.7), (6, 3, True, None)])
def test_scaled_dot_product_attention(s, t, causal, scale):
    q, k, v = (rng.standard_normal(sh) for sh in [(2, 3, s, 4), (2, 3, t, 4), (2, 3, t, 5)])
    got = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), is_causal=causal, scale=scale)
    want = sdpa_ref(q, k, v, causal, 0.5 if scale is None else scale)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)
    assert fx.gradcheck(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal, scale),
                        [q, k, v], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(t64(q), t64(k[:, :, :, :3]), t64(v))
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(t64(q), t64(k), t64(v), scale=-1.0)


@pytest.mark.parametrize("fn,shapes", [
    (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [(1, 2, 5, 5), (3, 2, 3, 3), (3,)]),
    (lambda x: F.max_pool2d(x, 2), [(1, 2, 4, 4)]),
    (lambda x: F.avg_pool2d(x, 2, 1, 1), [(1, 1, 3, 3)]),
    (lambda x, g, b: F.layer_norm(x, 3, g, b), [(2, 3), (3,), (3,)]),
    (lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True), [(4, 3), (3,), (3,)]),
    (lambda x, w, b: F.linear(x, w, b).tanh(), [(2, 3), (4, 3), (4,)]),
    (lambda y, t: F.log_cosh_loss(y, t, "sum") + F.binary_cross_entropy_with_logits(y, t),
     [(3, 2), (3, 2)]),
], ids=["conv2d", "max_pool2d", "avg_pool2d", "layer_norm", "batch_norm", "linear", "losses"])
def test_layer_gradients_by_gradcheck(fn, shapes):
    xs = [rng.standard_normal(s) for s in shapes]
    assert fx.gradcheck(fn, xs, atol=1e-6, rtol=1e-5)


def test_initialisers_deterministic_and_bounded():
    a = nn.init.xavier_uniform((30, 20), seed=5, dtype=fx.float64).numpy()
    b = nn.init.xavier_uniform((30, 20), seed=5, dtype=fx.float64).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= math.sqrt(6 / 50) and np.abs(a).max() > 0.8 * math.sqrt(6 / 50)
    k = nn.init.kaiming_uniform((400, 100), seed=2).numpy()
    assert np.abs(k).max() <= math.sqrt(2) * math.sqrt(3 / 100) + 1e-6
    kn = nn.init.kaiming_normal((400, 100), mode="fan_out", seed=2, dtype=fx.float64).numpy()
    assert kn.std() == pytest.approx(math.sqrt(2) / math.sqrt(400), rel=0.05)
    xn = nn.init.xavier_normal((300, 200), seed=3, dtype=fx.float64).numpy()
    assert xn.std() == pytest.approx(math.sqrt(2 / 500), rel=0.05)
    w = fx.zeros(3, 4, requires_grad=True)
    nn.init.xavier_uniform_(w, seed=1)
    assert w.requires_grad and np.abs(w.numpy()).max() > 0
    with pytest.raises(ValueError, match="mode"):
        nn.init.kaiming_uniform((2, 2), mode="fan_avg")


def test_module_bookkeeping_and_state_dict_roundtrip():
    fx.manual_seed(3)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2))
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"]
    assert list(m.state_dict()) == names[:4] + ["2.running_mean", "2.running_var"] + names[4:]
    m.eval()
    assert all(not mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    fx.manual_seed(3)
    m2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2))
    np.testing.assert_array_equal(m2[0].weight.numpy(), m[0].weight.numpy())  # same seed
    m3 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2))
    assert not np.array_equal(m3[0].weight.numpy(), m[0].weight.numpy())
    m3.load_state_dict({k: v.numpy() for k, v in m.state_dict().items()})
    for (k, a), (_, b) in zip(m.state_dict().items(), m3.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    with pytest.raises(KeyError):
        m3.load_state_dict({"0.weight": m[0].weight})
    with pytest.raises(ValueError, match="shape"):
        m3.load_state_dict({**m.state_dict(), "0.bias": fx.zeros(3)})
