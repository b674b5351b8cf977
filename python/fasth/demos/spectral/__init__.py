"""``python -m fasth spectral``: exact spectral normalisation against power iteration.

On scikit-learn's digits (built in, no download), each experiment trained twice, with
power-iteration spectral norm (one iteration per step, as
``torch.nn.utils.parametrizations.spectral_norm``) and with fasth's exact layers:

1. a Lipschitz classifier (dense layers, MaxMin activations): test accuracy, every layer's
   TRUE spectral norm measured afterwards by a dense SVD of the weight the model actually
   uses, the network's Lipschitz bound (product of true norms), certified accuracy at a few
   L2 radii (correct with ``margin / (sqrt(2) * L) > radius``), time per training step;
2. an i-ResNet (blocks ``x + g(x)``, ``g`` built to be ``0.9``-Lipschitz): inversion by
   fixed-point iteration, iterations and reconstruction error, each block's true Lipschitz
   bound.

Then a time-per-step comparison on one network at ``n = 4d``, ``16d``, ``32d`` and ``d/4``.
Prints a table, with notes on why fasth's step costs more than power iteration's (it builds
or applies two products of reflectors where power iteration adds two matrix-vector
products) and why its i-ResNet inversion takes more iterations (its layers' singular values
sit near the bound, so every direction contracts slowly); writes ``spectral.png`` (claimed
vs true norm per layer over training), ``spectral.json``, and ``rows.jsonl`` (each run and
timing as it ends) to ``--out``. Modules: ``common`` (data, training loop, metrics,
``collect``), ``report`` (table, plot), ``torch_demo`` and ``jax_demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from fasth._cli import check_device
from fasth._cli import parser as parser_of


def parser() -> argparse.ArgumentParser:
    p = parser_of("python -m fasth spectral", __doc__.split("\n\n")[0], defaults=True)
    p.add_argument("--framework", choices=("torch", "jax"), default="torch", help="the demo's framework")
    p.add_argument("--epochs", type=int, default=30, help="epochs of each training run")
    p.add_argument("--batch", type=int, default=128, help="rows per training step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--width", type=int, default=256, help="hidden width of the classifier")
    p.add_argument("--blocks", type=int, default=3, help="residual blocks of the i-ResNet")
    p.add_argument("--timing-width", type=int, default=256, help="d of the timing network")
    p.add_argument("--timing-steps", type=int, default=20, help="timed steps per method and shape")
    p.add_argument("--device", default="cpu", help="torch device or JAX backend")
    p.add_argument("--seed", type=int, default=0, help="data split, initialisation and batches")
    p.add_argument("--out", default="spectral_out", help="directory for spectral.png / spectral.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from fasth.bench.record import Record, interruptible

    from .common import load_digits
    from .report import plot, table

    p = parser()
    args = p.parse_args(argv)
    check_device(p, args.device, args.framework)
    data = load_digits(args.seed)
    if args.framework == "torch":
        from . import torch_demo as demo
    else:
        from . import jax_demo as demo
    record = Record(args.out, command="python -m fasth spectral " + " ".join(sys.argv[1:] if argv is None else argv))
    try:
        with interruptible():
            res = demo.run(args, data, record.row)
    finally:
        record.close()
    text = table(res)
    print(text)
    with open(os.path.join(args.out, "spectral.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, os.path.join(args.out, "spectral.png"))
    print(f"\nwrote {os.path.join(args.out, 'spectral.png')} and spectral.json (each run's rows as it "
          f"ended: {record.path})", file=sys.stderr)
    return 0
