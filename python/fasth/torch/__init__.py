"""fasth for PyTorch: differentiable ``apply`` and ``matrix``, drop-ins for LAPACK's
``householder_product`` and ``ormqr`` (custom ops, ``torch.compile`` friendly), and layers
built on them.

Files by concern: ``_functions`` (the public functions and their checks), ``_autograd``
(eager and torch.func autograd), ``_custom_ops`` (torch.compile's ops), ``_reflectors``,
``_plans`` (plans on tensors, libtorch's BLAS), and the layers (``nn``, ``spectral``)."""

from ._functions import apply, householder_product, matrix, ormqr
from ._reflectors import Reflectors
from .nn import Orthogonal, SVDLinear, householder_vectors, orthogonal
from .spectral import BoundedSingularValues, SpectralConv1x1, SpectralConv2d, SpectralLinear

__all__ = ["apply", "matrix", "Reflectors", "householder_product", "ormqr", "Orthogonal", "SVDLinear",
           "orthogonal", "householder_vectors", "BoundedSingularValues", "SpectralLinear",
           "SpectralConv1x1", "SpectralConv2d"]
