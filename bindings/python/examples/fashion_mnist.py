#!/usr/bin/env python3
"""Fashion-MNIST with fluxion from Python: the MLP and CNN of examples/fashion_mnist.c written
with fluxion.nn, fluxion.optim and fluxion.compile.

    python bindings/python/examples/fashion_mnist.py [--model mlp|cnn] [--epochs N] [--batch N]
        [--lr X] [--train-limit N] [--test-limit N] [--device cpu|cuda] [--seed N]
        [--checkpoint PATH] [--min-accuracy X]

Data: the gzipped IDX files of Debian's dataset-fashion-mnist package (/usr/share/datasets/
fashion-mnist, or FLX_FASHION_MNIST_DIR), normalised like the C example. Models: mlp
(784-256-128-10, ReLU) or cnn (2 x [conv 3x3 + batch norm + ReLU + max-pool 2] + dense 128 +
10). Adam with a cosine decay of the learning rate over all steps (set on the device: the
compiled step is not recompiled), cross-entropy. The training set is uploaded once and each
batch gathered on the device; each training step (forward, backward, Adam) is one C plan replay
(fluxion.compile; one CUDA graph launch on a GPU); the last partial batch of an epoch is dropped
so the plan keeps one shape. Prints per-epoch train loss, test accuracy and time per step, and saves model
and optimiser state with fluxion.save when --checkpoint is given.
Exit status 3 when the final accuracy is below --min-accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import struct
import sys
import time

import numpy as np

import fluxion as fx
from fluxion import nn, optim
from fluxion.nn import functional as F

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path: str, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    m, n = struct.unpack(">II", data[:8])
    if m != magic:
        raise ValueError(f"{path}: bad IDX magic 0x{m:08x} (expected 0x{magic:08x})")
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        arr = np.frombuffer(data, np.uint8, n * rows * cols, 16).reshape(n, rows * cols)
    else:
        arr = np.frombuffer(data, np.uint8, n, 8)
    return arr


def load_split(d: str, prefix: str, limit: int):
    x = read_idx(os.path.join(d, f"{prefix}-images-idx3-ubyte.gz"), 0x803)
    y = read_idx(os.path.join(d, f"{prefix}-labels-idx1-ubyte.gz"), 0x801)
    if limit > 0:
        x, y = x[:limit], y[:limit]
    x = ((x.astype(np.float32) / 255.0 - 0.2860) / 0.3530).astype(np.float32)
    return x, y.astype(np.int64)


def make_model(kind: str, device) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(784, 256, device=device), nn.ReLU(),
                             nn.Linear(256, 128, device=device), nn.ReLU(),
                             nn.Linear(128, 10, device=device))
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, device=device), nn.BatchNorm2d(32, device=device),
        nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, device=device), nn.BatchNorm2d(64, device=device),
        nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 49, 128, device=device), nn.ReLU(),
        nn.Linear(128, 10, device=device))


def make_train_step(model: nn.Module, opt: optim.Optimizer, device=None) -> fx.Compiled:
    """One training step (forward, cross-entropy, backward, optimiser step) compiled into a plan;
    benchmarks/bench_ops.py times this same step."""
    @fx.compile(device=device)
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return train_step


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, shape, device, batch: int = 1000):
    model.eval()
    correct, loss_sum = 0, 0.0
    with fx.no_grad():
        for b0 in range(0, len(x), batch):
            xb = fx.tensor(x[b0:b0 + batch].reshape((-1,) + shape), device=device)
            yb = fx.tensor(y[b0:b0 + batch], device=device)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, "sum").item()
            correct += int((fx.argmax(logits, -1) == yb).astype(fx.int64).sum().item())
    model.train()
    return loss_sum / len(x), correct / len(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fashion-MNIST with fluxion.nn/optim/compile")
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--epochs", type=int, default=None, help="default 10 (mlp), 1 (cnn)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-limit", type=int, default=-1)
    ap.add_argument("--test-limit", type=int, default=-1)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when usable)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", default=os.environ.get("FLX_FASHION_MNIST_DIR", DEFAULT_DIR))
    ap.add_argument("--checkpoint", default=None, help="save model + optimiser state here")
    ap.add_argument("--min-accuracy", type=float, default=-1)
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if fx.has_cuda() and fx.cuda_device_count() > 0 else "cpu")
    epochs = a.epochs if a.epochs is not None else (10 if a.model == "mlp" else 1)
    if not os.path.isdir(a.data):
        print(f"fashion_mnist: no dataset at {a.data} (install dataset-fashion-mnist or set "
              "FLX_FASHION_MNIST_DIR)", file=sys.stderr)
        return 77
    xtr, ytr = load_split(a.data, "train", a.train_limit)
    xte, yte = load_split(a.data, "t10k", a.test_limit)
    shape = (784,) if a.model == "mlp" else (1, 28, 28)
    if a.batch > len(xtr):
        a.batch = len(xtr)

    fx.manual_seed(a.seed * 1000)
    model = make_model(a.model, device)
    opt = optim.Adam(model.parameters(), lr=a.lr)
    steps = len(xtr) // a.batch  # whole batches only: one plan shape
    total = epochs * steps
    sched = optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    train_step = make_train_step(model, opt, device)
    print(f"fashion_mnist: {a.model} on {device}, {len(xtr)} train / {len(xte)} test images, "
          f"{epochs} epochs x {steps} steps of {a.batch}, Adam lr {a.lr} (cosine)")
    # The training set is uploaded once; each step gathers its batch on the device
    # (index_select with a per-epoch permutation), as the C example does.
    x_all = fx.tensor(xtr.reshape((-1,) + shape), device=device)
    y_all = fx.tensor(ytr, device=device)
    rng = np.random.default_rng(a.seed)
    acc = 0.0
    for epoch in range(epochs):
        perm = fx.tensor(rng.permutation(len(xtr)), device=device)
        t0 = time.perf_counter()
        losses = []
        for st in range(steps):
            idx = perm[st * a.batch:(st + 1) * a.batch]
            losses.append(train_step(fx.index_select(x_all, 0, idx), fx.index_select(y_all, 0, idx)))
            sched.step()
        fx.eval(losses)
        loss_sum = float(sum(l.item() for l in losses))
        dt = time.perf_counter() - t0
        test_loss, acc = evaluate(model, xte, yte, shape, device)
        print(f"epoch {epoch + 1}: train loss {loss_sum / steps:.4f}, test loss {test_loss:.4f}, "
              f"test accuracy {acc:.4f}, {dt:.1f} s ({1e3 * dt / steps:.2f} ms/step)", flush=True)
    print(f"fashion_mnist: compiled {train_step.compiles} time(s); plan {train_step.info()}")
    if a.checkpoint:
        fx.save(a.checkpoint, {**{"model." + k: v for k, v in model.state_dict().items()},
                               **{"optim." + k: v for k, v in opt.state_dict().items()}},
                {"epochs": str(epochs), "test_accuracy": f"{acc:.4f}", "model": a.model})
        print(f"fashion_mnist: saved {a.checkpoint}")
    if a.min_accuracy >= 0 and acc < a.min_accuracy:
        print(f"fashion_mnist: accuracy {acc:.4f} below {a.min_accuracy}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
