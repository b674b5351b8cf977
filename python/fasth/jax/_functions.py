"""fasth's public functions for JAX: ``apply``, ``matrix`` and LAPACK's drop-ins, each the
differentiable op over its custom calls (``_jvp``) after the front ends' shared checks
(fasth._spec)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._spec import (APPLY, HOUSEHOLDER, LAPACK, MATRIX, HALF_DTYPES, Spec, StrategyName,
                     accepted_dtypes, check_dtypes, not_an_array, ormqr_spec, spec)
from . import _ffi, _jvp

EXPECTED = "an array (a JAX or numpy array)"


def _prepare(s: Spec, arrays: tuple) -> tuple[tuple, Any]:
    """Arrays checked (arrays of one dtype: float32, float64, complex64 or complex128;
    float16 and bfloat16 are computed in float32 and returned in their dtype, as matmul
    accumulates), and the dtype to return."""
    fn, names = s.name("jax"), [n for n, p in zip(s.arg_names(), s.present()) if p]
    for name, a in zip(names, arrays):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise not_an_array(fn, name, a, EXPECTED)
    arrays = tuple(jnp.asarray(a) for a in arrays)
    dt = check_dtypes(fn, {n: np.dtype(a.dtype).name for n, a in zip(names, arrays)},
                      accepted_dtypes("jax"))
    if dt in HALF_DTYPES:
        return tuple(a.astype(jnp.float32) for a in arrays), arrays[0].dtype
    return arrays, None


def public(s: Spec, *arrays: Any, compute: Callable | None = None) -> jax.Array:
    """The op's output, after the checks; ``compute(*arrays)`` instead of ``run``'s output."""
    _ffi.register_cuda()
    arrays, back = _prepare(s, arrays)
    _ffi.sizes(s, *_ffi.shapes(s, arrays))  # validates the shapes, naming the argument
    out = _jvp.run(s, *arrays)[0] if compute is None else compute(*arrays)
    return out if back is None else out.astype(back)


def apply(V, X, transpose: bool = False, *, block: int | None = None,
          strategy: StrategyName = "auto", tf32: bool = False) -> jax.Array:
    """``U X`` (``U^T X`` with ``transpose``) for ``U = H_1 ... H_k`` built from the columns of
    ``V`` (shape ``(..., d, k)``, any ``k``), ``X`` of shape ``(..., d, n)``; ``V`` may be
    unbatched and shared by a batch of ``X``. Differentiable in ``V`` and ``X``, in forward
    and reverse mode; works under ``jit``, ``vmap``, ``grad``, ``jvp`` and ``checkpoint``."""
    s = spec("jax", APPLY, HOUSEHOLDER, transpose=transpose, block=block, strategy=strategy,
             tf32=tf32)
    return public(s, V, X)


def matrix(V, thin: bool = False, *, block: int | None = None, tf32: bool = False) -> jax.Array:
    """``U = H_1 ... H_k`` (``d x d``), or with ``thin`` its first ``min(k, d)`` columns, for
    ``V`` of shape ``(..., d, k)``. Differentiable in ``V``."""
    return public(spec("jax", MATRIX, HOUSEHOLDER, thin=thin, block=block, tf32=tf32), V)


def householder_product(A, taus) -> jax.Array:
    """``jax.lax.linalg.householder_product``: the first ``n`` columns of ``H_1 ... H_k``,
    ``H_i = I - tau_i v_i v_i^T``, ``v_i`` the unit lower part of column ``i`` of ``A``
    (``(..., m, n)``, ``m >= n >= k``), any ``taus`` (``(..., k)``). Differentiable in both."""
    return public(Spec(MATRIX, LAPACK), A, taus)


def ormqr(A, taus, C, left: bool = True, transpose: bool = False) -> jax.Array:
    """``op(Q) C`` (``left``) or ``C op(Q)`` for ``Q`` from ``(A, taus)`` as
    ``householder_product`` takes them, ``op(Q) = Q^T`` with ``transpose``."""
    s, right = ormqr_spec("jax", left, transpose)
    if not right:
        return public(s, A, taus, C)
    if not hasattr(C, "shape"):
        raise not_an_array(s.name("jax"), "C", C, EXPECTED)
    Ct = jnp.swapaxes(jnp.asarray(C), -1, -2)
    return jnp.swapaxes(public(s, A, taus, Ct), -1, -2)
