"""fasth for PyTorch: differentiable ``apply`` and ``matrix``, drop-ins for LAPACK's
``householder_product`` and ``ormqr`` (custom ops, ``torch.compile`` friendly), and layers
built on them."""

from ._ops import Reflectors, apply, householder_product, matrix, ormqr
from .nn import Orthogonal, SVDLinear, householder_vectors, orthogonal
from .spectral import BoundedSingularValues, SpectralConv1x1, SpectralConv2d, SpectralLinear

__all__ = ["apply", "matrix", "Reflectors", "householder_product", "ormqr", "Orthogonal", "SVDLinear",
           "orthogonal", "householder_vectors", "BoundedSingularValues", "SpectralLinear",
           "SpectralConv1x1", "SpectralConv2d"]
