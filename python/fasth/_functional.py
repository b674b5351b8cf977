"""The functional API on numpy, torch, cupy or any DLPack array, without autograd (the torch
and JAX adapters add it): ``fasth.apply``, ``fasth.matrix`` and their backwards, each one
run of the core's plan through ``_engine``."""

from __future__ import annotations

from typing import Any

from . import _arrays, _engine
from ._engine import BoundPlan
from ._spec import APPLY, CORE_DTYPES, HOUSEHOLDER, MATRIX, StrategyName, check_dtypes, spec


def _bind_apply(V, X, transpose, block, strategy, tf32, fn=None, names=None) -> BoundPlan:
    s = spec("numpy", APPLY, HOUSEHOLDER, transpose=transpose, block=block, strategy=strategy,
             tf32=tf32, fn=fn)
    return _engine.resolve(s, "numpy", (V, None, X), fn=fn, names=names)


def _bind_matrix(V, thin, block, tf32, fn=None) -> BoundPlan:
    s = spec("numpy", MATRIX, HOUSEHOLDER, thin=thin, block=block, tf32=tf32, fn=fn)
    return _engine.resolve(s, "numpy", (V, None, None), fn=fn)


def _back(c: BoundPlan, a: Any, like: Any) -> Any:
    return c.xp.unwrap(a, like)


def apply_with_factors(V, X, transpose: bool = False, *, block: int | None = None,
                       strategy: StrategyName = "auto", tf32: bool = False) -> tuple[Any, Any]:
    """U X (or U^T X) and the T factors of V, for apply_backward."""
    c = _bind_apply(V, X, transpose, block, strategy, tf32)
    out, f = _engine.forward(c, V, None, X)
    return _back(c, out, V), _back(c, f, V)


def apply(V, X, transpose: bool = False, *, block: int | None = None,
          strategy: StrategyName = "auto", tf32: bool = False) -> Any:
    """``U X`` (``U^T X`` with ``transpose``) for ``U = H_1 ... H_k`` built from the columns of
    ``V`` (shape ``(..., d, k)``, any ``k``), ``X`` of shape ``(..., d, n)``. ``V`` may be
    unbatched and shared by a batch of ``X``."""
    c = _bind_apply(V, X, transpose, block, strategy, tf32)
    return _back(c, _engine.forward(c, V, None, X)[0], V)


def apply_backward(V, out, grad, transpose: bool = False, *, factors: Any = None,
                   block: int | None = None, strategy: StrategyName = "auto",
                   tf32: bool = False) -> tuple[Any, Any]:
    """Gradients ``(dV, dX)`` of ``out = apply(V, X, transpose)`` from ``out`` and
    ``grad = dL/dout`` alone (the input is recovered through orthogonality)."""
    fn = "fasth.apply_backward"
    c = _bind_apply(V, out, transpose, block, strategy, tf32, fn, ("V", "tau", "out"))
    xp = c.xp
    if _arrays.namespace(grad) is not xp:
        raise TypeError(f"{fn}: grad is a {_arrays.namespace(grad).name} array but V is a "
                        f"{xp.name} array")
    g = xp.wrap(grad)
    check_dtypes(fn, {"V": xp.dtype(xp.wrap(V)), "grad": xp.dtype(g)}, CORE_DTYPES)
    if tuple(g.shape) != tuple(out.shape):
        raise c.fail(ValueError, f"grad has shape {tuple(g.shape)} but out has shape {tuple(out.shape)}")
    if xp.device(g) != c.device:
        raise c.fail(ValueError, f"grad is on {xp.device(g)[0]} but V is on {c.device[0]}")
    f = _factors(c, V, factors)
    Vw, _, outw = _engine.copies_where_planned(c, [V, None, out]) if c.copied else (V, None, out)
    dV, _, dX = _engine.backward(c, xp.wrap(Vw), f, xp.wrap(outw), g)
    return _back(c, dV, V), _back(c, dX, V)


def _factors(c: BoundPlan, V: Any, factors: Any) -> Any:
    if factors is None:
        return c.xp.wrap(_engine.factors_of(c, V))
    f = c.xp.wrap(factors)
    if int(f.shape[0]) < c.plan.factors_size:
        raise c.fail(ValueError, f"factors holds {int(f.shape[0])} elements, needs {c.plan.factors_size}")
    return f


def matrix_with_factors(V, thin: bool = False, *, block: int | None = None,
                        tf32: bool = False) -> tuple[Any, Any]:
    c = _bind_matrix(V, thin, block, tf32)
    U, f = _engine.forward(c, V, None, None)
    return _back(c, U, V), _back(c, f, V)


def matrix(V, thin: bool = False, *, block: int | None = None, tf32: bool = False) -> Any:
    """``U = H_1 ... H_k`` (``d x d``), or with ``thin`` its first ``min(k, d)`` columns
    (LAPACK's orgqr semantics), for ``V`` of shape ``(..., d, k)``."""
    c = _bind_matrix(V, thin, block, tf32)
    return _back(c, _engine.forward(c, V, None, None)[0], V)


def matrix_backward(V, U, grad, thin: bool = False, *, factors: Any = None,
                    block: int | None = None, tf32: bool = False) -> Any:
    """``dV`` for ``U = matrix(V, thin)`` from ``grad = dL/dU`` (``U`` is checked, not read)."""
    fn = "fasth.matrix_backward"
    c = _bind_matrix(V, thin, block, tf32, fn)
    xp = c.xp
    want = tuple(c.plan.out[0])
    for name, a in (("U", U), ("grad", grad)):
        if _arrays.namespace(a) is not xp:
            raise TypeError(f"{fn}: {name} is a {_arrays.namespace(a).name} array but V is a "
                            f"{xp.name} array")
        check_dtypes(fn, {"V": xp.dtype(xp.wrap(V)), name: xp.dtype(xp.wrap(a))}, CORE_DTYPES)
        if tuple(a.shape) != want:
            raise c.fail(ValueError, f"{name} has shape {tuple(a.shape)}, expected {want}")
    f = _factors(c, V, factors)
    Vw = _engine.copies_where_planned(c, [V, None, None])[0] if c.copied else V
    return _back(c, _engine.backward(c, xp.wrap(Vw), f, xp.wrap(U), xp.wrap(grad))[0], V)
