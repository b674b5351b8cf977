"""The Glow driver: one training loop for both frameworks. Each framework's model file has a
``Trainer`` (its model, optimiser, step, evaluation, checkpoint format); this file holds the
loop around it: batches, learning-rate warm-up, resuming, checkpoints each epoch, the
non-finite-loss error, the final samples and reconstructions. ``train`` returns the results."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data import Data
from .flow import NonFiniteLoss, to_unit

EVAL_BATCH = 256  # test images per evaluation call
EVAL_SEED = 12345  # the test set's dequantisation noise: the same in every evaluation
PICTURE_SEED = 0  # the final samples' and reconstructions' noise
SAMPLES, TEMPERATURE, RECONSTRUCTIONS = 64, 0.7, 32  # in the PNG
RESUME_KEYS = ("levels", "steps", "width", "conv", "data")  # a checkpoint must match these


def image_grid(images: np.ndarray, cols: int) -> np.ndarray:
    """``(N, C, H, W)`` in ``[0, 1]`` to one ``(rows*(H+1)-1, cols*(W+1)-1[, 3])`` image."""
    n, c, h, w = images.shape
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c), np.float32)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = im.transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def save_png(path: Path, samples: np.ndarray, originals: np.ndarray, recons: np.ndarray,
             title: str) -> None:
    """Samples on the left; originals above their reconstructions on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = "gray" if samples.shape[1] == 1 else None
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    axes[0].imshow(image_grid(samples, 8), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"samples, T = {TEMPERATURE}")
    n = len(originals)
    cols = 8
    rows = []
    for r in range(math.ceil(n / cols)):
        rows += [originals[r * cols:(r + 1) * cols], recons[r * cols:(r + 1) * cols]]
    axes[1].imshow(image_grid(np.concatenate(rows), cols), cmap=cmap, vmin=0, vmax=1,
                   interpolation="nearest")
    axes[1].set_title("test images (odd rows) and reconstructions (even rows)")
    for a in axes:
        a.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def lr_at(step: int, lr: float, warmup: int) -> float:
    return lr * min(1.0, (step + 1) / warmup)


def batches(n: int, batch: int, epoch: int, seed: int, rank: int = 0, world: int = 1):
    """Index batches of one epoch: a permutation fixed by ``(seed, epoch)``, cut to a multiple
    of ``world * batch`` and dealt to the ranks (each rank ``batch`` per step)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // (batch * world)
    for s in range(steps):
        chunk = perm[s * batch * world:(s + 1) * batch * world]
        yield chunk[rank::world]


class Trainer(Protocol):
    """What a framework gives the driver (``torch_trainer.Trainer``, ``jax_model.Trainer``); a
    context manager that builds the model on entry and releases what it holds on exit."""

    title: str  # the framework as the PNG's title names it
    suffix: str  # the checkpoint's file suffix
    rank: int
    world: int

    def initialize(self, idx: np.ndarray) -> None: ...  # data-dependent init on these images
    def step(self, idx: np.ndarray, step: int, lr: float) -> float: ...  # one optimiser step: its loss
    def locate_nonfinite(self) -> str: ...  # where the last step's non-finite value arose
    def test_bpd(self, batch: int, seed: int) -> float: ...
    def pictures(self, n: int, temperature: float, originals: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray]: ...  # samples, reconstructions
    def save(self, path: Path, meta: dict) -> None: ...
    def read(self, path: Path) -> dict: ...
    def restore(self, checkpoint: dict) -> None: ...


def trainer(args: Any, data: Data) -> Trainer:
    if args.framework == "torch":
        from .torch_trainer import Trainer as T
    else:
        from .jax_model import Trainer as T
    return T(args, data)


def check_resume(saved: dict, args: Any, path: Path) -> None:
    """A checkpoint resumes only the run it came from (same model and data)."""
    for key in RESUME_KEYS:
        if saved[key] != getattr(args, key):
            raise ValueError(f"--resume: checkpoint {path} has {key}={saved[key]!r}, not {getattr(args, key)!r}")


def train(args: Any, data: Data) -> dict:
    """Train (or with ``args.resume`` continue) a Glow; ``{"train_bpd", "test_bpd", "png",
    "checkpoint"}`` on the main rank, ``{}`` on the others. Each epoch's result reaches
    ``rows.jsonl`` in ``args.out`` as the epoch ends (``fasth.bench.record``)."""
    from tqdm import tqdm

    from fasth.bench.record import Record

    out = Path(args.out)
    with trainer(args, data) as t, contextlib.ExitStack() as stack:
        main_rank = t.rank == 0
        ckpt = out / f"glow-{args.framework}-{args.conv}.{t.suffix}"
        if args.resume:
            if not ckpt.exists():
                raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
            ck = t.read(ckpt)
            check_resume(ck["args"], args, ckpt)
            t.restore(ck)
            start_epoch, step = ck["epoch"], ck["step"]
            if main_rank:
                print(f"resumed from {ckpt} at epoch {start_epoch}")
        else:
            # Data-dependent actnorm init on this rank's first batch (DDP then broadcasts rank
            # 0's parameters, so that all ranks start equal).
            t.initialize(next(batches(len(data.train), args.batch_size, 0, args.seed, t.rank, t.world)))
            start_epoch, step = 0, 0
        if main_rank:
            record = Record(out, append=args.resume, args=vars(args))
            stack.callback(record.close)
        t0 = time.perf_counter()
        train_bpd = float("nan")
        for epoch in range(start_epoch, args.epochs):
            its = list(batches(len(data.train), args.batch_size, epoch, args.seed, t.rank, t.world))
            bar = tqdm(its, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not main_rank or args.quiet,
                       leave=False, dynamic_ncols=True)
            tot, cnt = 0.0, 0
            for i, idx in enumerate(bar):
                where = f"epoch {epoch + 1}, step {i + 1} (global step {step + 1})"
                try:
                    loss = t.step(idx, step, lr_at(step, args.lr, args.warmup))
                except NonFiniteLoss as e:
                    raise NonFiniteLoss(f"{e} at {where}") from None
                if not math.isfinite(loss):
                    raise NonFiniteLoss(f"non-finite loss {loss} at {where}; {t.locate_nonfinite()}")
                step += 1
                tot += loss
                cnt += 1
                bar.set_postfix(bpd=f"{tot / cnt:.3f}")
            train_bpd = tot / max(cnt, 1)
            if main_rank:
                tb = t.test_bpd(EVAL_BATCH, EVAL_SEED)
                seconds = time.perf_counter() - t0
                record.row("epoch", {"epoch": epoch + 1, "step": step, "train_bpd": train_bpd,
                                     "test_bpd": tb, "seconds": seconds})
                print(f"epoch {epoch + 1}/{args.epochs}: train {train_bpd:.4f} bits/dim, "
                      f"test {tb:.4f} bits/dim, {seconds:.1f} s", flush=True)
                out.mkdir(parents=True, exist_ok=True)
                t.save(ckpt, {"epoch": epoch + 1, "step": step, "args": vars(args)})
        if not main_rank:
            return {}
        tb = t.test_bpd(EVAL_BATCH, EVAL_SEED)
        originals = data.test[:RECONSTRUCTIONS]
        samples, recons = t.pictures(SAMPLES, TEMPERATURE, originals, PICTURE_SEED)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"glow-{args.framework}-{args.conv}.png"
    save_png(png, to_unit(samples, data.levels), originals / (data.levels - 1), to_unit(recons, data.levels),
             f"{t.title} Glow, {args.conv} 1x1 conv, {data.name}: test {tb:.3f} bits/dim")
    print(f"final: train {train_bpd:.4f} bits/dim, test {tb:.4f} bits/dim "
          f"(uniform {math.log2(data.levels):.4f}); {time.perf_counter() - t0:.1f} s; "
          f"wrote {png} and {ckpt}")
    return {"train_bpd": train_bpd, "test_bpd": tb, "png": str(png), "checkpoint": str(ckpt)}
