"""Training loop for the torch Glow (single process or ``torchrun`` with DDP), and the
pieces shared with the JAX loop: image grids, the non-finite-loss error."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from .data import Data


class NonFiniteLoss(FloatingPointError):
    """Raised when a loss or gradient is not finite; the message says where."""


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
    axes[0].set_title("samples, T = 0.7")
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


def train_torch(args, data: Data) -> int:
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from .torch_model import Glow, bits_per_dim, postprocess, preprocess

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world > 1
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_rank = rank == 0
    try:
        torch.manual_seed(args.seed)
        model = Glow(data.shape, args.levels, args.steps, args.width, args.conv, seed=args.seed).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        out = Path(args.out)
        ckpt_path = out / f"glow-torch-{args.conv}.pt"
        start_epoch, step = 0, 0
        x_train = torch.as_tensor(data.train)
        x_test = torch.as_tensor(data.test)
        if args.resume:
            if not ckpt_path.exists():
                raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
            for key in ("levels", "steps", "width", "conv", "data"):
                if ck["args"][key] != getattr(args, key):
                    raise ValueError(f"--resume: checkpoint {ckpt_path} has {key}={ck['args'][key]!r}, "
                                     f"not {getattr(args, key)!r}")
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            start_epoch, step = ck["epoch"], ck["step"]
            if main_rank:
                print(f"resumed from {ckpt_path} at epoch {start_epoch}")
        else:
            # Data-dependent actnorm init on this rank's first batch; DDP then broadcasts
            # rank 0's parameters so that all ranks start equal.
            idx = next(batches(len(x_train), args.batch_size, 0, args.seed, rank, world))
            model.initialize(preprocess(x_train[idx].to(device), data.levels))
        net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
        gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + rank)

        def test_bpd() -> float:
            model.eval()
            g = torch.Generator(device=device).manual_seed(12345)
            total = 0.0
            with torch.no_grad():
                for i in range(0, len(x_test), 256):
                    x = preprocess(x_test[i:i + 256].to(device), data.levels, g)
                    total += bits_per_dim(model(x), model.dims, data.levels).sum().item()
            model.train()
            return total / len(x_test)

        t0 = time.perf_counter()
        train_bpd = float("nan")
        for epoch in range(start_epoch, args.epochs):
            model.train()
            its = list(batches(len(x_train), args.batch_size, epoch, args.seed, rank, world))
            bar = tqdm(its, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not main_rank or args.quiet,
                       leave=False, dynamic_ncols=True)
            tot, cnt = 0.0, 0
            for i, idx in enumerate(bar):
                x = preprocess(x_train[idx].to(device), data.levels, gen)
                loss = bits_per_dim(net(x), model.dims, data.levels).mean()
                where = f"epoch {epoch + 1}, step {i + 1} (global step {step + 1})"
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"non-finite loss {loss.item()} at {where}; "
                                        f"{_locate_nonfinite(model, x)}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                if not torch.isfinite(gnorm):
                    bad = [n for n, p in model.named_parameters()
                           if p.grad is not None and not torch.isfinite(p.grad).all()]
                    raise NonFiniteLoss(f"non-finite gradient at {where}, first in {bad[:3]}")
                for gr in opt.param_groups:
                    gr["lr"] = lr_at(step, args.lr, args.warmup)
                opt.step()
                step += 1
                tot += loss.item()
                cnt += 1
                bar.set_postfix(bpd=f"{tot / cnt:.3f}")
            train_bpd = tot / max(cnt, 1)
            if main_rank:
                tb = test_bpd()
                print(f"epoch {epoch + 1}/{args.epochs}: train {train_bpd:.4f} bits/dim, "
                      f"test {tb:.4f} bits/dim, {time.perf_counter() - t0:.1f} s", flush=True)
                out.mkdir(parents=True, exist_ok=True)
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                            "step": step, "args": vars(args)}, ckpt_path)
        if main_rank:
            tb = test_bpd()
            model.eval()
            with torch.no_grad():
                g = torch.Generator(device=device).manual_seed(0)
                samples = postprocess(model.sample(64, 0.7, g), data.levels).cpu().numpy()
                orig = x_test[:32].to(device)
                zs, _, _ = model.encode(preprocess(orig, data.levels, g))
                recons = postprocess(model.inverse(zs), data.levels).cpu().numpy()
            out.mkdir(parents=True, exist_ok=True)
            png = out / f"glow-torch-{args.conv}.png"
            save_png(png, samples, orig.cpu().numpy() / (data.levels - 1), recons,
                     f"torch Glow, {args.conv} 1x1 conv, {data.name}: test {tb:.3f} bits/dim")
            print(f"final: train {train_bpd:.4f} bits/dim, test {tb:.4f} bits/dim "
                  f"(uniform {math.log2(data.levels):.4f}); {time.perf_counter() - t0:.1f} s; "
                  f"wrote {png} and {ckpt_path}")
            args.result = {"train_bpd": train_bpd, "test_bpd": tb}
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def _locate_nonfinite(model, x) -> str:
    """Rerun the forward with hooks and name the first layer whose output is not finite."""
    import torch

    found: list[str] = []

    def hook(name):
        def fn(_mod, _inp, out):
            outs = out if isinstance(out, tuple) else (out,)
            if not found and any(isinstance(o, torch.Tensor) and not torch.isfinite(o).all() for o in outs):
                found.append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return f"first non-finite output in layer {found[0]!r}" if found else \
        "every layer output is finite (the non-finite value is in the prior or the sum)"
