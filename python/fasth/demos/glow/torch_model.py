"""Glow (Kingma & Dhariwal 2018) in torch, with the three interchangeable invertible 1x1
convolutions of ``torch_convs.py``; ``torch_trainer.py`` trains it. Every layer maps ``(x,
logdet) -> (y, logdet + log|det dy/dx|)`` per sample and has an ``inverse``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flow import (ACTNORM_EPS, COUPLING_SHIFT, LOG2PI, ZERO_CONV_LOGSCALE, check_shape,
                   random_orthogonal)
from .torch_convs import InvConv, conv_inverse_weights, conv_weights, make_conv


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
