"""GPU benchmarks of fasth against the speed targets in the table's last column, float32, each
ratio measured in one run against its baseline, interleaved (fasth.bench.timing): CUDA-event
timings after a warm-up, the median of repeats.

  forward apply vs cuBLAS `U @ X` (SGEMM, TF32 off), d = 1024, 4096 and n = 2048, 4096
  forward + backward vs `U @ X` forward + backward
  n = 64 .. 256 (launch-bound): ratios eager and under CUDA-graph replay, launches per call
  forward + backward at d = 1024, n = 256 vs torch.linalg.householder_product(V, tau) @ X
  small-d matrix, d = 48: forward + backward time and launches
  the default block and blocks of 256 against blocks of 128 (choose_block's GPU rule)
  materialize against blockwise around choose_strategy's crossover

Prints a markdown table (GPU name first) and exits 0; the targets are in the last column.
Run: python benchmarks/gpu_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

import fasth
from fasth import _functional, _native
import fasth.torch as ft
from fasth.bench.timing import interleaved

Fn = Callable[[], object]


# ---------------------------------------------------------------------------------------
# Measuring

def time_us(fns: dict[str, Fn], reps: int, inner: int = 1, warmup: int = 3) -> dict[str, float]:
    """Median microseconds per call of each function, interleaved within each repeat, timed by
    CUDA events around `inner` back-to-back calls."""
    torch.cuda.synchronize()
    samples = interleaved(fns, reps, warmup=warmup, inner=inner, clock="cuda")
    return {name: statistics.median(s) * 1e6 for name, s in samples.items()}


def graphed(fn: Fn, grads: tuple[torch.Tensor, ...] = ()) -> Fn:
    """fn captured in a CUDA graph (after a warm-up on a side stream, as torch asks); the
    returned function replays it. `grads`: leaves whose .grad the capture (re)allocates."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for t in grads:
                t.grad = None
            fn()
    torch.cuda.current_stream().wait_stream(side)
    for t in grads:
        t.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


@dataclass
class Launches:
    total: float  # GPU operations per call (kernels, memsets, copies)
    fasth: float  # those not from torch's own kernels (fasth's kernels and its cuBLAS calls)


def launches(fn: Fn, calls: int = 5) -> Launches:
    """GPU operations per call, counted with torch.profiler (CUPTI)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    ours = [n for n in names if "at::native" not in n and not n.startswith(("Memset", "Memcpy"))]
    return Launches(len(names) / calls, len(ours) / calls)


# ---------------------------------------------------------------------------------------
# Problems

def householder(d: int, k: int, *, grad: bool = True) -> torch.Tensor:
    V = torch.randn(d, k, device="cuda") / d**0.5
    return V.requires_grad_(grad)


def orthogonal(d: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, device="cuda"))[0]


def strategy_of(d: int, k: int, n: int) -> str:
    return str(_native.core.choose_strategy(d, k, n)).split(".")[-1]


@dataclass
class Table:
    rows: list[list[str]] = field(default_factory=list)

    def add(self, case: str, fasth_us: float | None, base_us: float | None, base: str,
            launches: str = "", target: str = "", met: bool | None = None) -> None:
        ratio = f"{fasth_us / base_us:.2f}" if fasth_us and base_us else ""
        verdict = "" if met is None else ("yes" if met else "NO")
        self.rows.append([case, f"{fasth_us:.1f}" if fasth_us else "", base,
                          f"{base_us:.1f}" if base_us else "", ratio, launches, target, verdict])
        print("  ", " | ".join(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        head = ["case", "fasth us", "baseline", "baseline us", "ratio", "launches/call",
                "target", "met"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def forward_and_backward(table: Table, d: int, n: int, reps: int) -> None:
    """Forward apply vs U @ X, forward + backward vs the same for U @ X (k = d)."""
    V, X = householder(d, d), torch.randn(d, n, device="cuda", requires_grad=True)
    U = orthogonal(d).requires_grad_()
    G = torch.randn(d, n, device="cuda")
    with torch.no_grad():
        t = time_us({"fasth": lambda: ft.apply(V, X), "gemm": lambda: U @ X}, reps)
    table.add(f"apply fwd d={d} n={n} ({strategy_of(d, d, n)})", t["fasth"], t["gemm"],
              "U @ X", target="<= 3x", met=t["fasth"] <= 3 * t["gemm"])

    def fasth_step():
        ft.apply(V, X).backward(G)

    def gemm_step():
        (U @ X).backward(G)

    t = time_us({"fasth": fasth_step, "gemm": gemm_step}, reps)
    table.add(f"apply fwd+bwd d={d} n={n}", t["fasth"], t["gemm"], "U @ X fwd+bwd",
              target="<= 4x", met=t["fasth"] <= 4 * t["gemm"])


def block_width(table: Table, d: int, n: int, reps: int) -> None:
    """The default block (choose_block's GPU rule: one block, T by a solve, where d <= 1024 and
    n <= 256) and blocks of 256 against blocks of 128 (ratio below 1: faster than 128)."""
    V, X = householder(d, d), torch.randn(d, n, device="cuda", requires_grad=True)
    G = torch.randn(d, n, device="cuda")
    default = _native.core.choose_block(d, d, n, _native.core.Device.cuda)
    widths = sorted({128, 256, default})
    with torch.no_grad():
        t = time_us({m: (lambda m=m: ft.apply(V, X, block=m)) for m in widths}, reps)
    tb = time_us({m: (lambda m=m: ft.apply(V, X, block=m).backward(G)) for m in widths}, reps)
    for m in widths:
        if m != 128:
            label = f"blocks of {m}" + (" (default)" if m == default else "")
            table.add(f"apply fwd d={d} n={n}, {label}", t[m], t[128], "blocks of 128")
            table.add(f"apply fwd+bwd d={d} n={n}, {label}", tb[m], tb[128], "blocks of 128")


def strategies(table: Table, d: int, n: int, reps: int) -> None:
    """materialize against blockwise (ratio below 1: materialize is faster), to check
    choose_strategy's crossover (materialize from n = 1.57 d when k = d) on the GPU."""
    V, X = householder(d, d), torch.randn(d, n, device="cuda", requires_grad=True)
    G = torch.randn(d, n, device="cuda")
    kinds = ("materialize", "blockwise")
    with torch.no_grad():
        t = time_us({s: (lambda s=s: ft.apply(V, X, strategy=s)) for s in kinds}, reps)
    table.add(f"apply fwd d={d} n={n}, materialize", t["materialize"], t["blockwise"], "blockwise")
    t = time_us({s: (lambda s=s: ft.apply(V, X, strategy=s).backward(G)) for s in kinds}, reps)
    table.add(f"apply fwd+bwd d={d} n={n}, materialize", t["materialize"], t["blockwise"],
              "blockwise")


def launch_bound(table: Table, d: int, n: int, reps: int) -> None:
    """Small n: eager and CUDA-graph ratios, GPU launches per call."""
    V, X = householder(d, d), torch.randn(d, n, device="cuda", requires_grad=True)
    U = orthogonal(d).requires_grad_()
    G = torch.randn(d, n, device="cuda")

    def fasth_fwd():
        with torch.no_grad():
            ft.apply(V, X)

    def gemm_fwd():
        with torch.no_grad():
            U @ X

    def fasth_step():
        ft.apply(V, X).backward(G)

    def gemm_step():
        (U @ X).backward(G)

    for what, f, b, leaves in (("fwd", fasth_fwd, gemm_fwd, ()),
                               ("fwd+bwd", fasth_step, gemm_step, (V, X, U))):
        L = launches(f)
        t = time_us({"fasth": f, "gemm": b}, reps, inner=10)
        table.add(f"apply {what} d={d} n={n} eager", t["fasth"], t["gemm"], "U @ X",
                  launches=f"{L.fasth:.0f} fasth / {L.total:.0f} all")
        fg, bg = graphed(f, leaves), graphed(b, leaves)
        t = time_us({"fasth": fg, "gemm": bg}, reps, inner=10)
        table.add(f"apply {what} d={d} n={n} graph", t["fasth"], t["gemm"], "U @ X",
                  launches="1 graph launch")


def versus_householder_product(table: Table, reps: int) -> None:
    """fasth fwd+bwd vs torch.linalg.householder_product(V, tau) @ X fwd+bwd, d = 1024."""
    d, n = 1024, 256
    V, X = householder(d, d), torch.randn(d, n, device="cuda", requires_grad=True)
    G = torch.randn(d, n, device="cuda")
    # orgqr's convention: unit diagonal implied, reflectors below it; tau = 2 / |v|^2.
    A = torch.randn(d, d, device="cuda") / d**0.5
    with torch.no_grad():
        below = torch.tril(A, -1)
        tau = 2.0 / (1.0 + (below * below).sum(0))
    A.requires_grad_()

    def fasth_step():
        ft.apply(V, X).backward(G)

    def torch_step():
        (torch.linalg.householder_product(A, tau) @ X).backward(G)

    t = time_us({"fasth": fasth_step, "torch": torch_step}, reps, warmup=1)
    table.add(f"apply fwd+bwd d={d} n={n}", t["fasth"], t["torch"],
              "householder_product @ X", target="ratio <= 0.01 (100x)",
              met=t["fasth"] * 100 <= t["torch"])


def small_d_matrix(table: Table, reps: int) -> None:
    """U = matrix(V) forward + backward at d = 48: time and launches."""
    d = 48
    V, GU = householder(d, d), torch.randn(d, d, device="cuda")

    def step():
        ft.matrix(V).backward(GU)

    def functional():  # fasth's own calls only: matrix with its factors, then its backward
        U, f = _functional.matrix_with_factors(V.detach())
        _functional.matrix_backward(V.detach(), U, GU, factors=f)

    L, Lf = launches(step), launches(functional)
    t = time_us({"fasth": step, "functional": functional}, reps, inner=20)
    tg = time_us({"graph": graphed(step, (V,))}, reps, inner=20)
    table.add(f"matrix fwd+bwd d={d} autograd", t["fasth"], None, "",
              launches=f"{L.fasth:.0f} fasth / {L.total:.0f} all",
              target="<= 3 launches, < 30 us", met=L.fasth <= 3 and t["fasth"] < 30)
    table.add(f"matrix fwd+bwd d={d} functional", t["functional"], None, "",
              launches=f"{Lf.fasth:.0f} fasth / {Lf.total:.0f} all",
              target="<= 3 launches, < 30 us", met=Lf.fasth <= 3 and t["functional"] < 30)
    table.add(f"matrix fwd+bwd d={d} graph", tg["graph"], None, "", launches="1 graph launch")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; nothing to measure")
        return 0
    _native.cuda()  # a clear error now if the CUDA backend cannot run
    torch.backends.cuda.matmul.allow_tf32 = False  # cuBLAS SGEMM in full float32; fasth too
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    reps = 5 if args.quick else 10
    name = torch.cuda.get_device_name()
    print(f"# fasth {fasth.__version__} on {name} (torch {torch.__version__}, float32, TF32 off)\n",
          flush=True)
    table = Table()
    big = [(1024, 2048)] if args.quick else [(1024, 2048), (1024, 4096), (4096, 2048), (4096, 4096)]
    for d, n in big:
        forward_and_backward(table, d, n, reps)
    for d, n in big + [(1024, 64), (1024, 256)]:  # also where launches dominate: half the steps
        block_width(table, d, n, reps)
    for d, n in [(1024, 1024), (1024, 2048), (4096, 4096)]:  # around the crossover
        strategies(table, d, n, reps)
    for n in (64,) if args.quick else (64, 128, 256):
        launch_bound(table, 1024, n, reps)
    versus_householder_product(table, 3)
    small_d_matrix(table, reps)
    print(f"\n## {name}, float32, times in microseconds (medians), ratio = fasth / baseline\n")
    print(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
