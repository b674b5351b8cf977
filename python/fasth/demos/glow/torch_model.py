"""Glow (Kingma & Dhariwal 2018) in torch, with three interchangeable invertible 1x1
convolutions: ``plain`` (dense ``W``: ``slogdet`` and ``inverse``), ``lu`` (``W = P L (U +
diag(s))``, inverted with triangular solves) and ``svd`` (``W = U diag(s) V^T`` with ``U``,
``V`` products of Householder reflectors through fasth).

In Glow the 1x1 convolution is ``d x d`` with ``d`` = channels (small) applied to ``n = B H
W`` pixels (large), so every variant builds its ``d x d`` matrix (``W`` or ``W^{-1}``) once per
call and runs one convolution; the variants differ only in what that matrix and the
log-determinant cost. The matrices depend on parameters only, so each level builds those of
its ``K`` steps in one batched call, in every variant alike.

Every layer maps ``(x, logdet) -> (y, logdet + log|det dy/dx|)`` per sample and has an
``inverse``."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasth.torch import householder_vectors, matrix

CONVS = ("plain", "lu", "svd")
LOG2PI = math.log(2 * math.pi)


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
        self.logs.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor]:
        if not self.initialized and self.training:
            self._init(x)
        hw = x.shape[2] * x.shape[3]
        return (x + self.bias) * torch.exp(self.logs), logdet + hw * self.logs.sum()

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.logs) - self.bias


def random_orthogonal(c: int, generator: torch.Generator | None = None) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


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

    def dense(self) -> Tensor:
        return self.weight()[0]

    def extra_repr(self) -> str:
        return f"c={self.c}"


def _stack(convs: list[InvConv], name: str) -> Tensor:
    return torch.stack([getattr(c, name) for c in convs])


class PlainConv(InvConv):
    kind = "plain"

    def __init__(self, W0: Tensor) -> None:
        super().__init__(W0.shape[0])
        self.W = nn.Parameter(W0.detach().clone().float())

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

    def __init__(self, W0: Tensor) -> None:
        c = W0.shape[0]
        super().__init__(c)
        p, l, u = scipy.linalg.lu(W0.detach().double().cpu().numpy())
        s = np.diag(u)
        f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        self.register_buffer("P", f(p))
        self.register_buffer("sign_s", f(np.sign(s)))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.L = nn.Parameter(f(np.tril(l, -1)))
        self.U = nn.Parameter(f(np.triu(u, 1)))
        self.log_s = nn.Parameter(f(np.log(np.abs(s))))

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

    def __init__(self, W0: Tensor, generator: torch.Generator | None = None) -> None:
        c = W0.shape[0]
        super().__init__(c)
        W0 = W0.detach().double().cpu()
        u, s, vh = torch.linalg.svd(W0)
        # An orthogonal W0 has s = 1 and LAPACK may return V = I, whose Householder vectors
        # vanish (a point where the reflector is not differentiable): rotate both frames by a
        # random orthogonal R, W0 = (u R) diag(s) (v R)^T, which holds when s is constant.
        if torch.allclose(s, s[0].expand_as(s), rtol=1e-6, atol=0):
            R = random_orthogonal(c, generator if generator is not None else torch.Generator().manual_seed(c))
            u, v = u @ R, vh.T @ R
        else:
            v = vh.T
        self.UV = nn.Parameter(torch.stack([householder_vectors(u), householder_vectors(v)]).float())
        self.log_s = nn.Parameter(torch.log(s).float())

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


def make_conv(kind: str, W0: Tensor) -> InvConv:
    if kind == "plain":
        return PlainConv(W0)
    if kind == "lu":
        return LUConv(W0)
    if kind == "svd":
        return SVDConv(W0)
    raise ValueError(f"conv must be one of {CONVS}, got {kind!r}")


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
        return self.conv(x) * torch.exp(3 * self.logs)


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
        return shift, raw + 2.0

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
    def __init__(self, c: int, width: int, conv: str, W0: Tensor) -> None:
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
        c, h, w = shape
        if h % (2 ** levels) or w % (2 ** levels):
            raise ValueError(f"Glow: image {h}x{w} must be divisible by 2^levels = {2 ** levels}")
        self.shape, self.levels, self.steps, self.width, self.conv_kind = shape, levels, steps, width, conv
        g = torch.Generator().manual_seed(seed)  # the initial W of every 1x1 conv, same for all variants
        self.flows = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.z_shapes: list[tuple[int, int, int]] = []
        for i in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.flows.append(nn.ModuleList(
                FlowStep(c, width, conv, random_orthogonal(c, g)) for _ in range(steps)))
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


def bits_per_dim(logpx: Tensor, dims: int, n_levels: int) -> Tensor:
    """Per-sample bits/dim of the discrete data from the continuous ``log p(x)``."""
    return (-logpx + dims * math.log(n_levels)) / (dims * math.log(2))


def postprocess(x: Tensor, n_levels: int) -> Tensor:
    """Continuous ``x`` back to ``[0, 1]`` for display."""
    return torch.clamp(torch.floor((x + 0.5) * n_levels), 0, n_levels - 1) / (n_levels - 1)
