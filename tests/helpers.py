"""What the array tests share: random Householder vectors and inputs, and closeness to the
float64 (complex128) reference within tolerance(dtype, length)."""

from __future__ import annotations

import numpy as np

from reference import tolerance

DTYPES = ["float32", "float64", "complex64", "complex128"]
STRATEGIES = ["auto", "blockwise", "materialize"]


def random_v(rng, shape, dtype="float64", zero_cols=()):
    """Householder vectors with column norms in [0.5, 2] (a gradient scales like 1/|v|);
    complex for a complex dtype."""
    V = randn(rng, shape, "complex128" if np.dtype(dtype).kind == "c" else "float64")
    V /= np.maximum(np.linalg.norm(V, axis=-2, keepdims=True), 1e-300)
    V *= rng.uniform(0.5, 2.0, (*shape[:-2], 1, shape[-1]))
    V[..., list(zero_cols)] = 0
    return V.astype(dtype)


def randn(rng, shape, dtype="float64"):
    """Standard normal; complex dtypes get an imaginary part too."""
    if np.dtype(dtype).kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def wide(a):
    """float64, or complex128 for a complex array (the reference's precision)."""
    a = np.asarray(a)
    return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)


def assert_close(got, ref, dtype, length):
    """max |got - ref| <= tolerance(dtype, length) * max(1, max |ref|)."""
    got = np.asarray(got)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    scale = max(1.0, float(np.abs(ref).max(initial=0)))
    err = float(np.abs(wide(got) - ref).max(initial=0))
    assert err <= tolerance(dtype, length) * scale, (
        f"error {err:.3g} > {tolerance(dtype, length) * scale:.3g} ({dtype}, length {length})")
