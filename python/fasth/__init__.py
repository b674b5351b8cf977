"""fasth: orthogonal and SVD-parametrised layers through products of Householder reflectors,
``U = H_1 ... H_k``, in blocked compact-WY form (FastH).

The functional API works on numpy, torch, cupy and any DLPack array; ``fasth.torch`` and
``fasth.jax`` add autograd and layers.

The extension module loads on first use, not at ``import fasth``: loaded before torch, it
made ``import torch`` crash on a CUDA 13 build of torch 2.11 (seen on an H200 machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._functional import apply, apply_backward, matrix, matrix_backward
    from ._profile import Profile, profile
    from ._vectors import householder_vectors

_HOMES = {"apply": "_functional", "apply_backward": "_functional", "matrix": "_functional",
          "matrix_backward": "_functional",
          "profile": "_profile", "Profile": "_profile", "householder_vectors": "_vectors"}
__all__ = [*_HOMES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    if name == "__version__":  # the installed distribution's (pyproject.toml's) version
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(__name__)
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            return "0+unknown"
    raise AttributeError(f"module 'fasth' has no attribute {name!r}")
