#!/usr/bin/env python3
"""bench_torch.py — PyTorch's side of fluxion's benchmark suite: the workloads of
flx_bench_suite (same names, shapes, dtypes and byte conventions) in PyTorch eager and, where
PyTorch can do it, as a CUDA graph (torch.cuda.graphs: the whole training step for the train
rows, the op or its forward+backward for the others), in one process on the same GPU.
tools/gpu-check merges the result with the suite's into summary.json.

Usage:
  bench_torch.py --list                 the workload names covered (no torch needed)
  bench_torch.py --json OUT [--quick] [--only SUBSTRING] [--compile]
      measures and writes OUT: {"torch": version, "gpu": name, "partial": why or null,
      "rows": {name: {"torch_us": eager us, "torch_graph_us": us or null, "note": text}}}.
      Train-step rows are keyed by the step's base name ("mlp 784-1024-1024-10 b128 sgd"): they
      stand beside the suite's eager, plan and plan+graph rows of that step. OUT is rewritten
      after every row, so a run stopped by a time limit leaves what it measured (and SIGTERM
      marks it partial). --compile adds torch.compile(mode="reduce-overhead") for the train steps
      (cold compiles cost tens of seconds each: off by default).

Timing: CUDA events around back-to-back repetitions after warm-up, median of the trials
(host-time rows: perf_counter around the queued calls). Strict f32 (TF32 off); the bf16 GPT-2 row
is PyTorch's mixed precision (f32 parameters and fused AdamW, autocast to bf16, flash attention),
on the same token ids as the suite. Adam is the fused
implementation (capturable for the graph). Fashion-MNIST time to accuracy is not measured here
(its goals are absolute; PyTorch's figures are in the goals table).
Exit status 0 (also when skipped: no torch, no GPU), 1 when stopped or a row failed.
"""
import argparse
import json
import signal
import statistics
import sys
import time

ELEMENTWISE = ["copy 2^28 f32", "add 2^28 f32", "mul 2^28 f32", "tanh 2^28 f32", "gelu 2^28 f32",
               "relu vjp 2^28 f32"]
FUSED = ["fused bias-gelu-res fwd 2^26 f32", "fused bias-gelu-res vjp 2^26 f32"]
SOFTMAX_SHAPES = [  # rows, cols, softmax axis, forward only
    (32768, 1024, -1, False), (4096, 32768, -1, False), (64, 1 << 20, -1, False), (262144, 128, -1, True),
    (1024, 32768, 0, False), (1 << 20, 64, 0, False)]


def softmax_tag(rows, cols, axis):
    return f"{'axis0 ' if axis == 0 else ''}{rows}x{cols}"
STEPS = [  # base name, batch, widths (None: the CNN), optimiser
    ("mlp 784-1024-1024-10 b128 sgd", 128, (784, 1024, 1024, 10), "sgd"),
    ("mlp 784-1024-1024-10 b128 adam", 128, (784, 1024, 1024, 10), "adam"),
    ("mlp 784-1024-1024-10 b8192 sgd", 8192, (784, 1024, 1024, 10), "sgd"),
    ("mlp 784-1024-1024-10 b8192 adam", 8192, (784, 1024, 1024, 10), "adam"),
    ("mlp 784-256-128-10 b128 adam", 128, (784, 256, 128, 10), "adam"),
    ("cnn b128 adam", 128, None, "adam"),
]
HOST = ["host record+dispatch per op cuda", "host plan replay cuda"]
GPT2 = [  # base name (the suite's rows add " eager" / " plan+graph"), dtype, batch, sequence
    # (the suite's f32 row has no goal and no peer here: strict f32 steps would cost the torch
    # step's time budget seconds)
    ("gpt2-small train step 8x1024 bf16", "bf16", 8, 1024),
]


def softmax_names():
    out = []
    for rows, cols, axis, fwd_only in SOFTMAX_SHAPES:
        for m in ("fwd",) if fwd_only else ("fwd", "vjp", "jvp"):
            out.append(f"softmax {m} {softmax_tag(rows, cols, axis)} f32")
    return out


LU_BATCHED = [f"{op} 100000x8x8 f32" for op in ("det", "inv", "solve", "det fwd+bwd", "inv fwd+bwd")]
LU_BIG = [f"{op} 4096^2 {dt}" for dt in ("f32", "f64") for op in ("det", "inv", "solve")]


def all_names():
    return (ELEMENTWISE + FUSED + softmax_names() + ["cross-entropy fwd+bwd 32768x1024 f32",
            "matmul 4096^3 f32"] + LU_BATCHED + LU_BIG + [s[0] for s in STEPS] + [g[0] for g in GPT2] + HOST)


class Stopped(Exception):
    pass


def settle(torch):
    """After a failed capture: wait for the device, ignoring a second error."""
    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001
        pass


def _on_term(signum, frame):  # noqa: ARG001
    raise Stopped(f"signal {signum}")


class Bench:
    def __init__(self, torch, args):
        self.torch, self.args = torch, args
        self.rows = {}
        self.partial = None
        self.failed = 0
        self.reps, self.trials = (10, 3) if args.quick else (20, 5)

    def want(self, name):
        return self.args.only is None or self.args.only in name

    def save(self):
        t = self.torch
        doc = {"torch": t.__version__, "gpu": t.cuda.get_device_name(0), "partial": self.partial,
               "rows": self.rows}
        with open(self.args.json, "w") as f:
            json.dump(doc, f, indent=1)

    def put(self, name, key, us, note=None):
        row = self.rows.setdefault(name, {"torch_us": None, "torch_graph_us": None, "note": ""})
        row[key] = us
        if note:
            row["note"] = (row["note"] + "; " if row["note"] else "") + note
        print(f"torch: {name}: {key} = {us if us is None else round(us, 2)}", file=sys.stderr, flush=True)
        self.save()

    def event_time(self, fn, reps, rotate=1):
        torch = self.torch
        for i in range(3):
            fn(i % rotate)
        torch.cuda.synchronize()
        samples = []
        k = 0
        for _ in range(self.trials):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(reps):
                fn(k % rotate)
                k += 1
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) * 1e3 / reps)
        return statistics.median(samples)

    def graphs_of(self, fn, rotate):
        """One CUDA graph per input set (so L2-sized inputs rotate as on the eager side)."""
        torch = self.torch
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(rotate):
                fn(i)
        torch.cuda.current_stream().wait_stream(s)
        graphs = []
        for i in range(rotate):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn(i)
            graphs.append(g)
        return graphs

    def run(self, name, fn, reps=None, rotate=1, graph=True):
        """Eager time of fn(i), and the replay time of fn captured as CUDA graphs."""
        if not self.want(name):
            return
        reps = reps or self.reps
        try:
            self.put(name, "torch_us", self.event_time(fn, reps, rotate))
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001 - report and go on
            self.failed += 1
            self.put(name, "torch_us", None, f"eager failed: {type(e).__name__}: {e}"[:200])
            return
        if not graph:
            return
        try:
            graphs = self.graphs_of(fn, rotate)
            self.put(name, "torch_graph_us", self.event_time(lambda i: graphs[i].replay(), reps, rotate))
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001 - PyTorch cannot capture every op (e.g. linalg checks)
            settle(self.torch)
            self.put(name, "torch_graph_us", None, f"no CUDA graph: {type(e).__name__}: {e}"[:200])


def kernels(b):
    torch = b.torch
    F = torch.nn.functional
    dev = "cuda"
    n = 1 << 28
    x = torch.randn(n, device=dev)
    y = torch.randn(n, device=dev)
    xl = x.clone()
    out = torch.empty_like(x)
    ops = [lambda i: out.copy_(x), lambda i: torch.add(x, y), lambda i: torch.mul(x, y),
           lambda i: torch.tanh(x), lambda i: F.gelu(x),
           lambda i: torch.ops.aten.threshold_backward(y, xl, 0.0)]
    for name, fn in zip(ELEMENTWISE, ops):
        b.run(name, fn)
    del x, y, xl, out
    rows, cols = 1 << 14, 1 << 12
    if b.want(FUSED[0]) or b.want(FUSED[1]):
        x = torch.randn(rows, cols, device=dev)
        bias = torch.randn(cols, device=dev)
        s = 1 + 0.5 * torch.randn(cols, device=dev)
        r = torch.randn(rows, cols, device=dev)
        g = torch.randn(rows, cols, device=dev)
        b.run(FUSED[0], lambda i: F.gelu(x + bias) * s + r)
        # the VJP wrt x as autograd computes it from the saved x + b: gelu'(x + b) * s * g
        b.run(FUSED[1], lambda i: torch.ops.aten.gelu_backward(g * s, x + bias))
        del x, bias, s, r, g
    for rows, cols, axis, fwd_only in SOFTMAX_SHAPES:
        tag = softmax_tag(rows, cols, axis)
        names = [f"softmax {m} {tag} f32" for m in ("fwd", "vjp", "jvp")]
        if not any(b.want(nm) for nm in (names[:1] if fwd_only else names)):
            continue
        x = torch.randn(rows, cols, device=dev) * 3
        g = torch.randn(rows, cols, device=dev)
        yv = torch.softmax(x, axis)
        b.run(names[0], lambda i: torch.softmax(x, axis))
        if not fwd_only:
            b.run(names[1], lambda i: torch._softmax_backward_data(g, yv, axis, torch.float32))
            b.run(names[2], lambda i: torch.func.jvp(lambda z: torch.softmax(z, axis), (x,), (g,)))
        del x, g, yv
    ce = "cross-entropy fwd+bwd 32768x1024 f32"
    if b.want(ce):
        x = (torch.randn(32768, 1024, device=dev) * 3).requires_grad_(True)
        lab = torch.randint(0, 1024, (32768,), device=dev)

        def ce_fb(i):
            loss = F.cross_entropy(x, lab)
            return torch.autograd.grad(loss, x)
        b.run(ce, ce_fb)
        del x, lab
    if b.want("matmul 4096^3 f32"):
        m = torch.randn(4096, 4096, device=dev)
        m2 = torch.randn(4096, 4096, device=dev)
        b.run("matmul 4096^3 f32", lambda i: m @ m2, reps=5 if b.args.quick else 10)
        del m, m2


def linalg(b):
    torch = b.torch
    L = torch.linalg
    dev = "cuda"
    if any(b.want(n) for n in LU_BATCHED):
        eye = torch.eye(8, device=dev) * 8
        A = [torch.randn(100000, 8, 8, device=dev) + eye for _ in range(4)]
        B = [torch.randn(100000, 8, 1, device=dev) for _ in range(4)]
        Ag = [t.clone().requires_grad_(True) for t in A]
        fns = [lambda i: L.det(A[i]), lambda i: L.inv(A[i]), lambda i: L.solve(A[i], B[i]),
               lambda i: torch.autograd.grad(L.det(Ag[i]).sum(), Ag[i]),
               lambda i: torch.autograd.grad(L.inv(Ag[i]).sum(), Ag[i])]
        # inv and solve check their info on the host (a sync that capture refuses): eager only
        for name, fn in zip(LU_BATCHED, fns):
            b.run(name, fn, rotate=4, graph=name.startswith("det"))
        del A, B, Ag
    for dt, dn in ((torch.float32, "f32"), (torch.float64, "f64")):
        names = [f"{op} 4096^2 {dn}" for op in ("det", "inv", "solve")]
        if not any(b.want(n) for n in names):
            continue
        big = torch.randn(4096, 4096, device=dev, dtype=dt) + torch.eye(4096, device=dev, dtype=dt) * 4096
        rhs = torch.randn(4096, 1, device=dev, dtype=dt)
        for name, fn in zip(names, (lambda i: L.det(big), lambda i: L.inv(big), lambda i: L.solve(big, rhs))):
            b.run(name, fn, reps=2, graph=False)  # milliseconds each: a graph changes nothing
        del big, rhs


def model_of(nn, widths):
    if widths is None:  # examples/fashion_mnist.c --model cnn; input (B, 784)
        return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                             nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    layers = []
    for k in range(len(widths) - 1):
        layers.append(nn.Linear(widths[k], widths[k + 1]))
        if k + 2 < len(widths):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_step(torch, widths, opt_kind, batch, graphable):
    nn = torch.nn
    torch.manual_seed(0)
    model = model_of(nn, widths).cuda().train()
    if opt_kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=graphable)
    xs = [torch.randn(batch, 784, device="cuda") for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), device="cuda") for _ in range(4)]
    return model, opt, xs, ys


def whole_step_graph(torch, model, opt, xs, ys):
    """The whole step (forward, backward, optimiser) as one CUDA graph; returns replay(i)."""
    F = torch.nn.functional
    sx, sy = xs[0].clone(), ys[0].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(sx), sy).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        F.cross_entropy(model(sx), sy).backward()
        opt.step()

    def replay(i):
        sx.copy_(xs[i])
        sy.copy_(ys[i])
        g.replay()
    return replay


def train_steps(b):
    torch = b.torch
    F = torch.nn.functional
    for name, batch, widths, kind in STEPS:
        if not b.want(name):
            continue
        reps = (50 if b.args.quick else 100) if batch <= 128 else (10 if b.args.quick else 20)
        model, opt, xs, ys = make_step(torch, widths, kind, batch, False)

        def step(i, model=model, opt=opt, xs=xs, ys=ys):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[i]), ys[i]).backward()
            opt.step()
        try:
            b.put(name, "torch_us", b.event_time(step, reps, 4))
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001
            b.failed += 1
            b.put(name, "torch_us", None, f"eager failed: {type(e).__name__}: {e}"[:200])
        try:
            replay = whole_step_graph(torch, *make_step(torch, widths, kind, batch, True))
            b.put(name, "torch_graph_us", b.event_time(replay, reps, 4))
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001
            settle(torch)
            b.put(name, "torch_graph_us", None, f"no CUDA graph: {type(e).__name__}: {e}"[:200])
        if b.args.compile:
            try:
                cmodel, copt, cx, cy = make_step(torch, widths, kind, batch, False)
                cm = torch.compile(cmodel, mode="reduce-overhead")

                def cstep(i):
                    copt.zero_grad(set_to_none=True)
                    F.cross_entropy(cm(cx[i]), cy[i]).backward()
                    copt.step()
                b.put(name, "torch_compile_us", b.event_time(cstep, reps, 4))
            except Stopped:
                raise
            except Exception as e:  # noqa: BLE001
                b.put(name, "torch_compile_us", None, f"torch.compile failed: {type(e).__name__}"[:200])


def splitmix64_ids(n, vocab, seed):
    """Token ids as examples/gpt2_model.c's gpt2_synthetic_batch draws them: output i of
    splitmix64(seed), modulo vocab."""
    mask = (1 << 64) - 1
    s, out = seed, []
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & mask
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append((z ^ (z >> 31)) % vocab)
    return out


def gpt2_model(torch, vocab=50304, seq=1024, layers=12, heads=12, C=768):
    """GPT-2 small as examples/gpt2_model.h builds it: pre-LN blocks, exact GELU, tied output
    layer, vocabulary padded to 50304, GPT-2's initialisation; flash SDPA for attention."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in self.qkv(self.ln_1(x)).split(C, 2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.fcproj(F.gelu(self.fc(self.ln_2(x))))

    class GPT2(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, C), nn.Embedding(seq, C)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(C)
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / (2 * layers) ** 0.5 if name.endswith(("proj.weight",)) else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif "ln" not in name:
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
    return GPT2()


def gpt2_steps(b):
    """GPT-2 small training steps (AdamW, weight decay on 2-d weights) on the suite's token ids:
    bf16 as PyTorch's mixed precision (f32 parameters, autocast to bf16), f32 strict. Eager, the
    whole step as one CUDA graph, and (--compile) torch.compile of the model."""
    torch = b.torch
    for name, dt, batch, seq in GPT2:
        if not b.want(name):
            continue
        ids = torch.tensor(splitmix64_ids(batch * (seq + 1), 50257, 1), device="cuda").view(batch, seq + 1)
        x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        reps = (7 if b.args.quick else 10) if dt == "bf16" else (2 if b.args.quick else 5)
        amp = dt == "bf16"

        def build(capturable, compiled=False):
            torch.manual_seed(0)
            model = gpt2_model(torch).cuda().train()
            decay = [p for p in model.parameters() if p.dim() >= 2]
            plain = [p for p in model.parameters() if p.dim() < 2]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
                                    lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True, capturable=capturable)
            fwd = torch.compile(model) if compiled else model

            def step(i=0, zero=True):
                if zero:
                    opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=not capturable):
                    loss = fwd(x, y)
                loss.backward()
                opt.step()
            step.opt = opt
            return step
        try:
            b.put(name, "torch_us", b.event_time(build(False), reps), "eager" + (" autocast bf16" if amp else " f32"))
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001
            b.failed += 1
            b.put(name, "torch_us", None, f"eager failed: {type(e).__name__}: {e}"[:200])
        torch.cuda.empty_cache()
        try:
            step = build(True)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            step.opt.zero_grad(set_to_none=True)  # backward inside the capture writes fresh grads
            with torch.cuda.graph(g):
                step(zero=False)
            b.put(name, "torch_graph_us", b.event_time(lambda i: g.replay(), reps))
            del g
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001
            settle(torch)
            b.put(name, "torch_graph_us", None, f"no CUDA graph: {type(e).__name__}: {e}"[:200])
        torch.cuda.empty_cache()
        if b.args.compile:
            try:
                b.put(name, "torch_compile_us", b.event_time(build(False, True), reps))
            except Stopped:
                raise
            except Exception as e:  # noqa: BLE001
                b.put(name, "torch_compile_us", None, f"torch.compile failed: {type(e).__name__}"[:200])
            torch.cuda.empty_cache()


def host_overhead(b):
    """Host time per call, the GPU work queued but not waited for inside the timed loop."""
    torch = b.torch

    def host_time(fn, n):
        samples = []
        for t in range(-1, b.trials):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            dt = time.perf_counter() - t0
            torch.cuda.synchronize()
            if t >= 0:
                samples.append(dt / n * 1e6)
        return statistics.median(samples)
    if b.want(HOST[0]):
        a = torch.ones(4, device="cuda")
        c = torch.ones(4, device="cuda")
        b.put(HOST[0], "torch_us", host_time(lambda: a + c, 500), "host time per tiny op, eager")
    if b.want(HOST[1]):
        try:
            replay = whole_step_graph(torch, *make_step(torch, (784, 256, 128, 10), "adam", 128, True))
            b.put(HOST[1], "torch_graph_us", host_time(lambda: replay(0), 100),
                  "host time per whole-step graph replay (input copies included)")
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001
            b.put(HOST[1], "torch_graph_us", None, f"no CUDA graph: {type(e).__name__}: {e}"[:200])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", action="store_true", help="print the workload names and exit")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="only the workloads whose name contains this substring")
    ap.add_argument("--compile", action="store_true", help="add torch.compile for the train steps")
    args = ap.parse_args()
    if args.list:
        print("\n".join(all_names()))
        return 0
    if not args.json:
        ap.error("--json OUT is required (or --list)")
    try:
        import torch
    except ImportError:
        print("bench_torch.py: skipped: PyTorch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("bench_torch.py: skipped: PyTorch sees no CUDA GPU")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    signal.signal(signal.SIGTERM, _on_term)
    b = Bench(torch, args)
    t0 = time.monotonic()
    try:
        for part in (kernels, linalg, train_steps, gpt2_steps, host_overhead):
            part(b)
            torch.cuda.empty_cache()
    except Stopped as e:
        b.partial = f"stopped by {e} after {time.monotonic() - t0:.0f} s"
    b.save()
    print(f"bench_torch.py: {len(b.rows)} rows in {time.monotonic() - t0:.0f} s"
          + (f" (PARTIAL: {b.partial})" if b.partial else ""))
    return 1 if b.partial or b.failed else 0


if __name__ == "__main__":
    sys.exit(main())
