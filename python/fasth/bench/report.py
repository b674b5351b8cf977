"""The benchmark's report: markdown tables, the JSON record and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .cases import METHODS, OPS
from .environment import machine


def _ms(t: float) -> str:
    return f"{t * 1e3:.3g}"


def _ratio(s: dict) -> str:
    return f"{s['median']:.3g}× ({s['p25']:.3g}–{s['p75']:.3g})"


def _status(r: dict) -> str | None:
    """The cell of a row without a time (not run, failed), else None."""
    if r["status"] != "ok" or "median_s" not in r:
        return f"{r['status']}" + (f": {r['note']}" if r["note"] else "")
    return None


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
           ["| " + " | ".join(r) + " |" for r in rows]


def _header(title: str, env: dict) -> list[str]:
    return [f"# {title}", "",
            f"`{env['command']}` · {env['date']} · {machine(env)} · load average (1 min) at "
            "start/end: {:.1f}/{:.1f}".format(*env["loadavg_1min"]), ""]


def write(out: Path, data: dict, text: str, plot: Callable[[dict, Path], None], png: str) -> list[Path]:
    """``results.md``, ``results.json`` and the plot under ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.md", out / "results.json", out / png]
    paths[0].write_text(text + "\n")
    paths[1].write_text(json.dumps(data, indent=1, default=str) + "\n")
    plot(data, paths[2])
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# the suite -------------------------------------------------------------------------------

def _cell(r: dict) -> str:
    if (s := _status(r)) is not None:
        return s
    s = f"{_ms(r['median_s'])} ms"
    if "vs_fasth" in r:
        s += f" · {_ratio(r['vs_fasth'])}"
    if "fasth_over_gemm" in r:
        s += f" · /GEMM {_ratio(r['fasth_over_gemm'])}"
    if r.get("reps", 0) == 1:
        s += " · 1 rep"
    if "peak_extra_bytes" in r:
        s += f" · {r['peak_extra_bytes'] / 2**20:.3g} MiB"
    return s


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1e}"


def suite_markdown(data: dict) -> str:
    cfg = data["config"]
    out = _header("fasth benchmark", data["environment"]) + [
        "Cells: median time · baseline/fasth median (25–75 percentile), pairs from interleaved "
        "repeats; the fasth row shows fasth/GEMM, GEMM = dense `U @ X` in torch with `U` given.", ""]
    res = data["results"]
    for dtype in cfg["dtypes"]:
        for op in cfg["ops"]:
            sizes = sorted({(r["d"], r["n"]) for r in res if r["op"] == op and r["dtype"] == dtype})
            if not sizes:
                continue
            out += [f"## {OPS[op]} ({dtype}, {cfg['device']})", ""]
            head = ["method"] + [f"d={d}" if op == "matrix" else f"d={d} n={n}" for d, n in sizes]
            by = {(r["method"], r["d"], r["n"]): r for r in res if r["op"] == op and r["dtype"] == dtype}
            rows = [[m] + [_cell(by[(m, d, n)]) for d, n in sizes] for m in cfg["methods"]
                    if any(by[(m, d, n)]["status"] != "n/a" for d, n in sizes)]
            out += _table(head, rows) + [""]
        out += _suite_accuracy([a for a in data["accuracy"] if a["dtype"] == dtype], dtype, cfg)
    return "\n".join(out)


def _suite_accuracy(acc: list[dict], dtype: str, cfg: dict) -> list[str]:
    if not acc:
        return []
    ds = sorted({a["d"] for a in acc})
    by = {(a["method"], a["d"]): a for a in acc}

    def own(m: str, a: dict) -> str:  # ¹: an independent reference was too slow, its own run
        if "grad_err" not in a:
            return ""
        return "" if a["grad_ref"].startswith(m) == (METHODS[m].ref in (None, m)) else "¹"

    rows = [[m] + [(_fmt(by[(m, d)].get("orth_err")) + " / " +
                    (by[(m, d)].get("grad_note") or _fmt(by[(m, d)].get("grad_err"))) + own(m, by[(m, d)]))
                   if (m, d) in by else "—" for d in ds]
            for m in cfg["methods"] if any((m, d) in by for d in ds)]
    return [f"## accuracy ({dtype}): max|UᵀU − I| / gradient max rel. error vs float64 reference", ""] + \
        _table(["method"] + [f"d={d}" for d in ds], rows) + [
        "", "Gradient reference: fasth, sequential, fasth++, compact WY and torch-householder: "
        "the sequential loop in float64; torch.ormqr: householder_product in float64; others: "
        "their own float64 run (¹: the independent reference was too slow at this d, so its own "
        "float64 run).", ""]


def suite_plot(data: dict, path: Path) -> None:
    plt = _pyplot()
    cfg, res = data["config"], data["results"]
    dtype = cfg["dtypes"][0]
    n_label = "64" if "64" in cfg["ns"] else cfg["ns"][0]
    fig, axes = plt.subplots(1, len(cfg["ops"]), figsize=(6 * len(cfg["ops"]), 4.5), squeeze=False)
    for ax, op in zip(axes[0], cfg["ops"]):
        for m in cfg["methods"]:
            pts = sorted((r["d"], r["median_s"]) for r in res if r["op"] == op and r["method"] == m
                         and r["dtype"] == dtype and "median_s" in r
                         and (op == "matrix" or r["n_label"] == n_label))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m, lw=2.5 if m == "fasth" else 1.2)
        ax.set(xscale="log", yscale="log", xlabel="d", ylabel="time (s)",
               title=f"{OPS[op]}" + ("" if op == "matrix" else f", n={n_label}") + f" ({dtype})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
