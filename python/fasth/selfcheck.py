"""``python -m fasth``: check fasth on a built-in random problem and time it next to
``torch.linalg.householder_product`` (+ matmul) on the same problem, forward and backward.

Timings are interleaved rounds repeated until the fastest call of each settles (within 10%
of the round before); the table shows each side's fastest call and the median of the
per-repeat speed-ups, and says when the machine was too noisy to time."""

from __future__ import annotations

import argparse
import os

from ._cli import parser as parser_of
from .bench.timing import ratio, settled, summary, sync_for

SPREAD = 1.5  # a 75th/25th percentile ratio above this: the timings are not repeatable


def parser() -> argparse.ArgumentParser:
    p = parser_of("python -m fasth [check]", __doc__.split("\n\n")[0], defaults=True)
    p.add_argument("-d", type=int, default=512, help="dimension")
    p.add_argument("-n", type=int, default=64, help="columns of X")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per round")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    import torch

    import fasth
    import fasth.torch as ft

    d, n = args.d, args.n
    g = torch.Generator().manual_seed(0)
    # LAPACK's form (unit lower triangle), so householder_product sees the same U.
    V64 = torch.randn(d, d, generator=g, dtype=torch.float64).tril(-1) + torch.eye(d, dtype=torch.float64)
    tau64 = 2 / (V64 * V64).sum(0)
    X64 = torch.randn(d, n, generator=g, dtype=torch.float64)
    G64 = torch.randn(d, n, generator=g, dtype=torch.float64)
    U64 = torch.linalg.householder_product(V64, tau64)
    ref = U64 @ X64

    print(f"fasth {fasth.__version__} self-check: U X with U a product of {d} reflectors, "
          f"X {d} x {n}, device {args.device}")
    ok = True
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-12)):
        V, X, G = (t.to(args.device, dtype) for t in (V64, X64, G64))
        out = ft.apply(V, X)
        err = (out.double().cpu() - ref).abs().max().item() / ref.abs().max().item()
        Vr = V.clone().requires_grad_()
        (ft.apply(Vr, X) * G).sum().backward()
        ortho = (ft.matrix(V).double().cpu() - U64).abs().max().item()
        good = err < tol and ortho < tol * 10
        ok &= good
        print(f"  {str(dtype).removeprefix('torch.'):8s} relative error {err:.2e}, "
              f"|matrix - householder_product| {ortho:.2e}  {'ok' if good else 'FAILED'}")

    V = V64.float().to(args.device).requires_grad_()
    tau = tau64.float().to(args.device)
    X, G = X64.float().to(args.device), G64.float().to(args.device)

    def fasth_fb():
        (ft.apply(V, X) * G).sum().backward()

    def hp_fb():
        (torch.linalg.householder_product(V, tau) @ X * G).sum().backward()

    rows = [
        ("forward", lambda: ft.apply(V.detach(), X), lambda: torch.linalg.householder_product(V.detach(), tau) @ X),
        ("forward + backward", fasth_fb, hp_fb),
    ]
    measured, steady = [], True
    for name, f_fast, f_base in rows:
        t, best, done = settled({"fasth": f_fast, "base": f_base}, args.repeats, sync=sync_for(args.device))
        spread = max(summary(v)["p75"] / summary(v)["p25"] for v in t.values())
        steady &= done and spread <= SPREAD
        measured.append((name, best["fasth"], best["base"], ratio(t["base"], t["fasth"])["median"]))
    # a forward slower than forward + backward (which contains it) is noise, never a timing
    (_, fwd_fasth, fwd_base, _), (_, fb_fasth, fb_base, _) = measured
    consistent = fwd_fasth <= fb_fasth and fwd_base <= fb_base
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n  float32 timings (fastest call once settled, rounds of {args.repeats} interleaved "
          f"repeats; speed-up: median of the last round's pairs), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if consistent:
        print(f"  {'':20s} {'fasth':>10s} {'householder_product':>20s} {'speed-up':>9s}")
        for name, tf, tb, r in measured:
            print(f"  {name:20s} {tf * 1e3:8.2f}ms {tb * 1e3:18.2f}ms {r:8.1f}x")
    if not (consistent and steady):
        print(f"  {'not shown' if not consistent else 'uncertain'}: this machine was too noisy to "
              f"time (load average {load:.1f}; the timings did not settle or did not repeat); "
              "rerun on a quieter machine")
    print("\nself-check", "passed" if ok else "FAILED")
    return 0 if ok else 1
