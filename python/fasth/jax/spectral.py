"""Exact spectral control in JAX / Flax NNX: ``SpectralDense``, ``SpectralConv1x1``,
``SpectralConv`` -- the counterparts of ``fasth.torch.spectral`` (see its docstring for the
maths and the convolution bound).

    layer = SpectralDense(in_features, out_features, *, bound=1.0, mode="normalize", lo=0.0,
                          use_bias=True, rngs, param_dtype=jnp.float32)
        an SVDDense whose s = bounded(raw): "normalize" s = bound raw / max|raw|
        (||W||_2 = bound exactly), "sigmoid" s = bound sigmoid(raw), "clip" s = clip(raw, lo, bound)
        layer.singular_values() s;  layer.spectral_norm() ||W||_2 = max|s| (exact)
        params: layer.U_reflectors, layer.V_reflectors, layer.raw, layer.bias (None without
        use_bias); layer.weight, layer.U, layer.V as SVDDense's

    SpectralConv1x1(in_channels, out_channels, ...)  SpectralDense over the channel (last)
        axis of an NHWC image: its spectral_norm() is the operator norm, exactly.
    SpectralConv(in_channels, out_channels, kernel_size, strides=1, padding="SAME", ...)
        NHWC convolution whose reshaped kernel K (out x kh*kw*in) is a SpectralDense weight;
        reshaped_norm() = ||K||_2 exactly, spectral_norm() = sqrt(kh*kw) ||K||_2, an upper
        bound on the operator norm (not its exact value)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .._svd_rules import MODES, check_bound, initial_raw
from .nn import SVDDense


def bounded_singular_values(raw: jax.Array, bound: float = 1.0, mode: str = "normalize",
                            lo: float = 0.0) -> jax.Array:
    """``raw -> s`` with ``max |s| <= bound`` (``= bound`` for ``"normalize"``)."""
    if mode == "normalize":
        return raw * (bound / jnp.max(jnp.abs(raw)))
    if mode == "sigmoid":
        return bound * jax.nn.sigmoid(raw)
    if mode == "clip":
        return jnp.clip(raw, lo, bound)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class SpectralDense(SVDDense):
    """``x -> x W^T + b`` with ``||W||_2 <= bound`` by construction, reported exactly: an
    ``SVDDense`` whose singular values are bounded functions of the free ``raw``."""

    def __init__(self, in_features: int, out_features: int, *, bound: float = 1.0,
                 mode: str = "normalize", lo: float = 0.0, use_bias: bool = True, rngs: Any,
                 param_dtype: Any = jnp.float32):
        check_bound(bound, mode, lo)
        super().__init__(in_features, out_features, use_bias=use_bias, rngs=rngs,
                         param_dtype=param_dtype)
        self.bound, self.mode, self.lo = float(bound), mode, float(lo)
        r = self.S.shape[0]
        del self.S
        self.raw = nnx.Param(jnp.full((r,), initial_raw(self.bound, mode, self.lo), param_dtype))

    def singular_values(self) -> jax.Array:
        return bounded_singular_values(self.raw[...], self.bound, self.mode, self.lo)


class SpectralConv1x1(SpectralDense):
    """A 1x1 convolution of NHWC images (channels last): ``SpectralDense`` over the channels,
    so ``spectral_norm()`` is the operator's exact norm."""

    def __init__(self, in_channels: int, out_channels: int, **kw):
        super().__init__(in_channels, out_channels, **kw)


class SpectralConv(nnx.Module):
    """NHWC ``kh x kw`` convolution through its reshaped kernel ``K`` (``out x kh*kw*in``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, strides=1,
                 padding: Any = "SAME", *, bound: float = 1.0, mode: str = "normalize",
                 lo: float = 0.0, use_bias: bool = True, rngs: Any, param_dtype: Any = jnp.float32):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), (kh, kw)
        self.strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        self.padding = padding
        self.svd = SpectralDense(kh * kw * self.in_channels, self.out_channels, bound=bound, mode=mode,
                                 lo=lo, use_bias=use_bias, rngs=rngs, param_dtype=param_dtype)

    def kernel(self) -> jax.Array:
        """The HWIO kernel ``(kh, kw, in, out)``."""
        K = self.svd.weight.reshape(self.out_channels, *self.kernel_size, self.in_channels)
        return jnp.transpose(K, (1, 2, 3, 0))

    def __call__(self, x: jax.Array) -> jax.Array:
        K = self.kernel()
        rt = jnp.result_type(x, K)  # as flax's Conv promotes input and kernel
        y = jax.lax.conv_general_dilated(x.astype(rt), K.astype(rt), self.strides, self.padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y if self.svd.bias is None else y + self.svd.bias[...].astype(rt)

    def reshaped_norm(self) -> jax.Array:
        """``||K||_2``, exact."""
        return self.svd.spectral_norm()

    def spectral_norm(self) -> jax.Array:
        """``sqrt(kh*kw) * ||K||_2`` >= the convolution's operator norm."""
        return math.sqrt(self.kernel_size[0] * self.kernel_size[1]) * self.svd.spectral_norm()


__all__ = ["bounded_singular_values", "SpectralDense", "SpectralConv1x1", "SpectralConv"]
