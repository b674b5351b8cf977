"""``python -m fasth``: check fasth on a built-in random problem and time it next to
``torch.linalg.householder_product`` (+ matmul) on the same problem, forward and backward."""

from __future__ import annotations

import argparse

from .bench.timing import interleaved, ratio, summary, sync_for


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fasth", description=__doc__)
    p.add_argument("-d", type=int, default=512, help="dimension (default 512)")
    p.add_argument("-n", type=int, default=64, help="columns of X (default 64)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

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
    print(f"\n  float32 timings (medians of {args.repeats} interleaved repeats), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"  {'':20s} {'fasth':>10s} {'householder_product':>20s} {'speed-up':>9s}")
    for name, f_fast, f_base in rows:
        t = interleaved({"fasth": f_fast, "base": f_base}, args.repeats, sync=sync_for(args.device))
        tf, tb = summary(t["fasth"])["median"], summary(t["base"])["median"]
        print(f"  {name:20s} {tf * 1e3:8.2f}ms {tb * 1e3:18.2f}ms {ratio(t['base'], t['fasth'])['median']:8.1f}x")
    print("\nself-check", "passed" if ok else "FAILED")
    return 0 if ok else 1
