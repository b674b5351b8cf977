"""What both Glow models share, in numpy: the 1x1-convolution variants, their initial
parameters from a given ``W``, and the density's units.

The three invertible 1x1 convolutions: ``plain`` (dense ``W``: ``slogdet`` and ``inverse``),
``lu`` (``W = P L (U + diag(s))``, inverted with triangular solves) and ``svd`` (``W = U
diag(s) V^T`` with ``U``, ``V`` products of Householder reflectors through fasth). Every
model starts each 1x1 convolution from a random orthogonal ``W`` drawn from its seed, the
same for every variant and both frameworks.

In Glow the 1x1 convolution is ``d x d`` with ``d`` = channels (small) applied to ``n = B H
W`` pixels (large), so every variant builds its ``d x d`` matrix (``W`` or ``W^{-1}``) once per
call and runs one convolution; the variants differ only in what that matrix and the
log-determinant cost. The matrices depend on parameters only, so each level builds those of
its ``K`` steps in one batched call, in every variant alike."""

from __future__ import annotations

import math

import numpy as np

CONVS = ("plain", "lu", "svd")
LOG2PI = math.log(2 * math.pi)

ACTNORM_EPS = 1e-6  # added to a channel's std before its log: finite on a constant channel
# Couplings scale by sigmoid(h + COUPLING_SHIFT), 0.88 at h = 0, and the zero-initialised
# convolutions scale their output by e^{ZERO_CONV_LOGSCALE * logs} (openai/glow's
# logscale_factor): every flow starts close to the identity and learns its scales quickly.
COUPLING_SHIFT = 2.0
ZERO_CONV_LOGSCALE = 3.0


class NonFiniteLoss(FloatingPointError):
    """Raised when a loss or gradient is not finite; the message says where."""


def random_orthogonal(c: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random ``c x c`` orthogonal matrix (float64)."""
    q, r = np.linalg.qr(rng.standard_normal((c, c)))
    return q * np.sign(np.diag(r))


def lu_parameters(W0: np.ndarray) -> dict[str, np.ndarray]:
    """``W0 = P L (U + diag(sign_s e^{log_s}))``: the fixed ``P`` and ``sign_s``, and the
    parameters ``L`` (strictly lower), ``U`` (strictly upper) and ``log_s``."""
    import scipy.linalg

    P, L, U = scipy.linalg.lu(np.asarray(W0, np.float64))
    s = np.diag(U)
    return {"P": P, "sign_s": np.sign(s), "L": np.tril(L, -1), "U": np.triu(U, 1),
            "log_s": np.log(np.abs(s))}


def svd_parameters(W0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(UV, log_s)`` with ``W0 = U diag(e^{log_s}) V^T``: ``UV`` (``2 x c x c``) holds the
    Householder vectors of ``U`` and of ``V`` (``fasth.householder_vectors``)."""
    from fasth import householder_vectors

    W0 = np.asarray(W0, np.float64)
    c = W0.shape[0]
    u, s, vh = np.linalg.svd(W0)
    # An orthogonal W0 has s = 1 and LAPACK may return V = I, whose Householder vectors
    # vanish (a point where the reflector is not differentiable): rotate both frames by a
    # random orthogonal R, W0 = (u R) diag(s) (v R)^T, which holds when s is constant.
    if np.allclose(s, s[0], rtol=1e-6, atol=0):
        R = random_orthogonal(c, np.random.default_rng(c))
        u, v = u @ R, vh.T @ R
    else:
        v = vh.T
    return np.stack([householder_vectors(u), householder_vectors(v)]), np.log(s)


def check_shape(shape: tuple[int, int, int], levels: int) -> None:
    c, h, w = shape
    if h % (2 ** levels) or w % (2 ** levels):
        raise ValueError(f"Glow: image {h}x{w} must be divisible by 2^scales = {2 ** levels}")


def bits_per_dim(logpx, dims: int, levels: int):
    """Per-sample bits/dim of the discrete data from the continuous ``log p(x)`` (any array)."""
    return (-logpx + dims * math.log(levels)) / (dims * math.log(2))


def to_unit(x: np.ndarray, levels: int) -> np.ndarray:
    """A continuous ``x`` (as the models see data, ``[-1/2, 1/2]``) back to ``[0, 1]``, quantised
    to the data's levels, for display."""
    return np.clip(np.floor((np.asarray(x) + 0.5) * levels), 0, levels - 1) / (levels - 1)
