"""Rules the layers of both adapters share: the bounded parametrisations of singular values
(fasth.torch.spectral, fasth.jax.spectral) and when an SVD layer multiplies by its dense
weight instead of applying its two frames."""

from __future__ import annotations

import math

MODES = ("normalize", "sigmoid", "clip")

# sigmoid and clip start their singular values here, inside the bound (normalize starts at
# the bound itself, with U and V orthogonal).
INITIAL_FRACTION = 0.9

# Layers of at most this many features use their dense weight at any batch in eager torch:
# their cost there is the fixed cost of each fasth call, two each way when applied, against
# one batched call for W.
SMALL_LAYER = 64


def check_bound(bound: float, mode: str, lo: float) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not bound > 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if mode == "clip" and not 0 <= lo <= bound:
        raise ValueError(f"lo must be in [0, bound = {bound}], got {lo}")


def initial_singular_value(bound: float, mode: str, lo: float) -> float:
    """The value every singular value starts at."""
    return bound if mode == "normalize" else max(INITIAL_FRACTION * bound, lo)


def initial_raw(bound: float, mode: str, lo: float) -> float:
    """The unconstrained parameter behind initial_singular_value: normalize starts at ones
    (any positive constant gives s = bound), sigmoid at its inverse."""
    if mode == "normalize":
        return 1.0
    s = initial_singular_value(bound, mode, lo)
    if mode == "clip":
        return s
    p = s / bound
    return math.log(p) - math.log1p(-p)


def dense_weight(rows: int, in_features: int, out_features: int, eager: bool) -> bool:
    """Whether an SVD layer computes x W^T with its materialised W (one GEMM) rather than
    applying V^T, diag(s) and U: for at least 2 * max(in, out) rows, where W's cost (about
    that of the applies at 2 max(in, out) rows) has paid for itself; and, eagerly, for small
    layers, whose applies cost more in fixed cost than in flops."""
    m = max(in_features, out_features)
    return rows >= 2 * m or (eager and m <= SMALL_LAYER)
