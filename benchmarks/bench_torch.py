#!/usr/bin/env python3
"""bench_torch.py — the issue-6 comparison: runs the fluxion suite (flx_bench_suite) and the same
workloads in PyTorch on the same GPU in the same job, and prints one markdown table:
workload, fluxion, PyTorch, ratio (PyTorch time / fluxion time: > 1 means fluxion is faster;
for memory-bound kernels the fractions of copy bandwidth are shown too).

Targets (issue 6): elementwise >= 0.93 of copy bandwidth; softmax >= 0.85; MLP step at batch
128 >= 2x PyTorch eager and >= 1.0x torch.compile; batch 8192 >= 1.0x eager.

PyTorch timing: CUDA events around many back-to-back repetitions after warm-up, median of
trials, strict f32 (TF32 off; cuDNN autotuning left at PyTorch's default, off). Workloads:
  - copy, add, mul, gelu on 2^28 f32; softmax fwd/VJP/JVP; matmul 4096^3; det/inv/solve.
  - fused bias-gelu-res: y = gelu(x + b) * s + r, x and r (2^14, 2^12), b and s (2^12): eager
    (four kernels) and torch.compile (default mode; one generated kernel). Its VJP wrt x for a
    cotangent g: eager = torch.autograd.grad on a retained graph (reads the saved x + b), compiled
    = torch.compile of the VJP formula gelu_backward(g * s, x + b) (checked against autograd once).
    Minimal traffic, as in bench_suite.c: 3N floats each (x, r in, y out / x, g in, gx out).
  - train steps, each eager (zero_grad, forward, backward, optimiser step), with
    torch.compile(mode="reduce-overhead") on the model, and as a whole-step CUDA graph:
    MLP 784-1024-1024-10, SGD lr 1e-3, batch 128 and 8192; the Fashion-MNIST CNN of
    examples/fashion_mnist.c (2 x [conv 3x3 pad 1 + BatchNorm2d + ReLU + MaxPool2d 2] with 32 and
    64 channels, Linear 3136-128, ReLU, Linear 128-10), SGD momentum 0.9 lr 1e-2, batch 128 and
    1024 (torch.compile at batch 128 only: each compile costs tens of seconds).

Usage: bench_torch.py [--suite PATH] [--quick] [--only SUBSTRING] [--no-compile] [--out FILE.md]
  --only runs only the workloads whose name contains SUBSTRING (on both sides; the copy reference
  always runs); --no-compile skips every torch.compile variant.
Skips cleanly (exit 0, with a message) without torch, without a GPU, or without the suite. On
SIGTERM (a time limit) it prints, and writes, the table of what was measured so far, marked
partial, and exits 1.
"""
import argparse
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HEADER = ("targets: elementwise >= 0.93 of copy; softmax >= 0.85 of copy; MLP b128 plan+graph "
          ">= 2x torch eager and >= 1x torch.compile; MLP b8192 >= 1.0x torch eager; fused "
          "bias-gelu-res and CNN steps: no target (reported)")
COPY = "copy d2d 2^28 f32"
# the ratio columns compare a fluxion row with these PyTorch variants of the same workload
VARIANTS = (" torch.compile", " torch cuda graph")


class Stopped(Exception):
    """Raised by the SIGTERM handler: print what was measured so far."""


def _on_term(signum, frame):  # noqa: ARG001
    raise Stopped(f"signal {signum}")


def find_suite(explicit):
    if explicit:
        return explicit if os.path.exists(explicit) else None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for d in ("build-gpu-check", "build-cuda", "build"):
        p = os.path.join(root, d, "benchmarks", "flx_bench_suite")
        if os.path.exists(p):
            return p
    return shutil.which("flx_bench_suite")


def run_suite(path, quick, only):
    cmd = [path] + (["--quick"] if quick else []) + (["--only", only] if only else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    sys.stderr.write(out.stdout)
    res = {}
    for line in out.stdout.splitlines():
        f = line.split("\t")
        if f[0] == "SKIP":
            return None, " ".join(f[1:])
        if f[0] == "RESULT" and len(f) >= 4:
            try:
                us = float(f[2])
            except ValueError:
                us = float("nan")
            res[f[1]] = (us, f[3])
    return res, None


def timer(torch, fn, reps, trials, rotate=1):
    for i in range(3):
        fn(i % rotate)
    torch.cuda.synchronize()
    samples = []
    for _ in range(trials):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(reps):
            fn(i % rotate)
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) * 1e3 / reps)  # us
    return statistics.median(samples)


class Bench:
    """Runs the selected PyTorch workloads into self.res (name -> median us), logging each."""

    def __init__(self, torch, quick, only, compile_):
        self.torch, self.quick, self.only, self.compile = torch, quick, only, compile_
        self.res = {}

    def want(self, *names):
        return any(self.only is None or self.only in n for n in names)

    def run(self, name, fn, reps, trials, rotate=1):
        if not self.want(name):
            return
        us = timer(self.torch, fn, reps, trials, rotate)
        self.res[name] = us
        print(f"torch: {name}: {us:.1f} us", file=sys.stderr, flush=True)

    def attempt(self, what, fn):
        """Runs fn (a variant that may not work on every PyTorch), reporting a failure."""
        try:
            fn()
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{what} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def torch_results(bench):
    torch, quick = bench.torch, bench.quick
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda"
    r, tr = (10, 3) if quick else (20, 5)
    n = 1 << 28
    a = torch.randn(n, device=dev)
    b = torch.randn(n, device=dev)
    out = torch.empty_like(a)
    bench.res[COPY] = timer(torch, lambda i: out.copy_(a), r, tr)  # the reference always runs
    bench.run("add 2^28 f32", lambda i: torch.add(a, b), r, tr)
    bench.run("mul 2^28 f32", lambda i: torch.mul(a, b), r, tr)
    bench.run("gelu 2^28 f32", lambda i: torch.nn.functional.gelu(a), r, tr)
    del a, b, out
    fused_results(bench, 1 << 14, 1 << 12, r, tr)
    for rows, cols in ((32768, 1024), (4096, 32768)):
        tag = f"{rows}x{cols}"
        if not bench.want(*(f"softmax {m} {tag}" for m in ("fwd", "vjp", "jvp"))):
            continue
        x = torch.randn(rows, cols, device=dev) * 3
        g = torch.randn(rows, cols, device=dev)
        y = torch.softmax(x, -1)
        bench.run(f"softmax fwd {tag}", lambda i: torch.softmax(x, -1), r, tr)
        bench.run(f"softmax vjp {tag}",
                  lambda i: torch._softmax_backward_data(g, y, -1, torch.float32), r, tr)
        bench.run(f"softmax jvp {tag}",
                  lambda i: torch.func.jvp(lambda z: torch.softmax(z, -1), (x,), (g,)), r, tr)
        del x, g, y
    if bench.want("matmul 4096^3 f32"):
        m = torch.randn(4096, 4096, device=dev)
        bench.run("matmul 4096^3 f32", lambda i: m @ m, 5 if quick else 10, tr)
        del m
    L = torch.linalg
    lu_names = [f"{op} 100000x8x8" for op in ("det", "inv", "solve", "det fwd+bwd", "inv fwd+bwd")]
    if bench.want(*lu_names):
        eye = torch.eye(8, device=dev) * 8
        A = [torch.randn(100000, 8, 8, device=dev) + eye for _ in range(4)]
        B = [torch.randn(100000, 8, 1, device=dev) for _ in range(4)]
        bench.run("det 100000x8x8", lambda i: L.det(A[i]), r, tr, 4)
        bench.run("inv 100000x8x8", lambda i: L.inv(A[i]), r, tr, 4)
        bench.run("solve 100000x8x8", lambda i: L.solve(A[i], B[i]), r, tr, 4)
        Ag = [t.clone().requires_grad_(True) for t in A]

        def det_fb(i):
            (gA,) = torch.autograd.grad(L.det(Ag[i]).sum(), Ag[i])
            return gA

        def inv_fb(i):
            (gA,) = torch.autograd.grad(L.inv(Ag[i]).sum(), Ag[i])
            return gA
        bench.run("det fwd+bwd 100000x8x8", det_fb, r, tr, 4)
        bench.run("inv fwd+bwd 100000x8x8", inv_fb, r, tr, 4)
        del A, B, Ag
    if bench.want("det 4096^2", "inv 4096^2", "solve 4096^2"):
        big = torch.randn(4096, 4096, device=dev) + torch.eye(4096, device=dev) * 4096
        rhs = torch.randn(4096, 1, device=dev)
        bench.run("det 4096^2", lambda i: L.det(big), 2, 3)
        bench.run("inv 4096^2", lambda i: L.inv(big), 2, 3)
        bench.run("solve 4096^2", lambda i: L.solve(big, rhs), 2, 3)
        del big, rhs
    for batch in (128, 8192):
        reps = (50 if quick else 100) if batch == 128 else (10 if quick else 20)
        train_step_results(bench, "mlp", batch, mlp_model, 1e-3, 0.0, reps, tr, True)
    for batch in (128, 1024):
        reps = (50 if quick else 100) if batch == 128 else (10 if quick else 20)
        train_step_results(bench, "cnn", batch, cnn_model, 1e-2, 0.9, reps, tr, batch == 128)
    return bench.res


def fused_results(bench, rows, cols, r, tr):
    """y = gelu(x + b) * s + r and its VJP wrt x (names as in bench_suite.c)."""
    torch = bench.torch
    F = torch.nn.functional
    dev = "cuda"
    lg = (rows * cols).bit_length() - 1
    fwd, vjp = f"fused bias-gelu-res fwd 2^{lg} f32", f"fused bias-gelu-res vjp 2^{lg} f32"
    if not bench.want(fwd, vjp):
        return
    x = torch.randn(rows, cols, device=dev)
    b = torch.randn(cols, device=dev)
    s = 1 + 0.5 * torch.randn(cols, device=dev)
    res = torch.randn(rows, cols, device=dev)
    g = torch.randn(rows, cols, device=dev)

    def chain(x):
        return F.gelu(x + b) * s + res

    def vjp_formula(x, g):  # d<g, chain(x)>/dx = gelu'(x + b) * s * g
        return torch.ops.aten.gelu_backward(g * s, x + b)
    bench.run(fwd, lambda i: chain(x), r, tr)
    xl = x.clone().requires_grad_(True)
    if bench.want(vjp):
        y = chain(xl)
        bench.run(vjp, lambda i: torch.autograd.grad(y, xl, g, retain_graph=True), r, tr)
        del y
    if not bench.compile:
        return
    if bench.want(fwd):
        cchain = torch.compile(chain)
        bench.attempt("torch.compile (fused fwd)",
                      lambda: bench.run(fwd + " torch.compile", lambda i: cchain(x), r, tr))
    if bench.want(vjp):
        cvjp = torch.compile(vjp_formula)

        def checked():
            (ref,) = torch.autograd.grad(chain(xl), xl, g)
            got = cvjp(x, g)
            err = (ref - got).abs().max().item()
            if not err <= 1e-4 * (1 + ref.abs().max().item()):
                raise RuntimeError(f"compiled VJP formula differs from autograd by {err}")
            del ref, got
            bench.run(vjp + " torch.compile", lambda i: cvjp(x, g), r, tr)
        bench.attempt("torch.compile (fused vjp)", checked)


def mlp_model(nn):
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


def cnn_model(nn):
    """examples/fashion_mnist.c --model cnn; input (B, 784) as there."""
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                         nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def train_step_results(bench, label, batch, build, lr, momentum, reps, trials, with_compile):
    """A train step (build(nn) the model, SGD lr/momentum, cross-entropy) eager, with
    torch.compile(mode="reduce-overhead") on the model, and as a whole-step CUDA graph, under
    the names "<label> step b<batch> eager / torch.compile / torch cuda graph"."""
    torch = bench.torch
    nn = torch.nn
    dev = "cuda"
    base = f"{label} step b{batch}"
    names = [f"{base} eager"] + [base + v for v in VARIANTS]
    if not bench.want(*names):
        return
    xs = [torch.randn(batch, 784, device=dev) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), device=dev) for _ in range(4)]

    def make():
        torch.manual_seed(0)
        model = build(nn).to(dev).train()
        return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    model, opt = make()

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(xs[i]), ys[i])
        loss.backward()
        opt.step()
    bench.run(names[0], step, reps, trials, 4)
    if with_compile and bench.compile and bench.want(names[1]):
        def compiled():
            cmodel, copt = make()
            cm = torch.compile(cmodel, mode="reduce-overhead")

            def cstep(i):
                copt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(cm(xs[i]), ys[i])
                loss.backward()
                copt.step()
            bench.run(names[1], cstep, reps, trials, 4)
        bench.attempt(f"torch.compile ({base})", compiled)
    if bench.want(names[2]):
        def graphed():
            gmodel, gopt = make()
            sx, sy = xs[0].clone(), ys[0].clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    gopt.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(gmodel(sx), sy).backward()
                    gopt.step()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            gopt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                nn.functional.cross_entropy(gmodel(sx), sy).backward()
                gopt.step()

            def gstep(i):
                sx.copy_(xs[i])
                sy.copy_(ys[i])
                graph.replay()
            bench.run(names[2], gstep, reps, trials, 4)
        bench.attempt(f"torch CUDA graph step ({base})", graphed)


def build_rows(flx, pt):
    """Table rows (workload, fluxion, PyTorch, ratio) from the two result dicts."""
    copy_pt = pt.get(COPY)
    copy_flx = flx.get(COPY, (float("nan"),))[0]

    def pt_frac(frac, us, p):
        # same bytes moved: the fraction scales with speed, relative to each one's copy time
        if not copy_pt or frac == "-" or not p:
            return ""
        return f" ({float(frac) * (us / p) * (copy_pt / copy_flx):.3f} of copy)"

    def ratio(p, us):
        return f"{p / us:.2f}x" if p and us == us and us > 0 else "-"

    rows = []
    for name, (us, frac) in flx.items():
        ref = name
        if name.endswith(" plan") or name.endswith(" plan+graph"):
            ref = name.rsplit(" ", 1)[0] + " eager"
        p = pt.get(ref)
        rows.append((name, f"{us:.1f} us" + (f" ({frac} of copy)" if frac != "-" else ""),
                     (f"{p:.1f} us ({ref})" if p else "-") + (pt_frac(frac, us, p) if name in pt else ""),
                     ratio(p, us)))
    # the best fluxion variant against each faster PyTorch variant of the same workload
    for key, p in pt.items():
        for v in VARIANTS:
            if not key.endswith(v):
                continue
            base = key[: -len(v)]
            fname = base + " plan+graph" if base + " plan+graph" in flx else base
            if fname not in flx:
                continue
            us, frac = flx[fname]
            rows.append((f"{fname} vs{v}",
                         f"{us:.1f} us" + (f" ({frac} of copy)" if frac != "-" else ""),
                         f"{p:.1f} us" + pt_frac(frac, us, p), ratio(p, us)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", help="path of flx_bench_suite")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="only the workloads whose name contains this substring")
    ap.add_argument("--no-compile", action="store_true", help="skip every torch.compile variant")
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("bench_torch.py: skipped: PyTorch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("bench_torch.py: skipped: PyTorch sees no CUDA GPU")
        return 0
    suite = find_suite(args.suite)
    if not suite:
        print("bench_torch.py: skipped: flx_bench_suite not found (build with -DFLX_CUDA=ON, or "
              "pass --suite)")
        return 0
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, _on_term)
    bench = Bench(torch, args.quick, args.only, not args.no_compile)
    flx, partial = {}, None
    try:
        flx, why = run_suite(suite, args.quick, args.only)
        if flx is None:
            print(f"bench_torch.py: skipped: the fluxion suite skipped: {why}")
            return 0
        torch_results(bench)
    except Stopped as e:
        partial = f"stopped by {e} after {time.monotonic() - t0:.0f} s: later workloads are missing"
        flx = flx or {}
    rows = build_rows(flx, bench.res)
    gpu = torch.cuda.get_device_name(0)
    lines = [f"# fluxion vs PyTorch {torch.__version__} on {gpu}", "",
             f"- date: {datetime.datetime.utcnow().isoformat(timespec='seconds')}Z",
             f"- command: {' '.join(sys.argv)} (suite: {suite})",
             f"- {HEADER}",
             "- ratio = PyTorch time / fluxion time (> 1: fluxion faster); strict f32, TF32 off"]
    if partial:
        lines.append(f"- PARTIAL: {partial}")
    lines += ["", "| workload | fluxion | PyTorch | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 1 if partial else 0


if __name__ == "__main__":
    sys.exit(main())
