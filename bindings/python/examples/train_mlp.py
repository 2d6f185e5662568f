"""Trains a small MLP on a synthetic two-spirals problem with fluxion from Python.

    python bindings/python/examples/train_mlp.py [--device cuda] [--steps 300]

Plain SGD with momentum on the .grad of each parameter; the data comes from numpy without a copy
(fluxion.asarray). Prints the loss and the final accuracy.
"""
import argparse

import numpy as np

import fluxion as fx


def spirals(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.05, 1, n)) * 3 * np.pi
    cls = rng.integers(0, 2, n)
    r = t / (3 * np.pi)
    ang = t + np.pi * cls
    x = np.stack([r * np.cos(ang), r * np.sin(ang)], 1) + rng.normal(0, 0.02, (n, 2))
    return x.astype(np.float32), cls.astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args(argv)

    xs, ys = spirals(512)
    X = fx.asarray(xs).to(args.device)  # zero-copy on the CPU
    Y = fx.asarray(ys).to(args.device).reshape(-1, 1)

    def param(*shape, seed, scale):
        return fx.randn(*shape, std=scale, seed=seed, device=args.device, requires_grad=True)

    H = 64
    params = [param(2, H, seed=1, scale=1.0), fx.zeros(H, device=args.device, requires_grad=True),
              param(H, H, seed=2, scale=(1 / H) ** 0.5), fx.zeros(H, device=args.device, requires_grad=True),
              param(H, 1, seed=3, scale=(1 / H) ** 0.5), fx.zeros(1, device=args.device, requires_grad=True)]
    # Leaves holding data, updated in place with assign (no graph kept between steps).
    velocity = [fx.tensor(np.zeros(p.shape, np.float32), device=args.device) for p in params]

    def model(x):
        W1, b1, W2, b2, W3, b3 = params
        h = fx.tanh(x @ W1 + b1)
        h = fx.tanh(h @ W2 + b2)
        return h @ W3 + b3  # logits

    def loss_fn(logits, y):
        # binary cross entropy with logits: softplus(z) - y z
        return (fx.softplus(logits) - y * logits).mean()

    for step in range(args.steps):
        loss = loss_fn(model(X), Y)
        loss.backward()
        with fx.no_grad():
            for i, p in enumerate(params):
                velocity[i].assign(velocity[i] * 0.9 + p.grad)
                p.assign(p - velocity[i] * args.lr)
                p.zero_grad()
        if step == 0:
            first = loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")

    with fx.no_grad():
        pred = (model(X) > 0).astype(fx.float32)
        acc = (pred == Y).astype(fx.float32).mean().item()
    print(f"accuracy {acc:.3f}  (live tensors {fx.live_tensors()})")
    return first, loss.item(), acc


if __name__ == "__main__":
    main()
