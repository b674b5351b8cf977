"""Glow (Kingma & Dhariwal 2018) in torch, with the three interchangeable invertible 1x1
convolutions of ``flow.py``, and its ``Trainer`` for the driver (``train.py``), single process
or ``torchrun`` with DDP. Every layer maps ``(x, logdet) -> (y, logdet + log|det dy/dx|)`` per sample and has an
``inverse``."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasth.torch import matrix

from .flow import (ACTNORM_EPS, CONVS, COUPLING_SHIFT, LOG2PI, ZERO_CONV_LOGSCALE, NonFiniteLoss,
                   bits_per_dim, check_shape, lu_parameters, random_orthogonal, svd_parameters)


def squeeze(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


def gaussian_logp(x: Tensor, mean: Tensor, logs: Tensor) -> Tensor:
    """Per-sample log density of a diagonal Gaussian."""
    lp = -0.5 * (LOG2PI + 2 * logs + (x - mean) ** 2 * torch.exp(-2 * logs))
    return lp.flatten(1).sum(1)


class ActNorm(nn.Module):
    """Per-channel affine ``y = (x + b) e^{logs}``, initialised from the first batch so that
    ``y`` has zero mean and unit variance per channel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _init(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(std + ACTNORM_EPS))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor]:
        if not self.initialized and self.training:
            self._init(x)
        hw = x.shape[2] * x.shape[3]
        return (x + self.bias) * torch.exp(self.logs), logdet + hw * self.logs.sum()

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.logs) - self.bias


class InvConv(nn.Module):
    """Invertible 1x1 convolution ``y = W x`` per pixel. Each variant builds the matrices of a
    list of its convolutions at once: ``weights(convs)`` gives ``W`` (``(K, c, c)``) and
    ``log|det W|`` (``(K,)``), ``inverse_weights(convs)`` gives ``W^{-1}``. A Glow level builds
    the ``K`` matrices of its steps in one batched call (they depend on parameters only); a
    convolution on its own is the case ``K = 1``."""

    kind = ""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c

    @classmethod
    def weights(cls, convs: list[InvConv]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @classmethod
    def inverse_weights(cls, convs: list[InvConv]) -> Tensor:
        raise NotImplementedError

    def weight(self) -> tuple[Tensor, Tensor]:
        W, lad = self.weights([self])
        return W[0], lad[0]

    def forward(self, x: Tensor, logdet: Tensor,
                weight: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        W, lad = self.weight() if weight is None else weight
        hw = x.shape[2] * x.shape[3]
        return F.conv2d(x, W[:, :, None, None]), logdet + hw * lad

    def inverse(self, y: Tensor, inverse_weight: Tensor | None = None) -> Tensor:
        Winv = self.inverse_weights([self])[0] if inverse_weight is None else inverse_weight
        return F.conv2d(y, Winv[:, :, None, None])

    def extra_repr(self) -> str:
        return f"c={self.c}"


def _stack(convs: list[InvConv], name: str) -> Tensor:
    return torch.stack([getattr(c, name) for c in convs])


def _f32(a: np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


class PlainConv(InvConv):
    kind = "plain"

    def __init__(self, W0: np.ndarray) -> None:
        super().__init__(W0.shape[0])
        self.W = nn.Parameter(_f32(W0))

    @classmethod
    def weights(cls, convs):
        W = _stack(convs, "W")
        return W, torch.linalg.slogdet(W)[1]

    @classmethod
    def inverse_weights(cls, convs):
        return torch.linalg.inv(_stack(convs, "W"))


class LUConv(InvConv):
    """``W = P L (U + diag(sign(s) e^{log|s|}))`` with ``L`` unit lower triangular and ``U``
    strictly upper triangular (``P`` and ``sign(s)`` fixed)."""

    kind = "lu"

    def __init__(self, W0: np.ndarray) -> None:
        c = W0.shape[0]
        super().__init__(c)
        p = lu_parameters(W0)
        self.register_buffer("P", _f32(p["P"]))
        self.register_buffer("sign_s", _f32(p["sign_s"]))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.L = nn.Parameter(_f32(p["L"]))
        self.U = nn.Parameter(_f32(p["U"]))
        self.log_s = nn.Parameter(_f32(p["log_s"]))

    @staticmethod
    def _factors(convs) -> tuple[Tensor, Tensor, Tensor]:
        mask, eye = convs[0].lower_mask, convs[0].eye
        L = _stack(convs, "L") * mask + eye
        U = _stack(convs, "U") * mask.T + torch.diag_embed(_stack(convs, "sign_s") * torch.exp(_stack(convs, "log_s")))
        return _stack(convs, "P"), L, U

    @classmethod
    def weights(cls, convs):
        P, L, U = cls._factors(convs)
        return P @ (L @ U), _stack(convs, "log_s").sum(-1)

    @classmethod
    def inverse_weights(cls, convs):
        # W^{-1} = U^{-1} L^{-1} P^T by two triangular solves on P^T (c x c, never a general
        # inverse), then one convolution.
        P, L, U = cls._factors(convs)
        Linv_Pt = torch.linalg.solve_triangular(L, P.mT, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(U, Linv_Pt, upper=True)


class SVDConv(InvConv):
    """``W = U diag(e^{log s}) V^T``: ``U`` and ``V`` are products of ``c`` Householder
    reflectors (their vectors stacked in one ``(2, c, c)`` parameter; the frames of a whole
    level come from a single batched ``fasth.torch.matrix``), so ``log|det W| = sum log s``
    and ``W^{-1} = V diag(e^{-log s}) U^T`` need no factorisation."""

    kind = "svd"

    def __init__(self, W0: np.ndarray) -> None:
        super().__init__(W0.shape[0])
        UV, log_s = svd_parameters(W0)
        self.UV = nn.Parameter(_f32(UV))
        self.log_s = nn.Parameter(_f32(log_s))

    @staticmethod
    def _frames(convs) -> tuple[Tensor, Tensor, Tensor]:
        UV = matrix(_stack(convs, "UV"))  # (K, 2, c, c): one call for all frames
        return UV[:, 0], UV[:, 1], _stack(convs, "log_s")

    @classmethod
    def weights(cls, convs):
        U, V, log_s = cls._frames(convs)
        return (U * torch.exp(log_s)[:, None, :]) @ V.mT, log_s.sum(-1)

    @classmethod
    def inverse_weights(cls, convs):
        U, V, log_s = cls._frames(convs)
        return (V * torch.exp(-log_s)[:, None, :]) @ U.mT


def make_conv(kind: str, W0: np.ndarray) -> InvConv:
    """A ``kind`` 1x1 convolution whose ``W`` is ``W0`` (float64 numpy)."""
    convs = {"plain": PlainConv, "lu": LUConv, "svd": SVDConv}
    if kind not in convs:
        raise ValueError(f"conv must be one of {CONVS}, got {kind!r}")
    return convs[kind](np.asarray(W0, np.float64))


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to zero, output scaled by ``e^{3 logs}`` (openai/glow's
    ``conv2d_zeros``): every flow starts as the identity."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(ZERO_CONV_LOGSCALE * self.logs)


class Coupling(nn.Module):
    """Affine coupling: ``y_b = (x_b + t(x_a)) * sigmoid(h(x_a) + 2)``, ``y_a = x_a``."""

    def __init__(self, c: int, width: int) -> None:
        super().__init__()
        self.ca = c // 2
        self.net = nn.Sequential(
            nn.Conv2d(self.ca, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 1), nn.ReLU(),
            ZeroConv2d(width, 2 * (c - self.ca)))

    def _st(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(xa)
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, raw + COUPLING_SHIFT

    def forward(self, x: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor]:
        xa, xb = x[:, :self.ca], x[:, self.ca:]
        shift, raw = self._st(xa)
        yb = (xb + shift) * torch.sigmoid(raw)
        return torch.cat([xa, yb], 1), logdet + F.logsigmoid(raw).flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        ya, yb = y[:, :self.ca], y[:, self.ca:]
        shift, raw = self._st(ya)
        return torch.cat([ya, yb / torch.sigmoid(raw) - shift], 1)


class FlowStep(nn.Module):
    def __init__(self, c: int, width: int, conv: str, W0: np.ndarray) -> None:
        super().__init__()
        self.actnorm = ActNorm(c)
        self.conv = make_conv(conv, W0)
        self.coupling = Coupling(c, width)

    def forward(self, x: Tensor, logdet: Tensor,
                conv_weight: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x, logdet = self.actnorm(x, logdet)
        x, logdet = self.conv(x, logdet, conv_weight)
        return self.coupling(x, logdet)

    def inverse(self, y: Tensor, conv_inverse_weight: Tensor | None = None) -> Tensor:
        return self.actnorm.inverse(self.conv.inverse(self.coupling.inverse(y), conv_inverse_weight))


def conv_weights(convs: list[InvConv]) -> tuple[Tensor, Tensor]:
    """The matrices and log-determinants of a list of one variant's 1x1 convolutions (a
    level's), in one batched call."""
    return type(convs[0]).weights(convs)


def conv_inverse_weights(convs: list[InvConv]) -> Tensor:
    return type(convs[0]).inverse_weights(convs)


class Glow(nn.Module):
    """Multi-scale Glow on ``(C, H, W)`` images: ``levels`` times (squeeze, ``steps`` flow
    steps, split with a learned conditional prior), a learned top prior. ``forward(x)``
    returns the per-sample ``log p(x)`` (nats, continuous ``x``), the latents and the
    log-determinant; ``inverse(zs)`` maps latents back; ``sample(n, temperature)`` draws."""

    def __init__(self, shape: tuple[int, int, int], levels: int = 2, steps: int = 8,
                 width: int = 64, conv: str = "svd", *, seed: int = 0,
                 batch_levels: bool = True) -> None:
        super().__init__()
        self.batch_levels = batch_levels  # False: each step builds its own 1x1-conv matrix
        check_shape(shape, levels)
        c, h, w = shape
        self.shape, self.levels, self.steps, self.width, self.conv_kind = shape, levels, steps, width, conv
        rng = np.random.default_rng(seed)  # the initial W of every 1x1 conv, same for all variants
        self.flows = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.z_shapes: list[tuple[int, int, int]] = []
        for i in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.flows.append(nn.ModuleList(
                FlowStep(c, width, conv, random_orthogonal(c, rng)) for _ in range(steps)))
            if i < levels - 1:
                self.priors.append(ZeroConv2d(c // 2, c))
                self.z_shapes.append((c - c // 2, h, w))
                c = c // 2
        self.z_shapes.append((c, h, w))
        self.top = nn.Parameter(torch.zeros(1, 2 * c, h, w))  # learned top prior (mean, logs)

    @property
    def dims(self) -> int:
        return int(np.prod(self.shape))

    def encode(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """``(zs, logdet, logpz)``: the latents, ``log|det dz/dx|`` and ``log p(z)``."""
        logdet = x.new_zeros(x.shape[0])
        logpz = x.new_zeros(x.shape[0])
        zs = []
        for i, steps in enumerate(self.flows):
            x = squeeze(x)
            W, lad = conv_weights([step.conv for step in steps]) if self.batch_levels else (None, None)
            for k, step in enumerate(steps):
                x, logdet = step(x, logdet, None if W is None else (W[k], lad[k]))
            if i < self.levels - 1:
                ca = x.shape[1] // 2
                x, z = x[:, :ca], x[:, ca:]
                mean, logs = self._split_prior(i, x)
                logpz = logpz + gaussian_logp(z, mean, logs)
                zs.append(z)
        mean, logs = self._top_prior(x.shape[0])
        zs.append(x)
        return zs, logdet, logpz + gaussian_logp(x, mean, logs)

    def _split_prior(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.priors[i](x)
        return h[:, 0::2], h[:, 1::2]

    def _top_prior(self, n: int) -> tuple[Tensor, Tensor]:
        c = self.top.shape[1] // 2
        t = self.top.expand(n, -1, -1, -1)
        return t[:, :c], t[:, c:]

    def forward(self, x: Tensor) -> Tensor:
        """Per-sample ``log p(x)`` in nats (continuous density of ``x``)."""
        _, logdet, logpz = self.encode(x)
        return logpz + logdet

    def inverse(self, zs: list[Tensor] | None = None, *, n: int | None = None,
                temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """``x`` from latents ``zs`` (as ``encode`` gives them); with ``zs=None`` samples
        ``n`` images from the prior at ``temperature``."""
        def draw(mean: Tensor, logs: Tensor) -> Tensor:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            return mean + torch.exp(logs) * temperature * eps

        if zs is None:
            mean, logs = self._top_prior(n)
            x = draw(mean, logs)
        else:
            x = zs[-1]
        for i in reversed(range(self.levels)):
            if i < self.levels - 1:
                mean, logs = self._split_prior(i, x)
                z = draw(mean, logs) if zs is None else zs[i]
                x = torch.cat([x, z], 1)
            Winv = conv_inverse_weights([step.conv for step in self.flows[i]]) if self.batch_levels else None
            for k in reversed(range(len(self.flows[i]))):
                x = self.flows[i][k].inverse(x, None if Winv is None else Winv[k])
            x = unsqueeze(x)
        return x

    def sample(self, n: int, temperature: float = 0.7, generator: torch.Generator | None = None) -> Tensor:
        return self.inverse(None, n=n, temperature=temperature, generator=generator)

    def convs(self) -> list[list[InvConv]]:
        """The 1x1 convolutions, level by level."""
        return [[step.conv for step in steps] for steps in self.flows]

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation of every actnorm from the batch ``x``."""
        was = self.training
        self.train()
        self(x)
        self.train(was)


def preprocess(x_int: Tensor, n_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation: integers in ``[0, n_levels)`` to ``(x + u) / n_levels - 1/2``."""
    u = torch.rand(x_int.shape, generator=generator, device=x_int.device)
    return (x_int.float() + u) / n_levels - 0.5


# training -----------------------------------------------------------------------------------

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
