#!/usr/bin/env python3
"""linalg_torch.py — issue 4: the workloads of linalg_bench.c in torch.linalg on the same GPU.

Usage: benchmarks/linalg_torch.py [path/to/flx_bench_linalg]
Runs torch (det / inv / solve and fwd+bwd, 10^5 x 8x8 and 4096^2, f32/f64; CUDA-event timed,
median after warm-up), then the fluxion binary if given, and prints fluxion / torch ratios.
Skips cleanly (exit 0) without torch or without a GPU."""
import subprocess
import sys


def main():
    try:
        import torch
    except ImportError:
        print("linalg_torch: skipped (torch is not installed)")
        return 0
    if not torch.cuda.is_available():
        print("linalg_torch: skipped (no CUDA GPU)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")

    def timed(fn, reps):
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) * 1e3)
        ts.sort()
        return ts[len(ts) // 2]

    torch_us = {}
    for B, n in ((100000, 8), (1, 4096)):
        for dt in (torch.float32, torch.float64):
            g = torch.Generator(device=dev).manual_seed(1)
            A = torch.randn(B, n, n, device=dev, dtype=dt, generator=g) + 4.0 * min(n, 64) * torch.eye(n, device=dev, dtype=dt)
            b = torch.randn(B, n, device=dev, dtype=dt, generator=g)
            Ag = A.clone().requires_grad_(True)
            reps = 5 if n > 1000 else 20
            work = {
                "det": lambda: torch.linalg.det(A),
                "inv": lambda: torch.linalg.inv(A),
                "solve (1 rhs)": lambda: torch.linalg.solve(A, b),
                "det fwd+bwd": lambda: torch.autograd.grad(torch.linalg.det(Ag).sum(), Ag),
                "inv fwd+bwd": lambda: torch.autograd.grad(torch.linalg.inv(Ag).sum(), Ag),
                "solve fwd+bwd": lambda: torch.autograd.grad(torch.linalg.solve(Ag, b).sum(), Ag),
            }
            shape = f"{B}x{n}^2"
            dn = "f32" if dt == torch.float32 else "f64"
            for name, fn in work.items():
                torch_us[(name, shape, dn)] = timed(fn, reps)
                print(f"torch {name:16s} {shape:12s} {dn:4s} {torch_us[(name, shape, dn)]:12.1f} us")
    if len(sys.argv) > 1:
        out = subprocess.run([sys.argv[1]], capture_output=True, text=True).stdout
        print(out)
        for line in out.splitlines():
            parts = line.rsplit(None, 3)
            if len(parts) == 4:
                name, shape, dn, us = parts
                key = (name.strip(), shape, dn)
                try:
                    us = float(us)
                except ValueError:
                    continue
                if key in torch_us:
                    print(f"ratio fluxion/torch {key[0]:16s} {shape:12s} {dn}: {us / torch_us[key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
