"""fasth for PyTorch: differentiable ``apply`` and ``matrix`` (custom ops, ``torch.compile``
friendly) and layers built on them."""

from ._ops import apply, matrix
from .nn import Orthogonal, SVDLinear, householder_vectors, orthogonal
from .spectral import BoundedSingularValues, SpectralConv1x1, SpectralConv2d, SpectralLinear

__all__ = ["apply", "matrix", "Orthogonal", "SVDLinear", "orthogonal", "householder_vectors",
           "BoundedSingularValues", "SpectralLinear", "SpectralConv1x1", "SpectralConv2d"]
