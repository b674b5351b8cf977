"""The command line of ``python -m fasth bench`` (the suite) and ``python -m fasth bench
--layers`` (the layer benchmark)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .._cli import check_device
from .._cli import parser as parser_of
from . import __doc__ as DOC


@dataclass(frozen=True)
class Effort:
    repeats: int  # interleaved repeats per size
    slow_s: float  # a first call slower than this is the only sample
    cap_s: float  # a case whose time, estimated from the size before, exceeds this is skipped
    grad_budget_s: float  # the suite's float64 gradient references run only below this


QUICK = Effort(5, 0.3, 5.0, 1.5)  # a few minutes on 2 cores
FULL = Effort(9, 1.0, 60.0, 20.0)  # steadier medians, every size measured where it can be

SUITE_DS = [64, 256, 1024]
SUITE_NS = "1,64,1024,d"
LAYER_DS, LAYER_BATCHES = [64, 256, 512, 1024], [32, 128, 1024]
QUICK_LAYER_DS, QUICK_LAYER_BATCHES = [64, 256, 512], [32, 1024]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parser() -> argparse.ArgumentParser:
    from .cases import OPS

    ap = parser_of("python -m fasth bench", DOC.split("\n\n")[0])
    ap.add_argument("--small", action="store_true",
                    help="many small orthogonal matrices: fasth beside torch.bmm, householder_product "
                         "and matrix_exp at B x d = 8192x8 .. 64x128 (fasth.bench.small)")
    ap.add_argument("--layers", action="store_true",
                    help="the layer benchmark (training steps, fixed cost per call, backend calls) "
                         "instead of the suite")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", default=None,
                    help="float32, float64, complex64, complex128, comma-separated (default: "
                         "float32,float64 on CPU, float32 on CUDA, with --quick and with --layers, "
                         "which takes one real dtype)")
    ap.add_argument("--quick", action="store_true", help="a subset that runs in a few minutes on 2 cores")
    ap.add_argument("--out", default="fasth-bench", help="output folder (default ./fasth-bench)")
    ap.add_argument("--d", type=_ints, help="sizes d, comma-separated (overrides the defaults)")
    ap.add_argument("--n", help="sizes n, comma-separated; 'd' means n = d (the suite)")
    ap.add_argument("--batch", type=_ints, help="batch sizes, comma-separated (--layers)")
    ap.add_argument("--ops", default=",".join(OPS), help=f"subset of {','.join(OPS)} (the suite)")
    ap.add_argument("--methods", help="comma-separated subset of the methods (fasth and the GEMM "
                    "always run), or with --layers of the layers (nn.Linear always runs)")
    ap.add_argument("--repeats", type=int, help=f"interleaved repeats per size (default {QUICK.repeats} "
                    f"quick, {FULL.repeats} full)")
    ap.add_argument("--threads", type=_ints, help="threads for every library (torch, the BLAS fasth "
                    "and SciPy use, XLA); --layers measures each of a comma-separated list in turn "
                    "(default there 1,2 on CPU); default: each library's own")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _dtypes(ap: argparse.ArgumentParser, a: argparse.Namespace, default: str) -> list[str]:
    dtypes = (a.dtype or default).split(",")
    for t in dtypes:
        if t not in ("float32", "float64", "complex64", "complex128"):
            ap.error(f"--dtype: {t!r} is not float32, float64, complex64 or complex128")
    return dtypes


def _subset(ap: argparse.ArgumentParser, given: str | None, known: list[str], always: list[str]) -> list[str]:
    if not given:
        return list(known)
    chosen = given.split(",")
    if bad := set(chosen) - set(known):
        ap.error(f"--methods: unknown {sorted(bad)}; choose from {known}")
    return [m for m in known if m in always or m in chosen]


def suite_config(ap: argparse.ArgumentParser, a: argparse.Namespace):
    from .cases import GEMM, METHODS, OPS
    from .suite import Config

    if a.threads and len(a.threads) > 1:
        ap.error("--threads: the suite takes one thread count (--layers takes a list)")
    dtypes = _dtypes(ap, a, "float32" if a.quick or a.device == "cuda" else "float32,float64")
    ds = a.d or (SUITE_DS + ([4096] if a.device == "cuda" and not a.quick else []))
    ns = (a.n or ("64" if a.quick else SUITE_NS)).split(",")
    ops = a.ops.split(",")
    if bad := set(ops) - set(OPS):
        ap.error(f"--ops: unknown {sorted(bad)}; choose from {list(OPS)}")
    methods = _subset(ap, a.methods, list(METHODS), ["fasth", GEMM])  # fasth/GEMM needs the GEMM
    e = QUICK if a.quick else FULL
    return Config(a.device, dtypes, ds, ns, ops, methods, a.repeats or e.repeats,
                  slow_s=e.slow_s, cap_s=e.cap_s, grad_budget_s=e.grad_budget_s)


def layer_config(ap: argparse.ArgumentParser, a: argparse.Namespace):
    from .layers import LAYERS, LINEAR, LayerConfig

    dtypes = _dtypes(ap, a, "float32")
    if len(dtypes) > 1 or dtypes[0].startswith("complex"):
        ap.error("--dtype: --layers takes one real dtype")
    threads: list[int | None] = list(a.threads) if a.threads else ([1, 2] if a.device == "cpu" else [None])
    e = QUICK if a.quick else FULL
    return LayerConfig(a.device, dtypes[0], a.d or (QUICK_LAYER_DS if a.quick else LAYER_DS),
                       a.batch or (QUICK_LAYER_BATCHES if a.quick else LAYER_BATCHES), threads,
                       _subset(ap, a.methods, list(LAYERS), [LINEAR]), a.repeats or e.repeats,
                       slow_s=e.slow_s, cap_s=e.cap_s, full=not a.quick)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser()
    a = ap.parse_args(argv)
    check_device(ap, a.device)
    command = "python -m fasth bench " + " ".join(argv)
    if a.small:
        from .small import run

        return run(a.threads, a.repeats, a.dtype, a.out, command)
    if a.layers:
        return run_layers(layer_config(ap, a), a, command)
    cfg = suite_config(ap, a)
    from .environment import threads

    with threads(a.threads[0] if a.threads else None):
        return run_suite(cfg, a, command)


def _progress(total: int, desc: str, off: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=off, file=sys.stderr)


def _finish(out: Path, data: dict, markdown, plot, png: str, complete: bool) -> list[Path]:
    """The report of what was measured; a run cut short says so on its first line."""
    from .report import write

    text = markdown(data)
    if not complete:
        text = ("**Interrupted: the rows measured before the run stopped** (every row is also in "
                "`rows.jsonl`).\n\n" + text)
    paths = write(out, data, text, plot, png)
    print(text)
    print("\nwrote " + ", ".join(map(str, paths)))
    return paths


def _measure(a: argparse.Namespace, cfg, command: str, tables: dict, run, markdown, plot, png: str) -> int:
    """Runs ``run(flush)``, which appends rows to the lists in ``tables`` and calls ``flush()``
    after each group, so every row is on disk when its group ends; writes the report after,
    also when the run stops early (error, Ctrl-C, SIGTERM), and then lets the error go on."""
    from .environment import environment
    from .record import Record, interruptible

    out, load = Path(a.out), os.getloadavg()
    env = environment(cfg.device, command)
    record = Record(out, environment=env, config=cfg.__dict__)

    def flush() -> None:
        for name, rows in tables.items():
            record.new_rows(name, rows)

    complete = False
    try:
        with interruptible():
            run(flush)
        complete = True
    finally:
        flush()
        record.close()
        data = {"environment": env | {"loadavg_1min": [load[0], os.getloadavg()[0]]},
                "config": cfg.__dict__, **tables, "complete": complete}
        try:
            _finish(out, data, markdown, plot, png, complete)
        except Exception as e:  # noqa: BLE001 - the rows are on disk; the run's own error goes on
            if complete:
                raise
            print(f"the partial report failed ({type(e).__name__}: {e}); the rows are in "
                  f"{record.path}", file=sys.stderr)
    return 0


def run_suite(cfg, a: argparse.Namespace, command: str) -> int:
    from .report import suite_markdown, suite_plot
    from .suite import Suite

    suite = Suite(cfg)
    plan = [(dt, d, op, n) for dt in cfg.dtypes for d in cfg.ds for op in cfg.ops
            for n in (cfg.ns[:1] if op == "matrix" else cfg.ns) if not (n == "d" and str(d) in cfg.ns)]

    def run(flush) -> None:
        with _progress(len(plan), "fasth bench", a.no_progress) as bar:
            for dt, d, op, n in plan:
                bar.set_postfix_str(f"{dt} d={d} {op} n={n}")
                suite.group(op, dt, d, n)
                flush()
                bar.update(1)

    tables = {"results": suite.results, "accuracy": suite.accuracy}
    return _measure(a, cfg, command, tables, run, suite_markdown, suite_plot, "time_vs_d.png")


def run_layers(cfg, a: argparse.Namespace, command: str) -> int:
    from .layers import LayerBench, groups
    from .report import layers_markdown, layers_plot

    bench = LayerBench(cfg)

    def run(flush) -> None:
        with _progress(groups(cfg), "fasth bench --layers", a.no_progress) as bar:
            def progress(what: str) -> None:  # called as each group starts: the last one ended
                flush()
                bar.set_postfix_str(what)
                bar.update(1)

            bench.run(progress)

    tables = {"steps": bench.steps, "calls": bench.calls, "accuracy": bench.accuracy, "plans": bench.plans}
    return _measure(a, cfg, command, tables, run, layers_markdown, layers_plot, "layers_vs_d.png")
