"""fasth for PyTorch: differentiable ``apply`` and ``matrix`` (custom ops, ``torch.compile``
friendly) and layers built on them."""

from ._ops import apply, matrix
from .nn import Orthogonal, SVDLinear, householder_vectors, orthogonal

__all__ = ["apply", "matrix", "Orthogonal", "SVDLinear", "orthogonal", "householder_vectors"]
