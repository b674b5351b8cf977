"""Pure-torch baselines for the benchmark suite (differentiable by autograd). They compute
the same ``U X`` as ``fasth.torch.apply`` (``U = H_1 ... H_k``, ``V`` columns, docs/math.md),
and are here to be measured against, not used.

- ``sequential``: one reflector at a time, the FastH paper's baseline.
- ``fasthpp``: fasth++ (Mathiasen et al.): ``H = I - W Y^T`` per reflector, adjacent
  ``(W, Y)`` pairs merged for a few levels in log depth with batched products, then the
  merged blocks applied one after the other. Written from its description.
- ``compact_wy``: a naive blocked compact WY (``T = S^{-1}``, ``S = striu(Y^T Y) + diag/2``)."""

from __future__ import annotations

import torch
from torch import Tensor


def _tau(V: Tensor) -> Tensor:
    """``2 / ||v_i||^2`` per column, 0 for a zero column."""
    nrm = (V * V).sum(-2)
    return torch.where(nrm > 0, 2 / torch.where(nrm > 0, nrm, torch.ones_like(nrm)), torch.zeros_like(nrm))


def sequential(V: Tensor, X: Tensor) -> Tensor:
    """``U X`` by ``X <- H_i X`` for ``i = k ... 1``."""
    tau = _tau(V)
    for i in range(V.shape[-1] - 1, -1, -1):
        v = V[:, i : i + 1]
        X = X - (tau[i] * v) @ (v.T @ X)
    return X


def fasthpp(V: Tensor, X: Tensor, levels: int = 3) -> Tensor:
    """``U X`` with fasth++: merge ``2**levels`` reflectors per block in ``levels`` batched
    steps, then apply the blocks ``P_j = I - W_j Y_j^T`` from the last to the first."""
    d, k = V.shape
    m = 1 << levels
    pad = -k % m
    if pad:  # zero vectors are identities
        V = torch.cat([V, V.new_zeros(d, pad)], 1)
    Y = V.T.reshape(-1, d, 1)  # (k, d, 1): one reflector per batch entry
    W = Y * _tau(V).reshape(-1, 1, 1)
    while Y.shape[0] > (k + pad) // m:
        Ya, Yb, Wa, Wb = Y[0::2], Y[1::2], W[0::2], W[1::2]
        # (I - Wa Ya^T)(I - Wb Yb^T) = I - [Wa, Wb - Wa (Ya^T Wb)] [Ya, Yb]^T
        W = torch.cat([Wa, Wb - Wa @ (Ya.transpose(1, 2) @ Wb)], 2)
        Y = torch.cat([Ya, Yb], 2)
    for j in range(Y.shape[0] - 1, -1, -1):
        X = X - W[j] @ (Y[j].T @ X)
    return X


def compact_wy(V: Tensor, X: Tensor, block: int = 32) -> Tensor:
    """``U X`` block by block, ``P_j = I - Y T Y^T`` with ``T`` the triangular inverse of ``S``."""
    k = V.shape[-1]
    for j in reversed(range(0, k, block)):
        Y = V[:, j : j + block]
        G = Y.T @ Y
        S = torch.triu(G, 1) + torch.diag_embed(G.diagonal() / 2)
        eye = torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
        T = torch.linalg.solve_triangular(S, eye, upper=True)
        X = X - Y @ (T @ (Y.T @ X))
    return X
