"""fasth's CPU core against the same BLAS and LAPACK (float32, one process, interleaved
repeats), through the benchmark suite's methods (fasth.bench):

- forward ``U X`` at d=1024, n=64 against a dense ``U @ X`` through the same BLAS
  (SciPy's sgemm), LAPACK's sormqr (scipy.linalg.lapack) and a naive pure-torch compact WY;
- forward + backward at d=512, n=64 against ``torch.linalg.householder_product(...) @ X``.

Ratios are per repeat (same repeat index), median and 25-75 percentiles.
Usage: python benchmarks/cpu_core.py [--threads N] [--repeats R]"""

from __future__ import annotations

import argparse
import math
import sys

from fasth.bench.environment import environment, machine, threads
from fasth.bench.suite import Config, Suite
from fasth.bench.timing import ratio

SGEMM = "GEMM U@X (SciPy BLAS)"
CHECKS = [  # op, d, n, methods, the method the others are divided by
    ("apply", 1024, 64, ["fasth", SGEMM, "LAPACK ormqr (SciPy)", "compact WY (torch)"], SGEMM),
    ("fwd+bwd", 512, 64, ["fasth", "householder_product+matmul"], "fasth"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, help="threads for torch and the BLAS (default: theirs)")
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args(argv)
    with threads(a.threads):
        print(machine(environment("cpu", " ".join(sys.argv))))
        print("| op | d | n | method | median ms | ratio (25–75 %) |\n|---|---|---|---|---|---|")
        for op, d, n, methods, per in CHECKS:
            cfg = Config("cpu", ["float32"], [d], [str(n)], [op], methods, a.repeats,
                         slow_s=math.inf, cap_s=math.inf, grad_budget_s=0)
            suite = Suite(cfg)
            suite.group(op, "float32", d, str(n))
            rows = {r["method"]: r for r in suite.results}
            for m in methods:
                q = ratio(rows[m]["times_s"], rows[per]["times_s"])
                print(f"| {op} | {d} | {n} | {m} | {rows[m]['median_s'] * 1e3:.2f} | "
                      f"{m}/{per} = {q['median']:.2f} ({q['p25']:.2f}–{q['p75']:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
