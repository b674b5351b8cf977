"""Flax NNX layers (features last: ``x`` of shape ``(..., features)``), the counterparts of
``fasth.torch.nn``, with the same names:

    layer = Orthogonal(features, reflectors=None, *, rngs, param_dtype=jnp.float32)
        layer(x)          x U^T   (each row u -> U u);   layer.inverse(y)  y U
        layer.weight      U (features x features)
        params: layer.reflectors (features, reflectors), the Householder vectors

    layer = SVDDense(in_features, out_features=None, *, use_bias=True, rngs,
                     param_dtype=jnp.float32)
        W = U diag(S) V^T (out x in), r = min(in, out)
        params: layer.U_reflectors (out, r), layer.V_reflectors (in, r) Householder vectors,
                layer.S (r,) init ones, layer.bias (out,) init zeros (None without use_bias)
        layer.weight W;  layer.U (out, r), layer.V (in, r) the orthonormal factors
        layer(x)              x W^T + bias
        layer.inverse(y)      (y - bias) W^{-T} = V diag(1/S) U^T per row   (square layers)
        layer.logabsdet()     log|det W| = sum log|S|                      (square layers)
        layer.spectral_norm() ||W||_2 = max |S|

Each layer promotes its input and parameters together, as flax's layers do (a bfloat16 input
to float32 parameters computes and returns float32)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .._svd_rules import dense_weight
from ._functions import apply, matrix


def _cols(x: jax.Array, d: int) -> jax.Array:
    """(..., d) rows as the columns of one (d, N) matrix."""
    return jnp.reshape(x, (-1, d)).T


def _rows(Y: jax.Array, lead: tuple[int, ...]) -> jax.Array:
    return jnp.reshape(Y.T, (*lead, Y.shape[0]))


def promote(*arrays: jax.Array) -> tuple[list, Any]:
    """A layer's input and parameters in one dtype, as flax's layers promote them, at least
    float32, the precision fasth works in; and the dtype of the result (the promoted one)."""
    dt = jnp.result_type(*arrays)
    ct = jnp.promote_types(dt, jnp.float32)
    return [a.astype(ct) for a in arrays], dt


def _features(name: str, x: jax.Array, d: int) -> None:
    if x.shape[-1] != d:
        raise ValueError(f"{name}: expected {d} features in the last dimension, got shape {x.shape}")


class Orthogonal(nnx.Module):
    """``x -> x U^T`` for an orthogonal ``U = H_1 ... H_k`` (``k = reflectors``, default
    ``features``: every orthogonal matrix of determinant ``(-1)^k``)."""

    def __init__(self, features: int, reflectors: int | None = None, *, rngs: Any,
                 param_dtype: Any = jnp.float32):
        self.features = int(features)
        k = self.features if reflectors is None else int(reflectors)
        if k < 0:
            raise ValueError(f"reflectors must be nonnegative, got {reflectors}")
        self.reflectors = nnx.Param(jax.random.normal(rngs.params(), (self.features, k), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._apply(x, False)

    def inverse(self, y: jax.Array) -> jax.Array:
        return self._apply(y, True)

    def _apply(self, x: jax.Array, transpose: bool) -> jax.Array:
        _features(type(self).__name__, x, self.features)
        (x, V), rt = promote(x, self.reflectors[...])
        return _rows(apply(V, _cols(x, self.features), transpose), x.shape[:-1]).astype(rt)

    @property
    def weight(self) -> jax.Array:
        """The dense orthogonal ``U`` (``features x features``)."""
        return matrix(self.reflectors[...])


class SVDDense(nnx.Module):
    """``x -> x W^T + bias`` with ``W = U diag(S) V^T`` kept in SVD form (``U``, ``V`` products
    of Householder reflectors held as ``U_reflectors``, ``V_reflectors``, thin frames of
    ``r = min(in, out)`` columns when rectangular), so that the inverse, ``log|det W|`` and
    ``||W||_2`` cost no factorisation."""

    def __init__(self, in_features: int, out_features: int | None = None, *,
                 use_bias: bool = True, rngs: Any, param_dtype: Any = jnp.float32):
        self.in_features = int(in_features)
        self.out_features = self.in_features if out_features is None else int(out_features)
        r = min(self.in_features, self.out_features)
        self.U_reflectors = nnx.Param(jax.random.normal(rngs.params(), (self.out_features, r), param_dtype))
        self.V_reflectors = nnx.Param(jax.random.normal(rngs.params(), (self.in_features, r), param_dtype))
        self.S = nnx.Param(jnp.ones((r,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((self.out_features,), param_dtype)) if use_bias else None

    @property
    def square(self) -> bool:
        return self.in_features == self.out_features

    def singular_values(self) -> jax.Array:
        """``S`` (in ``SpectralDense``, the bounded function of ``raw``)."""
        return self.S[...]

    def _params(self, x: jax.Array) -> tuple[Any, ...]:
        """(x, U's vectors, V's vectors, S, bias, result dtype), promoted together (``promote``)."""
        bias = [] if self.bias is None else [self.bias[...]]
        (x, Uv, Vv, s, *b), rt = promote(x, self.U_reflectors[...], self.V_reflectors[...],
                                         self.singular_values(), *bias)
        return x, Uv, Vv, s, (b[0] if b else None), rt

    @staticmethod
    def _weight(Uv: jax.Array, Vv: jax.Array, s: jax.Array) -> jax.Array:
        return (matrix(Uv, thin=True) * s) @ matrix(Vv, thin=True).T

    @property
    def U(self) -> jax.Array:
        """The left factor, ``out x r`` with orthonormal columns."""
        return matrix(self.U_reflectors[...], thin=True)

    @property
    def V(self) -> jax.Array:
        """The right factor, ``in x r`` with orthonormal columns."""
        return matrix(self.V_reflectors[...], thin=True)

    @property
    def weight(self) -> jax.Array:
        """The dense ``W = U diag(S) V^T`` (``out x in``)."""
        return self._weight(self.U_reflectors[...], self.V_reflectors[...], self.singular_values())

    def __call__(self, x: jax.Array) -> jax.Array:
        _features(type(self).__name__, x, self.in_features)
        x, Uv, Vv, s, b, rt = self._params(x)
        lead, X = x.shape[:-1], _cols(x, self.in_features)
        n, r = X.shape[1], s.shape[0]
        if dense_weight(n, self.in_features, self.out_features, eager=False):
            Y = self._weight(Uv, Vv, s) @ X
        else:
            Z = apply(Vv, X, True)[:r] * s[:, None]  # diag(S) V^T x
            if self.out_features > r:
                Z = jnp.concatenate([Z, jnp.zeros((self.out_features - r, n), Z.dtype)])
            Y = apply(Uv, Z)
        y = _rows(Y, lead)
        return (y if b is None else y + b).astype(rt)

    def _need_square(self, what: str) -> None:
        if not self.square:
            raise ValueError(f"{type(self).__name__}.{what}: the layer is not square "
                             f"({self.out_features} x {self.in_features})")

    def inverse(self, y: jax.Array) -> jax.Array:
        self._need_square("inverse")
        y, Uv, Vv, s, b, rt = self._params(y)
        if b is not None:
            y = y - b
        Z = apply(Uv, _cols(y, self.out_features), True)
        return _rows(apply(Vv, Z / s[:, None]), y.shape[:-1]).astype(rt)

    def logabsdet(self) -> jax.Array:
        self._need_square("logabsdet")
        return jnp.sum(jnp.log(jnp.abs(self.singular_values())))

    def spectral_norm(self) -> jax.Array:
        """``||W||_2 = max |S|``, exact."""
        return jnp.max(jnp.abs(self.singular_values()))


__all__ = ["Orthogonal", "SVDDense", "promote"]
