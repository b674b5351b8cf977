"""fasth's public functions for torch, with autograd: ``apply``, ``matrix``, and LAPACK's
(A, tau) form as drop-ins for ``torch.linalg.householder_product`` and ``torch.ormqr``.
Their checks are the front ends' shared ones (fasth._spec); the tensors' dtypes as torch
computes them (below)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._spec import (APPLY, HOUSEHOLDER, LAPACK, MATRIX, Spec, StrategyName, accepted_dtypes,
                     check_dtypes, not_an_array, ormqr_spec, spec)
from . import _autograd
from ._plans import plain

# dtypes: under torch.autocast fasth runs in float32, as torch's float32-list ops (linalg
# among them) do (float16 and bfloat16 cast up, float64 left alone, a float32 result).
# Outside it, float16 and bfloat16 are computed in float32 and returned in their own dtype,
# as torch.matmul does (float32 accumulation).
_HALF = (torch.float16, torch.bfloat16)
EXPECTED = "a torch.Tensor"


def check_tensor(s: Spec, i: int, t: Any) -> None:
    """Argument i of (V, tau, X) is a tensor."""
    if not isinstance(t, Tensor):
        raise not_an_array(s.name("torch"), s.arg_names()[i], t, EXPECTED)


def _prepare(s: Spec, *tensors: Any):
    """(tensors to compute with, the dtype to return or None); complex ones plain."""
    half = conj = False
    for i, present in enumerate(s.present()):  # one pass: this is every call's fixed cost
        if present:
            t = tensors[i]
            check_tensor(s, i, t)
            dt = t.dtype
            half, conj = half or dt in _HALF, conj or dt.is_complex
    if conj:
        tensors = tuple(plain(t) for t in tensors)
    if not half:
        return tensors, None  # autocast or not: computed as they are
    t0 = tensors[0]
    dev = t0.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return tuple(t.float() if t is not None and t.dtype in _HALF else t for t in tensors), None
    named = {n: str(t.dtype).removeprefix("torch.")
             for n, t in zip(s.arg_names(), tensors) if t is not None}
    check_dtypes(s.name("torch"), named, accepted_dtypes("torch"))
    return tuple(None if t is None else t.float() for t in tensors), t0.dtype


def public(s: Spec, V, tau, X, run=_autograd.run) -> Tensor:
    """The op's output after the checks, through ``run(s, V, tau, X)``."""
    (V, tau, X), back = _prepare(s, V, tau, X)
    if V.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        s = s._replace(tf32=True)
    out = run(s, V, tau, X)
    return out if back is None else out.to(back)


def apply(V: Tensor, X: Tensor, transpose: bool = False, *, block: int | None = None,
          strategy: StrategyName = "auto") -> Tensor:
    """``U X`` (``U^T X`` with ``transpose``), differentiable in ``V`` and ``X``.

    ``V``: ``(..., d, k)``, Householder vectors in columns (any ``k``); ``X``: ``(..., d, n)``;
    ``V`` unbatched is shared by a batch of ``X``. ``strategy``: ``"blockwise"``,
    ``"materialize"`` (build ``U`` once, then one GEMM) or ``"auto"`` (by cost)."""
    s = spec("torch", APPLY, HOUSEHOLDER, transpose=transpose, block=block, strategy=strategy)
    return public(s, V, None, X)


def matrix(V: Tensor, thin: bool = False, *, block: int | None = None) -> Tensor:
    """``U`` (``d x d``), or with ``thin`` its first ``min(k, d)`` columns, differentiable in
    ``V``."""
    return public(spec("torch", MATRIX, HOUSEHOLDER, thin=thin, block=block), V, None, None)


class DropInError(ValueError, RuntimeError):
    """Bad input to a drop-in for a torch function: a ValueError naming the argument, and a
    RuntimeError, as torch's own error for it is."""


def _drop_in(s: Spec, A, tau, C) -> Tensor:
    try:
        return public(s, A, tau, C)
    except ValueError as e:
        if isinstance(e, DropInError):
            raise
        raise DropInError(str(e)) from None


def householder_product(A: Tensor, tau: Tensor) -> Tensor:
    """``torch.linalg.householder_product``: the first ``n`` columns of ``H_1 ... H_k``,
    ``H_i = I - tau_i v_i v_i^H`` (``v_i^T`` for real ``A``) with ``v_i`` the unit lower part of column ``i`` of ``A``
    (``(..., m, n)``, ``m >= n >= k``), for any ``tau`` (``(..., k)``). Differentiable in
    ``A`` and ``tau``."""
    return _drop_in(Spec(MATRIX, LAPACK), A, tau, None)


def ormqr(A: Tensor, tau: Tensor, C: Tensor, left: bool = True, transpose: bool = False) -> Tensor:
    """``torch.ormqr``: ``op(Q) C`` (``left``) or ``C op(Q)``, ``Q = H_1 ... H_k`` from
    ``(A, tau)`` as ``householder_product`` takes them, ``op(Q) = Q^T`` with ``transpose``
    (``Q^H`` for complex). Differentiable in ``A``, ``tau`` and ``C``."""
    s, right = ormqr_spec("torch", left, transpose)
    if not right:
        return _drop_in(s, A, tau, C)
    check_tensor(s, 2, C)
    # (op(Q)^H C^H)^H, a plain tensor as torch's (no lazy conjugate bit)
    return plain(_drop_in(s, A, tau, C.mH).mH)
