"""fasth: orthogonal and SVD-parametrised layers through products of Householder reflectors,
``U = H_1 ... H_k``, in blocked compact-WY form (FastH).

The functional API works on numpy, torch, cupy and any DLPack array; ``fasth.torch`` and
``fasth.jax`` add autograd and layers.
"""

from . import _core
from ._api import apply, apply_backward, matrix, matrix_backward

_core.load_scipy_blas()

__version__ = "0.1.0"
__all__ = ["apply", "apply_backward", "matrix", "matrix_backward", "__version__"]
