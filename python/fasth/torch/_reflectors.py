"""``fasth.torch.Reflectors``: one U applied many times, its factors built once per shape."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._spec import (APPLY, HOUSEHOLDER, Spec, StrategyName, check_bool, factors_key,
                     function_name, spec)
from . import _plans
from ._autograd import Eager, EagerWith, run
from ._functions import public


class Reflectors:
    """``U = H_1 ... H_k`` of ``V``'s columns, for applying the same ``U`` many times (an RNN's
    recurrent weight at every timestep): ``R = Reflectors(V)``, then ``R.apply(X)`` as
    ``apply(V, X)``, differentiable in ``V`` and ``X``, the gradients of every use summed.

    Eagerly, the compact-WY factors of ``V`` (its T factors) are built by the first apply of
    each shape and reused by the later ones, which then cost the products with ``X`` alone
    (about half of a forward at d = 256 to 1024 on the CPU). A change to ``V`` in place (an
    optimizer step) is seen through its version counter, and the factors are built again; as
    for autograd's saved tensors, a write through ``V.data`` is not seen. Under
    ``torch.compile`` and ``torch.func`` each apply is ``apply``'s."""

    def __init__(self, V: Tensor, *, block: int | None = None,
                 strategy: StrategyName = "auto") -> None:
        self.V = V
        self._spec = spec("torch", APPLY, HOUSEHOLDER, block=block, strategy=strategy,
                          fn=function_name("torch", "Reflectors"))
        self._factors: dict[tuple, Tensor] = {}  # by _spec.factors_key
        self._version = V._version

    def apply(self, X: Tensor, transpose: bool = False) -> Tensor:
        """``U X`` (``U^T X`` with ``transpose``)."""
        s = self._spec._replace(transpose=check_bool(self._spec.name("torch"), "transpose", transpose))
        return public(s, self.V, None, X, run=self._run)

    def _run(self, s: Spec, V: Tensor, tau: None, X: Tensor) -> Any:
        if torch.compiler.is_compiling() or _plans.transforming():
            return run(s, V, tau, X)
        if self.V._version != self._version:  # V changed in place: its factors are stale
            self._factors.clear()
            self._version = self.V._version
        key = factors_key(s, X.shape, X.dtype, X.device)
        f = self._factors.get(key)
        if f is None:
            keep: list[Tensor] = []
            out = Eager.apply(V, tau, X, s, keep)
            self._factors[key] = keep[0]
            return out
        return EagerWith.apply(V, tau, X, f, s)
