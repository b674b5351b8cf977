"""``python -m fasth glow``: train Glow with an SVD (fasth), LU or plain invertible 1x1
convolution, in torch or JAX; ``--bench`` times the three variants.

Default: scikit-learn's bundled 8x8 digits (17 grey levels, so a uniform model scores log2(17) =
4.09 bits/dim), a few minutes on 2 CPU cores. Multi-process: ``torchrun --nproc-per-node N
-m fasth glow ...`` (DDP; gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import argparse
import sys

from fasth._cli import check_device
from fasth._cli import parser as parser_of
from .data import DATASETS
from .flow import CONVS

SIZES = {  # per data set, the options left unset
    "digits": dict(levels=2, steps=8, width=64, batch_size=64, epochs=30),
    "fashion-mnist": dict(levels=3, steps=16, width=256, batch_size=64, epochs=20),
    "cifar10": dict(levels=3, steps=32, width=512, batch_size=64, epochs=20),
}


def parser() -> argparse.ArgumentParser:
    p = parser_of("python -m fasth glow", __doc__)
    p.add_argument("--framework", choices=("torch", "jax"), default="torch")
    p.add_argument("--conv", choices=CONVS, default="svd",
                   help="invertible 1x1 convolution (default svd: fasth)")
    p.add_argument("--device", default=None,
                   help="torch device or JAX backend (default: cuda if available, else cpu)")
    p.add_argument("--data", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", default=None, help="where fashion-mnist / cifar10 live")
    p.add_argument("--n-bits", type=int, default=None, help="reduce 8-bit data to this many bits")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--levels", type=int, default=None, help="scales L of the multi-scale flow")
    p.add_argument("--steps", type=int, default=None, help="flow steps K per scale")
    p.add_argument("--width", type=int, default=None, help="hidden channels of the coupling nets")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--clip", type=float, default=50.0, help="gradient-norm clipping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="glow-out", help="directory for the checkpoint and PNG")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--bench", action="store_true",
                   help="time forward / inverse / forward+backward of plain, lu, svd instead of training")
    p.add_argument("--repeats", type=int, default=None, help="--bench: timed repeats per cell")
    p.add_argument("--per-step", action="store_true",
                   help="--bench: build each step's 1x1-conv matrix on its own, as openai/glow "
                        "does, instead of one batched call per scale")
    return p


def with_sizes(args: argparse.Namespace, sizes: dict) -> argparse.Namespace:
    """``args`` with each size option it leaves unset taken from ``sizes`` (a new namespace)."""
    return argparse.Namespace(**{**vars(args), **{k: v for k, v in sizes.items() if getattr(args, k) is None}})


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    check_device(p, args.device, args.framework)
    if args.bench:
        from .bench import run

        run(args)
        return 0
    args = with_sizes(args, SIZES[args.data])
    from .data import load
    from .flow import NonFiniteLoss
    from .train import train

    try:
        data = load(args.data, args.data_dir, args.n_bits)
    except (FileNotFoundError, ValueError) as e:
        print(f"fasth glow: {e}", file=sys.stderr)
        return 2
    print(f"Glow ({args.framework}, {args.conv} 1x1 conv) on {data.name} {data.shape}, "
          f"{len(data.train)} train / {len(data.test)} test, {data.levels} grey levels; "
          f"{args.levels} scales (L) of {args.steps} steps (K), width {args.width}, batch {args.batch_size}", flush=True)
    try:
        train(args, data)
    except NonFiniteLoss as e:
        print(f"fasth glow: training stopped: {e}", file=sys.stderr)
        return 1
    return 0
