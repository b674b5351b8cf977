"""The benchmarks' reports: markdown tables, the JSON record and the plots, for the suite
(``python -m fasth bench``) and the layer benchmark (``--layers``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .cases import METHODS, OPS
from .environment import machine


def _ms(t: float) -> str:
    return f"{t * 1e3:.3g}"


def _time(t: float) -> str:
    """Seconds in the unit that gives 1 to 999 of it."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


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
    # one f-string: the environment's text (variables, paths) is data, never a format template
    start, end = env["loadavg_1min"]
    return [f"# {title}", "",
            f"`{env['command']}` · {env['date']} · {machine(env)} · load average (1 min) at "
            f"start/end: {start:.1f}/{end:.1f}", ""]


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
    if "vs_drop_in" in r:
        s += f" · /fasth's drop-in {_ratio(r['vs_drop_in'])}"
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
    return [f"## accuracy ({dtype}): max|UᴴU − I| / gradient max rel. error vs float64 (complex128) "
            "reference", ""] + \
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


# the layer benchmark ---------------------------------------------------------------------

def _threads(n: int | None) -> str:
    return "default threads" if n is None else f"{n} thread" + ("s" if n > 1 else "")


def _calls(r: dict) -> str:
    if "backend_calls" not in r:
        return ""
    return f"{r['backend_calls']} (" + ", ".join(f"{k} {v}" for k, v in r["by_op"].items()) + ")" \
        if r["by_op"] else "0"


def _step_cell(r: dict) -> str:
    if (s := _status(r)) is not None:
        return s
    s = _time(r["median_s"])
    if r.get("vs_linear"):
        s += f" · {_ratio(r['vs_linear'])} Linear"
    if r.get("vs_peer"):
        s += f" · {_ratio(r['vs_peer'])} fasth"
    if r.get("reps", 0) == 1:
        s += " · 1 rep"
    return s


def layers_markdown(data: dict) -> str:
    from .layers import LAYERS

    cfg, steps = data["config"], data["steps"]
    out = _header("fasth layer benchmark", data["environment"]) + [
        "Training step = forward, mean-square loss, backward, Adam step of a d x d layer on a "
        f"(batch, d) input ({cfg['dtype']}, {cfg['device']}). Cells: median time · its ratio to "
        "`nn.Linear` (25–75 percentile) · for an alternative, its ratio to its fasth counterpart "
        f"({', '.join(f'{k}: {v.peer}' for k, v in LAYERS.items() if v.peer)}); every ratio pair "
        "by pair from repeats interleaved in this run.", ""]
    for n in cfg["threads"]:
        for b in cfg["batches"]:
            by = {(r["layer"], r["d"]): r for r in steps if r["threads"] == n and r["batch"] == b}
            if not by:  # a run stopped before this group
                continue
            out += [f"## training step, batch {b}, {_threads(n)}", ""]
            rows = [[m] + [_step_cell(by[(m, d)]) if (m, d) in by else "—" for d in cfg["ds"]]
                    for m in cfg["layers"]]
            out += _table(["layer"] + [f"d={d}" for d in cfg["ds"]], rows) + [""]
    counted = [r for r in steps if "backend_calls" in r]
    if counted:
        sizes = sorted({(r["d"], r["batch"]) for r in counted})
        by = {(r["layer"], r["d"], r["batch"]): r for r in counted}
        names = [m for m in cfg["layers"] if any((m, d, b) in by for d, b in sizes)]
        out += ["## backend calls per training step (`fasth.profile()`: BLAS calls on the CPU, "
                "kernel launches on CUDA; by operation)", ""]
        out += _table(["layer"] + [f"d={d} batch={b}" for d, b in sizes],
                      [[m] + [_calls(by.get((m, d, b), {})) for d, b in sizes] for m in names]) + [""]
    for n in cfg["threads"]:
        rows = [[r["case"], r["op"], f"{_time(r['median_s'])} ({_time(r['p25_s'])}–{_time(r['p75_s'])})",
                 _ratio(r["vs_base"]) + f" {r['base']}" if r.get("vs_base") else "",
                 _calls(r)] for r in data["calls"] if r["threads"] == n]
        out += [f"## fixed cost per call, {_threads(n)}", ""]
        out += _table(["case", "op", "median (25–75)", "ratio", "backend calls"], rows) + [""]
    if data.get("plans"):
        by = {(r["d"], r["n"], r["device"]): r for r in data["plans"]}
        sizes = sorted({(r["d"], r["n"]) for r in data["plans"]}, key=lambda s: (s[0], -s[1]))
        out += ["## backend calls of `apply` (k = d, float32) by each device's plan, forward / "
                "forward + backward from the tape (both run on the CPU backend; on CUDA each is a "
                "launch; where CUDA's plan takes blocks of 128, a GPU makes 3 fewer: its larft takes "
                "them whole)", ""]
        cell = lambda r: f"{r['forward']} / {r['forward_backward']} (blocks of {r['block']})"  # noqa: E731
        out += _table(["d", "n", "CPU plan", "CUDA plan"],
                      [[str(d), str(n)] + [cell(by[(d, n, dev)]) for dev in ("cpu", "cuda")] for d, n in sizes]) + [""]
    acc = data["accuracy"]
    if acc:
        ds = sorted({a["d"] for a in acc})
        by = {(a["layer"], a["d"]): a["orth_err"] for a in acc}
        names = [m for m in cfg["layers"] if any((m, d) in by for d in ds)]
        out += ["## accuracy: max|WᵀW − I| of the orthogonal layers' weights after the timed steps", ""]
        out += _table(["layer"] + [f"d={d}" for d in ds],
                      [[m] + [_fmt(by.get((m, d))) for d in ds] for m in names]) + [""]
    return "\n".join(out)


def layers_plot(data: dict, path: Path) -> None:
    plt = _pyplot()
    cfg, steps = data["config"], data["steps"]
    nt, nb = len(cfg["threads"]), len(cfg["batches"])
    fig, axes = plt.subplots(nt, nb, figsize=(5.5 * nb, 4.2 * nt), squeeze=False)
    for i, n in enumerate(cfg["threads"]):
        for j, b in enumerate(cfg["batches"]):
            ax = axes[i][j]
            for m in cfg["layers"]:
                pts = sorted((r["d"], r["median_s"]) for r in steps if r["layer"] == m
                             and r["threads"] == n and r["batch"] == b and "median_s" in r)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=m, lw=2.2 if m.startswith("fasth") else 1.1,
                            ls="-" if m.startswith("fasth") or m == "nn.Linear" else "--")
            ax.set(xscale="log", yscale="log", xlabel="d", ylabel="time per training step (s)",
                   title=f"batch {b}, {_threads(n)}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
