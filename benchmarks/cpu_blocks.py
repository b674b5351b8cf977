"""The CPU's block size: forward and forward + backward of ``fasth.torch.apply`` (float32, a
square V, a column-major X as a layer's ``x.T`` is) with blocks of 16, 32, 64 and 128, and with
the default (``choose_block``), interleaved in one process, per (d, n). Prints each cell's
minimum times, the block the default picks and its time over the fastest, and the geometric
mean of the default's time over blocks of 64 (forward + backward weighted 2): the data behind
``choose_block``'s CPU rule.

Usage: python benchmarks/cpu_blocks.py [--threads N] [--d 64,256,1024] [--n 1,8,32,128]
       [--repeats R]"""

from __future__ import annotations

import argparse
import math
import sys

import torch

import fasth.torch as ft
from fasth import _functional
from fasth.bench.environment import environment, machine, threads
from fasth.bench.timing import interleaved

BLOCKS = (16, 32, 64, 128)


def cell(d: int, n: int, repeats: int) -> dict:
    """{(pass, block): minimum seconds} for blocks 16..128 and the default (block 0)."""
    torch.manual_seed(d * 1000 + n)
    V = torch.randn(d, d, requires_grad=True)
    X = torch.randn(n, d).T.requires_grad_()
    G = torch.randn(n, d).T
    fns = {}
    for b in (0, *(b for b in BLOCKS if b <= d)):
        blk = b or None
        fns["fwd", b] = lambda blk=blk: ft.apply(V.detach(), X.detach(), block=blk)
        fns["f+b", b] = lambda blk=blk: torch.autograd.grad(ft.apply(V, X, block=blk), [V, X], G)
    return {k: min(ts) for k, ts in interleaved(fns, repeats).items()}


def default_block(d: int, n: int) -> int:
    V, X = torch.empty(d, d), torch.empty(n, d).T
    return _functional._bind_apply(V, X, False, None, "auto", False).plan.block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="threads for torch and its BLAS")
    ap.add_argument("--d", default="64,128,256,512,1024")
    ap.add_argument("--n", default="1,8,16,32,64,128")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)
    logs = []
    with threads(a.threads):
        print(machine(environment("cpu", " ".join(sys.argv))))
        print("| d | n | " + " | ".join(f"m={b} fwd / f+b" for b in BLOCKS)
              + " | default | default / fastest fwd, f+b |")
        print("|---" * (len(BLOCKS) + 4) + "|")
        for d in (int(x) for x in a.d.split(",")):
            for n in (int(x) for x in a.n.split(",")):
                t = cell(d, n, a.repeats)
                ms = lambda k: f"{t[k] * 1e3:.3g}" if k in t else "—"  # noqa: E731
                best = {p: min(v for (q, b), v in t.items() if q == p and b) for p in ("fwd", "f+b")}
                print(f"| {d} | {n} | " + " | ".join(f"{ms(('fwd', b))} / {ms(('f+b', b))}" for b in BLOCKS)
                      + f" | {default_block(d, n)} | {t['fwd', 0] / best['fwd']:.2f}, "
                      f"{t['f+b', 0] / best['f+b']:.2f} |", flush=True)
                logs += [math.log(t["fwd", 0] / t["fwd", 64]), 2 * math.log(t["f+b", 0] / t["f+b", 64])]
    print(f"\ndefault / blocks of 64, geometric mean (f+b weighted 2): {math.exp(sum(logs) / (len(logs) * 1.5)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
