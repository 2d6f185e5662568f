#!/usr/bin/env python3
"""bench_torch.py — the issue-6 comparison: runs the fluxion suite (flx_bench_suite) and the same
workloads in PyTorch on the same GPU in the same job, and prints one markdown table:
workload, fluxion, PyTorch, ratio (PyTorch time / fluxion time: > 1 means fluxion is faster;
for memory-bound kernels the fractions of copy bandwidth are shown too).

Targets (issue 6): elementwise >= 0.93 of copy bandwidth; softmax >= 0.85; MLP step at batch
128 >= 2x PyTorch eager and >= 1.0x torch.compile; batch 8192 >= 1.0x eager.

PyTorch timing: CUDA events around many back-to-back repetitions after warm-up, median of
trials, strict f32 (TF32 off). The MLP step runs eagerly (zero_grad, forward, backward, SGD
step), with torch.compile(mode="reduce-overhead") on the model, and as a whole-step CUDA graph.

Usage: bench_torch.py [--suite PATH] [--quick] [--out FILE.md]
Skips cleanly (exit 0, with a message) without torch, without a GPU, or without the suite.
"""
import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys

HEADER = ("targets: elementwise >= 0.93 of copy; softmax >= 0.85 of copy; MLP b128 plan+graph "
          ">= 2x torch eager and >= 1x torch.compile; MLP b8192 >= 1.0x torch eager")


def find_suite(explicit):
    if explicit:
        return explicit if os.path.exists(explicit) else None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for d in ("build-gpu-check", "build-cuda", "build"):
        p = os.path.join(root, d, "benchmarks", "flx_bench_suite")
        if os.path.exists(p):
            return p
    return shutil.which("flx_bench_suite")


def run_suite(path, quick):
    cmd = [path] + (["--quick"] if quick else [])
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


def torch_results(torch, quick):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda"
    r, tr = (10, 3) if quick else (20, 5)
    res = {}
    n = 1 << 28
    a = torch.randn(n, device=dev)
    b = torch.randn(n, device=dev)
    out = torch.empty_like(a)
    res["copy d2d 2^28 f32"] = timer(torch, lambda i: out.copy_(a), r, tr)
    res["add 2^28 f32"] = timer(torch, lambda i: torch.add(a, b), r, tr)
    res["mul 2^28 f32"] = timer(torch, lambda i: torch.mul(a, b), r, tr)
    res["gelu 2^28 f32"] = timer(torch, lambda i: torch.nn.functional.gelu(a), r, tr)
    del a, b, out
    for rows, cols in ((32768, 1024), (4096, 32768)):
        x = torch.randn(rows, cols, device=dev) * 3
        g = torch.randn(rows, cols, device=dev)
        y = torch.softmax(x, -1)
        tag = f"{rows}x{cols}"
        res[f"softmax fwd {tag}"] = timer(torch, lambda i: torch.softmax(x, -1), r, tr)
        res[f"softmax vjp {tag}"] = timer(
            torch, lambda i: torch._softmax_backward_data(g, y, -1, torch.float32), r, tr)
        res[f"softmax jvp {tag}"] = timer(
            torch, lambda i: torch.func.jvp(lambda z: torch.softmax(z, -1), (x,), (g,)), r, tr)
        del x, g, y
    m = torch.randn(4096, 4096, device=dev)
    res["matmul 4096^3 f32"] = timer(torch, lambda i: m @ m, 5 if quick else 10, tr)
    del m
    eye = torch.eye(8, device=dev) * 8
    A = [torch.randn(100000, 8, 8, device=dev) + eye for _ in range(4)]
    B = [torch.randn(100000, 8, 1, device=dev) for _ in range(4)]
    L = torch.linalg
    res["det 100000x8x8"] = timer(torch, lambda i: L.det(A[i]), r, tr, 4)
    res["inv 100000x8x8"] = timer(torch, lambda i: L.inv(A[i]), r, tr, 4)
    res["solve 100000x8x8"] = timer(torch, lambda i: L.solve(A[i], B[i]), r, tr, 4)
    Ag = [t.clone().requires_grad_(True) for t in A]

    def det_fb(i):
        (gA,) = torch.autograd.grad(L.det(Ag[i]).sum(), Ag[i])
        return gA

    def inv_fb(i):
        (gA,) = torch.autograd.grad(L.inv(Ag[i]).sum(), Ag[i])
        return gA
    res["det fwd+bwd 100000x8x8"] = timer(torch, det_fb, r, tr, 4)
    res["inv fwd+bwd 100000x8x8"] = timer(torch, inv_fb, r, tr, 4)
    del A, B, Ag
    big = torch.randn(4096, 4096, device=dev) + torch.eye(4096, device=dev) * 4096
    rhs = torch.randn(4096, 1, device=dev)
    res["det 4096^2"] = timer(torch, lambda i: L.det(big), 2, 3)
    res["inv 4096^2"] = timer(torch, lambda i: L.inv(big), 2, 3)
    res["solve 4096^2"] = timer(torch, lambda i: L.solve(big, rhs), 2, 3)
    del big, rhs
    for batch in (128, 8192):
        reps = (50 if quick else 100) if batch == 128 else (10 if quick else 20)
        res.update(mlp_results(torch, batch, reps, tr))
    return res


def mlp_results(torch, batch, reps, trials):
    nn = torch.nn
    dev = "cuda"
    out = {}
    xs = [torch.rand(batch, 784, device=dev) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), device=dev) for _ in range(4)]

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                              nn.Linear(1024, 10)).to(dev)
        return model, torch.optim.SGD(model.parameters(), lr=1e-3)

    model, opt = make()

    def step(i, model=model, opt=opt):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(xs[i]), ys[i])
        loss.backward()
        opt.step()
    out[f"mlp step b{batch} eager"] = timer(torch, step, reps, trials, 4)
    try:
        cmodel, copt = make()
        cm = torch.compile(cmodel, mode="reduce-overhead")

        def cstep(i):
            copt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(cm(xs[i]), ys[i])
            loss.backward()
            copt.step()
        out[f"mlp step b{batch} torch.compile"] = timer(torch, cstep, reps, trials, 4)
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"torch.compile failed: {e}", file=sys.stderr)
    try:
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
        out[f"mlp step b{batch} torch cuda graph"] = timer(torch, gstep, reps, trials, 4)
    except Exception as e:  # noqa: BLE001
        print(f"torch CUDA graph step failed: {e}", file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", help="path of flx_bench_suite")
    ap.add_argument("--quick", action="store_true")
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
    flx, why = run_suite(suite, args.quick)
    if flx is None:
        print(f"bench_torch.py: skipped: the fluxion suite skipped: {why}")
        return 0
    pt = torch_results(torch, args.quick)
    copy_pt = pt.get("copy d2d 2^28 f32")
    rows = []
    for name, (us, frac) in flx.items():
        ref = name
        if name.endswith(" plan") or name.endswith(" plan+graph"):
            ref = name.rsplit(" ", 1)[0] + " eager"
        p = pt.get(ref)
        pfrac = "-"
        copy_flx = flx.get("copy d2d 2^28 f32", (float("nan"),))[0]
        if copy_pt and p and frac != "-" and name in pt:
            # same bytes moved: fraction scales with speed, relative to each one's copy time
            pfrac = f"{float(frac) * (us / p) * (copy_pt / copy_flx):.3f}"
        ratio = f"{p / us:.2f}x" if p and us == us and us > 0 else "-"
        rows.append((name, f"{us:.1f} us" + (f" ({frac} of copy)" if frac != "-" else ""),
                     (f"{p:.1f} us ({ref})" if p else "-") + (f" ({pfrac} of copy)" if pfrac != "-" else ""),
                     ratio))
    for extra in ("torch.compile", "torch cuda graph"):
        for batch in (128, 8192):
            key = f"mlp step b{batch} {extra}"
            fl = flx.get(f"mlp step b{batch} plan+graph")
            if key in pt and fl:
                rows.append((f"mlp step b{batch} plan+graph vs {extra}", f"{fl[0]:.1f} us",
                             f"{pt[key]:.1f} us", f"{pt[key] / fl[0]:.2f}x"))
    gpu = torch.cuda.get_device_name(0)
    lines = [f"# fluxion vs PyTorch {torch.__version__} on {gpu}", "",
             f"- date: {datetime.datetime.utcnow().isoformat(timespec='seconds')}Z",
             f"- command: {' '.join(sys.argv)} (suite: {suite})",
             f"- {HEADER}",
             "- ratio = PyTorch time / fluxion time (> 1: fluxion faster); strict f32, TF32 off", "",
             "| workload | fluxion | PyTorch | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
