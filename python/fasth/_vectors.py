"""Householder vectors of a given matrix (to start a layer or a parametrisation from a given
weight), in float64 numpy, so that both adapters use it."""

from __future__ import annotations

import numpy as np

# Columns factored one at a time per panel; the trailing columns are then updated by the
# panel's reflectors in one fasth.apply (a few large products).
PANEL = 32


def householder_vectors(A, k: int | None = None) -> np.ndarray:
    """Householder vectors ``V`` (``(..., d, k)``, float64) with
    ``fasth.matrix(V, thin=True) = Q`` where ``A[..., :k] = Q R`` is the QR factorisation with
    ``diag(R) >= 0``: for an orthonormal ``A``, ``Q = A[..., :k]`` exactly. The reflector of
    column j maps it to ``+|x| e_j`` (LAPACK's geqrf maps it to ``-sign(x_j) |x| e_j``, whose
    Q differs by column signs), computed without cancellation; a column already at
    ``+|x| e_j`` gets the zero vector, the identity. Blocked: panels of PANEL columns, the
    trailing columns updated through fasth.apply."""
    from . import _functional

    A = np.array(A, dtype=np.float64)
    if A.ndim < 2:
        raise ValueError(f"householder_vectors: A must have at least 2 dimensions, got shape {A.shape}")
    d, c = A.shape[-2:]
    k = min(c, d) if k is None else int(k)
    if not 0 <= k <= min(c, d):
        raise ValueError(f"householder_vectors: k must be in [0, {min(c, d)}], got {k}")
    out = np.zeros((*A.shape[:-2], d, k))
    tiny = np.finfo(np.float64).tiny
    for b in np.ndindex(A.shape[:-2]):
        R, V = A[b][:, :k].copy(), out[b]
        for j0 in range(0, k, PANEL):
            j1 = min(k, j0 + PANEL)
            for j in range(j0, j1):
                x = R[j:, j]
                norm = np.linalg.norm(x)
                v = x.copy()
                v[0] = -(x[1:] @ x[1:]) / (x[0] + norm) if x[0] > 0 else x[0] - norm
                vv = v @ v
                if vv <= tiny:
                    continue
                R[j:, j:j1] -= (2 / vv) * np.outer(v, v @ R[j:, j:j1])
                V[j:, j] = v
            if j1 < k:  # R[:, j1:] = H_{j1-1} ... H_{j0} R[:, j1:]
                R[:, j1:] = _functional.apply(V[:, j0:j1], R[:, j1:], transpose=True)
    return out
