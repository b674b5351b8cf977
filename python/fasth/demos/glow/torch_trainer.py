"""The torch side of Glow's driver (``train.py``): dequantisation, the ``Trainer`` (single
process or ``torchrun`` with DDP) and the search for a non-finite layer."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from .flow import NonFiniteLoss, bits_per_dim
from .torch_model import Glow


def preprocess(x_int: Tensor, n_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation: integers in ``[0, n_levels)`` to ``(x + u) / n_levels - 1/2``."""
    u = torch.rand(x_int.shape, generator=generator, device=x_int.device)
    return (x_int.float() + u) / n_levels - 0.5


class Trainer:
    """The torch side of the driver (``train.py``): a Glow and its Adam, on ``args.device``
    (default: CUDA if available), one rank of DDP under ``torchrun`` (gloo on CPU, NCCL on GPU)."""

    title, suffix = "torch", "pt"

    def __init__(self, args, data) -> None:
        self.args, self.data = args, data
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))

    def __enter__(self) -> "Trainer":
        args, data = self.args, self.data
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.world > 1:
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device
        torch.manual_seed(args.seed)
        self.model = Glow(data.shape, args.levels, args.steps, args.width, args.conv, seed=args.seed).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.x_train, self.x_test = torch.as_tensor(data.train), torch.as_tensor(data.test)
        self.gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + self.rank)
        self.last: Tensor | None = None
        return self

    def __exit__(self, *exc) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()

    def _batch(self, idx, generator: torch.Generator | None) -> Tensor:
        return preprocess(self.x_train[idx].to(self.device), self.data.levels, generator)

    def initialize(self, idx) -> None:
        self.model.initialize(self._batch(idx, None))
        self.net = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model

    def restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.net = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model

    def step(self, idx, step: int, lr: float) -> float:
        """One Adam step on a batch; a non-finite loss is returned before the step is taken."""
        self.model.train()
        x = self._batch(idx, self.gen)
        loss = bits_per_dim(self.net(x), self.model.dims, self.data.levels).mean()
        if not torch.isfinite(loss):
            self.last = x
            return loss.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
        if not torch.isfinite(gnorm):
            bad = [n for n, p in self.model.named_parameters()
                   if p.grad is not None and not torch.isfinite(p.grad).all()]
            raise NonFiniteLoss(f"non-finite gradient, first in {bad[:3]},")
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        return loss.item()

    def locate_nonfinite(self) -> str:
        return locate_nonfinite(self.model, self.last)

    @torch.no_grad()
    def test_bpd(self, batch: int, seed: int) -> float:
        self.model.eval()
        g = torch.Generator(device=self.device).manual_seed(seed)
        total = 0.0
        for i in range(0, len(self.x_test), batch):
            x = preprocess(self.x_test[i:i + batch].to(self.device), self.data.levels, g)
            total += bits_per_dim(self.model(x), self.model.dims, self.data.levels).sum().item()
        return total / len(self.x_test)

    @torch.no_grad()
    def pictures(self, n: int, temperature: float, originals: np.ndarray, seed: int):
        self.model.eval()
        g = torch.Generator(device=self.device).manual_seed(seed)
        samples = self.model.sample(n, temperature, g)
        zs, _, _ = self.model.encode(preprocess(torch.as_tensor(originals).to(self.device), self.data.levels, g))
        return samples.cpu().numpy(), self.model.inverse(zs).cpu().numpy()

    def save(self, path, meta: dict) -> None:
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(), **meta}, path)

    def read(self, path) -> dict:
        return torch.load(path, map_location=self.device, weights_only=False)


def locate_nonfinite(model: nn.Module, x: Tensor) -> str:
    """Rerun the forward with hooks and name the first layer whose output is not finite."""
    found: list[str] = []

    def hook(name):
        def fn(_mod, _inp, out):
            outs = out if isinstance(out, tuple) else (out,)
            if not found and any(isinstance(o, Tensor) and not torch.isfinite(o).all() for o in outs):
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
