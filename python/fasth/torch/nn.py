"""Layers: ``Orthogonal``, ``SVDLinear`` and the ``orthogonal`` parametrisation.

Features last, as ``nn.Linear``: ``y = x W^T + b``. A ``(N, d)`` batch is handed to the core
as the column-major ``d x N`` matrix it already is in memory (no transpose copy)."""

from __future__ import annotations


import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._svd_rules import dense_weight
from ._functions import apply, matrix


def householder_vectors(A: Tensor, k: int | None = None) -> Tensor:
    """``fasth.householder_vectors`` for a tensor: ``V`` (``d x k``, A's dtype and device) with
    ``matrix(V, thin=True) = Q`` for ``A[:, :k] = Q R``, ``diag(R) >= 0``; for an orthonormal
    ``A``, ``Q = A[:, :k]`` exactly. Used to start a layer from a given weight."""
    from .._vectors import householder_vectors as vectors

    V = vectors(A.detach().to("cpu", torch.float64).numpy(), k)
    return torch.from_numpy(V).to(device=A.device, dtype=A.dtype)


def _features_first(x: Tensor, d: int, name: str) -> tuple[Tensor, tuple[int, ...]]:
    if x.shape[-1] != d:
        raise ValueError(f"{name}: expected {d} features in the last dimension, got shape {tuple(x.shape)}")
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, d).transpose(0, 1), lead  # (d, N), column-major view


def _features_last(y: Tensor, lead: tuple[int, ...]) -> Tensor:
    return y.transpose(0, 1).reshape(*lead, y.shape[0])


def _renamed(state_dict: dict, prefix: str, names: dict[str, str]) -> None:
    """A checkpoint saved before the parameters were renamed loads under the new names."""
    for old, new in names.items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


class Orthogonal(nn.Module):
    """``y = x U^T`` with ``U = H_1 ... H_k`` (``d x d``, orthogonal by construction).

    ``k`` reflectors, any ``k >= 0`` (default ``d``: every orthogonal matrix of determinant
    ``(-1)^d``; ``k > d`` is taken too, and spans no more). The parameter ``reflectors``
    (``d x k``) holds the Householder vectors; ``weight`` is the dense ``U`` they give. A
    complex ``dtype`` gives a unitary ``U`` (Hermitian reflectors ``I - 2 v v^H / |v|^2``:
    unitary matrices of determinant ``+-1``)."""

    def __init__(self, d: int, k: int | None = None, *, device=None, dtype=None) -> None:
        super().__init__()
        k = d if k is None else k
        if k < 0:
            raise ValueError(f"Orthogonal: k must be nonnegative, got {k}")
        self.d, self.k = d, k
        self.reflectors = nn.Parameter(torch.randn(d, k, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        xt, lead = _features_first(x, self.d, "Orthogonal")
        return _features_last(apply(self.reflectors, xt), lead)

    def inverse(self, y: Tensor) -> Tensor:
        yt, lead = _features_first(y, self.d, "Orthogonal.inverse")
        return _features_last(apply(self.reflectors, yt, transpose=True), lead)

    @property
    def weight(self) -> Tensor:
        """The dense orthogonal ``U`` (``d x d``), differentiable in ``reflectors``."""
        return matrix(self.reflectors)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        _renamed(state_dict, prefix, {"V": "reflectors"})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"d={self.d}, k={self.k}"


class SVDLinear(nn.Module):
    """``nn.Linear`` with its weight held as an SVD, ``W = U diag(S) V^T``.

    ``U`` and ``V`` are products of Householder reflectors (thin frames of ``r = min(in,
    out)`` columns when rectangular), so ``logabsdet()``, ``spectral_norm()`` and
    ``inverse()`` are exact and cost nothing next to the forward. Starts orthogonal
    (``S = 1``) unless ``from_linear`` / ``from_weight`` is used.

    Parameters: ``U_reflectors`` (``out x r``) and ``V_reflectors`` (``in x r``), the
    Householder vectors; ``S`` (``r``), the singular values; ``bias``. Properties, each
    differentiable: ``weight`` (``out x in``, as ``nn.Linear.weight``), ``U`` (``out x r``)
    and ``V`` (``in x r``), the orthonormal factors."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        r = min(in_features, out_features)
        kw = {"device": device, "dtype": dtype}
        self.U_reflectors = nn.Parameter(torch.randn(out_features, r, **kw))
        self.S = nn.Parameter(torch.ones(r, **kw))
        self.V_reflectors = nn.Parameter(torch.randn(in_features, r, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None = None) -> "SVDLinear":
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, bias is not None, device=weight.device, dtype=weight.dtype)
        u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
        with torch.no_grad():
            layer.U_reflectors.copy_(householder_vectors(u))
            layer.V_reflectors.copy_(householder_vectors(vh.T))
            layer.S.copy_(s)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "SVDLinear":
        return cls.from_weight(linear.weight, linear.bias)

    @property
    def square(self) -> bool:
        return self.in_features == self.out_features

    @property
    def U(self) -> Tensor:
        """The left factor, ``out x r`` with orthonormal columns."""
        return matrix(self.U_reflectors, thin=True)

    @property
    def V(self) -> Tensor:
        """The right factor, ``in x r`` with orthonormal columns."""
        return matrix(self.V_reflectors, thin=True)

    @property
    def weight(self) -> Tensor:
        """The dense ``W = U diag(S) V^T`` (``out x in``)."""
        if self.square:  # both frames in one batched call: half the calls and launches
            Ur, Vr = matrix(torch.stack([self.U_reflectors, self.V_reflectors]), thin=True)
        else:
            Ur, Vr = self.U, self.V
        return (Ur * self.S) @ Vr.T

    def forward(self, x: Tensor) -> Tensor:
        xt, lead = _features_first(x, self.in_features, "SVDLinear")
        n, r = xt.shape[1], self.S.shape[0]
        if dense_weight(n, self.in_features, self.out_features, eager=not torch.compiler.is_compiling()):
            return nn.functional.linear(x, self.weight, self.bias)
        z = apply(self.V_reflectors, xt, transpose=True)[:r] * self.S[:, None]   # diag(S) V^T x
        if self.out_features > r:
            z = torch.cat([z, z.new_zeros(self.out_features - r, n)])
        y = _features_last(apply(self.U_reflectors, z), lead)
        return y if self.bias is None else y + self.bias

    def inverse(self, y: Tensor) -> Tensor:
        """``x`` with ``forward(x) = y``: ``W^{-1} = V diag(1/S) U^T`` (square layers)."""
        if not self.square:
            raise ValueError("SVDLinear.inverse: the layer is not square "
                             f"({self.out_features} x {self.in_features})")
        if self.bias is not None:
            y = y - self.bias
        yt, lead = _features_first(y, self.out_features, "SVDLinear.inverse")
        z = apply(self.U_reflectors, yt, transpose=True) / self.S[:, None]
        return _features_last(apply(self.V_reflectors, z), lead)

    def logabsdet(self) -> Tensor:
        """``log |det W| = sum log |S|`` (square layers)."""
        if not self.square:
            raise ValueError("SVDLinear.logabsdet: the layer is not square")
        return torch.log(torch.abs(self.S)).sum()

    def spectral_norm(self) -> Tensor:
        """``||W||_2 = max |S|``, exact."""
        return torch.abs(self.S).max()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        _renamed(state_dict, prefix, {"U": "U_reflectors", "V": "V_reflectors"})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _Householder(nn.Module):
    """Parametrisation: Householder vectors -> the orthonormal weight (a matrix, or a batch of
    them in its last two dimensions), as torch's ``_Orthogonal`` with its householder map."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.shape = weight.shape
        self.transposed = weight.shape[-2] < weight.shape[-1]

    def forward(self, V: Tensor) -> Tensor:
        Q = matrix(V, thin=True)
        return Q.mT if self.transposed else Q

    @torch.no_grad()
    def right_inverse(self, W: Tensor) -> Tensor:
        if W.shape != self.shape:
            raise ValueError(f"Expected a matrix or batch of matrices of shape {self.shape}. "
                             f"Got a tensor of shape {W.shape}.")
        return householder_vectors(W.mT if self.transposed else W)


_TORCH_MAPS = ("matrix_exp", "cayley", "householder")


def orthogonal(module: nn.Module, name: str = "weight", orthogonal_map: str | None = None, *,
               use_trivialization: bool = True) -> nn.Module:
    """A drop-in for ``torch.nn.utils.parametrizations.orthogonal``: ``module.<name>`` (a matrix,
    or a batch of matrices in its last two dimensions) becomes orthogonal (orthonormal
    columns, or rows when wide) through Householder vectors, computed by fasth. The current
    weight becomes the ``Q`` of its QR factorisation (``diag(R) >= 0``), as does a tensor
    assigned to ``module.<name>`` later (of the same shape).

    ``orthogonal_map``: None or ``"householder"`` (fasth's map); torch's ``"matrix_exp"`` and
    ``"cayley"`` are refused (use torch's own function for them). ``use_trivialization`` is
    accepted with either value: the Householder vectors reach every orthogonal matrix without a
    base to move (torch's trivialization), so both give the same parametrisation. Complex
    weights are refused, as torch's householder map refuses them (Hermitian reflectors reach only
    unitary matrices of determinant +-1, so an assigned weight could not be reproduced; the
    ``Orthogonal`` layer takes a complex dtype)."""
    W = getattr(module, name, None)
    if not isinstance(W, Tensor):
        raise ValueError(f"Module '{module}' has no parameter or buffer with name '{name}'")
    if W.ndim < 2:
        raise ValueError(f"Expected a matrix or batch of matrices. Got a tensor of {W.ndim} dimensions.")
    if orthogonal_map is not None and orthogonal_map not in _TORCH_MAPS:
        raise ValueError('orthogonal_map has to be one of "matrix_exp", "cayley", "householder". '
                         f"Got: {orthogonal_map}")
    if orthogonal_map not in (None, "householder"):
        raise ValueError(f"fasth.torch.orthogonal parametrises by Householder products; "
                         f"orthogonal_map={orthogonal_map!r} is torch's own: use "
                         "torch.nn.utils.parametrizations.orthogonal for it")
    if W.is_complex():
        raise ValueError("The householder parametrization does not support complex tensors.")
    if not isinstance(use_trivialization, bool):
        raise TypeError(f"use_trivialization must be a bool, got {type(use_trivialization).__name__}")
    parametrize.register_parametrization(module, name, _Householder(W), unsafe=True)
    return module
