"""The CPU float32 speed and accuracy targets fasth was built to, checked against a suite
run's results.json (``python -m fasth bench --out DIR`` with d = 1024 and n = 64 among its
sizes; ``--quick`` has them). Kept out of the installed package: they are this project's
goals, not part of a measurement.

  - forward d=1024 n=64: fasth / GEMM at most 3; forward + backward at most 4
  - forward + backward d=1024 n=64: householder_product / fasth at least 100
  - forward + backward d >= 256: fasth faster than every baseline but the GEMM
  - fasth's U no less orthogonal than householder_product's

Usage: python benchmarks/suite_targets.py DIR/results.json  (exits 1 if a target is missed)"""

from __future__ import annotations

import json
import sys

from fasth.bench.cases import GEMM

FWD_OVER_GEMM = 3  # forward: fasth within this factor of a dense U @ X
FWD_BWD_OVER_GEMM = 4  # forward + backward: likewise
HOUSEHOLDER_PRODUCT_OVER_FASTH = 100  # torch's own op's forward + backward, this many times slower


def targets(data: dict) -> list[tuple[str, bool | None]]:
    """(line, met) for each target measured in ``data`` (met None: a reading, no target)."""
    res = {(r["op"], r["dtype"], r["d"], r["n"], r["method"]): r for r in data["results"]}
    get = lambda op, m, d=1024, n=64: res.get((op, "float32", d, n, m), {})  # noqa: E731
    out: list[tuple[str, bool | None]] = []
    for op, what, limit in (("apply", "forward", FWD_OVER_GEMM), ("fwd+bwd", "fwd+bwd", FWD_BWD_OVER_GEMM)):
        if f := get(op, "fasth").get("fasth_over_gemm"):
            out.append((f"{what} d=1024 n=64: fasth/GEMM = {f['median']:.2f} (target ≤ {limit})",
                        f["median"] <= limit))
    if s := get("apply", "GEMM U@X (SciPy BLAS)").get("vs_fasth"):
        out.append((f"forward d=1024 n=64: fasth/sgemm (SciPy's BLAS) = {1 / s['median']:.2f}", None))
    if h := get("fwd+bwd", "householder_product+matmul").get("vs_fasth"):
        out.append((f"fwd+bwd d=1024 n=64: householder_product/fasth = {h['median']:.0f}× "
                     f"(target ≥ {HOUSEHOLDER_PRODUCT_OVER_FASTH})", h["median"] >= HOUSEHOLDER_PRODUCT_OVER_FASTH))
    big = [r for r in data["results"] if r["op"] == "fwd+bwd" and r["dtype"] == "float32" and r["d"] >= 256]
    if big:
        slower = [r for r in big if "vs_fasth" in r and r["method"] != GEMM and r["vs_fasth"]["median"] < 1]
        out.append(("fwd+bwd d≥256: fasth faster than every baseline" + "".join(
            f"; not {r['method']} (d={r['d']} n={r['n']}: {r['vs_fasth']['median']:.2f}×)" for r in slower),
            not slower))
    acc = {(a["dtype"], a["d"], a["method"]): a.get("orth_err") for a in data["accuracy"]}
    pairs = [(d, v, acc.get((dt, d, "householder_product+matmul"))) for (dt, d, m), v in acc.items()
             if m == "fasth" and dt == "float32" and v is not None]
    pairs = [(d, a, b) for d, a, b in pairs if b is not None]
    if pairs:
        worse = [(d, a, b) for d, a, b in pairs if a > b]
        out.append(("orthogonality of fasth's U no worse than householder_product's" + "".join(
            f"; worse at d={d} ({a:.1e} vs {b:.1e})" for d, a, b in worse), not worse))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.rsplit("Usage: ", 1)[1], file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        lines = targets(json.load(f))
    for line, met in lines:
        print(f"- {line}" + ("" if met is None else ": met" if met else ": MISSED"))
    if not lines:
        print("no target's sizes in this run (it needs float32, d = 1024, n = 64 on the CPU)")
    return 0 if all(met is not False for _, met in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
