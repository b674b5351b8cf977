"""fasth for JAX: ``apply`` and ``matrix`` as XLA FFI custom calls (CPU and CUDA) with JVP
rules (reverse mode by transposition) and batching rules, drop-ins for LAPACK's
``householder_product`` and ``ormqr``, and Flax NNX layers -- the same shape as
``fasth.torch``: ``_functions`` (the public functions and their checks), ``_jvp`` (the
differentiable ops), ``_primitives`` (the tangent and the backward, each the other's
transpose), ``_ffi`` (the custom calls and their batching rules), ``_reflectors``, and the
layers (``nn``, ``spectral``).

    fasth.jax.apply(V, X, transpose=False, *, block=None, strategy="auto")  # U X or U^T X
    fasth.jax.matrix(V, thin=False, *, block=None)                          # U or U[:, :k]
    fasth.jax.householder_product(A, taus), fasth.jax.ormqr(A, taus, C, left, transpose)
    fasth.jax.Reflectors(V).apply(X, transpose=False)    # one U applied many times

Requires jax >= 0.10.2 (pyproject.toml's floor and build requirement): the custom calls are
built against the XLA FFI headers of the jax found at build time (``jax.ffi.include_dir()``),
and a jaxlib older than those headers rejects them. The layers need ``flax`` (extra
``fasth[jax]``); without it the functions work and the layers say what is missing."""

from __future__ import annotations

from typing import Any

from ._functions import apply, householder_product, matrix, ormqr
from ._reflectors import Reflectors

_LAYERS = {"Orthogonal": "nn", "SVDDense": "nn", "SpectralDense": "spectral",
           "SpectralConv1x1": "spectral", "SpectralConv": "spectral",
           "bounded_singular_values": "spectral"}
__all__ = ["apply", "matrix", "Reflectors", "householder_product", "ormqr", *_LAYERS]


def __getattr__(name: str) -> Any:
    """The Flax layers, imported on first use (flax is an optional dependency)."""
    if name in _LAYERS:
        try:
            import flax.nnx  # noqa: F401
        except ImportError:
            raise AttributeError(f"fasth.jax.{name} is a Flax NNX layer and flax is not installed "
                                 "(pip install 'fasth[jax]')") from None
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAYERS[name]}"), name)
    raise AttributeError(f"module 'fasth.jax' has no attribute {name!r}")
