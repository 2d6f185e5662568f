#!/usr/bin/env python3
"""Per-op cost from Python on small tensors: fluxion (C extension, and the ctypes path in a
child process with FLUXION_NO_EXTENSION=1) side by side with numpy and PyTorch CPU eager (when
installed). fluxion ops are lazy: the time is that of recording a graph node (and releasing it),
which is what a Python training loop pays per op.

    python bindings/python/benchmarks/bench_ops.py [--n 16] [--number 100000] [--cpu-time]

--cpu-time times with the measuring thread's CPU time (time.thread_time) instead of the wall
clock: on a shared, loaded machine the wall clock mostly measures waiting for a core, while every
column here runs on the calling thread alone (torch with one thread).

The fluxion columns include the C library's own work per op (building and freeing a graph
node, about 1 to 1.5 us on a loaded 2-core machine for add): the C extension adds little on top
of it, the ctypes path 2 to 4 us.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import timeit

CASES = [("a + b", "add"), ("a * 2.0", "mul scalar"), ("exp(a)", "exp"), ("a @ m", "matmul")]


def measure(lib: str, n: int, number: int, cpu_time: bool = False) -> dict:
    import numpy as np

    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    mm = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    if lib == "fluxion":
        import fluxion as fx

        a, b, m, exp = fx.tensor(x), fx.tensor(x), fx.tensor(mm), fx.exp
        a.eval(), b.eval(), m.eval()
    elif lib == "numpy":
        a, b, m, exp = x, x.copy(), mm, np.exp
    else:
        import torch

        torch.set_num_threads(1)
        a, b, m, exp = torch.from_numpy(x), torch.from_numpy(x.copy()), torch.from_numpy(mm), torch.exp
    g = {"a": a, "b": b, "m": m, "exp": exp}
    out = {}
    for stmt, name in CASES:
        t = min(timeit.repeat(stmt, globals=g, number=number, repeat=5,
                              timer=time.thread_time if cpu_time else time.perf_counter)) / number
        out[name] = t * 1e6
    if lib == "fluxion":
        import fluxion as fx

        out["_fast"] = fx._core._fast is not None
    return out


def compiled_step(batch: int = 128, reps: int = 10) -> dict:
    """The compiled MLP training step of examples/fashion_mnist.py (784-256-128-10, Adam) called
    from Python, against the same plan replayed by one direct flx_plan_run call: the difference
    is what the binding adds per step (signature check, binding the inputs, wrapping the
    outputs)."""
    import time
    from ctypes import c_void_p

    import numpy as np

    import fluxion as fx
    from fluxion import _core, optim

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
    from fashion_mnist import make_model, make_train_step

    rng = np.random.default_rng(0)
    x = fx.tensor(rng.standard_normal((batch, 784)).astype(np.float32))
    y = fx.tensor(rng.integers(0, 10, batch))
    model = make_model("mlp", None)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    step = make_train_step(model, opt)
    step(x, y).item()
    plan = step._plan.ptr
    arr = (c_void_p * 2)(x._ptr, y._ptr)

    def once(f):
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        fx.synchronize()
        return (time.perf_counter() - t0) / reps * 1e3

    py, raw = float("inf"), float("inf")
    for _ in range(7):  # interleaved, best of each: a shared machine's load hits both alike
        py = min(py, once(lambda: step(x, y)))
        raw = min(raw, once(lambda: _core._L.flx_plan_run(plan, 2, arr)))
    return {"python": py, "plan_run": raw}


def child(lib: str, n: int, number: int, no_ext: bool = False, cpu_time: bool = False) -> dict:
    env = dict(os.environ)
    if no_ext:
        env["FLUXION_NO_EXTENSION"] = "1"
    r = subprocess.run([sys.executable, __file__, "--child", lib, "--n", str(n), "--number",
                        str(number)] + (["--cpu-time"] if cpu_time else []), env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="elements per vector (matrices n x n)")
    ap.add_argument("--number", type=int, default=100000)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the thread's CPU time instead of the wall clock")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.n, a.number, a.cpu_time)))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cols = [("fluxion (C ext)", child("fluxion", a.n, a.number, cpu_time=a.cpu_time)),
            ("fluxion (ctypes)", child("fluxion", a.n, a.number, no_ext=True, cpu_time=a.cpu_time)),
            ("numpy", child("numpy", a.n, a.number, cpu_time=a.cpu_time))]
    try:
        import torch  # noqa: F401

        cols.append(("torch CPU", child("torch", a.n, a.number, cpu_time=a.cpu_time)))
    except ImportError:
        cols.append(("torch CPU", {"error": "not installed"}))
    clock = "thread CPU time" if a.cpu_time else "wall clock"
    print(f"per-op time in microseconds, float32, n = {a.n} (best of 5 x {a.number}, {clock}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'op':<12}" + "".join(f"{name:>18}" for name, _ in cols))
    for _, op in CASES:
        row = f"{op:<12}"
        for _, res in cols:
            v = res.get(op)
            row += f"{v:>18.3f}" if isinstance(v, float) else f"{res.get('error', '-')[:17]:>18}"
        print(row)
    if not cols[0][1].get("_fast", False):
        print("note: fluxion._fast is not built here; both fluxion columns use ctypes")
    st = compiled_step()
    print(f"compiled MLP train step (batch 128): {st['python']:.3f} ms from Python, "
          f"{st['plan_run']:.3f} ms as one flx_plan_run call "
          f"({100 * (st['python'] / st['plan_run'] - 1):+.1f} %)")


if __name__ == "__main__":
    main()
