"""fasth for JAX: ``apply`` and ``matrix`` as XLA FFI custom calls (CPU and CUDA) with
custom VJPs and batching rules, and Flax NNX layers.

API (stable; other modules build on it)::

    fasth.jax.apply(V, X, transpose=False, *, block=None, strategy="auto")  # U X or U^T X
    fasth.jax.matrix(V, thin=False, *, block=None)                          # U or U[:, :k]

    layer = fasth.jax.Orthogonal(features, reflectors=None, *, rngs, param_dtype=jnp.float32)
        layer(x)          x (..., features) -> x U^T   (each row u -> U u)
        layer.inverse(y)  y (..., features) -> y U
        layer.matrix()    U (features x features)
        params: layer.V   nnx.Param (features, reflectors)

    layer = fasth.jax.SVDDense(features, reflectors=None, *, use_bias=True, rngs,
                               param_dtype=jnp.float32)
        W = U diag(s) Vt^T with U, Vt products of Householder reflectors
        layer(x)              x (..., features) -> x W^T + b
        layer.inverse(y)      (y - b) W^{-T}            (= V diag(1/s) U^T per row)
        layer.logabsdet()     log|det W| = sum log|s|   (scalar)
        layer.spectral_norm() ||W||_2 = max |s|         (scalar)
        layer.matrix()        W
        params: layer.U, layer.Vt (features, reflectors), layer.s (features,) init ones,
                layer.b (features,) init zeros (absent without use_bias)

Requires jax >= 0.10.2 (pyproject.toml's floor and build requirement): the custom calls are
built against the XLA FFI headers of the jax found at build time (``jax.ffi.include_dir()``),
and a jaxlib older than those headers rejects them. The layers need ``flax`` (extra
``fasth[jax]``).

How it maps onto the core: each op is one XLA FFI custom call (``fasth_apply``,
``fasth_apply_backward``, ``fasth_matrix``, ``fasth_matrix_backward``, registered for the CPU
and CUDA platforms from the same C++ handlers, bindings/jax_ffi.hpp) on 3-d ``(batch, rows,
cols)`` operands. The forward call also returns the T factors, saved for the backward. The
workspace is one more output of the call, so XLA allocates it with its other buffers (nothing
is allocated in the handlers, which run on XLA's stream and may be captured in CUDA graphs).

``vmap`` merges the mapped axis into the core's batch dimension: one call, not a loop. An
unbatched ``V`` stays shared in the forward (no copy); in the backward JAX asks for per-example
gradients of an unbatched ``V``, so ``V`` is broadcast there (``B x d x k``) and JAX sums the
result. Passing the batch as leading dimensions of ``X`` (or as its columns) avoids that.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.custom_derivatives import SymbolicZero

from . import _api, _arrays, _core

__all__ = ["apply", "matrix", "Orthogonal", "SVDDense"]


def _register() -> None:
    targets = _core.jax_registrations()
    if not targets:
        raise ImportError("fasth.jax: this build of fasth has no XLA FFI handlers (jax was not "
                          "found when it was built); reinstall fasth with jax installed")
    for name, capsule in targets.items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError:
        return
    for name, capsule in _cuda.jax_registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform="CUDA")


_register()


# ---------------------------------------------------------------------------------------------
# Validation and the core's Shape (through fasth._api, so the rules live in one place)


class _Namespace(_arrays.Namespace):
    """Enough of an array namespace for fasth._api's shape checks on JAX arrays and tracers."""

    name = "jax"

    def dtype(self, a: Any) -> str:
        return np.dtype(a.dtype).name

    def strides(self, a: Any) -> tuple[int, ...]:
        return tuple(int(np.prod(a.shape[i + 1:])) for i in range(a.ndim))

    def reshape(self, a: Any, shape: tuple[int, ...]) -> Any:
        return jnp.reshape(a, shape)


_JNP = _Namespace()


def _device() -> tuple[str, int]:
    """The device the block size is chosen for: JAX's default backend."""
    return ("cuda", 0) if jax.default_backend() == "gpu" else ("cpu", 0)


def _validate(fn: str, tf32: bool, **arrays: Any) -> _api.Call:
    """Float dtype, one dtype, at least two dimensions, named in the errors."""
    for name, a in arrays.items():
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{fn}: {name} must be a JAX array, got {type(a).__name__}")
    arrays = {n: jnp.asarray(a) for n, a in arrays.items()}
    return _api.Call(fn, _JNP, _api.check_dtypes(fn, _JNP, arrays), _device(), arrays, tf32=tf32)


def _sizes(op: Any, shape: Any) -> tuple[int, int]:
    return int(_core.factors_size(shape)), int(_core.workspace_size(op, shape))


def _shape3(v: tuple[int, ...], y: tuple[int, ...], block: int, strategy: int) -> Any:
    """The resolved Shape of one call: V (bv, d, k) against (batch, d, n), y = (batch, n)."""
    s = _core.Shape()
    bv, d, k = v
    s.batch, s.d, s.k, s.n = y[0], d, k, y[1]
    s.shared_v = bv != s.batch or s.batch <= 1
    s.block, s.strategy = block, _core.Strategy(strategy)
    dev = _core.Device.cuda if _device()[0] == "cuda" else _core.Device.cpu
    return _core.resolve(s, dev)


def _sds(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


# ---------------------------------------------------------------------------------------------
# The custom calls on 3-d operands, each with a batching rule that merges the mapped axis into
# the core's batch. `block` and `strategy` are resolved once per user call and kept fixed, so
# the factors of a batch are bv entries of equal size, in order (reshaped freely below).


def _attrs(block: int, strategy: int, tf32: bool) -> dict[str, Any]:
    return {"block": np.int64(block), "strategy": np.int64(strategy), "tf32": bool(tf32)}


def _front(x: Any, batched: bool, B: int) -> Any:
    """x with the mapped axis (size B) in front, broadcast when it was not mapped."""
    return x if batched else jnp.broadcast_to(x, (B, *x.shape))


def _fold(Y: Any) -> Any:
    """(B, b, d, n) -> (B, d, b*n): a batch under one shared V as columns."""
    B, b, d, n = Y.shape
    return jnp.reshape(jnp.moveaxis(Y, 1, 2), (B, d, b * n))


def _unfold(Y: Any, b: int) -> Any:
    B, d, bn = Y.shape
    return jnp.moveaxis(jnp.reshape(Y, (B, d, b, bn // b)), 2, 1)


@functools.cache
def _ops(transpose: bool, thin: bool, block: int, strategy: int, tf32: bool) -> Any:
    attrs = _attrs(block, strategy, tf32)

    @custom_vmap
    def apply3(V, X):
        s = _shape3(V.shape, X.shape[::2], block, strategy)
        fs, ws = _sizes(_core.Op.apply, s)
        out, f, _ = jax.ffi.ffi_call(
            "fasth_apply", (_sds(X.shape, X.dtype), _sds((fs,), X.dtype), _sds((max(ws, 1),), X.dtype)),
        )(V, X, transpose=bool(transpose), **attrs)
        return out, f

    @apply3.def_vmap
    def _(B, batched, V, X):
        bv, bx = V.shape[-3], X.shape[-3]
        if not batched[0] and bv == 1:  # V shared by the whole batch: no copy
            out, f = apply3(V, jnp.reshape(X, (B * bx, *X.shape[2:])))
            return (jnp.reshape(out, X.shape), f), (True, False)
        V, X = _front(V, batched[0], B), _front(X, batched[1], B)
        if bv == bx:
            out, f = apply3(jnp.reshape(V, (B * bv, *V.shape[2:])),
                            jnp.reshape(X, (B * bx, *X.shape[2:])))
            return (jnp.reshape(out, X.shape), jnp.reshape(f, (B, -1))), (True, True)
        out, f = apply3(V[:, 0], _fold(X))  # V shared within each entry
        return (_unfold(out, bx), jnp.reshape(f, (B, -1))), (True, True)

    @custom_vmap
    def apply_bwd3(V, f, out, g):
        s = _shape3(V.shape, out.shape[::2], block, strategy)
        _, ws = _sizes(_core.Op.apply_backward, s)
        dX, dV, _ = jax.ffi.ffi_call(
            "fasth_apply_backward",
            (_sds(out.shape, out.dtype), _sds(V.shape, V.dtype), _sds((max(ws, 1),), out.dtype)),
        )(V, f, out, g, transpose=bool(transpose), **attrs)
        return dV, dX

    @apply_bwd3.def_vmap
    def _(B, batched, V, f, out, g):
        # Per-example dV: V (and f) broadcast when not mapped; JAX sums where it needs to.
        bv, bx = V.shape[-3], out.shape[-3]
        V, out, g = _front(V, batched[0], B), _front(out, batched[2], B), _front(g, batched[3], B)
        f = _front(f, batched[1], B)
        if bv == bx:
            dV, dX = apply_bwd3(jnp.reshape(V, (B * bv, *V.shape[2:])), jnp.reshape(f, (-1,)),
                                jnp.reshape(out, (B * bx, *out.shape[2:])),
                                jnp.reshape(g, (B * bx, *g.shape[2:])))
            return (jnp.reshape(dV, V.shape), jnp.reshape(dX, out.shape)), (True, True)
        dV, dX = apply_bwd3(V[:, 0], jnp.reshape(f, (-1,)), _fold(out), _fold(g))
        return (dV[:, None], _unfold(dX, bx)), (True, True)

    @custom_vmap
    def matrix3(V):
        n = V.shape[2] if thin else V.shape[1]
        s = _shape3(V.shape, (V.shape[0], n), block, strategy)
        fs, ws = _sizes(_core.Op.matrix, s)
        U, f, _ = jax.ffi.ffi_call(
            "fasth_matrix",
            (_sds((V.shape[0], V.shape[1], n), V.dtype), _sds((fs,), V.dtype),
             _sds((max(ws, 1),), V.dtype)),
        )(V, **attrs)
        return U, f

    @matrix3.def_vmap
    def _(B, batched, V):
        U, f = matrix3(jnp.reshape(V, (-1, *V.shape[2:])))
        return (jnp.reshape(U, (*V.shape[:2], *U.shape[1:])), jnp.reshape(f, (B, -1))), (True, True)

    @custom_vmap
    def matrix_bwd3(V, f, U, g):
        s = _shape3(V.shape, U.shape[::2], block, strategy)
        _, ws = _sizes(_core.Op.matrix_backward, s)
        dV, _ = jax.ffi.ffi_call(
            "fasth_matrix_backward", (_sds(V.shape, V.dtype), _sds((max(ws, 1),), V.dtype)),
        )(V, f, U, g, **attrs)
        return dV

    @matrix_bwd3.def_vmap
    def _(B, batched, V, f, U, g):
        V, f, U, g = (_front(a, b, B) for a, b in zip((V, f, U, g), batched))
        m = lambda a: jnp.reshape(a, (-1, *a.shape[2:]))  # noqa: E731
        dV = matrix_bwd3(m(V), jnp.reshape(f, (-1,)), m(U), m(g))
        return jnp.reshape(dV, V.shape), True

    return apply3, apply_bwd3, matrix3, matrix_bwd3


# ---------------------------------------------------------------------------------------------
# Differentiable ops on 3-d operands; `st` = (transpose, thin, block, strategy, tf32).


def _vma(*likes: Any) -> frozenset:
    """The shard_map axes the arrays vary over."""
    out: frozenset = frozenset()
    for a in likes:
        t = jax.typeof(a)
        mat = getattr(t, "manual_axis_type", None)  # jax >= 0.10; `vma` before
        out |= mat.varying if mat is not None else getattr(t, "vma", frozenset())
    return out


def _varying(x: Any, *likes: Any) -> Any:
    """x typed as varying over the shard_map axes its inputs `likes` vary over (custom_vmap
    drops that type), and summed over axes they do not (the cotangent of an invariant input)."""
    want, have = _vma(*likes), _vma(x)
    if have - want:
        x = jax.lax.psum(x, tuple(sorted(have - want)))
    if want - have:
        x = jax.lax.pcast(x, tuple(sorted(want - have)), to="varying")
    return x


# Second derivatives (gradient penalties: the gradient with respect to the input,
# differentiated again). JAX then differentiates the fwd and bwd rules themselves, so they
# call these custom_vjp functions rather than the custom calls: the forward rules call their
# own function, and a backward is a function whose derivative is known where it exists.
# dX = U^T g (U g when transposed) is apply again, so its derivative is apply's backward; dV
# has none, and differentiating it raises instead of returning a wrong zero.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _apply3(V, X, st):
    """(U X or U^T X, the T factors of V, which the backward reuses)."""
    out, f = _ops(*st)[0](V, X)
    return _varying(out, V, X), _varying(f, V)


def _apply3_fwd(V, X, st):
    out, f = _apply3(V, X, st)
    return (out, f), (V, f, out, jnp.reshape(X, (-1,))[:0])  # the last: X's type, for dX


def _apply3_bwd(st, res, cts):
    V, f, out, x = res
    dV, dX = _apply3_grad(V, f, out, cts[0], st)  # the factors' cotangent is zero
    return _varying(dV, V), _varying(dX, x)


_apply3.defvjp(_apply3_fwd, _apply3_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _apply3_grad(V, f, out, g, st):
    """(dV, dX) of apply, from its output ``out`` and cotangent ``g``."""
    return _ops(*st)[1](V, f, out, g)


def _apply3_grad_fwd(V, f, out, g, st):
    V, f, out, g = (a.value for a in (V, f, out, g))
    dV, dX = _apply3_grad(V, f, out, g, st)
    return (dV, dX), (V, f, dX, g)


def _apply3_grad_bwd(st, res, cts):
    _first_order_only(cts[0], "fasth.jax.apply")
    V, f, dX, g = res
    if isinstance(cts[1], SymbolicZero):
        return None, None, None, None
    # dX = apply(V, g, not transpose); its backward at the cotangent of dX.
    ddV, dg = _apply3_grad(V, f, dX, cts[1], (not st[0], *st[1:]))
    return _varying(ddV, V), None, None, _varying(dg, g)


_apply3_grad.defvjp(_apply3_grad_fwd, _apply3_grad_bwd, symbolic_zeros=True)


def _first_order_only(ct: Any, fn: str) -> None:
    if not isinstance(ct, SymbolicZero):
        raise NotImplementedError(
            f"{fn}: the gradient of V cannot be differentiated again (fasth has no second "
            "derivative for it); gradients of the input gradient (gradient penalties) are supported")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _matrix3(V, st):
    """(U, the T factors of V)."""
    U, f = _ops(*st)[2](V)
    return _varying(U, V), _varying(f, V)


def _matrix3_fwd(V, st):
    U, f = _matrix3(V, st)
    return (U, f), (V, f, U)


def _matrix3_bwd(st, res, cts):
    return (_varying(_matrix3_grad(*res, cts[0], st), res[0]),)


_matrix3.defvjp(_matrix3_fwd, _matrix3_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _matrix3_grad(V, f, U, g, st):
    return _ops(*st)[3](V, f, U, g)


def _matrix3_grad_fwd(V, f, U, g, st):
    return _matrix3_grad(*(a.value for a in (V, f, U, g)), st), None


def _matrix3_grad_bwd(st, res, ct):
    _first_order_only(ct, "fasth.jax.matrix")
    return None, None, None, None


_matrix3_grad.defvjp(_matrix3_grad_fwd, _matrix3_grad_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------------
# The public functions


def apply(V, X, transpose: bool = False, *, block: int | None = None,
          strategy: _api.StrategyName = "auto", tf32: bool = False) -> jax.Array:
    """``U X`` (``U^T X`` with ``transpose``) for ``U = H_1 ... H_k`` built from the columns of
    ``V`` (shape ``(..., d, k)``), ``X`` of shape ``(..., d, n)``; ``V`` may be unbatched and
    shared by a batch of ``X``. Differentiable in ``V`` and ``X``; works under ``jit``,
    ``vmap``, ``grad`` and ``checkpoint``."""
    c = _validate("fasth.jax.apply", tf32, V=V, X=X)
    V3, s = _api._prepare_apply(c, "X", block, strategy)
    X3 = c.to3(c.arrays["X"], s.d, s.n)
    st = (bool(transpose), False, int(s.block), int(s.strategy.value), bool(tf32))
    return jnp.reshape(_apply3(V3, X3, st)[0], (*c.batch, s.d, s.n))


def matrix(V, thin: bool = False, *, block: int | None = None, tf32: bool = False) -> jax.Array:
    """``U = H_1 ... H_k`` (``d x d``), or with ``thin`` its first ``k`` columns, for ``V`` of
    shape ``(..., d, k)``. Differentiable in ``V``."""
    c = _validate("fasth.jax.matrix", tf32, V=V)
    V3, s = _api._prepare_matrix(c, thin, block)
    st = (False, bool(thin), int(s.block), int(s.strategy.value), bool(tf32))
    return jnp.reshape(_matrix3(V3, st)[0], (*c.batch, s.d, s.n))


# ---------------------------------------------------------------------------------------------
# Flax NNX layers (features last: x of shape (..., features))


def _cols(x: jax.Array, d: int) -> jax.Array:
    """(..., d) rows as the columns of one (d, N) matrix."""
    return jnp.reshape(x, (-1, d)).T


def _rows(Y: jax.Array, like: jax.Array) -> jax.Array:
    return jnp.reshape(Y.T, like.shape)


def _promote(*arrays: jax.Array) -> tuple[list, Any]:
    """A layer's input and parameters in one dtype, as flax's layers promote them (a bfloat16
    input to float32 parameters gives float32), at least float32, the precision fasth works
    in; and the dtype of the result (the promoted one)."""
    dt = jnp.result_type(*arrays)
    ct = jnp.promote_types(dt, jnp.float32)
    return [a.astype(ct) for a in arrays], dt


try:
    from flax import nnx
except ImportError:  # the functions above work without flax
    nnx = None

if nnx is not None:

    def _vectors(rngs: Any, features: int, reflectors: int | None, dtype: Any) -> Any:
        k = features if reflectors is None else int(reflectors)
        if not 1 <= k <= features:
            raise ValueError(f"reflectors must be in [1, features = {features}], got {reflectors}")
        return nnx.Param(jax.random.normal(rngs.params(), (features, k), dtype))

    class Orthogonal(nnx.Module):
        """``x -> x U^T`` for an orthogonal ``U = H_1 ... H_k`` (``k = reflectors``, default
        ``features``: every orthogonal matrix of determinant ``(-1)^k``)."""

        def __init__(self, features: int, reflectors: int | None = None, *, rngs: Any,
                     param_dtype: Any = jnp.float32):
            self.features = int(features)
            self.V = _vectors(rngs, self.features, reflectors, param_dtype)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self._apply(x, False)

        def inverse(self, y: jax.Array) -> jax.Array:
            return self._apply(y, True)

        def _apply(self, x: jax.Array, transpose: bool) -> jax.Array:
            (x, V), rt = _promote(x, self.V[...])
            return _rows(apply(V, _cols(x, self.features), transpose), x).astype(rt)

        def matrix(self) -> jax.Array:
            return matrix(self.V[...])

    class SVDDense(nnx.Module):
        """``x -> x W^T + b`` with ``W = U diag(s) Vt^T`` kept in SVD form (``U``, ``Vt``
        products of Householder reflectors), so that the inverse, ``log|det W|`` and
        ``||W||_2`` cost no factorisation."""

        def __init__(self, features: int, reflectors: int | None = None, *,
                     use_bias: bool = True, rngs: Any, param_dtype: Any = jnp.float32):
            self.features = int(features)
            self.U = _vectors(rngs, self.features, reflectors, param_dtype)
            self.Vt = _vectors(rngs, self.features, reflectors, param_dtype)
            self.s = nnx.Param(jnp.ones((self.features,), param_dtype))
            self.b = nnx.Param(jnp.zeros((self.features,), param_dtype)) if use_bias else None

        def _params(self, x: jax.Array) -> tuple[Any, ...]:
            """(x, U, Vt, s, b, result dtype), promoted together (``_promote``)."""
            (x, U, Vt, s, *b), rt = _promote(x, *(p[...] for p in (self.U, self.Vt, self.s, self.b)
                                                  if p is not None))
            return x, U, Vt, s, (b[0] if b else None), rt

        def __call__(self, x: jax.Array) -> jax.Array:
            x, U, Vt, s, b, rt = self._params(x)
            X = _cols(x, self.features)
            if X.shape[1] >= 2 * self.features:  # many rows: one GEMM with W, as SpectralDense
                y = _rows(((matrix(U) * s) @ matrix(Vt).T) @ X, x)
            else:
                y = _rows(apply(U, s[:, None] * apply(Vt, X, True)), x)
            return (y if b is None else y + b).astype(rt)

        def inverse(self, y: jax.Array) -> jax.Array:
            y, U, Vt, s, b, rt = self._params(y)
            if b is not None:
                y = y - b
            Z = apply(U, _cols(y, self.features), True)
            return _rows(apply(Vt, Z / s[:, None]), y).astype(rt)

        def logabsdet(self) -> jax.Array:
            return jnp.sum(jnp.log(jnp.abs(self.s[...])))

        def spectral_norm(self) -> jax.Array:
            return jnp.max(jnp.abs(self.s[...]))

        def matrix(self) -> jax.Array:
            return (matrix(self.U[...]) * self.s[...]) @ matrix(self.Vt[...]).T


_SPECTRAL = ("SpectralDense", "SpectralConv1x1", "SpectralConv", "bounded_singular_values")
__all__ += list(_SPECTRAL)


def __getattr__(name: str) -> Any:
    """The spectral-norm layers of fasth.jax_spectral (built on apply and matrix above)."""
    if nnx is None and (name in _SPECTRAL or name in ("Orthogonal", "SVDDense")):
        raise AttributeError(f"fasth.jax.{name} is a Flax NNX layer and flax is not installed "
                             "(pip install 'fasth[jax]')")
    if name in _SPECTRAL:
        from . import jax_spectral

        return getattr(jax_spectral, name)
    raise AttributeError(f"module 'fasth.jax' has no attribute {name!r}")
