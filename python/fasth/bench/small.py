"""``python -m fasth bench --small``: many small orthogonal matrices in one call (issue 28).

For each batch B of d x d: fasth's ``matrix(V)``, ``apply(V, X)`` (X d x d) and
``householder_product(A, tau)`` beside ``torch.bmm`` of the same shape, torch's
``householder_product`` and ``torch.linalg.matrix_exp`` of a skew matrix; forward, and
forward + backward; timed interleaved in one run, on each thread count in turn. Ratios are
taken repeat by repeat against ``torch.bmm`` (fasth's and matrix_exp's times over bmm's) and
for ``householder_product`` as torch's time over fasth's (above 1: fasth faster)."""

from __future__ import annotations

import json
from pathlib import Path

SIZES = [(8192, 8), (8192, 16), (2048, 32), (256, 64), (64, 128)]
METHODS = ["bmm", "matrix_exp", "torch_hp", "fasth_matrix", "fasth_apply", "fasth_hp"]
# (row label, numerator, denominator): time ratios of one run, repeat by repeat.
RATIOS = [("fasth matrix(V) / bmm", "fasth_matrix", "bmm"),
          ("fasth apply(V, X) / bmm", "fasth_apply", "bmm"),
          ("matrix_exp(skew) / bmm", "matrix_exp", "bmm"),
          ("torch householder_product / fasth's", "torch_hp", "fasth_hp")]


def _cases(B: int, d: int, dtype, backward: bool) -> dict:
    import torch

    import fasth.torch as ft

    g = torch.Generator().manual_seed(B * 1000 + d)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    V, X, M, G = rnd(B, d, d), rnd(B, d, d), rnd(B, d, d), rnd(B, d, d)
    S = (M - M.transpose(-1, -2)) / 2
    A, tau = torch.geqrf(rnd(B, d, d))
    leaves = {"V": V, "X": X, "S": S, "A": A, "tau": tau}
    if backward:
        leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    V, X, S, A, tau = (leaves[k] for k in ("V", "X", "S", "A", "tau"))
    fwd = {
        "bmm": lambda: torch.bmm(V, X),
        "matrix_exp": lambda: torch.linalg.matrix_exp(S),
        "torch_hp": lambda: torch.linalg.householder_product(A, tau),
        "fasth_matrix": lambda: ft.matrix(V),
        "fasth_apply": lambda: ft.apply(V, X),
        "fasth_hp": lambda: ft.householder_product(A, tau),
    }
    if not backward:
        return fwd

    def both(f):
        def run():
            f().backward(G)
            for t in (V, X, S, A, tau):
                t.grad = None
        return run

    return {name: both(f) for name, f in fwd.items()}


def measure(threads: list[int], repeats: int, dtype_name: str = "float32",
            sizes: list[tuple[int, int]] | None = None) -> list[dict]:
    """One row per (threads, pass, B, d): minimum and median ms per method, and the ratios."""
    import numpy as np
    import torch

    from .environment import threads as on_threads
    from .timing import interleaved

    dtype = getattr(torch, dtype_name)
    rows = []
    for n in threads:
        with on_threads(n):
            for backward in (False, True):
                for B, d in sizes or SIZES:
                    fns = _cases(B, d, dtype, backward)
                    t = interleaved(fns, repeats, warmup=2)
                    row = {"threads": n, "pass": "forward + backward" if backward else "forward",
                           "B": B, "d": d,
                           "min_ms": {m: 1e3 * min(t[m]) for m in METHODS},
                           "median_ms": {m: 1e3 * float(np.median(t[m])) for m in METHODS}}
                    row["ratio_of_minima"] = {label: min(t[a]) / min(t[b]) for label, a, b in RATIOS}
                    rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """Per thread count and pass: the ratios of minima and the minimum times, sizes across."""
    out = []
    keys = sorted({(r["threads"], r["pass"]) for r in rows}, key=lambda x: (x[0], x[1] != "forward"))
    for n, ps in keys:
        sel = [r for r in rows if r["threads"] == n and r["pass"] == ps]
        head = " | ".join(f"B={r['B']} d={r['d']}" for r in sel)
        out.append(f"\n### {ps}, {n} thread{'s' if n > 1 else ''} (ratios of minimum times)\n")
        out.append(f"| | {head} |")
        out.append("|---" * (len(sel) + 1) + "|")
        for label, _, _ in RATIOS:
            out.append(f"| {label} | " + " | ".join(f"{r['ratio_of_minima'][label]:.2f}x" for r in sel) + " |")
        for m in METHODS:
            out.append(f"| {m} (ms) | " + " | ".join(f"{r['min_ms'][m]:.3f}" for r in sel) + " |")
    return "\n".join(out) + "\n"


def run(threads: list[int] | None, repeats: int | None, dtype: str | None, out: str,
        command: str) -> int:
    """The ``--small`` case: measures, prints the tables, writes small.md and small.json."""
    rows = measure(threads or [1, 2], repeats or 7, dtype or "float32")
    text = f"`{command}`\n" + markdown(rows)
    print(text)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "small.md").write_text(text)
    (folder / "small.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    return 0
