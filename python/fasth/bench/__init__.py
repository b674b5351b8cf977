"""``python -m fasth bench``: fasth beside the alternatives and beside the GEMM limit;
``python -m fasth bench --layers``: fasth's layers beside the alternatives in a training step.

The suite times, for each operation (the forward ``U X``, its forward + backward,
materialising ``U``) and size, every method interleaved with the others, so the ratios
(baseline / fasth, fasth / GEMM) are taken pair by pair from the same repeat; medians and
the 25-75 percentile spread are reported, with each method's accuracy beside its speed.
Methods too slow for a size are timed once or skipped (said in the table). Writes
``results.md``, ``results.json`` and ``time_vs_d.png`` (``layers_vs_d.png`` with
``--layers``) to ``--out``.

Modules: ``timing`` (the one timing utility of the benchmarks, demos and self-check),
``cases`` (the suite's problems and methods), ``suite`` (measuring them), ``accuracy``,
``layers`` (the layer benchmark), ``environment`` (the machine and its threads), ``report``
(markdown, JSON, plots) and ``cli``."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from .cli import main as run

    return run(argv)
