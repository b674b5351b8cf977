"""Glow's three interchangeable invertible 1x1 convolutions in torch (plain, LU, SVD through
fasth), each building the matrices of a whole scale's convolutions in one batched call."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasth.torch import matrix

from .flow import CONVS, lu_parameters, svd_parameters


class InvConv(nn.Module):
    """Invertible 1x1 convolution ``y = W x`` per pixel. Each variant builds the matrices of a
    list of its convolutions at once: ``weights(convs)`` gives ``W`` (``(K, c, c)``) and
    ``log|det W|`` (``(K,)``), ``inverse_weights(convs)`` gives ``W^{-1}``. A Glow level builds
    the ``K`` matrices of its steps in one batched call (they depend on parameters only); a
    convolution on its own is the case ``K = 1``."""

    kind = ""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c

    @classmethod
    def weights(cls, convs: list[InvConv]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @classmethod
    def inverse_weights(cls, convs: list[InvConv]) -> Tensor:
        raise NotImplementedError

    def weight(self) -> tuple[Tensor, Tensor]:
        W, lad = self.weights([self])
        return W[0], lad[0]

    def forward(self, x: Tensor, logdet: Tensor,
                weight: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        W, lad = self.weight() if weight is None else weight
        hw = x.shape[2] * x.shape[3]
        return F.conv2d(x, W[:, :, None, None]), logdet + hw * lad

    def inverse(self, y: Tensor, inverse_weight: Tensor | None = None) -> Tensor:
        Winv = self.inverse_weights([self])[0] if inverse_weight is None else inverse_weight
        return F.conv2d(y, Winv[:, :, None, None])

    def extra_repr(self) -> str:
        return f"c={self.c}"


def _stack(convs: list[InvConv], name: str) -> Tensor:
    return torch.stack([getattr(c, name) for c in convs])


def _f32(a: np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


class PlainConv(InvConv):
    kind = "plain"

    def __init__(self, W0: np.ndarray) -> None:
        super().__init__(W0.shape[0])
        self.W = nn.Parameter(_f32(W0))

    @classmethod
    def weights(cls, convs):
        W = _stack(convs, "W")
        return W, torch.linalg.slogdet(W)[1]

    @classmethod
    def inverse_weights(cls, convs):
        return torch.linalg.inv(_stack(convs, "W"))


class LUConv(InvConv):
    """``W = P L (U + diag(sign(s) e^{log|s|}))`` with ``L`` unit lower triangular and ``U``
    strictly upper triangular (``P`` and ``sign(s)`` fixed)."""

    kind = "lu"

    def __init__(self, W0: np.ndarray) -> None:
        c = W0.shape[0]
        super().__init__(c)
        p = lu_parameters(W0)
        self.register_buffer("P", _f32(p["P"]))
        self.register_buffer("sign_s", _f32(p["sign_s"]))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.L = nn.Parameter(_f32(p["L"]))
        self.U = nn.Parameter(_f32(p["U"]))
        self.log_s = nn.Parameter(_f32(p["log_s"]))

    @staticmethod
    def _factors(convs) -> tuple[Tensor, Tensor, Tensor]:
        mask, eye = convs[0].lower_mask, convs[0].eye
        L = _stack(convs, "L") * mask + eye
        U = _stack(convs, "U") * mask.T + torch.diag_embed(_stack(convs, "sign_s") * torch.exp(_stack(convs, "log_s")))
        return _stack(convs, "P"), L, U

    @classmethod
    def weights(cls, convs):
        P, L, U = cls._factors(convs)
        return P @ (L @ U), _stack(convs, "log_s").sum(-1)

    @classmethod
    def inverse_weights(cls, convs):
        # W^{-1} = U^{-1} L^{-1} P^T by two triangular solves on P^T (c x c, never a general
        # inverse), then one convolution.
        P, L, U = cls._factors(convs)
        Linv_Pt = torch.linalg.solve_triangular(L, P.mT, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(U, Linv_Pt, upper=True)


class SVDConv(InvConv):
    """``W = U diag(e^{log s}) V^T``: ``U`` and ``V`` are products of ``c`` Householder
    reflectors (their vectors stacked in one ``(2, c, c)`` parameter; the frames of a whole
    level come from a single batched ``fasth.torch.matrix``), so ``log|det W| = sum log s``
    and ``W^{-1} = V diag(e^{-log s}) U^T`` need no factorisation."""

    kind = "svd"

    def __init__(self, W0: np.ndarray) -> None:
        super().__init__(W0.shape[0])
        UV, log_s = svd_parameters(W0)
        self.UV = nn.Parameter(_f32(UV))
        self.log_s = nn.Parameter(_f32(log_s))

    @staticmethod
    def _frames(convs) -> tuple[Tensor, Tensor, Tensor]:
        UV = matrix(_stack(convs, "UV"))  # (K, 2, c, c): one call for all frames
        return UV[:, 0], UV[:, 1], _stack(convs, "log_s")

    @classmethod
    def weights(cls, convs):
        U, V, log_s = cls._frames(convs)
        return (U * torch.exp(log_s)[:, None, :]) @ V.mT, log_s.sum(-1)

    @classmethod
    def inverse_weights(cls, convs):
        U, V, log_s = cls._frames(convs)
        return (V * torch.exp(-log_s)[:, None, :]) @ U.mT


def make_conv(kind: str, W0: np.ndarray) -> InvConv:
    """A ``kind`` 1x1 convolution whose ``W`` is ``W0`` (float64 numpy)."""
    convs = {"plain": PlainConv, "lu": LUConv, "svd": SVDConv}
    if kind not in convs:
        raise ValueError(f"conv must be one of {CONVS}, got {kind!r}")
    return convs[kind](np.asarray(W0, np.float64))


def conv_weights(convs: list[InvConv]) -> tuple[Tensor, Tensor]:
    """The matrices and log-determinants of a list of one variant's 1x1 convolutions (a
    level's), in one batched call."""
    return type(convs[0]).weights(convs)


def conv_inverse_weights(convs: list[InvConv]) -> Tensor:
    return type(convs[0]).inverse_weights(convs)
