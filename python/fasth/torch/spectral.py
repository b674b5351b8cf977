"""Layers with exact spectral control: ``SpectralLinear``, ``SpectralConv1x1``, ``SpectralConv2d``.

Each holds its weight as ``SVDLinear`` does, ``W = U diag(s) V^T`` with ``U``, ``V`` products
of Householder reflectors (the parameters ``U_reflectors``, ``V_reflectors``), and maps an unconstrained parameter ``raw`` to singular values
that respect a bound by construction (a ``torch.nn.utils.parametrize`` parametrisation of
``SVDLinear.S``), so ``||W||_2 = max |s|`` is known exactly, with no power iteration:

* ``"normalize"``: ``s = bound * raw / max|raw|`` -- exact spectral normalisation,
  ``||W||_2 = bound`` always (what power-iteration spectral norm approximates);
* ``"sigmoid"``: ``s = bound * sigmoid(raw)``, smooth, every ``s`` in ``(0, bound)``;
* ``"clip"``: ``s = clamp(raw, lo, bound)``.

Convolutions: a 1x1 convolution is the dense layer applied at every pixel, so its operator
norm is exactly ``||W||_2``. A ``kh x kw`` convolution is parametrised through its reshaped
kernel ``K`` (``out x in*kh*kw``): ``reshaped_norm()`` is ``||K||_2`` exactly, but that is
not the operator norm of the convolution. Every input pixel lies in at most ``kh*kw``
patches, so ``||conv||_2 <= sqrt(kh*kw) * ||K||_2`` (zero padding, any stride or
dilation); ``spectral_norm()`` reports that bound. It is a guarantee, not the exact
operator norm, and it can be loose by up to that factor ``sqrt(kh*kw)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._svd_rules import check_bound, initial_raw
from .nn import SVDLinear


class BoundedSingularValues(nn.Module):
    """Parametrisation ``raw -> s`` with ``max |s| <= bound`` (see the module docstring)."""

    def __init__(self, bound: float = 1.0, mode: str = "normalize", lo: float = 0.0) -> None:
        super().__init__()
        check_bound(bound, mode, lo)
        self.bound, self.mode, self.lo = float(bound), mode, float(lo)

    def forward(self, raw: Tensor) -> Tensor:
        if self.mode == "normalize":
            return raw * (self.bound / raw.abs().max())
        if self.mode == "sigmoid":
            return self.bound * torch.sigmoid(raw)
        return raw.clamp(self.lo, self.bound)

    def right_inverse(self, s: Tensor) -> Tensor:
        s = s.detach()
        if self.mode == "normalize":
            return s
        if self.mode == "sigmoid":
            p = (s / self.bound).clamp(1e-6, 1 - 1e-6)
            return torch.log(p) - torch.log1p(-p)
        return s.clamp(self.lo, self.bound)

    def extra_repr(self) -> str:
        return f"bound={self.bound}, mode={self.mode!r}" + (f", lo={self.lo}" if self.mode == "clip" else "")


class SpectralLinear(SVDLinear):
    """``SVDLinear`` whose singular values are bounded by construction: ``||W||_2 <= bound``
    (``= bound`` for ``mode="normalize"``), reported exactly by ``spectral_norm()``.

    ``S`` is the parametrised singular values; the free parameter is
    ``parametrizations.S.original``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 bound: float = 1.0, mode: str = "normalize", lo: float = 0.0, device=None,
                 dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        bounded = BoundedSingularValues(bound, mode, lo)
        with torch.no_grad():  # the raw parameter's start, as fasth.jax.SpectralDense's
            self.S.copy_(bounded(torch.full_like(self.S, initial_raw(bound, mode, lo))))
        parametrize.register_parametrization(self, "S", bounded)

    @property
    def bound(self) -> float:
        return self.parametrizations.S[0].bound

    @property
    def raw(self) -> Tensor:
        """The unconstrained parameter behind ``S``."""
        return self.parametrizations.S.original

    def forward(self, x: Tensor) -> Tensor:
        with parametrize.cached():  # s computed once per call
            return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bound={self.bound}"


class SpectralConv1x1(SpectralLinear):
    """A 1x1 convolution (``(N, C, H, W)`` -> ``(N, out, H, W)``): ``SpectralLinear`` over the
    channels at every pixel, so ``spectral_norm()`` is the operator's exact norm."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, **kw) -> None:
        super().__init__(in_channels, out_channels, bias, **kw)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.in_features:
            raise ValueError(f"SpectralConv1x1: expected x of shape (N, {self.in_features}, ...), "
                             f"got {tuple(x.shape)}")
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class SpectralConv2d(nn.Module):
    """A ``kh x kw`` convolution whose reshaped kernel ``K`` (``out x in*kh*kw``) is a
    ``SpectralLinear`` weight. ``reshaped_norm()`` = ``||K||_2`` exactly; ``spectral_norm()``
    = ``sqrt(kh*kw) * ||K||_2``, an upper bound on the convolution's operator norm (see the
    module docstring), not its exact value."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, *, bound: float = 1.0, mode: str = "normalize",
                 lo: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.svd = SpectralLinear(in_channels * kh * kw, out_channels, bias, bound=bound, mode=mode,
                                  lo=lo, device=device, dtype=dtype)

    def kernel(self) -> Tensor:
        """The convolution kernel ``(out, in, kh, kw)``."""
        return self.svd.weight.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        with parametrize.cached():
            return nn.functional.conv2d(x, self.kernel(), self.svd.bias, self.stride, self.padding,
                                        self.dilation)

    def reshaped_norm(self) -> Tensor:
        """``||K||_2``, exact."""
        return self.svd.spectral_norm()

    def spectral_norm(self) -> Tensor:
        """``sqrt(kh*kw) * ||K||_2`` >= the operator norm of the convolution."""
        return math.sqrt(self.kernel_size[0] * self.kernel_size[1]) * self.svd.spectral_norm()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


__all__ = ["BoundedSingularValues", "SpectralLinear", "SpectralConv1x1", "SpectralConv2d"]
