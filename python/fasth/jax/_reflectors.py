"""``fasth.jax.Reflectors``: one U applied many times, its factors returned by the first
apply of each shape and reused by the later ones."""

from __future__ import annotations

from typing import Any

import jax

from .._spec import APPLY, HOUSEHOLDER, StrategyName, check_bool, factors_key, function_name, spec
from . import _jvp
from ._functions import public


class Reflectors:
    """``U = H_1 ... H_k`` of ``V``'s columns, for applying the same ``U`` many times (an RNN's
    recurrent weight at every step): ``R = Reflectors(V)``, then ``R.apply(X)`` as
    ``apply(V, X)``, differentiable in ``V`` and ``X``, under ``jit``, ``grad`` and ``vmap``.

    The first apply for each number of columns of ``X`` (and direction and dtype) returns
    the compact-WY factors of ``V`` with its output; later ones reuse them, costing the
    products with ``X`` alone. Make it inside the function you transform (the factors are
    values of that trace), as ``fasth.torch.Reflectors`` is made per step."""

    def __init__(self, V, *, block: int | None = None, strategy: StrategyName = "auto",
                 tf32: bool = False) -> None:
        self.V = V
        self._spec = spec("jax", APPLY, HOUSEHOLDER, block=block, strategy=strategy, tf32=tf32,
                          fn=function_name("jax", "Reflectors"))
        self._factors: dict[tuple, Any] = {}  # by _spec.factors_key

    def apply(self, X, transpose: bool = False) -> jax.Array:
        """``U X`` (``U^T X`` with ``transpose``)."""
        s = self._spec._replace(transpose=check_bool(self._spec.name("jax"), "transpose", transpose))

        def compute(V, X):
            key = factors_key(s, X.shape, X.dtype)
            f = self._factors.get(key)
            if f is None:
                out, self._factors[key] = _jvp.run(s, V, X)
                return out
            return _jvp.run_with(s, V, f, X)

        return public(s, self.V, X, compute=compute)
